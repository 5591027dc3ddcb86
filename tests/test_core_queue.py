"""One queue's behaviour through the state machine: push and pull consumption, ordering,
TTL, dead-lettering, length limits, delivery limits, visibility timeouts and rewind."""

from __future__ import annotations

import pytest

from broker.core import commands as c
from broker.core.errors import (
    InvalidArgument,
    PreconditionFailed,
    ReceiptHandleInvalid,
    ResourceLimit,
)
from broker.core.model import HIDDEN, RETAINED, TOO_LARGE, MessagesAvailable, Overflowed
from tests.core_helpers import OWNER, VH, Core, ready_bodies, reloaded, x_death

A: c.Owner = (1, 1, 1)
B: c.Owner = (1, 2, 1)


@pytest.fixture
def core() -> Core:
    return Core()


def publish_all(core: Core, queue: str, *bodies: str, **props: object) -> None:
    for body in bodies:
        core.publish(queue, body, **props)


def dlx_args(dlq: str = "dlq", **extra: object) -> dict[str, object]:
    return {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq, **extra}


def dead_queue(core: Core, name: str = "q", dlq: str = "dlq", **extra: object) -> None:
    """`name` dead-letters to `dlq` through the default exchange."""
    core.queue(dlq)
    core.queue(name, **dlx_args(dlq, **extra))


# -- push consumption and ordering ---------------------------------------------------------


def test_fifo_delivery_and_ack(core: Core) -> None:
    core.queue("q")
    publish_all(core, "q", "1", "2", "3")
    assert core.q("q").ready_count == 3
    got = core.consume("q")
    assert [d.message.body for d in got] == [b"1", b"2", b"3"]
    assert all(not d.redelivered and d.delivery_count == 0 for d in got)
    assert core.q("q").ready_count == 0
    assert len(core.q("q").unacked) == 3
    core.settle("ack", "q", *(d.message.seq for d in got))
    assert core.q("q").messages == {}


def test_requeued_messages_come_back_first_in_publish_order(core: Core) -> None:
    core.queue("q")
    publish_all(core, "q", "1", "2", "3", "4")
    seqs: dict[bytes, int] = {}
    for _ in range(3):
        msg = core.get("q")
        assert msg is not None
        seqs[msg.body] = msg.seq
    publish_all(core, "q", "5")
    # give back out of order: 3, then 1; 2 stays unacked
    core.settle("requeue", "q", seqs[b"3"])
    core.settle("requeue", "q", seqs[b"1"])
    assert ready_bodies(core.q("q")) == [b"1", b"3", b"4", b"5"]
    core.settle("requeue", "q", seqs[b"2"])
    got = core.consume("q")
    assert [d.message.body for d in got] == [b"1", b"2", b"3", b"4", b"5"]
    assert [d.redelivered for d in got] == [True, True, True, False, False]
    assert [d.delivery_count for d in got] == [1, 1, 1, 0, 0]


def test_requeued_message_is_redelivered_to_a_consumer_with_room(core: Core) -> None:
    core.queue("q")
    core.consume("q", "a", owner=A, prefetch=1)
    core.consume("q", "b", owner=B, prefetch=1)
    publish_all(core, "q", "1", "2")
    first = core.q("q").unacked
    assert {owner for owner, _ in first.values()} == {A, B}
    seq_a = next(s for s, (owner, _) in first.items() if owner == A)
    got = core.settle("requeue", "q", seq_a, owner=A)
    # only a has room again (b is at its prefetch), so it gets the message back at once
    assert [(d.tag, d.message.seq) for d in got] == [("a", seq_a)]
    assert got[0].redelivered


def test_settle_by_the_wrong_owner_is_ignored(core: Core) -> None:
    core.queue("q")
    core.publish("q", b"m")
    msg = core.get("q", owner=A)
    assert msg is not None
    core.settle("ack", "q", msg.seq, owner=B)
    assert msg.seq in core.q("q").unacked
    core.settle("ack", "q", msg.seq, owner=A)
    assert core.q("q").messages == {}


def test_prefetch_limits_in_flight_deliveries(core: Core) -> None:
    core.queue("q")
    publish_all(core, "q", *"12345")
    got = core.consume("q", prefetch=2)
    assert [d.message.body for d in got] == [b"1", b"2"]
    assert core.q("q").ready_count == 3
    got = core.settle("ack", "q", got[0].message.seq)
    assert [d.message.body for d in got] == [b"3"]
    core.publish("q", b"6")
    assert core.deliveries() == []


def test_no_ack_consumer_forgets_messages(core: Core) -> None:
    core.queue("q")
    publish_all(core, "q", "1", "2")
    got = core.consume("q", no_ack=True, prefetch=1)  # prefetch does not apply to no-ack
    assert [d.message.body for d in got] == [b"1", b"2"]
    assert core.q("q").messages == {}


