"""/api/queues: list, show, declare (PUT), delete, purge (DELETE .../contents)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from broker.core import commands as c
from broker.core.queue import MessageQueue
from broker.management import formats
from broker.management.auth import check_permission, readable_vhost, visible_vhosts, writable_vhost
from broker.management.connections import consumer_json
from broker.management.context import CONTEXT_KEY, Context
from broker.management.errors import bad_request, not_found
from broker.management.replies import (
    body,
    created_or_updated,
    flag,
    listing,
    no_content,
    ok,
    segment,
    short,
    table,
)


def add_routes(app: web.Application, ctx: Context) -> None:
    app.router.add_get("/api/queues", list_all)
    app.router.add_get("/api/queues/{vhost}", list_vhost)
    app.router.add_get("/api/queues/{vhost}/{name}", show)
    app.router.add_put("/api/queues/{vhost}/{name}", declare)
    app.router.add_delete("/api/queues/{vhost}/{name}", delete)
    app.router.add_delete("/api/queues/{vhost}/{name}/contents", purge)


def _queues(request: web.Request, vhosts: list[str]) -> list[dict]:
    ctx = request.app[CONTEXT_KEY]
    state = ctx.gateway.committed
    ctx.rates.refresh(state)
    return [
        _shown(ctx, vhost, q)
        for vhost in vhosts
        for q in sorted(state.vhosts[vhost].queues.values(), key=lambda q: q.name)
    ]


def _shown(ctx: Context, vhost: str, q: MessageQueue) -> dict[str, Any]:
    """A queue with its depth rates and, once sampled, its message_stats."""
    shown = {**formats.queue(q, ctx.node_name), **ctx.rates.details(vhost, q.name)}
    stats = ctx.message_stats((vhost, q.name))
    if stats:
        shown["message_stats"] = stats
    return shown


async def list_all(request: web.Request) -> web.Response:
    return listing(request, _queues(request, visible_vhosts(request)))


async def list_vhost(request: web.Request) -> web.Response:
    vhost = readable_vhost(request, segment(request, "vhost"))
    return listing(request, _queues(request, [vhost]))


async def show(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT_KEY]
    vhost = readable_vhost(request, segment(request, "vhost"))
    q = ctx.gateway.committed.vhosts[vhost].queues.get(segment(request, "name"))
    if q is None:
        raise not_found()
    ctx.rates.refresh(ctx.gateway.committed)
    shown = _shown(ctx, vhost, q)
    shown["consumer_details"] = [consumer_json(ctx.gateway, consumer) for consumer in q.consumers]
    return ok(shown)


async def declare(request: web.Request) -> web.Response:
    """As RabbitMQ: a durable queue unless told otherwise; an equal declaration of an
    existing queue is fine (204), a different one is refused (400, inequivalent arg)."""
    ctx = request.app[CONTEXT_KEY]
    vhost = writable_vhost(request, segment(request, "vhost"))
    name = short(segment(request, "name"), "queue name")
    data = await body(request)
    if flag(data, "exclusive", False):
        raise bad_request("exclusive queues cannot be declared through the API")
    check_permission(request, vhost, "configure", "queue", name)
    existed = name in ctx.gateway.committed.vhosts[vhost].queues
    await ctx.gateway.call(
        c.DeclareQueue(
            vhost,
            name,
            durable=flag(data, "durable", True),
            auto_delete=flag(data, "auto_delete", False),
            arguments=table(data, "arguments"),
        )
    )
    return created_or_updated(existed)


async def delete(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT_KEY]
    vhost = writable_vhost(request, segment(request, "vhost"))
    name = segment(request, "name")
    if name not in ctx.gateway.committed.vhosts[vhost].queues:
        raise not_found()
    check_permission(request, vhost, "configure", "queue", name)
    query = request.query
    await ctx.gateway.call(
        c.DeleteQueue(
            vhost,
            name,
            if_unused=query.get("if-unused") == "true",
            if_empty=query.get("if-empty") == "true",
        )
    )
    return no_content()


async def purge(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT_KEY]
    vhost = writable_vhost(request, segment(request, "vhost"))
    name = segment(request, "name")
    if name not in ctx.gateway.committed.vhosts[vhost].queues:
        raise not_found()
    check_permission(request, vhost, "read", "queue", name)
    await ctx.gateway.call(c.PurgeQueue(vhost, name))
    return no_content()
