"""CMQ queue attributes <-> core queue arguments, and the counters GetQueueAttributes shows.

A CMQ queue is an ordinary core queue: its attributes live in its arguments, so AMQP clients
see the same limits. Ranges follow the CMQ 2.0 documentation, widened where it costs nothing
(maxMsgHeapNum from 1, maxMsgSize up to 1 MiB as TDMQ-CMQ allows). rewindSeconds follows the
product documentation rather than the SDKs' 43 200 s: any window up to the queue's
msgRetentionSeconds (so up to 15 days), since a message past its retention is gone anyway.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from broker.core.model import RETAINED
from broker.core.queue import MessageQueue
from broker.core.state import Vhost
from broker.protocols.http import errors
from broker.protocols.http.params import Params

DEAD_LETTER_EXCHANGE = "x-dead-letter-exchange"
DEAD_LETTER_KEY = "x-dead-letter-routing-key"
MAX_RECEIVE_COUNT = "x-max-receive-count"
#: CMQ `sequential` (0 or 1) is the boolean argument x-sequential (core/sequential.py)
SEQUENTIAL = "sequential"
SEQUENTIAL_ARGUMENT = "x-sequential"


@dataclass(frozen=True, slots=True)
class Attribute:
    """One CMQ attribute stored as queue argument `argument` in units of `scale`."""

    name: str
    argument: str
    scale: int
    low: int
    high: int
    default: int | None


HEAP = Attribute("maxMsgHeapNum", "x-max-length", 1, 1, 1_000_000_000, 10_000_000)
POLLING_WAIT = Attribute("pollingWaitSeconds", "x-polling-wait-ms", 1000, 0, 30, 0)
VISIBILITY = Attribute("visibilityTimeout", "x-visibility-timeout", 1000, 1, 43_200, 30)
MAX_SIZE = Attribute("maxMsgSize", "x-max-message-size", 1, 1024, 1_048_576, 65_536)
RETENTION = Attribute("msgRetentionSeconds", "x-message-ttl", 1000, 60, 1_296_000, 345_600)
REWIND = Attribute("rewindSeconds", "x-rewind-ms", 1000, 0, RETENTION.high, 0)
#: 0 turns the limit off
RECEIVE_COUNT = Attribute("maxReceiveCount", MAX_RECEIVE_COUNT, 1, 0, 1000, None)
QUEUE_ATTRIBUTES = (HEAP, POLLING_WAIT, VISIBILITY, MAX_SIZE, RETENTION, REWIND)


def queue_arguments(params: Params, creating: bool, min_retention_s: int) -> dict[str, Any]:
    """Arguments for CreateQueue (every attribute, defaults filled in) or SetQueueAttributes
    (only those given; None removes an argument)."""
    args: dict[str, Any] = {"x-overflow": "reject-publish"} if creating else {}
    for attr in (*QUEUE_ATTRIBUTES, RECEIVE_COUNT):
        low = min_retention_s if attr is RETENTION else attr.low
        value = params.optional_integer(attr.name, low, attr.high)
        if value is None and creating:
            value = attr.default
        if value is not None:
            args[attr.argument] = value * attr.scale
    if args.get(MAX_RECEIVE_COUNT) == 0:
        args[MAX_RECEIVE_COUNT] = None
    sequential = params.optional_integer(SEQUENTIAL, 0, 1)
    if sequential is not None:
        args[SEQUENTIAL_ARGUMENT] = True if sequential else None
    dead_letter = params.optional_text("deadLetterQueueName", max_length=64)
    if dead_letter:
        args[DEAD_LETTER_EXCHANGE] = ""
        args[DEAD_LETTER_KEY] = dead_letter
    elif dead_letter == "":
        args[DEAD_LETTER_EXCHANGE] = args[DEAD_LETTER_KEY] = None
    # Removing what a new queue does not have is a no-op; CreateQueue leaves no Nones.
    return {k: v for k, v in args.items() if v is not None} if creating else args


def check_rewind_window(args: dict[str, Any], current: dict[str, Any]) -> None:
    """Refuse a rewind window longer than the retention: CMQ documents rewindSeconds as at
    most the message lifecycle. `args` are the new arguments (None removes one), `current`
    the queue's (empty at CreateQueue); a queue without a TTL (made over AMQP) retains
    messages for as long as they wait, so only the attribute's own range applies to it."""
    merged = {**current, **args}
    rewind, retention = merged.get(REWIND.argument), merged.get(RETENTION.argument)
    if not isinstance(rewind, int) or not isinstance(retention, int) or rewind <= retention:
        return
    if REWIND.argument in args:
        raise errors.out_of_range(
            REWIND.name, f"at most msgRetentionSeconds, {retention // RETENTION.scale} s"
        )
    raise errors.out_of_range(RETENTION.name, f"at least rewindSeconds, {rewind // REWIND.scale} s")


def setting(q: MessageQueue, attr: Attribute) -> int:
    """The attribute's value in CMQ units (its default for queues made elsewhere)."""
    value = q.arguments.get(attr.argument)
    if isinstance(value, int) and not isinstance(value, bool):
        return value // attr.scale
    return attr.default or 0


def dead_letter_queue(q: MessageQueue) -> str | None:
    """The queue's dead-letter queue, when it dead-letters through the default exchange."""
    if q.settings.dead_letter_exchange != "":
        return None
    return q.settings.dead_letter_routing_key


def describe(q: MessageQueue, vh: Vhost) -> dict[str, Any]:
    """GetQueueAttributes' fields. Counts are exact here; CMQ calls them approximate.

    A dead-letter queue deleted outside CMQ (CMQ refuses to) is still named, flagged by
    deadLetterQueueExists false: until it exists again, messages over the receive limit stay.
    """
    inflight = q.hidden_count - q.delayed_count + len(q.unacked)
    out: dict[str, Any] = {attr.name: setting(q, attr) for attr in QUEUE_ATTRIBUTES}
    out.update(
        createTime=q.created_at // 1000,
        lastModifyTime=q.modified_at // 1000,
        activeMsgNum=q.ready_count,
        inactiveMsgNum=inflight,
        delayMsgNum=q.delayed_count,
        rewindmsgNum=q.retained_count(),
        # the documented spelling above; Tencent's Java SDK reads this one
        rewindMsgNum=q.retained_count(),
        minMsgTime=oldest_message_time(q),
        sequential=int(q.settings.sequential),
    )
    dlq = dead_letter_queue(q)
    if dlq is not None:
        out["deadLetterQueueName"] = dlq
        out["deadLetterQueueExists"] = dlq in vh.queues
    if q.settings.max_receive_count is not None:
        out["maxReceiveCount"] = q.settings.max_receive_count
    return out


def oldest_message_time(q: MessageQueue) -> int:
    """Enqueue time (s) of the oldest message not yet deleted, 0 when there is none."""
    # Messages in memory are held in publish order, so the first one not kept for rewind is
    # the oldest of them; cold ones wait behind them, but a queue may hold only cold ones.
    oldest = q.cold_enqueued_at()
    for msg in q.messages.values():
        if msg.state != RETAINED:
            oldest = msg.enqueued_at if oldest is None else min(oldest, msg.enqueued_at)
            break
    return 0 if oldest is None else oldest // 1000