def test_settle_transient_consumer_forgets_only_non_persistent_messages(core: Core) -> None:
    core.queue("q")
    core.publish("q", "gone", delivery_mode=1)
    core.publish("q", "kept", delivery_mode=2)
    core.publish("q", "waits", delivery_mode=1)
    got = core.consume("q", prefetch=1, settle_transient=True)
    # The transient message needs no prefetch slot; the persistent one holds the only one.
    assert [d.message.body for d in got] == [b"gone", b"kept"]
    assert len(core.q("q").messages) == 2
    core.apply(c.ReleaseOwner(OWNER))
    assert ready_bodies(core.q("q")) == [b"kept", b"waits"]


def test_round_robin_between_equal_consumers(core: Core) -> None:
    core.queue("q")
    core.consume("q", "a", owner=A)
    core.consume("q", "b", owner=B)
    tags = []
    for i in range(4):
        core.publish("q", str(i))
        tags.append(core.deliveries()[0].tag)
    assert tags == ["a", "b", "a", "b"]


def test_release_owner_requeues_and_redistributes(core: Core) -> None:
    core.queue("q")
    publish_all(core, "q", "1", "2", "3")
    core.consume("q", "a", owner=A, prefetch=2)
    core.apply(c.ReleaseOwner(A))
    assert core.q("q").ready_count == 3
    got = core.consume("q", "b", owner=B)
    assert [d.message.body for d in got] == [b"1", b"2", b"3"]
    assert [d.redelivered for d in got] == [True, True, False]


def test_recover_requeues_every_unacked_delivery_of_the_owner(core: Core) -> None:
    core.queue("q")
    publish_all(core, "q", "1", "2")
    core.get("q", owner=A)
    core.get("q", owner=B)
    core.apply(c.Recover(A))
    assert ready_bodies(core.q("q")) == [b"1"]
    assert len(core.q("q").unacked) == 1


def test_flow_pauses_and_resumes_a_consumer(core: Core) -> None:
    core.queue("q")
    core.consume("q")
    core.apply(c.SetFlow(A, False))
    core.publish("q", b"m")
    assert core.deliveries() == []
    core.apply(c.SetFlow(A, True))
    assert core.delivered_bodies() == [b"m"]


def test_purge_counts_only_ready_messages(core: Core) -> None:
    core.queue("q")
    publish_all(core, "q", "1", "2", "3")
    core.get("q")
    assert core.apply(c.PurgeQueue(VH, "q")) == 2
    q = core.q("q")
    assert q.ready_count == 0 and q.ready_bytes == 0
    assert len(q.messages) == 1
    core.publish("q", b"4")
    assert q.ready_count == 1
    assert core.drain("q") == [b"4"]


# -- single active consumer and consumer priorities ----------------------------------------


def test_single_active_consumer(core: Core) -> None:
    core.queue("q", **{"x-single-active-consumer": True})
    core.consume("q", "a", owner=A, prefetch=1)
    core.consume("q", "b", owner=B)
    publish_all(core, "q", "1", "2", "3")
    assert {owner for owner, _ in core.q("q").unacked.values()} == {A}
    assert core.q("q").ready_count == 2  # b waits although it has room
    core.apply(c.ReleaseOwner(A))
    # b takes over, the requeued message first
    assert core.delivered_bodies() == [b"1", b"2", b"3"]
    assert {owner for owner, _ in core.q("q").unacked.values()} == {B}


def test_consumer_priority(core: Core) -> None:
    core.queue("q")
    core.consume("q", "low", owner=A)
    core.consume("q", "high", owner=B, prefetch=2, priority=10)
    publish_all(core, "q", *"1234")
    by_owner = sorted((owner, seq) for seq, (owner, _) in core.q("q").unacked.items())
    assert by_owner == [(A, 3), (A, 4), (B, 1), (B, 2)]
    got = core.settle("ack", "q", 1, owner=B)
    assert got == []
    core.publish("q", b"5")
    assert [d.tag for d in core.deliveries()] == ["high"]


# -- message priority ----------------------------------------------------------------------


def test_message_priority(core: Core) -> None:
    core.queue("q", **{"x-max-priority": 5})
    core.publish("q", b"p0")
    core.publish("q", b"p9", priority=9)  # capped at the queue's maximum
    core.publish("q", b"p5", priority=5)
    core.publish("q", b"p3", priority=3)
    core.publish("q", b"p3b", priority=3)
    assert ready_bodies(core.q("q")) == [b"p9", b"p5", b"p3", b"p3b", b"p0"]
    assert core.drain("q") == [b"p9", b"p5", b"p3", b"p3b", b"p0"]


def test_priority_is_ignored_without_max_priority(core: Core) -> None:
    core.queue("q")
    core.publish("q", b"a")
    core.publish("q", b"b", priority=9)
    assert core.drain("q") == [b"a", b"b"]


def test_requeued_message_keeps_its_priority_level(core: Core) -> None:
    core.queue("q", **{"x-max-priority": 2})
    core.publish("q", b"low", priority=0)
    core.publish("q", b"high1", priority=2)
    core.publish("q", b"high2", priority=2)
    first = core.get("q")
    assert first is not None and first.body == b"high1"
    core.settle("requeue", "q", first.seq)
    assert ready_bodies(core.q("q")) == [b"high1", b"high2", b"low"]


# -- TTL and dead-lettering ----------------------------------------------------------------


