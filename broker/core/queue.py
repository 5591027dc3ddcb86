"""One queue's messages, in the order consumers should see them.

A queue serves push consumers (deliver, then ack/nack) and pull receivers (hide until a
deadline, delete by receipt handle) from the same messages. Messages returned to the queue
(requeued or made visible again) go back ahead of newer ones, in publish order.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

from broker.core.cold import ColdChunk, ColdEntry, ColdTail
from broker.core.commands import ConnectionId, Owner
from broker.core.errors import PreconditionFailed
from broker.core.model import HIDDEN, READY, RETAINED, UNACKED, Consumer, Message
from broker.core.policy import Policy, effective_queue_arguments
from broker.core.sequential import Sequencer, merge_rewound

OVERFLOW_POLICIES = ("drop-head", "reject-publish", "reject-publish-dlx")


@dataclass(slots=True)
class QueueSettings:
    """Behaviour parsed from declare arguments (x-*) and pull-API attributes, combined with
    the queue's policy (see core/policy.py)."""

    message_ttl: int | None = None
    expires: int | None = None
    max_length: int | None = None
    max_length_bytes: int | None = None
    overflow: str = "drop-head"
    dead_letter_exchange: str | None = None
    dead_letter_routing_key: str | None = None
    delivery_limit: int | None = None
    single_active_consumer: bool = False
    max_priority: int = 0
    #: default visibility timeout for pull receives, ms
    visibility_ms: int = 30_000
    #: how long acknowledged messages are kept for rewind, ms (0: not kept)
    rewind_ms: int = 0
    #: pull receives beyond this count move the message to its dead-letter target
    max_receive_count: int | None = None
    #: larger bodies are refused at publish, whatever the protocol (CMQ's maxMsgSize)
    max_message_size: int | None = None
    #: at most one message in flight per message group (core/sequential.py)
    sequential: bool = False

    @classmethod
    def from_arguments(cls, args: dict[str, Any]) -> QueueSettings:
        s = cls()
        s.message_ttl = _non_negative(args, "x-message-ttl")
        s.expires = _non_negative(args, "x-expires", positive=True)
        s.max_length = _non_negative(args, "x-max-length")
        s.max_length_bytes = _non_negative(args, "x-max-length-bytes")
        overflow = args.get("x-overflow", "drop-head")
        if isinstance(overflow, bytes):
            overflow = overflow.decode()
        if overflow not in OVERFLOW_POLICIES:
            raise PreconditionFailed(f"invalid arg 'x-overflow' for queue: {overflow!r}")
        s.overflow = overflow
        dlx = args.get("x-dead-letter-exchange")
        s.dead_letter_exchange = dlx.decode() if isinstance(dlx, bytes) else dlx
        dlrk = args.get("x-dead-letter-routing-key")
        s.dead_letter_routing_key = dlrk.decode() if isinstance(dlrk, bytes) else dlrk
        s.delivery_limit = _non_negative(args, "x-delivery-limit")
        s.single_active_consumer = bool(args.get("x-single-active-consumer", False))
        prio = _non_negative(args, "x-max-priority")
        if prio is not None and prio > 255:
            raise PreconditionFailed("invalid arg 'x-max-priority' for queue: max is 255")
        s.max_priority = prio or 0
        visibility = _non_negative(args, "x-visibility-timeout")
        if visibility is not None:
            s.visibility_ms = visibility
        s.rewind_ms = _non_negative(args, "x-rewind-ms") or 0
        s.max_receive_count = _non_negative(args, "x-max-receive-count", positive=True)
        s.max_message_size = _non_negative(args, "x-max-message-size")
        s.sequential = bool(args.get("x-sequential", False))
        if s.sequential and s.max_priority:
            # Priorities would reorder a group: strict order and priorities do not mix.
            raise PreconditionFailed("a sequential queue cannot have priorities (x-max-priority)")
        qtype = args.get("x-queue-type", "classic")
        if isinstance(qtype, bytes):
            qtype = qtype.decode()
        # "stream" only in queues stored before declarations refused it (core/arguments.py)
        if qtype not in ("classic", "quorum", "stream"):
            raise PreconditionFailed(f"invalid arg 'x-queue-type' for queue: {qtype!r}")
        return s


