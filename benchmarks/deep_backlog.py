#!/usr/bin/env python3
"""Deep-backlog benchmark (issue 12): one durable queue filled with millions of messages.

Runs against any AMQP 0-9-1 broker URL (ours, RabbitMQ with classic or quorum queues), so the
numbers compare directly. See benchmarks/README.md, "Deep backlogs".

Mode `backlog` (the default):
  fill     publish --count persistent messages (1 KiB by default) to one durable queue, one
           connection with publisher confirms (at most --confirm-window unconfirmed); the rate
           of each slice of the fill (--slices) shows whether publishing slows as the backlog
           grows. With --pid, the broker's RSS (VmRSS of /proc/PID/status) at each --marks
           count and per waiting message. The fill stops early, and says so, when the RSS
           passes --max-rss-mb.
  restart  with --restart-cmd: a shell command that kill -9's the broker and starts it again
           in the background; timed from the command's start until the first delivery from
           the queue (connect and consume retried until then). --pid-cmd prints the new pid.
  drain    the whole backlog with manual acks and --prefetch per consumer: the first
           --drain-split of it with one consumer, the rest with --drain-consumers (the first
           one carries on and the others join it; one connection each, one process). Every
           message is checked off by the sequence number at the start of its body: a lost or
           duplicated message fails the run.
Mode `fanout`: the publish rate over MQTT (QoS 1, --fanout-window PUBACKs outstanding) with no
  subscriber, with one offline durable session subscribed to `#` at QoS 1, and with
  --fanout-sessions of them (connect clean_session=0, subscribe, disconnect); the sessions are
  removed again at the end (reconnect with clean_session=1).
Mode `all`: backlog, then fanout.

A one-line summary ends the text output; --json prints a JSON document on stdout (text on
stderr). Exit status 0 when every step passed its checks, 1 otherwise, 2 when the broker could
not be reached at all.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import struct
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, TypeVar

from amqp_bench import redact, run_loop, wait_flag
from mqtt_bench import publish_packet
from mqtt_fleet import connect as mqtt_connect
from mqtt_fleet import raise_fd_limit, rss_kb
from pamqp import commands
from rawamqp import AMQPError, Connection, ack_frame, build_publish_frames, now

T = TypeVar("T")

#: the first bytes of every body: the message's sequence number in the fill (0-based)
SEQ = struct.Struct(">Q")
MIB = 1024 * 1024
#: sessions whose CONNECT/SUBSCRIBE run at once while the fan-out sessions are made
SESSION_CONCURRENCY = 100
FANOUT_TOPIC = "deep/fanout"
#: seconds a restarted broker that takes connections may answer "no such queue" (still
#: recovering it) before the queue counts as lost
NOT_FOUND_GRACE = 30.0
#: seconds without a new message after which a drain fails (messages missing)
STALL_S = 60.0


@dataclass
class Config:
    """Everything the run needs, from the command line."""

    url: str
    count: int
    size: int
    queue: str
    queue_args: dict[str, Any]
    confirm_window: int
    prefetch: int
    slices: int
    marks: list[int]
    pid: int | None
    pid_cmd: str | None
    restart_cmd: str | None
    restart_timeout: float
    settle: float
    drain_split: float
    drain_consumers: int
    max_rss_mb: int
    timeout: float
    mqtt: SimpleNamespace
    fanout_sessions: int
    fanout_seconds: float
    fanout_count: int
    fanout_window: int
    uvloop: bool


@dataclass
class Report:
    """What the run measured, printed as text lines and as JSON."""

    backlog: dict[str, Any] = field(default_factory=dict)
    fanout: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def say(line: str) -> None:
    """Progress and results go to stderr with --json, stdout otherwise (set in main)."""
    print(line, file=OUT, flush=True)


OUT = sys.stdout


def rss_mib(pid: int | None) -> float | None:
    """The broker's resident set, MiB; None without a pid or once the process is gone."""
    if not pid:
        return None
    try:
        return round(rss_kb(pid) / 1024, 1)
    except (OSError, RuntimeError):
        return None


def human(n: int) -> str:
    """1000000 -> 1M, 250000 -> 250k: counts in the text output."""
    if n >= 1_000_000 and n % 100_000 == 0:
        return f"{n / 1_000_000:g}M"
    if n >= 1000 and n % 100 == 0:
        return f"{n / 1000:g}k"
    return str(n)


# ------------------------------------------------------------------------- AMQP helpers
async def with_connection(cfg: Config, op: Callable[[Connection], Awaitable[T]]) -> T:
    conn = await Connection.open(cfg.url, timeout=10.0)
    try:
        return await op(conn)
    finally:
        await conn.close()


