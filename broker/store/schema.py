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
}
_BY_PREFIX = {prefix: kind for kind, prefix in KINDS.items()}
_PAIR = struct.Struct(">QQ")
_MESSAGE_FIELDS: tuple[str, ...] = tuple(Message.__slots__)


def _join(*parts: str) -> bytes:
    return b"\x00".join(p.encode() for p in parts)


def encode_key(kind: str, key: Any) -> bytes:
    prefix = KINDS[kind]
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


def encode_value(kind: str, value: Any) -> bytes:
    if kind == "message":
        return pickle.dumps(tuple(getattr(value, f) for f in _MESSAGE_FIELDS), protocol=5)
    return pickle.dumps(value, protocol=5)


def decode(raw_key: bytes, raw_value: bytes) -> tuple[str, Any, Any]:
    kind = _BY_PREFIX[raw_key[:1]]
    body = raw_key[1:]
    value = pickle.loads(raw_value)
    if kind in ("message", "delayed"):
        key: Any = _PAIR.unpack(body)
        if kind == "message":
            value = Message(**dict(zip(_MESSAGE_FIELDS, value, strict=True)))
    elif kind == "binding":
        vhost = body.split(b"\x00", 1)[0].decode()
        key = (vhost, value)
        value = True
    elif kind in ("permission", "exchange", "queue"):
        key = tuple(p.decode() for p in body.split(b"\x00"))
    else:
        key = body.decode()
    return kind, key, value


def iter_records(db: Any) -> Iterator[tuple[str, Any, Any]]:
    """Every stored record, in recovery order."""
    for raw_key, raw_value in db.iterator():
        if raw_key[:1] in _BY_PREFIX:
            yield decode(raw_key, raw_value)
