"""Message trace and the firehose, through real clients and the admin CLI (own broker only)."""

from __future__ import annotations

import json

import pika
import pytest

from .helpers import collect, connection, uid, wait_get, wait_until
from .management_helpers import Api
from .mqtt_helpers import Paho

pytestmark = pytest.mark.own_broker


def _steps(b, *args: str) -> list[dict]:
    return json.loads(b.cli("trace", *args, "--format", "json").stdout)


def test_an_mqtt_publish_is_followed_to_an_amqp_ack(fresh_broker):
    b = fresh_broker
    b.cli("trace", "messages", "on")
    queue, client_id = uid("traced"), uid("device")
    with connection(b) as conn:
        ch = conn.channel()
        ch.queue_declare(queue, durable=True)
        ch.queue_bind(queue, "amq.topic", "sensors.#")
        mqtt = Paho(b, client_id=client_id)
        mqtt.connect()
        mqtt.publish("sensors/t1", b"21.5", qos=1)
        mqtt.close()
        ((method, _props, body),) = collect(ch, queue, 1)
        assert body == b"21.5"
        ch.basic_ack(method.delivery_tag)
        ch.queue_declare(queue, durable=True)  # a round trip: the ack is applied

    def queue_steps():
        steps = [s["event"] for s in _steps(b, "queue", queue)]
        return steps if "acked" in steps else None

    assert wait_until(queue_steps, timeout=10) == ["published", "delivered", "acked"]
    (published,) = [s for s in _steps(b, "queue", queue) if s["event"] == "published"]
    trace_id = published["id"]

    life = _steps(b, "show", trace_id)
    assert [s["event"] for s in life] == ["published", "delivered", "acked"]
    publish, delivered, acked = (step["detail"] for step in life)
    assert publish["publisher"]["protocol"] == "mqtt"
    assert publish["publisher"]["client_id"] == client_id
    assert publish["publisher"]["user"] == "guest"
    assert publish["exchange"] == "amq.topic"
    assert publish["routing_key"] == "sensors.t1"
    assert publish["routed"] == [[queue, life[1]["seq"]]]
    assert delivered["consumer"] and delivered["redelivered"] is False
    assert all(s["queue"] == queue for s in life[1:])
    assert life[0]["time"] <= life[1]["time"] <= life[2]["time"]


def test_a_dead_lettered_message_keeps_its_trace_id(fresh_broker):
    b = fresh_broker
    b.cli("trace", "messages", "on")
    work, dead = uid("work"), uid("dead")
    with connection(b) as conn:
        ch = conn.channel()
        ch.queue_declare(dead)
        ch.queue_declare(
            work,
            arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead},
        )
        ch.confirm_delivery()
        ch.basic_publish(
            "", work, b"job", pika.BasicProperties(message_id="order-17", delivery_mode=2)
        )
        method, _, _ = wait_get(ch, work, auto_ack=False)
        ch.basic_reject(method.delivery_tag, requeue=False)
        assert wait_get(ch, dead)[2] == b"job"

    def life():
        steps = _steps(b, "show", "order-17")  # by the message_id property
        return steps if len(steps) >= 4 else None

    steps = wait_until(life, timeout=10)
    # (basic.get with auto-ack settles as it delivers: no ack step after the last)
    assert [(s["event"], s["queue"]) for s in steps] == [
        ("published", ""),
        ("delivered", work),
        ("rejected", work),
        ("delivered", dead),
    ]
    assert steps[2]["detail"]["dead_lettered"] == [[dead, steps[3]["seq"]]]
    assert steps[0]["detail"]["publisher"]["protocol"] == "amqp"
    assert steps[3]["detail"]["no_ack"] is True
    assert {s["id"] for s in steps} == {steps[0]["id"]}


def test_trace_settings_and_records_survive_kill_9(fresh_broker):
    b = fresh_broker
    queue = uid("q")
    with connection(b) as conn:
        conn.channel().queue_declare(queue, durable=True)
    b.cli("trace", "messages", "on", "--queue", queue)
    b.cli("trace", "on")
    with connection(b) as conn:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.basic_publish("", queue, b"kept", pika.BasicProperties(message_id="m-1"))
    wait_until(lambda: _steps(b, "show", "m-1"), timeout=10)
    b.restart(kill=True)
    status = {(s["vhost"], s["kind"], s["queue"]) for s in _steps(b, "status")}
    assert status == {("/", "trace", queue), ("/", "firehose", "")}
    assert [s["event"] for s in _steps(b, "show", "m-1")] == ["published"]
    b.cli("trace", "messages", "off", "--queue", queue)
    b.cli("trace", "off")
    assert _steps(b, "status") == []


