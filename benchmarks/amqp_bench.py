#!/usr/bin/env python3
"""AMQP 0-9-1 load generator: persistent messages, publisher confirms, manual acks.

Runs against any AMQP 0-9-1 broker URL (ours, RabbitMQ, ...) so the numbers
are directly comparable.  See benchmarks/README.md for the workload and how
to read the output.

Modes:
  produce  publish N messages with confirms; time until the last confirm.
  consume  drain a backlog of N messages (backlog published first, untimed).
  both     publishers and consumers concurrently; time until N consumed.
  all      produce, consume, both in sequence.

Publishers and consumers run in separate worker processes (one per role) so
the Python client is not the bottleneck; the processes start, connect and
set up untimed, then release together through a barrier.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import queue as queue_mod
import statistics
import struct
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from pamqp import commands
from rawamqp import AMQPError, Connection, ack_frame, build_publish_frames, now

T = TypeVar("T")

# Per-message stamp written at the start of each body: publisher id, sequence
# number within that publisher, send time.  Lets consumers detect loss,
# duplicates and measure end-to-end latency.
STAMP = struct.Struct(">IId")

MODES = ("produce", "consume", "both")
SETUP_TIMEOUT = 30.0  # seconds for worker processes to start, connect and set up


@dataclass
class Config:
    """Benchmark parameters (picklable: sent to worker processes)."""

    url: str
    count: int = 20000
    size: int = 1024
    queue: str = "amqp_bench"
    publishers: int = 1
    consumers: int = 1
    confirm_window: int = 256
    prefetch: int = 200
    ack_every: int = 1
    timeout: float = 120.0
    uvloop: bool = True
    single_process: bool = False
    # x-queue-type sent on queue.declare ("classic", "quorum"); None sends no arguments.
    queue_type: str | None = None

    def publisher_counts(self) -> list[int]:
        """Split ``count`` across publishers as evenly as possible."""
        base, extra = divmod(self.count, self.publishers)
        return [base + (1 if i < extra else 0) for i in range(self.publishers)]


@dataclass
class RunResult:
    """Outcome of one timed mode run (one line of output)."""

    mode: str
    run: int
    count: int
    seconds: float = 0.0
    msg_per_s: float = 0.0
    publish_msg_per_s: float | None = None
    confirm_ms: dict[str, float] | None = None
    e2e_ms: dict[str, float] | None = None
    # Client CPU seconds / phase seconds per role: near 1.0 means the client
    # process was saturated and the number says more about it than the broker.
    client_cpu: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


# --------------------------------------------------------------------- utils
def run_loop(coro: Coroutine[Any, Any, T], use_uvloop: bool) -> T:
    """Run a coroutine on uvloop when available (it is markedly faster)."""
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(coro)
    return asyncio.run(coro)


def percentiles_ms(samples: list[float]) -> dict[str, float] | None:
    """p50/p99/max in milliseconds (nearest rank); None if no samples."""
    if not samples:
        return None
    s = sorted(samples)

    def pick(p: float) -> float:
        return round(s[min(len(s) - 1, int(p / 100.0 * len(s)))] * 1000.0, 3)

    return {"p50": pick(50), "p99": pick(99), "max": round(s[-1] * 1000.0, 3), "n": len(s)}


def redact(url: str) -> str:
    """Hide the password when printing a URL."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


async def wait_flag(
    flag: asyncio.Event, ready: Callable[[], bool], deadline: float, what: Callable[[], str]
) -> None:
    """Wait until ``ready()`` holds; ``flag`` is set by callbacks on progress.

    ``what`` describes the wait for the timeout error; it is a callable so
    the message shows progress at the moment of the timeout.
    """
    while not ready():
        remaining = deadline - now()
        if remaining <= 0:
            raise AMQPError(f"timeout waiting for {what()}")
        flag.clear()
        try:
            await asyncio.wait_for(flag.wait(), remaining)
        except TimeoutError:
            pass


# ------------------------------------------------------------- admin (parent)
async def _admin(cfg: Config, op: Callable[[Connection], Awaitable[T]]) -> T:
    conn = await Connection.open(cfg.url, timeout=10.0)
    try:
        return await op(conn)
    finally:
        await conn.close()


