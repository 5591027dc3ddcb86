"""MQTT 3.1.1 packets, hand-written: bytes in, packet objects out, and packets back to bytes.

Sans-IO: `PacketReader.feed()` takes bytes and `next_packet()` returns one decoded packet
at a time. Anything the specification calls malformed or a protocol violation raises
`ProtocolError`; the server's only answer to those is closing the connection (section 4.8).
PUBLISH is the hot path in both directions, so it is parsed straight from the received chunk
(one copy of the payload, known topic names not decoded again) and built as a header that
goes out in front of the untouched payload.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

CONNECT = 1
CONNACK = 2
PUBLISH = 3
PUBACK = 4
PUBREC = 5
PUBREL = 6
PUBCOMP = 7
SUBSCRIBE = 8
SUBACK = 9
UNSUBSCRIBE = 10
UNSUBACK = 11
PINGREQ = 12
PINGRESP = 13
DISCONNECT = 14

#: the fixed-header flags every packet type but PUBLISH must carry (section 2.2.2)
_REQUIRED_FLAGS = {
    CONNECT: 0,
    PUBACK: 0,
    PUBREC: 0,
    PUBREL: 2,
    PUBCOMP: 0,
    SUBSCRIBE: 2,
    UNSUBSCRIBE: 2,
    PINGREQ: 0,
    DISCONNECT: 0,
}
#: the largest value a four-byte remaining length can hold
MAX_REMAINING_LENGTH = 268_435_455
_U16 = struct.Struct(">H")

# CONNACK return codes
ACCEPTED = 0
UNACCEPTABLE_PROTOCOL_VERSION = 1
IDENTIFIER_REJECTED = 2
SERVER_UNAVAILABLE = 3
BAD_USERNAME_OR_PASSWORD = 4
NOT_AUTHORIZED = 5
#: SUBACK return code for a refused subscription
SUBSCRIPTION_FAILURE = 0x80


class ProtocolError(Exception):
    """The client sent a malformed packet or broke the protocol: close the connection."""


class PacketTooLarge(ProtocolError):
    """A packet is larger than the server's configured limit."""


@dataclass(slots=True)
class Will:
    topic: str
    payload: bytes
    qos: int
    retain: bool


@dataclass(slots=True)
class Connect:
    protocol_name: str
    level: int
    clean_session: bool = True
    keepalive: int = 0
    client_id: str = ""
    will: Will | None = None
    username: str | None = None
    password: bytes | None = None


@dataclass(slots=True)
class Publish:
    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    dup: bool = False
    packet_id: int = 0


@dataclass(slots=True)
class Ack:
    """PUBACK, PUBREC, PUBREL or PUBCOMP: a packet type and a packet identifier."""

    type: int
    packet_id: int


@dataclass(slots=True)
class Subscribe:
    packet_id: int
    #: (topic filter, requested QoS) in the client's order
    topics: list[tuple[str, int]] = field(default_factory=list)


@dataclass(slots=True)
class Unsubscribe:
    packet_id: int
    filters: list[str] = field(default_factory=list)


@dataclass(slots=True)
class PingReq:
    pass


@dataclass(slots=True)
class Disconnect:
    pass


Packet = Connect | Publish | Ack | Subscribe | Unsubscribe | PingReq | Disconnect
_PINGREQ = PingReq()
_DISCONNECT = Disconnect()


