"""The packed cold tail of a deep queue: order, taking, dropping, its stored form, its size."""

from __future__ import annotations

import tracemalloc

import pytest

from broker.core.cold import ColdEntry, ColdTail


def filled(n: int, persistent: bool = True) -> ColdTail:
    tail = ColdTail()
    for i in range(n):
        expires = None if i % 2 else 1000 + i
        tail.append(i + 1, 10 + i, 500, expires, (100 + i // 10, i % 10), 1024 + i, persistent)
    return tail


def test_entries_come_back_in_order_with_their_fields() -> None:
    tail = filled(5)
    assert len(tail) == 5 and tail.bytes == sum(1024 + i for i in range(5))
    assert tail.peek() == ColdEntry(1, 10, 500, 1000, (100, 0), 1024, True)
    first = tail.take(2)
    assert [e.seq for e in first] == [1, 2]
    assert first[1].expires_at is None
    assert len(tail) == 3 and tail.bytes == 1026 + 1027 + 1028
    assert [e.seq for e in tail] == [3, 4, 5]
    assert [e.seq for e in tail.take(10)] == [3, 4, 5]
    assert len(tail) == 0 and tail.bytes == 0 and tail.peek() is None
    assert tail.take(1) == []


def test_taking_in_small_steps_keeps_order_across_compaction() -> None:
    tail = filled(1000)
    seen = []
    added = []
    while len(tail):
        seen += [e.seq for e in tail.take(7)]
        if len(added) < 50:  # appends while taking
            added.append(5000 + len(added))
            tail.append(added[-1], 0, 0, None, (1, 0), 1, True)
    assert seen == list(range(1, 1001)) + added


def test_clear_and_drop_transient_give_the_log_indexes_to_release() -> None:
    tail = filled(3)
    tail.append(99, 99, 0, None, (7, 1), 10, False)
    assert tail.drop_transient() == [7]
    assert [e.seq for e in tail] == [1, 2, 3]
    assert tail.clear() == [100, 100, 100]
    assert len(tail) == 0 and tail.bytes == 0


def test_the_packed_form_round_trips_and_is_checked() -> None:
    tail = filled(50)
    tail.take(5)
    copy = ColdTail.unpacked(tail.packed())
    assert list(copy) == list(tail) and copy.bytes == tail.bytes
    assert list(ColdTail.unpacked(ColdTail().packed())) == []
    with pytest.raises(ValueError):
        ColdTail.unpacked(tail.packed()[:-1])


def test_a_waiting_message_costs_about_fifty_bytes() -> None:
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    tail = filled(100_000)
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(tail) == 100_000
    assert used / 100_000 < 60, used / 100_000
