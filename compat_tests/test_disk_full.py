"""A disk that fills while clients publish with confirms: what cannot be written is refused
(AMQP basic.nack, MQTT no PUBACK and the connection closed, CMQ an error code), the node goes
on serving consumers, and carries on by itself once the disk has room again.

The disk is a small tmpfs mounted for the test (root only: skipped elsewhere) and filled with
a file, with the disk alarm's limit at 0 so that nothing but the full disk stops publishers.
"""

from __future__ import annotations

import contextlib
import threading
import time

import pika
import pika.exceptions
import pytest
from cmq.cmq_exception import CMQServerException
from cmq.queue import Message as CmqMessage
from cmq.queue import QueueMeta
from cmq.subscription import SubscriptionMeta
from cmq.topic import Message as TopicMessage
from cmq.topic import TopicMeta

from .cluster import Cluster
from .cmq_helpers import CmqBroker, PushReceiver
from .conftest import BrokerProcess
from .disk import fill, small_disk
from .helpers import uid, wait_until
from .mqtt_helpers import Paho

pytestmark = [pytest.mark.own_broker, pytest.mark.timeout(120)]

BODY = b"|" + b"m" * 32768


def _name(body: bytes) -> bytes:
    return body.split(b"|")[0]


@pytest.fixture
def disk(tmp_path):
    with small_disk(tmp_path / "disk", "48m") as path:
        yield path


@pytest.fixture
def node_on(disk):
    """node_on(*flags): a broker whose data dir is on the small disk, alarm limit 0."""
    started: list[BrokerProcess] = []

    def start(*flags: str) -> BrokerProcess:
        b = BrokerProcess(
            disk / "data", ["--disk-free-limit", "0", *flags], log_path=disk.parent / "broker.log"
        )
        started.append(b)
        return b.start()

    yield start
    for b in started:
        b.stop()


def _pump_until(conn, pred, timeout=15.0):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        conn.process_data_events(time_limit=0.1)


def _until_closed(conn, timeout=15.0):
    deadline = time.monotonic() + timeout
    with contextlib.suppress(pika.exceptions.ConnectionClosedByBroker):
        while conn.is_open:
            assert time.monotonic() < deadline, "the broker did not close the connection"
            conn.process_data_events(time_limit=0.1)


def test_amqp_disk_full_nacks_serves_consumers_and_recovers(disk, node_on):
    b = node_on("--disk-reserve", "12000000")
    q = uid("q")
    pub = pika.BlockingConnection(b.params())
    events: list[str] = []
    pub.add_on_connection_blocked_callback(lambda c, m: events.append(m.method.reason))
    pub.add_on_connection_unblocked_callback(lambda c, m: events.append("unblocked"))
    ch = pub.channel()
    ch.queue_declare(q, durable=True)
    ch.confirm_delivery()
    persistent = pika.BasicProperties(delivery_mode=2)
    for i in range(10):
        ch.basic_publish("", q, b"before-%d" % i + BODY, persistent)

    filler = fill(disk)
    with pytest.raises(pika.exceptions.NackError):
        ch.basic_publish("", q, b"refused" + BODY, persistent)
    _pump_until(pub, lambda: events == ["low on disk"])

    # The disk is still full: consumers are served, acks taken, on the space set aside.
    cons = pika.BlockingConnection(b.params())
    cch = cons.channel()
    cch.basic_qos(prefetch_count=2)
    got: list[bytes] = []

    def on_message(c, method, props, body):
        got.append(_name(body))
        c.basic_ack(method.delivery_tag)
        if len(got) == 5:
            c.basic_cancel(method.consumer_tag)

    cch.basic_consume(q, on_message)
    _pump_until(cons, lambda: len(got) == 5)
    assert got == [b"before-%d" % i for i in range(5)]
    method, _, body = cch.basic_get(q)
    assert _name(body) == b"before-5"
    cch.basic_nack(method.delivery_tag, requeue=True)
    assert cch.queue_declare(q, passive=True).method.message_count == 5
    cons.close()

    # Room again: publishers are unblocked without a restart and confirmed again.
    filler.unlink()
    _pump_until(pub, lambda: events == ["low on disk", "unblocked"])
    for i in range(3):
        ch.basic_publish("", q, b"after-%d" % i, persistent)
    pub.close()

    b.restart(kill=True)  # the log as written, replayed: no snapshot at shutdown
    with pika.BlockingConnection(b.params()) as conn:
        rch = conn.channel()
        left = []
        while (m := rch.basic_get(q, auto_ack=True))[0] is not None:
            left.append(_name(m[2]))
    assert left == [b"before-%d" % i for i in range(5, 10)] + [b"after-%d" % i for i in range(3)]


