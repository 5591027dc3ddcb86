"""CMQ topics and subscriptions through the SDK: filters, queue and HTTP pushes, retries."""

from __future__ import annotations

import base64
import json
import os
import time

import pytest
from cmq.cmq_exception import CMQServerException
from cmq.queue import QueueMeta
from cmq.subscription import SubscriptionMeta
from cmq.topic import Message, TopicMeta

from compat_tests.cmq_helpers import PushReceiver, error, ok, uid, wait_until


@pytest.fixture
def account(cmq_broker):
    return cmq_broker.account()


@pytest.fixture
def receiver():
    with PushReceiver() as r:
        yield r


def make_topic(account, filter_type: int = 1):
    topic = account.get_topic(uid("t"))
    meta = TopicMeta()
    meta.filterType = filter_type
    topic.create(meta)
    return topic


def queue_subscription(account, topic, tags=(), keys=()):
    """A new queue subscribed to `topic`; returns the SDK queue."""
    q = account.get_queue(uid())
    q.create(QueueMeta())
    meta = SubscriptionMeta()
    meta.Endpoint, meta.Protocal, meta.NotifyContentFormat = q.queue_name, "queue", "SIMPLIFIED"
    meta.FilterTag, meta.bindingKey = list(tags), list(keys)
    account.get_subscription(topic.topicName, uid("s")).create(meta)
    return q


def http_subscription(account, topic, url, strategy="EXPONENTIAL_DECAY_RETRY", fmt="JSON"):
    name = uid("s")
    meta = SubscriptionMeta()
    meta.Endpoint, meta.Protocal = url, "http"
    meta.NotifyStrategy, meta.NotifyContentFormat = strategy, fmt
    account.get_subscription(topic.topicName, name).create(meta)
    return name


def drain(q) -> list[str]:
    try:
        return sorted(m.msgBody for m in q.batch_receive_message(16, 0))
    except CMQServerException as exc:
        assert exc.code == 7000
        return []


def code_of(call, *args) -> int:
    with pytest.raises(CMQServerException) as info:
        call(*args)
    return info.value.code


def test_topic_lifecycle(account):
    topic = make_topic(account, filter_type=2)
    attrs = topic.get_attributes()
    assert (attrs.filterType, attrs.maxMsgSize, attrs.msgRetentionSeconds) == (2, 65536, 86400)
    assert attrs.createTime >= time.time() - 5 and attrs.msgCount == 0
    meta = TopicMeta()
    meta.maxMsgSize = 2048
    topic.set_attributes(meta)
    assert topic.get_attributes().maxMsgSize == 2048
    assert code_of(topic.publish_message, Message("x" * 2049)) == 4400
    total, topics, _ = account.list_topic(searchWord=topic.topicName)
    assert total == 1 and topics[0]["topicName"] == topic.topicName
    assert topics[0]["topicId"].startswith("topic-")
    assert code_of(topic.create, TopicMeta()) == 4460
    topic.delete()
    assert code_of(topic.get_attributes) == 4440
    assert code_of(topic.publish_message, Message("x")) == 4440


def test_tag_filters(account):
    topic = make_topic(account, filter_type=1)
    only_a = queue_subscription(account, topic, tags=["a"])
    b_or_c = queue_subscription(account, topic, tags=["b", "c"])
    everything = queue_subscription(account, topic)
    topic.publish_message(Message("a", ["a"]))
    topic.publish_message(Message("ab", ["a", "b"]))
    topic.publish_message(Message("c.d", ["c.d"]))
    topic.publish_message(Message("none"))
    topic.batch_publish_message([Message("c1"), Message("c2")], msgtag=["c"])
    assert drain(only_a) == ["a", "ab"]
    assert drain(b_or_c) == ["ab", "c1", "c2"]
    assert drain(everything) == ["a", "ab", "c.d", "c1", "c2", "none"]


def test_routing_key_filters(account):
    topic = make_topic(account, filter_type=2)
    star = queue_subscription(account, topic, keys=["order.*"])
    hashes = queue_subscription(account, topic, keys=["#.eu", "audit"])
    everything = queue_subscription(account, topic)
    for key in ("order.created", "order.created.eu", "audit", "x.eu", ""):
        topic.publish_message(Message(key or "(empty)"), routingKey=key)
    topic.batch_publish_message([Message("b1"), Message("b2")], routingKey="order.b")
    assert drain(star) == ["b1", "b2", "order.created"]
    assert drain(hashes) == ["audit", "order.created.eu", "x.eu"]
    assert len(drain(everything)) == 7


