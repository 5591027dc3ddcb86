"""Where RabbitMQ answers one way and we used to answer another (issue 9).

Each test states RabbitMQ's reply; all of them hold against RabbitMQ too (BROKER_AMQP_URL), except
where marked own_broker.
"""

from __future__ import annotations

import asyncio

import pytest

from .helpers import (
    channel,
    connection,
    delete_queue_quietly,
    expect_channel_close,
    expect_connection_close,
    fresh,
    uid,
    wait_get,
)


@pytest.fixture
def ch(broker):
    with channel(broker) as c:
        yield c


@pytest.fixture
def limited(fresh_broker):
    """A connection of a user who may configure and read anything, write only to mine-*."""
    name, pw = uid("limited"), "pw"
    fresh_broker.cli("users", "add", name, pw)
    fresh_broker.cli("permissions", "set", name, ".*", "^mine-.*", ".*", "--vhost", "/")
    with connection(fresh_broker, user=name, password=pw) as conn:
        yield conn


# ---------------------------------------------------------------- queue and consume arguments


def test_stream_queue_type_refused(ch):
    # RabbitMQ with streams would make this a stream; a plain queue would ignore the offset a
    # consumer asks for. We refuse the type, as RabbitMQ refuses a queue type it does not know:
    # 406 "PRECONDITION_FAILED - invalid arg 'x-queue-type' for queue 'q' in vhost '/': ..."
    q = uid("stream")
    e = expect_channel_close(
        lambda: ch.queue_declare(q, durable=True, arguments={"x-queue-type": "stream"}), 406
    )
    assert e.reply_text.startswith("PRECONDITION_FAILED - invalid arg 'x-queue-type'")
    assert "stream" in e.reply_text
    expect_channel_close(lambda: fresh(ch).queue_declare(q, passive=True), 404)


def test_stream_queue_type_refused_on_redeclare(broker, ch):
    # An existing queue does not become a stream by redeclaring it either.
    q = uid("classic")
    ch.queue_declare(q, durable=True)
    try:
        expect_channel_close(
            lambda: ch.queue_declare(q, durable=True, arguments={"x-queue-type": "stream"}), 406
        )
    finally:
        delete_queue_quietly(broker, q)


@pytest.mark.parametrize(
    "args",
    [
        {"x-single-active-consumer": "yes"},
        {"x-queue-mode": "sometimes"},
        {"x-max-in-memory-length": -1},
        {"x-dead-letter-strategy": "exactly-once"},
        {"x-consumer-timeout": 60000},
    ],
)
def test_queue_arguments_refused(ch, args):
    # RabbitMQ checks each argument it knows: "invalid arg '<name>' for queue ...". A consumer
    # timeout is one RabbitMQ would enforce and we would not: refused too.
    e = expect_channel_close(lambda: ch.queue_declare(uid("q"), arguments=args), 406)
    assert e.reply_text.startswith(f"PRECONDITION_FAILED - invalid arg '{next(iter(args))}'")


@pytest.mark.parametrize(
    "args",
    [
        {"x-queue-mode": "lazy"},
        {"x-max-in-memory-length": 10, "x-max-in-memory-bytes": 1000},
        {"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"},
    ],
)
def test_harmless_queue_arguments_accepted(broker, ch, args):
    q = uid("q")
    ch.queue_declare(q, durable=True, arguments=args)
    delete_queue_quietly(broker, q)


@pytest.mark.parametrize(
    "args",
    [
        {"x-stream-offset": "first"},
        {"x-stream-offset": 0},
        {"x-stream-filter": "emea"},
        {"x-priority": "high"},
        {"x-cancel-on-ha-failover": "yes"},
    ],
)
def test_consume_arguments_refused(ch, args):
    # Stream offsets and filters need a stream, which no queue here is; x-priority must be an
    # integer and x-cancel-on-ha-failover a boolean (RabbitMQ: 406 "invalid arg ...").
    q = ch.queue_declare("", exclusive=True).method.queue
    e = expect_channel_close(lambda: ch.basic_consume(q, lambda *a: None, arguments=args), 406)
    assert e.reply_text.startswith("PRECONDITION_FAILED")
    assert next(iter(args)) in e.reply_text


