"""The whole state of a state machine in a canonical, comparable form.

Two state machines with equal dumps behave alike from there on: a replica restored from a
snapshot and replaying the log must dump exactly like the node that applied every entry. What
is left out is derived and rebuilt on restore (the timer heap, the routing memo, the list of
queues an owner once used).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from broker.core.model import HIDDEN, RETAINED, Message
from broker.core.queue import MessageQueue
from broker.core.state import StateMachine
from tests.core_helpers import all_messages, ready_order


def _message(m: Message) -> tuple[Any, ...]:
    return (
        m.seq,
        # (kept on disk only, where it can be: for rewind, or delayed)
        None if m.state == RETAINED or (m.state == HIDDEN and not m.delivery_count) else m.body,
        m.state,
        m.delivery_count,
        m.visible_at if m.state == HIDDEN else None,
        m.handle,
        m.returns,
        m.acked_at,
        m.first_delivered_at,
        m.expires_at,
        m.enqueued_at,
        m.persistent,
        m.priority,
        m.position,
        m.source,
        m.exchange,
        m.routing_key,
        repr(m.properties),
    )


def _queue(q: MessageQueue) -> dict[str, Any]:
    return {
        "config": (
            q.qid,
            q.durable,
            q.exclusive_owner,
            q.auto_delete,
            repr(q.arguments),
            q.created_at,
            q.modified_at,
            q.last_used,
            q.had_consumer,
            q.per_message_ttl,
        ),
        "cursors": (q.next_seq, q.next_position, q.round_robin, q.dispatch_pending),
        # derived from the arguments and the vhost's policies, so rebuilt alike on restore
        "policy": None if q.policy is None else q.policy.name,
        "settings": repr(q.settings),
        # hot or cold (in memory or read back from the log) alike
        "messages": [_message(m) for _, m in sorted(all_messages(q).items())],
        "order": [m.seq for m in ready_order(q)],
        # Kept for rewind until acked_at + the window: equal ack times expire together.
        "rewind_order": sorted((q.messages[s].acked_at, s) for s in q._retained if s in q.messages),
        "counts": (
            q.ready_count,
            q.ready_bytes,
            q.hidden_count,
            q.delayed_count,
            q.retained_count(),
        ),
        "unacked": sorted(
            (seq, owner, None if consumer is None else consumer.tag)
            for seq, (owner, consumer) in q.unacked.items()
        ),
        "consumers": [
            (
                x.seq,
                x.tag,
                x.owner,
                x.no_ack,
                x.exclusive,
                x.prefetch,
                x.priority,
                x.in_flight,
                x.active,
                x.settle_transient,
                None if x.shared is None else (x.shared.limit, x.shared.in_flight),
            )
            for x in q.consumers
        ],
    }


def entry_refs(sm: StateMachine) -> dict[int, int]:
    """Log index -> messages using its body, in memory (StateMachine.entry_refs) or cold."""
    out = Counter(sm.entry_refs)
    for chunk in sm.cold_chunks():
        out.update(index for index in chunk.indexes() if index)
    return dict(out)


def dump(sm: StateMachine) -> dict[str, Any]:
    out: dict[str, Any] = {
        "counters": dict(sm.counters),
        "entry_refs": sorted(entry_refs(sm).items()),
        "users": sorted(repr(u) for u in sm.users.values()),
        "permissions": sorted(repr(item) for item in sm.permissions.items()),
        "limits": sorted(repr(item) for item in sm.limits.items()),
        "access_keys": sorted(repr(k) for k in sm.access_keys.values()),
        "records": sorted(repr(item) for item in sm.records.items()),
        "sessions": sorted(repr(item) for item in sm.sessions.items()),
        "proposers": sorted(
            (node, p.session, p.floor, sorted(p.seen)) for node, p in sm.proposers.items()
        ),
        "members": sorted(sm.members.items()),
        "tracing": sm.tracing.settings(),
        "delayed": sorted(repr(d) for d in sm.delayed.values()),
        "consumer_order": [key for key in sm.consumers],
        "shared": sorted((o, s.limit, s.in_flight) for o, s in sm.shared_limits.items()),
        "exclusive": sorted(
            (conn, sorted(queues)) for conn, queues in sm.exclusive_queues.items() if queues
        ),
        "vhosts": {},
    }
    for vname in sorted(sm.vhosts):
        vh = sm.vhosts[vname]
        out["vhosts"][vname] = {
            "exchanges": sorted(repr(e) for e in vh.exchanges.values()),
            "bindings": {
                source: [(repr(k), seq) for k, seq in keys.items()]
                for source, keys in sorted(vh.bindings.items())
                if keys
            },
            "retained": sorted(repr(r) for r in vh.retained.values()),
            "policies": sorted(repr(p) for p in vh.policies.values()),
            "queues": {name: _queue(vh.queues[name]) for name in sorted(vh.queues)},
        }
    return out
