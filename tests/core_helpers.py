"""A thin driver around the core state machine for tests: time is explicit, effects are kept."""

from __future__ import annotations

from typing import Any

from broker.core import commands as c
from broker.core.model import READY, Deliver, Effect, Message
from broker.core.queue import MessageQueue
from broker.core.state import ColdBodies, StateMachine
from broker.store import schema
from broker.store.disk import Store
from broker.store.encoding import decode_entry, encode_entry, entry_wire, pack
from broker.store.recovery import recover

VH = "/"
OWNER: c.Owner = (1, 1, 1)


class Core:
    """One state machine on the vhost "/", with a clock the test moves by hand."""

    def __init__(self, sm: StateMachine | None = None, now: int = 0) -> None:
        """A fresh state machine, or `sm` (say, one loaded from a store) as it is."""
        self.now = now
        self.index = 0
        self.effects: list[Effect] = []
        #: the changes of the last command, those not taken yet, and all of them by record
        self.changes: list[Any] = []
        self.untaken: list[Any] = []
        self.dirty: dict[tuple[str, Any], Any] = {}
        #: the log: each entry's command by index
        self.log: dict[int, c.Command] = {}
        if sm is None:
            self.sm = StateMachine()
            self.apply(c.DeclareVhost(VH))
        else:
            self.sm = sm

    # -- plumbing ------------------------------------------------------------------------

    def apply(self, command: c.Command, at: int | None = None) -> Any:
        """Apply as the log would (next index, the clock's time); raise the command's error."""
        if at is not None:
            assert at >= self.now, "time never goes backwards"
            self.now = at
        self.index += 1
        self.log[self.index] = decode_entry(encode_entry(0, self.now, command))[2]
        reply, error, effects, changes = self.sm.apply(command, c.Meta(self.index, self.now))
        self.effects, self.changes = effects, changes
        self.untaken += changes
        self.dirty.update(changes)
        if error is not None:
            raise error
        return reply

    def take_changes(self) -> list[Any]:
        """The changes of the commands since the last call."""
        out, self.untaken = self.untaken, []
        return out

    def tick(self, at: int) -> list[Effect]:
        self.apply(c.Tick(), at)
        return self.effects

    def deliveries(self) -> list[Deliver]:
        return [e for e in self.effects if isinstance(e, Deliver)]

    def delivered_bodies(self) -> list[bytes]:
        return [d.message.body for d in self.deliveries()]

    # -- declarations --------------------------------------------------------------------

    def queue(self, name: str, **arguments: Any) -> MessageQueue:
        self.apply(c.DeclareQueue(VH, name, arguments=arguments))
        return self.q(name)

    def exchange(self, name: str, type_: str = "direct", **kw: Any) -> None:
        self.apply(c.DeclareExchange(VH, name, type_, **kw))

    def bind(self, source: str, queue: str, key: str = "", **arguments: Any) -> None:
        self.apply(c.Bind(VH, source, queue, True, key, arguments))

    def bind_exchange(self, source: str, destination: str, key: str = "") -> None:
        self.apply(c.Bind(VH, source, destination, False, key))

    def q(self, name: str) -> MessageQueue:
        return self.sm.queue(VH, name)

    # -- messages ------------------------------------------------------------------------

    def publish(
        self,
        routing_key: str,
        body: bytes | str,
        exchange: str = "",
        *,
        headers: dict[str, Any] | None = None,
        at: int | None = None,
        **props: Any,
    ) -> Any:
        if isinstance(body, str):
            body = body.encode()
        if headers is not None:
            props["headers"] = headers
        return self.apply(c.Publish(VH, exchange, routing_key, props, body), at)

    def consume(
        self, queue: str, tag: str = "ctag", owner: c.Owner = OWNER, **kw: Any
    ) -> list[Deliver]:
        self.apply(c.Consume(VH, queue, owner, tag, **kw))
        return self.deliveries()

    def settle(
        self, outcome: str, queue: str, *seqs: int, owner: c.Owner = OWNER, at: int | None = None
    ) -> list[Deliver]:
        self.apply(c.Settle(owner, [(VH, queue, s) for s in seqs], outcome), at)
        return self.deliveries()

    def get(self, queue: str, owner: c.Owner = OWNER, no_ack: bool = False) -> Message | None:
        result = self.apply(c.Get(VH, queue, owner, no_ack))
        return result.message

    def get_body(self, queue: str) -> bytes | None:
        msg = self.get(queue, no_ack=True)
        return None if msg is None else msg.body

    def drain(self, queue: str) -> list[bytes]:
        """Every ready message, in delivery order, taken out with no-ack gets."""
        out = []
        while (body := self.get_body(queue)) is not None:
            out.append(body)
        return out

    def receive(
        self, queue: str, n: int = 1, visibility: int | None = None, at: int | None = None
    ) -> list[Any]:
        return list(self.apply(c.Receive(VH, queue, n, visibility), at))


