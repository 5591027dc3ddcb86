"""Connection limits: the node's, a source address's, and RabbitMQ's vhost and user limits.

A client over a limit is refused with its protocol's error (AMQP connection.close 530 at
connection.open, MQTT CONNACK 3), logged once per interval, while the admin socket and the
clients already connected carry on.
"""

from __future__ import annotations

import json
import socket

import pika
import pika.exceptions
import pytest
from cmq.cmq_exception import CMQServerException
from cmq.queue import QueueMeta

from .cmq_helpers import CmqBroker, ok
from .conftest import BrokerProcess
from .helpers import channel, connection, expect_channel_close, uid, wait_until
from .mqtt_helpers import Paho, RawMQTT, connect_packet

pytestmark = pytest.mark.own_broker

SERVER_UNAVAILABLE = 3
#: paho reports MQTT 3.1.1's CONNACK 3 as MQTT 5's "Server unavailable" reason code
PAHO_SERVER_UNAVAILABLE = 136


def status(b) -> dict[str, int]:
    lines = b.cli("status").stdout.splitlines()
    return {key: int(value) for key, value in (line.split("\t") for line in lines)}


def settled(b) -> None:
    """No connection left over from start-up probes (they count until the broker sees EOF)."""
    wait_until(lambda: status(b)["connections"] == 0, message="no open connections")


def refused_amqp(b, **kw) -> str:
    """Connect with pika, expecting a refusal at connection.open; the broker's reason."""
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as info:
        pika.BlockingConnection(b.params(**kw))
    text = str(info.value)
    assert "530" in text, text
    return text


def mqtt_code(b, username: str = "guest", password: str = "guest") -> int:
    client = Paho(b, username=username, password=password)
    try:
        code, _ = client.connect(expect_ok=False)
        return code
    finally:
        client.close()


def raw_mqtt_from(b, source: str) -> RawMQTT:
    """A raw MQTT socket whose source address is `source` (any 127/8 address on Linux)."""
    raw = RawMQTT.__new__(RawMQTT)
    raw.sock = socket.create_connection((b.host, b.mqtt_port), 10, source_address=(source, 0))
    raw._buffer = b""
    return raw


def warnings_about(b, text: str) -> int:
    return sum(1 for line in b.log_tail(200_000).splitlines() if "WARNING" in line and text in line)


def test_a_node_at_its_limit_refuses_the_next_client_while_the_admin_socket_and_others_work(
    broker_factory,
):
    b = broker_factory("--max-connections", "2")
    settled(b)
    with connection(b) as first:
        ch = first.channel()
        q = ch.queue_declare("", exclusive=True).method.queue
        subscriber = Paho(b)
        subscriber.connect()
        try:
            reason = refused_amqp(b)
            assert "NOT_ALLOWED - connection refused: node connection limit (2) is reached" in (
                reason
            )
            assert mqtt_code(b) == PAHO_SERVER_UNAVAILABLE
            # The admin socket is no client connection: it still answers.
            assert status(b)["connections_refused"] >= 2
            # The clients already connected keep working.
            ch.basic_publish("", q, b"still here")
            assert wait_until(lambda: ch.basic_get(q, auto_ack=True)[2]) == b"still here"
            subscriber.publish("limits/still", b"here", qos=1)
        finally:
            subscriber.close()
    # A slot freed is a slot taken.
    wait_until(lambda: status(b)["connections"] == 0, message="both clients gone")
    with connection(b) as again:
        assert again.is_open
    assert warnings_about(b, "node connection limit (2) is reached") == 1


class FewDescriptorsBroker(BrokerProcess):
    """A broker whose process may open only `FD_LIMIT` files (soft and hard)."""

    FD_LIMIT = 300

    def command(self):
        return ["prlimit", f"--nofile={self.FD_LIMIT}:{self.FD_LIMIT}", "--", *super().command()]


@pytest.fixture
def few_descriptors_broker(tmp_path):
    b = FewDescriptorsBroker(tmp_path / "data", ["--handshake-timeout", "60"])
    b.start()
    try:
        yield b
    finally:
        b.stop()


