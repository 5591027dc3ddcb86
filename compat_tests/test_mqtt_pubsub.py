"""MQTT publish and subscribe: QoS 0/1/2 both ways, DUP, SUBACK codes, wildcards, amqtt."""

from __future__ import annotations

import asyncio

import pytest

from compat_tests.helpers import channel
from compat_tests.mqtt_helpers import (
    Paho,
    RawMQTT,
    ack_packet,
    publish_packet,
    subscribe_packet,
    uid,
)

pytestmark = pytest.mark.own_broker


def test_qos_is_the_minimum_of_publish_and_subscription(clients):
    base = uid("qos")
    subscribers = {}
    for sub_qos in range(3):
        subscribers[sub_qos] = clients()
        subscribers[sub_qos].subscribe((f"{base}/#", sub_qos))
    publisher = clients()
    for pub_qos in range(3):
        publisher.publish(f"{base}/{pub_qos}", b"qos %d" % pub_qos, qos=pub_qos)
    for sub_qos, sub in subscribers.items():
        got = sorted((m.topic, m.qos, m.payload) for m in (sub.message() for _ in range(3)))
        assert got == [(f"{base}/{q}", min(q, sub_qos), b"qos %d" % q) for q in range(3)], sub_qos


def test_qos2_inbound_flow_retransmission_and_packet_id_reuse(broker, clients):
    topic = uid("q2in")
    sub = clients()
    sub.subscribe((topic, 2), (topic + "/marker", 2))
    raw = RawMQTT(broker)
    raw.connect(uid())
    raw.send(publish_packet(topic, b"once", qos=2, packet_id=9))
    rec = raw.read()
    assert (rec.type, rec.packet_id) == (5, 9)
    # The client did not see the PUBREC: it sends the PUBLISH again, with DUP.
    raw.send(publish_packet(topic, b"once", qos=2, packet_id=9, dup=True))
    rec = raw.read()
    assert (rec.type, rec.packet_id) == (5, 9)
    raw.send(ack_packet("pubrel", 9))
    comp = raw.read()
    assert (comp.type, comp.packet_id) == (7, 9)
    # After PUBCOMP the packet id is free again: the same id now carries a new message.
    raw.send(publish_packet(topic, b"id reused", qos=2, packet_id=9))
    assert raw.read().type == 5
    raw.send(ack_packet("pubrel", 9))
    assert raw.read().type == 7
    # paho hands a QoS 2 message over on PUBREL, so the marker is QoS 2 to keep the order.
    raw.send(publish_packet(topic + "/marker", b"marker", qos=2, packet_id=10))
    assert raw.read().type == 5
    raw.send(ack_packet("pubrel", 10))
    assert raw.read().type == 7
    got = sub.messages_until(b"marker")
    assert [(m.payload, m.qos) for m in got] == [(b"once", 2), (b"id reused", 2)]


def test_qos2_outbound_flow(broker, clients):
    topic = uid("q2out")
    raw = RawMQTT(broker)
    raw.connect(uid())
    raw.send(subscribe_packet(1, (topic, 2)))
    assert raw.read().type == 9
    clients().publish(topic, b"exactly once", qos=2)
    pub = raw.read()
    name, payload, qos, retain, dup, packet_id = pub.publish()
    assert (name, payload, qos, retain, dup) == (topic, b"exactly once", 2, False, False)
    raw.send(ack_packet("pubrec", packet_id))
    rel = raw.read()
    assert (rel.type, rel.flags, rel.packet_id) == (6, 2, packet_id)
    raw.send(ack_packet("pubcomp", packet_id))
    raw.close()


