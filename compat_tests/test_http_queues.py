"""CMQ queue actions through Tencent's own SDK (qcloud-cmq-sdk-py3), unchanged."""

from __future__ import annotations

import time

import pytest
from cmq.cmq_exception import CMQServerException
from cmq.queue import Message, QueueMeta

from compat_tests.cmq_helpers import error, ok, uid


@pytest.fixture
def account(cmq_broker):
    return cmq_broker.account()


def meta(**attrs) -> QueueMeta:
    m = QueueMeta()
    for key, value in attrs.items():
        setattr(m, key, value)
    return m


def raises(code: int, call, *args):
    with pytest.raises(CMQServerException) as info:
        call(*args)
    assert info.value.code == code, info.value
    return info.value


def test_queue_lifecycle_and_attributes(account):
    name = uid()
    q = account.get_queue(name)
    before = int(time.time())
    q.create(
        meta(
            visibilityTimeout=45,
            maxMsgHeapNum=5000,
            maxMsgSize=2048,
            msgRetentionSeconds=3600,
            pollingWaitSeconds=3,
            rewindSeconds=600,
        )
    )
    got = q.get_attributes()
    assert (got.visibilityTimeout, got.maxMsgHeapNum, got.maxMsgSize) == (45, 5000, 2048)
    assert (got.msgRetentionSeconds, got.pollingWaitSeconds, got.rewindSeconds) == (3600, 3, 600)
    assert (got.activeMsgNum, got.inactiveMsgNum, got.delayMsgNum, got.rewindmsgNum) == (0, 0, 0, 0)
    assert before <= got.createTime <= time.time() and got.lastModifyTime == got.createTime

    q.set_attributes(meta(visibilityTimeout=5, maxMsgSize=4096, rewindSeconds=0))
    got = q.get_attributes()
    assert (got.visibilityTimeout, got.maxMsgSize, got.rewindSeconds) == (5, 4096, 0)
    # The SDK sends every attribute: unset ones go back to CMQ's defaults.
    assert got.msgRetentionSeconds == QueueMeta.DEFAULT_MSG_RETENTION_SECONDS
    assert got.maxMsgHeapNum == 5000  # not sent when -1, so unchanged

    assert raises(4460, q.create, meta()).message
    q.delete()
    raises(4440, q.get_attributes)
    raises(4440, q.delete)
    raises(4440, q.send_message, Message("x"))


def test_rewind_count_in_both_spellings(cmq_broker, account):
    """The documentation spells rewindmsgNum; Tencent's Java SDK reads rewindMsgNum."""
    q = account.get_queue(uid())
    q.create(meta(rewindSeconds=600))
    q.send_message(Message("kept"))
    q.delete_message(q.receive_message(0).receiptHandle)
    client = cmq_broker.client()
    attrs = ok(client.call("GetQueueAttributes", queueName=q.queue_name))
    assert (attrs["rewindmsgNum"], attrs["rewindMsgNum"]) == (1, 1)
    client.close()


def test_list_queue_search_and_paging(account):
    prefix = uid("list")
    names = sorted(f"{prefix}-{i}" for i in range(5))
    for name in names:
        account.get_queue(name).create(meta())
    total, listed, next_offset = account.list_queue(searchWord=prefix)
    assert total == 5 and [q["queueName"] for q in listed] == names and next_offset == ""
    assert all(q["queueId"].startswith("queue-") for q in listed)
    total, first, next_offset = account.list_queue(searchWord=prefix, limit=2)
    assert (total, len(first), next_offset) == (5, 2, 2)
    total, rest, next_offset = account.list_queue(searchWord=prefix, limit=3, offset=2)
    assert [q["queueName"] for q in first + rest] == names and next_offset == ""