def _non_negative(args: dict[str, Any], key: str, positive: bool = False) -> int | None:
    if key not in args:
        return None
    value = args[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise PreconditionFailed(f"invalid arg '{key}' for queue: expected an integer")
    if value < 0 or (positive and value == 0):
        raise PreconditionFailed(f"invalid arg '{key}' for queue: {value} is out of range")
    return value


#: see _flow_limit
FLOW_LIMIT = 1000


class ColdStore(Protocol):
    """Where cold messages live (the state machine's, see state.ColdBodies)."""

    #: ready messages a level holds in memory before later ones go cold (cold.HOT_LIMIT),
    #: and the same while no consumer serves the queue (cold.IDLE_HOT_LIMIT)
    hot_limit: int
    idle_hot_limit: int
    #: cold messages taken back into memory at a time (cold.PROMOTE)
    promote: int

    def load(self, q: MessageQueue, entries: list[ColdEntry]) -> list[Message]:
        """The messages of cold entries, with their bodies read back."""

    def changed(self, q: MessageQueue, level: int, chunk: ColdChunk) -> None:
        """A chunk's record must be rewritten (or dropped, once it is empty)."""

    def refill(self, msg: Message) -> None:
        """Give back its body to a message that waited without it: kept for rewind, or
        delayed (see MessageQueue._let_body_go)."""


def _flow_limit(settings: QueueSettings) -> int:
    """Ready messages past which a queue that has consumers is congested: its publishers
    should wait (credit flow) rather than fill it up to its length limit, where messages
    would be dropped or refused. Half the length limit when that is lower."""
    limit = settings.max_length
    return FLOW_LIMIT if not limit else max(1, min(FLOW_LIMIT, limit // 2))


class QueueCounters:
    """What a queue did since the node started: the source of per-queue rates (metrics,
    the management API's message_stats). Plain ints bumped where the work is done; not in
    snapshots, so they restart at 0 with the node, as RabbitMQ's do."""

    __slots__ = ("published", "delivered", "redelivered", "acked", "dead_lettered", "dropped")

    def __init__(self) -> None:
        #: messages that entered the queue (from publishers or dead-lettered into it)
        self.published = 0
        #: deliveries of every kind: pushed to consumers, basic.get, pull receives
        self.delivered = 0
        #: of those, deliveries of a message delivered or returned before
        self.redelivered = 0
        self.acked = 0
        #: messages that died here and went to the dead-letter exchange
        self.dead_lettered = 0
        #: messages that died here and went nowhere (no dead-letter target took them)
        self.dropped = 0

    def add(self, other: QueueCounters) -> None:
        self.published += other.published
        self.delivered += other.delivered
        self.redelivered += other.redelivered
        self.acked += other.acked
        self.dead_lettered += other.dead_lettered
        self.dropped += other.dropped


class MessageQueue:
    """Messages of one queue plus the consumers attached to it."""

    def __init__(
        self,
        vhost: str,
        name: str,
        qid: int,
        durable: bool,
        exclusive_owner: ConnectionId | None,
        auto_delete: bool,
        arguments: dict[str, Any],
    ) -> None:
        self.vhost = vhost
        self.name = name
        self.qid = qid
        self.durable = durable
        self.exclusive_owner = exclusive_owner
        self.auto_delete = auto_delete
        self.arguments = arguments
        #: the policy that applies to it (derived: StateMachine sets it, also on restore)
        self.policy: Policy | None = None
        self.settings = QueueSettings.from_arguments(arguments)
        self.flow_limit = _flow_limit(self.settings)
        #: the groups in flight, when the queue is sequential (derived: rebuilt on restore)
        self.sequence: Sequencer | None = Sequencer() if self.settings.sequential else None
        self.messages: dict[int, Message] = {}
        #: the highest priority level (fixed for the queue's life)
        self._top_level = self.settings.max_priority
        levels = self._top_level + 1
        self._ready: list[deque[int]] = [deque() for _ in range(levels)]
        #: of each level, the messages in `_ready` that are still ready
        self._hot = [0] * levels
        #: of each level, the never-delivered ready messages behind those in `_ready`
        self._cold = [ColdTail() for _ in range(levels)]
        #: cold messages whose publish is not in the log (dead-lettered copies, released
        #: delays): held whole, in their cold place, by seq
        self.held: dict[int, Message] = {}
        #: set by the state machine when it can read bodies back: only then do messages go cold
        self.cold_store: ColdStore | None = None
        self._returned: list[list[int]] = [[] for _ in range(levels)]
        self._hidden: list[tuple[int, int]] = []  # (visible_at, seq), possibly stale
        self._retained: deque[int] = deque()  # seqs in ack order
        self.ready_count = 0
        self.ready_bytes = 0
        self.hidden_count = 0
        self.delayed_count = 0
        #: seq -> (owner, consumer or None for basic.get) of each push delivery awaiting settlement
        self.unacked: dict[int, tuple[Owner, Consumer | None]] = {}
        self.consumers: list[Consumer] = []
        self.next_seq = 1
        #: order in which never-delivered messages became ready (a delayed one joins late)
        self.next_position = 1
        self.last_used = 0
        #: when the queue was declared and its arguments last changed, ms
        self.created_at = 0
        self.modified_at = 0
        self.had_consumer = False
        #: some message carried its own TTL, so heads do not expire in publish order
        self.per_message_ttl = False
        #: where the next round-robin search for a consumer starts
        self.round_robin = 0
        #: a no-ack dispatch stopped after its burst and continues on the next Tick
        self.dispatch_pending = False
        self.counters = QueueCounters()

    # -- bookkeeping ---------------------------------------------------------------------

    @property
    def survives_restart(self) -> bool:
        """Durable and not owned by a connection (which a restart ends)."""
        return self.durable and self.exclusive_owner is None

    def level(self, msg: Message) -> int:
        top = self._top_level
        return 0 if top == 0 else min(msg.priority, top)

    def message_count(self) -> int:
        """Ready messages, as AMQP reports them."""
        return self.ready_count

    def is_empty(self) -> bool:
        return self.ready_count == 0

    def congested(self) -> bool:
        return self.ready_count >= self.flow_limit and bool(self.consumers)

    def has_room(self) -> bool:
        """No longer congested: drained to half the flow limit, or nobody consumes (a queue
        whose consumers are away fills up to its length limit, as its arguments say)."""
        return not self.consumers or self.ready_count <= self.flow_limit // 2

    def new_message_seq(self) -> int:
        seq = self.next_seq
        self.next_seq += 1
        return seq

    def cold_count(self) -> int:
        """Ready messages waiting cold (their bodies only on disk, or held whole)."""
        return sum(tail.count for tail in self._cold)

    def cold_enqueued_at(self) -> int | None:
        """When the oldest cold message was enqueued (None: there is none)."""
        heads = [entry.enqueued_at for tail in self._cold if (entry := tail.peek()) is not None]
        return min(heads, default=None)

    def cold_chunks(self) -> list[ColdChunk]:
        return [chunk for tail in self._cold for chunk in tail.chunks]

    def _mark_ready(self, msg: Message) -> None:
        msg.state = READY
        self.ready_count += 1
        self.ready_bytes += msg.size

    def _unmark_ready(self, msg: Message) -> None:
        self.ready_count -= 1
        self.ready_bytes -= msg.size

    def reconfigure(self, arguments: dict[str, Any]) -> None:
        """Take new arguments; raises PreconditionFailed, changing nothing, if invalid."""
        settings = self.settings_with(arguments, self.policy)
        self.arguments = arguments
        self._take_settings(settings)

    def settings_with(self, arguments: dict[str, Any], policy: Policy | None) -> QueueSettings:
        """The settings these arguments and this policy give; PreconditionFailed if invalid
        (a policy cannot set x-max-priority, so the priority levels stay as they are)."""
        settings = QueueSettings.from_arguments(effective_queue_arguments(arguments, policy))
        if settings.max_priority != self.settings.max_priority:
            raise PreconditionFailed("x-max-priority of an existing queue cannot change")
        return settings

    def apply_policy(self, policy: Policy | None, settings: QueueSettings) -> None:
        """Take a new policy, with the settings `settings_with` gave for it."""
        self.policy = policy
        self._take_settings(settings)

    def _take_settings(self, settings: QueueSettings) -> None:
        self.settings = settings
        self.flow_limit = _flow_limit(settings)
        if not settings.sequential:
            self.sequence = None
        elif self.sequence is None:
            self.sequence = Sequencer(self._in_flight())

    def _in_flight(self) -> list[Message]:
        """Messages delivered and not yet settled or back: unacked, or pulled and hidden."""
        out = [self.messages[seq] for seq in self.unacked]
        for visible_at, seq in self._hidden:
            msg = self.messages.get(seq)
            if msg is None or msg.state != HIDDEN or msg.visible_at != visible_at:
                continue
            if msg.delivery_count:  # (not a delayed message, which no one has seen)
                out.append(msg)
        return out

    # -- adding --------------------------------------------------------------------------

    def append(self, msg: Message) -> None:
        """A new message, at the tail (or hidden until `visible_at` if delayed).

        One that goes cold is not in `messages` (see `holds`)."""
        self.counters.published += 1
        if msg.visible_at > msg.enqueued_at:
            self.messages[msg.seq] = msg
            self._hide(msg, msg.visible_at)
            self.delayed_count += 1
            self._let_body_go(msg)
            return
        self._to_tail(msg)

    def holds(self, msg: Message) -> bool:
        """Whether this very object stands for its message here (one gone cold does not,
        unless it is `held`; one taken back from cold is a new object)."""
        return self.messages.get(msg.seq) is msg or self.held.get(msg.seq) is msg

    def _to_tail(self, msg: Message) -> None:
        msg.position = self.next_position
        self.next_position += 1
        level = self.level(msg)
        tail = self._cold[level]
        store = self.cold_store
        # (A sequential queue's receivers look for free groups among the messages in memory.)
        served = self.consumers or self.sequence is not None
        if store is not None and (
            tail.count or self._hot[level] >= (store.hot_limit if served else store.idle_hot_limit)
        ):
            if msg.state == HIDDEN:  # (a delayed one, there while it waited)
                del self.messages[msg.seq]
            self._mark_ready(msg)
            if msg.source is None:
                self.held[msg.seq] = msg
            store.changed(self, level, tail.append(msg))
            return
        self.messages[msg.seq] = msg
        self._mark_ready(msg)
        self._ready[level].append(msg.seq)
        self._hot[level] += 1

    def give_back(self, msg: Message) -> None:
        """A message already seen by a consumer goes back ahead of newer messages."""
        if self.sequence is not None:
            self.sequence.release(msg.seq)
        self._mark_ready(msg)
        heapq.heappush(self._returned[self.level(msg)], msg.seq)

    def restore(self, msg: Message, holder: tuple[Owner, Consumer | None] | None) -> None:
        """Place a message loaded from a snapshot, in the state it was saved in.

        Messages arrive in seq order; `finish_restore` then orders what seq order does not
        tell (the tail by position, retained messages by ack time).
        """
        self.messages[msg.seq] = msg
        if msg.state == RETAINED:
            self._retained.append(msg.seq)
            self._let_body_go(msg)
        elif msg.state == HIDDEN:
            self._hide(msg, msg.visible_at)
            if msg.delivery_count == 0:
                self.delayed_count += 1
                self._let_body_go(msg)
        elif msg.state == UNACKED:
            assert holder is not None
            self.unacked[msg.seq] = holder
        elif msg.delivery_count:
            self.give_back(msg)
        else:
            self._mark_ready(msg)
            self._ready[self.level(msg)].append(msg.seq)

    def restore_cold(self, level: int, chunk: ColdChunk) -> None:
        """Place a cold chunk loaded from a snapshot (chunks of a level arrive in order)."""
        self._cold[level].restore(chunk)
        self.ready_count += len(chunk)
        self.ready_bytes += chunk.bytes

    def finish_restore(self) -> None:
        """Order what the snapshot (in seq order) does not: the tail, retained messages; and
        move the held messages (restored as ready ones) to their cold places."""
        for tail in self._cold:
            for chunk in tail.chunks:
                for seq in chunk.held_seqs():
                    msg = self.messages.pop(seq)
                    self.held[seq] = msg
                    self.ready_count -= 1  # counted by its chunk already
                    self.ready_bytes -= msg.size
        for i, ready in enumerate(self._ready):
            hot = [seq for seq in ready if seq not in self.held]
            self._ready[i] = deque(sorted(hot, key=lambda seq: self.messages[seq].position))
            self._hot[i] = len(hot)
        self._retained = deque(
            sorted(self._retained, key=lambda seq: (self.messages[seq].acked_at, seq))
        )
        if self.sequence is not None:
            self.sequence = Sequencer(self._in_flight())

    def _hide(self, msg: Message, until: int) -> None:
        msg.state = HIDDEN
        msg.visible_at = until
        self.hidden_count += 1
        heapq.heappush(self._hidden, (until, msg.seq))

    # -- taking --------------------------------------------------------------------------

    def _level_head(self, level: int) -> Message | None:
        """The next ready message of one priority level (returned ones first)."""
        while True:
            msg = self._hot_head(level)
            if msg is not None or not self._cold[level].count or not self._promote(level):
                return msg

    def _hot_head(self, level: int) -> Message | None:
        """The next ready message of a level among those in memory (stale index entries, of
        messages no longer ready, are dropped on the way)."""
        returned, ready = self._returned[level], self._ready[level]
        while returned:
            msg = self.messages.get(returned[0])
            if msg is not None and msg.state == READY:
                return msg
            heapq.heappop(returned)
        while ready:
            msg = self.messages.get(ready[0])
            if msg is not None and msg.state == READY:
                return msg
            ready.popleft()
        return None

    def _promote(self, level: int) -> bool:
        """Take the next cold messages of a level into memory (the level's `_ready` is empty)."""
        store = self.cold_store
        assert store is not None
        entries, changed = self._cold[level].take(store.promote)
        for chunk in changed:
            store.changed(self, level, chunk)
        messages = store.load(self, entries)
        ready = self._ready[level]
        for msg in messages:
            msg.state = READY
            self.messages[msg.seq] = msg
            ready.append(msg.seq)
        self._hot[level] += len(messages)
        return bool(messages)

    def peek_head(self) -> Message | None:
        """The message a consumer would get next."""
        for level in range(len(self._ready) - 1, -1, -1):
            msg = self._level_head(level)
            if msg is not None:
                return msg
        return None

    def pop_head(self) -> Message | None:
        """Remove and return the next ready message.

        It is no longer counted as ready: the caller delivers, hides or removes it.
        """
        msg = self.peek_head()
        if msg is not None:
            self._take(msg)
        return msg

    def pop_deliverable(self) -> Message | None:
        """`pop_head` for a delivery: in a sequential queue, the first message whose group
        has none in flight (see core/sequential.py), which need not be the head."""
        msg = self.peek_head()
        sequence = self.sequence
        if msg is not None and sequence is not None and sequence.blocks(msg):
            msg = sequence.first_free(self._returned[0], self._ready[0], self.messages)
        if msg is not None:
            self._take(msg)
        return msg

    def pop_expired(self, now: int) -> list[Message]:
        """Take out the expired messages at the head of each priority level.

        Like RabbitMQ, only heads expire; each level is a queue of its own. Removing them
        is up to the caller, as with `pop_head`.
        """
        out: list[Message] = []
        for level in range(len(self._ready) - 1, -1, -1):
            while True:
                msg = self._level_head(level)
                if msg is None or msg.expires_at is None or msg.expires_at > now:
                    break
                self._take(msg)
                out.append(msg)
        return out

    def _take(self, msg: Message) -> None:
        """Take `msg` out of the ready index: the head of its level, or (sequential
        queues) one behind it, whose entry is then skipped when it comes to the head."""
        level = self.level(msg)
        returned, ready = self._returned[level], self._ready[level]
        if returned and returned[0] == msg.seq:
            heapq.heappop(returned)
        elif ready and ready[0] == msg.seq:
            ready.popleft()
        if not msg.delivery_count:  # (it was in `ready`: a returned one was seen before)
            self._hot[level] -= 1
        self._unmark_ready(msg)
        msg.state = UNACKED  # so that remove() does not count it out of the ready set again

    def remove(self, msg: Message) -> None:
        """Forget a message entirely (acked, dead-lettered, expired, dropped)."""
        del self.messages[msg.seq]
        self.unacked.pop(msg.seq, None)
        if self.sequence is not None:
            self.sequence.release(msg.seq)
        if msg.state == READY:
            self._unmark_ready(msg)  # its index entry is skipped lazily
            if not msg.delivery_count:  # (else it is among the returned)
                self._hot[self.level(msg)] -= 1
        elif msg.state == HIDDEN:
            self.hidden_count -= 1
            if msg.delivery_count == 0:
                self.delayed_count -= 1
        msg.state = -1

    def deliver(self, msg: Message, owner: Owner, consumer: Consumer | None, now: int) -> None:
        msg.state = UNACKED
        msg.delivery_count += 1
        counters = self.counters
        counters.delivered += 1
        if msg.delivery_count > 1 or msg.returns:
            counters.redelivered += 1
        if not msg.first_delivered_at:
            msg.first_delivered_at = now
        self.unacked[msg.seq] = (owner, consumer)
        if self.sequence is not None:
            self.sequence.hold(msg)

    def hide_for_pull(self, msg: Message, now: int, visibility_ms: int) -> None:
        msg.delivery_count += 1
        counters = self.counters
        counters.delivered += 1
        if msg.delivery_count > 1:
            counters.redelivered += 1
        msg.handle += 1
        if not msg.first_delivered_at:
            msg.first_delivered_at = now
        self._hide(msg, now + visibility_ms)
        if self.sequence is not None:
            self.sequence.hold(msg)

    def retain(self, msg: Message, now: int) -> None:
        """Keep an acknowledged message for rewind."""
        self.unacked.pop(msg.seq, None)
        if self.sequence is not None:
            self.sequence.release(msg.seq)
        if msg.state == HIDDEN:
            self.hidden_count -= 1
        msg.state = RETAINED
        msg.acked_at = now
        self._retained.append(msg.seq)
        self._let_body_go(msg)

    def _let_body_go(self, msg: Message) -> None:
        """A message kept for rewind, or delayed, keeps its body on disk only, in its log
        entry (read back when it is ready again): days of acknowledged or delayed messages
        cost disk, not memory."""
        if msg.source is not None and self.cold_store is not None:
            msg.body = b""

    def _body_back(self, msg: Message) -> None:
        if msg.source is not None and self.cold_store is not None:
            self.cold_store.refill(msg)

    # -- timers --------------------------------------------------------------------------

    def due_hidden(self, now: int) -> list[Message]:
        """Hidden messages whose deadline has passed, made visible again."""
        out = []
        while self._hidden and self._hidden[0][0] <= now:
            visible_at, seq = heapq.heappop(self._hidden)
            msg = self.messages.get(seq)
            if msg is None or msg.state != HIDDEN or msg.visible_at != visible_at:
                continue
            self.hidden_count -= 1
            if msg.delivery_count == 0:
                self.delayed_count -= 1
                self._body_back(msg)
                self._to_tail(msg)
            else:
                self.give_back(msg)
            out.append(msg)
        return out

    def expired_retained(self, now: int) -> list[Message]:
        out: list[Message] = []
        while self._retained:
            msg = self.messages.get(self._retained[0])
            if msg is None or msg.state != RETAINED:
                self._retained.popleft()
                continue
            if msg.acked_at + self.settings.rewind_ms > now:
                break
            self._retained.popleft()
            out.append(msg)
        return out

    def rewind(self, since_ms: int, from_seq: int = 0) -> list[Message]:
        """Retained messages enqueued at or after `since_ms`, with a sequence number of at
        least `from_seq`, become ready again, as new.

        They start over (no receives or returns counted, so a receive limit does not send
        them straight to the dead-letter queue) and go ahead of the never-delivered ready
        messages, in their original order. Every ready message of a level was enqueued
        after any message taken from that level, so the ready index stays in position
        order, which is the order a restored queue rebuilds.
        """
        back = []
        keep: deque[int] = deque()
        for seq in self._retained:
            msg = self.messages.get(seq)
            if msg is None or msg.state != RETAINED:
                continue
            if msg.enqueued_at >= since_ms and seq >= from_seq:
                back.append(msg)
            else:
                keep.append(seq)
        self._retained = keep
        back.sort(key=lambda m: m.position, reverse=True)
        for msg in back:
            msg.acked_at = msg.delivery_count = msg.returns = msg.first_delivered_at = 0
            self._body_back(msg)
            self._mark_ready(msg)
            level = self.level(msg)
            self._ready[level].appendleft(msg.seq)
            self._hot[level] += 1
        back.reverse()
        if self.sequence is not None and back:
            merge_rewound(self._ready[0], self.messages, back)
        return back

    def take_retained(self) -> list[Message]:
        """Every message kept for rewind, taken out of the rewind index (rewind turned off)."""
        out = [
            msg
            for seq in self._retained
            if (msg := self.messages.get(seq)) is not None and msg.state == RETAINED
        ]
        self._retained.clear()
        return out

    def retained_count(self) -> int:
        return sum(1 for seq in self._retained if seq in self.messages)

    def next_due(self) -> int | None:
        """The earliest time a timer of this queue needs a Tick."""
        candidates = []
        if self._hidden:
            candidates.append(self._hidden[0][0])
        for level in range(len(self._ready)):
            # Per-message TTLs may differ: the head of each level is what RabbitMQ expires.
            expires_at = self._head_expiry(level)
            if expires_at is not None:
                candidates.append(expires_at)
        if self._retained and self.settings.rewind_ms:
            msg = self.messages.get(self._retained[0])
            if msg is not None:
                candidates.append(msg.acked_at + self.settings.rewind_ms)
        if self.settings.expires is not None and not self.consumers:
            candidates.append(self.last_used + self.settings.expires)
        if self.dispatch_pending:
            candidates.append(0)
        return min(candidates) if candidates else None

    def _head_expiry(self, level: int) -> int | None:
        """When the head of a level expires, without taking cold messages into memory."""
        msg = self._hot_head(level)
        if msg is not None:
            return msg.expires_at
        entry = self._cold[level].peek()
        return None if entry is None else entry.expires_at

    def purge_ready(self) -> list[Message]:
        """Take every ready message held in memory out (`take_cold` takes the rest)."""
        out: list[Message] = []
        for level in range(len(self._ready)):
            while (msg := self._hot_head(level)) is not None:
                self._take(msg)
                out.append(msg)
        return out

    def take_cold(self) -> tuple[list[tuple[int, ColdChunk]], list[Message]]:
        """Take every cold message out: the (level, chunk)s they were in (their records to
        drop, their log entries to let go of), and the held ones among them."""
        chunks = [(level, chunk) for level, tail in enumerate(self._cold) for chunk in tail.clear()]
        for _, chunk in chunks:
            self.ready_count -= len(chunk)
            self.ready_bytes -= chunk.bytes
        held = list(self.held.values())
        self.held.clear()
        return chunks, held

    def drop_transient_cold(self) -> tuple[int, list[int], list[Message]]:
        """Take the cold messages that were not persistent out: how many, the log entries
        they let go of, and the held ones among them."""
        count, indexes, held = 0, [], []
        for level, tail in enumerate(self._cold):
            for chunk in tail.chunks:
                if not chunk.transient():
                    continue
                for entry in tail.drop_transient(chunk):
                    count += 1
                    self.ready_count -= 1
                    self.ready_bytes -= entry.size
                    if entry.source[0]:
                        indexes.append(entry.source[0])
                    else:
                        held.append(self.held.pop(entry.seq))
                assert self.cold_store is not None
                self.cold_store.changed(self, level, chunk)
            tail.drop_empty()
        return count, indexes, held
