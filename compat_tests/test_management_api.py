"""The management API over plain HTTP: RabbitMQ's field names, status codes and error shape,
message get modes, health checks, list queries, CMQ objects, and bad input answered with a
clear error while the broker goes on."""

from __future__ import annotations

import base64
import socket

import pika
import pytest

from .cmq_helpers import CmqBroker, write_config
from .conftest import port_open
from .helpers import channel, connection, uid, wait_get, wait_until
from .management_helpers import Api, quote
from .mqtt_helpers import Paho

pytestmark = pytest.mark.own_broker

# The fields RabbitMQ's management API returns for the same calls (its HTTP API reference
# and the examples of its docs) that we provide too: same names, same JSON types.
QUEUE_FIELDS = {
    "name", "vhost", "durable", "auto_delete", "exclusive", "arguments", "node", "type",
    "state", "messages", "messages_ready", "messages_unacknowledged", "consumers", "memory",
    "message_bytes", "message_bytes_ready", "message_bytes_unacknowledged", "policy",
    "exclusive_consumer_tag", "idle_since", "head_message_timestamp",
}  # fmt: skip
EXCHANGE_FIELDS = {
    "name", "vhost", "type", "durable", "auto_delete", "internal", "arguments",
    "user_who_performed_action",
}  # fmt: skip
BINDING_FIELDS = {
    "source", "vhost", "destination", "destination_type", "routing_key", "arguments",
    "properties_key",
}  # fmt: skip
CONNECTION_FIELDS = {
    "name", "node", "type", "state", "protocol", "user", "vhost", "host", "port", "peer_host",
    "peer_port", "ssl", "connected_at", "channels", "channel_max", "frame_max", "timeout",
    "client_properties", "user_who_performed_action",
}  # fmt: skip
CHANNEL_FIELDS = {
    "name", "number", "node", "user", "vhost", "state", "connection_details",
    "prefetch_count", "global_prefetch_count", "confirm", "transactional",
    "messages_unacknowledged", "consumer_count", "user_who_performed_action",
}  # fmt: skip
CONSUMER_FIELDS = {
    "consumer_tag", "queue", "ack_required", "exclusive", "prefetch_count", "active",
    "activity_status", "arguments", "channel_details",
}  # fmt: skip
OVERVIEW_FIELDS = {
    "management_version", "rates_mode", "exchange_types", "product_version", "product_name",
    "rabbitmq_version", "cluster_name", "node", "queue_totals", "object_totals", "listeners",
    "contexts", "statistics_db_event_queue", "disable_stats",
}  # fmt: skip
NODE_FIELDS = {
    "name", "type", "running", "mem_used", "mem_limit", "mem_alarm", "disk_free",
    "disk_free_limit", "disk_free_alarm", "fd_used", "sockets_used", "uptime", "processors",
    "os_pid", "partitions", "applications",
}  # fmt: skip
VHOST_FIELDS = {
    "name", "description", "tags", "cluster_state", "tracing", "messages", "messages_ready",
    "messages_unacknowledged", "default_queue_type", "metadata",
}  # fmt: skip
USER_FIELDS = {"name", "password_hash", "hashing_algorithm", "tags", "limits"}
GOT_FIELDS = {
    "payload_bytes", "redelivered", "exchange", "routing_key", "message_count", "properties",
    "payload", "payload_encoding",
}  # fmt: skip


@pytest.fixture
def api(broker):
    return Api(broker)


