"""Every way a message leaves a queue, in the state machine: it reaches a consumer, moves where
the user chose (a dead-letter target), or is reported by exactly one Dropped effect."""

from __future__ import annotations

import tempfile

import pytest

from broker.core import commands as c
from broker.core.model import Dropped
from tests.core_helpers import OWNER, VH, Core, restart


@pytest.fixture
def core() -> Core:
    return Core()


def dropped(core: Core) -> list[Dropped]:
    return [e for e in core.effects if isinstance(e, Dropped)]


def dlx_args(dlq: str, **extra: object) -> dict[str, object]:
    return {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq, **extra}


def test_acknowledged_and_dead_lettered_messages_are_not_drops(core: Core) -> None:
    core.queue("dlq")
    core.queue("q", **dlx_args("dlq", **{"x-message-ttl": 5}))
    core.publish("q", b"acked")
    (d,) = core.consume("q", prefetch=1)
    core.settle("ack", "q", d.message.seq)
    assert dropped(core) == []
    core.apply(c.Cancel(OWNER, "ctag"))
    core.publish("q", b"expires", at=10)
    core.tick(15)
    assert dropped(core) == []
    assert core.q("dlq").ready_count == 1


@pytest.mark.parametrize(
    "arguments,exit_,reason",
    [
        ({"x-message-ttl": 5}, "expire", "expired"),
        ({"x-max-length": 0}, "publish", "maxlen"),
        ({}, "reject", "rejected"),
        ({"x-delivery-limit": 0}, "requeue", "delivery-limit"),
    ],
)
def test_a_message_dying_without_a_dead_letter_target_is_dropped(
    core: Core, arguments: dict[str, object], exit_: str, reason: str
) -> None:
    core.queue("q", **arguments)
    core.publish("q", b"m")
    if exit_ == "expire":
        core.tick(5)
    elif exit_ in ("reject", "requeue"):
        msg = core.get("q")
        assert msg is not None
        core.settle(exit_, "q", msg.seq)
    assert dropped(core) == [Dropped(VH, "q", reason, 1)]
    assert core.q("q").messages == {}


def test_a_message_past_max_receive_count_with_no_dead_letter_queue_stays(core: Core) -> None:
    """CMQ's receive limit only moves messages to a dead-letter queue: without one, the
    message is received again rather than dropped."""
    core.queue("q", **{"x-max-receive-count": 1})
    core.publish("q", b"m")
    core.receive("q", visibility=10, at=0)
    core.tick(10)  # visible again
    (again,) = core.receive("q", visibility=10)
    assert again.message.body == b"m"
    assert dropped(core) == []


def test_a_message_past_max_receive_count_whose_dead_lettering_would_cycle_stays(
    core: Core,
) -> None:
    core.queue("q", **{"x-max-receive-count": 1, **dlx_args("q")})
    core.publish("q", b"m")
    core.receive("q", visibility=10, at=0)
    core.tick(10)
    (again,) = core.receive("q", visibility=10)
    assert again.message.body == b"m"
    assert dropped(core) == []


@pytest.mark.parametrize(
    "dead_letter,detail",
    [
        ({"x-dead-letter-exchange": "gone"}, "its dead-letter exchange 'gone' does not exist"),
        (
            {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "no-such-queue"},
            "its dead-letter exchange '' routed 'no-such-queue' to no queue",
        ),
        (
            {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "q"},
            "dead-lettering it again would make a cycle",
        ),
    ],
)
def test_a_dead_letter_target_that_takes_nothing_is_reported(
    core: Core, dead_letter: dict[str, object], detail: str
) -> None:
    core.queue("q", **{"x-message-ttl": 5, **dead_letter})
    core.publish("q", b"m")
    core.tick(5)
    assert dropped(core) == [Dropped(VH, "q", "expired", 1, detail)]


def test_deleting_a_queue_reports_the_messages_it_held_but_not_acknowledged_ones(
    core: Core,
) -> None:
    core.queue("q", **{"x-rewind-ms": 60_000})
    for body in (b"acked", b"unacked", b"ready"):
        core.publish("q", body)
    core.consume("q", prefetch=2)
    core.settle("ack", "q", 1)  # kept for rewind: it was consumed, not lost
    core.apply(c.DeleteQueue(VH, "q"))
    assert dropped(core) == [Dropped(VH, "q", "queue-deleted", 2)]


def test_an_exclusive_queue_closed_with_its_connection_reports_its_messages(
    core: Core,
) -> None:
    connection = (1, 7)
    core.apply(c.DeclareQueue(VH, "mine", exclusive_owner=connection))
    core.publish("mine", b"m")
    core.apply(c.ConnectionClosed(connection))
    assert dropped(core) == [Dropped(VH, "mine", "queue-deleted", 1)]


def test_purging_reports_the_count(core: Core) -> None:
    core.queue("q")
    for body in (b"1", b"2", b"3"):
        core.publish("q", body)
    assert core.apply(c.PurgeQueue(VH, "q")) == 3
    assert dropped(core) == [Dropped(VH, "q", "purged", 3)]


def test_a_publish_matching_no_queue_is_counted_unless_returned(core: Core) -> None:
    core.exchange("ex", "direct")
    assert not core.publish("nowhere", b"m", "ex").routed
    assert dropped(core) == [Dropped(VH, "ex", "unroutable", 1)]
    core.apply(c.Publish(VH, "ex", "nowhere", {}, b"m", mandatory=True))
    assert dropped(core) == []  # the publisher gets it back (basic.return)


def test_a_delayed_message_released_to_no_queue_is_counted(core: Core) -> None:
    core.exchange("later", "x-delayed-message", arguments={"x-delayed-type": "direct"})
    core.publish("k", b"m", "later", headers={"x-delay": 10})
    assert dropped(core) == []
    core.tick(10)
    assert dropped(core) == [Dropped(VH, "later", "unroutable", 1)]


def test_non_persistent_messages_lost_at_a_restart_are_counted(core: Core) -> None:
    core.apply(c.DeclareQueue(VH, "q", durable=True))
    core.publish("q", b"kept", delivery_mode=2)
    core.publish("q", b"lost", delivery_mode=1)
    with tempfile.TemporaryDirectory() as path:
        after = restart(core, path)
    assert dropped(after) == [Dropped(VH, "q", "not-persistent", 1)]
    assert after.drain("q") == [b"kept"]
