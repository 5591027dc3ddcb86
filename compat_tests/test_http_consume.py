"""Pull consumption end to end: visibility timeouts, long polling, delays, retention, rewind,
dead-lettering and receipt handles."""

from __future__ import annotations

import threading
import time

import pytest
from cmq.cmq_exception import CMQServerException
from cmq.queue import Message, QueueMeta

from compat_tests.cmq_helpers import dead_lettering_queues, error, ok, uid, wait_until


def make_queue(account, **attrs):
    q = account.get_queue(uid())
    m = QueueMeta()
    for key, value in attrs.items():
        setattr(m, key, value)
    q.create(m)
    return q


def code_of(call, *args) -> int:
    with pytest.raises(CMQServerException) as info:
        call(*args)
    return info.value.code


@pytest.fixture
def account(cmq_broker):
    return cmq_broker.account()


def test_visibility_timeout_and_stale_handles(account):
    q = make_queue(account, visibilityTimeout=1)
    q.send_message(Message("once"))
    first = q.receive_message(0)
    assert code_of(q.receive_message, 0) == 7000  # hidden while in flight
    second = q.receive_message(3)  # back after the 1 s timeout
    assert (second.msgBody, second.dequeueCount) == ("once", 2)
    assert second.msgId == first.msgId and second.receiptHandle != first.receiptHandle
    assert code_of(q.delete_message, first.receiptHandle) == 4430  # only the latest is valid
    q.delete_message(second.receiptHandle)


def test_expired_handle_is_refused(account):
    q = make_queue(account, visibilityTimeout=1)
    q.send_message(Message("slow consumer"))
    got = q.receive_message(0)
    # Past the deadline (and nobody received it again) the handle is expired.
    time.sleep(1.2)
    assert code_of(q.delete_message, got.receiptHandle) == 4430
    assert q.receive_message(0).dequeueCount == 2


def test_long_poll_returns_as_soon_as_a_message_arrives(account, cmq_broker):
    q = make_queue(account)
    result: dict = {}

    def receive():
        start = time.monotonic()
        result["msg"] = q.receive_message(20)
        result["returned"] = time.monotonic()
        result["started"] = start

    waiter = threading.Thread(target=receive)
    waiter.start()
    time.sleep(0.3)  # let the receive start waiting
    sender = cmq_broker.account().get_queue(q.queue_name)  # an SDK Account is one connection
    sent_at = time.monotonic()
    sender.send_message(Message("wake up"))
    waiter.join(10)
    assert result["msg"].msgBody == "wake up"
    assert result["returned"] - sent_at < 1.0  # generous; the benchmark measures ~ms


def test_long_poll_times_out_with_no_message(account):
    q = make_queue(account, pollingWaitSeconds=1)
    start = time.monotonic()
    assert code_of(q.receive_message) == 7000  # the queue's default wait
    assert 0.9 <= time.monotonic() - start < 5


def test_delayed_messages(account):
    q = make_queue(account)
    q.send_message(Message("later"), delayTime=1)
    assert code_of(q.receive_message, 0) == 7000
    assert q.get_attributes().delayMsgNum == 1
    start = time.monotonic()
    got = q.receive_message(5)  # woken when the delay runs out
    assert got.msgBody == "later" and 0.5 <= time.monotonic() - start < 3
    assert q.get_attributes().delayMsgNum == 0


def test_retention_expiry_removes_messages(account):
    q = make_queue(account, msgRetentionSeconds=1)
    q.batch_send_message([Message("old"), Message("older")])
    assert q.get_attributes().activeMsgNum == 2
    assert wait_until(lambda: q.get_attributes().activeMsgNum == 0, timeout=5)
    assert code_of(q.receive_message, 0) == 7000


def test_rewind_makes_deleted_messages_consumable_again(account):
    q = make_queue(account, rewindSeconds=600)
    start = int(time.time()) - 1
    q.batch_send_message([Message("one"), Message("two")])
    got = q.batch_receive_message(2, 0)
    q.batch_delete_message([m.receiptHandle for m in got])
    attrs = q.get_attributes()
    assert (attrs.activeMsgNum, attrs.rewindmsgNum) == (0, 2)
    q.rewindQueue(start)
    again = q.batch_receive_message(2, 0)
    assert sorted(m.msgBody for m in again) == ["one", "two"]
    assert code_of(q.rewindQueue, start - 3600) == 4000  # outside the window


def test_rewound_messages_start_over_under_max_receive_count(cmq_broker, account):
    client = cmq_broker.client()
    name, dlq = dead_lettering_queues(client, 2, rewindSeconds=600)
    q, dead = account.get_queue(name), account.get_queue(dlq)
    start = int(time.time()) - 1
    q.send_message(Message("again"))
    first = q.receive_message(0)
    q.delete_message(first.receiptHandle)
    q.rewindQueue(start)
    second = q.receive_message(0)
    q.delete_message(second.receiptHandle)
    q.rewindQueue(start)
    # Each rewind starts the count over: received again, not moved to the dead-letter queue.
    third = q.receive_message(0)
    assert (third.msgBody, third.dequeueCount) == ("again", 1)
    assert code_of(dead.receive_message, 0) == 7000
    client.close()


def test_max_receive_count_without_a_dead_letter_queue_loses_nothing(cmq_broker, account):
    client = cmq_broker.client()
    name = uid()
    ok(client.call("CreateQueue", queueName=name, visibilityTimeout=1, maxReceiveCount=1))
    client.close()
    q = account.get_queue(name)
    q.send_message(Message("stays"))
    assert q.receive_message(0).dequeueCount == 1
    # Past the limit with nowhere to go, it is received again rather than dropped.
    again = q.receive_message(5)
    assert (again.msgBody, again.dequeueCount) == ("stays", 2)


def test_rewind_needs_a_window(account):
    q = make_queue(account)
    assert code_of(q.rewindQueue, int(time.time())) == 4000


def test_dead_letter_after_max_receive_count(cmq_broker, account):
    client = cmq_broker.client()
    name, dlq = dead_lettering_queues(client, 2, visibilityTimeout=1)
    q, dead = account.get_queue(name), account.get_queue(dlq)
    sent = q.send_message(Message("poison"))
    assert q.receive_message(0).dequeueCount == 1
    assert q.receive_message(3).dequeueCount == 2
    # Visible again, but the next receive finds the limit reached and dead-letters it.
    assert wait_until(lambda: q.get_attributes().activeMsgNum == 1, timeout=5)
    assert code_of(q.receive_message, 0) == 7000
    got = dead.receive_message(0)
    assert got.msgBody == "poison" and got.msgId == sent.msgId
    error(client.call("ReceiveMessage", queueName=name, pollingWaitSeconds=0), 7000)
    client.close()