class PacketReader:
    """Splits a byte stream into packets and decodes them.

    Packets are decoded straight out of the chunks fed in, with an offset, so a PUBLISH
    costs one copy of its payload. A packet cut by a read boundary waits in `_more` until
    enough bytes for all of it have arrived, then its parts are joined once (so a large
    packet arriving in many reads is not copied again on every read).
    """

    # One per connection, and a fleet's devices are many.
    __slots__ = ("max_packet_size", "_data", "_pos", "_more", "_more_size", "_need", "_topics")

    def __init__(self, max_packet_size: int = MAX_REMAINING_LENGTH + 5) -> None:
        self.max_packet_size = max_packet_size
        #: the chunk being decoded, from `_pos` on
        self._data = b""
        self._pos = 0
        #: chunks fed while the packet at `_pos` is incomplete, and their total size
        self._more: list[bytes] = []
        self._more_size = 0
        #: the size the incomplete packet at `_pos` needs (0 while its header is incomplete)
        self._need = 0
        #: encoded topic name -> validated topic (publishers repeat a few topics)
        self._topics: dict[bytes, str] = {}

    @property
    def buffered(self) -> int:
        """Bytes fed and not decoded yet."""
        return len(self._data) - self._pos + self._more_size

    def feed(self, data: bytes) -> None:
        if not data:
            return
        if self._pos >= len(self._data) and not self._more:
            self._data, self._pos = bytes(data), 0
        else:
            self._more.append(bytes(data))
            self._more_size += len(data)

    def next_packet(self) -> Packet | None:
        """The next complete packet, or None until more bytes arrive."""
        if self._more:
            if self._need and len(self._data) - self._pos + self._more_size < self._need:
                return None
            self._data = b"".join((self._data[self._pos :], *self._more))
            self._pos = 0
            self._more.clear()
            self._more_size = 0
        buf, start = self._data, self._pos
        n = len(buf)
        if n - start < 2:
            self._need = 0
            return None
        # Remaining length: up to four bytes, seven bits each (section 2.2.3).
        byte = buf[start + 1]
        if byte < 0x80:
            length, pos = byte, start + 2
        else:
            length, shift, pos = byte & 0x7F, 7, start + 2
            while True:
                if pos >= n:
                    self._need = 0
                    return None
                byte = buf[pos]
                length |= (byte & 0x7F) << shift
                pos += 1
                if not byte & 0x80:
                    break
                if pos - start == 5:
                    raise ProtocolError("malformed remaining length (more than four bytes)")
                shift += 7
        end = pos + length
        if end - start > self.max_packet_size:
            raise PacketTooLarge(
                f"packet of {end - start} bytes exceeds the limit of {self.max_packet_size}"
            )
        if n < end:
            self._need = end - start
            return None
        self._pos = end
        first = buf[start]
        if first >> 4 == PUBLISH:
            return _publish_from(first & 0x0F, buf, pos, end, self._topics)
        return decode(first >> 4, first & 0x0F, buf[pos:end])


def decode(ptype: int, flags: int, body: bytes) -> Packet:
    """Decode one client-to-server packet from its type, flags and variable part."""
    if ptype == PUBLISH:
        return _decode_publish(flags, body)
    required = _REQUIRED_FLAGS.get(ptype)
    if required is None:
        raise ProtocolError(f"packet type {ptype} is not allowed from a client")
    if flags != required:
        raise ProtocolError(f"reserved flags {flags:#x} set on packet type {ptype}")
    if PUBACK <= ptype <= PUBCOMP:
        if len(body) != 2:
            raise ProtocolError(f"packet type {ptype} must have a remaining length of 2")
        return Ack(ptype, _U16.unpack(body)[0])
    if ptype in (PINGREQ, DISCONNECT):
        if body:
            raise ProtocolError(f"packet type {ptype} must have no payload")
        return _PINGREQ if ptype == PINGREQ else _DISCONNECT
    if ptype == CONNECT:
        return _decode_connect(body)
    if ptype == SUBSCRIBE:
        return _decode_subscribe(body)
    return _decode_unsubscribe(body)


def _string(body: bytes, pos: int) -> tuple[str, int]:
    raw, pos = _binary(body, pos)
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise ProtocolError("string is not well-formed UTF-8") from None
    if "\x00" in text:
        raise ProtocolError("string contains U+0000")
    return text, pos


