"""Minimal asyncio AMQP 0-9-1 client for benchmarking.

Why not pika / aio-pika: those decode every frame into Python objects and
allocate several objects per message, so on a small machine the *client*
saturates a core long before a fast broker does.  This client keeps the
hot paths (publishing, publisher confirms, deliveries, acks) on raw bytes:

* publish frames are pre-built once and written in large batches;
* confirms (basic.ack / basic.nack) and deliveries (basic.deliver + content
  header + body) are parsed with ``struct.unpack_from`` straight out of the
  receive buffer;
* acks produced while handling one read are coalesced into one write.

Everything else (handshake, declare, qos, consume, close) is rare, so it is
marshalled and unmarshalled with ``pamqp``.

Scope is deliberately small: one channel (number 1) per connection, PLAIN
auth, heartbeats disabled, no TLS.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast
from urllib.parse import unquote, urlsplit

from pamqp import body as pbody
from pamqp import commands
from pamqp import frame as pframe
from pamqp import header as pheader
from pamqp.base import Frame

F = TypeVar("F", bound=Frame)

CHANNEL = 1
CLIENT_FRAME_MAX = 131072
FRAME_END = 0xCE

_FRAME_HDR = struct.Struct(">BHI")  # type, channel, payload size
_METHOD_ID = struct.Struct(">HH")  # class id, method id
_U64 = struct.Struct(">Q")
_TAG_BITS = struct.Struct(">QB")
# A complete basic.ack method frame: header, class/method, tag, bits, frame-end.
_ACK_FRAME = struct.Struct(">BHIHHQBB")

_BASIC = 60
_BASIC_DELIVER = 60
_BASIC_ACK = 80
_BASIC_NACK = 120

# Callback signatures used by the hot paths.
ConfirmCallback = Callable[[int, bool, bool], None]  # (tag, multiple, is_ack)
DeliveryCallback = Callable[["Connection", int, bytes], None]  # (conn, tag, head)


class AMQPError(Exception):
    """Protocol-level failure: server close, unexpected reply, lost socket."""


@dataclass(frozen=True)
class URLParams:
    """Connection parameters parsed from an ``amqp://`` URL."""

    host: str
    port: int
    user: str
    password: str
    vhost: str

    @classmethod
    def parse(cls, url: str) -> URLParams:
        """Parse ``amqp://user:pass@host:port/vhost`` (vhost URL-encoded)."""
        parts = urlsplit(url)
        if parts.scheme != "amqp":
            raise ValueError(f"only amqp:// URLs are supported, got {url!r}")
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 5672,
            user=unquote(parts.username or "guest"),
            password=unquote(parts.password or "guest"),
            vhost=unquote(path) if path else "/",
        )


def ack_frame(tag: int, multiple: bool) -> bytes:
    """Encode a basic.ack for channel 1 without going through pamqp."""
    return _ACK_FRAME.pack(1, CHANNEL, 13, _BASIC, _BASIC_ACK, tag, 1 if multiple else 0, FRAME_END)


