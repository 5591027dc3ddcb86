"""The Raft core, rule by rule, in small hand-driven clusters (tests/test_raft_sim.py has the
seeded simulation that checks the properties under faults)."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest

from broker.replication.raft import (
    AppendEntries,
    AppendResponse,
    Entry,
    HardState,
    InstallSnapshot,
    Message,
    NotLeader,
    ProgressState,
    ProposalRefused,
    Raft,
    Ready,
    ReadyOutstanding,
    RequestVote,
    Role,
    SnapshotMeta,
    TimeoutNow,
    VoteResponse,
)
from tests.raft_sim import MemStorage

ET = 10  # election ticks


class Cluster:
    """Nodes that write each Ready at once and deliver messages in order, except to or from
    an isolated node, and those `drop` picks."""

    def __init__(self, voters: tuple[int, ...] = (1, 2, 3), **options: Any) -> None:
        self.options = {"election_ticks": ET, **options}
        #: which messages (between nodes not isolated) are lost
        self.drop: Callable[[Message], bool] = lambda msg: False
        self.storages = {n: MemStorage(voters) for n in voters}
        self.nodes: dict[int, Raft] = {}
        self.applied: dict[int, list[Entry]] = {}
        self.received: dict[int, tuple[Any, ...]] = {}
        self.isolated: set[int] = set()
        self.delivered: list[Message] = []
        for n in voters:
            self.start(n)

    def start(self, n: int) -> Raft:
        """(Re)start node n on its storage: everything else it had is lost."""
        self.nodes[n] = Raft(n, self.storages[n], random.Random(n), **self.options)
        self.applied[n] = []
        return self.nodes[n]

    def add(self, n: int) -> Raft:
        self.storages[n] = MemStorage(())
        return self.start(n)

    def write(self, n: int) -> Ready:
        """Take node n's Ready, write it, apply it, advance; its messages are returned."""
        rd = self.nodes[n].ready()
        data = self.received.get(n) if rd.snapshot is not None else None
        self.storages[n].write(rd, data)
        self.applied[n].extend(rd.committed)
        self.nodes[n].advance(rd)
        return rd

    def dropped(self, msg: Message) -> bool:
        return msg.src in self.isolated or msg.dst in self.isolated or self.drop(msg)

    def pump(self, rounds: int = 50) -> None:
        for _ in range(rounds):
            busy = [n for n, raft in self.nodes.items() if raft.has_ready()]
            if not busy:
                return
            msgs = [m for n in busy for m in self.write(n).messages]
            for msg in msgs:
                if self.dropped(msg) or msg.dst not in self.nodes:
                    continue
                if isinstance(msg, InstallSnapshot):
                    self.received[msg.dst] = self.storages[msg.src].snap_data
                self.delivered.append(msg)
                self.nodes[msg.dst].step(msg)

    def tick(self, n: int, ticks: int = 1) -> None:
        for _ in range(ticks):
            self.nodes[n].tick()

    def elect(self, n: int) -> Raft:
        """Let node n time out (nobody else ticks) and win."""
        for _ in range(2 * ET):
            self.nodes[n].tick()
            if self.nodes[n].role is not Role.FOLLOWER:
                break
        self.pump()
        assert self.nodes[n].role is Role.LEADER
        return self.nodes[n]

    def heartbeat(self, leader: int) -> None:
        self.nodes[leader].tick()
        self.pump()


def step_all(raft: Raft, *msgs: Message) -> None:
    for msg in msgs:
        raft.step(msg)


def take(raft: Raft, storage: MemStorage) -> Ready:
    rd = raft.ready()
    storage.write(rd, None)
    raft.advance(rd)
    return rd


def of_type(msgs: list[Message], kind: type) -> list[Any]:
    return [m for m in msgs if isinstance(m, kind)]


# -- elections ---------------------------------------------------------------------------------


