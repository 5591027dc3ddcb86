"""Message counters of a node read in one place, and their rates over the last interval.

The counters themselves are plain ints kept where the work is done, so that counting costs
nothing visible: per queue in the core (`MessageQueue.counters`: published, delivered,
redelivered, acked, dead-lettered, dropped), per protocol in the adapters
(`Gateway.traffic`: messages received from and delivered to clients). This module only reads
them. Nothing here is core state: the counters start at 0 with the node, as RabbitMQ's do.

API, for the management API and the console (RabbitMQ's message_stats); a node runs one,
`Node.rates`, sampling every 5 s from its start:

    sampler = RateSampler(lambda: read(gateway), interval=5.0)
    sampler.start()                 # samples every `interval` s on the running loop
    sampler.message_stats()         # node-wide:
        # {"publish": 120, "publish_details": {"rate": 4.0}, "deliver_get": ...,
        #  "ack": ..., "redeliver": ..., "drop": ..., "dead_letter": ...}
    sampler.message_stats(("/", "q1"))   # one queue (same fields; {} for an unknown queue)
    sampler.rate("publish")         # one node-wide rate, messages/s
    await sampler.stop()

Counts are those of the newest sample (at most `interval` old); a rate is the change between
the last two samples divided by the time between them, never negative (node-wide sums keep
the counts of deleted queues, `StateMachine.retired`), and 0 until there are two samples.
`sample()` takes one at once (tests, and a caller that needs fresh numbers).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from broker.core.state import StateMachine
from broker.gateway import Traffic
from broker.periodic import Periodic

#: node-wide fields of message_stats, and per-queue fields (from the queue counters)
NODE_FIELDS = ("publish", "deliver_get", "ack", "redeliver", "drop", "dead_letter")
QUEUE_FIELDS = ("publish", "deliver_get", "redeliver", "ack", "dead_letter", "drop")

QueueKey = tuple[str, str]


@dataclass(slots=True)
class Sample:
    """The counters at one moment (`at`: time.monotonic())."""

    at: float
    #: NODE_FIELDS -> count
    node: dict[str, int] = field(default_factory=dict)
    #: (vhost, queue) -> counts in QUEUE_FIELDS order
    queues: dict[QueueKey, tuple[int, ...]] = field(default_factory=dict)


def read(traffic: dict[str, Traffic], state: StateMachine, at: float | None = None) -> Sample:
    """Read every counter: clients' messages from `traffic`, the rest from the queues."""
    queues: dict[QueueKey, tuple[int, ...]] = {}
    gone = state.retired
    acked, redelivered, dropped, dead = (
        gone.acked,
        gone.redelivered,
        gone.dropped,
        gone.dead_lettered,
    )
    for vhost in state.vhosts.values():
        for q in vhost.queues.values():
            n = q.counters
            queues[(q.vhost, q.name)] = (
                n.published,
                n.delivered,
                n.redelivered,
                n.acked,
                n.dead_lettered,
                n.dropped,
            )
            acked += n.acked
            redelivered += n.redelivered
            dropped += n.dropped
            dead += n.dead_lettered
    published = sum(t.received for t in traffic.values())
    delivered = sum(t.delivered for t in traffic.values())
    counts = (published, delivered, acked, redelivered, dropped, dead)
    node = dict(zip(NODE_FIELDS, counts, strict=True))
    return Sample(time.monotonic() if at is None else at, node, queues)


class RateSampler:
    def __init__(self, read: Callable[[], Sample], interval: float = 5.0) -> None:
        self._read = read
        self._last: Sample | None = None
        self._before: Sample | None = None
        self._every = Periodic(self.sample, interval)

    def start(self) -> None:
        self._every.start()

    async def stop(self) -> None:
        await self._every.stop()

    def sample(self) -> Sample:
        """Take a sample now; the previous one becomes the base of the rates."""
        sample = self._read()
        self._before, self._last = self._last, sample
        return sample

    def _elapsed(self) -> float:
        if self._last is None or self._before is None:
            return 0.0
        return self._last.at - self._before.at

    def rate(self, name: str, queue: QueueKey | None = None) -> float:
        """Messages/s of one field over the last interval (0 without two samples)."""
        elapsed = self._elapsed()
        if elapsed <= 0 or self._last is None or self._before is None:
            return 0.0
        if queue is None:
            now, then = self._last.node.get(name, 0), self._before.node.get(name, 0)
        else:
            i = QUEUE_FIELDS.index(name)
            last = self._last.queues.get(queue)
            before = self._before.queues.get(queue)
            if last is None:
                return 0.0
            now, then = last[i], before[i] if before is not None else 0
        return max(0.0, (now - then) / elapsed)

    def message_stats(self, queue: QueueKey | None = None) -> dict[str, object]:
        """RabbitMQ's message_stats: each count and `<field>_details: {"rate": r}`."""
        last = self._last
        if last is None:
            return {}
        if queue is None:
            counts = last.node
        else:
            row = last.queues.get(queue)
            if row is None:
                return {}
            counts = dict(zip(QUEUE_FIELDS, row, strict=True))
        out: dict[str, object] = {}
        for name, count in counts.items():
            out[name] = count
            out[f"{name}_details"] = {"rate": round(self.rate(name, queue), 1)}
        return out
