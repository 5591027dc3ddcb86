"""Small helpers shared by the compatibility tests."""

from __future__ import annotations

import contextlib
import time
import uuid

import pika
import pika.exceptions


def uid(prefix: str = "t") -> str:
    return "%s-%s" % (prefix, uuid.uuid4().hex[:12])


def wait_until(
    predicate, timeout: float = 10.0, interval: float = 0.05, message: str = "condition"
):
    """Poll ``predicate`` until truthy or raise AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %.1fs waiting for %s" % (timeout, message))
        time.sleep(interval)


@contextlib.contextmanager
def connection(broker, **kw):
    conn = pika.BlockingConnection(broker.params(**kw))
    try:
        yield conn
    finally:
        if conn.is_open:
            try:
                conn.close()
            except Exception:
                pass


@contextlib.contextmanager
def channel(broker, **kw):
    with connection(broker, **kw) as conn:
        yield conn.channel()


def fresh(ch):
    """A new channel on the same connection (after a channel error)."""
    return ch.connection.channel()


def pump(conn, seconds: float):
    """Process I/O for ``seconds`` (used to prove that something does NOT happen)."""
    deadline = time.monotonic() + seconds
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        conn.process_data_events(time_limit=min(left, 0.1))


def collect(ch, queue, n, timeout: float = 10.0, auto_ack: bool = False, **consume_kw):
    """Consume until ``n`` deliveries arrived (or timeout); returns list of (method, props, body).

    The consumer is cancelled before returning; messages are NOT acked unless auto_ack.
    """
    got = []

    def on_msg(_ch, method, props, body):
        got.append((method, props, body))

    tag = ch.basic_consume(queue, on_msg, auto_ack=auto_ack, **consume_kw)
    conn = ch.connection
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        conn.process_data_events(time_limit=min(0.1, max(0.0, deadline - time.monotonic())))
    if ch.is_open:
        ch.basic_cancel(tag)
    return got


def get_all(ch, queue, auto_ack=True, limit: int = 100000):
    """basic.get until empty."""
    out = []
    while len(out) < limit:
        method, props, body = ch.basic_get(queue, auto_ack=auto_ack)
        if method is None:
            break
        out.append((method, props, body))
    return out


def wait_get(ch, queue, timeout: float = 10.0, auto_ack: bool = True):
    """basic.get with polling until a message shows up."""
    deadline = time.monotonic() + timeout
    while True:
        method, props, body = ch.basic_get(queue, auto_ack=auto_ack)
        if method is not None:
            return method, props, body
        if time.monotonic() >= deadline:
            raise AssertionError("no message in %r within %.1fs" % (queue, timeout))
        ch.connection.process_data_events(time_limit=0.05)


def message_count(broker, queue) -> int:
    with channel(broker) as ch:
        return ch.queue_declare(queue, passive=True).method.message_count


def expect_channel_close(fn, code: int):
    """Run ``fn`` and assert it raises ChannelClosedByBroker with ``code``; return the error."""
    try:
        fn()
    except pika.exceptions.ChannelClosedByBroker as e:
        assert e.reply_code == code, (e.reply_code, e.reply_text)
        return e
    raise AssertionError("expected channel close %d, nothing raised" % code)


def expect_connection_close(fn, code: int):
    try:
        fn()
    except pika.exceptions.ConnectionClosedByBroker as e:
        assert e.reply_code == code, (e.reply_code, e.reply_text)
        return e
    raise AssertionError("expected connection close %d, nothing raised" % code)


def delete_queue_quietly(broker, *queues):
    try:
        with channel(broker) as ch:
            for q in queues:
                try:
                    ch.queue_delete(q)
                except pika.exceptions.ChannelClosedByBroker:
                    ch = ch.connection.channel()
    except Exception:
        pass
