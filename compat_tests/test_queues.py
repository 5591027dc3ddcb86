"""Queue declaration, properties, arguments (TTL, length limits, priorities, SAC, types)."""

from __future__ import annotations

import time

import pika
import pika.exceptions
import pytest

from .helpers import (
    channel,
    connection,
    delete_queue_quietly,
    expect_channel_close,
    get_all,
    pump,
    uid,
    wait_get,
    wait_until,
)


@pytest.fixture
def conn(broker):
    with connection(broker) as c:
        yield c


@pytest.fixture
def ch(conn):
    return conn.channel()


def until_sentinel(ch, q, timeout=10):
    ch.basic_publish("", q, b"<sentinel>")
    got = []
    while True:
        body = wait_get(ch, q, timeout=timeout)[2]
        if body == b"<sentinel>":
            return got
        got.append(body)


def test_declare_ok_fields(ch):
    q = uid("q")
    ok = ch.queue_declare(q, exclusive=True).method
    assert (ok.queue, ok.message_count, ok.consumer_count) == (q, 0, 0)
    for i in range(3):
        ch.basic_publish("", q, b"%d" % i)
    ch.basic_consume(q, lambda *a: None, auto_ack=False)
    # one consumer; with no prefetch limit all 3 get delivered (unacked) -> message_count 0
    ok = wait_until(
        lambda: (lambda m: m if m.message_count == 0 else None)(
            ch.queue_declare(q, passive=True).method
        ),
        message="messages delivered",
    )
    assert ok.consumer_count == 1


@pytest.mark.timeout(20)  # before the fix, the client waited for declare-ok forever
def test_names_of_any_utf8(ch):
    """RabbitMQ takes any UTF-8 name; names outside pamqp's pattern broke our replies (found
    by the fuzz test): declare-ok, get-ok and return all carry a name."""
    q, x = uid("q-é;"), uid("x-ü\x01")
    assert ch.queue_declare(q, exclusive=True).method.queue == q
    ch.exchange_declare(x, "direct", auto_delete=True)
    ch.queue_bind(q, x, "k")
    returned = []
    ch.add_on_return_callback(lambda _ch, method, _props, _body: returned.append(method))
    ch.basic_publish(x, "k", b"routed")
    ch.basic_publish(x, "nowhere", b"returned", mandatory=True)
    method, _props, body = wait_get(ch, q)
    assert (method.exchange, body) == (x, b"routed")
    wait_until(
        lambda: ch.connection.process_data_events(time_limit=0.05) or returned,
        message="basic.return",
    )
    assert (returned[0].reply_code, returned[0].exchange) == (312, x)
    ch.exchange_delete(x)


def test_declare_ok_counts_ready_messages(ch):
    q = uid("q")
    ch.queue_declare(q, exclusive=True)
    ch.confirm_delivery()
    for _ in range(5):
        ch.basic_publish("", q, b"x")
    ok = ch.queue_declare(q, exclusive=True).method
    assert ok.message_count == 5 and ok.consumer_count == 0


@pytest.mark.parametrize("durable", [True, False])
def test_declare_durable_and_transient(broker, ch, durable):
    q = uid("q")
    ch.queue_declare(q, durable=durable)
    try:
        ch.queue_declare(q, durable=durable)  # equivalent redeclare OK
        ch.queue_declare(q, passive=True)
        e = expect_channel_close(lambda: ch.queue_declare(q, durable=not durable), 406)
        assert e.reply_text.startswith("PRECONDITION_FAILED")
    finally:
        delete_queue_quietly(broker, q)


def test_redeclare_with_different_arguments_406(broker, ch):
    q = uid("q")
    ch.queue_declare(q, arguments={"x-message-ttl": 1000})
    try:
        e = expect_channel_close(
            lambda: ch.queue_declare(q, arguments={"x-message-ttl": 2000}), 406
        )
        # RabbitMQ: "PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue 'q' in
        # vhost '/': received '2000' but current is '1000'"
        assert "inequivalent arg" in e.reply_text
        ch2 = ch.connection.channel()
        expect_channel_close(lambda: ch2.queue_declare(q), 406)
        ch3 = ch.connection.channel()
        # passive declare ignores arguments
        ch3.queue_declare(q, passive=True, arguments={"x-message-ttl": 5})
    finally:
        delete_queue_quietly(broker, q)