def test_objects_have_rabbitmqs_fields(api, broker):
    q, x = uid("q"), uid("x")
    assert api.put(f"/api/queues/%2F/{q}", {"durable": True, "arguments": {"x-max-length": 5}})
    assert api.put(f"/api/exchanges/%2F/{x}", {"type": "fanout"}) == 201
    status, _ = api.post(f"/api/bindings/%2F/e/{x}/q/{q}", {"routing_key": "k"})
    assert status == 201
    with channel(broker) as ch:
        ch.basic_qos(prefetch_count=7)
        ch.basic_publish("", q, b"x")
        tag = ch.basic_consume(q, lambda *a: None)
        ch.connection.process_data_events(time_limit=0.2)

        queue = api.get(f"/api/queues/%2F/{q}")
        assert queue.keys() >= QUEUE_FIELDS
        assert queue["arguments"] == {"x-max-length": 5} and queue["type"] == "classic"
        assert (queue["messages"], queue["messages_unacknowledged"], queue["consumers"]) == (
            1,
            1,
            1,
        )
        assert isinstance(queue["memory"], int) and queue["memory"] > 0
        assert api.get(f"/api/exchanges/%2F/{x}").keys() >= EXCHANGE_FIELDS
        [binding] = api.get(f"/api/bindings/%2F/e/{x}/q/{q}")
        assert binding.keys() >= BINDING_FIELDS and binding["properties_key"] == "k"
        assert api.get(f"/api/bindings/%2F/e/{x}/q/{q}/k") == binding
        assert api.get(f"/api/exchanges/%2F/{x}/bindings/source") == [binding]
        assert binding in api.get(f"/api/queues/%2F/{q}/bindings")
        assert api.get(f"/api/exchanges/%2F/{x}/bindings/destination") == []

        consumers = [c for c in api.get("/api/consumers/%2F") if c["consumer_tag"] == tag]
        assert consumers[0].keys() >= CONSUMER_FIELDS
        assert consumers[0]["queue"] == {"name": q, "vhost": "/"}
        assert consumers[0]["prefetch_count"] == 7
        channels = api.get("/api/channels")
        mine = [c for c in channels if c["prefetch_count"] == 7]
        assert mine and mine[0].keys() >= CHANNEL_FIELDS
        assert mine[0]["consumer_count"] == 1 and mine[0]["messages_unacknowledged"] == 1
        conns = [
            c
            for c in api.get("/api/connections")
            if c["name"] == mine[0]["connection_details"]["name"]
        ]
        assert conns and conns[0].keys() >= CONNECTION_FIELDS
        assert conns[0]["client_properties"]["product"] == "Pika Python Client Library"
        assert consumers[0]["channel_details"]["connection_name"] == conns[0]["name"]
        ch.basic_cancel(tag)

    overview = api.get("/api/overview")
    assert overview.keys() >= OVERVIEW_FIELDS
    assert {"messages", "messages_ready", "messages_unacknowledged"} <= overview[
        "queue_totals"
    ].keys()
    assert {"connections", "channels", "consumers", "exchanges", "queues"} <= overview[
        "object_totals"
    ].keys()
    assert {"protocol": "amqp", "port": broker.port}.items() <= next(
        item for item in overview["listeners"] if item["protocol"] == "amqp"
    ).items()
    [node] = api.get("/api/nodes")
    assert node.keys() >= NODE_FIELDS and node["running"] is True
    assert api.get(f"/api/nodes/{node['name']}")["name"] == node["name"]
    assert api.get("/api/vhosts/%2F").keys() >= VHOST_FIELDS
    assert api.get("/api/users/guest").keys() >= USER_FIELDS
    assert api.get("/api/whoami") == {"name": "guest", "tags": ["administrator"]}
    assert api.get("/api/permissions/%2F/guest") == {
        "user": "guest",
        "vhost": "/",
        "configure": ".*",
        "write": ".*",
        "read": ".*",
    }
    assert api.delete(f"/api/queues/%2F/{q}") == 204
    assert api.get("/api/parameters") == api.get("/api/parameters/shovel/%2F") == []


def test_status_codes_and_error_shape(api):
    q = uid("q")
    assert api.put(f"/api/queues/%2F/{q}", {}) == 201
    assert api.put(f"/api/queues/%2F/{q}", {}) == 204
    status, error = api.call("PUT", f"/api/queues/%2F/{q}", {"durable": False})
    assert status == 400 and error["error"] == "bad_request"
    assert "durable" in error["reason"]
    assert api.delete(f"/api/queues/%2F/{q}") == 204
    for path in (f"/api/queues/%2F/{q}", "/api/queues/no-such-vhost", "/api/nothing/here"):
        status, error = api.call("GET", path)
        assert status == 404 and set(error) == {"error", "reason"}, path
    status, error = api.call("DELETE", f"/api/queues/%2F/{q}")
    assert status == 404
    status, error = api.call("PATCH", "/api/overview")
    assert status == 405 and set(error) == {"error", "reason"}


