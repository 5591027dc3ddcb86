"""What the core does about nodes, sessions and compound commands: owners qualified by the node
that holds them, released together; a client id held by one connection at a time, its will
published when it goes without a goodbye; a Batch applies all of its commands or none."""

from __future__ import annotations

import pytest

from broker.core import commands as c
from broker.core.errors import InvalidArgument, NotFound, ResourceLimit
from broker.core.model import CloseConnection
from broker.core.state import PartialFailure, StateMachine
from tests.core_helpers import VH, Core, reloaded
from tests.state_dump import dump

A = (1, 10, 1)  # node 1, connection 10, channel 1
B = (2, 20, 1)  # node 2, connection 20, channel 1
WILL = c.Will("amq.topic", "status.gone", {"delivery_mode": 2}, b"offline", retain=True)


def session(client_id: str, connection: tuple[int, int], clean: bool, will: c.Will | None = None):
    return c.OpenSession(
        VH,
        client_id,
        connection,
        (*connection, 0),
        clean,
        f"session-{client_id}",
        ("mqtt", client_id),
        will,
    )


def test_release_node_releases_only_what_that_node_held() -> None:
    core = Core()
    core.queue("q")
    for body in "abcd":
        core.publish("q", body, delivery_mode=2)
    core.apply(c.Consume(VH, "q", A, "a", prefetch=2))
    core.apply(c.Consume(VH, "q", B, "b", prefetch=2))
    core.apply(c.DeclareQueue(VH, "mine", exclusive_owner=(2, 20), requester=(2, 20)))
    q = core.q("q")
    assert len(q.unacked) == 4
    core.apply(c.ReleaseNode(2))
    assert [consumer.owner for consumer in q.consumers] == [A]
    assert {holder[0] for holder in q.unacked.values()} == {A}
    assert "mine" not in core.sm.vhosts[VH].queues
    # Node 2's two deliveries came back, marked as returned once, and wait for A's room.
    assert q.ready_count == 2 and all(m.returns == 1 for m in q.messages.values() if m.seq > 2)


def test_a_session_taken_over_is_closed_with_its_will() -> None:
    core = Core()
    core.queue("watch")
    core.bind("amq.topic", "watch", "status.#")
    records = core.apply(session("dev", (1, 10), clean=False, will=WILL))
    assert records == {}
    core.apply(c.PutRecord(VH, ("mqtt", "dev"), "session", {"subscriptions": {}}))
    records = core.apply(session("dev", (2, 20), clean=False))
    assert records == {"session": {"subscriptions": {}}}
    assert CloseConnection((1, 10), "client id taken over by another connection") in core.effects
    assert core.drain("watch") == [b"offline"]
    assert core.sm.vhosts[VH].retained["status.gone"].body == b"offline"
    assert core.sm.sessions[(VH, "dev")].connection == (2, 20)
    # The first connection's own goodbye comes later and changes nothing.
    before = dump(core.sm)
    core.apply(c.CloseSession(VH, "dev", (1, 10), publish_will=True))
    assert dump(core.sm) == before


def test_a_clean_session_ends_with_its_queue_and_records() -> None:
    core = Core()
    core.apply(session("c", (1, 1), clean=True))
    core.queue("session-c")
    core.apply(c.PutRecord(VH, ("mqtt", "c"), "in:1", True))
    core.apply(c.CloseSession(VH, "c", (1, 1), publish_will=False))
    assert "session-c" not in core.sm.vhosts[VH].queues
    assert core.sm.records_of(VH, ("mqtt", "c")) == {}
    assert (VH, "c") not in core.sm.sessions


def test_a_node_gone_publishes_the_wills_of_its_sessions() -> None:
    core = Core()
    core.queue("watch")
    core.bind("amq.topic", "watch", "status.#")
    core.apply(session("on-2", (2, 5), clean=False, will=WILL))
    core.apply(session("on-1", (1, 5), clean=False, will=WILL))
    core.apply(c.ReleaseNode(2))
    assert core.drain("watch") == [b"offline"]
    assert set(core.sm.sessions) == {(VH, "on-1")}


def test_a_batch_applies_all_or_nothing() -> None:
    core = Core()
    core.queue("q")
    good = c.Publish(VH, "", "q", {}, b"1")
    with pytest.raises(NotFound):
        core.apply(c.Batch([good, c.Publish(VH, "missing", "k", {}, b"2")]))
    assert core.q("q").ready_count == 0
    with pytest.raises(InvalidArgument):
        core.apply(c.Batch([good, c.DeclareQueue(VH, "other")]))
    replies = core.apply(c.Batch([good, c.PutRecord(VH, ("g",), "n", 1)]))
    assert replies[0].routed and core.q("q").ready_count == 1


def test_a_batch_that_would_not_fit_is_refused_whole() -> None:
    core = Core()
    core.queue("q", **{"x-max-length": 3, "x-overflow": "reject-publish"})
    core.publish("q", "old")
    batch = [c.Publish(VH, "", "q", {}, b"%d" % i) for i in range(3)]
    with pytest.raises(ResourceLimit):
        core.apply(c.Batch(batch, refuse_when_full=True))
    assert core.q("q").ready_count == 1
    core.apply(c.Batch(batch[:2], refuse_when_full=True))
    assert core.q("q").ready_count == 3