@pytest.mark.parametrize(
    "args",
    [
        {"x-message-ttl": -1},
        {"x-message-ttl": "abc"},
        {"x-expires": 0},
        {"x-max-priority": 1000},
        {"x-overflow": "nope"},
        {"x-queue-type": "bogus"},
    ],
)
def test_invalid_queue_arguments_406(ch, args):
    e = expect_channel_close(lambda: ch.queue_declare(uid("q"), arguments=args), 406)
    assert e.reply_text.startswith("PRECONDITION_FAILED")


def test_amq_prefix_queue_name_403(ch):
    e = expect_channel_close(lambda: ch.queue_declare("amq.q-" + uid()), 403)
    assert e.reply_text.startswith("ACCESS_REFUSED")


def test_server_named_queue(ch):
    ok = ch.queue_declare("", exclusive=True).method
    assert ok.queue.startswith("amq.gen-")
    ok2 = ch.queue_declare("", exclusive=True).method
    assert ok2.queue != ok.queue
    ch.basic_publish("", ok.queue, b"hi")
    assert wait_get(ch, ok.queue)[2] == b"hi"


def test_passive_declare_missing_404(ch):
    q = uid("missing")
    e = expect_channel_close(lambda: ch.queue_declare(q, passive=True), 404)
    # RabbitMQ: "NOT_FOUND - no queue 'q' in vhost '/'"
    assert e.reply_text.startswith("NOT_FOUND") and q in e.reply_text


@pytest.mark.parametrize("op", ["declare", "passive", "get", "consume", "delete", "purge", "bind"])
def test_exclusive_queue_locked_for_other_connections(broker, ch, op):
    q = uid("excl")
    ch.queue_declare(q, exclusive=True)
    with channel(broker) as other:
        actions = {
            "declare": lambda: other.queue_declare(q, exclusive=True),
            "passive": lambda: other.queue_declare(q, passive=True),
            "get": lambda: other.basic_get(q),
            "consume": lambda: other.basic_consume(q, lambda *a: None),
            "delete": lambda: other.queue_delete(q),
            "purge": lambda: other.queue_purge(q),
            "bind": lambda: other.queue_bind(q, "amq.direct", routing_key="k"),
        }
        e = expect_channel_close(actions[op], 405)
        assert e.reply_text.startswith("RESOURCE_LOCKED")
    ch.queue_declare(q, passive=True)  # owner unaffected


def test_exclusive_queue_other_connection_can_publish(broker, ch):
    q = uid("excl")
    ch.queue_declare(q, exclusive=True)
    with channel(broker) as other:
        other.confirm_delivery()
        other.basic_publish("", q, b"from-other")
    assert wait_get(ch, q)[2] == b"from-other"


def test_exclusive_queue_deleted_when_connection_closes(broker):
    q = uid("excl")
    with channel(broker) as owner:
        owner.queue_declare(q, exclusive=True)
    with channel(broker) as ch:
        wait_until(lambda: _missing(ch, q), message="exclusive queue deleted")


def _missing(ch, q):
    c = ch.connection.channel()
    try:
        c.queue_declare(q, passive=True)
        c.close()
        return False
    except pika.exceptions.ChannelClosedByBroker as e:
        assert e.reply_code in (404, 405)
        return e.reply_code == 404


def test_auto_delete_after_last_consumer_cancels(broker, conn, ch):
    q = uid("ad")
    ch.queue_declare(q, auto_delete=True)
    try:
        # not deleted while it never had a consumer
        ch.basic_publish("", q, b"x")
        ch.queue_declare(q, passive=True)
        t1 = ch.basic_consume(q, lambda *a: None, auto_ack=True)
        ch2 = conn.channel()
        t2 = ch2.basic_consume(q, lambda *a: None, auto_ack=True)
        ch.basic_cancel(t1)
        ch.queue_declare(q, passive=True)  # still one consumer
        ch2.basic_cancel(t2)
        wait_until(lambda: _missing(ch, q), message="auto-delete queue removed")
    finally:
        delete_queue_quietly(broker, q)


