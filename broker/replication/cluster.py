"""A node of a cluster: Raft under the commit path, with the same face as the single node's
commit driver (store/driver.py), so the gateway and the adapters do not know which they use.

    submit ─► leader: raft.propose        ─► Ready: entries + term/vote in one synced write
           └► follower: Forward to leader     messages to the others (a leader's at once)
    committed (a majority has it on disk) ─► Applier.apply ─► replies, effects on this node

Every node applies every committed entry, so every node's state answers reads, and every
node carries out the effects for its own clients (deliveries to consumers connected to it,
long-poll wake-ups); only the leader proposes Ticks for due timers, runs HTTP pushers and
releases what a node that went away held. A proposal carries a key (this node, its
incarnation, a number): a reply is released when this node applies the entry with its key,
and a command sent again after a failover is applied once (StateMachine.proposers).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import Callable
from concurrent.futures import Future as ThreadFuture
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from broker.core import commands as c
from broker.core.errors import BrokerError, ClusterUnavailable, InvalidArgument
from broker.core.model import Effect
from broker.core.state import StateMachine
from broker.histogram import CommitMetrics
from broker.local_gateway import CONNECTION_BITS
from broker.replication import wire
from broker.replication.log_store import Proposal, RaftLog, entry_size, to_wire
from broker.replication.raft import (
    AppendEntries,
    Entry,
    InstallSnapshot,
    Message,
    NotLeader,
    ProposalRefused,
    Raft,
    Ready,
    SnapshotMeta,
)
from broker.replication.snapshot_transfer import NoSnapshotYet, SnapshotReceiver, send_snapshot
from broker.replication.transport import PeerLinks
from broker.store import schema
from broker.store.applier import Applier, Done, Snapshot
from broker.store.disk import Store
from broker.store.driver import Clock, DueTimer
from broker.store.encoding import pack
from broker.store.recovery import Recovered, rebuild, recover

log = logging.getLogger(__name__)

#: What a leader sends to put its snapshot on a follower: dropped while one is installed
#: (a new transfer would start by clearing the incoming dir being moved in).
SNAPSHOT_MESSAGES = (wire.SnapshotBegin, wire.SnapshotChunk, wire.SnapshotEnd, InstallSnapshot)
#: How long a leader waits for a follower to answer the snapshot it was sent (it may have a
#: backlog to read first, then the install) before sending another.
SNAPSHOT_ANSWER_S = 5.0


@dataclass
class ClusterSettings:
    node_id: int
    #: every member's cluster address, this node's included
    members: dict[int, tuple[str, int]]
    listen: tuple[str, int]
    secret: bytes | None = None
    tick_ms: int = 100
    election_ticks: int = 10
    #: a node not heard from for this long is released (what its clients held goes back)
    node_down_ms: int = 5000
    #: without a leader for this long, this node's clients are disconnected
    no_leader_ms: int = 10000
    #: a forwarded command not applied within this long is sent again (once per leader)
    resend_ms: int = 3000
    #: entries kept in the log behind the last snapshot, for followers a little behind
    #: (without them, a follower that missed a second of traffic would need a snapshot)
    retain_entries: int = 20000
    #: a live follower behind holds the log for up to this many times retain_entries more
    #: (see ClusterCommit._kept_for_followers)
    hold_factor: int = 10
    ssl_server: Any = None
    ssl_client: Any = None


@dataclass(slots=True)
class _Committed:
    """A committed entry as the applier takes it."""

    index: int
    time: int
    command: Any
    key: tuple[int, int, int] | None
    floor: int
    term: int


@dataclass(slots=True)
class _Pending:
    """A command of this node's clients waiting to be applied."""

    command: Any
    done: Done | None
    #: when it was last proposed or forwarded, 0: not yet
    sent_at: float = 0.0


