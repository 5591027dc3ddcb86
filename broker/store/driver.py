"""The committer's asyncio driver: the only code that touches both the disk and the loop.

Commands submitted during one loop turn share a timestamp and go to the disk together (group
commit). The batch is written without a sync at the end of the turn, on the loop: that costs
about as much as copying it, and its entries are then applied and their effects (deliveries,
wake-ups) go out at once. The sync, which is what takes time, runs on a writer thread (plyvel
releases the GIL while LevelDB syncs), as do the large writes that carry a snapshot; the loop
keeps serving meanwhile, and replies that promise durability go out when the sync is done.
While the thread works, the loop writes nothing (LevelDB would make it wait), so the next batch
gathers and goes in one write. The driver also proposes a Tick whenever a timer is due.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future as ThreadFuture
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from broker.core import commands as c
from broker.core.errors import BrokerError
from broker.core.model import Effect
from broker.core.state import StateMachine
from broker.store.committer import Committer, Done, Write
from broker.store.disk import Store
from broker.store.recovery import Recovered, recover

log = logging.getLogger(__name__)

#: Writes with more operations than this (snapshots, mostly) go to the writer thread.
INLINE_OPS = 2000


class Clock:
    """Milliseconds since the epoch, never going backwards (the state machine relies on it)."""

    def __init__(self) -> None:
        self.last = 0

    def now(self) -> int:
        t = int(time.time() * 1000)
        if t < self.last:
            t = self.last
        self.last = t
        return t


class CommitDriver:
    def __init__(
        self,
        store: Store,
        recovered: Recovered,
        on_effects: Callable[[list[Effect]], None],
        clock: Clock | None = None,
    ) -> None:
        self.store = store
        self.committer = Committer(
            recovered.state,
            last_index=recovered.last_index,
            snapshot_index=recovered.snapshot_index,
            dirty=recovered.dirty,
            skipped=recovered.skipped,
        )
        self.clock = clock or Clock()
        self._on_effects = on_effects
        self._loop = asyncio.get_running_loop()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-writer")
        #: the clock read once per loop turn: commands of one turn share a timestamp
        self._now: int | None = None
        self._flush_scheduled = False
        #: a write (a sync, or a large one) is in progress on the writer thread
        self._busy = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due: int | None = None
        self._closed = False

    @property
    def state(self) -> StateMachine:
        """The applied (committed) state; replaced when it has to be rebuilt."""
        return self.committer.state

    @property
    def stats(self) -> dict[str, int]:
        return self.committer.stats

    def now_ms(self) -> int:
        return self.clock.now()

    # -- what the gateway calls ----------------------------------------------------------

    def submit(self, command: c.Command, done: Done | None = None, durable: bool = True) -> None:
        now = self._now
        if now is None:
            now = self._now = self.clock.now()
        self.committer.propose(command, now, done, durable)
        self._schedule_flush()

    def after(self, callback: Callable[[], None]) -> None:
        """Run `callback` once everything submitted before it is applied and on disk."""

        def done(reply: Any, error: BrokerError | None) -> None:
            if error is None:
                callback()

        self.committer.barrier(done)
        self._schedule_flush()

    def call(self, command: c.Command) -> asyncio.Future[Any]:
        """Submit and get a future of the reply (raises the BrokerError)."""
        fut: asyncio.Future[Any] = self._loop.create_future()

        def done(reply: Any, error: BrokerError | None) -> None:
            if fut.done():
                return
            if error is not None:
                fut.set_exception(error)
            else:
                fut.set_result(reply)

        self.submit(command, done)
        return fut

    async def drain(self) -> None:
        """Wait until everything submitted so far is applied and on disk (or failed)."""
        fut: asyncio.Future[None] = self._loop.create_future()

        def done(reply: Any, error: BrokerError | None) -> None:
            if not fut.done():
                fut.set_result(None)

        self.committer.barrier(done)
        self._schedule_flush()
        await fut

    # -- the loop side -------------------------------------------------------------------

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        self._now = None
        self._pump()

    def _pump(self) -> None:
        """Do the writes the committer asks for: small ones here, syncs on the thread."""
        for _ in range(2):  # a write of new entries, then usually their sync
            if self._busy or self._closed:
                break
            write = self.committer.next_write()
            if write is None:
                break
            if write.sync or len(write.ops) > INLINE_OPS:
                self._write_on_thread(write)
                break
            try:
                self.store.write(write.ops, sync=False)
            except Exception as exc:
                self.committer.write_failed(exc)
                break
            self._written(write)
        self._release()
        self._reschedule_timer()

    def _write_on_thread(self, write: Write) -> None:
        self._busy = True
        fut = self._executor.submit(self.store.write, write.ops, write.sync)
        done = functools.partial(self._thread_done, write)
        fut.add_done_callback(lambda f: self._loop.call_soon_threadsafe(done, f))

    def _thread_done(self, write: Write, fut: ThreadFuture[None]) -> None:
        self._busy = False
        exc = fut.exception()
        if exc is not None:
            self.committer.write_failed(exc)
        else:
            self._written(write)
        self._pump()

    def _written(self, write: Write) -> None:
        self.committer.written(write)
        while self.committer.rebuild_needed is not None:
            self._rebuild(self.committer.rebuild_needed)

    def _release(self) -> None:
        on_effects = self._on_effects
        for done, reply, error, effects in self.committer.take_releases():
            if effects:
                on_effects(effects)
            if done is not None:
                try:
                    done(reply, error)
                except Exception:
                    log.exception("reply callback failed")

    def _rebuild(self, index: int) -> None:
        skip = self.committer.skipped | {index}
        recovered = recover(self.store, skip=skip, upto=index - 1)
        self.committer.rebuilt(recovered.state, recovered.dirty)

    # -- timers --------------------------------------------------------------------------

    def _reschedule_timer(self) -> None:
        due = self.state.next_due()
        if due is None or (self._timer_due is not None and self._timer_due <= due):
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_due = due
        delay = max(0.0, (due - self.clock.now()) / 1000)
        self._timer = self._loop.call_later(delay, self._fire_timer)

    def _fire_timer(self) -> None:
        self._timer = None
        self._timer_due = None
        self.submit(c.Tick(), durable=False)

    # -- shutdown ------------------------------------------------------------------------

    async def close(self) -> None:
        """Write everything, with a snapshot so the next start replays little, and stop."""
        self.committer.snapshot_now()
        await self.drain()
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        self._executor.shutdown(wait=True)