def test_send_receive_delete(account):
    q = account.get_queue(uid())
    q.create(meta(visibilityTimeout=30))
    sent = q.send_message(Message("hello, 世界"))
    got = q.receive_message(polling_wait_seconds=0)
    now = time.time()
    assert (got.msgBody, got.msgId, got.dequeueCount) == ("hello, 世界", sent.msgId, 1)
    assert now - 5 <= got.enqueueTime <= now and got.firstDequeueTime >= got.enqueueTime
    assert got.nextVisibleTime - got.firstDequeueTime in (29, 30, 31)
    assert q.get_attributes().inactiveMsgNum == 1
    q.delete_message(got.receiptHandle)
    assert raises(7000, q.receive_message, 0).message == "no message"
    raises(4430, q.delete_message, got.receiptHandle)
    attrs = q.get_attributes()
    assert (attrs.activeMsgNum, attrs.inactiveMsgNum) == (0, 0)


def test_batch_send_receive_delete(account):
    q = account.get_queue(uid())
    q.create(meta())
    bodies = [f"m{i}" for i in range(16)]
    sent = q.batch_send_message([Message(b) for b in bodies])
    assert len({m.msgId for m in sent}) == 16
    got = q.batch_receive_message(16, 0)
    assert [m.msgBody for m in got] == bodies
    assert [m.msgId for m in got] == [m.msgId for m in sent]
    q.batch_delete_message([m.receiptHandle for m in got])
    raises(7000, q.batch_receive_message, 16, 0)


def test_batch_delete_partial_failure_lists_errors(account):
    q = account.get_queue(uid())
    q.create(meta())
    q.batch_send_message([Message("a"), Message("b")])
    a, b = q.batch_receive_message(2, 0)
    q.delete_message(a.receiptHandle)
    exc = raises(6010, q.batch_delete_message, [a.receiptHandle, b.receiptHandle])
    assert exc.data["errorList"] == [
        {
            "code": 4430,
            "message": exc.data["errorList"][0]["message"],
            "receiptHandle": a.receiptHandle,
        }
    ]
    raises(7000, q.receive_message, 0)  # b was deleted all the same


def test_counters(account, cmq_broker):
    q = account.get_queue(uid())
    q.create(meta())
    before = int(time.time())
    q.batch_send_message([Message("a"), Message("b"), Message("c")])
    q.send_message(Message("later"), delayTime=60)
    q.receive_message(0)
    attrs = q.get_attributes()
    assert (attrs.activeMsgNum, attrs.inactiveMsgNum, attrs.delayMsgNum) == (2, 1, 1)
    assert before <= attrs.minMsgTime <= time.time()


def test_message_size_and_heap_limits(account):
    q = account.get_queue(uid())
    q.create(meta(maxMsgSize=1024, maxMsgHeapNum=2))
    q.send_message(Message("x" * 1024))
    raises(4400, q.send_message, Message("x" * 1025))
    q.send_message(Message("second"))
    raises(4410, q.send_message, Message("third"))
    raises(4410, q.batch_send_message, [Message("a")])
    assert q.get_attributes().activeMsgNum == 2
    q.delete_message(q.receive_message(0).receiptHandle)
    q.send_message(Message("room again"))


def test_sha256_signatures_and_get_requests(account):
    account.set_sign("sha256")
    account.get_client().set_method("GET")
    q = account.get_queue(uid())
    q.create(meta())
    q.send_message(Message("via GET"))
    assert q.receive_message(0).msgBody == "via GET"


def test_upper_camel_names_and_dead_letter_attributes(cmq_broker):
    client = cmq_broker.client()
    dlq, name = uid("dlq"), uid()
    ok(client.call("CreateQueue", QueueName=dlq))
    ok(client.call("CreateQueue", QueueName=name, DeadLetterQueueName=dlq, MaxReceiveCount=3))
    attrs = ok(client.call("GetQueueAttributes", QueueName=name))
    assert (attrs["deadLetterQueueName"], attrs["maxReceiveCount"]) == (dlq, 3)
    ok(client.call("SetQueueAttributes", queueName=name, deadLetterQueueName=""))
    attrs = ok(client.call("GetQueueAttributes", queueName=name))
    assert "deadLetterQueueName" not in attrs and attrs["maxReceiveCount"] == 3
    error(client.call("SetQueueAttributes", queueName=name, deadLetterQueueName=uid()), 4440)
    error(client.call("SetQueueAttributes", queueName=name, deadLetterQueueName=name), 4000)
    client.close()