def declare_and_purge(cfg: Config) -> None:
    """Declare the durable queue (idempotent) and empty it."""

    args = {"x-queue-type": cfg.queue_type} if cfg.queue_type else None

    async def op(conn: Connection) -> None:
        await conn.call(
            commands.Queue.Declare(queue=cfg.queue, durable=True, arguments=args),
            commands.Queue.DeclareOk,
        )
        await conn.call(commands.Queue.Purge(queue=cfg.queue), commands.Queue.PurgeOk)

    run_loop(_admin(cfg, op), cfg.uvloop)


def queue_depth(cfg: Config) -> int:
    """Ready-message count via a passive declare."""

    async def op(conn: Connection) -> int:
        ok = await conn.call(
            commands.Queue.Declare(queue=cfg.queue, durable=True, passive=True),
            commands.Queue.DeclareOk,
        )
        return int(ok.message_count or 0)

    return run_loop(_admin(cfg, op), cfg.uvloop)


def delete_queue(cfg: Config) -> None:
    async def op(conn: Connection) -> None:
        await conn.call(commands.Queue.Delete(queue=cfg.queue), commands.Queue.DeleteOk)

    run_loop(_admin(cfg, op), cfg.uvloop)


# ---------------------------------------------------------------- publishing
class Publisher:
    """One connection publishing its share with a bounded confirm window."""

    def __init__(self, cfg: Config, pid: int, count: int) -> None:
        self.cfg = cfg
        self.pid = pid
        self.count = count
        self.conn: Connection | None = None
        self.sent = 0
        self.acked = 0
        self.nacked = 0
        self.bad_confirms = 0  # duplicate or out-of-range confirms
        self.latencies: list[float] = []
        self.end = 0.0
        self._sent_at = [0.0] * (count + 1)  # by delivery tag (1-based)
        self._state = bytearray(count + 1)  # 0 = unconfirmed, 1 = confirmed
        self._low = 1  # lowest possibly-unconfirmed tag
        self._progress = asyncio.Event()

    async def setup(self) -> None:
        self.conn = await Connection.open(self.cfg.url, timeout=10.0)
        self.conn.on_confirm = self._on_confirm
        self.conn.on_failure = lambda exc: self._progress.set()
        await self.conn.call(commands.Confirm.Select(), commands.Confirm.SelectOk)

    def _on_confirm(self, tag: int, multiple: bool, is_ack: bool) -> None:
        t = now()
        if tag > self.sent or tag < 1:
            self.bad_confirms += 1
            return
        state, sent_at, lat = self._state, self._sent_at, self.latencies
        tags = range(self._low, tag + 1) if multiple else (tag,)
        newly = 0
        for tg in tags:
            if state[tg]:
                if not multiple:
                    self.bad_confirms += 1
                continue
            state[tg] = 1
            lat.append(t - sent_at[tg])
            newly += 1
        if is_ack:
            self.acked += newly
        else:
            self.nacked += newly
        low = self._low
        while low <= self.sent and state[low]:
            low += 1
        self._low = low
        if self.acked + self.nacked == self.count:
            self.end = t
        self._progress.set()

    async def run(self, deadline: float) -> None:
        """Publish ``count`` messages keeping <= confirm_window unconfirmed."""
        assert self.conn is not None
        conn, window = self.conn, self.cfg.confirm_window
        prefix, suffix = build_publish_frames(self.cfg.queue, self.cfg.size, conn.frame_max)
        stamped = self.cfg.size >= STAMP.size
        if stamped:
            suffix = suffix[STAMP.size :]  # the stamp replaces the first filler bytes
        pack, pid, sent_at = STAMP.pack, self.pid, self._sent_at
        whole = prefix + suffix

        def room() -> int:
            return min(window - (self.sent - self.acked - self.nacked), self.count - self.sent)

        while self.sent < self.count:
            await wait_flag(
                self._progress,
                lambda: room() > 0 or conn.error is not None,
                deadline,
                self._progress_text,
            )
            if conn.error is not None:
                raise conn.error
            n, first, t = room(), self.sent, now()
            if stamped:
                parts: list[bytes] = []
                for seq in range(first, first + n):
                    parts += (prefix, pack(pid, seq, t), suffix)
                data = b"".join(parts)
            else:
                data = whole * n
            sent_at[first + 1 : first + n + 1] = [t] * n
            self.sent += n
            conn.write(data)
            await conn.writable(max(0.001, deadline - now()))
        await wait_flag(
            self._progress,
            lambda: self.acked + self.nacked == self.count or conn.error is not None,
            deadline,
            self._progress_text,
        )
        if conn.error is not None:
            raise conn.error

    def _progress_text(self) -> str:
        done = self.acked + self.nacked
        return f"confirms ({done} of {self.sent} sent confirmed, {self.count} to send)"

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()