def test_queue_ttl_expires_on_tick_and_dead_letters(core: Core) -> None:
    dead_queue(core, **{"x-message-ttl": 1000})
    core.publish("q", b"a", at=0)
    core.publish("q", b"b", at=400)
    assert core.sm.next_due() == 1000
    core.tick(999)
    assert core.q("q").ready_count == 2
    core.tick(1000)
    assert ready_bodies(core.q("q")) == [b"b"]
    assert core.sm.next_due() == 1400
    core.tick(1400)
    assert core.q("q").ready_count == 0
    dead = [m for m in core.q("dlq").messages.values()]
    assert [m.body for m in dead] == [b"a", b"b"]
    death = x_death(dead[0])
    assert len(death) == 1
    assert death[0]["reason"] == "expired"
    assert death[0]["queue"] == "q"
    assert death[0]["count"] == 1
    assert death[0]["exchange"] == ""
    assert death[0]["routing-keys"] == ["q"]
    headers = dead[0].properties["headers"]
    assert headers["x-first-death-reason"] == "expired"
    assert headers["x-first-death-queue"] == "q"
    assert dead[0].routing_key == "dlq"
    assert core.sm.next_due() is None


def test_per_message_ttl_is_the_minimum_and_removed_on_dead_letter(core: Core) -> None:
    dead_queue(core, **{"x-message-ttl": 1000})
    core.publish("q", b"short", expiration="100")
    core.publish("q", b"long", expiration="5000")
    msgs = sorted(core.q("q").messages.values(), key=lambda m: m.seq)
    assert [m.expires_at for m in msgs] == [100, 1000]
    core.tick(100)
    (dead,) = core.q("dlq").messages.values()
    assert "expiration" not in dead.properties
    assert x_death(dead)[0]["original-expiration"] == "100"


def test_only_the_head_expires(core: Core) -> None:
    dead_queue(core)
    core.publish("q", b"forever")
    core.publish("q", b"short", expiration="10")
    core.tick(100)
    assert ready_bodies(core.q("q")) == [b"forever", b"short"]
    # once it reaches the head it is never delivered
    assert core.drain("q") == [b"forever"]
    assert [m.body for m in core.q("dlq").messages.values()] == [b"short"]


def test_a_shorter_ttl_reaching_the_head_by_delivery_expires_on_time(core: Core) -> None:
    dead_queue(core)
    core.publish("q", b"long", expiration="10000", at=0)
    core.publish("q", b"short", expiration="100", at=0)
    assert core.sm.next_due() == 10000
    assert core.consume("q", prefetch=1)[0].message.body == b"long"
    # "short" is the head now: its own expiry must be on the timer list
    assert core.sm.next_due() == 100
    core.tick(100)
    assert ready_bodies(core.q("q")) == []
    assert [m.body for m in core.q("dlq").messages.values()] == [b"short"]


def test_expired_messages_are_never_delivered(core: Core) -> None:
    dead_queue(core, **{"x-message-ttl": 100})
    core.publish("q", b"m")
    # no Tick ran: the consumer still must not get it
    got = core.apply(c.Get(VH, "q", A), at=500)
    assert got.message is None
    assert core.q("dlq").ready_count == 1


def test_ttl_zero_delivers_to_a_waiting_consumer_or_drops(core: Core) -> None:
    dead_queue(core, **{"x-message-ttl": 0})
    core.publish("q", b"dropped")
    assert core.q("q").ready_count == 0
    assert core.q("dlq").ready_count == 1
    core.consume("q")
    core.publish("q", b"delivered")
    assert core.delivered_bodies() == [b"delivered"]


def test_invalid_expiration_is_refused(core: Core) -> None:
    core.queue("q")
    with pytest.raises(PreconditionFailed):
        core.publish("q", b"m", expiration="soon")
    with pytest.raises(PreconditionFailed):
        core.publish("q", b"m", expiration="-5")
    assert core.q("q").ready_count == 0


def test_requeued_message_still_expires(core: Core) -> None:
    """A requeued message with a TTL needs a timer even if the old one already fired."""
    dead_queue(core, **{"x-message-ttl": 1000})
    core.publish("q", b"m", at=0)
    msg = core.get("q")
    assert msg is not None
    core.tick(1000)  # the publish timer fires while the message is out
    core.settle("requeue", "q", msg.seq, at=1100)
    due = core.sm.next_due()
    assert due is not None and due <= 1100
    core.tick(1100)
    assert core.q("q").ready_count == 0
    assert core.q("dlq").ready_count == 1
    assert x_death(core.q("dlq").messages[1])[0]["reason"] == "expired"


def test_expiry_of_every_priority_level_head(core: Core) -> None:
    """A live high-priority head must not keep an expired low-priority one (and a timer) alive."""
    dead_queue(core, **{"x-max-priority": 5})
    core.publish("q", b"low", expiration="100", priority=0)
    core.publish("q", b"high", priority=5)
    core.tick(100)
    assert ready_bodies(core.q("q")) == [b"high"]
    assert core.q("dlq").ready_count == 1
    due = core.sm.next_due()
    assert due is None or due > 100