def test_subscription_attributes_and_unsubscribe(account, cmq_broker):
    topic = make_topic(account, filter_type=1)
    q = account.get_queue(uid())
    q.create(QueueMeta())
    name = uid("s")
    sub = account.get_subscription(topic.topicName, name)
    meta = SubscriptionMeta()
    meta.Endpoint, meta.Protocal, meta.NotifyContentFormat = q.queue_name, "queue", "SIMPLIFIED"
    meta.FilterTag = ["x"]
    sub.create(meta)
    assert code_of(sub.create, meta) == 4460
    client = cmq_broker.client()
    attrs = ok(
        client.call("GetSubscriptionAttributes", topicName=topic.topicName, subscriptionName=name)
    )
    assert (attrs["protocol"], attrs["endpoint"], attrs["filterTags"]) == (
        "queue",
        q.queue_name,
        ["x"],
    )
    assert attrs["notifyStrategy"] == "EXPONENTIAL_DECAY_RETRY"
    assert attrs["notifyContentFormat"] == "SIMPLIFIED" and attrs["topicOwner"] == "/"

    total, subs, _ = topic.list_subscription()
    assert total == 1 and subs[0]["subscriptionName"] == name
    assert subs[0]["subscriptionId"].startswith("subscription-")

    update = SubscriptionMeta()
    update.NotifyStrategy, update.NotifyContentFormat, update.FilterTag = "BACKOFF_RETRY", "", ["y"]
    sub.set_attributes(update)
    got = sub.get_attributes()
    assert got.FilterTag == ["y"] and got.NotifyStrategy == "BACKOFF_RETRY"
    topic.publish_message(Message("x", ["x"]))
    topic.publish_message(Message("y", ["y"]))
    assert drain(q) == ["y"]

    sub.clearFilterTags()
    assert sub.get_attributes().FilterTag == []
    topic.publish_message(Message("any", ["z"]))
    assert drain(q) == ["any"]

    sub.delete()
    assert code_of(sub.get_attributes) == 4440
    topic.publish_message(Message("after"))
    assert drain(q) == []
    client.close()


def test_subscription_parameter_errors(cmq_broker, account):
    client = cmq_broker.client()
    tags, keys = make_topic(account, 1), make_topic(account, 2)
    q = account.get_queue(uid())
    q.create(QueueMeta())

    def subscribe(topic, **params):
        base = {"topicName": topic.topicName, "subscriptionName": uid("s")}
        return client.call("Subscribe", **base, **params)

    queue_sub = {"protocol": "queue", "endpoint": q.queue_name}
    error(subscribe(tags, **queue_sub, notifyContentFormat="XML"), 4000, 10350)
    error(subscribe(tags, **queue_sub, **{"bindingKey.1": "a"}), 4000, 10350)
    error(subscribe(keys, **queue_sub, **{"filterTag.1": "a"}), 4000, 10350)
    error(subscribe(tags, protocol="queue", endpoint=uid()), 4440)
    error(subscribe(tags, protocol="http", endpoint="ftp://x"), 4000, 10350)
    error(subscribe(tags, protocol="email", endpoint="x"), 4000, 10350)
    error(subscribe(tags, **queue_sub, notifyStrategy="SOMETIMES"), 4000, 10350)
    tags6 = {f"filterTag.{i}": f"t{i}" for i in range(1, 7)}
    error(subscribe(tags, **queue_sub, **tags6), 4000, 10370)
    error(subscribe(tags, **queue_sub, **{"filterTag.1": "x" * 17}), 4000, 10350)
    ok(subscribe(tags, **queue_sub))
    error(
        client.call("PublishMessage", topicName=keys.topicName, msgBody="x", routingKey="a." * 16),
        4000,
    )
    client.close()


def test_queue_subscription_with_json_format_gets_the_bare_body(cmq_broker, account):
    """Tencent's Java SDK subscribes queues with notifyContentFormat JSON, its default."""
    client = cmq_broker.client()
    topic = make_topic(account, filter_type=1)
    q = account.get_queue(uid())
    q.create(QueueMeta())
    name = uid("s")
    params = {"topicName": topic.topicName, "subscriptionName": name}
    ok(
        client.call(
            "Subscribe",
            **params,
            protocol="queue",
            endpoint=q.queue_name,
            notifyContentFormat="JSON",
        )
    )
    attrs = ok(client.call("GetSubscriptionAttributes", **params))
    assert attrs["notifyContentFormat"] == "JSON"
    topic.publish_message(Message("plain body"))
    assert drain(q) == ["plain body"]
    client.close()


