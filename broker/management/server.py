"""The management API's aiohttp application and its listener.

An `Application` with a router: the API is not the hot path, and its many paths read best
as routes. Each endpoint module adds its routes with its `add_routes(app, ctx)`, listed in
ROUTES: a new group of endpoints (policies, the web console's static files at `/`) is a
module with that function and one more line there. Requests outside /api/ are served
without authentication (the console's files; its page asks for credentials itself).
"""

from __future__ import annotations

import logging

from aiohttp import web

from broker.core.errors import BrokerError
from broker.management import (
    access,
    bindings,
    cmq,
    connections,
    console,
    definitions,
    exchanges,
    health,
    limits,
    messages,
    overview,
    parameters,
    policies,
    queues,
    trace,
)
from broker.management.auth import Handler, authenticate
from broker.management.context import CONTEXT_KEY, AddRoutes, Context
from broker.management.errors import ApiError, from_core, not_found, response

log = logging.getLogger(__name__)

#: the endpoint modules, each with its `add_routes(app, ctx)`
ROUTES: tuple[AddRoutes, ...] = (
    overview.add_routes,
    access.add_routes,
    exchanges.add_routes,
    queues.add_routes,
    bindings.add_routes,
    messages.add_routes,
    connections.add_routes,
    definitions.add_routes,
    health.add_routes,
    limits.add_routes,
    cmq.add_routes,
    parameters.add_routes,
    policies.add_routes,
    trace.add_routes,
    console.add_routes,
)

#: requests larger than this are refused (definitions of a big broker fit)
MAX_BODY = 64 * 1024 * 1024


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure as RabbitMQ's JSON error, never a traceback."""
    # Scripts from a page (the web console) say so; they get no Basic challenge.
    challenge = request.headers.get("X-Requested-With") != "XMLHttpRequest"
    try:
        return await handler(request)
    except ApiError as exc:
        return response(exc, challenge)
    except BrokerError as exc:
        return response(from_core(exc), challenge)
    except web.HTTPNotFound:
        return response(not_found())
    except web.HTTPMethodNotAllowed as exc:
        return response(ApiError(405, "Method Not Allowed", exc.reason))
    except web.HTTPRequestEntityTooLarge:
        return response(ApiError(413, "Request Entity Too Large", "the body is too large"))
    except web.HTTPException:
        raise
    except Exception:
        log.exception("management API: %s %s failed", request.method, request.path)
        return response(ApiError(500, "internal_error", "the request failed; see the log"))


class ManagementServer:
    """The API of one node on `config.management_port`."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.app = web.Application(middlewares=[errors, authenticate], client_max_size=MAX_BODY)
        self.app[CONTEXT_KEY] = ctx
        for add in ROUTES:
            add(self.app, ctx)
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        cfg = self.ctx.config
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, cfg.host, cfg.management_port, reuse_address=True)
        await site.start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
