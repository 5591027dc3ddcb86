"""Where every message goes when it leaves a queue, on every protocol.

Each way out (acknowledged, dead-lettered, expired, over the length limit, rejected, the queue
deleted or purged, a publish that matched nothing) is driven through a real client (pika,
paho-mqtt, the CMQ API) and then checked: the message reached a consumer, or sits where the
user chose (a dead-letter queue), or the cmq_broker counted it (`broker status`: dropped_<reason>)
and logged it. Nothing else may happen to it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pika
import pytest

from compat_tests.cmq_helpers import CmqBroker, SignedClient, dead_lettering_queues, ok
from compat_tests.conftest import BrokerProcess
from compat_tests.helpers import channel, uid, wait_get, wait_until
from compat_tests.mqtt_helpers import Paho, RawMQTT, ack_packet, subscribe_packet

pytestmark = pytest.mark.own_broker

COUNTERS = (
    "dropped_expired",
    "dropped_rejected",
    "dropped_maxlen",
    "dropped_delivery_limit",
    "dropped_queue_deleted",
    "dropped_purged",
    "dropped_unroutable",
    "dead_letter_failed",
)


@pytest.fixture
def cmq(cmq_broker: CmqBroker) -> Iterator[SignedClient]:
    client = cmq_broker.client()
    yield client
    client.close()


class Counters:
    """The broker's drop counters now, and what changed since."""

    def __init__(self, process: BrokerProcess) -> None:
        self.process = process
        self.before = self.read()

    def read(self) -> dict[str, int]:
        lines = self.process.cli("status").stdout.splitlines()
        values = dict(line.split("\t", 1) for line in lines)
        return {name: int(values[name]) for name in COUNTERS}

    def changed(self) -> dict[str, int]:
        now = self.read()
        return {k: now[k] - self.before[k] for k in COUNTERS if now[k] != self.before[k]}

    def wait(self, expected: dict[str, int]) -> None:
        """Wait until exactly `expected` changed (effects are counted just after the reply)."""
        wait_until(lambda: self.changed() == expected, message=f"counters {expected}")


def amqp_queue(ch: pika.adapters.blocking_connection.BlockingChannel, **arguments: object) -> str:
    name = uid("exit")
    ch.queue_declare(name, arguments=arguments or None)
    return name


def publish(ch: pika.adapters.blocking_connection.BlockingChannel, queue: str, body: bytes) -> None:
    ch.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2))


# -- AMQP ----------------------------------------------------------------------------------


def test_amqp_acknowledged_is_delivered_and_nothing_is_counted(cmq_broker: CmqBroker) -> None:
    counters = Counters(cmq_broker.process)
    with channel(cmq_broker.process) as ch:
        q = amqp_queue(ch)
        publish(ch, q, b"m")
        method, _, body = wait_get(ch, q, auto_ack=False)
        assert body == b"m"
        ch.basic_ack(method.delivery_tag)
        ch.queue_delete(q)  # empty now: nothing to count
    assert counters.changed() == {}


@pytest.mark.parametrize(
    "arguments,leave,counter",
    [
        ({"x-message-ttl": 50}, "expire", "dropped_expired"),
        ({"x-max-length": 1}, "overflow", "dropped_maxlen"),
        ({}, "reject", "dropped_rejected"),
        ({"x-delivery-limit": 0}, "requeue", "dropped_delivery_limit"),
    ],
)
def test_amqp_a_message_dying_goes_to_the_dead_letter_queue_or_is_counted(
    cmq_broker: CmqBroker, arguments: dict[str, object], leave: str, counter: str
) -> None:
    with channel(cmq_broker.process) as ch:
        dlq = amqp_queue(ch)
        dead_letter = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq}
        for with_target in (True, False):
            counters = Counters(cmq_broker.process)
            q = amqp_queue(ch, **arguments, **(dead_letter if with_target else {}))
            publish(ch, q, b"first")
            if leave == "overflow":
                publish(ch, q, b"second")  # pushes "first" out of the head
            elif leave in ("reject", "requeue"):
                method, _, _ = wait_get(ch, q, auto_ack=False)
                ch.basic_reject(method.delivery_tag, requeue=leave == "requeue")
            if with_target:
                assert wait_get(ch, dlq)[2] == b"first"
                assert counters.changed() == {}
            else:
                counters.wait({counter: 1})
            ch.queue_purge(q)  # (the overflow case leaves "second")
            ch.queue_delete(q)