def test_more_clients_than_descriptors_are_refused_while_the_admin_socket_works(
    few_descriptors_broker,
):
    """With no option at all, the node keeps descriptors in reserve: a client holding more
    connections than the process may open files is refused, not the node starved."""
    b = few_descriptors_broker
    settled(b)
    limit = FewDescriptorsBroker.FD_LIMIT - FewDescriptorsBroker.FD_LIMIT // 2
    with connection(b) as existing:
        ch = existing.channel()
        q = ch.queue_declare("", exclusive=True).method.queue
        hostile = []
        try:
            for n in range(2 * FewDescriptorsBroker.FD_LIMIT):
                source = f"127.0.1.{n % 250 + 1}"
                hostile.append(
                    socket.create_connection((b.host, b.port), 10, source_address=(source, 0))
                )
            wait_until(lambda: status(b)["connections_refused"] > 0, message="a refusal")
            assert f"node connection limit ({limit}) is reached" in refused_amqp(b)
            ch.basic_publish("", q, b"still here")
            assert wait_until(lambda: ch.basic_get(q, auto_ack=True)[2]) == b"still here"
        finally:
            for sock in hostile:
                sock.close()
    wait_until(lambda: status(b)["connections"] == 0, message="the flood gone")
    with connection(b) as again:
        assert again.is_open
    assert "Too many open files" not in b.log_tail(200_000)


def test_http_connections_count_and_over_the_limit_get_a_cmq_error(broker_factory):
    b = broker_factory("--max-connections", "1")
    cmq = CmqBroker.attach(b)
    settled(b)
    held = cmq.client()  # one keep-alive connection: the node's only one
    try:
        ok(held.call("ListQueue"))
        assert "node connection limit (1) is reached" in refused_amqp(b)
        with pytest.raises(CMQServerException) as info:
            cmq.account().get_queue(uid("q")).get_attributes()
        assert info.value.code == 4420
        assert "connection refused: node connection limit (1) is reached" in info.value.message
        ok(held.call("ListQueue"))  # the connection already open carries on
    finally:
        held.close()


def test_the_per_address_limit_refuses_one_address_and_not_another(broker_factory):
    b = broker_factory("--max-connections-per-ip", "1")
    settled(b)
    with connection(b):
        reason = refused_amqp(b)
        assert "source address connection limit (1) is reached" in reason
        assert mqtt_code(b) == PAHO_SERVER_UNAVAILABLE
        other = raw_mqtt_from(b, "127.0.0.2")
        try:
            assert other.connect(uid("other"), username="guest", password="guest") == (False, 0)
        finally:
            other.close()


def test_a_flood_of_refused_connections_is_dropped_not_held(broker_factory):
    b = broker_factory("--max-connections-per-ip", "2")
    settled(b)
    hostile = [
        socket.create_connection((b.host, b.port), 10, source_address=("127.0.0.3", 0))
        for _ in range(200)
    ]
    try:
        # Two admitted, at most 64 refused ones waiting to be told, the rest dropped at once.
        wait_until(lambda: status(b)["connections"] <= 2 + 65, message="the flood dropped")
        with channel(b) as ch:
            ch.queue_declare("", exclusive=True)
        assert warnings_about(b, "source address connection limit (2) is reached") == 1
    finally:
        for sock in hostile:
            sock.close()


def test_vhost_connection_limit_through_pika_and_paho(fresh_broker):
    b = fresh_broker
    b.cli("vhosts", "set-limits", "/", '{"max-connections": 1}')
    with connection(b):
        reason = refused_amqp(b)
        assert "access to vhost '/' refused for user 'guest': connection limit (1) is reached" in (
            reason
        )
        assert mqtt_code(b) == PAHO_SERVER_UNAVAILABLE
        b.cli("vhosts", "set-limits", "/", "{}")
        with connection(b) as second:
            assert second.is_open


def test_user_connection_limit_through_pika_and_paho(fresh_broker):
    b = fresh_broker
    name, password = uid("limited"), "pw"
    b.cli("users", "add", name, password)
    b.cli("permissions", "set", name, ".*", ".*", ".*")
    b.cli("users", "set-limits", name, '{"max-connections": 1}')
    creds = {"user": name, "password": password}
    with connection(b, **creds):
        reason = refused_amqp(b, **creds)
        assert f"Connection refused for user '{name}': user connection limit (1) is reached" in (
            reason
        )
        assert mqtt_code(b, name, password) == PAHO_SERVER_UNAVAILABLE
        with connection(b) as other_user:  # guest has no limit
            assert other_user.is_open