def test_tracing_an_unknown_queue_or_kind_is_refused(fresh_broker):
    b = fresh_broker
    res = b.cli("trace", "messages", "on", "--queue", uid("missing"), check=False)
    assert res.returncode == 2 and "no queue" in res.stderr
    res = b.cli("trace", "on", "--vhost", uid("novhost"), check=False)
    assert res.returncode == 2 and "vhost" in res.stderr


def test_the_firehose_copies_publishes_and_deliveries(fresh_broker):
    b = fresh_broker
    queue, tap = uid("q"), uid("tap")
    with connection(b) as conn:
        ch = conn.channel()
        ch.queue_declare(queue)
        ch.queue_declare(tap)
        ch.queue_bind(tap, "amq.rabbitmq.trace", "#")
        b.cli("trace", "on")
        ch.basic_publish("amq.direct", "nowhere", b"lost")
        ch.queue_bind(queue, "amq.direct", "k")
        ch.basic_publish(
            "amq.direct", "k", b"hello", pika.BasicProperties(content_type="text/plain")
        )
        assert wait_get(ch, queue)[2] == b"hello"
        copies = [wait_get(ch, tap) for _ in range(3)]
        keys = [m.routing_key for m, _, _ in copies]
        assert keys == ["publish.amq.direct", "publish.amq.direct", f"deliver.{queue}"]
        assert [body for _, _, body in copies] == [b"lost", b"hello", b"hello"]
        _, props, _ = copies[1]
        assert props.headers["exchange_name"] == "amq.direct"
        assert props.headers["routing_keys"] == ["k"]
        assert props.headers["properties"]["content_type"] == "text/plain"
        _, props, _ = copies[2]
        assert props.headers["redelivered"] == 0
        # The firehose's own copies are not copied again.
        assert ch.queue_declare(tap, passive=True).method.message_count == 0
        b.cli("trace", "off")
        ch.basic_publish("amq.direct", "k", b"quiet")
        assert wait_get(ch, queue)[2] == b"quiet"
        assert ch.queue_declare(tap, passive=True).method.message_count == 0
        # Like any amq.* exchange it is not for clients to publish to.
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
            ch.basic_publish("amq.rabbitmq.trace", "x", b"no")
            ch.queue_declare(tap, passive=True)
        assert refused.value.reply_code == 403


def test_trace_over_the_management_api(fresh_broker):
    b = fresh_broker
    api = Api(b)
    assert api.put("/api/trace/%2F", {"kind": "trace", "enabled": True}) == 204
    assert api.get("/api/trace") == [{"vhost": "/", "kind": "trace", "queue": ""}]
    queue = uid("traced")
    with connection(b) as conn:
        ch = conn.channel()
        ch.queue_declare(queue)
        ch.queue_bind(queue, "amq.topic", "meters.*")
        mqtt = Paho(b)
        mqtt.connect()
        mqtt.publish("meters/m7", b"42", qos=1)
        mqtt.close()
        ((method, _, _),) = collect(ch, queue, 1)
        ch.basic_ack(method.delivery_tag)
        ch.queue_declare(queue)

    def steps():
        found = api.get(f"/api/trace/%2F/queues/{queue}?since=0")
        return found if [s["event"] for s in found][-1:] == ["acked"] else None

    published, delivered, acked = wait_until(steps, timeout=10)
    life = api.get(f"/api/trace/%2F/messages/{published['id']}")
    assert [s["event"] for s in life] == ["published", "delivered", "acked"]
    assert life[0]["publisher"]["protocol"] == "mqtt"
    assert api.get(f"/api/trace/%2F/queues/{queue}?since={acked['time'] + 1}") == []

    b.cli("users", "add", "watcher", "pw", "--tags", "monitoring")
    b.cli("users", "add", "nobody", "pw")
    watcher, nobody = api.as_user("watcher", "pw"), api.as_user("nobody", "pw")
    assert watcher.get(f"/api/trace/%2F/messages/{published['id']}") == life
    assert watcher.call("PUT", "/api/trace/%2F", {"kind": "trace", "enabled": False})[0] == 401
    assert nobody.call("GET", "/api/trace")[0] == 401
    status, error = api.call("GET", f"/api/trace/%2F/queues/{queue}?since=5&until=1")
    assert status == 400 and "until" in error["reason"]
    status, error = api.call("PUT", "/api/trace/%2F", {"kind": "sideways"})
    assert status == 400 and "trace or firehose" in error["reason"]
    assert api.call("GET", f"/api/trace/%2F/queues/{queue}?until=99999999999999999999999")[0] == 200
    assert api.call("GET", "/api/trace/nohost/messages/1.0")[0] == 404
