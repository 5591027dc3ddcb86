"""Convert a data dir written by broker 0.1 (store format 1) to the current format.

    python scripts/migrate_format1.py DATA_DIR

Format 1 kept records as pickles, which this release no longer reads (a store must never run
code it unpickles). This tool reads them with an unpickler that only rebuilds the record
types format 1 had (users, permissions, exchanges, bindings, keys, retained and delayed
messages, adapter records) and plain values, writes the same state as a format-2 snapshot, and
keeps the old database next to the new one as `leveldb-format1`. Run it once, with the broker
stopped. What a restart of 0.1 would have dropped (transient state) was never in the file.
"""

from __future__ import annotations

import datetime
import decimal
import io
import os
import pickle
import struct
import sys
from typing import Any

import plyvel

from broker.core.model import (
    AccessKey,
    BindingKey,
    Exchange,
    Message,
    Permission,
    RetainedMessage,
    User,
)
from broker.core.queue import MessageQueue
from broker.core.state import DelayedPublish
from broker.store import schema
from broker.store.disk import STATE_DIR, Store
from broker.store.encoding import pack

#: format 1: one byte per record kind, then the key
_KINDS = {
    b"0": "counter",
    b"1": "vhost",
    b"2": "user",
    b"3": "permission",
    b"4": "exchange",
    b"5": "queue",
    b"6": "binding",
    b"7": "message",
    b"8": "delayed",
    b"9": "retained",
    b"a": "record",
    b"b": "access_key",
}
_PAIR = struct.Struct(">QQ")
_LENGTH = struct.Struct(">I")
_MESSAGE_HEAD = struct.Struct(">qqBIIqIqqbBHHI")

#: the classes format 1 pickled, by the name it pickled them under, with their field order
_RECORD_CLASSES: dict[tuple[str, str], tuple[type, tuple[str, ...]]] = {
    ("broker.core.model", "User"): (User, ("name", "password_hash", "tags")),
    ("broker.core.model", "Permission"): (Permission, ("configure", "write", "read")),
    ("broker.core.model", "Exchange"): (
        Exchange,
        ("vhost", "name", "type", "durable", "auto_delete", "internal", "arguments"),
    ),
    ("broker.core.model", "BindingKey"): (
        BindingKey,
        ("source", "destination", "to_queue", "routing_key", "arguments"),
    ),
    ("broker.core.model", "AccessKey"): (
        AccessKey,
        ("secret_id", "secret_key", "vhost", "created_at"),
    ),
    ("broker.core.model", "RetainedMessage"): (
        RetainedMessage,
        ("exchange", "routing_key", "properties", "body"),
    ),
    ("broker.core.state", "DelayedPublish"): (
        DelayedPublish,
        ("id", "due", "vhost", "exchange", "routing_key", "properties", "body", "persistent"),
    ),
}
_PLAIN = {
    ("datetime", "datetime"): datetime.datetime,
    ("datetime", "timezone"): datetime.timezone,
    ("datetime", "timedelta"): datetime.timedelta,
    ("decimal", "Decimal"): decimal.Decimal,
    ("copyreg", "_reconstructor"): None,  # replaced below
    ("builtins", "object"): object,
}


class _Record:
    """Stands for a format-1 record class while unpickling; rebuilt as the real one after."""

    target: type
    fields: tuple[str, ...]
    values: list[Any]

    def __setstate__(self, state: Any) -> None:
        # Slotted dataclasses pickle their fields as a list, or as (None, {slot: value}).
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
            self.values = [state[1][name] for name in self.fields]
        else:
            self.values = list(state)

    def build(self) -> Any:
        return self.target(*[_rebuild(v) for v in self.values])


def _stand_in(target: type, fields: tuple[str, ...]) -> type:
    return type(target.__name__, (_Record,), {"target": target, "fields": fields})


_STAND_INS = {name: _stand_in(*known) for name, known in _RECORD_CLASSES.items()}