def test_reject_dead_letters_and_counts_repeated_deaths(core: Core) -> None:
    # q dead-letters to itself: allowed for rejections, and x-death counts them
    core.queue("q", **dlx_args("q"))
    core.publish("q", b"m", headers={"app": "x"})
    for round_ in (1, 2, 3):
        msg = core.get("q")
        assert msg is not None
        core.settle("reject", "q", msg.seq)
        (again,) = core.q("q").messages.values()
        (death,) = x_death(again)
        assert death["reason"] == "rejected"
        assert death["count"] == round_
        assert again.properties["headers"]["app"] == "x"


def test_x_death_counts_per_queue_and_reason_through_a_cycle(core: Core) -> None:
    # q1 rejects into q2, q2 expires back into q1: a cycle with a rejection in it is allowed
    core.queue("q1", **dlx_args("q2"))
    core.queue("q2", **dlx_args("q1", **{"x-message-ttl": 10}))
    core.publish("q1", b"m")
    for round_ in (1, 2):
        msg = core.get("q1")
        assert msg is not None
        core.settle("reject", "q1", msg.seq)
        (m,) = core.q("q2").messages.values()
        assert [(d["queue"], d["reason"], d["count"]) for d in x_death(m)][0] == (
            "q1",
            "rejected",
            round_,
        )
        core.tick(core.now + 10)
        (m,) = core.q("q1").messages.values()
        assert [(d["queue"], d["reason"], d["count"]) for d in x_death(m)] == [
            ("q2", "expired", round_),
            ("q1", "rejected", round_),
        ]
    headers = m.properties["headers"]
    assert headers["x-first-death-queue"] == "q1"
    assert headers["x-first-death-reason"] == "rejected"
    assert headers["x-last-death-queue"] == "q2"
    assert headers["x-last-death-reason"] == "expired"


def test_automatic_dead_letter_cycles_are_dropped(core: Core) -> None:
    """A message that would die back into a queue it expired from, with no rejection on the
    way, is dropped (RabbitMQ's rule), so TTL loops end."""
    core.queue("q1", **dlx_args("q2", **{"x-message-ttl": 10}))
    core.queue("q2", **dlx_args("q1", **{"x-message-ttl": 10}))
    core.publish("q1", b"m")
    core.tick(10)
    (m,) = core.q("q2").messages.values()
    assert [(d["queue"], d["count"]) for d in x_death(m)] == [("q1", 1)]
    core.tick(20)
    assert core.q("q1").messages == {} and core.q("q2").messages == {}


def test_zero_ttl_dead_letter_cycle_terminates(core: Core) -> None:
    core.queue("q1", **dlx_args("q2", **{"x-message-ttl": 0}))
    core.queue("q2", **dlx_args("q1", **{"x-message-ttl": 0}))
    core.publish("q1", b"m")  # used to recurse until RecursionError
    assert core.q("q1").messages == {} and core.q("q2").messages == {}


def test_expired_self_dead_lettering_is_dropped(core: Core) -> None:
    core.queue("q", **dlx_args("q", **{"x-message-ttl": 10}))
    core.publish("q", b"m")
    core.tick(10)
    assert core.q("q").messages == {}


def test_dead_letter_routing_key_defaults_to_the_original(core: Core) -> None:
    core.exchange("dlx", "topic")
    core.queue("dead")
    core.bind("dlx", "dead", "orders.#")
    core.exchange("in", "direct")
    core.queue("q", **{"x-dead-letter-exchange": "dlx", "x-message-ttl": 5})
    core.bind("in", "q", "orders.new")
    core.publish("orders.new", b"m", "in")
    core.tick(5)
    (m,) = core.q("dead").messages.values()
    assert m.routing_key == "orders.new"
    assert m.exchange == "dlx"
    assert x_death(m)[0]["exchange"] == "in"


def test_missing_dead_letter_exchange_drops(core: Core) -> None:
    core.queue("q", **{"x-dead-letter-exchange": "gone", "x-message-ttl": 5})
    core.publish("q", b"m")
    core.tick(5)
    assert core.q("q").messages == {}


# -- length limits -------------------------------------------------------------------------


def test_max_length_drop_head(core: Core) -> None:
    dead_queue(core, **{"x-max-length": 2})
    publish_all(core, "q", "1", "2", "3", "4")
    q = core.q("q")
    assert q.ready_count == 2
    assert len(q.messages) == 2
    assert ready_bodies(q) == [b"3", b"4"]
    dead = sorted(core.q("dlq").messages.values(), key=lambda m: m.seq)
    assert [m.body for m in dead] == [b"1", b"2"]
    assert x_death(dead[0])[0]["reason"] == "maxlen"


def test_max_length_counts_ready_messages_only(core: Core) -> None:
    core.queue("q", **{"x-max-length": 1})
    core.publish("q", b"1")
    core.get("q")
    core.publish("q", b"2")
    assert core.q("q").ready_count == 1
    assert len(core.q("q").messages) == 2


def test_max_length_bytes(core: Core) -> None:
    core.queue("q", **{"x-max-length-bytes": 10})
    publish_all(core, "q", "aaaa", "bbbb", "cccc")
    q = core.q("q")
    assert ready_bodies(q) == [b"bbbb", b"cccc"]
    assert q.ready_bytes == 8