def test_a_single_node_elects_itself_and_commits_its_noop_once_written() -> None:
    c = Cluster((1,))
    raft = c.nodes[1]
    c.tick(1, 2 * ET)
    assert raft.role is Role.CANDIDATE and raft.term == 1
    c.write(1)
    assert raft.role is Role.LEADER
    rd = c.write(1)
    assert rd.entries == [Entry(1, 1)] and rd.must_sync  # the no-op, of its own term
    assert rd.committed == [] and raft.commit_index == 1  # counted once written...
    rd = c.write(1)
    assert rd.committed == [Entry(1, 1)]  # ...then handed out to apply


def test_the_election_timeout_is_random_between_one_and_two_election_timeouts() -> None:
    timeouts = set()
    for seed in range(40):
        raft = Raft(1, MemStorage((1, 2, 3)), random.Random(seed), election_ticks=ET)
        ticks = 0
        while raft.role is Role.FOLLOWER:
            raft.tick()
            ticks += 1
        timeouts.add(ticks)
    assert min(timeouts) >= ET and max(timeouts) < 2 * ET and len(timeouts) > 3


def test_a_pre_candidate_does_not_bump_its_term_until_a_majority_would_vote() -> None:
    c = Cluster()
    c.elect(1)
    c.isolated = {3}
    c.tick(3, 4 * ET)
    assert c.nodes[3].role is Role.PRECANDIDATE and c.nodes[3].term == 1
    c.isolated = set()
    c.heartbeat(1)  # back: it follows the leader it hears, no election happened
    assert c.nodes[3].role is Role.FOLLOWER and c.nodes[1].role is Role.LEADER
    assert {r.term for r in c.nodes.values()} == {1}


def test_without_pre_vote_a_partitioned_node_bumps_its_term() -> None:
    c = Cluster(pre_vote=False)
    c.elect(1)
    c.isolated = {3}
    c.tick(3, 4 * ET)
    assert c.nodes[3].role is Role.CANDIDATE and c.nodes[3].term > 1


def test_a_vote_goes_to_one_candidate_per_term_and_is_written_before_it_is_sent() -> None:
    raft = Raft(1, MemStorage((1, 2, 3)), random.Random(1))
    raft.step(RequestVote(2, 1, 5, 0, 0, pre_vote=False, transfer=False))
    raft.step(RequestVote(3, 1, 5, 0, 0, pre_vote=False, transfer=False))
    rd = raft.ready()
    assert rd.hard_state == HardState(5, 2, 0) and rd.must_sync and rd.role == "follower"
    assert [(m.dst, m.granted) for m in of_type(rd.messages, VoteResponse)] == [
        (2, True),
        (3, False),
    ]


def test_no_vote_for_a_candidate_whose_log_is_behind() -> None:
    storage = MemStorage((1, 2, 3))
    storage.log = [Entry(1, 1), Entry(2, 2)]
    storage.hard = HardState(2, 0, 0)
    raft = Raft(1, storage, random.Random(1))
    raft.step(RequestVote(2, 1, 3, 5, 1, pre_vote=False, transfer=False))  # longer, older term
    raft.step(RequestVote(3, 1, 3, 2, 2, pre_vote=False, transfer=False))  # as up to date
    votes = of_type(raft.ready().messages, VoteResponse)
    assert [(m.src, m.dst, m.granted) for m in votes] == [(1, 2, False), (1, 3, True)]


def test_a_follower_that_hears_its_leader_ignores_campaigns_unless_the_leader_asked() -> None:
    c = Cluster()
    c.elect(1)
    follower = c.nodes[2]
    follower.step(RequestVote(3, 2, 5, 10, 5, pre_vote=False, transfer=False))
    assert follower.term == 1 and not follower.has_ready()
    follower.step(RequestVote(3, 2, 5, 10, 5, pre_vote=False, transfer=True))
    assert follower.term == 5 and follower.ready().hard_state == HardState(5, 3, 1)


def test_check_quorum_makes_a_cut_off_leader_step_down() -> None:
    c = Cluster()
    c.elect(1)
    c.isolated = {2, 3}
    for _ in range(2 * ET):
        c.heartbeat(1)
    assert c.nodes[1].role is Role.FOLLOWER and c.nodes[1].leader == 0


