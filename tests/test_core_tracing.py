"""Message trace and the firehose in the core: which steps are traced, and kept settings."""

from __future__ import annotations

import pytest

from broker.core import commands as c
from broker.core.errors import InvalidArgument, NotFound
from broker.core.model import Traced
from tests.core_helpers import VH, Core, reloaded


def traced(core: Core) -> list[tuple[str, str, int]]:
    return [(e.event, e.queue, e.seq) for e in core.effects if isinstance(e, Traced)]


def test_nothing_is_traced_until_asked() -> None:
    core = Core()
    core.queue("q")
    core.publish("q", "x")
    assert traced(core) == []


def test_a_message_is_traced_from_publish_to_ack() -> None:
    core = Core()
    core.queue("q")
    core.queue("other")
    core.apply(c.SetTracing(VH, "trace", True))
    core.publish("q", "x", message_id="m1")
    (published,) = [e for e in core.effects if isinstance(e, Traced)]
    assert published.event == "published"
    assert published.detail["routed"] == [["q", 1]]
    assert published.detail["id"] == f"{core.index}.0"
    assert published.detail["message_id"] == "m1"
    assert published.command is not None
    core.consume("q")
    assert traced(core) == [("delivered", "q", 1)]
    core.settle("requeue", "q", 1)
    assert traced(core) == [("requeued", "q", 1), ("delivered", "q", 1)]
    core.settle("ack", "q", 1)
    assert traced(core) == [("acked", "q", 1)]


def test_dead_lettering_and_expiry_name_where_the_message_went() -> None:
    core = Core()
    core.queue("dead")
    core.queue("q", **{"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "dead"})
    core.queue("short", **{"x-message-ttl": 10})
    core.apply(c.SetTracing(VH, "trace", True))
    core.publish("q", "x")
    core.get("q")
    core.settle("reject", "q", 1)
    (step,) = [e for e in core.effects if isinstance(e, Traced)]
    assert (step.event, step.detail) == ("rejected", {"dead_lettered": [["dead", 1]]})
    core.publish("short", "y", at=100)
    core.tick(200)
    (step,) = [e for e in core.effects if isinstance(e, Traced)]
    assert step.event == "expired" and step.detail == {"dead_lettered": []}


def test_queue_tracing_covers_only_that_queue() -> None:
    core = Core()
    core.queue("a")
    core.queue("b")
    core.apply(c.SetTracing(VH, "trace", True, "a"))
    core.publish("b", "x")
    assert traced(core) == []
    core.publish("a", "x")
    assert traced(core) == [("published", "", 0)]
    core.apply(c.PurgeQueue(VH, "a"))
    assert traced(core) == [("purged", "a", 0)]
    with pytest.raises(NotFound):
        core.apply(c.SetTracing(VH, "trace", True, "missing"))
    with pytest.raises(InvalidArgument):
        core.apply(c.SetTracing(VH, "firehose", True, "a"))
    with pytest.raises(InvalidArgument):
        core.apply(c.SetTracing(VH, "sideways", True))


def test_settings_are_kept_in_snapshots_and_go_with_their_vhost() -> None:
    core = Core()
    core.queue("a")
    core.apply(c.SetTracing(VH, "trace", True, "a"))
    core.apply(c.SetTracing(VH, "firehose", True))
    assert reloaded(core).sm.tracing.settings() == [(VH, "firehose", ""), (VH, "trace", "a")]
    core.apply(c.DeleteVhost(VH))
    assert core.sm.tracing.settings() == []
    assert reloaded(core).sm.tracing.settings() == []


def test_the_firehose_copies_to_queues_bound_to_its_exchange() -> None:
    core = Core()
    core.queue("q")
    core.queue("tap")
    core.bind("amq.rabbitmq.trace", "tap", "#")
    core.apply(c.SetTracing(VH, "firehose", True))
    core.publish("q", "x", content_type="text/plain")
    core.get("q", no_ack=True)
    copies = core.drain("tap")
    assert copies == [b"x", b"x"]
    assert core.q("tap").message_count() == 0
