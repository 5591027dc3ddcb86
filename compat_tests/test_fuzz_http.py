"""CMQ HTTP API fuzzing: mutated request streams get a 4xx or a CMQ JSON error, never a 5xx,
an internal error (6000) or a broken reply, while a pika client on the same broker loses nothing
(see compat_tests/fuzz.py).

Two kinds of cases: raw bytes of signed requests, mutated (mostly stopped by HTTP parsing or the
signature), and mutated form fields signed afterwards, which reach the actions' checks.
"""

from __future__ import annotations

import contextlib
import json
import random
import urllib.parse

import pytest

from compat_tests import fuzz
from compat_tests.cmq_helpers import CmqBroker, SignedClient, write_config
from compat_tests.conftest import BrokerProcess

pytestmark = pytest.mark.own_broker

#: CMQ's code for a server-side failure: never the answer to a request, however odd
INTERNAL_ERROR = 6000


def sessions(client: SignedClient) -> list[list[bytes]]:
    """Valid keep-alive sessions of pipelined requests (signed once: replays get code 4100).

    The nonces come from the seed; the timestamps are the time of the run."""
    rng = random.Random(fuzz.SEED)
    host = f"{client.host}:{client.port}"

    def request(action: str, method: str = "POST", **params: object) -> list[bytes]:
        """A signed request as two pieces, head and body (so mutations can move them)."""
        signed = client.signed(action, params, method, nonce=rng.randrange(1, 2**62))
        query = urllib.parse.urlencode(signed)
        if method == "GET":
            return [f"GET /v2/index.php?{query} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()]
        head = (
            f"POST /v2/index.php HTTP/1.1\r\nHost: {host}\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {len(query)}\r\n\r\n"
        )
        return [head.encode(), query.encode()]

    q, t = "fuzz-h", "fuzz-t"
    queues = [
        *request("CreateQueue", queueName=q, maxMsgHeapNum=1000),
        *request("SendMessage", queueName=q, msgBody="hello fuzz", delaySeconds=0),
        *request("BatchSendMessage", queueName=q, **{"msgBody.0": "a", "msgBody.1": "b"}),
        *request("ReceiveMessage", queueName=q, pollingWaitSeconds=0),
        *request("GetQueueAttributes", "GET", queueName=q),
        *request("ListQueue", searchWord="fuzz", offset=0, limit=5),
    ]
    topics = [
        *request("CreateTopic", topicName=t, filterType=2),
        *request("Subscribe", topicName=t, subscriptionName="s", protocol="queue", endpoint=q),
        *request("PublishMessage", topicName=t, msgBody="x" * 300, routingKey="a.b"),
        *request("BatchReceiveMessage", queueName=q, numOfMsg=5, pollingWaitSeconds=0),
        *request("ListSubscriptionByTopic", "GET", topicName=t),
    ]
    return [queues, topics]


def _replies(data: bytes) -> list[tuple[int, bytes, bytes]]:
    """(status, head, body) of each HTTP reply in `data`; bodies are framed by Content-Length."""
    out = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        assert sep, f"reply head cut short: {data[:200]!r}"
        lines = head.split(b"\r\n")
        version, status = lines[0].split(b" ")[:2]
        assert version.startswith(b"HTTP/"), lines[0]  # aiohttp echoes the request's version
        headers = dict(line.lower().split(b": ", 1) for line in lines[1:])
        assert b"transfer-encoding" not in headers, head
        size = int(headers.get(b"content-length", b"0"))
        assert len(rest) >= size, f"reply body cut short: {data[:300]!r}"
        out.append((int(status), head, rest[:size]))
        data = rest[size:]
    return out


def judge(broker: BrokerProcess, case: fuzz.Case) -> str:
    got = fuzz.exchange(broker.host, broker.http_port, case.data)
    outcome = "nothing" if got.closed_first else "left-open"
    for status, head, body in _replies(got.received):
        assert status < 500, f"server error {status}: {head!r} {body[:200]!r}"
        if status == 200:
            reply = json.loads(body)
            assert reply["code"] != INTERNAL_ERROR, f"internal error: {reply!r}"
            outcome = "ok" if reply["code"] == 0 else f"cmq-{reply['code']}"
        else:
            assert 400 <= status < 500, f"unexpected status {status}"
            outcome = f"http-{status}"
    return outcome


def param_sessions() -> list[list[bytes]]:
    """The actions of `sessions` as bare form fields (`k=v`, `&k=v`, ...), unsigned: cases
    mutate them and are signed afterwards, so they get past authentication to the actions."""
    q, t = "fuzz-h", "fuzz-t"
    requests: list[dict[str, object]] = [
        {"Action": "CreateQueue", "queueName": q, "maxMsgHeapNum": 1000, "visibilityTimeout": 30},
        {"Action": "SendMessage", "queueName": q, "msgBody": "hello fuzz", "delaySeconds": 0},
        {"Action": "BatchSendMessage", "queueName": q, "msgBody.0": "a", "msgBody.1": "b"},
        {"Action": "ReceiveMessage", "queueName": q, "pollingWaitSeconds": 0},
        {"Action": "BatchReceiveMessage", "queueName": q, "numOfMsg": 3, "pollingWaitSeconds": 0},
        {"Action": "DeleteMessage", "queueName": q, "receiptHandle": "1-2-3"},
        {"Action": "SetQueueAttributes", "queueName": q, "msgRetentionSeconds": 3600},
        {"Action": "ListQueue", "searchWord": "fuzz", "offset": 0, "limit": 5},
        {"Action": "CreateTopic", "topicName": t, "filterType": 2},
        {
            "Action": "Subscribe",
            "topicName": t,
            "subscriptionName": "s",
            "protocol": "queue",
            "endpoint": q,
            "bindingKey.0": "a.*",
        },
        {"Action": "PublishMessage", "topicName": t, "msgBody": "x", "routingKey": "a.b"},
        {"Action": "BatchPublishMessage", "topicName": t, "msgBody.0": "y", "msgTag.0": "z"},
        {"Action": "ListSubscriptionByTopic", "topicName": t, "offset": 0, "limit": 2},
    ]
    return [
        [("&" if i else "").encode() + f"{k}={v}".encode() for i, (k, v) in enumerate(r.items())]
        for r in requests
    ]


def judge_signed(broker: BrokerProcess, client: SignedClient, case: fuzz.Case) -> str:
    text = case.data.decode("utf-8", "replace")
    params = dict(urllib.parse.parse_qsl(text, keep_blank_values=True))
    action = params.pop("Action", "")
    for name in ("SecretId", "Nonce", "Timestamp", "Signature", "SignatureMethod"):
        params.pop(name, None)
    with contextlib.suppress(ValueError):  # a long poll would outlast the case's deadline
        if int(params.get("pollingWaitSeconds", "")) > 1:
            params["pollingWaitSeconds"] = "1"
    body = urllib.parse.urlencode(client.signed(action, params)).encode()
    head = (
        f"POST /v2/index.php HTTP/1.1\r\nHost: {client.host}:{client.port}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\nConnection: close\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    got = fuzz.exchange(broker.host, broker.http_port, head.encode() + body, expect_close=True)
    replies = _replies(got.received)
    assert len(replies) == 1, got.received[:300]
    status, _head, reply_body = replies[0]
    assert status == 200, (status, reply_body[:200])
    code = json.loads(reply_body)["code"]
    assert code != INTERNAL_ERROR, f"internal error for {params!r}"
    return f"cmq-{code}"


def _run(tmp_path_factory: pytest.TempPathFactory, count: int) -> None:
    base = tmp_path_factory.mktemp("fuzz-http")
    # Tracebacks are counted, not failed on: aiohttp logs bad requests with one, and the HTTP
    # layer's error logging is being reworked (issue 10).
    args = ["--config", write_config(base)]
    with fuzz.fuzzed_broker(base, args, tracebacks_fail=False) as broker:
        client = CmqBroker.attach(broker).client()
        fuzz.fuzz_alongside_client(
            broker, sessions(client), lambda case: judge(broker, case), count
        )
        fuzz.fuzz_alongside_client(
            broker, param_sessions(), lambda case: judge_signed(broker, client, case), count // 2
        )


@pytest.mark.timeout(fuzz.time_limit(fuzz.case_count(1000)))
def test_fuzz_http(tmp_path_factory):
    _run(tmp_path_factory, fuzz.case_count(1000))


@pytest.mark.slow
@pytest.mark.timeout(fuzz.time_limit(fuzz.case_count(1000, slow=True)))
def test_fuzz_http_long(tmp_path_factory):
    _run(tmp_path_factory, fuzz.case_count(1000, slow=True))
