"""Applying committed entries in order, and the snapshots of what they changed.

Whatever decides that entries are committed (the single node's log, or Raft's majority) hands
them here in index order. Each is applied to the state machine; its effects are released at
once and what it changed is remembered by record (`dirty`). A command that fails half-way
through its application is undone by rebuilding the state without it (`rebuild_needed`).

Every so often the changed records become a snapshot: one synced batch to the state database,
bringing it to the applied index. Recovery loads it and replays the log after it. Only once a
snapshot is on disk may the log behind it go, and then only the batches that no message's body
still lives in (Message.source).
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from broker.core.commands import Meta
from broker.core.errors import BrokerError, InternalError
from broker.core.model import UNACKED, Effect
from broker.core.state import StateMachine
from broker.store import schema
from broker.store.cold_refs import ColdRefs
from broker.store.encoding import pack

log = logging.getLogger(__name__)

#: Called once the command is applied (and durable if it said so): (reply, error).
Done = Callable[[Any, BrokerError | None], None]
Op = tuple[bytes, bytes | None]
#: What the driver does, in order: call `done(reply, error)`, or route `effects`.
Release = tuple[Done | None, Any, BrokerError | None, list[Effect]]

#: A snapshot is taken once this many records changed since the last one (small snapshots
#: keep each write short), or this many entries or bytes of entries were applied past it.
SNAPSHOT_RECORDS = 32768
SNAPSHOT_ENTRIES = 65536
SNAPSHOT_BYTES = 32 * 1024 * 1024
#: Log batches deleted behind a snapshot per write.
GARBAGE_PER_WRITE = 256


class Applicable(Protocol):
    """A committed entry: where it is in the log, when it was proposed, what it says, and
    who proposed it (commands.Meta)."""

    index: int
    time: int
    command: Any
    key: tuple[int, int, int] | None
    floor: int


@dataclass(slots=True)
class Snapshot:
    """One job for the state database: a synced batch bringing it to `index`."""

    ops: list[Op]
    index: int
    #: the log batches it makes useless, to delete once it is on disk
    garbage: list[tuple[int, int]]


@dataclass
class Applier:
    state: StateMachine
    #: the last index applied (at start: the last entry recovery replayed)
    last_index: int = 0
    #: the index the stored snapshot is at
    snapshot_index: int = 0
    #: changes since the snapshot, by record: the live object, or None once it is gone
    dirty: dict[tuple[str, Any], Any] = field(default_factory=dict)
    #: entries left out of the state because applying them failed half-way
    skipped: set[int] = field(default_factory=set)
    #: per queue, the sequence number its next message had at the snapshot: a message from
    #: there on was never in a snapshot, so its going needs no deletion on disk
    stored_seq: dict[int, int] = field(default_factory=dict)
    #: the log's batches on disk, (first, last) in order (see schema.batch_key)
    batches: list[tuple[int, int]] = field(default_factory=list)
    #: batches behind the snapshot that nothing uses any more, to delete
    garbage: list[tuple[int, int]] = field(default_factory=list)
    snapshot_records: int = SNAPSHOT_RECORDS
    snapshot_entries: int = SNAPSHOT_ENTRIES
    snapshot_bytes: int = SNAPSHOT_BYTES

    def __post_init__(self) -> None:
        self.applied_index = self.last_index
        #: entries whose application stopped for a rebuild
        self._pending_apply: list[Any] = []
        self._releases: list[Release] = []
        self._log_bytes = 0
        #: a snapshot is being written
        self._snapshotting = False
        #: the stored list of skipped entries may be out of date
        self._skipped_changed = bool(self.skipped)
        #: the last index of each batch on disk and not garbage, sorted, and each one's first
        dropped = {last for _, last in self.garbage}
        self._lasts = [last for _, last in self.batches if last not in dropped]
        self._firsts = {last: first for first, last in self.batches}
        #: set when applying an entry failed half-way: the state must be rebuilt before it
        self.rebuild_needed: int | None = None
        self.failed: BaseException | None = None
        self.stats = {"writes": 0, "syncs": 0, "snapshots": 0}

    def _applied(self, entry: Any, reply: Any, error: BrokerError | None) -> None:
        """Hook: `entry` was applied with this result (or undone: InternalError)."""

    def _after_rebuild(self) -> None:
        """Hook: the entries held up by a rebuild are applied."""

    # -- the log's batches ---------------------------------------------------------------

    def add_batch(self, first: int, last: int, size: int) -> None:
        """A batch of entries went to the log (its key, schema.batch_key, holds both)."""
        self._lasts.append(last)
        self._firsts[last] = first
        self._log_bytes += size

    def drop_batches_from(self, index: int) -> None:
        """The log lost its batches ending at `index` or later (a conflicting suffix)."""
        cut = bisect.bisect_left(self._lasts, index)
        for last in self._lasts[cut:]:
            del self._firsts[last]
        del self._lasts[cut:]

    def _collect_garbage(self, ops: list[Op]) -> None:
        garbage = self.garbage
        if garbage:
            cut = garbage[-GARBAGE_PER_WRITE:]
            del garbage[-GARBAGE_PER_WRITE:]
            ops.extend((schema.batch_key(first, last), None) for first, last in cut)

    # -- applying ------------------------------------------------------------------------

    def _apply(self, entries: list[Any]) -> None:
        state = self.state
        dirty = self.dirty
        releases = self._releases
        applied = self._applied
        for pos, entry in enumerate(entries):
            try:
                reply, error, effects, changes = state.apply(
                    entry.command, Meta(entry.index, entry.time, entry.key, entry.floor)
                )
            except Exception:
                log.exception(
                    "entry %d (%s) failed half-way; rebuilding the state without it",
                    entry.index,
                    type(entry.command).__name__,
                )
                self.rebuild_needed = entry.index
                self._pending_apply = entries[pos:]
                return
            self.applied_index = entry.index
            dirty.update(changes)
            if effects:
                releases.append((None, None, None, effects))
            applied(entry, reply, error)

    def rebuilt(
        self,
        state: StateMachine,
        dirty: dict[tuple[str, Any], Any],
        stored_seq: dict[int, int],
    ) -> None:
        """The driver rebuilt the state up to the failed entry, without it: carry on."""
        index = self.rebuild_needed
        assert index is not None
        self.rebuild_needed = None
        self.skipped.add(index)
        self._skipped_changed = True
        self.state, self.dirty, self.stored_seq = state, dirty, stored_seq
        failed, *rest = self._pending_apply
        self._pending_apply = []
        self.applied_index = failed.index
        self._applied(failed, None, InternalError("internal error: the command was undone"))
        self._apply(rest)
        self._after_rebuild()

    def take_releases(self) -> list[Release]:
        """Replies and effects to carry out now, in order."""
        out, self._releases = self._releases, []
        return out

    def release(self, on_effects: Callable[[list[Effect]], None]) -> None:
        """Carry out what take_releases() holds: effects to `on_effects`, replies to their
        callbacks (a failing callback is logged; the others still run)."""
        for done, reply, error, effects in self.take_releases():
            if effects:
                on_effects(effects)
            if done is not None:
                try:
                    done(reply, error)
                except Exception:
                    log.exception("reply callback failed")

    # -- snapshots -----------------------------------------------------------------------

    def next_snapshot(self) -> Snapshot | None:
        """A snapshot to write to the state database, when one is due (one at a time)."""
        if self.failed is not None or self._snapshotting or self.rebuild_needed is not None:
            return None
        if self.snapshot_due():
            self._snapshotting = True
            return self._snapshot()
        if self._skipped_changed:
            self._skipped_changed = False
            self._snapshotting = True
            ops: list[Op] = [(schema.META_SKIPPED, pack(sorted(self.skipped)))]
            return Snapshot(ops, self.snapshot_index, [])
        return None

    def snapshot_due(self) -> bool:
        behind = self.applied_index - self.snapshot_index
        return behind > 0 and (
            len(self.dirty) >= self.snapshot_records
            or behind >= self.snapshot_entries
            or self._log_bytes >= self.snapshot_bytes
        )

    def snapshot_now(self) -> None:
        """Make the next snapshot due at once (shutdown, tests)."""
        self._log_bytes = max(self._log_bytes, self.snapshot_bytes)

    def _snapshot(self) -> Snapshot:
        state, stored = self.state, self.stored_seq
        queues = state.queues_by_qid
        message_key, message_value = schema.message_key, schema.message_value
        ops: list[Op] = []
        released: list[int] = []
        touched: set[int] = set()
        for (kind, key), value in self.dirty.items():
            if kind == "message":
                qid, seq = key
                touched.add(qid)
                if value is not None:
                    # (only a delivered message has a holder: spare the others the lookup)
                    holder = queues[qid].unacked.get(seq) if value.state == UNACKED else None
                    ops.append((message_key(qid, seq), message_value(value, holder)))
                elif seq < stored.get(qid, 1):  # else it came and went since the last one
                    ops.append((message_key(qid, seq), None))
            elif kind == "entry":
                released.append(key)
            else:
                raw = None if value is None else schema.record_value(kind, key, value, state)
                ops.append((schema.record_key(kind, key), raw))
        ops.append((schema.META_SNAPSHOT, pack(self.applied_index)))
        for qid in touched:
            q = queues.get(qid)
            if q is None:
                stored.pop(qid, None)
            else:
                stored[qid] = q.next_seq
        kept = {i for i in self.skipped if i > self.applied_index}
        if kept != self.skipped:
            self.skipped = kept
            ops.append((schema.META_SKIPPED, pack(sorted(kept))))
        self.stats["snapshots"] += 1
        self.dirty = {}
        self._log_bytes = 0
        garbage = self._covered_batches(self.applied_index, released)
        return Snapshot(ops, self.applied_index, garbage)

    def snapshot_written(self, snapshot: Snapshot) -> None:
        """The snapshot is on disk: the log behind it may go."""
        self._snapshotting = False
        self.snapshot_index = snapshot.index
        self.garbage.extend(snapshot.garbage)

    def _covered_batches(self, upto: int, released: list[int]) -> list[tuple[int, int]]:
        """The batches of the log a snapshot at `upto` makes useless: behind it, and holding
        no entry whose body a message uses (as of the snapshot: that is what it refers to).
        Checked: those it just passed, and those where a message let go of an entry."""
        lasts, firsts, refs = self._lasts, self._firsts, self.state.entry_refs
        start = bisect.bisect_right(lasts, self.snapshot_index)
        stop = bisect.bisect_right(lasts, upto)
        candidates = set(lasts[start:stop])
        first = last = 0
        for index in released:
            if first <= index <= last:
                continue  # released entries come mostly in order: same batch as the previous
            pos = bisect.bisect_left(lasts, index)
            if pos < len(lasts) and lasts[pos] <= upto and firsts[lasts[pos]] <= index:
                last = lasts[pos]
                first = firsts[last]
                candidates.add(last)
        useless = []
        cold = ColdRefs(self.state.cold_chunks()) if candidates else None
        for last in sorted(candidates):
            first = firsts[last]
            if not refs.keys().isdisjoint(range(first, last + 1)):
                continue
            if cold is not None and cold.refer(first, last):
                continue
            del lasts[bisect.bisect_left(lasts, last)]
            del firsts[last]
            useless.append((first, last))
        return useless