def test_get_modes_encodings_and_truncation(api, broker):
    q, dead = uid("q"), uid("dead")
    api.put(f"/api/queues/%2F/{dead}", {})
    api.put(
        f"/api/queues/%2F/{q}",
        {"arguments": {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead}},
    )
    publish = "/api/exchanges/%2F/amq.default/publish"
    binary = base64.b64encode(b"\xff\x00binary").decode()
    for payload, encoding in (("first text", "string"), (binary, "base64")):
        status, reply = api.post(
            publish,
            {
                "routing_key": q,
                "payload": payload,
                "payload_encoding": encoding,
                "properties": {"message_id": "m1", "type": "t", "timestamp": 1700000000},
            },
        )
        assert (status, reply) == (200, {"routed": True})

    get = f"/api/queues/%2F/{q}/get"
    status, got = api.post(get, {"count": 5, "ackmode": "ack_requeue_true", "encoding": "auto"})
    assert status == 200 and len(got) == 2 and got[0].keys() >= GOT_FIELDS
    assert (got[0]["payload"], got[0]["payload_encoding"]) == ("first text", "string")
    assert got[0]["properties"] == {"message_id": "m1", "type": "t", "timestamp": 1700000000}
    assert got[0]["message_count"] == 1 and got[1]["message_count"] == 0
    assert (got[1]["payload"], got[1]["payload_encoding"]) == (binary, "base64")
    _, got = api.post(
        get, {"count": 1, "ackmode": "ack_requeue_true", "encoding": "base64", "truncate": 5}
    )
    assert got[0]["payload"] == base64.b64encode(b"first").decode()
    assert got[0]["payload_bytes"] == 10 and got[0]["redelivered"] is True
    # reject without requeue dead-letters, ack without requeue removes
    _, got = api.post(get, {"count": 1, "ackmode": "reject_requeue_false", "encoding": "auto"})
    assert got[0]["payload"] == "first text"
    _, got = api.post(f"/api/queues/%2F/{dead}/get", {"count": 1, "ackmode": "ack_requeue_false"})
    assert got[0]["payload"] == "first text"
    _, got = api.post(get, {"count": 1, "ackmode": "ack_requeue_false", "encoding": "auto"})
    assert got[0]["payload_encoding"] == "base64"
    assert api.get(f"/api/queues/%2F/{q}")["messages"] == 0
    # nothing stays held by the API
    assert api.get(f"/api/queues/%2F/{dead}")["messages_unacknowledged"] == 0
    for name in (q, dead):
        api.delete(f"/api/queues/%2F/{name}")


