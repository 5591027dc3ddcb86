"""The thin asyncio layer: sockets (plain or WebSocket) in and out of the sans-IO MQTT connection.

Besides moving bytes it owns the deadlines: a connection that sends no CONNECT within the
handshake timeout is closed, and an open one that is silent for 1.5 x its keepalive is closed
as a network failure (its will is published). Every connection's deadline is kept by one
TimerWheel per node (broker.protocols.timer_wheel), not by a loop timer of its own.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
import time
from typing import Any, ClassVar

from broker.admission import LISTEN_BACKLOG
from broker.core.model import ConsumerCancelled
from broker.gateway import Gateway
from broker.protocols.mqtt.connection import (
    OVERFLOW_POLICIES,
    MQTTConnection,
    Settings,
    State,
)
from broker.protocols.mqtt.websocket import WebSocketServer
from broker.protocols.timer_wheel import TimerWheel
from broker.protocols.transport import ClientProtocol, is_loopback, source_of
from broker.tls import peer_user
from broker.tls import serve as serve_tls

log = logging.getLogger(__name__)

#: states in which the keepalive is watched: CONNECT accepted, not closed yet
_CONNECTED = (State.OPENING, State.OPEN)

WS_PATH = "/mqtt"
WS_SUBPROTOCOL = "mqtt"


class MQTTProtocol(ClientProtocol):
    # Slots: a node holds one per device, and thousands of devices sit idle.
    __slots__ = ("settings", "handshake_timeout", "ws", "deadlines", "deadline_slot")

    conn: MQTTConnection | None

    #: the protocol's name in the node's counters (Gateway.traffic)
    protocol: ClassVar[str] = "mqtt"

    def __init__(
        self,
        gateway: Gateway,
        settings: Settings,
        handshake_timeout: float,
        websocket: bool,
        deadlines: TimerWheel,
    ) -> None:
        super().__init__(gateway)
        self.settings = settings
        self.handshake_timeout = handshake_timeout
        self.ws = (
            WebSocketServer(WS_PATH, WS_SUBPROTOCOL, settings.max_packet_size + 16)
            if websocket
            else None
        )
        #: the node's MQTT deadlines (handshake, keepalive), and this connection's slot in them
        self.deadlines = deadlines
        self.deadline_slot: int | None = None

    # -- asyncio callbacks ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        conn_id = self.gateway.connection_opened(self)
        self.gateway.traffic[self.protocol].connections += 1
        refusal = self.gateway.admit(conn_id, peer, self.abort)
        loopback = is_loopback(peer)
        self.conn = MQTTConnection(
            conn_id,
            self.gateway,
            self.settings,
            loopback,
            self.schedule_flush,
            refusal,
            source_of(peer),
        )
        self.conn.cert_user = peer_user(transport)
        self.deadlines.watch(self, time.monotonic() + self.handshake_timeout)

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        assert conn is not None
        self._last_received = time.monotonic()
        if self.ws is not None:
            data = self.ws.receive_data(data)
            self.schedule_flush()
            if not data:
                return
        was_waiting = conn.state is State.AWAIT_CONNECT
        conn.receive_data(data)
        self.gateway.read_done()
        if was_waiting and conn.state in _CONNECTED:
            # The CONNECT came: the handshake deadline becomes the keepalive's, if any.
            if conn.keepalive:
                self.deadlines.watch(self, self._last_received + 1.5 * conn.keepalive)
            else:
                self.deadlines.forget(self)
        if conn.held_back or (self.gateway.blocked_reason and conn.has_published):
            self.pause_reading()

    def cancel_timers(self) -> None:
        self.deadlines.forget(self)

    # -- output --------------------------------------------------------------------------

    def flush(self) -> None:
        self._flush_scheduled = False
        conn, transport, ws = self.conn, self.transport, self.ws
        if conn is None or transport is None or transport.is_closing() or self.output_held():
            return
        if self._reading_paused and not conn.held_back and not self.gateway.blocked_reason:
            self.resume_reading()  # the queues this publisher fed have room again
        data = conn.data_to_send()
        if ws is not None:
            head, payload = ws.data_to_send(), ws.wrap(data)
            if conn.should_close:
                ws.close()
            data = head + payload + ws.data_to_send()
            if ws.should_close and not conn.should_close:
                log.info("closing mqtt connection %s: %s", conn.id, ws.close_reason)
                conn.connection_lost()
        if data:
            transport.write(data)
        if conn.should_close or (ws is not None and ws.should_close):
            transport.close()

    # -- what the node asks of every connection ------------------------------------------

    def consumer_cancelled(self, effect: ConsumerCancelled) -> None:
        if self.conn is not None:
            self.conn.consumer_cancelled(effect.tag)

    def force_close(self, reason: str) -> None:
        if self.conn is not None:
            self.conn.close(reason, publish_will=True)
            self.flush()

    def protocol_name(self) -> str:
        return "Web MQTT 3.1.1" if self.ws is not None else "MQTT 3.1.1"

    def protocol_info(self) -> dict[str, Any]:
        conn = self.conn
        if conn is None:
            return {}
        return {
            "client_id": conn.client_id,
            "keepalive": conn.keepalive,
            "websocket": self.ws is not None,
        }

    # -- deadlines -----------------------------------------------------------------------

    def deadline_due(self, now: float) -> float | None:
        """The handshake deadline while CONNECT has not come, then the keepalive's: packets
        only note when they came, and the deadline moves on when it is reached."""
        conn = self.conn
        if conn is None or self.transport is None:
            return None
        if conn.state is State.AWAIT_CONNECT:
            log.info("closing mqtt connection %s: no CONNECT within the timeout", conn.id)
            conn.connection_lost()
            self.transport.close()
            return None
        if conn.state not in _CONNECTED:
            return None
        if self._reading_paused:
            # Not read (flow control, an alarm): the silence is the broker's, not the client's.
            self._last_received = now
        deadline = self._last_received + 1.5 * conn.keepalive
        if now >= deadline:
            conn.keepalive_expired()
            return None
        return deadline


async def start_listeners(
    gateway: Gateway, cfg: Any, tls: ssl.SSLContext | None = None
) -> list[asyncio.AbstractServer]:
    """MQTT on the plain port and over WebSocket, and with a TLS context over TLS and secure
    WebSocket."""
    settings = settings_from_config(cfg)
    deadlines = TimerWheel()
    loop = asyncio.get_running_loop()
    servers: list[asyncio.AbstractServer] = []
    for port, websocket in ((cfg.mqtt_port, False), (cfg.mqtt_ws_port, True)):
        if not port:  # 0 turns the listener off
            continue
        server = await loop.create_server(
            functools.partial(
                MQTTProtocol, gateway, settings, cfg.handshake_timeout, websocket, deadlines
            ),
            cfg.host,
            port,
            reuse_address=True,
            backlog=LISTEN_BACKLOG,
        )
        servers.append(server)
    if tls is None:
        return servers
    for port, websocket, label in (
        (cfg.mqtts_port, False, "mqtts"),
        (cfg.mqtt_wss_port, True, "mqtt wss"),
    ):
        if not port:
            continue
        factory = functools.partial(
            MQTTProtocol, gateway, settings, cfg.handshake_timeout, websocket, deadlines
        )
        servers.append(await serve_tls(factory, tls, cfg.host, port, label, cfg.handshake_timeout))
    return servers


def settings_from_config(cfg: Any) -> Settings:
    if cfg.mqtt_overflow not in OVERFLOW_POLICIES:
        choices = ", ".join(OVERFLOW_POLICIES)
        raise ValueError(f"mqtt_overflow must be one of {choices}, not {cfg.mqtt_overflow!r}")
    return Settings(
        max_packet_size=cfg.mqtt_max_packet_size,
        max_inflight=cfg.mqtt_max_inflight,
        max_queued=cfg.mqtt_max_queued,
        overflow=cfg.mqtt_overflow,
        allow_anonymous=cfg.mqtt_allow_anonymous,
        anonymous_user=cfg.mqtt_anonymous_user,
        default_vhost=cfg.mqtt_vhost,
    )
