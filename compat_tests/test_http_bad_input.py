"""Bad requests get a clear CMQ error (HTTP 200 JSON), never a 500, and lose nothing."""

from __future__ import annotations

import os
import random
import ssl
import subprocess
import time
import urllib.parse

import pytest

from compat_tests.cmq_helpers import CmqBroker, SignedClient, error, ok, uid, write_config


@pytest.fixture
def client(cmq_broker):
    c = cmq_broker.client()
    yield c
    c.close()


@pytest.fixture
def queue(client):
    """A queue holding one message, which must survive every bad request."""
    name = uid()
    ok(client.call("CreateQueue", queueName=name))
    ok(client.call("SendMessage", queueName=name, msgBody="precious"))
    yield name
    got = ok(client.call("ReceiveMessage", queueName=name, pollingWaitSeconds=0))
    assert got["msgBody"] == "precious"


def test_signature_failures(cmq_broker, client, queue):
    params = client.signed("GetQueueAttributes", {"queueName": queue})
    for change in (
        {"Signature": None},
        {"Signature": "AAAA" + params["Signature"][4:]},
        {"Signature": "é" + params["Signature"][1:]},  # found by the fuzz test: was 6000
        {"SecretId": None},
        {"SecretId": "AKIDunknown"},
        {"queueName": queue + "x"},  # signed for another queue
    ):
        tampered = {**params, **change}
        body = urllib.parse.urlencode({k: v for k, v in tampered.items() if v is not None})
        reply = error(client.send(body.encode()), 4100)
        assert "queueName" not in reply
    wrong_key = SignedClient(client.host, client.port, secret_key="not-the-key")
    error(wrong_key.call("ListQueue"), 4100)
    # The Host header is signed, port included.
    body = urllib.parse.urlencode(params).encode()
    error(client.send(body, headers={"Host": "example.com"}), 4100)
    ok(client.send(body))


def test_host_header_not_utf8_is_a_client_error(client, queue):
    """Found by the fuzz test: a Host header byte that is not UTF-8 was an internal error."""
    body = urllib.parse.urlencode(client.signed("GetQueueAttributes", {"queueName": queue}))
    host = f"{client.host}\x80:{client.port}"  # http.client sends it as the byte 0x80
    error(client.send(body.encode(), headers={"Host": host}), 4000)  # non-ASCII header


def test_replayed_nonce_and_skewed_timestamps(client, queue):
    body = urllib.parse.urlencode(client.signed("GetQueueAttributes", {"queueName": queue}))
    ok(client.send(body.encode()))
    assert "Nonce" in error(client.send(body.encode()), 4100)["message"]
    for skew in (-400, 400):
        stale = client.signed("ListQueue", timestamp=int(time.time()) + skew)
        assert (
            "Timestamp"
            in error(client.send(urllib.parse.urlencode(stale).encode()), 4100)["message"]
        )
    error(client.call("ListQueue", params={"Timestamp": "yesterday"}), 4000, 10360)
    error(client.call("ListQueue", params={"Nonce": "-5"}), 4000, 10350)


def test_wrong_parameter_types_and_ranges(client, queue):
    error(
        client.call("SendMessage", queueName=queue, msgBody="x", delaySeconds="soon"), 4000, 10360
    )
    error(client.call("SendMessage", queueName=queue, msgBody="x", delaySeconds=-1), 4000, 10350)
    error(client.call("SendMessage", queueName=queue, msgBody=""), 4000, 10350)
    error(client.call("SendMessage", queueName=queue), 4000, 10390)
    error(client.call("CreateQueue", queueName=uid(), visibilityTimeout=0), 4000, 10350)
    error(client.call("CreateQueue", queueName=uid(), maxMsgSize="1k"), 4000, 10360)
    error(client.call("CreateQueue", queueName="1-starts-with-a-digit"), 4000, 10350)
    error(client.call("CreateQueue", queueName="q" * 65), 4000, 10350)
    error(client.call("BatchReceiveMessage", queueName=queue, numOfMsg=17), 4000, 10350)
    error(client.call("ReceiveMessage", queueName=queue, pollingWaitSeconds=31), 4000, 10350)
    error(client.call("DeleteMessage", queueName=queue, receiptHandle="garbage"), 4430)
    error(client.call("ListQueue", limit=0), 4000, 10350)
    # found by the fuzz test: a control character int() does not strip was an internal error
    error(client.call("ListQueue", limit="\x1e99"), 4000, 10350)