# ----------------------------------------------------------------- consuming
class ConsumeTally:
    """Delivery bookkeeping shared by all consumers in one process."""

    def __init__(self, cfg: Config, track_e2e: bool) -> None:
        self.target = cfg.count
        self.received = 0
        self.duplicates = 0
        self.unknown = 0
        self.track_e2e = track_e2e
        self.e2e: list[float] = []
        self.seen = [bytearray(n) for n in cfg.publisher_counts()]
        self.end = 0.0
        self.done = asyncio.Event()

    def unique(self) -> int:
        return sum(sum(s) for s in self.seen)


class Consumer:
    """One connection consuming with basic.qos prefetch and manual acks."""

    def __init__(self, cfg: Config, index: int, tally: ConsumeTally) -> None:
        self.cfg = cfg
        self.index = index
        self.tally = tally
        self.conn: Connection | None = None
        self.unacked = 0
        self.last_tag = 0

    async def setup(self) -> None:
        self.conn = await Connection.open(self.cfg.url, timeout=10.0)
        self.conn.on_delivery = self._on_delivery
        self.conn.on_failure = lambda exc: self.tally.done.set()
        await self.conn.call(
            commands.Basic.Qos(prefetch_count=self.cfg.prefetch), commands.Basic.QosOk
        )

    async def start(self) -> None:
        assert self.conn is not None
        await self.conn.call(
            commands.Basic.Consume(queue=self.cfg.queue, consumer_tag=f"bench-{self.index}"),
            commands.Basic.ConsumeOk,
        )

    def _on_delivery(self, conn: Connection, tag: int, head: bytes) -> None:
        tally = self.tally
        tally.received += 1
        if len(head) == STAMP.size:
            pid, seq, sent = STAMP.unpack(head)
            if tally.track_e2e:
                tally.e2e.append(now() - sent)
            if pid < len(tally.seen) and seq < len(tally.seen[pid]):
                seen = tally.seen[pid]
                if seen[seq]:
                    tally.duplicates += 1
                else:
                    seen[seq] = 1
            else:
                tally.unknown += 1
        if self.cfg.ack_every == 1:
            conn.write(ack_frame(tag, False))
        else:
            self.unacked += 1
            self.last_tag = tag
            if self.unacked >= self.cfg.ack_every:
                conn.write(ack_frame(tag, True))
                self.unacked = 0
        if tally.received == tally.target:
            tally.end = now()
            tally.done.set()

    def flush_acks(self) -> None:
        if self.conn is not None and self.unacked:
            self.conn.write(ack_frame(self.last_tag, True))
            self.unacked = 0

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()  # channel.close-ok => broker processed our acks