def test_http_push_json_and_simplified(account, receiver):
    topic = make_topic(account, filter_type=1)
    json_sub = http_subscription(account, topic, receiver.url("/json"))
    plain_sub = http_subscription(account, topic, receiver.url("/plain"), fmt="SIMPLIFIED")
    sent = topic.publish_message(Message("hello push", ["t1", "t2"]))
    pushes = {p.path: p for p in (receiver.get(), receiver.get())}
    body = json.loads(pushes["/json"].body)
    assert body == {
        "TopicOwner": "/",
        "topicName": topic.topicName,
        "subscriptionName": json_sub,
        "msgId": sent.msgId,
        "msgBody": "hello push",
        "publishTime": body["publishTime"],
    }
    assert abs(body["publishTime"] - time.time()) < 10
    plain = pushes["/plain"]
    assert plain.body == b"hello push"
    for push in pushes.values():
        assert push.headers["x-cmq-message-id"] == sent.msgId
        assert push.headers["x-cmq-message-tag"] == "t1,t2"
        assert push.headers["x-cmq-request-id"]
        assert push.headers["Content-Type"].startswith("text/plain")
    assert plain_sub
    assert receiver.nothing_within(0.3)  # delivered once each


def test_binary_publish_pushes_losslessly(cmq_broker, account, receiver):
    """A CMQ client publishes bytes as base64; JSON pushes carry them base64 and flagged,
    SIMPLIFIED pushes the bytes themselves."""
    topic = make_topic(account, filter_type=1)
    http_subscription(account, topic, receiver.url("/json"))
    http_subscription(account, topic, receiver.url("/plain"), fmt="SIMPLIFIED")
    binary = b"\xff\x00" + os.urandom(64)
    client = cmq_broker.client()
    ok(
        client.call(
            "PublishMessage",
            topicName=topic.topicName,
            msgBody=base64.b64encode(binary).decode(),
            msgBodyEncoding="base64",
        )
    )
    client.close()
    pushes = {p.path: p for p in (receiver.get(), receiver.get())}
    assert pushes["/plain"].body == binary
    body = json.loads(pushes["/json"].body)
    assert body["msgBodyEncoding"] == "base64" and base64.b64decode(body["msgBody"]) == binary


def test_http_push_retries_until_the_endpoint_succeeds(account, receiver):
    topic = make_topic(account, filter_type=1)
    receiver.fail("/flaky", 2)
    name = http_subscription(account, topic, receiver.url("/flaky"))
    topic.publish_message(Message("persevere"))
    attempts = [receiver.get(), receiver.get(), receiver.get()]
    assert [p.body for p in attempts] == [attempts[0].body] * 3
    # EXPONENTIAL_DECAY_RETRY waits 1 then 2 units (50 ms in these tests).
    assert attempts[1].at - attempts[0].at >= 0.04
    assert attempts[2].at - attempts[1].at >= 0.09
    assert receiver.nothing_within(0.5)
    attrs = account.get_subscription(topic.topicName, name).get_attributes()
    assert attrs.inactiveMsgNum == 0  # the SDK maps msgCount here: nothing pending


def test_backoff_retry_gives_up_after_three_retries(account, receiver, cmq_broker):
    topic = make_topic(account, filter_type=1)
    receiver.fail("/down", 100)
    name = http_subscription(account, topic, receiver.url("/down"), strategy="BACKOFF_RETRY")
    topic.publish_message(Message("doomed"))
    attempts = [receiver.get() for _ in range(4)]
    gaps = [b.at - a.at for a, b in zip(attempts, attempts[1:], strict=False)]
    assert all(0.45 <= gap <= 3 for gap in gaps), gaps  # 10-20 units of 50 ms
    assert receiver.nothing_within(1.5)
    assert topic.get_attributes().msgCount == 0
    # Given up, and said so: one line naming the subscription, topic, endpoint and count.
    line = wait_until(lambda: dropped_lines(cmq_broker, name), timeout=5)
    assert len(line) == 1 and topic.topicName in line[0] and receiver.url("/down") in line[0]
    assert "dropped 1 message (push-given-up" in line[0]
    status = cmq_broker.process.cli("status").stdout
    assert int(dict(ln.split("\t") for ln in status.splitlines())["dropped_push_given_up"]) >= 1


def dropped_lines(cmq_broker, subscription: str) -> list[str]:
    log = cmq_broker.process.log_path.read_text(errors="replace")
    return [ln for ln in log.splitlines() if "push-given-up" in ln and subscription in ln]


def test_a_push_subscription_whose_queue_is_deleted_says_so(account, cmq_broker, receiver):
    import pika

    topic = make_topic(account, filter_type=1)
    name = http_subscription(account, topic, receiver.url("/gone"))
    conn = pika.BlockingConnection(cmq_broker.process.params())
    conn.channel().queue_delete(f"cmq-push.{topic.topicName}.{name}")
    conn.close()
    topic.publish_message(Message("nowhere"))
    assert receiver.nothing_within(0.3)
    client = cmq_broker.client()
    params = {"topicName": topic.topicName, "subscriptionName": name}
    assert ok(client.call("GetSubscriptionAttributes", **params))["bound"] is False
    assert wait_until(
        lambda: f"{name} of topic {topic.topicName}" in cmq_broker.process.log_tail(20_000)
    )
    ok(client.call("Unsubscribe", **params))
    client.close()
