"""The thin asyncio layer: sockets in and out of the sans-IO AMQP connection, plus timers.

The handshake deadline and the heartbeats of every connection are kept by one TimerWheel per
node (broker.protocols.timer_wheel), not by loop timers of their own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, ClassVar

from broker.core.model import ConsumerCancelled
from broker.gateway import Gateway
from broker.protocols.amqp.codec import HEARTBEAT_FRAME
from broker.protocols.amqp.connection import AMQPConnection, Settings, State
from broker.protocols.timer_wheel import TimerWheel
from broker.protocols.transport import ClientProtocol, is_loopback, source_of
from broker.tls import peer_user

log = logging.getLogger(__name__)

#: seconds to wait for connection.close-ok after we sent connection.close
CLOSE_OK_TIMEOUT = 3.0
#: states before the connection is open: its deadline is the handshake's
_HANDSHAKE = (State.AWAIT_HEADER, State.AWAIT_START_OK, State.AWAIT_TUNE_OK, State.AWAIT_OPEN)


class AMQPProtocol(ClientProtocol):
    __slots__ = (
        "settings",
        "handshake_timeout",
        "deadlines",
        "deadline_slot",
        "_sent_since_tick",
        "_close_timer",
    )

    conn: AMQPConnection | None

    #: the protocol's name in the node's counters (Gateway.traffic)
    protocol: ClassVar[str] = "amqp091"

    def __init__(
        self,
        gateway: Gateway,
        settings: Settings,
        handshake_timeout: float,
        deadlines: TimerWheel,
    ) -> None:
        super().__init__(gateway)
        self.settings = settings
        self.handshake_timeout = handshake_timeout
        #: the node's AMQP deadlines (handshake, heartbeat ticks), and this connection's slot
        self.deadlines = deadlines
        self.deadline_slot: int | None = None
        self._sent_since_tick = False
        self._close_timer: asyncio.TimerHandle | None = None

    # -- asyncio callbacks ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        conn_id = self.gateway.connection_opened(self)
        self.gateway.traffic[self.protocol].connections += 1
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
        self.deadlines.watch(self, time.monotonic() + self.handshake_timeout)

    def data_received(self, data: bytes) -> None:
        assert self.conn is not None
        self._last_received = time.monotonic()
        was_open = self.conn.state is State.OPEN
        self.conn.receive_data(data)
        self.gateway.read_done()
        if not was_open and self.conn.state is State.OPEN:
            # The handshake deadline becomes the first heartbeat tick, if any.
            interval = self.conn.heartbeat
            if interval > 0:
                self.deadlines.watch(self, time.monotonic() + interval / 2)
            else:
                self.deadlines.forget(self)
        reason = self.gateway.blocked_reason
        if reason and self.conn.has_published:
            self.conn.set_blocked(reason)
            self.pause_reading()

    def cancel_timers(self) -> None:
        self.deadlines.forget(self)
        if self._close_timer is not None:
            self._close_timer.cancel()

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

    def protocol_name(self) -> str:
        return "AMQP 0-9-1"

    def protocol_info(self) -> dict[str, Any]:
        conn = self.conn
        if conn is None:
            return {}
        return {
            "client_properties": conn.client_properties,
            "frame_max": conn.frame_max,
            "channel_max": conn.channel_max,
            "heartbeat": conn.heartbeat,
            "channel_details": [
                {
                    "number": ch.number,
                    "prefetch_count": ch.prefetch,
                    "global_prefetch_count": ch.global_prefetch,
                    "confirm": ch.confirm,
                    "transactional": ch.tx,
                    "messages_unacknowledged": len(ch.unacked),
                    "consumer_count": len(ch.consumers),
                }
                for ch in conn.channels.values()
            ],
        }

    # -- deadlines -----------------------------------------------------------------------

    def deadline_due(self, now: float) -> float | None:
        """The handshake deadline until the connection is open, then a heartbeat tick every
        half interval: a heartbeat goes out unless something else did since the last tick,
        and a client silent for two intervals is closed."""
        conn, transport = self.conn, self.transport
        if conn is None or transport is None or transport.is_closing():
            return None
        if conn.state in _HANDSHAKE:
            log.info("closing connection %s: handshake timeout", conn.id)
            transport.close()
            return None
        interval = conn.heartbeat
        if interval <= 0:  # closing before it opened: the close-ok timer aborts it
            return None
        if self._reading_paused:
            # Not read (a resource alarm): the silence is the broker's, not the client's
            # (RabbitMQ pauses its heartbeat monitor while it blocks a connection too).
            self._last_received = now
        if now - self._last_received > 2 * interval:
            log.warning(
                "closing connection %s: missed heartbeats from client, timeout: %ss",
                conn.id,
                interval,
            )
            transport.close()
            return None
        if not self._sent_since_tick:
            transport.write(HEARTBEAT_FRAME)
        self._sent_since_tick = False
        return now + interval / 2
