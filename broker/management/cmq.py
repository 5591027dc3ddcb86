"""CMQ's objects under /api/cmq: topics, their subscriptions, and access keys.

Topics are topic exchanges and subscriptions bindings (also listed under /api/exchanges and
/api/bindings); here they are shown as the CMQ adapter keeps their settings (its records).
CMQ queues are queues, under /api/queues; rewinding one (CMQ's RewindQueue: messages
enqueued since a time, acknowledged ones kept by its rewind window included, become
consumable again) is POST /api/cmq/queues/{vhost}/{name}/rewind {"since": epoch seconds}, or
{"from_message": id} to rewind from a message on (its msgId or AMQP message-id).
Keys are administrators' business: listed without their secrets and deleted here, created
with `broker keys create`.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from broker.core import commands as c
from broker.core.state import StateMachine
from broker.management.auth import (
    check_permission,
    readable_vhost,
    require_admin,
    visible_vhosts,
    writable_vhost,
)
from broker.management.context import CONTEXT_KEY, Context
from broker.management.errors import bad_request, not_found
from broker.management.replies import body, integer, listing, no_content, ok, segment, text
from broker.protocols.http.positions import seq_of
from broker.protocols.http.topics import SUBSCRIPTIONS, TOPICS, subscriptions_group

#: the latest time a rewind may start from: the year 9999, in seconds
LATEST = 253_402_300_799


def add_routes(app: web.Application, ctx: Context) -> None:
    app.router.add_get("/api/cmq/topics", topics)
    app.router.add_get("/api/cmq/topics/{vhost}", topics)
    app.router.add_get("/api/cmq/topics/{vhost}/{name}", topic)
    app.router.add_get("/api/cmq/subscriptions", subscriptions)
    app.router.add_get("/api/cmq/subscriptions/{vhost}", subscriptions)
    app.router.add_get("/api/cmq/subscriptions/{vhost}/{topic}", subscriptions)
    app.router.add_post("/api/cmq/queues/{vhost}/{name}/rewind", rewind)
    app.router.add_get("/api/cmq/keys", keys)
    app.router.add_delete("/api/cmq/keys/{secret_id}", delete_key)


def _vhosts(request: web.Request) -> list[str]:
    if "vhost" in request.match_info:
        return [readable_vhost(request, segment(request, "vhost"))]
    return visible_vhosts(request)


def topics_of(state: StateMachine, vhost: str) -> list[dict[str, Any]]:
    """The CMQ topics of a vhost, with their settings and subscription counts."""
    return [
        {
            "name": name,
            "vhost": vhost,
            "subscriptions": len(state.records_of(vhost, subscriptions_group(name))),
            **record,
        }
        for name, record in sorted(state.records_of(vhost, TOPICS).items())
    ]


def subscriptions_of(
    state: StateMachine, vhosts: list[str], topic: str | None = None
) -> list[dict[str, Any]]:
    """The subscriptions of those vhosts' topics (of one topic, given `topic`)."""
    found = []
    wanted = set(vhosts)
    for (vhost, group), subs in sorted(state.records.items()):
        if vhost not in wanted or group[:-1] != SUBSCRIPTIONS:
            continue
        if topic is not None and group[-1] != topic:
            continue
        found += [
            {"name": name, "vhost": vhost, "topic": group[-1], **sub}
            for name, sub in sorted(subs.items())
        ]
    return found


def _topics(request: web.Request, vhost: str) -> list[dict[str, Any]]:
    return topics_of(request.app[CONTEXT_KEY].gateway.committed, vhost)


async def topics(request: web.Request) -> web.Response:
    return listing(request, [t for vhost in _vhosts(request) for t in _topics(request, vhost)])


async def topic(request: web.Request) -> web.Response:
    vhost = readable_vhost(request, segment(request, "vhost"))
    for found in _topics(request, vhost):
        if found["name"] == segment(request, "name"):
            return ok(found)
    raise not_found()


async def subscriptions(request: web.Request) -> web.Response:
    state = request.app[CONTEXT_KEY].gateway.committed
    wanted = segment(request, "topic") if "topic" in request.match_info else None
    return listing(request, subscriptions_of(state, _vhosts(request), wanted))


async def rewind(request: web.Request) -> web.Response:
    """{"rewound": how many messages became consumable again}; needs read permission."""
    ctx = request.app[CONTEXT_KEY]
    vhost = writable_vhost(request, segment(request, "vhost"))
    name = segment(request, "name")
    q = ctx.gateway.committed.vhosts[vhost].queues.get(name)
    if q is None:
        raise not_found()
    data = await body(request)
    if "from_message" in data:
        if "since" in data:
            raise bad_request("rewind from a time (since) or from a message, not both")
        check_permission(request, vhost, "read", "queue", name)
        seq = seq_of(q, text(data, "from_message"))
        if seq is None:
            raise bad_request(f"no message {data['from_message']} in queue {name}")
        command = c.Rewind(vhost, name, 0, seq)
    else:
        since = integer(data, "since", 0)
        if since > LATEST:
            raise bad_request(f"since must be at most {LATEST} (seconds since the epoch)")
        check_permission(request, vhost, "read", "queue", name)
        command = c.Rewind(vhost, name, since * 1000)
    return ok({"rewound": await ctx.gateway.call(command)})


async def keys(request: web.Request) -> web.Response:
    require_admin(request)
    state = request.app[CONTEXT_KEY].gateway.committed
    return listing(
        request,
        [
            {"secret_id": k.secret_id, "vhost": k.vhost, "created_at": k.created_at}
            for k in sorted(state.access_keys.values(), key=lambda k: k.secret_id)
        ],
    )


async def delete_key(request: web.Request) -> web.Response:
    require_admin(request)
    ctx = request.app[CONTEXT_KEY]
    secret_id = segment(request, "secret_id")
    if secret_id not in ctx.gateway.committed.access_keys:
        raise not_found()
    await ctx.gateway.call(c.DeleteAccessKey(secret_id))
    return no_content()
