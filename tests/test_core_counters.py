"""The per-queue counters the core keeps (metrics and message rates): each moves where the
state machine does the work, and none of them is stored."""

from __future__ import annotations

import pytest

from broker.core import commands as c
from broker.core.queue import QueueCounters
from tests.core_helpers import VH, Core, reloaded


@pytest.fixture
def core() -> Core:
    return Core()


FIELDS = ("published", "delivered", "redelivered", "acked", "dead_lettered", "dropped")


def counts(counters: QueueCounters) -> dict[str, int]:
    return {name: getattr(counters, name) for name in FIELDS}


def test_publish_deliver_ack_and_redeliver_are_counted(core: Core) -> None:
    core.queue("q")
    for n in range(3):
        core.publish("q", f"m{n}")
    first, second, _ = core.consume("q", prefetch=3)
    core.settle("ack", "q", first.message.seq)
    core.settle("requeue", "q", second.message.seq)  # comes straight back: a redelivery
    assert counts(core.q("q").counters) == {
        "published": 3,
        "delivered": 4,
        "redelivered": 1,
        "acked": 1,
        "dead_lettered": 0,
        "dropped": 0,
    }


def test_gets_and_pull_receives_are_deliveries(core: Core) -> None:
    core.queue("q")
    core.publish("q", b"a")
    core.publish("q", b"b")
    assert core.get("q", no_ack=True) is not None
    (received,) = core.receive("q", visibility=10, at=0)
    core.tick(10)  # invisible no more: received again, a redelivery
    (again,) = core.receive("q", visibility=10, at=10)
    core.apply(c.DeleteByHandle(VH, "q", again.handle), at=11)
    n = core.q("q").counters
    assert (n.delivered, n.redelivered, n.acked) == (3, 1, 1)
    assert received.message.seq == again.message.seq


def test_dead_lettered_and_dropped_are_told_apart(core: Core) -> None:
    core.queue("dlq")
    core.queue("to-dlq", **{"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "dlq"})
    core.queue("nowhere")
    for queue in ("to-dlq", "nowhere"):
        core.publish(queue, b"m")
        msg = core.get(queue)
        assert msg is not None
        core.settle("reject", queue, msg.seq)
    assert (core.q("to-dlq").counters.dead_lettered, core.q("to-dlq").counters.dropped) == (1, 0)
    assert (core.q("nowhere").counters.dead_lettered, core.q("nowhere").counters.dropped) == (0, 1)
    assert core.q("dlq").counters.published == 1  # dead-lettered into it


def test_a_refused_publish_is_not_counted_as_published(core: Core) -> None:
    core.queue("q", **{"x-max-length": 1, "x-overflow": "reject-publish"})
    core.publish("q", b"kept")
    core.publish("q", b"refused")
    assert core.q("q").counters.published == 1


def test_a_deleted_queue_leaves_its_counts_in_the_retired_sums(core: Core) -> None:
    core.queue("q")
    core.publish("q", b"m")
    assert core.get("q", no_ack=True) is not None
    core.apply(c.DeleteQueue(VH, "q"))
    assert (core.sm.retired.published, core.sm.retired.delivered) == (1, 1)


def test_counters_are_not_stored_and_reset_starts_them_again(core: Core) -> None:
    core.queue("q")
    core.publish("q", b"m")
    core.consume("q")
    assert core.q("q").counters.delivered == 1
    restored = reloaded(core)
    assert counts(restored.q("q").counters) == dict.fromkeys(FIELDS, 0)
    core.sm.reset_counters()
    assert core.q("q").counters.published == 0
    assert core.sm.retired.published == 0