# ------------------------------------------------------------------- roles
class Role:
    """A set of same-kind connections run by one process (or one loop)."""

    name = ""

    async def setup(self) -> None:
        """Connect and prepare (untimed)."""
        raise NotImplementedError

    async def run(self, deadline: float) -> dict[str, Any]:
        """Do the timed work; return start/end times and counters."""
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class PublishRole(Role):
    name = "publish"

    def __init__(self, cfg: Config) -> None:
        self.pubs = [Publisher(cfg, i, n) for i, n in enumerate(cfg.publisher_counts())]

    async def setup(self) -> None:
        await asyncio.gather(*(p.setup() for p in self.pubs))

    async def run(self, deadline: float) -> dict[str, Any]:
        start, cpu0 = now(), time.process_time()
        await asyncio.gather(*(p.run(deadline) for p in self.pubs))
        cpu = time.process_time() - cpu0
        latencies = [x for p in self.pubs for x in p.latencies]
        return {
            "start": start,
            "end": max(p.end for p in self.pubs),
            "acked": sum(p.acked for p in self.pubs),
            "nacked": sum(p.nacked for p in self.pubs),
            "bad_confirms": sum(p.bad_confirms for p in self.pubs),
            "returned": sum(p.conn.returned for p in self.pubs if p.conn),
            "confirm_ms": percentiles_ms(latencies),
            "cpu_s": cpu,
        }

    async def close(self) -> None:
        await asyncio.gather(*(p.close() for p in self.pubs), return_exceptions=True)


class ConsumeRole(Role):
    name = "consume"

    def __init__(self, cfg: Config, track_e2e: bool) -> None:
        self.tally = ConsumeTally(cfg, track_e2e)
        self.cons = [Consumer(cfg, i, self.tally) for i in range(cfg.consumers)]

    async def setup(self) -> None:
        await asyncio.gather(*(c.setup() for c in self.cons))

    async def run(self, deadline: float) -> dict[str, Any]:
        start, cpu0 = now(), time.process_time()
        await asyncio.gather(*(c.start() for c in self.cons))
        tally = self.tally

        def finished() -> bool:
            return tally.received >= tally.target or any(c.conn and c.conn.error for c in self.cons)

        await wait_flag(
            tally.done,
            finished,
            deadline,
            lambda: f"deliveries ({tally.received}/{tally.target} received)",
        )
        for c in self.cons:
            if c.conn is not None and c.conn.error is not None:
                raise c.conn.error
        cpu = time.process_time() - cpu0
        for c in self.cons:
            c.flush_acks()
        # Give stray extra deliveries (a broker bug) a moment to show up.
        await asyncio.sleep(0.05)
        return {
            "start": start,
            "end": tally.end,
            "received": tally.received,
            "unique": tally.unique(),
            "duplicates": tally.duplicates,
            "unknown": tally.unknown,
            "e2e_ms": percentiles_ms(tally.e2e),
            "cpu_s": cpu,
        }

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.cons), return_exceptions=True)


def make_role(name: str, cfg: Config, track_e2e: bool) -> Role:
    return PublishRole(cfg) if name == "publish" else ConsumeRole(cfg, track_e2e)


# ------------------------------------------------------------ phase running
async def _role_main(
    role: Role, cfg: Config, sync: Callable[[], Awaitable[None]]
) -> dict[str, Any]:
    """Set up untimed, synchronise with the other roles, then run timed."""
    try:
        await role.setup()
        await sync()
        return await role.run(now() + cfg.timeout)
    finally:
        await role.close()


def _worker_main(name: str, cfg: Config, track_e2e: bool, barrier: Any, results: Any) -> None:
    """Entry point of a worker process; always reports exactly one result."""

    async def sync() -> None:
        await asyncio.get_running_loop().run_in_executor(None, barrier.wait)

    try:
        res = run_loop(_role_main(make_role(name, cfg, track_e2e), cfg, sync), cfg.uvloop)
    except BaseException as exc:  # report, never hang the parent
        barrier.abort()
        res = {"error": f"{type(exc).__name__}: {exc}"}
    res["role"] = name
    results.put(res)


