"""Connection-level behaviour: auth, tuning, heartbeats, capabilities, vhosts, channels."""

from __future__ import annotations

import asyncio
import signal
import time

import amqp
import pika
import pika.exceptions
import pytest

from .helpers import channel, connection, uid
from .rawamqp import Closed, RawClient, commands, raw_connect

EXPECTED_CAPABILITIES = [
    "publisher_confirms",
    "exchange_exchange_bindings",
    "basic.nack",
    "consumer_cancel_notify",
    "connection.blocked",
    "consumer_priorities",
    "authentication_failure_close",
    "per_consumer_qos",
    "direct_reply_to",
]


def test_plain_auth_and_round_trip(broker):
    q = uid("q")
    with channel(broker) as ch:
        ch.queue_declare(q, exclusive=True)
        ch.basic_publish("", q, b"hello")
        m, _, body = ch.basic_get(q, auto_ack=True)
        assert body == b"hello"


def test_server_properties_and_capabilities(broker):
    with connection(broker) as conn:
        props = conn._impl.server_properties
        caps = props["capabilities"]
        for cap in EXPECTED_CAPABILITIES:
            assert caps.get(cap) is True, cap
        for key in ("product", "version", "platform"):
            assert key in props, key


def test_connection_start_fields(broker):
    with RawClient(broker.host, broker.port) as c:
        c.send(b"AMQP\x00\x00\x09\x01")
        _, start = c.expect(commands.Connection.Start)
        assert (start.version_major, start.version_minor) == (0, 9)
        mechs = start.mechanisms.split()
        assert "PLAIN" in mechs and "AMQPLAIN" in mechs
        assert "en_US" in start.locales.split()


def test_amqplain_auth(broker):
    conn = amqp.Connection(
        host="%s:%d" % (broker.host, broker.port),
        userid=broker.user,
        password=broker.password,
        virtual_host=broker.vhost,
        login_method="AMQPLAIN",
        connect_timeout=10,
    )
    conn.connect()
    try:
        ch = conn.channel()
        q, _, _ = ch.queue_declare("", exclusive=True)
        ch.basic_publish(amqp.Message(b"x"), exchange="", routing_key=q)
        deadline = time.monotonic() + 10
        msg = None
        while msg is None and time.monotonic() < deadline:
            msg = ch.basic_get(q, no_ack=True)
        assert msg is not None and msg.body == b"x"
    finally:
        conn.close()


def test_amqplain_bad_password_refused(broker):
    conn = amqp.Connection(
        host="%s:%d" % (broker.host, broker.port),
        userid=broker.user,
        password="wrong-" + uid(),
        virtual_host=broker.vhost,
        login_method="AMQPLAIN",
        connect_timeout=10,
    )
    with pytest.raises(amqp.exceptions.AccessRefused):
        conn.connect()
    conn.collect()


def test_bad_password_pika(broker):
    with pytest.raises(pika.exceptions.ProbableAuthenticationError) as ei:
        pika.BlockingConnection(broker.params(password="wrong-password"))
    assert "ACCESS_REFUSED" in str(ei.value) and "403" in str(ei.value)


@pytest.mark.parametrize("user,password", [("guest", "nope"), ("no-such-user", "guest")])
def test_bad_credentials_raw_access_refused(broker, user, password):
    # with the authentication_failure_close capability the server sends connection.close 403
    with RawClient(broker.host, broker.port) as c:
        c.send(b"AMQP\x00\x00\x09\x01")
        c.expect(commands.Connection.Start)
        c.send_method(
            commands.Connection.StartOk(
                client_properties={"capabilities": {"authentication_failure_close": True}},
                mechanism="PLAIN",
                response="\0%s\0%s" % (user, password),
            )
        )
        close = c.expect_connection_close(timeout=10)
        assert close.reply_code == 403
        assert close.reply_text.startswith("ACCESS_REFUSED")