def test_without_check_quorum_a_cut_off_leader_stays() -> None:
    c = Cluster(check_quorum=False)
    c.elect(1)
    c.isolated = {2, 3}
    for _ in range(3 * ET):
        c.heartbeat(1)
    assert c.nodes[1].role is Role.LEADER


def test_a_deposed_leader_learns_the_new_term_from_whoever_it_writes_to() -> None:
    c = Cluster()
    c.elect(1)
    c.isolated = {1}
    c.tick(2, ET)  # 2's lease on leader 1 runs out; then 2 campaigns
    c.tick(3, ET)
    c.elect(2)
    c.isolated = set()
    c.heartbeat(1)  # its stale heartbeat is answered with term 2
    assert c.nodes[1].role is Role.FOLLOWER and c.nodes[1].term == 2


def test_a_candidate_of_an_earlier_term_is_told_the_term() -> None:
    """Or, if no node of the later term has reason to write to it, it never learns it."""
    storage = MemStorage((1, 2))
    storage.hard = HardState(9, 0, 0)
    raft = Raft(1, storage, random.Random(1), pre_vote=False)
    raft.step(RequestVote(2, 1, 4, 5, 3, pre_vote=False, transfer=False))
    assert raft.ready().messages == [VoteResponse(1, 2, 9, False, False)]
    candidate = Raft(2, MemStorage((1, 2)), random.Random(2), pre_vote=False)
    candidate.step(VoteResponse(1, 2, 9, False, False))
    assert candidate.term == 9 and candidate.role is Role.FOLLOWER


def test_a_candidate_leads_only_once_its_own_vote_is_on_disk() -> None:
    """Or, crashing before, it could forget its vote, vote for another in the same term, and
    that term would have two leaders."""
    storage = MemStorage((1,))
    raft = Raft(1, storage, random.Random(1), election_ticks=ET)
    for _ in range(2 * ET):
        raft.tick()
    assert raft.role is Role.CANDIDATE  # the only voter has voted for itself, in memory
    rd = raft.ready()
    assert rd.hard_state == HardState(1, 1, 0) and rd.must_sync and rd.entries == []
    restarted = Raft(1, storage, random.Random(1))  # crashed before the write
    assert restarted.term == 0
    storage.write(rd, None)
    raft.advance(rd)
    assert raft.role is Role.LEADER and raft.ready().entries == [Entry(1, 1)]


# -- replication ------------------------------------------------------------------------------


def test_proposals_go_to_the_leader_only() -> None:
    c = Cluster()
    c.elect(1)
    with pytest.raises(NotLeader) as e:
        c.nodes[2].propose(b"x")
    assert e.value.leader == 1


def test_a_proposal_is_committed_once_a_majority_wrote_it_and_applied_everywhere() -> None:
    c = Cluster()
    c.elect(1)
    index = c.nodes[1].propose(b"x", size=1)
    c.pump()
    for n in (1, 2, 3):
        assert [e.data for e in c.applied[n]] == [None, b"x"]
        assert c.nodes[n].commit_index == index == c.nodes[n].applied_index


def test_group_commit_proposals_during_a_write_go_in_the_next_ready() -> None:
    c = Cluster((1,))
    c.elect(1)
    raft = c.nodes[1]
    raft.propose(1)
    rd = raft.ready()
    raft.propose(2)
    raft.propose(3)
    assert not raft.has_ready()
    with pytest.raises(ReadyOutstanding):
        raft.ready()
    c.storages[1].write(rd, None)
    raft.advance(rd)
    assert [e.data for e in raft.ready().entries] == [2, 3]


def test_a_follower_answers_only_after_writing_and_applies_only_what_it_wrote() -> None:
    storage = MemStorage((1, 2))
    raft = Raft(2, storage, random.Random(2))
    entries = (Entry(1, 1), Entry(2, 1, b"x"))
    raft.step(AppendEntries(1, 2, 1, 0, 0, entries, commit=2))
    rd = raft.ready()
    assert rd.role == "follower" and rd.entries == list(entries) and rd.must_sync
    assert rd.committed == []  # committed, but not on this disk yet
    assert of_type(rd.messages, AppendResponse) == [AppendResponse(2, 1, 1, True, 2)]
    storage.write(rd, None)
    raft.advance(rd)
    assert raft.ready().committed == list(entries)


