"""HTTP connections counted with the node's others against its connection limits.

aiohttp's `web.Server` is told of every connection it makes and loses (`connection_made`,
`connection_lost`): wrapped, they admit each connection through the gateway and release it.
A connection over a limit is answered, request by request, with a CMQ error and closed after
it, as AMQP and MQTT answer theirs.
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from broker.gateway import Gateway
from broker.protocols.http.errors import THROTTLED, CmqError


class ConnectionAdmission:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        #: connections over a limit, and why
        self._refused: dict[RequestHandler, str] = {}
        #: connections open now (over a limit or not)
        self.open = 0

    def attach(self, server: web.Server) -> None:
        made, lost = server.connection_made, server.connection_lost

        def connection_made(handler: RequestHandler, transport: asyncio.Transport) -> None:
            made(handler, transport)
            self.open += 1
            self.gateway.traffic["http"].connections += 1
            peer = transport.get_extra_info("peername")
            reason = self.gateway.admit(handler, peer, transport.abort)
            if reason is not None:
                self._refused[handler] = reason

        def connection_lost(handler: RequestHandler, exc: BaseException | None = None) -> None:
            lost(handler, exc)
            self.open -= 1
            self._refused.pop(handler, None)
            self.gateway.release(handler)

        server.connection_made = connection_made  # type: ignore[method-assign]
        server.connection_lost = connection_lost  # type: ignore[method-assign]

    def refusal(self, request: web.BaseRequest) -> CmqError | None:
        """The error to answer `request` with when its connection is over a limit."""
        reason = self._refused.get(request.protocol)
        if reason is None:
            return None
        return CmqError(THROTTLED, f"connection refused: {reason}")
