"""End-to-end round trips with several client libraries."""

from __future__ import annotations

import asyncio
import time

import pika
import pytest

from .helpers import uid


def test_pika_blocking_consume_generator(broker):
    q = uid("q")
    with pika.BlockingConnection(broker.params()) as conn:
        ch = conn.channel()
        ch.queue_declare(q, exclusive=True)
        for i in range(5):
            ch.basic_publish("", q, b"%d" % i)
        got = []
        for method, _props, body in ch.consume(q, inactivity_timeout=5):
            assert method is not None, "inactivity timeout"
            got.append(body)
            ch.basic_ack(method.delivery_tag)
            if len(got) == 5:
                break
        ch.cancel()
        assert got == [b"%d" % i for i in range(5)]


def test_pika_select_connection(broker):
    q = uid("q")
    state = {"got": [], "error": None, "confirms": 0}
    n = 20

    def on_open(conn):
        conn.channel(on_open_callback=on_channel)

    def on_channel(ch):
        state["ch"] = ch
        ch.confirm_delivery(on_confirm)
        ch.queue_declare(q, exclusive=True, callback=lambda frame: on_declared(ch))

    def on_confirm(frame):
        if isinstance(frame.method, pika.spec.Basic.Ack):
            state["confirms"] += 1

    def on_declared(ch):
        ch.basic_qos(prefetch_count=5, callback=lambda f: start(ch))

    def start(ch):
        ch.basic_consume(q, on_message)
        for i in range(n):
            ch.basic_publish("", q, b"%d" % i, pika.BasicProperties(message_id=str(i)))

    def on_message(ch, method, props, body):
        state["got"].append((props.message_id, body))
        ch.basic_ack(method.delivery_tag)
        if len(state["got"]) == n:
            ch.connection.close()

    def on_open_error(conn, err):
        state["error"] = err
        conn.ioloop.stop()

    def on_closed(conn, reason):
        conn.ioloop.stop()

    conn = pika.SelectConnection(
        broker.params(),
        on_open_callback=on_open,
        on_open_error_callback=on_open_error,
        on_close_callback=on_closed,
    )

    def on_timeout():
        state["error"] = "timeout"
        if conn.is_open:
            conn.close()
        else:
            conn.ioloop.stop()

    conn.ioloop.call_later(20, on_timeout)
    conn.ioloop.start()
    assert state["error"] is None, state["error"]
    assert [b for _, b in state["got"]] == [b"%d" % i for i in range(n)]
    assert [m for m, _ in state["got"]] == [str(i) for i in range(n)]
    assert state["confirms"] >= 1  # acks may be coalesced with multiple=True


def test_aio_pika_round_trip(broker):
    import aio_pika

    async def main():
        conn = await aio_pika.connect_robust(broker.amqp_url, timeout=10)
        async with conn:
            ch = await conn.channel()
            await ch.set_qos(prefetch_count=10)
            x = await ch.declare_exchange(uid("x"), aio_pika.ExchangeType.TOPIC, auto_delete=True)
            q = await ch.declare_queue(uid("q"), exclusive=True)
            await q.bind(x, routing_key="orders.#")
            for i in range(10):
                await x.publish(
                    aio_pika.Message(
                        b"%d" % i,
                        headers={"i": i},
                        content_type="text/plain",
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    ),
                    routing_key="orders.eu.%d" % i,
                )
            got = []
            async with q.iterator(timeout=10) as it:
                async for msg in it:
                    async with msg.process():
                        got.append((msg.body, msg.headers["i"], msg.content_type, msg.routing_key))
                    if len(got) == 10:
                        break
            assert [g[0] for g in got] == [b"%d" % i for i in range(10)]
            assert [g[1] for g in got] == list(range(10))
            assert all(g[2] == "text/plain" for g in got)
            assert got[3][3] == "orders.eu.3"
            await x.delete()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_aio_pika_rpc_pattern(broker):
    import aio_pika

    async def main():
        conn = await aio_pika.connect(broker.amqp_url, timeout=10)
        async with conn:
            ch = await conn.channel()
            server_q = await ch.declare_queue(uid("rpc"), exclusive=True)
            reply_q = await ch.declare_queue("", exclusive=True)

            async def serve(msg: aio_pika.abc.AbstractIncomingMessage):
                async with msg.process():
                    await ch.default_exchange.publish(
                        aio_pika.Message(msg.body[::-1], correlation_id=msg.correlation_id),
                        routing_key=msg.reply_to,
                    )

            await server_q.consume(serve)
            fut = asyncio.get_running_loop().create_future()

            async def on_reply(msg):
                async with msg.process():
                    if msg.correlation_id == "42" and not fut.done():
                        fut.set_result(msg.body)

            await reply_q.consume(on_reply)
            await ch.default_exchange.publish(
                aio_pika.Message(b"hello", correlation_id="42", reply_to=reply_q.name),
                routing_key=server_q.name,
            )
            assert await asyncio.wait_for(fut, 10) == b"olleh"

    asyncio.run(asyncio.wait_for(main(), 30))