def test_auto_delete_when_consumer_channel_closes(broker, conn):
    q = uid("ad")
    ch = conn.channel()
    ch.queue_declare(q, auto_delete=True)
    try:
        cch = conn.channel()
        cch.basic_consume(q, lambda *a: None)
        cch.close()
        wait_until(lambda: _missing(ch, q), message="auto-delete queue removed")
    finally:
        delete_queue_quietly(broker, q)


def test_bind_unbind(ch):
    x, q = uid("x"), uid("q")
    ch.exchange_declare(x, "direct")
    try:
        ch.queue_declare(q, exclusive=True)
        ch.queue_bind(q, x, routing_key="k")
        ch.queue_bind(q, x, routing_key="k")  # idempotent
        ch.basic_publish(x, "k", b"bound")
        assert wait_get(ch, q)[2] == b"bound"
        assert until_sentinel(ch, q) == []  # bound twice, still one copy
        ch.queue_unbind(q, x, routing_key="k")
        ch.basic_publish(x, "k", b"unbound")
        assert until_sentinel(ch, q) == []
    finally:
        ch.exchange_delete(x)


def test_purge_returns_count(ch):
    q = uid("q")
    ch.queue_declare(q, exclusive=True)
    ch.confirm_delivery()
    for i in range(7):
        ch.basic_publish("", q, b"%d" % i)
    ok = ch.queue_purge(q).method
    assert ok.message_count == 7
    assert ch.queue_declare(q, passive=True).method.message_count == 0
    assert ch.queue_purge(q).method.message_count == 0


def test_purge_keeps_unacked(ch):
    q = uid("q")
    ch.queue_declare(q, exclusive=True)
    ch.confirm_delivery()
    for i in range(3):
        ch.basic_publish("", q, b"%d" % i)
    m, _, _ = ch.basic_get(q, auto_ack=False)
    assert ch.queue_purge(q).method.message_count == 2
    ch.basic_reject(m.delivery_tag, requeue=True)
    assert wait_get(ch, q)[2] == b"0"


def test_delete_returns_count(ch):
    q = uid("q")
    ch.queue_declare(q)
    ch.confirm_delivery()
    for _ in range(4):
        ch.basic_publish("", q, b"x")
    assert ch.queue_delete(q).method.message_count == 4
    expect_channel_close(lambda: ch.queue_declare(q, passive=True), 404)


def test_delete_missing_queue_ok(ch):
    # RabbitMQ answers delete-ok (message_count 0) for a queue that does not exist
    assert ch.queue_delete(uid("never")).method.message_count == 0


def test_delete_if_empty_406(broker, ch):
    q = uid("q")
    ch.queue_declare(q)
    try:
        ch.confirm_delivery()
        ch.basic_publish("", q, b"x")
        e = expect_channel_close(lambda: ch.queue_delete(q, if_empty=True), 406)
        # RabbitMQ: "PRECONDITION_FAILED - queue 'q' in vhost '/' not empty"
        assert e.reply_text.startswith("PRECONDITION_FAILED")
        ch2 = ch.connection.channel()
        ch2.queue_purge(q)
        ch2.queue_delete(q, if_empty=True)
    finally:
        delete_queue_quietly(broker, q)


def test_delete_if_unused_406(broker, conn, ch):
    q = uid("q")
    ch.queue_declare(q)
    try:
        cch = conn.channel()
        tag = cch.basic_consume(q, lambda *a: None)
        e = expect_channel_close(lambda: ch.queue_delete(q, if_unused=True), 406)
        # RabbitMQ: "PRECONDITION_FAILED - queue 'q' in vhost '/' in use"
        assert e.reply_text.startswith("PRECONDITION_FAILED")
        cch.basic_cancel(tag)
        conn.channel().queue_delete(q, if_unused=True)
    finally:
        delete_queue_quietly(broker, q)


# ---------------------------------------------------------------- TTL / expiry


def test_queue_message_ttl(ch):
    q = uid("ttl")
    ch.queue_declare(q, exclusive=True, arguments={"x-message-ttl": 200})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"short-lived")
    ch.basic_publish("", q, b"also")
    wait_until(
        lambda: ch.queue_declare(q, passive=True).method.message_count == 0,
        timeout=10,
        message="messages expired",
    )
    m, _, _ = ch.basic_get(q, auto_ack=True)
    assert m is None


