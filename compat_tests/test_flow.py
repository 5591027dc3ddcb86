"""channel.flow and connection.blocked / unblocked."""

from __future__ import annotations

import time

import pika
import pika.exceptions
import pytest

from .helpers import connection, uid, wait_get
from .rawamqp import commands, raw_connect


def test_channel_flow_active_true(broker):
    with raw_connect(broker) as c:
        c.open_channel(1)
        c.send_method(commands.Channel.Flow(active=True), 1)
        _, ok = c.expect(commands.Channel.FlowOk)
        assert ok.active is True


def test_channel_flow_false_rabbitmq_not_implemented(broker):
    # RabbitMQ: connection.close 540 "NOT_IMPLEMENTED - active=false" (class 20, method 20).
    # Our broker implements channel.flow (see test_channel_flow_false_pauses_deliveries).
    if not broker.external:
        pytest.skip("RabbitMQ-specific behaviour")
    with raw_connect(broker) as c:
        c.open_channel(1)
        c.send_method(commands.Channel.Flow(active=False), 1)
        close = c.expect_connection_close(timeout=10)
        assert close.reply_code == 540


@pytest.mark.own_broker
def test_channel_flow_false_pauses_deliveries(broker):
    q = uid("q")
    with raw_connect(broker) as c:
        c.open_channel(1)
        c.send_method(commands.Queue.Declare(queue=q, exclusive=True), 1)
        c.expect(commands.Queue.DeclareOk)
        c.send_method(commands.Channel.Flow(active=False), 1)
        _, ok = c.expect(commands.Channel.FlowOk)
        assert ok.active is False
        c.send_method(commands.Basic.Consume(queue=q, consumer_tag="c1", no_ack=True), 1)
        c.expect(commands.Basic.ConsumeOk)
        with connection(broker) as pc:
            pch = pc.channel()
            pch.confirm_delivery()
            pch.basic_publish("", q, b"held")
        # no delivery while flow is off
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            try:
                _, f = c.recv_method(timeout=deadline - time.monotonic())
            except OSError:
                break
            assert not isinstance(f, commands.Basic.Deliver), "delivered while flow=false"
        c.send_method(commands.Channel.Flow(active=True), 1)
        got_flow_ok = got_deliver = False
        deadline = time.monotonic() + 10
        while not (got_flow_ok and got_deliver) and time.monotonic() < deadline:
            _, f = c.recv_method(timeout=deadline - time.monotonic())
            if isinstance(f, commands.Channel.FlowOk):
                assert f.active is True
                got_flow_ok = True
            elif isinstance(f, commands.Basic.Deliver):
                got_deliver = True
        assert got_flow_ok and got_deliver


def _blocked_client(broker, **params):
    events = []
    conn = pika.BlockingConnection(broker.params(**params))
    conn.add_on_connection_blocked_callback(lambda c, m: events.append(("blocked", m.method)))
    conn.add_on_connection_unblocked_callback(lambda c, m: events.append(("unblocked", m.method)))
    return conn, events


def _pump_until(conn, pred, timeout=15):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        conn.process_data_events(time_limit=0.1)


@pytest.mark.own_broker
def test_connection_blocked_on_disk_alarm(fresh_broker):
    b = fresh_broker
    conn, events = _blocked_client(b)
    try:
        ch = conn.channel()
        q = uid("q")
        ch.queue_declare(q, exclusive=True)
        b.cli("set-disk-free-limit", str(10**18))  # more than any disk: alarm
        ch.basic_publish("", q, b"while-blocked")  # publishing triggers/keeps the block
        _pump_until(conn, lambda: any(e[0] == "blocked" for e in events))
        blocked = [e for e in events if e[0] == "blocked"][0][1]
        assert isinstance(blocked, pika.spec.Connection.Blocked)
        assert blocked.reason  # RabbitMQ: "low on disk"
        b.cli("set-disk-free-limit", "1")
        _pump_until(conn, lambda: any(e[0] == "unblocked" for e in events))
        m, _, body = wait_get(ch, q, timeout=10)
        assert body == b"while-blocked"
    finally:
        if conn.is_open:
            conn.close()


