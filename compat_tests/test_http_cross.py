"""One broker, several protocols: CMQ queues are AMQP queues, CMQ topics are topic exchanges."""

from __future__ import annotations

import base64
import os

import pika
import pytest
from cmq.queue import Message, QueueMeta
from cmq.subscription import SubscriptionMeta
from cmq.topic import Message as TopicMessage
from cmq.topic import TopicMeta

from compat_tests.cmq_helpers import dead_lettering_queues, error, ok, uid
from compat_tests.mqtt_helpers import Paho


@pytest.fixture
def channel(cmq_broker):
    conn = pika.BlockingConnection(cmq_broker.process.params())
    yield conn.channel()
    conn.close()


def test_http_send_amqp_consume_and_back(cmq_broker, channel):
    account = cmq_broker.account()
    q = account.get_queue(uid())
    q.create(QueueMeta())
    sent = q.send_message(Message("from http"))
    method, props, body = channel.basic_get(q.queue_name, auto_ack=True)
    assert body == b"from http" and props.message_id == sent.msgId
    assert props.delivery_mode == 2

    channel.basic_publish("", q.queue_name, b"from amqp", pika.BasicProperties(message_id="m-1"))
    got = q.receive_message(5)
    assert (got.msgBody, got.msgId) == ("from amqp", "m-1")
    q.delete_message(got.receiptHandle)
    assert channel.basic_get(q.queue_name, auto_ack=True)[0] is None


def test_amqp_publish_to_topic_reaches_matching_subscriptions(cmq_broker, channel):
    account = cmq_broker.account()
    topic = account.get_topic(uid("t"))
    meta = TopicMeta()
    meta.filterType = 2
    topic.create(meta)
    q = account.get_queue(uid())
    q.create(QueueMeta())
    sub = SubscriptionMeta()
    sub.Endpoint, sub.Protocal, sub.NotifyContentFormat = q.queue_name, "queue", "SIMPLIFIED"
    sub.bindingKey = ["sensors.*.temp"]
    account.get_subscription(topic.topicName, "temps").create(sub)

    for key in ("sensors.42.temp", "sensors.42.humidity"):
        channel.basic_publish(topic.topicName, key, key.encode())
    got = q.receive_message(5)
    assert got.msgBody == "sensors.42.temp"
    q.delete_message(got.receiptHandle)
    assert q.get_attributes().activeMsgNum == 0


def test_mqtt_publish_reaches_cmq_subscription_through_amq_topic(cmq_broker, channel):
    """MQTT publishes land on amq.topic; an exchange-to-exchange binding feeds a CMQ topic."""
    account = cmq_broker.account()
    topic = account.get_topic(uid("t"))
    meta = TopicMeta()
    meta.filterType = 2
    topic.create(meta)
    q = account.get_queue(uid())
    q.create(QueueMeta())
    sub = SubscriptionMeta()
    sub.Endpoint, sub.Protocal, sub.NotifyContentFormat = q.queue_name, "queue", "SIMPLIFIED"
    sub.bindingKey = ["sensors.*.temp"]
    account.get_subscription(topic.topicName, "temps").create(sub)
    channel.exchange_bind(destination=topic.topicName, source="amq.topic", routing_key="sensors.#")

    for topic_name in ("sensors/7/humidity", "sensors/7/temp"):
        publish_over_mqtt(cmq_broker, topic_name, topic_name.encode())
    got = q.receive_message(5)
    assert got.msgBody == "sensors/7/temp"
    q.delete_message(got.receiptHandle)
    assert q.get_attributes().activeMsgNum == 0


def status(cmq_broker) -> dict[str, str]:
    lines = cmq_broker.process.cli("status").stdout.splitlines()
    return dict(line.split("\t", 1) for line in lines)


