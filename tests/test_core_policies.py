"""Policies (SetPolicy, DeletePolicy): matching, priority, combination with a queue's own
arguments, applied to existing and future queues, checked, and rebuilt from a snapshot."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker import policies
from broker.core import commands as c
from broker.core.errors import InvalidArgument, NotAllowed, NotFound
from broker.core.policy import KNOWN_KEYS
from tests.core_helpers import VH, Core, ready_bodies, reloaded
from tests.state_dump import dump


def policy(
    name: str,
    pattern: str,
    definition: dict[str, Any],
    priority: int = 0,
    apply_to: str = "all",
    vhost: str = VH,
) -> c.SetPolicy:
    return c.SetPolicy(vhost, name, pattern, apply_to, priority, definition)


def test_a_policy_applies_to_existing_and_future_queues_whose_name_matches() -> None:
    core = Core()
    old = core.queue("orders.old")
    other = core.queue("payments")
    core.apply(policy("limit", r"^orders\.", {"max-length": 2}))
    assert old.settings.max_length == 2
    assert old.policy is not None and old.policy.name == "limit"
    assert other.settings.max_length is None and other.policy is None
    new = core.queue("orders.new")
    assert new.settings.max_length == 2
    assert new.arguments == {} and old.arguments == {}  # the stored arguments stay as declared


def test_the_pattern_is_searched_anywhere_in_the_name() -> None:
    core = Core()
    q = core.queue("eu.orders.v2")
    core.apply(policy("p", "orders", {"message-ttl": 5}))
    assert q.settings.message_ttl == 5


def test_only_the_highest_priority_policy_applies() -> None:
    core = Core()
    q = core.queue("jobs")
    core.apply(policy("low", ".*", {"max-length": 10, "message-ttl": 1000}, priority=1))
    core.apply(policy("high", "^jobs$", {"max-length": 20}, priority=5))
    assert q.policy is not None and q.policy.name == "high"
    # definitions are not merged: the lower-priority TTL does not apply
    assert (q.settings.max_length, q.settings.message_ttl) == (20, None)
    core.apply(c.DeletePolicy(VH, "high"))
    assert (q.settings.max_length, q.settings.message_ttl) == (10, 1000)


def test_equal_priorities_are_decided_by_name_so_every_replica_agrees() -> None:
    core = Core()
    q = core.queue("jobs")
    core.apply(policy("b", ".*", {"max-length": 2}))
    core.apply(policy("a", ".*", {"max-length": 1}))
    assert q.policy is not None and q.policy.name == "a"


def test_apply_to_selects_queues_or_exchanges() -> None:
    core = Core()
    q = core.queue("x")
    core.exchange("x", "fanout")
    core.apply(policy("ex", "^x$", {"alternate-exchange": "ae"}, apply_to="exchanges"))
    assert q.policy is None
    assert core.sm.exchange(VH, "x").policy is not None
    core.apply(policy("qs", "^x$", {"max-length": 1}, apply_to="queues"))
    assert q.policy is not None and q.policy.name == "qs"
    core.apply(policy("quorum", "^x", {"max-length": 1}, 9, apply_to="quorum_queues"))
    assert q.policy.name == "qs"  # a classic queue
    quorum = core.queue("x.quorum", **{"x-queue-type": "quorum"})
    assert quorum.policy is not None and quorum.policy.name == "quorum"


def test_limits_take_the_lower_value_of_argument_and_policy() -> None:
    core = Core()
    args = {"x-max-length": 5, "x-message-ttl": 100, "x-expires": 60_000, "x-delivery-limit": 9}
    q = core.queue("q", **args)
    core.apply(
        policy(
            "p",
            ".*",
            {"max-length": 3, "message-ttl": 1000, "expires": 30_000, "delivery-limit": 20},
        )
    )
    s = q.settings
    assert (s.max_length, s.message_ttl, s.expires, s.delivery_limit) == (3, 100, 30_000, 9)


def test_the_queue_argument_wins_for_dead_lettering_and_overflow() -> None:
    core = Core()
    own = core.queue("own", **{"x-dead-letter-exchange": "mine", "x-overflow": "reject-publish"})
    bare = core.queue("bare")
    definition = {
        "dead-letter-exchange": "ops",
        "dead-letter-routing-key": "dead",
        "overflow": "reject-publish-dlx",
    }
    core.apply(policy("p", ".*", definition))
    assert (own.settings.dead_letter_exchange, own.settings.overflow) == ("mine", "reject-publish")
    assert own.settings.dead_letter_routing_key == "dead"  # the queue did not set one
    s = bare.settings
    assert (s.dead_letter_exchange, s.dead_letter_routing_key, s.overflow) == (
        "ops",
        "dead",
        "reject-publish-dlx",
    )


def test_a_lower_length_limit_drops_from_the_head_at_once() -> None:
    core = Core()
    q = core.queue("q")
    for i in range(5):
        core.publish("q", f"m{i}")
    core.apply(policy("p", "^q$", {"max-length": 2}))
    assert ready_bodies(q) == [b"m3", b"m4"]


def test_a_length_policy_dead_letters_what_it_drops_to_a_policy_dlx() -> None:
    core = Core()
    q = core.queue("q")
    dead = core.queue("dead")
    core.exchange("dlx", "fanout")
    core.bind("dlx", "dead")
    for i in range(3):
        core.publish("q", f"m{i}")
    core.apply(policy("p", "^q$", {"max-length": 1, "dead-letter-exchange": "dlx"}))
    assert ready_bodies(q) == [b"m2"]
    assert ready_bodies(dead) == [b"m0", b"m1"]


def test_reject_publish_by_policy_refuses_publishes_past_the_limit() -> None:
    core = Core()
    q = core.queue("q")
    core.apply(policy("p", "^q$", {"max-length": 1, "overflow": "reject-publish"}))
    assert not core.publish("q", "a").rejected
    assert core.publish("q", "b").rejected
    assert ready_bodies(q) == [b"a"]


def test_a_message_ttl_policy_expires_messages_published_after_it() -> None:
    core = Core()
    q = core.queue("q")
    core.publish("q", "before", at=0)
    core.apply(policy("p", "^q$", {"message-ttl": 100}), at=10)
    core.publish("q", "after", at=20)
    assert [m.expires_at for m in q.messages.values()] == [None, 120]
    assert core.get_body("q") == b"before"
    core.tick(119)
    assert ready_bodies(q) == [b"after"]
    core.tick(120)
    assert ready_bodies(q) == []


def test_an_expires_policy_counts_from_when_it_applies() -> None:
    core = Core()
    core.queue("idle")
    core.tick(1_000_000)
    core.apply(policy("p", "^idle$", {"expires": 1000}), at=1_000_000)
    core.tick(1_000_500)
    assert "idle" in core.sm.vhost(VH).queues
    core.tick(1_001_000)
    assert "idle" not in core.sm.vhost(VH).queues


def test_deleting_the_policy_restores_the_arguments_behaviour() -> None:
    core = Core()
    q = core.queue("q", **{"x-max-length": 10})
    core.apply(policy("p", "^q$", {"max-length": 1, "message-ttl": 50}))
    core.apply(c.DeletePolicy(VH, "p"))
    assert q.policy is None
    assert (q.settings.max_length, q.settings.message_ttl) == (10, None)
    for i in range(3):
        core.publish("q", f"m{i}")
    assert len(ready_bodies(q)) == 3


def test_replacing_a_policy_changes_its_queues() -> None:
    core = Core()
    q = core.queue("q")
    core.apply(policy("p", "^q$", {"max-length": 1}))
    core.apply(policy("p", "^q$", {"max-length": 7}))
    assert q.settings.max_length == 7
    core.apply(policy("p", "^other$", {"max-length": 7}))
    assert q.policy is None and q.settings.max_length is None


def test_alternate_exchange_by_policy_routes_the_unroutable() -> None:
    core = Core()
    core.exchange("main", "direct")
    core.exchange("ae", "fanout")
    caught = core.queue("caught")
    core.bind("ae", "caught")
    core.apply(policy("p", "^main$", {"alternate-exchange": "ae"}, apply_to="exchanges"))
    core.publish("nowhere", "lost?", exchange="main")
    assert ready_bodies(caught) == [b"lost?"]
    core.exchange("own-ae", "fanout")
    core.exchange("main2", "direct", arguments={"alternate-exchange": "own-ae"})
    own = core.queue("own")
    core.bind("own-ae", "own")
    core.apply(policy("p2", "^main2$", {"alternate-exchange": "ae"}, 1, "exchanges"))
    core.publish("nowhere", "mine", exchange="main2")
    assert ready_bodies(own) == [b"mine"]  # the exchange's own argument wins


@pytest.mark.parametrize(
    ("definition", "match"),
    [
        ({}, "no policy provided"),
        ({"max-length": -1}, "not a valid max-length"),
        ({"max-length": "10"}, "expected an integer"),
        ({"message-ttl": True}, "expected an integer"),
        ({"expires": 0}, "not a valid expires"),
        ({"overflow": "drop-tail"}, "expected one of drop-head"),
        ({"dead-letter-exchange": 5}, "expected a string"),
        ({"queue-mode": "eager"}, "not a valid queue-mode"),
        ({"frobnicate": 1}, "frobnicate are not recognised policy settings"),
        ({"ha-mode": "all"}, "mirroring is not supported"),
        ({"max-priority": 5}, "use x-max-priority"),
        ({"federation-upstream-set": "all"}, "federation is not supported"),
    ],
)
def test_invalid_definitions_are_refused_and_change_nothing(
    definition: dict[str, Any], match: str
) -> None:
    core = Core()
    core.queue("q")
    before = dump(core.sm)
    with pytest.raises(InvalidArgument, match=match):
        core.apply(policy("p", ".*", definition))
    assert core.changes == [] and dump(core.sm) == before


def test_other_invalid_policies_are_refused() -> None:
    core = Core()
    with pytest.raises(InvalidArgument, match="invalid pattern"):
        core.apply(policy("p", "([", {"max-length": 1}))
    with pytest.raises(InvalidArgument, match="apply-to"):
        core.apply(policy("p", ".*", {"max-length": 1}, apply_to="streams"))
    with pytest.raises(InvalidArgument, match="priority"):
        # (checked where the command is made: it then carries the types it declares, which
        # a compiled core checks as it reads them)
        policies.set_command(VH, "p", {"pattern": ".*", "definition": {"x": 1}, "priority": "hi"})
    with pytest.raises(InvalidArgument, match="needs a name"):
        core.apply(policy("", ".*", {"max-length": 1}))
    with pytest.raises(NotAllowed):
        core.apply(policy("p", ".*", {"max-length": 1}, vhost="nope"))
    with pytest.raises(NotFound):
        core.apply(c.DeletePolicy(VH, "nope"))
    assert core.sm.vhost(VH).policies == {}


def test_every_accepted_key_is_checked() -> None:
    core = Core()
    valid = {
        "message-ttl": 0,
        "expires": 1,
        "max-length": 0,
        "max-length-bytes": 0,
        "delivery-limit": 0,
        "overflow": "drop-head",
        "dead-letter-exchange": "",
        "dead-letter-routing-key": "",
        "alternate-exchange": "ae",
        "queue-mode": "lazy",
        "queue-version": 2,
        "max-in-memory-length": 0,
        "max-in-memory-bytes": 0,
    }
    assert set(valid) == KNOWN_KEYS
    core.apply(policy("p", ".*", valid))
    assert core.sm.vhost(VH).policies["p"].definition == valid


def test_policies_survive_a_snapshot_and_apply_again_on_restore() -> None:
    core = Core()
    core.queue("q")
    core.exchange("main", "direct")
    core.apply(policy("p", "^q$", {"max-length": 2, "dead-letter-exchange": "dlx"}, 3, "queues"))
    core.apply(policy("ae", "^main$", {"alternate-exchange": "ae"}))
    after = reloaded(core)
    assert dump(after.sm) == dump(core.sm)
    q = after.q("q")
    assert q.policy is not None and q.policy.priority == 3
    assert (q.settings.max_length, q.settings.dead_letter_exchange) == (2, "dlx")
    core.apply(c.DeletePolicy(VH, "p"))
    after = reloaded(core)
    assert after.q("q").policy is None and after.sm.vhost(VH).policies.keys() == {"ae"}


def test_a_deleted_vhost_takes_its_policies_along() -> None:
    core = Core()
    core.apply(c.DeclareVhost("other"))
    core.apply(policy("p", ".*", {"max-length": 1}, vhost="other"))
    core.apply(c.DeleteVhost("other"))
    assert (("policy", ("other", "p")), None) in core.changes
    core.apply(c.DeclareVhost("other"))
    assert core.sm.vhost("other").policies == {}
    assert reloaded(core).sm.vhost("other").policies == {}


_DEFINITIONS = [
    {"max-length": 1},
    {"max-length": 3, "overflow": "reject-publish"},
    {"message-ttl": 50, "dead-letter-exchange": "dlx"},
    {"expires": 200},
    {"alternate-exchange": "ae"},
]
_steps = st.lists(
    st.one_of(
        st.tuples(
            st.just("set"),
            st.sampled_from(["a", "b", "c"]),
            st.sampled_from(["^q", "1$", ".*", "^ex"]),
            st.sampled_from(["all", "queues", "exchanges"]),
            st.integers(0, 2),
            st.sampled_from(range(len(_DEFINITIONS))),
        ),
        st.tuples(st.just("delete"), st.sampled_from(["a", "b", "c"])),
        st.tuples(st.just("declare"), st.sampled_from(["q1", "q2", "ex1"])),
        st.tuples(st.just("publish"), st.sampled_from(["q1", "q2"])),
        st.tuples(st.just("tick"), st.integers(0, 300)),
    ),
    max_size=25,
)


@settings(max_examples=150, deadline=None)
@given(_steps)
def test_any_history_of_policies_restores_to_the_same_state(steps: list[tuple[Any, ...]]) -> None:
    """Whatever was set, replaced and deleted in between, a node restored from a snapshot
    ends with the same policies, the same one applying to each object, and the same
    settings as the node that applied every command."""
    core = Core()
    core.exchange("dlx", "fanout")
    core.exchange("ae", "fanout")
    for step in steps:
        kind = step[0]
        try:
            if kind == "set":
                _, name, pattern, apply_to, priority, which = step
                core.apply(policy(name, pattern, _DEFINITIONS[which], priority, apply_to))
            elif kind == "delete":
                core.apply(c.DeletePolicy(VH, step[1]))
            elif kind == "declare" and step[1].startswith("ex"):
                core.exchange(step[1], "direct")
            elif kind == "declare":
                core.apply(c.DeclareQueue(VH, step[1]))
            elif kind == "publish":
                core.publish(step[1], "m")
            else:
                core.tick(core.now + step[1])
        except NotFound:
            pass  # a policy not there, or a queue gone (expired by a policy)
    assert dump(reloaded(core).sm) == dump(core.sm)