@dataclass
class ClusterApplier(Applier):
    """The applier, releasing replies by proposal key and writing Raft's snapshot meta."""

    node_id: int = 0
    incarnation: int = 0
    voters: tuple[int, ...] = ()
    pending: dict[int, _Pending] = field(default_factory=dict)
    applied_term: int = 0
    held_garbage: list[tuple[int, int]] = field(default_factory=list)

    def _applied(self, entry: _Committed, reply: Any, error: BrokerError | None) -> None:
        self.applied_term = entry.term
        key = entry.key
        if key is not None and key[0] == self.node_id and key[1] == self.incarnation:
            waiting = self.pending.pop(key[2], None)
            if waiting is not None and waiting.done is not None:
                self._releases.append((waiting.done, reply, error, []))

    def snapshot_written(self, snapshot: Snapshot) -> None:
        """The snapshot is on disk; the log batches it made useless wait for the log to be
        cut behind them (ClusterCommit._compact): followers may still need those entries."""
        self._snapshotting = False
        self.snapshot_index = snapshot.index
        self.held_garbage.extend(snapshot.garbage)

    def release_garbage(self, upto: int) -> None:
        """The log starts after `upto` now: batches up to it may go."""
        keep: list[tuple[int, int]] = []
        for batch in self.held_garbage:
            (self.garbage if batch[1] <= upto else keep).append(batch)
        self.held_garbage = keep

    def snapshot_meta(self, term_of: Callable[[int], int]) -> SnapshotMeta:
        index = self.applied_index
        voters = tuple(sorted(self.state.members)) or self.voters
        return SnapshotMeta(index, term_of(index) if index else 0, voters)


