"""Random command sequences through snapshots, the real store and the committer.

The sequences come from the reference-model runner of test_core_properties. What must hold:

- a state restored from a snapshot is the state that was snapshotted, and applying the same
  log after it gives the same replies and the same state (what a replica does);
- recovering from the store (snapshots and log written by the committer) gives exactly the
  state of a node that applied every entry, wherever the node stopped;
- a command that fails changes nothing, whatever failure is injected into the sequence;
- a command that fails half-way (an unexpected exception anywhere inside it) is undone: the
  state is the one without it, also after a restart.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from broker.core import commands as c
from broker.core.errors import BrokerError, InternalError
from broker.core.queue import MessageQueue
from broker.core.state import StateMachine
from broker.store import schema
from broker.store.committer import Committer
from broker.store.disk import Store
from broker.store.encoding import decode_entry, encode_entry
from broker.store.recovery import recover
from tests.pure_python import pure_python_only
from tests.state_dump import dump, entry_refs
from tests.test_core_properties import (  # noqa: F401 (small_cold_limits: a fixture)
    CONSUMER,
    PROPERTY_SETTINGS,
    TAG,
    VH,
    Config,
    Runner,
    configs,
    operations,
    output,
    small_cold_limits,
)


def restored(records: dict[bytes, bytes], log: list[bytes]) -> StateMachine:
    """A state machine loaded from snapshot records, with the log (its entries, encoded)."""
    sm = StateMachine()
    sm.entries = lambda i: decode_entry(log[i - 1])[2]
    schema.restore(sm, sorted(records.items()), sm.entries)
    return sm


def write_snapshot(records: dict[bytes, bytes], runner: Runner) -> None:
    """Bring the snapshot `records` up to the runner's state, as a snapshot write does."""
    for key, value in schema.snapshot_ops(runner.dirty, runner.sm):
        if value is None:
            records.pop(key, None)
        else:
            records[key] = value
    runner.dirty = {}


def commands_of(entries: list[bytes]) -> list[tuple[int, Any]]:
    return [decode_entry(raw)[1:] for raw in entries]


# -- snapshots -----------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(cfg=configs, ops=operations, data=st.data())
def test_a_snapshot_restores_the_state_and_the_log_continues_alike(
    cfg: Config, ops: list[tuple[Any, ...]], data: st.DataObject
) -> None:
    cut = data.draw(st.integers(0, len(ops)), label="cut")
    points = set(data.draw(st.lists(st.integers(0, cut), max_size=4), label="snapshots"))
    original = Runner(cfg, check_model=False)
    records: dict[bytes, bytes] = {}
    for i, op in enumerate(ops[:cut]):
        if i in points:
            write_snapshot(records, original)
        original.run([op])
    write_snapshot(records, original)
    replica = restored(records, original.entries)
    assert dump(replica) == dump(original.sm)

    done = len(original.entries)
    original.run(ops[cut:])
    for index, (time, command) in enumerate(commands_of(original.entries[done:]), done + 1):
        reply, error, effects, _ = replica.apply(command, c.Meta(index, time))
        assert output(reply, error, effects) == original.outputs[index - 1]
    assert dump(replica) == dump(original.sm)


# -- the store, through the committer ------------------------------------------------------


def run_committer(
    committer: Committer,
    store: Store,
    commands: list[tuple[int, Any]],
    replies: list[Any] | None = None,
) -> None:
    """Propose every command and drive the writes to the store until nothing is left (the
    driver's job, without a loop); rebuild the state when an entry fails half-way."""

    def done(reply: Any, error: BrokerError | None) -> None:
        if replies is not None:
            replies.append(error if error is not None else reply)

    def drive() -> None:
        busy = True
        while busy:
            busy = False
            while (write := committer.next_write()) is not None:
                busy = True
                store.write_log(write.ops, write.sync)
                committer.written(write)
                while committer.rebuild_needed is not None:
                    index = committer.rebuild_needed
                    again = recover(store, skip=committer.skipped | {index}, upto=index - 1)
                    committer.rebuilt(again.state, again.dirty, again.stored_seq)
            if (snapshot := committer.next_snapshot()) is not None:
                busy = True
                store.write_state(snapshot.ops)
                committer.snapshot_written(snapshot)
        for done_, reply, error, _ in committer.take_releases():
            if done_ is not None:
                done_(reply, error)

    for time, command in commands:
        committer.propose(command, time, done)
        drive()
    drive()