def _binary(body: bytes, pos: int) -> tuple[bytes, int]:
    if pos + 2 > len(body):
        raise ProtocolError("packet ends inside a length field")
    size = (body[pos] << 8) | body[pos + 1]
    pos += 2
    if pos + size > len(body):
        raise ProtocolError("packet ends inside a string")
    return body[pos : pos + size], pos + size


def _packet_id(body: bytes, pos: int) -> int:
    if pos + 2 > len(body):
        raise ProtocolError("packet ends before its packet identifier")
    packet_id = (body[pos] << 8) | body[pos + 1]
    if packet_id == 0:
        raise ProtocolError("packet identifier 0 is not allowed")
    return packet_id


def _decode_publish(flags: int, body: bytes) -> Publish:
    return _publish_from(flags, body, 0, len(body), None)


#: topic names a reader remembers as valid before it starts over
_TOPIC_CACHE_SIZE = 1024


def _publish_from(
    flags: int, data: bytes, pos: int, end: int, topics: dict[bytes, str] | None
) -> Publish:
    """The PUBLISH whose variable part is `data[pos:end]`; `topics` caches valid names."""
    qos = (flags >> 1) & 3
    if qos == 3:
        raise ProtocolError("PUBLISH with QoS 3")
    dup = bool(flags & 8)
    if dup and qos == 0:
        raise ProtocolError("PUBLISH with DUP set at QoS 0")
    if pos + 2 > end:
        raise ProtocolError("packet ends inside a length field")
    size = (data[pos] << 8) | data[pos + 1]
    pos += 2
    if pos + size > end:
        raise ProtocolError("packet ends inside a string")
    raw = data[pos : pos + size]
    pos += size
    topic = topics.get(raw) if topics is not None else None
    if topic is None:
        topic = _topic_name(raw)
        if topics is not None:
            if len(topics) >= _TOPIC_CACHE_SIZE:
                topics.clear()
            topics[raw] = topic
    packet_id = 0
    if qos:
        if pos + 2 > end:
            raise ProtocolError("packet ends before its packet identifier")
        packet_id = (data[pos] << 8) | data[pos + 1]
        if packet_id == 0:
            raise ProtocolError("packet identifier 0 is not allowed")
        pos += 2
    return Publish(topic, data[pos:end], qos, bool(flags & 1), dup, packet_id)


def _topic_name(raw: bytes) -> str:
    """A PUBLISH topic name: well-formed UTF-8, not empty, no wildcards."""
    try:
        topic = raw.decode()
    except UnicodeDecodeError:
        raise ProtocolError("string is not well-formed UTF-8") from None
    if "\x00" in topic:
        raise ProtocolError("string contains U+0000")
    if not topic:
        raise ProtocolError("PUBLISH with an empty topic name")
    if "+" in topic or "#" in topic:
        raise ProtocolError(f"wildcard in PUBLISH topic name '{topic}'")
    return topic


def _decode_connect(body: bytes) -> Connect:
    name, pos = _string(body, 0)
    if pos >= len(body):
        raise ProtocolError("CONNECT ends before the protocol level")
    level = body[pos]
    if name != "MQTT" or level != 4:
        # Enough to answer "unacceptable protocol version"; the rest may be another format.
        return Connect(name, level)
    if pos + 4 > len(body):
        raise ProtocolError("CONNECT ends inside its variable header")
    flags = body[pos + 1]
    keepalive = (body[pos + 2] << 8) | body[pos + 3]
    pos += 4
    if flags & 0x01:
        raise ProtocolError("CONNECT reserved flag is set")
    will_flag, will_qos, will_retain = flags & 0x04, (flags >> 3) & 3, bool(flags & 0x20)
    has_user, has_password = flags & 0x80, flags & 0x40
    if will_qos == 3:
        raise ProtocolError("CONNECT with will QoS 3")
    if not will_flag and (will_qos or will_retain):
        raise ProtocolError("CONNECT sets will QoS or will retain without a will")
    if has_password and not has_user:
        raise ProtocolError("CONNECT has a password but no user name")
    client_id, pos = _string(body, pos)
    will = None
    if will_flag:
        topic, pos = _string(body, pos)
        if not topic or "+" in topic or "#" in topic:
            raise ProtocolError(f"invalid will topic '{topic}'")
        payload, pos = _binary(body, pos)
        will = Will(topic, payload, will_qos, will_retain)
    username = password = None
    if has_user:
        username, pos = _string(body, pos)
    if has_password:
        password, pos = _binary(body, pos)
    if pos != len(body):
        raise ProtocolError("CONNECT has trailing bytes")
    return Connect(name, level, bool(flags & 0x02), keepalive, client_id, will, username, password)


