"""Publisher confirms (confirm.select, basic.ack / basic.nack)."""

from __future__ import annotations

import asyncio
import time

import pika
import pika.exceptions
import pytest

from .helpers import connection, expect_channel_close, get_all, uid
from .rawamqp import ContentBody, commands, header, raw_connect


@pytest.fixture
def ch(broker):
    with connection(broker) as c:
        yield c.channel()


def raw_publish(c, channel, rk, body=b"x", exchange="", mandatory=False, props=None):
    c.send_method(
        commands.Basic.Publish(exchange=exchange, routing_key=rk, mandatory=mandatory), channel
    )
    c.send_frame(header.ContentHeader(0, len(body), props or commands.Basic.Properties()), channel)
    if body:
        c.send_frame(ContentBody(body), channel)


def collect_confirms(c, n, timeout=10):
    """Read acks/nacks until all tags 1..n are settled: {tag: 'ack'|'nack'}."""
    settled = {}
    deadline = time.monotonic() + timeout
    while len(settled) < n:
        _, f = c.recv_method(timeout=max(0.1, deadline - time.monotonic()))
        if isinstance(f, (commands.Basic.Ack, commands.Basic.Nack)):
            kind = "ack" if isinstance(f, commands.Basic.Ack) else "nack"
            tags = range(1, f.delivery_tag + 1) if f.multiple else [f.delivery_tag]
            for t in tags:
                if t not in settled:
                    settled[t] = kind
        elif isinstance(f, commands.Basic.Return) or type(f).__name__ in (
            "ContentHeader",
            "ContentBody",
        ):
            continue
        else:
            raise AssertionError("unexpected frame %r" % f)
    return settled


def test_confirm_select_and_acks_pika(ch):
    q = uid("q")
    ch.queue_declare(q, exclusive=True)
    ch.confirm_delivery()
    for i in range(100):
        ch.basic_publish("", q, b"%d" % i)  # raises on nack
    assert ch.queue_declare(q, passive=True).method.message_count == 100


def test_confirm_delivery_tags_raw(broker):
    with raw_connect(broker) as c:
        c.open_channel(1)
        c.send_method(commands.Confirm.Select(), 1)
        c.expect(commands.Confirm.SelectOk)
        c.send_method(commands.Queue.Declare(queue="", exclusive=True), 1)
        _, ok = c.expect(commands.Queue.DeclareOk)
        n = 50
        for i in range(n):
            raw_publish(c, 1, ok.queue, b"%d" % i)
        settled = collect_confirms(c, n)
        assert set(settled) == set(range(1, n + 1))
        assert set(settled.values()) == {"ack"}


def test_confirm_select_nowait(broker):
    with raw_connect(broker) as c:
        c.open_channel(1)
        c.send_method(commands.Confirm.Select(nowait=True), 1)
        raw_publish(c, 1, uid("nowhere"))
        _, f = c.recv_method()
        assert isinstance(f, commands.Basic.Ack) and f.delivery_tag == 1


def test_unroutable_is_acked(broker):
    # unroutable (no queue) messages are confirmed immediately; with mandatory the
    # basic.return comes before the basic.ack
    with raw_connect(broker) as c:
        c.open_channel(1)
        c.send_method(commands.Confirm.Select(), 1)
        c.expect(commands.Confirm.SelectOk)
        raw_publish(c, 1, uid("nowhere"), exchange="amq.direct", mandatory=True)
        _, f = c.recv_method()
        assert isinstance(f, commands.Basic.Return) and f.reply_code == 312
        c.recv_frame()  # content header
        c.recv_frame()  # body
        _, f = c.recv_method()
        assert isinstance(f, commands.Basic.Ack) and f.delivery_tag == 1


def test_nack_on_reject_publish_overflow_raw(broker):
    with raw_connect(broker) as c:
        c.open_channel(1)
        c.send_method(commands.Confirm.Select(), 1)
        c.expect(commands.Confirm.SelectOk)
        q = uid("full")
        c.send_method(
            commands.Queue.Declare(
                queue=q,
                exclusive=True,
                arguments={"x-max-length": 2, "x-overflow": "reject-publish"},
            ),
            1,
        )
        c.expect(commands.Queue.DeclareOk)
        for i in range(4):
            raw_publish(c, 1, q, b"%d" % i)
        settled = collect_confirms(c, 4)
        assert settled == {1: "ack", 2: "ack", 3: "nack", 4: "nack"}


def test_nack_pika_reject_publish(ch):
    q = uid("full")
    ch.queue_declare(
        q, exclusive=True, arguments={"x-max-length": 1, "x-overflow": "reject-publish"}
    )
    ch.confirm_delivery()
    ch.basic_publish("", q, b"ok")
    with pytest.raises(pika.exceptions.NackError):
        ch.basic_publish("", q, b"rejected")


def test_nack_when_any_target_queue_rejects(ch):
    x, full, free = uid("x"), uid("full"), uid("free")
    ch.exchange_declare(x, "fanout")
    try:
        ch.queue_declare(
            full, exclusive=True, arguments={"x-max-length": 0, "x-overflow": "reject-publish"}
        )
        ch.queue_declare(free, exclusive=True)
        ch.queue_bind(full, x)
        ch.queue_bind(free, x)
        ch.confirm_delivery()
        with pytest.raises(pika.exceptions.NackError):
            ch.basic_publish(x, "", b"m")
        assert [b for _, _, b in get_all(ch, free)] == [b"m"]  # still enqueued where it fit
    finally:
        ch.exchange_delete(x)


def test_persistent_to_durable_queue_confirmed(broker, ch):
    q = uid("dq")
    ch.queue_declare(q, durable=True)
    try:
        ch.confirm_delivery()
        for i in range(20):
            ch.basic_publish("", q, b"%d" % i, pika.BasicProperties(delivery_mode=2))
        assert ch.queue_declare(q, passive=True).method.message_count == 20
    finally:
        ch.queue_delete(q)


def test_confirm_select_on_tx_channel_406(ch):
    ch.tx_select()
    e = expect_channel_close(lambda: ch.confirm_delivery(), 406)
    assert e.reply_text == "PRECONDITION_FAILED - cannot switch from tx to confirm mode"


def test_aio_pika_publisher_confirms(broker):
    import aio_pika
    import aiormq

    async def main():
        conn = await aio_pika.connect(broker.amqp_url, timeout=10)
        try:
            ch = await conn.channel(publisher_confirms=True)
            q = await ch.declare_queue("", exclusive=True)
            for i in range(20):
                res = await ch.default_exchange.publish(
                    aio_pika.Message(b"%d" % i), q.name, timeout=10
                )
                assert isinstance(res, aiormq.spec.Basic.Ack)
            full = await ch.declare_queue(
                "", exclusive=True, arguments={"x-max-length": 0, "x-overflow": "reject-publish"}
            )
            try:
                res = await ch.default_exchange.publish(
                    aio_pika.Message(b"x"), full.name, timeout=10
                )
            except aio_pika.exceptions.DeliveryError as e:
                res = e.frame
            assert isinstance(res, aiormq.spec.Basic.Nack)
            again = await ch.declare_queue(q.name, passive=True)
            assert again.declaration_result.message_count == 20
        finally:
            await conn.close()

    asyncio.run(asyncio.wait_for(main(), 30))