def test_bad_input_gets_a_clear_error_and_the_broker_goes_on(api, broker):
    q = uid("q")
    api.put(f"/api/queues/%2F/{q}", {})
    cases = [
        ("PUT", f"/api/queues/%2F/{uid('q')}", b"{not json", 400),
        ("PUT", f"/api/queues/%2F/{uid('q')}", b"[1, 2]", 400),
        ("PUT", f"/api/queues/%2F/{uid('q')}", b'{"durable": "maybe"}', 400),
        ("PUT", f"/api/queues/%2F/{uid('q')}", b'{"arguments": "x"}', 400),
        ("PUT", f"/api/queues/%2F/{uid('q')}", b'{"arguments": {"x-max-length": -1}}', 400),
        ("PUT", f"/api/exchanges/%2F/{uid('x')}", b'{"type": "nonsense"}', 400),
        ("PUT", f"/api/exchanges/%2F/{uid('x')}", b"{}", 400),
        ("PUT", f"/api/queues/no-vhost/{uid('q')}", b"{}", 404),
        ("POST", f"/api/queues/%2F/{q}/get", b'{"count": "many"}', 400),
        ("POST", f"/api/queues/%2F/{q}/get", b'{"ackmode": "keep"}', 400),
        ("POST", f"/api/queues/%2F/{q}/get", b'{"encoding": "hex"}', 400),
        (
            "POST",
            "/api/exchanges/%2F/amq.default/publish",
            b'{"payload": "!", "payload_encoding": "base64"}',
            400,
        ),
        (
            "POST",
            "/api/exchanges/%2F/amq.default/publish",
            b'{"properties": {"colour": "red"}}',
            400,
        ),
        (
            "POST",
            "/api/exchanges/%2F/amq.default/publish",
            b'{"properties": {"user_id": "someone"}}',
            400,
        ),
        ("POST", "/api/exchanges/%2F/nope/publish", b"{}", 404),
        ("POST", f"/api/bindings/%2F/e/amq.direct/q/{uid('none')}", b"{}", 404),
        ("POST", f"/api/bindings/%2F/e/amq.direct/q/{q}", b'{"routing_key": 5}', 400),
        ("POST", "/api/definitions", b'{"policies": [{"name": "p"}]}', 400),
        ("POST", "/api/definitions", b'{"queues": [{"name": "q", "vhost": "nowhere"}]}', 400),
        # what AMQP (and the log) cannot carry: refused before it reaches the core
        (
            "PUT",
            f"/api/queues/%2F/{uid('q')}",
            b'{"arguments": {"x-big": 1180591620717411303424}}',
            400,
        ),
        (
            "PUT",
            f"/api/exchanges/%2F/{uid('x')}",
            b'{"type": "direct", "arguments": {"k": [[[1e999]]], "n": -9223372036854775809}}',
            400,
        ),
        (
            "POST",
            "/api/exchanges/%2F/amq.default/publish",
            b'{"properties": {"headers": {"big": 1180591620717411303424}}}',
            400,
        ),
        (
            "POST",
            "/api/exchanges/%2F/amq.default/publish",
            b'{"properties": {"priority": 300}}',
            400,
        ),
        (
            "POST",
            "/api/exchanges/%2F/amq.default/publish",
            b'{"properties": {"delivery_mode": 3}}',
            400,
        ),
        (
            "POST",
            "/api/exchanges/%2F/amq.default/publish",
            b'{"properties": {"timestamp": 1180591620717411303424}}',
            400,
        ),
        (
            "POST",
            "/api/exchanges/%2F/amq.default/publish",
            ('{"properties": {"message_id": "%s"}}' % ("x" * 256)).encode(),
            400,
        ),
        (
            "POST",
            "/api/definitions",
            b'{"queues": [{"name": "q", "vhost": "/", "arguments": {"x": 9223372036854775808}}]}',
            400,
        ),
        ("PUT", "/api/queues/%2F/" + "q" * 256, b"{}", 400),
        ("PUT", "/api/exchanges/%2F/" + "x" * 256, b'{"type": "direct"}', 400),
        (
            "POST",
            f"/api/bindings/%2F/e/amq.direct/q/{q}",
            b'{"routing_key": "%s"}' % (b"k" * 256),
            400,
        ),
        (
            "POST",
            "/api/exchanges/%2F/amq.default/publish",
            b'{"routing_key": "%s"}' % (b"k" * 256),
            400,
        ),
        ("GET", "/api/health/checks/port-listener/http", None, 400),
        ("GET", "/api/queues?page=0", None, 400),
        ("GET", "/api/queues?name=(&use_regex=true", None, 400),
        ("PUT", "/api/users/someone", b'{"tags": 5}', 400),
        ("PUT", f"/api/permissions/%2F/{uid('nobody')}", b'{"configure": ".*"}', 400),
    ]
    for method, path, raw, expected in cases:
        status, error = api.call(method, path, raw=raw)
        assert status == expected, (method, path, raw, status, error)
        assert set(error) == {"error", "reason"} and error["reason"], (path, error)
    assert api.get("/api/aliveness-test/%2F") == {"status": "ok"}
    api.delete(f"/api/queues/%2F/{q}")


