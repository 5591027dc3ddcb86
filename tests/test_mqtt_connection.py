"""The sans-IO MQTT connection driven byte by byte against a real state machine, no network.

The gateway and committer are the node's own, over a disk in memory: `node.sent(conn)` writes
and applies what was submitted, then returns what the connection sent.
"""

from __future__ import annotations

import struct
from typing import Any

from broker.core import commands as c
from broker.core.auth import hash_password
from broker.core.model import Deliver
from broker.protocols.mqtt import codec
from broker.protocols.mqtt.connection import MQTTConnection, Settings
from tests.memory_gateway import memory_gateway


class Wired:
    """Stands in for the asyncio protocol: what the gateway asks of a connection."""

    def __init__(self) -> None:
        self.conn: MQTTConnection | None = None

    def deliver(self, effect: Deliver) -> None:
        assert self.conn is not None
        self.conn.deliver(effect)

    def consumer_cancelled(self, effect: Any) -> None:
        assert self.conn is not None
        self.conn.consumer_cancelled(effect.tag)

    def force_close(self, reason: str) -> None:
        assert self.conn is not None
        self.conn.close(reason, publish_will=True)


class Node:
    """A gateway on the real committer, with a disk in memory; `sent()` runs it first."""

    def __init__(self) -> None:
        self.gateway, self.commit = memory_gateway()

    def client(
        self,
        client_id: str,
        clean: bool = True,
        will: bytes = b"",
        user: str = "guest",
        password: str = "guest",
    ) -> MQTTConnection:
        """A connection that sent CONNECT (its CONNACK waits in `sent`)."""
        wired = Wired()
        conn_id = self.gateway.connection_opened(wired)  # type: ignore[arg-type]
        conn = MQTTConnection(conn_id, self.gateway, Settings(), True)
        wired.conn = conn
        conn.receive_data(connect(client_id, clean, will, user, password))
        return conn

    def connected(self, client_id: str, clean: bool = True, will: bytes = b"") -> MQTTConnection:
        """A connection that got its CONNACK (and nothing else yet)."""
        conn = self.client(client_id, clean, will)
        assert self.sent(conn)[0][0] == codec.CONNACK  # type: ignore[index]
        return conn

    def records(self, vhost: str, group: tuple[str, ...]) -> dict[str, Any]:
        self.commit.run()
        return self.commit.state.records_of(vhost, group)

    def sent(self, conn: MQTTConnection) -> list[codec.Packet | tuple[int, bytes]]:
        self.commit.run()
        return packets(conn)


def string(text: str) -> bytes:
    return struct.pack(">H", len(text)) + text.encode()


def connect(
    client_id: str, clean: bool, will: bytes = b"", user: str = "guest", password: str = "guest"
) -> bytes:
    flags = (0x02 if clean else 0) | 0xC0 | (0x04 if will else 0)
    body = string("MQTT") + bytes((4, flags)) + b"\x00\x00" + string(client_id)
    if will:
        body += string("wills") + string(will.decode())
    body += string(user) + string(password)
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
    node = Node()
    pub = node.client("pub")
    assert node.sent(pub) == [(codec.CONNACK, b"\x00\x00")]
    pub.receive_data(codec.publish(b"r/1", b"kept", 1, True, False, 1))
    assert node.sent(pub) == [(codec.PUBACK, b"\x00\x01")]
    sub = node.client("sub")
    sub.receive_data(subscribe(3, "r/#", 2))  # sent before CONNACK: read once it is out
    out = node.sent(sub)
    assert out[:2] == [(codec.CONNACK, b"\x00\x00"), (codec.SUBACK, b"\x00\x03\x02")]
    assert out[2] == codec.Publish("r/1", b"kept", 1, True, False, out[2].packet_id)


def test_qos2_retransmission_is_passed_on_once():
    node = Node()
    sub = node.client("sub")
    sub.receive_data(subscribe(1, "t", 0))
    node.sent(sub)
    pub = node.client("pub", clean=False)
    node.sent(pub)
    for _ in range(2):
        pub.receive_data(codec.publish(b"t", b"once", 2, False, False, 42))
    assert node.sent(pub) == [(codec.PUBREC, b"\x00\x2a")] * 2
    assert [p.payload for p in node.sent(sub)] == [b"once"]
    assert "in:42" in node.records("/", ("mqtt", "pub"))
    pub.receive_data(b"\x62\x02\x00\x2a")
    assert node.sent(pub) == [(codec.PUBCOMP, b"\x00\x2a")]
    assert "in:42" not in node.records("/", ("mqtt", "pub"))


def test_takeover_closes_the_first_connection_and_publishes_its_will():
    """MQTT-3.1.2-8: without a DISCONNECT, the will goes out whenever the connection closes."""
    node = Node()
    watcher = node.client("watcher")
    watcher.receive_data(subscribe(1, "wills", 0))
    node.sent(watcher)
    first = node.connected("same", will=b"gone")
    second = node.connected("same")
    assert first.should_close and not second.should_close
    first.connection_lost()
    assert [p.payload for p in node.sent(watcher)] == [b"gone"]


def test_keepalive_expiry_publishes_the_will_and_disconnect_does_not():
    node = Node()
    watcher = node.client("watcher")
    watcher.receive_data(subscribe(1, "wills", 0))
    node.sent(watcher)
    polite = node.connected("polite", will=b"polite")
    polite.receive_data(b"\xe0\x00")
    polite.connection_lost()
    silent = node.connected("silent", will=b"silent")
    silent.keepalive_expired()
    assert [p.payload for p in node.sent(watcher)] == [b"silent"]