def test_reject_publish(core: Core) -> None:
    dead_queue(core, **{"x-max-length": 1, "x-overflow": "reject-publish"})
    assert not core.publish("q", b"1").rejected
    result = core.publish("q", b"2")
    assert result.routed and result.rejected
    assert ready_bodies(core.q("q")) == [b"1"]
    assert core.q("dlq").ready_count == 0


def test_reject_publish_dlx(core: Core) -> None:
    dead_queue(core, **{"x-max-length": 1, "x-overflow": "reject-publish-dlx"})
    core.publish("q", b"1")
    assert core.publish("q", b"2").rejected
    assert ready_bodies(core.q("q")) == [b"1"]
    (dead,) = core.q("dlq").messages.values()
    assert dead.body == b"2"
    assert x_death(dead)[0]["reason"] == "maxlen"


def test_reject_publish_only_refuses_the_full_queue(core: Core) -> None:
    core.exchange("f", "fanout")
    core.queue("full", **{"x-max-length": 0, "x-overflow": "reject-publish"})
    core.queue("open")
    core.bind("f", "full")
    core.bind("f", "open")
    result = core.publish("", b"m", "f")
    assert result.rejected
    assert core.q("open").ready_count == 1


def test_max_message_size_refuses_larger_publishes(core: Core) -> None:
    core.exchange("f", "fanout")
    core.queue("small", **{"x-max-message-size": 4})
    core.queue("open")
    core.bind("f", "small")
    core.bind("f", "open")
    assert not core.publish("", b"four", "f").rejected
    result = core.publish("", b"fives", "f")
    assert result.routed and result.rejected
    assert Overflowed(VH, "small", TOO_LARGE) in core.effects
    assert ready_bodies(core.q("small")) == [b"four"]
    assert ready_bodies(core.q("open")) == [b"four", b"fives"]
    with pytest.raises(ResourceLimit):
        core.apply(c.Batch([c.Publish(VH, "", "small", {}, b"sixsix")], refuse_when_full=True))
    assert ready_bodies(core.q("small")) == [b"four"]


# -- delivery limit ------------------------------------------------------------------------


def test_delivery_limit_dead_letters_after_too_many_returns(core: Core) -> None:
    dead_queue(core, **{"x-delivery-limit": 2})
    core.publish("q", b"m")
    counts = []
    for _ in range(3):
        got = core.apply(c.Get(VH, "q", A))
        counts.append((got.message.returns, got.redelivered))
        core.settle("requeue", "q", got.message.seq)
    assert counts == [(0, False), (1, True), (2, True)]
    assert core.q("q").messages == {}
    (dead,) = core.q("dlq").messages.values()
    assert x_death(dead)[0]["reason"] == "delivery_limit"


def test_delivery_limit_counts_consumer_releases(core: Core) -> None:
    dead_queue(core, **{"x-delivery-limit": 0})
    core.publish("q", b"m")
    core.consume("q", owner=A)
    core.apply(c.ReleaseOwner(A))
    assert core.q("q").messages == {}
    assert core.q("dlq").ready_count == 1


# -- pull API: receive with a visibility timeout -------------------------------------------


def test_receive_hides_until_the_deadline(core: Core) -> None:
    core.queue("q")
    publish_all(core, "q", "1", "2")
    (r,) = core.receive("q", 1, visibility=1000, at=100)
    assert r.message.body == b"1"
    assert r.handle == f"{r.message.seq}.1"
    assert r.message.delivery_count == 1
    q = core.q("q")
    assert (q.ready_count, q.hidden_count) == (1, 1)
    assert r.message.state == HIDDEN and r.message.visible_at == 1100
    assert core.sm.next_due() == 1100
    # not visible to pushes, gets or receives before the deadline
    assert [x.message.body for x in core.receive("q", 10)] == [b"2"]
    assert core.receive("q", 10) == []
    core.tick(1099)
    assert core.receive("q", 10) == []
    effects = core.tick(1100)
    assert MessagesAvailable(VH, "q") in effects
    (again,) = core.receive("q", 1, visibility=50)
    assert again.message.body == b"1"
    assert again.message.delivery_count == 2
    assert again.handle == f"{r.message.seq}.2"


def test_receive_uses_the_queue_default_visibility(core: Core) -> None:
    core.queue("q", **{"x-visibility-timeout": 250})
    core.publish("q", b"m")
    (r,) = core.receive("q", at=10)
    assert r.message.visible_at == 260
    with pytest.raises(InvalidArgument):
        core.receive("q", 0)


def test_visible_again_messages_go_ahead_of_newer_ones(core: Core) -> None:
    core.queue("q")
    publish_all(core, "q", "1", "2", "3")
    core.receive("q", 2, visibility=100)
    core.publish("q", b"4")
    core.tick(100)
    assert ready_bodies(core.q("q")) == [b"1", b"2", b"3", b"4"]


