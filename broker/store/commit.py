"""The one commit path: apply commands now, make them durable together, then release replies.

Commands submitted during one event-loop turn are applied to the state machine at once, and
their durable changes are written in a single LevelDB WriteBatch with sync=True (group commit).
Batches that queue up behind a write are merged into the next one. Replies and effects are
released strictly in submission order, and only once everything before them is on disk. Later,
Raft takes this place: the adapters do not notice.

Where the write runs depends on who waits for it. A batch that some reply waits on (a confirm,
a PUBACK, an HTTP answer) is written on the loop at once: handing it to a thread costs a GIL
handoff that is longer than the fsync itself. A batch nobody waits on (acks, say) goes to the
writer thread (plyvel releases the GIL), so the loop keeps serving while it syncs.

One exception to the ordering, as in RabbitMQ: deliveries to consumers (and the wake-up of
long-polling receivers) go out at the end of the loop turn, without waiting for the disk.
Holding them back would make every ack-then-deliver cycle wait for an fsync; sending them early
costs nothing in safety, because a confirm still means "on disk", and a message delivered
before a crash is delivered again (at least once).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import plyvel

from broker.core import commands as c
from broker.core.errors import BrokerError, InternalError
from broker.core.model import Deliver, Effect, MessagesAvailable
from broker.core.state import StateMachine
from broker.store.schema import encode_key, encode_value, iter_records

log = logging.getLogger(__name__)

#: Called once the command is durable: (reply, error). Exactly one of them is meaningful.
Done = Callable[[Any, BrokerError | None], None]
_Item = tuple[Done | None, Any, BrokerError | None, list[Effect]]


class Store:
    """The LevelDB database holding the broker's durable state."""

    def __init__(self, path: str) -> None:
        self.db = plyvel.DB(path, create_if_missing=True)

    def load(self, state: StateMachine, now: int) -> int:
        state.now = now
        count = 0
        for kind, key, value in iter_records(self.db):
            state.restore(kind, key, value)
            count += 1
        state.finish_restore()
        return count

    def write(self, ops: list[tuple[bytes, bytes | None]]) -> None:
        with self.db.write_batch(sync=True) as batch:
            for key, value in ops:
                if value is None:
                    batch.delete(key)
                else:
                    batch.put(key, value)

    def close(self) -> None:
        self.db.close()


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


class CommitPath:
    def __init__(
        self,
        state: StateMachine,
        store: Store,
        on_effects: Callable[[list[Effect]], None],
        clock: Clock | None = None,
    ) -> None:
        self.state = state
        self.store = store
        self.clock = clock or Clock()
        self._on_effects = on_effects
        self._loop = asyncio.get_running_loop()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-writer")
        self._pending: list[_Item] = []
        #: the clock read once per loop turn: commands of one turn share a timestamp
        self._now: int | None = None
        #: effects released at the end of the loop turn, before the disk (deliveries, wake-ups)
        self._early: list[Effect] = []
        self._flush_scheduled = False
        #: batches waiting for the disk: (ops, items); the first one may be being written
        self._queue: deque[tuple[list[tuple[bytes, bytes | None]], list[_Item]]] = deque()
        self._writing = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due: int | None = None
        self._closed = False
        self.stats = {"commands": 0, "syncs": 0, "records": 0}

    def submit(self, command: c.Command, done: Done | None = None) -> None:
        """Apply `command` now; call `done(reply, error)` once it is durable."""
        try:
            now = self._now
            if now is None:
                now = self._now = self.clock.now()
            reply, effects = self.state.apply(command, now)
            error = None
        except BrokerError as exc:
            reply, effects, error = None, [], exc
        except Exception as exc:
            log.exception("command %s failed", type(command).__name__)
            reply, effects, error = None, [], InternalError(f"internal error: {exc!r}")
        self.stats["commands"] += 1
        if effects:
            later = []
            for effect in effects:
                if type(effect) is Deliver or type(effect) is MessagesAvailable:
                    self._early.append(effect)
                else:
                    later.append(effect)
            effects = later
        self._pending.append((done, reply, error, effects))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def defer(self, callback: Callable[[], None]) -> None:
        """Run `callback` in submission order, once everything before it is durable."""
        self._pending.append((lambda reply, error: callback(), None, None, []))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

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

    def _flush(self) -> None:
        self._flush_scheduled = False
        self._now = None
        # A delivery may settle others at once (MQTT QoS 0), freeing room for more: those go
        # out in this turn too.
        while self._early:
            early, self._early = self._early, []
            self._on_effects(early)
        items, self._pending = self._pending, []
        changes = self.state.take_changes()
        ops = [
            (encode_key(kind, key), None if value is None else encode_value(kind, value))
            for kind, key, value in changes
        ]
        if not ops and not self._queue:
            self._release(items)
        elif self._queue and not self._writing_head_only():
            tail_ops, tail_items = self._queue[-1]
            tail_ops.extend(ops)
            tail_items.extend(items)
        else:
            self._queue.append((ops, items))
        self._start_write()
        self._reschedule_timer()

    def _writing_head_only(self) -> bool:
        """True when the only queued batch is the one on the disk right now."""
        return self._writing and len(self._queue) == 1

    def _start_write(self) -> None:
        if self._writing or not self._queue or self._closed:
            return
        ops, _ = self._queue[0]
        self._writing = True
        if not ops:
            self._loop.call_soon(self._write_done, None)
            return
        if any(item[0] is not None for item in self._queue[0][1]):
            # A reply waits on this batch: handing it to the writer thread would add a GIL
            # handoff (~0.5 ms measured) to the fsync (~0.3 ms), so write it on the loop, once
            # the output already scheduled (early deliveries) has gone out.
            self._loop.call_soon(self._write_on_loop, ops)
            return
        fut = self._loop.run_in_executor(self._executor, self.store.write, ops)
        fut.add_done_callback(self._on_written)

    def _write_on_loop(self, ops: list[tuple[bytes, bytes | None]]) -> None:
        try:
            self.store.write(ops)
        except Exception as exc:
            self._write_done(exc)
            return
        self._write_done(None)

    def _on_written(self, fut: asyncio.Future[None]) -> None:
        self._write_done(fut.exception())

    def _write_done(self, exc: BaseException | None) -> None:
        if exc is not None:
            log.critical("store write failed, stopping: %r", exc)
            self._closed = True
            self._loop.stop()
            return
        ops, items = self._queue.popleft()
        self._writing = False
        if ops:
            self.stats["syncs"] += 1
            self.stats["records"] += len(ops)
        self._release(items)
        self._start_write()

    def _release(self, items: list[_Item]) -> None:
        for done, reply, error, effects in items:
            if done is not None:
                try:
                    done(reply, error)
                except Exception:
                    log.exception("reply callback failed")
            if effects:
                self._on_effects(effects)

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
        self.submit(c.Tick())

    async def drain(self) -> None:
        """Wait until everything submitted so far is on disk."""
        await self.call(c.Tick())

    def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        self._executor.shutdown(wait=True)
