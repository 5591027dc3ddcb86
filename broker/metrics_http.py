"""The Prometheus endpoint on `metrics_port`: GET /metrics and /metrics/per-object.

A listener of its own, as rabbitmq_prometheus has (15692), so that scraping needs no
credentials and works whether the management API is on or off. /metrics is aggregated
unless `metrics_per_object` is set; /metrics/per-object is always per queue. Anything else
gets a JSON error with its status code.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from broker.metrics import Sources, render
from broker.prometheus import CONTENT_TYPE


class MetricsServer:
    def __init__(self, sources: Sources, host: str, port: int, per_object: bool) -> None:
        self.sources = sources
        self.host = host
        self.port = port
        #: /metrics shows per-queue samples too (prometheus.return_per_object_metrics)
        self.per_object = per_object
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application(middlewares=[_json_errors])
        app.router.add_get("/metrics", self._aggregated)
        app.router.add_get("/metrics/per-object", self._per_object)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _aggregated(self, request: web.Request) -> web.Response:
        return self._page(self.per_object)

    async def _per_object(self, request: web.Request) -> web.Response:
        return self._page(True)

    def _page(self, per_object: bool) -> web.Response:
        body = render(self.sources, per_object).encode()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


@web.middleware
async def _json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """aiohttp's own errors (404, 405) as JSON, like the node's other HTTP answers."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        reason = f"{request.method} {request.path}: {exc.reason}"
        return web.json_response(
            {"error": exc.reason.lower().replace(" ", "_"), "reason": reason}, status=exc.status
        )
