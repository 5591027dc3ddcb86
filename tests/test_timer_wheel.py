"""The TimerWheel asks each watched item at its deadline, never before, under one loop timer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from broker.protocols.timer_wheel import TimerWheel

RESOLUTION = 0.05
#: how long a test waits for something that should happen well before
PATIENCE = 5.0


class Item:
    """Records when it was asked; answers with the next deadline `plan` gives (or None)."""

    def __init__(self, name: str, log: list[tuple[str, float]], plan: list[float]) -> None:
        self.name = name
        self.log = log
        self.plan = plan
        self.deadline_slot: int | None = None

    def deadline_due(self, now: float) -> float | None:
        self.log.append((self.name, now))
        return self.plan.pop(0) if self.plan else None


async def until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + PATIENCE
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_asked_at_its_deadline_never_before_then_at_the_next_one() -> None:
    async def main() -> None:
        wheel = TimerWheel(RESOLUTION)
        asked: list[tuple[str, float]] = []
        start = time.monotonic()
        first, second = start + 0.1, start + 0.3
        item = Item("a", asked, [second])
        wheel.watch(item, first)
        await until(lambda: len(asked) == 2)
        assert asked[0][1] >= first and asked[1][1] >= second
        assert item.deadline_slot is None  # answered None: forgotten

    asyncio.run(main())


def test_a_forgotten_item_is_not_asked() -> None:
    async def main() -> None:
        wheel = TimerWheel(RESOLUTION)
        asked: list[tuple[str, float]] = []
        start = time.monotonic()
        gone, kept = Item("gone", asked, []), Item("kept", asked, [])
        wheel.watch(gone, start + 0.1)
        wheel.watch(kept, start + 0.2)
        wheel.forget(gone)
        await until(lambda: bool(asked))
        assert [name for name, _ in asked] == ["kept"]

    asyncio.run(main())


def test_watching_again_moves_the_deadline() -> None:
    async def main() -> None:
        wheel = TimerWheel(RESOLUTION)
        asked: list[tuple[str, float]] = []
        start = time.monotonic()
        item, marker = Item("item", asked, []), Item("marker", asked, [])
        wheel.watch(item, start + 0.1)
        wheel.watch(item, start + 0.4)
        wheel.watch(marker, start + 0.2)
        await until(lambda: len(asked) == 2)
        assert [name for name, _ in asked] == ["marker", "item"]
        assert asked[1][1] >= start + 0.4

    asyncio.run(main())


def test_an_earlier_deadline_rearms_the_timer() -> None:
    async def main() -> None:
        wheel = TimerWheel(RESOLUTION)
        asked: list[tuple[str, float]] = []
        start = time.monotonic()
        late, early = Item("late", asked, []), Item("early", asked, [])
        wheel.watch(late, start + 30)
        wheel.watch(early, start + 0.1)
        await until(lambda: bool(asked))
        assert asked == [("early", asked[0][1])]

    asyncio.run(main())


def test_a_deadline_moved_past_another_slot_does_not_delay_that_slot() -> None:
    async def main() -> None:
        wheel = TimerWheel(RESOLUTION)
        asked: list[tuple[str, float]] = []
        start = time.monotonic()
        # `first` is asked, then wants to be asked again only after `second` is due.
        first = Item("first", asked, [start + 30])
        second = Item("second", asked, [])
        wheel.watch(first, start + 0.1)
        wheel.watch(second, start + 0.3)
        await until(lambda: len(asked) == 2)
        assert [name for name, _ in asked] == ["first", "second"]
        wheel.forget(first)

    asyncio.run(main())


def test_a_failing_check_does_not_stop_the_others() -> None:
    class Broken(Item):
        def deadline_due(self, now: float) -> float | None:
            super().deadline_due(now)
            raise RuntimeError("broken")

    async def main() -> None:
        wheel = TimerWheel(RESOLUTION)
        asked: list[tuple[str, float]] = []
        start = time.monotonic()
        broken, fine = Broken("broken", asked, []), Item("fine", asked, [])
        wheel.watch(broken, start + 0.1)
        wheel.watch(fine, start + 0.1)
        await until(lambda: len(asked) == 2)
        assert {name for name, _ in asked} == {"broken", "fine"}

    asyncio.run(main())


def test_an_item_forgotten_by_another_in_the_same_slot_is_not_asked() -> None:
    async def main() -> None:
        wheel = TimerWheel(RESOLUTION)
        asked: list[tuple[str, float]] = []
        start = time.monotonic()
        items = [Item(f"item{n}", asked, []) for n in range(50)]

        class Forgetting(Item):
            def deadline_due(self, now: float) -> float | None:
                for other in items:
                    wheel.forget(other)
                return super().deadline_due(now)

        forgetting = Forgetting("forgetting", asked, [])
        for item in (*items, forgetting):
            wheel.watch(item, start + 0.1)
        marker = Item("marker", asked, [])
        wheel.watch(marker, start + 0.3)
        await until(lambda: any(name == "marker" for name, _ in asked))
        # Whichever order the slot's set gave (with 50 items, some came after the one that
        # forgets them), no item was asked after being forgotten.
        names = [name for name, _ in asked]
        assert names[-1] == "marker" and "forgetting" in names
        assert names.index("forgetting") == len(names) - 2

    asyncio.run(main())
