"""CMQ API test clients: Tencent's own SDK, a small signed client, and an HTTP push receiver.

The SDK (package `cmq`, from qcloud-cmq-sdk-py3) is used unchanged. The signed client fills in
what the SDK cannot send (dead-letter parameters, UpperCamel names, broken signatures, raw
bodies); it signs as the SDK does, independently of the broker's code.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import http.client
import json
import logging
import pathlib
import queue
import random
import ssl
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from cmq.account import Account

# The SDK logs to ./CMQ_python_sdk.log unless its logger already has a handler.
logging.getLogger("CMQ_python_sdk").addHandler(logging.NullHandler())

TIMEOUT = 10.0
SECRET_ID = "AKIDcompatTests"
SECRET_KEY = "compat-secret-key"

#: test knobs: short push retries and timeouts, and retention down to 1 s
TEST_CONFIG = """\
http_push_retry_unit_ms = 50
http_push_timeout = 1.0
http_min_retention_seconds = 1
"""


def uid(prefix: str = "q") -> str:
    """A fresh CMQ-valid name."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def write_config(directory: pathlib.Path, extra: str = "") -> pathlib.Path:
    path = directory / "cmq-test.toml"
    path.write_text(TEST_CONFIG + extra)
    return path


class CmqBroker:
    """A BrokerProcess (see conftest) with an access key for the CMQ API."""

    def __init__(self, process: Any, secret_id: str = SECRET_ID, secret_key: str = SECRET_KEY):
        self.process = process
        self.secret_id = secret_id
        self.secret_key = secret_key

    @classmethod
    def attach(cls, process: Any, vhost: str = "/") -> CmqBroker:
        """Create the test key on the running `process`."""
        process.cli(
            "keys", "create", "--vhost", vhost, "--secret-id", SECRET_ID, "--secret-key", SECRET_KEY
        )
        return cls(process)

    @property
    def endpoint(self) -> str:
        return f"http://{self.process.host}:{self.process.http_port}"

    def account(self, secret_id: str | None = None, secret_key: str | None = None) -> Account:
        return Account(self.endpoint, secret_id or self.secret_id, secret_key or self.secret_key)

    def client(self, **kw: Any) -> SignedClient:
        kw.setdefault("secret_id", self.secret_id)
        kw.setdefault("secret_key", self.secret_key)
        return SignedClient(self.process.host, self.process.http_port, **kw)


# -- a signed client ------------------------------------------------------------------------


def sign(secret_key: str, method: str, host: str, params: dict[str, str], digest: str) -> str:
    """The CMQ 2.0 signature, written from the documentation (not the broker's code)."""
    joined = "&".join(f"{k.replace('_', '.')}={params[k]}" for k in sorted(params))
    text = f"{method}{host}/v2/index.php?{joined}"
    mac = hmac.new(secret_key.encode(), text.encode(), getattr(hashlib, digest))
    return base64.b64encode(mac.digest()).decode()