def test_max_msg_size_refuses_amqp_and_mqtt_publishes_too(cmq_broker, channel):
    """maxMsgSize holds for every protocol: AMQP confirms nack, MQTT is PUBACKed and counted."""
    q = cmq_broker.account().get_queue(uid())
    meta = QueueMeta()
    meta.maxMsgSize = 1024
    q.create(meta)
    refused_before = int(status(cmq_broker).get("oversized_refused", "0"))
    channel.confirm_delivery()
    channel.basic_publish("", q.queue_name, b"x" * 1024)
    with pytest.raises(pika.exceptions.NackError):
        channel.basic_publish("", q.queue_name, b"x" * 1025)

    channel.queue_bind(q.queue_name, "amq.topic", routing_key=q.queue_name)
    publish_over_mqtt(cmq_broker, q.queue_name, b"y" * 2000, b"small")

    got = [m.msgBody for m in q.batch_receive_message(16, 0)]
    assert got == ["x" * 1024, "small"]
    assert int(status(cmq_broker)["oversized_refused"]) == refused_before + 2
    assert "over its x-max-message-size" in cmq_broker.process.log_tail()


def publish_over_mqtt(cmq_broker, topic: str, *payloads: bytes) -> None:
    """Publish at QoS 1 with paho, each PUBACK awaited."""
    client = Paho(cmq_broker.process)
    client.connect()
    try:
        for payload in payloads:
            client.publish(topic, payload, qos=1)
    finally:
        client.close()


def received_bytes(fields: dict) -> bytes:
    """A received message's body as bytes, by the msgBodyEncoding the broker answers."""
    if fields.get("msgBodyEncoding") == "base64":
        return base64.b64decode(fields["msgBody"])
    assert "msgBodyEncoding" not in fields, fields
    return fields["msgBody"].encode()


def test_binary_amqp_and_mqtt_bodies_reach_cmq_unchanged(cmq_broker, channel):
    """Bodies that are not UTF-8 come back base64-encoded, flagged, not with bytes replaced."""
    account = cmq_broker.account()
    q = account.get_queue(uid())
    q.create(QueueMeta())
    from_amqp, from_mqtt = b"\xff\xfe" + os.urandom(200), b"\x80" + os.urandom(200)
    channel.basic_publish("", q.queue_name, from_amqp)
    channel.basic_publish("", q.queue_name, "text, 世界".encode())
    channel.queue_bind(q.queue_name, "amq.topic", routing_key=q.queue_name)
    publish_over_mqtt(cmq_broker, q.queue_name, from_mqtt)

    http = cmq_broker.client()
    got = ok(http.call("BatchReceiveMessage", queueName=q.queue_name, numOfMsg=3))["msgInfoList"]
    assert [received_bytes(m) for m in got] == [from_amqp, "text, 世界".encode(), from_mqtt]
    assert [m.get("msgBodyEncoding") for m in got] == ["base64", None, "base64"]
    http.close()
    # Tencent's SDK ignores the field it does not know and hands over the base64 text.
    channel.basic_publish("", q.queue_name, from_amqp)
    assert base64.b64decode(q.receive_message(0).msgBody) == from_amqp


def test_cmq_client_sends_binary_as_base64(cmq_broker, channel):
    q = cmq_broker.account().get_queue(uid())
    q.create(QueueMeta())
    binary = b"\x00\xff" + os.urandom(100)
    http = cmq_broker.client()
    encoded = base64.b64encode(binary).decode()
    ok(http.call("SendMessage", queueName=q.queue_name, msgBody=encoded, msgBodyEncoding="base64"))
    assert channel.basic_get(q.queue_name, auto_ack=True)[2] == binary
    error(
        http.call(
            "SendMessage", queueName=q.queue_name, msgBody="not*base64", msgBodyEncoding="base64"
        ),
        4000,
        10350,
    )
    error(
        http.call("SendMessage", queueName=q.queue_name, msgBody="x", msgBodyEncoding="hex"),
        4000,
        10350,
    )
    http.close()


