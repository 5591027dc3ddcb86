"""Durability across restarts and kill -9 (own broker only)."""

from __future__ import annotations

import threading
import time

import pika
import pika.exceptions
import pytest

from .helpers import connection, expect_channel_close, uid, wait_get
from .rawamqp import Closed, ContentBody, commands, header, raw_connect

pytestmark = pytest.mark.own_broker


def publish_confirmed(
    broker, queue, ids, body, persistent=True, window=500, on_confirm=None, stop=None
):
    """Pipelined publishing with confirms over a raw connection.

    Returns the list of confirmed (acked) ids; raises AssertionError on any nack.
    ``on_confirm(ids)`` is called with newly confirmed ids; ``stop`` (Event) ends early.
    """
    confirmed = []
    props = commands.Basic.Properties(delivery_mode=2 if persistent else 1)
    with raw_connect(broker, timeout=30) as c:
        c.open_channel(1)
        c.send_method(commands.Confirm.Select(), 1)
        c.expect(commands.Confirm.SelectOk)
        seq_to_id = {}
        next_seq = 1
        settled = 0
        pending = list(ids)
        frame_max = c.tune.frame_max or 131072
        while settled < len(ids):
            if stop is not None and stop.is_set():
                break
            while pending and next_seq - 1 - settled < window:
                mid = pending.pop(0)
                p = commands.Basic.Properties(delivery_mode=props.delivery_mode, message_id=mid)
                out = [
                    _frame(commands.Basic.Publish(exchange="", routing_key=queue), 1),
                    _frame(header.ContentHeader(0, len(body), p), 1),
                ]
                step = frame_max - 8
                for i in range(0, len(body), step):
                    out.append(_frame(ContentBody(body[i : i + step]), 1))
                c.send(b"".join(out))
                seq_to_id[next_seq] = mid
                next_seq += 1
            _, f = c.recv_method(timeout=30)
            if isinstance(f, commands.Basic.Nack):
                raise AssertionError("publish nacked: %r" % f.delivery_tag)
            assert isinstance(f, commands.Basic.Ack), f
            upto = f.delivery_tag if f.multiple else f.delivery_tag
            new = []
            tags = range(settled + 1, upto + 1) if f.multiple else [f.delivery_tag]
            for t in tags:
                if t in seq_to_id:
                    new.append(seq_to_id.pop(t))
            confirmed.extend(new)
            settled = len(confirmed)
            if on_confirm and new:
                on_confirm(new)
    return confirmed


def _frame(value, ch):
    from pamqp import frame

    return frame.marshal(value, ch)


def consume_all(broker, queue, expected, timeout=60, settle=0.5):
    """Consume (manual ack, acking only at the end) until ``expected`` messages arrived and
    nothing more shows up for ``settle`` seconds. Returns list of (message_id, redelivered)."""
    out = []
    with connection(broker) as conn:
        ch = conn.channel()
        ch.basic_qos(prefetch_count=0)  # nothing is acked until the end: no prefetch limit
        last = {"tag": 0}

        def on_msg(c, m, p, b):
            out.append((p.message_id, b))
            last["tag"] = m.delivery_tag

        ch.basic_consume(queue, on_msg, auto_ack=False)
        deadline = time.monotonic() + timeout
        while len(out) < expected and time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.1)
        # make sure no extra (duplicate) deliveries are coming
        end = time.monotonic() + settle
        while time.monotonic() < end:
            conn.process_data_events(time_limit=0.05)
        if last["tag"]:
            ch.basic_ack(last["tag"], multiple=True)
    return out


@pytest.mark.timeout(180)
def test_ten_thousand_persistent_messages_survive_kill9(fresh_broker):
    b = fresh_broker
    q = uid("durable")
    with connection(b) as conn:
        conn.channel().queue_declare(q, durable=True)
    n = 10_000
    ids = ["m-%05d" % i for i in range(n)]
    body = bytes(range(256)) * 4  # 1 KB
    confirmed = publish_confirmed(b, q, ids, body)
    assert len(confirmed) == n
    b.kill9()  # right after the last confirm
    b.start()
    with connection(b) as conn:
        ok = conn.channel().queue_declare(q, passive=True).method
        assert ok.message_count == n
    got = consume_all(b, q, n)
    got_ids = [m for m, _ in got]
    assert len(got_ids) == n, "got %d messages" % len(got_ids)
    assert len(set(got_ids)) == n, "duplicates delivered"
    assert set(got_ids) == set(ids)
    assert all(body_ == body for _, body_ in got)
    assert got_ids == ids  # FIFO order preserved across recovery