def test_a_channel_closed_while_the_store_fails_gives_its_messages_back(disk, node_on):
    """Closing a channel releases its unacknowledged messages: while the store has failed the
    release waits for it (and the close-ok with it), and is not lost."""
    b = node_on()
    q = uid("q")
    pub = pika.BlockingConnection(b.params())
    ch = pub.channel()
    ch.queue_declare(q, durable=True)
    ch.confirm_delivery()
    ch.basic_publish("", q, b"held", pika.BasicProperties(delivery_mode=2))
    closed = threading.Event()

    def consume_then_close(got: threading.Event) -> None:
        with pika.BlockingConnection(b.params()) as conn:
            cch = conn.channel()
            method, _, _ = cch.basic_get(q)  # not acknowledged
            assert method is not None
            got.set()
            failed.wait(15)
            cch.close()
            closed.set()

    got, failed = threading.Event(), threading.Event()
    consumer = threading.Thread(target=consume_then_close, args=(got,), daemon=True)
    consumer.start()
    assert got.wait(15)
    filler = fill(disk)
    with pytest.raises(pika.exceptions.NackError):
        ch.basic_publish("", q, b"refused" + BODY, pika.BasicProperties(delivery_mode=2))
    failed.set()
    filler.unlink()
    assert closed.wait(15)
    consumer.join(15)

    def held_is_back() -> bool:
        method, _, body = ch.basic_get(q, auto_ack=True)
        return method is not None and body == b"held" and method.redelivered

    wait_until(held_is_back, timeout=15, interval=0.2, message="the message back in its queue")
    pub.close()


def test_node_restarted_on_a_full_disk_waits_for_room_or_starts_on_its_reserve(disk, node_on):
    """Opening LevelDB writes: on a full disk a node without space set aside waits for room
    instead of exiting, and one with space set aside gives it up to start."""
    b = node_on()
    q = uid("q")
    with pika.BlockingConnection(b.params()) as conn:
        ch = conn.channel()
        ch.queue_declare(q, durable=True)
        ch.confirm_delivery()
        for i in range(20):
            ch.basic_publish("", q, b"m-%d" % i + BODY, pika.BasicProperties(delivery_mode=2))
    filler = fill(disk)
    b.kill9()
    b.launch()
    wait_until(lambda: "waiting for room" in b.log_tail(), message="the node to wait for room")
    assert b.running
    filler.unlink()
    b.wait_ready()
    with pika.BlockingConnection(b.params()) as conn:
        assert conn.channel().queue_declare(q, passive=True).method.message_count == 20
    b.stop()

    b = node_on("--disk-reserve", "12000000")  # the same data dir: it sets the space aside
    filler = fill(disk)
    b.kill9()
    b.start()
    assert "gave up the space set aside to start" in b.log_tail()
    with pika.BlockingConnection(b.params()) as conn:
        ch = conn.channel()
        got = []
        while (m := ch.basic_get(q, auto_ack=True))[0] is not None:
            got.append(_name(m[2]))
    assert got == [b"m-%d" % i for i in range(20)]


def test_mqtt_qos1_unwritten_gets_no_puback_and_is_resent(disk, node_on):
    """The connection whose publish cannot be written is closed without its PUBACK; paho
    (clean session 0) reconnects and resends it, and it is acknowledged once stored."""
    b = node_on("--disk-reserve", "12000000")
    sub = Paho(b, client_id=uid("sub"), clean=False)
    sub.connect()
    assert sub.subscribe(("disk/t", 1)) == [1]
    sub.close()  # away: its session queue keeps what comes
    pub = Paho(b, client_id=uid("pub"), clean=False)
    pub.connect()
    for i in range(5):
        pub.publish("disk/t", b"before-%d" % i + BODY, qos=1)

    filler = fill(disk)
    info = pub.client.publish("disk/t", b"resent" + BODY, qos=1)
    pub.disconnected()
    assert not info.is_published()
    info.wait_for_publish(15)  # resent after paho reconnects, stored on the space set aside
    assert info.is_published()

    # Still full: the subscriber gets its backlog and its PUBACKs are stored.
    sub = Paho(b, client_id=sub.client_id, clean=False)
    assert sub.connect() == (0, True)
    got = [_name(sub.message().payload) for _ in range(6)]
    assert got == [b"before-%d" % i for i in range(5)] + [b"resent"]
    sub.close()

    filler.unlink()  # the alarm clears, and the publisher, paused meanwhile, is read again
    pub.publish("disk/t", b"after", qos=1)
    pub.close()

    b.restart(kill=True)
    sub = Paho(b, client_id=sub.client_id, clean=False)
    assert sub.connect() == (0, True)
    assert [m.payload for m in sub.messages_until(b"after")] == []
    sub.close()


