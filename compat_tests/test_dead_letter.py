"""Dead-lettering: reasons, x-death header format, routing, delivery limits."""

from __future__ import annotations

import datetime

import pika
import pytest

from .helpers import connection, delete_queue_quietly, get_all, uid, wait_get


@pytest.fixture
def ch(broker):
    with connection(broker) as c:
        yield c.channel()


@pytest.fixture
def dlx(ch):
    """A fanout DLX with a capture queue bound to it: (exchange name, capture queue)."""
    x, q = uid("dlx"), uid("dead")
    ch.exchange_declare(x, "fanout")
    ch.queue_declare(q, exclusive=True)
    ch.queue_bind(q, x)
    yield x, q
    try:
        ch.exchange_delete(x)
    except Exception:
        pass


def assert_x_death(props, *, queue, reason, count=1, exchange="", routing_keys=None):
    h = props.headers
    assert h is not None and "x-death" in h, props
    deaths = h["x-death"]
    assert isinstance(deaths, list) and deaths
    d = deaths[0]  # most recent first
    assert d["queue"] == queue
    assert d["reason"] == reason
    assert d["count"] == count
    assert d["exchange"] == exchange
    assert d["routing-keys"] == (routing_keys if routing_keys is not None else [queue])
    assert isinstance(d["time"], datetime.datetime)
    now = datetime.datetime.now(datetime.UTC)
    t = d["time"] if d["time"].tzinfo else d["time"].replace(tzinfo=datetime.UTC)
    assert abs((now - t).total_seconds()) < 120
    return d


def test_reject_without_requeue_dead_letters(ch, dlx):
    x, dead = dlx
    q = uid("src")
    ch.queue_declare(q, exclusive=True, arguments={"x-dead-letter-exchange": x})
    ch.basic_publish("", q, b"bad", pika.BasicProperties(headers={"app": "v"}, message_id="m-1"))
    m, _, _ = wait_get(ch, q, auto_ack=False)
    ch.basic_reject(m.delivery_tag, requeue=False)
    m, props, body = wait_get(ch, dead)
    assert body == b"bad"
    assert m.exchange == x and m.routing_key == q  # original routing key kept
    assert m.redelivered is False
    assert props.message_id == "m-1" and props.headers["app"] == "v"
    assert_x_death(props, queue=q, reason="rejected")
    h = props.headers
    assert h["x-first-death-queue"] == q
    assert h["x-first-death-reason"] == "rejected"
    assert h["x-first-death-exchange"] == ""


def test_nack_multiple_without_requeue_dead_letters(ch, dlx):
    x, dead = dlx
    q = uid("src")
    ch.queue_declare(q, exclusive=True, arguments={"x-dead-letter-exchange": x})
    ch.confirm_delivery()
    for i in range(3):
        ch.basic_publish("", q, b"%d" % i)
    tags = [wait_get(ch, q, auto_ack=False)[0].delivery_tag for _ in range(3)]
    ch.basic_nack(tags[-1], multiple=True, requeue=False)
    got = [wait_get(ch, dead) for _ in range(3)]
    assert [b for _, _, b in got] == [b"0", b"1", b"2"]
    for _, props, _ in got:
        assert_x_death(props, queue=q, reason="rejected")


def test_requeue_does_not_dead_letter(ch, dlx):
    x, dead = dlx
    q = uid("src")
    ch.queue_declare(q, exclusive=True, arguments={"x-dead-letter-exchange": x})
    ch.basic_publish("", q, b"m")
    m, _, _ = wait_get(ch, q, auto_ack=False)
    ch.basic_reject(m.delivery_tag, requeue=True)
    m, _, _ = wait_get(ch, q, auto_ack=True)
    assert m.redelivered is True
    assert get_all(ch, dead) == []


def test_dead_letter_routing_key_override(ch):
    x, q, dead = uid("dlx"), uid("src"), uid("dead")
    ch.exchange_declare(x, "direct")
    try:
        ch.queue_declare(dead, exclusive=True)
        ch.queue_bind(dead, x, routing_key="dead-rk")
        ch.queue_declare(
            q,
            exclusive=True,
            arguments={"x-dead-letter-exchange": x, "x-dead-letter-routing-key": "dead-rk"},
        )
        ch.basic_publish("", q, b"m")
        m, _, _ = wait_get(ch, q, auto_ack=False)
        ch.basic_nack(m.delivery_tag, requeue=False)
        m, props, body = wait_get(ch, dead)
        assert m.routing_key == "dead-rk"
        assert_x_death(props, queue=q, reason="rejected", routing_keys=[q])
    finally:
        ch.exchange_delete(x)


