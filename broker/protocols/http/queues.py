"""CMQ queue actions on core queues: a CMQ queue is a durable queue of the key's vhost.

Messages are sent through the default exchange (so AMQP consumers of the queue get them too),
received with the core's pull receive (hidden for the visibility timeout, deleted by receipt
handle), and long polls wait for the queue's MessagesAvailable effect rather than polling.
"""

from __future__ import annotations

import asyncio
from typing import Any

from broker.core import commands as c
from broker.core.errors import BrokerError, ResourceLimit
from broker.core.model import Received
from broker.core.queue import MessageQueue
from broker.core.sequential import GROUP_HEADER, group_of
from broker.core.state import Vhost
from broker.protocols.http import attributes as a
from broker.protocols.http import errors, positions, topics
from broker.protocols.http.bodies import body_fields, sent_bodies
from broker.protocols.http.errors import CmqError
from broker.protocols.http.params import page
from broker.protocols.http.service import Action, CmqService, Request, message_id

MAX_BATCH = 16
#: longest delaySeconds: a delay beyond the longest retention would only lose the message
MAX_DELAY_S = a.RETENTION.high
#: longest startMsgId: an AMQP message-id is a short string (at most 255 bytes)
MAX_MESSAGE_ID = 255
#: the send parameter naming the message group of a sequential queue, stored as the
#: x-group-id header so AMQP consumers see it too
GROUP_ID = "msgGroupId"


def queue_id(qid: int) -> str:
    return f"queue-{qid}"


def _check_dead_letter(vh: Vhost, name: str, args: dict[str, Any]) -> None:
    target = args.get(a.DEAD_LETTER_KEY)
    if not target:
        return
    if target == name:
        raise errors.out_of_range("deadLetterQueueName", "a queue cannot dead-letter to itself")
    if target not in vh.queues:
        raise CmqError(errors.NOT_FOUND, f"dead-letter queue {target} does not exist")


async def create_queue(svc: CmqService, req: Request) -> dict[str, Any]:
    name = req.params.name("queueName")
    vh = svc.vhost(req.vhost)
    args = a.queue_arguments(req.params, True, svc.config.http_min_retention_seconds)
    a.check_rewind_window(args, {})
    if name in vh.queues:
        raise CmqError(errors.EXISTS, f"queue {name} already exists")
    if len(vh.queues) >= svc.config.http_max_queues:
        raise CmqError(errors.TOO_MANY, f"at most {svc.config.http_max_queues} queues")
    _check_dead_letter(vh, name, args)
    info = await svc.call(c.DeclareQueue(req.vhost, name, durable=True, arguments=args))
    return {"queueId": queue_id(info.qid)}


def dead_letter_sources(vh: Vhost, name: str) -> list[str]:
    """The queues that name `name` as their dead-letter queue."""
    return sorted(n for n, q in vh.queues.items() if n != name and a.dead_letter_queue(q) == name)


async def delete_queue(svc: CmqService, req: Request) -> dict[str, Any]:
    name = req.params.name("queueName")
    svc.queue(req.vhost, name)
    sources = dead_letter_sources(svc.vhost(req.vhost), name)
    if sources:
        raise CmqError(
            errors.INVALID,
            f"queue {name} is the dead-letter queue of {', '.join(sources)}: change or clear "
            "their deadLetterQueueName first",
            10110,
        )
    # Its queue subscriptions go with it (their bindings go with the queue anyway): a queue
    # of the same name created later is a new queue that nothing is subscribed to.
    commands: list[c.Command] = [c.DeleteQueue(req.vhost, name)]
    commands += [
        c.PutRecord(req.vhost, topics.subscriptions_group(topic), sub, None)
        for topic, sub in topics.queue_subscriptions(svc, req.vhost, name)
    ]
    await asyncio.gather(*[svc.call(command) for command in commands])
    return {}


async def list_queue(svc: CmqService, req: Request) -> dict[str, Any]:
    vh = svc.vhost(req.vhost)
    total, names = page(vh.queues, req.params)
    return {
        "totalCount": total,
        "queueList": [{"queueId": queue_id(vh.queues[n].qid), "queueName": n} for n in names],
    }


async def get_queue_attributes(svc: CmqService, req: Request) -> dict[str, Any]:
    name = req.params.name("queueName")
    return {"queueName": name, **a.describe(svc.queue(req.vhost, name), svc.vhost(req.vhost))}


