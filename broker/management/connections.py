"""/api/connections, /api/channels, /api/consumers: who is connected, across protocols.

Connections are the clients of this node, AMQP and MQTT (over TCP and WebSocket) alike, as
each tells of itself (gateway.ClientConnection.info); channels are AMQP's; consumers are the
core's, every node's. Users without the monitoring tag see their own connections only.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from broker.core import commands as c
from broker.core.model import Consumer
from broker.gateway import ClientConnection, Gateway
from broker.management.auth import is_admin, is_monitor, readable_vhost, user_of, visible_vhosts
from broker.management.context import CONTEXT_KEY, Context, node_name
from broker.management.errors import not_authorised, not_found
from broker.management.replies import listing, no_content, ok, segment

#: what a client closed through the API is told (AMQP: 320 CONNECTION_FORCED), as RabbitMQ
CLOSE_REASON = "Closed via management plugin"


def add_routes(app: web.Application, ctx: Context) -> None:
    app.router.add_get("/api/connections", connections)
    app.router.add_get("/api/connections/{name}", connection)
    app.router.add_delete("/api/connections/{name}", close)
    app.router.add_get("/api/connections/{name}/channels", connection_channels)
    app.router.add_get("/api/vhosts/{vhost}/connections", vhost_connections)
    app.router.add_get("/api/channels", channels)
    app.router.add_get("/api/channels/{name}", channel)
    app.router.add_get("/api/vhosts/{vhost}/channels", vhost_channels)
    app.router.add_get("/api/consumers", consumers)
    app.router.add_get("/api/consumers/{vhost}", vhost_consumers)


def connection_name(info: dict[str, Any], cid: c.ConnectionId) -> str:
    """RabbitMQ's name of a network connection: "peer host:port -> local host:port"."""
    if info.get("peer_host") is None:
        return f"node {cid[0]} connection {cid[1]}"
    return f"{info['peer_host']}:{info['peer_port']} -> {info['host']}:{info['port']}"


def connection_json(node: str, cid: c.ConnectionId, info: dict[str, Any]) -> dict[str, Any]:
    """A connection of this node (`node`: its name) as RabbitMQ shows one."""
    name = connection_name(info, cid)
    client_properties = info.get("client_properties") or {}
    if "client_id" in info:  # MQTT: RabbitMQ shows the client id among the properties
        client_properties = {"client_id": info["client_id"]}
    return {
        "name": name,
        "node": node,
        "type": "network",
        "state": "running" if info.get("user") else "starting",
        "protocol": info.get("protocol"),
        "user": info.get("user"),
        "user_who_performed_action": info.get("user"),
        "vhost": info.get("vhost"),
        "host": info.get("host"),
        "port": info.get("port"),
        "peer_host": info.get("peer_host"),
        "peer_port": info.get("peer_port"),
        "ssl": info.get("ssl", False),
        "connected_at": info.get("connected_at"),
        "channels": info.get("channels", 0),
        "channel_max": info.get("channel_max", 0),
        "frame_max": info.get("frame_max", 0),
        "timeout": info.get("heartbeat", info.get("keepalive", 0)),
        "client_properties": client_properties,
        "id": f"{cid[0]}.{cid[1]}",
    }


def _visible(request: web.Request) -> list[tuple[c.ConnectionId, ClientConnection, dict]]:
    """This node's client connections the user may see, with their info, oldest first."""
    user = user_of(request)
    seen = []
    for cid, conn in sorted(request.app[CONTEXT_KEY].gateway.connections.items()):
        info = conn.info()
        if info.get("internal"):
            continue
        if is_monitor(user) or info.get("user") == user.name:
            seen.append((cid, conn, info))
    return seen


def _find(request: web.Request) -> tuple[c.ConnectionId, ClientConnection, dict]:
    name = segment(request, "name")
    for cid, conn, info in _visible(request):
        if connection_name(info, cid) == name:
            return cid, conn, info
    raise not_found()


async def connections(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT_KEY]
    return listing(
        request, [connection_json(ctx.node_name, cid, info) for cid, _, info in _visible(request)]
    )


async def vhost_connections(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT_KEY]
    vhost = readable_vhost(request, segment(request, "vhost"))
    listed = [
        connection_json(ctx.node_name, cid, info)
        for cid, _, info in _visible(request)
        if info.get("vhost") == vhost
    ]
    return listing(request, listed)


