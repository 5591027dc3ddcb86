"""A 3-node set doing its ordinary work: replication, reads on every member, clients on
followers, `broker cluster status` and `transfer`, a member restarted from an empty data dir.

Real broker processes (compat_tests/cluster.py); clients are pika's blocking connections.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys

import pika
import pytest

from compat_tests.cluster import Cluster, control, wait_for

pytestmark = [pytest.mark.own_broker, pytest.mark.timeout(90)]

PERSISTENT = pika.BasicProperties(delivery_mode=2)


def connect(cl: Cluster, n: int) -> pika.BlockingConnection:
    return pika.BlockingConnection(cl.nodes[n].params())


def publish(cl: Cluster, n: int, queue: str, bodies: list[bytes]) -> None:
    """Publish with confirms through node n (each basic_publish waits for its confirm)."""
    conn = connect(cl, n)
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare(queue, durable=True)
        for body in bodies:
            ch.basic_publish("", queue, body, PERSISTENT)
    finally:
        conn.close()


def ready_count(cl: Cluster, n: int, queue: str) -> int:
    conn = connect(cl, n)
    try:
        return conn.channel().queue_declare(queue, passive=True).method.message_count
    finally:
        conn.close()


def listed(cl: Cluster, n: int, queue: str) -> int | None:
    """Messages in `queue` as `broker queues list` reads them from node n's state."""
    for q in control(cl.nodes[n].data_dir, "queues.list", {"vhost": "/"}, timeout=5):
        if q["name"] == queue:
            return q["messages"]
    return None


def get_all(cl: Cluster, n: int, queue: str, count: int) -> list[bytes]:
    """Consume `count` messages through node n (manual acks), in delivery order."""
    conn = connect(cl, n)
    got: list[bytes] = []
    try:
        ch = conn.channel()
        ch.basic_qos(prefetch_count=100)
        for method, _, body in ch.consume(queue, inactivity_timeout=10):
            assert method is not None, f"only {len(got)} of {count} messages within 10 s"
            got.append(body)
            ch.basic_ack(method.delivery_tag)
            if len(got) == count:
                break
        ch.cancel()
    finally:
        conn.close()
    return got


# -- replication and reads ----------------------------------------------------------------


def test_published_on_the_leader_is_on_every_member(cluster):
    leader = cluster.leader()
    bodies = [b"m%d" % i for i in range(200)]
    publish(cluster, leader, "everywhere", bodies)
    # Confirmed means committed: a majority has it; every member applies it soon after.
    for n in cluster.ids:
        wait_for(lambda n=n: listed(cluster, n, "everywhere") == 200, 10, f"node {n}'s count")
        assert ready_count(cluster, n, "everywhere") == 200
    follower = cluster.followers(leader)[0]
    assert get_all(cluster, follower, "everywhere", 200) == bodies
    for n in cluster.ids:
        wait_for(lambda n=n: listed(cluster, n, "everywhere") == 0, 10, f"node {n} emptied")


def test_a_client_on_a_follower_does_everything(cluster):
    leader = cluster.leader()
    follower = cluster.followers(leader)[1]
    conn = connect(cluster, follower)
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.exchange_declare("orders", "topic", durable=True)
        ch.queue_declare("eu-orders", durable=True)
        ch.queue_bind("eu-orders", "orders", "order.eu.*")
        for i in range(50):
            ch.basic_publish("orders", f"order.eu.{i}", b"%d" % i, PERSISTENT)
        ch.basic_publish("orders", "order.us.1", b"elsewhere", PERSISTENT)  # no route
        method, _, body = ch.basic_get("eu-orders")
        assert body == b"0" and not method.redelivered
        ch.basic_nack(method.delivery_tag, requeue=True)
        got = []
        for method, _, body in ch.consume("eu-orders", inactivity_timeout=10):
            assert method is not None
            got.append(body)
            ch.basic_ack(method.delivery_tag)
            if len(got) == 50:
                break
        ch.cancel()
        assert sorted(int(b) for b in got) == list(range(50))
        assert ch.queue_declare("eu-orders", passive=True).method.message_count == 0
    finally:
        conn.close()
    for n in cluster.ids:
        wait_for(lambda n=n: listed(cluster, n, "eu-orders") == 0, 10, f"node {n} emptied")