@pytest.mark.parametrize("qos", [1, 2])
def test_unacknowledged_message_is_redelivered_with_dup_and_same_id(broker, clients, qos):
    topic, client_id = uid("dup"), uid("dupc")
    raw = RawMQTT(broker)
    raw.connect(client_id, clean=False)
    raw.send(subscribe_packet(1, (topic, qos)))
    assert raw.read().type == 9
    clients().publish(topic, b"again", qos=qos)
    first = raw.read().publish()
    assert first[:5] == (topic, b"again", qos, False, False)
    raw.close()  # no PUBACK / PUBREC
    raw = RawMQTT(broker)
    assert raw.connect(client_id, clean=False) == (True, 0)
    second = raw.read().publish()
    assert second == (topic, b"again", qos, False, True, first[5])
    raw.send(ack_packet("puback" if qos == 1 else "pubrec", first[5]))
    if qos == 2:
        assert raw.read().type == 6
        raw.send(ack_packet("pubcomp", first[5]))
    raw.close()


def test_pubrel_is_sent_again_after_reconnect(broker, clients):
    topic, client_id = uid("rel"), uid("relc")
    raw = RawMQTT(broker)
    raw.connect(client_id, clean=False)
    raw.send(subscribe_packet(1, (topic, 2)))
    assert raw.read().type == 9
    clients().publish(topic, b"m", qos=2)
    packet_id = raw.read().publish()[5]
    raw.send(ack_packet("pubrec", packet_id))
    assert raw.read().type == 6
    raw.close()  # no PUBCOMP
    raw = RawMQTT(broker)
    assert raw.connect(client_id, clean=False) == (True, 0)
    rel = raw.read()
    assert (rel.type, rel.packet_id) == (6, packet_id)  # PUBREL, not the PUBLISH again
    raw.send(ack_packet("pubcomp", packet_id))
    raw.send(subscribe_packet(2, (topic + "/x", 0)))
    assert raw.read().type == 9
    raw.close()


def test_suback_grants_requested_qos_and_0x80_for_invalid_filters(broker):
    raw = RawMQTT(broker)
    raw.connect(uid())
    raw.send(subscribe_packet(7, ("a/#/b", 1), (uid("ok") + "/+", 2), ("x#", 0), ("y/+", 1)))
    suback = raw.read()
    assert (suback.type, suback.packet_id) == (9, 7)
    assert list(suback.body[2:]) == [0x80, 2, 0x80, 1]
    raw.close()


def test_suback_0x80_when_not_allowed_to_read(broker):
    name = uid("reader")
    broker.cli("users", "add", name, "pw")
    broker.cli("permissions", "set", name, ".*", ".*", "^$")
    client = Paho(broker, username=name, password="pw")
    client.connect()
    assert client.subscribe(("denied/t", 1)) == [0x80]
    client.close()


def test_unsubscribe_stops_delivery(clients):
    topic = uid("unsub")
    sub = clients()
    sub.subscribe((topic + "/+", 1), (topic + "/marker", 1))
    pub = clients()
    pub.publish(topic + "/a", b"before", qos=1)
    assert sub.message().payload == b"before"
    sub.unsubscribe(topic + "/+")
    pub.publish(topic + "/a", b"after", qos=1)
    pub.publish(topic + "/marker", b"marker", qos=1)
    assert sub.messages_until(b"marker") == []


def test_wildcards(clients):
    base = uid("wild")
    sub = clients()
    sub.subscribe((f"{base}/+/player1", 0), (f"{base}/finance/#", 0), (f"{base}/end", 0))
    pub = clients()
    topics = [
        f"{base}/tennis/player1",  # +
        f"{base}/tennis/player2",  # no
        f"{base}/tennis/x/player1",  # + is one level only: no
        f"{base}/finance",  # # matches the parent level
        f"{base}/finance/stock/ibm",  # # matches many levels
        f"{base}//player1",  # + matches an empty level
    ]
    for topic in topics:
        pub.publish(topic, topic.encode(), qos=1)
    pub.publish(f"{base}/end", b"marker", qos=1)
    got = sorted(m.topic for m in sub.messages_until(b"marker"))
    assert got == sorted([topics[0], topics[3], topics[4], topics[5]])


