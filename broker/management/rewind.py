"""POST /api/queues/{vhost}/{name}/rewind: CMQ's rewind for the console and scripts.

RabbitMQ's API has no such call; CMQ has RewindQueue. A queue that keeps consumed messages
(`x-rewind-ms`, CMQ's rewindSeconds) makes those consumed in the last `seconds` ready again,
through the core's Rewind command. Body: {"seconds": N}; reply: {"rewound": count}.
"""

from __future__ import annotations

from aiohttp import web

from broker.core import commands as c
from broker.management.auth import check_permission, writable_vhost
from broker.management.context import CONTEXT_KEY, Context
from broker.management.errors import bad_request, not_found
from broker.management.replies import body, integer, ok, segment


def add_routes(app: web.Application, ctx: Context) -> None:
    app.router.add_post("/api/queues/{vhost}/{name}/rewind", rewind)


async def rewind(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT_KEY]
    vhost = writable_vhost(request, segment(request, "vhost"))
    name = segment(request, "name")
    q = ctx.gateway.committed.vhosts[vhost].queues.get(name)
    if q is None:
        raise not_found()
    # Taking messages back to ready is consuming them again: the read permission, as purge.
    check_permission(request, vhost, "read", "queue", name)
    seconds = integer(await body(request), "seconds", 0)
    if not q.settings.rewind_ms:
        raise bad_request(f"queue '{name}' keeps no consumed messages to rewind (x-rewind-ms is 0)")
    since_ms = ctx.gateway.now_ms() - seconds * 1000
    rewound = await ctx.gateway.call(c.Rewind(vhost, name, since_ms))
    return ok({"rewound": rewound})
