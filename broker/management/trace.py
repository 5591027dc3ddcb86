"""/api/trace: message trace and the firehose (see core/tracing.py) over HTTP.

- GET /api/trace: what is traced ([{vhost, kind, queue}]); PUT /api/trace/{vhost} with
  {"kind": "trace" | "firehose", "enabled": bool, "queue"?: name} turns one on or off
  (administrators);
- GET /api/trace/{vhost}/messages/{id}: the life of one message, by trace id or message_id;
- GET /api/trace/{vhost}/queues/{name}?since=&until=&limit=: what happened in a queue between
  two times (epoch ms, both included).

Reading needs the monitoring (or administrator) tag: steps name users and connections.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from broker.core import commands as c
from broker.management.auth import readable_vhost, require_admin, require_monitor
from broker.management.context import CONTEXT_KEY, Context
from broker.management.errors import ApiError, bad_request
from broker.management.replies import body, flag, integer, no_content, ok, segment, text
from broker.trace_log.recorder import TraceRecorder

#: most steps one query answers
MAX_STEPS = 10_000


def add_routes(app: web.Application, ctx: Context) -> None:
    app.router.add_get("/api/trace", settings)
    app.router.add_put("/api/trace/{vhost}", change)
    app.router.add_get("/api/trace/{vhost}/messages/{id}", message)
    app.router.add_get("/api/trace/{vhost}/queues/{name}", queue)


async def settings(request: web.Request) -> web.Response:
    require_monitor(request)
    state = request.app[CONTEXT_KEY].gateway.committed
    return ok([{"vhost": v, "kind": k, "queue": q} for v, k, q in state.tracing.settings()])


async def change(request: web.Request) -> web.Response:
    require_admin(request)
    vhost = readable_vhost(request, segment(request, "vhost"))
    data = await body(request)
    command = c.SetTracing(
        vhost, text(data, "kind"), flag(data, "enabled", True), text(data, "queue", "")
    )
    await request.app[CONTEXT_KEY].gateway.call(command)
    return no_content()


async def message(request: web.Request) -> web.Response:
    require_monitor(request)
    vhost = readable_vhost(request, segment(request, "vhost"))
    limit = _limit(request)
    steps = await _recorder(request).by_id(segment(request, "id"), limit)
    return ok([s for s in steps if s["vhost"] == vhost])


async def queue(request: web.Request) -> web.Response:
    require_monitor(request)
    vhost = readable_vhost(request, segment(request, "vhost"))
    query: dict[str, Any] = dict(request.query)
    since = integer(query, "since", 0)
    until = integer(query, "until", 0) if "until" in query else None
    if until is not None and until < since:
        raise bad_request("until must not be before since")
    steps = await _recorder(request).by_queue(
        vhost, segment(request, "name"), since, until, _limit(request)
    )
    return ok(steps)


def _limit(request: web.Request) -> int:
    limit = integer(dict(request.query), "limit", 1000, minimum=1)
    if limit > MAX_STEPS:
        raise bad_request(f"limit must be at most {MAX_STEPS}")
    return limit


def _recorder(request: web.Request) -> TraceRecorder:
    trace = request.app[CONTEXT_KEY].gateway.trace
    if trace is None:
        raise ApiError(503, "service_unavailable", "message trace is not open yet")
    return trace
