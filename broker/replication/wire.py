"""What nodes of a cluster say to each other, as plain data for the links (msgpack).

Raft's own messages, and the node's: commands forwarded to the leader, a snapshot sent in
chunks, a direct reply-to answer for a client of another node, and which run of a node is
speaking (its incarnation, see commands.ReleaseNode). Each message is a list whose first item
names its kind. A message that does not decode raises WireError; the caller drops it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from broker.replication.log_store import from_stored, to_wire
from broker.replication.raft import (
    AppendEntries,
    AppendResponse,
    InstallSnapshot,
    Message,
    RequestVote,
    SnapshotMeta,
    TimeoutNow,
    VoteResponse,
)
from broker.store.encoding import command_to_wire, decode_command, decode_entry_wire, unpack


class WireError(ValueError):
    """A peer sent something this node cannot read."""


@dataclass(slots=True, frozen=True)
class Forward:
    """Commands a node asks the leader to propose: (incarnation, number, floor, command)."""

    items: tuple[tuple[int, int, int, Any], ...]


@dataclass(slots=True, frozen=True)
class NotLeading:
    """The answer to a Forward sent to a node that does not lead: who does, if known."""

    leader: int
    numbers: tuple[int, ...]


@dataclass(slots=True, frozen=True)
class SnapshotBegin:
    transfer: int


@dataclass(slots=True, frozen=True)
class SnapshotChunk:
    """Records for one database of the receiver ("state" or "log"), in key order."""

    transfer: int
    database: str
    items: tuple[tuple[bytes, bytes], ...]


@dataclass(slots=True, frozen=True)
class SnapshotEnd:
    transfer: int
    meta: SnapshotMeta


@dataclass(slots=True, frozen=True)
class ReplyTo:
    """A direct reply-to answer for a requester connected to the receiving node."""

    routing_key: str
    properties: dict[str, Any]
    body: bytes
    exchange: str


@dataclass(slots=True, frozen=True)
class Hello:
    """Which run of the sending node this is (sent whenever a link comes up)."""

    incarnation: int


NodeMessage = Forward | NotLeading | SnapshotBegin | SnapshotChunk | SnapshotEnd | ReplyTo | Hello


def encode(msg: Message | NodeMessage, packed: bytes | None = None) -> list[Any]:
    """`packed`: an AppendEntries' entries already encoded as a log batch (schema.encode_batch),
    sent as they are, so neither end encodes them again."""
    kind = type(msg)
    if kind is AppendEntries:
        m: Any = msg
        entries: Any = packed if packed is not None else [to_wire(e) for e in m.entries]
        return ["A", m.src, m.dst, m.term, m.prev_index, m.prev_term, entries, m.commit]
    if kind is AppendResponse:
        m = msg
        return ["a", m.src, m.dst, m.term, m.success, m.index, m.hint]
    if kind is RequestVote:
        m = msg
        return ["V", m.src, m.dst, m.term, m.last_index, m.last_term, m.pre_vote, m.transfer]
    if kind is VoteResponse:
        m = msg
        return ["v", m.src, m.dst, m.term, m.granted, m.pre_vote]
    if kind is InstallSnapshot:
        m = msg
        return ["S", m.src, m.dst, m.term, *_meta(m.meta)]
    if kind is TimeoutNow:
        m = msg
        return ["T", m.src, m.dst, m.term]
    if kind is Forward:
        m = msg
        items = [[inc, number, floor, command_to_wire(cmd)] for inc, number, floor, cmd in m.items]
        return ["F", items]
    if kind is NotLeading:
        m = msg
        return ["N", m.leader, list(m.numbers)]
    if kind is SnapshotBegin:
        return ["SB", msg.transfer]  # type: ignore[union-attr]
    if kind is SnapshotChunk:
        m = msg
        return ["SC", m.transfer, m.database, [list(item) for item in m.items]]
    if kind is SnapshotEnd:
        m = msg
        return ["SE", m.transfer, *_meta(m.meta)]
    if kind is ReplyTo:
        m = msg
        return ["R", m.routing_key, m.properties, m.body, m.exchange]
    if kind is Hello:
        return ["H", msg.incarnation]  # type: ignore[union-attr]
    raise TypeError(f"cannot encode a {kind.__name__}")


def packed_entries(raw: Any) -> bytes | None:
    """The entries of an encoded AppendEntries as the leader packed them, if it did."""
    if isinstance(raw, list) and len(raw) == 8 and raw[0] == "A" and isinstance(raw[6], bytes):
        return raw[6]
    return None


def _meta(meta: SnapshotMeta) -> list[Any]:
    return [meta.index, meta.term, list(meta.config)]


def decode(raw: Any) -> Message | NodeMessage:
    try:
        return _decode(raw)
    except (TypeError, ValueError, IndexError, KeyError) as exc:
        raise WireError(f"unreadable cluster message: {exc!r}") from exc


def _decode(raw: list[Any]) -> Message | NodeMessage:
    kind = raw[0]
    if kind == "A":
        _, src, dst, term, prev_index, prev_term, wires, commit = raw
        if isinstance(wires, bytes):
            first, wires = unpack(wires)
            if first != prev_index + 1 and wires:
                raise ValueError(f"entries from {first} after {prev_index}")
        entries = tuple(
            from_stored(i, decode_entry_wire(w)) for i, w in enumerate(wires, prev_index + 1)
        )
        return AppendEntries(src, dst, term, prev_index, prev_term, entries, commit)
    if kind == "a":
        _, src, dst, term, success, index, hint = raw
        return AppendResponse(src, dst, term, bool(success), index, hint)
    if kind == "V":
        _, src, dst, term, last_index, last_term, pre_vote, transfer = raw
        return RequestVote(src, dst, term, last_index, last_term, bool(pre_vote), bool(transfer))
    if kind == "v":
        _, src, dst, term, granted, pre_vote = raw
        return VoteResponse(src, dst, term, bool(granted), bool(pre_vote))
    if kind == "S":
        _, src, dst, term, index, sterm, voters = raw
        return InstallSnapshot(src, dst, term, SnapshotMeta(index, sterm, tuple(voters)))
    if kind == "T":
        _, src, dst, term = raw
        return TimeoutNow(src, dst, term)
    if kind == "F":
        items = tuple((inc, n, floor, decode_command(w)) for inc, n, floor, w in raw[1])
        return Forward(items)
    if kind == "N":
        return NotLeading(raw[1], tuple(raw[2]))
    if kind == "SB":
        return SnapshotBegin(raw[1])
    if kind == "SC":
        _, transfer, database, items = raw
        if database not in ("state", "log"):
            raise ValueError(f"no database {database!r}")
        return SnapshotChunk(transfer, database, tuple((bytes(k), bytes(v)) for k, v in items))
    if kind == "SE":
        _, transfer, index, term, voters = raw
        return SnapshotEnd(transfer, SnapshotMeta(index, term, tuple(voters)))
    if kind == "R":
        _, routing_key, properties, body, exchange = raw
        return ReplyTo(routing_key, properties, body, exchange)
    if kind == "H":
        return Hello(raw[1])
    raise ValueError(f"unknown kind {kind!r}")