def test_persistent_session_keeps_subscriptions_and_queued_messages():
    node = Node()
    sub = node.client("keeper", clean=False)
    sub.receive_data(subscribe(1, "k/+", 1))
    sub.receive_data(b"\xe0\x00")
    node.sent(sub)
    sub.connection_lost()
    pub = node.client("pub")
    pub.receive_data(codec.publish(b"k/1", b"while away", 1, False, False, 1))
    again = node.client("keeper", clean=False)
    out = node.sent(again)
    assert out[0] == (codec.CONNACK, b"\x01\x00")  # session present
    assert out[1].payload == b"while away"


def test_empty_client_id_needs_a_clean_session():
    node = Node()
    refused = node.client("", clean=False)
    assert node.sent(refused) == [(codec.CONNACK, b"\x00\x02")]
    assert refused.should_close
    assigned = node.client("", clean=True)
    assert node.sent(assigned) == [(codec.CONNACK, b"\x00\x00")]
    assert assigned.client_id.startswith("mqtt-")


def acked(conn: MQTTConnection, publishes: list[Any]) -> None:
    for p in publishes:
        conn.receive_data(codec.ack(codec.PUBACK, p.packet_id))


def test_members_of_a_shared_subscription_take_turns():
    node = Node()
    members = [node.connected(name) for name in ("m1", "m2")]
    for member in members:
        member.receive_data(subscribe(1, "$share/g/jobs/+", 1))
        assert node.sent(member) == [(codec.SUBACK, b"\x00\x01\x01")]
    pub = node.connected("pub")
    for n in range(4):
        pub.receive_data(codec.publish(b"jobs/%d" % n, b"job %d" % n, 1, False, False, n + 1))
    node.sent(pub)
    got = [node.sent(member) for member in members]
    assert [len(g) for g in got] == [2, 2]
    assert sorted(p.payload for g in got for p in g) == [b"job %d" % n for n in range(4)]
    assert all(p.topic == f"jobs/{p.payload[-1:].decode()}" and p.qos == 1 for g in got for p in g)


def test_a_shared_member_dropping_out_gives_its_deliveries_back_to_the_group():
    node = Node()
    stays, drops = node.connected("stays"), node.connected("drops")
    for member in (stays, drops):
        member.receive_data(subscribe(1, "$share/g/t", 1))
        node.sent(member)
    pub = node.connected("pub")
    for n in range(2):
        pub.receive_data(codec.publish(b"t", b"%d" % n, 1, False, False, n + 1))
    acked(stays, node.sent(stays))
    assert len(node.sent(drops)) == 1
    drops.connection_lost()  # unacknowledged: back to the group, not lost with the session
    again = node.sent(stays)
    assert len(again) == 1 and again[0].dup
    # The last member leaving deletes the group's queue.
    body = b"\x00\x02" + string("$share/g/t")
    stays.receive_data(bytes((0xA2, len(body))) + body)
    assert node.sent(stays) == [(codec.UNSUBACK, b"\x00\x02")]
    assert "mqtt-shared-g/t" not in node.commit.state.vhosts["/"].queues
    acked(stays, again)  # a late PUBACK of what the queue had sent changes nothing
    assert node.sent(stays) == [] and not stays.should_close


def test_invalid_shared_and_sys_filters_are_refused():
    node = Node()
    sub = node.connected("sub")
    for n, topic_filter in enumerate(
        ["$share//t", "$share/a+/t", "$share/g", "$share/g/", "$share/g/$SYS/#", "$SYS/a/#/b"]
    ):
        sub.receive_data(subscribe(n + 1, topic_filter, 1))
        assert node.sent(sub) == [(codec.SUBACK, bytes((0, n + 1, 0x80)))], topic_filter


def test_sys_filters_are_for_monitoring_users_only():
    """`$SYS` topics are the broker's own: granted to users tagged monitoring or
    administrator (guest is one), refused to the others."""
    node = Node()
    admin = node.connected("admin")
    admin.receive_data(subscribe(1, "$SYS/#", 0))
    assert node.sent(admin) == [(codec.SUBACK, b"\x00\x01\x00")]
    password = hash_password("pw", b"salt")
    node.commit.submit(c.PutUser("device", password, ()))
    node.commit.submit(c.SetPermissions("device", "/", ".*", ".*", ".*"))
    node.commit.submit(c.PutUser("watcher", password, ("monitoring",)))
    node.commit.submit(c.SetPermissions("watcher", "/", ".*", ".*", ".*"))
    node.commit.run()
    for user, code in (("device", 0x80), ("watcher", 0x00)):
        conn = node.client(user, user=user, password="pw")
        assert node.sent(conn)[0] == (codec.CONNACK, b"\x00\x00")
        conn.receive_data(subscribe(1, "$SYS/broker/uptime", 0))
        assert node.sent(conn) == [(codec.SUBACK, bytes((0, 1, code)))], user


def test_a_shared_filter_does_not_match_like_a_plain_one():
    """A message on the topic `$share/g/x` (an AMQP publisher can send one) reaching the
    session queue through `+/g/x` is for neither filter: not `$share/g/x`, a shared one."""
    node = Node()
    sub = node.connected("sub")
    sub.receive_data(subscribe(1, "+/g/x", 0))
    sub.receive_data(subscribe(2, "$share/g/x", 1))
    node.sent(sub)
    node.gateway.submit(c.Publish("/", "amq.topic", "$share.g.x", {"delivery_mode": 2}, b"odd"))
    node.gateway.submit(c.Publish("/", "amq.topic", "x", {"delivery_mode": 2}, b"shared"))
    assert [(p.topic, p.payload) for p in node.sent(sub)] == [("x", b"shared")]
