"""The committer's asyncio driver: the only code that touches both the disk and the loop.

Commands submitted during one loop turn share a timestamp and go to the log together (group
commit). A small batch is written without a sync at the end of the turn, on the loop: that
costs about as much as copying it, and its entries are then applied and their effects
(deliveries, wake-ups) go out at once. The sync, which is what takes time, runs on the log's
writer thread (plyvel releases the GIL while LevelDB syncs), and so does a busy turn's large
batch with its sync: the entries are applied as soon as the write is done, while the disk
syncs. Replies that promise durability go out when the sync is done. While that thread works,
the loop does not write the log (LevelDB would make it wait), so the next batch gathers and
goes in one write. Snapshots go to the other database on a thread of their own, so they never
hold up the log. The driver also proposes a Tick whenever a timer is due.

When the disk refuses a write, the committer refuses what must not be acknowledged and holds
the rest; the driver tells the node (which raises an alarm, so publishers are blocked), then
tries every RETRY_INTERVAL to reopen the database and write again what it may have lost,
and carries on once that works (a full disk that has room again, say).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future as ThreadFuture
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from broker.core import commands as c
from broker.core.errors import BrokerError
from broker.core.model import Effect
from broker.core.state import StateMachine
from broker.histogram import CommitMetrics
from broker.store.applier import Done, Op, Snapshot
from broker.store.committer import Committer, Write
from broker.store.disk import Store
from broker.store.recovery import Recovered, rebuild

log = logging.getLogger(__name__)

#: Rounds of writing, applying and releasing in one loop turn.
PUMP_ROUNDS = 8
#: Entries waiting for the log beyond which a connection's read is followed by a write.
PUMP_BACKLOG = 256
#: Batches with more entries than this that must be synced go to the log's thread with
#: their sync; the others are written here.
INLINE_ENTRIES = 64
#: Seconds between attempts to get a failed store working again.
RETRY_INTERVAL = 1.0


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


class DueTimer:
    """Calls `fire` when the state's next deadline (TTL, delay, visibility) comes; its owner
    then proposes a Tick, which takes its time from the command like any other."""

    def __init__(self, clock: Clock, fire: Callable[[], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._clock = clock
        self._fire = fire
        self._handle: asyncio.TimerHandle | None = None
        self._due: int | None = None

    def reschedule(self, due: int | None) -> None:
        """`due`: the state's next deadline (ms since the epoch), if any. Only an earlier
        deadline than the one waited for moves the timer."""
        if due is None or (self._due is not None and self._due <= due):
            return
        if self._handle is not None:
            self._handle.cancel()
        self._due = due
        delay = max(0.0, (due - self._clock.now()) / 1000)
        self._handle = self._loop.call_later(delay, self._fired)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self._due = None

    def _fired(self) -> None:
        self._handle = self._due = None
        self._fire()


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
            stored_seq=recovered.stored_seq,
            batches=recovered.batches,
            garbage=recovered.garbage,
        )
        self.clock = clock or Clock()
        self._on_effects = on_effects
        self._loop = asyncio.get_running_loop()
        self._log_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="log-writer")
        self._state_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="snapshots")
        #: the clock read once per loop turn: commands of one turn share a timestamp
        self._now: int | None = None
        self._flush_scheduled = False
        #: a log write (a sync, or a large one) is in progress on the log's thread
        self._busy = False
        #: a snapshot is being written (and an event set when one is done)
        self._snapshotting = False
        self._snapshot_idle = asyncio.Event()
        self._timer = DueTimer(self.clock, lambda: self.submit(c.Tick(), durable=False))
        self._closed = False
        #: a snapshot the state database refused, written again once it is reopened
        self._failed_snapshot: tuple[Snapshot, BaseException] | None = None
        self._retry: asyncio.TimerHandle | None = None
        #: called when store_error changes (the node raises or clears its alarm)
        self.on_store_error: Callable[[], None] | None = None
        #: fsyncs, batch sizes and latency of the log writes
        self.metrics = CommitMetrics()
        #: when the write on the log's thread was handed out (perf_counter)
        self._started = 0.0

    @property
    def store_error(self) -> BaseException | None:
        """Why the store does not work now, if it does not."""
        if self.committer.failed is not None:
            return self.committer.failed
        return None if self._failed_snapshot is None else self._failed_snapshot[1]

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

    def read_done(self) -> None:
        """A connection has handled one read. The loop may hand a fast publisher's socket
        many reads in one turn (libuv reads until the socket is empty, up to 32 times):
        past a batch's worth, write and apply now, so its messages are delivered while
        still in the cache and no turn gathers thousands of entries."""
        if self.committer.backlog >= PUMP_BACKLOG:
            self._pump()

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
        """Do the writes the committer asks for: small ones here, syncs on the thread.

        What a write releases goes out at once, and may be followed by more commands in the
        same turn (a QoS 0 subscriber's settlements, say, which make room for the next
        deliveries); a few rounds per turn, so the network is read in between.
        """
        for _ in range(PUMP_ROUNDS):
            if self._busy or self._closed:
                break
            write = self.committer.next_write()
            if write is None:
                break
            started = time.perf_counter()
            if write.sync or write.entries > INLINE_ENTRIES:
                write.sync = write.sync or write.wants_sync
                self._busy = True
                self._started = started
                self._log_thread.submit(self._log_job, write)
                break
            try:
                self.store.write_log(write.ops, sync=False)
            except Exception as exc:
                self._failed(exc)
                break
            if not write.cleanup:
                self.metrics.written(write.entries, started, time.perf_counter(), False)
            self._written(write)
            self._release()
            if write.cleanup:
                # The log behind a snapshot goes a chunk per loop turn, when nothing waits.
                self._schedule_flush()
                break
        else:
            self._schedule_flush()  # more next turn
        self._snapshot()
        self._release()
        self._reschedule_timer()

    def _log_job(self, write: Write) -> None:
        """On the log's thread: the write, then its sync; the loop hears of each, so it can
        apply the entries while the disk syncs."""
        call = self._loop.call_soon_threadsafe
        try:
            if write.ops:
                self.store.write_log(write.ops, sync=False)
                call(self._log_written, write)
            if write.sync:
                self.store.write_log([], sync=True, confirmed=write.last_index)
        except Exception as exc:
            call(self._log_failed, exc)
            return
        call(self._log_done, write)

    def _log_written(self, write: Write) -> None:
        self._written(replace(write, sync=False))
        self._release()

    def _log_done(self, write: Write) -> None:
        self._busy = False
        self.metrics.written(write.entries, self._started, time.perf_counter(), write.sync)
        if not write.ops:
            self._written(write)
        elif write.sync:
            self.committer.synced(write.last_index)
        self._pump()

    def _log_failed(self, exc: BaseException) -> None:
        self._busy = False
        self._failed(exc)
        self._pump()

    # -- a store that failed -------------------------------------------------------------

    def _failed(self, exc: BaseException) -> None:
        self.committer.write_failed(exc)
        if self.store.release_reserve():
            log.warning("gave up the disk space set aside, to carry on; publishers are blocked")
        self._store_error_changed()

    def _store_error_changed(self) -> None:
        if self.store_error is not None and self._retry is None and not self._closed:
            self._retry = self._loop.call_later(RETRY_INTERVAL, self._recover)
        if self.on_store_error is not None:
            self.on_store_error()

    def _recover(self) -> None:
        """Try to get the store working again: on the log's thread if the log failed, on
        the snapshots' thread if a snapshot did (each database is used by its thread only)."""
        self._retry = None
        if self._closed:
            return
        if self.committer.failed is not None and not self._busy:
            self._busy = True
            write = self.committer.recovery_write()
            fut = self._log_thread.submit(self._recover_log, write)
            fut.add_done_callback(lambda f: self._loop.call_soon_threadsafe(self._log_recovered, f))
        if self._failed_snapshot is not None and not self._snapshotting:
            self._snapshotting = True
            snapshot = self._failed_snapshot[0]
            fut = self._state_thread.submit(self._recover_state, snapshot.ops)
            done = functools.partial(self._snapshot_done, snapshot)
            fut.add_done_callback(lambda f: self._loop.call_soon_threadsafe(done, f))

    def _recover_log(self, write: Write) -> None:
        self.store.reopen_log()
        self.store.write_log(write.ops, sync=True)

    def _recover_state(self, ops: list[Op]) -> None:
        self.store.reopen_state()
        self.store.write_state(ops)

    def _log_recovered(self, fut: ThreadFuture[None]) -> None:
        self._busy = False
        exc = fut.exception()
        if exc is not None:
            log.info("the store still fails: %r; retrying in %ss", exc, RETRY_INTERVAL)
        else:
            self.committer.recovered()
        self._store_error_changed()
        self._pump()

    def _snapshot(self) -> None:
        if self._snapshotting or self._closed:
            return
        snapshot = self.committer.next_snapshot()
        if snapshot is None:
            return
        self._snapshotting = True
        fut = self._state_thread.submit(self.store.write_state, snapshot.ops)
        done = functools.partial(self._snapshot_done, snapshot)
        fut.add_done_callback(lambda f: self._loop.call_soon_threadsafe(done, f))

    def _snapshot_done(self, snapshot: Snapshot, fut: ThreadFuture[None]) -> None:
        self._snapshotting = False
        self._snapshot_idle.set()
        exc = fut.exception()
        if exc is not None:
            if self._failed_snapshot is None:
                log.error("snapshot write failed: %r; retrying every %ss", exc, RETRY_INTERVAL)
            self._failed_snapshot = (snapshot, exc)
            self.store.release_reserve()
            self._store_error_changed()
        else:
            self.committer.snapshot_written(snapshot)
            if self._failed_snapshot is not None:
                log.warning("the state database works again: the snapshot is written")
                self._failed_snapshot = None
                self._store_error_changed()
        self._pump()

    def _written(self, write: Write) -> None:
        self.committer.written(write)
        while self.committer.rebuild_needed is not None:
            rebuild(self.committer, self.store, self.committer.rebuild_needed)

    def _release(self) -> None:
        self.committer.release(self._on_effects)

    # -- timers --------------------------------------------------------------------------

    def _reschedule_timer(self) -> None:
        if self.committer.failed is None:  # else nothing changes, and a Tick would be held
            self._timer.reschedule(self.state.next_due())

    # -- shutdown ------------------------------------------------------------------------

    async def checkpoint(self) -> None:
        """Write everything submitted so far, and a snapshot of it, before returning."""
        await self.drain()
        self.committer.snapshot_now()
        while True:
            self._pump()
            if not self._snapshotting:
                break
            self._snapshot_idle.clear()
            await self._snapshot_idle.wait()

    async def close(self) -> None:
        """Write everything, with a snapshot so the next start replays little, and stop."""
        await self.checkpoint()
        self._closed = True
        self._timer.cancel()
        if self._retry is not None:
            self._retry.cancel()
        self._log_thread.shutdown(wait=True)
        self._state_thread.shutdown(wait=True)