def test_the_leaders_own_entries_count_toward_the_commit_only_once_written() -> None:
    c = Cluster()
    leader = c.elect(1)
    c.isolated = {3}
    index = leader.propose("x")
    rd = leader.ready()  # the host sends these at once, and writes meanwhile
    for msg in rd.messages:
        if msg.dst == 2:
            c.nodes[2].step(msg)
    for msg in c.write(2).messages:
        leader.step(msg)
    assert leader.progress[2].match == index and leader.commit_index < index
    c.storages[1].write(rd, None)
    leader.advance(rd)
    assert leader.commit_index == index


def test_answers_of_an_earlier_term_are_not_sent_after_the_term_changed() -> None:
    storage = MemStorage((1, 2, 3))
    raft = Raft(2, storage, random.Random(2), check_quorum=False)
    raft.step(AppendEntries(1, 2, 1, 0, 0, (Entry(1, 1),), 0))
    raft.step(RequestVote(3, 2, 2, 0, 0, pre_vote=False, transfer=False))
    rd = raft.ready()
    assert rd.messages == [VoteResponse(2, 3, 2, False, False)]  # no AppendResponse of term 1


def test_a_follower_commits_no_further_than_the_entries_the_leader_vouched_for() -> None:
    storage = MemStorage((1, 2))
    storage.log = [Entry(1, 1), Entry(2, 1), Entry(3, 1)]  # 3: an old leader's, unverified
    storage.hard = HardState(2, 0, 0)
    raft = Raft(2, storage, random.Random(2))
    raft.step(AppendEntries(1, 2, 2, 1, 1, (), commit=3))
    assert raft.commit_index == 1


def test_an_append_from_below_the_commit_index_is_taken_from_the_commit_index_on() -> None:
    storage = MemStorage((1, 2))
    storage.log = [Entry(1, 1), Entry(2, 1)]
    storage.hard = HardState(1, 0, 2)
    storage.compact(2, (), (1, 2))  # what the follower applied, compacted away
    raft = Raft(2, storage, random.Random(2))
    raft.step(AppendEntries(1, 2, 1, 0, 0, (Entry(1, 1), Entry(2, 1), Entry(3, 1)), 3))
    rd = raft.ready()
    assert rd.entries == [Entry(3, 1)] and rd.messages == [AppendResponse(2, 1, 1, True, 3)]


def test_a_conflicting_suffix_is_cut_but_a_stale_shorter_append_cuts_nothing() -> None:
    storage = MemStorage((1, 2))
    storage.log = [Entry(1, 1), Entry(2, 1), Entry(3, 1)]
    storage.hard = HardState(2, 0, 0)
    raft = Raft(2, storage, random.Random(2))
    raft.step(AppendEntries(1, 2, 2, 1, 1, (Entry(2, 2), Entry(3, 2), Entry(4, 2)), 0))
    raft.step(AppendEntries(1, 2, 2, 1, 1, (Entry(2, 2),), 0))  # reordered, older
    rd = take(raft, storage)
    assert rd.entries == [Entry(2, 2), Entry(3, 2), Entry(4, 2)]
    assert [e.term for e in storage.log] == [1, 2, 2, 2]
    answers = of_type(rd.messages, AppendResponse)
    assert [(m.success, m.index) for m in answers] == [(True, 4), (True, 2)]


def test_a_reject_hints_past_the_terms_the_leader_cannot_have() -> None:
    storage = MemStorage((1, 2))
    storage.log = [Entry(1, 1)] + [Entry(i, 3) for i in range(2, 9)]  # a deposed leader's
    storage.hard = HardState(4, 0, 1)
    raft = Raft(2, storage, random.Random(2))
    raft.step(AppendEntries(1, 2, 4, 8, 2, (), 1))  # the leader has term 2 at 8
    (answer,) = raft.ready().messages
    assert answer == AppendResponse(2, 1, 4, False, 8, hint=1)