@PROPERTY_SETTINGS
@given(cfg=configs, ops=operations, data=st.data())
def test_recovery_from_the_store_gives_the_state_of_every_entry_applied(
    cfg: Config, ops: list[tuple[Any, ...]], data: st.DataObject
) -> None:
    original = Runner(cfg, check_model=False)
    original.run(ops)
    commands = commands_of(original.entries)
    stop = data.draw(st.integers(0, len(commands)), label="stop")
    every = data.draw(st.integers(1, 40), label="snapshot_records")
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(tmp)
        try:
            live_state = StateMachine()
            live_state.entries = store.entry_reader()
            committer = Committer(live_state, snapshot_records=every)
            run_committer(committer, store, commands[:stop])
            live = dump(committer.state)
            # Once a snapshot covers everything, the log keeps only the batches holding
            # entries whose bodies messages use.
            committer.snapshot_now()
            run_committer(committer, store, [])
            behind = committer.snapshot_index
            refs = entry_refs(committer.state)
            kept = [b for b in store.log_batches() if b[1] <= behind]
            for first, last in kept:
                assert any(i in refs for i in range(first, last + 1))
            covered = {i for first, last in store.log_batches() for i in range(first, last + 1)}
            assert {i for i in refs if i <= behind} <= covered
        finally:
            store.close()
        store = Store(tmp)
        try:
            recovered = recover(store)
            recovered_dump = dump(recovered.state)  # (cold bodies are read from the store)
        finally:
            store.close()
    expected = StateMachine()
    for index, (time, command) in enumerate(commands[:stop], 1):
        expected.apply(command, c.Meta(index, time))
    assert live == dump(expected)
    assert recovered_dump == live
    assert recovered.last_index == stop

    # A restart: what the connections of node 1 held is released, what is not durable goes.
    if VH not in expected.vhosts:
        return
    after = recovered.state
    after.apply(c.ReleaseNode(1), c.Meta(stop + 1, 10**9))
    after.apply(c.DropTransient(), c.Meta(stop + 2, 10**9))
    vh = after.vhosts[VH]
    kept = {n for n, q in expected.vhosts[VH].queues.items() if q.survives_restart}
    assert set(vh.queues) == kept
    assert "tx" not in vh.exchanges
    assert not after.consumers
    for q in vh.queues.values():
        assert not q.unacked and not q.consumers
        assert all(m.persistent for m in q.messages.values())


# -- commands that fail change nothing -----------------------------------------------------


def failing_commands(sm: StateMachine) -> list[Any]:
    """Commands that must fail in any state the runner makes, one per way to fail."""
    missing = "no-such-queue"
    publish = c.Publish(VH, "", "q0", {"delivery_mode": 2}, b"x")
    return [
        c.Publish(VH, "nope", "k", {}, b"x"),
        c.Publish(VH, "ex", "a", {"expiration": "soon"}, b"x"),
        c.Publish("no-vhost", "", "q0", {}, b"x"),
        c.Consume(VH, missing, CONSUMER, "t"),
        c.Get(VH, missing, CONSUMER),
        c.DeclareQueue(VH, "q0", durable=False),
        c.DeclareQueue(VH, "amq.mine"),
        c.DeclareQueue(VH, "fresh", arguments={"x-overflow": "sideways"}),
        c.DeclareQueue(VH, "fresh", arguments={"x-message-ttl": -5}),
        c.DeclareExchange(VH, "ex", "topic"),
        c.DeclareExchange(VH, "odd", "no-such-type"),
        c.DeleteExchange(VH, "amq.direct"),
        c.Bind(VH, "ex", missing, True, "k"),
        c.Bind(VH, "", "q0", True, "k"),
        c.Unbind(VH, "", "q0", True, "k"),
        c.SetQueueArguments(VH, "q0", {"x-max-priority": 9}),
        c.Receive(VH, "q0", 0),
        c.Receive(VH, missing),
        c.ChangeVisibility(VH, "q0", "1.1", -1),
        c.DeleteByHandle(VH, "q0", "not-a-handle"),
        c.Rewind(VH, missing, 0),
        c.DeleteUser("nobody"),
        c.SetPermissions("nobody", VH, ".*", ".*", ".*"),
        c.DeleteAccessKey("nokey"),
        c.OpenSession("no-vhost", "id", (1, 9), (1, 9, 0), True, "q", ("g",)),
        c.PurgeQueue(VH, missing),
        c.Batch([publish, c.Publish(VH, "nope", "k", {}, b"x")]),
        c.Batch([publish, c.DeclareQueue(VH, "fresh")]),
        c.Batch([publish, c.PutRecord("no-vhost", ("g",), "n", 1)]),
    ]


def sometimes_failing(sm: StateMachine) -> list[Any]:
    """Commands that fail in some states: they must then change nothing either."""
    publish = c.Publish(VH, "", "q0", {"delivery_mode": 2}, b"x")
    return [
        c.DeleteQueue(VH, "q0", if_empty=True),
        c.DeleteQueue(VH, "q0", if_unused=True),
        c.Consume(VH, "q0", CONSUMER, TAG),
        c.Consume(VH, "q1", (1, 5, 1), "x", exclusive=True),
        c.Batch([publish] * 4, refuse_when_full=True),
    ]


