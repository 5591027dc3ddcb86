"""AMQP 0-9-1 frame encoding and decoding on top of pamqp, with fast paths for hot frames.

pamqp decodes everything; the few frames on the message hot path (basic.publish, basic.ack,
content bodies, basic.deliver) are packed and unpacked here with `struct` directly, which is
several times cheaper and byte-identical.
"""

from __future__ import annotations

import struct
from functools import lru_cache
from typing import Any

from pamqp import commands as spec
from pamqp import decode as pdecode
from pamqp import encode, frame
from pamqp.base import Frame

# RabbitMQ's own field-table integer types, which every RabbitMQ client decodes.
encode.support_deprecated_rabbitmq(True)

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
FRAME_METHOD = 1
FRAME_HEADER = 2
FRAME_BODY = 3
FRAME_HEARTBEAT = 8
FRAME_END = 0xCE
FRAME_END_BYTE = b"\xce"
FRAME_HEADER_STRUCT = struct.Struct(">BHI")
HEARTBEAT_FRAME = b"\x08\x00\x00\x00\x00\x00\x00\xce"
#: class and method ids of the hot frames
PUBLISH_ID = (60 << 16) | 40
ACK_ID = (60 << 16) | 80
_METHOD_ID = struct.Struct(">I")
_ACK = struct.Struct(">QB")
_DELIVER_HEAD = struct.Struct(">BHIHH")
_CONTENT_HEAD = struct.Struct(">BHIHHQ")
_DELIVERY_TAG = struct.Struct(">QB")

PROPERTY_NAMES = spec.Basic.Properties.__slots__


class FrameError(Exception):
    """The peer sent bytes that do not form a valid frame (AMQP 501 FRAME_ERROR)."""


class SyntaxError_(Exception):
    """A frame is well-formed but its payload does not decode (AMQP 502 SYNTAX_ERROR)."""


def method_id(payload: bytes | memoryview) -> int:
    """The class and method ids of a method frame, as one number."""
    if len(payload) < 4:
        raise SyntaxError_(f"a method frame of {len(payload)} bytes has no class and method ids")
    return int(_METHOD_ID.unpack_from(payload, 0)[0])


def decode_method(payload: bytes) -> Frame:
    """Decode a method frame payload with pamqp."""
    try:
        return frame._unmarshal_method_frame(payload)
    except Exception as exc:
        raise SyntaxError_(str(exc)) from exc


def decode_publish(payload: bytes) -> tuple[str, str, bool, bool]:
    """Fast path for basic.publish: (exchange, routing_key, mandatory, immediate)."""
    try:
        pos = 6  # class, method, reserved-1
        n = payload[pos]
        exchange = payload[pos + 1 : pos + 1 + n].decode()
        pos += 1 + n
        n = payload[pos]
        routing_key = payload[pos + 1 : pos + 1 + n].decode()
        bits = payload[pos + 1 + n]
    except (IndexError, UnicodeDecodeError) as exc:
        raise SyntaxError_("malformed basic.publish") from exc
    return exchange, routing_key, bool(bits & 1), bool(bits & 2)


def decode_ack(payload: bytes) -> tuple[int, bool]:
    """Fast path for basic.ack: (delivery_tag, multiple)."""
    try:
        tag, bits = _ACK.unpack_from(payload, 4)
    except struct.error as exc:
        raise SyntaxError_("malformed basic.ack") from exc
    return tag, bool(bits & 1)


#: (flag bit, property name, AMQP type) in wire order, for basic's content header
_PROPERTY_LAYOUT = (
    (0x8000, "content_type", "s"),
    (0x4000, "content_encoding", "s"),
    (0x2000, "headers", "F"),
    (0x1000, "delivery_mode", "o"),
    (0x0800, "priority", "o"),
    (0x0400, "correlation_id", "s"),
    (0x0200, "reply_to", "s"),
    (0x0100, "expiration", "s"),
    (0x0080, "message_id", "s"),
    (0x0040, "timestamp", "T"),
    (0x0020, "message_type", "s"),
    (0x0010, "user_id", "s"),
    (0x0008, "app_id", "s"),
    (0x0004, "cluster_id", "s"),
)
_HEADER_PREFIX = struct.Struct(">HHQH")


