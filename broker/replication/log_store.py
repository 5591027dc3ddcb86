"""Raft's log on the node's log database: what Raft reads (raft.Storage) and the writes that
keep it, as the node's Raft driver asks for them.

Entries are stored as the single node stores them, in batches of one LevelDB key each
(schema.batch_key), with a cluster proposal's key and floor after the command
(encoding.keyed_entry_wire), so recovery and message bodies work alike in both modes. Raft's
term, vote and commit index live in the same database (META_RAFT) and go to disk in the same
synced batch as the entries of a Ready. The snapshot Raft knows of is the state database's:
its index, term and voters are written there with it (META_RAFT_SNAPSHOT).

The terms of the entries after the snapshot are kept in memory, and so are the latest
entries (up to CACHE_BYTES), which is what a leader sends to followers that keep up; older
ones are read back from disk.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass
from typing import Any

from broker.core import commands as c
from broker.replication.raft import Entry, HardState, SnapshotMeta
from broker.store import schema
from broker.store.damage import REMEDY, StoreDamaged, reads_checked
from broker.store.disk import Op, Store
from broker.store.encoding import entry_wire, keyed_entry_wire, pack

#: Bytes of recent entries kept in memory for followers that are a little behind.
CACHE_BYTES = 64 << 20


@dataclass(slots=True)
class Proposal:
    """What a Raft entry carries for the broker: a command and when and by whom it was
    proposed (see commands.Meta)."""

    time: int
    command: Any
    key: tuple[int, int, int] | None = None
    floor: int = 0


def entry_size(command: Any) -> int:
    """Roughly what an entry weighs, for batching limits: its message body, if any."""
    body = getattr(command, "body", None)
    return 64 + (len(body) if isinstance(body, bytes) else 0)


def to_wire(entry: Entry) -> Any:
    """An entry's stored (and sent) form."""
    p = entry.data
    if p is None:
        return entry_wire(entry.term, 0, None)
    if p.key is None:
        return entry_wire(entry.term, p.time, p.command)
    return keyed_entry_wire(entry.term, p.time, p.command, p.key, p.floor)


def from_stored(index: int, stored: Any) -> Entry:
    """An entry from its decoded stored form (term, time, command, key, floor)."""
    term, time, command, key, floor = stored
    if command is None:
        return Entry(index, term)
    config = None
    if type(command) is c.SetMembers:
        config = tuple(sorted(node for node, _ in command.members))
    return Entry(index, term, Proposal(time, command, key, floor), config, entry_size(command))