async def set_queue_attributes(svc: CmqService, req: Request) -> dict[str, Any]:
    name = req.params.name("queueName")
    vh = svc.vhost(req.vhost)
    q = svc.queue(req.vhost, name)
    args = a.queue_arguments(req.params, False, svc.config.http_min_retention_seconds)
    a.check_rewind_window(args, q.arguments)
    _check_dead_letter(vh, name, args)
    if args:
        await svc.call(c.SetQueueArguments(req.vhost, name, args))
    return {}


async def rewind_queue(svc: CmqService, req: Request) -> dict[str, Any]:
    """From a time (startConsumeTime, CMQ's) or from a message (startMsgId, ours: the msgId
    SendMessage or ReceiveMessage returned); the queue's kept messages from there on are
    received again, in the order they were sent."""
    name = req.params.name("queueName")
    q = svc.queue(req.vhost, name)
    window = a.setting(q, a.REWIND)
    if not window:
        raise CmqError(errors.INVALID, f"queue {name} has rewindSeconds 0: nothing is kept", 10110)
    start_id = req.params.optional_text("startMsgId", max_length=MAX_MESSAGE_ID)
    if start_id is not None:
        if req.params.optional_text("startConsumeTime") is not None:
            raise errors.invalid_request("give startConsumeTime or startMsgId, not both")
        seq = positions.seq_of(q, start_id)
        if seq is None:
            raise errors.out_of_range(
                "startMsgId", f"no message {start_id} in queue {name} (nor kept for rewind)"
            )
        await svc.call(c.Rewind(req.vhost, name, 0, seq))
        return {}
    now_s = svc.now_ms() // 1000
    start = req.params.integer("startConsumeTime", 0, 1 << 40)
    if not now_s - window <= start <= now_s:
        raise errors.out_of_range("startConsumeTime", f"within the last {window} s")
    await svc.call(c.Rewind(req.vhost, name, start * 1000))
    return {}


# -- sending -------------------------------------------------------------------------------


def _check_body(q: MessageQueue, body: bytes) -> bytes:
    if not body:
        raise errors.out_of_range("msgBody", "at least 1 byte")
    limit = a.setting(q, a.MAX_SIZE)
    if len(body) > limit:
        raise CmqError(errors.TOO_LARGE, f"message is larger than maxMsgSize ({limit} bytes)")
    return body


def _group_headers(req: Request) -> dict[str, Any] | None:
    """The headers carrying the send's msgGroupId, if it names one."""
    group = req.params.optional_text(GROUP_ID, max_length=128)
    if group == "":
        raise errors.out_of_range(GROUP_ID, "1 to 128 characters")
    return None if group is None else {GROUP_HEADER: group}


async def _send(
    svc: CmqService, req: Request, q: MessageQueue, bodies: list[bytes], delay_s: int
) -> list[str]:
    """Publish `bodies` to `q` as one command: all of them, or none if they do not all fit."""
    svc.refuse_if_blocked()
    headers = _group_headers(req)
    ids = [svc.new_message_id() for _ in bodies]
    delay_ms = delay_s * 1000
    publishes = []
    for mid, body in zip(ids, bodies, strict=True):
        props: dict[str, Any] = {"delivery_mode": 2, "message_id": mid}
        if headers is not None:
            props["headers"] = dict(headers)
        publishes.append(c.Publish(req.vhost, "", q.name, props, body, delay_ms=delay_ms))
    for publish in publishes:
        svc.gateway.note_publisher(publish, req.publisher)
    traffic = svc.gateway.traffic["http"]
    if len(publishes) == 1:
        if (await svc.call(publishes[0])).rejected:
            raise _heap_full(q)
        traffic.received += 1
        return ids
    try:
        await svc.call(c.Batch(list(publishes), refuse_when_full=True))
    except ResourceLimit:
        raise _heap_full(q) from None
    traffic.received += len(ids)
    return ids


def _heap_full(q: MessageQueue) -> CmqError:
    return CmqError(errors.HEAP_FULL, f"queue {q.name} holds maxMsgHeapNum messages")


async def send_message(svc: CmqService, req: Request) -> dict[str, Any]:
    q = svc.queue(req.vhost, req.params.name("queueName"))
    (body,) = sent_bodies(req.params, [req.params.text("msgBody")])
    _check_body(q, body)
    delay = req.params.integer("delaySeconds", 0, MAX_DELAY_S, 0)
    return {"msgId": (await _send(svc, req, q, [body], delay))[0]}


