"""How the core's logical changes map to LevelDB keys and values.

Keys start with one byte naming the record kind; the bytes sort in the order recovery needs
(vhosts before the exchanges and queues in them, queues before their messages). Message keys
are (queue id, sequence) in big-endian so a queue's messages load in publish order.
"""

from __future__ import annotations

import hashlib
import pickle
import struct
from collections.abc import Iterator
from typing import Any

from broker.core.model import Message

KINDS = {
    "counter": b"0",
    "vhost": b"1",
    "user": b"2",
    "permission": b"3",
    "exchange": b"4",
    "queue": b"5",
    "binding": b"6",
    "message": b"7",
    "delayed": b"8",
    "retained": b"9",
    "record": b"a",
    "access_key": b"b",
}
_BY_PREFIX = {prefix: kind for kind, prefix in KINDS.items()}
_PAIR = struct.Struct(">QQ")
_LENGTH = struct.Struct(">I")
#: fixed-size part of a stored message: enqueued_at, expires_at (-1: none), priority,
#: delivery_count, returns, visible_at, handle, first_delivered_at, acked_at, state,
#: persistent, and the lengths of exchange, routing key and pickled properties
_MESSAGE_HEAD = struct.Struct(">qqBIIqIqqbBHHI")


def _join(*parts: str) -> bytes:
    return b"\x00".join(p.encode() for p in parts)


def _length_prefixed(parts: tuple[str, ...]) -> bytes:
    """Unambiguous whatever the parts contain (adapter record names may hold any character)."""
    out = bytearray()
    for part in parts:
        raw = part.encode()
        out += _LENGTH.pack(len(raw)) + raw
    return bytes(out)


def _split_length_prefixed(raw: bytes) -> list[str]:
    parts, pos = [], 0
    while pos < len(raw):
        (size,) = _LENGTH.unpack_from(raw, pos)
        pos += _LENGTH.size
        parts.append(raw[pos : pos + size].decode())
        pos += size
    return parts


def encode_key(kind: str, key: Any) -> bytes:
    prefix = KINDS[kind]
    if kind == "record":
        vhost, group, name = key
        return prefix + _length_prefixed((vhost, *group, name))
    if kind in ("message", "delayed"):
        return prefix + _PAIR.pack(*key)
    if kind == "binding":
        vhost, b = key
        digest = hashlib.sha1(repr(b.arguments).encode()).hexdigest()
        dest = ("q" if b.to_queue else "x") + b.destination
        return prefix + _join(vhost, b.source, dest, b.routing_key, digest)
    if isinstance(key, tuple):
        return prefix + _join(*key)
    return prefix + key.encode()


def encode_message(m: Message) -> bytes:
    """A message record: fixed fields packed, then names, properties and the raw body."""
    exchange = m.exchange.encode()
    routing_key = m.routing_key.encode()
    properties = pickle.dumps(dict(m.properties), protocol=5)
    head = _MESSAGE_HEAD.pack(
        m.enqueued_at,
        -1 if m.expires_at is None else m.expires_at,
        m.priority,
        m.delivery_count,
        m.returns,
        m.visible_at,
        m.handle,
        m.first_delivered_at,
        m.acked_at,
        m.state,
        m.persistent,
        len(exchange),
        len(routing_key),
        len(properties),
    )
    return b"".join((head, exchange, routing_key, properties, m.body))


def decode_message(seq: int, raw: bytes) -> Message:
    (
        enqueued_at,
        expires_at,
        priority,
        delivery_count,
        returns,
        visible_at,
        handle,
        first_delivered_at,
        acked_at,
        state,
        persistent,
        n_exchange,
        n_routing_key,
        n_properties,
    ) = _MESSAGE_HEAD.unpack_from(raw, 0)
    pos = _MESSAGE_HEAD.size
    exchange = raw[pos : pos + n_exchange].decode()
    pos += n_exchange
    routing_key = raw[pos : pos + n_routing_key].decode()
    pos += n_routing_key
    properties = pickle.loads(raw[pos : pos + n_properties])
    pos += n_properties
    return Message(
        seq=seq,
        exchange=exchange,
        routing_key=routing_key,
        properties=properties,
        body=raw[pos:],
        persistent=bool(persistent),
        enqueued_at=enqueued_at,
        expires_at=None if expires_at == -1 else expires_at,
        priority=priority,
        delivery_count=delivery_count,
        returns=returns,
        visible_at=visible_at,
        handle=handle,
        first_delivered_at=first_delivered_at,
        acked_at=acked_at,
        state=state,
    )


def encode_value(kind: str, value: Any) -> bytes:
    if kind == "message":
        return encode_message(value)
    return pickle.dumps(value, protocol=5)


def decode(raw_key: bytes, raw_value: bytes) -> tuple[str, Any, Any]:
    kind = _BY_PREFIX[raw_key[:1]]
    body = raw_key[1:]
    if kind == "message":
        key: Any = _PAIR.unpack(body)
        return kind, key, decode_message(key[1], raw_value)
    value = pickle.loads(raw_value)
    if kind == "delayed":
        key = _PAIR.unpack(body)
    elif kind == "binding":
        vhost = body.split(b"\x00", 1)[0].decode()
        key = (vhost, value)
        value = True
    elif kind in ("permission", "exchange", "queue"):
        key = tuple(p.decode() for p in body.split(b"\x00"))
    elif kind == "retained":
        key = tuple(p.decode() for p in body.split(b"\x00", 1))
    elif kind == "record":
        parts = _split_length_prefixed(body)
        key = (parts[0], tuple(parts[1:-1]), parts[-1])
    else:
        key = body.decode()
    return kind, key, value


def iter_records(db: Any) -> Iterator[tuple[str, Any, Any]]:
    """Every stored record, in recovery order."""
    for raw_key, raw_value in db.iterator():
        if raw_key[:1] in _BY_PREFIX:
            yield decode(raw_key, raw_value)