def _rebuild(value: Any) -> Any:
    if isinstance(value, _Record):
        return value.build()
    if isinstance(value, dict):
        return {k: _rebuild(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rebuild(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_rebuild(v) for v in value)
    return value


class _Properties(dict[str, Any]):
    """AMQP properties that 0.1 pickled with their wire bytes: the dict is what counts."""

    def __setstate__(self, state: Any) -> None:
        pass


def _reconstruct(cls: Any, base: Any, state: Any) -> Any:
    return cls() if callable(cls) else object.__new__(cls)


class _Unpickler(pickle.Unpickler):
    """Rebuilds the record types and plain values of format 1, and nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        stand_in = _STAND_INS.get((module, name))
        if stand_in is not None:
            return stand_in
        if (module, name) == ("copyreg", "_reconstructor"):
            return _reconstruct
        if (module, name) == ("broker.protocols.amqp.codec", "RawProperties"):
            return _Properties
        plain = _PLAIN.get((module, name))
        if plain is not None:
            return plain
        raise pickle.UnpicklingError(f"format 1 has no {module}.{name}: refusing to load it")


def _load(raw: bytes) -> Any:
    return _rebuild(_Unpickler(io.BytesIO(raw)).load())


def _split(raw: bytes) -> list[str]:
    parts, pos = [], 0
    while pos < len(raw):
        (size,) = _LENGTH.unpack_from(raw, pos)
        pos += _LENGTH.size
        parts.append(raw[pos : pos + size].decode())
        pos += size
    return parts


def _message(seq: int, raw: bytes) -> Message:
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
    properties = _load(raw[pos : pos + n_properties])
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


def convert(old: Any, now_ms: int) -> list[tuple[bytes, bytes | None]]:
    """The format-2 snapshot records holding what the format-1 database `old` holds."""
    ops: list[tuple[bytes, bytes | None]] = []
    counters = {"qid": 1, "delayed": 1, "consumer": 1, "binding": 1}
    queues: dict[int, MessageQueue] = {}
    messages: dict[int, list[Message]] = {}

    def put(kind: str, key: Any, value: Any) -> None:
        ops.append((schema.record_key(kind, key), schema.record_value(kind, key, value, None)))

    for raw_key, raw_value in old.iterator():
        kind = _KINDS.get(raw_key[:1])
        body = raw_key[1:]
        if kind is None:
            continue
        if kind == "message":
            qid, seq = _PAIR.unpack(body)
            messages.setdefault(qid, []).append(_message(seq, raw_value))
            continue
        value = _load(raw_value)
        if kind == "counter":
            counters[body.decode()] = max(counters.get(body.decode(), 1), value)
        elif kind == "vhost":
            put("vhost", body.decode(), True)
        elif kind == "user":
            put("user", body.decode(), value)
        elif kind in ("permission", "exchange", "retained"):
            put(kind, tuple(p.decode() for p in body.split(b"\x00", 1)), value)
        elif kind == "queue":
            vhost, name = (p.decode() for p in body.split(b"\x00", 1))
            q = MessageQueue(
                vhost, name, value["qid"], True, None, value["auto_delete"], value["arguments"]
            )
            q.created_at = value.get("created_at", 0)
            q.modified_at = value.get("modified_at", q.created_at)
            q.last_used = now_ms
            queues[q.qid] = q
            counters["qid"] = max(counters["qid"], q.qid + 1)
        elif kind == "binding":
            vhost = body.split(b"\x00", 1)[0].decode()
            put("binding", (vhost, value), counters["binding"])
            counters["binding"] += 1
        elif kind == "delayed":
            put("delayed", (value.due, value.id), value)
            counters["delayed"] = max(counters["delayed"], value.id + 1)
        elif kind == "record":
            parts = _split(body)
            put("record", (parts[0], tuple(parts[1:-1]), parts[-1]), value)
        elif kind == "access_key":
            put("access_key", body.decode(), value)
    for qid, q in queues.items():
        held = sorted(messages.get(qid, []), key=lambda m: m.seq)
        for m in held:
            if m.state == 1:  # in flight when 0.1 stopped: a restart gives it back
                m.state = 0
            if m.state == 0 and m.delivery_count == 0:
                m.position = q.next_position
                q.next_position += 1
            ops.append((schema.message_key(qid, m.seq), schema.message_value(m, None)))
        q.next_seq = (held[-1].seq + 1) if held else 1
        put("queue", (q.vhost, q.name), q)
    for name, value in counters.items():
        put("counter", name, value)
    ops.append((schema.META_SNAPSHOT, pack(0)))
    return ops


def migrate(data_dir: str) -> int:
    state_dir = os.path.join(data_dir, STATE_DIR)
    kept = os.path.join(data_dir, STATE_DIR + "-format1")
    old = plyvel.DB(state_dir)
    try:
        if old.get(schema.META_FORMAT) is not None:
            print(f"{data_dir} is not in format 1: nothing to do", file=sys.stderr)
            return 1
        ops = convert(old, int(datetime.datetime.now().timestamp() * 1000))
    finally:
        old.close()
    os.rename(state_dir, kept)
    store = Store(data_dir)
    try:
        store.write_state(ops)
    finally:
        store.close()
    print(f"converted {len(ops)} records; the format-1 database is kept in {kept}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(migrate(sys.argv[1]))