def snapshot(core: Core) -> dict[bytes, bytes]:
    """The records a snapshot of `core` writes (its messages' bodies stay in the log)."""
    ops = schema.snapshot_ops(core.dirty, core.sm)
    return {key: value for key, value in ops if value is not None}


def reloaded(core: Core) -> Core:
    """A core restored from a snapshot of `core` (everything, transient state included)."""
    fresh = StateMachine()
    records = snapshot(core)
    schema.restore(fresh, sorted(records.items()), core.log.get)
    out = Core(fresh, core.now)
    out.index, out.dirty, out.log = core.index, dict(core.dirty), dict(core.log)
    return out


def restart(core: Core, path: str) -> Core:
    """Write a snapshot of `core` to a LevelDB store, recover from it and restart as a node
    does: what node 1's connections held is released, what is not durable dropped."""
    store = Store(path)
    try:
        ops: list[tuple[bytes, bytes | None]] = list(snapshot(core).items())
        ops.append((schema.META_SNAPSHOT, pack(core.index)))
        store.write_state(ops)
        entries = [entry_wire(0, core.now, core.log[i]) for i in range(1, core.index + 1)]
        batch = (schema.batch_key(1, core.index), schema.encode_batch(1, entries))
        store.write_log([batch], sync=True)
        recovered = recover(store)
    finally:
        store.close()
    after = Core(recovered.state, core.now)
    after.index = core.index
    # Bodies kept on disk (cold messages, those kept for rewind) are read from the log.
    after.log = dict(core.log)
    after.sm.entries = after.log.__getitem__
    after.apply(c.ReleaseNode(OWNER[0]))
    after.apply(c.DropTransient())
    return after


def ready_order(q: MessageQueue) -> list[Message]:
    """The ready messages of `q` in the order consumers would get them, without taking them:
    highest priority level first, in each the returned ones (by sequence) before the rest
    (the queue's indexes skip entries of messages no longer ready), then the cold ones."""
    out: dict[int, Message] = {}
    for level in range(len(q._ready) - 1, -1, -1):
        for seq in [*sorted(q._returned[level]), *q._ready[level]]:
            msg = q.messages.get(seq)
            if msg is not None and msg.state == READY:
                out.setdefault(seq, msg)
        for msg in cold_messages(q, level):
            out[msg.seq] = msg
    return list(out.values())


def cold_messages(q: MessageQueue, level: int) -> list[Message]:
    """The cold messages of a level, in order, as they would be taken into memory (read
    without changing anything)."""
    store = q.cold_store
    if store is None:
        return []
    assert isinstance(store, ColdBodies)
    return [q.held[e.seq] if not e.source[0] else store.message_of(e) for e in q._cold[level]]


def all_messages(q: MessageQueue) -> dict[int, Message]:
    """Every message of `q` by seq, the cold ones too."""
    out = dict(q.messages)
    for level in range(len(q._cold)):
        out.update((msg.seq, msg) for msg in cold_messages(q, level))
    return out


def ready_bodies(q: MessageQueue) -> list[bytes]:
    return [m.body for m in ready_order(q)]


def x_death(msg: Message) -> list[dict[str, Any]]:
    return list((msg.properties.get("headers") or {}).get("x-death") or [])
