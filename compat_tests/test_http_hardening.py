"""The HTTP listener against hostile clients: slow or idle connections are closed on time,
unsigned parameters are never acted on, bad headers are client errors, and a flood of bad
requests leaves a bounded log while a well-behaved client carries on."""

from __future__ import annotations

import json
import select
import socket
import time
import urllib.parse

import pytest
from cmq.cmq_exception import CMQServerException
from cmq.queue import QueueMeta
from cmq.topic import Message, TopicMeta

from compat_tests.cmq_helpers import CmqBroker, error, ok, uid, write_config
from compat_tests.conftest import BrokerProcess

#: the broker's deadlines in these tests, s
HEADER_TIMEOUT = 1.0
IDLE_TIMEOUT = 6.0
BODY_TIMEOUT = 1.0
#: how long past its deadline a connection may take to be closed, s (aiohttp's timers are
#: coarse; a refused body is drained for up to 10 s before the close)
SLACK = 3.0
DRAIN = 10.0

pytestmark = pytest.mark.own_broker


@pytest.fixture(scope="module")
def hardened(tmp_path_factory):
    base = tmp_path_factory.mktemp("cmq-hardened")
    extra = (
        f"http_header_timeout = {HEADER_TIMEOUT}\nhttp_idle_timeout = {IDLE_TIMEOUT}\n"
        f"http_body_timeout = {BODY_TIMEOUT}\n"
    )
    b = BrokerProcess(base / "data", ["--config", write_config(base, extra)])
    b.start()
    try:
        yield CmqBroker.attach(b)
    finally:
        b.stop()


def connect(cmq: CmqBroker) -> socket.socket:
    return socket.create_connection((cmq.process.host, cmq.process.http_port), timeout=30)


def read_until_closed(sock: socket.socket, timeout: float) -> tuple[bytes, float]:
    """Everything the broker sends until it closes, and when it closed (monotonic)."""
    deadline = time.monotonic() + timeout
    data = b""
    while time.monotonic() < deadline:
        readable, _, _ = select.select([sock], [], [], deadline - time.monotonic())
        if not readable:
            break
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            return data, time.monotonic()
        data += chunk
    raise AssertionError(f"the connection is still open after {timeout} s (got {data[:200]!r})")


def reply_of(raw: bytes) -> dict:
    return json.loads(raw.partition(b"\r\n\r\n")[2])


