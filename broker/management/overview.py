"""/api/overview, /api/nodes, /api/cluster-name, /api/extensions: the node as a whole."""

from __future__ import annotations

import os
import platform
import shutil
import time
from typing import Any

from aiohttp import web

import broker
from broker.core.routing import EXCHANGE_TYPES
from broker.management import formats
from broker.management.auth import is_monitor, require_monitor, user_of, visible_vhosts
from broker.management.context import CONTEXT_KEY, Context
from broker.management.errors import not_found
from broker.management.replies import ok, segment
from broker.resources import memory_limit, open_fds, rss_bytes

PRODUCT = "broker"


def add_routes(app: web.Application, ctx: Context) -> None:
    app.router.add_get("/api/overview", overview)
    app.router.add_get("/api/nodes", nodes)
    app.router.add_get("/api/nodes/{node}", node)
    app.router.add_get("/api/cluster-name", cluster_name)
    app.router.add_get("/api/extensions", extensions)


def _listeners(ctx: Context) -> list[dict[str, Any]]:
    return [
        {"node": ctx.node_name, "protocol": protocol, "ip_address": ctx.config.host, "port": port}
        for protocol, port in ctx.listeners()
    ]


async def overview(request: web.Request) -> web.Response:
    """Totals over the vhosts the user may see (all of them for monitoring users)."""
    ctx = request.app[CONTEXT_KEY]
    state = ctx.gateway.committed
    ready = unacked = queue_count = exchange_count = consumer_count = 0
    vhosts = visible_vhosts(request)
    for name in vhosts:
        vh = state.vhosts[name]
        queue_count += len(vh.queues)
        exchange_count += len(vh.exchanges)
        for q in vh.queues.values():
            _, queue_ready, queue_unacked = formats.counts(q)
            ready += queue_ready
            unacked += queue_unacked
            consumer_count += len(q.consumers)
    ctx.rates.refresh(state)
    connections = [conn.info() for conn in ctx.gateway.connections.values()]
    if not is_monitor(user_of(request)):
        connections = [i for i in connections if i.get("user") == user_of(request).name]
    counters = ctx.counters()
    return ok(
        {
            "management_version": broker.__version__,
            "rates_mode": "basic",
            "message_stats": ctx.message_stats(None),
            "product_name": PRODUCT,
            "product_version": broker.__version__,
            "rabbitmq_version": broker.__version__,
            "cluster_name": ctx.node_name,
            "node": ctx.node_name,
            "exchange_types": [
                {"name": name, "description": "", "enabled": True}
                for name in sorted(EXCHANGE_TYPES)
            ],
            "queue_totals": {
                "messages": ready + unacked,
                "messages_ready": ready,
                "messages_unacknowledged": unacked,
                **ctx.rates.total_details(vhosts),
            },
            "object_totals": {
                "connections": len(connections),
                "channels": sum(i.get("channels", 0) for i in connections),
                "consumers": consumer_count,
                "exchanges": exchange_count,
                "queues": queue_count,
            },
            "listeners": _listeners(ctx),
            "contexts": [
                {
                    "node": ctx.node_name,
                    "description": "RabbitMQ Management",
                    "path": "/",
                    "port": str(ctx.config.management_port),
                }
            ],
            "statistics_db_event_queue": 0,
            "disable_stats": False,
            "enable_queue_totals": True,
            "counters": counters,
        }
    )


def _node(ctx: Context) -> dict[str, Any]:
    cfg = ctx.config
    disk = shutil.disk_usage(cfg.data_dir)
    blocked = ctx.gateway.blocked_reason or ""
    counters = ctx.counters()
    return {
        "name": ctx.node_name,
        "type": "disc",
        "running": True,
        "os_pid": str(os.getpid()),
        "uptime": int(time.time() * 1000) - ctx.started_at,
        "processors": os.cpu_count() or 1,
        "mem_used": rss_bytes(),
        "mem_limit": memory_limit(cfg.memory_high_watermark),
        "mem_alarm": "memory" in blocked,
        "disk_free": disk.free,
        "disk_free_limit": cfg.disk_free_limit,
        "disk_free_alarm": "disk" in blocked,
        "fd_used": open_fds(),
        "sockets_used": counters.get("connections", 0),
        "partitions": [],
        "applications": [
            {"name": PRODUCT, "description": "message broker", "version": broker.__version__}
        ],
        "os": platform.system(),
        "python_version": platform.python_version(),
    }


async def nodes(request: web.Request) -> web.Response:
    require_monitor(request)
    return ok([_node(request.app[CONTEXT_KEY])])


async def node(request: web.Request) -> web.Response:
    require_monitor(request)
    ctx = request.app[CONTEXT_KEY]
    if segment(request, "node") != ctx.node_name:
        raise not_found(f"node '{segment(request, 'node')}' not found")
    return ok(_node(ctx))


async def cluster_name(request: web.Request) -> web.Response:
    return ok({"name": request.app[CONTEXT_KEY].node_name})


async def extensions(request: web.Request) -> web.Response:
    """RabbitMQ's UI plug-ins; none here."""
    return ok([])
