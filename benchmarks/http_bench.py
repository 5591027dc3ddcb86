#!/usr/bin/env python3
"""CMQ API 2.0 load generator: SendMessage, BatchSendMessage, Receive+Delete, long-poll wake-up.

Every request is signed (HmacSHA1) and sent over keep-alive connections, several at once; each
connection keeps one request in flight, as the official SDKs do. Against any CMQ-compatible
endpoint with `--endpoint/--secret-id/--secret-key`, or against a broker of our own started in
a temporary directory with `--spawn`.

Modes:
  send           SendMessage, one message per request
  batch-send     BatchSendMessage, 16 messages per request
  receive        ReceiveMessage + DeleteMessage of a backlog (published first, untimed)
  batch-receive  BatchReceiveMessage(16) + BatchDeleteMessage of a backlog
  wakeup         a long poll waits, a message is sent: latency until the receive answers
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
import random
import re
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, cast

MODES = ("send", "batch-send", "receive", "batch-receive", "wakeup")
BATCH = 16
#: what `urllib.parse.quote_plus` leaves as it is
_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]*")
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*([0-9]+)[ \t]*\r\n", re.IGNORECASE)
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass
class Target:
    endpoint: str
    secret_id: str
    secret_key: str

    @property
    def host(self) -> str:
        return urllib.parse.urlsplit(self.endpoint).netloc


class Client:
    """One keep-alive HTTP/1.1 connection, one request in flight, each request freshly signed.

    A raw asyncio client rather than aiohttp's: the load generator shares two cores with the
    broker, and aiohttp's client cost about as much CPU per request as the broker itself.
    """

    def __init__(self, target: Target) -> None:
        self.target = target
        parts = urllib.parse.urlsplit(target.endpoint)
        self._address = (parts.hostname or "127.0.0.1", parts.port or _DEFAULT_PORTS[parts.scheme])
        self._tls = ssl.create_default_context() if parts.scheme == "https" else None
        self._head = f"POST /v2/index.php HTTP/1.1\r\nHost: {target.host}\r\n".encode()
        self._prefix = f"POST{target.host}/v2/index.php?"
        #: keyed once, copied per request: the client shares the cores with the broker
        self._mac = hmac.new(target.secret_key.encode(), digestmod=hashlib.sha1)
        self._connection: _Connection | None = None

    def _body(self, action: str, params: dict[str, Any]) -> str:
        values = {k: str(v) for k, v in params.items()}
        values.update(
            Action=action,
            SecretId=self.target.secret_id,
            Timestamp=str(int(time.time())),
            Nonce=str(random.getrandbits(62) + 1),
            SignatureMethod="HmacSHA1",
        )
        joined = "&".join([f"{k.replace('_', '.')}={values[k]}" for k in sorted(values)])
        mac = self._mac.copy()
        mac.update((self._prefix + joined).encode())
        values["Signature"] = base64.b64encode(mac.digest()).decode()
        return form(values)

    async def call(self, action: str, **params: Any) -> dict[str, Any]:
        body = self._body(action, params).encode()
        if self._connection is None or self._connection.closed:
            loop = asyncio.get_running_loop()
            _, self._connection = await loop.create_connection(
                _Connection, *self._address, ssl=self._tls
            )
        request = b"%sContent-Length: %d\r\n\r\n%s" % (self._head, len(body), body)
        reply: dict[str, Any] = json.loads(await self._connection.exchange(request))
        return reply

    async def ok(self, action: str, **params: Any) -> dict[str, Any]:
        reply = await self.call(action, **params)
        if reply["code"] != 0:
            raise RuntimeError(f"{action}: {reply}")
        return reply

    async def close(self) -> None:
        if self._connection is not None:
            self._connection.close()


class _Connection(asyncio.Protocol):
    """Sends a request and collects its response's body (Content-Length framed)."""

    def __init__(self) -> None:
        self.closed = False
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiting: asyncio.Future[bytes] | None = None
        #: (offset of the body, its length) once the head is in
        self._framing: tuple[int, int] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def exchange(self, request: bytes) -> asyncio.Future[bytes]:
        assert self._transport is not None and self._waiting is None
        self._waiting = asyncio.get_running_loop().create_future()
        self._transport.write(request)
        return self._waiting

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._framing is None:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            match = _CONTENT_LENGTH.search(self._buffer, 0, end + 2)
            if not self._buffer.startswith(b"HTTP/1.1 200 ") or match is None:
                head = bytes(self._buffer[:end])
                self._fail(RuntimeError(f"unexpected response head: {head!r}"))
                return
            self._framing = (end + 4, int(match[1]))
        start, length = self._framing
        if len(self._buffer) < start + length:
            return
        body = bytes(self._buffer[start : start + length])
        del self._buffer[: start + length]
        self._framing = None
        waiting, self._waiting = self._waiting, None
        if waiting is not None and not waiting.done():
            waiting.set_result(body)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(exc or ConnectionError("the server closed the connection"))

    def _fail(self, exc: BaseException) -> None:
        waiting, self._waiting = self._waiting, None
        if waiting is not None and not waiting.done():
            waiting.set_exception(exc)
        self.close()

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()


