"""The admin CLI's views of a node's objects (as the management API shows them), and the
changes it makes to them: purge, delete, closing connections (own broker only)."""

from __future__ import annotations

import json

import pika
import pytest

from .cmq_helpers import CmqBroker, ok
from .helpers import connection, uid, wait_until
from .mqtt_helpers import Paho

pytestmark = pytest.mark.own_broker


def listed(b, kind: str, *options: str) -> list[dict]:
    return json.loads(b.cli(kind, "list", *options, "--format", "json").stdout)


def table(b, kind: str, *options: str) -> list[list[str]]:
    return [line.split("\t") for line in b.cli(kind, "list", *options).stdout.splitlines()]


def test_exchanges_bindings_and_consumers_are_listed(fresh_broker):
    b = fresh_broker
    ex, q = uid("ex"), uid("q")
    with connection(b) as conn:
        ch = conn.channel()
        ch.exchange_declare(ex, "topic", durable=True)
        ch.queue_declare(q, durable=True)
        ch.queue_bind(q, ex, "a.#")
        tag = ch.basic_consume(q, lambda *a: None)
        exchanges = {e["name"]: e for e in listed(b, "exchanges")}
        assert exchanges[ex]["type"] == "topic" and exchanges[ex]["durable"] is True
        assert exchanges["amq.rabbitmq.trace"]["internal"] is True
        bindings = [x for x in listed(b, "bindings") if x["destination"] == q]
        assert {(x["source"], x["routing_key"]) for x in bindings} == {("", q), (ex, "a.#")}
        assert [ex, "queue", q, "a.#", "/", "{}"] in table(b, "bindings")

        def mine():
            return [x for x in listed(b, "consumers") if x["consumer_tag"] == tag]

        (consumer,) = wait_until(mine)
        assert consumer["queue"] == {"name": q, "vhost": "/"}
        assert consumer["ack_required"] is True
        assert table(b, "consumers")[0][:2] == ["queue_name", "consumer_tag"]
        assert listed(b, "queues", "--vhost", "/") == [
            x for x in listed(b, "queues") if x["vhost"] == "/"
        ]
    res = b.cli("exchanges", "list", "--vhost", uid("novhost"), check=False)
    assert res.returncode == 2 and "vhost" in res.stderr


def test_connections_of_every_protocol_are_listed_and_closed(fresh_broker):
    b = fresh_broker
    client_id = uid("device")
    mqtt = Paho(b, client_id=client_id)
    mqtt.connect()
    conn = pika.BlockingConnection(b.params(client_properties={"product": "cli-test"}))
    try:
        rows = wait_until(lambda: (rows := listed(b, "connections")) and len(rows) == 2 and rows)
        by_protocol = {row["protocol"].split()[0]: row for row in rows}
        assert by_protocol["MQTT"]["client_properties"] == {"client_id": client_id}
        assert by_protocol["AMQP"]["client_properties"]["product"] == "cli-test"
        assert all(row["user"] == "guest" for row in rows)
        b.cli("connections", "close", by_protocol["MQTT"]["name"])
        mqtt.disconnected()
        mqtt.stop()  # (paho would connect again)
        b.cli("connections", "close", by_protocol["AMQP"]["id"], "--reason", "maintenance")
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
            conn.process_data_events(time_limit=5)
            conn.channel()
        assert "maintenance" in closed.value.reply_text
        assert wait_until(lambda: listed(b, "connections") == [] or None)
        res = b.cli("connections", "close", "nobody", check=False)
        assert res.returncode == 2 and "no connection" in res.stderr
    finally:
        mqtt.stop()
        if conn.is_open:
            conn.close()


def test_queues_are_purged_and_deleted(fresh_broker):
    b = fresh_broker
    q = uid("q")
    with connection(b) as conn:
        ch = conn.channel()
        ch.queue_declare(q, durable=True)
        ch.confirm_delivery()
        for i in range(5):
            ch.basic_publish("", q, b"%d" % i)
        assert b.cli("queues", "purge", q).stdout.strip() == f"queue '{q}' purged: 5 messages"
        assert ch.queue_declare(q, passive=True).method.message_count == 0
        ch.basic_publish("", q, b"last")
        res = b.cli("queues", "delete", q, "--if-empty", check=False)
        assert res.returncode == 2 and "not empty" in res.stderr
        assert b.cli("queues", "delete", q).stdout.strip() == f"queue '{q}' deleted with 1 messages"
    assert q not in [x["name"] for x in listed(b, "queues")]
    res = b.cli("queues", "delete", q, check=False)
    assert res.returncode == 2 and "no queue" in res.stderr
    assert "dropped_purged\t5" in b.cli("status").stdout


def test_cmq_topics_and_subscriptions_are_listed(fresh_broker):
    cmq = CmqBroker.attach(fresh_broker)
    client = cmq.client()
    topic, queue, sub = uid("t"), uid("q"), uid("s")
    ok(client.call("CreateQueue", queueName=queue))
    ok(client.call("CreateTopic", topicName=topic, filterType="2"))
    ok(
        client.call(
            "Subscribe", topicName=topic, subscriptionName=sub, protocol="queue", endpoint=queue
        )
    )
    client.close()
    (shown,) = [t for t in listed(fresh_broker, "topics") if t["name"] == topic]
    assert shown["subscriptions"] == 1 and shown["vhost"] == "/"
    (subscription,) = listed(fresh_broker, "subscriptions", "--topic", topic)
    assert (subscription["name"], subscription["protocol"]) == (sub, "queue")
    assert subscription["endpoint"] == queue
    assert table(fresh_broker, "subscriptions")[1][:3] == [sub, topic, "/"]


def test_every_list_speaks_json(fresh_broker):
    b = fresh_broker
    assert {"name": "guest", "tags": ["administrator"]} in listed(b, "users")
    assert {"name": "/"} in listed(b, "vhosts")
    assert listed(b, "keys") == []
    assert json.loads(b.cli("vhosts", "limits", "--format", "json").stdout) == []
    assert table(b, "users")[0] == ["name", "tags"]