def test_dead_letter_to_default_exchange(ch):
    q, dead = uid("src"), uid("dead")
    ch.queue_declare(dead, exclusive=True)
    ch.queue_declare(
        q,
        exclusive=True,
        arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead},
    )
    ch.basic_publish("", q, b"m")
    m, _, _ = wait_get(ch, q, auto_ack=False)
    ch.basic_reject(m.delivery_tag, requeue=False)
    m, props, body = wait_get(ch, dead)
    assert body == b"m" and m.exchange == ""
    assert_x_death(props, queue=q, reason="rejected")


@pytest.mark.timeout(20)  # before the fix, the dead letter's get-ok never came
def test_dead_letter_keeps_properties_pamqp_would_refuse(ch):
    """Found by the fuzz test: RabbitMQ passes any delivery-mode octet and a cluster-id on;
    re-encoding a dead letter's properties refused them and the get-ok was never sent."""
    q, dead = uid("src"), uid("dead")
    ch.queue_declare(dead, exclusive=True)
    ch.queue_declare(
        q,
        exclusive=True,
        arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead},
    )
    ch.basic_publish("", q, b"m", pika.BasicProperties(delivery_mode=0, cluster_id="c1"))
    m, _, _ = wait_get(ch, q, auto_ack=False)
    ch.basic_reject(m.delivery_tag, requeue=False)
    _m, props, body = wait_get(ch, dead)
    assert (body, props.delivery_mode, props.cluster_id) == (b"m", 0, "c1")


def test_queue_ttl_expiry_dead_letters(ch, dlx):
    x, dead = dlx
    q = uid("src")
    ch.queue_declare(
        q, exclusive=True, arguments={"x-dead-letter-exchange": x, "x-message-ttl": 100}
    )
    ch.basic_publish("", q, b"old")
    m, props, body = wait_get(ch, dead)
    assert body == b"old"
    d = assert_x_death(props, queue=q, reason="expired")
    assert "original-expiration" not in d


def test_per_message_expiry_dead_letters_with_original_expiration(ch, dlx):
    x, dead = dlx
    q = uid("src")
    ch.queue_declare(q, exclusive=True, arguments={"x-dead-letter-exchange": x})
    ch.basic_publish("", q, b"old", pika.BasicProperties(expiration="100"))
    m, props, body = wait_get(ch, dead)
    d = assert_x_death(props, queue=q, reason="expired")
    assert d["original-expiration"] == "100"
    assert props.expiration is None  # removed so it does not expire again downstream


def test_rejected_message_expiration_moved_to_x_death(ch, dlx):
    x, dead = dlx
    q = uid("src")
    ch.queue_declare(q, exclusive=True, arguments={"x-dead-letter-exchange": x})
    ch.basic_publish("", q, b"m", pika.BasicProperties(expiration="60000"))
    m, _, _ = wait_get(ch, q, auto_ack=False)
    ch.basic_reject(m.delivery_tag, requeue=False)
    m, props, body = wait_get(ch, dead)
    d = assert_x_death(props, queue=q, reason="rejected")
    assert d["original-expiration"] == "60000"
    assert props.expiration is None


def test_overflow_drop_head_dead_letters_maxlen(ch, dlx):
    x, dead = dlx
    q = uid("src")
    ch.queue_declare(q, exclusive=True, arguments={"x-dead-letter-exchange": x, "x-max-length": 1})
    ch.basic_publish("", q, b"first")
    ch.basic_publish("", q, b"second")
    m, props, body = wait_get(ch, dead)
    assert body == b"first"
    assert_x_death(props, queue=q, reason="maxlen")
    assert wait_get(ch, q)[2] == b"second"


def test_reject_publish_overflow_does_not_dead_letter(ch, dlx):
    x, dead = dlx
    q = uid("src")
    ch.queue_declare(
        q,
        exclusive=True,
        arguments={"x-dead-letter-exchange": x, "x-max-length": 1, "x-overflow": "reject-publish"},
    )
    ch.confirm_delivery()
    ch.basic_publish("", q, b"first")
    with pytest.raises(pika.exceptions.NackError):
        ch.basic_publish("", q, b"second")
    ch.basic_publish("", dead, b"<sentinel>")
    assert wait_get(ch, dead)[2] == b"<sentinel>"


