"""The MQTT codec and topic mapping, byte by byte, with no network."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.protocols.mqtt import codec
from broker.protocols.mqtt.codec import PacketReader, ProtocolError
from broker.protocols.mqtt.session import Session
from broker.protocols.mqtt.topics import (
    filter_matches,
    shared_filter,
    to_pattern,
    to_routing_key,
    to_topic,
    valid_filter,
)


def read_all(data: bytes, max_size: int = 1 << 20) -> list[codec.Packet]:
    reader = PacketReader(max_size)
    reader.feed(data)
    out = []
    while (packet := reader.next_packet()) is not None:
        out.append(packet)
    return out


def connect_body(flags: int, payload: bytes, level: int = 4) -> bytes:
    return b"\x00\x04MQTT" + bytes((level, flags)) + b"\x00\x3c" + payload


def test_connect_with_will_user_and_password():
    payload = b"\x00\x03cid" + b"\x00\x01w\x00\x02wp" + b"\x00\x01u" + b"\x00\x02pw"
    flags = 0x80 | 0x40 | 0x20 | (1 << 3) | 0x04 | 0x02
    (packet,) = read_all(b"\x10" + bytes((10 + len(payload),)) + connect_body(flags, payload))
    assert packet == codec.Connect(
        "MQTT", 4, True, 60, "cid", codec.Will("w", b"wp", 1, True), "u", b"pw"
    )


def test_connect_of_another_protocol_level_stops_at_the_level():
    body = b"\x00\x06MQIsdp\x03\x02\x00\x3c\x00\x01a"
    (packet,) = read_all(b"\x10" + bytes((len(body),)) + body)
    assert (packet.protocol_name, packet.level) == ("MQIsdp", 3)


@pytest.mark.parametrize(
    "flags,payload",
    [
        (0x03, b"\x00\x01a"),  # reserved flag
        (0x42, b"\x00\x01a\x00\x01p"),  # password without user name
        (0x0A, b"\x00\x01a"),  # will QoS without a will
        (0x1E, b"\x00\x01a\x00\x01w\x00\x00"),  # will QoS 3
        (0x06, b"\x00\x01a\x00\x03w/+\x00\x00"),  # wildcard in the will topic
        (0x02, b"\x00\x01a\x00"),  # trailing bytes
    ],
)
def test_malformed_connect(flags, payload):
    body = connect_body(flags, payload)
    with pytest.raises(ProtocolError):
        read_all(b"\x10" + bytes((len(body),)) + body)


def test_publish_round_trip_and_split_input():
    data = codec.publish(b"a/b", b"payload", 1, True, True, 513)
    reader = PacketReader()
    for i in range(len(data) - 1):
        reader.feed(data[i : i + 1])
        assert reader.next_packet() is None
    reader.feed(data[-1:])
    assert reader.next_packet() == codec.Publish("a/b", b"payload", 1, True, True, 513)


@pytest.mark.parametrize("chunk", [1, 3, 7, 64, 1000])
def test_packets_cut_at_any_read_boundary(chunk):
    """A big packet between small ones, fed in chunks: each packet comes out once, whole."""
    sent = [
        codec.Publish("a/b", b"x" * 5, 0),
        codec.Publish("a/b", b"y" * 300, 1, False, False, 7),
        codec.Publish("c", b"", 0),
        codec.Publish("a/b", b"z" * 20_000, 2, True, False, 8),
        codec.Publish("a/b", b"w", 0),
    ]
    data = (
        b"".join(
            codec.publish(p.topic.encode(), p.payload, p.qos, p.retain, p.dup, p.packet_id)
            for p in sent
        )
        + b"\xc0\x00"
    )
    reader = PacketReader()
    out = []
    for i in range(0, len(data), chunk):
        reader.feed(data[i : i + chunk])
        while (packet := reader.next_packet()) is not None:
            out.append(packet)
    assert out == [*sent, codec.PingReq()]


@given(st.integers(min_value=0, max_value=codec.MAX_REMAINING_LENGTH))
def test_remaining_length_round_trip(n):
    encoded = codec._remaining_length(n)
    assert len(encoded) <= 4
    reader = PacketReader(max_packet_size=0)
    reader.feed(b"\x30" + encoded)
    # The size check runs on the header alone, so even huge lengths decode without a body.
    with pytest.raises(codec.PacketTooLarge, match=f"packet of {1 + len(encoded) + n} bytes"):
        reader.next_packet()


@pytest.mark.parametrize(
    "data",
    [
        b"\x30\xff\xff\xff\xff\x01",  # five length bytes
        b"\x36\x04\x00\x01a\x00",  # QoS 3
        b"\x38\x04\x00\x01ax",  # DUP at QoS 0
        b"\x30\x04\x00\x02\xc3\x28",  # invalid UTF-8
        b"\x30\x05\x00\x03a\x00b",  # U+0000
        b"\x30\x05\x00\x03a/+",  # wildcard
        b"\x32\x05\x00\x01a\x00\x00",  # packet id 0
        b"\x80\x06\x00\x01\x00\x01a\x00",  # SUBSCRIBE with flags 0
        b"\x82\x02\x00\x01",  # SUBSCRIBE without filters
        b"\x82\x06\x00\x01\x00\x01a\x04",  # requested QoS byte 4
        b"\x60\x02\x00\x01",  # PUBREL with flags 0
        b"\x40\x03\x00\x01\x00",  # PUBACK of length 3
        b"\xc0\x01\x00",  # PINGREQ with a payload
        b"\x20\x02\x00\x00",  # CONNACK from a client
        b"\xf0\x00",  # reserved type 15
    ],
)
def test_malformed_packets(data):
    with pytest.raises(ProtocolError):
        read_all(data)


def test_server_packets():
    assert codec.connack(True, 0) == b"\x20\x02\x01\x00"
    assert codec.connack(True, 5) == b"\x20\x02\x00\x05"  # never "present" when refused
    assert codec.ack(codec.PUBREL, 258) == b"\x62\x02\x01\x02"
    assert codec.suback(1, [0, 2, 0x80]) == b"\x90\x05\x00\x01\x00\x02\x80"
    big = codec.publish(b"t", b"x" * 200, 0, False, False, 0)
    assert big[:3] == b"\x30\xcb\x01"  # 203 = 0xCB 0x01


@pytest.mark.parametrize(
    "topic_filter,valid",
    [("a/+/b", True), ("#", True), ("+", True), ("a/#", True), ("/", True), ("a/#/b", False)]
    + [("a+", False), ("a/b#", False), ("", False)],
)
def test_valid_filters(topic_filter, valid):
    assert valid_filter(topic_filter) is valid


@pytest.mark.parametrize(
    "topic_filter,topic,matches",
    [
        ("a/+/c", "a/b/c", True),
        ("a/+/c", "a/b/d/c", False),
        ("a/#", "a", True),
        ("a/#", "a/b/c", True),
        ("+/+", "/x", True),
        ("#", "$SYS/x", False),
        ("+/x", "$SYS/x", False),
        ("$SYS/#", "$SYS/x", True),
        ("a/*", "a/b", False),  # `*` is no wildcard in MQTT
    ],
)
def test_filter_matching(topic_filter, topic, matches):
    assert filter_matches(topic_filter, topic) is matches


def test_topic_and_routing_key_mapping():
    assert to_routing_key("sensors/v1.2/temp") == "sensors.v1/2.temp"
    assert to_topic("sensors.v1/2.temp") == "sensors/v1.2/temp"
    assert to_pattern("sensors/+/v1.2/#") == "sensors.*.v1/2.#"


@pytest.mark.parametrize(
    "topic_filter, parsed",
    [
        ("$share/g/a/+", ("g", "a/+")),
        ("$share/g/#", ("g", "#")),
        ("a/b", None),
        ("$share", None),  # no `/` after it: a plain filter
        ("$share//a", ValueError),
        ("$share/g+/a", ValueError),
        ("$share/g#/a", ValueError),
        ("$share/g", ValueError),
        ("$share/g/", ValueError),
        ("$share/g/$SYS/#", ValueError),
    ],
)
def test_shared_filters(topic_filter, parsed):
    if parsed is ValueError:
        with pytest.raises(ValueError):
            shared_filter(topic_filter)
    else:
        assert shared_filter(topic_filter) == parsed


def test_a_restored_session_drops_filters_no_longer_granted():
    session = Session("/", "c", persistent=True)
    saved = {"a/#": 1, "$share/g/t": 2, "$SYS/#": 0, "$share//t": 1}
    session.restore({"session": {"subscriptions": saved}})
    assert session.subscriptions == {"a/#": 1, "$share/g/t": 2}
    assert session.patterns() == {"a.#"}
    assert session.shared() == {"mqtt-shared-g/t": ("$share/g/t", "t")}


def test_a_restored_session_keeps_sys_filters_for_a_monitoring_user():
    session = Session("/", "c", persistent=True)
    saved = {"a/#": 1, "$SYS/#": 0, "$SYS/a/#/b": 0}
    session.restore({"session": {"subscriptions": saved}}, monitoring=True)
    assert session.subscriptions == {"a/#": 1, "$SYS/#": 0}
    assert session.patterns() == {"a.#", "$SYS.#"}