async def declare(conn: Connection, cfg: Config, passive: bool = False) -> int:
    """Declare the durable queue (or look it up); returns its ready-message count."""
    ok = await conn.call(
        commands.Queue.Declare(
            queue=cfg.queue,
            durable=True,
            passive=passive,
            arguments=None if passive else (cfg.queue_args or None),
        ),
        commands.Queue.DeclareOk,
        timeout=60.0,
    )
    return int(ok.message_count or 0)


async def purge(conn: Connection, cfg: Config) -> None:
    await conn.call(commands.Queue.Purge(queue=cfg.queue), commands.Queue.PurgeOk, timeout=600.0)


async def delete(conn: Connection, cfg: Config) -> None:
    await conn.call(commands.Queue.Delete(queue=cfg.queue), commands.Queue.DeleteOk, timeout=600.0)


# -------------------------------------------------------------------------------- fill
class Filler:
    """One publishing connection with a bounded confirm window, watched slice by slice.

    Tags are confirmed in any order (one at a time or `multiple`), so each tag has a state
    byte; `low` is the lowest tag not yet confirmed.
    """

    def __init__(self, cfg: Config, conn: Connection) -> None:
        self.cfg = cfg
        self.conn = conn
        self.sent = 0
        self.acked = 0
        self.nacked = 0
        self.stop_reason = ""
        self.slices: list[dict[str, Any]] = []
        self.marks: list[dict[str, Any]] = []
        self._state = bytearray(cfg.count + 1)
        self._low = 1
        self._progress = asyncio.Event()
        self._slice_size = max(1, cfg.count // cfg.slices)
        self._next_slice = self._slice_size
        self._slice_start = (0, 0.0)
        self._pending_marks = sorted(m for m in cfg.marks if m <= cfg.count)
        self.rss_empty: float | None = None
        conn.on_confirm = self._on_confirm
        conn.on_failure = lambda exc: self._progress.set()

    def _on_confirm(self, tag: int, multiple: bool, is_ack: bool) -> None:
        if tag < 1 or tag > self.sent:
            return
        state = self._state
        newly = 0
        for tg in range(self._low, tag + 1) if multiple else (tag,):
            if not state[tg]:
                state[tg] = 1
                newly += 1
        if is_ack:
            self.acked += newly
        else:
            self.nacked += newly
        low = self._low
        while low <= self.sent and state[low]:
            low += 1
        self._low = low
        self._checkpoints()
        self._progress.set()

    def _checkpoints(self) -> None:
        """Slice rates and RSS marks, by confirmed (accepted) messages."""
        done = self.acked + self.nacked
        t = now()
        while done >= self._next_slice and self._next_slice <= self.cfg.count:
            first, start = self._slice_start
            n = self._next_slice - first
            piece: dict[str, Any] = {
                "upto": self._next_slice,
                "msg_per_s": round(n / max(1e-9, t - start), 1),
                "rss_mib": rss_mib(self.cfg.pid),
            }
            self.slices.append(piece)
            say(
                f"  fill to {human(self._next_slice):>6}: {piece['msg_per_s']:>9.0f} msg/s"
                + (f"   RSS {piece['rss_mib']:.0f} MiB" if piece["rss_mib"] is not None else "")
            )
            self._slice_start = (self._next_slice, t)
            self._next_slice += self._slice_size
        while self._pending_marks and done >= self._pending_marks[0]:
            self.mark(self._pending_marks.pop(0))

    def mark(self, count: int) -> None:
        """The broker's RSS now, with `count` messages waiting."""
        rss = rss_mib(self.cfg.pid)
        entry: dict[str, Any] = {"messages": count, "rss_mib": rss}
        if rss is not None:
            entry["bytes_per_msg"] = round(rss * MIB / count)
            if self.rss_empty is not None:
                entry["bytes_per_msg_over_empty"] = round((rss - self.rss_empty) * MIB / count)
        self.marks.append(entry)

    async def _watch_rss(self) -> None:
        """Stop the fill before the broker eats the machine."""
        while self.sent < self.cfg.count and not self.stop_reason:
            rss = rss_mib(self.cfg.pid)
            if rss is not None and rss > self.cfg.max_rss_mb:
                self.stop_reason = f"broker RSS {rss:.0f} MiB > --max-rss-mb {self.cfg.max_rss_mb}"
                self._progress.set()
                return
            await asyncio.sleep(0.5)

    async def run(self) -> float:
        """Publish until --count are confirmed (or the RSS guard stops it); returns seconds."""
        cfg, conn = self.cfg, self.conn
        await conn.call(commands.Confirm.Select(), commands.Confirm.SelectOk)
        prefix, suffix = build_publish_frames(cfg.queue, cfg.size, conn.frame_max)
        suffix = suffix[SEQ.size :]  # the sequence number replaces the first filler bytes
        pack = SEQ.pack
        self.rss_empty = rss_mib(cfg.pid)
        start = now()
        self._slice_start = (0, start)
        deadline = start + cfg.timeout
        watcher = asyncio.create_task(self._watch_rss()) if cfg.pid else None

        def room() -> int:
            unconfirmed = self.sent - self.acked - self.nacked
            return min(cfg.confirm_window - unconfirmed, cfg.count - self.sent)

        try:
            while self.sent < cfg.count and not self.stop_reason:
                await wait_flag(
                    self._progress,
                    lambda: room() > 0 or conn.error is not None or bool(self.stop_reason),
                    deadline,
                    lambda: f"confirms ({self.acked} of {self.sent} sent)",
                )
                if conn.error is not None:
                    raise conn.error
                if self.stop_reason:
                    break
                n, first = room(), self.sent
                conn.write(b"".join(prefix + pack(seq) + suffix for seq in range(first, first + n)))
                self.sent += n
                await conn.writable(max(0.001, deadline - now()))
            await wait_flag(
                self._progress,
                lambda: self.acked + self.nacked == self.sent or conn.error is not None,
                deadline,
                lambda: f"the last confirms ({self.acked} of {self.sent} sent)",
            )
            if conn.error is not None:
                raise conn.error
        finally:
            if watcher is not None:
                watcher.cancel()
        return now() - start


# ----------------------------------------------------------------------------- restart
def run_shell(cmd: str, timeout: float) -> str:
    """Run a user-given shell command; its stdout is returned, its stderr passes through."""
    done = subprocess.run(
        cmd,
        shell=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        timeout=timeout,
        check=True,
        text=True,
    )
    return done.stdout


async def first_delivery(cfg: Config, deadline: float) -> dict[str, float]:
    """Connect, consume and take one message, retrying until the broker serves it.

    Returns the times (of `now()`) of the first accepted connection and of the first
    delivery, and the queue's depth just before it; the message is not acked: it goes back
    to the queue for the drain.
    """
    connected_at = 0.0
    last_error = ""
    while now() < deadline:
        try:
            conn = await Connection.open(cfg.url, timeout=5.0)
        except (OSError, AMQPError, TimeoutError) as exc:
            last_error = f"{type(exc).__name__}: {exc}"
            await asyncio.sleep(0.1)
            continue
        connected_at = connected_at or now()
        got: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()

        def on_delivery(c: Connection, tag: int, head: bytes, got: Any = got) -> None:
            if not got.done():
                got.set_result((tag, head))

        conn.on_delivery = on_delivery
        try:
            depth = await declare(conn, cfg, passive=True)
            await conn.call(commands.Basic.Qos(prefetch_count=1), commands.Basic.QosOk)
            await conn.call(
                commands.Basic.Consume(queue=cfg.queue, consumer_tag="deep-first"),
                commands.Basic.ConsumeOk,
                timeout=max(1.0, deadline - now()),
            )
            await asyncio.wait_for(got, max(0.1, deadline - now()))
            return {"connected": connected_at, "delivered": now(), "depth": depth}
        except (AMQPError, TimeoutError) as exc:
            last_error = f"{type(exc).__name__}: {exc}"
            if "404" in last_error and now() - connected_at > NOT_FOUND_GRACE:
                raise AMQPError(f"the queue is gone after the restart ({last_error})") from None
            await asyncio.sleep(0.1)
        finally:
            await conn.close()  # close-ok: the broker has processed the ack
    raise AMQPError(f"no delivery within --restart-timeout ({last_error or 'no reply'})")


def check_off(seen: bytearray, head: bytes) -> int:
    """Mark a message received: 0 new, 1 duplicate, 2 not one of ours."""
    if len(head) < SEQ.size:
        return 2
    (seq,) = SEQ.unpack_from(head)
    if seq >= len(seen):
        return 2
    if seen[seq]:
        return 1
    seen[seq] = 1
    return 0


# ------------------------------------------------------------------------------- drain
class Drain:
    """Drain `total` distinct messages: one consumer until `split` are in, then more join.

    The first consumer carries on when the others join, so no channel closes while acks are
    in flight (a quorum queue may then redeliver messages that were acked just before the
    close). A message is counted once, by its sequence number; a second delivery of one is
    acked and counted as a duplicate.
    """

    def __init__(self, cfg: Config, total: int, split: int, seen: bytearray) -> None:
        self.cfg = cfg
        self.total = total
        self.split = split
        self.seen = seen
        self.conns: list[Connection] = []
        self.unique = 0
        self.duplicates = 0
        self.unknown = 0
        self.out_of_order = 0  # while one consumer drains alone
        self._last_seq = -1
        self.progress = asyncio.Event()

    def _on_delivery(self, conn: Connection, tag: int, head: bytes) -> None:
        conn.write(ack_frame(tag, False))
        verdict = check_off(self.seen, head)
        if verdict == 1:
            self.duplicates += 1
        elif verdict == 2:
            self.unknown += 1
        else:
            self.unique += 1
            if len(self.conns) == 1:
                (seq,) = SEQ.unpack_from(head)
                if seq < self._last_seq:
                    self.out_of_order += 1
                self._last_seq = seq
            self.progress.set()

    async def _open(self) -> Connection:
        conn = await Connection.open(self.cfg.url, timeout=10.0)
        conn.on_delivery = self._on_delivery
        conn.on_failure = lambda exc: self.progress.set()
        await conn.call(commands.Basic.Qos(prefetch_count=self.cfg.prefetch), commands.Basic.QosOk)
        return conn

    async def _consume(self, conn: Connection) -> None:
        self.conns.append(conn)
        await conn.call(
            commands.Basic.Consume(queue=self.cfg.queue, consumer_tag=f"deep-{len(self.conns)}"),
            commands.Basic.ConsumeOk,
        )

    async def _until(self, count: int, deadline: float) -> None:
        """Until `count` distinct messages are in; a drain that stalls for STALL_S fails."""
        while self.unique < count:
            before = self.unique
            try:
                await wait_flag(
                    self.progress,
                    lambda: self.unique >= count or any(c.error for c in self.conns),
                    min(deadline, now() + STALL_S),
                    lambda: f"deliveries ({self.unique} of {self.total})",
                )
            except AMQPError:
                if self.unique == before or now() >= deadline:
                    raise
            for c in self.conns:
                if c.error is not None:
                    raise c.error

    async def run(self) -> list[dict[str, Any]]:
        """Both phases; per phase: consumers, messages, seconds, client CPU share."""
        cfg = self.cfg
        first = await self._open()
        others = [await self._open() for _ in range(cfg.drain_consumers - 1)]
        phases: list[dict[str, Any]] = []
        try:
            t0, cpu0 = now(), time.process_time()
            await self._consume(first)
            await self._until(self.split, t0 + cfg.timeout)
            t1, cpu1 = now(), time.process_time()
            if self.split:
                phases.append(phase(1, self.split, t1 - t0, cpu1 - cpu0))
            for conn in others:
                await self._consume(conn)
            await self._until(self.total, t1 + cfg.timeout)
            t2 = now()
            if self.total > self.split:
                n = len(self.conns)
                phases.append(
                    phase(n, self.total - self.split, t2 - t1, time.process_time() - cpu1)
                )
            return phases
        finally:
            await asyncio.gather(*(c.close() for c in [first, *others]), return_exceptions=True)


def phase(consumers: int, messages: int, seconds: float, cpu: float) -> dict[str, Any]:
    return {
        "consumers": consumers,
        "messages": messages,
        "seconds": round(seconds, 2),
        "msg_per_s": round(messages / max(1e-9, seconds), 1),
        "client_cpu": round(cpu / max(1e-9, seconds), 2),
    }


# ----------------------------------------------------------------------- backlog mode
async def backlog(cfg: Config, rep: Report) -> None:
    """Fill, (restart,) drain; every step's numbers go into rep.backlog."""
    out = rep.backlog
    pid = cfg.pid
    conn = await Connection.open(cfg.url, timeout=10.0)
    try:
        await declare(conn, cfg)
        await purge(conn, cfg)
        filler = Filler(cfg, conn)
        say(
            f"fill: {human(cfg.count)} x {cfg.size} B persistent, confirm window "
            f"{cfg.confirm_window}; broker RSS empty {filler_rss(pid)}"
        )
        seconds = await filler.run()
    finally:
        await conn.close()
    filled = filler.acked
    if filler.stop_reason and filled:
        filler.mark(filled)  # where the guard stopped it
    fill: dict[str, Any] = {
        "published": filled,
        "nacked": filler.nacked,
        "seconds": round(seconds, 2),
        "msg_per_s": round(filled / max(1e-9, seconds), 1),
        "rss_empty_mib": filler.rss_empty,
        "rss_full_mib": rss_mib(pid),
        "slices": filler.slices,
        "marks": filler.marks,
    }
    if filler.stop_reason:
        fill["stopped_early"] = filler.stop_reason
    out["fill"] = fill
    for m in filler.marks:
        say(
            f"  RSS at {human(m['messages'])} waiting: {m['rss_mib']:.0f} MiB = "
            f"{m['bytes_per_msg']} B/msg ({m.get('bytes_per_msg_over_empty', '?')} B/msg over "
            "the empty broker)"
        )
    say(
        f"fill: {filled} confirmed in {seconds:.1f} s = {fill['msg_per_s']:.0f} msg/s"
        + (f"; STOPPED EARLY: {filler.stop_reason}" if filler.stop_reason else "")
    )
    if filler.nacked:
        rep.errors.append(f"fill: {filler.nacked} messages nacked")
    depth = await with_connection(cfg, lambda c: declare(c, cfg, passive=True))
    out["depth_after_fill"] = depth
    if depth != filled:
        rep.errors.append(f"fill: queue holds {depth} messages, {filled} were confirmed")
    # The sequence numbers 0..sent-1 were published; only `filled` were confirmed, but a
    # message sent and not yet confirmed when the guard stopped the fill may be queued too.
    seen = bytearray(filler.sent)

    if cfg.restart_cmd:
        restart: dict[str, Any] = {}
        out["restart"] = restart
        if cfg.settle > 0:
            say(f"restart: {cfg.settle:g} s of idle broker first (--settle)")
            await asyncio.sleep(cfg.settle)
        restart["settle_s"] = cfg.settle
        say("restart: kill -9 and start again ...")
        t0 = now()
        run_shell(cfg.restart_cmd, cfg.restart_timeout)
        restart["command_s"] = round(now() - t0, 2)
        times = await first_delivery(cfg, t0 + cfg.restart_timeout)
        restart["to_connect_s"] = round(times["connected"] - t0, 2)
        restart["to_first_delivery_s"] = round(times["delivered"] - t0, 2)
        if cfg.pid_cmd:
            pid = int(run_shell(cfg.pid_cmd, 120).split()[0])
            restart["pid"] = pid
            cfg.pid = pid  # what follows (the fan-out mode too) watches the new process
        restart["rss_after_restart_mib"] = rss_mib(pid)
        # What the broker says it holds, as information only: a quorum queue that is still
        # recovering reports 0. Every confirmed message must come back in the drain.
        restart["depth_reported"] = int(times["depth"])
        say(
            f"restart: connected after {restart['to_connect_s']:.2f} s, first delivery after "
            f"{restart['to_first_delivery_s']:.2f} s; the queue reported "
            f"{restart['depth_reported']} messages then; RSS {filler_rss(pid)}"
        )

    drain = Drain(cfg, filled, int(filled * cfg.drain_split), seen)
    drains = await drain.run()
    out["drain"] = drains
    out["drain_duplicates"] = drain.duplicates
    out["drain_unknown"] = drain.unknown
    out["drain_out_of_order_one_consumer"] = drain.out_of_order
    out["rss_after_drain_mib"] = rss_mib(pid)
    for d in drains:
        say(
            f"drain with {d['consumers']} consumer{'s' if d['consumers'] > 1 else ''}: "
            f"{d['messages']} in {d['seconds']:.1f} s = {d['msg_per_s']:.0f} msg/s "
            f"| client cpu {d['client_cpu']:.0%}"
        )
    say(
        f"drain: {drain.out_of_order} out of order with one consumer, {drain.duplicates} "
        f"delivered twice, {drain.unknown} unknown; RSS after {filler_rss(pid)}"
    )
    if drain.duplicates or drain.unknown:
        rep.errors.append(
            f"drain: {drain.duplicates} messages delivered again after their ack, "
            f"{drain.unknown} unknown messages"
        )
    received = sum(seen)
    left = await with_connection(cfg, lambda c: declare(c, cfg, passive=True))
    out["received"] = received
    if received < filled:
        rep.errors.append(f"drain: {filled - received} confirmed messages never delivered")
    if left:
        rep.errors.append(f"drain: {left} messages left in the queue")
    await with_connection(cfg, lambda c: delete(c, cfg))


def filler_rss(pid: int | None) -> str:
    rss = rss_mib(pid)
    return "unknown (no --pid)" if rss is None else f"{rss:.0f} MiB"


# ------------------------------------------------------------------------ fanout mode
async def mqtt_publish_rate(cfg: Config) -> dict[str, Any]:
    """QoS 1 publishes on FANOUT_TOPIC with a PUBACK window, for a time or a count."""
    args = cfg.mqtt
    client = await mqtt_connect(args, f"deep-pub-{os.getpid()}", True, 0)
    client.on_message = lambda stamp: None
    topic = FANOUT_TOPIC.encode()
    payload = b"f" * cfg.size
    sent = 0
    start = now()
    stop_at = start + cfg.fanout_seconds
    try:
        while now() < stop_at and client.acked < cfg.fanout_count and not client.closed.is_set():
            room = min(cfg.fanout_window - (sent - client.acked), cfg.fanout_count - sent)
            if room <= 0:
                client.on_ack.clear()
                try:
                    await asyncio.wait_for(client.on_ack.wait(), max(0.01, stop_at - now()))
                except TimeoutError:
                    pass
                continue
            client.write(
                b"".join(
                    publish_packet(topic, payload, 1, (sent + i) % 0xFFFF + 1) for i in range(room)
                )
            )
            sent += room
            await asyncio.sleep(0)
        elapsed = now() - start
        acked = client.acked
    finally:
        client.close()
    return {
        "sent": sent,
        "acked": acked,
        "seconds": round(elapsed, 2),
        "msg_per_s": round(acked / max(1e-9, elapsed), 1),
    }


async def make_sessions(cfg: Config, first: int, count: int, clean: bool) -> list[str]:
    """Open sessions first..first+count-1: durable ones subscribe `#` at QoS 1 and go
    offline; clean ones (the cleanup) just connect and disconnect. Returns the failures."""
    gate = asyncio.Semaphore(SESSION_CONCURRENCY)
    failures: list[str] = []

    async def one(n: int) -> None:
        async with gate:
            try:
                client = await mqtt_connect(cfg.mqtt, f"deep-fanout-{n}", clean, 0)
            except (OSError, TimeoutError, ConnectionRefusedError) as exc:
                failures.append(f"{type(exc).__name__}: {exc}")
                return
            client.on_message = lambda stamp: None
            try:
                if not clean:
                    await client.subscribe("#", 1)
            except (RuntimeError, TimeoutError) as exc:
                failures.append(f"{type(exc).__name__}: {exc}")
            finally:
                client.close()
                await client.closed.wait()

    await asyncio.gather(*(one(first + i) for i in range(count)))
    return failures


async def fanout(cfg: Config, rep: Report) -> None:
    """Publish rate with 0, 1 and K offline durable sessions on `#`."""
    out = rep.fanout
    k = cfg.fanout_sessions
    say(
        f"fanout: MQTT QoS 1 publishes of {cfg.size} B on '{FANOUT_TOPIC}', window "
        f"{cfg.fanout_window}, {cfg.fanout_seconds:g} s or {cfg.fanout_count} messages each"
    )
    rates: dict[str, Any] = {}
    out["rates"] = rates
    made = 0
    try:
        for sessions in (0, 1, k):
            if sessions > made:
                t0 = now()
                failures = await make_sessions(cfg, made, sessions - made, clean=False)
                if failures:
                    rep.errors.append(f"fanout: {len(failures)} sessions failed: {failures[0]}")
                made = sessions
                out[f"make_{sessions}_sessions_s"] = round(now() - t0, 2)
            r = await mqtt_publish_rate(cfg)
            r["rss_mib"] = rss_mib(cfg.pid)
            rates[str(sessions)] = r
            say(
                f"  {sessions:>5} offline sessions on '#': {r['msg_per_s']:>8.1f} msg/s "
                f"({r['acked']} PUBACKed in {r['seconds']:.1f} s)"
                + (f" RSS {r['rss_mib']:.0f} MiB" if r["rss_mib"] is not None else "")
            )
    finally:
        t0 = now()
        await make_sessions(cfg, 0, made, clean=True)
        out["cleanup_s"] = round(now() - t0, 2)
    r0, r1, rk = (rates.get(key, {}).get("msg_per_s") for key in ("0", "1", str(k)))
    if r0 and rk:
        out["ratio_k_to_none"] = round(rk / r0, 4)
    if r1 and rk:
        out["ratio_k_to_one"] = round(rk / r1, 4)
    say(
        f"fanout: {k} sessions / none = {out.get('ratio_k_to_none', '?')}, "
        f"{k} sessions / one = {out.get('ratio_k_to_one', '?')}"
    )


# --------------------------------------------------------------------------------- CLI
def parse_count(text: str) -> int:
    """10M, 200k, 1500000."""
    units = {"k": 1000, "m": 1_000_000}
    text = text.strip().lower().replace("_", "")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def parse_queue_arg(text: str) -> tuple[str, Any]:
    """x-queue-version=2 -> ('x-queue-version', 2): numbers as integers, the rest as text."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, int(value) if value.lstrip("-").isdigit() else value


def parse_args(argv: list[str] | None) -> tuple[Config, argparse.Namespace]:
    p = argparse.ArgumentParser(
        description="Deep-backlog benchmark: fill, restart and drain one durable queue.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/%2F", help="broker URL")
    p.add_argument("--mode", choices=["backlog", "fanout", "all"], default="backlog")
    p.add_argument("--count", default="10M", help="messages to fill the queue with (10M, 200k)")
    p.add_argument("--size", type=int, default=1024, help="body size in bytes (>= 8)")
    p.add_argument("--queue", default="deep_backlog", help="durable queue to fill")
    p.add_argument(
        "--queue-type", choices=["classic", "quorum"], help="x-queue-type on queue.declare"
    )
    p.add_argument(
        "--queue-arg",
        action="append",
        type=parse_queue_arg,
        default=[],
        metavar="KEY=VALUE",
        help="more queue.declare arguments, e.g. x-queue-version=2 x-queue-mode=lazy",
    )
    p.add_argument("--confirm-window", type=int, default=256, help="max unconfirmed publishes")
    p.add_argument("--prefetch", type=int, default=200, help="basic.qos per drain consumer")
    p.add_argument("--slices", type=int, default=10, help="fill rate reported per 1/SLICES")
    p.add_argument(
        "--marks",
        default=None,
        help="RSS marks, comma-separated counts [1M,5M,10M scaled to --count: 10%%,50%%,100%%]",
    )
    p.add_argument("--pid", type=int, help="broker pid (RabbitMQ: beam.smp) for its RSS")
    p.add_argument("--pid-cmd", help="shell command printing the broker's pid after a restart")
    p.add_argument(
        "--restart-cmd", help="shell command: kill -9 the broker, start it in the background"
    )
    p.add_argument(
        "--restart-timeout", type=float, default=600.0, help="seconds to the first delivery"
    )
    p.add_argument(
        "--settle",
        type=float,
        default=0.0,
        help="seconds between the last confirm and the kill -9 (the broker idles meanwhile)",
    )
    p.add_argument(
        "--drain-split",
        type=float,
        default=0.5,
        help="share of the backlog drained by one consumer; the rest by --drain-consumers",
    )
    p.add_argument("--drain-consumers", type=int, default=4)
    p.add_argument(
        "--max-rss-mb", type=int, default=8192, help="stop the fill above this broker RSS"
    )
    p.add_argument("--timeout", type=float, default=7200.0, help="seconds per phase")
    p.add_argument("--mqtt-host", default="127.0.0.1")
    p.add_argument("--mqtt-port", type=int, default=1883)
    p.add_argument("--mqtt-user", default="guest")
    p.add_argument("--mqtt-password", default="guest")
    p.add_argument("--fanout-sessions", type=int, default=2000)
    p.add_argument("--fanout-seconds", type=float, default=10.0, help="per measured rate")
    p.add_argument("--fanout-count", type=int, default=50000, help="at most, per rate")
    p.add_argument("--fanout-window", type=int, default=100, help="PUBACKs outstanding")
    p.add_argument("--json", action="store_true", help="JSON on stdout, text on stderr")
    p.add_argument("--no-uvloop", action="store_true")
    a = p.parse_args(argv)
    count = parse_count(a.count)
    if count < 1 or a.size < SEQ.size:
        p.error(f"--count must be >= 1 and --size >= {SEQ.size}")
    if not 0.0 <= a.drain_split <= 1.0:
        p.error("--drain-split must be between 0 and 1")
    if a.marks:
        marks = [parse_count(m) for m in a.marks.split(",") if m.strip()]
    else:
        marks = sorted({max(1, count // 10), max(1, count // 2), count})
    queue_args: dict[str, Any] = dict(a.queue_arg)
    if a.queue_type:
        queue_args["x-queue-type"] = a.queue_type
    cfg = Config(
        url=a.url,
        count=count,
        size=a.size,
        queue=a.queue,
        queue_args=queue_args,
        confirm_window=a.confirm_window,
        prefetch=a.prefetch,
        slices=max(1, a.slices),
        marks=marks,
        pid=a.pid,
        pid_cmd=a.pid_cmd,
        restart_cmd=a.restart_cmd,
        restart_timeout=a.restart_timeout,
        settle=a.settle,
        drain_split=a.drain_split,
        drain_consumers=max(1, a.drain_consumers),
        max_rss_mb=a.max_rss_mb,
        timeout=a.timeout,
        mqtt=SimpleNamespace(
            host=a.mqtt_host,
            port=a.mqtt_port,
            user=a.mqtt_user,
            password=a.mqtt_password,
            connect_timeout=30.0,
        ),
        fanout_sessions=max(1, a.fanout_sessions),
        fanout_seconds=a.fanout_seconds,
        fanout_count=a.fanout_count,
        fanout_window=a.fanout_window,
        uvloop=not a.no_uvloop,
    )
    return cfg, a


def summary_line(cfg: Config, rep: Report) -> str:
    parts: list[str] = []
    b = rep.backlog
    if "fill" in b:
        f = b["fill"]
        parts.append(f"fill {human(f['published'])} at {f['msg_per_s']:.0f} msg/s")
        last = f["marks"][-1] if f["marks"] else None
        if last and last["rss_mib"] is not None:
            parts.append(
                f"RSS {last['rss_mib']:.0f} MiB at {human(last['messages'])} "
                f"({last['bytes_per_msg']} B/msg)"
            )
        if "stopped_early" in f:
            parts.append("fill STOPPED EARLY")
    if "to_first_delivery_s" in b.get("restart", {}):
        parts.append(f"restart to first delivery {b['restart']['to_first_delivery_s']:.1f} s")
    for d in b.get("drain", []):
        parts.append(f"drain x{d['consumers']} {d['msg_per_s']:.0f} msg/s")
    fo = rep.fanout
    if fo.get("rates"):
        rates = fo["rates"]
        k = str(cfg.fanout_sessions)
        if "0" in rates and k in rates:
            parts.append(
                f"fanout none {rates['0']['msg_per_s']:.0f} / {k} sessions "
                f"{rates[k]['msg_per_s']:.1f} msg/s (x{fo.get('ratio_k_to_none', '?')})"
            )
    return (
        "summary: "
        + (", ".join(parts) or "nothing measured")
        + ("  [FAILURES]" if rep.errors else "")
    )


def main(argv: list[str] | None = None) -> int:
    global OUT
    cfg, args = parse_args(argv)
    OUT = sys.stderr if args.json else sys.stdout
    if args.mode != "backlog":
        raise_fd_limit(SESSION_CONCURRENCY + 64)
    say(
        f"# deep_backlog url={redact(cfg.url)} mode={args.mode} count={cfg.count} "
        f"size={cfg.size} queue={cfg.queue} args={cfg.queue_args or '{}'} pid={cfg.pid} "
        f"restart={'yes' if cfg.restart_cmd else 'no'} "
        f"drain=1 consumer for {cfg.drain_split:.0%}, {cfg.drain_consumers} for the rest"
    )
    rep = Report()
    unreachable = False

    async def run_all() -> None:
        nonlocal unreachable
        if args.mode in ("backlog", "all"):
            try:
                await backlog(cfg, rep)
            except (AMQPError, OSError, TimeoutError, subprocess.SubprocessError) as exc:
                unreachable = "fill" not in rep.backlog
                rep.errors.append(f"backlog: {type(exc).__name__}: {exc}")
        if args.mode in ("fanout", "all"):
            try:
                await fanout(cfg, rep)
            except (OSError, TimeoutError, RuntimeError) as exc:
                rep.errors.append(f"fanout: {type(exc).__name__}: {exc}")

    run_loop(run_all(), cfg.uvloop)
    for e in rep.errors:
        say(f"error: {e}")
    say(summary_line(cfg, rep))
    if args.json:
        doc = {
            "url": redact(cfg.url),
            "command": " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
            "config": {
                "count": cfg.count,
                "size": cfg.size,
                "queue": cfg.queue,
                "queue_args": cfg.queue_args,
                "confirm_window": cfg.confirm_window,
                "prefetch": cfg.prefetch,
                "drain_split": cfg.drain_split,
                "drain_consumers": cfg.drain_consumers,
                "fanout_sessions": cfg.fanout_sessions,
                "fanout_publish": "MQTT QoS 1",
            },
            "backlog": rep.backlog,
            "fanout": rep.fanout,
            "errors": rep.errors,
            "ok": not rep.errors,
        }
        print(json.dumps(doc))
    if unreachable:
        return 2
    return 0 if not rep.errors else 1


if __name__ == "__main__":
    sys.exit(main())