def run_phase(cfg: Config, roles: list[str], track_e2e: bool = False) -> dict[str, dict[str, Any]]:
    """Run the given roles concurrently and return each role's result dict."""
    if cfg.single_process:
        return run_loop(_run_phase_inproc(cfg, roles, track_e2e), cfg.uvloop)
    ctx = mp.get_context("spawn")
    # Untimed setup (process spawn + connect) gets its own fixed allowance.
    barrier = ctx.Barrier(len(roles) + 1, timeout=SETUP_TIMEOUT)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_worker_main, args=(r, cfg, track_e2e, barrier, results), daemon=True)
        for r in roles
    ]
    for p in procs:
        p.start()
    try:
        barrier.wait()
    except threading.BrokenBarrierError:
        pass  # a worker failed during setup; it reports the error below
    out: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + cfg.timeout + SETUP_TIMEOUT
    while len(out) < len(roles):
        try:
            res = results.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue_mod.Empty:
            break
        out[res["role"]] = res
    for p in procs:
        p.join(timeout=10)
        if p.is_alive():
            p.terminate()
            p.join(timeout=5)
    for r in roles:
        out.setdefault(r, {"role": r, "error": "worker did not report in time"})
    return out


async def _run_phase_inproc(
    cfg: Config, roles: list[str], track_e2e: bool
) -> dict[str, dict[str, Any]]:
    """Debug variant of run_phase: all roles on one event loop."""
    objs = [make_role(r, cfg, track_e2e) for r in roles]
    ready = asyncio.Barrier(len(objs))

    async def one(role: Role) -> dict[str, Any]:
        async def sync() -> None:
            await ready.wait()

        try:
            res = await _role_main(role, cfg, sync)
        except Exception as exc:
            await ready.abort()
            res = {"error": f"{type(exc).__name__}: {exc}"}
        res["role"] = role.name
        return res

    return {res["role"]: res for res in await asyncio.gather(*(one(o) for o in objs))}


# ------------------------------------------------------------------- modes
def _check_publish(cfg: Config, pub: dict[str, Any], errors: list[str]) -> None:
    if "error" in pub:
        errors.append(f"publisher: {pub['error']}")
        return
    if pub["acked"] != cfg.count:
        errors.append(f"publisher: {pub['acked']}/{cfg.count} acked, {pub['nacked']} nacked")
    for key in ("bad_confirms", "returned"):
        if pub[key]:
            errors.append(f"publisher: {pub[key]} {key}")


def _check_consume(cfg: Config, con: dict[str, Any], errors: list[str]) -> None:
    if "error" in con:
        errors.append(f"consumer: {con['error']}")
        return
    stamped = cfg.size >= STAMP.size
    if con["received"] != cfg.count:
        errors.append(f"consumer: received {con['received']} != {cfg.count}")
    if stamped and (con["unique"] != cfg.count or con["duplicates"] or con["unknown"]):
        errors.append(
            f"consumer: {con['unique']} unique of {cfg.count}, "
            f"{con['duplicates']} duplicates, {con['unknown']} unknown messages"
        )


def _check_depth(cfg: Config, expected: int, errors: list[str]) -> None:
    try:
        depth = queue_depth(cfg)
    except (TimeoutError, AMQPError, OSError) as exc:
        errors.append(f"queue depth check failed: {exc}")
        return
    if depth != expected:
        errors.append(f"queue holds {depth} ready messages, expected {expected}")


def _cpu_share(seconds: float, **roles: dict[str, Any]) -> dict[str, float]:
    if seconds <= 0:
        return {}
    return {name: round(r["cpu_s"] / seconds, 2) for name, r in roles.items()}


