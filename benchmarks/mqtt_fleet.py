#!/usr/bin/env python3
"""MQTT fleet load generator: many device connections, each sending QoS 1 telemetry once a second.

Devices are what MQTT is for: thousands of small connections, each quiet most of the time. This
opens --devices connections (split over --processes client processes, so that the client is not
the limit), measures the connect storm (time until every CONNACK, CONNACK latency p50/p99), the
broker's memory with every device connected and idle, then has each device publish once a second
(staggered over the second) on `telemetry/<device>` for --duration seconds, to one subscriber on
`telemetry/#` (clean session, acking at the same QoS).

Reported: publishes attempted, PUBACKed, delivered to the subscriber, PUBACKed but not
delivered (a lost message: the run fails, exit 1), publish-to-delivery latency p50/p99, and,
given the broker's --pid, its RSS before the devices connect and with them idle (and the
difference per connection) and its CPU use in each phase. It speaks plain MQTT 3.1.1, so the
same command measures our broker, Mosquitto and RabbitMQ's MQTT plugin.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing as mp
import os
import resource
import statistics
import struct
import sys
import time
import uuid
from typing import Any

from mqtt_bench import STAMP, Client, _packet, _string, publish_packet, run

#: connections a client process has in their handshake at once (the rest wait their turn)
CONNECTING_PER_PROCESS = 500
#: devices one client process drives (each publishing once a second)
DEVICES_PER_PROCESS = 2500


def raise_fd_limit(needed: int) -> None:
    """Each device is a socket: ask for as many descriptors as the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, needed + 1024)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft != resource.RLIM_INFINITY and soft < needed:
        raise SystemExit(f"{needed} sockets need more descriptors than the limit ({soft})")


