"""Sequential queues in the core: one message in flight per group, for push consumers and
pull receivers alike, redeliveries first, and the in-flight groups rebuilt on restore."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from broker.core import commands as c
from broker.core import sequential
from broker.core.errors import PreconditionFailed
from broker.core.model import MessagesAvailable
from tests.core_helpers import VH, Core, ready_bodies, reloaded, restart

SEQ = {"x-sequential": True}


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