def test_consumer_on_one_member_gets_what_another_publishes(cluster):
    leader = cluster.leader()
    f1, f2 = cluster.followers(leader)
    consumer = connect(cluster, f1)
    try:
        ch = consumer.channel()
        ch.queue_declare("relay", durable=True)
        publish(cluster, f2, "relay", [b"a", b"b", b"c"])
        publish(cluster, leader, "relay", [b"d"])
        got = []
        for method, _, body in ch.consume("relay", inactivity_timeout=10):
            assert method is not None, f"got only {got}"
            got.append(body)
            ch.basic_ack(method.delivery_tag)
            if len(got) == 4:
                break
        assert got == [b"a", b"b", b"c", b"d"]
    finally:
        consumer.close()


# -- the admin commands -------------------------------------------------------------------


def test_cluster_status_json(cluster):
    leader = cluster.leader()
    statuses = {n: cluster.status_cli(n) for n in cluster.ids}
    for n, s in statuses.items():
        assert set(s) >= {
            "node_id",
            "leader_id",
            "role",
            "term",
            "commit_index",
            "applied_index",
            "members",
        }, s
        assert s["node_id"] == n
        assert s["leader_id"] == leader
        assert s["role"] == ("leader" if n == leader else "follower")
        assert s["term"] == statuses[leader]["term"] >= 1
        assert 0 < s["applied_index"] <= s["commit_index"]
        assert [m["node_id"] for m in s["members"]] == [1, 2, 3]
        for m in s["members"]:
            host, _, port = m["address"].rpartition(":")
            assert host == "127.0.0.1" and int(port) > 0
    # The leader knows how far each member's log matches its own.
    for m in statuses[leader]["members"]:
        assert isinstance(m["match_index"], int) and m["match_index"] > 0
    # The plain form says the same, one field a line.
    out = cluster.nodes[leader].cli("cluster", "status").stdout
    assert f"role\tleader\nleader_id\t{leader}\n" in out.replace("node_id\t%d\n" % leader, "")
    assert out.count("member ") == 3


def test_cluster_status_is_refused_without_a_node(tmp_path):
    from compat_tests.conftest import run_cli

    res = run_cli(tmp_path / "nothing-here", "cluster", "status", "--json")
    assert res.returncode != 0
    assert "no broker node is running" in res.stderr


def test_leadership_transfer(cluster):
    leader = cluster.leader()
    target = cluster.followers(leader)[0]
    term = cluster.status(leader)["term"]
    # Only the leader can hand leadership over.
    refused = cluster.nodes[target].cli("cluster", "transfer", str(leader), check=False)
    assert refused.returncode != 0
    assert "leader" in refused.stderr
    publish(cluster, leader, "during-transfer", [b"before"])
    out = cluster.nodes[leader].cli("cluster", "transfer", str(target)).stdout
    assert f"node {target}" in out
    assert cluster.leader() == target
    assert cluster.status(target)["term"] > term
    # Clients of the old leader carry on through the new one.
    publish(cluster, leader, "during-transfer", [b"after"])
    assert get_all(cluster, target, "during-transfer", 2) == [b"before", b"after"]


def test_graceful_stop_of_the_leader_hands_over(cluster):
    leader = cluster.leader()
    publish(cluster, leader, "handover", [b"x"])
    assert cluster.nodes[leader].stop() == 0
    new = cluster.leader(timeout=10)
    assert new != leader
    publish(cluster, new, "handover", [b"y"])
    cluster.nodes[leader].start()
    cluster.wait_caught_up(leader)
    assert get_all(cluster, leader, "handover", 2) == [b"x", b"y"]


# -- a member starting again from nothing -------------------------------------------------


def _restart_empty_and_read_back(cl: Cluster, big: bool) -> None:
    leader = cl.leader()
    victim = cl.followers(leader)[0]
    # Small messages, and (big=True) 40 MB of large ones: past the 32 MiB of log that make a
    # snapshot due, so the leader's log is compacted and the member needs its snapshot.
    small = [b"small-%d" % i for i in range(300)]
    large = [os.urandom(128 * 1024) for _ in range(320)] if big else []
    before = control(cl.nodes[leader].data_dir, "status").get("snapshots", 0)
    publish(cl, leader, "kept", small + large)
    if big:
        wait_for(
            lambda: control(cl.nodes[leader].data_dir, "status").get("snapshots", 0) > before,
            30,
            "a snapshot on the leader",
        )
    cl.kill9(victim)
    log_start = cl.nodes[victim].log_path.stat().st_size
    cl.restart(victim, empty=True, timeout=20)  # a sound catch-up takes a few seconds
    cl.wait_caught_up(victim)
    log = cl.log(victim)[log_start:]
    if big:
        assert "installed the leader's snapshot" in log, log[-3000:]
    assert listed(cl, victim, "kept") == len(small + large)
    # It serves them, and leads well: the queue read back through it as the leader.
    cl.nodes[leader].cli("cluster", "transfer", str(victim))
    assert cl.leader() == victim
    got = get_all(cl, victim, "kept", len(small + large))
    assert got == small + large


