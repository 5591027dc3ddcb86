"""Malformed / hostile input on raw sockets: the broker must answer per spec and survive."""

from __future__ import annotations

import os
import resource
import selectors
import socket
import time

import pytest

from .conftest import EXTERNAL_URL
from .helpers import channel, uid
from .rawamqp import PROTOCOL_HEADER, Closed, ContentBody, RawClient, commands, header, raw_connect

# RabbitMQ's default handshake_timeout is 10 s; ours is configured per test.
HANDSHAKE_TIMEOUT = 2


def assert_broker_healthy(broker):
    """A normal pika client can still do a round trip."""
    q = uid("health")
    with channel(broker) as ch:
        ch.queue_declare(q, exclusive=True)
        ch.basic_publish("", q, b"ping")
        deadline = time.monotonic() + 10
        while True:
            m, _, body = ch.basic_get(q, auto_ack=True)
            if m is not None:
                assert body == b"ping"
                return
            assert time.monotonic() < deadline, "health-check message never arrived"
            ch.connection.process_data_events(time_limit=0.05)


def recv_until_close(c: RawClient, timeout=10.0):
    return c.expect_connection_close(timeout=timeout)


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"AMQP\x00\x00\x08\x00",  # AMQP 0-8
        b"AMQP\x01\x01\x00\x0a",  # AMQP 1.0 style header
        b"\x00\x01\x02\x03\x04\x05\x06\x07",
    ],
)
def test_bad_protocol_header_gets_our_header_and_close(broker, garbage):
    with RawClient(broker.host, broker.port) as c:
        c.send(garbage)
        got = c.recv_bytes(8, timeout=10)
        assert got == PROTOCOL_HEADER
        c.wait_closed(10)
    assert_broker_healthy(broker)


def test_random_bytes_header(broker):
    for _ in range(3):
        data = os.urandom(64)
        if data.startswith(b"AMQP"):
            continue
        with RawClient(broker.host, broker.port) as c:
            c.send(data)
            assert c.recv_bytes(8, timeout=10) == PROTOCOL_HEADER
            c.wait_closed(10)
    assert_broker_healthy(broker)


def test_bad_frame_end_marker_is_frame_error(broker):
    with raw_connect(broker) as c:
        c.open_channel(1)
        # a channel.close method frame whose frame-end octet is wrong
        c.send(c.raw_frame(1, 1, b"\x00\x14\x00\x0a", end=b"\x00"))
        close = recv_until_close(c)
        assert close.reply_code == 501
        assert close.reply_text.startswith("FRAME_ERROR")
    assert_broker_healthy(broker)


def test_close_ok_nobody_asked_for_is_channel_error(broker):
    """Found by the fuzz test: an unsolicited close-ok closed the socket without a word."""
    with raw_connect(broker) as c:
        c.open_channel(1)
        c.send_method(commands.Connection.CloseOk())
        close = recv_until_close(c)
        assert close.reply_code == 504  # as RabbitMQ answers
        assert (close.class_id, close.method_id) == (10, 51)
    assert_broker_healthy(broker)


def test_empty_method_frame_on_a_closed_channel_is_channel_error(broker):
    """Found by the fuzz test: it was 541 INTERNAL_ERROR (a struct.error in the broker)."""
    with raw_connect(broker) as c:
        c.send(c.raw_frame(1, 5, b""))
        assert recv_until_close(c).reply_code == 504
    assert_broker_healthy(broker)


def test_method_frame_too_short_for_its_ids_is_syntax_error(broker):
    """Found by the fuzz test: it was 541 INTERNAL_ERROR (a struct.error in the broker)."""
    with raw_connect(broker) as c:
        c.open_channel(1)
        c.send(c.raw_frame(1, 1, b"\x00\x3c"))
        assert recv_until_close(c).reply_code == 502
    assert_broker_healthy(broker)


def test_unknown_frame_type_is_frame_error(broker):
    with raw_connect(broker) as c:
        c.send(c.raw_frame(9, 0, b"abc"))
        close = recv_until_close(c)
        assert close.reply_code == 501
    assert_broker_healthy(broker)


