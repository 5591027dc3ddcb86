"""What the CMQ adapter needs from the core (live queue settings, access keys) and its pure
mappings onto it: queue attributes, tag and routing-key filters, push retry schedules."""

from __future__ import annotations

import random

import pytest

from broker.core import commands as c
from broker.core.errors import NotFound, PreconditionFailed
from broker.core.routing import topic_matches
from broker.protocols.http import attributes, filters, retry
from broker.protocols.http.errors import CmqError
from broker.protocols.http.params import Params
from tests.core_helpers import VH, Core, reloaded

# -- live queue settings -------------------------------------------------------------------


def test_set_queue_arguments_changes_settings_and_persists() -> None:
    core = Core(now=1000)
    core.queue("q", **{"x-visibility-timeout": 30_000, "x-max-length": 5})
    core.apply(
        c.SetQueueArguments(VH, "q", {"x-visibility-timeout": 1000, "x-max-length": None}),
        at=2000,
    )
    q = core.q("q")
    assert q.settings.visibility_ms == 1000 and q.settings.max_length is None
    assert (q.created_at, q.modified_at) == (1000, 2000)
    assert (("queue", (VH, "q")), q) in core.changes
    restored = reloaded(core).q("q")
    assert restored.arguments == {"x-visibility-timeout": 1000}
    assert (restored.created_at, restored.modified_at) == (1000, 2000)


def test_invalid_or_impossible_changes_are_refused_unchanged() -> None:
    core = Core()
    core.queue("q", **{"x-max-priority": 3})
    for args in ({"x-overflow": "sideways"}, {"x-max-priority": 5}, {"x-message-ttl": -1}):
        with pytest.raises(PreconditionFailed):
            core.apply(c.SetQueueArguments(VH, "q", args))
    assert core.q("q").arguments == {"x-max-priority": 3}
    with pytest.raises(NotFound):
        core.apply(c.SetQueueArguments(VH, "nope", {}))


def test_turning_rewind_off_forgets_retained_messages() -> None:
    core = Core()
    core.queue("q", **{"x-rewind-ms": 60_000})
    core.publish("q", "a")
    (got,) = core.receive("q")
    core.apply(c.DeleteByHandle(VH, "q", got.handle))
    assert core.q("q").retained_count() == 1
    core.apply(c.SetQueueArguments(VH, "q", {"x-rewind-ms": 0}))
    assert core.q("q").retained_count() == 0 and not core.q("q").messages


def test_lower_drop_head_limit_drops_the_oldest() -> None:
    core = Core()
    core.queue("q")
    for body in "abc":
        core.publish("q", body)
    core.apply(c.SetQueueArguments(VH, "q", {"x-max-length": 1}))
    assert [r.message.body for r in core.receive("q", 5)] == [b"c"]


# -- access keys ---------------------------------------------------------------------------


def test_access_keys_are_durable_unique_and_go_with_their_vhost() -> None:
    core = Core(now=5)
    core.apply(c.DeclareVhost("tenant"))
    key = core.apply(c.AddAccessKey("AKID1", "s1", "tenant"))
    assert (key.vhost, key.created_at) == ("tenant", 5)
    core.apply(c.AddAccessKey("AKID2", "s2", VH))
    with pytest.raises(PreconditionFailed):
        core.apply(c.AddAccessKey("AKID1", "other", VH))
    with pytest.raises(Exception, match="not found"):
        core.apply(c.AddAccessKey("AKID3", "s3", "nowhere"))
    fresh = reloaded(core).sm
    assert fresh.access_keys["AKID1"].secret_key == "s1"
    core.apply(c.DeleteVhost("tenant"))
    assert set(core.sm.access_keys) == {"AKID2"}
    core.apply(c.DeleteAccessKey("AKID2"))
    with pytest.raises(NotFound):
        core.apply(c.DeleteAccessKey("AKID2"))


# -- attribute mapping ---------------------------------------------------------------------


def test_create_arguments_fill_cmq_defaults() -> None:
    args = attributes.queue_arguments(Params([("visibilityTimeout", "5")]), True, 60)
    assert args == {
        "x-overflow": "reject-publish",
        "x-max-length": 10_000_000,
        "x-polling-wait-ms": 0,
        "x-visibility-timeout": 5000,
        "x-max-message-size": 65_536,
        "x-message-ttl": 345_600_000,
        "x-rewind-ms": 0,
    }