def run_mode(cfg: Config, mode: str, run: int, backlog_ready: bool) -> RunResult:
    """Run one timed mode; returns its result (errors listed, not raised)."""
    res = RunResult(mode=mode, run=run, count=cfg.count)
    errors = res.errors
    if mode == "produce":
        declare_and_purge(cfg)
        pub = run_phase(cfg, ["publish"])["publish"]
        _check_publish(cfg, pub, errors)
        if not errors:
            res.seconds = pub["end"] - pub["start"]
            res.confirm_ms = pub["confirm_ms"]
            res.client_cpu = _cpu_share(res.seconds, publish=pub)
            _check_depth(cfg, cfg.count, errors)
    elif mode == "consume":
        if not backlog_ready:  # untimed backlog fill
            declare_and_purge(cfg)
            _check_publish(cfg, run_phase(cfg, ["publish"])["publish"], errors)
            if not errors:
                _check_depth(cfg, cfg.count, errors)
        if not errors:
            con = run_phase(cfg, ["consume"])["consume"]
            _check_consume(cfg, con, errors)
            if not errors:
                res.seconds = con["end"] - con["start"]
                res.client_cpu = _cpu_share(res.seconds, consume=con)
                _check_depth(cfg, 0, errors)
    elif mode == "both":
        declare_and_purge(cfg)
        out = run_phase(cfg, ["consume", "publish"], track_e2e=True)
        pub, con = out["publish"], out["consume"]
        _check_publish(cfg, pub, errors)
        _check_consume(cfg, con, errors)
        if not errors:
            start = min(pub["start"], con["start"])
            res.seconds = max(con["end"], pub["end"]) - start
            res.publish_msg_per_s = round(cfg.count / (pub["end"] - pub["start"]), 1)
            res.confirm_ms = pub["confirm_ms"]
            res.e2e_ms = con["e2e_ms"]
            res.client_cpu = _cpu_share(res.seconds, publish=pub, consume=con)
            _check_depth(cfg, 0, errors)
    if res.seconds > 0:
        res.msg_per_s = round(cfg.count / res.seconds, 1)
    res.seconds = round(res.seconds, 4)
    return res


def format_result(r: RunResult) -> str:
    if r.errors:
        return f"{r.mode}: FAILED: " + "; ".join(r.errors)
    line = f"{r.mode}: {r.count} msgs in {r.seconds:.2f} s = {r.msg_per_s:.0f} msg/s"
    if r.publish_msg_per_s is not None:
        line += f" (publish side {r.publish_msg_per_s:.0f} msg/s)"
    if r.confirm_ms:
        line += f" | confirm p50 {r.confirm_ms['p50']:.2f} ms p99 {r.confirm_ms['p99']:.2f} ms"
    if r.e2e_ms:
        line += f" | end-to-end p50 {r.e2e_ms['p50']:.2f} ms p99 {r.e2e_ms['p99']:.2f} ms"
    if r.client_cpu:
        line += " | client cpu " + " ".join(f"{k} {v:.0%}" for k, v in r.client_cpu.items())
    return line


def summarize(results: list[RunResult]) -> dict[str, dict[str, float]]:
    """Median/min/max msg/s per mode over successful runs."""
    summary: dict[str, dict[str, float]] = {}
    for mode in MODES:
        rates = [r.msg_per_s for r in results if r.mode == mode and not r.errors]
        if rates:
            summary[mode] = {
                "median": round(statistics.median(rates), 1),
                "min": min(rates),
                "max": max(rates),
                "runs": len(rates),
            }
    return summary


# --------------------------------------------------------------------- CLI
def parse_args(argv: list[str] | None = None) -> tuple[Config, argparse.Namespace]:
    p = argparse.ArgumentParser(
        description="AMQP 0-9-1 throughput benchmark: persistent messages, confirms, manual acks.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/%2F", help="broker URL")
    p.add_argument("--count", type=int, default=20000, help="messages per mode run")
    p.add_argument("--size", type=int, default=1024, help="message body size in bytes")
    p.add_argument("--mode", choices=[*MODES, "all"], default="all")
    p.add_argument("--queue", default="amqp_bench", help="durable queue to declare/purge/use")
    p.add_argument(
        "--queue-type",
        choices=["classic", "quorum"],
        default=None,
        help="x-queue-type argument on queue.declare; None = no queue arguments",
    )
    p.add_argument("--publishers", type=int, default=1, help="publishing connections")
    p.add_argument("--consumers", type=int, default=1, help="consuming connections")
    p.add_argument(
        "--confirm-window", type=int, default=256, help="max unconfirmed messages per publisher"
    )
    p.add_argument(
        "--prefetch",
        type=int,
        default=200,
        help="basic.qos prefetch_count per consumer (0 = unlimited)",
    )
    p.add_argument(
        "--ack-every",
        type=int,
        default=1,
        help="1 = ack each message individually; K>1 = one basic.ack multiple=true per K messages",
    )
    p.add_argument("--repeat", type=int, default=1, help="repeat each mode this many times")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds allowed per timed phase")
    p.add_argument(
        "--json", action="store_true", help="print a JSON document on stdout (text goes to stderr)"
    )
    p.add_argument("--keep-queue", action="store_true", help="do not delete the queue at the end")
    p.add_argument("--no-uvloop", action="store_true", help="use the default asyncio loop")
    p.add_argument(
        "--single-process", action="store_true", help="run all roles on one event loop (debugging)"
    )
    a = p.parse_args(argv)
    for name in (
        "count",
        "size",
        "publishers",
        "consumers",
        "confirm_window",
        "ack_every",
        "repeat",
    ):
        if getattr(a, name) < (0 if name == "size" else 1):
            p.error(f"--{name.replace('_', '-')} too small")
    if a.prefetch < 0:
        p.error("--prefetch must be >= 0")
    if a.prefetch and a.ack_every > a.prefetch:
        p.error("--ack-every larger than --prefetch would deadlock")
    cfg = Config(
        url=a.url,
        count=a.count,
        size=a.size,
        queue=a.queue,
        publishers=a.publishers,
        consumers=a.consumers,
        confirm_window=a.confirm_window,
        prefetch=a.prefetch,
        ack_every=a.ack_every,
        timeout=a.timeout,
        uvloop=not a.no_uvloop,
        single_process=a.single_process,
        queue_type=a.queue_type,
    )
    return cfg, a


