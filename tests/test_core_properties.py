"""Random command sequences against a simple reference model, and replay determinism.

Two queues: `q0` (push consumer, gets and pulls; dead-letters to `q1`) and `q1` (gets and pulls,
no dead-letter target). Each is configured at random with a TTL, a rewind window, a receive
limit and a delivery limit; `q0` may have a length limit. The model keeps, per queue, a dict of
messages with their state and a list of never-delivered ("fresh") ones in publish order;
messages given back (requeued, visible again, rewound) come first, in publish order.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.core import cold
from broker.core import commands as c
from broker.core.errors import BrokerError, ReceiptHandleInvalid
from broker.core.model import HIDDEN, READY, RETAINED, UNACKED, Deliver, Message, Traced
from broker.core.queue import MessageQueue
from broker.core.state import StateMachine
from broker.store.encoding import decode_entry, encode_entry
from tests.core_helpers import VH, all_messages, ready_order
from tests.state_dump import dump

QUEUES = ("q0", "q1")
CONSUMER: c.Owner = (1, 1, 1)
GETTER: c.Owner = (1, 2, 1)
TAG = "c"
TAKEN = -2  # model only: popped from the ready list, about to be delivered/hidden/removed

#: publish targets: (exchange, routing key) -> queues reached, in routing order
TARGETS: list[tuple[str, str, tuple[int, ...]]] = [
    ("", "q0", (0,)),
    ("", "q1", (1,)),
    ("ex", "ab", (0, 1)),
    ("ex", "zz", ()),
    ("tx", "", (0,)),
]

#: raise for a deeper search, e.g. PROPERTY_EXAMPLES=5000


@pytest.fixture(autouse=True, scope="module")
def small_cold_limits() -> Iterator[None]:
    """Queues keep 3 messages per level in memory (2 with no consumer), the rest cold in
    chunks of 3: the sequences then move messages to and from the cold tail all the time."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cold, "HOT_LIMIT", 3)
        patch.setattr(cold, "IDLE_HOT_LIMIT", 2)
        patch.setattr(cold, "PROMOTE", 2)
        patch.setattr(cold, "CHUNK", 3)
        yield


