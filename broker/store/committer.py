"""The commit path with no I/O in it: proposals in; disk writes, replies and effects out.

    propose ─► entries batched into a Write ─► written ─► applied in index order ─► effects
                                               synced ─► replies released in index order

A command becomes a log entry (index, time, command) when proposed. The driver hands the
Writes this object asks for to the disk, one at a time, and reports back. Entries that are
written are committed (a log of one: later, Raft decides commitment here), so they are applied
to the state machine at once, in index order, and their effects (deliveries, wake-ups) are
released. Replies are released strictly in index order too, and a reply that promises
durability (a publisher confirm, a PUBACK, an HTTP answer) only once its entry is synced.

Every so often a Write also carries a snapshot: the records that changed since the previous
one, the index it is at, and the deletion of the log entries it covers. Recovery loads the
snapshot and replays the log after it (see recovery).

A write that fails stops everything: nothing more is acknowledged, every waiting and later
command gets a StoreFailed error, and the node says so. A command that fails half-way through
its application is undone by rebuilding the state without it (`rebuild_needed`).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from broker.core import commands as c
from broker.core.errors import BrokerError, InternalError, StoreFailed
from broker.core.model import Effect
from broker.core.state import StateMachine
from broker.store import schema
from broker.store.encoding import encode_entry, pack

log = logging.getLogger(__name__)

#: Called once the command is applied (and durable if it said so): (reply, error).
Done = Callable[[Any, BrokerError | None], None]
Op = tuple[bytes, bytes | None]

#: A snapshot is written once this many entries, or bytes of entries, are applied past the last.
SNAPSHOT_ENTRIES = 8192
SNAPSHOT_BYTES = 8 * 1024 * 1024


@dataclass(slots=True)
class Write:
    """One job for the disk: these ops in one atomic batch, synced or not."""

    ops: list[Op]
    #: entries up to this index are written once this write is
    last_index: int
    sync: bool


@dataclass(slots=True)
class _Entry:
    index: int
    time: int
    command: Any
    payload: bytes
    done: Done | None
    durable: bool


@dataclass(slots=True)
class _Reply:
    """A reply waiting for its turn: its entry's index, and what to call with what."""

    index: int
    done: Done
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
    snapshot_entries: int = SNAPSHOT_ENTRIES
    snapshot_bytes: int = SNAPSHOT_BYTES

    def __post_init__(self) -> None:
        self.written_index = self.synced_index = self.applied_index = self.last_index
        self._unwritten: list[_Entry] = []
        self._writing: list[_Entry] = []
        #: replies in index order, released from the head
        self._replies: deque[_Reply] = deque()
        #: the replies of entries not applied yet, in index order
        self._unapplied: deque[_Reply] = deque()
        #: entries of a write whose application stopped for a rebuild
        self._pending_apply: list[_Entry] = []
        self._releases: list[Release] = []
        self._log_bytes = 0
        #: the stored list of skipped entries may be out of date
        self._skipped_changed = bool(self.skipped)
        #: set when applying an entry failed half-way: the state must be rebuilt before it
        self.rebuild_needed: int | None = None
        self.failed: BaseException | None = None
        self.stats = {"commands": 0, "writes": 0, "syncs": 0, "snapshots": 0}

    # -- input ---------------------------------------------------------------------------

    def propose(self, command: Any, time: int, done: Done | None, durable: bool = True) -> None:
        """Add `command` to the log; `done` runs once it is applied (and synced if durable)."""
        self.stats["commands"] += 1
        if self.failed is not None:
            if done is not None:
                self._releases.append((done, None, self._failure(), []))
            return
        self.last_index += 1
        entry = _Entry(
            self.last_index,
            time,
            command,
            encode_entry(self.term, time, command),
            done,
            durable,
        )
        self._unwritten.append(entry)
        if done is not None:
            reply = _Reply(entry.index, done, durable)
            self._replies.append(reply)
            self._unapplied.append(reply)

    def barrier(self, done: Done) -> None:
        """`done` runs once everything proposed so far is applied and synced."""
        if self.failed is not None:
            self._releases.append((done, None, self._failure(), []))
            return
        self._replies.append(_Reply(self.last_index, done, True, applied=True))
        self._release_replies()

    # -- the disk ------------------------------------------------------------------------

    def next_write(self) -> Write | None:
        """What to write next, if anything (one write at a time)."""
        if self.failed is not None or self._writing or self.rebuild_needed is not None:
            return None
        ops: list[Op] = []
        if self._snapshot_due():
            ops.extend(self._snapshot())
        if self._skipped_changed:
            self._skipped_changed = False
            ops.append((schema.META_SKIPPED, pack(sorted(self.skipped))))
        if self._unwritten:
            self._writing, self._unwritten = self._unwritten, []
            ops.extend((schema.log_key(e.index), e.payload) for e in self._writing)
            self._log_bytes += sum(len(e.payload) for e in self._writing)
            return Write(ops, self._writing[-1].index, sync=False)
        if ops:
            return Write(ops, self.written_index, sync=False)
        if self._needs_sync():
            return Write([], self.written_index, sync=True)
        return None

    def written(self, write: Write) -> None:
        """The write is done: its entries are in the log (committed), so apply them."""
        self.stats["writes"] += 1
        if write.sync:
            self.stats["syncs"] += 1
            self.synced_index = max(self.synced_index, write.last_index)
        entries, self._writing = self._writing, []
        self.written_index = max(self.written_index, write.last_index)
        self._apply(entries)
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
        for reply in self._replies:
            if reply.applied and not reply.durable:
                self._releases.append((reply.done, reply.reply, reply.error, []))
            else:
                self._releases.append((reply.done, None, error, []))
        self._replies.clear()
        self._unapplied.clear()
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
                    entry.command, c.Meta(entry.index, entry.time)
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
            for kind, key, value in changes:
                dirty[(kind, key)] = value
            if effects:
                releases.append((None, None, None, effects))
            if entry.done is not None:
                self._settle_reply(entry.index, reply, error)

    def _settle_reply(self, index: int, reply: Any, error: BrokerError | None) -> None:
        waiting = self._unapplied.popleft()
        assert waiting.index == index
        waiting.applied, waiting.reply, waiting.error = True, reply, error

    def rebuilt(self, state: StateMachine, dirty: dict[tuple[str, Any], Any]) -> None:
        """The driver rebuilt the state up to the failed entry, without it: carry on."""
        index = self.rebuild_needed
        assert index is not None
        self.rebuild_needed = None
        self.skipped.add(index)
        self._skipped_changed = True
        self.state, self.dirty = state, dirty
        failed, *rest = self._pending_apply
        self._pending_apply = []
        self.applied_index = failed.index
        if failed.done is not None:
            self._settle_reply(
                failed.index, None, InternalError("internal error: the command was undone")
            )
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

    def _snapshot_due(self) -> bool:
        behind = self.applied_index - self.snapshot_index
        return behind > 0 and (
            behind >= self.snapshot_entries or self._log_bytes >= self.snapshot_bytes
        )

    def snapshot_now(self) -> None:
        """Make the next write carry a snapshot (shutdown, tests)."""
        self._log_bytes = max(self._log_bytes, self.snapshot_bytes)

    def _snapshot(self) -> list[Op]:
        ops = schema.snapshot_ops(self.dirty, self.state)
        ops.append((schema.META_SNAPSHOT, pack(self.applied_index)))
        covered = range(self.snapshot_index + 1, self.applied_index + 1)
        ops.extend((schema.log_key(i), None) for i in covered)
        self.stats["snapshots"] += 1
        self.dirty = {}
        self.snapshot_index = self.applied_index
        kept = {i for i in self.skipped if i > self.snapshot_index}
        if kept != self.skipped:
            self.skipped, self._skipped_changed = kept, True
        self._log_bytes = 0
        return ops