def test_a_dead_letter_queue_in_use_is_kept_or_flagged(cmq_broker, channel):
    """CMQ refuses to delete a queue others dead-letter to; deleted over AMQP anyway, it is
    flagged, and messages over the receive limit stay in their queue instead of vanishing."""
    http = cmq_broker.client()
    src, dlq = dead_lettering_queues(http, 2, visibilityTimeout=1)
    refused = error(http.call("DeleteQueue", queueName=dlq), 4000, 10110)
    assert src in refused["message"]
    assert ok(http.call("GetQueueAttributes", queueName=src))["deadLetterQueueExists"] is True

    channel.queue_delete(dlq)
    attrs = ok(http.call("GetQueueAttributes", queueName=src))
    assert (attrs["deadLetterQueueName"], attrs["deadLetterQueueExists"]) == (dlq, False)
    q = cmq_broker.account().get_queue(src)
    q.send_message(Message("kept"))
    counts = [q.receive_message(5).dequeueCount for _ in range(3)]
    assert counts == [1, 2, 3]  # past maxReceiveCount, with nowhere to go: still here

    ok(http.call("CreateQueue", queueName=dlq))
    assert ok(http.call("GetQueueAttributes", queueName=src))["deadLetterQueueExists"] is True
    ok(http.call("SetQueueAttributes", queueName=src, deadLetterQueueName=""))
    ok(http.call("DeleteQueue", queueName=dlq))
    http.close()


def test_queue_subscriptions_go_with_their_queue_or_say_they_are_unbound(cmq_broker, channel):
    account = cmq_broker.account()
    topic = account.get_topic(uid("t"))
    topic.create(TopicMeta())
    http = cmq_broker.client()

    def subscribe(queue: str) -> str:
        name = uid("s")
        sub = SubscriptionMeta()
        sub.Endpoint, sub.Protocal, sub.NotifyContentFormat = queue, "queue", "SIMPLIFIED"
        account.get_subscription(topic.topicName, name).create(sub)
        return name

    def listed() -> dict[str, bool]:
        reply = ok(http.call("ListSubscriptionByTopic", topicName=topic.topicName))
        return {s["subscriptionName"]: s["bound"] for s in reply["subscriptionList"]}

    # Deleted over CMQ: its subscriptions go with it; a new queue of that name gets nothing.
    q = account.get_queue(uid())
    q.create(QueueMeta())
    first = subscribe(q.queue_name)
    assert listed() == {first: True}
    q.delete()
    assert listed() == {}
    error(
        http.call("GetSubscriptionAttributes", topicName=topic.topicName, subscriptionName=first),
        4440,
    )
    q.create(QueueMeta())
    topic.publish_message(TopicMessage("to nobody"))
    assert q.get_attributes().activeMsgNum == 0

    # Deleted over AMQP: the subscription stays, and says it is not bound any more.
    second = subscribe(q.queue_name)
    channel.queue_delete(q.queue_name)
    q.create(QueueMeta())
    assert listed() == {second: False}
    attrs = ok(
        http.call("GetSubscriptionAttributes", topicName=topic.topicName, subscriptionName=second)
    )
    assert attrs["bound"] is False
    ok(http.call("Unsubscribe", topicName=topic.topicName, subscriptionName=second))
    assert listed() == {}
    http.close()


def test_a_topic_made_again_after_an_amqp_delete_starts_clean(cmq_broker, channel):
    """Subscriptions of a topic exchange deleted over AMQP go, push queues included, when
    CMQ creates the topic again: nothing is left pushing or holding messages unseen."""
    account = cmq_broker.account()
    topic = account.get_topic(uid("t"))
    topic.create(TopicMeta())
    name = uid("s")
    sub = SubscriptionMeta()
    sub.Endpoint, sub.Protocal = "http://127.0.0.1:9/never", "http"
    account.get_subscription(topic.topicName, name).create(sub)
    push_queue = f"cmq-push.{topic.topicName}.{name}"
    channel.queue_declare(push_queue, passive=True)

    channel.exchange_delete(topic.topicName)
    topic.create(TopicMeta())
    assert topic.list_subscription()[0] == 0
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as closed:
        channel.queue_declare(push_queue, passive=True)
    assert closed.value.reply_code == 404
