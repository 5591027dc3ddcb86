"""/api/parameters and /api/global-parameters: RabbitMQ's runtime parameters (shovels,
federation upstreams, ...). This broker has none of those components, so the lists are
empty and there is nothing to set; tools that list them (rabbitmqadmin list parameters, the
definitions of a vhost) get the empty answer RabbitMQ gives without them."""

from __future__ import annotations

from aiohttp import web

from broker.management.auth import readable_vhost
from broker.management.context import Context
from broker.management.replies import listing, segment


def add_routes(app: web.Application, ctx: Context) -> None:
    app.router.add_get("/api/parameters", none)
    app.router.add_get("/api/parameters/{component}", none)
    app.router.add_get("/api/parameters/{component}/{vhost}", none_in_vhost)
    app.router.add_get("/api/global-parameters", none)


async def none(request: web.Request) -> web.Response:
    return listing(request, [])


async def none_in_vhost(request: web.Request) -> web.Response:
    readable_vhost(request, segment(request, "vhost"))
    return listing(request, [])
