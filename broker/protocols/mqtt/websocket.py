"""A minimal sans-IO WebSocket server (RFC 6455) carrying one byte stream: MQTT over WebSocket.

MQTT over WebSocket sends packets in binary messages that need not align with packet
boundaries, so data frames are simply unwrapped into a stream and outgoing bytes wrapped
in single binary frames. Only what that needs is here: the opening handshake on one path
with one subprotocol, masked client frames, ping/pong and the closing handshake. No
extensions; text frames are refused, as the MQTT specification requires (section 6).
"""

from __future__ import annotations

import base64
import hashlib
import struct

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_MAX_HANDSHAKE = 16 * 1024
_U16 = struct.Struct(">H")
_U64 = struct.Struct(">Q")

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

CLOSE_NORMAL = 1000
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_UNSUPPORTED = 1003
CLOSE_TOO_BIG = 1009


def frame(opcode: int, payload: bytes) -> bytes:
    """One unmasked, final frame (servers never mask)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, n))
    elif n < 0x10000:
        head = bytes((0x80 | opcode, 126)) + _U16.pack(n)
    else:
        head = bytes((0x80 | opcode, 127)) + _U64.pack(n)
    return head + payload


def _unmask(payload: bytes, mask: bytes) -> bytes:
    n = len(payload)
    if not n:
        return payload
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


class WebSocketServer:
    def __init__(self, path: str, subprotocol: str, max_frame: int) -> None:
        self.path = path
        self.subprotocol = subprotocol
        self.max_frame = max_frame
        self.open = False
        #: set once the transport should close after flushing
        self.should_close = False
        self.close_reason = ""
        self._buffer = bytearray()
        self._out: list[bytes] = []

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    def wrap(self, data: bytes) -> bytes:
        """Application bytes as a binary message."""
        return frame(OP_BINARY, data) if data and not self.should_close else b""

    def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        if self.should_close:
            return
        self.close_reason = reason
        if self.open:
            self._out.append(frame(OP_CLOSE, _U16.pack(code) + reason.encode()[:120]))
        self.should_close = True

    def receive_data(self, data: bytes) -> bytes:
        """Take bytes from the network; return the application bytes they carried."""
        if self.should_close:
            return b""
        self._buffer += data
        if not self.open:
            self._handshake()
            if not self.open:
                return b""
        return self._frames()

    # -- opening handshake ---------------------------------------------------------------

    def _handshake(self) -> None:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > _MAX_HANDSHAKE:
                self._reject("431 Request Header Fields Too Large")
            return
        head = bytes(self._buffer[:end]).decode("latin-1")
        del self._buffer[: end + 4]
        lines = head.split("\r\n")
        parts = lines[0].split(" ")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if len(parts) != 3 or parts[0] != "GET" or not parts[2].startswith("HTTP/1.1"):
            self._reject("400 Bad Request")
            return
        if parts[1].split("?", 1)[0] != self.path:
            self._reject("404 Not Found")
            return
        key = headers.get("sec-websocket-key", "")
        upgrade = headers.get("upgrade", "").lower() == "websocket"
        connection = "upgrade" in headers.get("connection", "").lower()
        if not (upgrade and connection and key and headers.get("sec-websocket-version") == "13"):
            self._reject("400 Bad Request")
            return
        offered = [p.strip() for p in headers.get("sec-websocket-protocol", "").split(",")]
        if self.subprotocol not in offered:
            self._reject("400 Bad Request")
            return
        accept = base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()
        self._out.append(
            (
                "HTTP/1.1 101 Switching Protocols\r\n"
                "Upgrade: websocket\r\n"
                "Connection: Upgrade\r\n"
                f"Sec-WebSocket-Accept: {accept}\r\n"
                f"Sec-WebSocket-Protocol: {self.subprotocol}\r\n\r\n"
            ).encode()
        )
        self.open = True

    def _reject(self, status: str) -> None:
        self._out.append(f"HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n".encode())
        self.close_reason = f"websocket handshake refused: {status}"
        self.should_close = True

    # -- frames --------------------------------------------------------------------------

    def _frames(self) -> bytes:
        buf = self._buffer
        stream: list[bytes] = []
        while not self.should_close and len(buf) >= 2:
            first, second = buf[0], buf[1]
            opcode = first & 0x0F
            if first & 0x70:
                self.close(CLOSE_PROTOCOL_ERROR, "reserved bits set")
                break
            if not second & 0x80:
                self.close(CLOSE_PROTOCOL_ERROR, "client frames must be masked")
                break
            size = second & 0x7F
            pos = 2
            if size == 126:
                if len(buf) < 4:
                    break
                size = _U16.unpack_from(buf, 2)[0]
                pos = 4
            elif size == 127:
                if len(buf) < 10:
                    break
                size = _U64.unpack_from(buf, 2)[0]
                pos = 10
            if size > self.max_frame:
                self.close(CLOSE_TOO_BIG, f"frame of {size} bytes is too big")
                break
            if len(buf) < pos + 4 + size:
                break
            mask = bytes(buf[pos : pos + 4])
            payload = _unmask(bytes(buf[pos + 4 : pos + 4 + size]), mask)
            del buf[: pos + 4 + size]
            if opcode in (OP_BINARY, OP_CONTINUATION):
                stream.append(payload)
            elif opcode >= OP_CLOSE:
                self._control(opcode, bool(first & 0x80), payload)
            else:
                self.close(CLOSE_UNSUPPORTED, "MQTT over WebSocket uses binary frames only")
        return b"".join(stream)

    def _control(self, opcode: int, final: bool, payload: bytes) -> None:
        if not final or len(payload) > 125:
            self.close(CLOSE_PROTOCOL_ERROR, "fragmented or oversized control frame")
        elif opcode == OP_PING:
            self._out.append(frame(OP_PONG, payload))
        elif opcode == OP_CLOSE:
            code = _U16.unpack(payload[:2])[0] if len(payload) >= 2 else CLOSE_NORMAL
            self.close(code if code in (CLOSE_NORMAL, 1001) else CLOSE_NORMAL, "client closed")
        elif opcode != OP_PONG:
            self.close(CLOSE_PROTOCOL_ERROR, f"unknown opcode {opcode}")