def test_cmq_send_refused_with_a_code_then_served_once_there_is_room(disk, node_on):
    """Without space set aside: the SendMessage whose write fails answers 6000, later ones
    4420 while the disk alarm is on; reads of the committed state still answer, and sending
    works again once the disk has room."""
    cmq = CmqBroker.attach(node_on())
    q = cmq.account().get_queue(uid("q"))
    q.create(QueueMeta())
    q.batch_send_message([CmqMessage(f"before-{i}") for i in range(5)])

    filler = fill(disk)
    with pytest.raises(CMQServerException) as info:
        q.send_message(CmqMessage("refused|" + "m" * 60000))
    assert info.value.code == 6000  # the write failed
    with pytest.raises(CMQServerException) as info:
        q.send_message(CmqMessage("refused-again"))
    assert info.value.code == 4420 and "low on disk" in info.value.message  # the alarm is on
    assert q.get_attributes().activeMsgNum == 5

    filler.unlink()

    def sent() -> bool:
        try:
            q.send_message(CmqMessage("after"))
        except CMQServerException as exc:
            assert exc.code == 4420
            return False
        return True

    wait_until(sent, timeout=15, interval=0.2, message="SendMessage to work again")
    cmq.process.restart(kill=True)
    q = cmq.account().get_queue(q.queue_name)
    got = [m.msgBody for m in q.batch_receive_message(16, 0)]
    assert got == [f"before-{i}" for i in range(5)] + ["after"]


def test_cmq_push_subscription_goes_on_once_there_is_room(disk, node_on):
    """A pusher whose receive fails while the store does keeps trying, and pushes again once
    the store works."""
    cmq = CmqBroker.attach(node_on())
    account = cmq.account()
    topic = account.get_topic(uid("t"))
    topic.create(TopicMeta())
    with PushReceiver() as receiver:
        meta = SubscriptionMeta()
        meta.Endpoint, meta.Protocal = receiver.url("/push"), "http"
        meta.NotifyStrategy, meta.NotifyContentFormat = "BACKOFF_RETRY", "SIMPLIFIED"
        account.get_subscription(topic.topicName, uid("s")).create(meta)
        answer = receiver.hold("/push")
        topic.publish_message(TopicMessage("before"))
        assert receiver.get().body == b"before"  # its answer waits
        filler = fill(disk)
        with pytest.raises(CMQServerException):
            topic.publish_message(TopicMessage("refused|" + "m" * 60000))
        answer.set()  # the pusher goes on to its next receive, which the store refuses
        filler.unlink()

        def published() -> bool:
            try:
                topic.publish_message(TopicMessage("after"))
            except CMQServerException as exc:
                assert exc.code == 4420
                return False
            return True

        wait_until(published, timeout=15, interval=0.2, message="PublishMessage to work again")
        # ("before" may come again first: its deletion was refused with the store.)
        while (push := receiver.get(timeout=15)).body != b"after":
            assert push.body == b"before"


def test_cluster_member_whose_disk_fills_hands_its_clients_to_the_others(tmp_path):
    """In a cluster a member whose log write fails stops taking part, refuses its clients'
    publishes and closes their connections; the other members carry on without it."""
    base = tmp_path / "cluster"
    with small_disk(base / "node3", "48m") as disk3:
        cl = Cluster(base)
        try:
            cl.start()
            cl.leader()
            q = uid("q")
            persistent = pika.BasicProperties(delivery_mode=2)
            with pika.BlockingConnection(cl.nodes[3].params()) as conn:
                ch = conn.channel()
                ch.queue_declare(q, durable=True)
                ch.confirm_delivery()
                ch.basic_publish("", q, b"before", persistent)
                fill(disk3)
                with pytest.raises(
                    (pika.exceptions.NackError, pika.exceptions.ConnectionClosedByBroker)
                ):
                    for _ in range(50):
                        ch.basic_publish("", q, b"refused" + BODY, persistent)
                        time.sleep(0.05)
                _until_closed(conn)
            assert "node 3 leaves the cluster's work to the others" in cl.log(3)
            assert cl.nodes[3].running
            other = cl.leader(among=[1, 2])
            with pika.BlockingConnection(cl.nodes[other].params()) as conn:
                ch = conn.channel()
                ch.confirm_delivery()
                ch.basic_publish("", q, b"after", persistent)
                got = []
                while (m := ch.basic_get(q, auto_ack=True))[0] is not None:
                    got.append(m[2])
            assert got[0] == b"before" and got[-1] == b"after"
            assert all(body.startswith(b"refused") for body in got[1:-1])
        finally:
            cl.close()