class ClusterCommit:
    """The commit path of a cluster node (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        settings: ClusterSettings,
        incarnation: int,
        on_effects: Callable[[list[Effect]], None],
        on_leadership: Callable[[bool], None],
        clock: Clock | None = None,
    ) -> None:
        self.store = store
        self.settings = s = settings
        self.node_id = s.node_id
        self.incarnation = incarnation
        self.clock = clock or Clock()
        self._on_effects = on_effects
        self._on_leadership = on_leadership
        self._loop = asyncio.get_running_loop()
        self.voters = tuple(sorted(s.members))
        self.log = RaftLog(store, self.voters)
        self.raft = Raft(
            s.node_id,
            self.log,
            random.Random(),
            election_ticks=s.election_ticks,
            heartbeat_ticks=1,
        )
        self.applier = self._recover()
        self._addresses = {n: f"{h}:{p}" for n, (h, p) in s.members.items()}
        self._addresses.update(self.applier.state.members)
        self.links = PeerLinks(
            s.node_id,
            s.listen,
            self._peers(),
            self._on_message,
            secret=s.secret,
            ssl_server=s.ssl_server,
            ssl_client=s.ssl_client,
            on_peer=self._on_peer,
        )
        self._log_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="raft-log")
        self._state_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="snapshots")
        self._receiver = SnapshotReceiver(store.path)
        #: entries as leaders packed them, by (first, last) index: stored as they came
        self._received: dict[tuple[int, int], bytes] = {}
        self._numbers = 0
        self._unsent: list[int] = []
        #: per origin node, the number of a forwarded command refused: later ones wait for it
        self._gaps: dict[int, int] = {}
        self._barriers: list[tuple[int, Callable[[], None]]] = []
        self._flush_scheduled = False
        self._persisting = False
        self._snapshotting = False
        self._installing = False
        self._closed = False
        #: why this node's store refused a write: it takes no part in the cluster from then on
        self.store_error: BaseException | None = None
        self._leader = 0
        self._is_leader = False
        self._no_leader_since: float | None = time.monotonic()
        #: when each peer was last heard from, and which run of it that was
        self._heard: dict[int, float] = {}
        self._incarnations: dict[int, int] = {}
        self._released: set[tuple[int, int]] = set()
        self._transfers: dict[int, asyncio.Task[None]] = {}
        #: per follower, (index, when) of the last snapshot sent to it whole
        self._snapshot_sent: dict[int, tuple[int, float]] = {}
        #: the last snapshot on disk: the log is cut behind it (less what is retained)
        self._durable_snapshot: SnapshotMeta | None = None
        self._transfer_ids = 0
        self._ticker: asyncio.TimerHandle | None = None
        self._timer = DueTimer(self.clock, self._fire_timer)
        self.stats = {"writes": 0, "syncs": 0, "snapshots": 0}
        #: fsyncs, batch sizes and latency of the log writes
        self.metrics = CommitMetrics()
        #: when the synced write in progress was handed to the log's thread (perf_counter)
        self._started = 0.0
        #: set by the node: a direct reply-to answer for a client connected here
        self.on_reply_to: Callable[[wire.ReplyTo], object] = lambda msg: None
        #: set by the node: close this node's client connections (it lost its cluster's
        #: majority, or its state was replaced by a snapshot)
        self.on_lost: Callable[[str], None] = lambda reason: None

    def _recover(self) -> ClusterApplier:
        recovered = recover(self.store, upto=self.log.hard.commit)
        # What the replay counted happened in an earlier run: counters start at 0.
        recovered.state.reset_counters()
        return self._applier_from(recovered)

    def _applier_from(self, recovered: Recovered) -> ClusterApplier:
        applier = ClusterApplier(
            recovered.state,
            last_index=recovered.last_index,
            snapshot_index=recovered.snapshot_index,
            dirty=recovered.dirty,
            skipped=recovered.skipped,
            stored_seq=recovered.stored_seq,
            batches=recovered.batches,
            garbage=recovered.garbage,
            node_id=self.node_id,
            incarnation=self.incarnation,
            voters=self.voters,
        )
        if recovered.last_index:
            applier.applied_term = self.log.term(recovered.last_index)
        return applier

    # -- what the gateway calls ----------------------------------------------------------

    @property
    def state(self) -> StateMachine:
        return self.applier.state

    def now_ms(self) -> int:
        return self.clock.now()

    async def start(self) -> None:
        await self.links.start()
        self._ticker = self._loop.call_later(self.settings.tick_ms / 1000, self._tick)

    def submit(self, command: c.Command, done: Done | None = None, durable: bool = True) -> None:
        if self.store_error is not None:
            if done is not None:
                done(None, self._store_failure())
            return
        self._numbers += 1
        self.applier.pending[self._numbers] = _Pending(command, done)
        self._unsent.append(self._numbers)
        self._schedule_flush()

    def read_done(self) -> None:
        """Nothing to hurry: proposals go out at the end of the loop turn."""

    def after(self, callback: Callable[[], None]) -> None:
        """Run `callback` once everything submitted before it is applied (committed)."""
        if self.store_error is not None:
            return
        self._barriers.append((self._numbers, callback))
        self._schedule_flush()

    def call(self, command: c.Command) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = self._loop.create_future()
        self.submit(command, functools.partial(_settle, fut))
        return fut

    async def drain(self) -> None:
        fut: asyncio.Future[None] = self._loop.create_future()
        self.after(lambda: None if fut.done() else fut.set_result(None))
        await fut

    def _release_barriers(self) -> None:
        pending = self.applier.pending
        oldest = next(iter(pending), None)
        while self._barriers and (oldest is None or self._barriers[0][0] < oldest):
            _, callback = self._barriers.pop(0)
            callback()

    # -- sending proposals ---------------------------------------------------------------

    def _send_unsent(self) -> None:
        if not self._unsent:
            return
        pending = self.applier.pending
        numbers = [n for n in self._unsent if n in pending]
        floor = next(iter(pending), self._numbers + 1)
        now = time.monotonic()
        if self.raft.role == "leader":
            stamp = self.clock.now()
            for pos, n in enumerate(numbers):
                command = pending[n].command
                proposal = Proposal(stamp, command, (self.node_id, self.incarnation, n), floor)
                try:
                    self.raft.propose(proposal, entry_size(command))
                except (NotLeader, ProposalRefused):
                    # The rest waits too: a client's commands are applied in their order.
                    self._unsent = numbers[pos:]
                    return
                pending[n].sent_at = now
            self._unsent = []
            return
        leader = self.raft.leader
        if leader == 0 or not self.links.connected(leader):
            self._unsent = numbers
            return
        items = tuple((self.incarnation, n, floor, pending[n].command) for n in numbers)
        if self.links.send(leader, wire.encode(wire.Forward(items))):
            for n in numbers:
                pending[n].sent_at = now
            self._unsent = []
        else:
            self._unsent = numbers

    def _propose_forwarded(self, origin: int, msg: wire.Forward) -> None:
        """Propose what `origin` forwarded, in its order. What cannot be proposed now goes
        back (NotLeading), and so does whatever comes after it until the origin sends it
        again: a client's commands are applied in their order."""
        stamp = self.clock.now()
        gap = self._gaps.get(origin)
        for pos, (incarnation, number, floor, command) in enumerate(msg.items):
            if gap is not None and number != gap:
                refused = pos
                break
            gap = None
            proposal = Proposal(stamp, command, (origin, incarnation, number), floor)
            try:
                self.raft.propose(proposal, entry_size(command))
            except NotLeader:
                refused = pos
                break
            except ProposalRefused:  # a leadership transfer, say: this leader may go on
                refused = pos
                gap = number
                break
        else:
            self._gaps.pop(origin, None)
            return
        if gap is not None:
            self._gaps[origin] = gap
        numbers = tuple(n for _, n, _, _ in msg.items[refused:])
        self.links.send(origin, wire.encode(wire.NotLeading(self.raft.leader, numbers)))

    def _resend_stale(self) -> None:
        """Commands not applied for a while go again, with everything after them (a leader
        may have lost them with its term; the dedup key keeps copies from being applied
        twice, and sending all in order keeps a client's commands in their order)."""
        limit = time.monotonic() - self.settings.resend_ms / 1000
        if any(0 < p.sent_at < limit for p in self.applier.pending.values()):
            self._resend_all()

    # -- the loop ------------------------------------------------------------------------

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled and not self._closed:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        self._send_unsent()
        self._apply_known_commits()
        self._pump()
        self._snapshot()
        self._compact()
        self._release()
        self._watch_leader()

    def _tick(self) -> None:
        if self._closed:
            return
        self._ticker = self._loop.call_later(self.settings.tick_ms / 1000, self._tick)
        self.raft.tick()
        self._resend_stale()
        self._check_nodes()
        self._schedule_flush()

    def _pump(self) -> None:
        if self._persisting or self._installing or not self.raft.has_ready():
            return
        rd = self.raft.ready()
        if rd.snapshot is not None:
            self._install(rd)
            return
        packed = self._packed(rd)
        if rd.role == "leader":
            self._send(rd.messages, packed)
        # Committed entries were persisted by earlier Readys: they need not wait for this one.
        self._apply(rd.committed)
        ops = self.log.append_ops(rd.entries, rd.hard_state, packed and packed[2])
        self._note_config(rd.entries)
        self.applier._collect_garbage(ops)
        if rd.must_sync:
            self._persisting = True
            # For the confirmed mark: where the log ends after this write, term and vote.
            hard = rd.hard_state or self.log.hard
            last = rd.entries[-1].index if rd.entries else self.log.last_index()
            write = functools.partial(self.store.write_log, ops, True, last, hard.term, hard.vote)
            self._started = time.perf_counter()
            fut = self._log_thread.submit(write)
            done = functools.partial(self._persisted, rd)
            fut.add_done_callback(lambda f: self._loop.call_soon_threadsafe(done, f))
            return
        if ops:  # the commit index alone, or garbage: no sync, Raft learns it again
            try:
                self.store.write_log(ops, sync=False)
            except Exception as exc:
                self._store_failed(exc)
                return
        self._persisted(rd, None)

    def _packed(self, rd: Ready) -> tuple[int, int, bytes] | None:
        """The Ready's entries as one stored batch: the leader packs them once for its log
        and its followers; a follower stores them as the leader sent them, if it can."""
        if not rd.entries:
            return None
        first, last = rd.entries[0].index, rd.entries[-1].index
        if rd.role == "leader":
            value = schema.encode_batch(first, [to_wire(e) for e in rd.entries])
            return first, last, value
        received = self._received.pop((first, last), None)
        self._received.clear()
        return None if received is None else (first, last, received)

    def _persisted(self, rd: Ready, fut: ThreadFuture[None] | None) -> None:
        self._persisting = False
        self.stats["writes"] += 1
        if fut is not None:
            exc = fut.exception()
            if exc is not None:
                self._store_failed(exc)
                return
            self.stats["syncs"] += 1
            self.metrics.written(len(rd.entries), self._started, time.perf_counter(), True)
        if rd.entries:
            first, last = rd.entries[0].index, rd.entries[-1].index
            if first <= self.log.last_index():
                self.applier.drop_batches_from(first)
            self.applier.add_batch(first, last, sum(e.size for e in rd.entries))
        self.log.appended(rd.entries, rd.hard_state)
        if rd.role != "leader":
            self._send(rd.messages)
        self.raft.advance(rd)
        self._schedule_flush()

    def _apply_known_commits(self) -> None:
        """Apply what Raft knows to be committed and this node has on disk, without waiting
        for the next Ready (which waits for the write in progress): replies leave a write
        earlier. Ready.committed brings these entries again; they are skipped then."""
        if self._installing:
            return
        upto = min(self.raft.commit_index, self.raft.persisted_index)
        applied = self.applier.applied_index
        while applied < upto:
            batch = self.log.entries(applied + 1, upto + 1, 1 << 24)
            self._apply(batch)
            if self.applier.applied_index == applied:
                return  # a rebuild stopped it: Ready.committed carries on
            applied = self.applier.applied_index

    def _apply(self, entries: list[Entry]) -> None:
        applier = self.applier
        todo = []
        for e in entries:
            if e.index <= applier.applied_index:
                continue  # replayed from the log at start
            p = e.data
            if p is None:  # a new leader's no-op
                applier.applied_index, applier.applied_term = e.index, e.term
                continue
            todo.append(_Committed(e.index, p.time, p.command, p.key, p.floor, e.term))
        if todo:
            applier._apply(todo)
            while applier.rebuild_needed is not None:
                rebuild(applier, self.store, applier.rebuild_needed)

    def _release(self) -> None:
        self.applier.release(self._on_effects)
        self._release_barriers()
        self._reschedule_timer()

    def _store_failed(self, exc: BaseException) -> None:
        """A member whose disk refused a write stops taking part (it neither votes, nor
        acknowledges entries, nor leads: the others elect a leader without it), refuses
        what its clients send and closes their connections, so they go to another node.
        It must be restarted once its disk is fixed; it then catches up from the leader."""
        log.critical(
            "store write failed: %r; node %d leaves the cluster's work to the others and "
            "closes its clients' connections; restart it once the disk is fixed",
            exc,
            self.node_id,
        )
        self.store_error = exc
        self._closed = True
        if self._ticker is not None:
            self._ticker.cancel()
        self._barriers.clear()  # what they wait for will never be on disk
        self._fail_pending(self._store_failure())
        self._timer.cancel()
        self.on_lost("broker forced connection closure with reason 'node store failed'")

    def _store_failure(self) -> ClusterUnavailable:
        return ClusterUnavailable(f"the node's store failed ({self.store_error!r})")

    # -- messages ------------------------------------------------------------------------

    def _send(self, messages: list[Message], packed: tuple[int, int, bytes] | None = None) -> None:
        for msg in messages:
            kind = type(msg)
            if kind is InstallSnapshot:
                self._start_transfer(msg)  # type: ignore[arg-type]
                continue
            blob = None
            if packed is not None and kind is AppendEntries:
                entries = msg.entries  # type: ignore[union-attr]
                if entries and (entries[0].index, entries[-1].index) == packed[:2]:
                    blob = packed[2]
            self.links.send(msg.dst, wire.encode(msg, blob))

    def _on_message(self, sender: int, raw: Any) -> None:
        try:
            msg = wire.decode(raw)
        except wire.WireError as exc:
            log.warning("dropped a message from node %d: %s", sender, exc)
            return
        packed = wire.packed_entries(raw)
        if packed is not None and msg.entries:  # type: ignore[union-attr]
            entries = msg.entries  # type: ignore[union-attr]
            if len(self._received) > 64:
                self._received.clear()
            self._received[(entries[0].index, entries[-1].index)] = packed
        self._heard[sender] = time.monotonic()
        kind = type(msg)
        if kind is wire.Forward:
            self._propose_forwarded(sender, msg)  # type: ignore[arg-type]
        elif kind is wire.NotLeading:
            self._unsent = sorted(set(self._unsent) | set(msg.numbers))  # type: ignore[union-attr]
        elif kind is wire.Hello:
            self._incarnations[sender] = msg.incarnation  # type: ignore[union-attr]
        elif kind in SNAPSHOT_MESSAGES and (self._installing or self.raft.snapshot_pending):
            pass  # the snapshot to install is in the incoming dir: another one must wait
        elif kind is wire.SnapshotBegin:
            self._receiver.begin(msg)  # type: ignore[arg-type]
        elif kind is wire.SnapshotChunk:
            self._receiver.chunk(msg)  # type: ignore[arg-type]
        elif kind is wire.SnapshotEnd:
            h = self.log.hard
            self._receiver.end(msg, (h.term, h.vote, h.commit))  # type: ignore[arg-type]
        elif kind is wire.ReplyTo:
            self.on_reply_to(msg)  # type: ignore[arg-type]
        elif kind is InstallSnapshot:
            if self._receiver.complete == msg.meta:  # type: ignore[union-attr]
                self.raft.step(msg)  # type: ignore[arg-type]
        else:
            self.raft.step(msg)  # type: ignore[arg-type]
        self._schedule_flush()

    def send_reply_to(self, node: int, msg: wire.ReplyTo) -> bool:
        return self.links.send(node, wire.encode(msg))

    def _on_peer(self, peer: int, up: bool) -> None:
        self._snapshot_sent.pop(peer, None)  # what it was sent may be lost with the link
        if up:
            self.links.send(peer, wire.encode(wire.Hello(self.incarnation)))
            self._heard[peer] = time.monotonic()
        else:
            self.raft.report_unreachable(peer)
            if peer == self.raft.leader:
                # What the broken link held may be lost: send it all again, in order.
                self._resend_all()
        self._schedule_flush()

    def _resend_all(self) -> None:
        pending = self.applier.pending
        for p in pending.values():
            p.sent_at = 0.0
        self._unsent = list(pending)

    # -- snapshots -----------------------------------------------------------------------

    def _snapshot(self) -> None:
        if self._snapshotting or self._installing or self._closed:
            return
        snapshot = self.applier.next_snapshot()
        if snapshot is None:
            return
        meta = self.applier.snapshot_meta(self.log.term)
        snapshot.ops.append((schema.META_RAFT_SNAPSHOT, pack(_meta_wire(meta))))
        self._snapshotting = True
        fut = self._state_thread.submit(self.store.write_state, snapshot.ops)
        done = functools.partial(self._snapshot_done, snapshot, meta)
        fut.add_done_callback(lambda f: self._loop.call_soon_threadsafe(done, f))

    def _snapshot_done(
        self, snapshot: Snapshot, meta: SnapshotMeta, fut: ThreadFuture[None]
    ) -> None:
        self._snapshotting = False
        exc = fut.exception()
        if exc is not None:
            self._store_failed(exc)
            return
        self.stats["snapshots"] += 1
        self.applier.snapshot_written(snapshot)
        self._durable_snapshot = meta
        self._compact()
        self._schedule_flush()

    def _compact(self) -> None:
        """Cut the log behind the last snapshot, keeping `retain_entries` for followers a little
        behind; never past what Raft has applied (it reads what it applies from the log), and
        not while a snapshot is on its way to a follower (it continues from the log after
        that snapshot, which would otherwise be cut: a snapshot storm)."""
        meta = self._durable_snapshot
        if meta is None or self._transfers or self._installing:
            return
        upto = min(meta.index, self.raft.applied_index) - self.settings.retain_entries
        if upto > self.log.snapshot().index:  # the followers matter only if the log may move
            upto = self._kept_for_followers(upto)
        if upto <= self.log.snapshot().index:
            return
        self.log.compacted(SnapshotMeta(upto, self.log.term(upto), self.raft.voters))
        self.applier.release_garbage(upto)

    def _kept_for_followers(self, upto: int) -> int:
        """On the leader: not past what a live follower has, within hold_factor x
        retain_entries. A follower that was just sent a snapshot goes on from the log after
        it; cut behind it while it installs (say, a snapshot written meanwhile under load),
        it would need another snapshot, then another: it would never catch up."""
        if self.raft.role != "leader":
            return upto
        s = self.settings
        lowest = upto - s.hold_factor * s.retain_entries
        alive_since = time.monotonic() - s.node_down_ms / 1000
        for peer, p in self.raft.progress.items():
            if peer != self.node_id and self._heard.get(peer, 0.0) > alive_since:
                upto = min(upto, max(p.match, lowest))
        return upto

    def _start_transfer(self, msg: InstallSnapshot) -> None:
        peer = msg.dst
        if peer in self._transfers:
            return
        sent = self._snapshot_sent.get(peer)
        if sent is not None and time.monotonic() - sent[1] < SNAPSHOT_ANSWER_S:
            p = self.raft.progress.get(peer)
            if p is not None and p.match < sent[0]:
                # Rejections of appends it read before the snapshot: wait for its answer.
                self.raft.report_snapshot(peer, True)
                return
        self._transfer_ids += 1
        task = self._loop.create_task(self._transfer(msg, self._transfer_ids))
        self._transfers[peer] = task

    async def _transfer(self, msg: InstallSnapshot, transfer: int) -> None:
        peer = msg.dst
        ok = False
        try:
            log.info("sending a snapshot to node %d", peer)
            meta = await send_snapshot(
                self.store, transfer, lambda m: self.links.send(peer, wire.encode(m))
            )
            install = InstallSnapshot(msg.src, peer, msg.term, meta)
            ok = self.links.send(peer, wire.encode(install))
            if ok:
                self._snapshot_sent[peer] = (meta.index, time.monotonic())
        except NoSnapshotYet:
            self.applier.snapshot_now()
        except (ConnectionError, RuntimeError) as exc:
            log.warning("sending a snapshot to node %d failed: %s", peer, exc)
        finally:
            self._transfers.pop(peer, None)
            if not self._closed:
                self.raft.report_snapshot(peer, ok)
                self._schedule_flush()

    def _install(self, rd: Ready) -> None:
        """Replace this node's databases by the leader's snapshot and start again from it."""
        assert rd.snapshot is not None
        self._installing = True
        self._loop.create_task(self._install_when_idle(rd))

    async def _install_when_idle(self, rd: Ready) -> None:
        while self._snapshotting:
            await asyncio.sleep(0.005)
        assert rd.snapshot is not None
        if self.store.mark.index > rd.snapshot.index:
            self.store.mark.lower(rd.snapshot.index)  # the log is about to be replaced
        self.store.install()
        self._receiver.complete = None
        self.log.reload()
        hard = rd.hard_state or self.log.hard
        ops = self.log.append_ops(rd.entries, hard)
        last = rd.entries[-1].index if rd.entries else rd.snapshot.index
        self.store.write_log(ops, True, last, hard.term, hard.vote)
        self.log.appended(rd.entries, hard)
        waiting = self.applier.pending
        self.applier = self._recover()
        self.applier.pending = waiting
        self._fail_applied(waiting)
        assert rd.snapshot is not None
        self._durable_snapshot = rd.snapshot
        log.info("installed the leader's snapshot at index %d", rd.snapshot.index)
        self._installing = False
        self._send(rd.messages)
        self._apply(rd.committed)
        self.raft.advance(rd)
        # This node's clients saw a state that jumped: they start again from the new one.
        self.on_lost("broker forced connection closure with reason 'node resynchronized'")
        self._schedule_flush()

    def _fail_applied(self, waiting: dict[int, _Pending]) -> None:
        """Commands of this node that the snapshot holds were applied where this node could
        not see their replies: they fail, and their clients are told so."""
        proposer = self.applier.state.proposers.get(self.node_id)
        if proposer is None or proposer.session != self.incarnation:
            return
        error = ClusterUnavailable("this node was resynchronized: the command's outcome is lost")
        for number in [n for n in waiting if n < proposer.floor or n in proposer.seen]:
            done = waiting.pop(number).done
            if done is not None:
                self.applier._releases.append((done, None, error, []))

    # -- leadership and membership -------------------------------------------------------

    def _watch_leader(self) -> None:
        leader = self.raft.leader
        if leader != self._leader:
            self._leader = leader
            log.info(
                "node %d: the leader is now %s (term %d)",
                self.node_id,
                leader or "unknown",
                self.raft.term,
            )
            if leader:
                # Whatever went to the previous leader may be lost with its term: again.
                self._resend_all()
                self._schedule_flush()
        is_leader = self.raft.role == "leader"
        if is_leader != self._is_leader:
            self._is_leader = is_leader
            self._gaps.clear()
            self._timer.cancel()
            self._on_leadership(is_leader)
            self._reschedule_timer()
        if leader:
            self._no_leader_since = None
        elif self._no_leader_since is None:
            self._no_leader_since = time.monotonic()
        elif time.monotonic() - self._no_leader_since > self.settings.no_leader_ms / 1000:
            self._no_leader_since = time.monotonic()
            log.warning(
                "node %d has had no leader for %d ms: its clients are disconnected",
                self.node_id,
                self.settings.no_leader_ms,
            )
            self._fail_pending(
                ClusterUnavailable("the node cannot reach a majority of its cluster")
            )
            self.on_lost(
                "broker forced connection closure with reason 'node lost its cluster majority'"
            )

    def _fail_pending(self, error: BrokerError) -> None:
        pending = self.applier.pending
        for number in list(pending):
            done = pending.pop(number).done
            if done is not None:
                self.applier._releases.append((done, None, error, []))
        self._unsent = []
        self._release()

    def _check_nodes(self) -> None:
        """The leader releases what a node that went silent held (its consumers' messages
        go back to their queues, its MQTT sessions end with their wills)."""
        if self.raft.role != "leader":
            return
        now = time.monotonic()
        limit = self.settings.node_down_ms / 1000
        for peer in self.raft.voters:
            if peer == self.node_id:
                continue
            heard = self._heard.setdefault(peer, now)
            incarnation = self._incarnations.get(peer)
            if incarnation is None or now - heard < limit:
                continue
            if (peer, incarnation) in self._released:
                continue
            self._released.add((peer, incarnation))
            log.warning("node %d is silent: releasing what its clients held", peer)
            self.submit(c.ReleaseNode(peer, before=(incarnation + 1) << CONNECTION_BITS))

    def _note_config(self, entries: list[Entry]) -> None:
        changed = False
        for e in entries:
            if e.config is not None and e.data is not None:
                self._addresses = dict(e.data.command.members)
                changed = True
        if changed:
            self.links.set_peers(self._peers())

    def _peers(self) -> dict[int, tuple[str, int]]:
        peers = {}
        for node, address in self._addresses.items():
            if node != self.node_id:
                host, _, port = address.rpartition(":")
                peers[node] = (host, int(port))
        return peers

    async def change_members(self, node: int, address: str | None) -> None:
        """Add `node` at `address`, or remove it (None): a single-server change, committed
        when this returns. Runs on the leader."""
        self._check_leading()
        members = dict(self._addresses)
        if address is None:
            members.pop(node, None)
        else:
            members[node] = address
        command = c.SetMembers(tuple(sorted(members.items())))
        self._numbers += 1
        number = self._numbers
        floor = next(iter(self.applier.pending), number)
        fut: asyncio.Future[Any] = self._loop.create_future()
        self.applier.pending[number] = _Pending(command, lambda r, e: _settle(fut, r, e), 1.0)
        proposal = Proposal(
            self.clock.now(), command, (self.node_id, self.incarnation, number), floor
        )
        try:
            self.raft.propose_config(tuple(sorted(members)), proposal, entry_size(command))
        except (NotLeader, ProposalRefused) as exc:
            self.applier.pending.pop(number, None)
            raise InvalidArgument(f"the membership cannot change now: {exc}") from exc
        self._schedule_flush()
        await fut

    async def transfer_leadership(self, target: int) -> None:
        """Hand leadership to `target`; returns once it leads (or after 5 s)."""
        self._check_leading()
        try:
            self.raft.transfer_leadership(target)
        except (NotLeader, ProposalRefused) as exc:
            raise InvalidArgument(str(exc)) from exc
        self._schedule_flush()
        deadline = self._loop.time() + 5.0
        while self.raft.leader != target and self._loop.time() < deadline:
            await asyncio.sleep(0.02)
        if self.raft.leader != target:
            raise InvalidArgument(f"node {target} did not take over within 5 s")

    def _check_leading(self) -> None:
        if self.raft.role != "leader":
            leader = self.raft.leader
            where = f"node {leader} leads" if leader else "no node leads right now"
            raise InvalidArgument(f"run this on the leader: {where}")

    def status(self) -> dict[str, Any]:
        raft = self.raft
        progress = raft.progress if raft.role == "leader" else {}
        members = []
        for node in sorted(set(raft.voters) | set(self._addresses)):
            p = progress.get(node)
            match = raft.last_index if node == self.node_id else (p.match if p else None)
            members.append(
                {"node_id": node, "address": self._addresses.get(node), "match_index": match}
            )
        return {
            "node_id": self.node_id,
            "leader_id": raft.leader,
            "role": raft.role,
            "term": raft.term,
            "commit_index": raft.commit_index,
            "applied_index": self.applier.applied_index,
            "members": members,
        }

    # -- timers --------------------------------------------------------------------------

    def _reschedule_timer(self) -> None:
        if self._is_leader:  # the leader alone proposes Ticks
            self._timer.reschedule(self.state.next_due())
        else:
            self._timer.cancel()

    def _fire_timer(self) -> None:
        if self._is_leader:
            self.submit(c.Tick(), durable=False)

    # -- shutdown ------------------------------------------------------------------------

    async def close(self) -> None:
        """Hand leadership over if this node leads, let what is pending finish, and stop."""
        if self.raft.role == "leader":
            await self._hand_over()
        try:
            await asyncio.wait_for(self.drain(), timeout=2.0)
        except TimeoutError:
            log.warning("stopping with commands not yet committed")
        self._closed = True
        for task in list(self._transfers.values()):
            task.cancel()
        if self._ticker is not None:
            self._ticker.cancel()
        self._timer.cancel()
        await self.links.close()
        while self._persisting or self._snapshotting:
            await asyncio.sleep(0.005)
        self._log_thread.shutdown(wait=True)
        self._state_thread.shutdown(wait=True)
        self._receiver.abort()

    async def _hand_over(self) -> None:
        progress = self.raft.progress
        others = [n for n in self.raft.voters if n != self.node_id and n in progress]
        if not others:
            return
        target = max(others, key=lambda n: progress[n].match)
        try:
            self.raft.transfer_leadership(target)
        except (NotLeader, ProposalRefused):
            return
        self._schedule_flush()
        deadline = self._loop.time() + 1.0
        while self.raft.role == "leader" and self._loop.time() < deadline:
            await asyncio.sleep(0.01)


def _meta_wire(meta: SnapshotMeta) -> list[Any]:
    return [meta.index, meta.term, list(meta.config)]


def _settle(fut: asyncio.Future[Any], reply: Any, error: BrokerError | None) -> None:
    if fut.done():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(reply)
