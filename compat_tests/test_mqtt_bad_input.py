"""Bad MQTT input closes that one connection; the broker keeps serving everyone else."""

from __future__ import annotations

import time

import pytest

from compat_tests.conftest import BrokerProcess
from compat_tests.mqtt_helpers import (
    Paho,
    RawMQTT,
    connect_packet,
    packet,
    publish_packet,
    uid,
)

pytestmark = pytest.mark.own_broker


@pytest.fixture(scope="module")
def strict(tmp_path_factory):
    """A broker with a short handshake timeout, for the half-open connection tests."""
    b = BrokerProcess(tmp_path_factory.mktemp("mqtt-bad") / "data", ["--handshake-timeout", "1"])
    b.start()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def bystander(strict):
    """A healthy client that must keep working whatever the others send."""
    client = Paho(strict)
    client.connect()
    client.topic = uid("bystander")
    client.subscribe((client.topic, 1))
    yield client
    client.close()


def still_serving(bystander: Paho) -> None:
    payload = uid("alive").encode()
    bystander.publish(bystander.topic, payload, qos=1)
    assert bystander.message().payload == payload


CONNECTED_THEN = {
    "malformed remaining length": b"\x30\xff\xff\xff\xff\x01",
    "reserved flags on SUBSCRIBE": packet(0x80, b"\x00\x01\x00\x01a\x00"),
    "reserved flags on PUBREL": packet(0x60, b"\x00\x01"),
    "invalid UTF-8 topic": publish_packet(b"\xff\xfe/t", b"x"),
    "U+0000 in a topic": publish_packet("a\x00b", b"x"),
    "wildcard + in a PUBLISH topic": publish_packet("a/+/c", b"x"),
    "wildcard # in a PUBLISH topic": publish_packet("a/#", b"x"),
    "QoS 3": packet(0x36, b"\x00\x01a\x00\x01x"),
    "DUP at QoS 0": packet(0x38, b"\x00\x01ax"),
    "packet identifier 0": publish_packet("a", b"x", qos=1, packet_id=0),
    "SUBSCRIBE without filters": packet(0x82, b"\x00\x01"),
    "SUBSCRIBE asking for QoS 3": packet(0x82, b"\x00\x01\x00\x01a\x03"),
    "server-only packet type": packet(0x20, b"\x00\x00"),
    "reserved packet type 15": packet(0xF0, b""),
    "second CONNECT": connect_packet("again"),
    "oversized packet (header only)": b"\x30" + bytes((0x80, 0x80, 0x80, 0x7F)),
}


@pytest.mark.parametrize("data", CONNECTED_THEN.values(), ids=list(CONNECTED_THEN))
def test_bad_packet_after_connect_closes_the_connection(strict, bystander, data):
    raw = RawMQTT(strict)
    assert raw.connect(uid()) == (False, 0)
    raw.send(data)
    assert raw.closed_by_broker()
    still_serving(bystander)


BEFORE_CONNECT = {
    "PINGREQ before CONNECT": b"\xc0\x00",
    "PUBLISH before CONNECT": publish_packet("a", b"x"),
    "CONNECT with the reserved flag": packet(0x10, b"\x00\x04MQTT\x04\x03\x00\x3c\x00\x01a"),
    "CONNECT with a password but no user name": packet(
        0x10, b"\x00\x04MQTT\x04\x42\x00\x3c\x00\x01a\x00\x01p"
    ),
    "CONNECT with will QoS but no will": packet(0x10, b"\x00\x04MQTT\x04\x0a\x00\x3c\x00\x01a"),
    "unknown protocol name": packet(0x10, b"\x00\x04HTTP\x04\x02\x00\x3c\x00\x01a"),
    "HTTP request": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
}


@pytest.mark.parametrize("data", BEFORE_CONNECT.values(), ids=list(BEFORE_CONNECT))
def test_bad_first_packet_closes_the_connection(strict, bystander, data):
    raw = RawMQTT(strict)
    raw.send(data)
    assert raw.closed_by_broker()
    still_serving(bystander)


def test_half_open_connection_without_connect_is_closed(strict, bystander):
    silent = RawMQTT(strict)
    partial = RawMQTT(strict)
    partial.send(connect_packet(uid())[:7])
    start = time.monotonic()
    assert silent.closed_by_broker(timeout=5)
    assert partial.closed_by_broker(timeout=5)
    assert time.monotonic() - start < 4
    still_serving(bystander)


def test_half_open_connected_client_is_closed_by_keepalive(strict, bystander):
    raw = RawMQTT(strict)
    assert raw.connect(uid(), keepalive=1) == (False, 0)
    raw.send(publish_packet("half", b"x")[:3])  # a packet that never completes
    assert raw.closed_by_broker(timeout=5)
    still_serving(bystander)


def test_many_bad_connections_at_once(strict, bystander):
    raws = [RawMQTT(strict) for _ in range(20)]
    for i, raw in enumerate(raws):
        raw.send(b"\x30\xff\xff\xff\xff\x01" if i % 2 else b"\xc0\x00")
    assert all(raw.closed_by_broker() for raw in raws)
    still_serving(bystander)
