"""Credit flow: the core reports congested queues in a publish's reply, and publishers wait
for them to drain (broker.flow)."""

from __future__ import annotations

from broker.core import commands as c
from broker.core.queue import FLOW_LIMIT
from broker.flow import RoomWaiters
from tests.core_helpers import OWNER, VH, Core


def test_a_queue_whose_consumers_fall_behind_is_reported_congested() -> None:
    core = Core()
    core.queue("q", **{"x-max-length": 100})
    core.consume("q", prefetch=1)
    replies = [core.publish("q", b"m") for _ in range(52)]
    # The first goes to the consumer; the flow limit is half the length limit.
    assert [r.congested for r in replies[:50]] == [None] * 50
    assert replies[50].congested == [(VH, "q")]
    assert not core.sm.has_room(VH, "q")
    seqs = [m.seq for m in core.q("q").messages.values()]
    for seq in seqs[:25]:
        core.settle("ack", "q", seq)
    assert core.q("q").ready_count == 26
    assert not core.sm.has_room(VH, "q")
    core.settle("ack", "q", seqs[25])
    assert core.sm.has_room(VH, "q")


def test_queues_without_consumers_fill_up_to_their_limit_instead() -> None:
    core = Core()
    core.queue("q")
    replies = [core.publish("q", b"m") for _ in range(FLOW_LIMIT + 1)]
    assert all(r.congested is None for r in replies)
    assert core.sm.has_room(VH, "q")
    core.consume("q", prefetch=1)
    assert core.publish("q", b"m").congested == [(VH, "q")]
    core.apply(c.Cancel(OWNER, "ctag"))
    assert core.sm.has_room(VH, "q")
    assert core.sm.has_room(VH, "gone")


def test_waiters_run_once_every_queue_they_wait_for_has_room() -> None:
    full = {("v", "a"), ("v", "b")}
    woken: list[str] = []
    waiters = RoomWaiters()

    def has_room(vhost: str, queue: str) -> bool:
        return (vhost, queue) not in full

    waiters.wait([("v", "c")], lambda: woken.append("at once"), has_room)
    assert woken == ["at once"] and not waiters
    waiters.wait([("v", "a"), ("v", "b")], lambda: woken.append("both"), has_room)
    waiters.wait([("v", "a")], lambda: woken.append("a"), has_room)
    assert len(waiters) == 2
    full.discard(("v", "a"))
    waiters.check(has_room)
    assert woken == ["at once", "a"] and len(waiters) == 1
    full.discard(("v", "b"))
    waiters.check(has_room)
    assert woken == ["at once", "a", "both"] and not waiters