def main(argv: list[str] | None = None) -> int:
    cfg, args = parse_args(argv)
    out = sys.stderr if args.json else sys.stdout

    def say(line: str) -> None:
        print(line, file=out, flush=True)

    modes = list(MODES) if args.mode == "all" else [args.mode]
    say(
        f"# url={redact(cfg.url)} count={cfg.count} size={cfg.size} queue={cfg.queue} "
        f"publishers={cfg.publishers} consumers={cfg.consumers} "
        f"confirm_window={cfg.confirm_window} prefetch={cfg.prefetch} ack_every={cfg.ack_every} "
        "persistent=yes durable=yes" + (f" queue_type={cfg.queue_type}" if cfg.queue_type else "")
    )
    results: list[RunResult] = []
    setup_ok = True
    try:
        declare_and_purge(cfg)
    except (TimeoutError, AMQPError, OSError) as exc:
        # Still emit a (failed) result per mode so --json consumers see why.
        setup_ok = False
        msg = f"cannot set up queue: {type(exc).__name__}: {exc}"
        results = [RunResult(mode=m, run=1, count=cfg.count, errors=[msg]) for m in modes]
        say(f"{redact(cfg.url)}: {msg}")
    for run in range(1, args.repeat + 1 if setup_ok else 1):
        prev_ok_produce = False
        for mode in modes:
            try:
                r = run_mode(cfg, mode, run, backlog_ready=(mode == "consume" and prev_ok_produce))
            except (TimeoutError, AMQPError, OSError) as exc:
                r = RunResult(
                    mode=mode, run=run, count=cfg.count, errors=[f"{type(exc).__name__}: {exc}"]
                )
            prev_ok_produce = mode == "produce" and not r.errors
            results.append(r)
            tag = f" [run {run}/{args.repeat}]" if args.repeat > 1 else ""
            say(format_result(r).replace(":", tag + ":", 1))
    if setup_ok and not args.keep_queue:
        try:
            delete_queue(cfg)
        except (TimeoutError, AMQPError, OSError):
            pass
    summary = summarize(results)
    ok = all(not r.errors for r in results)
    rates = ", ".join(f"{m} {s['median']:.0f} msg/s" for m, s in summary.items())
    say(
        f"summary: {rates or 'no successful runs'}"
        + ("" if args.repeat == 1 else f" (median of {args.repeat})")
        + ("" if ok else "  [FAILURES]")
    )
    if args.json:
        doc = {
            "url": redact(cfg.url),
            "config": {k: v for k, v in asdict(cfg).items() if k != "url"},
            "runs": [asdict(r) for r in results],
            "summary": summary,
            "ok": ok,
        }
        print(json.dumps(doc))
    if not setup_ok:
        return 2
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
