"""MQTT limits: packet size, in-flight window, queued messages per offline session."""

from __future__ import annotations

import threading

import pytest

from compat_tests.conftest import BrokerProcess
from compat_tests.mqtt_helpers import (
    Paho,
    RawMQTT,
    ack_packet,
    publish_packet,
    subscribe_packet,
    uid,
    wait_for,
)

pytestmark = pytest.mark.own_broker


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    b = BrokerProcess(
        tmp_path_factory.mktemp("mqtt-limits") / "data",
        ["--mqtt-max-packet-size", "2048", "--mqtt-max-inflight", "3"],
    )
    b.start()
    yield b
    b.stop()


def status(b: BrokerProcess) -> dict[str, str]:
    lines = b.cli("status").stdout.splitlines()
    return dict(line.split("\t", 1) for line in lines)


def test_oversized_packet_closes_only_that_connection(limited):
    healthy = Paho(limited)
    healthy.connect()
    topic = uid("size")
    healthy.subscribe((topic, 1))
    raw = RawMQTT(limited)
    raw.connect(uid())
    raw.send(publish_packet(topic, b"x" * 1900, qos=1, packet_id=1))
    assert raw.read().type == 4  # under the limit: fine
    raw.send(publish_packet(topic, b"x" * 3000, qos=1, packet_id=2))
    assert raw.closed_by_broker()
    assert healthy.message().payload == b"x" * 1900
    healthy.publish(topic, b"still serving", qos=1)
    assert healthy.message().payload == b"still serving"
    healthy.close()


def test_in_flight_window_limits_unacknowledged_deliveries(limited):
    topic = uid("window")
    raw = RawMQTT(limited)
    raw.connect(uid())
    raw.send(subscribe_packet(1, (topic, 1)))
    assert raw.read().type == 9
    pub = Paho(limited)
    pub.connect()
    for i in range(6):
        pub.publish(topic, b"%d" % i, qos=1)
    window = [raw.read().publish() for _ in range(3)]
    assert [p[1] for p in window] == [b"0", b"1", b"2"]
    with pytest.raises(TimeoutError):
        raw.read(timeout=0.5)  # the window is full
    raw.send(ack_packet("puback", window[0][5]))
    assert raw.read().publish()[1] == b"3"
    for p in window[1:]:
        raw.send(ack_packet("puback", p[5]))
    assert sorted(raw.read().publish()[1] for _ in range(2)) == [b"4", b"5"]
    pub.close()
    raw.close()


@pytest.mark.parametrize(
    "policy,kept,counter,line",
    [
        ("drop-oldest", [2, 3, 4], "dropped_maxlen", "dropped 1 message (maxlen)"),
        ("refuse", [0, 1, 2], "overflow_refused", "is full"),
    ],
)
def test_offline_session_overflow_is_counted_and_logged(
    broker_factory, policy, kept, counter, line
):
    b = broker_factory("--mqtt-max-queued", "3", "--mqtt-overflow", policy)
    client_id, topic = uid("full"), uid("full")
    sub = Paho(b, client_id=client_id, clean=False)
    sub.connect()
    sub.subscribe((topic, 1))
    sub.close()
    pub = Paho(b)
    pub.connect()
    for i in range(5):
        pub.publish(topic, b"%d" % i, qos=1)
    pub.close()
    assert status(b)[counter] == "2"
    wait_for(lambda: line in b.log_tail(), what="the overflow log line")
    sub = Paho(b, client_id=client_id, clean=False)
    sub.connect()
    assert [sub.message().payload for _ in kept] == [b"%d" % i for i in kept]
    sub.close()


def raw_subscriber(b: BrokerProcess, topic: str) -> RawMQTT:
    """A QoS 1 subscriber that reads (and acknowledges) only when the test makes it."""
    sub = RawMQTT(b)
    sub.connect(uid())
    sub.send(subscribe_packet(1, (topic, 1)))
    assert sub.read().type == 9
    return sub


def test_a_slow_subscriber_slows_its_publishers_instead_of_losing_messages(broker_factory):
    # Queues hold 40 messages, so their flow limit is 20 ready messages.
    b = broker_factory("--mqtt-max-queued", "40", "--mqtt-max-inflight", "5")
    topic = uid("slow")
    sub = raw_subscriber(b, topic)
    pub = Paho(b)
    pub.client.max_inflight_messages_set(10)
    pub.connect()
    # The subscriber reads nothing for now: 5 deliveries wait for its PUBACKs.
    sent = [pub.client.publish(topic, b"%d" % i, qos=1) for i in range(200)]
    wait_for(lambda: sum(info.is_published() for info in sent) >= 20, what="the first PUBACKs")
    with pytest.raises(AssertionError):
        # Without credit flow all would be acknowledged at once, and most of them dropped.
        wait_for(lambda: all(info.is_published() for info in sent), timeout=3)
    received = set()
    while len(received) < 200:
        packet = sub.read()
        _, payload, qos, _, _, packet_id = packet.publish()
        received.add(payload)
        sub.send(ack_packet("puback", packet_id))
    assert received == {b"%d" % i for i in range(200)}
    wait_for(lambda: all(info.is_published() for info in sent), what="every PUBACK")
    assert status(b)["dropped_maxlen"] == "0"
    pub.close()
    sub.close()


def test_a_qos0_flood_does_not_push_acknowledged_messages_out_of_a_slow_subscribers_queue(
    broker_factory,
):
    # Queues hold 2,000 messages; the flow limit is 1,000 ready ones.
    b = broker_factory("--mqtt-max-queued", "2000", "--mqtt-max-inflight", "5")
    topic = uid("flood")
    sub = raw_subscriber(b, topic)
    pub = Paho(b)
    pub.connect()
    for i in range(10):  # 5 go out, 5 wait in the queue: all acknowledged
        pub.publish(topic, b"acked %d" % i, qos=1)
    flood = RawMQTT(b)
    flood.connect(uid(), keepalive=1)
    packets = b"".join(publish_packet(topic, b"f" * 1024) for _ in range(10_000))
    # The broker stops reading the flood while the subscriber's queue is congested...
    sending = threading.Thread(target=flood.send, args=(packets,))
    sending.start()
    with pytest.raises(AssertionError):
        # ... and the time it is not read does not count against its keepalive.
        wait_for(lambda: "1.5 x keepalive" in b.log_tail(), timeout=3)
    acked, flooded = set(), 0
    while len(acked) < 10 or flooded < 10_000:
        _, body, qos, _, _, packet_id = sub.read().publish()
        if qos:
            acked.add(body)
            sub.send(ack_packet("puback", packet_id))
        else:
            flooded += 1
    sending.join()
    assert acked == {b"acked %d" % i for i in range(10)}
    assert status(b)["dropped_maxlen"] == "0"
    for client in (pub, flood, sub):
        client.close()
