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

A write that fails stops everything: nothing more is acknowledged, every waiting and later
command gets a StoreFailed error, and the node says so.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Any

from broker.core.errors import BrokerError, StoreFailed
from broker.store import schema
from broker.store.applier import Applier, Done, Op
from broker.store.encoding import entry_wire

log = logging.getLogger(__name__)


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
        #: entries (and barriers) with a reply to release, in index order, from the head
        self._replies: deque[_Entry] = deque()

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
        term = self.term
        value = schema.encode_batch(first, [entry_wire(term, e.time, e.command) for e in entries])
        self.add_batch(first, last, len(value))
        return schema.batch_key(first, last), value

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

    def _applied(self, entry: _Entry, reply: Any, error: BrokerError | None) -> None:
        if entry.done is not None:
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