PROPERTY_SETTINGS = settings(
    max_examples=int(os.environ.get("PROPERTY_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# -- configuration and operations ----------------------------------------------------------


@dataclass(frozen=True)
class Config:
    ttl: tuple[int | None, int | None]
    rewind: tuple[int, int]
    max_receive: tuple[int | None, int | None]
    delivery_limit: tuple[int | None, int | None]
    max_length0: int | None
    q1_durable: bool

    def arguments(self, i: int) -> dict[str, Any]:
        args: dict[str, Any] = {}
        if i == 0:
            args["x-dead-letter-exchange"] = ""
            args["x-dead-letter-routing-key"] = "q1"
            if self.max_length0 is not None:
                args["x-max-length"] = self.max_length0
        if self.ttl[i] is not None:
            args["x-message-ttl"] = self.ttl[i]
        if self.rewind[i]:
            args["x-rewind-ms"] = self.rewind[i]
        if self.max_receive[i] is not None:
            args["x-max-receive-count"] = self.max_receive[i]
        if self.delivery_limit[i] is not None:
            args["x-delivery-limit"] = self.delivery_limit[i]
        return args


def _is_traced_push(effect: Any) -> bool:
    return (
        isinstance(effect, Traced) and effect.event == "delivered" and "consumer" in effect.detail
    )


def _pair(values: list[Any]) -> st.SearchStrategy[tuple[Any, Any]]:
    return st.tuples(st.sampled_from(values), st.sampled_from(values))


configs = st.builds(
    Config,
    ttl=_pair([None, 100, 400]),
    rewind=_pair([0, 500]),
    max_receive=_pair([None, 2]),
    delivery_limit=_pair([None, 1]),
    max_length0=st.sampled_from([None, 3]),
    q1_durable=st.booleans(),
)

#: operation kinds, repeated to weight the draw
KINDS = (
    ["publish"] * 6
    + ["settle"] * 3
    + ["receive"] * 3
    + ["delete"] * 2
    + ["tick"] * 3
    + [
        "consume",
        "release",
        "get",
        "get",
        "wrong_settle",
        "chvis",
        "wait",
        "rewind",
        "rewind_seq",
        "trace",
    ]
)


@st.composite
def operation(draw: st.DrawFn) -> tuple[Any, ...]:
    kind = draw(st.sampled_from(KINDS))
    qi = st.integers(0, 1)
    pick = st.integers(0, 1000)
    if kind == "publish":
        return (kind, draw(st.integers(0, len(TARGETS) - 1)), draw(st.booleans()))
    if kind == "consume":
        return (kind, draw(st.integers(1, 3)), draw(st.booleans()))
    if kind == "release":
        return (kind, draw(st.sampled_from([CONSUMER, GETTER])))
    if kind == "get":
        return (kind, draw(qi))
    if kind == "settle":
        return (kind, draw(pick), draw(st.sampled_from(["ack", "requeue", "reject"])))
    if kind == "wrong_settle":
        return (kind, draw(pick))
    if kind == "receive":
        return (kind, draw(qi), draw(st.integers(1, 3)), draw(st.sampled_from([0, 10, 100, 500])))
    if kind == "delete":
        return (kind, draw(qi), draw(pick), draw(st.booleans()))
    if kind == "chvis":
        return (
            kind,
            draw(qi),
            draw(pick),
            draw(st.booleans()),
            draw(st.sampled_from([0, 50, 300])),
        )
    if kind == "tick":
        return (kind, draw(st.sampled_from([0, 1, 10, 50, 100, 300, 1000])))
    if kind == "wait":
        return (kind, draw(st.sampled_from([1, 10, 100, 500])))
    if kind == "trace":
        return (
            kind,
            draw(st.sampled_from(["trace", "firehose"])),
            draw(st.booleans()),
            draw(st.sampled_from(["", "q0"])),
        )
    if kind == "rewind_seq":
        return (kind, draw(qi), draw(st.sampled_from([0, 1, 2, 5, 20])))
    return (kind, draw(qi), draw(st.sampled_from([0, 100, 1000, 10**9])))


#: a few runs of operations, flattened: longer sequences on average than one flat list
operations = st.lists(st.lists(operation(), min_size=1, max_size=12), max_size=8).map(
    lambda runs: [op for run in runs for op in run]
)


# -- the reference model -------------------------------------------------------------------


@dataclass
class MMsg:
    seq: int
    body: bytes
    persistent: bool
    enqueued_at: int
    expires_at: int | None
    state: int = READY
    delivery_count: int = 0
    handle: int = 0
    visible_at: int = 0
    acked_at: int = 0
    returns: int = 0
    owner: c.Owner | None = None
    via_consumer: bool = False
    returned: bool = False


@dataclass
class MQueue:
    index: int
    ttl: int | None
    rewind: int
    max_receive: int | None
    delivery_limit: int | None
    max_length: int | None
    msgs: dict[int, MMsg] = field(default_factory=dict)
    #: never-delivered ready messages, in publish order
    fresh: list[int] = field(default_factory=list)
    next_seq: int = 1
    prefetch: int | None = None  # a push consumer is attached when set
    in_flight: int = 0
    #: the consumer settles non-persistent messages as they leave
    settle_transient: bool = False

    def ready(self) -> list[MMsg]:
        back = sorted(
            (m for m in self.msgs.values() if m.state == READY and m.returned),
            key=lambda m: m.seq,
        )
        return back + [self.msgs[s] for s in self.fresh]

    def take(self, m: MMsg) -> None:
        if m.returned:
            m.returned = False
        else:
            self.fresh.remove(m.seq)
        m.state = TAKEN

    def give_back(self, m: MMsg) -> None:
        m.state = READY
        m.returned = True
        m.owner = None
        m.via_consumer = False

    def remove(self, m: MMsg) -> None:
        del self.msgs[m.seq]
        if m.seq in self.fresh:
            self.fresh.remove(m.seq)

    def count(self, state: int) -> int:
        return sum(1 for m in self.msgs.values() if m.state == state)


def _expired(m: MMsg, now: int) -> bool:
    exp = m.expires_at
    return exp is not None and (now > exp or (now == exp and m.enqueued_at < now))


class Model:
    def __init__(self, cfg: Config) -> None:
        self.now = 0
        self.qs = [
            MQueue(
                i,
                cfg.ttl[i],
                cfg.rewind[i],
                cfg.max_receive[i],
                cfg.delivery_limit[i],
                cfg.max_length0 if i == 0 else None,
            )
            for i in (0, 1)
        ]
        self.delivered: list[bytes] = []

    # -- internals, mirroring where the broker acts ------------------------------------

    def enqueue(self, qi: int, body: bytes, persistent: bool) -> None:
        q = self.qs[qi]
        seq = q.next_seq
        q.next_seq += 1
        expires = None if q.ttl is None else self.now + q.ttl
        q.msgs[seq] = MMsg(seq, body, persistent, self.now, expires)
        q.fresh.append(seq)
        if q.max_length is not None:
            while len(q.ready()) > q.max_length:
                head = q.ready()[0]
                q.take(head)
                self.dead_letter(qi, head)
        self.dispatch(qi)
        self.expire_heads(qi)

    def dead_letter(self, qi: int, m: MMsg) -> None:
        self.qs[qi].remove(m)
        if qi == 0:  # q0 dead-letters to q1; q1 drops
            self.enqueue(1, m.body, m.persistent)

    def expire_heads(self, qi: int) -> None:
        q = self.qs[qi]
        doomed = []
        for m in q.ready():
            if m.expires_at is None or m.expires_at > self.now:
                break
            doomed.append(m)
        for m in doomed:
            q.take(m)
        for m in doomed:
            self.dead_letter(qi, m)

    def dispatch(self, qi: int) -> None:
        q = self.qs[qi]
        while q.prefetch is not None and q.ready():
            if q.in_flight >= q.prefetch:
                return
            m = q.ready()[0]
            q.take(m)
            if _expired(m, self.now):
                self.dead_letter(qi, m)
                continue
            self.delivered.append(m.body)
            if q.settle_transient and not m.persistent:
                q.remove(m)
                continue
            m.state = UNACKED
            m.delivery_count += 1
            m.owner = CONSUMER
            m.via_consumer = True
            q.in_flight += 1

    def settle_one(self, qi: int, m: MMsg, outcome: str) -> None:
        q = self.qs[qi]
        if m.via_consumer and q.prefetch is not None:
            q.in_flight -= 1
        m.owner = None
        m.via_consumer = False
        if outcome == "ack":
            self.acknowledge(qi, m)
        elif outcome == "requeue":
            m.returns += 1
            if q.delivery_limit is not None and m.returns > q.delivery_limit:
                self.dead_letter(qi, m)
            else:
                q.give_back(m)
        else:
            self.dead_letter(qi, m)

    def acknowledge(self, qi: int, m: MMsg) -> None:
        q = self.qs[qi]
        if q.rewind:
            m.state = RETAINED
            m.acked_at = self.now
        else:
            q.remove(m)

    def valid_handle(self, m: MMsg | None, gen: int) -> bool:
        return (
            m is not None
            and m.state == HIDDEN
            and m.handle == gen
            and m.delivery_count > 0
            and m.visible_at > self.now
        )

    # -- commands ----------------------------------------------------------------------

    def publish(self, target: int, body: bytes, persistent: bool) -> bool:
        reached = TARGETS[target][2]
        for qi in reached:
            self.enqueue(qi, body, persistent)
        return bool(reached)

    def consume(self, prefetch: int, settle_transient: bool) -> None:
        q = self.qs[0]
        q.prefetch = prefetch
        q.in_flight = 0
        q.settle_transient = settle_transient
        self.dispatch(0)

    def release(self, owner: c.Owner, queues: list[int]) -> None:
        if owner == CONSUMER:
            self.qs[0].prefetch = None
            self.qs[0].in_flight = 0
        for qi in queues:
            q = self.qs[qi]
            for seq in sorted(s for s, m in q.msgs.items() if m.owner == owner):
                m = q.msgs[seq]
                m.via_consumer = False  # the consumer is gone already
                self.settle_one(qi, m, "requeue")
            self.dispatch(qi)

    def get(self, qi: int) -> bytes | None:
        q = self.qs[qi]
        while q.ready():
            m = q.ready()[0]
            q.take(m)
            if _expired(m, self.now):
                self.dead_letter(qi, m)
                continue
            m.state = UNACKED
            m.delivery_count += 1
            m.owner = GETTER
            return m.body
        return None

    def settle(self, qi: int, m: MMsg, outcome: str) -> None:
        self.settle_one(qi, m, outcome)
        self.dispatch(qi)

    def receive(self, qi: int, n: int, visibility: int) -> list[tuple[bytes, str]]:
        q = self.qs[qi]
        out: list[tuple[bytes, str]] = []
        while len(out) < n and q.ready():
            m = q.ready()[0]
            q.take(m)
            if _expired(m, self.now):
                self.dead_letter(qi, m)
                continue
            # only q0 has a dead-letter target (q1); without one the limit does nothing
            if qi == 0 and q.max_receive is not None and m.delivery_count >= q.max_receive:
                self.dead_letter(qi, m)
                continue
            m.delivery_count += 1
            m.handle += 1
            m.state = HIDDEN
            m.visible_at = self.now + visibility
            out.append((m.body, f"{m.seq}.{m.handle}"))
        return out

    def delete(self, qi: int, m: MMsg) -> None:
        self.acknowledge(qi, m)

    def tick(self) -> None:
        for qi, q in enumerate(self.qs):
            for m in list(q.msgs.values()):
                if m.state == HIDDEN and m.visible_at <= self.now:
                    q.give_back(m)
            for m in list(q.msgs.values()):
                if m.state == RETAINED and m.acked_at + q.rewind <= self.now:
                    q.remove(m)
            self.expire_heads(qi)
            self.dispatch(qi)

    def rewind(self, qi: int, since: int, from_seq: int = 0) -> int:
        q = self.qs[qi]
        back = [
            m
            for m in q.msgs.values()
            if m.state == RETAINED and m.enqueued_at >= since and m.seq >= from_seq
        ]
        for m in back:  # they start over, ahead of the never-delivered messages
            m.acked_at = m.delivery_count = m.returns = 0
            m.state = READY
            m.returned = False
            m.owner = None
            m.via_consumer = False
        q.fresh[:0] = sorted(m.seq for m in back)
        self.dispatch(qi)
        return len(back)


#: how many more ticks at the same time the node may need before no timer is due
MAX_EXTRA_TICKS = 3


def is_due(sm: StateMachine, now: int) -> bool:
    due = sm.next_due()
    return due is not None and due <= now


# -- driving the real state machine and the model side by side ------------------------------


class Runner:
    """Drives the state machine with operations, checks it against the model, and keeps the
    log (each command as its encoded entry) and what changed, as the commit path would."""

    def __init__(self, cfg: Config, check_model: bool = True) -> None:
        self.cfg = cfg
        self.sm = StateMachine()
        self.sm.entries = self.command_at
        self.model = Model(cfg)
        self.check_model = check_model
        #: the log: each applied command as its encoded entry
        self.entries: list[bytes] = []
        self.outputs: list[str] = []
        self.dirty: dict[tuple[str, Any], Any] = {}
        self.now = 0
        self.counter = 0
        #: queues where each owner got or consumed (the broker requeues there on release)
        self.owner_queues: dict[c.Owner, set[int]] = {CONSUMER: set(), GETTER: set()}
        self.apply(c.DeclareVhost(VH))
        self.apply(c.DeclareQueue(VH, "q0", arguments=cfg.arguments(0)))
        self.apply(c.DeclareQueue(VH, "q1", durable=cfg.q1_durable, arguments=cfg.arguments(1)))
        self.apply(c.DeclareExchange(VH, "ex", "direct"))
        self.apply(c.DeclareExchange(VH, "tx", "fanout", durable=False))
        for key, queue in (("a", "q0"), ("b", "q1"), ("ab", "q0"), ("ab", "q1")):
            self.apply(c.Bind(VH, "ex", queue, True, key))
        self.apply(c.Bind(VH, "tx", "q0", True))

    def apply(self, command: c.Command) -> tuple[Any, list[Any], BrokerError | None]:
        self.entries.append(encode_entry(0, self.now, command))
        meta = c.Meta(len(self.entries), self.now)
        reply, error, effects, changes = self.sm.apply(command, meta)
        self.dirty.update(changes)
        self.outputs.append(output(reply, error, effects))
        return reply, effects, error

    def command_at(self, index: int) -> c.Command:
        """The command of a log entry (as the store reads it back for cold messages)."""
        return decode_entry(self.entries[index - 1])[2]

    def q(self, qi: int) -> MessageQueue:
        return self.sm.queue(VH, QUEUES[qi])

    def run(self, ops: list[tuple[Any, ...]]) -> None:
        for op in ops:
            self.step(op)
            if self.check_model:
                self.compare()

    def step(self, op: tuple[Any, ...]) -> None:
        kind = op[0]
        m = self.model
        m.delivered = []
        effects: list[Any] = []
        if kind == "publish":
            _, target, persistent = op
            self.counter += 1
            body = b"m%d" % self.counter
            exchange, key, _ = TARGETS[target]
            props = {"delivery_mode": 2} if persistent else {}
            reply, effects, error = self.apply(c.Publish(VH, exchange, key, props, body))
            assert error is None
            assert reply.routed == m.publish(target, body, persistent)
        elif kind == "consume":
            if m.qs[0].prefetch is not None:
                return
            self.owner_queues[CONSUMER].add(0)
            consume = c.Consume(VH, "q0", CONSUMER, TAG, prefetch=op[1], settle_transient=op[2])
            _, effects, error = self.apply(consume)
            assert error is None
            m.consume(op[1], op[2])
        elif kind == "release":
            owner = op[1]
            _, effects, error = self.apply(c.ReleaseOwner(owner))
            assert error is None
            m.release(owner, sorted(self.owner_queues[owner]))
            self.owner_queues[owner] = set()
        elif kind == "get":
            qi = op[1]
            self.owner_queues[GETTER].add(qi)
            reply, effects, error = self.apply(c.Get(VH, QUEUES[qi], GETTER))
            assert error is None
            got = None if reply.message is None else reply.message.body
            assert got == m.get(qi)
        elif kind in ("settle", "wrong_settle"):
            held = [
                (qi, seq)
                for qi in (0, 1)
                for seq in sorted(m.qs[qi].msgs)
                if m.qs[qi].msgs[seq].state == UNACKED
            ]
            if not held:
                _, effects, error = self.apply(c.Settle(CONSUMER, [(VH, "q0", 10**6)], "ack"))
                assert error is None
            else:
                qi, seq = held[op[1] % len(held)]
                msg = m.qs[qi].msgs[seq]
                assert msg.owner is not None
                owner = msg.owner
                outcome = op[2] if kind == "settle" else "ack"
                if kind == "wrong_settle":
                    owner = GETTER if owner == CONSUMER else CONSUMER
                command = c.Settle(owner, [(VH, QUEUES[qi], seq)], outcome)
                _, effects, error = self.apply(command)
                assert error is None
                if kind == "settle":
                    m.settle(qi, msg, outcome)
        elif kind == "receive":
            _, qi, n, visibility = op
            reply, effects, error = self.apply(c.Receive(VH, QUEUES[qi], n, visibility))
            assert error is None
            assert [(r.message.body, r.handle) for r in reply] == m.receive(qi, n, visibility)
        elif kind in ("delete", "chvis"):
            qi, pick, stale = op[1], op[2], op[3]
            seqs = sorted(m.qs[qi].msgs)
            if seqs:
                seq = seqs[pick % len(seqs)]
                msg: MMsg | None = m.qs[qi].msgs[seq]
                assert msg is not None
                gen = msg.handle - 1 if stale else msg.handle
            else:
                seq, msg, gen = 10**6, None, 1
            handle = f"{seq}.{gen}"
            valid = m.valid_handle(msg, gen)
            if kind == "delete":
                command: c.Command = c.DeleteByHandle(VH, QUEUES[qi], handle)
            else:
                command = c.ChangeVisibility(VH, QUEUES[qi], handle, op[4])
            reply, effects, error = self.apply(command)
            if not valid:
                assert isinstance(error, ReceiptHandleInvalid), (handle, error)
            else:
                assert error is None, error
                assert msg is not None
                if kind == "delete":
                    m.delete(qi, msg)
                else:
                    msg.visible_at = m.now + op[4]
                    assert reply == msg.visible_at
        elif kind == "tick":
            self.now += op[1]
            m.now = self.now
            _, effects, error = self.apply(c.Tick())
            assert error is None
            m.tick()
            # Firing one queue may dead-letter into another that already fired: the node
            # then ticks again at once. That must settle, not spin.
            for _ in range(MAX_EXTRA_TICKS):
                if not is_due(self.sm, self.now):
                    break
                _, more, error = self.apply(c.Tick())
                assert error is None
                effects = effects + more
            assert not is_due(self.sm, self.now), "timers still due after repeated ticks"
        elif kind == "wait":
            self.now += op[1]
            m.now = self.now
        elif kind == "trace":
            _, trace_kind, enabled, queue = op
            if trace_kind == "firehose":
                queue = ""
            _, effects, error = self.apply(c.SetTracing(VH, trace_kind, enabled, queue))
            assert error is None
        elif kind == "rewind":
            _, qi, back = op
            since = max(0, self.now - back)
            reply, effects, error = self.apply(c.Rewind(VH, QUEUES[qi], since))
            assert error is None
            assert reply == m.rewind(qi, since)
        elif kind == "rewind_seq":
            _, qi, from_seq = op
            reply, effects, error = self.apply(c.Rewind(VH, QUEUES[qi], 0, from_seq))
            assert error is None
            assert reply == m.rewind(qi, 0, from_seq)
        else:  # pragma: no cover
            raise AssertionError(kind)
        if self.check_model:
            pushed = [e.message.body for e in effects if isinstance(e, Deliver)]
            assert pushed == m.delivered, (op, pushed, m.delivered)
        if self.sm.tracing.covers(VH, ""):
            # Every push is traced as delivered, in the same order.
            traced = [(t.queue, t.seq) for t in effects if _is_traced_push(t)]
            pushes = [(e.queue, e.message.seq) for e in effects if isinstance(e, Deliver)]
            assert traced == pushes, (op, traced, pushes)

    def compare(self) -> None:
        for qi in (0, 1):
            real, model = self.q(qi), self.model.qs[qi]
            order = ready_order(real)
            assert [x.body for x in order] == [x.body for x in model.ready()]
            assert real.ready_count == len(order)
            assert real.ready_bytes == sum(x.size for x in order)
            assert real.hidden_count == model.count(HIDDEN)
            assert real.retained_count() == model.count(RETAINED)
            assert len(real.unacked) == model.count(UNACKED)
            messages = all_messages(real)
            assert sorted(messages) == sorted(model.msgs)
            for seq, mine in model.msgs.items():
                theirs = messages[seq]
                assert _observable(theirs) == _observable(mine), seq
            if qi == 0 and model.prefetch is not None:
                (consumer,) = real.consumers
                assert consumer.in_flight == model.in_flight
                # nothing may wait while the consumer has room
                assert model.in_flight >= model.prefetch or not model.ready()


def _observable(m: Message | MMsg) -> tuple[Any, ...]:
    return (
        # (kept on disk only: for rewind, or delayed)
        None if m.state == RETAINED or (m.state == HIDDEN and not m.delivery_count) else m.body,
        m.state,
        m.delivery_count,
        m.handle,
        m.visible_at if m.state == HIDDEN else None,
        m.acked_at if m.state == RETAINED else None,
        m.returns,
        m.expires_at,
        m.enqueued_at,
    )


def output(reply: Any, error: BrokerError | None, effects: list[Any]) -> str:
    """What a command gave, comparable across replicas."""
    return repr((reply, effects, type(error).__name__))


# -- the properties ------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(cfg=configs, ops=operations)
def test_state_machine_matches_the_reference_model(cfg: Config, ops: list[tuple[Any, ...]]) -> None:
    Runner(cfg).run(ops)


@PROPERTY_SETTINGS
@given(cfg=configs, ops=operations)
def test_replaying_the_log_gives_the_same_replies_and_state(
    cfg: Config, ops: list[tuple[Any, ...]]
) -> None:
    """What a follower does: decode each entry as stored and apply it."""
    original = Runner(cfg, check_model=False)
    original.run(ops)
    expected = dump(original.sm)
    for _ in range(2):
        replica = StateMachine()
        outputs = []
        for index, raw in enumerate(original.entries, 1):
            _, time, command = decode_entry(raw)
            reply, error, effects, _ = replica.apply(command, c.Meta(index, time))
            outputs.append(output(reply, error, effects))
        assert outputs == original.outputs
        assert dump(replica) == expected


def test_model_runner_smoke() -> None:
    """A fixed sequence touching every operation, so failures here are easy to read."""
    cfg = Config((100, None), (500, 500), (2, None), (1, None), 3, True)
    ops: list[tuple[Any, ...]] = [
        ("publish", 0, True),
        ("publish", 2, True),
        ("publish", 4, False),
        ("receive", 0, 2, 10),
        ("consume", 1, False),
        ("settle", 0, "requeue"),
        ("tick", 10),
        ("delete", 0, 0, False),
        ("get", 1),
        ("settle", 0, "ack"),
        ("rewind", 1, 10**9),
        ("rewind_seq", 0, 2),
        ("chvis", 0, 1, False, 50),
        ("wrong_settle", 0),
        ("release", CONSUMER),
        ("tick", 1000),
        ("release", GETTER),
        ("receive", 1, 3, 0),
        ("tick", 0),
    ]
    Runner(cfg).run(ops)