def test_list_queries_filter_sort_page_and_cut_columns(api):
    prefix = uid("pg")
    for i in (3, 1, 2):
        api.put(f"/api/queues/%2F/{prefix}-{i}", {})
    listed = api.get(f"/api/queues?name={prefix}&sort=name&sort_reverse=true&columns=name,vhost")
    assert listed == [{"name": f"{prefix}-{i}", "vhost": "/"} for i in (3, 2, 1)]
    page = api.get(f"/api/queues?name={prefix}&sort=name&page=2&page_size=2&columns=name")
    assert page["items"] == [{"name": f"{prefix}-3"}]
    assert (page["page"], page["page_count"], page["filtered_count"]) == (2, 2, 3)
    regex = api.get(f"/api/queues?name=^{prefix}-[12]$&use_regex=true&columns=name&sort=name")
    assert [q["name"] for q in regex] == [f"{prefix}-1", f"{prefix}-2"]
    for i in (1, 2, 3):
        api.delete(f"/api/queues/%2F/{prefix}-{i}")


def test_health_checks(api, broker):
    assert api.get("/api/health/checks/alarms") == {"status": "ok"}
    assert api.get("/api/health/checks/virtual-hosts") == {"status": "ok"}
    assert api.get(f"/api/health/checks/port-listener/{broker.port}")["status"] == "ok"
    assert api.get("/api/health/checks/protocol-listener/mqtt")["status"] == "ok"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        unused = s.getsockname()[1]
    status, body = api.call("GET", f"/api/health/checks/port-listener/{unused}")
    assert status == 503 and body["status"] == "failed" and broker.port in body["ports"]


def test_a_disk_alarm_fails_the_alarm_check(fresh_broker):
    b, api = fresh_broker, Api(fresh_broker)
    b.cli("set-disk-free-limit", str(1 << 62))
    status, body = wait_until(
        lambda: (r := api.call("GET", "/api/health/checks/alarms"))[0] == 503 and r,
        message="the alarm",
    )
    assert body["alarms"][0]["resource"] == "disk"
    assert api.get("/api/nodes")[0]["disk_free_alarm"] is True
    b.cli("set-disk-free-limit", "1")
    wait_until(lambda: api.call("GET", "/api/health/checks/alarms")[0] == 200, message="ok")


def test_mqtt_over_websocket_and_amqp_connections_tell_their_protocol(api, broker):
    ws = Paho(broker, client_id=uid("ws"), websocket=True)
    ws.connect()
    try:
        with connection(broker):
            listed = wait_until(
                lambda: (
                    {c["protocol"] for c in api.get("/api/connections")}
                    >= {"AMQP 0-9-1", "Web MQTT 3.1.1"}
                ),
                message="both protocols",
            )
            assert listed
            mine = [
                c
                for c in api.get("/api/connections")
                if c["client_properties"].get("client_id") == ws.client_id
            ]
            assert mine[0]["peer_host"] == "127.0.0.1" and mine[0]["port"] == broker.mqtt_ws_port
            assert mine[0]["vhost"] == "/" and isinstance(mine[0]["connected_at"], int)
            vhost_conns = api.get("/api/vhosts/%2F/connections")
            assert ws.client_id in str(vhost_conns)
    finally:
        ws.close()


def test_cmq_topics_subscriptions_and_keys(tmp_path_factory):
    from .conftest import BrokerProcess

    base = tmp_path_factory.mktemp("mgmt-cmq")
    process = BrokerProcess(base / "data", ["--config", write_config(base)])
    process.start()
    try:
        cmq = CmqBroker.attach(process)
        api = Api(process)
        client = cmq.client()
        topic, sub, q = uid("t"), uid("s"), uid("q")
        assert client.call("CreateQueue", queueName=q)["code"] == 0
        assert client.call("CreateTopic", topicName=topic, filterType=2)["code"] == 0
        reply = client.call(
            "Subscribe",
            topicName=topic,
            subscriptionName=sub,
            protocol="queue",
            endpoint=q,
            **{"bindingKey.0": "a.#"},
        )
        assert reply["code"] == 0, reply
        [shown] = api.get("/api/cmq/topics/%2F")
        assert (shown["name"], shown["filterType"], shown["subscriptions"]) == (topic, 2, 1)
        [subscription] = api.get(f"/api/cmq/subscriptions/%2F/{topic}")
        assert (subscription["name"], subscription["endpoint"]) == (sub, q)
        assert subscription["bindingKeys"] == ["a.#"]
        keys = api.get("/api/cmq/keys")
        assert [k["secret_id"] for k in keys] == [cmq.secret_id] and "secret_key" not in keys[0]
        assert api.delete(f"/api/cmq/keys/{cmq.secret_id}") == 204
        assert client.call("ListQueue")["code"] != 0
    finally:
        process.stop()