def form(values: dict[str, str]) -> str:
    """`urllib.parse.urlencode(values)`, skipping quote_plus for what it would not change."""
    return "&".join([f"{_quote(k)}={_quote(v)}" for k, v in values.items()])


def _quote(text: str) -> str:
    return text if _UNRESERVED.fullmatch(text) else urllib.parse.quote_plus(text)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


async def fill(client: Client, queue: str, count: int, body: str) -> None:
    batch = {f"msgBody.{i}": body for i in range(1, BATCH + 1)}
    for _ in range(-(-count // BATCH)):
        await client.ok("BatchSendMessage", queueName=queue, **batch)


async def run_mode(mode: str, target: Target, args: argparse.Namespace) -> str:
    clients = [Client(target) for _ in range(args.connections)]
    queue = f"bench-{os.getpid()}-{mode}"
    admin = clients[0]
    await admin.ok("CreateQueue", queueName=queue, maxMsgHeapNum=100_000_000)
    body = "x" * args.size
    try:
        if mode == "wakeup":
            return await wakeup(clients, queue, args)
        per_request = BATCH if mode.startswith("batch") else 1
        requests = args.count // per_request
        if mode.endswith("receive"):
            await fill(admin, queue, requests * per_request, body)
        latencies: list[float] = []
        remaining = [requests]

        async def worker(client: Client) -> None:
            while remaining[0] > 0:
                remaining[0] -= 1
                start = time.perf_counter()
                if mode == "send":
                    await client.ok("SendMessage", queueName=queue, msgBody=body)
                elif mode == "batch-send":
                    params = {f"msgBody.{i}": body for i in range(1, BATCH + 1)}
                    await client.ok("BatchSendMessage", queueName=queue, **params)
                elif mode == "receive":
                    got = await client.ok("ReceiveMessage", queueName=queue, pollingWaitSeconds=1)
                    await client.ok(
                        "DeleteMessage", queueName=queue, receiptHandle=got["receiptHandle"]
                    )
                else:
                    got = await client.ok(
                        "BatchReceiveMessage", queueName=queue, numOfMsg=BATCH, pollingWaitSeconds=1
                    )
                    handles = {
                        f"receiptHandle.{i}": m["receiptHandle"]
                        for i, m in enumerate(got["msgInfoList"], 1)
                    }
                    await client.ok("BatchDeleteMessage", queueName=queue, **handles)
                latencies.append(time.perf_counter() - start)

        cpu = cpu_seconds(args.broker_pid), time.process_time()
        start = time.perf_counter()
        await asyncio.gather(*(worker(c) for c in clients))
        elapsed = time.perf_counter() - start
        broker_cpu = (cpu_seconds(args.broker_pid) - cpu[0]) / elapsed
        client_cpu = (time.process_time() - cpu[1]) / elapsed
        messages = requests * per_request
        http_requests = requests * (2 if mode.endswith("receive") else 1)
        rate = http_requests / elapsed
        return (
            f"{mode}: {messages} msgs in {elapsed:.2f} s = {messages / elapsed:.0f} msg/s "
            f"({rate:.0f} HTTP req/s, {args.connections} connections) | "
            f"per {'receive+delete' if mode.endswith('receive') else 'request'} "
            f"p50 {percentile(latencies, 0.5) * 1000:.2f} ms "
            f"p99 {percentile(latencies, 0.99) * 1000:.2f} ms | "
            f"cpu broker {broker_cpu:.0%} ({broker_cpu / rate * 1e6:.0f} us/req) "
            f"client {client_cpu:.0%} ({client_cpu / rate * 1e6:.0f} us/req)"
        )
    finally:
        await admin.call("DeleteQueue", queueName=queue)
        for c in clients:
            await c.close()


async def wakeup(clients: list[Client], queue: str, args: argparse.Namespace) -> str:
    """Time from the send request leaving until the waiting receive answers."""
    receiver, sender = clients[0], clients[-1] if len(clients) > 1 else Client(clients[0].target)
    latencies: list[float] = []
    for _ in range(args.wakeups):
        waiting = asyncio.create_task(
            receiver.ok("ReceiveMessage", queueName=queue, pollingWaitSeconds=10)
        )
        await asyncio.sleep(0.02)  # let the receive reach the broker and wait there
        sent_at = time.perf_counter()
        await sender.ok("SendMessage", queueName=queue, msgBody="wake")
        got = await waiting
        latencies.append(time.perf_counter() - sent_at)
        await receiver.ok("DeleteMessage", queueName=queue, receiptHandle=got["receiptHandle"])
    if sender is not clients[-1]:
        await sender.close()
    p50, p99 = statistics.median(latencies) * 1000, percentile(latencies, 0.99) * 1000
    return (
        f"wakeup: {len(latencies)} long polls | send-to-receive p50 {p50:.2f} ms p99 {p99:.2f} ms"
    )


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a local process (Linux), 0 when unknown."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn_broker(workdir: str) -> tuple[subprocess.Popen[bytes], Target]:
    """Our broker on free ports in `workdir`, with a fresh access key."""
    data = os.path.join(workdir, "data")
    ports = [free_port() for _ in range(5)]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [sys.executable, "-m", "broker", "serve", "--data-dir", data, "--host", "127.0.0.1"]
    cmd += ["--management-port", "0"]  # RabbitMQ's may run beside it
    flags = ("--amqp-port", "--mqtt-port", "--mqtt-ws-port", "--http-port", "--metrics-port")
    for flag, port in zip(flags, ports, strict=True):
        cmd += [flag, str(port)]
    log = open(os.path.join(workdir, "broker.log"), "wb")  # noqa: SIM115 (lives with the broker)
    proc = subprocess.Popen(cmd, cwd=root, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", ports[0]), 0.5).close()
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the broker did not start; see broker.log") from None
            time.sleep(0.05)
    keys = [sys.executable, "-m", "broker", "keys", "create", "--vhost", "/", "--data-dir", data]
    out = subprocess.run(keys, cwd=root, check=True, capture_output=True, text=True).stdout
    fields = dict(line.split(": ", 1) for line in out.splitlines())
    return proc, Target(f"http://127.0.0.1:{ports[3]}", fields["SecretId"], fields["SecretKey"])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--endpoint", default="http://127.0.0.1:15680")
    p.add_argument("--secret-id", default="")
    p.add_argument("--secret-key", default="")
    p.add_argument("--spawn", action="store_true", help="start a broker of our own to measure")
    p.add_argument("--mode", choices=[*MODES, "all"], default="all")
    p.add_argument("--count", type=int, default=5000, help="messages per mode")
    p.add_argument("--size", type=int, default=1024, help="body size in bytes")
    p.add_argument("--connections", type=int, default=8, help="concurrent keep-alive connections")
    p.add_argument("--wakeups", type=int, default=50, help="long polls timed in wakeup mode")
    p.add_argument("--broker-pid", type=int, help="a local broker's pid, to report its CPU use")
    return p.parse_args(argv)


async def run(args: argparse.Namespace, target: Target) -> None:
    modes = MODES if args.mode == "all" else (args.mode,)
    for mode in modes:
        print(await run_mode(mode, target, args), flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    if not args.spawn:
        asyncio.run(run(args, Target(args.endpoint, args.secret_id, args.secret_key)))
        return 0
    with tempfile.TemporaryDirectory(prefix="http-bench-") as workdir:
        proc, target = spawn_broker(workdir)
        args.broker_pid = proc.pid
        try:
            asyncio.run(run(args, target))
        finally:
            proc.terminate()
            proc.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