def test_a_leader_backs_off_with_the_hint_and_then_repairs_the_follower() -> None:
    c = Cluster()
    for n in (1, 2, 3):
        c.storages[n].hard = HardState(1, 0, 0)
        c.storages[n].log = [Entry(1, 1)]
        c.start(n)
    c.storages[3].log += [Entry(i, 1, f"stale{i}") for i in range(2, 30)]  # term 1's leader's
    c.start(3)
    c.isolated = {3}
    c.elect(1)
    c.nodes[1].propose("fresh")
    c.pump()
    c.isolated = set()
    c.heartbeat(1)
    assert [e.data for e in c.storages[3].log][:3] == [None, None, "fresh"]
    assert c.storages[3].last_index() == 3 and c.nodes[3].commit_index == 3
    rejects = [m for m in c.delivered if isinstance(m, AppendResponse) and not m.success]
    assert len(rejects) <= 2


def test_a_leader_commits_no_entry_of_an_earlier_term_by_counting_replicas() -> None:
    """Figure 8 of the Raft paper: an entry of term 2 on a majority is not committed until
    an entry of the leader's own term is."""
    storages = {n: MemStorage((1, 2, 3)) for n in (1, 2, 3)}
    for storage in storages.values():
        storage.hard = HardState(2, 0, 0)
    storages[1].log = [Entry(1, 2, "old", size=10)]
    leader = Raft(1, storages[1], random.Random(1), pre_vote=False, max_batch_bytes=1)
    node2 = Raft(2, storages[2], random.Random(2))
    while leader.role is Role.FOLLOWER:
        leader.tick()
    take(leader, storages[1])
    leader.step(VoteResponse(2, 1, 3, True, False))
    assert leader.role is Role.LEADER and leader.term == 3
    (probe,) = [m for m in take(leader, storages[1]).messages if m.dst == 2]  # no-op written
    node2.step(probe)  # the no-op after index 1, which node 2 lacks: rejected
    leader.step(take(node2, storages[2]).messages[0])
    (append,) = [
        m for m in of_type(take(leader, storages[1]).messages, AppendEntries) if m.dst == 2
    ]
    assert [e.data for e in append.entries] == ["old"]  # one entry per append
    node2.step(append)
    leader.step(take(node2, storages[2]).messages[0])
    assert leader.progress[2].match == 1  # on 2 of 3 nodes...
    assert leader.commit_index == 0  # ...but of term 2: not committed by counting
    (append,) = [m for m in take(leader, storages[1]).messages if m.dst == 2]
    node2.step(append)
    leader.step(take(node2, storages[2]).messages[0])
    assert leader.commit_index == 2  # the no-op of term 3 commits both


def test_pipelining_keeps_max_inflight_appends_out_then_waits() -> None:
    c = Cluster(max_inflight=3, max_batch_bytes=1)
    leader = c.elect(1)
    c.isolated = {2, 3}  # answers lost from here on
    for i in range(10):
        leader.propose(i, size=1)
    to2 = [m for m in of_type(c.write(1).messages, AppendEntries) if m.dst == 2]
    assert [len(m.entries) for m in to2] == [1, 1, 1]  # one entry each (max_batch_bytes)
    assert leader.progress[2].state is ProgressState.REPLICATE
    leader.propose(10, size=1)
    assert not any(m.dst == 2 for m in c.write(1).messages)  # the window is full


def test_a_probing_leader_sends_one_append_at_a_time() -> None:
    c = Cluster(max_batch_bytes=1)
    c.isolated = {3}
    leader = c.elect(1)
    for i in range(5):
        leader.propose(i, size=1)
    assert leader.progress[3].state is ProgressState.PROBE
    assert not any(m.dst == 3 for m in c.write(1).messages)  # its probe is unanswered
    leader.tick()  # a heartbeat is due: probe again
    assert len([m for m in c.write(1).messages if m.dst == 3]) == 1
    leader.propose(5, size=1)
    assert not any(m.dst == 3 for m in c.write(1).messages)


