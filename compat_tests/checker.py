"""A total-queue checker: uniquely numbered messages in, every one of them out, under faults.

Publishers send persistent messages with publisher confirms, each body naming its run, its
publisher and its sequence number (`<run>:<publisher>:<seq>`), to the nodes of a cluster; a
connection that dies (or goes silent) is replaced by one to the next node, and what it had not
had confirmed is published again there. Consumers (manual acks, prefetch) read the queue
through the nodes the same way. At the end the publishers stop, wait for their last confirms,
and a drain pass reads the queue until every confirmed message was delivered and no node holds
a ready message any more. Then:

    LOST        confirmed, never delivered             -> the run fails
    UNEXPECTED  delivered, never published (any run)   -> the run fails
    duplicates  delivered more than once               -> allowed (at-least-once)
    in doubt    published, not confirmed, not delivered -> allowed (the publisher never knew)

Faults are marked on the checker's clock (time.monotonic, shared by the processes of the
machine) with `mark_fault`; for each, the checker measures the time from the fault to the first
confirm of a message first published after it (service is back), and the longest stretch
without any confirm after it. The test adds the time to a new leader, which it sees in the
nodes' status (`FaultTiming.new_leader_s`).

The clients are a small raw AMQP 0-9-1 client on asyncio (frames marshalled by pamqp), on an
event loop in a thread of their own, so a synchronous test drives the faults meanwhile:

    checker = Checker([node.amqp_url for node in cluster.nodes.values()]).start()
    checker.wait_confirmed(500)                 # load is flowing
    fault = checker.mark_fault("kill9-leader", node=leader)
    cluster.kill9(leader)
    checker.wait_recovered(fault, timeout=10)
    result = checker.finish()                   # stop publishing, drain, count
    assert result.ok, result.describe()

`python -m compat_tests.checker URL [URL ...] --seconds 10` runs it against running brokers.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import collections
import contextlib
import itertools
import secrets
import struct
import threading
import time
import urllib.parse
from array import array
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pamqp import commands, heartbeat
from pamqp import frame as pframe
from pamqp import header as pheader
from pamqp.body import ContentBody

T = TypeVar("T")

CHANNEL = 1
_FRAME_HEADER = struct.Struct(">BHI")


class LinkError(Exception):
    """The connection failed: refused, closed, reset, timed out, or closed by the broker."""


# -- the client -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Address:
    host: str
    port: int
    user: str = "guest"
    password: str = "guest"
    vhost: str = "/"

    @classmethod
    def parse(cls, url: str) -> Address:
        p = urllib.parse.urlsplit(url)
        path = p.path[1:] if p.path.startswith("/") else p.path
        return cls(
            p.hostname or "127.0.0.1",
            p.port or 5672,
            urllib.parse.unquote(p.username or "guest"),
            urllib.parse.unquote(p.password or "guest"),
            urllib.parse.unquote(path) if path else "/",
        )


class Link(asyncio.Protocol):
    """One AMQP connection with one channel (1). Confirms and deliveries go to callbacks as
    they arrive; other methods answer `call`. Any failure closes the whole connection, once,
    and `lost` is then set with the reason."""

    def __init__(self, heartbeat_s: int) -> None:
        self.transport: asyncio.Transport | None = None
        self.heartbeat_s = heartbeat_s
        self.on_confirm: Callable[[int, bool, bool], None] = lambda tag, multiple, ack: None
        self.on_delivery: Callable[[int, bytes, bool], None] = lambda tag, body, redeliv: None
        self.lost: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.last_heard = time.monotonic()
        self._buf = bytearray()
        self._replies: asyncio.Queue[Any] = asyncio.Queue()
        self._delivery: tuple[int, bool] | None = None
        self._body_left = 0
        self._body: list[bytes] = []
        self._tasks: list[asyncio.Task[None]] = []

    # -- opening, calling, closing ------------------------------------------------------

    @classmethod
    async def open(cls, address: Address, timeout: float, heartbeat_s: int = 1) -> Link:
        loop = asyncio.get_running_loop()
        try:
            _, link = await asyncio.wait_for(
                loop.create_connection(lambda: cls(heartbeat_s), address.host, address.port),
                timeout,
            )
        except (OSError, TimeoutError) as exc:
            raise LinkError(f"connect to {address.port}: {exc!r}") from None
        try:
            await asyncio.wait_for(link._handshake(address), timeout)
        except (TimeoutError, LinkError) as exc:
            link.abort(f"handshake: {exc!r}")
            raise LinkError(f"handshake with {address.port}: {exc!r}") from None
        return link

    async def _handshake(self, a: Address) -> None:
        self.write(pheader.ProtocolHeader().marshal())
        await self._reply(commands.Connection.Start)
        self.send(
            commands.Connection.StartOk(
                client_properties={
                    "product": "compat_tests.checker",
                    "capabilities": {"publisher_confirms": True, "basic.nack": True},
                },
                mechanism="PLAIN",
                response=f"\0{a.user}\0{a.password}",
            ),
            0,
        )
        tune = await self._reply(commands.Connection.Tune)
        self.send(
            commands.Connection.TuneOk(
                channel_max=tune.channel_max, frame_max=tune.frame_max, heartbeat=self.heartbeat_s
            ),
            0,
        )
        self.send(commands.Connection.Open(virtual_host=a.vhost), 0)
        await self._reply(commands.Connection.OpenOk)
        await self.call(commands.Channel.Open(), commands.Channel.OpenOk)
        if self.heartbeat_s:
            self._tasks.append(asyncio.get_running_loop().create_task(self._beat()))

    async def call(self, method: Any, expect: type[T], timeout: float = 10.0) -> T:
        self.send(method, CHANNEL)
        try:
            return await asyncio.wait_for(self._reply(expect), timeout)
        except TimeoutError:
            self.abort(f"no {expect.__name__} within {timeout} s")
            raise LinkError(f"no {expect.__name__} within {timeout} s") from None

    async def _reply(self, expect: type[T]) -> T:
        reply = await self._replies.get()
        if reply is None:
            raise LinkError(self.lost.result() if self.lost.done() else "closed")
        if not isinstance(reply, expect):
            self.abort(f"expected {expect.__name__}, got {reply!r}")
            raise LinkError(f"expected {expect.__name__}, got {reply!r}")
        return reply

    def send(self, method: Any, channel: int = CHANNEL) -> None:
        self.write(pframe.marshal(method, channel))

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    @property
    def alive(self) -> bool:
        return not self.lost.done()

    def abort(self, reason: str) -> None:
        """Drop the connection at once (the broker sees a reset)."""
        self._fail(reason)
        if self.transport is not None:
            self.transport.abort()

    async def close(self, timeout: float = 2.0) -> None:
        """Close politely when possible (what is unacked returns to the queue at once)."""
        if self.alive:
            self.send(commands.Connection.Close(200, "bye", 0, 0), 0)
            with contextlib.suppress(TimeoutError, LinkError):
                await asyncio.wait_for(self._reply(commands.Connection.CloseOk), timeout)
        self.abort("closed by the checker")

    async def _beat(self) -> None:
        frame = pframe.marshal(heartbeat.Heartbeat(), 0)
        while self.alive:
            self.write(frame)
            await asyncio.sleep(self.heartbeat_s / 2)

    def _fail(self, reason: str) -> None:
        if not self.lost.done():
            self.lost.set_result(reason)
            self._replies.put_nowait(None)
            for task in self._tasks:
                task.cancel()

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(f"connection lost: {exc!r}" if exc else "closed by the broker")

    def data_received(self, data: bytes) -> None:
        self.last_heard = time.monotonic()
        buf = self._buf
        buf += data
        pos = 0
        try:
            while len(buf) - pos >= 8:
                _, channel, size = _FRAME_HEADER.unpack_from(buf, pos)
                end = pos + 8 + size
                if end > len(buf):
                    break
                _, _, value = pframe.unmarshal(bytes(buf[pos:end]))
                pos = end
                self._frame(value)
        except Exception as exc:  # a frame we cannot read, or the broker closing us
            self.abort(str(exc))
        del buf[:pos]

    def _frame(self, value: Any) -> None:
        if isinstance(value, ContentBody):
            if self._delivery is not None:
                self._body.append(value.value)
                self._body_left -= len(value.value)
                if self._body_left <= 0:
                    self._delivered()
        elif isinstance(value, pheader.ContentHeader):
            if self._delivery is not None:
                self._body_left = value.body_size
                self._body = []
                if self._body_left == 0:
                    self._delivered()
        elif isinstance(value, commands.Basic.Ack | commands.Basic.Nack):
            self.on_confirm(
                value.delivery_tag, value.multiple, isinstance(value, commands.Basic.Ack)
            )
        elif isinstance(value, commands.Basic.Deliver):
            self._delivery = (value.delivery_tag, value.redelivered)
        elif isinstance(value, heartbeat.Heartbeat):
            self.write(pframe.marshal(heartbeat.Heartbeat(), 0))
        elif isinstance(value, commands.Connection.Close):
            self.write(pframe.marshal(commands.Connection.CloseOk(), 0))
            raise LinkError(
                f"connection closed by the broker: {value.reply_code} {value.reply_text}"
            )
        elif isinstance(value, commands.Channel.Close):
            raise LinkError(f"channel closed by the broker: {value.reply_code} {value.reply_text}")
        elif isinstance(value, commands.Basic.Cancel):
            raise LinkError(f"consumer cancelled by the broker: {value.consumer_tag}")
        elif isinstance(value, commands.Basic.Return):
            self._delivery = None  # its content frames follow: skip them
        elif isinstance(value, commands.Connection.Blocked | commands.Connection.Unblocked):
            pass
        else:
            self._replies.put_nowait(value)

    def _delivered(self) -> None:
        assert self._delivery is not None
        tag, redelivered = self._delivery
        self._delivery = None
        self.on_delivery(tag, b"".join(self._body), redelivered)


# -- results ----------------------------------------------------------------------------


@dataclass
class FaultTiming:
    kind: str
    node: int | None
    at: float
    #: from the fault to the first confirm of a message first published after it
    first_confirm_s: float | None = None
    #: from the fault to a new leader (set by the test, which watches the nodes)
    new_leader_s: float | None = None
    #: the longest stretch without any confirm, from the fault until the end of its window
    max_gap_s: float | None = None
    #: per publisher: the first sequence number it sent after the fault
    marks: dict[int, int] = field(default_factory=dict)

    def describe(self) -> str:
        def ms(v: float | None) -> str:
            return "-" if v is None else f"{v * 1000:.0f} ms"

        return (
            f"{self.kind} (node {self.node}): first confirm after {ms(self.first_confirm_s)}, "
            f"new leader after {ms(self.new_leader_s)}, longest confirm gap {ms(self.max_gap_s)}"
        )


@dataclass
class Result:
    published: int
    confirmed: int
    delivered: int
    deliveries: int
    lost: list[str]
    unexpected: list[str]
    in_doubt: int
    nacks: int
    reconnects: int
    faults: list[FaultTiming]
    drained: bool
    events: list[str]

    @property
    def duplicates(self) -> int:
        return self.deliveries - self.delivered

    @property
    def ok(self) -> bool:
        return not self.lost and not self.unexpected and self.drained

    def describe(self) -> str:
        lines = [
            f"published {self.published}, confirmed {self.confirmed}, delivered {self.delivered} "
            f"({self.deliveries} deliveries, {self.duplicates} duplicates), LOST {len(self.lost)}, "
            f"UNEXPECTED {len(self.unexpected)}, in doubt {self.in_doubt}, nacks {self.nacks}, "
            f"reconnects {self.reconnects}, drained {self.drained}"
        ]
        if self.lost:
            lines.append(f"lost (first 20): {self.lost[:20]}")
        if self.unexpected:
            lines.append(f"unexpected (first 20): {self.unexpected[:20]}")
        lines.extend(e for e in self.events if e.startswith("drain incomplete"))
        lines.extend(f.describe() for f in self.faults)
        return "\n".join(lines)


# -- the checker ------------------------------------------------------------------------


class _Publisher:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.next_seq = 1  # the next new message; 1..next_seq-1 were all sent at least once
        #: delivery tag -> (seq, when sent), in tag order
        self.outstanding: collections.OrderedDict[int, tuple[int, float]] = (
            collections.OrderedDict()
        )
        self.retry: collections.deque[int] = collections.deque()
        self.confirmed: set[int] = set()
        self.tag = 0


class Checker:
    """See the module docstring. Every public method is called from the test's thread."""

    def __init__(
        self,
        urls: Iterable[str],
        queue: str | None = None,
        *,
        publishers: int = 3,
        consumers: int = 3,
        rate: float = 2000.0,
        window: int = 200,
        body_size: int = 200,
        prefetch: int = 200,
        connect_timeout: float = 2.0,
        silent_after: float = 4.0,
        confirm_timeout: float = 20.0,
    ) -> None:
        self.addresses = [Address.parse(u) for u in urls]
        assert self.addresses, "no broker to talk to"
        self.run = secrets.token_hex(3)
        self.queue = queue or f"checker-{self.run}"
        self.n_publishers = publishers
        self.n_consumers = consumers
        self.rate = rate
        self.window = window
        self.body_size = body_size
        self.prefetch = prefetch
        self.connect_timeout = connect_timeout
        self.silent_after = silent_after
        self.confirm_timeout = confirm_timeout
        self.publishers = [_Publisher(i) for i in range(publishers)]
        self.delivered: collections.Counter[tuple[int, int]] = collections.Counter()
        self.unexpected: list[str] = []
        self.confirm_times = array("d")
        self.faults: list[FaultTiming] = []
        self.events: list[str] = []
        self.nacks = 0
        self.reconnects = 0
        self.confirmed_count = 0
        self._publishing = True
        self._consuming = True
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="checker", daemon=True)
        self._tasks: list[asyncio.Future[None]] = []
        self._links: set[Link] = set()
        self._started_at = 0.0
        self._prefix = f"{self.run}:".encode()
        #: the nodes' ready counts when the drain gave up (by AMQP port)
        self.counts_at_end: dict[int, int | str] = {}
        self._publish_method = pframe.marshal(
            commands.Basic.Publish(routing_key=self.queue), CHANNEL
        )
        #: confirmed and not delivered yet (the drain waits for it to empty)
        self._awaiting: set[tuple[int, int]] = set()
        #: faults whose first confirm after them has not come yet
        self._awaiting_recovery: list[FaultTiming] = []

    # -- from the test's thread ----------------------------------------------------------

    def start(self, timeout: float = 30.0) -> Checker:
        self._thread.start()
        self._started_at = time.monotonic()
        self._run(self._declare(), timeout)
        for c in range(self.n_consumers):
            self._spawn(self._consume(c))
        for p in self.publishers:
            self._spawn(self._publish(p))
        return self

    def mark_fault(self, kind: str, node: int | None = None) -> FaultTiming:
        """Note a fault happening now (call it right before causing it)."""
        fault = FaultTiming(kind, node, time.monotonic())
        # Read on the test's thread: a message numbered from the mark on is given its number
        # (and so sent) after this point; one just below it may still be on its way out.
        fault.marks = {p.pid: p.next_seq for p in self.publishers}
        self.faults.append(fault)
        self._loop.call_soon_threadsafe(self._awaiting_recovery.append, fault)
        return fault

    def wait_recovered(self, fault: FaultTiming, timeout: float = 10.0) -> float:
        """Wait for the first confirm of a message published after `fault`; its delay."""
        self._wait(
            lambda: fault.first_confirm_s is not None, timeout, f"a confirm after {fault.kind}"
        )
        assert fault.first_confirm_s is not None
        return fault.first_confirm_s

    def wait_confirmed(self, more: int, timeout: float = 30.0) -> None:
        """Wait until `more` further messages are confirmed (the load is flowing)."""
        target = self.confirmed_count + more
        self._wait(lambda: self.confirmed_count >= target, timeout, f"{more} more confirms")

    def finish(self, timeout: float = 60.0) -> Result:
        """Stop publishing (waiting for what is outstanding), drain the queue, and count."""
        deadline = time.monotonic() + timeout
        self._loop.call_soon_threadsafe(self._stop_publishing)
        # Publishers end by themselves once nothing they sent is unresolved (or on timeout).
        try:
            self._run(self._publishers_done(deadline), timeout)
        except TimeoutError:
            self.events.append("publishers: not every message resolved before the deadline")
        drained = self._drain(deadline)
        self._loop.call_soon_threadsafe(self._stop_consuming)
        with contextlib.suppress(TimeoutError):
            self._run(self._all_done(), 10.0)
        self.close()
        return self.result(drained)

    def close(self) -> None:
        if self._thread.is_alive():
            with contextlib.suppress(TimeoutError, RuntimeError):
                self._run(self._cancel_all(), 10.0)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10.0)
        if not self._loop.is_running():
            self._loop.close()

    def result(self, drained: bool = True) -> Result:
        delivered = self.delivered
        lost: list[str] = []
        published = 0
        in_doubt = 0
        sent_upto = {}
        for p in self.publishers:
            sent = p.next_seq - 1
            sent_upto[p.pid] = sent
            published += sent
            for seq in sorted(p.confirmed):
                if (p.pid, seq) not in delivered:
                    lost.append(f"{p.pid}:{seq}")
            for seq in range(1, sent + 1):
                if seq not in p.confirmed and (p.pid, seq) not in delivered:
                    in_doubt += 1
        unexpected = list(self.unexpected)
        for (pid, seq), _ in delivered.items():
            if not 1 <= seq <= sent_upto.get(pid, 0):
                unexpected.append(f"{pid}:{seq}")
        for fault in self.faults:
            fault.max_gap_s = self._max_gap(fault.at, self._fault_end(fault))
        return Result(
            published=published,
            confirmed=sum(len(p.confirmed) for p in self.publishers),
            delivered=len(delivered),
            deliveries=sum(delivered.values()),
            lost=lost,
            unexpected=unexpected,
            in_doubt=in_doubt,
            nacks=self.nacks,
            reconnects=self.reconnects,
            faults=list(self.faults),
            drained=drained,
            events=list(self.events),
        )

    def _fault_end(self, fault: FaultTiming) -> float:
        later = [f.at for f in self.faults if f.at > fault.at]
        return min(later) if later else (self.confirm_times[-1] if self.confirm_times else fault.at)

    def _max_gap(self, start: float, end: float) -> float | None:
        times = self.confirm_times
        i = bisect.bisect_right(times, start)
        j = bisect.bisect_right(times, end)
        if i >= len(times):
            return None
        gap = times[i] - start
        for k in range(i + 1, j):
            gap = max(gap, times[k] - times[k - 1])
        return gap

    def _drain(self, deadline: float) -> bool:
        """Consumers go on until every confirmed message was delivered and no node holds a
        ready message; the counts on each node come from a passive declare."""

        try:
            self._wait(
                lambda: not self._awaiting, max(0.1, deadline - time.monotonic()), "the drain"
            )
        except AssertionError as exc:
            self.events.append(f"drain incomplete: {len(self._awaiting)} confirmed not delivered")
            self.events.append(f"drain incomplete: {exc}")
            return False
        # Every node must agree that nothing is left: a node that still counts ready messages
        # (or does not answer) has a state of its own.
        while True:
            counts = self._run(self._ready_counts(), 60.0)
            if all(n == 0 for n in counts.values()):
                return True
            if time.monotonic() > deadline:
                self.events.append(f"drain incomplete: ready messages by node port: {counts}")
                self.counts_at_end = counts
                return False
            time.sleep(0.1)

    def _wait(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what}")
            time.sleep(0.005)

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        def create() -> None:
            self._tasks.append(self._loop.create_task(coro))

        self._loop.call_soon_threadsafe(create)

    def _note(self, text: str) -> None:
        self.events.append(f"{time.monotonic() - self._started_at:8.3f} {text}")

    # -- on the loop ---------------------------------------------------------------------

    def _stop_publishing(self) -> None:
        self._publishing = False

    def _stop_consuming(self) -> None:
        self._consuming = False

    async def _publishers_done(self, deadline: float) -> None:
        while (
            any(p.outstanding or p.retry for p in self.publishers) and time.monotonic() < deadline
        ):
            await asyncio.sleep(0.01)

    async def _all_done(self) -> None:
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _cancel_all(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for link in list(self._links):
            link.abort("checker closed")

    async def _connect(self, start: int, who: str) -> tuple[Link, int]:
        """A link to the first node that takes it, from `start` round the list."""
        for attempt in itertools.count():
            i = (start + attempt) % len(self.addresses)
            try:
                link = await Link.open(self.addresses[i], self.connect_timeout)
            except LinkError as exc:
                if attempt % len(self.addresses) == len(self.addresses) - 1:
                    self._note(f"{who}: no node takes a connection ({exc})")
                await asyncio.sleep(0.05)
                continue
            self._links.add(link)
            link.lost.add_done_callback(lambda _, link=link: self._links.discard(link))
            return link, i
        raise AssertionError("unreachable")

    async def _watch(self, link: Link, who: str, stalled: Callable[[], str | None]) -> None:
        """Drop a link that went silent (a stopped node) or whose work stalled."""
        while link.alive:
            await asyncio.sleep(0.1)
            now = time.monotonic()
            if now - link.last_heard > self.silent_after:
                link.abort(f"silent for {now - link.last_heard:.1f} s")
            reason = stalled()
            if reason:
                link.abort(reason)

    async def _declare(self) -> None:
        link, _ = await self._connect(0, "declare")
        try:
            await link.call(
                commands.Queue.Declare(queue=self.queue, durable=True), commands.Queue.DeclareOk
            )
        finally:
            await link.close()

    async def _ready_counts(self) -> dict[int, int | str]:
        """Each node's count of ready messages in the queue (a passive declare), by port; a
        node that does not answer is reported as such."""
        counts: dict[int, int | str] = {}
        for address in self.addresses:
            try:
                link = await Link.open(address, self.connect_timeout)
            except LinkError as exc:
                counts[address.port] = f"down ({exc})"
                continue
            try:
                ok = await link.call(
                    commands.Queue.Declare(queue=self.queue, durable=True, passive=True),
                    commands.Queue.DeclareOk,
                    timeout=5.0,
                )
                counts[address.port] = ok.message_count
            except LinkError as exc:
                counts[address.port] = f"no answer ({exc})"
            finally:
                await link.close()
        return counts

    # publishers

    def _frames(self, pid: int, seq: int) -> bytes:
        body = b"%s%d:%d:" % (self._prefix, pid, seq)
        body = body.ljust(self.body_size, b".")
        return (
            self._publish_method
            + pframe.marshal(
                pheader.ContentHeader(0, len(body), commands.Basic.Properties(delivery_mode=2)),
                CHANNEL,
            )
            + pframe.marshal(ContentBody(body), CHANNEL)
        )

    async def _publish(self, p: _Publisher) -> None:
        per_publisher = self.rate / max(1, self.n_publishers)
        home = p.pid
        while self._publishing or p.outstanding or p.retry:
            link, home = await self._connect(home, f"publisher {p.pid}")
            try:
                await link.call(commands.Confirm.Select(), commands.Confirm.SelectOk)
            except LinkError:
                link.abort("confirm.select failed")
                continue
            p.tag = 0
            link.on_confirm = lambda tag, multiple, ack, p=p: self._confirmed(p, tag, multiple, ack)

            def stalled(p: _Publisher = p) -> str | None:
                if p.outstanding:
                    _, (_, sent) = next(iter(p.outstanding.items()))
                    if time.monotonic() - sent > self.confirm_timeout:
                        return f"no confirm for {self.confirm_timeout} s"
                return None

            watcher = asyncio.get_running_loop().create_task(
                self._watch(link, f"publisher {p.pid}", stalled)
            )
            try:
                await self._publish_on(p, link, per_publisher)
            finally:
                watcher.cancel()
            # Whatever was not confirmed on that link goes again on the next.
            if link.alive:
                await link.close()
            unresolved = [seq for seq, _ in p.outstanding.values()]
            p.outstanding.clear()
            p.retry.extendleft(reversed(unresolved))
            if self._publishing or p.retry:
                self.reconnects += 1
                self._note(f"publisher {p.pid} lost its link: {link.lost.result()}")
            home += 1

    async def _publish_on(self, p: _Publisher, link: Link, rate: float) -> None:
        last = time.monotonic()
        budget = 0.0
        while link.alive and (self._publishing or p.outstanding or p.retry):
            await asyncio.sleep(0.005)
            now = time.monotonic()
            budget = min(budget + (now - last) * rate, rate * 0.05 + 1)
            last = now
            room = self.window - len(p.outstanding)
            out = []
            while room > 0 and p.retry:  # again: not bound by the rate
                seq = p.retry.popleft()
                out.append(self._send(p, seq, now))
                room -= 1
            while room > 0 and budget >= 1 and self._publishing:
                seq = p.next_seq
                p.next_seq += 1
                out.append(self._send(p, seq, now))
                room -= 1
                budget -= 1
            if out:
                link.write(b"".join(out))

    def _send(self, p: _Publisher, seq: int, now: float) -> bytes:
        p.tag += 1
        p.outstanding[p.tag] = (seq, now)
        return self._frames(p.pid, seq)

    def _confirmed(self, p: _Publisher, tag: int, multiple: bool, ack: bool) -> None:
        now = time.monotonic()
        settled: list[int] = []
        if multiple:
            while p.outstanding:
                first = next(iter(p.outstanding))
                if first > tag:
                    break
                settled.append(p.outstanding.pop(first)[0])
        else:
            item = p.outstanding.pop(tag, None)
            if item is not None:
                settled.append(item[0])
        if not ack:
            self.nacks += len(settled)
            p.retry.extend(settled)
            return
        for seq in settled:
            if seq not in p.confirmed:
                p.confirmed.add(seq)
                self.confirmed_count += 1
                if (p.pid, seq) not in self.delivered:
                    self._awaiting.add((p.pid, seq))
        if settled:
            self.confirm_times.append(now)
            if self._awaiting_recovery:
                newest = max(settled)
                for fault in list(self._awaiting_recovery):
                    if newest >= fault.marks.get(p.pid, 1 << 62):
                        fault.first_confirm_s = now - fault.at
                        self._awaiting_recovery.remove(fault)

    # consumers

    async def _consume(self, cid: int) -> None:
        home = cid
        while self._consuming:
            link, home = await self._connect(home, f"consumer {cid}")
            unacked: list[int] = []
            link.on_delivery = lambda tag, body, redelivered, u=unacked: self._delivery(
                u, tag, body
            )
            watcher = asyncio.get_running_loop().create_task(
                self._watch(link, f"consumer {cid}", lambda: None)
            )
            try:
                await link.call(
                    commands.Basic.Qos(prefetch_count=self.prefetch), commands.Basic.QosOk
                )
                await link.call(
                    commands.Queue.Declare(queue=self.queue, durable=True, passive=True),
                    commands.Queue.DeclareOk,
                )
                await link.call(
                    commands.Basic.Consume(queue=self.queue, consumer_tag=f"c{cid}"),
                    commands.Basic.ConsumeOk,
                )
                while link.alive and self._consuming:
                    if unacked:
                        link.send(commands.Basic.Ack(delivery_tag=unacked[-1], multiple=True))
                        unacked.clear()
                    await asyncio.sleep(0.01)
                if link.alive:
                    if unacked:
                        link.send(commands.Basic.Ack(delivery_tag=unacked[-1], multiple=True))
                    await link.close()
                    return
            except LinkError:
                pass
            finally:
                watcher.cancel()
            if self._consuming:
                self.reconnects += 1
                self._note(f"consumer {cid} lost its link: {link.lost.result()}")
            home += 1

    def _delivery(self, unacked: list[int], tag: int, body: bytes) -> None:
        unacked.append(tag)
        try:
            run, pid, seq, _ = body.split(b":", 3)
            if run != self._prefix[:-1]:
                raise ValueError("another run's message")
            key = (int(pid), int(seq))
            self.delivered[key] += 1
            self._awaiting.discard(key)
        except ValueError:
            self.unexpected.append(body[:60].decode("ascii", "replace"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("urls", nargs="+")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=2000.0)
    args = parser.parse_args(argv)
    checker = Checker(args.urls, rate=args.rate).start()
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        time.sleep(1.0)
        print(f"confirmed {checker.confirmed_count}, delivered {len(checker.delivered)}")
    result = checker.finish()
    print(result.describe())
    return 0 if result.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
