#!/usr/bin/env python3
"""MQTT 3.1.1 load generator: QoS 0 and QoS 1 throughput, publish-to-subscriber latency.

Runs against any MQTT 3.1.1 broker (ours, Mosquitto, amqtt, ...), so the numbers compare
directly. The publisher and the subscriber run in separate processes, each a small asyncio
client written for this script (paho would saturate a core before a fast broker does).

Modes:
  qos0     publish --count messages at QoS 0 to a subscribed topic; time until the
           subscriber has them all (or --timeout: a broker may drop QoS 0 messages).
  qos1     publish at QoS 1 with at most --window unacknowledged (the PUBACK window), to a
           clean-session-0 subscriber at QoS 1 that acks each delivery; time until the last
           PUBACK, and until the subscriber has every message.
  latency  one message in flight at a time (QoS 0, then QoS 1): publish-to-delivery p50/p99.
  pubsub   publish at QoS 1 as fast as the PUBACK window allows for --duration seconds, to a
           clean-session-0 subscriber at QoS 1: the publish rate (PUBACKed), the rate at which
           the subscriber keeps up, latency, and how many PUBACKed messages never arrived (a
           broker whose deliveries fall behind may drop them when its queue overflows).
  all      qos0, qos1 and latency in order.

Every payload starts with a stamp (sequence number, send time on the host's monotonic clock);
the subscriber counts duplicates and missing messages, and a run fails (exit 1) when a QoS 1
message is lost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import statistics
import struct
import sys
import time
import uuid
from typing import Any

STAMP = struct.Struct(">Qd")
MODES = ("qos0", "qos1", "latency")
#: run only when asked for
EXTRA_MODES = ("pubsub",)


# -- a minimal MQTT client ------------------------------------------------------------------


def _length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack(">H", len(raw)) + raw


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + _length(len(body)) + body


class Client(asyncio.Protocol):
    """Just enough MQTT: CONNECT, SUBSCRIBE, PUBLISH at QoS 0/1, PUBACK, PINGREQ."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.replies: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue()
        self.acked = 0
        #: called with the packet id of each PUBACK, when the caller wants them
        self.on_puback: Any = None
        self.on_ack: asyncio.Event = asyncio.Event()
        self.on_message: Any = None
        self.closed = asyncio.Event()

    @classmethod
    async def open(cls, args: Any, client_id: str, clean: bool = True) -> Client:
        loop = asyncio.get_running_loop()
        _, client = await loop.create_connection(cls, args.host, args.port)
        flags = (0x02 if clean else 0) | 0xC0
        body = (
            _string("MQTT")
            + bytes((4, flags))
            + struct.pack(">H", 0)
            + _string(client_id)
            + _string(args.user)
            + _string(args.password)
        )
        client.write(_packet(0x10, body))
        kind, reply = await asyncio.wait_for(client.replies.get(), 10)
        if kind != 2 or reply[1] != 0:
            raise RuntimeError(f"CONNECT refused: {reply!r}")
        return client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set()

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        pos, n = 0, len(buf)
        acks = []
        while n - pos >= 2:
            length, shift, i, complete = 0, 0, pos + 1, False
            while i < n and not complete:
                byte = buf[i]
                length |= (byte & 0x7F) << shift
                shift += 7
                i += 1
                complete = not byte & 0x80
            if not complete or i + length > n:
                break
            first = buf[pos]
            kind = first >> 4
            if kind == 4:
                self.acked += 1
                if self.on_puback is not None:
                    self.on_puback((buf[i] << 8) | buf[i + 1])
                self.on_ack.set()
            elif kind == 3:
                size = (buf[i] << 8) | buf[i + 1]
                start = i + 2 + size
                qos = (first >> 1) & 3
                if qos:
                    acks.append(b"\x40\x02" + bytes(buf[start : start + 2]))
                    start += 2
                self.on_message(bytes(buf[start : start + STAMP.size]))
            else:
                self.replies.put_nowait((kind, bytes(buf[i : i + length])))
            pos = i + length
        del buf[:pos]
        if acks and self.transport is not None:
            self.transport.write(b"".join(acks))

    async def subscribe(self, topic: str, qos: int) -> None:
        self.write(_packet(0x82, struct.pack(">H", 1) + _string(topic) + bytes((qos,))))
        kind, reply = await asyncio.wait_for(self.replies.get(), 10)
        if kind != 9 or reply[2] != qos:
            raise RuntimeError(f"SUBSCRIBE refused: {reply!r}")

    async def ping(self) -> None:
        """A PINGRESP proves the broker has read everything sent before the PINGREQ."""
        self.write(b"\xc0\x00")
        kind, _ = await asyncio.wait_for(self.replies.get(), 60)
        assert kind == 13

    def close(self) -> None:
        if self.transport is not None:
            self.write(b"\xe0\x00")
            self.transport.close()


def publish_packet(topic: bytes, payload: bytes, qos: int, packet_id: int) -> bytes:
    head = struct.pack(">H", len(topic)) + topic
    if qos:
        head += struct.pack(">H", packet_id)
    return bytes((0x30 | (qos << 1),)) + _length(len(head) + len(payload)) + head + payload


