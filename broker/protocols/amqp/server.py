"""The thin asyncio layer: sockets in and out of the sans-IO AMQP connection, plus timers."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from typing import Any

from broker.core.model import ConsumerCancelled, Deliver
from broker.protocols.amqp.codec import HEARTBEAT_FRAME
from broker.protocols.amqp.connection import AMQPConnection, Settings, State

log = logging.getLogger(__name__)

#: seconds to wait for connection.close-ok after we sent connection.close
CLOSE_OK_TIMEOUT = 3.0


def is_loopback(peer: Any) -> bool:
    if not peer:
        return False
    try:
        return ipaddress.ip_address(peer[0]).is_loopback
    except ValueError:
        return False


class AMQPProtocol(asyncio.Protocol):
    def __init__(self, node: Any, settings: Settings, handshake_timeout: float) -> None:
        self.node = node
        self.settings = settings
        self.handshake_timeout = handshake_timeout
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.conn: AMQPConnection | None = None
        self._flush_scheduled = False
        self._last_received = time.monotonic()
        self._sent_since_tick = False
        self._timers: list[asyncio.TimerHandle] = []
        self._reading_paused = False
        self._close_timer: asyncio.TimerHandle | None = None

    # -- asyncio callbacks ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        conn_id = self.node.connection_opened(self)
        self.conn = AMQPConnection(
            conn_id, self.node, self.settings, is_loopback(peer), self._schedule_flush
        )
        self._timers.append(self.loop.call_later(self.handshake_timeout, self._check_handshake))

    def data_received(self, data: bytes) -> None:
        assert self.conn is not None
        self._last_received = time.monotonic()
        was_open = self.conn.state is State.OPEN
        self.conn.receive_data(data)
        if not was_open and self.conn.state is State.OPEN:
            self._start_heartbeats()
        if self.node.blocked_reason and self.conn.has_published:
            self.pause_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in self._timers:
            timer.cancel()
        if self.conn is not None:
            self.conn.connection_lost()
            self.node.connection_closed(self.conn.id)

    def eof_received(self) -> bool | None:
        return None

    def pause_writing(self) -> None:
        if self.conn is not None:
            self.conn.set_writable(False)

    def resume_writing(self) -> None:
        if self.conn is not None:
            self.conn.set_writable(True)

    # -- output --------------------------------------------------------------------------

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        if self.conn is None or self.transport is None or self.transport.is_closing():
            return
        data = self.conn.data_to_send()
        if data:
            self.transport.write(data)
            self._sent_since_tick = True
        if self.conn.should_close:
            self.transport.close()
        elif self.conn.state is State.CLOSING and self._close_timer is None:
            # We sent connection.close: give the client a moment to answer close-ok.
            self._close_timer = self.loop.call_later(CLOSE_OK_TIMEOUT, self.abort)
            self._timers.append(self._close_timer)

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
        if self.conn is None:
            return
        self.conn.set_blocked(reason)
        if reason is None:
            self.resume_reading()
        elif self.conn.has_published:
            self.pause_reading()

    def deliver(self, effect: Deliver) -> None:
        if self.conn is not None:
            self.conn.deliver(effect)

    def consumer_cancelled(self, effect: ConsumerCancelled) -> None:
        if self.conn is not None:
            self.conn.consumer_cancelled(effect)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def force_close(self, reason: str) -> None:
        if self.conn is not None:
            self.conn.close_with(320, reason)
            self.flush()

    def session(self) -> tuple[str | None, str | None]:
        if self.conn is None or self.conn.user is None:
            return None, None
        return self.conn.user.name, self.conn.vhost or None

    # -- timers --------------------------------------------------------------------------

    def _check_handshake(self) -> None:
        if self.conn is not None and self.conn.state is not State.OPEN and self.transport:
            log.info("closing connection %s: handshake timeout", self.conn.id)
            self.transport.close()

    def _start_heartbeats(self) -> None:
        assert self.conn is not None
        interval = self.conn.heartbeat
        if interval > 0:
            self._timers.append(self.loop.call_later(interval / 2, self._heartbeat_tick))

    def _heartbeat_tick(self) -> None:
        if self.conn is None or self.transport is None or self.transport.is_closing():
            return
        interval = self.conn.heartbeat
        if time.monotonic() - self._last_received > 2 * interval:
            log.warning(
                "closing connection %s: missed heartbeats from client, timeout: %ss",
                self.conn.id,
                interval,
            )
            self.transport.close()
            return
        if not self._sent_since_tick:
            self.transport.write(HEARTBEAT_FRAME)
        self._sent_since_tick = False
        self._timers.append(self.loop.call_later(interval / 2, self._heartbeat_tick))
