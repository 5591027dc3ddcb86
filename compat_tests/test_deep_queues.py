"""Queues deeper than what a queue holds in memory (core/cold.py: 16,384 messages per priority
level, 128 while no consumer serves it): the rest wait cold, their bodies only in the log.
Everything a queue does must work the same on them, across kill -9: order, each message once,
TTL and dead-lettering, delays, visibility timeouts, rewind; and the CLI shows how many wait
on disk."""

from __future__ import annotations

import json
import time

import pytest

from .cmq_helpers import CmqBroker, ok
from .helpers import connection, uid
from .test_durability import publish_confirmed

pytestmark = pytest.mark.own_broker

#: well past what a queue keeps in memory, so most of it waits cold
DEEP = 6000
BODY = bytes(range(256)) * 2


def queue_row(broker, name: str) -> dict:
    rows = json.loads(broker.cli("queues", "list", "--format", "json").stdout)
    (row,) = [r for r in rows if r["name"] == name]
    return row


def consume(broker, queue: str, count: int, timeout: float = 60) -> list[tuple[str, bytes, bool]]:
    """Take `count` messages with a pika consumer (acked one by one as they come): their
    (message id, body, redelivered), in delivery order."""
    got: list[tuple[str, bytes, bool]] = []
    with connection(broker) as conn:
        ch = conn.channel()
        ch.basic_qos(prefetch_count=200)

        def on_message(channel, method, props, body):
            if len(got) < count:
                got.append((props.message_id, body, method.redelivered))
                channel.basic_ack(method.delivery_tag)

        ch.basic_consume(queue, on_message)
        deadline = time.monotonic() + timeout
        while len(got) < count and time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.1)
        ch.close()
    return got


def depth(broker, queue: str) -> int:
    with connection(broker) as conn:
        return conn.channel().queue_declare(queue, passive=True).method.message_count


