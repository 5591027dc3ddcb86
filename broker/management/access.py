"""/api/vhosts, /api/users, /api/whoami, /api/permissions: who may do what where.

Changing them is for administrators; a deleted vhost or user has its connections closed,
as `broker vhosts delete` and RabbitMQ do. Vhost descriptions and tags are not kept.
"""

from __future__ import annotations

import os
from typing import Any

from aiohttp import web

from broker.core import commands as c
from broker.core.auth import DEFAULT_HASHING, hash_password, split_stored, stored_hash
from broker.core.errors import InvalidArgument
from broker.core.model import User
from broker.management import formats
from broker.management.auth import (
    readable_vhost,
    require_admin,
    user_of,
    visible_vhosts,
)
from broker.management.context import CONTEXT_KEY, Context
from broker.management.errors import bad_request, not_found
from broker.management.replies import (
    body,
    created_or_updated,
    listing,
    no_content,
    ok,
    segment,
    text,
)


def add_routes(app: web.Application, ctx: Context) -> None:
    app.router.add_get("/api/vhosts", vhosts)
    app.router.add_get("/api/vhosts/{vhost}", vhost)
    app.router.add_put("/api/vhosts/{vhost}", put_vhost)
    app.router.add_delete("/api/vhosts/{vhost}", delete_vhost)
    app.router.add_get("/api/vhosts/{vhost}/permissions", vhost_permissions)
    app.router.add_get("/api/whoami", whoami)
    app.router.add_get("/api/users", users)
    app.router.add_get("/api/users/{user}", user)
    app.router.add_put("/api/users/{user}", put_user)
    app.router.add_delete("/api/users/{user}", delete_user)
    app.router.add_get("/api/users/{user}/permissions", user_permissions)
    app.router.add_get("/api/permissions", permissions)
    app.router.add_get("/api/permissions/{vhost}/{user}", permission)
    app.router.add_put("/api/permissions/{vhost}/{user}", put_permission)
    app.router.add_delete("/api/permissions/{vhost}/{user}", delete_permission)


# -- vhosts --------------------------------------------------------------------------------


def _vhost_json(ctx: Context, name: str) -> dict[str, Any]:
    vh = ctx.gateway.committed.vhosts[name]
    ready = unacked = 0
    for q in vh.queues.values():
        _, queue_ready, queue_unacked = formats.counts(q)
        ready += queue_ready
        unacked += queue_unacked
    return {
        "name": name,
        "description": "",
        "tags": [],
        "metadata": {"description": "", "tags": []},
        "default_queue_type": "classic",
        "tracing": False,
        "cluster_state": {ctx.node_name: "running"},
        "messages": ready + unacked,
        "messages_ready": ready,
        "messages_unacknowledged": unacked,
    }


async def vhosts(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT_KEY]
    return listing(request, [_vhost_json(ctx, name) for name in visible_vhosts(request)])


async def vhost(request: web.Request) -> web.Response:
    name = readable_vhost(request, segment(request, "vhost"))
    return ok(_vhost_json(request.app[CONTEXT_KEY], name))


async def put_vhost(request: web.Request) -> web.Response:
    """As RabbitMQ's API: the administrator creating a vhost gets full permissions in it."""
    admin = require_admin(request)
    await body(request)  # checked, though its description and tags are not kept
    ctx = request.app[CONTEXT_KEY]
    name = segment(request, "vhost")
    existed = name in ctx.gateway.committed.vhosts
    await ctx.gateway.call(c.DeclareVhost(name))
    if not existed:
        await ctx.gateway.call(c.SetPermissions(admin.name, name, ".*", ".*", ".*"))
    return created_or_updated(existed)


async def delete_vhost(request: web.Request) -> web.Response:
    require_admin(request)
    ctx = request.app[CONTEXT_KEY]
    name = segment(request, "vhost")
    if name not in ctx.gateway.committed.vhosts:
        raise not_found()
    await ctx.gateway.call(c.DeleteVhost(name))
    ctx.gateway.close_sessions(f"vhost '{name}' is deleted", vhost=name)
    return no_content()


# -- users ---------------------------------------------------------------------------------


def _user_json(u: User) -> dict[str, Any]:
    algorithm, password_hash = split_stored(u.password_hash)
    return {
        "name": u.name,
        "password_hash": password_hash,
        "hashing_algorithm": algorithm,
        "tags": list(u.tags),
        "limits": {},
    }


async def whoami(request: web.Request) -> web.Response:
    u = user_of(request)
    return ok({"name": u.name, "tags": list(u.tags)})


