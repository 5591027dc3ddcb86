"""The commit path with no I/O in it: proposals in; disk writes, replies and effects out.

    propose ─► entries batched into a log write ─► written ─► applied in order ─► effects
                                                   synced  ─► replies released in order

A command becomes a log entry (index, time, command) when proposed. The driver hands the
writes this object asks for to the disk and reports back. Entries that are written are
committed (a log of one: later, Raft decides commitment here), so they are applied to the
state machine at once, in index order, and their effects (deliveries, wake-ups) are released.
Replies are released strictly in index order too, and a reply that promises durability (a
publisher confirm, a PUBACK, an HTTP answer) only once its entry is synced.

Two lanes of writes, to two databases, so neither waits for the other:

- the log: batches of entries, syncs, and the deletion of batches behind a snapshot;
- the state: every so often a snapshot, the records that changed since the last one and the
  index it is at, in one synced batch. Recovery loads it and replays the log after it (see
  recovery). Only once a snapshot is on disk may the log behind it go, and then only the
  batches that no message's body still lives in (Message.source).

A write that fails stops everything: nothing more is acknowledged, every waiting and later
command gets a StoreFailed error, and the node says so. A command that fails half-way through
its application is undone by rebuilding the state without it (`rebuild_needed`).
"""

from __future__ import annotations

import bisect
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from broker.core.commands import Meta
from broker.core.errors import BrokerError, InternalError, StoreFailed
from broker.core.model import Effect
from broker.core.state import StateMachine
from broker.store import schema
from broker.store.encoding import entry_wire, pack

log = logging.getLogger(__name__)

#: Called once the command is applied (and durable if it said so): (reply, error).
Done = Callable[[Any, BrokerError | None], None]
Op = tuple[bytes, bytes | None]

#: A snapshot is taken once this many records changed since the last one (small snapshots
#: keep each write short), or this many entries or bytes of entries were applied past it.
SNAPSHOT_RECORDS = 32768
SNAPSHOT_ENTRIES = 65536
SNAPSHOT_BYTES = 32 * 1024 * 1024
#: Log batches deleted behind a snapshot per write.
GARBAGE_PER_WRITE = 256


@dataclass(slots=True)
class Write:
    """One job for the log: these ops in one atomic batch, synced or not."""

    ops: list[Op]
    #: entries up to this index are written once this write is
    last_index: int
    sync: bool
    #: only deletes the log behind a snapshot: nothing waits for it
    cleanup: bool = False
    #: how many new entries it holds
    entries: int = 0
    #: a reply that promises durability waits on it: whoever writes it may as well sync
    wants_sync: bool = False


@dataclass(slots=True)
class Snapshot:
    """One job for the state database: a synced batch bringing it to `index`."""

    ops: list[Op]
    index: int
    #: the log batches it makes useless, to delete once it is on disk
    garbage: list[tuple[int, int]]


@dataclass(slots=True)
class _Entry:
    """A proposed entry, and its reply once applied (a barrier is an entry with no command)."""

    index: int
    time: int
    command: Any
    done: Done | None
    durable: bool
    applied: bool = False
    reply: Any = None
    error: BrokerError | None = None


#: What the driver does, in order: call `done(reply, error)`, or route `effects`.
Release = tuple[Done | None, Any, BrokerError | None, list[Effect]]


