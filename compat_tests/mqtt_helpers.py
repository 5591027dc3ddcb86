"""MQTT test clients: paho-mqtt 2.x wrapped for blocking tests, and a raw-socket client.

The raw client encodes packets itself (independently of the broker's codec), so tests can
send exactly the bytes they mean, including broken ones, and read exactly what comes back.
"""

from __future__ import annotations

import queue
import socket
import struct
import time
import uuid
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

TIMEOUT = 10.0


def uid(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# -- paho ----------------------------------------------------------------------------------


class Paho:
    """A paho client running its network loop in a thread; callbacks feed queues."""

    def __init__(
        self,
        broker: Any,
        client_id: str | None = None,
        clean: bool = True,
        username: str | None = "guest",
        password: str | None = "guest",
        keepalive: int = 60,
        will: tuple[str, bytes, int, bool] | None = None,
        websocket: bool = False,
    ) -> None:
        self.broker = broker
        self.client_id = uid("paho") if client_id is None else client_id
        self.websocket = websocket
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv311,
            clean_session=clean,
            transport="websockets" if websocket else "tcp",
        )
        if websocket:
            self.client.ws_set_options(path="/mqtt")
        if username is not None:
            self.client.username_pw_set(username, password)
        if will is not None:
            topic, payload, qos, retain = will
            self.client.will_set(topic, payload, qos, retain)
        self.keepalive = keepalive
        self.connacks: queue.Queue[tuple[int, bool]] = queue.Queue()
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.subacks: queue.Queue[tuple[int, list[int]]] = queue.Queue()
        self.unsubacks: queue.Queue[int] = queue.Queue()
        self.disconnects: queue.Queue[int] = queue.Queue()
        self.client.on_connect = self._on_connect
        self.client.on_message = lambda c, u, m: self.messages.put(m)
        self.client.on_subscribe = lambda c, u, mid, codes, p: self.subacks.put(
            (mid, [int(code.value) for code in codes])
        )
        self.client.on_unsubscribe = lambda c, u, mid, codes, p: self.unsubacks.put(mid)
        self.client.on_disconnect = lambda c, u, f, code, p: self.disconnects.put(int(code.value))

    def _on_connect(self, client: Any, userdata: Any, flags: Any, code: Any, props: Any) -> None:
        self.connacks.put((int(code.value), bool(flags.session_present)))

    def connect(self, expect_ok: bool = True) -> tuple[int, bool]:
        """Connect and wait for CONNACK: (paho's reason code value, session present)."""
        port = self.broker.mqtt_ws_port if self.websocket else self.broker.mqtt_port
        self.client.connect(self.broker.host, port, keepalive=self.keepalive)
        self.client.loop_start()
        code, present = self.connacks.get(timeout=TIMEOUT)
        if expect_ok:
            assert code == 0, f"CONNACK refused: {code}"
        return code, present

    def subscribe(self, *filters: tuple[str, int]) -> list[int]:
        """SUBSCRIBE and wait for SUBACK; returns the granted QoS codes."""
        _, mid = self.client.subscribe(list(filters))
        got_mid, codes = self.subacks.get(timeout=TIMEOUT)
        assert got_mid == mid
        return codes

    def unsubscribe(self, *filters: str) -> None:
        _, mid = self.client.unsubscribe(list(filters))
        assert self.unsubacks.get(timeout=TIMEOUT) == mid

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        """Publish and wait until the protocol flow of its QoS has completed."""
        info = self.client.publish(topic, payload, qos, retain)
        info.wait_for_publish(TIMEOUT)
        assert info.is_published()

    def message(self, timeout: float = TIMEOUT) -> mqtt.MQTTMessage:
        return self.messages.get(timeout=timeout)

    def messages_until(self, marker: bytes, timeout: float = TIMEOUT) -> list[mqtt.MQTTMessage]:
        """Every message received before the one whose payload is `marker` (proves absence)."""
        out = []
        deadline = time.monotonic() + timeout
        while True:
            msg = self.messages.get(timeout=max(0.01, deadline - time.monotonic()))
            if msg.payload == marker:
                return out
            out.append(msg)

    def disconnected(self, timeout: float = TIMEOUT) -> int:
        return self.disconnects.get(timeout=timeout)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def stop(self) -> None:
        """Stop the network loop without DISCONNECT (for tests that drop the socket)."""
        self.client.loop_stop()


# -- raw sockets ---------------------------------------------------------------------------


def _length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack(">H", len(raw)) + raw


def packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + _length(len(body)) + body