def test_management_port_zero_turns_it_off(broker_factory):
    b = broker_factory("--management-port", "0")
    assert not port_open(b.host, b.management_port)
    with connection(b) as conn:
        assert conn.is_open


def test_vhost_paths_take_any_name(api):
    vhost = "odd/name with spaces"
    assert api.put(f"/api/vhosts/{quote(vhost)}", None) == 201
    assert api.put(f"/api/queues/{quote(vhost)}/{quote('a/b c')}", {}) == 201
    assert [q["name"] for q in api.get(f"/api/queues/{quote(vhost)}")] == ["a/b c"]
    assert api.delete(f"/api/vhosts/{quote(vhost)}") == 204
    assert api.call("GET", f"/api/queues/{quote(vhost)}")[0] == 404


def test_deleting_a_vhost_closes_its_connections(api, broker):
    vhost = uid("vh")
    api.put(f"/api/vhosts/{quote(vhost)}", None)
    conn = pika.BlockingConnection(broker.params(virtual_host=vhost))
    try:
        assert api.delete(f"/api/vhosts/{quote(vhost)}") == 204
        wait_until(lambda: _closed(conn), message="the connection closed")
    finally:
        if conn.is_open:
            conn.close()


def _closed(conn) -> bool:
    try:
        conn.process_data_events(time_limit=0.1)
    except pika.exceptions.AMQPError:
        return True
    return not conn.is_open


def test_rewind_makes_acknowledged_messages_consumable_again(api):
    q = uid("q")
    assert api.put(f"/api/queues/%2F/{q}", {"arguments": {"x-rewind-ms": 600_000}}) == 201
    for body in ("a", "b"):
        api.post("/api/exchanges/%2F/amq.default/publish", {"routing_key": q, "payload": body})
    _, got = api.post(f"/api/queues/%2F/{q}/get", {"count": 2, "ackmode": "ack_requeue_false"})
    assert [m["payload"] for m in got] == ["a", "b"]
    assert api.get(f"/api/queues/%2F/{q}")["messages"] == 0
    status, reply = api.post(f"/api/cmq/queues/%2F/{q}/rewind", {"since": 0})
    assert (status, reply) == (200, {"rewound": 2})
    _, got = api.post(f"/api/queues/%2F/{q}/get", {"count": 2, "ackmode": "ack_requeue_false"})
    assert [m["payload"] for m in got] == ["a", "b"]
    assert api.call("POST", f"/api/cmq/queues/%2F/{q}/rewind", {"since": "x"})[0] == 400
    assert api.call("POST", f"/api/cmq/queues/%2F/{q}/rewind", {"since": 2**62})[0] == 400
    assert api.call("POST", f"/api/cmq/queues/%2F/{uid('no')}/rewind", {"since": 0})[0] == 404
    api.delete(f"/api/queues/%2F/{q}")


def test_rewind_from_a_message_id(api):
    q = uid("q")
    assert api.put(f"/api/queues/%2F/{q}", {"arguments": {"x-rewind-ms": 600_000}}) == 201
    for body in ("a", "b", "c"):
        message = {"routing_key": q, "payload": body, "properties": {"message_id": f"id-{body}"}}
        api.post("/api/exchanges/%2F/amq.default/publish", message)
    _, got = api.post(f"/api/queues/%2F/{q}/get", {"count": 3, "ackmode": "ack_requeue_false"})
    assert [m["payload"] for m in got] == ["a", "b", "c"]
    status, reply = api.post(f"/api/cmq/queues/%2F/{q}/rewind", {"from_message": "id-b"})
    assert (status, reply) == (200, {"rewound": 2})
    _, got = api.post(f"/api/queues/%2F/{q}/get", {"count": 3, "ackmode": "ack_requeue_false"})
    assert [m["payload"] for m in got] == ["b", "c"]
    missing = api.call("POST", f"/api/cmq/queues/%2F/{q}/rewind", {"from_message": "id-z"})
    assert missing[0] == 400 and "no message id-z" in missing[1]["reason"]
    both = api.call("POST", f"/api/cmq/queues/%2F/{q}/rewind", {"from_message": "id-a", "since": 0})
    assert both[0] == 400
    assert api.call("POST", f"/api/cmq/queues/%2F/{q}/rewind", {"from_message": 7})[0] == 400
    api.delete(f"/api/queues/%2F/{q}")


