"""Faults under load on a 3-node set: nothing confirmed is lost, service is back in seconds.

Each run puts the checker's load on the cluster (publishers with confirms and consumers with
manual acks on every node, compat_tests/checker.py), causes one fault, waits for the service
to come back, repairs the cluster (restart, SIGCONT, heal) and waits until every member caught
up, then drains the queue and counts: 0 lost, 0 unexpected. The failover is measured from the
fault to a new leader (seen in the members' status) and to the first confirm of a message
published after the fault; both are asserted under FAILOVER_BOUND and printed (`pytest -s`).

The fault kinds:

    kill9-leader     kill -9 the leader, restart it, let it catch up
    pause-leader     SIGSTOP the leader for 10 s, then SIGCONT
    isolate-leader   cut the leader's links (proxy mesh) for 3 s, then heal
    empty-follower   kill -9 a follower, delete its data dir, restart it empty: it catches up
                     by the leader's snapshot (a snapshot is forced first: 40 MB of bodies)
    kill9-follower   kill -9 a follower that clients are connected to, restart it

The default suite runs each kind once; `-m slow` runs test_fault_loop, at least 100 runs of
random kinds (CLUSTER_FAULT_RUNS, CLUSTER_FAULT_SEED, CLUSTER_FAULT_KINDS=kind,kind...) on one
cluster, with a summary of the timings per kind.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import statistics
import sys
import time
from collections.abc import Callable

import pika
import pytest

from compat_tests.checker import Checker, FaultTiming, Result
from compat_tests.cluster import Cluster, control, wait_for
from compat_tests.test_cluster_basic import listed, publish

pytestmark = pytest.mark.own_broker

#: the generous bound on both failover times (the aim is under 2 s)
FAILOVER_BOUND = 10.0
PAUSE_S = 10.0
ISOLATE_S = 3.0
#: total publish rate of the checker's load (msg/s)
RATE = 2000.0
KINDS = ("kill9-leader", "pause-leader", "isolate-leader", "empty-follower", "kill9-follower")


# -- one run ------------------------------------------------------------------------------


def node_status(cl: Cluster, n: int) -> dict:
    """`broker status` of node n (connections, snapshots written...)."""
    return wait_for(lambda: _try(lambda: control(cl.nodes[n].data_dir, "status")), 10, "status")


def _try(fn: Callable[[], dict]) -> dict | None:
    try:
        return fn()
    except (OSError, RuntimeError, ValueError):
        return None


def force_snapshot(cl: Cluster, leader: int) -> None:
    """Make the leader write a snapshot (and compact its log behind it): 40 MB of message
    bodies through a side queue, past the 32 MiB of log that make a snapshot due."""
    before = node_status(cl, leader).get("snapshots", 0)
    conn = pika.BlockingConnection(cl.nodes[leader].params())
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare("snapshot-filler", durable=True)
        body = os.urandom(128 * 1024)
        for _ in range(320):
            ch.basic_publish("", "snapshot-filler", body, pika.BasicProperties(delivery_mode=2))
        ch.queue_purge("snapshot-filler")
    finally:
        conn.close()
    wait_for(
        lambda: node_status(cl, leader).get("snapshots", 0) > before,
        30,
        f"a snapshot on node {leader}",
    )


def fault_run(cl: Cluster, checker: Checker, kind: str, rng: random.Random) -> FaultTiming:
    """Cause one fault of `kind` under the checker's load; return once the cluster is whole
    again (every member running and caught up). Asserts the failover bound."""
    leader = cl.leader()
    followers = cl.followers(leader)
    checker.wait_confirmed(300)  # the load is flowing
    if kind == "kill9-leader":
        fault = checker.mark_fault(kind, leader)
        cl.kill9(leader)
        _new_leader(cl, fault, leader)
        checker.wait_recovered(fault, FAILOVER_BOUND)
        cl.restart(leader)
        cl.wait_caught_up(leader)
    elif kind == "pause-leader":
        fault = checker.mark_fault(kind, leader)
        cl.pause(leader)
        try:
            new = _new_leader(cl, fault, leader)
            checker.wait_recovered(fault, FAILOVER_BOUND)
            time.sleep(max(0.0, fault.at + PAUSE_S - time.monotonic()))  # the fault's length
        finally:
            cl.resume(leader)
        wait_for(
            lambda: (cl.status(leader) or {}).get("leader_id") not in (None, 0, leader),
            30,
            f"node {leader} following again after SIGCONT",
        )
        assert new != leader
        cl.wait_caught_up(leader)
    elif kind == "isolate-leader":
        fault = checker.mark_fault(kind, leader)
        cl.isolate(leader)
        try:
            _new_leader(cl, fault, leader)
            checker.wait_recovered(fault, FAILOVER_BOUND)
            time.sleep(max(0.0, fault.at + ISOLATE_S - time.monotonic()))  # the fault's length
        finally:
            cl.heal()
        cl.leader()
        cl.wait_caught_up(leader)
    elif kind == "empty-follower":
        victim = rng.choice(followers)
        force_snapshot(cl, leader)
        fault = checker.mark_fault(kind, victim)
        cl.kill9(victim)
        checker.wait_recovered(fault, FAILOVER_BOUND)
        log_start = cl.nodes[victim].log_path.stat().st_size
        cl.restart(victim, empty=True)
        cl.wait_caught_up(victim)
        log = cl.log(victim)[log_start:]
        assert "installed the leader's snapshot" in log, log[-3000:]
    elif kind == "kill9-follower":
        victim = rng.choice(followers)
        connections = node_status(cl, victim)["connections"]
        assert connections > 0, f"no client on node {victim}"
        fault = checker.mark_fault(kind, victim)
        cl.kill9(victim)
        checker.wait_recovered(fault, FAILOVER_BOUND)
        cl.restart(victim)
        cl.wait_caught_up(victim)
    else:
        raise ValueError(kind)
    assert fault.first_confirm_s is not None and fault.first_confirm_s < FAILOVER_BOUND
    return fault


def _new_leader(cl: Cluster, fault: FaultTiming, old: int) -> int:
    new, when = cl.wait_new_leader(old, FAILOVER_BOUND)
    fault.new_leader_s = when - fault.at
    return new


def checked_run(cl: Cluster, kind: str, rng: random.Random) -> tuple[FaultTiming, Result]:
    """One fault under a fresh checker (its own queue); asserts 0 lost and 0 unexpected."""
    checker = Checker(cl.urls(), rate=RATE).start()
    try:
        fault = fault_run(cl, checker, kind, rng)
        checker.wait_confirmed(300)  # and the load flows again with every member back
        result = checker.finish(timeout=20.0)  # a sound broker drains in about a second
    finally:
        checker.close()
    print(f"\n{kind}: {result.describe()}")
    assert result.ok, result.describe() + "\n" + "\n".join(result.events[-30:])
    assert result.confirmed > 0
    return fault, result


# -- the default set ----------------------------------------------------------------------


#: Broker bugs these runs show (see each reason); strict: a fix makes the test pass, and then
#: the mark must go.
BUGS: dict[str, str] = {}


def fault_params() -> list:
    return [
        pytest.param(k, marks=pytest.mark.xfail(strict=True, reason=BUGS[k])) if k in BUGS else k
        for k in KINDS
    ]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", fault_params())
def test_fault(cluster, kind):
    fault, _ = checked_run(cluster, kind, random.Random(kind))
    if kind in ("kill9-leader", "pause-leader", "isolate-leader"):
        assert fault.new_leader_s is not None and fault.new_leader_s < FAILOVER_BOUND


# -- the long loop ------------------------------------------------------------------------


def summary(faults: list[FaultTiming]) -> str:
    """min / median / max of the failover times per fault kind."""
    lines = [f"{'kind':16} {'runs':>4}  {'measure':18} {'min':>8} {'median':>8} {'max':>8}"]
    for kind in KINDS:
        of_kind = [f for f in faults if f.kind == kind]
        for measure in ("new_leader_s", "first_confirm_s", "max_gap_s"):
            values = [getattr(f, measure) for f in of_kind]
            values = [v for v in values if v is not None]
            if not values:
                continue
            lines.append(
                f"{kind:16} {len(of_kind):4}  {measure:18} {min(values) * 1000:6.0f}ms "
                f"{statistics.median(values) * 1000:6.0f}ms {max(values) * 1000:6.0f}ms"
            )
    return "\n".join(lines)


@pytest.mark.slow
@pytest.mark.timeout(7200)
def test_fault_loop(tmp_path):
    """Runs of random fault kinds, one after the other on one cluster. A failed run is
    recorded (with the members' logs, under tmp_path) and the loop goes on with a new
    cluster; the test fails at the end if any run failed."""
    runs = int(os.environ.get("CLUSTER_FAULT_RUNS", "100"))
    seed = int(os.environ.get("CLUSTER_FAULT_SEED", str(int(time.time()))))
    kinds = os.environ.get("CLUSTER_FAULT_KINDS", ",".join(KINDS)).split(",")
    assert set(kinds) <= set(KINDS), kinds
    rng = random.Random(seed)
    print(f"\nfault loop: {runs} runs of {kinds}, seed {seed}")
    faults: list[FaultTiming] = []
    failures: list[str] = []
    generation = 0
    cl: Cluster | None = None
    try:
        for i in range(runs):
            kind = rng.choice(kinds)
            if cl is None:
                generation += 1
                cl = Cluster(tmp_path / f"cluster{generation}")
                try:
                    cl.start()
                except Exception as exc:
                    failures.append(f"run {i + 1}: cluster{generation} did not start: {exc!r}")
                    cl.close()
                    cl = None
                    continue
            try:
                fault, _ = checked_run(cl, kind, rng)
            except Exception as exc:
                failures.append(f"run {i + 1} ({kind}, cluster{generation}): {exc!r}"[:3000])
                print(f"run {i + 1}/{runs}: {kind} FAILED: {exc!r}"[:3000])
                (tmp_path / f"cluster{generation}-logs.txt").write_text(cl.logs(200000))
                cl.close()
                cl = None
                continue
            faults.append(fault)
            print(f"run {i + 1}/{runs}: {fault.describe()}")
    finally:
        if cl is not None:
            cl.close()
        text = summary(faults)
        report = f"\nfault loop (seed {seed}): {len(faults)} runs passed, {len(failures)} failed\n"
        report += text + "\n" + "\n".join(failures) + "\n"
        print(report)
        sys.stderr.write(report)
    assert not failures, "\n".join(failures)


# -- targeted scenarios -------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_wiped_member_does_not_help_lose_confirmed_messages(cluster):
    """Confirmed means on a majority's disks. When one of that majority comes back with an
    empty data dir and the other one dies, what is left (the wiped member and one that
    missed the messages) must not make a leader without them: the messages stay, and are
    there once the member that had them is back."""
    cl = cluster
    leader = cl.leader()
    wiped, behind = cl.followers(leader)
    publish(cl, leader, "kept", [])
    for n in cl.ids:
        wait_for(lambda n=n: listed(cl, n, "kept") == 0, 10, f"the queue on node {n}")
    cl.pause(behind)  # the next messages are committed by the leader and `wiped` alone
    publish(cl, leader, "kept", [b"kept-%d" % i for i in range(100)])
    cl.kill9(wiped)
    shutil.rmtree(cl.nodes[wiped].data_dir)
    log_start = cl.nodes[wiped].log_path.stat().st_size
    cl.nodes[wiped].launch()  # empty: it may not open its port before it caught up
    wait_for(
        lambda: "waiting for a leader" in cl.log(wiped)[log_start:],
        30,
        f"node {wiped} joining",
    )
    cl.kill9(leader)
    cl.resume(behind)
    # The two left may elect `behind` (wrong: it lacks the messages) or wait (right); give
    # them the time an election takes (0.5-1 s here), then the member with the messages is
    # back and must not lose them to a leader that never had them.
    with contextlib.suppress(AssertionError):
        wait_for(lambda: (cl.status(behind) or {}).get("role") == "leader", 5, "an election")
    cl.nodes[leader].launch()  # it has the messages (it may fail to start: no waiting)
    # A leader now: the member that had the messages (right), or `behind` (wrong, unless it
    # got them from that member first).
    now_leader = wait_for(
        lambda: (cl.status(behind) or {}).get("leader_id") or None, 30, "a leader again"
    )
    count = count_in(cl, now_leader, "kept")
    assert count == 100, f"{100 - count} confirmed messages lost (leader now {now_leader})"


def count_in(cl: Cluster, n: int, queue: str) -> int:
    """Messages in `queue` on node n, as soon as it answers."""

    def read() -> tuple[int] | None:
        try:
            value = listed(cl, n, queue)
        except (OSError, RuntimeError, ValueError):
            return None
        return None if value is None else (value,)

    return wait_for(read, 10, f"the count of {queue} on node {n}")[0]