def test_set_arguments_only_what_is_given_and_dead_letter_policy() -> None:
    params = Params([("deadLetterQueueName", "dlq"), ("maxReceiveCount", "3")])
    assert attributes.queue_arguments(params, False, 60) == {
        "x-max-receive-count": 3,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": "dlq",
    }
    off = Params([("deadLetterQueueName", ""), ("maxReceiveCount", "0")])
    assert attributes.queue_arguments(off, False, 60) == {
        "x-max-receive-count": None,
        "x-dead-letter-exchange": None,
        "x-dead-letter-routing-key": None,
    }
    with pytest.raises(CmqError):
        attributes.queue_arguments(Params([("msgRetentionSeconds", "30")]), False, 60)
    assert attributes.queue_arguments(Params([("msgRetentionSeconds", "30")]), False, 1)


def test_describe_counts_messages_by_state() -> None:
    core = Core(now=10_000)
    core.queue("q", **attributes.queue_arguments(Params([]), True, 60))
    for body in "abc":
        core.publish("q", body)
    core.apply(c.Publish(VH, "", "q", {}, b"later", delay_ms=5000))
    core.receive("q")
    got = attributes.describe(core.q("q"), core.sm.vhost(VH))
    assert (got["activeMsgNum"], got["inactiveMsgNum"], got["delayMsgNum"]) == (2, 1, 1)
    assert (got["visibilityTimeout"], got["minMsgTime"], got["createTime"]) == (30, 10, 10)


def test_sequential_attribute_is_the_boolean_argument() -> None:
    on = attributes.queue_arguments(Params([("sequential", "1")]), True, 60)
    assert on["x-sequential"] is True
    assert "x-sequential" not in attributes.queue_arguments(Params([("sequential", "0")]), True, 60)
    off = attributes.queue_arguments(Params([("sequential", "0")]), False, 60)
    assert off == {"x-sequential": None}
    with pytest.raises(CmqError):
        attributes.queue_arguments(Params([("sequential", "2")]), False, 60)
    core = Core()
    core.queue("q", **on)
    assert attributes.describe(core.q("q"), core.sm.vhost(VH))["sequential"] == 1
    core.apply(c.SetQueueArguments(VH, "q", off))
    assert attributes.describe(core.q("q"), core.sm.vhost(VH))["sequential"] == 0


# -- filters -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filter_tags", "message_tags", "delivered"),
    [
        ([], [], True),
        ([], ["a"], True),
        (["a"], [], False),
        (["a"], ["a"], True),
        (["a", "b"], ["c", "b"], True),
        (["a"], ["ab", "ba"], False),
        (["a.b"], ["a", "b"], False),
        (["a.b"], ["a.b"], True),
        (["*"], ["x"], False),
        (["#"], ["#"], True),
    ],
)
def test_tag_filters_as_topic_bindings(
    filter_tags: list[str], message_tags: list[str], delivered: bool
) -> None:
    key = filters.tags_routing_key(message_tags)
    patterns = filters.tag_patterns(filter_tags)
    assert any(topic_matches(p, key) for p in patterns) is delivered
    assert len(key.split(".")) == len(set(message_tags)) or not message_tags


def test_routing_key_limits() -> None:
    assert filters.check_routing_key("routingKey", "a." * 15 + "b")
    for bad in ("a." * 16 + "b", "x" * 65):
        with pytest.raises(CmqError):
            filters.check_routing_key("routingKey", bad)
    assert filters.key_patterns([]) == ["#"]


# -- retry schedules -----------------------------------------------------------------------


def test_retry_schedules() -> None:
    rng = random.Random(1)
    exponential = [retry.retry_delay_ms(retry.EXPONENTIAL, n, 1000, rng) for n in range(1, 13)]
    assert exponential == [1000 * 2**i for i in range(10)] + [512_000, 512_000]
    assert retry.attempts_allowed(retry.EXPONENTIAL) == 177
    total = sum(retry.retry_delay_ms(retry.EXPONENTIAL, n, 1000, rng) for n in range(1, 177))
    assert 85_000_000 < total < 87_000_000  # about a day
    backoff = [retry.retry_delay_ms(retry.BACKOFF, n, 1000, rng) for n in range(1, 4)]
    assert all(10_000 <= d <= 20_000 for d in backoff)
    assert retry.attempts_allowed(retry.BACKOFF) == 4