def test_oversized_and_non_consecutive_batches(client, queue):
    seventeen = {f"msgBody.{i}": "x" for i in range(1, 18)}
    error(client.call("BatchSendMessage", queueName=queue, **seventeen), 4000, 10370)
    gap = {"msgBody.1": "a", "msgBody.3": "c"}
    error(client.call("BatchSendMessage", queueName=queue, **gap), 4000, 10380)
    error(client.call("BatchSendMessage", queueName=queue, **{"msgBody.2": "b"}), 4000, 10380)
    error(client.call("BatchSendMessage", queueName=queue), 4000, 10390)
    error(client.call("BatchSendMessage", queueName=queue, **{"msgBody.x": "b"}), 4000, 10310)
    handles = {f"receiptHandle.{i}": "1.1" for i in range(1, 18)}
    error(client.call("BatchDeleteMessage", queueName=queue, **handles), 4000, 10370)
    # Zero-based indexes are fine.
    zero = {"msgBody.0": "a", "msgBody.1": "b"}
    assert len(ok(client.call("BatchSendMessage", queueName=queue, **zero))["msgList"]) == 2
    attrs = ok(client.call("GetQueueAttributes", queueName=queue))
    assert attrs["activeMsgNum"] == 3  # nothing from the refused batches got in


def test_unknown_actions_methods_and_duplicates(client, queue):
    error(client.call("FlyToTheMoon"), 4000, 10280)
    ok(client.call("sendmessage", queueName=queue, msgBody="x"))  # actions ignore case
    error(client.send(b"", method="PUT"), 4000, 10410)
    params = client.signed("ListQueue")
    body = urllib.parse.urlencode(params) + "&Nonce=1"
    error(client.send(body.encode()), 4000, 10330)
    case_twins = client.signed("GetQueueAttributes", {"queueName": queue, "QueueName": queue})
    error(client.send(urllib.parse.urlencode(case_twins).encode()), 4000, 10330)


def test_garbage_bodies(client, queue):
    rng = random.Random(4)
    bodies = [
        b"%zz=1",
        b"a=%ff%fe",
        b"&&&",
        b"\xff\xfe\x00garbage",
        b"=nothing",
        bytes(rng.getrandbits(8) for _ in range(2000)),
        b"Action=ListQueue",
    ]
    for body in bodies:
        reply = client.send(body)
        assert reply["code"] in (4000, 4100), (body, reply)


def test_oversized_body(client, queue, cmq_broker):
    huge = urllib.parse.urlencode({"msgBody": "x" * (9 * 1024 * 1024)}).encode()
    error(client.send(huge), 4000, 10000)
    fresh = cmq_broker.client()  # the broker may close the connection after refusing the body
    ok(fresh.call("ListQueue"))
    fresh.close()
    client.close()
    client.conn = None


def test_post_without_content_type_get_and_query_string(client, queue):
    params = client.signed("GetQueueAttributes", {"queueName": queue})
    body = urllib.parse.urlencode(params).encode()
    # http.client adds no Content-Type of its own, as with the official SDK.
    assert ok(client.send(body))["queueName"] == queue
    assert ok(client.get("GetQueueAttributes", queueName=queue))["activeMsgNum"] == 1


@pytest.mark.own_broker
def test_https(tmp_path, broker_factory):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
        env={**os.environ, "OPENSSL_CONF": "/dev/null"},
    )  # fmt: skip
    b = broker_factory("--config", write_config(tmp_path), "--tls-cert", cert, "--tls-key", key)
    cmq = CmqBroker.attach(b)
    context = ssl.create_default_context(cafile=str(cert))
    tls = SignedClient(b.host, b.https_port, tls=context)
    name = uid()
    ok(tls.call("CreateQueue", queueName=name))
    ok(tls.call("SendMessage", queueName=name, msgBody="secret"))
    assert ok(cmq.client().call("ReceiveMessage", queueName=name))["msgBody"] == "secret"
    tls.close()
