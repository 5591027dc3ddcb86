"""Rates of change of queue depths, as RabbitMQ's `messages_details.rate` (messages/s).

Nothing is counted on the message path for them. A request that shows queues or their
totals first refreshes the sample of every queue's counts (and each vhost's totals) when the
last one is MIN_GAP old or more; a rate is the change between the last two samples over the
time between them. So a console polling every 5 s gets rates over 5 s windows, as RabbitMQ
samples, and a node nobody looks at spends nothing on them (a sample is a pass over the
queues, not over their messages, but on a node with 100,000 MQTT sessions it is still
hundreds of milliseconds).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from broker.core.state import StateMachine
from broker.management import formats

#: a sample is taken when the last one is at least this old (s): a console polling every
#: 5 s, its requests a little early or late, still gets one per poll
MIN_GAP = 4.0

#: what is sampled of a queue: messages, ready, unacknowledged
Counts = tuple[int, int, int]
FIELDS = ("messages", "messages_ready", "messages_unacknowledged")


class DepthRates:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        #: times of the previous and the latest sample
        self._then: float | None = None
        self._now: float | None = None
        #: (vhost, queue) -> counts, at the previous and at the latest sample
        self._old: dict[tuple[str, str], Counts] = {}
        self._new: dict[tuple[str, str], Counts] = {}
        #: vhost -> summed counts, at the previous and at the latest sample
        self._old_totals: dict[str, Counts] = {}
        self._new_totals: dict[str, Counts] = {}

    def refresh(self, state: StateMachine) -> None:
        """Take a sample unless the latest is younger than MIN_GAP."""
        now = self._clock()
        if self._now is not None and now - self._now < MIN_GAP:
            return
        sample: dict[tuple[str, str], Counts] = {}
        totals: dict[str, Counts] = {}
        for vhost, vh in state.vhosts.items():
            messages = ready = unacked = 0
            for name, q in vh.queues.items():
                counts = sample[(vhost, name)] = formats.counts(q)
                messages += counts[0]
                ready += counts[1]
                unacked += counts[2]
            totals[vhost] = (messages, ready, unacked)
        self._then, self._old, self._old_totals = self._now, self._new, self._new_totals
        self._now, self._new, self._new_totals = now, sample, totals

    def details(self, vhost: str, queue: str) -> dict[str, Any]:
        """`<field>_details: {"rate": ...}` of one queue, or {} before it has two samples."""
        key = (vhost, queue)
        return self._rates(self._old.get(key), self._new.get(key))

    def total_details(self, vhosts: Iterable[str]) -> dict[str, Any]:
        """The same of the vhosts' totals (RabbitMQ's overview queue_totals)."""
        old = new = (0, 0, 0)
        for vhost in vhosts:
            before, after = self._old_totals.get(vhost), self._new_totals.get(vhost)
            if before is None or after is None:
                continue
            old = (old[0] + before[0], old[1] + before[1], old[2] + before[2])
            new = (new[0] + after[0], new[1] + after[1], new[2] + after[2])
        return self._rates(old, new)

    def _rates(self, old: Counts | None, new: Counts | None) -> dict[str, Any]:
        if old is None or new is None or self._then is None or self._now is None:
            return {}
        elapsed = self._now - self._then
        return {
            f"{field}_details": {"rate": round((b - a) / elapsed, 1)}
            for field, a, b in zip(FIELDS, old, new, strict=True)
        }