def test_oversized_frame_is_frame_error(broker):
    q = uid("q")
    with raw_connect(broker, frame_max=4096) as c:
        assert c.tune.frame_max >= 4096
        c.open_channel(1)
        c.send_method(commands.Basic.Publish(exchange="", routing_key=q), 1)
        c.send_frame(header.ContentHeader(0, 10000, commands.Basic.Properties()), 1)
        c.send_frame(ContentBody(b"x" * 10000), 1)  # one 10000-byte body frame > 4096
        close = recv_until_close(c)
        assert close.reply_code == 501
        assert close.reply_text.startswith("FRAME_ERROR")
    assert_broker_healthy(broker)


def test_truncated_frames_then_disconnect(broker):
    # the client dies in the middle of frames; the broker must just drop the connection
    for cut in (1, 3, 7, 12):
        with raw_connect(broker) as c:
            c.open_channel(1)
            frame = c.raw_frame(1, 1, b"\x00\x32\x00\x0a" + b"\x00" * 16)
            c.send(frame[:cut])
    with RawClient(broker.host, broker.port) as c:
        c.send(PROTOCOL_HEADER[:5])  # truncated protocol header
    assert_broker_healthy(broker)


def test_frame_on_unopened_channel_is_channel_error(broker):
    with raw_connect(broker) as c:
        c.send_method(commands.Queue.Declare(queue="", exclusive=True), 5)
        close = recv_until_close(c)
        assert close.reply_code == 504
        assert close.reply_text.startswith("CHANNEL_ERROR")
    assert_broker_healthy(broker)


def test_publish_on_unopened_channel_is_channel_error(broker):
    with raw_connect(broker) as c:
        c.send_method(commands.Basic.Publish(exchange="", routing_key="x"), 1)
        c.send_frame(header.ContentHeader(0, 5, commands.Basic.Properties()), 1)
        c.send_frame(ContentBody(b"hello"), 1)
        close = recv_until_close(c)
        assert close.reply_code == 504
        assert (close.class_id, close.method_id) == (60, 40)
    assert_broker_healthy(broker)


def test_second_channel_open_is_channel_error(broker):
    with raw_connect(broker) as c:
        c.open_channel(1)
        c.send_method(commands.Channel.Open(), 1)
        close = recv_until_close(c)
        assert close.reply_code == 504
        assert (close.class_id, close.method_id) == (20, 10)


def test_non_connection_method_on_channel_zero(broker):
    with raw_connect(broker) as c:
        c.send_method(commands.Queue.Declare(queue="", exclusive=True), 0)
        close = recv_until_close(c)
        assert close.reply_code == 504


@pytest.mark.parametrize("what", ["body", "header"])
def test_content_without_method_is_unexpected_frame(broker, what):
    with raw_connect(broker) as c:
        c.open_channel(1)
        if what == "body":
            c.send_frame(ContentBody(b"hello"), 1)
        else:
            c.send_frame(header.ContentHeader(0, 5, commands.Basic.Properties()), 1)
        close = recv_until_close(c)
        assert close.reply_code == 505
        assert close.reply_text.startswith("UNEXPECTED_FRAME")
    assert_broker_healthy(broker)


def test_method_instead_of_content_header_is_unexpected_frame(broker):
    with raw_connect(broker) as c:
        c.open_channel(1)
        c.send_method(commands.Basic.Publish(exchange="", routing_key="x"), 1)
        c.send_method(commands.Queue.Declare(queue="", exclusive=True), 1)
        close = recv_until_close(c)
        assert close.reply_code == 505
        assert (close.class_id, close.method_id) == (60, 40)
    assert_broker_healthy(broker)


def _handshake_timeout_broker(broker_factory):
    b = broker_factory("--handshake-timeout", str(HANDSHAKE_TIMEOUT))
    return b, (15.0 if EXTERNAL_URL else HANDSHAKE_TIMEOUT + 5.0)