# -- the broker process, seen through /proc ---------------------------------------------------


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    # utime and stime, fields 14 and 15 of stat(5), the first two after the state's 11
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class BrokerMeter:
    """RSS and CPU of the broker process at the phase boundaries (nothing without a pid)."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.marks: dict[str, tuple[float, float]] = {}

    def mark(self, name: str) -> None:
        if self.pid:
            self.marks[name] = (time.monotonic(), cpu_seconds(self.pid))

    def cpu_percent(self, start: str, end: str) -> float | None:
        if start not in self.marks or end not in self.marks:
            return None
        (t0, c0), (t1, c1) = self.marks[start], self.marks[end]
        return 100 * (c1 - c0) / max(1e-9, t1 - t0)

    def rss(self) -> int | None:
        return rss_kb(self.pid) if self.pid else None


# -- a device connection ------------------------------------------------------------------------


async def connect(args: Any, client_id: str, clean: bool, keepalive: int) -> Client:
    """CONNECT with a keepalive (devices have one); CONNACK within --connect-timeout."""
    loop = asyncio.get_running_loop()
    _, client = await asyncio.wait_for(
        loop.create_connection(Client, args.host, args.port), args.connect_timeout
    )
    flags = (0x02 if clean else 0) | (0xC0 if args.user else 0)
    body = _string("MQTT") + bytes((4, flags)) + struct.pack(">H", keepalive) + _string(client_id)
    if args.user:
        body += _string(args.user) + _string(args.password)
    client.write(_packet(0x10, body))
    kind, reply = await asyncio.wait_for(client.replies.get(), args.connect_timeout)
    if kind != 2 or reply[1] != 0:
        client.close()
        raise ConnectionRefusedError(f"CONNECT refused: {reply!r}")
    return client


def by_second(received: dict[int, float]) -> list[list[float]]:
    """The delivery latencies of each second's publishes (a device's n-th is in second n)."""
    seconds: list[list[float]] = []
    for key, latency in received.items():
        seq = key & 0xFFFFFFFF
        seconds.extend([] for _ in range(seq + 1 - len(seconds)))
        seconds[seq].append(latency)
    return seconds


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


# -- the roles, each in its own process ---------------------------------------------------------


def subscriber(args: Any, ready: Any, expected: Any, results: Any) -> None:
    """One subscriber on telemetry/#: every stamp it gets, and when. It stops once told how
    many were PUBACKed and it has them all, or after --drain seconds without a delivery."""

    async def main() -> dict[str, Any]:
        received: dict[int, float] = {}
        duplicates = 0

        def on_message(stamp: bytes) -> None:
            nonlocal duplicates
            key, sent = STAMP.unpack(stamp)
            if key in received:
                duplicates += 1
            else:
                received[key] = time.monotonic() - sent

        client = await connect(args, f"fleet-sub-{uuid.uuid4().hex[:8]}", True, 60)
        client.on_message = on_message
        await client.subscribe(f"{args.topic}/#", args.qos)
        ready.set()
        last_count, last_change = 0, time.monotonic()
        wanted = math.inf
        while wanted == math.inf or (
            len(received) < wanted and time.monotonic() - last_change < args.drain
        ):
            await asyncio.sleep(0.1)
            if len(received) != last_count:
                last_count, last_change = len(received), time.monotonic()
            if wanted == math.inf and not expected.empty():
                wanted = expected.get()
                last_change = time.monotonic()
        client.close()
        return {"received": received, "duplicates": duplicates}

    results.put(("sub", run(main())))


def devices(
    args: Any, first: int, count: int, go: Any, publish_at: Any, closing: Any, results: Any
) -> None:
    """Devices first..first+count-1: connect them all, then publish once a second each."""

    async def main() -> dict[str, Any]:
        go.wait()
        started = time.monotonic()
        gate = asyncio.Semaphore(CONNECTING_PER_PROCESS)
        latencies: list[float] = []
        failures: list[str] = []

        async def open_one(number: int) -> Client | None:
            async with gate:
                begun = time.monotonic()
                try:
                    client = await connect(args, f"fleet-{args.run}-{number}", True, args.keepalive)
                except (OSError, TimeoutError, ConnectionRefusedError) as exc:
                    failures.append(f"{type(exc).__name__}: {exc}")
                    return None
                latencies.append(time.monotonic() - begun)
                client.on_message = lambda stamp: None
                return client

        opened = await asyncio.gather(*(open_one(first + i) for i in range(count)))
        connected = time.monotonic()
        results.put(
            (
                "connected",
                {"start": started, "end": connected, "latencies": latencies, "failures": failures},
            )
        )
        start = publish_at.get()
        fleet = [(first + i, c) for i, c in enumerate(opened) if c is not None]
        sent = await publish_telemetry(args, fleet, start)
        # Wait for the PUBACKs of everything sent (or --drain seconds).
        deadline = time.monotonic() + args.drain
        while args.qos and time.monotonic() < deadline:
            if all(c.acked >= sent[n] for n, c in fleet):
                break
            await asyncio.sleep(0.1)
        acked = {n: (c.acked if args.qos else sent[n]) for n, c in fleet}
        closed = sum(c.closed.is_set() for _, c in fleet)
        results.put(("devices", {"sent": sent, "acked": acked, "closed_by_broker": closed}))
        # Connected until the subscriber is done: the disconnect storm of a process that is
        # through would otherwise delay the last deliveries of the others.
        await asyncio.get_running_loop().run_in_executor(None, closing.wait)
        for _, c in fleet:
            c.close()

    run(main())


async def publish_telemetry(
    args: Any, fleet: list[tuple[int, Client]], start: float
) -> dict[int, int]:
    """Each device publishes once a second, device n at n/devices into each second, from
    `start` (a monotonic time shared by every process) for --duration seconds."""
    padding = b"x" * max(0, args.payload - STAMP.size)
    sent = {n: 0 for n, _ in fleet}
    topics = {n: f"{args.topic}/{n}".encode() for n, _ in fleet}
    slots = sorted(((n % args.devices) / args.devices, n, c) for n, c in fleet)
    loop = asyncio.get_running_loop()
    for second in range(args.duration):
        for offset, n, client in slots:
            due = start + second + offset
            delay = due - loop.time()
            if delay > 0.002:
                await asyncio.sleep(delay)
            if client.closed.is_set():
                continue
            seq = sent[n]
            payload = STAMP.pack((n << 32) | seq, time.monotonic()) + padding
            client.write(publish_packet(topics[n], payload, args.qos, seq % 0xFFFF + 1))
            sent[n] = seq + 1
    return sent


# -- the run ---------------------------------------------------------------------------------


def fleet(args: Any) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    meter = BrokerMeter(args.pid)
    ready, go, closing = ctx.Event(), ctx.Event(), ctx.Event()
    expected, results = ctx.Queue(), ctx.Queue()
    sub = ctx.Process(target=subscriber, args=(args, ready, expected, results))
    sub.start()
    if not ready.wait(30):
        raise RuntimeError("the subscriber did not connect")
    rss_before = meter.rss()
    processes = args.processes or math.ceil(args.devices / DEVICES_PER_PROCESS)
    share = math.ceil(args.devices / processes)
    publish_at = [ctx.Queue() for _ in range(processes)]
    workers = []
    for i in range(processes):
        first, count = i * share, min(share, args.devices - i * share)
        worker = ctx.Process(
            target=devices, args=(args, first, count, go, publish_at[i], closing, results)
        )
        worker.start()
        workers.append(worker)
    time.sleep(1.0)  # the client processes start (imports) before the clock does
    meter.mark("storm")
    go.set()
    connected = [results.get(timeout=600)[1] for _ in workers]
    meter.mark("connected")
    storm_start = min(c["start"] for c in connected)
    storm_end = max(c["end"] for c in connected)
    connack = [x for c in connected for x in c["latencies"]]
    failures = [f for c in connected for f in c["failures"]]
    # Idle: every device connected, nothing sent; let the broker settle before reading RSS.
    time.sleep(args.idle)
    meter.mark("idle")
    rss_idle = meter.rss()
    start = time.monotonic() + 1.0
    for q in publish_at:
        q.put(start)
    meter.mark("publish")
    got: dict[str, list[Any]] = {"devices": []}
    for _ in workers:
        kind, value = results.get(timeout=args.duration + args.drain + 120)
        got[kind].append(value)
    meter.mark("published")
    # The subscriber gets what was PUBACKed, or --drain more seconds.
    sent = {n: k for d in got["devices"] for n, k in d["sent"].items()}
    acked = {n: k for d in got["devices"] for n, k in d["acked"].items()}
    expected.put(sum(acked.values()))
    kind, sub_result = results.get(timeout=args.duration + args.drain + 600)
    closing.set()
    for process in (*workers, sub):
        process.join(30)
    received: dict[int, float] = sub_result["received"]
    lost = sum(1 for n, k in acked.items() for seq in range(k) if (n << 32) | seq not in received)
    latencies = list(received.values())
    attempted, puback = sum(sent.values()), sum(acked.values())
    out: dict[str, Any] = {
        "devices": args.devices,
        "processes": processes,
        "connected": len(connack),
        "connect_failures": len(failures),
        "connect_failure_sample": sorted(set(failures))[:3],
        "storm_s": storm_end - storm_start,
        "connack_p50_ms": 1000 * statistics.median(connack) if connack else None,
        "connack_p99_ms": 1000 * percentile(connack, 0.99) if connack else None,
        "attempted": attempted,
        "pubacked": puback,
        "delivered": len(received),
        "pubacked_not_delivered": lost,
        "duplicates": sub_result["duplicates"],
        "closed_by_broker": sum(d["closed_by_broker"] for d in got["devices"]),
        "delivery_p50_ms": 1000 * statistics.median(latencies) if latencies else None,
        "delivery_p99_ms": 1000 * percentile(latencies, 0.99) if latencies else None,
        "delivery_p99_ms_by_second": [
            round(1000 * percentile(second, 0.99), 1) for second in by_second(received) if second
        ],
    }
    if args.pid:
        assert rss_before is not None and rss_idle is not None
        out |= {
            "rss_before_kb": rss_before,
            "rss_idle_kb": rss_idle,
            "rss_per_connection_kb": (rss_idle - rss_before) / max(1, len(connack)),
            "cpu_storm_pct": meter.cpu_percent("storm", "connected"),
            "cpu_idle_pct": meter.cpu_percent("connected", "idle"),
            "cpu_publish_pct": meter.cpu_percent("publish", "published"),
        }
    return out


def report(r: dict[str, Any]) -> str:
    def ms(key: str) -> str:
        return "-" if r[key] is None else f"{r[key]:.0f} ms"

    lines = [
        f"connect storm: {r['connected']}/{r['devices']} devices in {r['storm_s']:.2f} s "
        f"({r['processes']} client processes), CONNACK p50 {ms('connack_p50_ms')} "
        f"p99 {ms('connack_p99_ms')}, {r['connect_failures']} failed "
        f"{' '.join(r['connect_failure_sample'])}",
        f"telemetry: {r['attempted']} attempted, {r['pubacked']} PUBACKed, {r['delivered']} "
        f"delivered, {r['pubacked_not_delivered']} PUBACKed but not delivered, "
        f"{r['duplicates']} duplicates, {r['closed_by_broker']} devices closed by the broker",
        f"delivery latency p50 {ms('delivery_p50_ms')} p99 {ms('delivery_p99_ms')}; p99 of "
        f"each second, ms: {' '.join(f'{x:.0f}' for x in r['delivery_p99_ms_by_second'])}",
    ]
    if "rss_before_kb" in r:
        lines.append(
            f"broker RSS {r['rss_before_kb'] / 1024:.1f} MB before, "
            f"{r['rss_idle_kb'] / 1024:.1f} MB with the devices idle: "
            f"{r['rss_per_connection_kb']:.2f} KB per connection; broker CPU storm "
            f"{r['cpu_storm_pct']:.0f}%, idle {r['cpu_idle_pct']:.0f}%, "
            f"publishing {r['cpu_publish_pct']:.0f}%"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--user", default="guest", help="empty: connect anonymously")
    parser.add_argument("--password", default="guest")
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--duration", type=int, default=15, help="seconds of telemetry")
    parser.add_argument("--qos", type=int, choices=(0, 1), default=1)
    parser.add_argument("--payload", type=int, default=64, help="bytes per publish")
    parser.add_argument("--keepalive", type=int, default=60, help="devices' keepalive, s")
    parser.add_argument("--topic", default="telemetry")
    parser.add_argument("--pid", type=int, help="the broker's pid: RSS and CPU from /proc")
    parser.add_argument("--processes", type=int, default=0, help="client processes [1/2500]")
    parser.add_argument("--idle", type=float, default=3.0, help="idle seconds before RSS, s")
    parser.add_argument("--drain", type=float, default=15.0, help="wait for acks, s")
    parser.add_argument("--connect-timeout", type=float, default=30.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    args.run = uuid.uuid4().hex[:6]
    raise_fd_limit(args.devices + 64)
    result = fleet(args)
    print(report(result), file=sys.stderr)
    if args.json:
        print(json.dumps(result))
    return 1 if result["pubacked_not_delivered"] or result["connect_failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
