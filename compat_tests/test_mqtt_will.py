"""MQTT will messages: published whenever a connection ends without DISCONNECT (MQTT-3.1.2-8)."""

from __future__ import annotations

import socket

import pytest

from compat_tests.mqtt_helpers import Paho, RawMQTT, uid

pytestmark = pytest.mark.own_broker


@pytest.fixture
def watcher(broker):
    """A subscriber to every will topic these tests use."""
    client = Paho(broker)
    client.connect()
    base = uid("will")
    client.subscribe((base + "/#", 2))
    client.base = base
    yield client
    client.close()


def test_will_on_network_failure(broker, watcher):
    raw = RawMQTT(broker)
    raw.connect(uid(), will=(watcher.base + "/gone", b"lost", 1, False))
    raw.sock.shutdown(socket.SHUT_RDWR)
    raw.close()
    msg = watcher.message()
    assert (msg.topic, msg.payload, msg.qos) == (watcher.base + "/gone", b"lost", 1)


def test_will_on_keepalive_timeout(broker, watcher):
    raw = RawMQTT(broker)
    raw.connect(uid(), keepalive=1, will=(watcher.base + "/silent", b"timed out", 0, False))
    msg = watcher.message(timeout=6)
    assert (msg.topic, msg.payload) == (watcher.base + "/silent", b"timed out")
    assert raw.closed_by_broker()


def test_will_on_protocol_error(broker, watcher):
    raw = RawMQTT(broker)
    raw.connect(uid(), will=(watcher.base + "/broken", b"bad bytes", 0, False))
    raw.send(b"\x80\x00")  # SUBSCRIBE with its reserved flags cleared
    assert watcher.message().payload == b"bad bytes"
    assert raw.closed_by_broker()


def test_will_on_client_id_takeover(broker, watcher):
    first = RawMQTT(broker)
    client_id = uid()
    first.connect(client_id, will=(watcher.base + "/taken", b"taken over", 1, False))
    second = RawMQTT(broker)
    second.connect(client_id)
    assert first.closed_by_broker()
    msg = watcher.message()
    assert (msg.topic, msg.payload) == (watcher.base + "/taken", b"taken over")
    second.close()


def test_no_will_after_disconnect(broker, watcher):
    raw = RawMQTT(broker)
    raw.connect(uid(), will=(watcher.base + "/polite", b"should not appear", 1, False))
    raw.send(b"\xe0\x00")
    assert raw.closed_by_broker()
    marker = Paho(broker)
    marker.connect()
    marker.publish(watcher.base + "/marker", b"marker", qos=1)
    marker.close()
    assert watcher.messages_until(b"marker") == []


def test_will_qos_and_retain_are_honoured(broker, watcher):
    topic = watcher.base + "/retained-will"
    paho = Paho(broker, will=(topic, b"offline", 2, True))
    paho.connect()
    paho.stop()
    paho.client.socket().shutdown(socket.SHUT_RDWR)
    msg = watcher.message()
    assert (msg.topic, msg.payload, msg.qos, msg.retain) == (topic, b"offline", 2, False)
    late = Paho(broker)
    late.connect()
    late.subscribe((topic, 2))
    msg = late.message()
    assert (msg.payload, msg.qos, msg.retain) == (b"offline", 2, True)
    late.close()


def test_will_of_a_client_connected_at_a_crash_goes_out_at_restart(broker_factory):
    """The broker dying closes the client's connection too: its will must not be lost."""
    b = broker_factory()
    base = uid("crash")
    watcher = Paho(b, client_id=uid("watcher"), clean=False)
    watcher.connect()
    watcher.subscribe((base + "/#", 1))
    watcher.close()
    doomed = RawMQTT(b)
    doomed.connect(uid(), will=(base + "/doomed", b"broker died", 1, True))
    b.restart(kill=True)
    doomed.close()
    watcher = Paho(b, client_id=watcher.client_id, clean=False)
    watcher.connect()
    msg = watcher.message()
    assert (msg.topic, msg.payload) == (base + "/doomed", b"broker died")
    watcher.close()
    late = Paho(b)
    late.connect()
    late.subscribe((base + "/doomed", 1))
    retained = late.message()
    assert (retained.payload, retained.retain) == (b"broker died", True)
    late.close()


def test_a_will_the_client_may_not_publish_is_refused_at_connect(broker, watcher):
    """The will would be published for the client: CONNACK 5 when it could not publish it
    itself, rather than publishing it anyway when the connection ends."""
    name = uid("no-write")
    broker.cli("users", "add", name, "secret")
    broker.cli("permissions", "set", name, ".*", "^mqtt-subscription-.*", ".*")
    raw = RawMQTT(broker)
    will = (watcher.base + "/forbidden", b"forbidden", 1, False)
    assert raw.connect(uid(), username=name, password="secret", will=will) == (False, 5)
    assert raw.closed_by_broker()
    allowed = RawMQTT(broker)
    assert allowed.connect(uid(), username=name, password="secret") == (False, 0)
    allowed.close()
    reserved = RawMQTT(broker)
    assert reserved.connect(uid(), will=("$SYS/forged", b"x", 0, False)) == (False, 5)
    watcher.publish(watcher.base + "/marker", b"marker", qos=2)
    assert watcher.messages_until(b"marker") == []
