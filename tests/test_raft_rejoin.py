"""A member that comes back with nothing (its data dir wiped): the leader starts it again from
what it has, and it does not vote a leader in before it has caught up."""

from __future__ import annotations

from broker.replication.raft import Role
from tests.raft_sim import MemStorage
from tests.test_raft import ET, Cluster


def wipe(c: Cluster, n: int) -> None:
    """Node n restarts with an empty storage (its voters as configured, as at bootstrap)."""
    c.storages[n] = MemStorage((1, 2, 3))
    c.start(n)


def test_a_wiped_follower_is_caught_up_again_although_it_once_matched() -> None:
    c = Cluster()
    leader = c.elect(1)
    for i in range(5):
        leader.propose(i)
    c.pump()
    assert leader.progress[3].match == leader.last_index
    wipe(c, 3)
    for _ in range(3):
        c.heartbeat(1)
    assert leader.progress[3].match == leader.last_index
    assert c.storages[3].last_index() == leader.last_index


def test_a_wiped_node_does_not_vote_until_it_has_caught_up() -> None:
    c = Cluster()
    leader = c.elect(1)
    for i in range(5):
        leader.propose(i)
    c.isolated = {2}  # node 2 misses the last entries: only 1 and 3 have them
    c.pump()
    committed = leader.commit_index
    assert c.storages[2].last_index() < committed
    c.isolated = {1, 2, 3}
    wipe(c, 3)
    # The leader dies before node 3 learns anything again: node 2 asks node 3 for its vote.
    del c.nodes[1]
    c.isolated = set()
    for _ in range(10 * ET):
        c.tick(2)
        c.tick(3)
        c.pump()
    assert c.nodes[2].role is not Role.LEADER  # it lacks entries a majority committed
    assert c.nodes[3].role is not Role.LEADER


def test_a_wiped_node_votes_again_once_caught_up() -> None:
    c = Cluster()
    leader = c.elect(1)
    leader.propose("x")
    c.pump()
    wipe(c, 3)
    c.heartbeat(1)
    c.heartbeat(1)
    assert c.storages[3].last_index() == leader.last_index
    del c.nodes[1]
    c.isolated = set()
    for _ in range(4 * ET):
        c.tick(2)
        c.tick(3)
        c.pump()
        if any(n.role is Role.LEADER for n in c.nodes.values()):
            break
    assert any(n.role is Role.LEADER for n in c.nodes.values())


def test_a_fresh_cluster_still_elects_a_leader() -> None:
    c = Cluster()
    assert c.elect(2).role is Role.LEADER


def test_a_wiped_node_votes_after_all_once_the_rejoin_window_is_over() -> None:
    c = Cluster(rejoin_ticks=3 * ET)
    leader = c.elect(1)
    leader.propose("x")
    c.isolated = {2}
    c.pump()
    c.isolated = {1, 2, 3}
    wipe(c, 3)
    del c.nodes[1]
    c.isolated = set()
    for _ in range(20 * ET):
        c.tick(2)
        c.tick(3)
        c.pump()
        if any(n.role is Role.LEADER for n in c.nodes.values()):
            break
    # Availability wins in the end: without node 3 no leader could ever be elected again.
    assert any(n.role is Role.LEADER for n in c.nodes.values())
