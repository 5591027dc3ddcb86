"""DueTimer: the Tick of the next deadline, moved only by an earlier one."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from broker.store.driver import Clock, DueTimer


class FixedClock(Clock):
    def now(self) -> int:
        return 1_000_000


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(main(), timeout=5))


def test_fires_once_at_the_earliest_deadline() -> None:
    async def main() -> None:
        fired: list[float] = []
        done = asyncio.Event()
        loop = asyncio.get_running_loop()

        def fire() -> None:
            fired.append(loop.time())
            done.set()

        timer = DueTimer(FixedClock(), fire)
        start = loop.time()
        timer.reschedule(1_000_000 + 2000)
        timer.reschedule(1_000_000 + 30)  # earlier: moves it
        timer.reschedule(1_000_000 + 5000)  # later: ignored
        timer.reschedule(None)
        await done.wait()
        assert len(fired) == 1 and fired[0] - start < 1.5
        done.clear()
        timer.reschedule(1_000_000)  # due now: once more
        await done.wait()
        assert len(fired) == 2

    run(main)


def test_cancel_forgets_the_deadline() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        fired: list[float] = []
        done = asyncio.Event()

        def fire() -> None:
            fired.append(loop.time())
            done.set()

        timer = DueTimer(FixedClock(), fire)
        start = loop.time()
        timer.reschedule(1_000_000 + 20)
        timer.cancel()
        timer.reschedule(1_000_000 + 60)  # later than the cancelled one: it counts
        await done.wait()
        # Timers never fire early: had the first survived, this would be at 20 ms.
        assert len(fired) == 1 and fired[0] - start >= 0.05

    run(main)