@dataclass
class SignedClient:
    host: str
    port: int
    secret_id: str = SECRET_ID
    secret_key: str = SECRET_KEY
    tls: ssl.SSLContext | None = None
    conn: http.client.HTTPConnection | None = field(default=None, repr=False)

    def _connection(self) -> http.client.HTTPConnection:
        if self.conn is None:
            if self.tls is not None:
                self.conn = http.client.HTTPSConnection(
                    self.host, self.port, timeout=60, context=self.tls
                )
            else:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        return self.conn

    def signed(
        self,
        action: str,
        params: dict[str, Any] | None = None,
        method: str = "POST",
        digest: str = "sha1",
        timestamp: int | None = None,
        nonce: int | None = None,
    ) -> dict[str, str]:
        """The full parameter set of a request, signed."""
        all_params = {k: str(v) for k, v in (params or {}).items()}
        all_params.setdefault("Action", action)
        all_params.setdefault("SecretId", self.secret_id)
        all_params.setdefault(
            "Timestamp", str(int(time.time()) if timestamp is None else timestamp)
        )
        all_params.setdefault("Nonce", str(nonce or random.randint(1, 2**62)))
        all_params.setdefault("SignatureMethod", "HmacSHA256" if digest == "sha256" else "HmacSHA1")
        host = f"{self.host}:{self.port}"
        all_params["Signature"] = sign(self.secret_key, method, host, all_params, digest)
        return all_params

    def call(self, action: str, method: str = "POST", **kw: Any) -> dict[str, Any]:
        """Sign and send `action`; the decoded reply (errors included, no exception)."""
        params = self.signed(action, kw.pop("params", None) or kw, method)
        return self.send(urllib.parse.urlencode(params).encode(), method)

    def send(
        self,
        body: bytes,
        method: str = "POST",
        query: str = "",
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Send raw bytes (or a GET query) and decode the JSON reply."""
        conn = self._connection()
        path = "/v2/index.php" + (f"?{query}" if query else "")
        if method == "GET":
            conn.request("GET", path, headers=headers or {})
        else:
            conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        assert resp.status == 200, (resp.status, data[:200])
        return json.loads(data)

    def get(self, action: str, **params: Any) -> dict[str, Any]:
        signed = self.signed(action, params, "GET")
        return self.send(b"", "GET", urllib.parse.urlencode(signed))

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def ok(reply: dict[str, Any]) -> dict[str, Any]:
    assert reply["code"] == 0, reply
    return reply


def dead_lettering_queues(
    client: SignedClient, max_receive_count: int, **attributes: Any
) -> tuple[str, str]:
    """A new queue and the dead-letter queue it moves messages to after `max_receive_count`
    receives: (queue name, dead-letter queue name)."""
    name, dlq = uid(), uid("dlq")
    ok(client.call("CreateQueue", queueName=dlq))
    ok(
        client.call(
            "CreateQueue",
            queueName=name,
            deadLetterQueueName=dlq,
            maxReceiveCount=max_receive_count,
            **attributes,
        )
    )
    return name, dlq


def error(reply: dict[str, Any], code: int, module: int | None = None) -> dict[str, Any]:
    assert reply["code"] == code, reply
    assert reply["requestId"]
    if module is not None:
        assert reply["message"].startswith(f"({module})"), reply
    return reply


# -- an HTTP push endpoint ------------------------------------------------------------------


@dataclass
class Push:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


class PushReceiver:
    """An aiohttp server in a thread: records every push, failing some on request."""

    def __init__(self) -> None:
        self.pushes: queue.Queue[Push] = queue.Queue()
        self._failures: dict[str, int] = {}
        self._gates: dict[str, threading.Event] = {}
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self.port = 0

    def __enter__(self) -> PushReceiver:
        self._thread.start()
        assert self._ready.wait(TIMEOUT)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(TIMEOUT)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def fail(self, path: str, times: int) -> None:
        """Answer the next `times` pushes to `path` with HTTP 500."""
        self._failures[path] = times

    def hold(self, path: str) -> threading.Event:
        """Keep the next push to `path` waiting for its answer until the event is set."""
        gate = self._gates[path] = threading.Event()
        return gate

    def get(self, timeout: float = TIMEOUT) -> Push:
        return self.pushes.get(timeout=timeout)

    def nothing_within(self, seconds: float) -> bool:
        try:
            self.pushes.get(timeout=seconds)
        except queue.Empty:
            return True
        return False

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.pushes.put(Push(request.path, dict(request.headers), body, time.monotonic()))
        gate = self._gates.pop(request.path, None)
        if gate is not None:
            await asyncio.to_thread(gate.wait, TIMEOUT)
        left = self._failures.get(request.path, 0)
        if left:
            self._failures[request.path] = left - 1
            return web.Response(status=500, text="try again")
        return web.Response(text="ok")

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_route("POST", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())


def wait_until(predicate: Any, timeout: float = TIMEOUT, interval: float = 0.05) -> Any:
    """Poll `predicate` until it returns something truthy (for state with no event to wait on)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)