def decode_content_header(payload: bytes) -> tuple[int, dict[str, Any], bytes]:
    """(body size, properties dict, raw property bytes) of a content header payload.

    Hand-written rather than pamqp's generic decoder: this runs once per published message.
    """
    try:
        class_id, _, body_size, flags = _HEADER_PREFIX.unpack_from(payload, 0)
        if class_id != 60:
            raise SyntaxError_("content header for a class other than basic")
        if flags & 1:
            raise SyntaxError_("content header property flags continue past 16 bits")
        props = RawProperties({}, payload[12:])
        pos = 14
        for bit, name, kind in _PROPERTY_LAYOUT:
            if not flags & bit:
                continue
            if kind == "s":
                n = payload[pos]
                props[name] = payload[pos + 1 : pos + 1 + n].decode()
                pos += 1 + n
            elif kind == "o":
                props[name] = payload[pos]
                pos += 1
            elif kind == "F":
                used, props[name] = pdecode.field_table(payload[pos:])
                pos += used
            else:
                used, props[name] = pdecode.timestamp(payload[pos:])
                pos += used
        if pos > len(payload):
            raise SyntaxError_("content header properties are truncated")
    except (struct.error, IndexError, ValueError, UnicodeDecodeError) as exc:
        raise SyntaxError_(f"malformed content header: {exc}") from exc
    return body_size, props, props.raw


class _PassedOnProperties(spec.Basic.Properties):
    """Basic.Properties without pamqp's checks (delivery-mode 1 or 2, no cluster-id): a
    message goes on with the properties it was published with, as RabbitMQ passes them."""

    def validate(self) -> None:
        return None


def encode_properties(properties: dict[str, Any]) -> bytes:
    """Property flags and values, as they follow weight and body size in a content header."""
    known = {k: v for k, v in properties.items() if k in PROPERTY_NAMES}
    return _PassedOnProperties(**known).marshal()


def method_frame(channel: int, method: Frame) -> bytes:
    return frame.marshal(method, channel)


def content_frames(channel: int, raw_properties: bytes, body: bytes, frame_max: int) -> bytes:
    """Content header and body frames, the body split so no frame exceeds frame_max."""
    return b"".join(content_parts(channel, raw_properties, body, frame_max))


def content_parts(channel: int, raw_properties: bytes, body: bytes, frame_max: int) -> list[bytes]:
    """The pieces of `content_frames`, to be joined once with other output."""
    size = len(body)
    parts = [
        _CONTENT_HEAD.pack(FRAME_HEADER, channel, 12 + len(raw_properties), 60, 0, size),
        raw_properties,
        FRAME_END_BYTE,
    ]
    chunk = frame_max - 8
    for start in range(0, size, chunk):
        piece = body[start : start + chunk]
        parts.append(FRAME_HEADER_STRUCT.pack(FRAME_BODY, channel, len(piece)))
        parts.append(piece)
        parts.append(FRAME_END_BYTE)
    return parts


@lru_cache(maxsize=4096)
def deliver_frame_parts(
    channel: int, consumer_tag: str, exchange: str, routing_key: str
) -> tuple[bytes, bytes]:
    """basic.deliver around its delivery tag and redelivered bit: (before them, after them).

    Cached: a consumer's deliveries share all but the tag, so each costs one struct pack.
    """
    tag = consumer_tag.encode()
    ex = exchange.encode()
    rk = routing_key.encode()
    size = 16 + len(tag) + len(ex) + len(rk)  # ids 4, three lengths 3, tag 8, bits 1
    before = _DELIVER_HEAD.pack(FRAME_METHOD, channel, size, 60, 60) + bytes((len(tag),)) + tag
    after = bytes((len(ex),)) + ex + bytes((len(rk),)) + rk + FRAME_END_BYTE
    return before, after


def delivery_tag(delivery_tag: int, redelivered: bool) -> bytes:
    """The middle of a basic.deliver (see deliver_frame_parts)."""
    return _DELIVERY_TAG.pack(delivery_tag, 1 if redelivered else 0)


def deliver_frame(
    channel: int,
    consumer_tag: str,
    delivery_tag_: int,
    redelivered: bool,
    exchange: str,
    routing_key: str,
) -> bytes:
    """basic.deliver packed by hand (the hottest outgoing frame)."""
    before, after = deliver_frame_parts(channel, consumer_tag, exchange, routing_key)
    return b"".join((before, delivery_tag(delivery_tag_, redelivered), after))


class RawProperties(dict[str, Any]):
    """Message properties that remember the content-header bytes they were decoded from.

    The core sees an ordinary dict; a delivery whose properties were never changed (by
    dead-lettering, say, which builds a plain dict) reuses the publisher's bytes instead of
    encoding them again.
    """

    __slots__ = ("raw",)

    def __init__(self, values: dict[str, Any], raw: bytes) -> None:
        super().__init__(values)
        self.raw = raw


def properties_bytes(properties: dict[str, Any]) -> bytes:
    raw = getattr(properties, "raw", None)
    if raw is not None:
        return raw
    return encode_properties(properties)
