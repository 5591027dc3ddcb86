"""The sans-IO MQTT connection driven byte by byte against a real state machine, no network.

The fake node applies each command at once and releases replies and effects immediately,
so every exchange below is synchronous.
"""

from __future__ import annotations

import struct
from typing import Any

from broker.core import commands as c
from broker.core.auth import check_password, hash_password
from broker.core.errors import AccessRefused, BrokerError, NotAllowed
from broker.core.model import Deliver, User
from broker.core.state import StateMachine
from broker.protocols.mqtt import codec
from broker.protocols.mqtt.connection import MQTTConnection, Settings
from broker.protocols.mqtt.session import SessionRegistry


class FakeNode:
    def __init__(self) -> None:
        self.sm = StateMachine()
        self.connections: dict[int, MQTTConnection] = {}
        self.sessions = SessionRegistry()
        for command in (
            c.DeclareVhost("/"),
            c.PutUser("guest", hash_password("guest", b"salt")),
            c.SetPermissions("guest", "/", ".*", ".*", ".*"),
        ):
            self.submit(command)

    def submit(self, command: c.Command, done: Any = None) -> None:
        try:
            reply, effects, error = *self.sm.apply(command, 0), None
        except BrokerError as exc:
            reply, effects, error = None, [], exc
        self.sm.take_changes()
        if done is not None:
            done(reply, error)
        for effect in effects:
            if isinstance(effect, Deliver) and effect.owner[0] in self.connections:
                self.connections[effect.owner[0]].deliver(effect)

    def defer(self, callback: Any) -> None:
        callback()

    def authenticate(self, username: str, password: str, loopback: bool) -> User:
        user = self.sm.users.get(username)
        if user is None or not check_password(password, user.password_hash):
            raise AccessRefused("bad credentials")
        return user

    def trusted_user(self, username: str, loopback: bool) -> User:
        return self.sm.users[username]

    def vhost_access(self, user: User, vhost: str) -> None:
        if vhost not in self.sm.vhosts:
            raise NotAllowed("no vhost")

    def check_permission(self, user: User, vhost: str, kind: str, resource: str, name: str):
        return None

    def new_name(self, prefix: str) -> str:
        return prefix + "generated"

    def records(self, vhost: str, group: tuple[str, ...]) -> dict[str, Any]:
        return self.sm.records_of(vhost, group)

    def client(self, client_id: str, clean: bool = True, will: bytes = b"") -> MQTTConnection:
        conn = MQTTConnection(len(self.connections) + 1, self, self.sessions, Settings(), True)
        self.connections[conn.id] = conn
        conn.receive_data(connect(client_id, clean, will))
        return conn


def string(text: str) -> bytes:
    return struct.pack(">H", len(text)) + text.encode()


def connect(client_id: str, clean: bool, will: bytes = b"") -> bytes:
    flags = (0x02 if clean else 0) | 0xC0 | (0x04 if will else 0)
    body = string("MQTT") + bytes((4, flags)) + b"\x00\x00" + string(client_id)
    if will:
        body += string("wills") + string(will.decode())
    body += string("guest") + string("guest")
    return bytes((0x10, len(body))) + body


def subscribe(packet_id: int, topic_filter: str, qos: int) -> bytes:
    body = struct.pack(">H", packet_id) + string(topic_filter) + bytes((qos,))
    return bytes((0x82, len(body))) + body


def packets(conn: MQTTConnection) -> list[codec.Packet | tuple[int, bytes]]:
    """What the server sent, decoded: PUBLISH as codec.Publish, others as (type, body)."""
    data = conn.data_to_send()
    out: list[Any] = []
    while data:
        first, size = data[0], data[1]
        assert size < 128
        body = data[2 : 2 + size]
        if first >> 4 == codec.PUBLISH:
            out.append(codec._decode_publish(first & 0x0F, body))
        else:
            out.append((first >> 4, body))
        data = data[2 + size :]
    return out


def test_connack_then_suback_then_retained_copy():
    node = FakeNode()
    pub = node.client("pub")
    assert packets(pub) == [(codec.CONNACK, b"\x00\x00")]
    pub.receive_data(codec.publish(b"r/1", b"kept", 1, True, False, 1))
    assert packets(pub) == [(codec.PUBACK, b"\x00\x01")]
    sub = node.client("sub")
    sub.receive_data(subscribe(3, "r/#", 2))
    out = packets(sub)
    assert out[:2] == [(codec.CONNACK, b"\x00\x00"), (codec.SUBACK, b"\x00\x03\x02")]
    assert out[2] == codec.Publish("r/1", b"kept", 1, True, False, out[2].packet_id)


def test_qos2_retransmission_is_passed_on_once():
    node = FakeNode()
    sub = node.client("sub")
    sub.receive_data(subscribe(1, "t", 0))
    packets(sub)
    pub = node.client("pub", clean=False)
    packets(pub)
    for _ in range(2):
        pub.receive_data(codec.publish(b"t", b"once", 2, False, False, 42))
    assert packets(pub) == [(codec.PUBREC, b"\x00\x2a")] * 2
    assert [p.payload for p in packets(sub)] == [b"once"]
    assert "in:42" in node.records("/", ("mqtt", "pub"))
    pub.receive_data(b"\x62\x02\x00\x2a")
    assert packets(pub) == [(codec.PUBCOMP, b"\x00\x2a")]
    assert "in:42" not in node.records("/", ("mqtt", "pub"))


def test_takeover_closes_the_first_connection_and_publishes_its_will():
    """MQTT-3.1.2-8: without a DISCONNECT, the will goes out whenever the connection closes."""
    node = FakeNode()
    watcher = node.client("watcher")
    watcher.receive_data(subscribe(1, "wills", 0))
    packets(watcher)
    first = node.client("same", will=b"gone")
    second = node.client("same")
    assert first.should_close and not second.should_close
    first.connection_lost()
    assert [p.payload for p in packets(watcher)] == [b"gone"]


def test_keepalive_expiry_publishes_the_will_and_disconnect_does_not():
    node = FakeNode()
    watcher = node.client("watcher")
    watcher.receive_data(subscribe(1, "wills", 0))
    packets(watcher)
    polite = node.client("polite", will=b"polite")
    polite.receive_data(b"\xe0\x00")
    polite.connection_lost()
    silent = node.client("silent", will=b"silent")
    silent.keepalive_expired()
    assert [p.payload for p in packets(watcher)] == [b"silent"]


def test_persistent_session_keeps_subscriptions_and_queued_messages():
    node = FakeNode()
    sub = node.client("keeper", clean=False)
    sub.receive_data(subscribe(1, "k/+", 1))
    sub.receive_data(b"\xe0\x00")
    sub.connection_lost()
    pub = node.client("pub")
    pub.receive_data(codec.publish(b"k/1", b"while away", 1, False, False, 1))
    again = node.client("keeper", clean=False)
    out = packets(again)
    assert out[0] == (codec.CONNACK, b"\x01\x00")  # session present
    assert out[1].payload == b"while away"


def test_empty_client_id_needs_a_clean_session():
    node = FakeNode()
    refused = node.client("", clean=False)
    assert packets(refused) == [(codec.CONNACK, b"\x00\x02")]
    assert refused.should_close
    assigned = node.client("", clean=True)
    assert packets(assigned) == [(codec.CONNACK, b"\x00\x00")]
    assert assigned.client_id == "mqtt-generated"
