"""What every protocol's asyncio layer shares, around its sans-IO connection.

Registering with the gateway, writing the connection's output once per loop turn, flow control
in both directions (publishers paused by resource alarms, deliveries paused while the client
does not read), and the calls the node makes on every connection whatever its protocol.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from typing import Any

from broker.core.model import Deliver
from broker.gateway import Gateway


def is_loopback(peer: Any) -> bool:
    if not peer:
        return False
    try:
        return ipaddress.ip_address(peer[0]).is_loopback
    except ValueError:
        return False


def source_of(peer: Any) -> str:
    """The client's address, as logged and as refused logins are counted by."""
    return str(peer[0]) if isinstance(peer, tuple) and peer else ""


class ClientProtocol(asyncio.Protocol):
    """Subclasses create `self.conn` in `connection_made` and write its output in `flush`."""

    # Slots: a node holds one per client connection, thousands of them.
    __slots__ = (
        "gateway",
        "loop",
        "transport",
        "conn",
        "_flush_scheduled",
        "_last_received",
        "_reading_paused",
        "_hold_timer",
        "connected_at",
        "__weakref__",
    )

    #: the sans-IO connection: id, user, vhost, has_published, deliver, set_writable, ...
    conn: Any

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.conn = None
        self._flush_scheduled = False
        self._last_received = time.monotonic()
        self._reading_paused = False
        self._hold_timer: asyncio.TimerHandle | None = None
        #: ms since the epoch, shown to operators (info)
        self.connected_at = int(time.time() * 1000)

    # -- asyncio callbacks ---------------------------------------------------------------

    def connection_lost(self, exc: Exception | None) -> None:
        if self._hold_timer is not None:
            self._hold_timer.cancel()
        self.cancel_timers()
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.connection_lost()
            self.gateway.connection_closed(conn.id)
        # Letting go of the connection breaks the cycle through its output callback (our
        # schedule_flush): the node collects cycles rarely (cli.serve), reference counting
        # frees the connection now.

    def eof_received(self) -> bool | None:
        return None

    def pause_writing(self) -> None:
        if self.conn is not None:
            self.conn.set_writable(False)

    def resume_writing(self) -> None:
        if self.conn is not None:
            self.conn.set_writable(True)

    def cancel_timers(self) -> None:
        """Stop the protocol's timers (handshake, heartbeats, keepalive)."""

    # -- output --------------------------------------------------------------------------

    def schedule_flush(self) -> None:
        """The connection has output: write it at the end of this loop turn, all at once."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        raise NotImplementedError

    def output_held(self) -> bool:
        """Whether the connection's output waits: a refused login is answered after the delay
        the gateway gave (broker.login_guard), by a timer, never by blocking the loop."""
        conn = self.conn
        if conn is not None and conn.output_delay > 0:
            self._hold_timer = self.loop.call_later(conn.output_delay, self._release_output)
            conn.output_delay = 0.0
        return self._hold_timer is not None

    def _release_output(self) -> None:
        self._hold_timer = None
        self.flush()

    # -- flow control --------------------------------------------------------------------

    def pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()

    def set_blocked(self, reason: str | None) -> None:
        """A resource alarm started (reason) or ended (None): pause or resume publishers."""
        if reason is None:
            self.resume_reading()
        elif self.conn is not None and self.conn.has_published:
            self.pause_reading()

    # -- what the node asks of every connection ------------------------------------------

    def deliver(self, effect: Deliver) -> None:
        if self.conn is not None:
            self.conn.deliver(effect)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def channel_count(self) -> int:
        return 0

    def deliver_reply(
        self,
        channel: int,
        consumer_tag: str,
        exchange: str,
        routing_key: str,
        properties: dict[str, Any],
        body: bytes,
    ) -> bool:
        """Direct reply-to is AMQP's: other protocols have no reply consumers."""
        return False

    def info(self) -> dict[str, Any]:
        """What operators see of the connection (gateway.ClientConnection.info)."""
        transport, conn = self.transport, self.conn
        peer = local = None
        ssl = False
        if transport is not None:
            peer = transport.get_extra_info("peername")
            local = transport.get_extra_info("sockname")
            ssl = transport.get_extra_info("sslcontext") is not None
        user = getattr(conn, "user", None)
        return {
            "protocol": self.protocol_name(),
            "user": user.name if user is not None else None,
            "vhost": (conn.vhost or None) if conn is not None else None,
            "peer_host": _host(peer),
            "peer_port": _port(peer),
            "host": _host(local),
            "port": _port(local),
            "ssl": ssl,
            "connected_at": self.connected_at,
            "channels": self.channel_count(),
            **self.protocol_info(),
        }

    def protocol_name(self) -> str:
        raise NotImplementedError

    def protocol_info(self) -> dict[str, Any]:
        """The protocol's own fields of `info`."""
        return {}

    def session(self) -> tuple[str | None, str | None]:
        conn = self.conn
        if conn is None or conn.user is None:
            return None, None
        return conn.user.name, conn.vhost or None


def _host(address: Any) -> str | None:
    return str(address[0]) if isinstance(address, tuple) and address else None


def _port(address: Any) -> int | None:
    return int(address[1]) if isinstance(address, tuple) and len(address) > 1 else None