def test_client_that_never_completes_handshake_is_closed(broker_factory):
    b, limit = _handshake_timeout_broker(broker_factory)
    silent = RawClient(b.host, b.port)  # sends nothing at all
    half = RawClient(b.host, b.port)  # protocol header, no start-ok
    half.send(PROTOCOL_HEADER)
    _, start = half.expect(commands.Connection.Start)
    assert "PLAIN" in start.mechanisms.split()
    tuned = RawClient(b.host, b.port)  # stops after start-ok (no tune-ok/open)
    tuned.send(PROTOCOL_HEADER)
    tuned.expect(commands.Connection.Start)
    tuned.send_method(
        commands.Connection.StartOk(
            client_properties={}, mechanism="PLAIN", response="\0%s\0%s" % (b.user, b.password)
        )
    )
    tuned.expect(commands.Connection.Tune)
    t0 = time.monotonic()
    for c in (silent, half, tuned):
        try:
            # The server's timer fires `limit` s after accept; allow for a loaded machine.
            c.wait_closed(max(0.5, limit + 5 - (time.monotonic() - t0)))
        finally:
            c.close()
    assert_broker_healthy(b)


def test_missed_heartbeats_close_connection(broker):
    # negotiate a 1 s heartbeat and then say nothing: the server sends heartbeats and
    # closes the socket after missing ours (RabbitMQ: ~2-3 intervals, no connection.close)
    with raw_connect(broker, heartbeat_secs=1) as c:
        heartbeats = 0
        deadline = time.monotonic() + 15
        with pytest.raises(Closed):
            while time.monotonic() < deadline:
                _, f = c.recv_frame(timeout=max(0.1, deadline - time.monotonic()))
                if type(f).__name__ == "Heartbeat":
                    heartbeats += 1
                elif isinstance(f, commands.Connection.Close):
                    c.send_method(commands.Connection.CloseOk())
        assert heartbeats >= 1
    assert_broker_healthy(broker)


def test_client_heartbeats_keep_connection_alive(broker):
    with raw_connect(broker, heartbeat_secs=1) as c:
        c.open_channel(1)
        end = time.monotonic() + 4
        while time.monotonic() < end:
            c.send(b"\x08\x00\x00\x00\x00\x00\x00\xce")
            try:
                c.recv_frame(timeout=0.5)
            except TimeoutError:
                pass
        c.send_method(commands.Queue.Declare(queue="", exclusive=True), 1)
        _, ok = c.recv_method(timeout=5)
        assert isinstance(ok, commands.Queue.DeclareOk)


def _raise_fd_limit(n):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n:
        new = n if hard == resource.RLIM_INFINITY else min(n, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@pytest.mark.timeout(90)
def test_thousand_idle_connections(broker_factory):
    # The RabbitMQ used for validation here runs with a 1024 fd soft limit (it allows
    # ~832 sockets and answers 541 INTERNAL_ERROR beyond), so against an external broker
    # the count is lowered; our broker must take the full 1,000.
    n = int(os.environ.get("COMPAT_IDLE_CONNECTIONS", "600" if EXTERNAL_URL else "1000"))
    b, limit = _handshake_timeout_broker(broker_factory)
    have = _raise_fd_limit(n + 200)
    if have < n + 100:
        pytest.skip("cannot raise fd limit to %d" % (n + 100))
    socks = []
    try:
        for i in range(n):
            s = socket.create_connection((b.host, b.port), timeout=10)
            if i % 3 == 1:
                s.sendall(PROTOCOL_HEADER)  # some got as far as connection.start
            socks.append(s)
        # the broker still serves normal clients while they sit there
        assert_broker_healthy(b)
        # ... and closes every one of them after the handshake timeout
        sel = selectors.DefaultSelector()
        for s in socks:
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
        open_ = len(socks)
        deadline = time.monotonic() + limit + 20
        while open_ and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=0.5):
                try:
                    data = key.fileobj.recv(65536)
                except (ConnectionResetError, BrokenPipeError):
                    data = b""
                except BlockingIOError:
                    continue
                if not data:
                    sel.unregister(key.fileobj)
                    open_ -= 1
        assert open_ == 0, "%d idle connections still open" % open_
        sel.close()
    finally:
        for s in socks:
            s.close()
    assert_broker_healthy(b)