def signed_request(cmq: CmqBroker, action: str, host: bytes | None = None, **params) -> bytes:
    client = cmq.client()
    body = urllib.parse.urlencode(client.signed(action, params)).encode()
    host = host or f"{client.host}:{client.port}".encode()
    return (
        b"POST /v2/index.php HTTP/1.1\r\nHost: " + host + b"\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )


# -- finding 1: connections that never time out -----------------------------------------------


def test_a_connection_that_sends_nothing_is_closed(hardened):
    with connect(hardened) as sock:
        opened = time.monotonic()
        _, closed = read_until_closed(sock, HEADER_TIMEOUT + SLACK)
    assert closed - opened >= HEADER_TIMEOUT * 0.9


def test_an_idle_keep_alive_connection_is_closed_after_its_reply(hardened):
    with connect(hardened) as sock:
        sent = time.monotonic()
        sock.sendall(signed_request(hardened, "ListQueue"))
        data, closed = read_until_closed(sock, IDLE_TIMEOUT + SLACK)
    assert reply_of(data)["code"] == 0
    head, _, _ = data.partition(b"\r\n\r\n")
    assert b"Connection: close" not in head  # kept alive, then closed for idling
    assert closed - sent >= IDLE_TIMEOUT * 0.9  # idling is not held to the header deadline


def trickle(sock: socket.socket, data: bytes) -> None:
    """Send `data` a byte every 0.1 s, as a slow client does, until the broker closes."""
    for byte in data:
        try:
            sock.sendall(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            return
        readable, _, _ = select.select([sock], [], [], 0.1)
        if readable:
            return


SLOW_HEAD = b"POST /v2/index.php HTTP/1.1\r\nHost: h\r\nX-Slow: " + b"a" * 1000


def test_headers_sent_a_byte_at_a_time_are_cut_off(hardened):
    with connect(hardened) as sock:
        opened = time.monotonic()
        trickle(sock, SLOW_HEAD)
        _, closed = read_until_closed(sock, HEADER_TIMEOUT + SLACK)
    assert closed - opened < HEADER_TIMEOUT + SLACK


def test_a_slow_head_after_a_reply_is_cut_off_before_the_idle_timeout(hardened):
    request = signed_request(hardened, "ListQueue")
    with connect(hardened) as sock:
        sock.sendall(request)
        reply = b""
        while b'"requestId"' not in reply:  # the whole (small) JSON reply
            reply += sock.recv(65536)
        started = time.monotonic()
        trickle(sock, SLOW_HEAD)
        _, closed = read_until_closed(sock, HEADER_TIMEOUT + SLACK)
    assert closed - started < HEADER_TIMEOUT + SLACK < IDLE_TIMEOUT


def test_a_body_stuck_midway_is_refused_and_closed(hardened):
    with connect(hardened) as sock:
        sock.sendall(b"POST /v2/index.php HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\nAct")
        data, _ = read_until_closed(sock, BODY_TIMEOUT + DRAIN + SLACK)
    reply = reply_of(data)
    assert reply["code"] == 4000 and "body took over" in reply["message"]


# -- finding 2: parameters outside the signed string --------------------------------------


def test_an_added_at_valued_parameter_is_not_acted_on(hardened):
    account, client = hardened.account(), hardened.client()
    topic = account.get_topic(uid("t"))
    meta = TopicMeta()
    meta.filterType = 1
    topic.create(meta)
    queues = {}
    for tag in ("a", "@x"):
        q = account.get_queue(uid())
        q.create(QueueMeta())
        queues[tag] = q
        sub = {"protocol": "queue", "endpoint": q.queue_name, "filterTag.1": tag}
        ok(client.call("Subscribe", topicName=topic.topicName, subscriptionName=uid("s"), **sub))
    # The SDK still works (it signs everything here: no value starts with "@").
    topic.publish_message(Message("for a", ["a"]))
    assert queues["a"].receive_message(0).msgBody == "for a"
    # A signed publish with a parameter added on the way: refused, naming it.
    params = client.signed("PublishMessage", {"topicName": topic.topicName, "msgBody": "m"})
    body = urllib.parse.urlencode({**params, "msgTag.1": "@x"}).encode()
    assert "msgTag.1" in error(client.send(body), 4100)["message"]
    # The SDK's own "@" values (left out of what it signs) are refused too, not dropped.
    with pytest.raises(CMQServerException) as info:
        topic.publish_message(Message("tagged", ["@x"]))
    assert info.value.code == 4100
    for q in queues.values():
        with pytest.raises(CMQServerException) as info:
            q.receive_message(0)
        assert info.value.code == 7000  # nothing reached either subscription
    client.close()


# -- finding 3: non-ASCII headers ------------------------------------------------------------


@pytest.mark.parametrize(
    "host, extra",
    [(b"127.0.0.1\xff", b""), (None, b"X-Note: caf\xc3\xa9\r\n")],
    ids=["non-utf8-host", "non-ascii-header"],
)
def test_a_non_ascii_header_is_a_client_error(hardened, host, extra):
    request = signed_request(hardened, "ListQueue", host=host)
    request = request.replace(b"\r\n", b"\r\nConnection: close\r\n" + extra, 1)
    with connect(hardened) as sock:
        sock.sendall(request)
        data, _ = read_until_closed(sock, HEADER_TIMEOUT + SLACK)
    reply = reply_of(data)
    assert reply["code"] == 4000 and "non-ASCII" in reply["message"], reply


# -- finding 4: a flood of bad requests and the log -------------------------------------------


def test_a_flood_of_bad_requests_logs_a_bounded_number_of_lines(hardened):
    before = hardened.process.log_path.read_bytes().count(b"\n")

    def good(action: str, **params: str) -> dict:
        """A well-behaved client, on a connection of its own (idle ones are closed)."""
        client = hardened.client()
        try:
            return ok(client.call(action, **params))
        finally:
            client.close()

    name = uid()
    good("CreateQueue", queueName=name)
    garbage = (
        b"\x16\x03\x01\x02\x00garbage\r\n\r\n",
        b"GET /v2/index.php HTTP/1.1\r\nHost: h\r\nBad Header\r\n\r\n",
        b"POST /v2/index.php HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST /v2/index.php HTTP/1.1\r\nHost: h\xff\r\nConnection: close\r\n\r\n",
        b"POST /v2/index.php HTTP/1.1\r\nHost: h\r\nContent-Length: 50\r\n\r\nAction=",
    )
    for i in range(500):
        with connect(hardened) as sock:
            sock.sendall(garbage[i % len(garbage)])
            if i % len(garbage) == 4:  # reset mid-body
                sock.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                )
            else:
                read_until_closed(sock, HEADER_TIMEOUT + DRAIN + SLACK)
        if i % 100 == 0:
            good("SendMessage", queueName=name, msgBody=str(i))
    good("SendMessage", queueName=name, msgBody="last")
    assert good("GetQueueAttributes", queueName=name)["activeMsgNum"] == 6
    log = hardened.process.log_path.read_bytes()
    lines = log.count(b"\n") - before
    assert lines <= 20, log[-3000:]
    assert b"Traceback" not in log
