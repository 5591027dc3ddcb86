"""The sans-IO committer, driven by hand: what it asks to write, what it releases, and when."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from broker.core import commands as c
from broker.core.errors import BrokerError, NotFound, StoreFailed
from broker.core.model import Deliver
from broker.core.state import StateMachine
from broker.store import committer as committer_module
from broker.store import schema
from broker.store.committer import UNSYNCED_WRITES, Committer, Write
from broker.store.disk import Store
from broker.store.recovery import recover
from tests.state_dump import dump

VH = "/"
OWNER = (1, 1, 1)


class Replies:
    """Collects what the committer releases, in order."""

    def __init__(self, committer: Committer) -> None:
        self.committer = committer
        self.out: list[Any] = []

    def done(self, name: str) -> Any:
        def record(reply: Any, error: BrokerError | None) -> None:
            self.out.append((name, type(error).__name__ if error else "ok"))

        return record

    def take(self) -> list[Any]:
        for done, reply, error, effects in self.committer.take_releases():
            if effects:
                self.out.extend(("deliver", e.message.body) for e in effects if type(e) is Deliver)
            if done is not None:
                done(reply, error)
        out, self.out = self.out, []
        return out


def ready_committer() -> tuple[Committer, Replies]:
    committer = Committer(StateMachine())
    committer.propose(c.DeclareVhost(VH), 1, None)
    committer.propose(c.DeclareQueue(VH, "q"), 1, None)
    write = committer.next_write()
    assert write is not None
    committer.written(write)
    committer.synced(write.last_index)
    replies = Replies(committer)
    replies.take()
    return committer, replies


def publish(body: bytes) -> c.Publish:
    return c.Publish(VH, "", "q", {"delivery_mode": 2}, body)


def test_nothing_is_applied_before_it_is_written() -> None:
    committer, replies = ready_committer()
    committer.propose(publish(b"a"), 5, replies.done("a"))
    assert committer.state.queue(VH, "q").ready_count == 0
    write = committer.next_write()
    assert write is not None and write.entries == 1 and write.wants_sync
    assert replies.take() == []
    committer.written(write)
    assert committer.state.queue(VH, "q").ready_count == 1
    assert replies.take() == []  # applied, but its reply promises durability: not yet
    sync = committer.next_write()
    assert sync is not None and sync.sync and sync.ops == []
    committer.written(sync)
    assert replies.take() == [("a", "ok")]


def test_proposals_during_a_write_go_together_in_the_next_one() -> None:
    committer, replies = ready_committer()
    committer.propose(publish(b"1"), 5, replies.done("1"))
    first = committer.next_write()
    assert first is not None
    for name in "234":
        committer.propose(publish(name.encode()), 6, replies.done(name))
    assert committer.next_write() is None  # one write at a time
    committer.written(first)
    second = committer.next_write()
    assert second is not None and second.entries == 3 and len(second.ops) == 1
    first_index, last_index = schema.batch_range(second.ops[0][0])
    assert (first_index, last_index) == (first.last_index + 1, first.last_index + 3)


def test_replies_leave_in_log_order_and_effects_at_once() -> None:
    committer, replies = ready_committer()
    committer.propose(
        c.Consume(VH, "q", OWNER, "t", prefetch=10), 5, replies.done("consume"), False
    )
    committer.propose(publish(b"m"), 5, replies.done("publish"))
    committer.propose(c.Get(VH, "nope", OWNER), 5, replies.done("get"), False)
    write = committer.next_write()
    assert write is not None
    committer.written(write)
    # The delivery goes out when applied; the publish's reply waits for the sync, and the
    # get's (which promises nothing) waits behind it: replies keep the log's order.
    assert replies.take() == [("deliver", b"m"), ("consume", "ok")]
    sync = committer.next_write()
    assert sync is not None
    committer.written(sync)
    assert replies.take() == [("publish", "ok"), ("get", "NotFound")]


def test_a_barrier_waits_for_everything_before_it() -> None:
    committer, replies = ready_committer()
    committer.barrier(replies.done("idle"))
    assert replies.take() == [("idle", "ok")]  # nothing pending: at once
    committer.propose(publish(b"m"), 5, None, False)
    committer.barrier(replies.done("after"))
    write = committer.next_write()
    assert write is not None and write.wants_sync  # the barrier waits for it
    committer.written(write)
    assert replies.take() == []
    sync = committer.next_write()
    assert sync is not None and sync.sync
    committer.written(sync)
    assert replies.take() == [("after", "ok")]


def test_a_failed_write_acknowledges_nothing_until_the_store_works(
    caplog: pytest.LogCaptureFixture,
) -> None:
    committer, replies = ready_committer()
    committer.propose(publish(b"written"), 5, replies.done("written"))
    write = committer.next_write()
    assert write is not None
    committer.written(write)
    committer.propose(publish(b"lost"), 6, replies.done("lost"))
    assert committer.next_write() is not None
    with caplog.at_level(logging.CRITICAL):
        committer.write_failed(OSError("disk on fire"))
    assert "acknowledges nothing" in caplog.text
    # Never written: refused. Applied but not synced: it waits for the recovery write.
    assert replies.take() == [("lost", "StoreFailed")]
    committer.propose(publish(b"later"), 7, replies.done("later"))
    committer.barrier(replies.done("barrier"))
    assert replies.take() == [("later", "StoreFailed")]  # the barrier waits for the store
    assert committer.next_write() is None and committer.next_snapshot() is None
    assert isinstance(committer._failure(), StoreFailed)


def test_after_a_failed_write_the_store_is_made_whole_and_held_commands_go_on() -> None:
    committer, replies = ready_committer()
    committer.propose(publish(b"written"), 5, replies.done("written"))
    written = committer.next_write()
    assert written is not None
    committer.written(written)  # applied, not synced
    committer.propose(publish(b"refused"), 6, replies.done("refused"))
    committer.propose(publish(b"quiet"), 6, replies.done("quiet"), durable=False)
    failed = committer.next_write()
    assert failed is not None and failed.last_index == written.last_index + 2
    committer.write_failed(OSError("no space left on device"))
    assert replies.take() == [("refused", "StoreFailed")]
    # Meanwhile: a confirm cannot be promised, an ack-like command and a barrier wait.
    committer.propose(publish(b"later"), 7, replies.done("later"))
    committer.propose(publish(b"no-reply"), 7, None, durable=False)
    committer.barrier(replies.done("barrier"))
    assert replies.take() == [("later", "StoreFailed")]
    assert committer.next_write() is None
    # Recovery writes again what was not synced, and deletes the batch that failed, whose
    # indexes are handed out again.
    fix = committer.recovery_write()
    assert fix.sync and fix.last_index == written.last_index
    assert fix.ops == [*written.ops, (failed.ops[0][0], None)]
    committer.recovered()
    assert replies.take() == [("written", "ok")]  # applied before, on disk now
    resumed = committer.next_write()
    assert resumed is not None
    assert resumed.ops[0][0] == schema.batch_key(written.last_index + 1, written.last_index + 2)
    committer.written(resumed)
    committer.synced(resumed.last_index)
    assert replies.take() == [("quiet", "ok"), ("barrier", "ok")]
    assert [m.body for m in committer.state.queue(VH, "q").messages.values()] == [
        b"written",
        b"quiet",
        b"no-reply",
    ]


def test_a_failing_command_gets_its_error_and_changes_nothing() -> None:
    committer, replies = ready_committer()
    before, dirty = dump(committer.state), dict(committer.dirty)
    committer.propose(c.Bind(VH, "amq.direct", "nope", True, "k"), 5, replies.done("bind"))
    write = committer.next_write()
    assert write is not None
    committer.written(write)
    committer.written(Write([], write.last_index, sync=True))
    assert replies.take() == [("bind", "NotFound")]
    assert dump(committer.state) == before
    assert committer.dirty == dirty


def test_snapshots_are_taken_when_due_and_free_the_log_behind_them(tmp_path: Path) -> None:
    store = Store(str(tmp_path))
    try:
        committer = Committer(StateMachine(), snapshot_records=3)

        def drive() -> None:
            while (write := committer.next_write()) is not None:
                store.write_log(write.ops, write.sync)
                committer.written(write)
            if (snapshot := committer.next_snapshot()) is not None:
                store.write_state(snapshot.ops)
                committer.snapshot_written(snapshot)
                drive()

        for command in (c.DeclareVhost(VH), c.DeclareQueue(VH, "q"), publish(b"kept")):
            committer.propose(command, 1, None)
            drive()
        consumer = c.Consume(VH, "q", OWNER, "t", no_ack=True)
        for body in (b"gone", b"also gone"):
            committer.propose(publish(body), 2, None)
            drive()
        committer.propose(consumer, 3, None)
        committer.snapshot_now()
        drive()
        assert committer.stats["snapshots"] >= 2
        assert committer.snapshot_index == committer.applied_index == 6
        # Every body was delivered and forgotten: no batch of the log is needed any more.
        assert store.log_batches() == []
        recovered = recover(store)
        assert dump(recovered.state) == dump(committer.state)
    finally:
        store.close()


def test_recovery_replays_the_log_after_the_snapshot(tmp_path: Path) -> None:
    store = Store(str(tmp_path))
    try:
        committer = Committer(StateMachine())
        for command in (c.DeclareVhost(VH), c.DeclareQueue(VH, "q"), publish(b"a")):
            committer.propose(command, 1, None)
        write = committer.next_write()
        assert write is not None
        store.write_log(write.ops, sync=True)
        committer.written(write)
        recovered = recover(store)
        assert recovered.snapshot_index == 0 and recovered.last_index == 3
        assert recovered.entries == 3
        assert dump(recovered.state) == dump(committer.state)
        with pytest.raises(NotFound):
            recovered.state.queue(VH, "other")
    finally:
        store.close()


def test_recovery_keeps_the_bodies_its_snapshot_refers_to(tmp_path: Path) -> None:
    """A message in the snapshot, consumed by an entry after it: recovery must not count its
    body's batch as garbage (the snapshot on disk still refers to it until the next one)."""
    store = Store(str(tmp_path))
    try:
        committer = Committer(StateMachine())

        def write_all() -> None:
            while (write := committer.next_write()) is not None:
                store.write_log(write.ops, write.sync)
                committer.written(write)

        for command in (c.DeclareVhost(VH), c.DeclareQueue(VH, "q"), publish(b"kept")):
            committer.propose(command, 1, None)
        write_all()
        committer.snapshot_now()
        snapshot = committer.next_snapshot()
        assert snapshot is not None
        store.write_state(snapshot.ops)
        committer.snapshot_written(snapshot)
        committer.propose(c.Consume(VH, "q", OWNER, "t", no_ack=True), 2, None)
        write_all()  # the message is gone after the snapshot; no new snapshot yet

        recovered = recover(store)
        assert recovered.garbage == []
        store.write_log([(schema.batch_key(*b), None) for b in recovered.garbage], sync=True)
        again = recover(store)  # the snapshot still loads: its message's body is there
        assert dump(again.state) == dump(committer.state)
    finally:
        store.close()