def test_amqp_a_dead_letter_exchange_that_is_missing_is_counted_and_logged(
    cmq_broker: CmqBroker,
) -> None:
    counters = Counters(cmq_broker.process)
    gone = uid("gone")
    with channel(cmq_broker.process) as ch:
        q = amqp_queue(ch, **{"x-message-ttl": 50, "x-dead-letter-exchange": gone})
        publish(ch, q, b"m")
        counters.wait({"dropped_expired": 1, "dead_letter_failed": 1})
        ch.queue_delete(q)
    wait_until(
        lambda: (
            f"its dead-letter exchange '{gone}' does not exist" in cmq_broker.process.log_tail()
        ),
        message="the warning naming the missing exchange",
    )


def test_amqp_deleting_or_purging_a_queue_counts_its_messages(cmq_broker: CmqBroker) -> None:
    counters = Counters(cmq_broker.process)
    with channel(cmq_broker.process) as ch:
        q = amqp_queue(ch)
        for body in (b"1", b"2", b"3"):
            publish(ch, q, body)
        wait_until(lambda: ch.queue_declare(q, passive=True).method.message_count == 3)
        assert ch.queue_purge(q).method.message_count == 3
        publish(ch, q, b"4")
        wait_until(lambda: ch.queue_declare(q, passive=True).method.message_count == 1)
        assert ch.queue_delete(q).method.message_count == 1
    counters.wait({"dropped_purged": 3, "dropped_queue_deleted": 1})


def test_amqp_unroutable_is_returned_when_mandatory_else_counted(cmq_broker: CmqBroker) -> None:
    counters = Counters(cmq_broker.process)
    exchange = uid("ex")
    with channel(cmq_broker.process) as ch:
        ch.exchange_declare(exchange, "direct")
        ch.confirm_delivery()
        with pytest.raises(pika.exceptions.UnroutableError):
            ch.basic_publish(exchange, "nowhere", b"m", mandatory=True)
        assert counters.changed() == {}
        ch.basic_publish(exchange, "nowhere", b"m")
        counters.wait({"dropped_unroutable": 1})
        ch.exchange_delete(exchange)


# -- MQTT ----------------------------------------------------------------------------------


def test_mqtt_delivered_and_acknowledged_is_not_counted(cmq_broker: CmqBroker) -> None:
    counters = Counters(cmq_broker.process)
    topic = uid("exits")
    sub, pub = Paho(cmq_broker.process), Paho(cmq_broker.process)
    sub.connect()
    pub.connect()
    sub.subscribe((topic, 1))
    pub.publish(topic, b"m", qos=1)
    assert sub.message().payload == b"m"
    sub.close()
    pub.close()
    assert counters.changed() == {}


def test_mqtt_a_publish_no_one_subscribed_to_is_counted(cmq_broker: CmqBroker) -> None:
    counters = Counters(cmq_broker.process)
    pub = Paho(cmq_broker.process)
    pub.connect()
    pub.publish(uid("nobody"), b"m", qos=1)
    pub.close()
    counters.wait({"dropped_unroutable": 1})


def test_mqtt_a_clean_session_ending_with_an_unacknowledged_message_counts_it(
    cmq_broker: CmqBroker,
) -> None:
    counters = Counters(cmq_broker.process)
    topic = uid("exits")
    raw = RawMQTT(cmq_broker.process)
    raw.connect(uid("raw"), clean=True)
    raw.send(subscribe_packet(1, (topic, 1)))
    assert raw.read().type == 9  # SUBACK
    pub = Paho(cmq_broker.process)
    pub.connect()
    pub.publish(topic, b"held", qos=1)
    assert raw.read().publish()[1] == b"held"  # never acknowledged
    raw.close()  # a clean session ends: its queue, and the message in flight, go
    counters.wait({"dropped_queue_deleted": 1})
    pub.close()


