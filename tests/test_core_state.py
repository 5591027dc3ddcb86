"""The state machine's broker-wide behaviour: routing, declarations, locks, timers.

Every test drives `StateMachine.apply` directly with an injected clock (see core_helpers.Core).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.core import commands as c
from broker.core.errors import (
    AccessRefused,
    CommandInvalid,
    NotAllowed,
    NotFound,
    PreconditionFailed,
    ReceiptHandleInvalid,
    ResourceLocked,
)
from broker.core.model import ConsumerCancelled, Dropped, MessagesAvailable
from broker.core.routing import headers_match, topic_matches
from tests.core_helpers import VH, Core, ready_bodies, reloaded, restart


@pytest.fixture
def core() -> Core:
    return Core()


def routed(core: Core, exchange: str, key: str, **props: object) -> set[str]:
    """Names of the queues holding the message after one publish (each queue drained)."""
    core.publish(key, b"m", exchange, **props)
    out = set()
    for name, q in core.sm.vhosts[VH].queues.items():
        if q.ready_count:
            out.add(name)
            core.drain(name)
    return out


# -- routing -------------------------------------------------------------------------------


def test_default_exchange_routes_by_queue_name(core: Core) -> None:
    core.queue("a")
    core.queue("b")
    assert routed(core, "", "a") == {"a"}
    assert routed(core, "", "nope") == set()
    result = core.publish("nope", b"x")
    assert not result.routed


def test_default_exchange_cannot_be_bound_or_declared(core: Core) -> None:
    core.queue("a")
    with pytest.raises(AccessRefused):
        core.bind("", "a", "a")
    with pytest.raises(AccessRefused):
        core.exchange("", "direct")
    with pytest.raises(AccessRefused):
        core.apply(c.DeleteExchange(VH, ""))
    with pytest.raises(AccessRefused):
        core.apply(c.DeclareExchange(VH, "", passive=True))
    with pytest.raises(CommandInvalid):  # the type is checked before the name
        core.exchange("", "nonsense")


def test_direct_routing(core: Core) -> None:
    core.exchange("d")
    core.queue("a")
    core.queue("b")
    core.bind("d", "a", "red")
    core.bind("d", "b", "red")
    core.bind("d", "b", "blue")
    assert routed(core, "d", "red") == {"a", "b"}
    assert routed(core, "d", "blue") == {"b"}
    assert routed(core, "d", "green") == set()


def test_a_message_reaches_a_queue_once_even_with_two_matching_bindings(core: Core) -> None:
    core.exchange("t", "topic")
    core.queue("a")
    core.bind("t", "a", "x.*")
    core.bind("t", "a", "#")
    core.publish("x.y", b"m", "t")
    assert core.q("a").ready_count == 1


def test_fanout_ignores_the_routing_key(core: Core) -> None:
    core.exchange("f", "fanout")
    core.queue("a")
    core.queue("b")
    core.bind("f", "a", "whatever")
    core.bind("f", "b")
    assert routed(core, "f", "anything") == {"a", "b"}


@pytest.mark.parametrize(
    ("pattern", "key", "expected"),
    [
        ("a.b.c", "a.b.c", True),
        ("a.*.c", "a.b.c", True),
        ("a.*.c", "a.c", False),
        ("a.*.c", "a.b.b.c", False),
        ("*", "a", True),
        ("*", "a.b", False),
        ("#", "", True),
        ("#", "a.b.c", True),
        ("a.#", "a", True),
        ("a.#", "a.b.c", True),
        ("a.#", "b.a", False),
        ("#.c", "a.b.c", True),
        ("#.c", "c", True),
        ("a.#.c", "a.c", True),
        ("a.#.c", "a.x.y.c", True),
        ("a.#.c", "a.x.y.d", False),
        ("#.#", "a", True),
        # an empty key has no words, as in RabbitMQ
        ("*", "", False),
        ("*.#", "", False),
        ("", "", True),
        ("", "a", False),
        ("*.*", "a", False),
        ("a.*.#", "a", False),
        ("a.*.#", "a.b", True),
    ],
)
def test_topic_patterns(pattern: str, key: str, expected: bool) -> None:
    assert topic_matches(pattern, key) is expected


def test_topic_exchange_routing(core: Core) -> None:
    core.exchange("t", "topic")
    for name, pattern in [("stars", "*.orange.*"), ("hash", "lazy.#"), ("rabbit", "*.*.rabbit")]:
        core.queue(name)
        core.bind("t", name, pattern)
    assert routed(core, "t", "quick.orange.rabbit") == {"stars", "rabbit"}
    assert routed(core, "t", "lazy.orange.elephant") == {"stars", "hash"}
    assert routed(core, "t", "lazy") == {"hash"}
    assert routed(core, "t", "quick.brown.fox") == set()
    assert routed(core, "t", "lazy.pink.rabbit") == {"hash", "rabbit"}


def test_headers_match_all_and_any() -> None:
    binding = {"x-match": "all", "format": "pdf", "type": "report"}
    assert headers_match(binding, {"format": "pdf", "type": "report", "extra": 1})
    assert not headers_match(binding, {"format": "pdf"})
    assert not headers_match(binding, None)
    anyb = {"x-match": "any", "format": "pdf", "type": "report"}
    assert headers_match(anyb, {"format": "pdf"})
    assert headers_match(anyb, {"type": "report"})
    assert not headers_match(anyb, {"format": "zip"})
    # x-match defaults to all; x- keys are ignored unless -with-x
    assert headers_match({"a": 1}, {"a": 1})
    assert headers_match({"x-match": "all", "x-k": 1}, {})
    assert not headers_match({"x-match": "all-with-x", "x-k": 1}, {})
    assert headers_match({"x-match": "any-with-x", "x-k": 1}, {"x-k": 1})
    # a void binding value matches on presence
    assert headers_match({"a": None}, {"a": "anything"})
    assert headers_match({"x-match": b"any", "a": 2}, {"a": 2})


def test_headers_exchange_routing(core: Core) -> None:
    core.exchange("h", "headers")
    core.queue("all")
    core.queue("any")
    core.bind("h", "all", "", **{"x-match": "all", "format": "pdf", "type": "report"})
    core.bind("h", "any", "", **{"x-match": "any", "format": "pdf", "type": "report"})
    assert routed(core, "h", "", headers={"format": "pdf", "type": "report"}) == {"all", "any"}
    assert routed(core, "h", "", headers={"format": "pdf", "type": "log"}) == {"any"}
    assert routed(core, "h", "ignored", headers={"other": 1}) == set()
    assert routed(core, "h", "") == set()


def test_exchange_to_exchange_bindings(core: Core) -> None:
    core.exchange("front", "topic")
    core.exchange("back", "fanout")
    core.exchange("side", "direct")
    core.queue("a")
    core.queue("b")
    core.bind_exchange("front", "back", "orders.#")
    core.bind_exchange("front", "side", "#")
    core.bind("back", "a")
    core.bind("side", "b", "orders.new")
    assert routed(core, "front", "orders.new") == {"a", "b"}
    assert routed(core, "front", "orders.old") == {"a"}
    assert routed(core, "front", "misc") == set()


def test_exchange_binding_cycles_terminate(core: Core) -> None:
    core.exchange("x1", "fanout")
    core.exchange("x2", "fanout")
    core.queue("a")
    core.bind_exchange("x1", "x2")
    core.bind_exchange("x2", "x1")
    core.bind("x2", "a")
    assert routed(core, "x1", "k") == {"a"}
    assert core.q("a").ready_count == 0


def test_alternate_exchange_gets_unroutable_messages(core: Core) -> None:
    core.exchange("ae", "fanout")
    core.exchange("main", "direct", arguments={"alternate-exchange": "ae"})
    core.queue("routed")
    core.queue("unrouted")
    core.bind("main", "routed", "k")
    core.bind("ae", "unrouted")
    assert routed(core, "main", "k") == {"routed"}
    assert routed(core, "main", "other") == {"unrouted"}
    result = core.publish("other", b"m", "main", mandatory=True)
    assert result.routed


def test_alternate_exchange_missing_or_cyclic_is_harmless(core: Core) -> None:
    core.exchange("x1", "direct", arguments={"alternate-exchange": "x2"})
    core.exchange("x2", "direct", arguments={"alternate-exchange": "x1"})
    core.exchange("x3", "direct", arguments={"alternate-exchange": "missing"})
    assert not core.publish("k", b"m", "x1").routed
    assert not core.publish("k", b"m", "x3").routed


def test_internal_exchange_refuses_publishes_but_routes_e2e(core: Core) -> None:
    core.exchange("inner", "fanout", internal=True)
    core.exchange("outer", "fanout")
    core.queue("a")
    core.bind_exchange("outer", "inner")
    core.bind("inner", "a")
    with pytest.raises(AccessRefused):
        core.publish("k", b"m", "inner")
    assert routed(core, "outer", "k") == {"a"}


def test_publish_to_missing_exchange(core: Core) -> None:
    with pytest.raises(NotFound):
        core.publish("k", b"m", "missing")
    with pytest.raises(NotAllowed):
        core.apply(c.Publish("nope", "", "k", {}, b""))


def test_unbind_and_exchange_delete_remove_routes(core: Core) -> None:
    core.exchange("d")
    core.queue("a")
    core.bind("d", "a", "k")
    core.apply(c.Unbind(VH, "d", "a", True, "k"))
    assert routed(core, "d", "k") == set()
    core.bind("d", "a", "k")
    with pytest.raises(PreconditionFailed):
        core.apply(c.DeleteExchange(VH, "d", if_unused=True))
    core.apply(c.DeleteExchange(VH, "d"))
    with pytest.raises(NotFound):
        core.publish("k", b"m", "d")


def test_deleting_a_queue_removes_its_bindings(core: Core) -> None:
    core.exchange("d")
    core.queue("a")
    core.bind("d", "a", "k")
    core.apply(c.DeleteQueue(VH, "a"))
    core.queue("a")
    assert routed(core, "d", "k") == set()


def test_auto_delete_exchange_goes_with_its_last_binding(core: Core) -> None:
    core.exchange("ad", "fanout", auto_delete=True)
    core.queue("a")
    core.bind("ad", "a")
    core.apply(c.Unbind(VH, "ad", "a", True))
    with pytest.raises(NotFound):
        core.sm.exchange(VH, "ad")


def test_unbind_is_idempotent_but_keeps_exclusive_bindings(core: Core) -> None:
    core.exchange("d")
    core.queue("a")
    core.apply(c.Unbind(VH, "gone", "a", True, "k"))
    core.apply(c.Unbind(VH, "d", "gone", True, "k"))
    core.apply(c.Unbind(VH, "d", "gone", False, "k"))
    core.apply(c.Unbind(VH, "d", "a", True, "never-bound"))
    with pytest.raises(AccessRefused):
        core.apply(c.Unbind(VH, "d", "", False, "k"))
    owner = (1, 7)
    core.apply(c.DeclareQueue(VH, "mine", exclusive_owner=owner, requester=owner))
    core.apply(c.Bind(VH, "d", "mine", True, "k", requester=owner))
    with pytest.raises(ResourceLocked):
        core.apply(c.Unbind(VH, "d", "mine", True, "k", requester=(1, 8)))
    core.apply(c.Unbind(VH, "d", "mine", True, "k", requester=owner))
    assert routed(core, "d", "k") == set()


# -- declarations --------------------------------------------------------------------------


def test_exchange_declare_equivalence(core: Core) -> None:
    core.exchange("x", "topic")
    core.exchange("x", "topic")  # same: fine
    with pytest.raises(PreconditionFailed, match="inequivalent arg 'type'"):
        core.exchange("x", "direct")
    with pytest.raises(PreconditionFailed, match="durable"):
        core.exchange("x", "topic", durable=False)
    with pytest.raises(PreconditionFailed, match="alternate-exchange"):
        core.exchange("x", "topic", arguments={"alternate-exchange": "ae"})
    with pytest.raises(CommandInvalid):
        core.exchange("y", "nonsense")
    with pytest.raises(AccessRefused):
        core.exchange("amq.mine", "direct")
    core.exchange("amq.topic", "topic")  # predeclared, equivalent
    with pytest.raises(NotFound):
        core.apply(c.DeclareExchange(VH, "nope", passive=True))


def test_queue_declare_equivalence(core: Core) -> None:
    core.queue("q", **{"x-message-ttl": 1000})
    info = core.apply(c.DeclareQueue(VH, "q", arguments={"x-message-ttl": 1000}))
    assert (info.name, info.message_count, info.consumer_count) == ("q", 0, 0)
    with pytest.raises(PreconditionFailed, match="inequivalent arg 'x-message-ttl'"):
        core.queue("q", **{"x-message-ttl": 2000})
    with pytest.raises(PreconditionFailed, match="x-max-length"):
        core.queue("q", **{"x-message-ttl": 1000, "x-max-length": 5})
    with pytest.raises(PreconditionFailed, match="durable"):
        core.apply(c.DeclareQueue(VH, "q", durable=False, arguments={"x-message-ttl": 1000}))
    with pytest.raises(PreconditionFailed, match="auto_delete"):
        core.apply(c.DeclareQueue(VH, "q", auto_delete=True, arguments={"x-message-ttl": 1000}))
    # bytes and str argument values are equivalent; x-queue-type is not compared
    core.queue("s", **{"x-overflow": "reject-publish"})
    core.queue("s", **{"x-overflow": b"reject-publish", "x-queue-type": "quorum"})
    # passive declare only checks existence
    assert core.apply(c.DeclareQueue(VH, "q", passive=True, arguments={"junk": 1})).name == "q"
    with pytest.raises(NotFound):
        core.apply(c.DeclareQueue(VH, "missing", passive=True))


@pytest.mark.parametrize(
    "arguments",
    [
        {"x-message-ttl": -1},
        {"x-message-ttl": "10"},
        {"x-expires": 0},
        {"x-max-length": True},
        {"x-overflow": "drop-tail"},
        {"x-max-priority": 256},
        {"x-queue-type": "weird"},
        {"x-max-receive-count": 0},
    ],
)
def test_invalid_queue_arguments(core: Core, arguments: dict[str, object]) -> None:
    with pytest.raises(PreconditionFailed):
        core.apply(c.DeclareQueue(VH, "bad", arguments=arguments))
    assert "bad" not in core.sm.vhosts[VH].queues


def test_reserved_queue_names(core: Core) -> None:
    with pytest.raises(AccessRefused):
        core.queue("amq.q")
    core.apply(c.DeclareQueue(VH, "amq.gen-1", server_named=True))
    assert core.q("amq.gen-1").name == "amq.gen-1"


def test_queue_delete_if_unused_and_if_empty(core: Core) -> None:
    core.queue("q")
    core.publish("q", b"m")
    with pytest.raises(PreconditionFailed):
        core.apply(c.DeleteQueue(VH, "q", if_empty=True))
    core.consume("q", prefetch=1)
    with pytest.raises(PreconditionFailed):
        core.apply(c.DeleteQueue(VH, "q", if_unused=True))
    assert core.apply(c.DeleteQueue(VH, "q")) == 0  # the one message is unacked
    # its consumer is cancelled, the unacked message goes with the queue (counted), and long
    # polls on it wake to find it gone
    assert core.effects == [
        ConsumerCancelled((1, 1, 1), "ctag"),
        Dropped(VH, "q", "queue-deleted", 1),
        MessagesAvailable(VH, "q"),
    ]
    assert core.apply(c.DeleteQueue(VH, "q")) == 0  # deleting twice is fine


# -- exclusive queues ----------------------------------------------------------------------


def test_exclusive_queue_is_locked_to_its_connection(core: Core) -> None:
    core.apply(c.DeclareQueue(VH, "ex", exclusive_owner=(1, 7), requester=(1, 7)))
    core.apply(
        c.DeclareQueue(VH, "ex", exclusive_owner=(1, 7), requester=(1, 7))
    )  # same connection
    with pytest.raises(ResourceLocked):
        core.apply(c.DeclareQueue(VH, "ex", exclusive_owner=(1, 8), requester=(1, 8)))
    with pytest.raises(ResourceLocked):
        core.apply(c.DeclareQueue(VH, "ex", passive=True, requester=(1, 8)))
    with pytest.raises(ResourceLocked):
        core.apply(c.Consume(VH, "ex", (1, 8, 1), "t", connection=(1, 8)))
    with pytest.raises(ResourceLocked):
        core.apply(c.Get(VH, "ex", (1, 8, 1), connection=(1, 8)))
    with pytest.raises(ResourceLocked):
        core.apply(c.PurgeQueue(VH, "ex", requester=(1, 8)))
    with pytest.raises(ResourceLocked):
        core.apply(c.DeleteQueue(VH, "ex", requester=(1, 8)))
    # anyone may publish to it
    core.publish("ex", b"m")
    assert core.q("ex").ready_count == 1
    core.apply(c.Consume(VH, "ex", (1, 7, 1), "t", connection=(1, 7)))
    assert len(core.deliveries()) == 1


def test_exclusive_queue_goes_when_its_connection_closes(core: Core) -> None:
    core.apply(c.DeclareQueue(VH, "ex", exclusive_owner=(1, 7), requester=(1, 7)))
    core.apply(c.DeclareQueue(VH, "other", exclusive_owner=(1, 8), requester=(1, 8)))
    core.apply(c.Consume(VH, "ex", (1, 7, 1), "t", connection=(1, 7)))
    core.apply(c.ConnectionClosed((1, 7)))
    assert "ex" not in core.sm.vhosts[VH].queues
    assert "other" in core.sm.vhosts[VH].queues
    assert core.effects == [ConsumerCancelled((1, 7, 1), "t"), MessagesAvailable(VH, "ex")]
    # the name is free again for another connection
    core.apply(c.DeclareQueue(VH, "ex", exclusive_owner=(1, 8), requester=(1, 8)))


def test_exclusive_declare_on_existing_shared_queue_is_inequivalent(core: Core) -> None:
    core.queue("shared")
    with pytest.raises(PreconditionFailed, match="exclusive"):
        core.apply(c.DeclareQueue(VH, "shared", exclusive_owner=(1, 7), requester=(1, 7)))


def test_exclusive_consumer(core: Core) -> None:
    core.queue("q")
    core.consume("q", "first", exclusive=True)
    with pytest.raises(AccessRefused):
        core.consume("q", "second", owner=(1, 2, 1))
    core.apply(c.Cancel((1, 1, 1), "first"))
    core.consume("q", "second", owner=(1, 2, 1))
    with pytest.raises(AccessRefused):
        core.consume("q", "third", owner=(3, 1, 1), exclusive=True)


def test_consumer_tag_reuse_is_refused(core: Core) -> None:
    core.queue("q")
    core.consume("q", "t")
    with pytest.raises(NotAllowed):
        core.consume("q", "t")


# -- queue expiry (x-expires) --------------------------------------------------------------


def test_unused_queue_expires_on_tick(core: Core) -> None:
    core.queue("q", **{"x-expires": 1000})
    core.publish("q", b"m", at=500)  # publishing does not count as use
    assert core.sm.next_due() == 1000
    core.tick(999)
    assert "q" in core.sm.vhosts[VH].queues
    core.tick(1000)
    assert "q" not in core.sm.vhosts[VH].queues


def test_queue_use_postpones_expiry(core: Core) -> None:
    core.queue("q", **{"x-expires": 1000})
    core.apply(c.Get(VH, "q", (1, 1)), at=600)
    core.tick(1000)
    assert "q" in core.sm.vhosts[VH].queues
    core.queue("q", **{"x-expires": 1000})  # redeclare at 1000
    core.tick(1599)
    assert "q" in core.sm.vhosts[VH].queues
    core.tick(2000)
    assert "q" not in core.sm.vhosts[VH].queues


def test_queue_with_consumer_does_not_expire(core: Core) -> None:
    core.queue("q", **{"x-expires": 1000})
    core.consume("q")
    core.tick(5000)
    assert "q" in core.sm.vhosts[VH].queues
    core.apply(c.Cancel((1, 1, 1), "ctag"), at=6000)
    core.tick(6999)
    assert "q" in core.sm.vhosts[VH].queues
    core.tick(7000)
    assert "q" not in core.sm.vhosts[VH].queues


def test_auto_delete_queue_goes_with_its_last_consumer(core: Core) -> None:
    core.apply(c.DeclareQueue(VH, "ad", auto_delete=True))
    core.consume("ad", "a")
    core.consume("ad", "b")
    core.apply(c.Cancel((1, 1, 1), "a"))
    assert "ad" in core.sm.vhosts[VH].queues
    core.apply(c.ReleaseOwner((1, 1, 1)))
    assert "ad" not in core.sm.vhosts[VH].queues


# -- delayed exchange ----------------------------------------------------------------------


def test_delayed_exchange_requires_a_valid_inner_type(core: Core) -> None:
    with pytest.raises(PreconditionFailed):
        core.exchange("dx", "x-delayed-message")
    with pytest.raises(PreconditionFailed):
        core.exchange("dx", "x-delayed-message", arguments={"x-delayed-type": "nope"})


def test_delayed_exchange_releases_messages_on_time(core: Core) -> None:
    core.exchange("dx", "x-delayed-message", arguments={"x-delayed-type": "topic"})
    core.queue("a")
    core.bind("dx", "a", "k.*")
    core.publish("k.1", b"late", "dx", headers={"x-delay": 1000}, at=100)
    core.publish("k.2", b"early", "dx", headers={"x-delay": 300}, at=200)
    core.publish("k.3", b"now", "dx", at=250)  # no delay: routed at once
    core.publish("z", b"lost", "dx", headers={"x-delay": 10})  # unroutable when released
    assert core.sm.next_due() == 260
    assert core.q("a").ready_count == 1
    core.tick(499)
    assert core.q("a").ready_count == 1
    core.tick(500)
    assert core.q("a").ready_count == 2
    assert core.sm.next_due() == 1100
    core.tick(1099)
    assert core.q("a").ready_count == 2
    core.tick(1100)
    assert core.drain("a") == [b"now", b"early", b"late"]
    assert core.sm.next_due() is None


def test_delayed_message_routing_is_decided_at_release(core: Core) -> None:
    core.exchange("dx", "x-delayed-message", arguments={"x-delayed-type": "direct"})
    core.queue("a")
    core.publish("k", b"m", "dx", headers={"x-delay": 100})
    core.bind("dx", "a", "k")
    core.tick(100)
    assert core.drain("a") == [b"m"]


def test_delayed_messages_are_delivered_to_consumers(core: Core) -> None:
    core.exchange("dx", "x-delayed-message", arguments={"x-delayed-type": "fanout"})
    core.queue("a")
    core.bind("dx", "a")
    core.consume("a")
    core.publish("", b"m", "dx", headers={"x-delay": 50})
    assert core.deliveries() == []
    core.tick(50)
    assert core.delivered_bodies() == [b"m"]


def test_delete_vhost_drops_everything(core: Core) -> None:
    core.apply(c.DeclareVhost("v2"))
    core.apply(c.DeclareQueue("v2", "q"))
    core.apply(
        c.DeclareExchange("v2", "dx", "x-delayed-message", arguments={"x-delayed-type": "direct"})
    )
    core.apply(c.Publish("v2", "dx", "q", {"headers": {"x-delay": 10}}, b"m"))
    core.apply(c.DeleteVhost("v2"))
    assert "v2" not in core.sm.vhosts
    assert core.sm.delayed == {}
    core.tick(100)
    with pytest.raises(NotAllowed):
        core.sm.queue("v2", "q")


def test_publish_to_queue_without_consumers_announces_availability(core: Core) -> None:
    core.queue("q")
    core.publish("q", b"m")
    assert core.effects == [MessagesAvailable(VH, "q")]


def test_availability_is_announced_where_a_receiver_may_have_found_none(core: Core) -> None:
    announced = [MessagesAvailable(VH, "q")]
    core.queue("q")
    core.publish("q", b"1")
    assert core.effects == announced
    core.publish("q", b"2")  # a receive that found nothing would have taken the first
    assert core.effects == []
    assert len(core.receive("q", 10)) == 2
    core.publish("q", b"3")  # the queue had no ready message again
    assert core.effects == announced
    # a message taken with a get and given back is the only ready one again
    msg = core.get("q")
    assert msg is not None
    core.settle("requeue", "q", msg.seq)
    assert core.effects == announced
    # no announcement while a consumer takes them; the consumer leaving some behind is one
    core.consume("q", prefetch=1)
    core.publish("q", b"4")
    assert core.effects == []
    core.apply(c.Cancel((1, 1, 1), "ctag"))
    assert core.q("q").ready_count == 1
    assert core.effects == announced


# -- restart from the store ----------------------------------------------------------------


def test_restart_keeps_durable_things_only(core: Core, tmp_path: Path) -> None:
    core.queue("durable")
    core.apply(c.DeclareQueue(VH, "transient", durable=False))
    core.apply(c.DeclareQueue(VH, "exclusive", exclusive_owner=(1, 7), requester=(1, 7)))
    core.exchange("ex", "topic")
    core.exchange("tx", "fanout", durable=False)
    core.bind("ex", "durable", "a.#")
    core.bind("ex", "transient", "a.#")
    core.bind("tx", "durable")
    core.publish("a.b", b"kept", "ex", delivery_mode=2)
    core.publish("a.b", b"lost", "ex")
    core.publish("durable", b"in-flight", delivery_mode=2)
    core.get("durable")  # "kept" goes out unacked and must come back
    after = restart(core, str(tmp_path))
    assert set(after.sm.vhosts[VH].queues) == {"durable"}
    assert "tx" not in after.sm.vhosts[VH].exchanges
    assert ready_bodies(after.q("durable")) == [b"kept", b"in-flight"]
    after.publish("a.c", b"routed", "ex")
    assert after.q("durable").ready_count == 3


def test_restart_keeps_hidden_messages_and_their_handles(core: Core, tmp_path: Path) -> None:
    core.queue("q")
    core.publish("q", b"m", delivery_mode=2)
    (old,) = core.receive("q", visibility=100)
    core.tick(100)
    (current,) = core.receive("q", visibility=1000, at=150)
    after = restart(core, str(tmp_path))
    q = after.q("q")
    assert (q.ready_count, q.hidden_count) == (0, 1)
    with pytest.raises(ReceiptHandleInvalid):
        after.apply(c.DeleteByHandle(VH, "q", old.handle))
    assert after.sm.next_due() == 1150
    after.apply(c.DeleteByHandle(VH, "q", current.handle), at=200)
    assert q.messages == {}


def test_restart_keeps_retention_in_ack_order(core: Core, tmp_path: Path) -> None:
    """The store holds messages in publish order; retention must still expire in ack order."""
    core.queue("q", **{"x-rewind-ms": 1000})
    core.publish("q", b"first", delivery_mode=2)
    core.publish("q", b"second", delivery_mode=2)
    r1, r2 = core.receive("q", 2, visibility=10_000)
    core.apply(c.DeleteByHandle(VH, "q", r2.handle), at=0)
    core.apply(c.DeleteByHandle(VH, "q", r1.handle), at=500)
    after = restart(core, str(tmp_path))
    assert after.q("q").retained_count() == 2
    assert after.sm.next_due() == 1000
    after.tick(1000)
    assert after.q("q").retained_count() == 1
    assert after.apply(c.Rewind(VH, "q", 0)) == 1
    assert ready_bodies(after.q("q")) == [b"first"]


def test_restart_keeps_delayed_messages(core: Core, tmp_path: Path) -> None:
    core.exchange("dx", "x-delayed-message", arguments={"x-delayed-type": "direct"})
    core.queue("q")
    core.bind("dx", "q", "k")
    core.publish("k", b"kept", "dx", headers={"x-delay": 500}, delivery_mode=2)
    core.publish("k", b"lost", "dx", headers={"x-delay": 500})
    after = restart(core, str(tmp_path))
    assert after.sm.next_due() == 500
    after.tick(500)
    assert after.drain("q") == [b"kept"]


def test_bcc_stays_removed_after_a_restore(core: Core) -> None:
    """A message that went out by BCC keeps its own properties: restoring it from a snapshot
    must not bring the header back from the publish in the log."""
    core.queue("to")
    core.queue("hidden")
    core.publish("to", b"m", headers={"BCC": ["hidden"], "CC": []})
    after = reloaded(core)
    for name in ("to", "hidden"):
        (msg,) = after.q(name).messages.values()
        assert msg.properties["headers"] == {"CC": []}
        assert msg.body == b"m"