def build_publish_frames(
    routing_key: str, body_size: int, frame_max: int, exchange: str = ""
) -> list[bytes]:
    """Pre-build the frames of one persistent publish, split for splicing.

    Returns ``[prefix, suffix]`` where ``prefix`` ends exactly where the
    message body starts, so a caller can insert a per-message stamp of up to
    ``min(body_size, frame_max - 8)`` bytes: ``prefix + stamp + suffix``.
    ``suffix`` holds the rest of the body (filler bytes) including any
    continuation body frames.
    """
    method = pframe.marshal(
        commands.Basic.Publish(exchange=exchange, routing_key=routing_key), CHANNEL
    )
    props = commands.Basic.Properties(delivery_mode=2, content_type="application/octet-stream")
    content_header = pframe.marshal(pheader.ContentHeader(0, body_size, props), CHANNEL)
    filler = bytes(b"amqp-bench-" * (body_size // 11 + 1))[:body_size]
    max_payload = frame_max - 8  # 7 header bytes + 1 frame-end byte
    bodies = [
        pframe.marshal(pbody.ContentBody(filler[i : i + max_payload]), CHANNEL)
        for i in range(0, body_size, max_payload)
    ]
    whole = method + content_header + b"".join(bodies)
    split = len(method) + len(content_header) + 7  # first body byte
    return [whole[:split], whole[split:]]


class Connection(asyncio.Protocol):
    """One AMQP connection using a single channel.

    Synchronous methods go through :meth:`call`; confirms and deliveries are
    dispatched to ``on_confirm`` / ``on_delivery`` directly from
    :meth:`data_received` for speed.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.frame_max = CLIENT_FRAME_MAX
        self.error: AMQPError | None = None
        self.on_confirm: ConfirmCallback | None = None
        self.on_delivery: DeliveryCallback | None = None
        self.on_failure: Callable[[AMQPError], None] | None = None
        self.returned = 0  # basic.return count (should stay 0: no mandatory flag)
        self.blocked = False  # connection.blocked from the server (resource alarm)
        self._buf = bytearray()
        self._replies: asyncio.Queue[Frame | None] = asyncio.Queue()
        self._can_write = asyncio.Event()
        self._can_write.set()
        self._pending_out: list[bytes] | None = None  # coalesced writes during a read
        self._closing = False
        self._channel_closing = False  # after channel.close: drop deliveries (spec 1.5.2.5)
        # In-progress delivery: tag, bytes still expected, head of the body.
        self._d_tag = 0
        self._d_remaining = -1
        self._d_head = b""
        self._d_expect_header = False

    # ----------------------------------------------------------------- setup
    @classmethod
    async def open(
        cls, url: str, timeout: float = 10.0, frame_max: int = CLIENT_FRAME_MAX
    ) -> Connection:
        """Connect, authenticate, tune and open channel 1."""
        params = URLParams.parse(url)
        loop = asyncio.get_running_loop()
        _, conn = await asyncio.wait_for(
            loop.create_connection(cls, params.host, params.port), timeout
        )
        await conn._handshake(params, timeout, frame_max)
        return conn

    async def _handshake(self, params: URLParams, timeout: float, frame_max: int) -> None:
        assert self.transport is not None
        self.transport.write(pheader.ProtocolHeader().marshal())
        start = await self._reply(timeout, commands.Connection.Start)
        mechanisms = (
            bytes(start.mechanisms).decode()
            if isinstance(start.mechanisms, bytes)
            else str(start.mechanisms)
        )
        if "PLAIN" not in mechanisms.split():
            raise AMQPError(f"server does not offer PLAIN auth (offers {mechanisms!r})")
        client_props: dict[str, Any] = {
            "product": "amqp_bench",
            "capabilities": {
                "publisher_confirms": True,
                "basic.nack": True,
                "consumer_cancel_notify": True,
                "connection.blocked": True,
                "authentication_failure_close": True,
            },
        }
        self._send(
            commands.Connection.StartOk(
                client_properties=client_props,
                mechanism="PLAIN",
                response=f"\0{params.user}\0{params.password}",
            ),
            channel=0,
        )
        tune = await self._reply(timeout, commands.Connection.Tune)
        self.frame_max = min(frame_max, tune.frame_max or frame_max)
        self._send(
            commands.Connection.TuneOk(
                channel_max=tune.channel_max, frame_max=self.frame_max, heartbeat=0
            ),
            channel=0,
        )
        self._send(commands.Connection.Open(virtual_host=params.vhost), channel=0)
        await self._reply(timeout, commands.Connection.OpenOk)
        await self.call(commands.Channel.Open(), commands.Channel.OpenOk, timeout)

    # ------------------------------------------------------------ public API
    async def call(self, method: Frame, expect: type[F], timeout: float = 10.0) -> F:
        """Send a synchronous method on channel 1 and wait for its reply."""
        self._send(method, CHANNEL)
        return await self._reply(timeout, expect)

    def write(self, data: bytes) -> None:
        """Write raw bytes; coalesced with other writes if inside a read."""
        if self.error is not None or self.transport is None:
            return
        if self._pending_out is not None:
            self._pending_out.append(data)
        else:
            self.transport.write(data)

    async def writable(self, timeout: float) -> None:
        """Wait until the transport's write buffer drained below its high-water mark."""
        if not self._can_write.is_set():
            await asyncio.wait_for(self._can_write.wait(), timeout)

    async def close(self, timeout: float = 5.0) -> None:
        """Close politely (channel then connection); always drops the socket."""
        if self.transport is None or self.transport.is_closing():
            return
        try:
            if self.error is None:
                self._channel_closing = True
                await self.call(
                    commands.Channel.Close(200, "bye", 0, 0), commands.Channel.CloseOk, timeout
                )
                self._closing = True
                self._send(commands.Connection.Close(200, "bye", 0, 0), channel=0)
                await self._reply(timeout, commands.Connection.CloseOk)
        except (TimeoutError, AMQPError):
            pass
        finally:
            self._closing = True
            self.transport.close()

    # ------------------------------------------------------------- internals
    def _send(self, method: Frame, channel: int) -> None:
        self.write(pframe.marshal(method, channel))

    async def _reply(self, timeout: float, expect: type[F]) -> F:
        if self.error is not None:
            raise self.error
        try:
            reply = await asyncio.wait_for(self._replies.get(), timeout)
        except TimeoutError:
            raise AMQPError(f"timed out after {timeout}s waiting for {expect.name}") from None
        if reply is None:
            assert self.error is not None
            raise self.error
        if not isinstance(reply, expect):
            raise AMQPError(f"expected {expect.name}, got {reply.name}")
        return reply

    def _fail(self, exc: AMQPError) -> None:
        if self.error is None:
            self.error = exc
            self._replies.put_nowait(None)
            self._can_write.set()
            if self.on_failure is not None:
                self.on_failure(exc)

    # ------------------------------------------------- asyncio.Protocol hooks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transport is not an asyncio.Transport subclass, hence no isinstance check.
        self.transport = cast(asyncio.Transport, transport)
        # Large buffers: the publisher writes whole confirm windows at once.
        self.transport.set_write_buffer_limits(high=4 * 1024 * 1024)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._closing:
            self._fail(AMQPError(f"connection lost: {exc or 'closed by peer'}"))
        self._closing = True
        self._replies.put_nowait(None)

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        self._pending_out = []
        try:
            consumed = self._parse(buf)
        except AMQPError as exc:
            self._fail(exc)
            if self.transport is not None:
                self.transport.close()
            return
        finally:
            out, self._pending_out = self._pending_out, None
            if out and self.transport is not None and self.error is None:
                self.transport.write(b"".join(out))
        if consumed:
            del buf[:consumed]

    def _parse(self, buf: bytearray) -> int:
        """Dispatch every complete frame in ``buf``; return bytes consumed."""
        pos = 0
        size = len(buf)
        unpack_hdr = _FRAME_HDR.unpack_from
        while size - pos >= 8:
            if buf[pos] == 0x41 and pos == 0 and buf[:4] == b"AMQP":
                raise AMQPError(f"server rejected protocol version: {bytes(buf[:8])!r}")
            ftype, channel, length = unpack_hdr(buf, pos)
            end = pos + 7 + length
            if end >= size:
                break
            if buf[end] != FRAME_END:
                raise AMQPError("framing error: missing frame-end octet")
            start = pos + 7
            if ftype == 3:  # body
                self._on_body(buf, start, length)
            elif ftype == 1:  # method
                cls_id, meth_id = _METHOD_ID.unpack_from(buf, start)
                if cls_id == _BASIC and meth_id in (_BASIC_ACK, _BASIC_NACK) and self.on_confirm:
                    if self._channel_closing:
                        pos = end + 1
                        continue
                    tag, bits = _TAG_BITS.unpack_from(buf, start + 4)
                    self.on_confirm(tag, bool(bits & 1), meth_id == _BASIC_ACK)
                elif cls_id == _BASIC and meth_id == _BASIC_DELIVER:
                    tag_at = start + 5 + buf[start + 4]  # skip consumer-tag shortstr
                    self._d_tag = _U64.unpack_from(buf, tag_at)[0]
                    self._d_expect_header = True
                else:
                    self._on_method(bytes(buf[pos : end + 1]))
            elif ftype == 2:  # content header
                if self._d_expect_header:
                    self._d_expect_header = False
                    self._d_remaining = _U64.unpack_from(buf, start + 4)[0]
                    self._d_head = b""
                    if self._d_remaining == 0:
                        self._deliver()
            elif ftype != 8:  # 8 = heartbeat, ignored
                raise AMQPError(f"unknown frame type {ftype}")
            pos = end + 1
        return pos

    def _on_body(self, buf: bytearray, start: int, length: int) -> None:
        if self._d_remaining < 0:
            return  # body of something we don't track (e.g. basic.return)
        if not self._d_head:
            self._d_head = bytes(buf[start : start + min(length, 16)])
        self._d_remaining -= length
        if self._d_remaining <= 0:
            self._deliver()

    def _deliver(self) -> None:
        self._d_remaining = -1
        if self.on_delivery is not None and not self._channel_closing:
            self.on_delivery(self, self._d_tag, self._d_head)

    def _on_method(self, raw: bytes) -> None:
        """Slow path: decode with pamqp and handle server-initiated methods."""
        try:
            _, channel, method = pframe.unmarshal(raw)
        except Exception as exc:  # pamqp raises several exception types
            raise AMQPError(f"cannot decode frame: {exc}") from exc
        if isinstance(method, commands.Connection.Close):
            if self.transport is not None:  # bypass coalescing: we are failing
                self.transport.write(pframe.marshal(commands.Connection.CloseOk(), 0))
            raise AMQPError(f"server closed connection: {method.reply_code} {method.reply_text}")
        if isinstance(method, commands.Channel.Close):
            if self.transport is not None:
                self.transport.write(pframe.marshal(commands.Channel.CloseOk(), channel))
            raise AMQPError(f"server closed channel: {method.reply_code} {method.reply_text}")
        if isinstance(method, commands.Basic.Cancel):
            raise AMQPError(f"server cancelled consumer {method.consumer_tag!r}")
        if isinstance(method, commands.Basic.Return):
            self.returned += 1
            self._d_remaining = -1
            return
        if isinstance(method, commands.Connection.Blocked):
            self.blocked = True
            return
        if isinstance(method, commands.Connection.Unblocked):
            self.blocked = False
            return
        if isinstance(method, Frame):
            self._replies.put_nowait(method)


def now() -> float:
    """Monotonic clock shared by all processes on the host (CLOCK_MONOTONIC)."""
    return time.perf_counter()