def test_queue_message_ttl_zero_only_for_consumers(ch):
    # x-message-ttl 0: messages expire unless they can be delivered immediately
    q = uid("ttl0")
    ch.queue_declare(q, exclusive=True, arguments={"x-message-ttl": 0})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"dropped")
    pump(ch.connection, 0.2)
    assert ch.basic_get(q, auto_ack=True)[0] is None
    got = []
    ch.basic_consume(q, lambda c, m, p, b: got.append(b), auto_ack=True)
    ch.basic_publish("", q, b"delivered")
    deadline = time.monotonic() + 10
    while not got and time.monotonic() < deadline:
        ch.connection.process_data_events(time_limit=0.05)
    assert got == [b"delivered"]


def test_per_message_expiration(ch):
    q = uid("exp")
    ch.queue_declare(q, exclusive=True)
    ch.confirm_delivery()
    ch.basic_publish("", q, b"expires", pika.BasicProperties(expiration="100"))
    ch.basic_publish("", q, b"stays")
    wait_until(
        lambda: ch.queue_declare(q, passive=True).method.message_count <= 1,
        timeout=10,
        message="message expired",
    )
    m, props, body = wait_get(ch, q)
    assert body == b"stays"
    assert ch.basic_get(q, auto_ack=True)[0] is None


def test_per_message_expiration_kept_on_delivery(ch):
    q = uid("exp")
    ch.queue_declare(q, exclusive=True)
    ch.basic_publish("", q, b"x", pika.BasicProperties(expiration="60000"))
    m, props, body = wait_get(ch, q)
    assert props.expiration == "60000"


def test_lower_of_queue_and_message_ttl_applies(ch):
    q = uid("ttl")
    ch.queue_declare(q, exclusive=True, arguments={"x-message-ttl": 60000})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"short", pika.BasicProperties(expiration="100"))
    wait_until(
        lambda: ch.queue_declare(q, passive=True).method.message_count == 0,
        timeout=10,
        message="per-message expiration under queue TTL",
    )


def test_invalid_expiration_property(ch):
    # RabbitMQ: channel error 406 PRECONDITION_FAILED "invalid expiration 'abc' for message"
    q = uid("q")
    ch.queue_declare(q, exclusive=True)
    ch.basic_publish("", q, b"x", pika.BasicProperties(expiration="abc"))
    expect_channel_close(lambda: ch.queue_declare(q, passive=True), 406)


def test_queue_expires(broker, ch):
    q = uid("expires")
    ch.queue_declare(q, arguments={"x-expires": 300})
    try:
        # poll slowly: RabbitMQ counts a (passive) declare as "use" and restarts the timer
        wait_until(
            lambda: _missing(ch, q), timeout=10, interval=1.0, message="x-expires queue deleted"
        )
    finally:
        delete_queue_quietly(broker, q)


def test_queue_expires_not_while_consumed(broker, conn, ch):
    q = uid("expires")
    ch.queue_declare(q, arguments={"x-expires": 300})
    try:
        tag = ch.basic_consume(q, lambda *a: None)
        pump(conn, 0.8)
        ch.queue_declare(q, passive=True)
        ch.basic_cancel(tag)
        wait_until(
            lambda: _missing(ch, q), timeout=10, interval=1.0, message="x-expires queue deleted"
        )
    finally:
        delete_queue_quietly(broker, q)


# ---------------------------------------------------------------- length limits


def test_max_length_drop_head(ch):
    q = uid("ml")
    ch.queue_declare(q, exclusive=True, arguments={"x-max-length": 3})
    ch.confirm_delivery()
    for i in range(5):
        ch.basic_publish("", q, b"%d" % i)  # all confirmed (drop-head accepts)
    assert ch.queue_declare(q, passive=True).method.message_count == 3
    assert [b for _, _, b in get_all(ch, q)] == [b"2", b"3", b"4"]


