"""Core objects as RabbitMQ's management API shows them (same field names).

Only fields we can fill truthfully are given; RabbitMQ's rate and Erlang-process fields
(reductions, garbage_collection, *_details rates we do not measure) are left out, as
RabbitMQ itself leaves out message_stats until it has some.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import urllib.parse
from typing import Any

from broker.core.model import BindingKey, Exchange
from broker.core.queue import MessageQueue
from broker.core.state import Vhost
from broker.management.jsonable import jsonable

#: what one stored message costs besides its body, roughly (the Message object, its
#: properties dict, the queue's index entries): for `memory`
MESSAGE_OVERHEAD = 400
QUEUE_OVERHEAD = 2000


def exchange_name(name: str) -> str:
    """The default exchange in paths: RabbitMQ calls it amq.default."""
    return "" if name == "amq.default" else name


def exchange(vhost: str, ex: Exchange) -> dict[str, Any]:
    return {
        "name": ex.name,
        "vhost": vhost,
        "type": ex.type,
        "durable": ex.durable,
        "auto_delete": ex.auto_delete,
        "internal": ex.internal,
        "arguments": jsonable(ex.arguments),
        "user_who_performed_action": "",
        **({} if ex.policy is None else {"policy": ex.policy.name}),
    }


def queue_type(q: MessageQueue) -> str:
    qtype = q.arguments.get("x-queue-type", "classic")
    return qtype.decode() if isinstance(qtype, bytes) else str(qtype)


def counts(q: MessageQueue) -> tuple[int, int, int]:
    """(messages, ready, unacknowledged): unacknowledged are the deliveries awaiting
    settlement and the messages pulled (CMQ receive) and not yet deleted; delayed ones are
    not counted until they become visible."""
    unacked = len(q.unacked) + q.hidden_count - q.delayed_count
    return q.ready_count + unacked, q.ready_count, unacked


def memory_split(q: MessageQueue) -> tuple[int, int]:
    """(in memory, on disk only) of the queue's ready messages: the one place that knows
    where waiting bodies are, so the API, the CLI and metrics agree. Cold messages (see
    core/cold.py) are on disk only, except those held whole."""
    on_disk = q.cold_count() - len(q.held)
    return q.ready_count - on_disk, on_disk


def queue(q: MessageQueue, node: str) -> dict[str, Any]:
    """A queue with its counts (see `counts`), split between memory and disk as RabbitMQ's
    classic queues show it (messages delivered and not yet settled are in memory)."""
    unacked_bytes = sum(q.messages[seq].size for seq in q.unacked)
    messages, ready, unacked = counts(q)
    ready_ram, paged_out = memory_split(q)
    held = len(q.messages)
    return {
        "name": q.name,
        "vhost": q.vhost,
        "durable": q.durable,
        "auto_delete": q.auto_delete,
        "exclusive": q.exclusive_owner is not None,
        "arguments": jsonable(q.arguments),
        "node": node,
        "type": queue_type(q),
        "state": "running",
        "messages": messages,
        "messages_ready": ready,
        "messages_unacknowledged": unacked,
        "messages_delayed": q.delayed_count,
        "messages_ram": ready_ram + unacked,
        "messages_ready_ram": ready_ram,
        "messages_unacknowledged_ram": unacked,
        "messages_paged_out": paged_out,
        "message_bytes_ready": q.ready_bytes,
        "message_bytes_unacknowledged": unacked_bytes,
        "message_bytes": q.ready_bytes + unacked_bytes,
        "consumers": len(q.consumers),
        "memory": QUEUE_OVERHEAD + held * MESSAGE_OVERHEAD + q.ready_bytes + unacked_bytes,
        "policy": None if q.policy is None else q.policy.name,
        "effective_policy_definition": {} if q.policy is None else dict(q.policy.definition),
        "exclusive_consumer_tag": None,
        "single_active_consumer_tag": None,
        "head_message_timestamp": None,
        "idle_since": None if q.consumers else _iso(q.last_used),
    }


def _iso(ms: int) -> str | None:
    """RabbitMQ's timestamp format in the API: "2023-01-31 10:11:12"."""
    if not ms:
        return None
    moment = datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def properties_key(routing_key: str, arguments: dict[str, Any]) -> str:
    """What names a binding in a path: "~" for no key and no arguments, the quoted key, or
    the key and a hash of the arguments (RabbitMQ's scheme; its hash differs, clients take
    the key from the listing)."""
    if not routing_key and not arguments:
        return "~"
    quoted = urllib.parse.quote_plus(routing_key).replace("~", "%7E")
    if not arguments:
        return quoted
    digest = hashlib.sha256(repr(sorted(jsonable(arguments).items())).encode()).digest()[:4]
    return quoted + "~" + base64.urlsafe_b64encode(digest).decode().rstrip("=")


def binding(vhost: str, key: BindingKey) -> dict[str, Any]:
    arguments = dict(key.arguments)
    return {
        "source": key.source,
        "vhost": vhost,
        "destination": key.destination,
        "destination_type": "queue" if key.to_queue else "exchange",
        "routing_key": key.routing_key,
        "arguments": jsonable(arguments),
        "properties_key": properties_key(key.routing_key, arguments),
    }


def default_binding(vhost: str, queue_name: str) -> dict[str, Any]:
    """Every queue is bound to the default exchange by its name; RabbitMQ lists those."""
    return {
        "source": "",
        "vhost": vhost,
        "destination": queue_name,
        "destination_type": "queue",
        "routing_key": queue_name,
        "arguments": {},
        "properties_key": properties_key(queue_name, {}),
    }


def bindings(vh: Vhost) -> list[dict[str, Any]]:
    """A vhost's bindings in RabbitMQ's order: the default exchange's, then by source."""
    listed = [default_binding(vh.name, name) for name in sorted(vh.queues)]
    for source in sorted(vh.bindings):
        keys = sorted(vh.bindings[source].items(), key=lambda item: item[1])
        listed += [binding(vh.name, key) for key, _ in keys]
    return listed
