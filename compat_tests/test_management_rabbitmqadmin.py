"""rabbitmqadmin, RabbitMQ's own client of its management API, works against ours unchanged:
declare, publish, list, get, export/import definitions, purge, close, delete."""

from __future__ import annotations

import json

import pika
import pika.exceptions
import pytest

from .helpers import channel, collect, connection, uid, wait_until
from .management_helpers import RabbitmqAdmin, rabbitmqadmin_path
from .mqtt_helpers import Paho

pytestmark = pytest.mark.own_broker


@pytest.fixture(scope="session")
def admin_script():
    return rabbitmqadmin_path()


@pytest.fixture
def admin(admin_script, broker):
    return RabbitmqAdmin(admin_script, broker)


def test_declare_publish_get_and_delete(admin, broker):
    q, x = uid("q"), uid("x")
    assert "queue declared" in admin.run("declare", "queue", f"name={q}", "durable=true").stdout
    admin.run("declare", "exchange", f"name={x}", "type=topic")
    admin.run("declare", "binding", f"source={x}", f"destination={q}", "routing_key=orders.#")
    out = admin.run("publish", f"exchange={x}", "routing_key=orders.eu", "payload=hello")
    assert "Message published" in out.stdout and "NOT routed" not in out.stdout
    out = admin.run("publish", f"exchange={x}", "routing_key=nowhere", "payload=lost")
    assert "Message published but NOT routed" in out.stdout

    queues = {item["name"]: item for item in admin.json("list", "queues")}
    assert queues[q]["messages"] == 1 and queues[q]["durable"] is True
    exchanges = {item["name"]: item for item in admin.json("list", "exchanges")}
    assert exchanges[x]["type"] == "topic"
    bindings = admin.json("list", "bindings")
    assert {
        "source": x,
        "destination": q,
        "routing_key": "orders.#",
        "destination_type": "queue",
    }.items() <= next(b for b in bindings if b["source"] == x).items()

    # ack_requeue_true (the default) leaves it there, marked redelivered
    got = admin.json("get", f"queue={q}")
    assert [(m["payload"], m["redelivered"], m["routing_key"]) for m in got] == [
        ("hello", False, "orders.eu")
    ]
    got = admin.json("get", f"queue={q}", "ackmode=ack_requeue_false")
    assert [(m["payload"], m["redelivered"]) for m in got] == [("hello", True)]
    assert admin.json("get", f"queue={q}") == []

    admin.run(
        "delete",
        "binding",
        f"source={x}",
        "destination_type=queue",
        f"destination={q}",
        "properties_key=orders.%23",
    )
    assert not [b for b in admin.json("list", "bindings") if b["source"] == x]
    admin.run("delete", "exchange", f"name={x}")
    admin.run("delete", "queue", f"name={q}")
    names = [item["name"] for item in admin.json("list", "queues")]
    assert q not in names


def test_a_message_published_by_rabbitmqadmin_reaches_a_pika_consumer(admin, broker):
    q = uid("q")
    admin.run("declare", "queue", f"name={q}")
    admin.run(
        "publish",
        "routing_key=" + q,
        "payload=to pika",
        'properties={"content_type": "text/plain", "headers": {"k": "v"}, "delivery_mode": 2}',
    )
    with channel(broker) as ch:
        [(_, props, body)] = collect(ch, q, 1, auto_ack=True)
    assert body == b"to pika"
    assert props.content_type == "text/plain" and props.delivery_mode == 2
    assert props.headers == {"k": b"v"} or props.headers == {"k": "v"}
    admin.run("delete", "queue", f"name={q}")


def test_purge_shows_in_the_list(admin, broker):
    q = uid("q")
    admin.run("declare", "queue", f"name={q}")
    for i in range(3):
        admin.run("publish", f"routing_key={q}", f"payload=m{i}")
    assert _queue(admin, q)["messages"] == 3
    assert "queue purged" in admin.run("purge", "queue", f"name={q}").stdout
    assert _queue(admin, q)["messages"] == 0
    admin.run("delete", "queue", f"name={q}")


def _queue(admin, name):
    return next(item for item in admin.json("list", "queues") if item["name"] == name)