def wait_depth(broker, queue: str, expected: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while (now := depth(broker, queue)) != expected:
        assert time.monotonic() < deadline, f"{queue} holds {now}, not {expected}"
        time.sleep(0.1)


@pytest.mark.timeout(180)
def test_a_deep_queue_delivers_every_message_once_in_order_across_kill9(fresh_broker):
    b = fresh_broker
    q = uid("deep")
    with connection(b) as conn:
        conn.channel().queue_declare(q, durable=True)
    ids = [f"m-{i:05d}" for i in range(DEEP)]
    assert len(publish_confirmed(b, q, ids, BODY)) == DEEP
    row = queue_row(b, q)
    assert row["messages_ready"] == DEEP
    assert row["messages_paged_out"] >= DEEP - 128 > 0  # most of it waits on disk only
    assert row["messages_ram"] + row["messages_paged_out"] == DEEP

    # A consumer takes a part (through where the queue starts reading back from disk).
    first = consume(b, q, 2500)
    assert [m for m, _, _ in first] == ids[:2500]
    assert all(body == BODY for _, body, _ in first)
    b.kill9()
    b.start()
    assert depth(b, q) == DEEP - 2500
    rest = consume(b, q, DEEP - 2500)
    assert [m for m, _, _ in rest] == ids[2500:]
    assert all(body == BODY for _, body, _ in rest)
    # Only what the first consumer had in flight (its prefetch) went back, and came first.
    flags = [redelivered for _, _, redelivered in rest]
    assert not any(flags[200:])
    assert depth(b, q) == 0


@pytest.mark.timeout(180)
def test_ttl_expires_a_deep_queue_into_its_dead_letter_queue_in_order(fresh_broker):
    b = fresh_broker
    q, dlq = uid("deep-ttl"), uid("deep-dlq")
    with connection(b) as conn:
        ch = conn.channel()
        ch.queue_declare(dlq, durable=True)
        args = {
            "x-message-ttl": 1500,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": dlq,
        }
        ch.queue_declare(q, durable=True, arguments=args)
    ids = [f"t-{i:05d}" for i in range(DEEP)]
    assert len(publish_confirmed(b, q, ids, BODY)) == DEEP
    assert queue_row(b, q)["messages_paged_out"] > 0
    b.kill9()  # what expires does so after a restart too
    b.start()
    wait_depth(b, dlq, DEEP)
    assert depth(b, q) == 0
    got = consume(b, dlq, DEEP)
    assert [m for m, _, _ in got] == ids
    assert all(body == BODY for _, body, _ in got)


@pytest.mark.timeout(180)
def test_rewind_brings_back_a_deep_queue_after_kill9(fresh_broker):
    b = fresh_broker
    q = uid("deep-rewind")
    with connection(b) as conn:
        conn.channel().queue_declare(q, durable=True, arguments={"x-rewind-ms": 3_600_000})
    ids = [f"r-{i:05d}" for i in range(DEEP)]
    assert len(publish_confirmed(b, q, ids, BODY)) == DEEP
    assert [m for m, _, _ in consume(b, q, DEEP)] == ids
    assert depth(b, q) == 0
    b.kill9()
    b.start()
    b.cli("queues", "rewind", q, "--since", "0")
    again = consume(b, q, DEEP)
    assert [m for m, _, _ in again] == ids  # bodies kept for rewind are read back from disk
    assert all(body == BODY for _, body, _ in again)


@pytest.mark.timeout(180)
def test_delays_and_visibility_timeouts_on_a_deep_cmq_queue(fresh_broker):
    b = fresh_broker
    cmq = CmqBroker.attach(b)
    client = cmq.client()
    name = uid("deep-cmq")
    ok(client.call("CreateQueue", queueName=name, visibilityTimeout=1))
    bodies = [f"c-{i:05d}" for i in range(3200)]
    for start in range(0, len(bodies), 16):
        batch = {f"msgBody.{i}": body for i, body in enumerate(bodies[start : start + 16])}
        ok(client.call("BatchSendMessage", queueName=name, **batch))
    ok(client.call("SendMessage", queueName=name, msgBody="late", delaySeconds=1))
    shown = ok(client.call("GetQueueAttributes", queueName=name))
    assert (shown["activeMsgNum"], shown["delayMsgNum"]) == (3200, 1)

    # Taken and not deleted: they come back first once their visibility timeout runs out.
    taken = ok(client.call("BatchReceiveMessage", queueName=name, numOfMsg=16))["msgInfoList"]
    assert [m["msgBody"] for m in taken] == bodies[:16]
    b.kill9()
    b.start()
    client.close()
    client = cmq.client()
    got: list[dict] = []
    deadline = time.monotonic() + 90
    while len(got) < 3201:
        assert time.monotonic() < deadline, f"received {len(got)} of 3201"
        reply = client.call(
            "BatchReceiveMessage", queueName=name, numOfMsg=16, pollingWaitSeconds=2
        )
        if reply["code"] != 0:
            continue
        got += reply["msgInfoList"]
        handles = {
            f"receiptHandle.{i}": m["receiptHandle"] for i, m in enumerate(reply["msgInfoList"])
        }
        ok(client.call("BatchDeleteMessage", queueName=name, **handles))
    received = [m["msgBody"] for m in got]
    assert sorted(received) == sorted([*bodies, "late"])
    # The queue's own order: the 16 taken before the restart come back once their timeout
    # ran out; the rest in send order, with the delayed one where it became visible.
    rest = [body for body in received if body not in bodies[:16] and body != "late"]
    assert rest == bodies[16:]
    assert all(m["dequeueCount"] == 2 for m in got if m["msgBody"] in bodies[:16])
    shown = ok(client.call("GetQueueAttributes", queueName=name))
    assert (shown["activeMsgNum"], shown["inactiveMsgNum"], shown["delayMsgNum"]) == (0, 0, 0)
    client.close()