def test_one_vhosts_definitions_export_and_import_into_another(api):
    source, target = uid("src"), uid("dst")
    for vhost in (source, target):
        assert api.put(f"/api/vhosts/{vhost}", None) == 201
    api.put(f"/api/exchanges/{source}/orders", {"type": "topic", "durable": True})
    api.put(f"/api/queues/{source}/eu", {"arguments": {"x-message-ttl": 60000}})
    api.post(f"/api/bindings/{source}/e/orders/q/eu", {"routing_key": "eu.#"})
    exported = api.get(f"/api/definitions/{source}")
    assert [q["name"] for q in exported["queues"]] == ["eu"]
    assert "vhost" not in exported["queues"][0] and "users" not in exported
    assert exported["bindings"] == [
        {
            "source": "orders",
            "destination": "eu",
            "destination_type": "queue",
            "routing_key": "eu.#",
            "arguments": {},
        }
    ]
    status, _ = api.call("POST", f"/api/definitions/{target}", exported)
    assert status == 204
    assert api.get(f"/api/queues/{target}/eu")["arguments"] == {"x-message-ttl": 60000}
    assert api.get(f"/api/exchanges/{target}/orders")["type"] == "topic"
    status, reply = api.post(
        f"/api/exchanges/{target}/orders/publish", {"routing_key": "eu.fr", "payload": "x"}
    )
    assert reply == {"routed": True}
    status, error = api.call("POST", f"/api/definitions/{target}", {"users": [{"name": "u"}]})
    assert status == 400 and "users" in error["reason"]
    assert api.call("GET", f"/api/definitions/{uid('none')}")[0] == 404
    for vhost in (source, target):
        api.delete(f"/api/vhosts/{vhost}")


def test_exchange_to_exchange_bindings(api):
    front, back, q = uid("front"), uid("back"), uid("q")
    api.put(f"/api/exchanges/%2F/{front}", {"type": "topic"})
    api.put(f"/api/exchanges/%2F/{back}", {"type": "fanout"})
    api.put(f"/api/queues/%2F/{q}", {})
    api.post(f"/api/bindings/%2F/e/{back}/q/{q}", {})
    status, _ = api.post(f"/api/bindings/%2F/e/{front}/e/{back}", {"routing_key": "a.*"})
    assert status == 201
    [binding] = api.get(f"/api/exchanges/%2F/{back}/bindings/destination")
    assert (binding["source"], binding["destination_type"]) == (front, "exchange")
    _, reply = api.post(
        f"/api/exchanges/%2F/{front}/publish", {"routing_key": "a.b", "payload": "x"}
    )
    assert reply == {"routed": True}
    assert api.get(f"/api/queues/%2F/{q}")["messages"] == 1
    # the properties key is a path segment of its own: quoted once more ("a.%2A" as "a.%252A")
    assert binding["properties_key"] == "a.%2A"
    props = quote(binding["properties_key"])
    assert api.delete(f"/api/bindings/%2F/e/{front}/e/{back}/{props}") == 204
    _, reply = api.post(
        f"/api/exchanges/%2F/{front}/publish", {"routing_key": "a.b", "payload": "x"}
    )
    assert reply == {"routed": False}
    for kind, name in (("exchanges", front), ("exchanges", back), ("queues", q)):
        api.delete(f"/api/{kind}/%2F/{name}")