def test_max_length_reject_publish_nacks(ch):
    q = uid("ml")
    ch.queue_declare(
        q, exclusive=True, arguments={"x-max-length": 2, "x-overflow": "reject-publish"}
    )
    ch.confirm_delivery()
    ch.basic_publish("", q, b"0")
    ch.basic_publish("", q, b"1")
    with pytest.raises(pika.exceptions.NackError):
        ch.basic_publish("", q, b"2")
    assert [b for _, _, b in get_all(ch, q)] == [b"0", b"1"]
    ch.basic_publish("", q, b"3")  # room again -> acked
    assert [b for _, _, b in get_all(ch, q)] == [b"3"]


def test_max_length_zero(ch):
    q = uid("ml0")
    ch.queue_declare(q, exclusive=True, arguments={"x-max-length": 0})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"gone")
    assert ch.queue_declare(q, passive=True).method.message_count == 0


def test_max_length_bytes_drop_head(ch):
    q = uid("mlb")
    ch.queue_declare(q, exclusive=True, arguments={"x-max-length-bytes": 10})
    ch.confirm_delivery()
    for b in (b"aaaa", b"bbbb", b"cccc"):
        ch.basic_publish("", q, b)
    assert [b for _, _, b in get_all(ch, q)] == [b"bbbb", b"cccc"]


def test_max_length_bytes_reject_publish(ch):
    q = uid("mlb")
    ch.queue_declare(
        q, exclusive=True, arguments={"x-max-length-bytes": 10, "x-overflow": "reject-publish"}
    )
    ch.confirm_delivery()
    ch.basic_publish("", q, b"aaaa")
    ch.basic_publish("", q, b"bbbb")
    with pytest.raises(pika.exceptions.NackError):
        ch.basic_publish("", q, b"cccc")
    assert [b for _, _, b in get_all(ch, q)] == [b"aaaa", b"bbbb"]


# ---------------------------------------------------------------- priorities


def test_max_priority_ordering(ch):
    q = uid("prio")
    ch.queue_declare(q, exclusive=True, arguments={"x-max-priority": 10})
    ch.confirm_delivery()
    sent = [
        (1, b"p1"),
        (5, b"p5a"),
        (3, b"p3"),
        (10, b"p10"),
        (None, b"pnone"),
        (5, b"p5b"),
        (0, b"p0"),
        (200, b"p200"),
    ]
    for prio, body in sent:
        ch.basic_publish("", q, body, pika.BasicProperties(priority=prio))
    got = [b for _, _, b in get_all(ch, q)]
    # priority above the max counts as the max; none counts as 0; FIFO within a priority
    assert got == [b"p10", b"p200", b"p5a", b"p5b", b"p3", b"p1", b"pnone", b"p0"]


def test_no_max_priority_is_fifo(ch):
    q = uid("fifo")
    ch.queue_declare(q, exclusive=True)
    ch.confirm_delivery()
    for prio, body in [(1, b"a"), (9, b"b"), (5, b"c")]:
        ch.basic_publish("", q, body, pika.BasicProperties(priority=prio))
    assert [b for _, _, b in get_all(ch, q)] == [b"a", b"b", b"c"]


def test_priority_property_preserved(ch):
    q = uid("prio")
    ch.queue_declare(q, exclusive=True, arguments={"x-max-priority": 5})
    ch.basic_publish("", q, b"x", pika.BasicProperties(priority=3))
    assert wait_get(ch, q)[1].priority == 3


def test_consumer_priorities(conn):
    q = uid("cprio")
    ch = conn.channel()
    ch.queue_declare(q, exclusive=True)
    got = {"high": [], "low": []}
    hch, lch = conn.channel(), conn.channel()
    hch.basic_consume(
        q, lambda c, m, p, b: got["high"].append(b), auto_ack=True, arguments={"x-priority": 10}
    )
    lch.basic_consume(
        q, lambda c, m, p, b: got["low"].append(b), auto_ack=True, arguments={"x-priority": 1}
    )
    for i in range(10):
        ch.basic_publish("", q, b"%d" % i)
    deadline = time.monotonic() + 10
    while len(got["high"]) + len(got["low"]) < 10 and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.05)
    assert len(got["high"]) == 10 and got["low"] == []


