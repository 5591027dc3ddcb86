"""/api/policies: list (all, one vhost), show, set (PUT), delete, as RabbitMQ serves them.

As in RabbitMQ, only policymakers and administrators see or change policies: a policymaker
those of the vhosts it has permissions in, an administrator every vhost's.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from broker import policies
from broker.core import commands as c
from broker.management.auth import is_admin, require_policymaker, user_of
from broker.management.context import CONTEXT_KEY, Context
from broker.management.errors import not_authorised, not_found
from broker.management.replies import body, created_or_updated, listing, no_content, ok, segment


def add_routes(app: web.Application, ctx: Context) -> None:
    app.router.add_get("/api/policies", list_all)
    app.router.add_get("/api/policies/{vhost}", list_vhost)
    app.router.add_get("/api/policies/{vhost}/{name}", show)
    app.router.add_put("/api/policies/{vhost}/{name}", put)
    app.router.add_delete("/api/policies/{vhost}/{name}", delete)


def _policy_vhost(request: web.Request) -> str:
    """The path's vhost, if it exists (404) and the policymaker may manage its policies."""
    require_policymaker(request)
    vhost = segment(request, "vhost")
    state = request.app[CONTEXT_KEY].gateway.committed
    if vhost not in state.vhosts:
        raise not_found(f"vhost '{vhost}' not found")
    user = user_of(request)
    if not is_admin(user) and (user.name, vhost) not in state.permissions:
        raise not_authorised("User not authorised to access virtual host")
    return vhost


def _listed(request: web.Request, vhost: str | None) -> list[dict[str, Any]]:
    state = request.app[CONTEXT_KEY].gateway.committed
    user = user_of(request)
    return [
        p
        for p in policies.listed(state, vhost)
        if is_admin(user) or (user.name, p["vhost"]) in state.permissions
    ]


async def list_all(request: web.Request) -> web.Response:
    require_policymaker(request)
    return listing(request, _listed(request, None))


async def list_vhost(request: web.Request) -> web.Response:
    return listing(request, _listed(request, _policy_vhost(request)))


async def show(request: web.Request) -> web.Response:
    vhost = _policy_vhost(request)
    policy = (
        request.app[CONTEXT_KEY]
        .gateway.committed.vhosts[vhost]
        .policies.get(segment(request, "name"))
    )
    if policy is None:
        raise not_found()
    return ok(policies.as_json(policy))


async def put(request: web.Request) -> web.Response:
    """RabbitMQ's body: {"pattern", "definition", "priority"?, "apply-to"?}; its vhost and
    name come from the path."""
    ctx = request.app[CONTEXT_KEY]
    vhost = _policy_vhost(request)
    name = segment(request, "name")
    command = policies.set_command(vhost, name, await body(request))
    existed = name in ctx.gateway.committed.vhosts[vhost].policies
    await ctx.gateway.call(command)
    return created_or_updated(existed)


async def delete(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT_KEY]
    vhost = _policy_vhost(request)
    name = segment(request, "name")
    if name not in ctx.gateway.committed.vhosts[vhost].policies:
        raise not_found()
    await ctx.gateway.call(c.DeletePolicy(vhost, name))
    return no_content()