def test_unknown_mechanism_refused(broker):
    with RawClient(broker.host, broker.port) as c:
        c.send(b"AMQP\x00\x00\x09\x01")
        c.expect(commands.Connection.Start)
        c.send_method(
            commands.Connection.StartOk(
                client_properties={"capabilities": {"authentication_failure_close": True}},
                mechanism="NOT-A-MECH",
                response="x",
            )
        )
        try:
            c.expect_connection_close(timeout=10)  # RabbitMQ: 403 ACCESS_REFUSED
        except Closed:
            pass


def test_unknown_vhost_not_allowed(broker):
    vhost = uid("no-such-vhost")
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as ei:
        pika.BlockingConnection(broker.params(virtual_host=vhost))
    assert "NOT_ALLOWED" in str(ei.value) and "530" in str(ei.value)
    with RawClient(broker.host, broker.port) as c:
        c.handshake(user=broker.user, password=broker.password, open_vhost=False)
        c.send_method(commands.Connection.Open(virtual_host=vhost))
        close = c.expect_connection_close(timeout=10)
        # RabbitMQ: "NOT_ALLOWED - vhost <name> not found", class 10 method 40
        assert close.reply_code == 530
        assert close.reply_text.startswith("NOT_ALLOWED")
        assert (close.class_id, close.method_id) == (10, 40)


def test_client_can_lower_tune_values(broker):
    with connection(broker, channel_max=5, frame_max=4096, heartbeat=0) as conn:
        params = conn._impl.params
        assert params.channel_max == 5
        assert params.frame_max == 4096
        assert params.heartbeat == 0
        ch = conn.channel()
        q = ch.queue_declare("", exclusive=True).method.queue
        body = bytes(range(256)) * 100  # 25.6 KB -> several 4088-byte body frames
        ch.basic_publish("", q, body)
        deadline = time.monotonic() + 10
        while True:
            m, _, got = ch.basic_get(q, auto_ack=True)
            if m:
                break
            assert time.monotonic() < deadline
        assert got == body


def test_server_tune_defaults_sane(broker):
    with raw_connect(broker) as c:
        t = c.tune
        assert 1 <= t.channel_max <= 65535
        assert t.frame_max == 0 or t.frame_max >= 4096


@pytest.mark.own_broker
def test_server_tune_reflects_config(broker_factory):
    b = broker_factory("--channel-max", "10", "--frame-max", "8192", "--heartbeat", "7")
    with raw_connect(b) as c:
        assert (c.tune.channel_max, c.tune.frame_max, c.tune.heartbeat) == (10, 8192, 7)
    # a client asking for more gets the server's limits
    with connection(b, channel_max=100, frame_max=131072, heartbeat=None) as conn:
        params = conn._impl.params
        assert params.channel_max == 10
        assert params.frame_max == 8192
        assert params.heartbeat == 7


def test_heartbeat_negotiation(broker):
    proposals = []

    def choose(conn, server_value):
        proposals.append(server_value)
        return 5

    with connection(broker, heartbeat=choose) as conn:
        assert len(proposals) == 1 and proposals[0] >= 0
        assert conn._impl.params.heartbeat == 5
        conn.channel().queue_declare("", exclusive=True)
    # accepting the server's value
    with connection(broker, heartbeat=None) as conn:
        assert conn._impl.params.heartbeat == proposals[0]


@pytest.mark.parametrize("frame_max", [1000, 2**24])
def test_out_of_range_frame_max_in_tune_ok_refused(broker, frame_max):
    # RabbitMQ closes the connection when tune-ok frame_max is < 4096 or > its own max
    with RawClient(broker.host, broker.port) as c:
        c.send(b"AMQP\x00\x00\x09\x01")
        c.expect(commands.Connection.Start)
        c.send_method(
            commands.Connection.StartOk(
                client_properties={},
                mechanism="PLAIN",
                response="\0%s\0%s" % (broker.user, broker.password),
            )
        )
        _, tune = c.expect(commands.Connection.Tune)
        if tune.frame_max == 0 and frame_max > 4096:
            pytest.skip("server has no frame_max limit")
        c.send_method(
            commands.Connection.TuneOk(
                channel_max=tune.channel_max, frame_max=frame_max, heartbeat=0
            )
        )
        c.send_method(commands.Connection.Open(virtual_host=broker.vhost))
        deadline = time.monotonic() + 10
        with pytest.raises(Closed):
            while time.monotonic() < deadline:
                _, f = c.recv_frame(timeout=max(0.1, deadline - time.monotonic()))
                assert not isinstance(f, commands.Connection.OpenOk)
                if isinstance(f, commands.Connection.Close):
                    c.send_method(commands.Connection.CloseOk())


