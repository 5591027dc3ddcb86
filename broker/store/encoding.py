"""The explicit encoding of what goes to disk and, later, between nodes: msgpack.

Values are msgpack's own types (None, bool, int, float, str, bytes, list, dict) plus two
extension types that AMQP headers carry: datetimes and decimals. Tuples come back as lists;
whoever decodes a value that must be a tuple says so (see the command table below).

A command is the list `[code, field, field, ...]`: its number in `COMMAND_CODES`, then its
fields in declaration order. The codes and field lists are part of the on-disk format
(`FORMAT_VERSION` in schema): a test keeps them from changing by accident.
"""

from __future__ import annotations

import dataclasses
import operator
import struct
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import msgpack

from broker.core import commands as c

_EXT_DATETIME = 1
_EXT_DECIMAL = 2
#: microseconds since the epoch, and whether the datetime carried a time zone (UTC)
_DATETIME = struct.Struct(">qB")
_EPOCH = datetime(1970, 1, 1)


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        aware = value.tzinfo is not None
        naive = value.astimezone(UTC).replace(tzinfo=None) if aware else value
        micros = (naive - _EPOCH) // timedelta(microseconds=1)
        return msgpack.ExtType(_EXT_DATETIME, _DATETIME.pack(micros, aware))
    if isinstance(value, Decimal):
        return msgpack.ExtType(_EXT_DECIMAL, str(value).encode())
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"cannot encode a {type(value).__name__}")


def _ext(code: int, data: bytes) -> Any:
    if code == _EXT_DATETIME:
        micros, aware = _DATETIME.unpack(data)
        value = _EPOCH + timedelta(microseconds=micros)
        return value.replace(tzinfo=UTC) if aware else value
    if code == _EXT_DECIMAL:
        return Decimal(data.decode())
    raise ValueError(f"unknown msgpack extension type {code}")


_packer = msgpack.Packer(use_bin_type=True, default=_default)


def pack(value: Any) -> bytes:
    """Encode plain data (see the module docstring for what that may hold)."""
    try:
        return _packer.pack(value)
    except Exception:
        # A failed pack may leave the shared packer's buffer half full.
        _packer.reset()
        raise


def unpack(raw: bytes) -> Any:
    return msgpack.unpackb(raw, raw=False, ext_hook=_ext, strict_map_key=False)


# -- commands --------------------------------------------------------------------------------

#: Every command's number in the log. Append new ones; never renumber or reuse.
COMMAND_CODES: dict[type, int] = {
    c.DeclareVhost: 1,
    c.DeleteVhost: 2,
    c.PutUser: 3,
    c.DeleteUser: 4,
    c.SetPermissions: 5,
    c.DeclareExchange: 6,
    c.DeleteExchange: 7,
    c.DeclareQueue: 8,
    c.DeleteQueue: 9,
    c.PurgeQueue: 10,
    c.Bind: 11,
    c.Unbind: 12,
    c.Publish: 13,
    c.Consume: 14,
    c.Cancel: 15,
    c.Settle: 16,
    c.Get: 17,
    c.Recover: 18,
    c.ReleaseOwner: 19,
    c.ConnectionClosed: 20,
    c.ReleaseNode: 21,
    c.DropTransient: 22,
    c.OpenSession: 23,
    c.CloseSession: 24,
    c.Batch: 25,
    c.SetFlow: 26,
    c.Tick: 27,
    c.Receive: 28,
    c.DeleteByHandle: 29,
    c.ChangeVisibility: 30,
    c.Rewind: 31,
    c.StoreRetained: 32,
    c.CopyRetained: 33,
    c.PutRecord: 34,
    c.DropRecords: 35,
    c.SetQueueArguments: 36,
    c.AddAccessKey: 37,
    c.DeleteAccessKey: 38,
    c.SetMembers: 39,
    c.SetLimits: 40,
    c.SetPolicy: 41,
    c.DeletePolicy: 42,
    c.SetTracing: 43,
    c.ClearPermissions: 44,
}


def _tuple(value: Any) -> Any:
    return tuple(value)


def _optional_tuple(value: Any) -> Any:
    return None if value is None else tuple(value)


def _tuples(value: Any) -> Any:
    return [tuple(item) for item in value]


def _tuple_of_tuples(value: Any) -> Any:
    return tuple(tuple(item) for item in value)