def test_member_restarted_empty_catches_up_from_the_log(cluster):
    _restart_empty_and_read_back(cluster, big=False)


def test_member_restarted_empty_catches_up_by_snapshot(cluster):
    _restart_empty_and_read_back(cluster, big=True)


def test_status_through_the_admin_socket_matches_the_cli(cluster):
    leader = cluster.leader()
    via_socket = cluster.status(leader)
    via_cli = cluster.status_cli(leader)
    assert via_socket is not None
    for key in ("node_id", "leader_id", "role", "term"):
        assert via_socket[key] == via_cli[key]
    json.dumps(via_socket)  # plain JSON values
    sys.stdout.write(f"\nstatus of the leader: {via_cli}\n")


# -- starting a cluster ---------------------------------------------------------------------


def test_a_member_started_long_before_the_others_waits_for_them(tmp_path):
    """Members of a cluster come up in any order, minutes apart (a rolling deploy, a slow
    host): one alone cannot elect a leader, and waits for the others instead of exiting."""
    cl = Cluster(tmp_path / "cluster")
    try:
        first = cl.nodes[1]
        first.launch()
        # The node disconnects its clients after 10 s without a leader (no_leader_ms): past
        # that, it must still be there.
        with contextlib.suppress(AssertionError):
            wait_for(lambda: not first.running, 13, "node 1 exiting")
        assert first.running, f"node 1 gave up waiting for the others:\n{first.log_tail()}"
        for n in (2, 3):
            cl.nodes[n].launch()
        for node in cl.nodes.values():
            node.wait_ready(30)
        cl.leader()
    finally:
        cl.close()


def test_member_that_installed_a_snapshot_restarts(cluster):
    """kill -9 loses nothing on disk, also on a member whose state came from the leader's
    snapshot: restarted twice, with messages of that snapshot consumed in between (their
    bodies' log batches must stay until the member's own next snapshot lets go of them)."""
    cl = cluster
    leader = cl.leader()
    victim = cl.followers(leader)[0]
    leader_log = cl.nodes[leader].log_path.stat().st_size
    cl.kill9(victim)
    # While it is down: 40 MB of queued bodies, so that the leader snapshots and compacts.
    before = control(cl.nodes[leader].data_dir, "status").get("snapshots", 0)
    early = [b"early-%d" % i for i in range(50)]
    publish(cl, leader, "early", early)
    bodies = [os.urandom(128 * 1024) for _ in range(320)]
    publish(cl, leader, "kept", bodies)
    wait_for(
        lambda: control(cl.nodes[leader].data_dir, "status").get("snapshots", 0) > before,
        30,
        "a snapshot on the leader",
    )
    # The leader keeps its log for a member it heard from lately (cluster_node_down_ms);
    # once it gives up on this one, it cuts the log behind its snapshot.
    wait_for(
        lambda: f"node {victim} is silent" in cl.log(leader)[leader_log:],
        10,
        "the leader giving up on the member",
    )
    log_start = cl.nodes[victim].log_path.stat().st_size
    cl.restart(victim)
    cl.wait_caught_up(victim)
    assert "installed the leader's snapshot" in cl.log(victim)[log_start:]
    assert get_all(cl, leader, "early", len(early)) == early
    cl.wait_caught_up(victim)
    for _ in range(2):
        cl.restart(victim)
        cl.wait_caught_up(victim)
    assert listed(cl, victim, "early") == 0
    assert listed(cl, victim, "kept") == len(bodies)
    cl.nodes[leader].cli("cluster", "transfer", str(victim))
    assert cl.leader() == victim
    assert get_all(cl, victim, "kept", len(bodies)) == bodies
