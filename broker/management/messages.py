"""Moving messages by hand: POST /api/exchanges/{vhost}/{name}/publish and
POST /api/queues/{vhost}/{name}/get, as RabbitMQ's API does them (for tests and repairs,
not for throughput: each message is one command)."""

from __future__ import annotations

import base64
import binascii
import datetime
from typing import Any

from aiohttp import web

from broker.core import commands as c
from broker.core.model import Message
from broker.management import formats
from broker.management.auth import check_permission, user_of, writable_vhost
from broker.management.context import CONTEXT_KEY, Context
from broker.management.errors import bad_request, not_found
from broker.management.jsonable import jsonable
from broker.management.replies import body, integer, ok, segment, short, table, text

#: AMQP basic properties as the API names them -> as the core keeps them (pamqp's names)
PROPERTIES = {
    "content_type": "content_type",
    "content_encoding": "content_encoding",
    "headers": "headers",
    "delivery_mode": "delivery_mode",
    "priority": "priority",
    "correlation_id": "correlation_id",
    "reply_to": "reply_to",
    "expiration": "expiration",
    "message_id": "message_id",
    "timestamp": "timestamp",
    "type": "message_type",
    "user_id": "user_id",
    "app_id": "app_id",
    "cluster_id": "cluster_id",
}
_SHOWN = {core: api for api, core in PROPERTIES.items()}
#: the integer properties and their ranges (a timestamp: seconds, up to the year 9999)
_RANGES = {"delivery_mode": (1, 2), "priority": (0, 255), "timestamp": (0, 253_402_300_799)}
#: AMQP's short strings, which most properties are
SHORT_STRING = 255

#: each ackmode's settlement: an ack keeps a message for rewind when its queue does so
OUTCOMES = {
    "ack_requeue_true": "requeue",
    "ack_requeue_false": "ack",
    "reject_requeue_true": "requeue",
    "reject_requeue_false": "reject",
}
#: most messages one get request takes
MAX_GET = 10_000


def add_routes(app: web.Application, ctx: Context) -> None:
    app.router.add_post("/api/exchanges/{vhost}/{name}/publish", publish)
    app.router.add_post("/api/queues/{vhost}/{name}/get", get)


def _properties(request: web.Request, given: dict[str, Any]) -> dict[str, Any]:
    """The message properties as the core keeps them, each within what AMQP can carry."""
    properties: dict[str, Any] = {}
    for key, value in given.items():
        core = PROPERTIES.get(key)
        if core is None:
            raise bad_request(f"unknown message property '{key}'")
        if key in _RANGES:
            low, high = _RANGES[key]
            value = integer(given, key, 0, minimum=low)
            if value > high:
                raise bad_request(f"message property '{key}' must be at most {high}")
        elif key == "headers":
            value = table(given, key)
        elif not isinstance(value, str) or len(value.encode()) > SHORT_STRING:
            raise bad_request(f"message property '{key}' must be a string of at most 255 bytes")
        properties[core] = value
    if "timestamp" in properties:
        properties["timestamp"] = datetime.datetime.fromtimestamp(
            properties["timestamp"], datetime.UTC
        ).replace(tzinfo=None)
    user = user_of(request).name
    if properties.get("user_id", user) != user:
        raise bad_request(
            f"user_id property set to '{properties['user_id']}' but authenticated user was '{user}'"
        )
    return properties


def _payload(data: dict[str, Any]) -> bytes:
    payload = text(data, "payload", "")
    encoding = text(data, "payload_encoding", "string")
    if encoding == "string":
        return payload.encode()
    if encoding == "base64":
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise bad_request("payload is not base64") from None
    raise bad_request(f"payload_encoding must be string or base64, not '{encoding}'")