def test_hidden_message_returns_to_a_push_consumer(core: Core) -> None:
    core.queue("q")
    core.publish("q", b"m")
    core.receive("q", visibility=100)
    core.consume("q")
    assert core.deliveries() == []
    core.tick(100)
    (d,) = core.deliveries()
    assert d.message.body == b"m" and d.redelivered


def test_delete_by_handle(core: Core) -> None:
    core.queue("q")
    core.publish("q", b"m")
    (r,) = core.receive("q", visibility=100)
    core.apply(c.DeleteByHandle(VH, "q", r.handle), at=50)
    assert core.q("q").messages == {}
    assert core.q("q").hidden_count == 0
    with pytest.raises(ReceiptHandleInvalid):
        core.apply(c.DeleteByHandle(VH, "q", r.handle))


def test_only_the_latest_handle_is_valid(core: Core) -> None:
    core.queue("q")
    core.publish("q", b"m")
    (first,) = core.receive("q", visibility=100)
    core.tick(100)
    (second,) = core.receive("q", visibility=100)
    assert first.handle != second.handle
    with pytest.raises(ReceiptHandleInvalid):
        core.apply(c.DeleteByHandle(VH, "q", first.handle))
    with pytest.raises(ReceiptHandleInvalid):
        core.apply(c.ChangeVisibility(VH, "q", first.handle, 1000))
    core.apply(c.DeleteByHandle(VH, "q", second.handle))
    assert core.q("q").messages == {}


def test_handle_is_invalid_once_the_deadline_passed(core: Core) -> None:
    core.queue("q")
    core.publish("q", b"m")
    (r,) = core.receive("q", visibility=100)
    # past the deadline, even before the Tick that makes it visible
    with pytest.raises(ReceiptHandleInvalid, match="expired"):
        core.apply(c.DeleteByHandle(VH, "q", r.handle), at=100)
    core.tick(100)
    with pytest.raises(ReceiptHandleInvalid):
        core.apply(c.DeleteByHandle(VH, "q", r.handle))
    assert core.q("q").ready_count == 1


@pytest.mark.parametrize("handle", ["", "x", "1", "1.x", "99.1", "1.2"])
def test_malformed_or_unknown_handles(core: Core, handle: str) -> None:
    core.queue("q")
    core.publish("q", b"m")
    core.receive("q", visibility=100)
    with pytest.raises(ReceiptHandleInvalid):
        core.apply(c.DeleteByHandle(VH, "q", handle))


def test_handle_of_a_pushed_message_is_invalid(core: Core) -> None:
    core.queue("q")
    core.publish("q", b"m")
    (r,) = core.receive("q", visibility=100)
    core.tick(100)
    core.consume("q")
    with pytest.raises(ReceiptHandleInvalid):
        core.apply(c.DeleteByHandle(VH, "q", r.handle))


def test_change_visibility(core: Core) -> None:
    core.queue("q")
    core.publish("q", b"m")
    (r,) = core.receive("q", visibility=100)
    assert core.apply(c.ChangeVisibility(VH, "q", r.handle, 500), at=50) == 550
    assert core.q("q").hidden_count == 1
    core.tick(100)  # the old deadline no longer applies
    assert core.q("q").ready_count == 0
    core.apply(c.DeleteByHandle(VH, "q", r.handle), at=549)
    assert core.q("q").messages == {}


def test_change_visibility_shortens_the_deadline(core: Core) -> None:
    core.queue("q")
    core.publish("q", b"m")
    (r,) = core.receive("q", visibility=1000)
    core.apply(c.ChangeVisibility(VH, "q", r.handle, 10), at=20)
    assert core.sm.next_due() == 30
    core.tick(30)
    assert ready_bodies(core.q("q")) == [b"m"]
    assert core.q("q").hidden_count == 0


def test_max_receive_count_dead_letters_on_pull(core: Core) -> None:
    dead_queue(core, **{"x-max-receive-count": 2})
    core.publish("q", b"m")
    for at in (0, 100):
        (r,) = core.receive("q", visibility=100, at=at)
        assert r.message.delivery_count == at // 100 + 1
        core.tick(at + 100)
    assert core.receive("q") == []
    assert core.q("q").messages == {}
    (dead,) = core.q("dlq").messages.values()
    assert x_death(dead)[0]["reason"] == "delivery_limit"


def test_max_receive_count_keeps_the_message_while_its_dead_letter_queue_is_gone(
    core: Core,
) -> None:
    dead_queue(core, **{"x-max-receive-count": 1})
    core.apply(c.DeleteQueue(VH, "dlq"))
    core.publish("q", b"m")
    for at in (0, 100):
        (r,) = core.receive("q", visibility=100, at=at)
        assert r.message.delivery_count == at // 100 + 1
        core.tick(at + 100)
    core.queue("dlq")  # the name routes again: the limit applies again
    assert core.receive("q") == []
    assert ready_bodies(core.q("dlq")) == [b"m"]


def test_max_receive_count_without_a_dead_letter_target_drops_nothing(core: Core) -> None:
    core.queue("q", **{"x-max-receive-count": 1})
    core.publish("q", b"m")
    for at in (0, 100):
        (r,) = core.receive("q", visibility=100, at=at)
        assert r.message.delivery_count == at // 100 + 1
        core.tick(at + 100)