def test_a_command_failing_after_it_changed_the_state_is_reported_as_such() -> None:
    sm = StateMachine()
    sm.apply(c.DeclareVhost(VH), c.Meta(1, 0))

    def broken(cmd: c.DeclareQueue) -> None:
        sm._record("queue", (VH, cmd.name), None)
        raise NotFound("found nothing after all")

    sm._handlers[c.DeclareQueue] = broken
    with pytest.raises(PartialFailure):
        sm.apply(c.DeclareQueue(VH, "q"), c.Meta(2, 0))


def test_release_node_spares_connections_of_its_later_run() -> None:
    core = Core()
    core.queue("q")
    core.publish("q", "x", delivery_mode=2)
    core.publish("q", "y", delivery_mode=2)
    old, new = (2, 5, 1), (2, 1 << 40, 1)
    core.apply(c.Consume(VH, "q", old, "old", prefetch=1))
    core.apply(c.Consume(VH, "q", new, "new", prefetch=1))
    core.apply(c.ReleaseNode(2, before=1 << 40))
    assert [consumer.owner for consumer in core.q("q").consumers] == [new]
    assert core.effects.count(CloseConnection((2, 5), "its node left the cluster")) == 1
    assert all(e.connection != (2, 1 << 40) for e in core.effects if type(e) is CloseConnection)


def keyed(core: Core, command: c.Command, key: tuple[int, int, int], floor: int = 0) -> tuple:
    core.index += 1
    meta = c.Meta(core.index, core.now, key, floor)
    reply, error, effects, changes = core.sm.apply(command, meta)
    core.dirty.update(changes)
    return reply, error


def test_a_proposal_sent_again_is_applied_once() -> None:
    core = Core()
    core.queue("q")
    publish = c.Publish(VH, "", "q", {"delivery_mode": 2}, b"m")
    assert keyed(core, publish, (3, 100, 1))[0].routed
    assert keyed(core, publish, (3, 100, 1)) == (None, None)  # the copy after a failover
    assert keyed(core, publish, (3, 100, 2))[0].routed
    assert core.q("q").ready_count == 2
    # Another run of node 3 numbers from 1 again: its proposals are new ones.
    assert keyed(core, publish, (3, 200, 1))[0].routed
    # An earlier run's late copy cannot be told apart from a new one: it is applied.
    assert keyed(core, publish, (3, 100, 2))[0].routed
    assert core.q("q").ready_count == 4


def test_the_floor_forgets_proposals_their_node_no_longer_waits_for() -> None:
    core = Core()
    core.queue("q")
    publish = c.Publish(VH, "", "q", {}, b"m")
    for number in (1, 2, 3, 5):
        keyed(core, publish, (3, 1, number))
    keyed(core, publish, (3, 1, 6), floor=4)
    p = core.sm.proposers[3]
    assert (p.floor, p.seen) == (4, {5, 6})
    assert keyed(core, publish, (3, 1, 2)) == (None, None)  # below the floor: done long ago


def test_a_failing_keyed_command_still_counts_as_applied() -> None:
    core = Core()
    bad = c.Publish(VH, "no-such-exchange", "k", {}, b"m")
    reply, error = keyed(core, bad, (3, 1, 1))
    assert reply is None and isinstance(error, NotFound)
    assert core.sm.proposers[3].seen == {1}


def test_members_and_proposers_survive_a_snapshot() -> None:
    core = Core()
    core.apply(c.SetMembers(((1, "a:1"), (2, "b:2"), (3, "c:3"))))
    core.apply(c.SetMembers(((1, "a:1"), (3, "c:30"))))
    keyed(core, c.DeclareQueue(VH, "q"), (2, 7, 1))
    assert core.sm.members == {1: "a:1", 3: "c:30"}
    assert dump(reloaded(core).sm) == dump(core.sm)


def hold(core: Core, queue: str, client_id: str, holding: bool = True) -> None:
    core.apply(c.PutRecord(VH, c.holders_of(queue), client_id, True if holding else None))


def test_a_shared_queue_lives_while_a_session_holds_it() -> None:
    core = Core()
    core.apply(session("a", (1, 1), clean=True))
    core.apply(session("b", (1, 2), clean=False))
    for client_id in ("a", "b"):
        hold(core, "shared", client_id)
    core.queue("shared")
    core.publish("shared", "kept", delivery_mode=2)
    # The clean session's end lets go of its hold; the persistent one still holds the queue.
    core.apply(c.CloseSession(VH, "a", (1, 1), publish_will=False))
    assert core.sm.records_of(VH, c.holders_of("shared")) == {"b": True}
    core.apply(c.CloseSession(VH, "b", (1, 2), publish_will=False))
    assert core.drain("shared") == [b"kept"]
    core.publish("shared", "still kept", delivery_mode=2)
    # Holds survive a snapshot; a clean session taking the client id over drops them.
    core = reloaded(core)
    assert core.sm.holds == {(VH, "b"): {"shared"}}
    core.apply(session("b", (1, 3), clean=True))
    assert "shared" not in core.sm.vhosts[VH].queues
    assert core.sm.records_of(VH, c.holders_of("shared")) == {}
    assert core.sm.holds == {}


def test_the_last_holder_letting_go_deletes_the_shared_queue() -> None:
    core = Core()
    hold(core, "shared", "a")
    hold(core, "shared", "b")
    core.queue("shared")
    core.publish("shared", "one", delivery_mode=2)
    hold(core, "shared", "a", holding=False)
    assert core.q("shared").message_count() == 1
    hold(core, "shared", "b", holding=False)
    assert "shared" not in core.sm.vhosts[VH].queues
    assert core.sm.holds == {}
