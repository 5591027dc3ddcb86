"""The aiohttp layer: `/v2/index.php` over HTTP and, with a TLS context, HTTPS.

It only moves bytes: method, Host header, path, raw query string and body go to the service,
its reply dict comes back as JSON with HTTP 200, as CMQ answers even errors.
"""

from __future__ import annotations

import asyncio
import json
import ssl

from aiohttp import hdrs, web

from broker.config import Config
from broker.gateway import Gateway
from broker.protocols.http import errors, queues, topics
from broker.protocols.http.pusher import PushManager
from broker.protocols.http.service import CmqService
from broker.tls import serve as serve_tls

PATH = "/v2/index.php"
#: `json.dumps(reply, ensure_ascii=False)` without building an encoder per reply
_encode_json = json.JSONEncoder(ensure_ascii=False).encode


class HttpApi:
    """The CMQ API of a node: its service, listeners and pushers."""

    def __init__(self, gateway: Gateway, config: Config, tls: ssl.SSLContext | None = None) -> None:
        self.config = config
        self.tls = tls
        self.service = CmqService(
            gateway, config, {**queues.ACTIONS, **topics.ACTIONS}, PushManager
        )
        self._runner: web.AppRunner | None = None
        self._https: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        cfg = self.config
        app = web.Application(client_max_size=cfg.http_max_body_bytes)
        app.router.add_route("*", PATH, self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        if cfg.http_port:  # 0 turns plain HTTP off
            await web.TCPSite(self._runner, cfg.host, cfg.http_port, reuse_address=True).start()
        if self.tls is not None and cfg.https_port:  # 0 turns HTTPS off
            server = self._runner.server
            assert server is not None
            self._https = await serve_tls(
                server, self.tls, cfg.host, cfg.https_port, "https", cfg.handshake_timeout
            )
        self.service.pushers.start_all()

    def queue_gained_messages(self, vhost: str, queue: str) -> None:
        """Wake long polls and pushers waiting on the queue (the node's MessagesAvailable)."""
        self.service.waiters.notify(vhost, queue)

    async def stop(self) -> None:
        self.service.closing = True
        self.service.waiters.wake_all()
        await self.service.pushers.close()
        if self._https is not None:
            self._https.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            limit = self.config.http_max_body_bytes
            err = errors.invalid_request(f"the request body is larger than {limit} bytes")
            reply = {
                "code": err.code,
                "message": err.message,
                "requestId": self.service.new_request_id(),
            }
        else:
            reply = await self.service.handle(
                request.method,
                request.headers.get(hdrs.HOST, ""),
                request.path,
                request.rel_url.raw_query_string,
                body,
            )
        return web.Response(body=_encode_json(reply).encode(), content_type="application/json")
