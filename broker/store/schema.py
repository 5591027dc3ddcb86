"""How the node's database is laid out: meta keys, the log, and the snapshot records.

Three key spaces in one LevelDB:

- `!name`: meta values (the format version, the index the snapshot is at, entries skipped).
- `L` + index (8 bytes, big-endian): log entries (see encoding.encode_entry).
- one byte naming a record kind + its key: the snapshot, i.e. the state machine's whole state
  as of the snapshot index. The kind bytes sort in the order a restore needs (queues before
  their consumers, consumers before the messages they hold).

Values are msgpack lists with a fixed field order per kind, except messages: a packed head of
fixed-size fields, then names, properties, holder and the raw body.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

from broker.core.commands import Will
from broker.core.model import (
    AccessKey,
    BindingKey,
    Consumer,
    Exchange,
    Message,
    Permission,
    RetainedMessage,
    SessionHolder,
    SharedLimit,
    User,
)
from broker.core.queue import MessageQueue
from broker.core.state import DelayedPublish, StateMachine
from broker.store.encoding import pack, unpack

#: Bump when any layout here, or a command's code or fields, changes.
FORMAT_VERSION = 2

META_FORMAT = b"!format"
META_SNAPSHOT = b"!snapshot"
#: log entries left out of the state because applying them failed half-way (see committer)
META_SKIPPED = b"!skipped"
LOG_PREFIX = b"L"
#: the first key past the log (iteration stops before it)
LOG_END = b"M"

KINDS = {
    "counter": b"0",
    "vhost": b"1",
    "user": b"2",
    "permission": b"3",
    "exchange": b"4",
    "queue": b"5",
    "binding": b"6",
    "shared": b"7",
    "consumer": b"8",
    "message": b"9",
    "delayed": b"a",
    "retained": b"b",
    "record": b"c",
    "access_key": b"d",
    "session": b"e",
}
_BY_PREFIX = {prefix: kind for kind, prefix in KINDS.items()}
_INDEX = struct.Struct(">Q")
_PAIR = struct.Struct(">QQ")
_OWNER = struct.Struct(">QQQ")
_LENGTH = struct.Struct(">I")
#: fixed-size part of a message: enqueued_at, expires_at (-1: none), priority, delivery_count,
#: returns, visible_at, handle, first_delivered_at, acked_at, state, persistent, position,
#: and the lengths of exchange, routing key, properties and holder
_MESSAGE_HEAD = struct.Struct(">qqBIIqIqqbBQHHII")


class FormatError(Exception):
    """The data dir was written in a format this release does not read."""


# -- keys ----------------------------------------------------------------------------------


def log_key(index: int) -> bytes:
    return LOG_PREFIX + _INDEX.pack(index)


def log_index(key: bytes) -> int:
    return int(_INDEX.unpack(key[1:])[0])


def _parts(*parts: str) -> bytes:
    """Length-prefixed: unambiguous whatever the names contain."""
    out = bytearray()
    for part in parts:
        raw = part.encode()
        out += _LENGTH.pack(len(raw)) + raw
    return bytes(out)


def _split(raw: bytes) -> list[str]:
    parts, pos = [], 0
    while pos < len(raw):
        (size,) = _LENGTH.unpack_from(raw, pos)
        pos += _LENGTH.size
        parts.append(raw[pos : pos + size].decode())
        pos += size
    return parts


def record_key(kind: str, key: Any) -> bytes:
    prefix = KINDS[kind]
    if kind in ("message", "delayed"):
        return prefix + _PAIR.pack(*key)
    if kind == "shared":
        return prefix + _OWNER.pack(*key)
    if kind == "consumer":
        owner, tag = key
        return prefix + _OWNER.pack(*owner) + tag.encode()
    if kind == "binding":
        vhost, b = key
        return prefix + pack(
            [vhost, b.source, b.destination, b.to_queue, b.routing_key, b.arguments]
        )
    if kind == "record":
        vhost, group, name = key
        return prefix + _parts(vhost, *group, name)
    if isinstance(key, tuple):
        return prefix + _parts(*key)
    return prefix + key.encode()


def _decode_key(kind: str, raw: bytes) -> Any:
    if kind in ("message", "delayed"):
        return _PAIR.unpack(raw)
    if kind == "shared":
        return _OWNER.unpack(raw)
    if kind == "consumer":
        return _OWNER.unpack_from(raw), raw[_OWNER.size :].decode()
    if kind == "binding":
        vhost, source, destination, to_queue, routing_key, arguments = unpack(raw)
        return vhost, BindingKey(source, destination, to_queue, routing_key, _freeze(arguments))
    if kind == "record":
        parts = _split(raw)
        return parts[0], tuple(parts[1:-1]), parts[-1]
    if kind in ("permission", "exchange", "queue", "retained", "session"):
        return tuple(_split(raw))
    return raw.decode()


def _freeze(value: Any) -> Any:
    """Binding arguments as BindingKey holds them: nested tuples (lists on the wire)."""
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


# -- values ----------------------------------------------------------------------------------


def record_value(kind: str, key: Any, value: Any, state: StateMachine) -> bytes:
    """The stored form of a live object (`state` supplies what a message's holder is)."""
    if kind == "message":
        q = state.queues_by_qid[key[0]]
        return _encode_message(value, q.unacked.get(value.seq))
    if kind == "queue":
        q = value
        return pack(
            [
                q.qid,
                q.durable,
                q.exclusive_owner,
                q.auto_delete,
                q.arguments,
                q.created_at,
                q.modified_at,
                q.last_used,
                q.had_consumer,
                q.next_seq,
                q.next_position,
                q.round_robin,
                q.per_message_ttl,
                q.dispatch_pending,
            ]
        )
    if kind == "consumer":
        x = value
        fields = [x.seq, x.vhost, x.queue, x.no_ack, x.exclusive, x.prefetch, x.priority, x.active]
        return pack([*fields, x.shared is not None])
    if kind == "shared":
        return pack(value.limit)
    if kind == "exchange":
        return pack([value.type, value.durable, value.auto_delete, value.internal, value.arguments])
    if kind == "user":
        return pack([value.password_hash, value.tags])
    if kind == "permission":
        return pack([value.configure, value.write, value.read])
    if kind == "access_key":
        return pack([value.secret_key, value.vhost, value.created_at])
    if kind == "retained":
        return pack([value.exchange, value.properties, value.body])
    if kind == "delayed":
        d = value
        return pack([d.vhost, d.exchange, d.routing_key, d.properties, d.body, d.persistent])
    if kind == "session":
        s = value
        will = None
        if s.will is not None:
            w = s.will
            will = [w.exchange, w.routing_key, w.properties, w.body, w.retain]
        return pack([s.connection, s.owner, s.clean, s.queue, s.group, will])
    # counter, vhost, binding (its number), record (an adapter's plain value)
    return pack(value)


def _decode_value(kind: str, key: Any, raw: bytes) -> Any:
    if kind == "message":
        return _decode_message(key[1], raw)
    v = unpack(raw)
    if kind == "queue":
        vhost, name = key
        (qid, durable, exclusive, auto_delete, arguments, *rest) = v
        q = MessageQueue(
            vhost,
            name,
            qid,
            durable,
            None if exclusive is None else tuple(exclusive),
            auto_delete,
            arguments,
        )
        (
            q.created_at,
            q.modified_at,
            q.last_used,
            q.had_consumer,
            q.next_seq,
            q.next_position,
            q.round_robin,
            q.per_message_ttl,
            q.dispatch_pending,
        ) = rest
        return q
    if kind == "consumer":
        seq, vhost, queue, no_ack, exclusive, prefetch, priority, active, shared = v
        owner, tag = key
        consumer = Consumer(
            queue, vhost, owner, tag, no_ack, exclusive, prefetch, priority, active=active, seq=seq
        )
        return consumer, shared
    if kind == "shared":
        return SharedLimit(v)
    if kind == "exchange":
        type_, durable, auto_delete, internal, arguments = v
        return Exchange(key[0], key[1], type_, durable, auto_delete, internal, arguments)
    if kind == "user":
        return User(key, v[0], tuple(v[1]))
    if kind == "permission":
        return Permission(*v)
    if kind == "access_key":
        return AccessKey(key, *v)
    if kind == "retained":
        return RetainedMessage(v[0], key[1], v[1], v[2])
    if kind == "delayed":
        due, ident = key
        return DelayedPublish(ident, due, *v)
    if kind == "session":
        connection, owner, clean, queue, group, will = v
        return SessionHolder(
            tuple(connection),
            tuple(owner),
            clean,
            queue,
            tuple(group),
            None if will is None else Will(*will),
        )
    return v


def _encode_message(m: Message, holder: Any) -> bytes:
    exchange = m.exchange.encode()
    routing_key = m.routing_key.encode()
    properties = pack(m.properties)
    held = b""
    if holder is not None:
        owner, consumer = holder
        tag = None if consumer is None else consumer.tag
        shared = consumer is not None and consumer.shared is not None
        held = pack([owner, tag, shared])
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
        m.position,
        len(exchange),
        len(routing_key),
        len(properties),
        len(held),
    )
    return b"".join((head, exchange, routing_key, properties, held, m.body))


