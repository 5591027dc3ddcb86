"""The store's own checks: the confirmed mark, and recovery refusing a log with entries
missing (or, opened to repair, noting them). compat_tests/test_store_damage.py shows the same
through a real broker and a damaged LevelDB file."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.core import commands as c
from broker.store import schema
from broker.store.damage import StoreDamaged
from broker.store.disk import Store
from broker.store.encoding import entry_wire, pack
from broker.store.mark import FILE, ConfirmedMark
from broker.store.recovery import recover


def write_entries(
    store: Store, first: int, commands: list[c.Command], mark: int | None = None
) -> None:
    """Entries `first`... as one synced batch of the log; the mark moves to `mark`."""
    last = first + len(commands) - 1
    value = schema.encode_batch(first, [entry_wire(0, 1, cmd) for cmd in commands])
    store.write_log([(schema.batch_key(first, last), value)], sync=True, confirmed=mark)


def setup() -> list[c.Command]:
    return [c.DeclareVhost("/"), c.DeclareQueue("/", "q", durable=True)]


def test_the_mark_only_moves_up_until_lowered_and_survives_a_reopen(tmp_path: Path) -> None:
    mark = ConfirmedMark(str(tmp_path))
    assert (mark.index, mark.term, mark.vote) == (0, 0, 0)
    mark.synced(10, 2, 3)
    mark.synced(7, 2, 3)
    assert mark.index == 10
    mark.close()
    mark = ConfirmedMark(str(tmp_path))
    assert (mark.index, mark.term, mark.vote) == (10, 2, 3)
    mark.lower(4)
    mark.close()
    assert ConfirmedMark(str(tmp_path)).index == 4


def test_a_garbled_mark_is_refused(tmp_path: Path) -> None:
    ConfirmedMark(str(tmp_path)).lower(12)
    raw = bytearray((tmp_path / FILE).read_bytes())
    raw[7] ^= 1
    (tmp_path / FILE).write_bytes(bytes(raw))
    with pytest.raises(StoreDamaged, match="fails its checksum"):
        ConfirmedMark(str(tmp_path))


def test_only_a_synced_write_moves_the_mark(tmp_path: Path) -> None:
    store = Store(str(tmp_path))
    write_entries(store, 1, setup(), mark=2)
    store.write_log([], sync=False, confirmed=5)
    assert store.mark.index == 2
    store.close()


def test_a_log_cut_back_lowers_the_mark_first(tmp_path: Path) -> None:
    """A cluster member's uncommitted entries replaced by the leader's: not damage."""
    store = Store(str(tmp_path))
    write_entries(store, 1, [*setup(), c.DeclareVhost("v")], mark=3)
    store.write_log([(schema.batch_key(1, 3), None)], True, 2)
    write_entries(store, 1, setup(), mark=2)
    assert store.mark.index == 2
    assert recover(store).last_index == 2
    store.close()


def test_a_cluster_member_that_lost_its_vote_is_refused(tmp_path: Path) -> None:
    store = Store(str(tmp_path))
    store.write_log([(schema.META_RAFT, pack([4, 1, 0]))], True, 0, 4, 1)
    assert (store.mark.term, store.mark.vote) == (4, 1)
    # Term 4 and the vote for node 1 were synced, then lost: the log says term 3, vote 2.
    store.write_log([(schema.META_RAFT, pack([3, 2, 0]))], False)
    with pytest.raises(StoreDamaged, match="term and vote .* are 3/2, older than the 4/1"):
        recover(store)
    store.write_log([(schema.META_RAFT, pack([4, 1, 0]))], False)
    recover(store)
    store.close()


def test_a_log_short_of_the_mark_is_refused_or_repaired(tmp_path: Path) -> None:
    store = Store(str(tmp_path))
    write_entries(store, 1, setup(), mark=2)
    store.mark.synced(5)  # entries 3-5 were confirmed, and are gone
    with pytest.raises(StoreDamaged, match="log entries 3-5 are missing"):
        recover(store)
    store.close()

    store = Store(str(tmp_path), repair=True)
    recovered = recover(store)
    assert recovered.last_index == 2 and "q" in recovered.state.vhosts["/"].queues
    assert store.damage.missing == [(3, 5)] and store.damage.confirmed_lost == 3
    store.close()


def test_a_hole_in_the_log_is_refused_or_repaired(tmp_path: Path) -> None:
    store = Store(str(tmp_path))
    write_entries(store, 1, setup(), mark=2)
    publish = c.Publish("/", "", "q", {"delivery_mode": 2}, b"after the hole")
    write_entries(store, 5, [publish], mark=5)
    with pytest.raises(StoreDamaged, match="log entries 3-4 are missing"):
        recover(store)
    store.close()

    store = Store(str(tmp_path), repair=True)
    recovered = recover(store)
    assert store.damage.missing == [(3, 4)]
    queue = recovered.state.vhosts["/"].queues["q"]
    assert [m.body for m in queue.messages.values()] == [b"after the hole"]
    store.close()


def test_a_stored_message_without_its_body_is_refused_or_dropped(tmp_path: Path) -> None:
    store = Store(str(tmp_path))
    publish = c.Publish("/", "", "q", {"delivery_mode": 2}, b"body")
    write_entries(store, 1, [*setup(), publish], mark=3)
    recovered = recover(store)
    # A snapshot at 3 whose message refers to entry 3 for its body; then entry 3 goes.
    records = schema.snapshot_ops(recovered.dirty, recovered.state)
    store.write_state([*records, (schema.META_SNAPSHOT, pack(3))])
    store.write_log([(schema.batch_key(1, 3), None)], sync=True)
    with pytest.raises(StoreDamaged, match="refers to log entry 3, which is missing"):
        recover(store)
    store.close()

    store = Store(str(tmp_path), repair=True)
    recovered = recover(store)
    assert store.damage.lost_messages == 1
    assert not recovered.state.vhosts["/"].queues["q"].messages
    # The next snapshot deletes the message's record.
    assert [v for k, v in recovered.dirty.items() if k[0] == "message"] == [None]
    store.close()


def test_a_table_failing_its_checksum_is_refused(tmp_path: Path) -> None:
    store = Store(str(tmp_path))
    write_entries(store, 1, [c.DeclareVhost("/"), *[c.DeclareVhost(f"v{i}") for i in range(500)]])
    store.log_db.compact_range()  # the entries now live in a table file, not the WAL
    store.close()
    table = max((tmp_path / "log").glob("*.ldb"), key=lambda p: p.stat().st_size)
    raw = bytearray(table.read_bytes())
    for i in range(len(raw) // 3, len(raw) // 3 + 8):
        raw[i] ^= 0xFF
    table.write_bytes(bytes(raw))
    with pytest.raises(StoreDamaged, match="fails its checksum"):
        recover(Store(str(tmp_path)))


def test_a_repair_with_nothing_missing_says_so(tmp_path: Path) -> None:
    store = Store(str(tmp_path))
    write_entries(store, 1, setup(), mark=2)
    store.close()
    store = Store(str(tmp_path), repair=True)
    recover(store)
    assert store.damage.report() == ["nothing is missing: all that was confirmed (up to 2) is kept"]
    store.close()
