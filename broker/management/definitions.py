"""/api/definitions[/{vhost}]: export (GET) and import (POST) RabbitMQ definitions, for
administrators. What is imported is checked whole (shapes and references) before any of it
is applied (broker.definitions), then applied command by command, each committed; one the
core refuses stops the import there, and the error says which and how far it got."""

from __future__ import annotations

import json

from aiohttp import web

import broker
from broker import definitions as defs
from broker.core.errors import BrokerError, InvalidArgument
from broker.management.auth import require_admin
from broker.management.context import CONTEXT_KEY, Context
from broker.management.errors import bad_request, not_found
from broker.management.jsonable import dumps
from broker.management.replies import body, no_content, segment


def add_routes(app: web.Application, ctx: Context) -> None:
    app.router.add_get("/api/definitions", export)
    app.router.add_post("/api/definitions", import_)
    app.router.add_get("/api/definitions/{vhost}", export)
    app.router.add_post("/api/definitions/{vhost}", import_)


def _vhost(request: web.Request) -> str | None:
    if "vhost" not in request.match_info:
        return None
    vhost = segment(request, "vhost")
    if vhost not in request.app[CONTEXT_KEY].gateway.committed.vhosts:
        raise not_found(f"vhost '{vhost}' not found")
    return vhost


async def export(request: web.Request) -> web.Response:
    """`?download=name` asks for it as a file, as the UI's export button does."""
    require_admin(request)
    state = request.app[CONTEXT_KEY].gateway.committed
    doc = {
        "rabbit_version": broker.__version__,
        "rabbitmq_version": broker.__version__,
        "product_name": "broker",
        "product_version": broker.__version__,
        **defs.export(state, _vhost(request)),
    }
    headers = {}
    download = request.query.get("download")
    if download:
        headers["Content-Disposition"] = f'attachment; filename="{json.dumps(download)[1:-1]}"'
    return web.Response(text=dumps(doc), content_type="application/json", headers=headers)


async def import_(request: web.Request) -> web.Response:
    require_admin(request)
    ctx = request.app[CONTEXT_KEY]
    vhost = _vhost(request)
    doc = await body(request)
    try:
        commands = defs.import_commands(doc, ctx.gateway.committed, vhost)
    except InvalidArgument as exc:
        raise bad_request(str(exc)) from None
    for done, command in enumerate(commands):
        try:
            await ctx.gateway.call(command)
        except BrokerError as exc:
            # Shapes and references were checked before; the core refused this one (say, an
            # existing queue declared otherwise): what came before it stays imported.
            raise bad_request(
                f"{defs.describe(command)} refused: {exc} ({done} of {len(commands)} "
                "definitions imported before it)"
            ) from None
    return no_content()
