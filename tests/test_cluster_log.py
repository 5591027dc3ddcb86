"""Raft's log on the node's LevelDB (RaftLog) and what nodes send each other (wire): entries
survive a reopen, a conflicting suffix is cut, the snapshot moves the start, and every message
decodes to what was encoded."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.core import commands as c
from broker.replication import wire
from broker.replication.log_store import Proposal, RaftLog, from_stored, to_wire
from broker.replication.raft import (
    AppendEntries,
    AppendResponse,
    Entry,
    HardState,
    InstallSnapshot,
    RequestVote,
    SnapshotMeta,
    TimeoutNow,
    VoteResponse,
)
from broker.store import schema
from broker.store.disk import Store
from broker.store.encoding import decode_entry_wire, pack, unpack

VOTERS = (1, 2, 3)


def publish(body: bytes) -> c.Publish:
    return c.Publish("/", "", "q", {"delivery_mode": 2}, body)


def entry(index: int, term: int, body: bytes = b"x", key: int | None = None) -> Entry:
    k = None if key is None else (2, 77, key)
    return Entry(index, term, Proposal(1000 + index, publish(body), k, 1), None, 64 + len(body))


def write(log: RaftLog, entries: list[Entry], hard: HardState | None = None) -> None:
    log.store.write_log(log.append_ops(entries, hard), sync=True)
    log.appended(entries, hard)


@pytest.fixture
def store(tmp_path: Path):
    s = Store(str(tmp_path / "data"))
    yield s
    s.close()


def bodies(entries: list[Entry]) -> list[bytes]:
    return [e.data.command.body for e in entries]


def test_entries_and_hard_state_survive_a_reopen(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "data"))
    log = RaftLog(store, VOTERS)
    write(log, [entry(1, 1, b"a"), entry(2, 1, b"b", key=5)], HardState(1, 2, 1))
    write(log, [Entry(3, 2)], HardState(2, 3, 2))  # a new leader's no-op
    store.close()
    store = Store(str(tmp_path / "data"))
    try:
        log = RaftLog(store, VOTERS)
        assert log.initial_state() == (HardState(2, 3, 2), VOTERS)
        assert (log.first_index(), log.last_index()) == (1, 3)
        assert [log.term(i) for i in (0, 1, 2, 3)] == [0, 1, 1, 2]
        got = log.entries(1, 4, 1 << 20)
        assert bodies(got[:2]) == [b"a", b"b"]
        assert got[1].data.key == (2, 77, 5) and got[1].data.floor == 1
        assert got[2].data is None and got[2].term == 2
    finally:
        store.close()


def test_a_conflicting_suffix_is_replaced(store: Store) -> None:
    log = RaftLog(store, VOTERS)
    write(log, [entry(i, 1, b"old%d" % i) for i in range(1, 6)])
    write(log, [entry(4, 2, b"new4"), entry(5, 2, b"new5"), entry(6, 2, b"new6")])
    assert [log.term(i) for i in range(1, 7)] == [1, 1, 1, 2, 2, 2]
    assert bodies(log.entries(1, 7, 1 << 20)) == [
        b"old1",
        b"old2",
        b"old3",
        b"new4",
        b"new5",
        b"new6",
    ]
    reopened = RaftLog(store, VOTERS)
    assert bodies(reopened.entries(1, 7, 1 << 20)) == bodies(log.entries(1, 7, 1 << 20))
    assert store.log_batches() == [(1, 3), (4, 6)]


def test_entries_respect_max_bytes_but_return_at_least_one(store: Store) -> None:
    log = RaftLog(store, VOTERS)
    write(log, [entry(i, 1, b"x" * 100) for i in range(1, 11)])
    assert len(log.entries(1, 11, 400)) == 2
    assert len(log.entries(1, 11, 1)) == 1


def test_the_snapshot_moves_the_start_of_the_log(store: Store) -> None:
    log = RaftLog(store, VOTERS)
    write(log, [entry(i, 1) for i in range(1, 9)])
    meta = SnapshotMeta(5, 1, VOTERS)
    store.write_state(
        [(schema.META_SNAPSHOT, pack(5)), (schema.META_RAFT_SNAPSHOT, pack([5, 1, [1, 2, 3]]))]
    )
    log.compacted(meta)
    assert (log.snapshot(), log.first_index(), log.last_index(), log.term(5)) == (meta, 6, 8, 1)
    with pytest.raises(IndexError):
        log.entries(3, 6, 1 << 20)
    assert [e.index for e in RaftLog(store, VOTERS).entries(6, 9, 1 << 20)] == [6, 7, 8]


def test_config_entries_carry_the_voters() -> None:
    members = c.SetMembers(((1, "a:1"), (2, "b:2"), (4, "d:4")))
    e = Entry(9, 3, Proposal(5, members, (1, 1, 1), 0), (1, 2, 4), 64)
    again = from_stored(9, decode_entry_wire(unpack(pack(to_wire(e)))))
    assert again.config == (1, 2, 4) and again.data.command == members


MESSAGES = [
    AppendEntries(1, 2, 3, 4, 2, (entry(5, 3, b"m", key=9), Entry(6, 3)), 4),
    AppendEntries(1, 3, 3, 6, 3, (), 6),
    AppendResponse(2, 1, 3, True, 6, 0),
    AppendResponse(2, 1, 3, False, 4, 2),
    RequestVote(3, 1, 4, 6, 3, True, False),
    VoteResponse(1, 3, 4, True, True),
    InstallSnapshot(1, 2, 3, SnapshotMeta(100, 2, VOTERS)),
    TimeoutNow(1, 2, 3),
    wire.Forward(((77, 5, 3, publish(b"f")),)),
    wire.NotLeading(3, (5, 6)),
    wire.SnapshotBegin(1),
    wire.SnapshotChunk(1, "log", ((b"k", b"v"),)),
    wire.SnapshotEnd(1, SnapshotMeta(100, 2, VOTERS)),
    wire.ReplyTo("amq.rabbitmq.reply-to.2.abc", {"correlation_id": "1"}, b"r", ""),
    wire.Hello(123456),
]


def same(a: object, b: object) -> bool:
    if isinstance(a, AppendEntries) and isinstance(b, AppendEntries):
        fields = ("src", "dst", "term", "prev_index", "prev_term", "commit")
        if any(getattr(a, f) != getattr(b, f) for f in fields):
            return False
        return [to_wire(e) for e in a.entries] == [to_wire(e) for e in b.entries]
    return a == b


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_decodes_to_what_was_sent(msg: object) -> None:
    raw = unpack(pack(wire.encode(msg)))  # type: ignore[arg-type]
    assert same(wire.decode(raw), msg)


def test_entries_packed_by_the_leader_travel_as_stored() -> None:
    msg = MESSAGES[0]
    assert isinstance(msg, AppendEntries)
    packed = schema.encode_batch(5, [to_wire(e) for e in msg.entries])
    raw = unpack(pack(wire.encode(msg, packed)))
    assert wire.packed_entries(raw) == packed
    assert same(wire.decode(raw), msg)


@pytest.mark.parametrize(
    "raw", [[], ["?"], ["A", 1], ["SC", 1, "other", []], ["V", "x"], "text", None, ["F", [[1]]]]
)
def test_garbage_is_a_wire_error(raw: object) -> None:
    with pytest.raises(wire.WireError):
        wire.decode(raw)
