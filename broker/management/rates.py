"""Rates of change of queue depths, as RabbitMQ's `messages_details.rate` (messages/s).

The API keeps no counters on the message path; instead the server samples every queue's
counts every SAMPLE_INTERVAL seconds (a pass over the queues, not over their messages), and
a rate is the change between the last two samples. A queue sampled once has no rate yet.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from broker.core.state import StateMachine
from broker.management import formats

#: RabbitMQ's default sampling interval of its management statistics
SAMPLE_INTERVAL = 5.0

#: what is sampled of a queue: messages, ready, unacknowledged
Counts = tuple[int, int, int]
FIELDS = ("messages", "messages_ready", "messages_unacknowledged")


class DepthRates:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        #: (vhost, queue) -> (when, counts) of the last two samples, newest last
        self._samples: dict[tuple[str, str], list[tuple[float, Counts]]] = {}

    def sample(self, state: StateMachine) -> None:
        now = self._clock()
        seen = {}
        for vhost, vh in state.vhosts.items():
            for name, q in vh.queues.items():
                key = (vhost, name)
                counts = formats.counts(q)
                previous = self._samples.get(key, [])
                seen[key] = [*previous[-1:], (now, counts)]
        self._samples = seen

    def details(self, vhost: str, queue: str) -> dict[str, Any]:
        """`<field>_details: {"rate": ...}` for each counted field, or {} before two samples."""
        samples = self._samples.get((vhost, queue), [])
        if len(samples) < 2:
            return {}
        (then, old), (now, new) = samples
        elapsed = now - then
        return {
            f"{field}_details": {"rate": round((b - a) / elapsed, 1)}
            for field, a, b in zip(FIELDS, old, new, strict=True)
        }

    async def run(self, state: Callable[[], StateMachine]) -> None:
        """Sample until cancelled."""
        while True:
            self.sample(state())
            await asyncio.sleep(SAMPLE_INTERVAL)
