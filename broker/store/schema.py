"""How the node's database is laid out: meta keys, the log, and the snapshot records.

Three key spaces in one LevelDB:

- `!name`: meta values (the format version, the index the snapshot is at, entries skipped).
- `L` + last index + first index (8 bytes each, big-endian): the log, one key per write of
  consecutive entries (a batch). Seeking to `L` + an index finds the batch holding it.
- one byte naming a record kind + its key: the snapshot, i.e. the state machine's whole state
  as of the snapshot index. The kind bytes sort in the order a restore needs (queues before
  their consumers, consumers before the messages they hold).

Values are msgpack lists with a fixed field order per kind, except cold chunks (packed columns,
see core/cold.py) and messages: a packed head of
fixed-size fields, then the holder, then names, properties and the raw body, unless the body
is that of a publish in the log (Message.source): the record then names the entry, which the
snapshot keeps (one body on disk however many queues the publish reached).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from typing import Any

from broker.core.cold import ColdChunk
from broker.core.commands import Will
from broker.core.model import (
    AccessKey,
    BindingKey,
    Consumer,
    Exchange,
    Message,
    Permission,
    Proposer,
    RetainedMessage,
    SessionHolder,
    SharedLimit,
    User,
)
from broker.core.policy import Policy
from broker.core.queue import MessageQueue
from broker.core.state import DelayedPublish, StateMachine, publish_at
from broker.store.damage import REMEDY, StoreDamaged, StoreUnusable
from broker.store.encoding import StoredEntry, decode_entry_wire, pack, unpack

#: Bump when any layout here, or a command's code or fields, changes.
FORMAT_VERSION = 2

META_FORMAT = b"!format"
META_SNAPSHOT = b"!snapshot"
#: log entries left out of the state because applying them failed half-way (see committer)
META_SKIPPED = b"!skipped"
#: in a cluster, in the log: Raft's term, vote and commit index
META_RAFT = b"!raft"
#: in a cluster, in the state: the snapshot's (index, term, voters), written with it
META_RAFT_SNAPSHOT = b"!raft-snapshot"
LOG_PREFIX = b"L"
#: the first key past the log (iteration stops before it)
LOG_END = b"M"
#: in the log's database, one empty key per batch (its key with this prefix instead), so
#: listing the batches at start-up reads no entry (store.with_marks writes them)
MARK_PREFIX = b"B"
#: in the log's database: every batch has its mark (set once they were made for old logs)
META_MARKS = b"!marks"

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
    "proposer": b"f",
    "member": b"g",
    "limits": b"h",
    "policy": b"i",
    "tracing": b"t",
    "cold": b"j",
}
_BY_PREFIX = {prefix: kind for kind, prefix in KINDS.items()}
_MESSAGE_PREFIX = KINDS["message"]
_INDEX = struct.Struct(">Q")
_PAIR = struct.Struct(">QQ")
#: a message's key in one pack (the prefix and _PAIR): one per queue a message reaches
_MESSAGE_KEY = struct.Struct(f">{len(_MESSAGE_PREFIX)}sQQ")
_OWNER = struct.Struct(">QQQ")
_LENGTH = struct.Struct(">I")
#: fixed-size part of a message: enqueued_at, expires_at (-1: none), priority, delivery_count,
#: returns, visible_at, handle, first_delivered_at, acked_at, state, persistent, position,
#: the log index and position of its publish (0: none), and the length of its holder
_MESSAGE_HEAD = struct.Struct(">qqBIIqIqqbBQQIH")
#: lengths of exchange, routing key and properties (messages whose body is in the record)
_MESSAGE_NAMES = struct.Struct(">HHI")


class FormatError(StoreUnusable):
    """The data dir was written in a format this release does not read."""


# -- keys ----------------------------------------------------------------------------------


def batch_key(first: int, last: int) -> bytes:
    return LOG_PREFIX + _PAIR.pack(last, first)


def batch_range(key: bytes) -> tuple[int, int]:
    """(first, last) index of the batch stored under `key`."""
    last, first = _PAIR.unpack(key[1:])
    return first, last


def with_marks(ops: list[tuple[bytes, bytes | None]]) -> list[tuple[bytes, bytes | None]]:
    """Writes to the log with the mark of each batch they put or delete."""
    marks = [
        (MARK_PREFIX + key[1:], None if value is None else b"")
        for key, value in ops
        if key[:1] == LOG_PREFIX
    ]
    return ops + marks if marks else ops


def seek_key(index: int) -> bytes:
    """Where the batch holding `index`, or the first after it, starts in key order."""
    return LOG_PREFIX + _INDEX.pack(index)


def encode_batch(first: int, entries: list[Any]) -> bytes:
    """Entries (in their wire form, see encoding.entry_wire) from index `first` on, as one
    value: [first index, [entry, ...]]."""
    return pack((first, entries))


def decode_batch(raw: bytes) -> tuple[int, list[StoredEntry]]:
    """(first index, [(term, time, command, key, floor)...]) of a stored batch."""
    first, entries = unpack(raw)
    return first, [decode_entry_wire(wire) for wire in entries]


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


def message_key(qid: int, seq: int) -> bytes:
    return _MESSAGE_KEY.pack(_MESSAGE_PREFIX, qid, seq)


def record_key(kind: str, key: Any) -> bytes:
    prefix = KINDS[kind]
    if kind in ("proposer", "member"):
        return prefix + _INDEX.pack(key)
    if kind in ("message", "delayed"):
        return prefix + _PAIR.pack(*key)
    if kind in ("shared", "cold"):
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
    if kind in ("proposer", "member"):
        return _INDEX.unpack(raw)[0]
    if kind in ("message", "delayed"):
        return _PAIR.unpack(raw)
    if kind in ("shared", "cold"):
        return _OWNER.unpack(raw)
    if kind == "consumer":
        return _OWNER.unpack_from(raw), raw[_OWNER.size :].decode()
    if kind == "binding":
        vhost, source, destination, to_queue, routing_key, arguments = unpack(raw)
        return vhost, BindingKey(source, destination, to_queue, routing_key, _freeze(arguments))
    if kind == "record":
        parts = _split(raw)
        return parts[0], tuple(parts[1:-1]), parts[-1]
    if kind in (
        "permission",
        "exchange",
        "queue",
        "retained",
        "session",
        "limits",
        "policy",
        "tracing",
    ):
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
        return message_value(value, q.unacked.get(value.seq))
    if kind == "cold":
        return value.packed()
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
        return pack([*fields, x.shared is not None, x.settle_transient])
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
    if kind == "proposer":
        return pack([value.session, value.floor, sorted(value.seen)])
    if kind == "policy":
        return pack([value.pattern, value.apply_to, value.priority, value.definition])
    # counter, vhost, binding (its number), record (an adapter's plain value), member, tracing
    return pack(value)


def _decode_value(kind: str, key: Any, raw: bytes) -> Any:
    if kind == "message":
        return _decode_message(key[1], raw)
    if kind == "cold":
        return ColdChunk.unpacked(key[2], raw)
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
        seq, vhost, queue, no_ack, exclusive, prefetch, priority, active, shared, transient = v
        owner, tag = key
        consumer = Consumer(
            queue, vhost, owner, tag, no_ack, exclusive, prefetch, priority, active=active, seq=seq
        )
        consumer.settle_transient = transient
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
    if kind == "proposer":
        session, floor, seen = v
        return Proposer(session, floor, set(seen))
    if kind == "policy":
        pattern, apply_to, priority, definition = v
        return Policy(key[0], key[1], pattern, apply_to, priority, definition)
    return v


def message_value(m: Message, holder: Any) -> bytes:
    """A message's record; `holder` is (owner, consumer) while it is delivered, else None."""
    held = b""
    if holder is not None:
        owner, consumer = holder
        tag = None if consumer is None else consumer.tag
        shared = consumer is not None and consumer.shared is not None
        held = pack([owner, tag, shared])
    index, position = m.source or (0, 0)
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
        index,
        position,
        len(held),
    )
    if m.source is not None:
        return head + held if held else head
    exchange = m.exchange.encode()
    routing_key = m.routing_key.encode()
    properties = pack(m.properties)
    names = _MESSAGE_NAMES.pack(len(exchange), len(routing_key), len(properties))
    return b"".join((head, held, names, exchange, routing_key, properties, m.body))