def _will(value: Any) -> Any:
    return None if value is None else c.Will(*value)


def _commands(value: Any) -> Any:
    return [decode_command(item) for item in value]


#: How a field whose annotation is this comes back from its wire form (default: as it is).
_FIELD_DECODERS: dict[str, Callable[[Any], Any]] = {
    "Owner": _tuple,
    "ConnectionId": _tuple,
    "ConnectionId | None": _optional_tuple,
    "tuple[str, ...]": _tuple,
    "list[tuple[str, str, int]]": _tuples,
    "tuple[tuple[int, str], ...]": _tuple_of_tuples,
    "Will | None": _will,
    "list[Any]": _commands,
}


@dataclasses.dataclass(slots=True)
class _Codec:
    cls: type
    fields: tuple[str, ...]
    get: Callable[[Any], Any]
    decoders: tuple[tuple[int, Callable[[Any], Any]], ...]


def _codec(cls: type) -> _Codec:
    fields = dataclasses.fields(cls)
    names = tuple(f.name for f in fields)
    decoders = tuple(
        (i, _FIELD_DECODERS[str(f.type)])
        for i, f in enumerate(fields)
        if str(f.type) in _FIELD_DECODERS
    )
    if not names:
        getter: Callable[[Any], Any] = lambda _: ()  # noqa: E731
    elif len(names) == 1:
        one = operator.attrgetter(names[0])
        getter = lambda obj: (one(obj),)  # noqa: E731
    else:
        getter = operator.attrgetter(*names)
    return _Codec(cls, names, getter, decoders)


_BY_TYPE = {cls: (code, _codec(cls)) for cls, code in COMMAND_CODES.items()}
_BY_CODE = {code: codec for code, codec in _BY_TYPE.values()}


def command_fields(cls: type) -> tuple[str, ...]:
    """The fields of a command in wire order (for the format test)."""
    return _BY_TYPE[cls][1].fields


def command_to_wire(command: Any) -> list[Any]:
    """`[code, fields...]`, with nested commands and wills in their wire form too."""
    code, codec = _BY_TYPE[type(command)]
    values = [code, *codec.get(command)]
    if type(command) is c.Batch:
        values[1] = [command_to_wire(sub) for sub in command.commands]
    elif type(command) is c.OpenSession and command.will is not None:
        w = command.will
        values[-1] = [w.exchange, w.routing_key, w.properties, w.body, w.retain]
    return values


def decode_command(wire: list[Any]) -> Any:
    codec = _BY_CODE.get(wire[0])
    if codec is None:
        raise ValueError(f"unknown command code {wire[0]!r}")
    values = wire[1:]
    for i, decode in codec.decoders:
        values[i] = decode(values[i])
    return codec.cls(*values)


_PUBLISH = COMMAND_CODES[c.Publish]


def entry_wire(term: int, time: int, command: Any) -> Any:
    """A log entry before packing: the term it was proposed in, its time (ms), its command
    (None: a new Raft leader's no-op)."""
    if type(command) is c.Publish:  # most entries: their fields, spelled out
        p = command
        fields = (p.vhost, p.exchange, p.routing_key, p.properties, p.body, p.mandatory)
        return (term, time, (_PUBLISH, *fields, p.delay_ms))
    return (term, time, None if command is None else command_to_wire(command))


def keyed_entry_wire(
    term: int, time: int, command: Any, key: tuple[int, int, int], floor: int
) -> Any:
    """An entry proposed in a cluster: also who proposed it (commands.Meta.key) and the
    proposer's floor."""
    return (*entry_wire(term, time, command), *key, floor)


#: A stored entry: term, time, command (None: a no-op), proposal key or None, floor.
StoredEntry = tuple[int, int, Any, tuple[int, int, int] | None, int]


def decode_entry_wire(wire: list[Any]) -> StoredEntry:
    command = None if wire[2] is None else decode_command(wire[2])
    if len(wire) > 3:
        return wire[0], wire[1], command, (wire[3], wire[4], wire[5]), wire[6]
    return wire[0], wire[1], command, None, 0


def encode_entry(term: int, time: int, command: Any) -> bytes:
    """One log entry on its own (a batch packs its entries' wire forms at once)."""
    return pack(entry_wire(term, time, command))


def decode_entry(raw: bytes) -> tuple[int, int, Any]:
    term, time, wire = unpack(raw)
    return term, time, decode_command(wire)
