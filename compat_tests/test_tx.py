"""Transactions: tx.select / tx.commit / tx.rollback."""

from __future__ import annotations

import pytest

from .helpers import connection, expect_channel_close, get_all, pump, uid, wait_get


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


def count(conn, q):
    return conn.channel().queue_declare(q, passive=True).method.message_count


def test_publish_invisible_until_commit(conn, ch, q):
    ch.tx_select()
    for i in range(3):
        ch.basic_publish("", q, b"%d" % i)
    pump(conn, 0.2)
    assert count(conn, q) == 0
    ch.tx_commit()
    assert count(conn, q) == 3
    assert [b for _, _, b in get_all(conn.channel(), q)] == [b"0", b"1", b"2"]


def test_rollback_discards_publishes(conn, ch, q):
    ch.tx_select()
    ch.basic_publish("", q, b"discarded")
    ch.tx_rollback()
    ch.basic_publish("", q, b"kept")
    ch.tx_commit()
    assert [b for _, _, b in get_all(conn.channel(), q)] == [b"kept"]


def test_channel_stays_transactional(conn, ch, q):
    ch.tx_select()
    for round_ in range(3):
        ch.basic_publish("", q, b"%d" % round_)
        ch.tx_commit()
    ch.basic_publish("", q, b"uncommitted")
    pump(conn, 0.1)
    assert count(conn, q) == 3


def test_close_without_commit_discards(broker, conn, q):
    ch = conn.channel()
    ch.tx_select()
    ch.basic_publish("", q, b"lost")
    ch.close()
    assert count(conn, q) == 0


def test_acks_in_tx_apply_on_commit(conn, ch, q):
    pub = conn.channel()
    pub.confirm_delivery()
    for i in range(3):
        pub.basic_publish("", q, b"%d" % i)
    ch.tx_select()
    tags = [wait_get(ch, q, auto_ack=False)[0].delivery_tag for _ in range(3)]
    ch.basic_ack(tags[1], multiple=True)
    ch.tx_commit()
    ch.basic_recover(requeue=True)  # only the un-acked one comes back
    m, _, body = wait_get(ch, q, auto_ack=False)
    assert body == b"2" and m.redelivered
    ch.basic_ack(m.delivery_tag)
    ch.tx_commit()


def test_acks_rolled_back_stay_unacked(conn, ch, q):
    pub = conn.channel()
    pub.confirm_delivery()
    pub.basic_publish("", q, b"a")
    ch.tx_select()
    m, _, _ = wait_get(ch, q, auto_ack=False)
    ch.basic_ack(m.delivery_tag)
    ch.tx_rollback()
    # the ack was discarded, the message is still unacked (not requeued by rollback)
    assert count(conn, q) == 0
    ch.basic_recover(requeue=True)
    m2, _, body = wait_get(ch, q, auto_ack=False)
    assert body == b"a" and m2.redelivered


def test_reject_in_tx_applies_on_commit(conn, ch, q):
    pub = conn.channel()
    pub.confirm_delivery()
    pub.basic_publish("", q, b"r")
    ch.tx_select()
    m, _, _ = wait_get(ch, q, auto_ack=False)
    ch.basic_reject(m.delivery_tag, requeue=True)
    pump(conn, 0.1)
    assert count(conn, q) == 0
    ch.tx_commit()
    m, _, body = wait_get(conn.channel(), q)
    assert body == b"r" and m.redelivered


def test_commit_without_select_406(ch):
    e = expect_channel_close(ch.tx_commit, 406)
    assert e.reply_text == "PRECONDITION_FAILED - channel is not transactional"


def test_rollback_without_select_406(ch):
    expect_channel_close(ch.tx_rollback, 406)


def test_tx_select_on_confirm_channel_406(ch):
    ch.confirm_delivery()
    e = expect_channel_close(ch.tx_select, 406)
    assert e.reply_text == "PRECONDITION_FAILED - cannot switch from confirm to tx mode"


def test_tx_mandatory_return_on_commit(conn, ch):
    returned = []
    ch.add_on_return_callback(lambda c, m, p, b: returned.append(m))
    ch.tx_select()
    ch.basic_publish("amq.direct", uid("nobody"), b"x", mandatory=True)
    ch.tx_commit()
    deadline_pump = 0
    while not returned and deadline_pump < 100:
        conn.process_data_events(time_limit=0.05)
        deadline_pump += 1
    assert returned and returned[0].reply_code == 312