def _decode_message(seq: int, raw: bytes) -> tuple[Message, Any]:
    """The message (with an empty body while it refers to a log entry) and its holder."""
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
        index,
        in_entry,
        n_holder,
    ) = _MESSAGE_HEAD.unpack_from(raw, 0)
    pos = _MESSAGE_HEAD.size
    holder = None
    if n_holder:
        owner, tag, shared = unpack(raw[pos : pos + n_holder])
        holder = (tuple(owner), tag, shared)
    pos += n_holder
    msg = Message(
        seq=seq,
        exchange="",
        routing_key="",
        properties={},
        body=b"",
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
        source=(index, in_entry) if index else None,
        recorded=True,
    )
    if index:
        return msg, holder
    n_exchange, n_routing_key, n_properties = _MESSAGE_NAMES.unpack_from(raw, pos)
    pos += _MESSAGE_NAMES.size
    msg.exchange = raw[pos : pos + n_exchange].decode()
    pos += n_exchange
    msg.routing_key = raw[pos : pos + n_routing_key].decode()
    pos += n_routing_key
    msg.properties = unpack(raw[pos : pos + n_properties])
    pos += n_properties
    msg.body = raw[pos:]
    return msg, holder


# -- whole snapshots -------------------------------------------------------------------------


def snapshot_ops(
    dirty: dict[tuple[str, Any], Any], state: StateMachine
) -> list[tuple[bytes, bytes | None]]:
    """The writes that bring a stored snapshot up to `state`, given what changed since.

    ("entry", index) changes (a log entry no message uses any more) are not records: what
    they free is the committer's to delete, with the log.
    """
    return [
        (
            record_key(kind, key),
            None if value is None else record_value(kind, key, value, state),
        )
        for (kind, key), value in dirty.items()
        if kind != "entry"
    ]


