"""Rewind over the whole retention, by time and by position, through the CMQ API and the
`broker queues rewind` CLI, across a kill -9; and the backlog's memory/disk split as
`broker queues list` and the management API show it."""

from __future__ import annotations

import time

import pika
import pytest

from .cmq_helpers import CmqBroker, SignedClient, error, ok, uid
from .helpers import connection
from .management_helpers import Api, quote

pytestmark = pytest.mark.own_broker

FIFTEEN_DAYS = 1_296_000


def send_all(client: SignedClient, name: str, bodies: list[str]) -> list[str]:
    """Send `bodies` one by one (so they are enqueued in this order); their msgIds."""
    return [ok(client.call("SendMessage", queueName=name, msgBody=b))["msgId"] for b in bodies]


def receive(client: SignedClient, name: str, count: int) -> list[dict]:
    """Exactly `count` messages, in the order the queue gives them (long polls, no sleeps)."""
    got: list[dict] = []
    while len(got) < count:
        reply = client.call(
            "BatchReceiveMessage",
            queueName=name,
            numOfMsg=min(16, count - len(got)),
            pollingWaitSeconds=5,
        )
        assert reply["code"] == 0, (reply, got)
        got += reply["msgInfoList"]
    return got


def delete(client: SignedClient, name: str, received: list[dict]) -> None:
    for message in received:
        ok(client.call("DeleteMessage", queueName=name, receiptHandle=message["receiptHandle"]))


def nothing_left(client: SignedClient, name: str) -> None:
    error(client.call("ReceiveMessage", queueName=name, pollingWaitSeconds=0), 7000)


def attributes(client: SignedClient, name: str) -> dict:
    return ok(client.call("GetQueueAttributes", queueName=name))


def consume_all(client: SignedClient, name: str, bodies: list[str]) -> list[dict]:
    """Receive and delete every message of `name`, which must be `bodies` in order."""
    got = receive(client, name, len(bodies))
    assert [m["msgBody"] for m in got] == bodies
    delete(client, name, got)
    nothing_left(client, name)
    return got


@pytest.fixture
def cmq(fresh_broker):
    b = CmqBroker.attach(fresh_broker)
    client = b.client()
    yield b, client
    client.close()


def test_rewind_window_reaches_the_retention_and_no_further(cmq):
    _, client = cmq
    longest = uid()
    ok(
        client.call(
            "CreateQueue",
            queueName=longest,
            msgRetentionSeconds=FIFTEEN_DAYS,
            rewindSeconds=FIFTEEN_DAYS,
        )
    )
    shown = attributes(client, longest)
    assert (shown["rewindSeconds"], shown["msgRetentionSeconds"]) == (FIFTEEN_DAYS, FIFTEEN_DAYS)
    past_range = client.call(
        "CreateQueue", queueName=uid(), msgRetentionSeconds=FIFTEEN_DAYS, rewindSeconds=1_296_001
    )
    assert "rewindSeconds" in error(past_range, 4000, 10350)["message"]
    # Longer than the queue's retention (given, or the 4-day default): refused, saying why.
    longer = client.call(
        "CreateQueue", queueName=uid(), msgRetentionSeconds=3600, rewindSeconds=7200
    )
    assert "at most msgRetentionSeconds, 3600 s" in error(longer, 4000, 10350)["message"]
    by_default = client.call("CreateQueue", queueName=uid(), rewindSeconds=345_601)
    assert "345600 s" in error(by_default, 4000, 10350)["message"]
    # Changing one of the two is checked against the other as the queue has it.
    name = uid()
    ok(client.call("CreateQueue", queueName=name, msgRetentionSeconds=7200, rewindSeconds=3600))
    shorter = client.call("SetQueueAttributes", queueName=name, msgRetentionSeconds=1800)
    assert "at least rewindSeconds, 3600 s" in error(shorter, 4000, 10350)["message"]
    wider = client.call("SetQueueAttributes", queueName=name, rewindSeconds=7201)
    assert "at most msgRetentionSeconds, 7200 s" in error(wider, 4000, 10350)["message"]
    ok(client.call("SetQueueAttributes", queueName=name, msgRetentionSeconds=86_400))
    ok(client.call("SetQueueAttributes", queueName=name, rewindSeconds=86_400))
    shown = attributes(client, name)
    assert (shown["rewindSeconds"], shown["msgRetentionSeconds"]) == (86_400, 86_400)