@pytest.mark.own_broker
def test_connection_blocked_on_memory_alarm(fresh_broker):
    b = fresh_broker
    conn, events = _blocked_client(b)
    try:
        ch = conn.channel()
        q = uid("q")
        ch.queue_declare(q, exclusive=True)
        b.cli("set-memory-high-watermark", "1")
        ch.basic_publish("", q, b"x")
        _pump_until(conn, lambda: any(e[0] == "blocked" for e in events))
        b.cli("set-memory-high-watermark", str(10**15))
        _pump_until(conn, lambda: any(e[0] == "unblocked" for e in events))
        assert wait_get(ch, q, timeout=10)[2] == b"x"
    finally:
        if conn.is_open:
            conn.close()


@pytest.mark.own_broker
def test_blocked_does_not_stop_consumers(fresh_broker):
    b = fresh_broker
    q = uid("q")
    with connection(b) as pub:
        pch = pub.channel()
        pch.queue_declare(q)
        pch.confirm_delivery()
        for i in range(5):
            pch.basic_publish("", q, b"%d" % i)
    b.cli("set-disk-free-limit", str(10**18))
    try:
        with connection(b) as cons:
            cch = cons.channel()
            got = [wait_get(cch, q)[2] for _ in range(5)]
            assert got == [b"%d" % i for i in range(5)]
    finally:
        b.cli("set-disk-free-limit", "1")


@pytest.mark.own_broker
def test_client_without_blocked_capability_not_sent_blocked(fresh_broker):
    # connection.blocked is only sent to clients that advertise the capability
    b = fresh_broker
    from .rawamqp import ContentBody, RawClient, header

    c = RawClient(b.host, b.port)
    try:
        c.send(b"AMQP\x00\x00\x09\x01")
        c.expect(commands.Connection.Start)
        c.send_method(
            commands.Connection.StartOk(
                client_properties={}, mechanism="PLAIN", response="\0guest\0guest"
            )
        )
        _, tune = c.expect(commands.Connection.Tune)
        c.send_method(
            commands.Connection.TuneOk(
                channel_max=tune.channel_max, frame_max=tune.frame_max, heartbeat=0
            )
        )
        c.send_method(commands.Connection.Open(virtual_host="/"))
        c.expect(commands.Connection.OpenOk)
        c.open_channel(1)
        b.cli("set-disk-free-limit", str(10**18))
        c.send_method(commands.Basic.Publish(exchange="", routing_key="nowhere"), 1)
        c.send_frame(header.ContentHeader(0, 1, commands.Basic.Properties()), 1)
        c.send_frame(ContentBody(b"x"), 1)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            try:
                _, f = c.recv_method(timeout=deadline - time.monotonic())
            except OSError:
                break
            assert not isinstance(f, commands.Connection.Blocked)
    finally:
        c.close()
        b.cli("set-disk-free-limit", "1")


@pytest.mark.own_broker
def test_client_that_stops_reading_is_not_flooded(broker):
    """A no-ack consumer that does not read gets its deliveries paused, not buffered without end.

    The messages wait in the queue meanwhile, and all arrive once the client reads again.
    """
    q, count, body = uid("q"), 3000, b"x" * 8192
    with connection(broker) as pc:
        pch = pc.channel()
        pch.queue_declare(q)
        pch.confirm_delivery()
        for _ in range(count):
            pch.basic_publish("", q, body)
        with raw_connect(broker) as c:
            c.open_channel(1)
            c.send_method(commands.Basic.Consume(queue=q, consumer_tag="slow", no_ack=True), 1)
            # The client reads nothing now: the broker must stop short of emptying the queue.
            deadline, previous, settled = time.monotonic() + 20, -1, 0
            while time.monotonic() < deadline and settled < 3:
                ready = pch.queue_declare(q, passive=True).method.message_count
                settled = settled + 1 if ready == previous else 0
                previous = ready
                pc.process_data_events(time_limit=0.3)
            assert settled >= 3 and previous > 0, f"queue drained to {previous} unread"
            delivered = 0
            while delivered < count:
                _, frame = c.recv_method(timeout=20)
                if isinstance(frame, commands.Basic.Deliver):
                    delivered += 1
            assert delivered == count
        assert pch.queue_declare(q, passive=True).method.message_count == 0
        pch.queue_delete(q)