def test_user_channel_limit_counts_every_connection_of_the_user(fresh_broker):
    b = fresh_broker
    name, password = uid("chan"), "pw"
    b.cli("users", "add", name, password)
    b.cli("permissions", "set", name, ".*", ".*", ".*")
    b.cli("users", "set-limits", name, '{"max-channels": 2}')
    with connection(b, user=name, password=password) as one:
        one.channel()
        with connection(b, user=name, password=password) as two:
            kept = two.channel()
            with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as info:
                two.channel()
            assert info.value.reply_code == 530
            assert info.value.reply_text == (
                f"NOT_ALLOWED - number of channels opened for user '{name}' has reached the "
                "maximum allowed user limit of (2)"
            )
            assert not kept.is_open
        one.channel().queue_declare("", exclusive=True)  # the other connection's slot is free


def test_vhost_queue_limit(fresh_broker):
    b = fresh_broker
    b.cli("vhosts", "set-limits", "/", '{"max-queues": 2}')
    with channel(b) as ch:
        first, second = uid("q"), uid("q")
        ch.queue_declare(first, exclusive=True)
        ch.queue_declare(second, exclusive=True)
        ch.queue_declare(first, exclusive=True)  # a redeclaration is no new queue
        third = uid("q")
        err = expect_channel_close(lambda: ch.queue_declare(third), 406)
        assert err.reply_text == (
            f"PRECONDITION_FAILED - cannot declare queue '{third}' in vhost '/': vhost queue "
            "limit (2) is reached"
        )


def test_vhost_queue_limit_through_the_cmq_sdk(broker_factory):
    b = broker_factory()
    account = CmqBroker.attach(b).account()
    b.cli("vhosts", "set-limits", "/", '{"max-queues": 1}')
    account.get_queue(uid("q")).create(QueueMeta())
    with pytest.raises(CMQServerException) as info:
        account.get_queue(uid("q")).create(QueueMeta())
    assert info.value.code == 4450
    assert "vhost queue limit (1) is reached" in info.value.message


def test_limits_survive_a_restart(fresh_broker):
    b = fresh_broker
    name = uid("durable")
    b.cli("users", "add", name, "pw")
    b.cli("users", "set-limits", name, '{"max-connections": 3, "max-channels": 7}')
    b.cli("vhosts", "set-limits", "/", '{"max-connections": 0}')
    b.restart()
    assert b.cli("users", "limits").stdout.splitlines() == [
        "name\tlimits",
        f"{name}\t" + json.dumps({"max-channels": 7, "max-connections": 3}),
    ]
    assert b.cli("vhosts", "limits").stdout.splitlines() == [
        "name\tlimits",
        "/\t" + json.dumps({"max-connections": 0}),
    ]
    refused_amqp(b)


def test_bad_limits_are_refused_by_the_cli(fresh_broker):
    b = fresh_broker
    for args, why in (
        (("vhosts", "set-limits", "/", '{"max-channels": 1}'), "unknown vhost limit"),
        (("vhosts", "set-limits", "/", "not json"), "expected a JSON object"),
        (("vhosts", "set-limits", uid("novhost"), '{"max-queues": 1}'), "not found"),
        (("users", "set-limits", uid("nobody"), '{"max-channels": 1}'), "no user"),
        (("users", "set-limits", "guest", '{"max-channels": "ten"}'), "must be an integer"),
        # past 64 bits the log could not carry it: refused before it is proposed
        (("users", "set-limits", "guest", '{"max-channels": 9223372036854775808}'), "64 bits"),
    ):
        res = b.cli(*args, check=False)
        assert res.returncode != 0 and why in res.stderr, (args, res.stderr)
    assert b.cli("vhosts", "limits").stdout == b.cli("users", "limits").stdout == "name\tlimits\n"
    b.cli("users", "set-limits", "guest", '{"max-channels": 5}')  # the node goes on


def test_the_raw_connect_packet_helper_is_refused_too(broker_factory):
    """Refused before login: a CONNECT with no valid credentials still gets CONNACK 3."""
    b = broker_factory("--max-connections", "1")
    settled(b)
    with connection(b):
        raw = RawMQTT(b)
        try:
            raw.send(connect_packet(uid("c"), username="nobody", password="wrong"))
            ack = raw.read()
            assert (ack.type, ack.body[1]) == (2, SERVER_UNAVAILABLE)
        finally:
            raw.close()
