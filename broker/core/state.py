"""The broker's state machine: `apply(command, meta) -> (reply, error, effects, changes)`.

Pure and deterministic: it never reads the clock (the time comes with the log entry, in `meta`),
never does I/O, never draws random numbers. What a command changes comes back as values:
`changes` name every record of the state that the command touched ((kind, key) and the live
object, or None once it is gone), so a snapshot can write exactly those; `effects` say what
the node must do (deliver, cancel a consumer, wake long polls, close a connection).

A command either succeeds or changes nothing: handlers check everything that can fail before
they change anything, and a command that fails anyway after it started changing the state is
reported as a `PartialFailure` for the commit path to undo (by rebuilding the state without it).

The whole state is recorded, not only what is durable to a client (consumers, deliveries in
flight, non-durable queues): a node that restores a snapshot and replays the log after it must
end in exactly the state of a node that applied every entry. What a restart drops is dropped
by commands (ReleaseNode, DropTransient), so replicas agree on that too.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from broker.core import cold
from broker.core import commands as c
from broker.core.arguments import (
    check_binding_arguments,
    check_exchange_arguments,
    check_queue_arguments,
)
from broker.core.cold import ColdChunk, ColdEntry
from broker.core.errors import (
    AccessRefused,
    BrokerError,
    CommandInvalid,
    InternalError,
    InvalidArgument,
    NotAllowed,
    NotFound,
    PreconditionFailed,
    QueueLimitReached,
    ReceiptHandleInvalid,
    ResourceLimit,
    ResourceLocked,
)
from broker.core.model import (
    HIDDEN,
    READY,
    RETAINED,
    TOO_LARGE,
    AccessKey,
    BindingKey,
    CloseConnection,
    Consumer,
    ConsumerCancelled,
    Deliver,
    Dropped,
    Effect,
    Exchange,
    GetResult,
    Message,
    MessagesAvailable,
    Overflowed,
    Permission,
    Proposer,
    PublishResult,
    QueueInfo,
    Received,
    RetainedMessage,
    SessionHolder,
    SharedLimit,
    Traced,
    User,
)
from broker.core.policy import Policy, alternate_exchange, checked_policy, choose
from broker.core.queue import MessageQueue, QueueCounters, QueueSettings
from broker.core.routing import EXCHANGE_TYPES, binding_matches, freeze_arguments, topic_matches
from broker.core.tracing import FIREHOSE_EXCHANGE, Tracing, firehose_headers

PREDECLARED_EXCHANGES = (
    ("", "direct"),
    ("amq.direct", "direct"),
    ("amq.fanout", "fanout"),
    ("amq.topic", "topic"),
    ("amq.headers", "headers"),
    ("amq.match", "headers"),
    (FIREHOSE_EXCHANGE, "topic"),
)
_PREDECLARED = dict(PREDECLARED_EXCHANGES)
#: the limits SetLimits knows, by scope (as rabbitmqctl set_vhost_limits / set_user_limits)
LIMIT_NAMES = {
    "vhost": ("max-connections", "max-queues"),
    "user": ("max-connections", "max-channels"),
}

#: Routing keys remembered per exchange before the memo starts over.
ROUTE_CACHE_SIZE = 4096

#: Most deliveries to no-ack consumers of one queue in one go (they have no prefetch window).
NO_ACK_BURST = 256

#: A change: ((record kind, key), the live object as it is now, or None once it is gone).
Change = tuple[tuple[str, Any], Any]

#: What applying one command gives: reply, error, effects, changes.
Applied = tuple[Any, BrokerError | None, list[Effect], list[Change]]

#: Commands a Batch may hold: each can be checked before any of them changes anything.
BATCHABLE = (c.Publish, c.Settle, c.PutRecord, c.DropRecords, c.StoreRetained)

#: Who holds an unacked message: its owner and consumer (None for basic.get).
Holder = tuple[c.Owner, Consumer | None]


class PartialFailure(Exception):
    """A command failed after it had started changing the state: the state must be rebuilt."""


@dataclass(slots=True)
class Vhost:
    name: str
    exchanges: dict[str, Exchange] = field(default_factory=dict)
    queues: dict[str, MessageQueue] = field(default_factory=dict)
    #: source exchange -> its bindings, each with its creation number (routing order)
    bindings: dict[str, dict[BindingKey, int]] = field(default_factory=dict)
    #: routing key -> the message retained for it (StoreRetained)
    retained: dict[str, RetainedMessage] = field(default_factory=dict)
    #: exchange -> routing key -> its matching bindings; derived, dropped when bindings change
    route_cache: dict[str, dict[str, list[BindingKey]]] = field(default_factory=dict)
    #: policy name -> policy (SetPolicy)
    policies: dict[str, Policy] = field(default_factory=dict)

    def bindings_changed(self, source: str) -> None:
        self.route_cache.pop(source, None)


@dataclass(slots=True)
class DelayedPublish:
    """A message held by an x-delayed-message exchange until `due`."""

    id: int
    due: int
    vhost: str
    exchange: str
    routing_key: str
    properties: dict[str, Any]
    body: bytes
    persistent: bool


class StateMachine:
    def __init__(self) -> None:
        self.vhosts: dict[str, Vhost] = {}
        self.users: dict[str, User] = {}
        self.permissions: dict[tuple[str, str], Permission] = {}
        #: ("vhost" or "user", name) -> limit name -> value (SetLimits); adapters enforce the
        #: connection and channel limits, the core the queue limit
        self.limits: dict[tuple[str, str], dict[str, int]] = {}
        #: (owner, tag) -> consumer, in consume order
        self.consumers: dict[tuple[c.Owner, str], Consumer] = {}
        #: owner -> queues where it holds deliveries or consumers (may list a few it left)
        self.owner_queues: dict[c.Owner, set[tuple[str, str]]] = {}
        self.shared_limits: dict[c.Owner, SharedLimit] = {}
        self.exclusive_queues: dict[c.ConnectionId, set[tuple[str, str]]] = {}
        self.queues_by_qid: dict[int, MessageQueue] = {}
        self.delayed: dict[int, DelayedPublish] = {}
        self._delayed_heap: list[tuple[int, int]] = []
        #: (vhost, group) -> name -> an adapter's opaque durable value (PutRecord)
        self.records: dict[tuple[str, tuple[str, ...]], dict[str, Any]] = {}
        #: (vhost, client id) -> the shared queues its session holds (commands.holders_of);
        #: derived from the records, rebuilt on restore
        self.holds: dict[tuple[str, str], set[str]] = {}
        #: secret id -> access key (AddAccessKey)
        self.access_keys: dict[str, AccessKey] = {}
        #: (vhost, client id) -> the connection holding it (OpenSession)
        self.sessions: dict[tuple[str, str], SessionHolder] = {}
        #: counters that name things: recorded so a restored node names them alike
        self.counters = {"qid": 1, "delayed": 1, "consumer": 1, "binding": 1}
        #: node id -> the proposals of its current run already applied (commands.Meta.key)
        self.proposers: dict[int, Proposer] = {}
        #: node id -> cluster address, as the last SetMembers says
        self.members: dict[int, str] = {}
        #: log index -> messages whose body is that entry's (Message.source); an entry with
        #: none is dropped with the log behind a snapshot, one with some is kept
        self.entry_refs: dict[int, int] = {}
        #: the command of a log entry by index, where the store can read it back: queues then
        #: keep the bodies of deep backlogs on disk (see core/cold.py)
        self.entries: Callable[[int], Any] | None = None
        #: see queue.ColdStore (read from the module here, so tests can make them small)
        self.cold_limits = (cold.HOT_LIMIT, cold.IDLE_HOT_LIMIT, cold.PROMOTE)
        #: vhosts and queues whose messages are traced, or copied to the firehose
        self.tracing = Tracing()
        #: the log index being applied, and the position in it (inside a Batch)
        self.index = 0
        self._position = 0
        #: the counters of deleted queues, summed: node-wide totals never go down
        self.retired = QueueCounters()
        self._timers: list[tuple[int, str, str]] = []
        self._changes: list[Change] = []
        self._effects: list[Effect] = []
        self.now = 0
        self._handlers: dict[type, Callable[[Any], Any]] = {
            c.DeclareVhost: self._declare_vhost,
            c.DeleteVhost: self._delete_vhost,
            c.PutUser: self._put_user,
            c.DeleteUser: self._delete_user,
            c.SetPermissions: self._set_permissions,
            c.ClearPermissions: self._clear_permissions,
            c.SetLimits: self._set_limits,
            c.SetPolicy: self._set_policy,
            c.DeletePolicy: self._delete_policy,
            c.DeclareExchange: self._declare_exchange,
            c.DeleteExchange: self._delete_exchange,
            c.DeclareQueue: self._declare_queue,
            c.DeleteQueue: self._delete_queue,
            c.PurgeQueue: self._purge_queue,
            c.Bind: self._bind,
            c.Unbind: self._unbind,
            c.Publish: self._publish_entry,
            c.Consume: self._consume,
            c.Cancel: self._cancel,
            c.Settle: self._settle,
            c.Get: self._get,
            c.Recover: self._recover,
            c.ReleaseOwner: self._release_owner_cmd,
            c.ConnectionClosed: self._connection_closed,
            c.ReleaseNode: self._release_node,
            c.DropTransient: self._drop_transient,
            c.OpenSession: self._open_session,
            c.CloseSession: self._close_session,
            c.Batch: self._batch,
            c.SetFlow: self._set_flow,
            c.Tick: self._tick,
            c.Receive: self._receive,
            c.DeleteByHandle: self._delete_by_handle,
            c.ChangeVisibility: self._change_visibility,
            c.Rewind: self._rewind,
            c.StoreRetained: self._store_retained,
            c.CopyRetained: self._copy_retained,
            c.PutRecord: self._put_record,
            c.DropRecords: self._drop_records,
            c.SetQueueArguments: self._set_queue_arguments,
            c.AddAccessKey: self._add_access_key,
            c.DeleteAccessKey: self._delete_access_key,
            c.SetMembers: self._set_members,
            c.SetTracing: self._set_tracing,
        }

    # -- entry point ---------------------------------------------------------------------

    def apply(self, command: c.Command, meta: c.Meta) -> Applied:
        """Apply one log entry's command at the entry's time."""
        self.now = meta.time
        self.index = meta.index
        self._position = 0
        effects: list[Effect] = []
        changes: list[Change] = []
        self._effects = effects
        self._changes = changes
        key = meta.key
        if key is not None and self._applied_before(key):
            return None, None, effects, changes  # sent again after a failover: once is enough
        error = None
        try:
            reply = self._handlers[type(command)](command)
        except BrokerError as exc:
            if changes or effects:
                raise PartialFailure(f"{type(command).__name__} failed half-way: {exc}") from exc
            reply, error = None, exc
        if key is not None:
            self._note_proposal(key, meta.floor)
        return reply, error, effects, changes

    def _applied_before(self, key: tuple[int, int, int]) -> bool:
        node, session, number = key
        p = self.proposers.get(node)
        return p is not None and p.session == session and (number < p.floor or number in p.seen)

    def _note_proposal(self, key: tuple[int, int, int], floor: int) -> None:
        node, session, number = key
        p = self.proposers.get(node)
        if p is None or session > p.session:
            p = self.proposers[node] = Proposer(session)
        elif session < p.session:
            return  # an earlier run's: it can no longer send anything again
        if floor > p.floor:
            p.seen.difference_update(range(p.floor, floor))
            p.floor = floor
        if number >= p.floor:
            p.seen.add(number)
        self._record("proposer", node, p)

    def next_due(self) -> int | None:
        """When the next Tick is needed, or None when no timer is pending."""
        due = self._timers[0][0] if self._timers else None
        if self._delayed_heap and (due is None or self._delayed_heap[0][0] < due):
            due = self._delayed_heap[0][0]
        return due

    # -- lookups -------------------------------------------------------------------------

    def vhost(self, name: str) -> Vhost:
        vh = self.vhosts.get(name)
        if vh is None:
            raise NotAllowed(f"vhost '{name}' not found")
        return vh

    def queue(self, vhost: str, name: str) -> MessageQueue:
        q = self.vhost(vhost).queues.get(name)
        if q is None:
            raise NotFound(f"no queue '{name}' in vhost '{vhost}'")
        return q

    def exchange(self, vhost: str, name: str) -> Exchange:
        ex = self.vhost(vhost).exchanges.get(name)
        if ex is None:
            raise NotFound(f"no exchange '{name}' in vhost '{vhost}'")
        return ex

    def reset_counters(self) -> None:
        """Start every queue's counters at 0 (after recovery replayed the log: what the
        replay counted happened in an earlier run)."""
        for q in self.queues_by_qid.values():
            q.counters = QueueCounters()
        self.retired = QueueCounters()

    def queue_info(self, q: MessageQueue) -> QueueInfo:
        return QueueInfo(q.name, q.message_count(), len(q.consumers), q.qid)

    def has_binding(
        self,
        vhost: str,
        source: str,
        destination: str,
        routing_key: str,
        arguments: dict[str, Any],
        to_queue: bool = True,
    ) -> bool:
        vh = self.vhosts.get(vhost)
        if vh is None:
            return False
        key = BindingKey(source, destination, to_queue, routing_key, freeze_arguments(arguments))
        return key in vh.bindings.get(source, {})

    def records_of(self, vhost: str, group: tuple[str, ...]) -> dict[str, Any]:
        """The records of one group (a copy)."""
        return dict(self.records.get((vhost, tuple(group)), {}))

    def consumers_of(self, owner: c.Owner) -> list[Consumer]:
        return [consumer for (o, _), consumer in self.consumers.items() if o == owner]

    def has_room(self, vhost: str, name: str) -> bool:
        """The queue is no longer congested (or is gone): its publishers may go on."""
        q = self._find_queue(vhost, name)
        return q is None or q.has_room()

    def _find_queue(self, vhost: str, name: str) -> MessageQueue | None:
        vh = self.vhosts.get(vhost)
        return vh.queues.get(name) if vh is not None else None

    def _live(self, q: MessageQueue) -> bool:
        vh = self.vhosts.get(q.vhost)
        return vh is not None and vh.queues.get(q.name) is q

    # -- recording changes ---------------------------------------------------------------

    def _record(self, kind: str, key: Any, value: Any) -> None:
        self._changes.append(((kind, key), value))

    def _touch(self, q: MessageQueue) -> None:
        """The queue's own fields changed (counters, round robin, last use, arguments)."""
        self._changes.append((("queue", (q.vhost, q.name)), q))

    def _touch_message(self, q: MessageQueue, msg: Message) -> None:
        msg.recorded = True
        self._changes.append((("message", (q.qid, msg.seq)), msg))

    def _count(self, name: str) -> int:
        """Take the next number of a counter."""
        value = self.counters[name]
        self.counters[name] = value + 1
        self._changes.append((("counter", name), value + 1))
        return value

    # -- vhosts, users, permissions ------------------------------------------------------

    def _declare_vhost(self, cmd: c.DeclareVhost) -> None:
        if cmd.name in self.vhosts:
            return
        self._add_vhost(cmd.name)
        self._record("vhost", cmd.name, True)

    def _add_vhost(self, name: str) -> None:
        vh = Vhost(name)
        for ex_name, type_ in PREDECLARED_EXCHANGES:
            vh.exchanges[ex_name] = Exchange(
                name, ex_name, type_, internal=ex_name == FIREHOSE_EXCHANGE
            )
        self.vhosts[name] = vh

    def _delete_vhost(self, cmd: c.DeleteVhost) -> None:
        vh = self.vhost(cmd.name)
        for key in sorted(k for k in self.sessions if k[0] == cmd.name):
            self._end_session(key, publish_will=False)
        for qname in sorted(vh.queues):
            if qname in vh.queues:
                self._remove_queue(vh.queues[qname])
        for name in sorted(vh.exchanges):
            ex = vh.exchanges.get(name)
            if ex is not None and name not in _PREDECLARED:
                self._remove_exchange(vh, ex)
        for source in list(vh.bindings):
            for binding in list(vh.bindings.get(source, ())):
                self._remove_binding(vh, binding)
        for key in sorted(k for k in self.permissions if k[1] == cmd.name):
            del self.permissions[key]
            self._record("permission", key, None)
        self._drop_limits("vhost", cmd.name)
        for policy_name in sorted(vh.policies):
            self._record("policy", (cmd.name, policy_name), None)
        for delayed in [d for d in self.delayed.values() if d.vhost == cmd.name]:
            self._drop_delayed(delayed)
        for routing_key in sorted(vh.retained):
            self._record("retained", (cmd.name, routing_key), None)
        for vhost, group in sorted(k for k in self.records if k[0] == cmd.name):
            self._drop_records(c.DropRecords(vhost, group))
        for secret_id in sorted(
            k.secret_id for k in self.access_keys.values() if k.vhost == cmd.name
        ):
            del self.access_keys[secret_id]
            self._record("access_key", secret_id, None)
        for _, kind, queue in self.tracing.forget_vhost(cmd.name):
            self._record("tracing", (cmd.name, kind, queue), None)
        del self.vhosts[cmd.name]
        self._record("vhost", cmd.name, None)

    def _put_user(self, cmd: c.PutUser) -> None:
        user = User(cmd.name, cmd.password_hash, tuple(cmd.tags))
        self.users[cmd.name] = user
        self._record("user", cmd.name, user)

    def _delete_user(self, cmd: c.DeleteUser) -> None:
        if cmd.name not in self.users:
            raise NotFound(f"no user '{cmd.name}'")
        del self.users[cmd.name]
        self._record("user", cmd.name, None)
        for key in sorted(k for k in self.permissions if k[0] == cmd.name):
            del self.permissions[key]
            self._record("permission", key, None)
        self._drop_limits("user", cmd.name)

    def _set_permissions(self, cmd: c.SetPermissions) -> None:
        if cmd.user not in self.users:
            raise NotFound(f"no user '{cmd.user}'")
        self.vhost(cmd.vhost)
        perm = Permission(cmd.configure, cmd.write, cmd.read)
        self.permissions[(cmd.user, cmd.vhost)] = perm
        self._record("permission", (cmd.user, cmd.vhost), perm)

    def _clear_permissions(self, cmd: c.ClearPermissions) -> None:
        key = (cmd.user, cmd.vhost)
        if self.permissions.pop(key, None) is not None:
            self._record("permission", key, None)

    def _set_limits(self, cmd: c.SetLimits) -> None:
        known = LIMIT_NAMES.get(cmd.scope)
        if known is None:
            raise InvalidArgument(f"unknown limit scope '{cmd.scope}'")
        if cmd.scope == "vhost":
            self.vhost(cmd.name)
        elif cmd.name not in self.users:
            raise NotFound(f"no user '{cmd.name}'")
        limits = {}
        for name, value in sorted(cmd.limits.items()):
            if name not in known:
                raise InvalidArgument(
                    f"unknown {cmd.scope} limit '{name}' (known: {', '.join(known)})"
                )
            if type(value) is not int:
                raise InvalidArgument(f"{cmd.scope} limit '{name}' must be an integer")
            if value >= 0:
                limits[name] = value
        key = (cmd.scope, cmd.name)
        if limits:
            self.limits[key] = limits
            self._record("limits", key, limits)
        else:
            self._drop_limits(cmd.scope, cmd.name)

    def _drop_limits(self, scope: str, name: str) -> None:
        if self.limits.pop((scope, name), None) is not None:
            self._record("limits", (scope, name), None)

    def limit(self, scope: str, name: str, limit: str) -> int | None:
        """The value of one limit of a vhost or user, None when it has none."""
        limits = self.limits.get((scope, name))
        return None if limits is None else limits.get(limit)

    # -- exchanges -----------------------------------------------------------------------

    def _declare_exchange(self, cmd: c.DeclareExchange) -> None:
        vh = self.vhost(cmd.vhost)
        ex = vh.exchanges.get(cmd.name)
        # RabbitMQ's order: a passive declare ignores the type; otherwise the type comes first.
        if not cmd.passive and cmd.type not in EXCHANGE_TYPES:
            raise CommandInvalid(f"unknown exchange type '{cmd.type}'")
        if cmd.name == "":
            raise AccessRefused("operation not permitted on the default exchange")
        if cmd.passive:
            if ex is None:
                raise NotFound(f"no exchange '{cmd.name}' in vhost '{cmd.vhost}'")
            return
        if ex is not None:
            self._check_equivalent(
                "exchange",
                cmd.name,
                cmd.vhost,
                [
                    ("type", cmd.type, ex.type),
                    ("durable", cmd.durable, ex.durable),
                    ("auto_delete", cmd.auto_delete, ex.auto_delete),
                    ("internal", cmd.internal, ex.internal),
                ],
                cmd.arguments,
                ex.arguments,
            )
            return
        if cmd.name.startswith("amq."):
            raise AccessRefused(f"exchange name '{cmd.name}' contains reserved prefix 'amq.*'")
        check_exchange_arguments(cmd.vhost, cmd.name, cmd.arguments)
        if cmd.type == "x-delayed-message":
            inner = _text(cmd.arguments.get("x-delayed-type"))
            if inner not in ("direct", "fanout", "topic", "headers"):
                raise PreconditionFailed(
                    "Invalid argument, 'x-delayed-type' must be an existing exchange type"
                )
        ex = Exchange(
            cmd.vhost,
            cmd.name,
            cmd.type,
            cmd.durable,
            cmd.auto_delete,
            cmd.internal,
            dict(cmd.arguments),
        )
        ex.policy = choose(vh.policies.values(), "exchange", ex.name, ex.arguments)
        vh.exchanges[cmd.name] = ex
        self._record("exchange", (cmd.vhost, cmd.name), ex)

    def _check_equivalent(
        self,
        kind: str,
        name: str,
        vhost: str,
        fields: list[tuple[str, Any, Any]],
        new_args: dict[str, Any],
        old_args: dict[str, Any],
    ) -> None:
        for fname, received, current in fields:
            if received != current:
                raise PreconditionFailed(
                    f"inequivalent arg '{fname}' for {kind} '{name}' in vhost '{vhost}': "
                    f"received '{_fmt(received)}' but current is '{_fmt(current)}'"
                )
        for key in sorted(set(new_args) | set(old_args)):
            if key == "x-queue-type":
                continue
            received, current = _norm(new_args.get(key)), _norm(old_args.get(key))
            if received != current:
                raise PreconditionFailed(
                    f"inequivalent arg '{key}' for {kind} '{name}' in vhost '{vhost}': "
                    f"received '{_fmt(received)}' but current is '{_fmt(current)}'"
                )

    def _delete_exchange(self, cmd: c.DeleteExchange) -> None:
        vh = self.vhost(cmd.vhost)
        if cmd.name == "" or cmd.name.startswith("amq."):
            raise AccessRefused(f"operation not permitted on exchange '{cmd.name}'")
        ex = vh.exchanges.get(cmd.name)
        if ex is None:
            return
        if cmd.if_unused and vh.bindings.get(cmd.name):
            raise PreconditionFailed(f"exchange '{cmd.name}' in vhost '{cmd.vhost}' in use")
        self._remove_exchange(vh, ex)

    def _remove_exchange(self, vh: Vhost, ex: Exchange) -> None:
        # Gone before its bindings go, so removing them cannot auto-delete it a second time.
        del vh.exchanges[ex.name]
        for key in list(vh.bindings.get(ex.name, ())):
            self._remove_binding(vh, key)
        for source in list(vh.bindings):
            for key in list(vh.bindings.get(source, ())):
                if not key.to_queue and key.destination == ex.name:
                    self._remove_binding(vh, key)
        vh.bindings.pop(ex.name, None)
        vh.bindings_changed(ex.name)
        self._record("exchange", (vh.name, ex.name), None)

    # -- bindings ------------------------------------------------------------------------

    def _binding_key(self, cmd: c.Bind | c.Unbind) -> BindingKey:
        return BindingKey(
            cmd.source,
            cmd.destination,
            cmd.to_queue,
            cmd.routing_key,
            freeze_arguments(cmd.arguments),
        )

    def _bind(self, cmd: c.Bind) -> None:
        vh = self.vhost(cmd.vhost)
        if cmd.source == "" or (not cmd.to_queue and cmd.destination == ""):
            raise AccessRefused("operation not permitted on the default exchange")
        source = self.exchange(cmd.vhost, cmd.source)
        self._check_destination(vh, cmd.to_queue, cmd.destination, cmd.requester)
        check_binding_arguments(_routing_type(source), cmd.arguments)
        key = self._binding_key(cmd)
        bindings = vh.bindings.setdefault(cmd.source, {})
        if key in bindings:
            return
        seq = self._count("binding")
        bindings[key] = seq
        vh.bindings_changed(cmd.source)
        self._record("binding", (cmd.vhost, key), seq)

    def _check_destination(
        self, vh: Vhost, to_queue: bool, name: str, requester: c.ConnectionId | None
    ) -> None:
        if to_queue:
            q = vh.queues.get(name)
            if q is None:
                raise NotFound(f"no queue '{name}' in vhost '{vh.name}'")
            self._check_exclusive(q, requester)
        elif name not in vh.exchanges:
            raise NotFound(f"no exchange '{name}' in vhost '{vh.name}'")

    def _unbind(self, cmd: c.Unbind) -> None:
        """Idempotent, as in RabbitMQ: a binding that is not there, or whose source or
        destination is gone, is already unbound. An exclusive queue's binding stays its own."""
        vh = self.vhost(cmd.vhost)
        if cmd.source == "" or (not cmd.to_queue and cmd.destination == ""):
            raise AccessRefused("operation not permitted on the default exchange")
        key = self._binding_key(cmd)
        if key not in vh.bindings.get(cmd.source, {}):
            return
        if cmd.to_queue:
            self._check_exclusive(vh.queues[cmd.destination], cmd.requester)
        self._remove_binding(vh, key)

    def _remove_binding(self, vh: Vhost, key: BindingKey) -> None:
        bindings = vh.bindings.get(key.source)
        if bindings is None or key not in bindings:
            return
        del bindings[key]
        vh.bindings_changed(key.source)
        self._record("binding", (vh.name, key), None)
        source = vh.exchanges.get(key.source)
        if source is not None and source.auto_delete and not bindings:
            self._remove_exchange(vh, source)

    # -- routing -------------------------------------------------------------------------

    def _route(
        self,
        vh: Vhost,
        ex: Exchange,
        routing_key: str,
        headers: dict[str, Any] | None,
        out: dict[str, None],
        seen: set[str],
        exchange_type: str | None = None,
    ) -> None:
        """Collect the queues a message reaches from `ex` (following e2e bindings and AE)."""
        seen.add(ex.name)
        before = len(out)
        if ex.name == "":
            if routing_key in vh.queues:
                out[routing_key] = None
            return
        etype = exchange_type or ex.type
        if etype == "x-delayed-message":
            etype = _routing_type(ex)
        matched = self._matching_bindings(vh, ex.name, etype, routing_key, headers)
        for key in matched:
            if key.to_queue:
                out[key.destination] = None
            else:
                dest = vh.exchanges.get(key.destination)
                if dest is not None and dest.name not in seen:
                    self._route(vh, dest, routing_key, headers, out, seen)
        if len(out) == before:
            alternate = _text(alternate_exchange(ex.arguments, ex.policy))
            if alternate:
                ae = vh.exchanges.get(alternate)
                if ae is not None and ae.name not in seen:
                    self._route(vh, ae, routing_key, headers, out, seen)

    def _matching_bindings(
        self, vh: Vhost, source: str, etype: str, routing_key: str, headers: dict[str, Any] | None
    ) -> list[BindingKey]:
        """Bindings of `source` that match; memoised per routing key except for headers."""
        bindings = vh.bindings.get(source)
        if not bindings:
            return []
        if etype == "headers":
            return [k for k in bindings if binding_matches(etype, k, routing_key, headers)]
        cache = vh.route_cache.get(source)
        if cache is None:
            cache = vh.route_cache[source] = {}
        hit = cache.get(routing_key)
        if hit is None:
            if len(cache) >= ROUTE_CACHE_SIZE:
                cache.clear()
            hit = cache[routing_key] = [
                k for k in bindings if binding_matches(etype, k, routing_key, None)
            ]
        return hit

    # -- queues --------------------------------------------------------------------------

    def _declare_queue(self, cmd: c.DeclareQueue) -> QueueInfo:
        vh = self.vhost(cmd.vhost)
        q = vh.queues.get(cmd.name)
        if q is not None and q.exclusive_owner not in (None, cmd.requester):
            raise ResourceLocked(
                f"cannot obtain exclusive access to locked queue '{cmd.name}' "
                f"in vhost '{cmd.vhost}'. It could be originally declared on another "
                "connection or the exclusive property value does not match that of the "
                "original declaration."
            )
        if cmd.passive:
            if q is None:
                raise NotFound(f"no queue '{cmd.name}' in vhost '{cmd.vhost}'")
            return self.queue_info(q)
        check_queue_arguments(cmd.vhost, cmd.name, cmd.arguments)
        if q is not None:
            self._check_equivalent(
                "queue",
                cmd.name,
                cmd.vhost,
                [
                    ("durable", cmd.durable, q.durable),
                    ("exclusive", cmd.exclusive_owner is not None, q.exclusive_owner is not None),
                    ("auto_delete", cmd.auto_delete, q.auto_delete),
                ],
                cmd.arguments,
                q.arguments,
            )
            q.last_used = self.now
            self._touch(q)
            self._schedule(q)
            return self.queue_info(q)
        if _text(cmd.arguments.get("x-queue-type")) == "quorum":
            if not cmd.durable:
                raise PreconditionFailed(
                    f"invalid property 'non-durable' for queue '{cmd.name}' in vhost '{cmd.vhost}'"
                )
            if cmd.exclusive_owner is not None:
                raise PreconditionFailed(
                    f"invalid property 'exclusive-owner' for queue '{cmd.name}' in vhost "
                    f"'{cmd.vhost}'"
                )
        if cmd.name.startswith("amq.") and not cmd.server_named:
            raise AccessRefused(f"queue name '{cmd.name}' contains reserved prefix 'amq.*'")
        max_queues = self.limit("vhost", cmd.vhost, "max-queues")
        if max_queues is not None and len(vh.queues) >= max_queues:
            raise QueueLimitReached(
                f"cannot declare queue '{cmd.name}' in vhost '{cmd.vhost}': vhost queue limit "
                f"({max_queues}) is reached"
            )
        q = MessageQueue(
            cmd.vhost,
            cmd.name,
            self.counters["qid"],
            cmd.durable,
            cmd.exclusive_owner,
            cmd.auto_delete,
            dict(cmd.arguments),
        )  # raises PreconditionFailed for bad arguments, before anything changed
        policy = choose(vh.policies.values(), "queue", q.name, q.arguments)
        if policy is not None:
            q.apply_policy(policy, q.settings_with(q.arguments, policy))
        self._count("qid")
        q.last_used = q.created_at = q.modified_at = self.now
        self._add_queue(q)
        self._touch(q)
        self._schedule(q)
        return self.queue_info(q)

    def _add_queue(self, q: MessageQueue) -> None:
        if self.entries is not None:
            q.cold_store = ColdBodies(self, *self.cold_limits)
        self.vhosts[q.vhost].queues[q.name] = q
        self.queues_by_qid[q.qid] = q
        if q.exclusive_owner is not None:
            self.exclusive_queues.setdefault(q.exclusive_owner, set()).add((q.vhost, q.name))

    def _check_exclusive(self, q: MessageQueue, connection: c.ConnectionId | None) -> None:
        if q.exclusive_owner is not None and q.exclusive_owner != connection:
            raise ResourceLocked(
                f"cannot obtain exclusive access to locked queue '{q.name}' in vhost '{q.vhost}'"
            )

    def _delete_queue(self, cmd: c.DeleteQueue) -> int:
        vh = self.vhost(cmd.vhost)
        q = vh.queues.get(cmd.name)
        if q is None:
            return 0
        self._check_exclusive(q, cmd.requester)
        if cmd.if_unused and q.consumers:
            raise PreconditionFailed(f"queue '{cmd.name}' in vhost '{cmd.vhost}' in use")
        if cmd.if_empty and q.message_count():
            raise PreconditionFailed(f"queue '{cmd.name}' in vhost '{cmd.vhost}' is not empty")
        count = q.message_count()
        self._remove_queue(q)
        return count

    def _remove_queue(self, q: MessageQueue) -> None:
        vh = self.vhosts[q.vhost]
        for consumer in list(q.consumers):
            self._drop_consumer(consumer)
            self._effects.append(ConsumerCancelled(consumer.owner, consumer.tag))
        lost = self._take_cold(q)
        for msg in list(q.messages.values()):
            lost += msg.state != RETAINED
            self._forget(q, msg)
        if lost:
            self._dropped(q.vhost, q.name, "queue-deleted", lost)
            self._trace_queue(q, "queue-deleted", lost)
        for source in list(vh.bindings):
            for key in list(vh.bindings.get(source, ())):
                if key.to_queue and key.destination == q.name:
                    self._remove_binding(vh, key)
        del vh.queues[q.name]
        del self.queues_by_qid[q.qid]
        self.retired.add(q.counters)
        if q.exclusive_owner is not None:
            self.exclusive_queues.get(q.exclusive_owner, set()).discard((q.vhost, q.name))
        self._record("queue", (q.vhost, q.name), None)
        # Long polls and pushers waiting on it wake up and find it gone, rather than wait on.
        self._effects.append(MessagesAvailable(q.vhost, q.name))

    def _purge_queue(self, cmd: c.PurgeQueue) -> int:
        q = self.queue(cmd.vhost, cmd.name)
        self._check_exclusive(q, cmd.requester)
        purged = q.purge_ready()
        for msg in purged:
            self._forget(q, msg)
        count = len(purged) + self._take_cold(q)
        if count:
            self._dropped(q.vhost, q.name, "purged", count)
            self._trace_queue(q, "purged", count)
        return count

    def _take_cold(self, q: MessageQueue) -> int:
        """Drop every cold message of `q` (whole: purged, deleted); returns how many."""
        chunks, held = q.take_cold()
        for level, chunk in chunks:
            self._changes.append((("cold", (q.qid, level, chunk.number)), None))
            self._cold_released(chunk.indexes())
        for msg in held:
            self._unrecord(q, msg)
        return sum(len(chunk) for _, chunk in chunks)

    def _trace_queue(self, q: MessageQueue, event: str, count: int) -> None:
        """Trace messages leaving a queue all at once (one step for all of them)."""
        if self.tracing.covers(q.vhost, q.name):
            self._effects.append(Traced(event, q.vhost, q.name, 0, self.now, {"count": count}))

    def _connection_closed(self, cmd: c.ConnectionClosed) -> None:
        for vhost, name in sorted(self.exclusive_queues.pop(cmd.connection, set())):
            q = self._find_queue(vhost, name)
            if q is not None:
                self._remove_queue(q)

    # -- publishing ----------------------------------------------------------------------

    def _check_publish(self, cmd: c.Publish) -> tuple[Vhost, Exchange, int | None]:
        """What publishing needs, checked: (vhost, exchange, per-message TTL)."""
        vh = self.vhost(cmd.vhost)
        ex = vh.exchanges.get(cmd.exchange)
        if ex is None:
            raise NotFound(f"no exchange '{cmd.exchange}' in vhost '{cmd.vhost}'")
        if ex.internal:
            raise AccessRefused(
                f"cannot publish to internal exchange '{cmd.exchange}' in vhost '{cmd.vhost}'"
            )
        expiration = cmd.properties.get("expiration")
        ttl = None
        if expiration is not None:
            try:
                ttl = int(expiration)
            except (TypeError, ValueError):
                raise PreconditionFailed(f"invalid expiration '{expiration}'") from None
            if ttl < 0:
                raise PreconditionFailed(f"invalid expiration '{expiration}'")
        return vh, ex, ttl

    def _targets(self, vh: Vhost, ex: Exchange, cmd: c.Publish) -> dict[str, None]:
        targets: dict[str, None] = {}
        headers = cmd.properties.get("headers")
        keys: tuple[str, ...] = (cmd.routing_key,)
        if headers and ("CC" in headers or "BCC" in headers):
            keys = _sender_selected(cmd.routing_key, headers)
        for key in keys:
            if ex.name == "":
                if key in vh.queues:
                    targets[key] = None
            else:
                self._route(vh, ex, key, headers, targets, set())
        return targets

    def _delay_of(self, ex: Exchange, cmd: c.Publish) -> int:
        """The x-delay of a publish to an x-delayed-message exchange (0: none)."""
        if ex.type != "x-delayed-message":
            return 0
        headers = cmd.properties.get("headers")
        delay = headers.get("x-delay") if headers else None
        if isinstance(delay, int) and not isinstance(delay, bool) and delay > 0:
            return delay
        return 0

    def _publish_entry(self, cmd: c.Publish) -> PublishResult:
        """A publish from the log: its messages keep their body in the entry."""
        return self._publish(cmd, (self.index, self._position))

    def _publish(self, cmd: c.Publish, source: tuple[int, int] | None) -> PublishResult:
        vh, ex, ttl = self._check_publish(cmd)
        delay = self._delay_of(ex, cmd)
        if delay:
            self._hold_delayed(vh, ex, cmd, delay)
            return PublishResult(routed=True)
        #: (queue, seq) of each message the publish makes, when its vhost has tracing on
        routed: list[tuple[str, int]] | None = None
        tracing = self.tracing
        if tracing.watched and vh.name in tracing.watched:
            if vh.name in tracing.firehose:
                self._firehose(vh, "publish." + ex.name, cmd.exchange, cmd.routing_key, cmd, None)
            if vh.name in tracing.traced_vhosts:
                routed = []
        targets = self._targets(vh, ex, cmd)
        result = PublishResult(routed=bool(targets))
        if not targets and not cmd.mandatory:
            self._dropped(vh.name, ex.name, "unroutable", 1)  # (a mandatory one is returned)
        props = cmd.properties
        headers = props.get("headers")
        if headers and "BCC" in headers:
            # The message keeps its own properties (and body), not the publish's in the log.
            props = _without_bcc(props)
            source = None
        persistent = props.get("delivery_mode") == 2
        queues = vh.queues
        size = len(cmd.body)
        for qname in targets:
            q = queues[qname]
            limit = q.settings.max_message_size  # (_too_large, inline: once per queue reached)
            if limit is not None and size > limit:
                self._effects.append(Overflowed(q.vhost, q.name, TOO_LARGE))
                result.rejected = True
                continue
            seq = q.next_seq
            if not self._enqueue(
                q,
                cmd.exchange,
                cmd.routing_key,
                props,
                cmd.body,
                persistent,
                ttl,
                cmd.delay_ms,
                source,
            ):
                result.rejected = True
                continue
            if routed is not None:
                routed.append((q.name, seq))
            if q.consumers and q.congested():  # (a fan-out reaches mostly idle queues)
                if result.congested is None:
                    result.congested = []
                result.congested.append((q.vhost, q.name))
        if routed is not None:
            self._trace_publish(vh.name, cmd, routed)
        return result

    def _trace_publish(self, vhost: str, cmd: c.Publish, routed: list[tuple[str, int]]) -> None:
        covers = self.tracing.covers
        if not covers(vhost, "") and not any(covers(vhost, q) for q, _ in routed):
            return
        props = cmd.properties
        detail = {
            "id": f"{self.index}.{self._position}",
            "exchange": cmd.exchange,
            "routing_key": cmd.routing_key,
            "routed": [list(r) for r in routed],
            "size": len(cmd.body),
        }
        if props.get("message_id") is not None:
            detail["message_id"] = props["message_id"]
        self._effects.append(Traced("published", vhost, "", 0, self.now, detail, cmd))

    def _trace(self, q: MessageQueue, msg: Message, event: str, **detail: Any) -> None:
        """Record a step of `msg` in `q` if the queue is traced."""
        if self.tracing.covers(q.vhost, q.name):
            self._effects.append(Traced(event, q.vhost, q.name, msg.seq, self.now, detail))

    def _firehose(
        self,
        vh: Vhost,
        routing_key: str,
        exchange: str,
        message_key: str,
        message: c.Publish | Message,
        redelivered: bool | None,
    ) -> None:
        """Copy a publish or delivery to the vhost's firehose exchange (never its own)."""
        if exchange == FIREHOSE_EXCHANGE:
            return
        targets: dict[str, None] = {}
        self._route(vh, vh.exchanges[FIREHOSE_EXCHANGE], routing_key, None, targets, set())
        headers = firehose_headers(exchange, message_key, message.properties, "broker", redelivered)
        persistent = message.properties.get("delivery_mode") == 2
        for qname in targets:
            self._enqueue(
                vh.queues[qname],
                FIREHOSE_EXCHANGE,
                routing_key,
                {"headers": headers, "delivery_mode": 2 if persistent else 1},
                message.body,
                persistent,
                None,
            )

    def _enqueue(
        self,
        q: MessageQueue,
        exchange: str,
        routing_key: str,
        properties: dict[str, Any],
        body: bytes,
        persistent: bool,
        message_ttl: int | None,
        delay_ms: int = 0,
        source: tuple[int, int] | None = None,
    ) -> bool:
        """Add a message to a queue; False if the queue refused it (overflow reject)."""
        s = q.settings
        if s.overflow != "drop-head" and _full(q, 1, len(body)):
            if s.overflow == "reject-publish-dlx":
                msg = self._new_message(
                    q, exchange, routing_key, properties, body, persistent, message_ttl, 0
                )
                self._dead_letter_copy(q, msg, "maxlen")
            self._effects.append(Overflowed(q.vhost, q.name))
            return False
        msg = self._new_message(
            q, exchange, routing_key, properties, body, persistent, message_ttl, delay_ms
        )
        if source is not None:
            msg.source = source
        q.append(msg)
        if source is not None and q.messages.get(msg.seq) is msg:
            # (Cold messages are not counted: their chunks tell, see store/cold_refs.py.)
            self.entry_refs[source[0]] = self.entry_refs.get(source[0], 0) + 1
        if msg.expires_at is not None or msg.state == HIDDEN:
            self._schedule(q)
        if s.max_length is not None or s.max_length_bytes is not None:
            self._drop_over_limit(q)
        self._dispatch(q)
        if not msg.recorded and q.holds(msg):
            # Recorded only now that it stays: one delivered and settled at once (no-ack,
            # QoS 0) or dropped never reaches the store at all.
            self._touch_message(q, msg)
        if msg.expires_at is not None:
            self._expire_heads(q)  # a TTL of 0 expires now unless it could be delivered
        if q.ready_count == 1 or q.sequence is not None:
            # (In a sequential queue a receive may have come back empty while messages of
            # groups in flight waited: a new one may be of a free group.)
            self._wake_receivers(q)
        return True

    def _new_message(
        self,
        q: MessageQueue,
        exchange: str,
        routing_key: str,
        properties: dict[str, Any],
        body: bytes,
        persistent: bool,
        message_ttl: int | None,
        delay_ms: int,
    ) -> Message:
        ttl = q.settings.message_ttl
        if message_ttl is not None:
            q.per_message_ttl = True
            ttl = message_ttl if ttl is None else min(ttl, message_ttl)
        priority = properties.get("priority") or 0
        now = self.now
        self._touch(q)  # its next sequence number
        # By position: naming this many fields costs twice as much, once per queue reached.
        return Message(
            q.new_message_seq(),
            exchange,
            routing_key,
            properties,
            body,
            persistent,
            now,  # enqueued_at
            None if ttl is None else now + delay_ms + ttl,  # expires_at
            priority if isinstance(priority, int) else 0,
            0,  # delivery_count
            0,  # returns
            now + delay_ms,  # visible_at
        )

    def _drop_over_limit(self, q: MessageQueue) -> None:
        s = q.settings
        while (s.max_length is not None and q.ready_count > s.max_length) or (
            s.max_length_bytes is not None and q.ready_bytes > s.max_length_bytes
        ):
            head = q.pop_head()
            if head is None:
                return
            self._dead_letter(q, head, "maxlen")

    def _hold_delayed(self, vh: Vhost, ex: Exchange, cmd: c.Publish, delay: int) -> None:
        held = DelayedPublish(
            self._count("delayed"),
            self.now + delay,
            vh.name,
            ex.name,
            cmd.routing_key,
            cmd.properties,
            cmd.body,
            cmd.properties.get("delivery_mode") == 2,
        )
        self.delayed[held.id] = held
        heapq.heappush(self._delayed_heap, (held.due, held.id))
        self._record("delayed", (held.due, held.id), held)

    def _drop_delayed(self, held: DelayedPublish) -> None:
        del self.delayed[held.id]
        self._record("delayed", (held.due, held.id), None)

    def _release_delayed(self) -> None:
        while self._delayed_heap and self._delayed_heap[0][0] <= self.now:
            _, ident = heapq.heappop(self._delayed_heap)
            held = self.delayed.get(ident)
            if held is None:
                continue
            self._drop_delayed(held)
            vh = self.vhosts.get(held.vhost)
            ex = vh.exchanges.get(held.exchange) if vh else None
            if vh is None or ex is None:
                self._dropped(held.vhost, held.exchange, "unroutable", 1, "the exchange is gone")
                continue
            headers = held.properties.get("headers")
            targets: dict[str, None] = {}
            for key in _sender_selected(held.routing_key, headers or {}):
                self._route(vh, ex, key, headers, targets, set())
            if not targets:
                self._dropped(vh.name, ex.name, "unroutable", 1)
            ttl = _ttl(held.properties)
            properties = _without_bcc(held.properties)
            for qname in targets:
                self._enqueue(
                    vh.queues[qname],
                    held.exchange,
                    held.routing_key,
                    properties,
                    held.body,
                    held.persistent,
                    ttl,
                )

    # -- batches -------------------------------------------------------------------------

    def _batch(self, cmd: c.Batch) -> list[Any]:
        for sub in cmd.commands:
            if not isinstance(sub, BATCHABLE):
                raise InvalidArgument(f"{type(sub).__name__} cannot be part of a batch")
        # Nothing a batchable command does can make a later one fail: check all, then apply.
        room: dict[int, list[int]] = {}
        for sub in cmd.commands:
            self._check(sub, room if cmd.refuse_when_full else None)
        replies = []
        for position, sub in enumerate(cmd.commands):
            self._position = position
            replies.append(self._handlers[type(sub)](sub))
        return replies

    def _check(self, cmd: Any, room: dict[int, list[int]] | None) -> None:
        """Raise what `cmd` would raise, changing nothing; count the room it takes in `room`."""
        if isinstance(cmd, c.Publish):
            vh, ex, _ = self._check_publish(cmd)
            if room is None or self._delay_of(ex, cmd):
                return
            for qname in self._targets(vh, ex, cmd):
                q = vh.queues[qname]
                if _too_large(q, cmd.body):
                    raise ResourceLimit(
                        f"message larger than x-max-message-size of queue '{q.name}' in vhost "
                        f"'{q.vhost}'"
                    )
                taken = room.setdefault(q.qid, [0, 0])
                taken[0] += 1
                taken[1] += len(cmd.body)
                if q.settings.overflow != "drop-head" and _full(q, taken[0], taken[1]):
                    raise ResourceLimit(f"queue '{q.name}' in vhost '{q.vhost}' is full")
        elif isinstance(cmd, c.PutRecord | c.StoreRetained):
            self.vhost(cmd.vhost)

    # -- dead-lettering ------------------------------------------------------------------

    def _dead_letter(self, q: MessageQueue, msg: Message, reason: str) -> None:
        """Remove `msg` from `q` and republish it to the queue's dead-letter exchange; a
        message that reaches no queue that way is reported dropped."""
        self._forget(q, msg)
        traced = self.tracing.covers(q.vhost, q.name)
        routed: list[tuple[str, int]] | None = [] if traced else None
        failure = self._dead_letter_copy(q, msg, reason, routed)
        if failure is not None:
            q.counters.dropped += 1
            self._dropped(q.vhost, q.name, reason.replace("_", "-"), 1, failure)
        else:
            q.counters.dead_lettered += 1
        if traced:
            detail: dict[str, Any] = {"dead_lettered": [list(r) for r in routed or ()]}
            if failure:
                detail["dropped"] = failure
            self._trace(q, msg, reason.replace("_", "-"), **detail)

    def _dead_letter_copy(
        self,
        q: MessageQueue,
        msg: Message,
        reason: str,
        routed: list[tuple[str, int]] | None = None,
    ) -> str | None:
        """Republish a copy of `msg` to the dead-letter exchange of `q`; None when some queue
        took it, else why none did ("" when the queue has no dead-letter exchange). The
        (queue, seq) of each copy goes to `routed`, when given."""
        plan = self._dead_letter_plan(q, msg, reason)
        if isinstance(plan, str):
            return plan
        dlx, routing_key, props, queues = plan
        for target in queues:
            seq = target.next_seq
            taken = self._enqueue(target, dlx, routing_key, props, msg.body, msg.persistent, None)
            if taken and routed is not None:
                routed.append((target.name, seq))
        return None

    def _dead_letter_plan(
        self, q: MessageQueue, msg: Message, reason: str
    ) -> tuple[str, str, dict[str, Any], list[MessageQueue]] | str:
        """Where dead-lettering `msg` would take it: (exchange, routing key, properties with
        the death recorded, queues), or why nowhere."""
        dlx = q.settings.dead_letter_exchange
        if dlx is None:
            return ""
        vh = self.vhosts[q.vhost]
        ex = vh.exchanges.get(dlx)
        if ex is None:
            return f"its dead-letter exchange '{dlx}' does not exist"
        props = dict(msg.properties)
        headers = dict(props.get("headers") or {})
        # Headers come from clients: malformed x-death entries and CC values are ignored.
        raw_deaths, cc = headers.get("x-death"), headers.get("CC")
        deaths = []
        if isinstance(raw_deaths, list | tuple):
            deaths = [dict(d) for d in raw_deaths if isinstance(d, dict)]
        routing_keys = [msg.routing_key] + (list(cc) if isinstance(cc, list | tuple) else [])
        entry = None
        for i, death in enumerate(deaths):
            if _text(death.get("queue")) == q.name and _text(death.get("reason")) == reason:
                entry = deaths.pop(i)
                break
        if entry is None:
            entry = {
                "count": 0,
                "reason": reason,
                "queue": q.name,
                "exchange": msg.exchange,
                "routing-keys": routing_keys,
            }
            if props.get("expiration") is not None:
                entry["original-expiration"] = props["expiration"]
        count = entry.get("count")
        entry["count"] = (count if isinstance(count, int) and count >= 0 else 0) + 1
        entry["time"] = datetime.fromtimestamp(self.now // 1000, UTC)
        deaths.insert(0, entry)
        headers["x-death"] = deaths
        if "x-first-death-reason" not in headers:
            headers["x-first-death-reason"] = reason
            headers["x-first-death-queue"] = q.name
            headers["x-first-death-exchange"] = msg.exchange
        headers["x-last-death-reason"] = reason
        headers["x-last-death-queue"] = q.name
        headers["x-last-death-exchange"] = msg.exchange
        props["headers"] = headers
        props.pop("expiration", None)
        routing_key = q.settings.dead_letter_routing_key or msg.routing_key
        targets: dict[str, None] = {}
        self._route(vh, ex, routing_key, headers, targets, set())
        if not targets:
            return f"its dead-letter exchange '{dlx}' routed '{routing_key}' to no queue"
        # Dropping cycles without a rejection, as RabbitMQ does, keeps TTL loops finite.
        queues = [vh.queues[name] for name in targets if not _is_cycle(name, deaths)]
        if not queues:
            return "dead-lettering it again would make a cycle"
        return dlx, routing_key, props, queues

    # -- consumers -----------------------------------------------------------------------

    def _consume(self, cmd: c.Consume) -> QueueInfo:
        q = self.queue(cmd.vhost, cmd.queue)
        self._check_exclusive(q, cmd.connection)
        if (cmd.owner, cmd.tag) in self.consumers:
            raise NotAllowed(f"attempt to reuse consumer tag '{cmd.tag}'")
        if any(other.exclusive for other in q.consumers) or (cmd.exclusive and q.consumers):
            raise AccessRefused(f"queue '{cmd.queue}' in vhost '{cmd.vhost}' in exclusive use")
        consumer = Consumer(
            cmd.queue,
            cmd.vhost,
            cmd.owner,
            cmd.tag,
            cmd.no_ack,
            cmd.exclusive,
            cmd.prefetch,
            cmd.priority,
            active=cmd.active,
            seq=self._count("consumer"),
            settle_transient=cmd.settle_transient,
        )
        if cmd.shared_prefetch:
            shared = self.shared_limits.setdefault(cmd.owner, SharedLimit(cmd.shared_prefetch))
            shared.limit = cmd.shared_prefetch
            consumer.shared = shared
            self._record("shared", cmd.owner, shared)
        self.consumers[(cmd.owner, cmd.tag)] = consumer
        self._record("consumer", (cmd.owner, cmd.tag), consumer)
        self.owner_queues.setdefault(cmd.owner, set()).add((cmd.vhost, cmd.queue))
        q.consumers.append(consumer)
        q.had_consumer = True
        q.last_used = self.now
        self._touch(q)
        self._dispatch(q)
        return self.queue_info(q)

    def _cancel(self, cmd: c.Cancel) -> bool:
        consumer = self.consumers.get((cmd.owner, cmd.tag))
        if consumer is None:
            return False
        self._drop_consumer(consumer)
        q = self._find_queue(consumer.vhost, consumer.queue)
        if q is not None:
            self._after_consumer_left(q)
        return True

    def _drop_consumer(self, consumer: Consumer) -> None:
        del self.consumers[(consumer.owner, consumer.tag)]
        self._record("consumer", (consumer.owner, consumer.tag), None)
        q = self._find_queue(consumer.vhost, consumer.queue)
        if q is not None:
            q.consumers.remove(consumer)
            q.last_used = self.now
            self._touch(q)

    def _after_consumer_left(self, q: MessageQueue) -> None:
        if q.auto_delete and q.had_consumer and not q.consumers:
            self._remove_queue(q)
            return
        self._schedule(q)
        self._dispatch(q)
        if q.ready_count:
            self._wake_receivers(q)

    def _wake_receivers(self, q: MessageQueue) -> None:
        """Wake the long polls of a queue whose ready messages no consumer takes.

        Called when ready messages appear where a receiver may have found none: the first one
        (a receive that came back empty left the queue with none ready, and waits for the
        next), and those the last consumer left behind. Not for every message: a publish to
        thousands of idle session queues would otherwise wake the node thousands of times.
        """
        if not q.consumers:
            self._effects.append(MessagesAvailable(q.vhost, q.name))

    def _next_consumer(self, q: MessageQueue) -> Consumer | None:
        consumers = q.consumers
        if not consumers:
            return None
        if q.settings.single_active_consumer:
            first = consumers[0]
            return first if first.has_capacity() else None
        if len(consumers) == 1:
            only = consumers[0]
            return only if only.has_capacity() else None
        best: Consumer | None = None
        n = len(consumers)
        start = q.round_robin % n
        for i in range(n):
            candidate = consumers[(start + i) % n]
            if candidate.has_capacity() and (best is None or candidate.priority > best.priority):
                best = candidate
        if best is not None:
            q.round_robin = consumers.index(best) + 1
            self._touch(q)
        return best

    def _dispatch(self, q: MessageQueue) -> None:
        if not q.consumers and not q.dispatch_pending:
            return  # nobody to deliver to: most queues a fan-out reaches, once per message
        burst = NO_ACK_BURST
        new_head = False
        if q.dispatch_pending:
            q.dispatch_pending = False
            self._touch(q)
        while q.ready_count:
            consumer = self._next_consumer(q)
            if consumer is None:
                break
            if consumer.no_ack or consumer.settle_transient:
                burst -= 1
                if burst < 0:
                    # Nothing else bounds a no-ack consumer: continue on the next Tick, so the
                    # node can pause it (SetFlow) if its client stops reading meanwhile.
                    q.dispatch_pending = True
                    self._touch(q)
                    heapq.heappush(self._timers, (self.now, q.vhost, q.name))
                    return
            msg = q.pop_deliverable()
            if msg is None:
                break
            if _expired(msg, self.now):
                self._dead_letter(q, msg, "expired")
                continue
            self._push(q, msg, consumer)
            new_head = True
        if new_head and q.per_message_ttl:
            # With per-message TTLs the new head may expire before any timer already set.
            self._schedule(q)

    def _push(self, q: MessageQueue, msg: Message, consumer: Consumer) -> None:
        q.deliver(msg, consumer.owner, consumer, self.now)
        redelivered = msg.delivery_count > 1 or msg.returns > 0
        self._effects.append(
            Deliver(consumer.owner, consumer.tag, q.name, msg, redelivered, msg.returns)
        )
        if self.tracing.watched and q.vhost in self.tracing.watched:
            self._trace_delivery(q, msg, redelivered, consumer.tag, consumer.owner, consumer.no_ack)
        if consumer.no_ack or (consumer.settle_transient and not msg.persistent):
            self._forget(q, msg)
        else:
            self._touch_message(q, msg)
            consumer.in_flight += 1
            if consumer.shared is not None:
                consumer.shared.in_flight += 1

    def _get(self, cmd: c.Get) -> GetResult:
        q = self.queue(cmd.vhost, cmd.queue)
        self._check_exclusive(q, cmd.connection)
        q.last_used = self.now
        self._touch(q)
        while True:
            msg = q.pop_deliverable()
            if msg is None:
                self._schedule(q)
                return GetResult(None, message_count=0)
            if _expired(msg, self.now):
                self._dead_letter(q, msg, "expired")
                continue
            break
        self._schedule(q)  # for the new head, whose TTL may be due before the old one's
        q.deliver(msg, cmd.owner, None, self.now)
        redelivered = msg.delivery_count > 1 or msg.returns > 0
        if self.tracing.watched and q.vhost in self.tracing.watched:
            self._trace_delivery(q, msg, redelivered, "", cmd.owner, cmd.no_ack)
        if cmd.no_ack:
            self._forget(q, msg)
        else:
            self._touch_message(q, msg)
            self.owner_queues.setdefault(cmd.owner, set()).add((cmd.vhost, cmd.queue))
        return GetResult(msg, msg.seq, redelivered, q.message_count())

    def _trace_delivery(
        self,
        q: MessageQueue,
        msg: Message,
        redelivered: bool,
        tag: str,
        owner: c.Owner | None,
        no_ack: bool,
    ) -> None:
        """Trace a delivery (push, get or pull receive), and copy it to the firehose."""
        detail: dict[str, Any] = {"redelivered": redelivered, "count": msg.delivery_count}
        if tag:
            detail["consumer"] = tag
        if owner is not None:
            detail["connection"] = list(owner[:2])
        if no_ack:
            detail["no_ack"] = True
        self._trace(q, msg, "delivered", **detail)
        if q.vhost in self.tracing.firehose:
            vh = self.vhosts[q.vhost]
            self._firehose(vh, "deliver." + q.name, msg.exchange, msg.routing_key, msg, redelivered)

    def _settle(self, cmd: c.Settle) -> None:
        touched: dict[tuple[str, str], MessageQueue] = {}
        for vhost, qname, seq in cmd.deliveries:
            q = self._find_queue(vhost, qname)
            if q is None:
                continue
            holder = q.unacked.get(seq)
            if holder is None or holder[0] != cmd.owner:
                continue
            consumer = holder[1]
            self._settle_one(q, q.messages[seq], cmd.outcome)
            touched[(vhost, qname)] = q
            if consumer is not None and consumer.shared is not None:
                # Freed room in a shared limit may let this owner's other queues deliver.
                for other in self.consumers_of(cmd.owner):
                    oq = self._find_queue(other.vhost, other.queue)
                    if oq is not None:
                        touched[(other.vhost, other.queue)] = oq
        for q in touched.values():
            if self._live(q):
                self._dispatch(q)
                self._wake_sequential(q)

    def _settle_one(self, q: MessageQueue, msg: Message, outcome: str) -> None:
        _, consumer = q.unacked.pop(msg.seq)
        if consumer is not None:
            consumer.in_flight -= 1
            if consumer.shared is not None:
                consumer.shared.in_flight -= 1
        if outcome == "ack":
            self._trace(q, msg, "acked")
            self._acknowledge(q, msg)
        elif outcome == "requeue":
            self._trace(q, msg, "requeued")
            msg.returns += 1
            limit = q.settings.delivery_limit
            if limit is not None and msg.returns > limit:
                self._dead_letter(q, msg, "delivery_limit")
                return
            q.give_back(msg)
            self._touch_message(q, msg)
            if q.ready_count == 1:
                self._wake_receivers(q)
            if msg.expires_at is not None:
                self._schedule(q)  # it may be the new head, and due sooner
        else:
            self._dead_letter(q, msg, "rejected")

    def _wake_sequential(self, q: MessageQueue) -> None:
        """In a sequential queue a settled or returned message lets the next one of its
        group go: long polls wait for MessagesAvailable, which a publish alone would not
        send while the group was in flight."""
        if q.sequence is not None and q.ready_count:
            self._effects.append(MessagesAvailable(q.vhost, q.name))

    def _acknowledge(self, q: MessageQueue, msg: Message) -> None:
        q.counters.acked += 1
        if q.settings.rewind_ms:
            q.retain(msg, self.now)
            self._touch_message(q, msg)
            self._schedule(q)
        else:
            self._forget(q, msg)

    def _requeue_owner(self, owner: c.Owner) -> None:
        for vhost, qname in sorted(self.owner_queues.get(owner, ())):
            q = self._find_queue(vhost, qname)
            if q is None:
                continue
            held = sorted(s for s, holder in q.unacked.items() if holder[0] == owner)
            for seq in held:
                self._settle_one(q, q.messages[seq], "requeue")
            consuming = any(consumer.owner == owner for consumer in q.consumers)
            if (held or consuming) and self._live(q):
                self._dispatch(q)
                self._wake_sequential(q)

    def _recover(self, cmd: c.Recover) -> None:
        self._requeue_owner(cmd.owner)

    def _release_owner_cmd(self, cmd: c.ReleaseOwner) -> None:
        self._release_owner(cmd.owner)

    def _release_owner(self, owner: c.Owner) -> None:
        """The session ended: cancel its consumers, requeue its deliveries."""
        left: dict[tuple[str, str], MessageQueue] = {}
        for consumer in self.consumers_of(owner):
            self._drop_consumer(consumer)
            q = self._find_queue(consumer.vhost, consumer.queue)
            if q is not None:
                left[(q.vhost, q.name)] = q
        self._requeue_owner(owner)
        self.owner_queues.pop(owner, None)
        if self.shared_limits.pop(owner, None) is not None:
            self._record("shared", owner, None)
        for q in left.values():
            if self._live(q):
                self._after_consumer_left(q)

    def _set_flow(self, cmd: c.SetFlow) -> None:
        for consumer in self.consumers_of(cmd.owner):
            if consumer.active == cmd.active:
                continue
            consumer.active = cmd.active
            self._record("consumer", (consumer.owner, consumer.tag), consumer)
            q = self._find_queue(consumer.vhost, consumer.queue)
            if cmd.active and q is not None:
                self._dispatch(q)

    # -- nodes, restarts and sessions ----------------------------------------------------

    def _release_node(self, cmd: c.ReleaseNode) -> None:
        node, before = cmd.node, cmd.before or (1 << 64)

        def released(connection: tuple[int, ...]) -> bool:
            return connection[0] == node and connection[1] < before

        connections: set[c.ConnectionId] = set()
        for key in sorted(k for k, s in self.sessions.items() if released(s.connection)):
            connections.add(self.sessions[key].connection)
            self._end_session(key, publish_will=True)
        owners = {o for o, _ in self.consumers} | set(self.owner_queues) | set(self.shared_limits)
        for owner in sorted(o for o in owners if released(o)):
            connections.add((owner[0], owner[1]))
            self._release_owner(owner)
        for connection in sorted(k for k in self.exclusive_queues if released(k)):
            connections.add(connection)
            self._connection_closed(c.ConnectionClosed(connection))
        for connection in sorted(connections):
            self._effects.append(CloseConnection(connection, "its node left the cluster"))

    def _set_members(self, cmd: c.SetMembers) -> None:
        for node in [n for n in self.members if n not in dict(cmd.members)]:
            del self.members[node]
            self._record("member", node, None)
        for node, address in cmd.members:
            if self.members.get(node) != address:
                self.members[node] = address
                self._record("member", node, address)

    def _drop_transient(self, cmd: c.DropTransient) -> None:
        """Applied after ReleaseNode: no delivery is in flight any more."""
        for vhost in sorted(self.vhosts):
            vh = self.vhosts[vhost]
            for name in sorted(vh.queues):
                q = vh.queues.get(name)
                if q is not None and not q.survives_restart:
                    self._remove_queue(q)
            for name in sorted(vh.exchanges):
                ex = vh.exchanges.get(name)
                if ex is not None and not ex.durable and name not in _PREDECLARED:
                    self._remove_exchange(vh, ex)
            for q in vh.queues.values():
                lost = [m for m in q.messages.values() if not m.persistent]
                for msg in lost:
                    self._forget(q, msg)
                dropped, indexes, held_whole = q.drop_transient_cold()
                self._cold_released(indexes)
                for msg in held_whole:
                    self._unrecord(q, msg)
                if lost or dropped:
                    self._dropped(q.vhost, q.name, "not-persistent", len(lost) + dropped)
        for held in [d for d in self.delayed.values() if not d.persistent]:
            self._drop_delayed(held)
            self._dropped(held.vhost, held.exchange, "not-persistent", 1)

    def _open_session(self, cmd: c.OpenSession) -> dict[str, Any]:
        self.vhost(cmd.vhost)
        key = (cmd.vhost, cmd.client_id)
        previous = self.sessions.get(key)
        if previous is not None:
            taken_over = previous.connection != cmd.connection
            self._end_session(key, publish_will=taken_over)
            if taken_over:
                reason = "client id taken over by another connection"
                self._effects.append(CloseConnection(previous.connection, reason))
        group = tuple(cmd.group)
        if cmd.clean:
            self._drop_session_state(key, cmd.queue, group)
        holder = SessionHolder(cmd.connection, cmd.owner, cmd.clean, cmd.queue, group, cmd.will)
        self.sessions[key] = holder
        self._record("session", key, holder)
        return self.records_of(cmd.vhost, group)

    def _close_session(self, cmd: c.CloseSession) -> None:
        key = (cmd.vhost, cmd.client_id)
        holder = self.sessions.get(key)
        if holder is not None and holder.connection == cmd.connection:
            self._end_session(key, cmd.publish_will)

    def _end_session(self, key: tuple[str, str], publish_will: bool) -> None:
        holder = self.sessions.pop(key)
        self._record("session", key, None)
        vhost = key[0]
        if publish_will and holder.will is not None:
            self._publish_will(vhost, holder.will)
        self._release_owner(holder.owner)
        if holder.clean:
            self._drop_session_state(key, holder.queue, holder.group)

    def _drop_session_state(self, key: tuple[str, str], queue: str, group: tuple[str, ...]) -> None:
        vhost, client_id = key
        q = self._find_queue(vhost, queue)
        if q is not None:
            self._remove_queue(q)
        self._drop_records(c.DropRecords(vhost, group))
        self._release_holds(vhost, client_id)

    def _publish_will(self, vhost: str, will: c.Will) -> None:
        publish = c.Publish(vhost, will.exchange, will.routing_key, will.properties, will.body)
        try:
            self._check_publish(publish)
        except BrokerError:
            return  # its exchange is gone: nowhere to publish it
        if will.retain:
            body = will.body or None
            self._store_retained(
                c.StoreRetained(vhost, will.exchange, will.routing_key, will.properties, body)
            )
        self._publish(publish, None)

    # -- pull consumption ----------------------------------------------------------------

    def _receive(self, cmd: c.Receive) -> list[Received]:
        q = self.queue(cmd.vhost, cmd.queue)
        visibility = q.settings.visibility_ms if cmd.visibility_ms is None else cmd.visibility_ms
        if cmd.max_messages < 1:
            raise InvalidArgument("max_messages must be at least 1")
        if visibility < 0:
            raise InvalidArgument("visibility timeout must not be negative")
        q.last_used = self.now
        self._touch(q)
        out: list[Received] = []
        while len(out) < cmd.max_messages:
            msg = q.pop_deliverable()
            if msg is None:
                break
            if _expired(msg, self.now):
                self._dead_letter(q, msg, "expired")
                continue
            limit = q.settings.max_receive_count
            over = limit is not None and msg.delivery_count >= limit
            if over and self._dead_letter_reachable(q, msg):
                self._dead_letter(q, msg, "delivery_limit")
                continue
            q.hide_for_pull(msg, self.now, visibility)
            self._touch_message(q, msg)
            out.append(Received(msg, f"{msg.seq}.{msg.handle}", q.qid))
            if self.tracing.watched and q.vhost in self.tracing.watched:
                self._trace_delivery(q, msg, msg.delivery_count > 1, "", None, False)
        if out:
            self._schedule(q)
        return out

    def _dead_letter_reachable(self, q: MessageQueue, msg: Message) -> bool:
        """Whether the queue's dead-letter target would take `msg`. A message over the
        receive limit moves there only then: with no target, or one whose queue was deleted,
        it stays rather than vanish."""
        return not isinstance(self._dead_letter_plan(q, msg, "delivery_limit"), str)

    def _held_message(self, q: MessageQueue, handle: str) -> Message:
        try:
            seq_text, gen_text = handle.split(".", 1)
            seq, gen = int(seq_text), int(gen_text)
        except ValueError:
            raise ReceiptHandleInvalid(f"invalid receipt handle '{handle}'") from None
        msg = q.messages.get(seq)
        if msg is None or msg.state != HIDDEN or msg.handle != gen or msg.delivery_count == 0:
            raise ReceiptHandleInvalid(f"receipt handle '{handle}' is not valid")
        if msg.visible_at <= self.now:
            raise ReceiptHandleInvalid(f"receipt handle '{handle}' has expired")
        return msg

    def _delete_by_handle(self, cmd: c.DeleteByHandle) -> None:
        q = self.queue(cmd.vhost, cmd.queue)
        msg = self._held_message(q, cmd.handle)
        self._trace(q, msg, "acked")
        self._acknowledge(q, msg)
        if q.sequence is not None:
            self._dispatch(q)
            self._wake_sequential(q)

    def _change_visibility(self, cmd: c.ChangeVisibility) -> int:
        if cmd.visibility_ms < 0:
            raise InvalidArgument("visibility timeout must not be negative")
        q = self.queue(cmd.vhost, cmd.queue)
        msg = self._held_message(q, cmd.handle)
        q.hidden_count -= 1
        q._hide(msg, self.now + cmd.visibility_ms)
        self._touch_message(q, msg)
        self._schedule(q)
        return msg.visible_at

    def _rewind(self, cmd: c.Rewind) -> int:
        q = self.queue(cmd.vhost, cmd.queue)
        back = q.rewind(cmd.since_ms, cmd.from_seq)
        for msg in back:
            self._touch_message(q, msg)
        self._dispatch(q)
        if back:
            self._schedule(q)
            self._effects.append(MessagesAvailable(q.vhost, q.name))
        return len(back)

    # -- retained messages and adapter records --------------------------------------------

    def _store_retained(self, cmd: c.StoreRetained) -> None:
        vh = self.vhost(cmd.vhost)
        key = (cmd.vhost, cmd.routing_key)
        if cmd.body is None:
            if vh.retained.pop(cmd.routing_key, None) is not None:
                self._record("retained", key, None)
            return
        kept = RetainedMessage(cmd.exchange, cmd.routing_key, cmd.properties, cmd.body)
        vh.retained[cmd.routing_key] = kept
        self._record("retained", key, kept)

    def _copy_retained(self, cmd: c.CopyRetained) -> int:
        vh = self.vhost(cmd.vhost)
        q = self.queue(cmd.vhost, cmd.queue)
        copied = 0
        # Sorted, not insertion order: a node restored from a snapshot must agree with replay.
        for routing_key, kept in sorted(vh.retained.items()):
            if not any(topic_matches(p, routing_key) for p in cmd.patterns):
                continue
            props = kept.properties
            if cmd.headers:
                props = dict(props, headers={**(props.get("headers") or {}), **cmd.headers})
            persistent = props.get("delivery_mode") == 2
            body, ttl = kept.body, _ttl(props)
            if self._enqueue(q, kept.exchange, routing_key, props, body, persistent, ttl):
                copied += 1
        return copied

    def _put_record(self, cmd: c.PutRecord) -> None:
        self.vhost(cmd.vhost)
        group = (cmd.vhost, tuple(cmd.group))
        key = (cmd.vhost, group[1], cmd.name)
        if cmd.value is None:
            values = self.records.get(group)
            if values is not None and values.pop(cmd.name, None) is not None:
                self._record("record", key, None)
                if not values:
                    del self.records[group]
                self._let_go(cmd.vhost, group[1], [cmd.name])
            return
        self.records.setdefault(group, {})[cmd.name] = cmd.value
        self._record("record", key, cmd.value)
        if _is_holders(group[1]):
            self.holds.setdefault((cmd.vhost, cmd.name), set()).add(group[1][1])

    def _drop_records(self, cmd: c.DropRecords) -> None:
        group = tuple(cmd.group)
        names = sorted(self.records.pop((cmd.vhost, group), {}))
        for name in names:
            self._record("record", (cmd.vhost, group, name), None)
        self._let_go(cmd.vhost, group, names)

    def _let_go(self, vhost: str, group: tuple[str, ...], holders: list[str]) -> None:
        """Records of `group` named `holders` are gone: if they held a shared queue and were
        its last holders, the queue goes too (commands.holders_of)."""
        if not holders or not _is_holders(group):
            return
        queue = group[1]
        for holder in holders:
            held = self.holds.get((vhost, holder))
            if held is not None:
                held.discard(queue)
                if not held:
                    del self.holds[(vhost, holder)]
        q = self._find_queue(vhost, queue)
        if q is not None and (vhost, group) not in self.records:
            self._remove_queue(q)

    def _release_holds(self, vhost: str, client_id: str) -> None:
        """A session's state is dropped: so are its holds on shared queues."""
        for queue in sorted(self.holds.get((vhost, client_id), ())):
            self._put_record(c.PutRecord(vhost, c.holders_of(queue), client_id, None))

    # -- live queue settings and access keys ----------------------------------------------

    def _set_queue_arguments(self, cmd: c.SetQueueArguments) -> None:
        q = self.queue(cmd.vhost, cmd.name)
        arguments = dict(q.arguments)
        for key, value in cmd.arguments.items():
            if value is None:
                arguments.pop(key, None)
            else:
                arguments[key] = value
        sequential = q.sequence is not None
        q.reconfigure(arguments)  # raises PreconditionFailed, changing nothing, if invalid
        q.modified_at = self.now
        self._touch(q)
        if sequential and q.sequence is None:
            self._dispatch(q)  # what waited for its group goes now
            if q.ready_count:
                self._effects.append(MessagesAvailable(q.vhost, q.name))
        if not q.settings.rewind_ms:
            for msg in q.take_retained():
                self._forget(q, msg)
        if q.settings.overflow == "drop-head":
            self._drop_over_limit(q)
        self._schedule(q)

    def _add_access_key(self, cmd: c.AddAccessKey) -> AccessKey:
        self.vhost(cmd.vhost)
        if not cmd.secret_id or not cmd.secret_key:
            raise InvalidArgument("an access key needs a secret id and a secret key")
        if cmd.secret_id in self.access_keys:
            raise PreconditionFailed(f"access key '{cmd.secret_id}' already exists")
        key = AccessKey(cmd.secret_id, cmd.secret_key, cmd.vhost, self.now)
        self.access_keys[cmd.secret_id] = key
        self._record("access_key", cmd.secret_id, key)
        return key

    def _delete_access_key(self, cmd: c.DeleteAccessKey) -> None:
        if self.access_keys.pop(cmd.secret_id, None) is None:
            raise NotFound(f"no access key '{cmd.secret_id}'")
        self._record("access_key", cmd.secret_id, None)

    # -- policies ------------------------------------------------------------------------

    def _set_policy(self, cmd: c.SetPolicy) -> None:
        vh = self.vhost(cmd.vhost)
        policy = checked_policy(
            cmd.vhost, cmd.name, cmd.pattern, cmd.apply_to, cmd.priority, cmd.definition
        )
        policies = {**vh.policies, cmd.name: policy}
        plan = self._policy_plan(vh, policies)  # raises, changing nothing, if a queue refuses
        vh.policies[cmd.name] = policy
        self._record("policy", (cmd.vhost, cmd.name), policy)
        self._apply_policy_plan(vh, plan)

    def _delete_policy(self, cmd: c.DeletePolicy) -> None:
        vh = self.vhost(cmd.vhost)
        if cmd.name not in vh.policies:
            raise NotFound(f"no policy '{cmd.name}' in vhost '{cmd.vhost}'")
        policies = {k: v for k, v in vh.policies.items() if k != cmd.name}
        plan = self._policy_plan(vh, policies)
        del vh.policies[cmd.name]
        self._record("policy", (cmd.vhost, cmd.name), None)
        self._apply_policy_plan(vh, plan)

    def _policy_plan(
        self, vh: Vhost, policies: dict[str, Policy]
    ) -> list[tuple[MessageQueue, Policy | None, QueueSettings]]:
        """The queues whose policy changes with `policies`, each with its policy and the
        settings it then has."""
        plan = []
        for name in sorted(vh.queues):
            q = vh.queues[name]
            policy = choose(policies.values(), "queue", q.name, q.arguments)
            if policy is not q.policy:
                plan.append((q, policy, q.settings_with(q.arguments, policy)))
        return plan

    def _apply_policy_plan(
        self, vh: Vhost, plan: list[tuple[MessageQueue, Policy | None, QueueSettings]]
    ) -> None:
        """As with new arguments (SetQueueArguments), without redeclaring: a lower length
        limit drops (or dead-letters) from the head, the expiry countdown starts over as
        RabbitMQ's does. A new message TTL applies to messages published from now on."""
        self._choose_exchange_policies(vh)
        for q, policy, settings in plan:
            expires = q.settings.expires
            q.apply_policy(policy, settings)
            if settings.expires is not None and settings.expires != expires:
                q.last_used = self.now
                self._touch(q)
            if settings.overflow == "drop-head":
                self._drop_over_limit(q)
            self._schedule(q)

    def _restore_policies(self) -> None:
        """After loading: what applies to each queue and exchange is derived, not stored."""
        for vh in self.vhosts.values():
            if not vh.policies:
                continue
            for q in vh.queues.values():
                policy = choose(vh.policies.values(), "queue", q.name, q.arguments)
                if policy is not None:
                    q.apply_policy(policy, q.settings_with(q.arguments, policy))
            self._choose_exchange_policies(vh)

    def _choose_exchange_policies(self, vh: Vhost) -> None:
        for ex in vh.exchanges.values():
            if ex.name:  # (the default exchange routes by queue name only)
                ex.policy = choose(vh.policies.values(), "exchange", ex.name, ex.arguments)

    # -- timers --------------------------------------------------------------------------

    def _set_tracing(self, cmd: c.SetTracing) -> None:
        vh = self.vhost(cmd.vhost)
        if cmd.queue and cmd.queue not in vh.queues:
            raise NotFound(f"no queue '{cmd.queue}' in vhost '{cmd.vhost}'")
        if self.tracing.set(cmd.vhost, cmd.kind, cmd.enabled, cmd.queue):
            key = (cmd.vhost, cmd.kind, cmd.queue)
            self._record("tracing", key, True if cmd.enabled else None)

    def _schedule(self, q: MessageQueue) -> None:
        due = q.next_due()
        if due is not None:
            heapq.heappush(self._timers, (due, q.vhost, q.name))

    def _tick(self, cmd: c.Tick) -> None:
        now = self.now
        self._release_delayed()
        fired: set[tuple[str, str]] = set()
        while self._timers and self._timers[0][0] <= now:
            _, vhost, name = heapq.heappop(self._timers)
            fired.add((vhost, name))
        # Firing a queue with nothing due changes nothing, so the order and an entry more or
        # less in the timer heap (which a restored node builds afresh) do not matter.
        for vhost, name in sorted(fired):
            q = self._find_queue(vhost, name)
            if q is not None:
                self._fire_queue_timers(q)

    def _fire_queue_timers(self, q: MessageQueue) -> None:
        now = self.now
        s = q.settings
        if s.expires is not None and not q.consumers and q.last_used + s.expires <= now:
            self._remove_queue(q)
            return
        visible = q.due_hidden(now)
        for msg in visible:
            if q.holds(msg):
                self._touch_message(q, msg)
            else:  # a delayed one, released into the cold tail
                self._unrecord(q, msg)
                if msg.source is not None:
                    self._release_entry(msg.source[0])
        for msg in q.expired_retained(now):
            self._forget(q, msg)
        self._expire_heads(q)
        self._dispatch(q)
        if visible and q.ready_count:
            self._effects.append(MessagesAvailable(q.vhost, q.name))
        self._schedule(q)

    def _expire_heads(self, q: MessageQueue) -> None:
        for msg in q.pop_expired(self.now):
            self._dead_letter(q, msg, "expired")

    # -- forgetting ----------------------------------------------------------------------

    def _dropped(self, vhost: str, source: str, reason: str, count: int, detail: str = "") -> None:
        self._effects.append(Dropped(vhost, source, reason, count, detail))

    def _forget(self, q: MessageQueue, msg: Message) -> None:
        q.remove(msg)
        self._unrecord(q, msg)
        if msg.source is not None:
            self._release_entry(msg.source[0])

    def _unrecord(self, q: MessageQueue, msg: Message) -> None:
        """`msg` no longer stands for its message in `q`: its record goes, if it had one."""
        if msg.recorded:
            msg.recorded = False
            self._changes.append((("message", (q.qid, msg.seq)), None))

    def _release_entry(self, index: int) -> None:
        """An in-memory message no longer uses the body in this log entry."""
        refs = self.entry_refs
        left = refs[index] - 1
        if left:
            refs[index] = left
        else:
            del refs[index]
            self._entry_unused(index)

    def _cold_released(self, indexes: Iterable[int]) -> None:
        """Cold messages no longer use these log entries (0 stands for none)."""
        for index in set(indexes):
            if index and index not in self.entry_refs:
                self._entry_unused(index)

    def _entry_unused(self, index: int) -> None:
        """The log entry may be unused now (the snapshot's garbage check looks at its batch)."""
        if index != self.index:
            # (The entry being applied is past any snapshot: the next one looks at its
            # batch anyway.)
            self._changes.append((("entry", index), None))

    def cold_chunks(self) -> Iterator[ColdChunk]:
        """Every cold chunk of every queue (their log entries are in use)."""
        for q in self.queues_by_qid.values():
            yield from q.cold_chunks()

    # -- restoring a snapshot ------------------------------------------------------------

    def restore(self, kind: str, key: Any, value: Any) -> None:
        """Rebuild state from one snapshot record (records arrive in schema order)."""
        if kind == "counter":
            self.counters[key] = value
        elif kind == "vhost":
            self._add_vhost(key)
        elif kind == "user":
            self.users[key] = value
        elif kind == "permission":
            self.permissions[key] = value
        elif kind == "limits":
            self.limits[key] = value
        elif kind == "policy":
            self.vhosts[key[0]].policies[key[1]] = value
        elif kind == "exchange":
            self.vhosts[key[0]].exchanges[key[1]] = value
        elif kind == "queue":
            self._add_queue(value)
        elif kind == "binding":
            vhost, bkey = key
            self.vhosts[vhost].bindings.setdefault(bkey.source, {})[bkey] = value
        elif kind == "shared":
            self.shared_limits[key] = value
        elif kind == "consumer":
            consumer, shared = value
            if shared:
                consumer.shared = self.shared_limits[consumer.owner]
            self.consumers[key] = consumer
            self.vhosts[consumer.vhost].queues[consumer.queue].consumers.append(consumer)
            self.owner_queues.setdefault(consumer.owner, set()).add(
                (consumer.vhost, consumer.queue)
            )
        elif kind == "message":
            qid, _ = key
            msg, holder = value
            q = self.queues_by_qid[qid]
            if msg.source is not None:
                index = msg.source[0]
                self.entry_refs[index] = self.entry_refs.get(index, 0) + 1
            q.restore(msg, None if holder is None else self._restore_holder(q, *holder))
        elif kind == "cold":
            qid, level, _ = key
            self.queues_by_qid[qid].restore_cold(level, value)
        elif kind == "delayed":
            self.delayed[value.id] = value
            heapq.heappush(self._delayed_heap, (value.due, value.id))
        elif kind == "retained":
            self.vhosts[key[0]].retained[key[1]] = value
        elif kind == "record":
            vhost, group, name = key
            self.records.setdefault((vhost, group), {})[name] = value
            if _is_holders(group):
                self.holds.setdefault((vhost, name), set()).add(group[1])
        elif kind == "access_key":
            self.access_keys[key] = value
        elif kind == "session":
            self.sessions[key] = value
        elif kind == "proposer":
            self.proposers[key] = value
        elif kind == "member":
            self.members[key] = value
        elif kind == "tracing":
            vhost, trace_kind, queue = key
            self.tracing.set(vhost, trace_kind, True, queue)
        else:
            raise ValueError(f"unknown record kind {kind!r}")

    def _restore_holder(
        self, q: MessageQueue, owner: c.Owner, tag: str | None, shared: bool
    ) -> Holder:
        self.owner_queues.setdefault(owner, set()).add((q.vhost, q.name))
        if tag is None:
            return owner, None
        consumer = self.consumers.get((owner, tag))
        if consumer is None:
            # Cancelled while it held deliveries: they still count against a shared limit.
            consumer = Consumer(q.name, q.vhost, owner, tag, False, False, 0, 0)
            consumer.shared = self.shared_limits.get(owner) if shared else None
        consumer.in_flight += 1
        if consumer.shared is not None:
            consumer.shared.in_flight += 1
        return owner, consumer

    def finish_restore(self) -> None:
        """After loading: put consumers in consume order and schedule every timer."""
        self.consumers = dict(sorted(self.consumers.items(), key=lambda item: item[1].seq))
        self._restore_policies()
        for vh in self.vhosts.values():
            for source, bindings in list(vh.bindings.items()):
                vh.bindings[source] = dict(sorted(bindings.items(), key=lambda item: item[1]))
            for q in vh.queues.values():
                q.consumers.sort(key=lambda consumer: consumer.seq)
                q.finish_restore()
                self._schedule(q)


class ColdBodies:
    """A queue's way to the bodies of its cold messages: the log entries that carried them,
    read back through the state machine's `entries` (the store's), and the records its cold
    chunks change."""

    def __init__(
        self, state: StateMachine, hot_limit: int, idle_hot_limit: int, promote: int
    ) -> None:
        self.state = state
        self.hot_limit = hot_limit
        self.idle_hot_limit = idle_hot_limit
        self.promote = promote

    def load(self, q: MessageQueue, entries: list[ColdEntry]) -> list[Message]:
        out = []
        for entry in entries:
            if entry.source[0]:
                msg = self.message_of(entry)
                refs = self.state.entry_refs
                refs[entry.source[0]] = refs.get(entry.source[0], 0) + 1
            else:
                msg = q.held.pop(entry.seq)
            # Its chunk no longer holds it: from now on it is recorded on its own.
            self.state._touch_message(q, msg)
            out.append(msg)
        return out

    def refill(self, msg: Message) -> None:
        assert msg.source is not None
        msg.body = self._publish_at(msg.source).body

    def _publish_at(self, source: tuple[int, int]) -> c.Publish:
        entries = self.state.entries
        assert entries is not None
        command = publish_at(entries, source)
        if command is None:
            raise InternalError(f"log entry {source[0]} of a stored message is not a publish")
        return command

    def message_of(self, entry: ColdEntry) -> Message:
        """The message a cold entry stands for, its body read from the log entry it refers to."""
        command = self._publish_at(entry.source)
        priority = command.properties.get("priority") or 0
        # By position: naming this many fields costs twice as much, once per message.
        return Message(
            entry.seq,
            command.exchange,
            command.routing_key,
            command.properties,
            command.body,
            entry.persistent,
            entry.enqueued_at,
            entry.expires_at,
            priority if isinstance(priority, int) else 0,
            0,  # delivery_count
            0,  # returns
            entry.enqueued_at,  # visible_at
            0,  # handle
            0,  # first_delivered_at
            0,  # acked_at
            READY,
            entry.position,
            entry.source,
        )

    def changed(self, q: MessageQueue, level: int, chunk: ColdChunk) -> None:
        key = ("cold", (q.qid, level, chunk.number))
        self.state._changes.append((key, chunk if len(chunk) else None))


def publish_at(entries: Callable[[int], Any], source: tuple[int, int]) -> c.Publish | None:
    """The publish that carried a stored message's body (Message.source), read from the log
    through `entries`; None if that entry is missing."""
    index, position = source
    command = entries(index)
    if isinstance(command, c.Batch):
        command = command.commands[position]
    return command if isinstance(command, c.Publish) else None


def _routing_type(ex: Exchange) -> str:
    """The type an exchange routes by (an x-delayed-message exchange: its x-delayed-type)."""
    if ex.type == "x-delayed-message":
        return _text(ex.arguments.get("x-delayed-type")) or "direct"
    return ex.type


def _is_holders(group: tuple[str, ...]) -> bool:
    return len(group) == 2 and group[0] == c.HOLDERS


def _full(q: MessageQueue, count: int, size: int) -> bool:
    """Would `count` more messages of `size` bytes in all exceed the queue's length limits?"""
    s = q.settings
    return (s.max_length is not None and q.ready_count + count > s.max_length) or (
        s.max_length_bytes is not None and q.ready_bytes + size > s.max_length_bytes
    )


def _sender_selected(routing_key: str, headers: dict[str, Any]) -> tuple[str, ...]:
    """The routing key plus those of the CC and BCC headers (RabbitMQ's sender-selected
    distribution: arrays of strings; other values are ignored)."""
    keys = [routing_key]
    for name in ("CC", "BCC"):
        extra = headers.get(name)
        if isinstance(extra, list | tuple):
            keys += [k for k in map(_text, extra) if isinstance(k, str) and k not in keys]
    return tuple(keys)


def _without_bcc(properties: dict[str, Any]) -> dict[str, Any]:
    """Blind copies: the recipients are not told who else got the message."""
    headers = properties.get("headers")
    if not headers or "BCC" not in headers:
        return properties
    return {**properties, "headers": {k: v for k, v in headers.items() if k != "BCC"}}


def _too_large(q: MessageQueue, body: bytes) -> bool:
    """Is `body` over the queue's x-max-message-size? Checked at publish only: a message the
    queue already took (dead-lettered or rewound into it) is never refused after the fact."""
    limit = q.settings.max_message_size
    return limit is not None and len(body) > limit


def _is_cycle(target: str, deaths: list[dict[str, Any]]) -> bool:
    """True if the message died in `target` before with no rejection since (most recent
    death first): dead-lettering it there again would loop forever (RabbitMQ's rule)."""
    for death in deaths:
        if _text(death.get("reason")) == "rejected":
            return False
        if _text(death.get("queue")) == target:
            return True
    return False


def _expired(msg: Message, now: int) -> bool:
    """Expired messages are never delivered; a TTL of 0 still allows immediate delivery."""
    exp = msg.expires_at
    return exp is not None and (now > exp or (now == exp and msg.enqueued_at < now))


def _ttl(properties: dict[str, Any]) -> int | None:
    try:
        return int(properties["expiration"]) if properties.get("expiration") is not None else None
    except (TypeError, ValueError):
        return None


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def _norm(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    return value


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    return str(value)
