"""A tiny blocking raw-socket AMQP 0-9-1 client built on pamqp, for bad-input tests."""

from __future__ import annotations

import socket
import struct
import time

from pamqp import commands, constants, header, heartbeat
from pamqp import frame as pframe
from pamqp.body import ContentBody
from pamqp.exceptions import UnmarshalingException

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"


class Closed(Exception):
    """The peer closed the TCP connection."""


class RawClient:
    def __init__(self, host: str, port: int, timeout: float = 10.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.timeout = timeout
        self.tune: commands.Connection.Tune | None = None
        self.start: commands.Connection.Start | None = None

    # -- low level -------------------------------------------------------
    def send(self, data: bytes):
        self.sock.sendall(data)

    def send_frame(self, value, channel: int = 0):
        self.send(pframe.marshal(value, channel))

    def send_method(self, method, channel: int = 0):
        self.send_frame(method, channel)

    def send_content(self, channel: int, body: bytes, properties=None, frame_max: int = 131072):
        hdr = header.ContentHeader(0, len(body), properties or commands.Basic.Properties())
        self.send_frame(hdr, channel)
        step = frame_max - 8
        for i in range(0, len(body), step):
            self.send_frame(ContentBody(body[i : i + step]), channel)

    def raw_frame(
        self, frame_type: int, channel: int, payload: bytes, end: bytes = b"\xce"
    ) -> bytes:
        return struct.pack(">BHI", frame_type, channel, len(payload)) + payload + end

    def _fill(self, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no data before deadline")
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError) as e:
            raise Closed("connection reset by peer") from e
        if not data:
            raise Closed("connection closed by peer")
        self.buf += data

    def recv_bytes(self, n: int, timeout: float | None = None) -> bytes:
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        while len(self.buf) < n:
            self._fill(deadline)
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def recv_frame(self, timeout: float | None = None):
        """Return (channel, frame) for the next frame, skipping nothing."""
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        while True:
            if len(self.buf) >= 7:
                if self.buf[:4] == b"AMQP" and len(self.buf) >= 8:
                    value, self.buf = self.buf[:8], self.buf[8:]
                    return 0, value  # raw protocol header bytes
                ftype, ch, size = struct.unpack(">BHI", self.buf[:7])
                if len(self.buf) >= 8 + size:
                    consumed, channel, value = pframe.unmarshal(self.buf[: 8 + size])
                    self.buf = self.buf[consumed:]
                    return channel, value
            self._fill(deadline)

    def recv_method(self, timeout: float | None = None, skip_heartbeats: bool = True):
        while True:
            ch, f = self.recv_frame(timeout)
            if skip_heartbeats and isinstance(f, heartbeat.Heartbeat):
                continue
            return ch, f

    def expect(self, cls, timeout: float | None = None):
        ch, f = self.recv_method(timeout)
        assert isinstance(f, cls), "expected %s, got %r on channel %d" % (cls.__name__, f, ch)
        return ch, f

    def wait_closed(self, timeout: float = 10.0) -> bytes:
        """Read until EOF (returns what was read); AssertionError if still open at deadline."""
        deadline = time.monotonic() + timeout
        got = b""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("connection still open after %.1fs" % timeout)
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except (ConnectionResetError, BrokenPipeError):
                return got
            if not data:
                return got
            got += data

    def expect_connection_close(self, code: int | None = None, timeout: float = 10.0):
        """Wait for connection.close (skipping other frames), reply close-ok, wait for EOF."""
        deadline = time.monotonic() + timeout
        while True:
            ch, f = self.recv_method(max(0.01, deadline - time.monotonic()))
            if isinstance(f, commands.Connection.Close):
                break
        if code is not None:
            assert f.reply_code == code, (f.reply_code, f.reply_text)
        try:
            self.send_method(commands.Connection.CloseOk())
        except OSError:
            pass
        self.wait_closed(max(1.0, deadline - time.monotonic()))
        return f

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- handshake --------------------------------------------------------
    def handshake(
        self,
        user="guest",
        password="guest",
        vhost="/",
        channel_max=None,
        frame_max=None,
        heartbeat_secs=0,
        open_vhost=True,
    ):
        """Full handshake; channel_max/frame_max default to the server's proposal."""
        self.send(PROTOCOL_HEADER)
        _, self.start = self.expect(commands.Connection.Start)
        self.send_method(
            commands.Connection.StartOk(
                client_properties={
                    "product": "compat-raw",
                    "capabilities": {"authentication_failure_close": True},
                },
                mechanism="PLAIN",
                response="\0%s\0%s" % (user, password),
            )
        )
        _, self.tune = self.expect(commands.Connection.Tune)
        if channel_max is None:
            channel_max = self.tune.channel_max
        if frame_max is None:
            frame_max = self.tune.frame_max
        self.send_method(
            commands.Connection.TuneOk(
                channel_max=channel_max, frame_max=frame_max, heartbeat=heartbeat_secs
            )
        )
        if open_vhost:
            self.send_method(commands.Connection.Open(virtual_host=vhost))
            self.expect(commands.Connection.OpenOk)
        return self

    def open_channel(self, channel: int = 1):
        self.send_method(commands.Channel.Open(), channel)
        self.expect(commands.Channel.OpenOk)


def raw_connect(broker, timeout: float = 10.0, **handshake_kw) -> RawClient:
    c = RawClient(broker.host, broker.port, timeout=timeout)
    try:
        c.handshake(user=broker.user, password=broker.password, vhost=broker.vhost, **handshake_kw)
    except Exception:
        c.close()
        raise
    return c


__all__ = [
    "RawClient",
    "Closed",
    "raw_connect",
    "PROTOCOL_HEADER",
    "commands",
    "header",
    "heartbeat",
    "ContentBody",
    "constants",
    "UnmarshalingException",
]
