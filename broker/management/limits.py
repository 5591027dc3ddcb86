"""/api/vhost-limits and /api/user-limits: RabbitMQ's per-vhost and per-user limits
(max-connections and max-queues of a vhost, max-connections and max-channels of a user), for
administrators. One limit is set (PUT {"value": n}) or cleared (DELETE) at a time; the others
of the same vhost or user stay."""

from __future__ import annotations

from aiohttp import web

from broker.core import commands as c
from broker.field_values import INT_MAX
from broker.management.auth import Handler, require_admin
from broker.management.context import CONTEXT_KEY, Context
from broker.management.errors import bad_request, not_found
from broker.management.replies import (
    body,
    created_or_updated,
    integer,
    listing,
    no_content,
    segment,
)

#: the path segment of each scope, and the field that names its owner in a listing
SCOPES = {"vhost": "vhost-limits", "user": "user-limits"}


def add_routes(app: web.Application, ctx: Context) -> None:
    for scope, path in SCOPES.items():
        app.router.add_get(f"/api/{path}", _list(scope))
        app.router.add_get(f"/api/{path}/{{name}}", _list(scope))
        app.router.add_put(f"/api/{path}/{{name}}/{{limit}}", _put(scope))
        app.router.add_delete(f"/api/{path}/{{name}}/{{limit}}", _delete(scope))


def _owner(request: web.Request, scope: str) -> str:
    """The vhost or user of the path; 404 if there is none of that name."""
    name = segment(request, "name")
    state = request.app[CONTEXT_KEY].gateway.committed
    if name not in (state.vhosts if scope == "vhost" else state.users):
        raise not_found(f"{scope} '{name}' not found")
    return name


def _list(scope: str) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        require_admin(request)
        wanted = _owner(request, scope) if "name" in request.match_info else None
        limits = request.app[CONTEXT_KEY].gateway.committed.limits
        listed = [
            {scope: name, "value": dict(values)}
            for (kind, name), values in sorted(limits.items())
            if kind == scope and wanted in (None, name)
        ]
        return listing(request, listed)

    return handler


def _put(scope: str) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        require_admin(request)
        ctx = request.app[CONTEXT_KEY]
        name, limit = _owner(request, scope), segment(request, "limit")
        value = integer(await body(request), "value", -1, minimum=-(2**63))
        if value > INT_MAX:
            raise bad_request(f"value must be at most {INT_MAX}")
        current = dict(ctx.gateway.committed.limits.get((scope, name), {}))
        existed = limit in current
        await ctx.gateway.call(c.SetLimits(scope, name, {**current, limit: value}))
        return created_or_updated(existed)

    return handler


def _delete(scope: str) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        require_admin(request)
        ctx = request.app[CONTEXT_KEY]
        name, limit = _owner(request, scope), segment(request, "limit")
        current = dict(ctx.gateway.committed.limits.get((scope, name), {}))
        if limit not in current:
            raise not_found()
        del current[limit]
        await ctx.gateway.call(c.SetLimits(scope, name, current))
        return no_content()

    return handler