def decode_record(raw_key: bytes, raw_value: bytes) -> tuple[str, Any, Any]:
    kind = _BY_PREFIX[raw_key[:1]]
    key = _decode_key(kind, raw_key[1:])
    return kind, key, _decode_value(kind, key, raw_value)


def is_record(raw_key: bytes) -> bool:
    return raw_key[:1] in _BY_PREFIX


def restore(
    state: StateMachine,
    items: Iterable[tuple[bytes, bytes]],
    entry: Callable[[int], Any],
    bodiless: Callable[[Any], None] | None = None,
) -> None:
    """Load a snapshot into `state`: the records among `items` (in key order), with the bodies
    of messages that refer to log entries taken from `entry(index)` (the command). A message
    whose entry is missing is damage: refused, or, given `bodiless`, left out and its key
    passed to it (a repair)."""
    for raw_key, raw_value in items:
        if not is_record(raw_key):
            continue
        kind, key, value = decode_record(raw_key, raw_value)
        source = value[0].source if kind == "message" else None
        if source is not None and not _fill_from_entry(value[0], entry):
            if bodiless is None:
                raise StoreDamaged(
                    f"the store is damaged: message {key} refers to log entry {source[0]}, "
                    f"which is missing from the log: {REMEDY}"
                )
            bodiless(key)
            continue
        state.restore(kind, key, value)
    state.finish_restore()


def _fill_from_entry(msg: Message, entry: Callable[[int], Any]) -> bool:
    """Give `msg` the body of the log entry it refers to; False if that entry is missing."""
    assert msg.source is not None
    command = publish_at(entry, msg.source)
    if command is None:
        return False
    msg.exchange, msg.routing_key = command.exchange, command.routing_key
    msg.properties, msg.body = command.properties, command.body
    return True
