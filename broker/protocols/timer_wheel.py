"""Deadlines of many connections under one event-loop timer.

Ten thousand idle MQTT devices each have a deadline: the handshake timeout until CONNECT, then
1.5 x their keepalive since they last sent anything. A loop timer per connection costs a heap
entry and a callback object per connection, re-armed every period. Here a deadline is rounded up
to a RESOLUTION-wide slot; each slot holds the set of its connections, and one loop timer waits
for the earliest slot.

A packet moves nothing: the connection only notes when it last heard from its client. When its
slot comes it is asked (`deadline_due`), and answers with its next deadline (it heard from the
client meanwhile) or None (it expired and closed itself, or it is gone). So a connection costs
one set entry and one check per deadline period, whatever its traffic. Deadlines are never
early and at most RESOLUTION late.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import time
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger(__name__)

#: width of a slot, s: how late a deadline may be acted on
RESOLUTION = 0.1


class Watched(Protocol):
    #: the slot the wheel holds it in (None: not watched); the wheel's to set
    deadline_slot: int | None

    def deadline_due(self, now: float) -> float | None:
        """Its deadline has come (`now`, on the wheel's clock): the next deadline to be asked
        at, or None to be forgotten."""


class TimerWheel:
    def __init__(
        self, resolution: float = RESOLUTION, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.resolution = resolution
        self._clock = clock
        #: slot number -> what is due in it; slot n is due at n x resolution
        self._slots: dict[int, set[Watched]] = {}
        #: the slot numbers, earliest first (with emptied ones, skipped when they come up)
        self._order: list[int] = []
        self._timer: asyncio.TimerHandle | None = None
        #: the slot the timer is set for
        self._timer_slot: int | None = None

    def watch(self, item: Watched, deadline: float) -> None:
        """Ask `item` at `deadline` (on the wheel's clock) or at most `resolution` later."""
        self.forget(item)
        slot = math.ceil(deadline / self.resolution)
        due = self._slots.get(slot)
        if due is None:
            due = self._slots[slot] = set()
            heapq.heappush(self._order, slot)
            if self._timer_slot is None or slot < self._timer_slot:
                self._arm(slot)
        due.add(item)
        item.deadline_slot = slot

    def forget(self, item: Watched) -> None:
        slot = item.deadline_slot
        if slot is None:
            return
        item.deadline_slot = None
        due = self._slots.get(slot)
        if due is not None:
            due.discard(item)
            if not due:
                del self._slots[slot]

    def _arm(self, slot: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        delay = max(0.0, slot * self.resolution - self._clock())
        self._timer = asyncio.get_running_loop().call_later(delay, self._fire)
        self._timer_slot = slot

    def _fire(self) -> None:
        self._timer = self._timer_slot = None
        now = self._clock()
        order = self._order
        # New deadlines are after `now`, so the slots they add are never due in this pass.
        while order and order[0] * self.resolution <= now:
            slot = heapq.heappop(order)
            for item in self._slots.pop(slot, ()):
                if item.deadline_slot != slot:
                    continue  # forgotten or moved by another item's check in this pass
                item.deadline_slot = None
                try:
                    deadline = item.deadline_due(now)
                except Exception:
                    log.exception("a deadline check failed")
                    continue
                if deadline is not None:
                    self.watch(item, deadline)
        while order and order[0] not in self._slots:
            heapq.heappop(order)
        # Slots added in this pass may have armed the timer for later than one already held.
        if order and order[0] != self._timer_slot:
            self._arm(order[0])