def test_the_new_commit_index_goes_out_with_the_next_ready_not_the_next_heartbeat() -> None:
    c = Cluster()
    leader = c.elect(1)
    leader.propose("x")
    c.pump()  # no tick anywhere
    assert c.nodes[2].commit_index == 2 and [e.data for e in c.applied[2]] == [None, "x"]
    news = of_type(c.delivered[-4:], AppendEntries)
    assert [(m.dst, m.entries, m.commit) for m in news] == [(2, (), 2), (3, (), 2)]


def test_a_lost_link_sends_the_follower_back_to_probing() -> None:
    c = Cluster()
    leader = c.elect(1)
    assert leader.progress[2].state is ProgressState.REPLICATE
    leader.report_unreachable(2)
    assert leader.progress[2].state is ProgressState.PROBE


def test_must_sync_is_false_for_a_change_of_the_commit_index_alone() -> None:
    c = Cluster((1,))
    c.elect(1)
    c.nodes[1].propose("x")
    assert c.write(1).must_sync
    rd = c.write(1)
    assert rd.hard_state is not None and rd.hard_state.commit == 2 and not rd.must_sync


def test_a_restarted_node_keeps_its_term_vote_and_log_and_applies_again() -> None:
    c = Cluster()
    c.elect(1)
    c.nodes[1].propose("x")
    c.pump()
    raft = c.start(2)
    assert (raft.term, raft.commit_index, raft.applied_index, raft.last_index) == (1, 2, 0, 2)
    assert [e.data for e in c.write(2).committed] == [None, "x"]


def test_what_was_not_written_is_lost_in_a_crash() -> None:
    c = Cluster((1,))
    c.elect(1)
    c.nodes[1].propose("x")
    c.nodes[1].ready()  # never written
    raft = c.start(1)
    assert raft.last_index == 1 and raft.term == 1


def test_messages_for_another_node_are_ignored() -> None:
    raft = Raft(1, MemStorage((1, 2)), random.Random(1))
    raft.step(RequestVote(2, 3, 5, 0, 0, pre_vote=False, transfer=False))
    assert raft.term == 0 and not raft.has_ready()


def test_advance_takes_the_outstanding_ready_only() -> None:
    raft = Raft(1, MemStorage((1,)), random.Random(1))
    for _ in range(2 * ET):
        raft.tick()
    raft.ready()
    with pytest.raises(ReadyOutstanding):
        raft.advance(Ready(None, [], None, [], [], 0, "follower", False))
    with pytest.raises(ReadyOutstanding):
        raft.ready()


# -- leadership transfer ---------------------------------------------------------------------


def test_a_transfer_refuses_proposals_catches_the_target_up_and_hands_over() -> None:
    c = Cluster()
    leader = c.elect(1)
    c.isolated = {3}
    leader.propose("x")
    c.pump()
    c.isolated = set()
    leader.transfer_leadership(3)
    with pytest.raises(ProposalRefused):
        leader.propose("y")
    c.heartbeat(1)
    assert any(isinstance(m, TimeoutNow) and m.dst == 3 for m in c.delivered)
    votes = [m for m in c.delivered if isinstance(m, RequestVote) and m.src == 3]
    assert votes and all(m.transfer and not m.pre_vote for m in votes)
    assert c.nodes[3].role is Role.LEADER and c.nodes[3].term == 2
    assert c.nodes[1].role is Role.FOLLOWER and c.nodes[1].leader == 3


def test_a_transfer_that_does_not_happen_within_an_election_timeout_is_abandoned() -> None:
    c = Cluster()
    leader = c.elect(1)
    c.isolated = {3}
    leader.transfer_leadership(3)
    with pytest.raises(ProposalRefused):
        leader.propose("y")
    for _ in range(ET):
        c.heartbeat(1)
    assert leader.role is Role.LEADER
    leader.propose("y")


def test_a_transfer_needs_a_voter_and_a_leader() -> None:
    c = Cluster()
    leader = c.elect(1)
    with pytest.raises(ProposalRefused):
        leader.transfer_leadership(7)
    with pytest.raises(NotLeader):
        c.nodes[2].transfer_leadership(3)


# -- membership -------------------------------------------------------------------------------


