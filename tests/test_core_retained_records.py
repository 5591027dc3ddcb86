"""Retained messages and adapter records in the core: semantics, and restore from the store."""

from __future__ import annotations

from broker.core import commands as c
from broker.core.model import Dropped, Overflowed
from tests.core_helpers import VH, Core, reloaded

PERSISTENT = {"delivery_mode": 2}


def test_retained_messages_replace_clear_and_copy_once_per_match():
    core = Core()
    core.queue("q")
    for key, body in (("a.1", b"old"), ("a.1", b"new"), ("a.2", b"two"), ("b.1", b"b")):
        core.apply(c.StoreRetained(VH, "amq.topic", key, PERSISTENT, body))
    core.apply(c.StoreRetained(VH, "amq.topic", "a.2", PERSISTENT, None))
    copied = core.apply(c.CopyRetained(VH, ["a.*", "a.#", "#.1"], "q", {"x-copy": True}))
    assert copied == 2
    q = core.q("q")
    messages = sorted(q.messages.values(), key=lambda m: m.seq)
    assert [(m.routing_key, m.body) for m in messages] == [("a.1", b"new"), ("b.1", b"b")]
    assert all(m.properties["headers"] == {"x-copy": True} and m.persistent for m in messages)


def test_retained_messages_and_records_survive_a_restore():
    core = Core()
    commands = [
        c.StoreRetained(VH, "amq.topic", "k", PERSISTENT, b"kept"),
        c.StoreRetained(VH, "amq.topic", "gone", PERSISTENT, b"x"),
        c.StoreRetained(VH, "amq.topic", "gone", PERSISTENT, None),
        c.PutRecord(VH, ("mqtt", "client\x00odd"), "session", {"subscriptions": {"a/#": 1}}),
        c.PutRecord(VH, ("mqtt", "client\x00odd"), "in:7", True),
        c.PutRecord(VH, ("mqtt", "other"), "in:1", True),
        c.PutRecord(VH, ("mqtt", "client\x00odd"), "in:7", None),
        c.DropRecords(VH, ("mqtt", "other")),
    ]
    for command in commands:
        core.apply(command)
    fresh = reloaded(core).sm
    assert {k: v.body for k, v in fresh.vhosts[VH].retained.items()} == {"k": b"kept"}
    assert fresh.records == core.sm.records
    assert fresh.records_of(VH, ("mqtt", "client\x00odd")) == {
        "session": {"subscriptions": {"a/#": 1}}
    }


def test_deleting_a_vhost_forgets_its_retained_messages_and_records():
    core = Core()
    core.apply(c.StoreRetained(VH, "amq.topic", "k", PERSISTENT, b"kept"))
    core.apply(c.PutRecord(VH, ("g",), "n", 1))
    core.apply(c.DeleteVhost(VH))
    changes = core.changes
    assert (("retained", (VH, "k")), None) in changes
    assert (("record", (VH, ("g",), "n")), None) in changes
    assert core.sm.records == {}


def test_overflow_is_an_effect_never_silent():
    core = Core()
    core.queue("drop", **{"x-max-length": 1})
    core.queue("refuse", **{"x-max-length": 1, "x-overflow": "reject-publish"})
    core.publish("drop", b"1")
    core.publish("drop", b"2")
    assert [e for e in core.effects if isinstance(e, Dropped | Overflowed)] == [
        Dropped(VH, "drop", "maxlen", 1)
    ]
    core.publish("refuse", b"1")
    core.publish("refuse", b"2")
    assert [e for e in core.effects if isinstance(e, Dropped | Overflowed)] == [
        Overflowed(VH, "refuse")
    ]
