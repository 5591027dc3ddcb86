"""Sequential queues with real clients: pika consumers (prefetch > 1) and CMQ HTTP receivers
on one queue, concurrently, see each group's messages in one order, one at a time, with
redeliveries first, also across a kill -9 of the broker.

Every worker records what it got before settling it, and settles only after recording, so
the records of one group are in the order the broker handed its messages out. The check: each
delivery is the group's oldest message not yet settled (a redelivery repeats it, a next one
follows only its settlement), and every message is settled once.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pika
import pika.exceptions
import pytest

from compat_tests.cmq_helpers import CmqBroker, ok, uid, write_config
from compat_tests.helpers import connection, wait_until

pytestmark = pytest.mark.own_broker

GROUPS = [f"g{i}" for i in range(6)] + [None]  # None: messages that name no group
PER_GROUP = 12
DEADLINE = 90.0


@pytest.fixture
def cmq(broker_factory, tmp_path):
    return CmqBroker.attach(broker_factory("--config", write_config(tmp_path)))


class Recorder:
    """Deliveries and settlements of every group, checked as they happen."""

    def __init__(self, per_group: int) -> None:
        self.per_group = per_group
        self.lock = threading.Lock()
        #: group -> (index, protocol, redelivered, monotonic time) of each delivery
        self.deliveries: dict[str | None, list[tuple[int, str, bool, float]]] = {
            g: [] for g in GROUPS
        }
        self.settled: dict[str | None, list[int]] = {g: [] for g in GROUPS}
        self.errors: list[str] = []
        self.by: dict[str, int] = {"amqp": 0, "http": 0}

    def delivered(self, group: str | None, index: int, via: str, redelivered: bool) -> None:
        with self.lock:
            expected = len(self.settled[group])
            if index != expected:
                self.errors.append(
                    f"group {group}: got {index} via {via} while {expected} is not settled"
                )
            self.deliveries[group].append((index, via, redelivered, time.monotonic()))
            self.by[via] += 1

    def settle(self, group: str | None, index: int) -> None:
        with self.lock:
            self.settled[group].append(index)

    def done(self) -> bool:
        with self.lock:
            return bool(self.errors) or all(len(s) == self.per_group for s in self.settled.values())


def parse(body: bytes) -> tuple[str | None, int]:
    group, index = body.decode().split(":")
    return (None if group == "-" else group), int(index)


def body_of(group: str | None, index: int) -> str:
    return f"{group or '-'}:{index}"


def publish_all(cmq: CmqBroker, queue: str) -> None:
    """Even groups (and the ungrouped messages) through AMQP with the x-group-id header, odd
    ones through CMQ SendMessage with msgGroupId; each publish is confirmed before the next."""
    conn = pika.BlockingConnection(cmq.process.params())
    ch = conn.channel()
    ch.confirm_delivery()
    client = cmq.client()
    try:
        for index in range(PER_GROUP):
            for n, group in enumerate(GROUPS):
                body = body_of(group, index)
                if group is None or n % 2 == 0:
                    headers = {} if group is None else {"x-group-id": group}
                    props = pika.BasicProperties(delivery_mode=2, headers=headers)
                    ch.basic_publish("", queue, body.encode(), props, mandatory=True)
                else:
                    ok(client.call("SendMessage", queueName=queue, msgBody=body, msgGroupId=group))
    finally:
        client.close()
        conn.close()


class AmqpWorker(threading.Thread):
    """A pika consumer: requeues each message whose index ends in 7 the first time it sees
    it, acks the rest."""

    def __init__(self, cmq: CmqBroker, queue: str, rec: Recorder, stop: threading.Event):
        super().__init__(daemon=True)
        self.cmq, self.queue, self.rec, self.stop = cmq, queue, rec, stop
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            conn = pika.BlockingConnection(self.cmq.process.params())
            ch = conn.channel()
            ch.basic_qos(prefetch_count=2)
            ch.basic_consume(self.queue, self.on_message)
            while not self.stop.is_set():
                conn.process_data_events(time_limit=0.05)
            conn.close()
        except BaseException as exc:  # reported by the test
            self.failure = exc

    def on_message(self, ch: Any, method: Any, props: Any, body: bytes) -> None:
        group, index = parse(body)
        header = (props.headers or {}).get("x-group-id")
        if header != group:
            self.rec.errors.append(f"{body!r} came with x-group-id {header!r}")
        self.rec.delivered(group, index, "amqp", method.redelivered)
        if index % 10 == 7 and not method.redelivered:
            ch.basic_nack(method.delivery_tag, requeue=True)
            return
        self.rec.settle(group, index)
        ch.basic_ack(method.delivery_tag)


class HttpWorker(threading.Thread):
    """A CMQ receiver (BatchReceiveMessage, long polls): leaves each message whose index ends
    in 3 to its visibility timeout the first time it sees it, deletes the rest."""

    def __init__(self, cmq: CmqBroker, queue: str, rec: Recorder, stop: threading.Event):
        super().__init__(daemon=True)
        self.client, self.queue, self.rec, self.stop = cmq.client(), queue, rec, stop
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                reply = self.client.call(
                    "BatchReceiveMessage", queueName=self.queue, numOfMsg=3, pollingWaitSeconds=1
                )
                if reply["code"] == 7000:  # no message
                    continue
                for msg in ok(reply)["msgInfoList"]:
                    self.handle(msg)
        except BaseException as exc:  # reported by the test
            self.failure = exc
        finally:
            self.client.close()

    def handle(self, msg: dict[str, Any]) -> None:
        group, index = parse(msg["msgBody"].encode())
        if msg.get("msgGroupId") != group:
            self.rec.errors.append(f"{msg['msgBody']} came with msgGroupId {msg.get('msgGroupId')}")
        self.rec.delivered(group, index, "http", msg["dequeueCount"] > 1)
        if index % 10 == 3 and msg["dequeueCount"] == 1:
            return
        self.rec.settle(group, index)
        ok(
            self.client.call(
                "DeleteMessage", queueName=self.queue, receiptHandle=msg["receiptHandle"]
            )
        )


def run_workers(cmq: CmqBroker, queue: str, rec: Recorder) -> None:
    """Two pika consumers and two HTTP receivers until every message is settled."""
    stop = threading.Event()
    workers: list[AmqpWorker | HttpWorker] = [
        AmqpWorker(cmq, queue, rec, stop),
        AmqpWorker(cmq, queue, rec, stop),
        HttpWorker(cmq, queue, rec, stop),
        HttpWorker(cmq, queue, rec, stop),
    ]
    for worker in workers:
        worker.start()

    def finished() -> bool:
        return rec.done() or any(w.failure is not None for w in workers)

    try:
        wait_until(finished, timeout=DEADLINE, message="every message settled")
    finally:
        stop.set()
        for worker in workers:
            worker.join(10)
    assert [w.failure for w in workers] == [None] * len(workers)


def check_order(rec: Recorder, in_flight_at_kill: frozenset[str | None] = frozenset()) -> None:
    """Every group settled in order; a message came twice only when a worker gave it back
    (index ending in 3 or 7) or it was in flight when the broker was killed (index 0)."""
    assert rec.errors == []
    for group in GROUPS:
        assert rec.settled[group] == list(range(PER_GROUP)), group
        indexes = [d[0] for d in rec.deliveries[group]]
        repeated = [a for a, b in zip(indexes, indexes[1:], strict=False) if a == b]
        given_back = (3, 7, 0) if group in in_flight_at_kill else (3, 7)
        assert all(i % 10 in given_back for i in repeated), (group, indexes)


def create_sequential(cmq: CmqBroker) -> str:
    name = uid("seq")
    ok(cmq.client().call("CreateQueue", queueName=name, sequential=1, visibilityTimeout=1))
    attrs = ok(cmq.client().call("GetQueueAttributes", queueName=name))
    assert attrs["sequential"] == 1
    return name


def test_amqp_consumers_and_cmq_receivers_get_one_order_per_group(cmq):
    queue = create_sequential(cmq)
    publish_all(cmq, queue)
    rec = Recorder(PER_GROUP)
    run_workers(cmq, queue, rec)
    check_order(rec)
    assert rec.by["amqp"] and rec.by["http"], rec.by  # both protocols took part
    attrs = ok(cmq.client().call("GetQueueAttributes", queueName=queue))
    assert (attrs["activeMsgNum"], attrs["inactiveMsgNum"]) == (0, 0)


def test_order_and_in_flight_messages_survive_kill9(cmq):
    """Messages in flight when the broker dies (pulled, and pushed but not acked) hold their
    groups after the restart and come back first: the pulled ones when their visibility
    timeout ends, the pushed ones at once."""
    queue = create_sequential(cmq)
    ok(cmq.client().call("SetQueueAttributes", queueName=queue, visibilityTimeout=3))
    publish_all(cmq, queue)
    rec = Recorder(PER_GROUP)
    client = cmq.client()
    pulled_from = time.monotonic()
    pulled = ok(client.call("BatchReceiveMessage", queueName=queue, numOfMsg=2))["msgInfoList"]
    client.close()
    pulled_groups = {parse(m["msgBody"].encode())[0] for m in pulled}
    for msg in pulled:
        group, index = parse(msg["msgBody"].encode())
        rec.delivered(group, index, "http", False)
    pushed: list[bytes] = []
    with connection(cmq.process) as conn:
        ch = conn.channel()
        ch.basic_qos(prefetch_count=3)
        ch.basic_consume(queue, lambda _ch, _m, _p, body: pushed.append(body))
        wait_until(lambda: conn.process_data_events(0.05) or len(pushed) == 3, message="pushes")
        for body in pushed:
            group, index = parse(body)
            rec.delivered(group, index, "amqp", False)

        cmq.process.restart(kill=True)

    held = frozenset(pulled_groups | {parse(body)[0] for body in pushed})
    assert len(held) == 5  # five groups in flight, each with its first message
    run_workers(cmq, queue, rec)
    check_order(rec, held)
    for group in held:
        first, again = rec.deliveries[group][:2]
        assert first[0] == again[0] == 0 and again[2], (group, rec.deliveries[group])
        if group in pulled_groups:
            # invisible, and its group waiting, until its visibility timeout ran out
            assert again[3] >= pulled_from + 3 - 0.05, again[3] - pulled_from


def test_sequential_argument_and_bad_parameters(cmq):
    """An AMQP declare with x-sequential makes what CMQ shows as sequential=1; bad values of
    either are refused with the parameter named."""
    client = cmq.client()
    declared = uid("seq")
    with connection(cmq.process) as conn:
        conn.channel().queue_declare(declared, durable=True, arguments={"x-sequential": True})
    assert ok(client.call("GetQueueAttributes", queueName=declared))["sequential"] == 1
    ok(client.call("SetQueueAttributes", queueName=declared, sequential=0))
    assert ok(client.call("GetQueueAttributes", queueName=declared))["sequential"] == 0
    name = uid("seq")
    for bad in ("2", "-1", "yes"):
        reply = client.call("CreateQueue", queueName=name, sequential=bad)
        assert reply["code"] == 4000 and "sequential" in reply["message"], reply
    queue = create_sequential(cmq)
    for bad in ("", "g" * 129):
        reply = client.call("SendMessage", queueName=queue, msgBody="m", msgGroupId=bad)
        assert reply["code"] == 4000 and "msgGroupId" in reply["message"], reply
    with connection(cmq.process) as conn:
        ch = conn.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
            ch.queue_declare(uid("seq"), arguments={"x-sequential": "yes"})
        assert refused.value.reply_code == 406 and "x-sequential" in refused.value.reply_text
        ch = conn.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
            ch.queue_declare(uid("seq"), arguments={"x-sequential": True, "x-max-priority": 3})
        assert refused.value.reply_code == 406 and "priorities" in refused.value.reply_text
    client.close()
