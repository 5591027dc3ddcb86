"""Direct reply-to (amq.rabbitmq.reply-to)."""

from __future__ import annotations

import time

import pika

from .helpers import connection, expect_channel_close, uid, wait_get

REPLY_TO = "amq.rabbitmq.reply-to"


def test_rpc_round_trip(broker):
    server_q = uid("rpc")
    with connection(broker) as server, connection(broker) as client:
        sch = server.channel()
        sch.queue_declare(server_q, exclusive=True)

        cch = client.channel()
        replies = []
        cch.basic_consume(REPLY_TO, lambda c, m, p, b: replies.append((m, p, b)), auto_ack=True)
        for i in range(3):
            cch.basic_publish(
                "",
                server_q,
                b"req-%d" % i,
                pika.BasicProperties(reply_to=REPLY_TO, correlation_id="c%d" % i),
            )
        for i in range(3):
            m, props, body = wait_get(sch, server_q)
            assert body == b"req-%d" % i
            # the broker rewrote reply_to into a routable pseudo-queue name
            assert props.reply_to.startswith(REPLY_TO + ".")
            sch.basic_publish(
                "",
                props.reply_to,
                b"resp-%d" % i,
                pika.BasicProperties(correlation_id=props.correlation_id),
            )
        deadline = time.monotonic() + 10
        while len(replies) < 3 and time.monotonic() < deadline:
            client.process_data_events(time_limit=0.05)
        assert [(p.correlation_id, b) for _, p, b in replies] == [
            ("c0", b"resp-0"),
            ("c1", b"resp-1"),
            ("c2", b"resp-2"),
        ]
        m = replies[0][0]
        assert m.exchange == "" and m.routing_key.startswith(REPLY_TO + ".")


def test_reply_to_without_consumer_406(broker):
    with connection(broker) as conn:
        ch = conn.channel()
        q = uid("q")
        ch.queue_declare(q, exclusive=True)
        ch.basic_publish("", q, b"x", pika.BasicProperties(reply_to=REPLY_TO))
        e = expect_channel_close(lambda: ch.queue_declare(q, passive=True), 406)
        assert e.reply_text == "PRECONDITION_FAILED - fast reply consumer does not exist"


def test_reply_consumer_must_be_no_ack(broker):
    with connection(broker) as conn:
        ch = conn.channel()
        e = expect_channel_close(
            lambda: ch.basic_consume(REPLY_TO, lambda *a: None, auto_ack=False), 406
        )
        assert e.reply_text == "PRECONDITION_FAILED - reply consumer cannot acknowledge"


def test_only_one_reply_consumer_per_channel(broker):
    with connection(broker) as conn:
        ch = conn.channel()
        ch.basic_consume(REPLY_TO, lambda *a: None, auto_ack=True)
        e = expect_channel_close(
            lambda: ch.basic_consume(REPLY_TO, lambda *a: None, auto_ack=True), 406
        )
        assert e.reply_text == "PRECONDITION_FAILED - reply consumer already set"


def test_passive_declare_reply_to(broker):
    with connection(broker) as conn:
        ch = conn.channel()
        ch.basic_consume(REPLY_TO, lambda *a: None, auto_ack=True)
        ok = ch.queue_declare(REPLY_TO, passive=True).method
        assert ok.queue == REPLY_TO


def test_reply_to_stale_name_dropped_silently(broker):
    with connection(broker) as conn:
        ch = conn.channel()
        ch.basic_publish("", REPLY_TO + ".bogus-" + uid(), b"x")
        q = uid("q")
        ch.queue_declare(q, exclusive=True)  # channel still open


def test_reply_after_requester_gone_dropped(broker):
    server_q = uid("rpc")
    with connection(broker) as server:
        sch = server.channel()
        sch.queue_declare(server_q, exclusive=True)
        with connection(broker) as client:
            cch = client.channel()
            cch.basic_consume(REPLY_TO, lambda *a: None, auto_ack=True)
            cch.basic_publish("", server_q, b"req", pika.BasicProperties(reply_to=REPLY_TO))
            _, props, _ = wait_get(sch, server_q)
        sch.confirm_delivery()
        sch.basic_publish("", props.reply_to, b"late")  # no error, just dropped
        sch.queue_declare(server_q, passive=True)