@pytest.mark.own_broker
def test_connection_opened_during_alarm_is_told_blocked(fresh_broker):
    """A connection opened while an alarm is on hears `connection.blocked` when it publishes,
    so pika's blocked_connection_timeout fires instead of the publisher hanging."""
    b = fresh_broker
    b.cli("set-disk-free-limit", str(10**18))
    conn = pika.BlockingConnection(b.params(blocked_connection_timeout=1.0))
    events = []
    conn.add_on_connection_blocked_callback(lambda c, m: events.append(m.method))
    try:
        ch = conn.channel()
        q = uid("q")
        ch.queue_declare(q, exclusive=True)
        deadline = time.monotonic() + 15
        with pytest.raises(pika.exceptions.ConnectionBlockedTimeout):
            while time.monotonic() < deadline:
                ch.basic_publish("", q, b"x")
                conn.process_data_events(time_limit=0.1)
        assert len(events) == 1 and isinstance(events[0], pika.spec.Connection.Blocked)
        assert events[0].reason == "low on disk"
    finally:
        if conn.is_open:
            conn.close()
        b.cli("set-disk-free-limit", "1")


@pytest.mark.own_broker
def test_cmq_send_refused_while_an_alarm_blocks_publishers(broker_factory, tmp_path):
    """HTTP publishers cannot be paused: SendMessage and PublishMessage answer 4420 while an
    alarm is on, and work again once it is off."""
    from cmq.cmq_exception import CMQServerException
    from cmq.queue import Message, QueueMeta
    from cmq.topic import Message as TopicMessage
    from cmq.topic import TopicMeta

    from .cmq_helpers import CmqBroker, write_config
    from .cmq_helpers import uid as cmq_uid

    cmq = CmqBroker.attach(broker_factory("--config", write_config(tmp_path)))
    account = cmq.account()
    q = account.get_queue(cmq_uid("q"))
    q.create(QueueMeta())
    topic = account.get_topic(cmq_uid("t"))
    topic.create(TopicMeta())
    cmq.process.cli("set-memory-high-watermark", "1")
    try:
        for send in (
            lambda: q.send_message(Message("while-blocked")),
            lambda: q.batch_send_message([Message("a"), Message("b")]),
            lambda: topic.publish_message(TopicMessage("while-blocked")),
        ):
            with pytest.raises(CMQServerException) as info:
                send()
            assert info.value.code == 4420
            assert "low on memory" in info.value.message
    finally:
        cmq.process.cli("set-memory-high-watermark", str(10**15))
    q.send_message(Message("after"))
    assert [m.msgBody for m in q.batch_receive_message(16, 0)] == ["after"]


@pytest.mark.own_broker
def test_mqtt_puback_withheld_while_an_alarm_blocks_publishers(fresh_broker):
    """An MQTT publisher is paused by an alarm: its socket is not read after a publish, so
    its PUBACKs wait until the alarm is off (MQTT 3.1.1 has no way to say why)."""
    from .mqtt_helpers import Paho

    b = fresh_broker
    pub = Paho(b)
    pub.connect()
    b.cli("set-disk-free-limit", str(10**18))
    try:
        first = pub.client.publish("alarm/t", b"first", qos=1)
        first.wait_for_publish(10)  # read: the connection had not published yet
        assert first.is_published()
        second = pub.client.publish("alarm/t", b"second", qos=1)
        time.sleep(0.5)  # proving an absence: the second is not read meanwhile
        assert not second.is_published()
    finally:
        b.cli("set-disk-free-limit", "1")
    second.wait_for_publish(10)
    assert second.is_published()
    pub.close()


@pytest.mark.own_broker
def test_a_blocked_publisher_is_not_closed_for_the_heartbeats_it_could_not_send(fresh_broker):
    b = fresh_broker
    conn, events = _blocked_client(b, heartbeat=1)
    try:
        ch = conn.channel()
        q = uid("q")
        ch.queue_declare(q, exclusive=True)
        b.cli("set-memory-high-watermark", "1")
        ch.basic_publish("", q, b"x")
        _pump_until(conn, lambda: any(e[0] == "blocked" for e in events))
        # The broker reads nothing from it now, heartbeats included, for 3 heartbeat intervals.
        with pytest.raises(AssertionError, match="timed out"):
            _pump_until(conn, lambda: "missed heartbeats" in b.log_tail(), timeout=3)
        b.cli("set-memory-high-watermark", str(10**15))
        _pump_until(conn, lambda: any(e[0] == "unblocked" for e in events))
        assert wait_get(ch, q, timeout=10)[2] == b"x"
    finally:
        if conn.is_open:
            conn.close()
