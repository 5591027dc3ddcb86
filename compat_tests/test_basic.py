"""basic.* semantics: publish/consume/get, properties, acks, qos, returns, consumers."""

from __future__ import annotations

import datetime
import decimal
import struct
import time

import pika
import pika.exceptions
import pytest

from .helpers import (
    collect,
    connection,
    expect_channel_close,
    pump,
    uid,
    wait_get,
)
from .rawamqp import ContentBody, commands, header, raw_connect


@pytest.fixture
def conn(broker):
    with connection(broker) as c:
        yield c


@pytest.fixture
def ch(conn):
    return conn.channel()


@pytest.fixture
def q(ch):
    name = uid("q")
    ch.queue_declare(name, exclusive=True)
    return name


def pump_until(conn, pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() >= deadline:
            raise AssertionError("timed out waiting")
        conn.process_data_events(time_limit=0.05)


FULL_PROPS = dict(
    content_type="application/json",
    content_encoding="gzip",
    headers={
        "str": "value",
        "int": 42,
        "neg": -7,
        "big": 2**40,
        "bool": True,
        "false": False,
        "bytes": b"\x00\x01\xff",
        "none": None,
        "dec": decimal.Decimal("3.14"),
        "ts": datetime.datetime(2024, 1, 2, 3, 4, 5),
        "list": [1, "two", [3, {"four": 4}], True],
        "nested": {"a": {"b": {"c": "deep"}}, "arr": [{"x": 1}, {"y": "z"}]},
        "unicode": "héllo ✓",
    },
    delivery_mode=2,
    priority=7,
    correlation_id="corr-123",
    reply_to="reply-queue",
    expiration="600000",
    message_id="msg-456",
    timestamp=1700000000,
    type="order.created",
    user_id="guest",
    app_id="compat-tests",
)


def test_round_trip_all_properties(ch, q, broker):
    props = dict(FULL_PROPS, user_id=broker.user)
    ch.basic_publish("", q, b'{"k": "v"}', pika.BasicProperties(**props))
    m, got, body = wait_get(ch, q)
    assert body == b'{"k": "v"}'
    for k, v in props.items():
        if k == "headers":
            continue
        assert getattr(got, k) == v, k
    h = got.headers
    exp = props["headers"]
    for k in ("str", "int", "neg", "big", "bool", "false", "none", "list", "nested", "unicode"):
        assert h[k] == exp[k], k
    assert h["bytes"] in (b"\x00\x01\xff", "\x00\x01\xff")
    assert h["dec"] == decimal.Decimal("3.14")
    assert h["ts"].replace(tzinfo=None) == datetime.datetime(2024, 1, 2, 3, 4, 5)


def test_round_trip_via_consumer(ch, q):
    ch.basic_publish("", q, b"c", pika.BasicProperties(correlation_id="x", headers={"a": [1, 2]}))
    ((m, props, body),) = collect(ch, q, 1, auto_ack=True)
    assert body == b"c" and props.correlation_id == "x" and props.headers == {"a": [1, 2]}
    assert m.routing_key == q and m.exchange == "" and m.redelivered is False
    assert m.consumer_tag


def test_no_properties_and_empty_body(ch, q):
    ch.basic_publish("", q, b"", pika.BasicProperties())
    m, props, body = wait_get(ch, q)
    assert body == b""
    assert props.headers is None and props.content_type is None and props.delivery_mode is None


def _field_table_entries():
    def sstr(s):
        return struct.pack(">B", len(s)) + s

    return [
        sstr(b"bool") + b"t\x01",
        sstr(b"i8") + b"b\xff",
        sstr(b"u8") + b"B\xff",
        sstr(b"i16") + b"s\x80\x00",
        sstr(b"u16") + b"u\xff\xff",
        sstr(b"i32") + b"I\x80\x00\x00\x00",
        sstr(b"u32") + b"i\xff\xff\xff\xff",
        sstr(b"i64") + b"l" + struct.pack(">q", -(2**63)),
        sstr(b"f") + b"f" + struct.pack(">f", 1.5),
        sstr(b"d") + b"d" + struct.pack(">d", 2.25),
        sstr(b"dec") + b"D\x02" + struct.pack(">i", 12345),
        sstr(b"S") + b"S" + struct.pack(">I", 3) + b"abc",
        sstr(b"x") + b"x" + struct.pack(">I", 2) + b"\x00\xff",
        sstr(b"T") + b"T" + struct.pack(">Q", 1700000000),
        sstr(b"V") + b"V",
        sstr(b"A") + b"A" + struct.pack(">I", 7) + b"I\x00\x00\x00\x01" + b"t\x00",
        sstr(b"F") + b"F" + struct.pack(">I", 4) + sstr(b"n") + b"t\x01",
    ]


def test_content_header_passes_through_byte_exact(broker):
    """RabbitMQ relays the content header (property flags + field-table encoding, including
    field types pika cannot produce: b B s u i f d x) byte for byte to the consumer."""
    tbl = b"".join(_field_table_entries())
    props = struct.pack(">H", 1 << 13) + struct.pack(">I", len(tbl)) + tbl  # headers only
    hdr_payload = struct.pack(">HHQ", 60, 0, 3) + props
    with raw_connect(broker) as c:
        c.open_channel(1)
        qn = uid("raw")
        c.send_method(commands.Queue.Declare(queue=qn, exclusive=True), 1)
        c.expect(commands.Queue.DeclareOk)
        c.send_method(commands.Basic.Publish(exchange="", routing_key=qn), 1)
        c.send(c.raw_frame(2, 1, hdr_payload))
        c.send(c.raw_frame(3, 1, b"abc"))
        deadline = time.monotonic() + 10
        while True:
            c.send_method(commands.Basic.Get(queue=qn, no_ack=True), 1)
            _, f = c.recv_method()
            if isinstance(f, commands.Basic.GetOk):
                break
            assert isinstance(f, commands.Basic.GetEmpty), f
            assert time.monotonic() < deadline
            time.sleep(0.05)
        raw = c.recv_bytes(7)
        ftype, chn, size = struct.unpack(">BHI", raw)
        payload = c.recv_bytes(size + 1)[:-1]
        assert (ftype, chn) == (2, 1)
        assert payload == hdr_payload
        _, body = c.recv_frame()
        assert body.value == b"abc"


def test_basic_get_and_get_empty(ch, q):
    m, _, _ = ch.basic_get(q, auto_ack=True)
    assert m is None  # get-empty
    ch.confirm_delivery()
    for i in range(3):
        ch.basic_publish("", q, b"%d" % i)
    m, _, body = ch.basic_get(q, auto_ack=True)
    assert isinstance(m, pika.spec.Basic.GetOk)
    assert body == b"0" and m.message_count == 2 and m.redelivered is False
    assert m.exchange == "" and m.routing_key == q
    m, _, body = ch.basic_get(q, auto_ack=True)
    assert body == b"1" and m.message_count == 1
    m, _, body = ch.basic_get(q, auto_ack=True)
    assert body == b"2" and m.message_count == 0
    assert ch.basic_get(q, auto_ack=True)[0] is None


def test_delivery_tags_per_channel_increasing(conn, q):
    ch1, ch2 = conn.channel(), conn.channel()
    ch1.confirm_delivery()
    for i in range(4):
        ch1.basic_publish("", q, b"%d" % i)
    tags1 = [ch1.basic_get(q)[0].delivery_tag for _ in range(2)]
    tags2 = [ch2.basic_get(q)[0].delivery_tag for _ in range(2)]
    assert tags1 == [1, 2] and tags2 == [1, 2]


def test_mandatory_unroutable_returned(ch):
    returned = []
    ch.add_on_return_callback(lambda c, m, p, b: returned.append((m, p, b)))
    x = "amq.direct"
    rk = uid("nobody")
    ch.basic_publish(x, rk, b"lost", pika.BasicProperties(message_id="r1"), mandatory=True)
    ch.basic_publish(x, rk, b"dropped-silently", mandatory=False)
    pump_until(ch.connection, lambda: returned)
    pump(ch.connection, 0.2)
    assert len(returned) == 1
    m, p, b = returned[0]
    assert (m.reply_code, m.reply_text) == (312, "NO_ROUTE")
    assert m.exchange == x and m.routing_key == rk
    assert b == b"lost" and p.message_id == "r1"


def test_mandatory_with_confirms_returns_then_acks(ch):
    ch.confirm_delivery()
    with pytest.raises(pika.exceptions.UnroutableError) as ei:
        ch.basic_publish("amq.direct", uid("nobody"), b"x", mandatory=True)
    (ret,) = ei.value.messages
    assert ret.method.reply_code == 312


def test_mandatory_routed_not_returned(ch, q):
    ch.confirm_delivery()
    ch.basic_publish("", q, b"x", mandatory=True)  # no UnroutableError
    assert wait_get(ch, q)[2] == b"x"


def test_immediate_not_implemented(broker):
    # RabbitMQ 3.x: connection.close 540 "NOT_IMPLEMENTED - immediate=true"
    with raw_connect(broker) as c:
        c.open_channel(1)
        c.send_method(commands.Basic.Publish(exchange="", routing_key=uid("q"), immediate=True), 1)
        c.send_frame(header.ContentHeader(0, 1, commands.Basic.Properties()), 1)
        c.send_frame(ContentBody(b"x"), 1)
        close = c.expect_connection_close(timeout=10)
        assert close.reply_code == 540


def test_user_id_mismatch_406(ch, q):
    ch.basic_publish("", q, b"x", pika.BasicProperties(user_id="not-" + uid()))
    e = expect_channel_close(lambda: ch.queue_declare(q, passive=True), 406)
    assert "user_id" in e.reply_text


def test_ack_single_and_multiple(ch, q):
    ch.confirm_delivery()
    for i in range(5):
        ch.basic_publish("", q, b"%d" % i)
    tags = [ch.basic_get(q)[0].delivery_tag for _ in range(5)]
    ch.basic_ack(tags[0])
    ch.basic_ack(tags[3], multiple=True)  # acks 2,3,4
    ch.basic_recover(requeue=True)
    m, _, body = wait_get(ch, q)
    assert body == b"4" and m.redelivered is True
    assert ch.basic_get(q)[0] is None


def test_ack_zero_multiple_acks_all(ch, q):
    ch.confirm_delivery()
    for i in range(3):
        ch.basic_publish("", q, b"%d" % i)
    for _ in range(3):
        ch.basic_get(q)
    ch.basic_ack(0, multiple=True)
    ch.basic_recover(requeue=True)
    pump(ch.connection, 0.1)
    assert ch.basic_get(q)[0] is None


def test_nack_requeue_redelivered(ch, q):
    ch.confirm_delivery()
    for i in range(3):
        ch.basic_publish("", q, b"%d" % i)
    tags = [ch.basic_get(q)[0].delivery_tag for _ in range(3)]
    ch.basic_nack(tags[1], multiple=True, requeue=True)  # 0 and 1 back
    got = [wait_get(ch, q, auto_ack=True) for _ in range(2)]
    assert [b for _, _, b in got] == [b"0", b"1"]  # original order
    assert all(m.redelivered for m, _, _ in got)
    ch.basic_nack(tags[2], requeue=False)  # dropped (no DLX)
    pump(ch.connection, 0.1)
    assert ch.basic_get(q)[0] is None


def test_reject_requeue_and_drop(ch, q):
    ch.basic_publish("", q, b"r")
    m, _, _ = wait_get(ch, q, auto_ack=False)
    assert m.redelivered is False
    ch.basic_reject(m.delivery_tag, requeue=True)
    m, _, body = wait_get(ch, q, auto_ack=False)
    assert body == b"r" and m.redelivered is True
    ch.basic_reject(m.delivery_tag, requeue=False)
    pump(ch.connection, 0.1)
    assert ch.basic_get(q)[0] is None


def test_unknown_delivery_tag_406(ch, q):
    ch.basic_ack(99)
    e = expect_channel_close(lambda: ch.queue_declare(q, passive=True), 406)
    # RabbitMQ: "PRECONDITION_FAILED - unknown delivery tag 99"
    assert e.reply_text == "PRECONDITION_FAILED - unknown delivery tag 99"


def test_double_ack_406(ch, q):
    ch.basic_publish("", q, b"x")
    m, _, _ = wait_get(ch, q, auto_ack=False)
    ch.basic_ack(m.delivery_tag)
    ch.basic_ack(m.delivery_tag)
    e = expect_channel_close(lambda: ch.queue_declare(q, passive=True), 406)
    assert e.reply_text == "PRECONDITION_FAILED - unknown delivery tag %d" % m.delivery_tag


def test_ack_after_auto_ack_get_406(ch, q):
    ch.basic_publish("", q, b"x")
    m, _, _ = wait_get(ch, q, auto_ack=True)
    ch.basic_ack(m.delivery_tag)
    expect_channel_close(lambda: ch.queue_declare(q, passive=True), 406)


def test_reject_after_ack_406(ch, q):
    ch.basic_publish("", q, b"x")
    m, _, _ = wait_get(ch, q, auto_ack=False)
    ch.basic_ack(m.delivery_tag)
    ch.basic_reject(m.delivery_tag)
    expect_channel_close(lambda: ch.queue_declare(q, passive=True), 406)


def test_qos_prefetch_limits_unacked(conn, ch, q):
    ch.confirm_delivery()
    for i in range(10):
        ch.basic_publish("", q, b"%d" % i)
    cch = conn.channel()
    cch.basic_qos(prefetch_count=3)
    got = []
    cch.basic_consume(q, lambda c, m, p, b: got.append(m), auto_ack=False)
    pump_until(conn, lambda: len(got) >= 3)
    pump(conn, 0.3)
    assert len(got) == 3
    cch.basic_ack(got[0].delivery_tag)
    pump_until(conn, lambda: len(got) >= 4)
    pump(conn, 0.2)
    assert len(got) == 4
    cch.basic_ack(got[3].delivery_tag, multiple=True)
    pump_until(conn, lambda: len(got) >= 7)
    pump(conn, 0.2)
    assert len(got) == 7
    # NOTE: with global=false RabbitMQ applies a later basic.qos only to consumers created
    # after it, so the limit of the existing consumer is not changed here.


def test_qos_applies_to_consumers_created_after(conn, ch, q):
    ch.confirm_delivery()
    for i in range(6):
        ch.basic_publish("", q, b"%d" % i)
    cch = conn.channel()
    got = []
    cch.basic_qos(prefetch_count=1)
    cch.basic_consume(q, lambda c, m, p, b: got.append(m), auto_ack=False)
    cch.basic_qos(prefetch_count=0)  # does not lift the first consumer's limit
    pump_until(conn, lambda: len(got) >= 1)
    pump(conn, 0.3)
    assert len(got) == 1
    cch.basic_consume(q, lambda c, m, p, b: got.append(m), auto_ack=False)  # unlimited
    pump_until(conn, lambda: len(got) >= 6)


def test_qos_global_shared_by_channel_consumers(conn, ch):
    q1, q2 = uid("q"), uid("q")
    for qq in (q1, q2):
        ch.queue_declare(qq, exclusive=True)
    ch.confirm_delivery()
    for _ in range(5):
        ch.basic_publish("", q1, b"a")
        ch.basic_publish("", q2, b"b")
    cch = conn.channel()
    cch.basic_qos(prefetch_count=3, global_qos=True)  # RabbitMQ: global = per channel
    got = []
    cch.basic_consume(q1, lambda c, m, p, b: got.append(m), auto_ack=False)
    cch.basic_consume(q2, lambda c, m, p, b: got.append(m), auto_ack=False)
    pump_until(conn, lambda: len(got) >= 3)
    pump(conn, 0.3)
    assert len(got) == 3


def test_qos_prefetch_does_not_limit_no_ack(conn, ch, q):
    ch.confirm_delivery()
    for i in range(10):
        ch.basic_publish("", q, b"%d" % i)
    cch = conn.channel()
    cch.basic_qos(prefetch_count=1)
    got = []
    cch.basic_consume(q, lambda c, m, p, b: got.append(b), auto_ack=True)
    pump_until(conn, lambda: len(got) >= 10)
    assert got == [b"%d" % i for i in range(10)]


def test_qos_prefetch_size_not_implemented(ch):
    # RabbitMQ: connection.close 540 "NOT_IMPLEMENTED - prefetch_size!=0 (1000)"
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as ei:
        ch.basic_qos(prefetch_size=1000)
    assert ei.value.reply_code == 540


def test_basic_recover_requeue(ch, q):
    ch.confirm_delivery()
    for i in range(3):
        ch.basic_publish("", q, b"%d" % i)
    for _ in range(3):
        ch.basic_get(q)
    ch.basic_recover(requeue=True)
    got = [wait_get(ch, q) for _ in range(3)]
    assert [b for _, _, b in got] == [b"0", b"1", b"2"]
    assert all(m.redelivered for m, _, _ in got)


def test_basic_recover_without_requeue_not_implemented(ch, q):
    # RabbitMQ: connection.close 540 "NOT_IMPLEMENTED - requeue=false"
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as ei:
        ch.basic_recover(requeue=False)
    assert ei.value.reply_code == 540


def test_server_generated_consumer_tag(ch, q):
    tag = ch.basic_consume(q, lambda *a: None)
    assert tag.startswith("ctag")  # pika generates its own tags...
    with raw_connect(ch.connection._impl.params and _broker_of(ch)) as c:  # ...so check raw
        c.open_channel(1)
        c.send_method(commands.Queue.Declare(queue="", exclusive=True), 1)
        _, ok = c.expect(commands.Queue.DeclareOk)
        c.send_method(commands.Basic.Consume(queue=ok.queue, consumer_tag=""), 1)
        _, cok = c.expect(commands.Basic.ConsumeOk)
        assert cok.consumer_tag.startswith("amq.ctag-")
        c.send_method(commands.Basic.Consume(queue=ok.queue, consumer_tag=""), 1)
        _, cok2 = c.expect(commands.Basic.ConsumeOk)
        assert cok2.consumer_tag.startswith("amq.ctag-") and cok2.consumer_tag != cok.consumer_tag


def _broker_of(ch):
    p = ch.connection._impl.params
    return type(
        "B",
        (),
        dict(
            host=p.host,
            port=p.port,
            user=p.credentials.username,
            password=p.credentials.password,
            vhost=p.virtual_host,
        ),
    )


def test_duplicate_consumer_tag_530(broker):
    with raw_connect(broker) as c:
        c.open_channel(1)
        c.send_method(commands.Queue.Declare(queue="", exclusive=True), 1)
        _, ok = c.expect(commands.Queue.DeclareOk)
        c.send_method(commands.Basic.Consume(queue=ok.queue, consumer_tag="dup"), 1)
        c.expect(commands.Basic.ConsumeOk)
        c.send_method(commands.Basic.Consume(queue=ok.queue, consumer_tag="dup"), 1)
        close = c.expect_connection_close(timeout=10)
        # RabbitMQ: connection.close 530 "NOT_ALLOWED - attempt to reuse consumer tag 'dup'"
        assert close.reply_code == 530
        assert close.reply_text == "NOT_ALLOWED - attempt to reuse consumer tag 'dup'"
        assert (close.class_id, close.method_id) == (60, 20)


def test_same_consumer_tag_on_different_channels_ok(conn, q):
    conn.channel().basic_consume(q, lambda *a: None, consumer_tag="same")
    conn.channel().basic_consume(q, lambda *a: None, consumer_tag="same")


def test_empty_queue_name_uses_last_declared(broker):
    with raw_connect(broker) as c:
        c.open_channel(1)
        c.send_method(commands.Basic.Consume(queue=""), 1)
        _, f = c.recv_method()
        # nothing declared yet on this channel: 404 "NOT_FOUND - no previously declared queue"
        assert isinstance(f, commands.Channel.Close) and f.reply_code == 404
        c.send_method(commands.Channel.CloseOk(), 1)
        c.open_channel(2)
        c.send_method(commands.Queue.Declare(queue="", exclusive=True), 2)
        c.expect(commands.Queue.DeclareOk)
        c.send_method(commands.Basic.Get(queue=""), 2)
        c.expect(commands.Basic.GetEmpty)


def test_exclusive_consumer(conn, q):
    conn.channel().basic_consume(q, lambda *a: None, exclusive=True)
    other = conn.channel()
    e = expect_channel_close(lambda: other.basic_consume(q, lambda *a: None), 403)
    # RabbitMQ: "ACCESS_REFUSED - queue 'q' in vhost '/' in exclusive use"
    assert e.reply_text.startswith("ACCESS_REFUSED")


def test_second_exclusive_consumer_refused(conn, q):
    conn.channel().basic_consume(q, lambda *a: None, exclusive=True)
    other = conn.channel()
    e = expect_channel_close(lambda: other.basic_consume(q, lambda *a: None, exclusive=True), 403)
    assert e.reply_text.endswith("in exclusive use")


def test_exclusive_consume_when_consumers_exist(conn, q):
    conn.channel().basic_consume(q, lambda *a: None)
    other = conn.channel()
    expect_channel_close(lambda: other.basic_consume(q, lambda *a: None, exclusive=True), 403)


def test_no_ack_consume_removes_messages(conn, ch, q):
    ch.confirm_delivery()
    for i in range(3):
        ch.basic_publish("", q, b"%d" % i)
    got = collect(ch, q, 3, auto_ack=True)
    assert [b for _, _, b in got] == [b"0", b"1", b"2"]
    pump(conn, 0.1)
    assert ch.queue_declare(q, passive=True).method.message_count == 0
    conn.channel().close()
    assert ch.basic_get(q)[0] is None


def test_cancel_stops_deliveries(conn, ch, q):
    got = []
    tag = ch.basic_consume(q, lambda c, m, p, b: got.append(b), auto_ack=True)
    ch.basic_publish("", q, b"1")
    pump_until(conn, lambda: got)
    ch.basic_cancel(tag)
    ch.basic_publish("", q, b"2")
    pump(conn, 0.3)
    assert got == [b"1"]
    assert wait_get(ch, q)[2] == b"2"


def test_cancel_keeps_unacked_until_ack(conn, ch, q):
    got = []
    tag = ch.basic_consume(q, lambda c, m, p, b: got.append(m), auto_ack=False)
    ch.basic_publish("", q, b"1")
    pump_until(conn, lambda: got)
    ch.basic_cancel(tag)
    assert ch.basic_get(q)[0] is None  # still unacked, not requeued by cancel
    ch.basic_ack(got[0].delivery_tag)  # ack after cancel is valid
    ch.queue_declare(q, passive=True)


def test_consumer_cancel_notification_on_queue_delete(conn):
    ch = conn.channel()
    q = uid("q")
    ch.queue_declare(q)
    cancelled = []
    ch.add_on_cancel_callback(lambda frame: cancelled.append(frame.method))
    tag = ch.basic_consume(q, lambda *a: None)
    conn.channel().queue_delete(q)
    pump_until(conn, lambda: cancelled)
    assert isinstance(cancelled[0], pika.spec.Basic.Cancel)
    assert cancelled[0].consumer_tag == tag
    assert ch.is_open


def test_unacked_requeued_on_channel_close(conn, ch, q):
    ch.confirm_delivery()
    for i in range(4):
        ch.basic_publish("", q, b"%d" % i)
    cch = conn.channel()
    got = []
    cch.basic_consume(q, lambda c, m, p, b: got.append((m, b)), auto_ack=False)
    pump_until(conn, lambda: len(got) == 4)
    cch.basic_ack(got[1][0].delivery_tag)
    cch.close()
    again = [wait_get(ch, q) for _ in range(3)]
    assert [b for _, _, b in again] == [b"0", b"2", b"3"]
    assert all(m.redelivered for m, _, _ in again)
    assert ch.basic_get(q)[0] is None


def test_unacked_requeued_on_connection_close(broker, ch, q):
    ch.confirm_delivery()
    ch.basic_publish("", q, b"x")
    with connection(broker) as other:
        # exclusive queue belongs to `ch`'s connection, so use a shared queue here
        oq = uid("q")
        och = other.channel()
        och.queue_declare(oq, auto_delete=False)
        och.confirm_delivery()
        och.basic_publish("", oq, b"y")
        m, _, _ = wait_get(och, oq, auto_ack=False)
        assert not m.redelivered
    try:
        m, _, body = wait_get(ch, oq)
        assert body == b"y" and m.redelivered
    finally:
        ch.queue_delete(oq)


@pytest.mark.parametrize("size", [1, 4087, 4088, 4089, 1024 * 1024])
def test_large_bodies_split_across_frames(broker, size):
    body = bytes((i * 7 + 3) % 256 for i in range(size))
    qn = uid("big")
    with connection(broker, frame_max=4096) as conn:
        assert conn._impl.params.frame_max == 4096
        ch = conn.channel()
        ch.queue_declare(qn, exclusive=True)
        ch.confirm_delivery()
        ch.basic_publish("", qn, body)  # pika splits into <= 4088-byte body frames
        ((m, props, got),) = collect(ch, qn, 1, auto_ack=True)
        assert got == body


def test_server_splits_bodies_by_negotiated_frame_max(broker):
    size = 100_000
    body = bytes(i % 251 for i in range(size))
    qn = uid("big")
    with connection(broker) as conn:
        ch = conn.channel()
        ch.queue_declare(qn)
        try:
            ch.confirm_delivery()
            ch.basic_publish("", qn, body)
            with raw_connect(broker, frame_max=4096) as c:
                c.open_channel(1)
                c.send_method(commands.Basic.Get(queue=qn, no_ack=True), 1)
                c.expect(commands.Basic.GetOk)
                _, hdr = c.recv_frame()
                assert hdr.body_size == size
                received = b""
                frames = 0
                while len(received) < size:
                    raw = c.recv_bytes(7)
                    ftype, chn, fsize = struct.unpack(">BHI", raw)
                    assert ftype == 3 and chn == 1
                    assert fsize <= 4096 - 8
                    payload = c.recv_bytes(fsize + 1)
                    assert payload[-1:] == b"\xce"
                    received += payload[:-1]
                    frames += 1
                assert received == body
                assert frames >= size // (4096 - 8)
        finally:
            ch.queue_delete(qn)


def test_publish_body_in_many_small_frames(broker):
    # a client may split bodies into frames smaller than frame_max
    qn = uid("q")
    with raw_connect(broker) as c:
        c.open_channel(1)
        c.send_method(commands.Queue.Declare(queue=qn, exclusive=True), 1)
        c.expect(commands.Queue.DeclareOk)
        body = b"0123456789" * 10
        c.send_method(commands.Basic.Publish(exchange="", routing_key=qn), 1)
        c.send_frame(header.ContentHeader(0, len(body), commands.Basic.Properties()), 1)
        for i in range(0, len(body), 7):
            c.send_frame(ContentBody(body[i : i + 7]), 1)
        deadline = time.monotonic() + 10
        while True:
            c.send_method(commands.Basic.Get(queue=qn, no_ack=True), 1)
            _, f = c.recv_method()
            if isinstance(f, commands.Basic.GetOk):
                break
            assert time.monotonic() < deadline
            time.sleep(0.05)
        _, hdr = c.recv_frame()
        assert hdr.body_size == len(body)
        got = b""
        while len(got) < len(body):
            _, part = c.recv_frame()
            got += part.value
        assert got == body


def test_round_robin_between_consumers(conn, q):
    ch = conn.channel()
    a, b = [], []
    ca, cb = conn.channel(), conn.channel()
    ca.basic_consume(q, lambda c, m, p, body: a.append(body), auto_ack=True)
    cb.basic_consume(q, lambda c, m, p, body: b.append(body), auto_ack=True)
    for i in range(10):
        ch.basic_publish("", q, b"%d" % i)
    pump_until(conn, lambda: len(a) + len(b) == 10)
    assert len(a) == 5 and len(b) == 5
    assert sorted(a + b, key=int) == [b"%d" % i for i in range(10)]


def test_publish_order_preserved(conn, ch, q):
    n = 500
    for i in range(n):
        ch.basic_publish("", q, b"%d" % i)
    got = collect(ch, q, n, auto_ack=True, timeout=20)
    assert [int(b) for _, _, b in got] == list(range(n))