def _decode_message(seq: int, raw: bytes) -> tuple[Message, Any]:
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
        position,
        n_exchange,
        n_routing_key,
        n_properties,
        n_holder,
    ) = _MESSAGE_HEAD.unpack_from(raw, 0)
    pos = _MESSAGE_HEAD.size
    exchange = raw[pos : pos + n_exchange].decode()
    pos += n_exchange
    routing_key = raw[pos : pos + n_routing_key].decode()
    pos += n_routing_key
    properties = unpack(raw[pos : pos + n_properties])
    pos += n_properties
    holder = None
    if n_holder:
        owner, tag, shared = unpack(raw[pos : pos + n_holder])
        holder = (tuple(owner), tag, shared)
    pos += n_holder
    msg = Message(
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
        position=position,
    )
    return msg, holder


# -- whole snapshots -------------------------------------------------------------------------


def snapshot_ops(
    dirty: dict[tuple[str, Any], Any], state: StateMachine
) -> list[tuple[bytes, bytes | None]]:
    """The writes that bring a stored snapshot up to `state`, given what changed since."""
    return [
        (
            record_key(kind, key),
            None if value is None else record_value(kind, key, value, state),
        )
        for (kind, key), value in dirty.items()
    ]


def decode_record(raw_key: bytes, raw_value: bytes) -> tuple[str, Any, Any]:
    kind = _BY_PREFIX[raw_key[:1]]
    key = _decode_key(kind, raw_key[1:])
    return kind, key, _decode_value(kind, key, raw_value)


def is_record(raw_key: bytes) -> bool:
    return raw_key[:1] in _BY_PREFIX


def iter_records(items: Iterator[tuple[bytes, bytes]]) -> Iterator[tuple[str, Any, Any]]:
    """Decode the snapshot records among `items` (a database iterator), in restore order."""
    for raw_key, raw_value in items:
        if is_record(raw_key):
            yield decode_record(raw_key, raw_value)