def test_mqtt_a_persistent_session_keeps_what_it_did_not_acknowledge(cmq_broker: CmqBroker) -> None:
    counters = Counters(cmq_broker.process)
    topic, client_id = uid("exits"), uid("keep")
    raw = RawMQTT(cmq_broker.process)
    raw.connect(client_id, clean=False)
    raw.send(subscribe_packet(1, (topic, 1)))
    assert raw.read().type == 9
    pub = Paho(cmq_broker.process)
    pub.connect()
    pub.publish(topic, b"held", qos=1)
    assert raw.read().publish()[1] == b"held"
    raw.close()
    again = RawMQTT(cmq_broker.process)
    assert again.connect(client_id, clean=False) == (True, 0)
    _, payload, _, _, dup, packet_id = again.read().publish()
    assert (payload, dup) == (b"held", True)
    again.send(ack_packet("puback", packet_id))
    again.close()
    end = RawMQTT(cmq_broker.process)
    end.connect(client_id, clean=True)  # ends the session: its queue is empty
    end.close()
    pub.close()
    assert counters.changed() == {}


# -- CMQ -----------------------------------------------------------------------------------


def test_cmq_deleted_after_receive_is_delivered_and_not_counted(
    cmq_broker: CmqBroker, cmq: SignedClient
) -> None:
    counters = Counters(cmq_broker.process)
    q = uid("cmq")
    ok(cmq.call("CreateQueue", queueName=q))
    ok(cmq.call("SendMessage", queueName=q, msgBody="m"))
    got = ok(cmq.call("ReceiveMessage", queueName=q, pollingWaitSeconds=5))
    ok(cmq.call("DeleteMessage", queueName=q, receiptHandle=got["receiptHandle"]))
    ok(cmq.call("DeleteQueue", queueName=q))
    assert counters.changed() == {}


def test_cmq_received_too_often_goes_to_the_dead_letter_queue(
    cmq_broker: CmqBroker, cmq: SignedClient
) -> None:
    counters = Counters(cmq_broker.process)
    src, dlq = dead_lettering_queues(cmq, 1, visibilityTimeout=1)
    ok(cmq.call("SendMessage", queueName=src, msgBody="m"))
    ok(cmq.call("ReceiveMessage", queueName=src, pollingWaitSeconds=5))
    # Visible again after a second, and over its receive count: moved, not handed out.
    assert cmq.call("ReceiveMessage", queueName=src, pollingWaitSeconds=2)["code"] == 7000
    moved = ok(cmq.call("ReceiveMessage", queueName=dlq, pollingWaitSeconds=5))
    assert moved["msgBody"] == "m"
    assert counters.changed() == {}


def test_cmq_expired_or_deleted_with_its_queue_is_counted(
    cmq_broker: CmqBroker, cmq: SignedClient
) -> None:
    counters = Counters(cmq_broker.process)
    short, deleted = uid("short"), uid("deleted")
    ok(cmq.call("CreateQueue", queueName=short, msgRetentionSeconds=1))
    ok(cmq.call("CreateQueue", queueName=deleted))
    ok(cmq.call("SendMessage", queueName=short, msgBody="expires"))
    ok(cmq.call("SendMessage", queueName=deleted, msgBody="goes with its queue"))
    ok(cmq.call("DeleteQueue", queueName=deleted))
    counters.wait({"dropped_queue_deleted": 1})
    counters.wait({"dropped_queue_deleted": 1, "dropped_expired": 1})  # a second later
    assert cmq.call("ReceiveMessage", queueName=short, pollingWaitSeconds=0)["code"] != 0
    ok(cmq.call("DeleteQueue", queueName=short))


def test_cmq_a_topic_message_no_subscription_matches_is_counted(
    cmq_broker: CmqBroker, cmq: SignedClient
) -> None:
    counters = Counters(cmq_broker.process)
    topic, q = uid("topic"), uid("tagged")
    ok(cmq.call("CreateTopic", topicName=topic, filterType=2))
    ok(cmq.call("CreateQueue", queueName=q))
    ok(
        cmq.call(
            "Subscribe",
            topicName=topic,
            subscriptionName=uid("sub"),
            protocol="queue",
            endpoint=q,
            **{"bindingKey.0": "orders.*"},
        )
    )
    ok(cmq.call("PublishMessage", topicName=topic, msgBody="m1", routingKey="orders.new"))
    ok(cmq.call("PublishMessage", topicName=topic, msgBody="m2", routingKey="billing.new"))
    assert ok(cmq.call("ReceiveMessage", queueName=q, pollingWaitSeconds=5))["msgBody"] == "m1"
    counters.wait({"dropped_unroutable": 1})
