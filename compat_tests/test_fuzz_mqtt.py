"""MQTT 3.1.1 fuzzing: mutated sessions get a CONNACK refusal or a closed connection (the only
errors MQTT 3.1.1 has), never a wrong packet, while a pika client on the same broker loses
nothing (see compat_tests/fuzz.py)."""

from __future__ import annotations

import pytest

from compat_tests import fuzz
from compat_tests.mqtt_helpers import (
    ack_packet,
    connect_packet,
    packet,
    publish_packet,
    subscribe_packet,
    unsubscribe_packet,
)

pytestmark = pytest.mark.own_broker

PINGREQ, DISCONNECT = packet(0xC0, b""), packet(0xE0, b"")
#: packet types a server sends (section 2.2.1)
SERVER_TYPES = {2, 3, 4, 5, 6, 7, 9, 11, 13}


def sessions() -> list[list[bytes]]:
    """Valid sessions as the packets a client sends, without waiting for the replies.

    Most connect with an empty client id and a clean session (the broker names each one), so
    parallel cases do not take each other's sessions over; one keeps a session, so some do."""
    pubsub = [
        connect_packet(""),
        subscribe_packet(1, ("fuzz/+/t", 2), ("fuzz/#", 1)),
        publish_packet("fuzz/a/t", b"qos0"),
        publish_packet("fuzz/a/t", b"qos1", qos=1, packet_id=2),
        publish_packet("fuzz/b/t", b"qos2", qos=2, packet_id=3),
        ack_packet("pubrel", 3),
        PINGREQ,
        unsubscribe_packet(4, "fuzz/#"),
        DISCONNECT,
    ]
    will = [
        connect_packet("", keepalive=5, will=("fuzz/will", b"gone", 1, True)),
        publish_packet("fuzz/r", b"retained", qos=1, packet_id=7, retain=True),
        subscribe_packet(8, ("fuzz/r", 1), ("$share/g/fuzz/s", 0)),
        ack_packet("puback", 1),
        ack_packet("pubrec", 9),
        ack_packet("pubcomp", 9),
        publish_packet("fuzz/r", b"", retain=True),
    ]
    persistent = [
        connect_packet("fuzz-kept", clean=False, username="guest", password="guest"),
        subscribe_packet(1, ("fuzz/kept", 1)),
        publish_packet("fuzz/kept", b"x" * 200, qos=1, packet_id=1),
        DISCONNECT,
    ]
    return [pubsub, will, persistent]


def _packets(data: bytes) -> list[tuple[int, int, bytes]]:
    """(type, flags, body) of each packet in `data`, which must hold whole packets only."""
    out = []
    pos = 0
    while pos < len(data):
        first, length, shift = data[pos], 0, 0
        pos += 1
        while True:
            assert pos < len(data), f"broker sent a cut packet: {data[-40:]!r}"
            byte = data[pos]
            pos += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        assert pos + length <= len(data), f"broker sent a cut packet: {data[-40:]!r}"
        out.append((first >> 4, first & 0x0F, data[pos : pos + length]))
        pos += length
    return out


def judge(port: int, host: str, case: fuzz.Case) -> str:
    got = fuzz.exchange(host, port, case.data)
    if not case.data.startswith(b"\x10"):
        assert got.received == b"", f"answered a first packet other than CONNECT: {got.received!r}"
        return "not-connect"
    return check_replies(got.received, got.closed_first)


def check_replies(received: bytes, closed_first: bool) -> str:
    """Checks what the broker sent on one connection; returns the outcome's name."""
    packets = _packets(received)
    if not packets:
        return "closed" if closed_first else "left-open"
    kind, _flags, body = packets[0]
    assert kind == 2 and len(body) == 2, f"first packet is not a CONNACK: {packets[0]!r}"
    code = body[1]
    assert code <= 5 and body[0] in (0, 1), f"bad CONNACK {body!r}"
    if code:
        assert len(packets) == 1 and closed_first, f"refused, then {packets[1:]!r}"
        return f"refused-{code}"
    for kind, _flags, body in packets[1:]:
        assert kind in SERVER_TYPES and kind != 2, f"unexpected packet type {kind}"
        if kind == 9:
            assert all(c in (0, 1, 2, 0x80) for c in body[2:]), f"bad SUBACK {body!r}"
    return "closed" if closed_first else "left-open"


def _run(tmp_path_factory: pytest.TempPathFactory, count: int) -> None:
    with fuzz.fuzzed_broker(tmp_path_factory.mktemp("fuzz-mqtt")) as broker:
        fuzz.fuzz_alongside_client(
            broker, sessions(), lambda case: judge(broker.mqtt_port, broker.host, case), count
        )


@pytest.mark.timeout(fuzz.time_limit(fuzz.case_count(1500)))
def test_fuzz_mqtt(tmp_path_factory):
    _run(tmp_path_factory, fuzz.case_count(1500))


@pytest.mark.slow
@pytest.mark.timeout(fuzz.time_limit(fuzz.case_count(1500, slow=True)))
def test_fuzz_mqtt_long(tmp_path_factory):
    _run(tmp_path_factory, fuzz.case_count(1500, slow=True))