def test_ttl_applies_to_messages_coming_back_from_pull(core: Core) -> None:
    dead_queue(core, **{"x-message-ttl": 150})
    core.publish("q", b"m")
    core.receive("q", visibility=200)
    core.tick(200)
    assert core.q("q").messages == {}
    assert core.q("dlq").ready_count == 1


def test_delayed_publish_to_a_pull_queue(core: Core) -> None:
    core.queue("q")
    core.apply(c.Publish(VH, "", "q", {}, b"later", delay_ms=500), at=100)
    core.publish("q", b"now")
    q = core.q("q")
    assert (q.ready_count, q.hidden_count, q.delayed_count) == (1, 1, 1)
    # a delayed message has no handle to delete it by
    with pytest.raises(ReceiptHandleInvalid):
        core.apply(c.DeleteByHandle(VH, "q", "1.0"))
    assert [r.message.body for r in core.receive("q", 10, visibility=10_000)] == [b"now"]
    core.tick(599)
    assert core.receive("q", 10) == []
    core.tick(600)
    assert q.delayed_count == 0
    (r,) = core.receive("q", 10)
    assert r.message.body == b"later"
    assert r.message.delivery_count == 1


# -- retention and rewind ------------------------------------------------------------------


def test_acked_messages_are_retained_and_rewound(core: Core) -> None:
    core.queue("q", **{"x-rewind-ms": 10_000})
    core.publish("q", b"1", at=100)
    core.publish("q", b"2", at=200)
    core.publish("q", b"3", at=300)
    got = core.consume("q")
    core.settle("ack", "q", *(d.message.seq for d in got[:2]), at=400)
    q = core.q("q")
    assert q.retained_count() == 2
    assert q.ready_count == 0
    assert all(q.messages[d.message.seq].state == RETAINED for d in got[:2])
    core.apply(c.Cancel(A, "ctag"))
    # only messages enqueued at or after since_ms come back
    assert core.apply(c.Rewind(VH, "q", 200), at=500) == 1
    assert q.retained_count() == 1
    assert MessagesAvailable(VH, "q") in core.effects
    assert ready_bodies(q) == [b"2"]
    assert list(q.unacked) == [got[2].message.seq]  # cancelling does not requeue


def test_rewind_makes_retained_messages_consumable_in_order(core: Core) -> None:
    core.queue("q", **{"x-rewind-ms": 10_000})
    for i, at in enumerate((100, 200, 300)):
        core.publish("q", str(i + 1), at=at)
    for r in core.receive("q", 3, visibility=1000, at=400):
        core.apply(c.DeleteByHandle(VH, "q", r.handle))
    core.publish("q", b"4", at=500)
    q = core.q("q")
    assert (q.retained_count(), q.hidden_count, q.ready_count) == (3, 0, 1)
    assert core.apply(c.Rewind(VH, "q", 0), at=600) == 3
    assert ready_bodies(q) == [b"1", b"2", b"3", b"4"]
    assert q.retained_count() == 0
    # rewound messages start over: received again as if new, and retained again when acked
    (r,) = core.receive("q", visibility=100)
    assert r.message.delivery_count == 1
    core.apply(c.DeleteByHandle(VH, "q", r.handle))
    assert q.retained_count() == 1


def test_rewind_by_position_brings_back_from_that_sequence_number_in_order(core: Core) -> None:
    core.queue("q", **{"x-rewind-ms": 10_000})
    publish_all(core, "q", "1", "2", "3", "4")
    received = core.receive("q", 3, visibility=1000)
    for r in reversed(received):  # deleted out of order: the rewind still restores it
        core.apply(c.DeleteByHandle(VH, "q", r.handle))
    q = core.q("q")
    second = received[1].message.seq
    assert core.apply(c.Rewind(VH, "q", 0, second)) == 2
    assert ready_bodies(q) == [b"2", b"3", b"4"]
    assert q.retained_count() == 1  # "1" is before the position: still kept, not ready
    assert MessagesAvailable(VH, "q") in core.effects
    assert core.apply(c.Rewind(VH, "q", 0, received[0].message.seq)) == 1
    assert ready_bodies(q) == [b"1", b"2", b"3", b"4"]


def test_rewind_by_position_and_time_take_what_both_allow(core: Core) -> None:
    core.queue("q", **{"x-rewind-ms": 10_000})
    for i, at in enumerate((100, 200, 300)):
        core.publish("q", str(i + 1), at=at)
    got = core.consume("q")
    core.settle("ack", "q", *(d.message.seq for d in got), at=400)
    core.apply(c.Cancel(A, "ctag"))
    # at or after t=200 and from the first message's seq: only "2" and "3"
    assert core.apply(c.Rewind(VH, "q", 200, got[0].message.seq), at=500) == 2
    assert ready_bodies(core.q("q")) == [b"2", b"3"]


def test_rewind_past_the_last_position_brings_back_nothing(core: Core) -> None:
    core.queue("q", **{"x-rewind-ms": 10_000})
    core.publish("q", b"m")
    (r,) = core.receive("q")
    core.apply(c.DeleteByHandle(VH, "q", r.handle))
    assert core.apply(c.Rewind(VH, "q", 0, r.message.seq + 1)) == 0
    assert core.q("q").retained_count() == 1
    assert MessagesAvailable(VH, "q") not in core.effects


