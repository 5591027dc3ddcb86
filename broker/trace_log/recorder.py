"""Records what the state machine traces (Traced effects) in the node's TraceStore.

Steps are gathered on the loop and written by one thread every WRITE_INTERVAL, so a traced
publish costs its path an append. The step of a publish says who sent it when it arrived at
this node: the adapter noted its connection beforehand (`note_publisher`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from broker.core.model import Traced
from broker.trace_log.store import TraceStore

log = logging.getLogger(__name__)

WRITE_INTERVAL = 0.05
PRUNE_INTERVAL = 60.0
#: publishers noted and not yet matched with their publish's step (a publish that fails is
#: never traced: the oldest notes go first)
PUBLISHERS_KEPT = 10_000


class TraceRecorder:
    def __init__(self, path: str, retention_ms: int) -> None:
        self.retention_ms = retention_ms
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="trace")
        self.store = TraceStore(path)
        self._pending: list[dict[str, Any]] = []
        self._publishers: OrderedDict[int, tuple[Any, dict[str, Any]]] = OrderedDict()
        self._flush: asyncio.TimerHandle | None = None
        self._pruned = 0.0
        self.recorded = 0

    def note_publisher(self, command: Any, who: dict[str, Any]) -> None:
        publishers = self._publishers
        publishers[id(command)] = (command, who)
        if len(publishers) > PUBLISHERS_KEPT:
            publishers.popitem(last=False)

    def record(self, effect: Traced) -> None:
        step: dict[str, Any] = {
            "event": effect.event,
            "vhost": effect.vhost,
            "queue": effect.queue,
            "seq": effect.seq,
            "time": effect.time,
            **effect.detail,
        }
        if effect.command is not None:
            noted = self._publishers.pop(id(effect.command), None)
            if noted is not None and noted[0] is effect.command:
                step["publisher"] = noted[1]
        self._pending.append(step)
        if self._flush is None:
            self._flush = asyncio.get_running_loop().call_later(WRITE_INTERVAL, self._write)

    def _write(self) -> asyncio.Future[None]:
        if self._flush is not None:
            self._flush.cancel()  # (a no-op when it is what called)
            self._flush = None
        steps, self._pending = self._pending, []
        self.recorded += len(steps)
        prune_before = None
        now = time.monotonic()
        if now - self._pruned >= PRUNE_INTERVAL:
            self._pruned = now
            prune_before = int(time.time() * 1000) - self.retention_ms
        loop = asyncio.get_running_loop()
        done = loop.run_in_executor(self._executor, self._write_steps, steps, prune_before)
        done.add_done_callback(_log_failure)
        return done

    def _write_steps(self, steps: list[dict[str, Any]], prune_before: int | None) -> None:
        if steps:
            self.store.write(steps)
        if prune_before is not None:
            gone = self.store.prune(prune_before)
            if gone:
                log.info("message trace: %d steps older than the retention period removed", gone)

    async def by_id(self, trace_id: str, limit: int = 1000) -> list[dict[str, Any]]:
        """The steps of one message, once what was traced so far is written."""
        await self._write()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.store.by_id, trace_id, limit)

    async def by_queue(
        self, vhost: str, queue: str, since: int = 0, until: int | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        await self._write()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, self.store.by_queue, vhost, queue, since, until, limit
        )

    async def close(self) -> None:
        await self._write()
        self._executor.shutdown(wait=True)
        self.store.close()


def _log_failure(done: asyncio.Future[None]) -> None:
    if not done.cancelled() and done.exception() is not None:
        log.error("message trace: writing failed", exc_info=done.exception())