async def users(request: web.Request) -> web.Response:
    require_admin(request)
    state = request.app[CONTEXT_KEY].gateway.committed
    return listing(request, [_user_json(u) for u in sorted(state.users.values(), key=_name)])


def _name(u: User) -> str:
    return u.name


async def user(request: web.Request) -> web.Response:
    require_admin(request)
    found = request.app[CONTEXT_KEY].gateway.committed.users.get(segment(request, "user"))
    if found is None:
        raise not_found()
    return ok(_user_json(found))


def _tags(data: dict[str, Any]) -> tuple[str, ...]:
    """RabbitMQ takes tags as a comma-separated string or (since 3.12) a list."""
    tags = data.get("tags", "")
    if isinstance(tags, str):
        tags = tags.split(",")
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise bad_request("tags must be a comma-separated string or a list of strings")
    return tuple(t.strip() for t in tags if t.strip())


async def put_user(request: web.Request) -> web.Response:
    """A password, or a password_hash (with its hashing_algorithm); neither keeps the
    password of an existing user and gives a new one none (no password logs it in)."""
    require_admin(request)
    ctx = request.app[CONTEXT_KEY]
    name = segment(request, "user")
    data = await body(request)
    existing = ctx.gateway.committed.users.get(name)
    if "password" in data:
        stored = hash_password(text(data, "password"), os.urandom(4))
    elif "password_hash" in data:
        algorithm = text(data, "hashing_algorithm", DEFAULT_HASHING)
        try:
            stored = stored_hash(algorithm, text(data, "password_hash"))
        except InvalidArgument as exc:
            raise bad_request(str(exc)) from None
    else:
        stored = existing.password_hash if existing is not None else ""
    await ctx.gateway.call(c.PutUser(name, stored, _tags(data)))
    return created_or_updated(existing is not None)


async def delete_user(request: web.Request) -> web.Response:
    require_admin(request)
    ctx = request.app[CONTEXT_KEY]
    name = segment(request, "user")
    if name not in ctx.gateway.committed.users:
        raise not_found()
    await ctx.gateway.call(c.DeleteUser(name))
    ctx.gateway.close_sessions(f"user '{name}' is deleted", user=name)
    return no_content()


# -- permissions ---------------------------------------------------------------------------


def _permissions(request: web.Request, vhost: str | None, who: str | None) -> list[dict]:
    state = request.app[CONTEXT_KEY].gateway.committed
    return [
        {"user": u, "vhost": v, "configure": p.configure, "write": p.write, "read": p.read}
        for (u, v), p in sorted(state.permissions.items())
        if (vhost is None or v == vhost) and (who is None or u == who)
    ]


async def permissions(request: web.Request) -> web.Response:
    require_admin(request)
    return listing(request, _permissions(request, None, None))


async def vhost_permissions(request: web.Request) -> web.Response:
    require_admin(request)
    name = readable_vhost(request, segment(request, "vhost"))
    return listing(request, _permissions(request, name, None))


async def user_permissions(request: web.Request) -> web.Response:
    require_admin(request)
    name = segment(request, "user")
    if name not in request.app[CONTEXT_KEY].gateway.committed.users:
        raise not_found()
    return listing(request, _permissions(request, None, name))


async def permission(request: web.Request) -> web.Response:
    require_admin(request)
    found = _permissions(request, segment(request, "vhost"), segment(request, "user"))
    if not found:
        raise not_found()
    return ok(found[0])


async def put_permission(request: web.Request) -> web.Response:
    require_admin(request)
    ctx = request.app[CONTEXT_KEY]
    vhost_name, user_name = segment(request, "vhost"), segment(request, "user")
    state = ctx.gateway.committed
    if vhost_name not in state.vhosts:
        raise bad_request(f"vhost '{vhost_name}' does not exist")
    if user_name not in state.users:
        raise bad_request(f"user '{user_name}' does not exist")
    data = await body(request)
    existed = (user_name, vhost_name) in state.permissions
    await ctx.gateway.call(
        c.SetPermissions(
            user_name,
            vhost_name,
            text(data, "configure"),
            text(data, "write"),
            text(data, "read"),
        )
    )
    return created_or_updated(existed)


async def delete_permission(request: web.Request) -> web.Response:
    require_admin(request)
    ctx = request.app[CONTEXT_KEY]
    key = (segment(request, "user"), segment(request, "vhost"))
    if key not in ctx.gateway.committed.permissions:
        raise not_found()
    await ctx.gateway.call(c.ClearPermissions(*key))
    return no_content()
