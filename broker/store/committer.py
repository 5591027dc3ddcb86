"""The single node's commit path with no I/O in it: proposals in; writes, replies out.

    propose ─► entries batched into a log write ─► written ─► applied in order ─► effects
                                                   synced  ─► replies released in order

A command becomes a log entry (index, time, command) when proposed. The driver hands the
writes this object asks for to the disk and reports back. Entries that are written are
committed (a log of one; in a cluster Raft decides, see replication/), so they are applied at
once, in index order, by the Applier this builds on. Replies are released strictly in index
order too, and a reply that promises durability (a publisher confirm, a PUBACK, an HTTP
answer) only once its entry is synced.

Two lanes of writes, to two databases, so neither waits for the other: the log (batches of
entries, syncs, and the deletion of batches behind a snapshot), and the state (snapshots,
see applier).

A write that fails (a full disk, say) is not the end: the commands it held were never applied,
so those whose reply promises durability get a StoreFailed error. Until the store recovers,
commands with such replies are refused at once; the others (acks, QoS 0 publishes, timer
ticks, channel releases) and the barriers among them are held and go to the log once it works
again. Commands already applied keep their place: their replies wait for the recovery write.
The driver then reopens the log (LevelDB must not append after a failed write: what follows
would be lost at the next start) and writes again, synced, what was written but not synced,
so the disk holds everything applied (`recovery_write`, `recovered`).
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Any

from broker.core import commands as c
from broker.core.errors import BrokerError, InvalidArgument, StoreFailed
from broker.store import schema
from broker.store.applier import Applier, Done, Op
from broker.store.encoding import entry_wire, pack

log = logging.getLogger(__name__)

#: what an entry whose command cannot be stored holds instead: applied, it changes nothing
NOTHING = c.Batch([])

#: Writes (or bytes of them) kept for a recovery beyond which a sync is asked for, though no
#: reply waits for one (a stream of QoS 0 publishes and acks would otherwise keep every body
#: in memory).
UNSYNCED_WRITES = 64
UNSYNCED_BYTES = 32 << 20


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
    #: a single node's proposals need no key (see commands.Meta)
    key: None = None
    floor: int = 0
    #: why the command could not go to the log (it was replaced by one that does nothing)
    refused: BrokerError | None = None


@dataclass
class Committer(Applier):
    """The single node's log lane on top of the applier (`last_index`: the log's last entry,
    everything up to it written, synced and applied at start)."""

    term: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.written_index = self.synced_index = self.last_index
        self._unwritten: list[_Entry] = []
        self._writing: list[_Entry] = []
        #: the write handed out and not yet reported on
        self._pending: Write | None = None
        #: writes done and not yet synced: written again after a failure, as the disk may
        #: have lost them
        self._unsynced: list[Write] = []
        self._unsynced_bytes = 0
        #: while the store has failed: commands waiting for it, numbered once it recovers
        self._held: list[_Entry] = []
        #: ops undoing the write that failed (deletion of its batch), for the recovery write
        self._undo: list[Op] = []
        #: entries (and barriers) with a reply to release, in index order, from the head
        self._replies: deque[_Entry] = deque()

    # -- input ---------------------------------------------------------------------------

    def propose(self, command: Any, time: int, done: Done | None, durable: bool = True) -> None:
        """Add `command` to the log; `done` runs once it is applied (and synced if durable)."""
        if self.failed is not None:
            if done is not None and durable:
                self._releases.append((done, None, self._failure(), []))
            else:
                self._held.append(_Entry(0, time, command, done, durable))
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
        """`done` runs once everything proposed so far is applied and synced (while the
        store has failed: once it works again, after the commands held before it)."""
        if self.failed is not None:
            self._held.append(_Entry(0, 0, None, done, True, applied=True))
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
            sync = self._too_much_unsynced()
            write = Write(ops, last, sync, entries=len(self._writing), wants_sync=wants_sync)
        elif self._needs_sync():
            write = Write([], self.written_index, sync=True)
        elif self.garbage:
            ops = []
            self._collect_garbage(ops)
            write = Write(ops, self.written_index, sync=False, cleanup=True)
        else:
            return None
        self._pending = write
        return write

    def _batch(self, entries: list[_Entry]) -> Op:
        """The entries as one key of the log."""
        first, last = entries[0].index, entries[-1].index
        term = self.term
        wires = [entry_wire(term, e.time, e.command) for e in entries]
        try:
            value = schema.encode_batch(first, wires)
        except TypeError:  # some value has no stored form: find it
            wires = [self._storable(e, wire) for e, wire in zip(entries, wires, strict=True)]
            value = schema.encode_batch(first, wires)
        self.add_batch(first, last, len(value))
        return schema.batch_key(first, last), value

    def _storable(self, entry: _Entry, wire: Any) -> Any:
        """`wire` if it packs; else the entry's command becomes one that does nothing, and
        whoever proposed it is told why: a value the log cannot hold (an integer past 64
        bits in a header, say) must not stop the log for every other command."""
        try:
            pack(wire)
            return wire
        except TypeError as exc:
            log.error("%s refused: it cannot be stored (%s)", type(entry.command).__name__, exc)
            entry.command = NOTHING
            entry.refused = InvalidArgument(f"the command cannot be stored: {exc}")
            return entry_wire(self.term, entry.time, NOTHING)

    def written(self, write: Write) -> None:
        """The write is done: its entries are in the log (committed), so apply them. If it
        was a synced write, everything up to it is on disk too."""
        self.stats["writes"] += 1
        self._pending = None
        entries, self._writing = self._writing, []
        self.written_index = max(self.written_index, write.last_index)
        if write.ops and not write.sync:
            self._unsynced.append(write)
            self._unsynced_bytes += sum(len(value) for _, value in write.ops if value)
        self._apply(entries)
        if write.sync:
            self.synced(write.last_index)
        else:
            self._release_replies()

    def synced(self, index: int) -> None:
        """Everything written up to `index` is on disk: release the replies waiting for it."""
        self.stats["syncs"] += 1
        self._pending = None
        self.synced_index = max(self.synced_index, index)
        if self._unsynced and self._unsynced[-1].last_index <= index:
            self._unsynced = []
            self._unsynced_bytes = 0
        elif self._unsynced:
            self._unsynced = [w for w in self._unsynced if w.last_index > index]
            self._unsynced_bytes = sum(len(v) for w in self._unsynced for _, v in w.ops if v)
        self._release_replies()

    def write_failed(self, exc: BaseException) -> None:
        """The disk refused the pending write (or its sync): nothing more is acknowledged
        until the driver has the store working again (`recovery_write`)."""
        log.critical(
            "store write failed: %r; this node acknowledges nothing until its store works "
            "again (entries up to %d are on disk, %d applied); it retries by itself",
            exc,
            self.synced_index,
            self.applied_index,
        )
        self.failed = exc
        error = self._failure()
        failed = self._pending
        self._pending = None
        if failed is not None and self._writing:
            # Never applied, and not on disk (LevelDB's checksums drop a torn record); its
            # key is deleted all the same by the recovery write, as its indexes are reused.
            first = self._writing[0].index
            self.drop_batches_from(first)
            self._undo = [(failed.ops[0][0], None)]
            self.garbage.extend(schema.batch_range(key) for key, _ in failed.ops[1:])
        elif failed is not None and failed.cleanup:
            self.garbage.extend(schema.batch_range(key) for key, _ in failed.ops)
        # Applied entries are written, and on disk once the recovery write is: their replies
        # wait for it. Commands never applied are refused if their reply promises
        # durability, else held, with the barriers among them, until the store works again.
        kept: deque[_Entry] = deque()
        held_barriers = []
        for entry in self._replies:
            if entry.command is None and entry.index > self.written_index:
                held_barriers.append(entry)
            elif entry.applied and not entry.durable:
                self._releases.append((entry.done, entry.reply, entry.error, []))
            elif entry.applied:
                kept.append(entry)
            elif entry.durable:
                self._releases.append((entry.done, None, error, []))
        self._replies = kept
        waiting = [e for e in self._writing + self._unwritten if e.done is None or not e.durable]
        # A barrier comes after the commands proposed before it.
        self._held = sorted(waiting + held_barriers, key=lambda e: (e.index, e.command is None))
        self._writing = []
        self._unwritten = []
        self.last_index = self.written_index

    def recovery_write(self) -> Write:
        """What the store must take, synced, before it is trusted again: the writes done
        since the last sync, and the deletion of the batch whose write failed."""
        ops = [op for write in self._unsynced for op in write.ops] + self._undo
        return Write(ops, self.written_index, sync=True)

    def recovered(self) -> None:
        """The recovery write is on disk: carry on, with the commands held meanwhile."""
        log.warning(
            "store works again: entries up to %d are on disk; %d commands held meanwhile "
            "go to the log now",
            self.written_index,
            len(self._held),
        )
        self.failed = None
        self._undo = []
        self.synced(self.written_index)  # releases the replies of what was applied before
        held, self._held = self._held, []
        for entry in held:
            if entry.command is None:
                assert entry.done is not None
                self.barrier(entry.done)
            else:
                self.propose(entry.command, entry.time, entry.done, entry.durable)

    def _too_much_unsynced(self) -> bool:
        return len(self._unsynced) >= UNSYNCED_WRITES or self._unsynced_bytes >= UNSYNCED_BYTES

    def _failure(self) -> StoreFailed:
        return StoreFailed(f"the node's store failed ({self.failed!r}): nothing is acknowledged")

    def _needs_sync(self) -> bool:
        if self._too_much_unsynced():
            return True
        return bool(self._replies) and self._replies[0].durable and self._replies[0].applied

    # -- applying ------------------------------------------------------------------------

    def _applied(self, entry: _Entry, reply: Any, error: BrokerError | None) -> None:
        if entry.done is not None:
            if entry.refused is not None:
                reply, error = None, entry.refused
            entry.applied, entry.reply, entry.error = True, reply, error

    def _after_rebuild(self) -> None:
        self._release_replies()

    def _release_replies(self) -> None:
        replies = self._replies
        while replies:
            head = replies[0]
            if not head.applied or (head.durable and head.index > self.synced_index):
                return
            replies.popleft()
            self._releases.append((head.done, head.reply, head.error, []))
