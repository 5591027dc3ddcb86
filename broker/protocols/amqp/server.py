"""The thin asyncio layer: sockets in and out of the sans-IO AMQP connection, plus timers."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from broker.core.model import ConsumerCancelled
from broker.gateway import Gateway
from broker.protocols.amqp.codec import HEARTBEAT_FRAME
from broker.protocols.amqp.connection import AMQPConnection, Settings, State
from broker.protocols.transport import ClientProtocol, is_loopback, source_of
from broker.tls import peer_user

log = logging.getLogger(__name__)

#: seconds to wait for connection.close-ok after we sent connection.close
CLOSE_OK_TIMEOUT = 3.0


class AMQPProtocol(ClientProtocol):
    __slots__ = (
        "settings",
        "handshake_timeout",
        "_sent_since_tick",
        "_handshake_timer",
        "_heartbeat_timer",
        "_close_timer",
    )

    conn: AMQPConnection | None

    def __init__(self, gateway: Gateway, settings: Settings, handshake_timeout: float) -> None:
        super().__init__(gateway)
        self.settings = settings
        self.handshake_timeout = handshake_timeout
        self._sent_since_tick = False
        # One handle per timer, not a list of every one ever started: a long-lived connection
        # starts a heartbeat timer per half interval.
        self._handshake_timer: asyncio.TimerHandle | None = None
        self._heartbeat_timer: asyncio.TimerHandle | None = None
        self._close_timer: asyncio.TimerHandle | None = None

    # -- asyncio callbacks ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        conn_id = self.gateway.connection_opened(self)
        refusal = self.gateway.admit(conn_id, peer, self.abort)
        self.conn = AMQPConnection(
            conn_id,
            self.gateway,
            self.settings,
            is_loopback(peer),
            self.schedule_flush,
            refusal,
            source=source_of(peer),
        )
        self.conn.cert_user = peer_user(transport)
        self._handshake_timer = self.loop.call_later(self.handshake_timeout, self._check_handshake)

    def data_received(self, data: bytes) -> None:
        assert self.conn is not None
        self._last_received = time.monotonic()
        was_open = self.conn.state is State.OPEN
        self.conn.receive_data(data)
        self.gateway.read_done()
        if not was_open and self.conn.state is State.OPEN:
            self._start_heartbeats()
        reason = self.gateway.blocked_reason
        if reason and self.conn.has_published:
            self.conn.set_blocked(reason)
            self.pause_reading()

    def cancel_timers(self) -> None:
        for timer in (self._handshake_timer, self._heartbeat_timer, self._close_timer):
            if timer is not None:
                timer.cancel()

    # -- output --------------------------------------------------------------------------

    def flush(self) -> None:
        self._flush_scheduled = False
        if self.conn is None or self.transport is None or self.transport.is_closing():
            return
        if self.output_held():
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

    # -- what the node asks of every connection ------------------------------------------

    def set_blocked(self, reason: str | None) -> None:
        if self.conn is not None:
            self.conn.set_blocked(reason)  # connection.blocked / unblocked to capable clients
        super().set_blocked(reason)

    def consumer_cancelled(self, effect: ConsumerCancelled) -> None:
        if self.conn is not None:
            self.conn.consumer_cancelled(effect)

    def deliver_reply(
        self,
        channel: int,
        consumer_tag: str,
        exchange: str,
        routing_key: str,
        properties: dict[str, Any],
        body: bytes,
    ) -> bool:
        if self.conn is None:
            return False
        return self.conn.deliver_reply(
            channel, consumer_tag, exchange, routing_key, properties, body
        )

    def force_close(self, reason: str) -> None:
        if self.conn is not None:
            self.conn.close_with(320, reason)
            self.flush()

    def channel_count(self) -> int:
        return 0 if self.conn is None else len(self.conn.channels)

    # -- timers --------------------------------------------------------------------------

    def _check_handshake(self) -> None:
        if self.conn is not None and self.conn.state is not State.OPEN and self.transport:
            log.info("closing connection %s: handshake timeout", self.conn.id)
            self.transport.close()

    def _start_heartbeats(self) -> None:
        assert self.conn is not None
        interval = self.conn.heartbeat
        if interval > 0:
            self._heartbeat_timer = self.loop.call_later(interval / 2, self._heartbeat_tick)

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
        self._heartbeat_timer = self.loop.call_later(interval / 2, self._heartbeat_tick)