@dataclass
class Committer:
    state: StateMachine
    #: the last index in the log (everything up to it is written, synced and applied)
    last_index: int = 0
    #: the index the stored snapshot is at
    snapshot_index: int = 0
    #: changes since the snapshot, by record: the live object, or None once it is gone
    dirty: dict[tuple[str, Any], Any] = field(default_factory=dict)
    term: int = 0
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
        self.written_index = self.synced_index = self.applied_index = self.last_index
        self._unwritten: list[_Entry] = []
        self._writing: list[_Entry] = []
        #: entries (and barriers) with a reply to release, in index order, from the head
        self._replies: deque[_Entry] = deque()
        #: entries of a write whose application stopped for a rebuild
        self._pending_apply: list[_Entry] = []
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

    # -- input ---------------------------------------------------------------------------

    def propose(self, command: Any, time: int, done: Done | None, durable: bool = True) -> None:
        """Add `command` to the log; `done` runs once it is applied (and synced if durable)."""
        if self.failed is not None:
            if done is not None:
                self._releases.append((done, None, self._failure(), []))
            return
        self.last_index += 1
        entry = _Entry(self.last_index, time, command, done, durable)
        self._unwritten.append(entry)
        if done is not None:
            self._replies.append(entry)

    @property
    def backlog(self) -> int:
        """Entries proposed and not yet handed to a write."""
        return len(self._unwritten)

    def barrier(self, done: Done) -> None:
        """`done` runs once everything proposed so far is applied and synced."""
        if self.failed is not None:
            self._releases.append((done, None, self._failure(), []))
            return
        self._replies.append(_Entry(self.last_index, 0, None, done, True, applied=True))
        self._release_replies()

    # -- the log -------------------------------------------------------------------------

    def next_write(self) -> Write | None:
        """What to write to the log next, if anything (one write at a time)."""
        if self.failed is not None or self._writing or self.rebuild_needed is not None:
            return None
        if self._unwritten:
            self._writing, self._unwritten = self._unwritten, []
            ops = [self._batch(self._writing)]
            self._collect_garbage(ops)
            last = self._writing[-1].index
            head = self._replies[0] if self._replies else None
            wants_sync = head is not None and head.durable and head.index <= last
            return Write(ops, last, False, entries=len(self._writing), wants_sync=wants_sync)
        if self._needs_sync():
            return Write([], self.written_index, sync=True)
        if self.garbage:
            ops = []
            self._collect_garbage(ops)
            return Write(ops, self.written_index, sync=False, cleanup=True)
        return None

    def _batch(self, entries: list[_Entry]) -> Op:
        """The entries as one key of the log."""
        first, last = entries[0].index, entries[-1].index
        self._lasts.append(last)
        self._firsts[last] = first
        term = self.term
        value = schema.encode_batch(first, [entry_wire(term, e.time, e.command) for e in entries])
        self._log_bytes += len(value)
        return schema.batch_key(first, last), value

    def _collect_garbage(self, ops: list[Op]) -> None:
        garbage = self.garbage
        if garbage:
            cut = garbage[-GARBAGE_PER_WRITE:]
            del garbage[-GARBAGE_PER_WRITE:]
            ops.extend((schema.batch_key(first, last), None) for first, last in cut)

    def written(self, write: Write) -> None:
        """The write is done: its entries are in the log (committed), so apply them. If it
        was a synced write, everything up to it is on disk too."""
        self.stats["writes"] += 1
        entries, self._writing = self._writing, []
        self.written_index = max(self.written_index, write.last_index)
        self._apply(entries)
        if write.sync:
            self.synced(write.last_index)
        else:
            self._release_replies()

    def synced(self, index: int) -> None:
        """Everything written up to `index` is on disk: release the replies waiting for it."""
        self.stats["syncs"] += 1
        self.synced_index = max(self.synced_index, index)
        self._release_replies()

    def write_failed(self, exc: BaseException) -> None:
        """The disk refused a write: acknowledge nothing more, ever."""
        log.critical(
            "store write failed: %r; this node acknowledges nothing from now on (entries up to "
            "%d are on disk, %d applied); restart it once the disk is fixed",
            exc,
            self.synced_index,
            self.applied_index,
        )
        self.failed = exc
        error = self._failure()
        for entry in self._replies:
            if entry.applied and not entry.durable:
                self._releases.append((entry.done, entry.reply, entry.error, []))
            else:
                self._releases.append((entry.done, None, error, []))
        self._replies.clear()
        self._writing = []
        self._unwritten = []

    def _failure(self) -> StoreFailed:
        return StoreFailed(f"the node's store failed ({self.failed!r}): nothing is acknowledged")

    def _needs_sync(self) -> bool:
        return bool(self._replies) and self._replies[0].durable and self._replies[0].applied

    # -- applying ------------------------------------------------------------------------

    def _apply(self, entries: list[_Entry]) -> None:
        state = self.state
        dirty = self.dirty
        releases = self._releases
        for pos, entry in enumerate(entries):
            try:
                reply, error, effects, changes = state.apply(
                    entry.command, Meta(entry.index, entry.time)
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
            if entry.done is not None:
                entry.applied, entry.reply, entry.error = True, reply, error

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
        if failed.done is not None:
            failed.applied = True
            failed.error = InternalError("internal error: the command was undone")
        self._apply(rest)
        self._release_replies()

    def _release_replies(self) -> None:
        replies = self._replies
        while replies:
            head = replies[0]
            if not head.applied or (head.durable and head.index > self.synced_index):
                return
            replies.popleft()
            self._releases.append((head.done, head.reply, head.error, []))

    def take_releases(self) -> list[Release]:
        """Replies and effects to carry out now, in order."""
        out, self._releases = self._releases, []
        return out

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
                    holder = queues[qid].unacked.get(seq)
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
        for last in sorted(candidates):
            first = firsts[last]
            if not refs.keys().isdisjoint(range(first, last + 1)):
                continue
            del lasts[bisect.bisect_left(lasts, last)]
            del firsts[last]
            useless.append((first, last))
        return useless
