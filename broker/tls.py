"""TLS for the client listeners: one server context from --tls-cert/--tls-key/--tls-ca, the
handshake awaited by us so that a failed one is logged, and the certificate reloaded in place.

Every TLS listener shares one `ssl.SSLContext`. Reloading loads the new files into it: a
connection copies the certificate when its handshake starts, so connections already open keep
theirs and new ones get the new certificate; nothing is dropped.

asyncio's own TLS servers say nothing when a handshake fails (a plain-text client on a TLS
port, an untrusted client certificate): here a failed handshake is one log line naming the
peer and the reason, and nothing else.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any

from broker.admission import LISTEN_BACKLOG

log = logging.getLogger(__name__)


class TlsFiles:
    """The PEM files of a context; `verify_peer` requires a client certificate signed by `ca`."""

    def __init__(self, cert: str, key: str, ca: str | None, verify_peer: bool) -> None:
        if verify_peer and not ca:
            raise ValueError("verifying client certificates (tls_verify_peer) needs tls_ca")
        self.cert = cert
        self.key = key
        self.ca = ca
        self.verify_peer = verify_peer


def server_context(files: TlsFiles) -> ssl.SSLContext:
    """TLS 1.2 or later with the default (forward-secret, AEAD) ciphers of Python's ssl."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load(context, files)
    if files.verify_peer:
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _load(context: ssl.SSLContext, files: TlsFiles) -> None:
    context.load_cert_chain(files.cert, files.key)
    if files.ca:
        context.load_verify_locations(cafile=files.ca)


class Reloader:
    """The contexts built from files, reloaded together (on SIGHUP)."""

    def __init__(self) -> None:
        self._contexts: list[tuple[ssl.SSLContext, TlsFiles]] = []

    def add(self, context: ssl.SSLContext, files: TlsFiles) -> ssl.SSLContext:
        self._contexts.append((context, files))
        return context

    def reload(self) -> None:
        """Load each context's files again. The files are tried in a scratch context first:
        a bad file (a key that does not match, a half-written PEM) leaves the context as it
        was and raises."""
        for _context, files in self._contexts:
            _load(ssl.create_default_context(ssl.Purpose.CLIENT_AUTH), files)
        for context, files in self._contexts:
            _load(context, files)


class TlsListener(asyncio.AbstractServer):
    """A TLS port: accepts sockets, and hands each to `loop.connect_accepted_socket` for its
    handshake, so that one that fails is seen (and logged) here.

    `loop.create_server(ssl=...)` drops failed handshakes silently, and upgrading its
    connections with `start_tls` loses the bytes that come before the upgrade (uvloop starts
    reading when the connection is made, paused or not)."""

    def __init__(
        self,
        sock: socket.socket,
        factory: Callable[[], asyncio.BaseProtocol],
        context: ssl.SSLContext,
        label: str,
        handshake_timeout: float,
    ) -> None:
        self.sock = sock
        self.factory = factory
        self.context = context
        self.label = label
        self.handshake_timeout = handshake_timeout
        self._loop = asyncio.get_running_loop()
        self._handshakes: set[asyncio.Task[None]] = set()
        self._accepting = self._loop.create_task(self._accept())

    async def _accept(self) -> None:
        while True:
            try:
                conn, peer = await self._loop.sock_accept(self.sock)
            except OSError as exc:  # out of file descriptors, for one: try again shortly
                log.warning("%s: accepting a connection failed: %s", self.label, exc)
                await asyncio.sleep(1.0)
                continue
            task = self._loop.create_task(self._handshake(conn, peer))
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)

    async def _handshake(self, conn: socket.socket, peer: Any) -> None:
        try:
            await self._loop.connect_accepted_socket(
                self.factory,
                conn,
                ssl=self.context,
                ssl_handshake_timeout=self.handshake_timeout,
            )
        except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
            log.info(
                "%s: TLS handshake with %s failed: %s", self.label, _address(peer), _reason(exc)
            )
            conn.close()

    def close(self) -> None:
        self._accepting.cancel()
        for task in self._handshakes:
            task.cancel()
        self.sock.close()

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return not self._accepting.done()

    async def start_serving(self) -> None:
        """It serves from the start."""

    async def serve_forever(self) -> None:
        await asyncio.shield(self._accepting)

    async def wait_closed(self) -> None:
        await asyncio.gather(self._accepting, *self._handshakes, return_exceptions=True)


async def serve(
    factory: Callable[[], asyncio.BaseProtocol],
    context: ssl.SSLContext,
    host: str,
    port: int,
    label: str,
    handshake_timeout: float,
) -> asyncio.AbstractServer:
    """A TLS listener whose connections reach `factory`'s protocols once their handshake is
    done; a failed handshake is logged (one line) and the connection closed."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=LISTEN_BACKLOG)
    sock.setblocking(False)
    return TlsListener(sock, factory, context, label, handshake_timeout)


def peer_user(transport: asyncio.BaseTransport) -> str | None:
    """The common name of the client's certificate, when the handshake verified one."""
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    cert: Any = ssl_object.getpeercert()
    for rdn in (cert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


def _address(peer: Any) -> str:
    return f"{peer[0]}:{peer[1]}" if peer else "an unknown peer"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__