class RaftLog:
    """raft.Storage over a Store; the driver writes what `append_ops` returns, then calls
    `appended`."""

    def __init__(self, store: Store, voters: tuple[int, ...]) -> None:
        self.store = store
        self.voters = voters
        with reads_checked(store.path):
            raw = store.raft_state()
            self.hard = HardState() if raw is None else HardState(*raw)
            self._load()

    def _load(self) -> None:
        """Read what the databases hold (at start, and after a snapshot was installed)."""
        snap = self.store.raft_snapshot()
        if snap is None:
            self.snap = SnapshotMeta(self.store.snapshot_index(), 0, self.voters)
        else:
            index, term, voters = snap
            self.snap = SnapshotMeta(index, term, tuple(voters))
        self._terms: list[int] = []
        self._batches: list[tuple[int, int]] = []
        for index, stored in self.store.log_entries(self.snap.index):
            if index != self.snap.index + 1 + len(self._terms):
                raise StoreDamaged(
                    f"the store is damaged: the log in {self.store.path} has a gap before "
                    f"entry {index}: {REMEDY}"
                )
            self._terms.append(stored[0])
        self._batches = [b for b in self.store.log_batches() if b[1] > self.snap.index]
        self._cache: deque[Entry] = deque()
        self._cache_bytes = 0

    def reload(self) -> None:
        raw = self.store.raft_state()
        self.hard = HardState() if raw is None else HardState(*raw)
        self._load()

    # -- raft.Storage --------------------------------------------------------------------

    def initial_state(self) -> tuple[HardState, tuple[int, ...]]:
        return self.hard, self.voters

    def snapshot(self) -> SnapshotMeta:
        return self.snap

    def first_index(self) -> int:
        return self.snap.index + 1

    def last_index(self) -> int:
        return self.snap.index + len(self._terms)

    def term(self, index: int) -> int:
        if index == self.snap.index:
            return self.snap.term
        offset = index - self.snap.index - 1
        if not 0 <= offset < len(self._terms):
            raise IndexError(f"no entry {index} in the log ({self.first_index()}..)")
        return self._terms[offset]

    def entries(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        if lo < self.first_index() or hi > self.last_index() + 1:
            raise IndexError(f"entries {lo}..{hi - 1} are not all in the log")
        cache = self._cache
        if cache and cache[0].index <= lo:
            start = lo - cache[0].index
            return _take((cache[i] for i in range(start, start + hi - lo)), max_bytes)
        return _take(self._read(lo, hi), max_bytes)

    def _read(self, lo: int, hi: int) -> Any:
        for index, stored in self.store.log_entries(lo - 1):
            if index >= hi:
                return
            yield from_stored(index, stored)

    # -- writes --------------------------------------------------------------------------

    def append_ops(
        self, entries: list[Entry], hard: HardState | None, packed: bytes | None = None
    ) -> list[Op]:
        """The ops of one synced write: `entries` (replacing any stored from the first one's
        index on) and the hard state. `packed`: the entries already encoded as a batch (as
        the leader sent them), stored as they are."""
        ops: list[Op] = []
        if entries:
            first = entries[0].index
            if first <= self.last_index():
                ops.extend(self._truncate_ops(first))
            last = entries[-1].index
            value = packed or schema.encode_batch(first, [to_wire(e) for e in entries])
            ops.append((schema.batch_key(first, last), value))
        if hard is not None:
            ops.append((schema.META_RAFT, pack([hard.term, hard.vote, hard.commit])))
        return ops

    def _truncate_ops(self, index: int) -> list[Op]:
        """Delete the stored entries from `index` on; the batch it falls in keeps the rest."""
        ops: list[Op] = []
        pos = bisect.bisect_left(self._batches, (index, 0))
        if pos and self._batches[pos - 1][1] >= index:
            pos -= 1
        for first, last in self._batches[pos:]:
            ops.append((schema.batch_key(first, last), None))
            if first < index:
                kept = [to_wire(e) for e in self._read(first, index)]
                ops.append((schema.batch_key(first, index - 1), schema.encode_batch(first, kept)))
        return ops

    def appended(self, entries: list[Entry], hard: HardState | None) -> None:
        """The write of `append_ops` is on disk."""
        if hard is not None:
            self.hard = hard
        if not entries:
            return
        first, last = entries[0].index, entries[-1].index
        if first <= self.last_index():
            self._forget_from(first)
        self._terms.extend(e.term for e in entries)
        self._batches.append((first, last))
        cache = self._cache
        if cache and cache[-1].index != first - 1:
            cache.clear()
            self._cache_bytes = 0
        for e in entries:
            cache.append(e)
            self._cache_bytes += e.size
        while self._cache_bytes > CACHE_BYTES and cache:
            self._cache_bytes -= cache.popleft().size

    def _forget_from(self, index: int) -> None:
        del self._terms[index - self.snap.index - 1 :]
        pos = bisect.bisect_left(self._batches, (index, 0))
        if pos and self._batches[pos - 1][1] >= index:
            first, _ = self._batches[pos - 1]
            self._batches[pos - 1] = (first, index - 1)
        del self._batches[pos:]
        while self._cache and self._cache[-1].index >= index:
            self._cache_bytes -= self._cache.pop().size

    def compacted(self, snap: SnapshotMeta) -> None:
        """The state database holds a snapshot at `snap.index`: the log starts after it."""
        drop = snap.index - self.snap.index
        if drop <= 0:
            return
        del self._terms[:drop]
        self.snap = snap
        self._batches = [b for b in self._batches if b[1] > snap.index]
        while self._cache and self._cache[0].index <= snap.index:
            self._cache_bytes -= self._cache.popleft().size


def _take(entries: Any, max_bytes: int) -> list[Entry]:
    """Entries up to `max_bytes` in all (at least one)."""
    out: list[Entry] = []
    size = 0
    for e in entries:
        if out and size + e.size > max_bytes:
            break
        out.append(e)
        size += e.size
    return out
