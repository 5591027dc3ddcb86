"""The Raft core, sans-IO: messages, ticks and proposals in; a Ready to persist and send out.

No clock, socket, thread, disk or randomness source in here: the host (the broker node)
drives it, and the same code runs in the deterministic simulation of tests/raft_sim.py.

    raft.step(msg), raft.tick(), raft.propose(data) ...   as often as they come, then
    if raft.has_ready():
        rd = raft.ready()                              (at once: no compaction in between)
        if rd.role == "leader": send rd.messages       (a leader may send before writing)
        write rd.snapshot, rd.entries, rd.hard_state   (one write; synced if rd.must_sync)
        if rd.role != "leader": send rd.messages       (they promise what was just written)
        apply rd.committed in order, then raft.advance(rd)

Proposals, steps and ticks may come while a Ready is being written: they go into the next
one (group commit). A crash loses whatever was not written through an advanced Ready, and a
new Raft on the same storage carries on from there (it applies again from the snapshot).

On top of the Raft paper, after the dissertation (Ongaro 2014) and etcd's raft package:
pre-vote (§9.6: a node that cannot win does not bump its term), check-quorum and leader
stickiness (§6.2: a leader cut off from a majority steps down; a node that hears from a live
leader ignores campaigns), a no-op entry at election (§5.4.2: a leader commits only entries
of its own term by counting), leadership transfer (§3.10), single-server membership changes
(§4.1-4.4), snapshots, and pipelined appends with flow control (see progress).

Elections in one picture (pre-vote on):

    follower ──(no leader for an election timeout)──► precandidate ──(majority would vote)──►
    candidate (term+1) ──(majority voted, own vote on disk)──► leader ──(higher term, lost
    quorum, removed)──► follower

A config entry is in force as soon as it is in the log, committed or not; a node removed by
one campaigns only until it is committed (see _promotable).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from broker.replication.progress import Progress, ProgressState
from broker.replication.raft_log import (
    Entry,
    HardState,
    LogView,
    NodeId,
    SnapshotMeta,
    Storage,
)

__all__ = [
    "AppendEntries",
    "AppendResponse",
    "Entry",
    "HardState",
    "InstallSnapshot",
    "Message",
    "NodeId",
    "NotLeader",
    "Progress",
    "ProgressState",
    "ProposalRefused",
    "Raft",
    "RaftError",
    "Ready",
    "ReadyOutstanding",
    "RequestVote",
    "Role",
    "SnapshotMeta",
    "Storage",
    "TimeoutNow",
    "VoteResponse",
]


class Role(StrEnum):
    FOLLOWER = "follower"
    PRECANDIDATE = "precandidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


# -- messages --------------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class AppendEntries:
    """Entries after (prev_index, prev_term); with none, a heartbeat carrying the commit."""

    src: NodeId
    dst: NodeId
    term: int
    prev_index: int
    prev_term: int
    entries: tuple[Entry, ...]
    commit: int


@dataclass(slots=True, frozen=True)
class AppendResponse:
    """success: index = the follower's match index. Failure: index = the rejected
    prev_index, hint = the last index that may still match, so the leader backs off fast."""

    src: NodeId
    dst: NodeId
    term: int
    success: bool
    index: int
    hint: int = 0


@dataclass(slots=True, frozen=True)
class RequestVote:
    """pre_vote: would you vote for me in `term`? (nobody's term changes). transfer: the
    leader asked for this election, so it may interrupt a live leader's lease."""

    src: NodeId
    dst: NodeId
    term: int
    last_index: int
    last_term: int
    pre_vote: bool
    transfer: bool


@dataclass(slots=True, frozen=True)
class VoteResponse:
    src: NodeId
    dst: NodeId
    term: int
    granted: bool
    pre_vote: bool


@dataclass(slots=True, frozen=True)
class InstallSnapshot:
    """Replace your log with this snapshot; its data travels beside this message."""

    src: NodeId
    dst: NodeId
    term: int
    meta: SnapshotMeta


@dataclass(slots=True, frozen=True)
class TimeoutNow:
    """From the leader to the target of a leadership transfer: campaign now."""

    src: NodeId
    dst: NodeId
    term: int


Message = AppendEntries | AppendResponse | RequestVote | VoteResponse | InstallSnapshot | TimeoutNow


@dataclass(slots=True)
class Ready:
    """What the host must do: persist, send, apply. Then advance()."""

    #: persist it (None: unchanged)
    hard_state: HardState | None
    #: append to storage, first removing any stored entry with index >= entries[0].index
    entries: list[Entry]
    #: install the snapshot whose data the host received with the InstallSnapshot, before
    #: appending `entries`; the log restarts after it
    snapshot: SnapshotMeta | None
    #: a leader's go out at once; anyone else's only once the write is done
    messages: list[Message]
    #: to apply, in order; all persisted here by an earlier Ready
    committed: list[Entry]
    #: soft state: the known leader (0 = unknown), and this node's role
    leader: NodeId
    role: str
    #: entries, a snapshot, or the term or vote changed: the write must be synced. A change of
    #: the commit index alone need not be (Raft learns it again from the leader).
    must_sync: bool


class RaftError(Exception):
    """Base of the errors the core raises."""


class NotLeader(RaftError):
    def __init__(self, leader: NodeId) -> None:
        super().__init__(f"not the leader (the leader is {leader or 'unknown'})")
        #: the known leader, or 0
        self.leader = leader


class ProposalRefused(RaftError):
    """The leader will not take this now: a transfer is in progress, a config change is
    pending, or the change itself is not valid."""


class ReadyOutstanding(RaftError):
    """ready() again before advance(), or advance() of some other Ready."""


class Raft:
    def __init__(
        self,
        node_id: NodeId,
        storage: Storage,
        rng: random.Random,
        *,
        election_ticks: int = 10,
        heartbeat_ticks: int = 1,
        max_inflight: int = 64,
        max_batch_bytes: int = 1 << 20,
        pre_vote: bool = True,
        check_quorum: bool = True,
        rejoin_ticks: int = 0,
    ) -> None:
        if node_id < 1:
            raise ValueError(f"node ids start at 1, not {node_id}")
        if not 1 <= heartbeat_ticks < election_ticks:
            raise ValueError("need 1 <= heartbeat_ticks < election_ticks")
        if max_inflight < 1:
            raise ValueError("max_inflight must be at least 1")
        self._id = node_id
        self._rng = rng
        self._election_ticks = election_ticks
        self._heartbeat_ticks = heartbeat_ticks
        self._max_inflight = max_inflight
        self._max_batch_bytes = max_batch_bytes
        self._pre_vote = pre_vote
        self._check_quorum = check_quorum

        hard_state, initial_voters = storage.initial_state()
        self._log = LogView(storage, initial_voters, hard_state.commit)
        self._term = hard_state.term
        self._vote = hard_state.vote
        #: as of the last advance: what a crash would leave on disk
        self._persisted = hard_state
        #: as of the last Ready (so the next carries only changes)
        self._handed_hard_state = hard_state
        self._handed_soft_state: tuple[NodeId, Role] = (0, Role.FOLLOWER)
        self._outstanding: Ready | None = None
        self._msgs: list[Message] = []

        self._role = Role.FOLLOWER
        self._leader: NodeId = 0
        self._election_elapsed = 0
        self._timeout = 0
        self._votes: dict[NodeId, bool] = {}
        # leader only
        self._heartbeat_elapsed = 0
        self._prs: dict[NodeId, Progress] = {}
        self._noop_index = 0
        self._transfer_target: NodeId = 0
        self._transfer_elapsed = 0
        #: the commit index moved, or a heartbeat is due: every follower should hear it
        self._commit_news = False
        self._heartbeat_due = False
        #: A node that starts with nothing may have lost a log it had (a wiped data dir): it
        #: neither votes for a candidate with a log nor campaigns until it has caught up with
        #: the commit index the first leader it hears from has (-1: none heard yet), or its
        #: vote could help elect a leader missing entries it had helped commit. Only for so
        #: long (`rejoin_ticks` from its start): if no leader can be elected without it (its
        #: log never existed, say), it votes after all.
        empty = self._log.last_index() == 0 and hard_state.term == 0
        self._catch_up: int | None = -1 if empty else None
        self._rejoin_ticks = rejoin_ticks or 50 * election_ticks
        self._rejoin_elapsed = 0
        self._reset_timeout()

    # -- read-only state -------------------------------------------------------------------

    @property
    def id(self) -> NodeId:
        return self._id

    @property
    def term(self) -> int:
        return self._term

    @property
    def role(self) -> Role:
        return self._role

    @property
    def leader(self) -> NodeId:
        return self._leader

    @property
    def commit_index(self) -> int:
        return self._log.commit

    @property
    def applied_index(self) -> int:
        return self._log.applied

    @property
    def voters(self) -> tuple[int, ...]:
        return self._log.configs.active()

    @property
    def last_index(self) -> int:
        return self._log.last_index()

    @property
    def persisted_index(self) -> int:
        """The last entry the host has written and advanced: what this node's log holds for
        sure (entries after it may still be cut by a leader)."""
        return self._log.persisted_index()

    @property
    def snapshot_pending(self) -> bool:
        """A snapshot from the leader was accepted and the host has not installed it yet."""
        return self._log.pending_snapshot is not None

    @property
    def progress(self) -> dict[NodeId, Progress]:
        """Leader only (else empty): each voter's progress, this node's own included."""
        if self._role is not Role.LEADER:
            return {}
        out = dict(self._prs)
        if self._id in self.voters:
            own = self._log.persisted_index()
            out[self._id] = Progress(own, self.last_index + 1, ProgressState.REPLICATE)
        return out

    # -- input -----------------------------------------------------------------------------

    def tick(self) -> None:
        if self._role is Role.LEADER:
            self._tick_leader()
        else:
            self._tick_rejoin()
            self._tick_election()

    def step(self, msg: Message) -> None:
        if msg.dst != self._id:
            return
        if msg.term > self._term:
            if not self._enter_higher_term(msg):
                return
        elif msg.term < self._term:
            self._answer_stale(msg)
            return
        if isinstance(msg, AppendEntries):
            self._on_append(msg)
        elif isinstance(msg, AppendResponse):
            self._on_append_response(msg)
        elif isinstance(msg, RequestVote):
            self._on_request_vote(msg)
        elif isinstance(msg, VoteResponse):
            self._on_vote_response(msg)
        elif isinstance(msg, InstallSnapshot):
            self._on_snapshot(msg)
        elif self._role is Role.FOLLOWER and self._promotable():  # TimeoutNow, from the leader
            self._campaign(pre_vote=False, transfer=True)

    def propose(self, data: Any, size: int = 0) -> int:
        """Append `data` as a new entry; its index. It is committed once Ready.committed
        carries it (on this node) - or never, if this leader loses its term first."""
        self._check_can_propose()
        return self._append_as_leader(Entry(self.last_index + 1, self._term, data, None, size))

    def propose_config(self, voters: tuple[int, ...], data: Any = None, size: int = 0) -> int:
        """Add or remove one voter. It takes effect as soon as it is appended; the next change
        waits until this one is committed. `data` rides in the same entry, for the host (the
        new member's address, say)."""
        self._check_can_propose()
        new = tuple(sorted(set(voters)))
        changed = set(new) ^ set(self.voters)
        if len(changed) != 1 or not new or new[0] < 1:
            raise ProposalRefused(f"{new}: a change adds or removes exactly one voter")
        if self._log.configs.pending or self._log.commit < self._noop_index:
            raise ProposalRefused("the previous config change (or the election) is uncommitted")
        index = self._append_as_leader(Entry(self.last_index + 1, self._term, data, new, size))
        self._sync_progress()
        self._maybe_commit()
        return index

    def transfer_leadership(self, target: NodeId) -> None:
        """Hand leadership to `target`: proposals are refused meanwhile; abandoned if it has
        not happened within an election timeout."""
        if self._role is not Role.LEADER:
            raise NotLeader(self._leader)
        if target == self._id or target == self._transfer_target:
            return
        if target not in self._prs:
            raise ProposalRefused(f"node {target} is not a voter")
        self._transfer_target = target
        self._transfer_elapsed = 0
        self._maybe_send_timeout_now()

    def report_unreachable(self, peer: NodeId) -> None:
        """The host lost its link to `peer`: what was in flight is likely lost; probe again."""
        p = self._prs.get(peer) if self._role is Role.LEADER else None
        if p is not None and p.state is ProgressState.REPLICATE:
            p.become_probe()

    def report_snapshot(self, peer: NodeId, ok: bool) -> None:
        """The host's transfer of a snapshot to `peer` ended; wait for its answer, or the next
        heartbeat, before sending more."""
        p = self._prs.get(peer) if self._role is Role.LEADER else None
        if p is None or p.state is not ProgressState.SNAPSHOT:
            return
        if not ok:
            p.snapshot_index = 0
        p.become_probe()
        p.probe_sent = True

    # -- output ----------------------------------------------------------------------------

    def has_ready(self) -> bool:
        if self._outstanding is not None:
            return False
        self._flush()
        log = self._log
        return (
            log.has_unhanded()
            or self._hard_state() != self._handed_hard_state
            or bool(self._msgs)
            or (self._leader, self._role) != self._handed_soft_state
            or min(log.commit, log.persisted_index()) > log.applied
        )

    def ready(self) -> Ready:
        if self._outstanding is not None:
            raise ReadyOutstanding("advance() the previous Ready first")
        self._flush()
        log = self._log
        hard_state = self._hard_state()
        messages, self._msgs = self._msgs, []
        entries = log.take_unstable()
        snapshot = log.take_snapshot()
        durable = self._persisted
        term_or_vote = (hard_state.term, hard_state.vote) != (durable.term, durable.vote)
        rd = Ready(
            hard_state=None if hard_state == self._handed_hard_state else hard_state,
            entries=entries,
            snapshot=snapshot,
            messages=messages,
            committed=log.committed_to_apply(self._max_batch_bytes),
            leader=self._leader,
            role=self._role,
            must_sync=bool(entries) or snapshot is not None or term_or_vote,
        )
        self._handed_hard_state = hard_state
        self._handed_soft_state = (self._leader, self._role)
        self._outstanding = rd
        return rd

    def advance(self, rd: Ready) -> None:
        if rd is not self._outstanding:
            raise ReadyOutstanding("advance() takes the Ready last returned by ready()")
        self._outstanding = None
        log = self._log
        if rd.hard_state is not None:
            self._persisted = rd.hard_state
        if rd.snapshot is not None:
            log.snapshot_installed(rd.snapshot)
        if rd.entries:
            log.stable_to(rd.entries[-1].index, rd.entries[-1].term)
        if rd.committed:
            log.applied_to(rd.committed[-1].index)
        self._check_caught_up()
        if self._role is Role.LEADER:
            self._maybe_commit()  # the leader's own write counts now
        elif self._role is Role.CANDIDATE:
            self._count_votes()  # its own vote counts now

    def _hard_state(self) -> HardState:
        return HardState(self._term, self._vote, self._log.commit)

    def _send(self, msg: Message) -> None:
        self._msgs.append(msg)

    # -- terms and roles -------------------------------------------------------------------

    def _enter_higher_term(self, msg: Message) -> bool:
        """A message from a later term: follow it, unless it should not be heeded (False)."""
        if isinstance(msg, RequestVote):
            if self._in_lease() and not msg.transfer:
                return False  # we hear from a live leader: this campaign would only disrupt
            if msg.pre_vote:
                return True  # nobody's term changes for a pre-vote
        elif isinstance(msg, VoteResponse) and msg.pre_vote and msg.granted:
            return True  # a grant says "I would vote for you in term+1": ours stays
        leads = isinstance(msg, AppendEntries | InstallSnapshot | TimeoutNow)
        self._become_follower(msg.term, msg.src if leads else 0)
        return True

    def _answer_stale(self, msg: Message) -> None:
        """A message from an earlier term: tell its sender our term, or it may never learn it.

        A deposed leader steps down on hearing it: with pre-vote or check-quorum, this node
        may have reached a term that no campaign will bring the leader to (without them, the
        campaigns do). A candidate steps down too and campaigns again in a term that counts:
        the nodes of that term may have no other reason ever to write to it."""
        if isinstance(msg, AppendEntries | InstallSnapshot):
            if self._check_quorum or self._pre_vote:
                self._send(AppendResponse(self._id, msg.src, self._term, False, 0))
        elif isinstance(msg, RequestVote):
            self._send(VoteResponse(self._id, msg.src, self._term, False, msg.pre_vote))

    def _in_lease(self) -> bool:
        return (
            self._check_quorum
            and self._leader != 0
            and self._election_elapsed < self._election_ticks
        )

    def _promotable(self) -> bool:
        """May this node campaign? If it is a voter; or if a config change that removes it is
        not committed yet: until it is, the others may need this node's log to elect anyone
        (dissertation §4.2.2). Its votes are counted in the new config, without its own."""
        if self._catch_up is not None and self._catch_up >= 0:
            return False  # it is catching up with a leader: it cannot be more up to date
        configs = self._log.configs
        return self._id in configs.active() or (
            bool(configs.pending) and self._id in configs.committed
        )

    def _reset(self, term: int) -> None:
        if term != self._term:
            self._term = term
            self._vote = 0
            # answers of an earlier term would claim what this node may no longer hold
            self._msgs = [m for m in self._msgs if m.term >= term]
        self._leader = 0
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._reset_timeout()
        self._votes = {}
        self._prs = {}
        self._transfer_target = 0
        self._commit_news = self._heartbeat_due = False

    def _reset_timeout(self) -> None:
        self._timeout = self._rng.randrange(self._election_ticks, 2 * self._election_ticks)

    def _become_follower(self, term: int, leader: NodeId) -> None:
        self._reset(term)
        self._role = Role.FOLLOWER
        self._leader = leader

    def _check_caught_up(self) -> None:
        target = self._catch_up
        if target is not None and target >= 0 and self._log.persisted_index() >= target:
            self._catch_up = None

    def _tick_rejoin(self) -> None:
        if self._catch_up is not None:
            self._rejoin_elapsed += 1
            if self._rejoin_elapsed >= self._rejoin_ticks:
                self._catch_up = None  # waited long enough: better a leader than none

    def _heard_leader(self, commit: int) -> None:
        if self._catch_up == -1:
            self._catch_up = commit
        self._check_caught_up()

    def _become_leader(self) -> None:
        self._catch_up = None
        self._reset(self._term)
        self._role = Role.LEADER
        self._leader = self._id
        self._sync_progress()
        self._noop_index = self._append_as_leader(Entry(self.last_index + 1, self._term))

    # -- elections -------------------------------------------------------------------------

    def _tick_election(self) -> None:
        self._election_elapsed += 1
        if self._election_elapsed >= self._timeout and self._promotable():
            self._campaign(pre_vote=self._pre_vote, transfer=False)

    def _campaign(self, *, pre_vote: bool, transfer: bool) -> None:
        if pre_vote:
            self._reset(self._term)
            self._role = Role.PRECANDIDATE
            term = self._term + 1
        else:
            self._reset(self._term + 1)
            self._role = Role.CANDIDATE
            self._vote = self._id
            term = self._term
        self._votes[self._id] = True
        if self._count_votes():
            return
        last_index, last_term = self._log.last_index(), self._log.last_term()
        for voter in self.voters:
            if voter != self._id:
                self._send(
                    RequestVote(self._id, voter, term, last_index, last_term, pre_vote, transfer)
                )

    def _on_request_vote(self, m: RequestVote) -> None:
        if self._catch_up is not None and m.last_index > 0:
            self._send(VoteResponse(self._id, m.src, self._term, False, m.pre_vote))
            return
        free = self._vote == m.src or (self._vote == 0 and self._leader == 0)
        can_vote = free or (m.pre_vote and m.term > self._term)
        if can_vote and self._log.is_up_to_date(m.last_index, m.last_term):
            self._send(VoteResponse(self._id, m.src, m.term, True, m.pre_vote))
            if not m.pre_vote:
                self._vote = m.src
                self._election_elapsed = 0
        else:
            self._send(VoteResponse(self._id, m.src, self._term, False, m.pre_vote))

    def _on_vote_response(self, m: VoteResponse) -> None:
        if self._role is Role.PRECANDIDATE:
            wanted_term = self._term + 1 if m.granted else self._term
            if not m.pre_vote or m.term != wanted_term:
                return
        elif self._role is not Role.CANDIDATE or m.pre_vote:
            return
        self._votes.setdefault(m.src, m.granted)
        self._count_votes()

    def _count_votes(self) -> bool:
        """Act on the votes so far: True once the campaign is won or lost.

        A candidate leads only once its own vote is on disk: a crash before that would make
        it forget it voted for itself in this term, and vote again - two leaders of one term.
        Only a single voter has to wait (for advance()): the others' votes answer requests
        that left after that write."""
        voters = self.voters
        quorum = len(voters) // 2 + 1
        granted = sum(1 for v in voters if self._votes.get(v) is True)
        rejected = sum(1 for v in voters if self._votes.get(v) is False)
        if granted >= quorum:
            if self._role is Role.PRECANDIDATE:
                self._campaign(pre_vote=False, transfer=False)
            elif (self._persisted.term, self._persisted.vote) == (self._term, self._id):
                self._become_leader()
            return True
        if len(voters) - rejected < quorum:
            self._become_follower(self._term, 0)
            return True
        return False

    # -- following -------------------------------------------------------------------------

    def _follow(self, leader: NodeId) -> None:
        if self._role is not Role.FOLLOWER:
            self._become_follower(self._term, leader)
        self._leader = leader
        self._election_elapsed = 0

    def _on_append(self, m: AppendEntries) -> None:
        if self._role is Role.LEADER:
            return  # a second leader in one term cannot be; nothing to do with it
        self._follow(m.src)
        self._heard_leader(m.commit)
        log = self._log
        prev, entries = m.prev_index, m.entries
        if prev < log.commit:
            # our entries up to the commit index are committed, hence the leader's too
            skip = log.commit - prev
            if skip >= len(entries):
                self._answer_append(m.src, True, log.commit)
                return
            prev, entries = log.commit, entries[skip:]
        elif log.term_at(prev) != m.prev_term:
            self._answer_append(m.src, False, prev, self._reject_hint(prev, m.prev_term))
            return
        for pos, entry in enumerate(entries):
            if log.term_at(entry.index) != entry.term:
                log.append(entries[pos:])  # cuts off our conflicting suffix, if any
                break
        last_new = prev + len(entries)
        # beyond last_new our log may still hold an old leader's entries: never commit those
        log.commit_to(min(m.commit, last_new))
        self._answer_append(m.src, True, last_new)

    def _reject_hint(self, prev: int, prev_term: int) -> int:
        """The last index that may match the leader's log: skip back over our entries of
        terms after prev_term, which the leader's log cannot hold before prev."""
        log = self._log
        if prev > log.last_index():
            return log.last_index()
        index = prev - 1
        while index > log.commit:
            term = log.term_at(index)
            if term is None or term <= prev_term:
                break
            index -= 1
        return index

    def _answer_append(self, leader: NodeId, success: bool, index: int, hint: int = 0) -> None:
        self._send(AppendResponse(self._id, leader, self._term, success, index, hint))

    def _on_snapshot(self, m: InstallSnapshot) -> None:
        if self._role is Role.LEADER:
            return
        self._follow(m.src)
        self._heard_leader(m.meta.index)
        log, meta = self._log, m.meta
        if meta.index <= log.commit:
            self._answer_append(m.src, True, log.commit)
            return
        if log.term_at(meta.index) == meta.term:
            # we hold that entry, so the log up to it is the leader's: keep it, and what follows
            log.commit_to(meta.index)
        else:
            log.restore(meta)
        self._answer_append(m.src, True, meta.index)

    # -- leading ---------------------------------------------------------------------------

    def _check_can_propose(self) -> None:
        if self._role is not Role.LEADER:
            raise NotLeader(self._leader)
        if self._transfer_target:
            raise ProposalRefused(f"leadership is being transferred to {self._transfer_target}")

    def _append_as_leader(self, entry: Entry) -> int:
        self._log.append([entry])
        return entry.index

    def _sync_progress(self) -> None:
        """One Progress per voter but this node, as the active config says."""
        voters = self.voters
        for voter in voters:
            if voter != self._id and voter not in self._prs:
                self._prs[voter] = Progress(next=self.last_index + 1, recent_active=True)
        for peer in [p for p in self._prs if p not in voters]:
            del self._prs[peer]
        if self._transfer_target not in self._prs:
            self._transfer_target = 0

    def _tick_leader(self) -> None:
        self._heartbeat_elapsed += 1
        self._election_elapsed += 1
        if self._transfer_target:
            self._transfer_elapsed += 1
            if self._transfer_elapsed >= self._election_ticks:
                self._transfer_target = 0
        if self._election_elapsed >= self._election_ticks:
            self._election_elapsed = 0
            if self._check_quorum and not self._quorum_active():
                self._become_follower(self._term, 0)
                return
            for p in self._prs.values():
                p.recent_active = False
        if self._heartbeat_elapsed >= self._heartbeat_ticks:
            self._heartbeat_elapsed = 0
            self._heartbeat_due = True
            for p in self._prs.values():
                if p.state is ProgressState.PROBE:
                    p.probe_sent = False  # the probe may have been lost: try again

    def _quorum_active(self) -> bool:
        voters = self.voters
        active = sum(1 for v in voters if v == self._id or self._prs[v].recent_active)
        return active >= len(voters) // 2 + 1

    def _on_append_response(self, m: AppendResponse) -> None:
        p = self._prs.get(m.src) if self._role is Role.LEADER else None
        if p is None:
            return
        p.recent_active = True
        if not m.success:
            p.rejected(m.index, m.hint)
            return
        advanced = p.acknowledged(m.index)
        if p.state is ProgressState.PROBE or (
            p.state is ProgressState.SNAPSHOT and p.match >= p.snapshot_index
        ):
            p.become_replicate()
        if advanced:
            self._maybe_commit()
        if m.src == self._transfer_target:
            self._maybe_send_timeout_now()  # again, if it was lost

    def _maybe_send_timeout_now(self) -> None:
        target = self._transfer_target
        if self._role is Role.LEADER and self._prs[target].match == self.last_index:
            self._send(TimeoutNow(self._id, target, self._term))

    def _maybe_commit(self) -> None:
        """Commit what a majority of the voters has persisted, if it is of this term."""
        log = self._log
        voters = log.configs.active()
        own = log.persisted_index()
        matches = sorted(
            (own if v == self._id else self._prs[v].match for v in voters), reverse=True
        )
        index = matches[len(voters) // 2]
        if index <= log.commit or log.term_at(index) != self._term:
            return
        log.commit_to(index)
        self._commit_news = True
        if self._id not in log.configs.committed and not log.configs.pending:
            self._become_follower(self._term, 0)  # removed: the others elect a leader

    def _flush(self) -> None:
        """Leader: send each follower what it can take now. Called by has_ready() and ready()
        only: so an InstallSnapshot names the snapshot storage holds as the host calls them."""
        if self._role is not Role.LEADER:
            return
        for peer, p in self._prs.items():
            self._replicate_to(peer, p)
        self._commit_news = self._heartbeat_due = False

    def _replicate_to(self, peer: NodeId, p: Progress) -> None:
        log = self._log
        if p.state is not ProgressState.SNAPSHOT and log.term_at(p.next - 1) is None:
            self._send_snapshot(peer, p)  # the entries it needs are compacted away
            return
        notify = self._commit_news or self._heartbeat_due
        last = log.last_index()
        while not p.paused(self._max_inflight) and (p.next <= last or notify):
            self._send_append(peer, p)
            notify = False
        if notify:  # paused: a bare heartbeat, so it learns the commit and keeps its timer
            if p.state is ProgressState.SNAPSHOT:
                prev, prev_term = p.snapshot_index, p.snapshot_term
            else:
                prev = p.next - 1
                prev_term = log.term_at(prev) or 0
            self._send(AppendEntries(self._id, peer, self._term, prev, prev_term, (), log.commit))

    def _send_append(self, peer: NodeId, p: Progress) -> None:
        log = self._log
        prev = p.next - 1
        prev_term = log.term_at(prev)
        assert prev_term is not None
        entries: tuple[Entry, ...] = ()
        if p.next <= log.last_index():
            entries = tuple(log.entries(p.next, log.last_index() + 1, self._max_batch_bytes))
        self._send(AppendEntries(self._id, peer, self._term, prev, prev_term, entries, log.commit))
        p.sent(entries[-1].index if entries else prev)

    def _send_snapshot(self, peer: NodeId, p: Progress) -> None:
        meta = self._log.storage.snapshot()
        p.become_snapshot(meta.index, meta.term)
        self._send(InstallSnapshot(self._id, peer, self._term, meta))
