"""The aiohttp layer: `/v2/index.php` over HTTP and, with a TLS context, HTTPS.

It only moves bytes: method, Host header, path, raw query string and body go to the service,
its reply dict comes back as JSON with HTTP 200, as CMQ answers even errors.

The API has one path, so it is served by aiohttp's low-level `web.Server` rather than an
`Application`: no router, match info or middleware chain per request (they cost more than
the signature check). What an Application did for us is here instead: 404 for any other
path, `Expect: 100-continue`, and the body size limit.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl

from aiohttp import HttpVersion11, hdrs, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler

from broker.config import Config
from broker.gateway import Gateway
from broker.protocols.http import deadlines, errors, queues, topics
from broker.protocols.http.admission import ConnectionAdmission
from broker.protocols.http.pusher import PushManager
from broker.protocols.http.rejects import RejectLog
from broker.protocols.http.service import CmqService
from broker.tls import serve as serve_tls

PATH = "/v2/index.php"
#: `json.dumps(reply, ensure_ascii=False)` without building an encoder per reply
_encode_json = json.JSONEncoder(ensure_ascii=False).encode

log = logging.getLogger(__name__)


class HttpApi:
    """The CMQ API of a node: its service, listeners and pushers."""

    def __init__(self, gateway: Gateway, config: Config, tls: ssl.SSLContext | None = None) -> None:
        self.config = config
        self.tls = tls
        self.service = CmqService(
            gateway, config, {**queues.ACTIONS, **topics.ACTIONS}, PushManager
        )
        self._runner: web.ServerRunner | None = None
        self.admission = ConnectionAdmission(gateway)
        self.rejects = RejectLog(log)
        self._servers: list[asyncio.AbstractServer] = []
        #: open connections by transport, for the handler to tell when a head was whole
        self._connections: dict[asyncio.BaseTransport, deadlines.HeaderDeadline] = {}

    async def start(self) -> None:
        cfg = self.config
        # aiohttp closes a connection that has sent no whole request head for
        # keepalive_timeout since it opened or had its last reply (the idle timeout);
        # `deadlines` adds the shorter header deadline.
        server = web.Server(
            self._handle,
            request_factory=self._make_request,
            access_log=None,
            keepalive_timeout=cfg.http_idle_timeout,
            logger=self.rejects,
        )
        self._runner = web.ServerRunner(server, shutdown_timeout=2.0)
        await self._runner.setup()
        assert self._runner.server is not None
        self.admission.attach(self._runner.server)
        if cfg.http_port:  # 0 turns plain HTTP off
            await self._listen(cfg.http_port, None)
        if self.tls is not None and cfg.https_port:  # 0 turns HTTPS off
            await self._listen(cfg.https_port, self.tls)
        self.service.pushers.start_all()

    async def _listen(self, port: int, context: ssl.SSLContext | None) -> None:
        """Serve the runner's aiohttp protocol on `port`, each connection under its deadlines."""
        assert self._runner is not None and self._runner.server is not None
        timeout = self.config.http_header_timeout
        factory = deadlines.watch(self._runner.server, timeout, self._connections)
        server: asyncio.AbstractServer
        if context is not None:
            server = await serve_tls(factory, context, self.config.host, port, "https", timeout)
        else:
            loop = asyncio.get_running_loop()
            server = await loop.create_server(factory, self.config.host, port, reuse_address=True)
        self._servers.append(server)

    def queue_gained_messages(self, vhost: str, queue: str) -> None:
        """Wake long polls and pushers waiting on the queue (the node's MessagesAvailable)."""
        self.service.waiters.notify(vhost, queue)

    async def stop(self) -> None:
        self.service.closing = True
        self.service.waiters.wake_all()
        await self.service.pushers.close()
        for server in self._servers:
            server.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def _make_request(
        self,
        message: RawRequestMessage,
        payload: StreamReader,
        protocol: RequestHandler,
        writer: AbstractStreamWriter,
        task: asyncio.Task[None],
    ) -> web.BaseRequest:
        loop = asyncio.get_running_loop()
        limit = self.config.http_max_body_bytes
        return web.BaseRequest(
            message, payload, protocol, writer, task, loop, client_max_size=limit
        )

    async def _handle(self, request: web.BaseRequest) -> web.Response:
        if request.headers.get(hdrs.EXPECT):
            await _expect(request)
        if request.rel_url.path_safe != PATH:  # what aiohttp's router matches a path on
            raise web.HTTPNotFound()
        refused = self.admission.refusal(request)
        if refused is not None:
            response = web.json_response(
                {
                    "code": refused.code,
                    "message": refused.message,
                    "requestId": self.service.new_request_id(),
                }
            )
            response.force_close()
            return response
        deadline = self._connections.get(request.transport) if request.transport else None
        if deadline is not None:
            deadline.head_received()
        try:
            return await self._reply(request)
        finally:
            if deadline is not None:
                deadline.replied()

    async def _reply(self, request: web.BaseRequest) -> web.Response:
        try:
            bad_header = _non_ascii_header(request)
            if bad_header is not None:
                raise errors.invalid_request(f"header {bad_header} holds non-ASCII bytes")
            body = await self._read_body(request)
        except web.HTTPRequestEntityTooLarge:
            limit = self.config.http_max_body_bytes
            reply = self._refusal(
                request, errors.invalid_request(f"the request body is larger than {limit} bytes")
            )
        except TimeoutError:
            limit_s = self.config.http_body_timeout
            reply = self._refusal(
                request, errors.invalid_request(f"the request body took over {limit_s} s")
            )
        except errors.CmqError as exc:
            reply = self._refusal(request, exc)
        else:
            reply = await self.service.handle(
                request.method,
                request.headers.get(hdrs.HOST, ""),
                request.path,
                request.rel_url.raw_query_string,
                body,
            )
        return web.Response(body=_encode_json(reply).encode(), content_type="application/json")

    async def _read_body(self, request: web.BaseRequest) -> bytes:
        """The whole body, within the body deadline; a body that came with its head (most do)
        is read without arming a timer for it."""
        if request.content.is_eof():
            return await request.read()
        async with asyncio.timeout(self.config.http_body_timeout):
            return await request.read()

    def _refusal(self, request: web.BaseRequest, err: errors.CmqError) -> dict[str, object]:
        """The reply to a request refused before the service sees it, logged as one."""
        self.rejects.rejected(request.remote, err.message)
        return {
            "code": err.code,
            "message": err.message,
            "requestId": self.service.new_request_id(),
        }


async def _expect(request: web.BaseRequest) -> None:
    """Answer `Expect: 100-continue` before the body is read, as an aiohttp Application does;
    any other expectation of an HTTP/1.1 request is refused (417)."""
    expect = request.headers.get(hdrs.EXPECT, "")
    if request.version == HttpVersion11:
        if expect.lower() != "100-continue":
            raise web.HTTPExpectationFailed(text=f"Unknown Expect: {expect}")
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the reply's own size starts after it
    await request.writer.drain()


def _non_ascii_header(request: web.BaseRequest) -> str | None:
    """The name of the first header holding a non-ASCII byte (None if none does).

    Headers are signed (Host) or ignored, and HTTP/1.1 headers are ASCII: anything else is
    the client's error, not text for the signature to choke on.
    """
    for name, value in request.raw_headers:
        if not (name.isascii() and value.isascii()):
            return name.decode("ascii", "backslashreplace")
    return None
