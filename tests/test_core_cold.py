"""The packed cold tail of a deep queue: order, chunks, taking, its stored form, its size."""

from __future__ import annotations

import tracemalloc

import pytest

from broker.core import cold
from broker.core.cold import ColdChunk, ColdEntry, ColdTail


def entry(i: int, persistent: bool = True) -> ColdEntry:
    expires = None if i % 2 else 1000 + i
    return ColdEntry(i + 1, 10 + i, 500, expires, (100 + i // 10, i % 10), 1024 + i, persistent)


def filled(n: int) -> ColdTail:
    tail = ColdTail()
    for i in range(n):
        tail.append(entry(i))
    return tail


def test_entries_come_back_in_order_with_their_fields() -> None:
    tail = filled(5)
    assert len(tail) == 5 and tail.bytes == sum(1024 + i for i in range(5))
    assert tail.peek() == entry(0)
    first, changed = tail.take(2)
    assert first == [entry(0), entry(1)] and len(changed) == 1
    assert len(tail) == 3 and tail.bytes == 1026 + 1027 + 1028
    assert list(tail) == [entry(2), entry(3), entry(4)]
    rest, _ = tail.take(10)
    assert [e.seq for e in rest] == [3, 4, 5]
    assert len(tail) == 0 and tail.bytes == 0 and tail.peek() is None and not tail.chunks


def test_chunks_fill_in_turn_and_go_when_emptied(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cold, "CHUNK", 4)
    tail = filled(10)
    assert [len(c) for c in tail.chunks] == [4, 4, 2]
    assert [c.number for c in tail.chunks] == [1, 2, 3]
    taken, changed = tail.take(5)
    assert [e.seq for e in taken] == [1, 2, 3, 4, 5]
    assert [c.number for c in changed] == [1, 2]  # 1 is emptied (its record goes), 2 changed
    assert [c.number for c in tail.chunks] == [2, 3]
    assert tail.append(entry(10)).number == 3
    assert tail.append(entry(11)).number == 3
    assert tail.append(entry(12)).number == 4
    assert [e.seq for e in tail] == list(range(6, 14))


def test_chunks_round_trip_through_their_records(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cold, "CHUNK", 8)
    tail = filled(20)
    tail.take(3)
    restored = ColdTail()
    for chunk in tail.chunks:
        restored.restore(ColdChunk.unpacked(chunk.number, chunk.packed()))
    assert list(restored) == list(tail)
    assert (len(restored), restored.bytes) == (len(tail), tail.bytes)
    assert restored.append(entry(99)).number == tail.append(entry(99)).number
    with pytest.raises(ValueError):
        ColdChunk.unpacked(1, tail.chunks[0].packed()[:-1])


def test_clear_hands_back_the_chunks_and_their_log_indexes() -> None:
    tail = filled(3)
    (gone,) = tail.clear()
    assert gone.indexes().tolist() == [100, 100, 100]
    assert len(tail) == 0 and tail.bytes == 0


def test_a_waiting_message_costs_about_fifty_bytes() -> None:
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    tail = filled(100_000)
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(tail) == 100_000
    assert used / 100_000 < 60, used / 100_000


def at(seq: int, index: int) -> ColdEntry:
    return ColdEntry(seq, seq, 500, None, (index, 0), 10, True)


@pytest.mark.parametrize("stored", [False, True])
def test_a_chunk_knows_which_log_entries_it_uses(stored: bool) -> None:
    """What decides whether a log batch may go (store/cold_refs.py): exact in order and out
    of it (a delayed message released late, a held one with no entry), also once taken from
    and after a round trip through its record."""
    chunk = ColdChunk(1)
    for seq, index in enumerate((50, 52, 52, 60, 40, 0, 70), 1):
        chunk.append(at(seq, index))
    chunk.take(1)  # the entry at 50 is no longer in it
    if stored:
        chunk = ColdChunk.unpacked(1, chunk.packed())
    used = {52, 60, 40, 70}
    for first, last in [
        (40, 40),
        (41, 51),
        (50, 50),
        (52, 52),
        (53, 59),
        (60, 69),
        (70, 80),
        (1, 39),
    ]:
        assert chunk.refers(first, last) == any(first <= i <= last for i in used), (first, last)
    chunk.take(10)
    assert not chunk.refers(1, 100)


def test_in_order_chunks_answer_without_a_scan() -> None:
    chunk = ColdChunk(1)
    for seq in range(1, 5):
        chunk.append(at(seq, 10 * seq))
    assert chunk.ordered and (chunk.low, chunk.high) == (10, 40)
    assert chunk.refers(15, 20) and not chunk.refers(11, 19) and not chunk.refers(41, 90)
    chunk.append(at(5, 5))
    assert not chunk.ordered and chunk.low == 5 and chunk.refers(1, 5)
