"""The log as the Raft core sees it: what the host has persisted, plus a tail it has not yet.

    storage: snapshot, entries up to offset-1  │  unstable: entries offset..last (in memory)
                                               │  or a received snapshot not yet installed

The core never writes storage. New entries (proposed, or received from a leader) wait in the
unstable tail until a Ready hands them to the host; once the host has written that Ready and
called advance, they are read from storage again. Entries handed out but not yet advanced
stay in the tail, so reads never depend on how far the host's write has got.

The log also knows the voter sets (a config entry takes effect as soon as it is appended, and
is undone if the entry is cut off again), and the commit and applied indexes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

NodeId = int  # >= 1; 0 means "none"


@dataclass(slots=True)
class Entry:
    index: int
    term: int
    #: opaque to Raft; None for the leader's no-op at election
    data: Any = None
    #: a membership change: the complete new voter set
    config: tuple[int, ...] | None = None
    #: payload bytes as the host counts them, for batching limits
    size: int = 0


@dataclass(slots=True, frozen=True)
class HardState:
    term: int = 0
    vote: NodeId = 0
    commit: int = 0


@dataclass(slots=True, frozen=True)
class SnapshotMeta:
    index: int
    term: int
    #: voters as of `index`
    config: tuple[int, ...]


class Storage(Protocol):
    """What this node has persisted; Raft only reads it (the host writes it from Ready)."""

    def initial_state(self) -> tuple[HardState, tuple[int, ...]]:
        """The hard state, and the voters to start with when there is no snapshot."""
        ...

    def snapshot(self) -> SnapshotMeta:
        """Index 0 / term 0 / the initial voters when there is none."""
        ...

    def first_index(self) -> int:
        """snapshot().index + 1"""
        ...

    def last_index(self) -> int:
        """The last persisted entry (snapshot().index if none)."""
        ...

    def term(self, index: int) -> int:
        """For snapshot().index..last_index."""
        ...

    def entries(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        """[lo, hi), as many as fit in max_bytes by Entry.size, but at least one."""
        ...


@dataclass(slots=True)
class ConfigHistory:
    """The voter sets in the log: the one committed, then those appended after it, in order."""

    committed: tuple[int, ...]
    #: (index, voters) of config entries past the commit index
    pending: list[tuple[int, tuple[int, ...]]] = field(default_factory=list)

    def active(self) -> tuple[int, ...]:
        return self.pending[-1][1] if self.pending else self.committed

    def appended(self, entries: Sequence[Entry]) -> None:
        self.pending.extend((e.index, e.config) for e in entries if e.config is not None)

    def cut_from(self, index: int) -> None:
        while self.pending and self.pending[-1][0] >= index:
            self.pending.pop()

    def commit_to(self, index: int) -> None:
        while self.pending and self.pending[0][0] <= index:
            self.committed = self.pending.pop(0)[1]


class LogView:
    """Storage and the unstable tail as one log, with its commit and applied indexes."""

    def __init__(self, storage: Storage, initial_voters: tuple[int, ...], commit: int) -> None:
        self.storage = storage
        snapshot = storage.snapshot()
        #: index of unstable[0]: everything before it is in storage
        self.offset = storage.last_index() + 1
        self.unstable: list[Entry] = []
        #: a snapshot received from the leader that the host has not installed yet
        self.pending_snapshot: SnapshotMeta | None = None
        self.snapshot_handed = False
        #: the first index not yet handed to the host in a Ready
        self.handed = self.offset
        self.commit = max(commit, snapshot.index)
        #: a restarted host rebuilds its state from its snapshot, then applies the rest again
        self.applied = snapshot.index
        self.configs = ConfigHistory(snapshot.config if snapshot.index else initial_voters)
        self._load_configs()

    def _load_configs(self) -> None:
        """Find the config entries already in storage: one read of the log past the
        snapshot, at start (as the host's own replay of it)."""
        lo, hi = self.storage.first_index(), self.offset
        while lo < hi:
            batch = self.storage.entries(lo, hi, 1 << 24)
            self.configs.appended(batch)
            lo = batch[-1].index + 1
        self.configs.commit_to(self.commit)

    # -- reading -------------------------------------------------------------------------

    def last_index(self) -> int:
        return self.offset + len(self.unstable) - 1

    def last_term(self) -> int:
        term = self.term_at(self.last_index())
        assert term is not None
        return term

    def term_at(self, index: int) -> int | None:
        """The term of the entry at `index`, or None when it is compacted away or beyond."""
        if index >= self.offset:
            pos = index - self.offset
            return self.unstable[pos].term if pos < len(self.unstable) else None
        if self.pending_snapshot is not None:
            meta = self.pending_snapshot
            return meta.term if index == meta.index else None
        if index < self.storage.first_index() - 1:
            return None
        return self.storage.term(index)

    def entries(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        """[lo, hi) as far as max_bytes allows (by Entry.size), at least one entry."""
        out: list[Entry] = []
        budget = max_bytes
        if lo < self.offset:
            out = self.storage.entries(lo, min(hi, self.offset), max_bytes)
            if out[-1].index + 1 < min(hi, self.offset):
                return out
            budget -= sum(e.size for e in out)
        if hi <= self.offset:
            return out
        for entry in self.unstable[max(lo - self.offset, 0) : hi - self.offset]:
            if out and entry.size > budget:
                break
            out.append(entry)
            budget -= entry.size
        return out

    def persisted_index(self) -> int:
        """The last entry the host has written and acknowledged (0 while a snapshot waits)."""
        return 0 if self.pending_snapshot is not None else self.offset - 1

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Is a log ending at (last_index, last_term) at least as up to date as this one?"""
        return (last_term, last_index) >= (self.last_term(), self.last_index())

    # -- changing --------------------------------------------------------------------------

    def append(self, entries: Sequence[Entry]) -> None:
        """Append `entries`, first cutting off any entry from entries[0].index on."""
        start = entries[0].index
        assert self.commit < start <= self.last_index() + 1, "append would cut committed entries"
        if start >= self.offset:
            del self.unstable[start - self.offset :]
        else:
            self.unstable = []
            self.offset = start
        self.unstable.extend(entries)
        self.handed = min(self.handed, start)
        self.configs.cut_from(start)
        self.configs.appended(entries)

    def restore(self, meta: SnapshotMeta) -> None:
        """Drop the whole log for a snapshot from the leader; the host installs it from Ready."""
        self.unstable = []
        self.offset = self.handed = meta.index + 1
        self.pending_snapshot = meta
        self.snapshot_handed = False
        self.commit = meta.index
        self.configs = ConfigHistory(meta.config)

    def commit_to(self, index: int) -> bool:
        if index <= self.commit:
            return False
        assert index <= self.last_index(), "commit beyond the log"
        self.commit = index
        self.configs.commit_to(index)
        return True

    # -- what the host has to do, and has done ---------------------------------------------

    def take_unstable(self) -> list[Entry]:
        out = self.unstable[max(self.handed - self.offset, 0) :]
        self.handed = self.last_index() + 1
        return out

    def has_unhanded(self) -> bool:
        return self.handed <= self.last_index() or (
            self.pending_snapshot is not None and not self.snapshot_handed
        )

    def take_snapshot(self) -> SnapshotMeta | None:
        if self.pending_snapshot is None or self.snapshot_handed:
            return None
        self.snapshot_handed = True
        return self.pending_snapshot

    def committed_to_apply(self, max_bytes: int) -> list[Entry]:
        """The next committed entries to apply: only ones the host has persisted."""
        hi = min(self.commit, self.persisted_index())
        if hi <= self.applied:
            return []
        return self.entries(self.applied + 1, hi + 1, max_bytes)

    def stable_to(self, index: int, term: int) -> None:
        """The host wrote entries up to (index, term); forget them here unless cut since."""
        if index >= self.offset and self.term_at(index) == term:
            del self.unstable[: index + 1 - self.offset]
            self.offset = index + 1

    def snapshot_installed(self, meta: SnapshotMeta) -> None:
        if self.pending_snapshot == meta:
            self.pending_snapshot = None
        self.applied = max(self.applied, meta.index)

    def applied_to(self, index: int) -> None:
        self.applied = max(self.applied, index)