async def connection(request: web.Request) -> web.Response:
    cid, _, info = _find(request)
    return ok(connection_json(request.app[CONTEXT_KEY].node_name, cid, info))


async def close(request: web.Request) -> web.Response:
    """Administrators close any connection, other users their own (RabbitMQ's rule)."""
    cid, conn, info = _find(request)
    user = user_of(request)
    if not is_admin(user) and info.get("user") != user.name:
        raise not_authorised("Not administrator user")
    reason = request.headers.get("X-Reason") or CLOSE_REASON
    conn.force_close(reason)
    return no_content()


def _channels(ctx: Context, cid: c.ConnectionId, info: dict[str, Any]) -> list[dict[str, Any]]:
    name = connection_name(info, cid)
    details = {"name": name, "peer_host": info.get("peer_host"), "peer_port": info.get("peer_port")}
    return [
        {
            "name": f"{name} ({ch['number']})",
            "number": ch["number"],
            "node": ctx.node_name,
            "user": info.get("user"),
            "user_who_performed_action": info.get("user"),
            "vhost": info.get("vhost"),
            "state": "running",
            "connection_details": details,
            "prefetch_count": ch["prefetch_count"],
            "global_prefetch_count": ch["global_prefetch_count"],
            "confirm": ch["confirm"],
            "transactional": ch["transactional"],
            "messages_unacknowledged": ch["messages_unacknowledged"],
            "consumer_count": ch["consumer_count"],
        }
        for ch in info.get("channel_details", ())
    ]


async def channels(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT_KEY]
    listed = [ch for cid, _, info in _visible(request) for ch in _channels(ctx, cid, info)]
    return listing(request, listed)


async def vhost_channels(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT_KEY]
    vhost = readable_vhost(request, segment(request, "vhost"))
    listed = [
        ch
        for cid, _, info in _visible(request)
        if info.get("vhost") == vhost
        for ch in _channels(ctx, cid, info)
    ]
    return listing(request, listed)


async def connection_channels(request: web.Request) -> web.Response:
    cid, _, info = _find(request)
    return listing(request, _channels(request.app[CONTEXT_KEY], cid, info))


async def channel(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT_KEY]
    name = segment(request, "name")
    for cid, _, info in _visible(request):
        for ch in _channels(ctx, cid, info):
            if ch["name"] == name:
                return ok(ch)
    raise not_found()


def consumer_json(gateway: Gateway, consumer: Consumer) -> dict[str, Any]:
    """A consumer of any node and protocol; its channel is named when this node holds it."""
    node, number, session = consumer.owner
    cid = (node, number)
    conn = gateway.connections.get(cid)
    info = conn.info() if conn is not None else {}
    name = connection_name(info, cid)
    return {
        "consumer_tag": consumer.tag,
        "queue": {"name": consumer.queue, "vhost": consumer.vhost},
        "ack_required": not consumer.no_ack,
        "exclusive": consumer.exclusive,
        "prefetch_count": consumer.prefetch,
        "priority": consumer.priority,
        "active": consumer.active,
        "activity_status": "up" if consumer.active else "waiting",
        "arguments": {"x-priority": consumer.priority} if consumer.priority else {},
        "channel_details": {
            "name": f"{name} ({session})",
            "number": session,
            "connection_name": name,
            "node": node_name(node),
            "peer_host": info.get("peer_host"),
            "peer_port": info.get("peer_port"),
            "user": info.get("user"),
        },
    }


def _consumers(request: web.Request, vhosts: list[str]) -> list[dict[str, Any]]:
    ctx = request.app[CONTEXT_KEY]
    wanted = set(vhosts)
    return [
        consumer_json(ctx.gateway, consumer)
        for consumer in ctx.gateway.committed.consumers.values()
        if consumer.vhost in wanted
    ]


async def consumers(request: web.Request) -> web.Response:
    return listing(request, _consumers(request, visible_vhosts(request)))


async def vhost_consumers(request: web.Request) -> web.Response:
    vhost = readable_vhost(request, segment(request, "vhost"))
    return listing(request, _consumers(request, [vhost]))