def test_user_limits(api):
    name = uid("u")
    api.put(f"/api/users/{name}", {"password": "pw", "tags": ""})
    assert api.put(f"/api/user-limits/{name}/max-channels", {"value": 5}) == 201
    assert api.put(f"/api/user-limits/{name}/max-connections", {"value": 2}) == 201
    assert api.put(f"/api/user-limits/{name}/max-channels", {"value": 6}) == 204
    assert api.get(f"/api/user-limits/{name}") == [
        {"user": name, "value": {"max-channels": 6, "max-connections": 2}}
    ]
    for limit, value in (("max-channels", 2**63), ("max-queues", 1), ("max-channels", "x")):
        status, error = api.call("PUT", f"/api/user-limits/{name}/{limit}", {"value": value})
        assert status == 400 and error["reason"], (limit, value)
    assert api.call("PUT", f"/api/user-limits/{uid('none')}/max-channels", {"value": 1})[0] == 404
    assert api.delete(f"/api/user-limits/{name}/max-channels") == 204
    assert api.get(f"/api/user-limits/{name}")[0]["value"] == {"max-connections": 2}
    assert api.delete(f"/api/user-limits/{name}/max-channels") == 404
    api.delete(f"/api/users/{name}")


def test_an_import_the_core_refuses_half_way_says_where_it_stopped(api):
    q, x = uid("q"), uid("x")
    api.put(f"/api/queues/%2F/{q}", {"durable": True})
    doc = {
        "exchanges": [{"name": x, "vhost": "/", "type": "fanout"}],
        "queues": [{"name": q, "vhost": "/", "durable": False}],
    }
    status, error = api.call("POST", "/api/definitions", doc)
    assert status == 400
    assert f"queue '{q}' in vhost '/' refused" in error["reason"]
    assert "inequivalent arg 'durable'" in error["reason"]
    assert "1 of 2 definitions imported before it" in error["reason"]
    assert api.get(f"/api/exchanges/%2F/{x}")["type"] == "fanout"
    api.delete(f"/api/exchanges/%2F/{x}")
    api.delete(f"/api/queues/%2F/{q}")


def test_depth_rates_appear_from_the_second_sample(api):
    q = uid("q")
    api.put(f"/api/queues/%2F/{q}", {})
    assert "messages_details" not in api.get(f"/api/queues/%2F/{q}")  # its first sample
    # Samples are taken when queues are looked at, at most every 4 s: wait for two that
    # saw it empty (rate 0), so the next one is the first to see what is published now.
    wait_until(
        lambda: "messages_details" in api.get(f"/api/queues/%2F/{q}"),
        timeout=15,
        interval=0.5,
        message="a second sample of the empty queue",
    )
    for i in range(20):
        api.post("/api/exchanges/%2F/amq.default/publish", {"routing_key": q, "payload": str(i)})
    shown = wait_until(
        lambda: (item := api.get(f"/api/queues/%2F/{q}"))["messages_details"]["rate"] and item,
        timeout=15,
        interval=0.5,
        message="a sample taken after the publishes",
    )
    assert 0 < shown["messages_details"]["rate"] <= 20 / 4
    assert shown["messages_ready_details"] == shown["messages_details"]
    assert shown["messages_unacknowledged_details"] == {"rate": 0.0}
    assert "messages_details" in api.get("/api/overview")["queue_totals"]
    api.delete(f"/api/queues/%2F/{q}")


def test_message_stats_count_and_rate_what_flows(api, broker):
    q = uid("q")
    with connection(broker) as conn:
        ch = conn.channel()
        ch.queue_declare(q)
        ch.confirm_delivery()
        for i in range(10):
            ch.basic_publish("", q, b"%d" % i)
        for _ in range(10):
            method, _, _ = wait_get(ch, q, auto_ack=False)
            ch.basic_ack(method.delivery_tag)

        def sampled():
            stats = api.get(f"/api/queues/%2F/{q}").get("message_stats", {})
            return stats if stats.get("ack") == 10 else None

        stats = wait_until(sampled, timeout=15, interval=0.5, message="a sample after the acks")
    assert stats["publish"] == 10 and stats["deliver_get"] == 10
    assert stats["publish_details"]["rate"] >= 0
    overview = api.get("/api/overview")
    assert overview["rates_mode"] == "basic"
    assert overview["message_stats"]["publish"] >= 10
    assert set(overview["message_stats"]) >= {"publish", "publish_details", "ack", "ack_details"}