def test_topics_with_dots_round_trip(clients):
    base = uid("dots")
    sub = clients()
    sub.subscribe((f"{base}/v1.2/+", 1))
    clients().publish(f"{base}/v1.2/a.b", b"dotted", qos=1)
    msg = sub.message()
    assert (msg.topic, msg.payload) == (f"{base}/v1.2/a.b", b"dotted")


def test_dollar_topics_are_not_matched_by_leading_wildcards(broker, clients):
    """MQTT-4.7.2-1. MQTT clients may not publish to `$` topics, AMQP publishers can."""
    name = uid("dollar")
    wild = clients()
    wild.subscribe(("#", 0), ("+/" + name, 0))
    exact = clients()
    exact.subscribe((f"${name}/#", 0))
    with channel(broker) as ch:
        ch.basic_publish("amq.topic", f"${name}.{name}", b"system")
        ch.basic_publish("amq.topic", f"{name}.marker", b"marker")
    assert exact.message().payload == b"system"
    assert [m.topic for m in wild.messages_until(b"marker") if name in m.topic] == []


def test_overlapping_subscriptions_deliver_once_at_highest_qos(clients):
    base = uid("overlap")
    sub = clients()
    sub.subscribe((f"{base}/+/x", 1), (f"{base}/#", 2), (f"{base}/a/x", 0))
    pub = clients()
    pub.publish(f"{base}/a/x", b"one", qos=2)
    pub.publish(f"{base}/marker", b"marker", qos=2)  # QoS 2 like the message: same order
    got = sub.messages_until(b"marker")
    assert [(m.payload, m.qos) for m in got] == [(b"one", 2)]


def test_amqtt_client_publish_and_subscribe(broker):
    from amqtt.client import MQTTClient

    topic = uid("amqtt")
    url = f"mqtt://guest:guest@{broker.host}:{broker.mqtt_port}/"

    async def run() -> list[tuple[str, bytes, int]]:
        sub = MQTTClient(client_id=uid("amqtt-sub"))
        pub = MQTTClient(client_id=uid("amqtt-pub"))
        await sub.connect(url, cleansession=True)
        await pub.connect(url, cleansession=True)
        granted = await sub.subscribe([(topic + "/#", 2)])
        assert granted == [2]
        for qos in range(3):
            await pub.publish(f"{topic}/{qos}", b"amqtt %d" % qos, qos=qos)
        got = []
        for _ in range(3):
            message = await asyncio.wait_for(sub.deliver_message(), 10)
            assert message is not None
            got.append((message.topic, bytes(message.data), message.qos))
        await pub.disconnect()
        await sub.disconnect()
        return got

    got = asyncio.run(run())
    assert sorted(got) == [(f"{topic}/{q}", b"amqtt %d" % q, q) for q in range(3)]


def test_amqtt_persistent_session_and_retained(broker, clients):
    from amqtt.client import MQTTClient

    topic, client_id = uid("amqtt-keep"), uid("amqtt-keep")
    url = f"mqtt://guest:guest@{broker.host}:{broker.mqtt_port}/"
    clients().publish(topic + "/status", b"retained", qos=1, retain=True)

    async def subscribe_then_leave() -> tuple[bytes, bool]:
        sub = MQTTClient(client_id=client_id, config={"auto_reconnect": False})
        await sub.connect(url, cleansession=False)
        await sub.subscribe([(topic + "/#", 2)])
        message = await asyncio.wait_for(sub.deliver_message(), 10)
        assert message is not None
        await sub.disconnect()
        return bytes(message.data), bool(message.publish_packet.retain_flag)

    async def come_back() -> tuple[bytes, int]:
        sub = MQTTClient(client_id=client_id, config={"auto_reconnect": False})
        await sub.connect(url, cleansession=False)
        message = await asyncio.wait_for(sub.deliver_message(), 10)
        assert message is not None
        await sub.disconnect()
        return bytes(message.data), message.qos

    assert asyncio.run(subscribe_then_leave()) == (b"retained", True)
    clients().publish(topic + "/event", b"while away", qos=2)
    assert asyncio.run(come_back()) == (b"while away", 2)