def test_writes_kept_for_a_recovery_are_bounded_by_a_sync() -> None:
    committer, replies = ready_committer()
    for n in range(UNSYNCED_WRITES):
        committer.propose(publish(b"%d" % n), 5, None, durable=False)
        write = committer.next_write()
        assert write is not None and not write.sync
        committer.written(write)
    committer.propose(publish(b"more"), 5, None, durable=False)
    write = committer.next_write()
    assert write is not None and write.sync  # no reply waits, but memory would
    committer.written(write)
    assert committer.recovery_write().ops == []


def test_writes_kept_for_a_recovery_are_bounded_in_bytes_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(committer_module, "UNSYNCED_BYTES", 10_000)
    committer, replies = ready_committer()
    committer.propose(publish(b"x" * 6_000), 5, None, durable=False)
    write = committer.next_write()
    assert write is not None and not write.sync
    committer.written(write)
    committer.propose(publish(b"y" * 6_000), 5, None, durable=False)
    write = committer.next_write()
    assert write is not None and not write.sync
    committer.written(write)  # 12,000 bytes kept: the next write syncs
    committer.propose(publish(b"z"), 5, None, durable=False)
    write = committer.next_write()
    assert write is not None and write.sync
    committer.written(write)
    assert committer.recovery_write().ops == []


def test_a_command_the_log_cannot_hold_is_refused_and_the_log_goes_on() -> None:
    committer, replies = ready_committer()
    committer.propose(publish(b"a"), 5, replies.done("a"))
    too_big = c.Publish(VH, "", "q", {"headers": {"n": 2**70}}, b"x")
    committer.propose(too_big, 5, replies.done("too-big"))
    committer.propose(publish(b"b"), 5, replies.done("b"))
    write = committer.next_write()
    assert write is not None and write.entries == 3
    committer.written(write)
    committer.synced(write.last_index)
    assert replies.take() == [("a", "ok"), ("too-big", "InvalidArgument"), ("b", "ok")]
    assert committer.state.queue(VH, "q").ready_count == 2
    committer.propose(publish(b"c"), 6, replies.done("c"))
    write = committer.next_write()
    assert write is not None
    committer.written(write)
    committer.synced(write.last_index)
    assert replies.take() == [("c", "ok")]