def test_rewind_reaches_push_consumers(core: Core) -> None:
    core.queue("q", **{"x-rewind-ms": 10_000})
    core.publish("q", b"m")
    (d,) = core.consume("q")
    core.settle("ack", "q", d.message.seq)
    assert core.apply(c.Rewind(VH, "q", 0)) == 1
    (again,) = core.deliveries()
    assert again.message.body == b"m" and not again.redelivered  # it starts over


def test_retention_expires_on_tick(core: Core) -> None:
    core.queue("q", **{"x-rewind-ms": 1000})
    publish_all(core, "q", "1", "2")
    (r1, r2) = core.receive("q", 2, visibility=10_000)
    core.apply(c.DeleteByHandle(VH, "q", r1.handle), at=100)
    core.apply(c.DeleteByHandle(VH, "q", r2.handle), at=600)
    q = core.q("q")
    assert q.retained_count() == 2
    core.tick(1099)
    assert q.retained_count() == 2
    core.tick(1100)
    assert q.retained_count() == 1
    core.tick(1600)
    assert q.retained_count() == 0
    assert q.messages == {}
    assert core.apply(c.Rewind(VH, "q", 0)) == 0


def test_no_retention_without_a_rewind_window(core: Core) -> None:
    core.queue("q")
    core.publish("q", b"m")
    (r,) = core.receive("q")
    core.apply(c.DeleteByHandle(VH, "q", r.handle))
    assert core.apply(c.Rewind(VH, "q", 0)) == 0
    assert core.q("q").messages == {}


def test_rewound_messages_are_received_again_before_the_receive_limit(core: Core) -> None:
    dead_queue(core, **{"x-rewind-ms": 100_000, "x-max-receive-count": 2})
    publish_all(core, "q", "1", "2")
    for at in (0, 100):
        received = core.receive("q", 2, visibility=100, at=at)
        if at:
            for r in received:
                core.apply(c.DeleteByHandle(VH, "q", r.handle), at=at + 50)
        core.tick(at + 100)
    assert core.apply(c.Rewind(VH, "q", 0), at=300) == 2
    got = core.receive("q", 2, visibility=100, at=300)
    assert [(r.message.body, r.message.delivery_count) for r in got] == [(b"1", 1), (b"2", 1)]
    assert core.q("dlq").messages == {}


def test_rewound_messages_keep_their_place_after_a_restore(core: Core) -> None:
    core.queue("q", **{"x-rewind-ms": 100_000})
    publish_all(core, "q", "1", "2", "3")
    for r in core.receive("q", 2, visibility=1000):
        core.apply(c.DeleteByHandle(VH, "q", r.handle))
    publish_all(core, "q", "4")
    assert core.apply(c.Rewind(VH, "q", 0)) == 2
    assert ready_bodies(core.q("q")) == [b"1", b"2", b"3", b"4"]
    assert ready_bodies(reloaded(core).q("q")) == [b"1", b"2", b"3", b"4"]


def test_rewound_message_with_ttl_still_expires(core: Core) -> None:
    dead_queue(core, **{"x-rewind-ms": 100_000, "x-message-ttl": 1000})
    core.publish("q", b"m")
    (r,) = core.receive("q", visibility=5000)
    core.apply(c.DeleteByHandle(VH, "q", r.handle), at=10)
    core.tick(1000)  # nothing to expire: the message is retained
    assert core.apply(c.Rewind(VH, "q", 0), at=1100) == 1
    due = core.sm.next_due()
    assert due is not None and due <= 1100
    core.tick(1100)
    assert core.q("q").ready_count == 0
    assert core.q("dlq").ready_count == 1


@pytest.mark.parametrize(
    "headers",
    [
        {"x-death": "not a list"},
        {"x-death": [1, "x"]},
        {"x-death": {"queue": "q"}},
        {"CC": 5},
        {"x-death": [{"queue": "q", "reason": "rejected", "count": "many"}]},
    ],
)
def test_malformed_client_headers_do_not_break_dead_lettering(
    core: Core, headers: dict[str, object]
) -> None:
    dead_queue(core)
    core.publish("q", b"m", headers=headers)
    msg = core.get("q")
    assert msg is not None
    core.settle("reject", "q", msg.seq)
    (dead,) = core.q("dlq").messages.values()
    death = x_death(dead)[0]
    assert (death["queue"], death["reason"], death["count"]) == ("q", "rejected", 1)


def test_client_supplied_x_death_is_continued(core: Core) -> None:
    dead_queue(core)
    earlier = {"queue": b"q", "reason": b"rejected", "count": 3, "exchange": b""}
    core.publish("q", b"m", headers={"x-death": [earlier], "CC": ["other"]})
    msg = core.get("q")
    assert msg is not None
    core.settle("reject", "q", msg.seq)
    (dead,) = core.q("dlq").messages.values()
    (death,) = x_death(dead)
    assert death["count"] == 4