def test_a_new_node_joins_from_an_empty_log_and_counts_as_soon_as_appended() -> None:
    c = Cluster()
    leader = c.elect(1)
    c.add(4)
    assert c.nodes[4].voters == ()
    c.isolated = {4}
    index = leader.propose_config((1, 2, 3, 4))
    assert leader.voters == (1, 2, 3, 4)  # in force when appended, not when committed
    c.isolated = {3, 4}
    c.pump()
    assert leader.commit_index < index  # 2 of 4 is not a majority any more
    c.isolated = set()
    c.heartbeat(1)
    assert leader.commit_index == index
    assert c.nodes[4].voters == (1, 2, 3, 4) and c.storages[4].last_index() == index


def test_a_config_entry_may_carry_data_for_the_host() -> None:
    c = Cluster()
    leader = c.elect(1)
    index = leader.propose_config((1, 2, 3, 4), data="node 4 is at host4:7000", size=23)
    c.pump()
    entry = c.storages[2].entry(index)
    assert entry == Entry(index, 1, "node 4 is at host4:7000", (1, 2, 3, 4), 23)


def test_one_config_change_at_a_time_and_only_one_voter_per_change() -> None:
    c = Cluster()
    leader = c.elect(1)
    with pytest.raises(ProposalRefused):
        leader.propose_config((1, 2, 3, 4, 5))
    with pytest.raises(ProposalRefused):
        leader.propose_config((1, 2, 4))
    c.isolated = {2, 3}
    leader.propose_config((1, 2))
    with pytest.raises(ProposalRefused):
        leader.propose_config((1,))
    c.isolated = set()
    c.pump()
    c.heartbeat(1)
    leader.propose_config((1,))


def test_no_config_change_before_the_leader_committed_an_entry_of_its_term() -> None:
    c = Cluster()
    leader = c.nodes[1]
    c.tick(1, 2 * ET)
    while leader.role is not Role.LEADER:
        c.pump(rounds=1)
    assert leader.commit_index == 0  # elected; its no-op not even written yet
    with pytest.raises(ProposalRefused):
        leader.propose_config((1, 2))


def test_a_removed_leader_steps_down_once_its_removal_is_committed() -> None:
    c = Cluster()
    leader = c.elect(1)
    index = leader.propose_config((2, 3))
    c.pump(rounds=1)
    assert leader.role is Role.LEADER  # it still leads while the change is uncommitted
    c.pump()
    assert leader.role is Role.FOLLOWER and leader.commit_index >= index
    c.tick(1, 4 * ET)
    assert leader.role is Role.FOLLOWER  # not a voter: it never campaigns
    c.tick(2, ET)
    c.elect(3)


def test_a_config_entry_cut_off_the_log_takes_its_config_with_it() -> None:
    storage = MemStorage((1, 2, 3))
    raft = Raft(2, storage, random.Random(2))
    raft.step(AppendEntries(1, 2, 1, 0, 0, (Entry(1, 1), Entry(2, 1, config=(1, 2))), 1))
    assert raft.voters == (1, 2)
    raft.step(AppendEntries(3, 2, 2, 1, 1, (Entry(2, 2, "other"),), 1))
    assert raft.voters == (1, 2, 3)


def test_a_node_removed_by_an_uncommitted_change_may_still_campaign() -> None:
    """Dissertation §4.2.2: the others may need its log to elect anyone."""
    storage = MemStorage((1, 2))
    storage.log = [Entry(1, 1), Entry(2, 1, config=(2,))]
    storage.hard = HardState(1, 1, 1)
    raft = Raft(1, storage, random.Random(1), election_ticks=ET)
    for _ in range(2 * ET):
        raft.tick()
    assert raft.role is Role.PRECANDIDATE
    (ask,) = of_type(raft.ready().messages, RequestVote)
    assert ask.dst == 2


# -- snapshots --------------------------------------------------------------------------------


def compacted_cluster() -> Cluster:
    """Node 3 missed entries 2..6, which the leader has compacted into a snapshot."""
    c = Cluster()
    leader = c.elect(1)
    c.isolated = {3}
    for i in range(5):
        leader.propose(i)
    c.pump()
    c.storages[1].compact(5, tuple(range(4)), (1, 2, 3))
    c.isolated = set()
    return c