async def batch_send_message(svc: CmqService, req: Request) -> dict[str, Any]:
    q = svc.queue(req.vhost, req.params.name("queueName"))
    texts = req.params.array("msgBody", MAX_BATCH, required=True)
    bodies = [_check_body(q, body) for body in sent_bodies(req.params, texts)]
    delay = req.params.integer("delaySeconds", 0, MAX_DELAY_S, 0)
    ids = await _send(svc, req, q, bodies, delay)
    return {"msgList": [{"msgId": mid} for mid in ids]}


# -- receiving -----------------------------------------------------------------------------


def _fields(received: Received) -> dict[str, Any]:
    msg = received.message
    fields = {
        **body_fields(msg.body),
        "msgId": message_id(received.qid, msg),
        "receiptHandle": received.handle,
        "enqueueTime": msg.enqueued_at // 1000,
        "firstDequeueTime": msg.first_delivered_at // 1000,
        "nextVisibleTime": msg.visible_at // 1000,
        "dequeueCount": msg.delivery_count,
    }
    group = group_of(msg)
    if group is not None:
        fields[GROUP_ID] = group
    return fields


async def _receive(svc: CmqService, req: Request, count: int) -> list[dict[str, Any]]:
    """Up to `count` messages, waiting up to pollingWaitSeconds for the first one."""
    name = req.params.name("queueName")
    q = svc.queue(req.vhost, name)
    wait = req.params.optional_integer("pollingWaitSeconds", 0, a.POLLING_WAIT.high)
    if wait is None:
        wait = a.setting(q, a.POLLING_WAIT)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        woken = svc.waiters.register(req.vhost, name)
        try:
            got: list[Received] = await svc.call(c.Receive(req.vhost, name, count))
            if got:
                svc.gateway.traffic["http"].delivered += len(got)
                return [_fields(r) for r in got]
            remaining = deadline - loop.time()
            if remaining <= 0 or svc.closing:
                raise CmqError(errors.NO_MESSAGE, "no message")
            await asyncio.wait((woken,), timeout=remaining)
        finally:
            svc.waiters.unregister(req.vhost, name, woken)


async def receive_message(svc: CmqService, req: Request) -> dict[str, Any]:
    return (await _receive(svc, req, 1))[0]


async def batch_receive_message(svc: CmqService, req: Request) -> dict[str, Any]:
    count = req.params.integer("numOfMsg", 1, MAX_BATCH)
    return {"msgInfoList": await _receive(svc, req, count)}


async def delete_message(svc: CmqService, req: Request) -> dict[str, Any]:
    name = req.params.name("queueName")
    svc.queue(req.vhost, name)
    await svc.call(c.DeleteByHandle(req.vhost, name, req.params.text("receiptHandle")))
    return {}


async def batch_delete_message(svc: CmqService, req: Request) -> dict[str, Any]:
    name = req.params.name("queueName")
    svc.queue(req.vhost, name)
    handles = req.params.array("receiptHandle", MAX_BATCH, required=True)
    futures = [svc.call(c.DeleteByHandle(req.vhost, name, h)) for h in handles]
    results = await asyncio.gather(*futures, return_exceptions=True)
    failed = []
    for handle, result in zip(handles, results, strict=True):
        if isinstance(result, BrokerError):
            err = errors.from_core(result)
            failed.append({"code": err.code, "message": err.message, "receiptHandle": handle})
        elif isinstance(result, BaseException):
            raise result
    if failed:
        raise CmqError(
            errors.BATCH_DELETE_FAILED,
            f"{len(failed)} of {len(handles)} messages were not deleted",
            errorList=failed,
        )
    return {}


ACTIONS: dict[str, Action] = {
    "CreateQueue": create_queue,
    "DeleteQueue": delete_queue,
    "ListQueue": list_queue,
    "GetQueueAttributes": get_queue_attributes,
    "SetQueueAttributes": set_queue_attributes,
    "RewindQueue": rewind_queue,
    "SendMessage": send_message,
    "BatchSendMessage": batch_send_message,
    "ReceiveMessage": receive_message,
    "BatchReceiveMessage": batch_receive_message,
    "DeleteMessage": delete_message,
    "BatchDeleteMessage": batch_delete_message,
}