def test_rewind_from_a_message_id_brings_it_back_with_what_followed(cmq):
    _, client = cmq
    name = uid()
    ok(client.call("CreateQueue", queueName=name, rewindSeconds=3600))
    bodies = ["one", "two", "three", "four"]
    ids = send_all(client, name, bodies)
    got = receive(client, name, 4)
    assert [m["msgId"] for m in got] == ids
    delete(client, name, list(reversed(got)))  # deleted in any order, rewound in sent order
    shown = attributes(client, name)
    assert (shown["activeMsgNum"], shown["inactiveMsgNum"], shown["rewindMsgNum"]) == (0, 0, 4)
    assert shown["minMsgTime"] == 0  # every message is deleted (kept for rewind only)

    ok(client.call("RewindQueue", queueName=name, startMsgId=ids[1]))
    shown = attributes(client, name)
    assert (shown["activeMsgNum"], shown["rewindMsgNum"], shown["rewindmsgNum"]) == (3, 1, 1)
    assert shown["minMsgTime"] == got[1]["enqueueTime"]
    again = consume_all(client, name, bodies[1:])
    assert [m["msgId"] for m in again] == ids[1:]
    assert all(m["dequeueCount"] == 1 for m in again)  # they start over

    # The first message is still kept: a rewind from it brings back all four.
    ok(client.call("RewindQueue", queueName=name, startMsgId=ids[0]))
    consume_all(client, name, bodies)


def test_rewind_from_a_message_refuses_what_it_cannot_do(cmq):
    _, client = cmq
    name, keeps_nothing = uid(), uid()
    ok(client.call("CreateQueue", queueName=name, rewindSeconds=3600))
    ok(client.call("CreateQueue", queueName=keeps_nothing))
    (mid,) = send_all(client, name, ["only"])
    unknown = client.call("RewindQueue", queueName=name, startMsgId="no-such-message")
    assert "startMsgId" in error(unknown, 4000, 10350)["message"]
    both = client.call(
        "RewindQueue", queueName=name, startMsgId=mid, startConsumeTime=int(time.time())
    )
    assert "not both" in error(both, 4000)["message"]
    error(client.call("RewindQueue", queueName=name), 4000, 10390)  # neither
    error(client.call("RewindQueue", queueName=keeps_nothing, startMsgId=mid), 4000, 10110)
    # A message still in the queue is a valid start: nothing was deleted, nothing comes back.
    ok(client.call("RewindQueue", queueName=name, startMsgId=mid))
    consume_all(client, name, ["only"])


def test_rewind_by_position_and_by_time_after_kill_9(cmq):
    b, client = cmq
    name = uid()
    ok(client.call("CreateQueue", queueName=name, rewindSeconds=3600))
    start = int(time.time()) - 1
    bodies = [f"m{i}" for i in range(6)]
    ids = send_all(client, name, bodies)
    consume_all(client, name, bodies)  # acknowledged (deleted), kept for rewind
    client.close()

    b.process.restart(kill=True)
    client = b.client()
    shown = attributes(client, name)
    assert (shown["activeMsgNum"], shown["rewindMsgNum"]) == (0, 6)
    ok(client.call("RewindQueue", queueName=name, startMsgId=ids[3]))
    assert [m["msgId"] for m in consume_all(client, name, bodies[3:])] == ids[3:]
    client.close()

    b.process.restart(kill=True)
    client = b.client()
    ok(client.call("RewindQueue", queueName=name, startConsumeTime=start))
    assert [m["msgId"] for m in consume_all(client, name, bodies)] == ids
    client.close()