def test_a_follower_behind_the_compaction_gets_the_snapshot() -> None:
    c = compacted_cluster()
    c.heartbeat(1)
    sent = [m for m in c.delivered if isinstance(m, InstallSnapshot)]
    assert [(m.dst, m.meta) for m in sent] == [(3, SnapshotMeta(5, 1, (1, 2, 3)))]
    assert c.storages[3].snap.index == 5 and c.storages[3].snap_data == (0, 1, 2, 3)
    assert c.nodes[3].applied_index == 6 and c.storages[3].last_index() == 6
    assert c.nodes[1].progress[3].match == 6


def test_installing_a_snapshot_is_one_ready_then_the_answer() -> None:
    storage = MemStorage((1, 2))
    raft = Raft(2, storage, random.Random(2))
    meta = SnapshotMeta(5, 1, (1, 2))
    assert not raft.snapshot_pending
    raft.step(InstallSnapshot(1, 2, 1, meta))
    assert raft.snapshot_pending  # the host keeps the received data until it is installed
    rd = raft.ready()
    assert rd.snapshot == meta and rd.hard_state == HardState(1, 0, 5) and rd.must_sync
    assert rd.committed == [] and rd.messages == [AppendResponse(2, 1, 1, True, 5)]
    storage.write(rd, ("state",))
    raft.advance(rd)
    assert raft.applied_index == 5 and raft.last_index == 5
    assert not raft.snapshot_pending


def test_a_snapshot_replaces_the_voters_of_the_log_it_drops() -> None:
    storage = MemStorage((1, 2, 3))
    storage.log = [Entry(1, 1), Entry(2, 1, config=(1, 2, 3, 4))]  # a deposed leader's
    storage.hard = HardState(1, 0, 1)
    raft = Raft(2, storage, random.Random(2))
    assert raft.voters == (1, 2, 3, 4)
    raft.step(InstallSnapshot(1, 2, 2, SnapshotMeta(5, 2, (1, 2))))
    assert raft.voters == (1, 2)


def test_a_stale_snapshot_is_answered_with_the_commit_index() -> None:
    c = Cluster()
    c.elect(1)
    c.nodes[1].propose("x")
    c.pump()
    raft = c.nodes[2]
    raft.step(InstallSnapshot(1, 2, 1, SnapshotMeta(1, 1, (1, 2, 3))))
    rd = raft.ready()
    assert rd.snapshot is None and rd.messages == [AppendResponse(2, 1, 1, True, 2)]


def test_a_snapshot_whose_last_entry_the_follower_has_keeps_its_log() -> None:
    storage = MemStorage((1, 2))
    storage.log = [Entry(1, 1), Entry(2, 1), Entry(3, 1)]
    storage.hard = HardState(1, 0, 0)
    raft = Raft(2, storage, random.Random(2))
    raft.step(InstallSnapshot(1, 2, 1, SnapshotMeta(2, 1, (1, 2))))
    rd = raft.ready()
    assert rd.snapshot is None and raft.commit_index == 2 and raft.last_index == 3


def test_a_failed_snapshot_transfer_falls_back_to_probing() -> None:
    c = compacted_cluster()
    c.drop = lambda m: isinstance(m, InstallSnapshot)
    c.heartbeat(1)
    leader = c.nodes[1]
    assert leader.progress[3].state is ProgressState.SNAPSHOT
    leader.report_snapshot(3, ok=False)
    p = leader.progress[3]
    assert p.state is ProgressState.PROBE and p.next == p.match + 1 == 2 and p.probe_sent
    c.drop = lambda m: False
    c.heartbeat(1)
    assert c.storages[3].snap.index == 5 and c.nodes[3].applied_index == 6


def test_the_leader_waits_for_the_answer_after_a_snapshot_transfer() -> None:
    c = compacted_cluster()
    c.drop = lambda m: isinstance(m, InstallSnapshot)
    c.heartbeat(1)
    leader = c.nodes[1]
    leader.report_snapshot(3, ok=True)
    p = leader.progress[3]
    assert p.state is ProgressState.PROBE and p.next == 6 and p.probe_sent
