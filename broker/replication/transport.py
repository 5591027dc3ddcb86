"""The links between the nodes of a cluster: the sans-IO links of `framing` on asyncio sockets.

Each node dials each peer and sends on that connection only; it receives on the connections
the others dialed. A dialed link that fails is dialed again after a short backoff (50 ms,
doubling up to 1 s, back to 50 ms once a link is up): how fast a cluster fails over depends
on it. Messages queued in one loop turn leave in one write. A peer that reads slowly costs at
most `max_buffered` (plus one message) of memory: past that, `send` refuses, as Raft expects
of a lossy network.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any

from broker.replication.framing import DialerLink, LinkError, ListenerLink

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 5.0
BACKOFF_MIN = 0.05
BACKOFF_MAX = 1.0
UNAUTHENTICATED = "cluster links are not authenticated: set --cluster-secret"


class _Connection(asyncio.Protocol):
    """One connection, dialed or accepted: bytes in and out of its link, and its handshake timer."""

    def __init__(self, links: PeerLinks, link: DialerLink | ListenerLink) -> None:
        self.links = links
        self.link = link
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        #: None once the handshake is over, or why it failed
        self.handshake: asyncio.Future[str | None] = self.loop.create_future()
        self.closed: asyncio.Future[None] = self.loop.create_future()
        self._timer: asyncio.TimerHandle | None = None
        self._flush_scheduled = False

    def __repr__(self) -> str:
        direction = "to" if isinstance(self.link, DialerLink) else "from"
        return f"the link {direction} node {self.link.peer}"

    # -- asyncio callbacks ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.links._connections.add(self)
        self._timer = self.loop.call_later(self.links.handshake_timeout, self._too_slow)
        self.flush()

    def data_received(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        link = self.link
        was_open = link.is_open
        link.receive_data(data)
        deliver = self.links.on_message
        try:
            for message in link.messages():
                deliver(link.peer, message)  # type: ignore[arg-type]  # known once open
        except LinkError as exc:
            self._fail(str(exc))
            return
        self.flush()
        if link.is_open and not was_open:
            self._cancel_timer()
            self.handshake.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self.links._connections.discard(self)
        if not self.handshake.done():
            self.handshake.set_result(f"connection lost: {exc or 'closed by the other end'}")
        self.closed.set_result(None)

    # -- output --------------------------------------------------------------------------

    def send(self, message: Any) -> bool:
        transport = self.transport
        assert isinstance(self.link, DialerLink) and transport is not None
        if transport.is_closing():
            return False
        if self.link.buffered + transport.get_write_buffer_size() >= self.links.max_buffered:
            return False
        self.link.send(message)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)
        return True

    def flush(self) -> None:
        self._flush_scheduled = False
        data = self.link.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # -- failures ------------------------------------------------------------------------

    def _fail(self, reason: str) -> None:
        """Close after sending what the link has to say (a refusal, say), and tell why."""
        if self.handshake.done():
            log.warning("closing %r: %s", self, reason)
        else:
            self.handshake.set_result(reason)
        self.flush()
        if self.transport is not None:
            self.transport.close()

    def _too_slow(self) -> None:
        self._fail(f"no handshake within {self.links.handshake_timeout} s")
        self.abort()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class PeerLinks:
    """This node's links to the other nodes of its cluster: messages out to them, and in.

    `on_message(sender, message)` is called for each message as it is read, in order per
    sender; if it raises, that connection is closed. `on_peer(peer, up)` follows the link this
    node sends to `peer` on (what `connected` says), never the one it receives on. With TLS
    contexts, both directions use them; the secret is checked inside TLS as well.
    """

    def __init__(
        self,
        node_id: int,
        listen: tuple[str, int],
        peers: dict[int, tuple[str, int]],
        on_message: Callable[[int, Any], None],
        *,
        secret: bytes | None = None,
        ssl_server: ssl.SSLContext | None = None,
        ssl_client: ssl.SSLContext | None = None,
        on_peer: Callable[[int, bool], None] | None = None,
        max_frame: int = 64 << 20,
        max_buffered: int = 64 << 20,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
    ) -> None:
        if (ssl_server is None) != (ssl_client is None):
            raise ValueError("TLS on cluster links needs both ssl_server and ssl_client")
        self.node_id = node_id
        self._listen = listen
        self.on_message = on_message
        self.on_peer = on_peer
        self.max_frame = max_frame
        self.max_buffered = max_buffered
        self.handshake_timeout = handshake_timeout
        self.port = 0
        self._peers: dict[int, tuple[str, int]] = {}
        self._secret = secret
        self._ssl_server = ssl_server
        self._ssl_client = ssl_client
        self._server: asyncio.Server | None = None
        #: one task per peer, keeping a link to it open
        self._dialers: dict[int, asyncio.Task[None]] = {}
        #: the links this node sends on, by peer: only those through the handshake
        self._out: dict[int, _Connection] = {}
        #: the links this node receives on, by peer: only those through the handshake
        self._in: dict[int, _Connection] = {}
        #: every connection, in any state: what close() aborts
        self._connections: set[_Connection] = set()
        self.set_peers(peers)

    async def start(self) -> None:
        """Listen, and dial every peer (in the background: `on_peer` tells when links are up)."""
        if self._secret is None:
            log.warning(UNAUTHENTICATED)
        loop = asyncio.get_running_loop()
        host, port = self._listen
        self._server = await loop.create_server(
            self._accept,
            host,
            port,
            ssl=self._ssl_server,
            ssl_handshake_timeout=self.handshake_timeout if self._ssl_server else None,
            reuse_address=True,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        for peer, address in self._peers.items():
            self._dial_forever(peer, address)

    async def close(self) -> None:
        """Stop listening and dialing, and drop every link (without calling `on_peer`)."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        tasks = list(self._dialers.values())
        for task in tasks:
            task.cancel()
        self._dialers.clear()
        self._out.clear()
        await asyncio.gather(*tasks, return_exceptions=True)
        connections = list(self._connections)
        for conn in connections:
            conn.abort()
        await asyncio.gather(*(conn.closed for conn in connections))
        if server is not None:
            await server.wait_closed()

    def send(self, peer: int, message: Any) -> bool:
        """Queue one message (plain data) for `peer`, to leave at the end of this loop turn.

        False, and nothing sent, when there is no link to `peer` right now or its unsent output
        has reached max_buffered. Never blocks. Messages to one peer arrive in order, each at
        most once. A message that packs to more than max_frame raises FrameTooLarge.
        """
        conn = self._out.get(peer)
        return conn is not None and conn.send(message)

    def connected(self, peer: int) -> bool:
        """Whether there is a link through the handshake to send to `peer` on."""
        return peer in self._out

    def set_peers(self, peers: dict[int, tuple[str, int]]) -> None:
        """The membership changed: dial new peers, redial moved ones, drop the departed."""
        if self.node_id in peers:
            raise ValueError(f"node {self.node_id} cannot be its own peer")
        old, self._peers = self._peers, dict(peers)
        for peer, address in old.items():
            if self._peers.get(peer) != address:
                self._stop_dialing(peer)
            if peer not in self._peers and peer in self._in:
                self._in.pop(peer).abort()
        if self._server is not None:
            for peer, address in self._peers.items():
                if peer not in self._dialers:
                    self._dial_forever(peer, address)

    # -- dialing -------------------------------------------------------------------------

    def _dial_forever(self, peer: int, address: tuple[str, int]) -> None:
        task = asyncio.get_running_loop().create_task(self._keep_link(peer, address))
        task.add_done_callback(_stopped)
        self._dialers[peer] = task

    def _stop_dialing(self, peer: int) -> None:
        task = self._dialers.pop(peer, None)
        if task is not None:
            task.cancel()
        conn = self._out.pop(peer, None)
        if conn is not None:
            conn.abort()
            self._link_changed(peer, False)

    async def _keep_link(self, peer: int, address: tuple[str, int]) -> None:
        """Keep a link open to `peer` until cancelled: dial, wait for it to drop, back off."""
        delay = BACKOFF_MIN
        last_failure = ""
        while True:
            conn, failure = await self._dial(peer, address)
            if conn is not None:
                delay, last_failure = BACKOFF_MIN, ""
                self._out[peer] = conn
                log.info("link to node %d at %s:%d up", peer, *address)
                self._link_changed(peer, True)
                await asyncio.shield(conn.closed)  # cancelling us must not cancel it
                # set_peers or close() may have taken the link away already
                if self._out.get(peer) is conn:
                    del self._out[peer]
                    log.info("link to node %d down", peer)
                    self._link_changed(peer, False)
            elif failure != last_failure:  # once per new reason, not every retry
                log.warning("no link to node %d at %s:%d: %s", peer, *address, failure)
                last_failure = failure
            await asyncio.sleep(delay)
            delay = min(2 * delay, BACKOFF_MAX)

    async def _dial(self, peer: int, address: tuple[str, int]) -> tuple[_Connection | None, str]:
        """A link through the handshake, or None and why not."""
        loop = asyncio.get_running_loop()
        conn = _Connection(self, DialerLink(self.node_id, peer, self._secret, self.max_frame))
        try:
            async with asyncio.timeout(self.handshake_timeout):
                await loop.create_connection(
                    lambda: conn,
                    *address,
                    ssl=self._ssl_client,
                    ssl_handshake_timeout=self.handshake_timeout if self._ssl_client else None,
                )
                failure = await asyncio.shield(conn.handshake)
        except TimeoutError:
            failure = f"no handshake within {self.handshake_timeout} s"
        except OSError as exc:  # refused, unreachable, TLS (ssl.SSLError is an OSError)
            failure = str(exc) or type(exc).__name__
        except BaseException:
            conn.abort()
            raise
        if failure is None:
            return conn, ""
        conn.abort()
        return None, failure

    def _link_changed(self, peer: int, up: bool) -> None:
        if self.on_peer is not None:
            self.on_peer(peer, up)

    # -- accepting -----------------------------------------------------------------------

    def _accept(self) -> _Connection:
        link = ListenerLink(self.node_id, self._is_peer, self._secret, self.max_frame)
        conn = _Connection(self, link)
        conn.handshake.add_done_callback(lambda _: self._accepted(conn))
        return conn

    def _is_peer(self, node: int) -> bool:
        return node in self._peers

    def _accepted(self, conn: _Connection) -> None:
        failure = conn.handshake.result()
        if failure is not None:
            peername = conn.transport.get_extra_info("peername") if conn.transport else None
            log.warning("refused a link from %s: %s", peername, failure)
            return
        peer = conn.link.peer
        assert peer is not None
        # a peer dials once at a time: an older link from it is dead, whether we saw it or not
        old = self._in.get(peer)
        if old is not None:
            old.abort()
        self._in[peer] = conn
        conn.closed.add_done_callback(lambda _: self._in_closed(peer, conn))

    def _in_closed(self, peer: int, conn: _Connection) -> None:
        if self._in.get(peer) is conn:
            del self._in[peer]


def _stopped(task: asyncio.Task[None]) -> None:
    """A dialer ends only when cancelled: anything else is a bug (in `on_peer`, say) to show."""
    if not task.cancelled() and task.exception() is not None:
        log.error("no longer dialing a peer", exc_info=task.exception())