def test_cli_rewinds_by_message_id_and_by_time_across_a_restart(fresh_broker):
    b = fresh_broker
    q = uid("rewind")
    ids = [f"order-{i}" for i in range(5)]
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 5))
    with connection(b) as conn:
        ch = conn.channel()
        ch.queue_declare(q, durable=True, arguments={"x-rewind-ms": 3_600_000})
        ch.confirm_delivery()
        for mid in ids:
            props = pika.BasicProperties(delivery_mode=2, message_id=mid)
            ch.basic_publish("", q, mid.encode(), props)
        assert drain(ch, q, len(ids)) == ids  # acked: kept for rewind
    b.restart(kill=True)

    out = b.cli("queues", "rewind", q, "--from-message", "order-2").stdout
    assert out.strip() == f"queue '{q}' rewound: 3 messages consumable again"
    with connection(b) as conn:
        assert drain(conn.channel(), q, 3) == ids[2:]
    out = b.cli("queues", "rewind", q, "--vhost", "/", "--since", since).stdout
    assert "rewound: 5 messages" in out
    with connection(b) as conn:
        assert drain(conn.channel(), q, 5) == ids

    missing = b.cli("queues", "rewind", q, "--from-message", "order-9", check=False)
    assert missing.returncode == 2 and "no message 'order-9'" in missing.stderr
    neither = b.cli("queues", "rewind", q, check=False)
    assert neither.returncode == 2 and "--since TIME or --from-message ID" in neither.stderr
    bad_time = b.cli("queues", "rewind", q, "--since", "yesterday", check=False)
    assert bad_time.returncode == 2 and "not a time" in bad_time.stderr
    plain = uid("plain")
    with connection(b) as conn:
        conn.channel().queue_declare(plain, durable=True)
    off = b.cli("queues", "rewind", plain, "--since", since, check=False)
    assert off.returncode == 2 and "keeps no messages for rewind" in off.stderr
    nowhere = b.cli("queues", "rewind", uid("none"), "--since", since, check=False)
    assert nowhere.returncode == 2 and "no queue" in nowhere.stderr


def drain(ch, q: str, count: int) -> list[str]:
    """`count` messages got and acked one by one: their bodies, in order."""
    bodies = []
    for _ in range(count):
        method, _, body = ch.basic_get(q)
        assert method is not None, bodies
        bodies.append(body.decode())
        ch.basic_ack(method.delivery_tag)
    assert ch.basic_get(q) == (None, None, None)
    return bodies


def test_queues_list_splits_the_backlog_between_memory_and_disk(fresh_broker):
    b = fresh_broker
    q = uid("backlog")
    with connection(b) as conn:
        ch = conn.channel()
        ch.queue_declare(q, durable=True)
        ch.confirm_delivery()
        for i in range(4):
            ch.basic_publish("", q, b"%d" % i, pika.BasicProperties(delivery_mode=2))
        held, _, _ = ch.basic_get(q)  # one delivered, not yet acknowledged
        header, *lines = b.cli("queues", "list", "--vhost", "/").stdout.splitlines()
        columns = header.split("\t")
        (row,) = [
            dict(zip(columns, line.split("\t"), strict=True))
            for line in lines
            if line.startswith(q)
        ]
        assert (row["messages"], row["messages_ram"], row["messages_paged_out"]) == ("4", "4", "0")
        shown = Api(b).get(f"/api/queues/{quote('/')}/{quote(q)}")
        split = {k: shown[k] for k in shown if k.endswith("_ram") or k == "messages_paged_out"}
        assert split == {
            "messages_ram": 4,
            "messages_ready_ram": 3,
            "messages_unacknowledged_ram": 1,
            "messages_paged_out": 0,
        }
        ch.basic_ack(held.delivery_tag)