def test_x_death_count_increments_in_cycle(ch, dlx):
    # src (DLX -> x) -> dead; move message from dead back to src and reject again
    x, dead = dlx
    q = uid("src")
    ch.queue_declare(q, exclusive=True, arguments={"x-dead-letter-exchange": x})
    ch.basic_publish("", q, b"m")
    props = None
    for n in (1, 2, 3):
        m, _, _ = wait_get(ch, q, auto_ack=False)
        ch.basic_reject(m.delivery_tag, requeue=False)
        m, props, body = wait_get(ch, dead)
        assert_x_death(props, queue=q, reason="rejected", count=n)
        assert len(props.headers["x-death"]) == 1  # same queue+reason -> one entry
        ch.basic_publish("", q, body, props)  # republish with the x-death headers
    assert props.headers["x-first-death-reason"] == "rejected"


def test_x_death_two_queues_two_entries(ch):
    # a -> (ttl expiry) -> b -> (reject) -> c: x-death has two entries, newest first
    a, b, c = uid("a"), uid("b"), uid("c")
    ch.queue_declare(c, exclusive=True)
    ch.queue_declare(
        b, exclusive=True, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": c}
    )
    ch.queue_declare(
        a,
        exclusive=True,
        arguments={
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": b,
            "x-message-ttl": 50,
        },
    )
    ch.basic_publish("", a, b"hop")
    m, _, _ = wait_get(ch, b, auto_ack=False)
    ch.basic_reject(m.delivery_tag, requeue=False)
    m, props, body = wait_get(ch, c)
    deaths = props.headers["x-death"]
    assert [(d["queue"], d["reason"]) for d in deaths] == [(b, "rejected"), (a, "expired")]
    assert deaths[0]["routing-keys"] == [b]
    assert deaths[1]["routing-keys"] == [a]
    assert props.headers["x-first-death-queue"] == a
    assert props.headers["x-first-death-reason"] == "expired"


def test_missing_dlx_drops_message(ch):
    q = uid("src")
    ch.queue_declare(q, exclusive=True, arguments={"x-dead-letter-exchange": uid("nope")})
    ch.basic_publish("", q, b"m")
    m, _, _ = wait_get(ch, q, auto_ack=False)
    ch.basic_reject(m.delivery_tag, requeue=False)
    ch.basic_publish("", q, b"<sentinel>")
    assert wait_get(ch, q)[2] == b"<sentinel>"  # channel still fine, message gone


def test_quorum_delivery_limit(broker, ch, dlx):
    x, dead = dlx
    q = uid("qq")
    limit = 2
    ch.queue_declare(
        q,
        durable=True,
        arguments={
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": x,
            "x-delivery-limit": limit,
        },
    )
    try:
        ch.basic_publish("", q, b"poison", pika.BasicProperties(headers={"h": 1}))
        # delivered limit+1 times in total (first + `limit` redeliveries), then dead-lettered
        for n in range(limit + 1):
            m, props, body = wait_get(ch, q, auto_ack=False)
            assert body == b"poison"
            assert m.redelivered is (n > 0)
            count = (props.headers or {}).get("x-delivery-count")
            if n == 0:
                assert count in (None, 0)  # RabbitMQ 3.10 sends 0 on the first delivery
            else:
                assert count == n
            ch.basic_nack(m.delivery_tag, requeue=True)
        m, props, body = wait_get(ch, dead)
        assert body == b"poison"
        assert_x_death(props, queue=q, reason="delivery_limit")
        assert props.headers["h"] == 1
        assert ch.basic_get(q, auto_ack=True)[0] is None
    finally:
        delete_queue_quietly(broker, q)


def test_quorum_delivery_limit_counts_channel_close_redelivery(broker, ch, dlx):
    x, dead = dlx
    q = uid("qq")
    conn = ch.connection
    if True:
        ch.queue_declare(
            q,
            durable=True,
            arguments={
                "x-queue-type": "quorum",
                "x-dead-letter-exchange": x,
                "x-delivery-limit": 1,
            },
        )
        try:
            ch.confirm_delivery()
            ch.basic_publish("", q, b"p")
            for _ in range(2):
                c2 = conn.channel()
                m, props, _ = wait_get(c2, q, auto_ack=False)
                c2.close()  # unacked -> returned to the queue (counts as a delivery attempt)
            m, props, body = wait_get(ch, dead, timeout=15)
            assert body == b"p"
            assert props.headers["x-death"][0]["reason"] == "delivery_limit"
        finally:
            delete_queue_quietly(broker, q)
