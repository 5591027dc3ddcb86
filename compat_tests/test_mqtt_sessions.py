"""MQTT sessions: clean session 0 survives disconnects and kill -9; clean session 1 does not."""

from __future__ import annotations

import pytest

from compat_tests.mqtt_helpers import Paho, RawMQTT, ack_packet, publish_packet, uid

pytestmark = pytest.mark.own_broker


def connect(broker, **kw) -> tuple[Paho, bool]:
    client = Paho(broker, **kw)
    _, present = client.connect()
    return client, present


def test_persistent_session_survives_disconnect(broker):
    client_id, topic = uid("keep"), uid("keep")
    sub, present = connect(broker, client_id=client_id, clean=False)
    assert present is False
    sub.subscribe((topic, 1))
    sub.close()
    pub, _ = connect(broker)
    for i in range(3):
        pub.publish(topic, b"offline %d" % i, qos=1)
    pub.close()
    sub, present = connect(broker, client_id=client_id, clean=False)
    assert present is True
    assert [sub.message().payload for _ in range(3)] == [b"offline %d" % i for i in range(3)]
    sub.close()


def test_clean_session_discards_the_previous_session(broker):
    client_id, topic = uid("clean"), uid("clean")
    sub, _ = connect(broker, client_id=client_id, clean=False)
    sub.subscribe((topic, 1))
    sub.close()
    pub, _ = connect(broker)
    pub.publish(topic, b"for the old session", qos=1)
    fresh, present = connect(broker, client_id=client_id, clean=True)
    assert present is False
    fresh.subscribe((topic + "/marker", 1))
    pub.publish(topic, b"not subscribed any more", qos=1)
    pub.publish(topic + "/marker", b"marker", qos=1)
    assert fresh.messages_until(b"marker") == []
    fresh.close()
    again, present = connect(broker, client_id=client_id, clean=False)
    assert present is False
    again.close()
    pub.close()


def test_clean_session_1_ends_with_its_connection(broker):
    client_id, topic = uid("transient"), uid("transient")
    sub, _ = connect(broker, client_id=client_id, clean=True)
    sub.subscribe((topic, 1))
    sub.close()
    sub, present = connect(broker, client_id=client_id, clean=False)
    assert present is False
    sub.close()


def test_queued_messages_and_retained_survive_kill_9(broker_factory):
    b = broker_factory()
    client_id, base = uid("crash"), uid("crash")
    sub, _ = connect(b, client_id=client_id, clean=False)
    sub.subscribe((base + "/q1", 1), (base + "/q2", 2))
    sub.close()
    pub, _ = connect(b)
    for i in range(5):
        pub.publish(base + "/q1", b"one %d" % i, qos=1)
        pub.publish(base + "/q2", b"two %d" % i, qos=2)
    pub.publish(base + "/status", b"retained", qos=1, retain=True)
    pub.stop()
    b.restart(kill=True)
    sub, present = connect(b, client_id=client_id, clean=False)
    assert present is True
    got = [sub.message() for _ in range(10)]
    assert sorted((m.topic, m.payload, m.qos) for m in got) == sorted(
        [(base + "/q1", b"one %d" % i, 1) for i in range(5)]
        + [(base + "/q2", b"two %d" % i, 2) for i in range(5)]
    )
    # paho hands a QoS 2 message over on PUBREL, so the marker is QoS 2 to keep the order.
    sub.subscribe((base + "/marker", 2))
    sub.publish(base + "/marker", b"marker", qos=2)
    assert sub.messages_until(b"marker") == []  # nothing delivered twice
    late, _ = connect(b)
    late.subscribe((base + "/status", 1))
    msg = late.message()
    assert (msg.payload, msg.retain) == (b"retained", True)
    late.close()
    sub.close()


def test_qos2_publish_is_exactly_once_across_kill_9(broker_factory):
    b = broker_factory()
    topic, publisher_id, subscriber_id = uid("eo"), uid("eo-pub"), uid("eo-sub")
    sub, _ = connect(b, client_id=subscriber_id, clean=False)
    sub.subscribe((topic, 2), (topic + "/marker", 2))
    sub.close()
    raw = RawMQTT(b)
    raw.connect(publisher_id, clean=False)
    raw.send(publish_packet(topic, b"exactly once", qos=2, packet_id=77))
    assert raw.read().type == 5  # PUBREC: the broker owns the message now
    b.restart(kill=True)
    raw = RawMQTT(b)
    assert raw.connect(publisher_id, clean=False) == (True, 0)
    # The PUBREC was lost with the connection: the client sends the PUBLISH again.
    raw.send(publish_packet(topic, b"exactly once", qos=2, packet_id=77, dup=True))
    rec = raw.read()
    assert (rec.type, rec.packet_id) == (5, 77)
    raw.send(ack_packet("pubrel", 77))
    assert raw.read().type == 7
    raw.send(publish_packet(topic + "/marker", b"marker", qos=2, packet_id=78))
    assert raw.read().type == 5
    raw.send(ack_packet("pubrel", 78))
    assert raw.read().type == 7
    sub, present = connect(b, client_id=subscriber_id, clean=False)
    assert present is True
    assert [(m.payload, m.qos) for m in sub.messages_until(b"marker")] == [(b"exactly once", 2)]
    sub.close()


def test_outbound_qos2_state_survives_kill_9(broker_factory):
    b = broker_factory()
    topic, client_id = uid("rel"), uid("rel")
    raw = RawMQTT(b)
    raw.connect(client_id, clean=False)
    raw.send(b"\x82" + bytes((len(topic) + 5,)) + b"\x00\x01" + len(topic).to_bytes(2, "big"))
    raw.send(topic.encode() + b"\x02")
    assert raw.read().type == 9
    pub, _ = connect(b)
    pub.publish(topic, b"released", qos=2)
    pub.publish(topic, b"in flight", qos=2)
    first = raw.read().publish()
    second = raw.read().publish()
    assert (first[1], second[1]) == (b"released", b"in flight")
    raw.send(ack_packet("pubrec", first[5]))
    assert raw.read().type == 6
    pub.stop()
    b.restart(kill=True)
    raw = RawMQTT(b)
    assert raw.connect(client_id, clean=False) == (True, 0)
    rel = raw.read()
    assert (rel.type, rel.packet_id) == (6, first[5])  # PUBREL again, never the PUBLISH
    again = raw.read().publish()
    assert again == (topic, b"in flight", 2, False, True, second[5])
    raw.close()
