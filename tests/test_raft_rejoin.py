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


def behind_and_wiped(c: Cluster) -> int:
    """Node 1 leads and commits with node 3 alone (node 2 misses it); then node 3 is wiped
    and node 1 dies. The index committed."""
    leader = c.elect(1)
    for i in range(5):
        leader.propose(i)
    c.isolated = {2}  # node 2 misses the last entries: only 1 and 3 have them
    c.pump()
    committed = leader.commit_index
    c.isolated = {1, 2, 3}
    wipe(c, 3)
    del c.nodes[1]  # before node 3 learns anything again
    c.isolated = set()
    return committed


def run_until_a_leader(c: Cluster, ticks: int) -> bool:
    """Ticks nodes 2 and 3 up to `ticks` times; whether one of them became leader."""
    for _ in range(ticks):
        c.tick(2)
        c.tick(3)
        c.pump()
        if any(n.role is Role.LEADER for n in c.nodes.values()):
            return True
    return False


def test_a_wiped_node_does_not_vote_until_it_has_caught_up() -> None:
    c = Cluster()
    committed = behind_and_wiped(c)
    assert c.storages[2].last_index() < committed
    # Node 2 asks node 3 for its vote; it lacks entries a majority committed.
    assert not run_until_a_leader(c, 10 * ET)


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
    assert run_until_a_leader(c, 4 * ET)


def test_a_fresh_cluster_still_elects_a_leader() -> None:
    c = Cluster()
    assert c.elect(2).role is Role.LEADER


def test_a_wiped_node_votes_after_all_once_the_rejoin_window_is_over() -> None:
    c = Cluster(rejoin_ticks=3 * ET)
    behind_and_wiped(c)
    # Availability wins in the end: without node 3 no leader could ever be elected again.
    assert run_until_a_leader(c, 20 * ET)
