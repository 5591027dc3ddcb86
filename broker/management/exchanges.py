"""/api/exchanges: list, show, declare (PUT), delete. Publishing is in messages.py."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from broker.core import commands as c
from broker.management import formats
from broker.management.auth import check_permission, readable_vhost, visible_vhosts, writable_vhost
from broker.management.context import CONTEXT_KEY, Context
from broker.management.errors import not_found
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
    text,
)


def add_routes(app: web.Application, ctx: Context) -> None:
    app.router.add_get("/api/exchanges", list_all)
    app.router.add_get("/api/exchanges/{vhost}", list_vhost)
    app.router.add_get("/api/exchanges/{vhost}/{name}", show)
    app.router.add_put("/api/exchanges/{vhost}/{name}", declare)
    app.router.add_delete("/api/exchanges/{vhost}/{name}", delete)
    app.router.add_get("/api/exchanges/{vhost}/{name}/bindings/source", bindings_from)
    app.router.add_get("/api/exchanges/{vhost}/{name}/bindings/destination", bindings_to)


def _exchanges(request: web.Request, vhosts: list[str]) -> list[dict[str, Any]]:
    state = request.app[CONTEXT_KEY].gateway.committed
    return [
        formats.exchange(vhost, ex)
        for vhost in vhosts
        for ex in sorted(state.vhosts[vhost].exchanges.values(), key=lambda ex: ex.name)
    ]


async def list_all(request: web.Request) -> web.Response:
    return listing(request, _exchanges(request, visible_vhosts(request)))


async def list_vhost(request: web.Request) -> web.Response:
    vhost = readable_vhost(request, segment(request, "vhost"))
    return listing(request, _exchanges(request, [vhost]))


def _exchange_name(request: web.Request) -> str:
    return formats.exchange_name(segment(request, "name"))


async def show(request: web.Request) -> web.Response:
    vhost = readable_vhost(request, segment(request, "vhost"))
    ex = (
        request.app[CONTEXT_KEY]
        .gateway.committed.vhosts[vhost]
        .exchanges.get(_exchange_name(request))
    )
    if ex is None:
        raise not_found()
    return ok(formats.exchange(vhost, ex))


async def declare(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT_KEY]
    vhost = writable_vhost(request, segment(request, "vhost"))
    name = short(_exchange_name(request), "exchange name")
    data = await body(request)
    check_permission(request, vhost, "configure", "exchange", name)
    existed = name in ctx.gateway.committed.vhosts[vhost].exchanges
    await ctx.gateway.call(
        c.DeclareExchange(
            vhost,
            name,
            type=text(data, "type"),
            durable=flag(data, "durable", True),
            auto_delete=flag(data, "auto_delete", False),
            internal=flag(data, "internal", False),
            arguments=table(data, "arguments"),
        )
    )
    return created_or_updated(existed)


async def delete(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT_KEY]
    vhost = writable_vhost(request, segment(request, "vhost"))
    name = _exchange_name(request)
    if name not in ctx.gateway.committed.vhosts[vhost].exchanges:
        raise not_found()
    check_permission(request, vhost, "configure", "exchange", name)
    await ctx.gateway.call(
        c.DeleteExchange(vhost, name, if_unused=request.query.get("if-unused") == "true")
    )
    return no_content()


def _exchange_bindings(request: web.Request, source: bool) -> list[dict[str, Any]]:
    vhost = readable_vhost(request, segment(request, "vhost"))
    name = _exchange_name(request)
    vh = request.app[CONTEXT_KEY].gateway.committed.vhosts[vhost]
    if name not in vh.exchanges:
        raise not_found()
    if source:
        return [b for b in formats.bindings(vh) if b["source"] == name]
    return [
        b
        for b in formats.bindings(vh)
        if b["destination_type"] == "exchange" and b["destination"] == name
    ]


async def bindings_from(request: web.Request) -> web.Response:
    return listing(request, _exchange_bindings(request, source=True))


async def bindings_to(request: web.Request) -> web.Response:
    return listing(request, _exchange_bindings(request, source=False))
