"""What `broker <object> list` shows: the node's objects as RabbitMQ's management API shows
them (broker/management), read from the committed state, so the CLI and the API agree."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from broker.core.errors import NotFound
from broker.management import formats
from broker.management.cmq import subscriptions_of, topics_of
from broker.management.connections import connection_json, connection_name, consumer_json
from broker.management.context import node_name

if TYPE_CHECKING:
    from broker.node import Node

Rows = list[dict[str, Any]]


def vhosts_named(node: Node, vhost: str | None) -> list[str]:
    """`vhost` (checked), or every vhost when None."""
    state = node.gateway.committed
    if vhost is None:
        return sorted(state.vhosts)
    state.vhost(vhost)  # NotFound if it does not exist
    return [vhost]


def queues(node: Node, vhost: str | None) -> Rows:
    state, name = node.gateway.committed, node_name(node.gateway.node_id)
    return [
        formats.queue(q, name)
        for v in vhosts_named(node, vhost)
        for q in sorted(state.vhosts[v].queues.values(), key=lambda q: q.name)
    ]


def exchanges(node: Node, vhost: str | None) -> Rows:
    state = node.gateway.committed
    return [
        formats.exchange(v, ex)
        for v in vhosts_named(node, vhost)
        for _, ex in sorted(state.vhosts[v].exchanges.items())
    ]


def bindings(node: Node, vhost: str | None) -> Rows:
    state = node.gateway.committed
    return [b for v in vhosts_named(node, vhost) for b in formats.bindings(state.vhosts[v])]


def consumers(node: Node, vhost: str | None) -> Rows:
    wanted = set(vhosts_named(node, vhost))
    gateway = node.gateway
    return [
        consumer_json(gateway, x) for x in gateway.committed.consumers.values() if x.vhost in wanted
    ]


def connections(node: Node) -> Rows:
    """This node's client connections of every protocol, oldest first."""
    name = node_name(node.gateway.node_id)
    rows = []
    for cid, conn in sorted(node.gateway.connections.items()):
        info = conn.info()
        if not info.get("internal"):
            rows.append(connection_json(name, cid, info))
    return rows


def close_connection(node: Node, name: str, reason: str) -> None:
    """Close the connection of this node named `name` (RabbitMQ's name, or its id)."""
    for cid, conn in sorted(node.gateway.connections.items()):
        info = conn.info()
        if name in (connection_name(info, cid), f"{cid[0]}.{cid[1]}"):
            conn.force_close(reason)
            return
    raise NotFound(f"no connection '{name}' on this node")


def topics(node: Node, vhost: str | None) -> Rows:
    state = node.gateway.committed
    return [t for v in vhosts_named(node, vhost) for t in topics_of(state, v)]


def subscriptions(node: Node, vhost: str | None, topic: str | None) -> Rows:
    return subscriptions_of(node.gateway.committed, vhosts_named(node, vhost), topic)
