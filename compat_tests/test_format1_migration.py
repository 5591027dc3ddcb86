"""A data dir written by broker 0.1 (store format 1, pickles): refused with a clear message,
converted by scripts/migrate_format1.py, then served as it was, over AMQP, MQTT and HTTP.

The data dir (tests/data/datadir-format1.tar.gz) was written by the 0.1 release itself: a
vhost and a user of their own, a topic exchange and its binding, five messages with AMQP
headers of every kind, a dead-lettered message, a delayed one (due an hour after), an MQTT
persistent session with a queued message and a retained one, and a CMQ key and queue.
"""

from __future__ import annotations

import datetime
import decimal
import subprocess
import sys
import tarfile

import pika
import pytest

from .cmq_helpers import SignedClient, ok
from .conftest import REPO_ROOT, BrokerProcess
from .mqtt_helpers import Paho

pytestmark = pytest.mark.own_broker

FIXTURE = REPO_ROOT / "tests" / "data" / "datadir-format1.tar.gz"


@pytest.fixture
def format1_dir(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    with tarfile.open(FIXTURE) as tar:
        tar.extractall(data, filter="data")
    return data


def test_a_format1_data_dir_is_refused_then_migrated_and_served(format1_dir):
    broker = BrokerProcess(format1_dir)
    with pytest.raises(RuntimeError) as refused:
        broker.start()
    assert "store format 1" in str(refused.value)
    assert "scripts/migrate_format1.py" in str(refused.value)

    migrated = subprocess.run(
        [sys.executable, "scripts/migrate_format1.py", str(format1_dir)],
        cwd=str(REPO_ROOT),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert migrated.returncode == 0, migrated.stderr
    assert (format1_dir / "leveldb-format1").is_dir()

    broker.start()
    try:
        check_amqp(broker)
        check_mqtt(broker)
        check_cmq(broker)
    finally:
        broker.stop()


def check_amqp(broker: BrokerProcess) -> None:
    conn = pika.BlockingConnection(broker.params())
    try:
        ch = conn.channel()
        got = {}
        while (message := ch.basic_get("v1.orders", auto_ack=True))[0] is not None:
            got[message[2]] = message[1]
        # Priorities kept (2 first), and the delayed message (an hour's delay from 2026-12-02
        # 00:51) has come due since.
        assert list(got)[:1] == [b"order 2"]
        assert sorted(got) == [b"delayed one"] + [b"order %d" % i for i in range(5)]
        props = got[b"order 0"]
        assert props.message_id == "m0" and props.content_type == "text/plain"
        assert props.headers["nested"] == {"k": "v"} and props.headers["tags"] == ["a", "b"]
        assert props.headers["d"] == decimal.Decimal("1.5")
        assert props.headers["when"] == datetime.datetime(2026, 11, 30, 12, 0, tzinfo=datetime.UTC)
        _, props, body = ch.basic_get("v1.dlq", auto_ack=True)
        assert body == b"to be rejected"
        assert props.headers["x-death"][0]["queue"] == "v1.rejects"
        # Its exchange and binding came along: a new publish still lands in the queue.
        ch.confirm_delivery()
        ch.basic_publish("v1.topic", "order.new", b"new", pika.BasicProperties(delivery_mode=2))
        assert ch.queue_declare("v1.orders", passive=True).method.message_count == 1
    finally:
        conn.close()
    alice = pika.BlockingConnection(
        broker.params(user="alice", password="s3cret", virtual_host="staging")
    )
    alice.close()


def check_mqtt(broker: BrokerProcess) -> None:
    device = Paho(broker, client_id="v1-device", clean=False)
    try:
        assert device.connect() == (0, True)  # its session was kept
        message = device.message()
        assert (message.topic, message.payload) == ("v1/alerts/fire", b"offline message")
    finally:
        device.close()
    watcher = Paho(broker)
    try:
        watcher.connect()
        watcher.subscribe(("v1/retained/#", 1))
        message = watcher.message()
        assert (message.topic, message.payload, message.retain) == (
            "v1/retained/temp",
            b"21.5",
            True,
        )
    finally:
        watcher.close()


def check_cmq(broker: BrokerProcess) -> None:
    client = SignedClient("127.0.0.1", broker.http_port, "AKIDv1", "v1secret")
    try:
        attributes = ok(client.call("GetQueueAttributes", queueName="v1cmq"))
        assert attributes["visibilityTimeout"] == 30 and attributes["rewindSeconds"] == 3600
    finally:
        client.close()