@pytest.mark.parametrize(
    "args",
    [
        {"x-dead-letter-exchange": 5},
        {"x-dead-letter-routing-key": "dead"},
        {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": 5},
    ],
)
def test_dead_letter_arguments_checked(ch, args):
    # An exchange that is not a name, or a routing key without an exchange, would make dead
    # letters vanish: RabbitMQ refuses both with 406.
    e = expect_channel_close(lambda: ch.queue_declare(uid("q"), arguments=args), 406)
    assert e.reply_text.startswith("PRECONDITION_FAILED")


def test_alternate_exchange_must_be_a_name(ch):
    # RabbitMQ: 406 "invalid type 'long' for arg 'alternate-exchange' in exchange ..."
    x = uid("x")
    e = expect_channel_close(
        lambda: ch.exchange_declare(x, "direct", arguments={"alternate-exchange": 5}), 406
    )
    assert e.reply_text.startswith("PRECONDITION_FAILED")
    expect_channel_close(lambda: fresh(ch).exchange_declare(x, passive=True), 404)


@pytest.mark.own_broker
def test_dead_letter_and_alternate_exchanges_need_write_permission(limited):
    # RabbitMQ checks write on the dead-letter or alternate exchange (and read on the queue or
    # exchange that sends there), or a user could publish where they may not.
    ch = limited.channel()
    ch.exchange_declare("mine-x", "fanout", auto_delete=True)
    ch.queue_declare("mine-q", exclusive=True, arguments={"x-dead-letter-exchange": "mine-x"})
    e = expect_channel_close(
        lambda: ch.queue_declare(
            "mine-q2", exclusive=True, arguments={"x-dead-letter-exchange": "amq.fanout"}
        ),
        403,
    )
    assert e.reply_text.startswith("ACCESS_REFUSED")
    ch = limited.channel()
    expect_channel_close(
        lambda: ch.exchange_declare(
            "mine-x2", "fanout", arguments={"alternate-exchange": "amq.fanout"}
        ),
        403,
    )


def test_headers_binding_x_match_checked(ch):
    # RabbitMQ: 406 "PRECONDITION_FAILED - Invalid x-match field value ..." (we matched as 'all')
    x = uid("hx")
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.exchange_declare(x, "headers", auto_delete=True)
    ch.queue_bind(q, x, arguments={"x-match": "any-with-x", "x-k": 1})
    e = expect_channel_close(
        lambda: ch.queue_bind(q, x, arguments={"x-match": "some", "a": 1, "b": 2}), 406
    )
    assert "x-match" in e.reply_text


# ---------------------------------------------------------------- unbind is idempotent


def test_queue_unbind_from_missing_exchange_ok(ch):
    # RabbitMQ: unbinding from an exchange that does not exist answers unbind-ok.
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_unbind(q, uid("never-declared"), routing_key="k")


def test_queue_unbind_of_missing_queue_ok(ch):
    x = uid("x")
    ch.exchange_declare(x, "direct")
    try:
        ch.queue_unbind(uid("never-declared"), x, routing_key="k")
    finally:
        ch.exchange_delete(x)


def test_unbind_after_auto_delete_exchange_went_ok(ch):
    # aio-pika's RPC and auto-delete exchanges: the last unbind deletes the exchange, and a
    # second unbind (or one for an e2e binding the deletion took along) still answers ok.
    x, dst = uid("x"), uid("dst")
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.exchange_declare(x, "fanout", auto_delete=True)
    ch.exchange_declare(dst, "fanout")
    try:
        ch.exchange_bind(destination=dst, source=x)
        ch.queue_bind(q, x)
        ch.queue_unbind(q, x)
        ch.exchange_unbind(destination=dst, source=x)
        expect_channel_close(lambda: ch.exchange_declare(x, passive=True), 404)
        ch = fresh(ch)
        ch.queue_unbind(q, x)
        ch.exchange_unbind(destination=dst, source=x)
        ch.exchange_unbind(destination=uid("never-declared"), source=dst)
    finally:
        ch.exchange_delete(dst)


def test_aio_pika_rpc_closes(broker):
    # aio-pika's RPC.close cancels its auto-delete result queue (which goes, and with it the
    # binding to the auto-delete rpc.dlx exchange), then unbinds that queue: RabbitMQ says ok.
    import aio_pika
    from aio_pika.patterns import RPC

    method = uid("double")

    async def double(*, x: int) -> int:
        return x * 2

    async def main():
        conn = await aio_pika.connect(broker.amqp_url, timeout=10)
        try:
            ch = await conn.channel()
            rpc = await RPC.create(ch)
            await rpc.register(method, double, auto_delete=True)
            assert await rpc.call(method, kwargs={"x": 21}) == 42
            await rpc.close()
            assert not ch.is_closed
        finally:
            await conn.close()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_unbind_still_checks_the_default_exchange(ch):
    # Access checks still apply: the default exchange cannot be unbound (403).
    q = ch.queue_declare("", exclusive=True).method.queue
    e = expect_channel_close(lambda: ch.queue_unbind(q, "", routing_key=q), 403)
    assert e.reply_text.startswith("ACCESS_REFUSED")


@pytest.mark.own_broker
def test_unbind_missing_resources_still_needs_permission(limited):
    # RabbitMQ checks write on the destination and read on the source before looking them up.
    ch = limited.channel()
    ch.queue_unbind("mine-" + uid(), uid("gone"))
    e = expect_channel_close(lambda: ch.queue_unbind(uid("other"), uid("gone")), 403)
    assert e.reply_text.startswith("ACCESS_REFUSED")


# ---------------------------------------------------------------- connection and exchange class


def test_update_secret_accepted(broker):
    # RabbitMQ's internal users have no expiring state: update-secret-ok, whatever the secret,
    # and the connection carries on as the user it logged in as.
    with connection(broker) as conn:
        conn.update_secret("not-the-password", "rotation")
        ch = conn.channel()
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.basic_publish("", q, b"after")
        assert wait_get(ch, q)[2] == b"after"


def test_unknown_exchange_type_for_the_default_exchange_closes_the_connection(ch):
    # RabbitMQ checks the type first, then the name: connection.close 503, not channel 403.
    expect_connection_close(lambda: ch.exchange_declare("", "bogus-type"), 503)


def test_passive_declare_of_default_exchange_refused(ch):
    # RabbitMQ: 403 "ACCESS_REFUSED - operation not permitted on the default exchange"
    e = expect_channel_close(lambda: ch.exchange_declare("", passive=True), 403)
    assert e.reply_text.startswith("ACCESS_REFUSED")
