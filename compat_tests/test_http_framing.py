"""What the HTTP layer answers before the CMQ service sees a request: the API's one path,
`Expect: 100-continue` (curl sends it with bodies over 1 KiB) and unknown expectations."""

from __future__ import annotations

import asyncio
import http.client
import socket
import urllib.parse

import aiohttp

from compat_tests.cmq_helpers import ok, uid


def test_another_path_is_not_found(cmq_broker):
    conn = http.client.HTTPConnection(cmq_broker.process.host, cmq_broker.process.http_port, 30)
    try:
        for method, path in (("POST", "/v2/other.php"), ("GET", "/"), ("POST", "/v2%2Findex.php")):
            conn.request(method, path, body=b"" if method == "POST" else None)
            resp = conn.getresponse()
            assert (resp.status, resp.read()) == (404, b"404: Not Found"), (method, path)
    finally:
        conn.close()


def test_a_body_sent_after_100_continue_is_served(cmq_broker):
    """aiohttp's client, told to expect 100-continue, sends the body only once it comes."""
    client = cmq_broker.client()
    name = uid()
    ok(client.call("CreateQueue", queueName=name))
    body = "y" * 4096
    form = urllib.parse.urlencode(
        client.signed("SendMessage", {"queueName": name, "msgBody": body})
    )

    async def send() -> tuple[int, dict]:
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            url = cmq_broker.endpoint + "/v2/index.php"
            async with session.post(url, data=form.encode(), expect100=True) as resp:
                return resp.status, await resp.json(content_type=None)

    status, reply = asyncio.run(send())
    assert status == 200
    ok(reply)
    got = ok(client.call("ReceiveMessage", queueName=name, pollingWaitSeconds=0))
    assert got["msgBody"] == body
    client.close()


def test_an_unknown_expectation_is_refused(cmq_broker):
    with socket.create_connection((cmq_broker.process.host, cmq_broker.process.http_port)) as s:
        s.settimeout(30)
        s.sendall(
            b"POST /v2/index.php HTTP/1.1\r\nHost: x\r\nExpect: 200-ok\r\n"
            b"Content-Length: 3\r\n\r\na=b"
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            assert chunk, head
            head += chunk
    assert head.startswith(b"HTTP/1.1 417 "), head