def test_connections_of_both_protocols_are_listed_and_closed(admin, broker):
    paho = Paho(broker, client_id=uid("dev"))
    paho.connect()
    try:
        with connection(broker, client_properties={"connection_name": "orders-app"}) as conn:
            conn.channel()
            listed = wait_until(lambda: _both(admin, paho.client_id), message="both listed")
            amqp, mqtt = listed
            assert amqp["protocol"] == "AMQP 0-9-1" and amqp["user"] == "guest"
            assert amqp["client_properties"]["connection_name"] == "orders-app"
            assert amqp["channels"] == 1
            assert mqtt["protocol"] == "MQTT 3.1.1" and mqtt["user"] == "guest"
            table = admin.run("list", "connections").stdout
            assert amqp["name"] in table and mqtt["name"] in table

            assert (
                "connection closed"
                in admin.run("close", "connection", f"name={amqp['name']}").stdout
            )
            wait_until(lambda: not conn.is_open or _pump(conn), message="AMQP closed")
        admin.run("close", "connection", f"name={mqtt['name']}")
        paho.disconnected()
    finally:
        paho.close()


def _pump(conn) -> bool:
    try:
        conn.process_data_events(time_limit=0.1)
    except Exception:
        return True
    return not conn.is_open


def _both(admin, client_id):
    listed = admin.json("list", "connections")
    amqp = [c for c in listed if c.get("client_properties", {}).get("connection_name")]
    mqtt = [c for c in listed if c.get("client_properties", {}).get("client_id") == client_id]
    return (amqp[0], mqtt[0]) if amqp and mqtt else None


def test_export_and_import_definitions(admin_script, fresh_broker, tmp_path):
    """Export, delete everything declared, import: the same objects are back."""
    b = fresh_broker
    admin = RabbitmqAdmin(admin_script, b)
    admin.run("declare", "vhost", "name=shop")
    admin.run("declare", "user", "name=clerk", "password=pw", "tags=management")
    admin.run(
        "declare",
        "permission",
        "vhost=shop",
        "user=clerk",
        "configure=.*",
        "write=.*",
        "read=.*",
    )
    shop = ["-V", "shop"]
    admin.run(*shop, "declare", "exchange", "name=orders", "type=direct")
    admin.run(*shop, "declare", "queue", "name=eu", 'arguments={"x-max-length": 10}')
    admin.run(*shop, "declare", "binding", "source=orders", "destination=eu", "routing_key=eu")
    path = tmp_path / "defs.json"
    assert "Exported definitions" in admin.run("export", str(path)).stdout
    exported = json.loads(path.read_text())
    assert {"name": "eu", "vhost": "shop"}.items() <= exported["queues"][0].items()
    assert exported["queues"][0]["arguments"] == {"x-max-length": 10}
    assert [e["name"] for e in exported["exchanges"]] == ["orders"]
    assert exported["bindings"][0]["routing_key"] == "eu"
    assert "clerk" in [u["name"] for u in exported["users"]]

    admin.run("delete", "vhost", "name=shop")
    admin.run("delete", "user", "name=clerk")
    assert "shop" not in [v["name"] for v in admin.json("list", "vhosts")]
    assert "Uploaded definitions" in admin.run("import", str(path)).stdout

    assert [q["name"] for q in admin.json(*shop, "list", "queues")] == ["eu"]
    assert "orders" in [e["name"] for e in admin.json(*shop, "list", "exchanges")]
    clerk = RabbitmqAdmin(admin_script, b, user="clerk", password="pw")
    assert [q["name"] for q in clerk.json(*shop, "list", "queues")] == ["eu"]
    with channel(b, virtual_host="shop", user="clerk", password="pw") as ch:
        ch.basic_publish("orders", "eu", b"routed by the imported binding")
        [(_, _, body)] = collect(ch, "eu", 1, auto_ack=True)
    assert body == b"routed by the imported binding"


def test_refusals_reach_rabbitmqadmin_as_its_errors(admin_script, broker):
    admin = RabbitmqAdmin(admin_script, broker, password="wrong")
    out = admin.run("list", "queues", check=False)
    assert out.returncode != 0 and "Access refused" in out.stderr
    good = RabbitmqAdmin(admin_script, broker)
    out = good.run("declare", "queue", "name=x", 'arguments={"x-max-length": "ten"}', check=False)
    assert out.returncode != 0 and "x-max-length" in out.stderr


def test_vhost_limits(admin_script, fresh_broker):
    b = fresh_broker
    admin = RabbitmqAdmin(admin_script, b)
    admin.run("declare", "vhost_limit", "vhost=/", "name=max-connections", "value=1")
    assert admin.json("list", "vhost_limits") == [{"vhost": "/", "value": {"max-connections": 1}}]
    with connection(b), pytest.raises(pika.exceptions.AMQPConnectionError):
        pika.BlockingConnection(b.params())
    admin.run("delete", "vhost_limit", "vhost=/", "name=max-connections")
    assert admin.json("list", "vhost_limits") == []
    with connection(b), connection(b):
        pass