def test_channel_max_exceeded(broker):
    with raw_connect(broker, channel_max=3) as c:
        for n in (1, 2, 3):
            c.open_channel(n)
        c.send_method(commands.Channel.Open(), 4)
        close = c.expect_connection_close(timeout=10)
        # RabbitMQ: 530 "NOT_ALLOWED - number of channels opened (3) has reached the
        # negotiated channel_max (3)"
        assert close.reply_code == 530
        assert close.reply_text.startswith("NOT_ALLOWED")


def test_channel_close_and_reopen_same_number(broker):
    with raw_connect(broker) as c:
        c.open_channel(3)
        c.send_method(
            commands.Channel.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0), 3
        )
        c.expect(commands.Channel.CloseOk)
        c.open_channel(3)
        c.send_method(commands.Queue.Declare(queue="", exclusive=True), 3)
        _, ok = c.expect(commands.Queue.DeclareOk)
        assert ok.queue.startswith("amq.gen-")


def test_many_channels_one_connection(broker):
    with connection(broker) as conn:
        chans = [conn.channel() for _ in range(50)]
        qs = []
        for i, ch in enumerate(chans):
            q = ch.queue_declare("", exclusive=True).method.queue
            ch.basic_publish("", q, str(i).encode())
            qs.append(q)
        for i, (ch, q) in enumerate(zip(chans, qs, strict=True)):
            deadline = time.monotonic() + 10
            while True:
                m, _, body = ch.basic_get(q, auto_ack=True)
                if m:
                    assert body == str(i).encode()
                    break
                assert time.monotonic() < deadline


def test_clean_client_close(broker):
    with raw_connect(broker) as c:
        c.open_channel(1)
        c.send_method(
            commands.Connection.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0)
        )
        c.expect(commands.Connection.CloseOk)
        # the client closes the socket after close-ok (RabbitMQ leaves that to the client)


def test_update_secret_aio_pika(broker):
    import aio_pika

    async def main():
        conn = await aio_pika.connect(broker.amqp_url, timeout=10)
        try:
            res = await conn.update_secret(broker.password, reason="rotation", timeout=10)
            assert type(res).__name__ == "UpdateSecretOk"
            ch = await conn.channel()
            q = await ch.declare_queue("", exclusive=True)
            await ch.default_exchange.publish(aio_pika.Message(b"after-update"), q.name)
            msg = await q.get(timeout=10, fail=False)
            for _ in range(100):
                if msg is not None:
                    break
                await asyncio.sleep(0.05)
                msg = await q.get(timeout=10, fail=False)
            assert msg is not None and msg.body == b"after-update"
            await msg.ack()
        finally:
            await conn.close()
        # a wrong secret: test_amqp_rabbit_parity.py::test_update_secret_accepted

    asyncio.run(asyncio.wait_for(main(), 30))


@pytest.mark.own_broker
def test_sigterm_closes_connections_with_connection_forced(fresh_broker):
    conn = pika.BlockingConnection(fresh_broker.params())
    conn.channel()
    fresh_broker.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 15
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as ei:
        while time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.2)
    assert ei.value.reply_code == 320
    assert ei.value.reply_text.startswith("CONNECTION_FORCED")
    assert fresh_broker.proc.wait(timeout=15) == 0


def test_version_flag():
    # only meaningful for our broker; harmless (and skipped) elsewhere
    import subprocess
    import sys

    from .conftest import EXTERNAL_URL, REPO_ROOT

    if EXTERNAL_URL:
        pytest.skip("our broker's CLI")
    out = subprocess.run(
        [sys.executable, "-m", "broker", "--version"],
        cwd=str(REPO_ROOT),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip()
