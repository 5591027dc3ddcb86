"""A piece of work repeated every few seconds on the running loop (rate samples, $SYS)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Periodic:
    """Calls `work` at start() and then every `interval` seconds, until stop()."""

    def __init__(self, work: Callable[[], object], interval: float) -> None:
        self.work = work
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            self.work()
            await asyncio.sleep(self.interval)
