"""/api/health/checks/* and /api/aliveness-test/{vhost}: what a load balancer or a probe asks.

Each answers 200 {"status": "ok"} or 503 {"status": "failed", "reason": ...}, as RabbitMQ's.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from broker.core import commands as c
from broker.management.auth import check_permission, require_monitor, writable_vhost
from broker.management.context import CONTEXT_KEY, Context
from broker.management.errors import bad_request
from broker.management.replies import ok, segment

#: the queue the aliveness test declares, publishes to and gets from, as RabbitMQ's
ALIVENESS_QUEUE = "aliveness-test"


def add_routes(app: web.Application, ctx: Context) -> None:
    app.router.add_get("/api/health/checks/alarms", alarms)
    app.router.add_get("/api/health/checks/local-alarms", alarms)
    app.router.add_get("/api/health/checks/virtual-hosts", virtual_hosts)
    app.router.add_get("/api/health/checks/node-is-quorum-critical", virtual_hosts)
    app.router.add_get("/api/health/checks/port-listener/{port}", port_listener)
    app.router.add_get("/api/health/checks/protocol-listener/{protocol}", protocol_listener)
    app.router.add_get("/api/aliveness-test/{vhost}", aliveness)


def _failed(reason: str, **more: Any) -> web.Response:
    return ok({"status": "failed", "reason": reason, **more}, status=503)


async def alarms(request: web.Request) -> web.Response:
    """The node's resource alarms (a single node: local and cluster-wide are the same)."""
    require_monitor(request)
    ctx = request.app[CONTEXT_KEY]
    reason = ctx.gateway.blocked_reason
    if reason is None:
        return ok({"status": "ok"})
    resource = "disk" if "disk" in reason else "memory"
    return _failed(
        "There are alarms in effect in the cluster",
        alarms=[{"node": ctx.node_name, "resource": resource, "reason": reason}],
    )


async def virtual_hosts(request: web.Request) -> web.Response:
    """Every vhost is served by the one state machine: running as long as the node is."""
    require_monitor(request)
    return ok({"status": "ok"})


async def port_listener(request: web.Request) -> web.Response:
    require_monitor(request)
    raw = segment(request, "port")
    if not raw.isdigit():
        raise bad_request(f"port must be a number, not '{raw}'")
    ports = [port for _, port in request.app[CONTEXT_KEY].listeners()]
    if int(raw) in ports:
        return ok({"status": "ok", "port": int(raw)})
    return _failed(f"No active listener on port {raw}", missing=int(raw), ports=ports)


async def protocol_listener(request: web.Request) -> web.Response:
    require_monitor(request)
    protocol = segment(request, "protocol")
    protocols = sorted({name for name, _ in request.app[CONTEXT_KEY].listeners()})
    if protocol in protocols:
        return ok({"status": "ok", "protocol": protocol})
    return _failed(
        f"No active listener for protocol {protocol}", missing=protocol, protocols=protocols
    )


async def aliveness(request: web.Request) -> web.Response:
    """Declare the test queue, publish to it and get the message back: the vhost takes and
    gives messages end to end (through the commit path and the store)."""
    ctx = request.app[CONTEXT_KEY]
    vhost = writable_vhost(request, segment(request, "vhost"))
    check_permission(request, vhost, "configure", "queue", ALIVENESS_QUEUE)
    check_permission(request, vhost, "read", "queue", ALIVENESS_QUEUE)
    check_permission(request, vhost, "write", "exchange", "amq.default")
    gateway = ctx.gateway
    await gateway.call(c.DeclareQueue(vhost, ALIVENESS_QUEUE, durable=False))
    await gateway.call(c.Publish(vhost, "", ALIVENESS_QUEUE, {}, b"test_message"))
    owner = ctx.owners.new_owner()
    result = await gateway.call(c.Get(vhost, ALIVENESS_QUEUE, owner, no_ack=True))
    if result.message is None or result.message.body != b"test_message":
        return _failed("the test message did not come back")
    return ok({"status": "ok"})
