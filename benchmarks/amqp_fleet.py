#!/usr/bin/env python3
"""AMQP fleet: many connections with a channel each, and a few confirmed messages from each.

Opens --connections AMQP connections (handshake and channel 1, --connecting at once) and
measures the connect storm (time until all are open, open latency p50/p99), the broker's RSS
with them all idle (and per connection, given the broker's --pid), then has each publish
--messages persistent messages with publisher confirms to one durable queue, which one consumer
drains and acks. A confirmed message that is not delivered fails the run (exit 1). Speaks
plain AMQP 0-9-1 (benchmarks/rawamqp.py), so the same command measures RabbitMQ.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import struct
import sys
import time
from typing import Any

from mqtt_bench import run
from mqtt_fleet import BrokerMeter, percentile, raise_fd_limit
from pamqp import commands
from rawamqp import AMQPError, Connection, ack_frame, build_publish_frames

STAMP = struct.Struct(">II")  # connection number, message number


async def fleet(args: Any) -> dict[str, Any]:
    meter = BrokerMeter(args.pid)
    admin = await Connection.open(args.url)
    await admin.call(
        commands.Queue.Declare(queue=args.queue, durable=True), commands.Queue.DeclareOk
    )
    await admin.call(commands.Queue.Purge(queue=args.queue), commands.Queue.PurgeOk)
    delivered: set[bytes] = set()
    got_all = asyncio.Event()
    expected = args.connections * args.messages

    def on_delivery(conn: Connection, tag: int, head: bytes) -> None:
        delivered.add(head[: STAMP.size])
        conn.write(ack_frame(tag, False))
        if len(delivered) >= expected:
            got_all.set()

    consumer = await Connection.open(args.url)
    consumer.on_delivery = on_delivery
    await consumer.call(commands.Basic.Qos(prefetch_count=200), commands.Basic.QosOk)
    await consumer.call(commands.Basic.Consume(queue=args.queue), commands.Basic.ConsumeOk)
    rss_before = meter.rss()

    gate = asyncio.Semaphore(args.connecting)
    latencies: list[float] = []
    failures: list[str] = []

    async def open_one() -> Connection | None:
        async with gate:
            begun = time.monotonic()
            try:
                conn = await Connection.open(args.url, timeout=args.connect_timeout)
            except (OSError, TimeoutError, AMQPError) as exc:
                failures.append(f"{type(exc).__name__}: {exc}")
                return None
            latencies.append(time.monotonic() - begun)
            return conn

    meter.mark("storm")
    start = time.monotonic()
    opened = await asyncio.gather(*(open_one() for _ in range(args.connections)))
    storm = time.monotonic() - start
    meter.mark("connected")
    conns = [c for c in opened if c is not None]
    await asyncio.sleep(args.idle)
    meter.mark("idle")
    rss_idle = meter.rss()

    # Each connection publishes its messages with confirms.
    confirmed: set[bytes] = set()
    frame_max = conns[0].frame_max if conns else 0
    prefix, suffix = build_publish_frames(args.queue, max(args.size, STAMP.size), frame_max)
    suffix = suffix[STAMP.size :]  # the stamp replaces the first filler bytes

    async def publish(number: int, conn: Connection) -> None:
        await conn.call(commands.Confirm.Select(), commands.Confirm.SelectOk)
        stamps = [STAMP.pack(number, seq) for seq in range(args.messages)]
        done = asyncio.Event()
        unconfirmed = set(range(1, len(stamps) + 1))

        def on_confirm(tag: int, multiple: bool, ack: bool) -> None:
            tags = [t for t in unconfirmed if t <= tag] if multiple else [tag]
            unconfirmed.difference_update(tags)
            if ack:
                confirmed.update(stamps[t - 1] for t in tags)
            if not unconfirmed:
                done.set()

        conn.on_confirm = on_confirm
        conn.write(b"".join(prefix + stamp + suffix for stamp in stamps))
        await done.wait()

    meter.mark("publish")
    begun = time.monotonic()
    await asyncio.wait_for(
        asyncio.gather(*(publish(n, c) for n, c in enumerate(conns))), args.timeout
    )
    try:
        await asyncio.wait_for(got_all.wait(), args.timeout)
    except TimeoutError:
        pass
    published = time.monotonic() - begun
    meter.mark("published")
    await asyncio.gather(*(c.close() for c in conns))
    await consumer.close()
    await admin.call(commands.Queue.Delete(queue=args.queue), commands.Queue.DeleteOk)
    await admin.close()
    out: dict[str, Any] = {
        "connections": args.connections,
        "opened": len(conns),
        "open_failures": len(failures),
        "open_failure_sample": sorted(set(failures))[:3],
        "storm_s": storm,
        "open_p50_ms": 1000 * statistics.median(latencies) if latencies else None,
        "open_p99_ms": 1000 * percentile(latencies, 0.99) if latencies else None,
        "published": len(conns) * args.messages,
        "confirmed": len(confirmed),
        "delivered": len(delivered),
        "confirmed_not_delivered": len(confirmed - delivered),
        "publish_s": published,
    }
    if args.pid:
        assert rss_before is not None and rss_idle is not None
        out |= {
            "rss_before_kb": rss_before,
            "rss_idle_kb": rss_idle,
            "rss_per_connection_kb": (rss_idle - rss_before) / max(1, len(conns)),
            "cpu_storm_pct": meter.cpu_percent("storm", "connected"),
            "cpu_publish_pct": meter.cpu_percent("publish", "published"),
        }
    return out


def report(r: dict[str, Any]) -> str:
    lines = [
        f"connect storm: {r['opened']}/{r['connections']} connections with a channel in "
        f"{r['storm_s']:.2f} s, open p50 {r['open_p50_ms'] or 0:.0f} ms p99 "
        f"{r['open_p99_ms'] or 0:.0f} ms, {r['open_failures']} failed "
        f"{' '.join(r['open_failure_sample'])}",
        f"messages: {r['published']} published, {r['confirmed']} confirmed, {r['delivered']} "
        f"delivered, {r['confirmed_not_delivered']} confirmed but not delivered, in "
        f"{r['publish_s']:.2f} s",
    ]
    if "rss_before_kb" in r:
        lines.append(
            f"broker RSS {r['rss_before_kb'] / 1024:.1f} MB before, "
            f"{r['rss_idle_kb'] / 1024:.1f} MB with the connections idle: "
            f"{r['rss_per_connection_kb']:.2f} KB per connection; broker CPU storm "
            f"{r['cpu_storm_pct']:.0f}%, publishing {r['cpu_publish_pct']:.0f}%"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=3, help="per connection")
    parser.add_argument("--size", type=int, default=64, help="message bytes")
    parser.add_argument("--queue", default="amqp_fleet")
    parser.add_argument("--connecting", type=int, default=200, help="handshakes at once")
    parser.add_argument("--pid", type=int, help="the broker's pid: RSS and CPU from /proc")
    parser.add_argument("--idle", type=float, default=3.0, help="idle seconds before RSS, s")
    parser.add_argument("--connect-timeout", type=float, default=30.0)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    raise_fd_limit(args.connections + 64)
    result = run(fleet(args))
    print(report(result), file=sys.stderr)
    if args.json:
        print(json.dumps(result))
    failed = result["confirmed_not_delivered"] or result["open_failures"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