def test_consumer_priority_falls_back_when_blocked(conn):
    # the high-priority consumer has prefetch 2 and does not ack: the rest go to the low one
    q = uid("cprio")
    ch = conn.channel()
    ch.queue_declare(q, exclusive=True)
    got = {"high": [], "low": []}
    hch, lch = conn.channel(), conn.channel()
    hch.basic_qos(prefetch_count=2)
    hch.basic_consume(
        q, lambda c, m, p, b: got["high"].append(b), auto_ack=False, arguments={"x-priority": 10}
    )
    lch.basic_consume(
        q, lambda c, m, p, b: got["low"].append(b), auto_ack=True, arguments={"x-priority": 0}
    )
    for i in range(6):
        ch.basic_publish("", q, b"%d" % i)
    deadline = time.monotonic() + 10
    while len(got["high"]) + len(got["low"]) < 6 and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.05)
    assert got["high"] == [b"0", b"1"]
    assert got["low"] == [b"2", b"3", b"4", b"5"]


# ---------------------------------------------------------------- single active consumer


def test_single_active_consumer(broker, conn):
    q = uid("sac")
    ch = conn.channel()
    ch.queue_declare(q, arguments={"x-single-active-consumer": True})
    try:
        got = {"a": [], "b": []}
        ach, bch = conn.channel(), conn.channel()
        atag = ach.basic_consume(q, lambda c, m, p, b: got["a"].append(b), auto_ack=True)
        bch.basic_consume(q, lambda c, m, p, b: got["b"].append(b), auto_ack=True)
        for i in range(4):
            ch.basic_publish("", q, b"a%d" % i)
        deadline = time.monotonic() + 10
        while len(got["a"]) < 4 and time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.05)
        pump(conn, 0.3)
        assert got["a"] == [b"a0", b"a1", b"a2", b"a3"] and got["b"] == []
        ach.basic_cancel(atag)
        for i in range(3):
            ch.basic_publish("", q, b"b%d" % i)
        deadline = time.monotonic() + 10
        while len(got["b"]) < 3 and time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.05)
        assert got["b"] == [b"b0", b"b1", b"b2"]
        assert len(got["a"]) == 4
    finally:
        delete_queue_quietly(broker, q)


def test_single_active_consumer_failover_on_channel_close(broker, conn):
    q = uid("sac")
    ch = conn.channel()
    ch.queue_declare(q, arguments={"x-single-active-consumer": True})
    try:
        got = {"a": [], "b": []}
        ach, bch = conn.channel(), conn.channel()
        ach.basic_consume(q, lambda c, m, p, b: got["a"].append(b), auto_ack=False)
        bch.basic_consume(q, lambda c, m, p, b: got["b"].append(b), auto_ack=True)
        ch.basic_publish("", q, b"m1")
        deadline = time.monotonic() + 10
        while not got["a"] and time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.05)
        assert got["a"] == [b"m1"] and got["b"] == []
        ach.close()  # unacked m1 is requeued and goes to the new active consumer
        deadline = time.monotonic() + 10
        while not got["b"] and time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.05)
        assert got["b"] == [b"m1"]
    finally:
        delete_queue_quietly(broker, q)


# ---------------------------------------------------------------- queue types


@pytest.mark.parametrize("qtype", ["classic", "quorum"])
def test_queue_type_accepted(broker, ch, qtype):
    q = uid(qtype)
    ch.queue_declare(q, durable=True, arguments={"x-queue-type": qtype})
    try:
        ch.queue_declare(q, durable=True, arguments={"x-queue-type": qtype})
        ch.confirm_delivery()
        ch.basic_publish("", q, b"typed", pika.BasicProperties(delivery_mode=2))
        m, _, body = wait_get(ch, q, auto_ack=False)
        assert body == b"typed"
        ch.basic_ack(m.delivery_tag)
    finally:
        delete_queue_quietly(broker, q)


@pytest.mark.parametrize("kwargs", [{"exclusive": True, "durable": True}, {"durable": False}])
def test_quorum_queue_must_be_durable_and_not_exclusive(ch, kwargs):
    # RabbitMQ: 406 "PRECONDITION_FAILED - invalid property 'non-durable' for queue ..." /
    # "invalid property 'exclusive-owner' ..."
    expect_channel_close(
        lambda: ch.queue_declare(uid("qq"), arguments={"x-queue-type": "quorum"}, **kwargs), 406
    )
