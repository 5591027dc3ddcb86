"""/api/bindings: list, and exchange-to-queue (e/q) or exchange-to-exchange (e/e) bindings
created with POST, shown and deleted by their properties key (formats.properties_key)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from broker.core import commands as c
from broker.management import formats
from broker.management.auth import check_permission, readable_vhost, visible_vhosts, writable_vhost
from broker.management.context import CONTEXT_KEY, Context
from broker.management.errors import bad_request, not_found
from broker.management.replies import body, listing, no_content, ok, segment, short, table

_E_Q = "/api/bindings/{vhost}/e/{source}/{kind:[qe]}/{destination}"


def add_routes(app: web.Application, ctx: Context) -> None:
    app.router.add_get("/api/bindings", list_all)
    app.router.add_get("/api/bindings/{vhost}", list_vhost)
    app.router.add_get(_E_Q, between)
    app.router.add_post(_E_Q, create)
    app.router.add_get(_E_Q + "/{props}", show)
    app.router.add_delete(_E_Q + "/{props}", delete)
    app.router.add_get("/api/queues/{vhost}/{name}/bindings", queue_bindings)


def _all(request: web.Request, vhosts: list[str]) -> list[dict[str, Any]]:
    state = request.app[CONTEXT_KEY].gateway.committed
    return [b for vhost in vhosts for b in formats.bindings(state.vhosts[vhost])]


async def list_all(request: web.Request) -> web.Response:
    return listing(request, _all(request, visible_vhosts(request)))


async def list_vhost(request: web.Request) -> web.Response:
    vhost = readable_vhost(request, segment(request, "vhost"))
    return listing(request, _all(request, [vhost]))


async def queue_bindings(request: web.Request) -> web.Response:
    vhost = readable_vhost(request, segment(request, "vhost"))
    name = segment(request, "name")
    if name not in request.app[CONTEXT_KEY].gateway.committed.vhosts[vhost].queues:
        raise not_found()
    listed = [
        b
        for b in _all(request, [vhost])
        if b["destination_type"] == "queue" and b["destination"] == name
    ]
    return listing(request, listed)


def _ends(request: web.Request) -> tuple[str, str, str, bool]:
    """(vhost, source, destination, to a queue) of the path; 404 if one is missing."""
    vhost = segment(request, "vhost")
    source = formats.exchange_name(segment(request, "source"))
    destination = segment(request, "destination")
    to_queue = segment(request, "kind") == "q"
    vh = request.app[CONTEXT_KEY].gateway.committed.vhosts.get(vhost)
    if vh is None:
        raise not_found(f"vhost '{vhost}' not found")
    if source not in vh.exchanges:
        raise not_found(f"no exchange '{source}' in vhost '{vhost}'")
    if destination not in (vh.queues if to_queue else vh.exchanges):
        kind = "queue" if to_queue else "exchange"
        raise not_found(f"no {kind} '{destination}' in vhost '{vhost}'")
    return vhost, source, destination, to_queue


def _matching(request: web.Request) -> list[dict[str, Any]]:
    vhost, source, destination, to_queue = _ends(request)
    readable_vhost(request, vhost)
    kind = "queue" if to_queue else "exchange"
    return [
        b
        for b in _all(request, [vhost])
        if b["source"] == source
        and b["destination"] == destination
        and b["destination_type"] == kind
    ]


async def between(request: web.Request) -> web.Response:
    return listing(request, _matching(request))


async def show(request: web.Request) -> web.Response:
    for b in _matching(request):
        if b["properties_key"] == segment(request, "props"):
            return ok(b)
    raise not_found()


def _check(request: web.Request, vhost: str, source: str, destination: str, to_queue: bool) -> None:
    """AMQP's rule for queue.bind: write on the destination, read on the source."""
    writable_vhost(request, vhost)
    kind = "queue" if to_queue else "exchange"
    check_permission(request, vhost, "write", kind, destination)
    check_permission(request, vhost, "read", "exchange", source or "amq.default")


async def create(request: web.Request) -> web.Response:
    """201 with the new binding's path in Location, as RabbitMQ answers."""
    vhost, source, destination, to_queue = _ends(request)
    data = await body(request)
    routing_key = data.get("routing_key", "")
    if not isinstance(routing_key, str):
        raise bad_request("routing_key must be a string")
    short(routing_key, "routing_key")
    arguments = table(data, "arguments")
    _check(request, vhost, source, destination, to_queue)
    await request.app[CONTEXT_KEY].gateway.call(
        c.Bind(vhost, source, destination, to_queue, routing_key, arguments)
    )
    location = f"{request.path.rstrip('/')}/{formats.properties_key(routing_key, arguments)}"
    return web.Response(status=201, headers={"Location": location})


async def delete(request: web.Request) -> web.Response:
    vhost, source, destination, to_queue = _ends(request)
    props = segment(request, "props")
    for b in _matching(request):
        if b["properties_key"] == props and b["source"] != "":
            _check(request, vhost, source, destination, to_queue)
            await request.app[CONTEXT_KEY].gateway.call(
                c.Unbind(
                    vhost, source, destination, to_queue, b["routing_key"], _arguments(request, b)
                )
            )
            return no_content()
    raise not_found()


def _arguments(request: web.Request, shown: dict[str, Any]) -> dict[str, Any]:
    """The binding's arguments as stored (the listing shows them made JSON-safe)."""
    vh = request.app[CONTEXT_KEY].gateway.committed.vhosts[shown["vhost"]]
    for key in vh.bindings.get(shown["source"], {}):
        candidate = formats.binding(shown["vhost"], key)
        if candidate["properties_key"] == shown["properties_key"] and (
            candidate["destination"] == shown["destination"]
        ):
            return dict(key.arguments)
    return {}