@pure_python_only
@PROPERTY_SETTINGS
@given(cfg=configs, ops=operations, data=st.data())
def test_a_command_that_fails_changes_nothing(
    cfg: Config, ops: list[tuple[Any, ...]], data: st.DataObject
) -> None:
    runner = Runner(cfg, check_model=False)
    for op in ops:
        runner.run([op])
        always = failing_commands(runner.sm)
        maybe = sometimes_failing(runner.sm)
        pick = data.draw(st.integers(0, len(always) + len(maybe) - 1), label="injected")
        meta = c.Meta(len(runner.entries) + 1, runner.now)
        command = always[pick] if pick < len(always) else maybe[pick - len(always)]
        # In the log while it applies, as the commit path has it (a cold message it takes
        # into memory may be its own), and out of it after: the sequence goes on without it.
        runner.entries.append(encode_entry(0, runner.now, command))
        # One that must fail goes into the sequence itself; one that may succeed in this state
        # is tried on a copy (which reads a copy of the log), the sequence goes on without it.
        sm = runner.sm if pick < len(always) else copy.deepcopy(runner.sm)
        state = dump(sm)
        reply, error, effects, changes = sm.apply(command, meta)
        runner.entries.pop()
        if pick < len(always):
            assert error is not None, command
        if error is not None:
            assert (reply, effects, changes) == (None, [], [])
            assert dump(sm) == state
    # The failed commands left no trace: the same state as the sequence without them.
    alone = StateMachine()
    for index, (time, command) in enumerate(commands_of(runner.entries), 1):
        alone.apply(command, c.Meta(index, time))
    assert dump(alone) == dump(runner.sm)


# -- a command failing half-way is undone --------------------------------------------------

#: places an unexpected exception may come from, inside the state machine's work
FAULT_SITES: list[tuple[type, str]] = [
    (StateMachine, "_enqueue"),
    (StateMachine, "_forget"),
    (StateMachine, "_touch_message"),
    (StateMachine, "_dispatch"),
    (StateMachine, "_dead_letter_copy"),
    (StateMachine, "_drop_consumer"),
    (MessageQueue, "deliver"),
    (MessageQueue, "give_back"),
    (MessageQueue, "hide_for_pull"),
    (MessageQueue, "pop_head"),
]


@contextmanager
def fault(cls: type, name: str, at_call: int) -> Iterator[list[bool]]:
    """Make the `at_call`-th call of cls.name raise, once; yields [whether it fired]."""
    original: Callable[..., Any] = getattr(cls, name)
    calls = [0]
    fired = [False]

    def failing(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == at_call:
            fired[0] = True
            raise RuntimeError(f"injected failure in {cls.__name__}.{name}")
        return original(*args, **kwargs)

    setattr(cls, name, failing)
    try:
        yield fired
    finally:
        setattr(cls, name, original)


@pure_python_only
@PROPERTY_SETTINGS
@given(cfg=configs, ops=operations, data=st.data())
def test_a_command_failing_half_way_is_undone(
    cfg: Config, ops: list[tuple[Any, ...]], data: st.DataObject
) -> None:
    original = Runner(cfg, check_model=False)
    original.run(ops)
    commands = commands_of(original.entries)
    cls, name = data.draw(st.sampled_from(FAULT_SITES), label="site")
    at_call = data.draw(st.integers(1, 8), label="at_call")
    every = data.draw(st.integers(1, 40), label="snapshot_records")
    replies: list[Any] = []
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(tmp)
        try:
            live_state = StateMachine()
            live_state.entries = store.entry_reader()
            committer = Committer(live_state, snapshot_records=every)
            with fault(cls, name, at_call) as fired:
                run_committer(committer, store, commands, replies)
            live = dump(committer.state)
        finally:
            store.close()
        store = Store(tmp)
        try:
            after_restart = dump(recover(store).state)
        finally:
            store.close()
    failed = [i for i, reply in enumerate(replies) if isinstance(reply, InternalError)]
    assert len(failed) == (1 if fired[0] else 0)
    event(f"fault fired: {fired[0]}")
    expected = StateMachine()
    for index, (time, command) in enumerate(commands, 1):
        if index - 1 not in failed:
            expected.apply(command, c.Meta(index, time))
    assert live == dump(expected)
    assert after_restart == live


@pure_python_only
def test_an_injected_fault_does_fire() -> None:
    """The fault helper itself: the failing call raises, the others behave."""
    sm = StateMachine()
    with fault(StateMachine, "_add_vhost", 2) as fired:
        sm.apply(c.DeclareVhost("a"), c.Meta(1, 0))
        with pytest.raises(RuntimeError):
            sm.apply(c.DeclareVhost("b"), c.Meta(2, 0))
    assert fired == [True] and set(sm.vhosts) == {"a"}