# -- the roles, each in its own process ---------------------------------------------------------


def run(coro: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


def subscriber(args: Any, topic: str, qos: int, count: int, ready: Any, results: Any) -> None:
    async def main() -> dict[str, Any]:
        seen: set[int] = set()
        duplicates = 0
        latencies: list[float] = []
        last = 0.0
        client_id = f"bench-sub-{uuid.uuid4().hex[:8]}"

        def on_message(stamp: bytes) -> None:
            nonlocal duplicates, last
            last = time.monotonic()
            seq, sent = STAMP.unpack(stamp)
            latencies.append(last - sent)
            if seq in seen:
                duplicates += 1
            seen.add(seq)

        client = await Client.open(args, client_id, clean=qos == 0)
        client.on_message = on_message
        await client.subscribe(topic, qos)
        ready.set()
        deadline = time.monotonic() + args.timeout
        # Until all arrived; a broker that dropped messages gets --idle quiet seconds.
        while len(seen) < count and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            if last and time.monotonic() - last > args.idle:
                break
        finished = last
        client.close()
        if qos:  # remove the persistent session again
            await asyncio.sleep(0.1)
            (await Client.open(args, client_id, clean=True)).close()
        return {
            "received": len(seen),
            "duplicates": duplicates,
            "finished": finished,
            "latencies": latencies,
        }

    results.put(("sub", run(main())))


def publisher(
    args: Any, topic: str, qos: int, count: int, paced: bool, go: Any, results: Any
) -> None:
    async def main() -> dict[str, Any]:
        client = await Client.open(args, f"bench-pub-{uuid.uuid4().hex[:8]}")
        name = topic.encode()
        padding = b"x" * max(0, args.size - STAMP.size)
        go.wait()
        start = time.monotonic()
        packet_id = 0
        batch: list[bytes] = []
        for seq in range(count):
            if qos:
                while seq - client.acked >= (1 if paced else args.window):
                    client.write(b"".join(batch))
                    batch.clear()
                    client.on_ack.clear()
                    await client.on_ack.wait()
                packet_id = packet_id % 0xFFFF + 1
            payload = STAMP.pack(seq, time.monotonic()) + padding
            batch.append(publish_packet(name, payload, qos, packet_id))
            if paced:
                client.write(b"".join(batch))
                batch.clear()
                await asyncio.sleep(args.pace)
            elif len(batch) >= 64:
                client.write(b"".join(batch))
                batch.clear()
                await asyncio.sleep(0)
        client.write(b"".join(batch))
        while qos and client.acked < count:
            client.on_ack.clear()
            await client.on_ack.wait()
        await client.ping()
        published = time.monotonic()
        client.close()
        return {"start": start, "published": published}

    results.put(("pub", run(main())))


def measure(args: Any, mode: str, qos: int, count: int, paced: bool) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    ready, go, results = ctx.Event(), ctx.Event(), ctx.Queue()
    topic = f"bench/{uuid.uuid4().hex[:8]}/data"
    sub = ctx.Process(target=subscriber, args=(args, topic, qos, count, ready, results))
    sub.start()
    if not ready.wait(30):
        raise RuntimeError("the subscriber did not connect")
    pub = ctx.Process(target=publisher, args=(args, topic, qos, count, paced, go, results))
    pub.start()
    time.sleep(0.5)  # let the publisher connect before the clock starts
    go.set()
    got = dict(results.get(timeout=args.timeout + 60) for _ in range(2))
    sub.join(30)
    pub.join(30)
    p, s = got["pub"], got["sub"]
    lat = sorted(s["latencies"])
    out = {
        "mode": mode,
        "qos": qos,
        "count": count,
        "received": s["received"],
        "duplicates": s["duplicates"],
        "publish_rate": count / (p["published"] - p["start"]),
        "delivery_rate": s["received"] / max(1e-9, s["finished"] - p["start"]),
    }
    if lat:
        out["p50_ms"] = 1000 * statistics.median(lat)
        out["p99_ms"] = 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))]
    return out


def pubsub_subscriber(
    args: Any, topic: str, ready: Any, done: Any, total: Any, results: Any
) -> None:
    """Receive until every PUBACKed message is here, or --idle seconds pass without one."""

    async def main() -> dict[str, Any]:
        seen: set[int] = set()
        latencies: list[float] = []
        last = time.monotonic()
        client_id = f"bench-sub-{uuid.uuid4().hex[:8]}"

        def on_message(stamp: bytes) -> None:
            nonlocal last
            last = time.monotonic()
            seq, sent = STAMP.unpack(stamp)
            latencies.append(last - sent)
            seen.add(seq)

        client = await Client.open(args, client_id, clean=False)
        client.on_message = on_message
        await client.subscribe(topic, 1)
        ready.set()
        deadline = time.monotonic() + args.duration + args.timeout
        while time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            if done.is_set() and (len(seen) >= total.value or time.monotonic() - last > args.idle):
                break
        client.close()
        await asyncio.sleep(0.1)
        (await Client.open(args, client_id, clean=True)).close()
        return {"seen": seen, "finished": last, "latencies": latencies}

    results.put(("sub", run(main())))