def _decode_subscribe(body: bytes) -> Subscribe:
    packet_id = _packet_id(body, 0)
    pos = 2
    topics = []
    while pos < len(body):
        topic, pos = _string(body, pos)
        if pos >= len(body):
            raise ProtocolError("SUBSCRIBE ends before a requested QoS")
        qos = body[pos]
        pos += 1
        if qos > 2:
            raise ProtocolError(f"SUBSCRIBE requests QoS byte {qos:#x}")
        topics.append((topic, qos))
    if not topics:
        raise ProtocolError("SUBSCRIBE without topic filters")
    return Subscribe(packet_id, topics)


def _decode_unsubscribe(body: bytes) -> Unsubscribe:
    packet_id = _packet_id(body, 0)
    pos = 2
    filters = []
    while pos < len(body):
        topic, pos = _string(body, pos)
        filters.append(topic)
    if not filters:
        raise ProtocolError("UNSUBSCRIBE without topic filters")
    return Unsubscribe(packet_id, filters)


# -- server-to-client packets ------------------------------------------------------------


def _remaining_length(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    if n < 0x4000:
        return bytes((n & 0x7F | 0x80, n >> 7))
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def connack(session_present: bool, code: int) -> bytes:
    return bytes((CONNACK << 4, 2, 1 if session_present and code == ACCEPTED else 0, code))


def topic_field(topic: str) -> bytes:
    """A topic name as PUBLISH carries it: length-prefixed UTF-8 (callers cache it)."""
    raw = topic.encode()
    return _U16.pack(len(raw)) + raw


def publish_header(
    topic: bytes, payload_size: int, qos: int, retain: bool, dup: bool, packet_id: int
) -> bytes:
    """Everything of a PUBLISH packet before its payload; `topic` is a `topic_field()`.

    The payload is written after it as it is: a delivery costs one copy of the payload,
    when the connection's output of the loop turn is joined.
    """
    first = (PUBLISH << 4) | (qos << 1) | (8 if dup else 0) | (1 if retain else 0)
    if qos:
        size = len(topic) + 2 + payload_size
        return b"".join((bytes((first,)), _remaining_length(size), topic, _U16.pack(packet_id)))
    return b"".join((bytes((first,)), _remaining_length(len(topic) + payload_size), topic))


def publish(
    topic: bytes, payload: bytes, qos: int, retain: bool, dup: bool, packet_id: int
) -> bytes:
    """A whole PUBLISH packet; `topic` is already UTF-8 encoded."""
    head = _U16.pack(len(topic)) + topic
    return publish_header(head, len(payload), qos, retain, dup, packet_id) + payload


def ack(ptype: int, packet_id: int) -> bytes:
    """PUBACK, PUBREC, PUBREL (flags 0010) or PUBCOMP, and UNSUBACK."""
    first = (ptype << 4) | (2 if ptype == PUBREL else 0)
    return bytes((first, 2, packet_id >> 8, packet_id & 0xFF))


def suback(packet_id: int, codes: list[int]) -> bytes:
    return (
        bytes((SUBACK << 4,))
        + _remaining_length(2 + len(codes))
        + _U16.pack(packet_id)
        + bytes(codes)
    )


PINGRESP_PACKET = bytes((PINGRESP << 4, 0))