def connect_packet(
    client_id: str = "",
    clean: bool = True,
    keepalive: int = 60,
    username: str | None = "guest",
    password: str | None = "guest",
    will: tuple[str, bytes, int, bool] | None = None,
    level: int = 4,
    name: str = "MQTT",
) -> bytes:
    flags = 0x02 if clean else 0
    payload = _string(client_id)
    if will is not None:
        topic, message, qos, retain = will
        flags |= 0x04 | (qos << 3) | (0x20 if retain else 0)
        payload += _string(topic) + _string(message)
    if username is not None:
        flags |= 0x80
        payload += _string(username)
    if password is not None:
        flags |= 0x40
        payload += _string(password)
    body = _string(name) + bytes((level, flags)) + struct.pack(">H", keepalive) + payload
    return packet(0x10, body)


def publish_packet(
    topic: str | bytes,
    payload: bytes,
    qos: int = 0,
    packet_id: int = 0,
    retain: bool = False,
    dup: bool = False,
) -> bytes:
    first = 0x30 | (qos << 1) | (8 if dup else 0) | (1 if retain else 0)
    body = _string(topic) + (struct.pack(">H", packet_id) if qos else b"") + payload
    return packet(first, body)


def subscribe_packet(packet_id: int, *filters: tuple[str, int]) -> bytes:
    body = struct.pack(">H", packet_id) + b"".join(_string(f) + bytes((q,)) for f, q in filters)
    return packet(0x82, body)


def unsubscribe_packet(packet_id: int, *filters: str) -> bytes:
    return packet(0xA2, struct.pack(">H", packet_id) + b"".join(_string(f) for f in filters))


def ack_packet(kind: str, packet_id: int) -> bytes:
    first = {"puback": 0x40, "pubrec": 0x50, "pubrel": 0x62, "pubcomp": 0x70}[kind]
    return bytes((first, 2)) + struct.pack(">H", packet_id)


@dataclass
class Received:
    type: int
    flags: int
    body: bytes

    @property
    def packet_id(self) -> int:
        return int(struct.unpack(">H", self.body[:2])[0])

    def publish(self) -> tuple[str, bytes, int, bool, bool, int]:
        """(topic, payload, qos, retain, dup, packet id) of a PUBLISH."""
        assert self.type == 3, self
        size = struct.unpack(">H", self.body[:2])[0]
        topic = self.body[2 : 2 + size].decode()
        pos = 2 + size
        qos = (self.flags >> 1) & 3
        packet_id = 0
        if qos:
            packet_id = struct.unpack(">H", self.body[pos : pos + 2])[0]
            pos += 2
        return topic, self.body[pos:], qos, bool(self.flags & 1), bool(self.flags & 8), packet_id


class RawMQTT:
    """A blocking socket speaking whatever bytes the test writes."""

    def __init__(self, broker: Any, port: int | None = None) -> None:
        self.sock = socket.create_connection((broker.host, port or broker.mqtt_port), TIMEOUT)
        self._buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def connect(self, client_id: str = "", **kw: Any) -> tuple[bool, int]:
        """CONNECT and read the CONNACK: (session present, return code)."""
        self.send(connect_packet(client_id, **kw))
        ack = self.read()
        assert ack.type == 2 and len(ack.body) == 2, ack
        return bool(ack.body[0] & 1), ack.body[1]

    def _fill(self, n: int, deadline: float) -> bool:
        while len(self._buffer) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no packet in time")
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                return False
            self._buffer += chunk
        return True

    def read(self, timeout: float = TIMEOUT) -> Received:
        """The next packet from the broker; raises ConnectionError if the broker closed."""
        deadline = time.monotonic() + timeout
        if not self._fill(2, deadline):
            raise ConnectionError("closed by the broker")
        length, shift, pos = 0, 0, 1
        while True:
            if not self._fill(pos + 1, deadline):
                raise ConnectionError("closed by the broker")
            byte = self._buffer[pos]
            length |= (byte & 0x7F) << shift
            shift += 7
            pos += 1
            if not byte & 0x80:
                break
        if not self._fill(pos + length, deadline):
            raise ConnectionError("closed by the broker")
        first = self._buffer[0]
        body = self._buffer[pos : pos + length]
        self._buffer = self._buffer[pos + length :]
        return Received(first >> 4, first & 0x0F, body)

    def closed_by_broker(self, timeout: float = TIMEOUT) -> bool:
        """True once the broker closes the connection (packets before that are skipped)."""
        deadline = time.monotonic() + timeout
        self._buffer = b""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.sock.settimeout(left)
            try:
                if not self.sock.recv(65536):
                    return True
            except TimeoutError:
                return False
            except ConnectionResetError:
                return True

    def close(self) -> None:
        self.sock.close()


def wait_for(predicate: Any, timeout: float = TIMEOUT, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