def pubsub_publisher(args: Any, topic: str, go: Any, done: Any, total: Any, results: Any) -> None:
    """Publish at QoS 1 within the PUBACK window for --duration seconds."""

    async def main() -> dict[str, Any]:
        client = await Client.open(args, f"bench-pub-{uuid.uuid4().hex[:8]}")
        acked: set[int] = set()
        name = topic.encode()
        padding = b"x" * max(0, args.size - STAMP.size)
        seq_of: dict[int, int] = {}
        client.on_puback = lambda packet_id: acked.add(seq_of[packet_id])
        go.wait()
        start = time.monotonic()
        stop = start + args.duration
        seq = 0
        while time.monotonic() < stop:
            batch = []
            while seq - client.acked < args.window and len(batch) < 64:
                packet_id = seq % 0xFFFF + 1
                seq_of[packet_id] = seq
                batch.append(
                    publish_packet(name, STAMP.pack(seq, time.monotonic()) + padding, 1, packet_id)
                )
                seq += 1
            if batch:
                client.write(b"".join(batch))
            client.on_ack.clear()
            if seq - client.acked >= args.window:
                await client.on_ack.wait()
            else:
                await asyncio.sleep(0)
        ended = time.monotonic()
        # Acks still due count as published, once they come.
        while client.acked < seq:
            client.on_ack.clear()
            try:
                await asyncio.wait_for(client.on_ack.wait(), args.idle)
            except TimeoutError:
                break
        total.value = len(acked)
        done.set()
        client.close()
        return {"start": start, "ended": ended, "acked": acked, "sent": seq}

    results.put(("pub", run(main())))


def measure_pubsub(args: Any) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    ready, go, done, results = ctx.Event(), ctx.Event(), ctx.Event(), ctx.Queue()
    total = ctx.Value("q", 1 << 62)
    topic = f"bench/{uuid.uuid4().hex[:8]}/data"
    sub = ctx.Process(target=pubsub_subscriber, args=(args, topic, ready, done, total, results))
    sub.start()
    if not ready.wait(30):
        raise RuntimeError("the subscriber did not connect")
    pub = ctx.Process(target=pubsub_publisher, args=(args, topic, go, done, total, results))
    pub.start()
    time.sleep(0.5)  # let the publisher connect before the clock starts
    go.set()
    got = dict(results.get(timeout=2 * args.timeout + args.duration) for _ in range(2))
    sub.join(30)
    pub.join(30)
    p, s = got["pub"], got["sub"]
    lat = sorted(s["latencies"])
    acked = p["acked"]
    return {
        "mode": "pubsub",
        "qos": 1,
        "count": len(acked),
        "received": len(s["seen"]),
        "duplicates": len(s["latencies"]) - len(s["seen"]),
        "lost": len(acked - s["seen"]),
        "publish_rate": len(acked) / (p["ended"] - p["start"]),
        "delivery_rate": len(s["seen"]) / max(1e-9, s["finished"] - p["start"]),
        "p50_ms": 1000 * statistics.median(lat) if lat else 0.0,
        "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else 0.0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--user", default="guest")
    parser.add_argument("--password", default="guest")
    parser.add_argument("--mode", choices=(*MODES, *EXTRA_MODES, "all"), default="all")
    parser.add_argument("--duration", type=float, default=5.0, help="pubsub mode: seconds")
    parser.add_argument("--count", type=int, default=50_000)
    parser.add_argument("--latency-count", type=int, default=2_000)
    parser.add_argument("--size", type=int, default=1024, help="payload bytes")
    parser.add_argument("--window", type=int, default=100, help="unacked QoS 1 publishes")
    parser.add_argument("--pace", type=float, default=0.001, help="latency mode gap, s")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument(
        "--idle", type=float, default=3.0, help="give up after this long without a delivery, s"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    runs = []
    modes = MODES if args.mode == "all" else (args.mode,)
    for mode in modes:
        if mode == "pubsub":
            runs.append(measure_pubsub(args))
        elif mode == "latency":
            runs.append(measure(args, "latency", 0, args.latency_count, paced=True))
            runs.append(measure(args, "latency", 1, args.latency_count, paced=True))
        else:
            runs.append(measure(args, mode, int(mode[-1]), args.count, paced=False))
    failed = False
    for r in runs:
        line = (
            f"{r['mode']} qos{r['qos']}: publish {r['publish_rate']:.0f} msg/s, delivered "
            f"{r['received']}/{r['count']} at {r['delivery_rate']:.0f} msg/s"
        )
        if "p50_ms" in r:
            line += f", latency p50 {r['p50_ms']:.2f} ms p99 {r['p99_ms']:.2f} ms"
        if r["duplicates"]:
            line += f", {r['duplicates']} duplicates"
        if "lost" in r:
            line += f", {r['lost']} PUBACKed but not delivered"
        print(line, file=sys.stderr)
        failed |= r["qos"] == 1 and r.get("lost", r["count"] - r["received"]) > 0
    if args.json:
        print(json.dumps(runs))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
