"""MQTT CONNECT: validation, return codes, users and vhosts, keepalive, client-id takeover."""

from __future__ import annotations

import time

import pytest

from compat_tests.mqtt_helpers import Paho, RawMQTT, connect_packet, uid

pytestmark = pytest.mark.own_broker

# paho 2.x reports MQTT 3.1.1 CONNACK return codes as MQTT 5 reason codes
PAHO_BAD_CREDENTIALS = 134
PAHO_NOT_AUTHORIZED = 135


def test_connect_and_assigned_client_id(broker):
    client = Paho(broker, client_id="", clean=True)
    code, present = client.connect()
    assert (code, present) == (0, False)
    client.subscribe(("assigned/t", 1))
    client.publish("assigned/t", b"x", qos=1)
    assert client.message().payload == b"x"
    client.close()


def test_unsupported_protocol_level_gets_return_code_1(broker):
    raw = RawMQTT(broker)
    assert raw.connect(uid(), level=3, name="MQIsdp") == (False, 1)
    assert raw.closed_by_broker()


def test_empty_client_id_with_clean_session_0_gets_return_code_2(broker):
    raw = RawMQTT(broker)
    assert raw.connect("", clean=False) == (False, 2)
    assert raw.closed_by_broker()


def test_bad_password_gets_return_code_4(broker):
    raw = RawMQTT(broker)
    assert raw.connect(uid(), password="wrong") == (False, 4)
    assert raw.closed_by_broker()
    code, _ = Paho(broker, password="wrong").connect(expect_ok=False)
    assert code == PAHO_BAD_CREDENTIALS


def test_unknown_user_gets_return_code_4(broker):
    code, _ = Paho(broker, username="nobody-" + uid(), password="x").connect(expect_ok=False)
    assert code == PAHO_BAD_CREDENTIALS


def test_user_without_vhost_permission_gets_return_code_5(broker):
    name = uid("user")
    broker.cli("users", "add", name, "secret")
    code, _ = Paho(broker, username=name, password="secret").connect(expect_ok=False)
    assert code == PAHO_NOT_AUTHORIZED
    raw = RawMQTT(broker)
    assert raw.connect(uid(), username=name, password="secret") == (False, 5)


def test_anonymous_refused_by_default(broker):
    raw = RawMQTT(broker)
    assert raw.connect(uid(), username=None, password=None) == (False, 5)
    code, _ = Paho(broker, username=None).connect(expect_ok=False)
    assert code == PAHO_NOT_AUTHORIZED


def test_anonymous_allowed_when_configured(broker_factory):
    b = broker_factory("--mqtt-allow-anonymous")
    client = Paho(b, username=None)
    client.connect()
    client.subscribe(("anon/t", 0))
    client.publish("anon/t", b"hi")
    assert client.message().payload == b"hi"
    client.close()


def test_vhost_in_user_name_isolates_tenants(broker):
    vhost = uid("vh")
    broker.cli("vhosts", "add", vhost)
    broker.cli("permissions", "set", "guest", ".*", ".*", ".*", "--vhost", vhost)
    inside = Paho(broker, username=f"{vhost}:guest")
    outside = Paho(broker)
    inside.connect()
    outside.connect()
    inside.subscribe(("tenant/t", 0))
    outside.subscribe(("tenant/t", 0), ("tenant/marker", 0))
    inside.publish("tenant/t", b"in the vhost", qos=1)
    assert inside.message().payload == b"in the vhost"
    outside.publish("tenant/marker", b"marker", qos=1)
    assert outside.messages_until(b"marker") == []
    inside.close()
    outside.close()


def test_second_connect_is_a_protocol_violation(broker):
    raw = RawMQTT(broker)
    assert raw.connect(uid()) == (False, 0)
    raw.send(connect_packet(uid()))
    assert raw.closed_by_broker()


def test_pingreq_gets_pingresp_and_keeps_the_connection(broker):
    raw = RawMQTT(broker)
    assert raw.connect(uid(), keepalive=1) == (False, 0)
    start = time.monotonic()
    # Pings every half second keep a 1 s keepalive alive well past its 1.5 s deadline.
    while time.monotonic() - start < 2.5:
        raw.send(b"\xc0\x00")
        assert raw.read(timeout=2).type == 13
        time.sleep(0.5)
    raw.send(b"\xc0\x00")
    assert raw.read(timeout=2).type == 13
    raw.close()


def test_silent_client_is_closed_after_one_and_a_half_keepalives(broker):
    raw = RawMQTT(broker)
    assert raw.connect(uid(), keepalive=1) == (False, 0)
    start = time.monotonic()
    assert raw.closed_by_broker(timeout=5)
    assert 1.4 <= time.monotonic() - start < 4


def test_paho_keepalive_pings_keep_the_session(broker):
    client = Paho(broker, keepalive=1)
    client.connect()
    client.subscribe(("ka/t", 0))
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:
        assert client.disconnects.empty()
        time.sleep(0.25)
    client.publish("ka/t", b"still here")
    assert client.message().payload == b"still here"
    client.close()


def test_second_connection_with_same_client_id_takes_over(broker):
    client_id = uid("dup")
    first = Paho(broker, client_id=client_id)
    first.client.reconnect_delay_set(min_delay=60, max_delay=60)
    first.connect()
    second = Paho(broker, client_id=client_id)
    second.connect()
    assert first.disconnected() != 0  # closed by the broker, not by the client
    second.subscribe(("takeover/t", 1))
    second.publish("takeover/t", b"mine", qos=1)
    assert second.message().payload == b"mine"
    first.stop()
    second.close()