def test_kombu_producer_consumer(broker):
    import kombu

    xname, qname = uid("kx"), uid("kq")
    with kombu.Connection(broker.amqp_url, connect_timeout=10) as conn:
        exchange = kombu.Exchange(xname, type="direct", durable=False, auto_delete=True)
        queue = kombu.Queue(qname, exchange, routing_key="rk", durable=False, auto_delete=True)
        received = []

        with conn.Consumer(
            queue, callbacks=[lambda body, msg: (received.append(body), msg.ack())], accept=["json"]
        ):
            producer = kombu.Producer(conn.default_channel, exchange=exchange, serializer="json")
            for i in range(5):
                producer.publish(
                    {"n": i, "nested": {"ok": True}},
                    routing_key="rk",
                    declare=[queue],
                    headers={"x-test": i},
                )
            deadline = time.monotonic() + 10
            while len(received) < 5 and time.monotonic() < deadline:
                try:
                    conn.drain_events(timeout=0.5)
                except TimeoutError:
                    pass
                except Exception as e:  # socket.timeout on older kombu
                    if "timed out" not in str(e):
                        raise
        assert received == [{"n": i, "nested": {"ok": True}} for i in range(5)]


def test_kombu_simple_queue(broker):
    import kombu

    with kombu.Connection(broker.amqp_url, connect_timeout=10) as conn:
        name = uid("simple")
        sq = conn.SimpleQueue(
            name,
            queue_opts={"durable": False, "auto_delete": True},
            exchange_opts={"durable": False, "auto_delete": True},
        )
        try:
            sq.put({"hello": "world"})
            sq.put("plain text")
            msg = sq.get(block=True, timeout=10)
            assert msg.payload == {"hello": "world"}
            msg.ack()
            msg = sq.get(block=True, timeout=10)
            assert msg.payload == "plain text"
            msg.ack()
            with pytest.raises(sq.Empty):
                sq.get(block=False)
        finally:
            sq.close()


def test_py_amqp_round_trip(broker):
    import amqp

    with amqp.Connection(
        "%s:%d" % (broker.host, broker.port),
        userid=broker.user,
        password=broker.password,
        virtual_host=broker.vhost,
        connect_timeout=10,
    ) as conn:
        ch = conn.channel()
        q, _, _ = ch.queue_declare("", exclusive=True)
        ch.basic_publish(
            amqp.Message(b"amqp-body", application_headers={"a": "b"}, content_type="text/plain"),
            exchange="",
            routing_key=q,
        )
        got = []
        ch.basic_consume(q, callback=lambda m: got.append(m), no_ack=True)
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            try:
                conn.drain_events(timeout=0.5)
            except Exception as e:
                if "timed out" not in str(e).lower() and not isinstance(e, TimeoutError):
                    raise
        assert got and got[0].body == b"amqp-body"
        assert got[0].properties["application_headers"] == {"a": "b"}
        assert got[0].properties["content_type"] == "text/plain"