async def publish(request: web.Request) -> web.Response:
    """{"routed": bool}; a message routed nowhere is dropped and counted as unroutable."""
    ctx = request.app[CONTEXT_KEY]
    vhost = writable_vhost(request, segment(request, "vhost"))
    exchange = formats.exchange_name(segment(request, "name"))
    if exchange not in ctx.gateway.committed.vhosts[vhost].exchanges:
        raise not_found()
    data = await body(request)
    routing_key = short(text(data, "routing_key", ""), "routing_key")
    properties = _properties(request, table(data, "properties"))
    payload = _payload(data)
    check_permission(request, vhost, "write", "exchange", exchange or "amq.default")
    result = await ctx.gateway.call(c.Publish(vhost, exchange, routing_key, properties, payload))
    return ok({"routed": result.routed})


def _shown_properties(message: Message) -> dict[str, Any]:
    return {
        _SHOWN.get(key, key): jsonable(value)
        for key, value in message.properties.items()
        if value is not None and key in _SHOWN
    }


def _shown(
    message: Message, redelivered: bool, left: int, encoding: str, truncate: int | None
) -> dict[str, Any]:
    """A message as RabbitMQ's get shows it: as text when `encoding` is auto and the (cut)
    body is UTF-8, else base64."""
    raw = message.body
    payload_bytes = len(raw)
    if truncate is not None:
        raw = raw[:truncate]
    shown, how = None, "base64"
    if encoding == "auto":
        try:
            shown, how = raw.decode("utf-8"), "string"
        except UnicodeDecodeError:
            pass
    if shown is None:
        shown = base64.b64encode(raw).decode()
    return {
        "payload_bytes": payload_bytes,
        "redelivered": redelivered,
        "exchange": message.exchange,
        "routing_key": message.routing_key,
        "message_count": left,
        "properties": _shown_properties(message),
        "payload": shown,
        "payload_encoding": how,
    }


async def get(request: web.Request) -> web.Response:
    """Take up to `count` messages, then settle them as `ackmode` says: requeued (in their
    order, marked redelivered), acknowledged, or rejected (dead-lettered if the queue has a
    target). Whatever happens, the request's owner is released, so nothing stays held:
    messages it took and did not settle (a failure half-way) go back to their queue."""
    ctx = request.app[CONTEXT_KEY]
    vhost = writable_vhost(request, segment(request, "vhost"))
    name = segment(request, "name")
    if name not in ctx.gateway.committed.vhosts[vhost].queues:
        raise not_found()
    data = await body(request)
    count = integer(data, "count", 1, minimum=1)
    if count > MAX_GET:
        raise bad_request(f"count must be at most {MAX_GET}")
    ackmode = _ackmode(data)
    encoding = text(data, "encoding", "auto")
    if encoding not in ("auto", "base64"):
        raise bad_request(f"encoding must be auto or base64, not '{encoding}'")
    truncate = integer(data, "truncate", 0) if data.get("truncate") not in (None, "") else None
    check_permission(request, vhost, "read", "queue", name)
    owner = ctx.owners.new_owner()
    taken: list[dict[str, Any]] = []
    seqs: list[tuple[str, str, int]] = []
    try:
        for _ in range(count):
            result = await ctx.gateway.call(c.Get(vhost, name, owner))
            if result.message is None:
                break
            seqs.append((vhost, name, result.seq))
            taken.append(
                _shown(result.message, result.redelivered, result.message_count, encoding, truncate)
            )
        if seqs:
            await ctx.gateway.call(c.Settle(owner, seqs, OUTCOMES[ackmode]))
    finally:
        if seqs:
            ctx.gateway.submit(c.ReleaseOwner(owner))
    return ok(taken)


def _ackmode(data: dict[str, Any]) -> str:
    """RabbitMQ's ackmode, or the `requeue` flag of its older API."""
    if "ackmode" not in data and "requeue" in data:
        requeue = data["requeue"] in (True, "true")
        return "ack_requeue_true" if requeue else "ack_requeue_false"
    ackmode = text(data, "ackmode", "ack_requeue_true")
    if ackmode not in OUTCOMES:
        raise bad_request(f"ackmode must be one of {', '.join(OUTCOMES)}")
    return ackmode
