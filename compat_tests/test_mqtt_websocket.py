"""MQTT over WebSocket (path /mqtt, subprotocol mqtt), with paho's websocket transport."""

from __future__ import annotations

import base64
import os
import socket

import pytest

from compat_tests.mqtt_helpers import Paho, uid

pytestmark = pytest.mark.own_broker


def test_websocket_client_talks_to_tcp_client(broker):
    topic = uid("ws")
    ws = Paho(broker, websocket=True)
    tcp = Paho(broker)
    ws.connect()
    tcp.connect()
    ws.subscribe((topic + "/to-ws", 2))
    tcp.subscribe((topic + "/to-tcp", 1))
    tcp.publish(topic + "/to-ws", b"hello browser", qos=2)
    msg = ws.message()
    assert (msg.payload, msg.qos) == (b"hello browser", 2)
    ws.publish(topic + "/to-tcp", b"x" * 70_000, qos=1)  # a 64-bit WebSocket frame length
    assert tcp.message().payload == b"x" * 70_000
    ws.close()
    tcp.close()


def test_websocket_will_on_dropped_connection(broker):
    topic = uid("ws-will")
    watcher = Paho(broker)
    watcher.connect()
    watcher.subscribe((topic, 1))
    ws = Paho(broker, websocket=True, will=(topic, b"browser tab closed", 1, False))
    ws.connect()
    ws.stop()
    ws.client.socket()._socket.shutdown(socket.SHUT_RDWR)  # the TCP socket under the frames
    assert watcher.message().payload == b"browser tab closed"
    watcher.close()


def handshake(broker, path: str, protocol: str | None) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {broker.host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    if protocol:
        lines.append(f"Sec-WebSocket-Protocol: {protocol}")
    with socket.create_connection((broker.host, broker.mqtt_ws_port), 10) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.split(b"\r\n", 1)[0]


def test_websocket_handshake_checks_path_and_subprotocol(broker):
    assert handshake(broker, "/mqtt", "mqtt") == b"HTTP/1.1 101 Switching Protocols"
    assert handshake(broker, "/other", "mqtt") == b"HTTP/1.1 404 Not Found"
    assert handshake(broker, "/mqtt", "wamp") == b"HTTP/1.1 400 Bad Request"
