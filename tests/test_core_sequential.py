"""Sequential queues in the core: one message in flight per group, for push consumers and
pull receivers alike, redeliveries first, and the in-flight groups rebuilt on restore."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from broker.core import commands as c
from broker.core import sequential
from broker.core.errors import PreconditionFailed, ReceiptHandleInvalid
from broker.core.model import MessagesAvailable
from tests.core_helpers import OWNER, VH, Core, ready_bodies, reloaded, restart

SEQ = {"x-sequential": True}
#: raise for a deeper search, e.g. PROPERTY_EXAMPLES=5000
PROPERTY_SETTINGS = settings(
    max_examples=int(os.environ.get("PROPERTY_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.fixture
def core() -> Core:
    return Core()


def send(core: Core, *items: str) -> None:
    """Publish to "q": "A1" is body A1 in group A; a body without a letter prefix ("n1")
    carries no group."""
    for body in items:
        group = body[0] if body[0].isupper() else None
        core.publish("q", body, headers=None if group is None else {"x-group-id": group})


def bodies(received: list[Any]) -> list[bytes]:
    return [r.message.body for r in received]


def test_one_message_in_flight_without_groups(core: Core) -> None:
    core.queue("q", **SEQ)
    send(core, "n1", "n2", "n3")
    got = core.consume("q", prefetch=10)
    assert [d.message.body for d in got] == [b"n1"]
    assert core.get("q") is None
    assert core.receive("q", 5) == []
    got = core.settle("ack", "q", got[0].message.seq)
    assert [d.message.body for d in got] == [b"n2"]
    got = core.settle("requeue", "q", got[0].message.seq)
    assert [(d.message.body, d.redelivered) for d in got] == [(b"n2", True)]


def test_one_message_in_flight_per_group(core: Core) -> None:
    core.queue("q", **SEQ)
    send(core, "A1", "A2", "B1", "B2", "n1", "A3", "n2")
    got = core.consume("q", prefetch=10)
    assert [d.message.body for d in got] == [b"A1", b"B1", b"n1"]
    seqs = {d.message.body: d.message.seq for d in got}
    assert [d.message.body for d in core.settle("ack", "q", seqs[b"B1"])] == [b"B2"]
    assert [d.message.body for d in core.settle("ack", "q", seqs[b"n1"])] == [b"n2"]
    assert [d.message.body for d in core.settle("ack", "q", seqs[b"A1"])] == [b"A2"]


def test_group_header_may_be_bytes_or_a_number(core: Core) -> None:
    core.queue("q", **SEQ)
    core.publish("q", "1", headers={"x-group-id": b"7"})
    core.publish("q", "2", headers={"x-group-id": "7"})
    core.publish("q", "3", headers={"x-group-id": 7})
    core.publish("q", "4", headers={"x-group-id": "8"})
    assert bodies(core.receive("q", 10)) == [b"1", b"4"]


def test_pull_receivers_get_the_next_one_only_after_a_delete(core: Core) -> None:
    core.queue("q", **SEQ)
    send(core, "A1", "A2", "B1")
    first = core.receive("q", 10, visibility=1000)
    assert bodies(first) == [b"A1", b"B1"]
    assert core.receive("q", 10) == []
    core.apply(c.DeleteByHandle(VH, "q", first[0].handle))
    assert MessagesAvailable(VH, "q") in core.effects
    assert bodies(core.receive("q", 10)) == [b"A2"]


def test_an_expired_visibility_redelivers_first(core: Core) -> None:
    core.queue("q", **SEQ)
    send(core, "A1", "A2", "B1", "B2")
    assert bodies(core.receive("q", 10, visibility=1000, at=0)) == [b"A1", b"B1"]
    effects = core.tick(1000)
    assert MessagesAvailable(VH, "q") in effects
    again = core.receive("q", 10, visibility=1000)
    assert [(r.message.body, r.message.delivery_count) for r in again] == [(b"A1", 2), (b"B1", 2)]


def test_push_and_pull_share_the_groups_in_flight(core: Core) -> None:
    core.queue("q", **SEQ)
    send(core, "A1", "A2", "B1", "B2")
    assert bodies(core.receive("q", 1)) == [b"A1"]
    got = core.consume("q", prefetch=10)
    assert [d.message.body for d in got] == [b"B1"]
    assert core.receive("q", 10) == []
    core.settle("ack", "q", got[0].message.seq)
    assert [d.message.body for d in core.deliveries()] == [b"B2"]


def test_ack_wakes_long_polls_when_no_consumer_takes_the_next(core: Core) -> None:
    core.queue("q", **SEQ)
    send(core, "n1", "n2")
    msg = core.get("q")
    assert msg is not None and core.get("q") is None
    core.settle("ack", "q", msg.seq)
    assert MessagesAvailable(VH, "q") in core.effects


def test_messages_taken_out_of_order_are_delivered_once_in_group_order(core: Core) -> None:
    core.queue("q", **SEQ)
    send(core, "A1", "B1", "B2", "A2", "B3", "C1")
    seen = []
    while True:
        got = core.receive("q", 10, visibility=10)
        if not got:
            break
        seen += bodies(got)
        for r in got:
            core.apply(c.DeleteByHandle(VH, "q", r.handle))
    assert seen == [b"A1", b"B1", b"C1", b"B2", b"A2", b"B3"]
    assert core.q("q").messages == {} and core.q("q").ready_count == 0


def test_purge_and_length_limits_still_act_on_the_head(core: Core) -> None:
    core.queue("q", **SEQ, **{"x-max-length": 2})
    send(core, "A1", "A2")
    assert bodies(core.receive("q", 1)) == [b"A1"]
    send(core, "A3", "A4")  # over the limit: the head goes, though its group waits
    assert ready_bodies(core.q("q")) == [b"A3", b"A4"]
    assert core.apply(c.PurgeQueue(VH, "q")) == 2
    assert core.q("q").ready_count == 0


def test_the_search_for_a_free_group_is_bounded(
    core: Core, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sequential, "WINDOW", 2)
    core.queue("q", **SEQ)
    send(core, "A1", "A2", "A3", "B1")
    assert bodies(core.receive("q", 10)) == [b"A1"]  # B1 lies beyond the window


def test_in_flight_groups_survive_a_snapshot(core: Core) -> None:
    core.queue("q", **SEQ)
    send(core, "A1", "A2", "B1", "B2")
    assert bodies(core.receive("q", 1, visibility=1000, at=0)) == [b"A1"]
    after = reloaded(core)
    assert bodies(after.receive("q", 10, visibility=1000, at=500)) == [b"B1"]
    after.tick(1000)
    assert bodies(after.receive("q", 10)) == [b"A1"]


def test_a_restart_returns_push_deliveries_first(core: Core, tmp_path: Path) -> None:
    core.apply(c.DeclareQueue(VH, "q", durable=True, arguments=SEQ))
    for body in ("A1", "A2", "B1"):
        core.publish("q", body, headers={"x-group-id": body[0]}, delivery_mode=2)
    assert [d.message.body for d in core.consume("q", prefetch=10)] == [b"A1", b"B1"]
    after = restart(core, str(tmp_path))
    assert ready_bodies(after.q("q")) == [b"A1", b"B1", b"A2"]
    got = after.consume("q", tag="again", prefetch=10)
    assert [(d.message.body, d.redelivered) for d in got] == [(b"A1", True), (b"B1", True)]


def test_turning_sequential_on_counts_what_is_already_in_flight(core: Core) -> None:
    core.queue("q")
    send(core, "A1", "A2", "B1")
    assert bodies(core.receive("q", 1)) == [b"A1"]
    core.apply(c.SetQueueArguments(VH, "q", {"x-sequential": True}))
    assert bodies(core.receive("q", 10)) == [b"B1"]


def test_turning_sequential_off_lets_waiting_messages_go(core: Core) -> None:
    core.queue("q", **SEQ)
    send(core, "n1", "n2", "n3")
    assert [d.message.body for d in core.consume("q", prefetch=10)] == [b"n1"]
    core.apply(c.SetQueueArguments(VH, "q", {"x-sequential": None}))
    assert [d.message.body for d in core.deliveries()] == [b"n2", b"n3"]


def test_bad_arguments_are_refused(core: Core) -> None:
    with pytest.raises(PreconditionFailed, match="x-sequential"):
        core.queue("q", **{"x-sequential": "yes"})
    with pytest.raises(PreconditionFailed, match="priorities"):
        core.queue("p", **SEQ, **{"x-max-priority": 5})
    core.queue("r", **{"x-max-priority": 5})
    with pytest.raises(PreconditionFailed, match="priorities"):
        core.apply(c.SetQueueArguments(VH, "r", {"x-sequential": True}))


# -- a property: any mix of consumers, receivers, settlements, time and restores --------------

GROUPS = ["A", "B", None]
OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("publish"), st.sampled_from(GROUPS)),
        st.tuples(st.just("receive"), st.integers(1, 3)),
        st.tuples(st.just("delete"), st.integers(0, 2)),
        st.tuples(st.just("get")),
        st.tuples(st.just("settle"), st.integers(0, 2), st.sampled_from(["ack", "requeue"])),
        st.tuples(st.just("consume"), st.integers(1, 3)),
        st.tuples(st.just("tick"), st.integers(0, 150)),
        st.tuples(st.just("restore")),
        st.tuples(st.just("rewind"), st.integers(0, 300)),
    ),
    max_size=60,
)


class OrderModel:
    """What a sequential queue promises, checked on every delivery: it is the oldest message
    of its group not yet settled, and no other delivery of that group is live (a pulled one
    whose visibility ran out is no longer live). A rewind brings settled messages back as new:
    the model stops checking from then on (`off`)."""

    def __init__(self) -> None:
        self.off = False
        self.published: dict[str | None, int] = dict.fromkeys(GROUPS, 0)
        self.settled: dict[str | None, set[int]] = {g: set() for g in GROUPS}
        #: group -> visibility deadline of its live delivery (None: pushed, live until settled)
        self.live: dict[str | None, int | None] = {}

    def delivered(self, body: bytes, now: int, deadline: int | None) -> None:
        if self.off:
            return
        group_text, index_text = body.decode().split(":")
        group = group_text or None
        oldest = min(set(range(self.published[group])) - self.settled[group])
        assert int(index_text) == oldest, (body, oldest)
        if group in self.live:
            previous = self.live[group]
            assert previous is not None and previous <= now, (body, "while its group is live")
        self.live[group] = deadline

    def settled_one(self, body: bytes, acked: bool) -> None:
        if self.off:
            return
        group_text, index_text = body.decode().split(":")
        group = group_text or None
        self.live.pop(group, None)
        if acked:
            self.settled[group].add(int(index_text))


def _observed(kind: str, reply: Any) -> Any:
    """What a client sees of a reply, comparable between two state machines."""
    if kind == "receive":
        return [(r.message.body, r.handle) for r in reply]
    if kind == "get":
        return None if reply is None else (reply.seq, reply.body)
    return reply if isinstance(reply, str) else None


@PROPERTY_SETTINGS
@given(ops=OPERATIONS)
@example(  # B's first message goes before A's second, both are rewound, then a restore
    ops=[
        ("publish", "A"),
        ("publish", "A"),
        ("publish", "B"),
        ("receive", 3),
        ("delete", 0),
        ("delete", 0),
        ("rewind", 0),
        ("restore",),
        ("receive", 3),
    ]
)
def test_any_mix_keeps_group_order_and_restores_alike(ops: list[tuple[Any, ...]]) -> None:
    """`core` is restored from a snapshot now and then, `plain` never: both answer alike.
    Settled messages are kept for rewind."""
    core, plain = Core(), Core()
    for each in (core, plain):
        each.queue("q", **SEQ, **{"x-rewind-ms": 10**6})
    model = OrderModel()
    now = 0
    received: list[tuple[bytes, str]] = []  # (body, receipt handle)
    held: list[tuple[int, bytes]] = []  # pushed or fetched: (seq, body)

    def run(op: tuple[Any, ...], target: Core) -> tuple[Any, list[tuple[int, bytes]]]:
        """Apply `op` to `target`: what its client sees, and the (seq, body) it pushed."""
        kind = op[0]
        reply: Any = None
        try:
            if kind == "publish":
                group = op[1]
                body = f"{group or ''}:{model.published[group]}"
                headers = None if group is None else {"x-group-id": group}
                target.publish("q", body, headers=headers, at=now)
            elif kind == "receive":
                reply = target.receive("q", op[1], visibility=100, at=now)
            elif kind == "delete":
                target.apply(c.DeleteByHandle(VH, "q", received[op[1]][1]), at=now)
            elif kind == "get":
                reply = target.apply(c.Get(VH, "q", OWNER, False), at=now).message
            elif kind == "settle":
                target.settle(op[2], "q", held[op[1]][0], at=now)
            elif kind == "consume":
                target.apply(c.Consume(VH, "q", OWNER, "c", prefetch=op[1]), at=now)
            elif kind == "rewind":
                reply = f"rewound {target.apply(c.Rewind(VH, 'q', op[1]), at=now)}"
            else:
                target.tick(now)
        except ReceiptHandleInvalid:
            reply = "invalid handle"
        pushed = [(d.message.seq, d.message.body) for d in target.deliveries()]
        return _observed(kind, reply), pushed

    consuming = False

    def step(op: tuple[Any, ...]) -> None:
        nonlocal core, consuming, now
        kind = op[0]
        if kind == "restore":
            core = reloaded(core)
            assert ready_bodies(core.q("q")) == ready_bodies(plain.q("q"))
            return
        if (kind == "delete" and op[1] >= len(received)) or (
            kind == "settle" and op[1] >= len(held)
        ):
            return
        if kind == "consume":
            if consuming:
                return
            consuming = True
        if kind == "tick":
            now += op[1]
        seen, pushed = run(op, core)
        assert (seen, pushed) == run(op, plain)
        if kind == "publish":
            model.published[op[1]] += 1
        elif kind == "rewind":
            model.off = model.off or seen != "rewound 0"
        elif kind == "receive":
            for body, handle in seen:
                model.delivered(body, now, now + 100)
                received.append((body, handle))
        elif kind == "delete":
            body = received.pop(op[1])[0]  # a handle is tried once
            if seen != "invalid handle":
                model.settled_one(body, acked=True)
        elif kind == "get" and seen is not None:
            model.delivered(seen[1], now, None)
            held.append(seen)
        elif kind == "settle":
            model.settled_one(held.pop(op[1])[1], acked=op[2] == "ack")
        for seq, body in pushed:
            model.delivered(body, now, None)
            held.append((seq, body))

    for op in ops:
        step(op)
    # Then everything can be drained: no group stays blocked once its message is settled.
    step(("tick", 200))
    received.clear()  # (expired by now)
    while True:
        while held:
            step(("settle", 0, "ack"))
        step(("receive", 3))
        if not received and not held:
            break
        while received:
            step(("delete", 0))
    assert model.off or all(model.settled[g] == set(range(model.published[g])) for g in GROUPS)
    assert core.q("q").ready_count == 0 and not core.q("q").unacked


def test_rewind_after_out_of_order_takes_restores_alike(core: Core) -> None:
    """B1 went before A2 (A was in flight); rewound, it goes back in publish order, which is
    also the order a restored queue rebuilds."""
    core.queue("q", **SEQ, **{"x-rewind-ms": 60_000})
    send(core, "A1", "A2", "B1")
    for got in core.receive("q", 3):
        core.apply(c.DeleteByHandle(VH, "q", got.handle))  # A1 and B1; A2 is next
    assert core.apply(c.Rewind(VH, "q", 0)) == 2
    assert ready_bodies(core.q("q")) == [b"A1", b"A2", b"B1"]
    assert ready_bodies(reloaded(core).q("q")) == [b"A1", b"A2", b"B1"]
    assert bodies(core.receive("q", 3)) == [b"A1", b"B1"]