def test_durable_topology_survives_restart_transient_does_not(fresh_broker):
    b = fresh_broker
    dx, tx_, dq, tq = uid("dx"), uid("tx"), uid("dq"), uid("tq")
    dq_transient_msgs = uid("dq2")
    user, pw, vhost = uid("user"), "pw-" + uid(), uid("vhost")
    b.cli("users", "add", user, pw)
    b.cli("vhosts", "add", vhost)
    b.cli("permissions", "set", user, ".*", ".*", ".*", "--vhost", vhost)
    with connection(b) as conn:
        ch = conn.channel()
        ch.exchange_declare(dx, "topic", durable=True)
        ch.exchange_declare(tx_, "fanout", durable=False)
        ch.queue_declare(dq, durable=True)
        ch.queue_declare(tq, durable=False)
        ch.queue_declare(dq_transient_msgs, durable=True)
        ch.queue_bind(dq, dx, routing_key="a.#")
        ch.confirm_delivery()
        ch.basic_publish(
            "", dq, b"persistent", pika.BasicProperties(delivery_mode=2, message_id="p")
        )
        ch.basic_publish("", dq_transient_msgs, b"transient", pika.BasicProperties(delivery_mode=1))
        ch.basic_publish("", tq, b"in-transient-queue", pika.BasicProperties(delivery_mode=2))
    b.kill9()
    b.start()
    with connection(b) as conn:
        ch = conn.channel()
        ch.exchange_declare(dx, passive=True)
        assert ch.queue_declare(dq, passive=True).method.message_count == 1
        assert ch.queue_declare(dq_transient_msgs, passive=True).method.message_count == 0
        m, props, body = wait_get(ch, dq)
        assert body == b"persistent" and props.message_id == "p" and props.delivery_mode == 2
        ch.confirm_delivery()
        ch.basic_publish(dx, "a.b.c", b"via-binding")  # binding survived
        assert wait_get(ch, dq)[2] == b"via-binding"
        expect_channel_close(lambda: ch.exchange_declare(tx_, passive=True), 404)
        ch = conn.channel()
        expect_channel_close(lambda: ch.queue_declare(tq, passive=True), 404)
        ch = conn.channel()
        ch.queue_delete(dq)
        ch.queue_delete(dq_transient_msgs)
        ch.exchange_delete(dx)
    # users, vhosts and permissions survive
    with connection(b, user=user, password=pw, virtual_host=vhost) as conn:
        conn.channel().queue_declare("", exclusive=True)
    assert vhost in b.cli("vhosts", "list").stdout.split()
    assert user in [ln.split("\t")[0].strip() for ln in b.cli("users", "list").stdout.splitlines()]


def test_graceful_restart_keeps_persistent_messages(fresh_broker):
    b = fresh_broker
    q = uid("dq")
    with connection(b) as conn:
        ch = conn.channel()
        ch.queue_declare(q, durable=True)
        ch.confirm_delivery()
        for i in range(100):
            ch.basic_publish("", q, b"%d" % i, pika.BasicProperties(delivery_mode=2))
    b.restart()
    with connection(b) as conn:
        ch = conn.channel()
        got = []
        while True:
            m, _, body = ch.basic_get(q, auto_ack=True)
            if m is None:
                break
            got.append(body)
        assert got == [b"%d" % i for i in range(100)]


def test_acked_messages_stay_acked_after_kill9(fresh_broker):
    b = fresh_broker
    q = uid("dq")
    with connection(b) as conn:
        ch = conn.channel()
        ch.queue_declare(q, durable=True)
        ch.confirm_delivery()
        for i in range(20):
            ch.basic_publish("", q, b"%d" % i, pika.BasicProperties(delivery_mode=2))
        ch2 = conn.channel()
        ch2.tx_select()  # ack inside a committed tx: known to be processed when commit-ok returns
        tags = [wait_get(ch2, q, auto_ack=False)[0].delivery_tag for _ in range(10)]
        ch2.basic_ack(tags[-1], multiple=True)
        ch2.tx_commit()
    b.kill9()
    b.start()
    with connection(b) as conn:
        ch = conn.channel()
        got = []
        while True:
            m, _, body = ch.basic_get(q, auto_ack=True)
            if m is None:
                break
            got.append(body)
        assert got == [b"%d" % i for i in range(10, 20)]


@pytest.mark.timeout(180)
def test_kill9_during_publish_stream_keeps_confirmed(fresh_broker):
    b = fresh_broker
    q = uid("stream")
    with connection(b) as conn:
        conn.channel().queue_declare(q, durable=True)
    n = 50_000
    ids = ["s-%06d" % i for i in range(n)]
    body = b"x" * 512
    confirmed: list[str] = []
    lock = threading.Lock()
    errors = []
    reached = threading.Event()

    def on_confirm(new):
        with lock:
            confirmed.extend(new)
            if len(confirmed) >= 3000:
                reached.set()

    def publisher():
        try:
            publish_confirmed(b, q, ids, body, window=200, on_confirm=on_confirm)
        except (Closed, OSError, AssertionError) as e:
            errors.append(e)
        finally:
            reached.set()

    t = threading.Thread(target=publisher, daemon=True)
    t.start()
    assert reached.wait(120), "publisher made no progress"
    b.kill9()  # while the publisher is still streaming
    t.join(30)
    assert not t.is_alive()
    with lock:
        confirmed_snapshot = list(confirmed)
    assert 0 < len(confirmed_snapshot) < n, "publisher finished before the kill"
    assert errors and not any(isinstance(e, AssertionError) for e in errors), errors
    b.start()
    with connection(b) as conn:
        count = conn.channel().queue_declare(q, passive=True).method.message_count
    assert count >= len(confirmed_snapshot)
    got = consume_all(b, q, count)
    got_ids = [m for m, _ in got]
    assert len(got_ids) == len(set(got_ids)), "duplicates after recovery"
    missing = set(confirmed_snapshot) - set(got_ids)
    assert not missing, "%d confirmed messages lost, e.g. %s" % (len(missing), sorted(missing)[:5])
    # whatever survived is a prefix-ordered subset of what was sent
    assert got_ids == sorted(got_ids)
