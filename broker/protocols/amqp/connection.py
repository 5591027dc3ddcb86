"""The sans-IO AMQP 0-9-1 server connection: bytes in, core commands out, bytes back.

`receive_data()` parses frames and drives the handshake and the channels; replies to the
client are queued in an output buffer that the network layer drains with `data_to_send()`.
Core work goes through the gateway, whose callbacks feed results back in. Nothing here
touches a socket or the event loop, so tests can drive it byte by byte.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from enum import Enum
from typing import Any

from pamqp import commands as spec
from pamqp import decode as pdecode
from pamqp.base import Frame

import broker
from broker.core import commands as c
from broker.core.errors import AccessRefused, BrokerError, ConnectionLimit, NotAllowed
from broker.core.model import ConsumerCancelled, Deliver, User
from broker.gateway import Gateway
from broker.protocols.amqp import codec
from broker.protocols.amqp.channel import Channel
from broker.protocols.amqp.errors import AMQPError, ConnectionError_, reply_text

log = logging.getLogger(__name__)

#: frame_max offered before tune, and the floor the spec sets for it
FRAME_MIN_SIZE = 4096


class State(Enum):
    AWAIT_HEADER = 0
    AWAIT_START_OK = 1
    AWAIT_TUNE_OK = 2
    AWAIT_OPEN = 3
    OPEN = 4
    CLOSING = 5  # we sent connection.close, waiting for close-ok
    CLOSED = 6


SERVER_CAPABILITIES = {
    "publisher_confirms": True,
    "exchange_exchange_bindings": True,
    "basic.nack": True,
    "consumer_cancel_notify": True,
    "connection.blocked": True,
    "consumer_priorities": True,
    "authentication_failure_close": True,
    "per_consumer_qos": True,
    "direct_reply_to": True,
}


class Settings:
    """Limits the server offers in connection.tune."""

    def __init__(
        self, channel_max: int = 2047, frame_max: int = 131072, heartbeat: int = 60
    ) -> None:
        self.channel_max = channel_max
        self.frame_max = frame_max
        self.heartbeat = heartbeat


class AMQPConnection:
    def __init__(
        self,
        connection_id: c.ConnectionId,
        gateway: Gateway,
        settings: Settings,
        peer_is_loopback: bool,
        on_output: Callable[[], None] | None = None,
        refusal: str | None = None,
        source: str = "",
    ) -> None:
        self.id = connection_id
        self.gateway = gateway
        self.settings = settings
        self.loopback = peer_is_loopback
        #: the common name of the client's verified TLS certificate: EXTERNAL logs in as it
        self.cert_user: str | None = None
        #: the client's address, for the log and the per-address slowing of refused logins
        self.source = source
        #: seconds the transport holds what follows a refused login (broker.login_guard)
        self.output_delay = 0.0
        self.on_output = on_output
        self.state = State.AWAIT_HEADER
        self.channel_max = settings.channel_max
        self.frame_max = settings.frame_max
        self.heartbeat = 0
        self.user: User | None = None
        self.vhost = ""
        self.client_properties: dict[str, Any] = {}
        self.channels: dict[int, Channel] = {}
        self.has_published = False
        #: the alarm reason this client was last told of with connection.blocked, if any
        self.told_blocked: str | None = None
        #: False while the client does not read what we send (transport buffer full)
        self.writable = True
        #: channels holding acks from the current read, flushed when it is parsed
        self.acks_pending: set[Channel] = set()
        self._buffer = bytearray()
        self._out: list[bytes] = []
        #: set once the transport should close after flushing
        self.should_close = False
        self.close_reason = ""
        #: why the node refuses this connection (its connection limits): told at
        #: connection.open, where RabbitMQ checks its own
        self.refusal = refusal

    # -- output --------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.state is State.CLOSED:
            return
        if not self._out and self.on_output is not None:
            self.on_output()
        self._out.append(data)

    def write_parts(self, parts: list[bytes]) -> None:
        """Queue several pieces of output; they are joined once, with everything else."""
        if self.state is State.CLOSED:
            return
        if not self._out and self.on_output is not None:
            self.on_output()
        self._out.extend(parts)

    def send_method(self, channel: int, method: Frame) -> None:
        self.write(codec.method_frame(channel, method))

    def data_to_send(self) -> bytes:
        for ch in self.channels.values():
            if ch.confirms_pending:
                ch.flush_confirms()
        out = b"".join(self._out)
        self._out.clear()
        return out

    def capability(self, name: str) -> bool:
        caps = self.client_properties.get("capabilities") or {}
        return bool(caps.get(name))

    # -- input ---------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        if self.state is State.CLOSED:
            return
        self._buffer += data
        try:
            if self.state is State.AWAIT_HEADER:
                if len(self._buffer) < 8:
                    if not codec.PROTOCOL_HEADER.startswith(bytes(self._buffer)):
                        self._reject_protocol()
                    return
                if bytes(self._buffer[:8]) != codec.PROTOCOL_HEADER:
                    self._reject_protocol()
                    return
                del self._buffer[:8]
                self._send_start()
            self._parse_frames()
        except ConnectionError_ as exc:
            # What follows a framing error cannot be trusted; the client's close-ok comes next.
            self._buffer.clear()
            self.close_with(exc.code, exc.text, exc.class_id, exc.method_id)
        except Exception as exc:
            log.exception("connection %s: unexpected error", self.id)
            self.close_with(541, f"INTERNAL_ERROR - {exc!r}")
        finally:
            if self.acks_pending:
                for ch in self.acks_pending:
                    ch.flush_acks()
                self.acks_pending.clear()

    def _reject_protocol(self) -> None:
        """Wrong protocol header: answer with ours and close (AMQP 0-9-1 section 4.2.2)."""
        self.write(codec.PROTOCOL_HEADER)
        self._finish("bad protocol header")

    def _parse_frames(self) -> None:
        # Parse from an immutable copy so payload slices are single copies; keep the tail.
        buf = bytes(self._buffer)
        self._buffer.clear()
        pos = 0
        size_limit = self.frame_max
        unpack = codec.FRAME_HEADER_STRUCT.unpack_from
        channels = self.channels
        try:
            while self.state is not State.CLOSED and len(buf) - pos >= 7:
                ftype, channel, size = unpack(buf, pos)
                if size + 8 > size_limit:
                    raise ConnectionError_(
                        501, f"frame size {size + 8} exceeds frame_max {size_limit}"
                    )
                end = pos + 7 + size
                if len(buf) <= end:
                    break
                if buf[end] != codec.FRAME_END:
                    raise ConnectionError_(501, "frame end byte is not 0xCE")
                payload = buf[pos + 7 : end]
                pos = end + 1
                ch = channels.get(channel) if ftype != codec.FRAME_HEARTBEAT else None
                if ch is not None and self.state is State.OPEN:
                    try:
                        ch.handle_frame(ftype, payload)
                    except codec.SyntaxError_ as exc:
                        raise ConnectionError_(502, str(exc)) from None
                else:
                    self._handle_frame(ftype, channel, payload)
        finally:
            if pos < len(buf):
                self._buffer += buf[pos:]

    def _handle_frame(self, ftype: int, channel: int, payload: bytes) -> None:
        if ftype == codec.FRAME_HEARTBEAT:
            if channel != 0:
                raise ConnectionError_(501, "heartbeat frame on a non-zero channel")
            return
        if self.state is State.CLOSING:
            # Everything but close and close-ok is discarded until the close-ok comes
            # (AMQP 0-9-1 4.2.2), frames that do not decode included.
            if ftype == codec.FRAME_METHOD and channel == 0:
                try:
                    method = codec.decode_method(payload)
                except codec.SyntaxError_:
                    return
                if isinstance(method, spec.Connection.CloseOk):
                    self._finish("closed")
                elif isinstance(method, spec.Connection.Close):
                    self.send_method(0, spec.Connection.CloseOk())
                    self._finish("closed")
            return
        if ftype not in (codec.FRAME_METHOD, codec.FRAME_HEADER, codec.FRAME_BODY):
            raise ConnectionError_(501, f"unknown frame type {ftype}")
        if channel == 0:
            if ftype != codec.FRAME_METHOD:
                raise ConnectionError_(505, "content frame on channel 0")
            try:
                method = codec.decode_method(payload)
            except codec.SyntaxError_ as exc:
                raise ConnectionError_(502, str(exc)) from None
            self._handle_connection_method(method)
            return
        if self.state is not State.OPEN:
            raise ConnectionError_(504, f"channel {channel} used before connection.open")
        ch = self.channels.get(channel)
        if ch is None:
            is_method = ftype == codec.FRAME_METHOD and len(payload) >= 4
            if is_method and codec.method_id(payload) == (20 << 16) | 10:
                self._open_channel(channel)
                return
            ids = (0, 0)
            if ftype == codec.FRAME_METHOD and len(payload) >= 4:
                mid = codec.method_id(payload)
                ids = (mid >> 16, mid & 0xFFFF)
            raise ConnectionError_(504, f"expected 'channel.open' on channel {channel}", *ids)
        try:
            ch.handle_frame(ftype, payload)
        except codec.SyntaxError_ as exc:
            raise ConnectionError_(502, str(exc)) from None

    # -- connection class ----------------------------------------------------------------

    def _send_start(self) -> None:
        self.state = State.AWAIT_START_OK
        props: dict[str, Any] = {
            "product": "broker",
            "version": broker.__version__,
            "platform": "Python",
            "copyright": "the broker authors",
            "information": "Licensed under the Apache License 2.0",
            "cluster_name": "broker",
            "capabilities": SERVER_CAPABILITIES,
        }
        self.send_method(
            0,
            spec.Connection.Start(
                version_major=0,
                version_minor=9,
                server_properties=props,
                mechanisms="PLAIN AMQPLAIN EXTERNAL" if self.cert_user else "PLAIN AMQPLAIN",
                locales="en_US",
            ),
        )

    def _handle_connection_method(self, method: Frame) -> None:
        if isinstance(method, spec.Connection.StartOk):
            self._expect(State.AWAIT_START_OK, method)
            self._start_ok(method)
        elif isinstance(method, spec.Connection.TuneOk):
            self._expect(State.AWAIT_TUNE_OK, method)
            self._tune_ok(method)
        elif isinstance(method, spec.Connection.Open):
            self._expect(State.AWAIT_OPEN, method)
            self._open(method)
        elif isinstance(method, spec.Connection.Close):
            self.send_method(0, spec.Connection.CloseOk())
            self._finish("client closed the connection")
        elif isinstance(method, spec.Connection.CloseOk):
            # Only an answer to our connection.close (State.CLOSING, handled above); RabbitMQ
            # too answers any other with CHANNEL_ERROR.
            raise ConnectionError_(
                504, "connection.close-ok without connection.close", *_ids(method)
            )
        elif isinstance(method, spec.Connection.UpdateSecret):
            self._expect(State.OPEN, method)
            self._update_secret()
        elif isinstance(method, spec.Connection.Blocked | spec.Connection.Unblocked):
            return  # clients may send these too; nothing to do
        else:
            raise ConnectionError_(
                504,
                f"unexpected method {method.name} on channel 0",
                *_ids(method),
            )

    def _expect(self, state: State, method: Frame) -> None:
        if self.state is not state:
            raise ConnectionError_(503, f"unexpected method {method.name}", *_ids(method))

    def _start_ok(self, method: spec.Connection.StartOk) -> None:
        self.client_properties = method.client_properties or {}
        mechanism = method.mechanism
        response = method.response
        # pamqp hands a long string that is valid UTF-8 over as str (else as bytes): encode it
        # back to the bytes the client sent, so non-ASCII passwords match.
        raw = response.encode() if isinstance(response, str) else bytes(response or b"")
        try:
            if mechanism == "EXTERNAL" and self.cert_user:
                # RabbitMQ's EXTERNAL: the certificate is the credential, its CN the user.
                self.user = self.gateway.trusted_user(self.cert_user, self.loopback, self.source)
            else:
                username, password = _credentials(mechanism, raw)
                self.user = self.gateway.authenticate(
                    username, password, self.loopback, self.source
                )
        except ValueError as exc:
            raise ConnectionError_(403, f"ACCESS_REFUSED - {exc}", *_ids(method)) from None
        except AccessRefused:
            self.output_delay = self.gateway.refusal_delay(self.source)
            self.close_with(
                403,
                f"ACCESS_REFUSED - Login was refused using authentication mechanism {mechanism}."
                " For details see the broker logfile.",
            )
            return
        self.state = State.AWAIT_TUNE_OK
        self.send_method(
            0,
            spec.Connection.Tune(
                channel_max=self.settings.channel_max,
                frame_max=self.settings.frame_max,
                heartbeat=self.settings.heartbeat,
            ),
        )

    def _tune_ok(self, method: spec.Connection.TuneOk) -> None:
        frame_max = method.frame_max or self.settings.frame_max
        if frame_max < FRAME_MIN_SIZE or frame_max > self.settings.frame_max:
            raise ConnectionError_(
                530, f"NOT_ALLOWED - frame_max {frame_max} out of range", *_ids(method)
            )
        channel_max = method.channel_max or self.settings.channel_max
        self.frame_max = frame_max
        self.channel_max = min(channel_max, self.settings.channel_max)
        self.heartbeat = method.heartbeat
        self.state = State.AWAIT_OPEN

    def _open(self, method: spec.Connection.Open) -> None:
        assert self.user is not None
        vhost = method.virtual_host or "/"
        if self.refusal is not None:
            raise ConnectionError_(
                530, f"NOT_ALLOWED - connection refused: {self.refusal}", *_ids(method)
            )
        try:
            self.gateway.vhost_access(self.user, vhost)
        except NotAllowed:
            raise ConnectionError_(
                530, f"NOT_ALLOWED - vhost {vhost} not found", *_ids(method)
            ) from None
        except AccessRefused:
            raise ConnectionError_(
                530,
                f"NOT_ALLOWED - access to vhost '{vhost}' refused for user '{self.user.name}'",
                *_ids(method),
            ) from None
        except ConnectionLimit as exc:
            raise ConnectionError_(530, f"NOT_ALLOWED - {exc}", *_ids(method)) from None
        self.vhost = vhost
        self.state = State.OPEN
        self.send_method(0, spec.Connection.OpenOk())

    def _update_secret(self) -> None:
        """update-secret refreshes credentials that expire (OAuth 2 tokens). Our users'
        passwords do not, and are checked only at login: like RabbitMQ's internal users, the
        new secret is acknowledged and the connection carries on as the user it logged in as."""
        self.send_method(0, spec.Connection.UpdateSecretOk())

    def _open_channel(self, number: int) -> None:
        if len(self.channels) >= self.channel_max:
            raise ConnectionError_(
                530,
                f"NOT_ALLOWED - number of channels opened ({len(self.channels)}) has reached "
                f"the negotiated channel_max ({self.channel_max})",
                20,
                10,
            )
        assert self.user is not None
        try:
            self.gateway.check_channel_limit(self.user)
        except ConnectionLimit as exc:
            raise ConnectionError_(530, f"NOT_ALLOWED - {exc}", 20, 10) from None
        self.channels[number] = Channel(self, number)
        self.send_method(number, spec.Channel.OpenOk())

    def channel_closed(self, number: int) -> None:
        self.channels.pop(number, None)

    # -- from the node -------------------------------------------------------------------

    def deliver(self, effect: Deliver) -> None:
        ch = self.channels.get(effect.owner[2])
        if ch is not None:
            ch.deliver(effect)

    def consumer_cancelled(self, effect: ConsumerCancelled) -> None:
        ch = self.channels.get(effect.owner[2])
        if ch is not None:
            ch.consumer_cancelled_by_broker(effect.tag)

    def deliver_reply(
        self,
        channel: int,
        consumer_tag: str,
        exchange: str,
        routing_key: str,
        properties: dict[str, Any],
        body: bytes,
    ) -> bool:
        ch = self.channels.get(channel)
        if ch is None or ch.closing:
            return False
        ch.deliver_reply(consumer_tag, exchange, routing_key, properties, body)
        return True

    def set_writable(self, writable: bool) -> None:
        """Pause deliveries to a client that does not keep up, so they queue in the core."""
        if writable == self.writable:
            return
        self.writable = writable
        for ch in self.channels.values():
            ch.writable_changed()

    def set_blocked(self, reason: str | None) -> None:
        """Tell a capable client that an alarm started or ended. Called on every change of
        the alarm, and again when a connection opened during one is paused: it would
        otherwise never hear of the alarm, and a client's blocked-connection timeout
        (pika's `blocked_connection_timeout`) would never start."""
        if self.state is not State.OPEN or not self.capability("connection.blocked"):
            return
        if reason is None:
            if self.told_blocked is not None:
                self.send_method(0, spec.Connection.Unblocked())
        elif self.told_blocked is None:
            self.send_method(0, spec.Connection.Blocked(reason=reason))
        self.told_blocked = reason

    # -- closing -------------------------------------------------------------------------

    def close_with(self, code: int, text: str, class_id: int = 0, method_id: int = 0) -> None:
        """Send connection.close and wait for close-ok; the channels are released now."""
        if self.state in (State.CLOSING, State.CLOSED):
            return
        if self.state is State.AWAIT_HEADER:
            self._finish(text)
            return
        self.send_method(
            0,
            spec.Connection.Close(
                reply_code=code,
                reply_text=reply_text(code, text)[:255],
                class_id=class_id,
                method_id=method_id,
            ),
        )
        self.close_reason = text
        self.state = State.CLOSING
        self._release_channels()

    def _finish(self, reason: str) -> None:
        if self.state is State.CLOSED:
            return
        self._release_channels()
        self.close_reason = self.close_reason or reason
        self.state = State.CLOSED
        self.should_close = True
        if self.on_output is not None:
            self.on_output()

    def _release_channels(self) -> None:
        for ch in list(self.channels.values()):
            ch.release()
        self.channels.clear()

    def connection_lost(self) -> None:
        """The transport went away: release everything this connection held."""
        self._release_channels()
        self.state = State.CLOSED
        self.gateway.submit(c.ConnectionClosed(self.id))

    def channel_error(self, number: int, error: AMQPError) -> None:
        if error.connection_level:
            self.close_with(error.code, error.text, error.class_id, error.method_id)
            return
        ch = self.channels.get(number)
        if ch is not None:
            ch.close_with(error)

    def core_error(self, number: int, exc: BrokerError, method: Frame | None) -> None:
        self.channel_error(number, AMQPError.from_core(exc, method))


def _ids(method: Frame) -> tuple[int, int]:
    index = getattr(method, "index", 0) or 0
    return index >> 16, index & 0xFFFF


def _credentials(mechanism: str, response: bytes) -> tuple[str, str]:
    if mechanism == "PLAIN":
        parts = response.split(b"\x00")
        if len(parts) != 3:
            raise ValueError("malformed PLAIN response")
        return parts[1].decode(), parts[2].decode()
    if mechanism == "AMQPLAIN":
        try:
            _, table = pdecode.field_table(len(response).to_bytes(4, "big") + response)
        except Exception:
            raise ValueError("malformed AMQPLAIN response") from None
        login, password = table.get("LOGIN"), table.get("PASSWORD")
        if login is None or password is None:
            raise ValueError("AMQPLAIN response lacks LOGIN or PASSWORD")
        return _str(login), _str(password)
    raise ValueError(f"unsupported authentication mechanism {mechanism}")


def _str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
