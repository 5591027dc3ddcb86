"""Prometheus /metrics on --metrics-port, scraped over HTTP and parsed with prometheus_client's
parser while pika, paho and CMQ clients put load on the node: the counters move as the load
does, never backwards; per-queue samples only when asked for; other paths get a JSON 404."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import pika
import pytest
from prometheus_client.parser import text_string_to_metric_families

from compat_tests.helpers import channel, uid, wait_until

pytestmark = pytest.mark.own_broker

N = 300


def scrape(broker, path: str = "/metrics") -> dict[str, dict[tuple, float]]:
    """sample name -> {sorted labels: value}."""
    url = f"http://{broker.host}:{broker.metrics_port}{path}"
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = resp.read().decode()
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def value(metrics, name: str, **labels: str) -> float:
    return metrics[name][tuple(sorted(labels.items()))]


def publish_and_consume(broker, queue: str, n: int) -> None:
    """n persistent messages with confirms, then consumed with manual acks."""
    with channel(broker) as ch:
        ch.queue_declare(queue, durable=True)
        ch.confirm_delivery()
        for i in range(n):
            ch.basic_publish(
                "", queue, b"m%d" % i, pika.BasicProperties(delivery_mode=2), mandatory=False
            )
        for _ in range(n):
            method, _, _ = ch.basic_get(queue)
            assert method is not None
            ch.basic_ack(method.delivery_tag)
        ch.queue_delete(queue)


def test_counters_move_with_an_amqp_load_and_never_go_back(broker):
    before = scrape(broker)
    errors: list[BaseException] = []

    def load() -> None:
        try:
            publish_and_consume(broker, uid("load"), N)
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)

    worker = threading.Thread(target=load)
    worker.start()
    received = [value(before, "rabbitmq_global_messages_received_total", protocol="amqp091")]
    while worker.is_alive():  # scraped while the load runs: every page parses, nothing drops
        now = scrape(broker)
        received.append(value(now, "rabbitmq_global_messages_received_total", protocol="amqp091"))
    worker.join()
    assert not errors, errors
    assert received == sorted(received)
    after = scrape(broker)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("rabbitmq_global_messages_received_total", protocol="amqp091") >= N
    assert grew("rabbitmq_global_messages_delivered_total", protocol="amqp091") >= N
    assert grew("rabbitmq_global_messages_acknowledged_total") >= N
    assert grew("rabbitmq_global_messages_routed_total") >= N
    # The queue is gone: its counts stay in the aggregated counters.
    assert grew("rabbitmq_queue_messages_published_total") >= N
    assert grew("broker_queue_messages_acked_total") >= N
    assert grew("broker_connections_opened_total", protocol="amqp091") >= 1
    # Confirmed publishes are synced: fsyncs, writes with entries, their latency.
    assert grew("broker_fsyncs_total") >= 1
    assert grew("broker_commit_batch_size_count") >= 1
    assert grew("broker_commit_latency_seconds_count") >= 1
    assert grew("broker_commit_batch_size_sum") >= 2 * N  # N publishes and N gets at least
    buckets = after["broker_commit_latency_seconds_bucket"]
    assert buckets[(("le", "+Inf"),)] == value(after, "broker_commit_latency_seconds_count")


def test_mqtt_counters_sessions_and_retained_messages(broker, clients):
    topic = uid("metrics/t")
    sub = clients()
    assert sub.subscribe((topic, 1)) == [1]
    pub = clients()
    before = scrape(broker)
    for i in range(20):
        pub.publish(topic, b"%d" % i, qos=1)
    pub.publish(uid("metrics/retained"), b"kept", qos=1, retain=True)
    for _ in range(20):
        sub.message()

    def moved():
        now = scrape(broker)
        received = value(now, "rabbitmq_global_messages_received_total", protocol="mqtt")
        delivered = value(now, "rabbitmq_global_messages_delivered_total", protocol="mqtt")
        start = value(before, "rabbitmq_global_messages_delivered_total", protocol="mqtt")
        if delivered - start >= 20 and received >= 21:
            return now
        return None

    now = wait_until(moved, message="mqtt counters to move")
    assert value(now, "broker_mqtt_sessions", state="connected") >= 2
    assert value(now, "broker_mqtt_retained_messages") >= 1
    assert value(now, "broker_connections", protocol="mqtt") >= 2
    assert value(now, "broker_mqtt_packets_received_total") > value(
        before, "broker_mqtt_packets_received_total"
    )


def test_queue_metrics_are_summed_unless_per_object_is_asked_for(broker):
    queue = uid("depth")
    with channel(broker) as ch:
        ch.queue_declare(queue)
        for _ in range(3):
            ch.basic_publish("", queue, b"x")
        labels = (("queue", queue), ("vhost", "/"))
        per_object = wait_until(
            lambda: (
                m
                if (m := scrape(broker, "/metrics/per-object"))[
                    "rabbitmq_queue_messages_ready"
                ].get(labels)
                == 3
                else None
            ),
            message="the queue's depth in /metrics/per-object",
        )
        assert per_object["rabbitmq_queue_messages"][labels] == 3
        assert per_object["rabbitmq_queue_consumers"][labels] == 0
        aggregated = scrape(broker)
        assert list(aggregated["rabbitmq_queue_messages_ready"]) == [()]
        assert aggregated["rabbitmq_queue_messages_ready"][()] >= 3
        ch.queue_delete(queue)


def test_the_per_object_flag_makes_metrics_per_queue(broker_factory):
    b = broker_factory("--metrics-per-object")
    queue = uid("flagged")
    with channel(b) as ch:
        ch.queue_declare(queue)
        ch.basic_publish("", queue, b"x")
        labels = (("queue", queue), ("vhost", "/"))
        wait_until(
            lambda: scrape(b)["rabbitmq_queue_messages_ready"].get(labels) == 1,
            message="the queue's own sample in /metrics",
        )


def test_other_paths_and_methods_get_json_errors(broker):
    base = f"http://{broker.host}:{broker.metrics_port}"
    for path, method, status in (
        ("/nope", "GET", 404),
        ("/metrics/other", "GET", 404),
        ("/metrics", "POST", 405),
    ):
        request = urllib.request.Request(base + path, method=method)
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(request, timeout=10)
        assert err.value.code == status, path
        body = json.loads(err.value.read())
        assert body["error"] and path in body["reason"]
    scrape(broker)  # and the endpoint still answers


def test_port_zero_turns_the_endpoint_off(broker_factory):
    from compat_tests.conftest import port_open

    b = broker_factory("--metrics-port", "0")
    assert not port_open(b.host, b.metrics_port)


def test_cmq_pushes_and_retries_are_counted(cmq_broker):
    from cmq.topic import Message

    from compat_tests.cmq_helpers import PushReceiver
    from compat_tests.test_http_topics import http_subscription, make_topic

    broker = cmq_broker.process
    account = cmq_broker.account()
    before = scrape(broker)
    with PushReceiver() as receiver:
        topic = make_topic(account)
        receiver.fail("/flaky", 2)
        http_subscription(account, topic, receiver.url("/flaky"))
        topic.publish_message(Message("counted"))
        for _ in range(3):  # two failures, then the push that succeeds
            receiver.get()

        def delivered():
            now = scrape(broker)
            pushed = value(now, "broker_cmq_pushes_total", outcome="delivered")
            return (
                now
                if pushed > value(before, "broker_cmq_pushes_total", outcome="delivered")
                else None
            )

        now = wait_until(delivered, message="the push to be counted")

    def grew(name: str, **labels: str) -> float:
        return value(now, name, **labels) - value(before, name, **labels)

    # (at least: the node is shared with other tests, whose subscriptions may still push)
    assert grew("broker_cmq_pushes_total", outcome="delivered") >= 1
    assert grew("broker_cmq_pushes_total", outcome="failed") >= 2
    assert grew("broker_cmq_push_retries_total") >= 2
    assert grew("rabbitmq_global_messages_received_total", protocol="http") >= 1
    assert grew("rabbitmq_global_messages_delivered_total", protocol="http") >= 1
    assert value(now, "broker_connections_opened_total", protocol="http") >= 1


def test_counters_start_at_zero_with_the_node(broker_factory):
    """RabbitMQ's counters restart with the node: the replay of the log at start counts
    nothing, while the gauges show what the node holds."""
    b = broker_factory()
    queue = uid("kept")
    with channel(b) as ch:
        ch.queue_declare(queue, durable=True)
        ch.confirm_delivery()
        for _ in range(5):
            ch.basic_publish("", queue, b"x", pika.BasicProperties(delivery_mode=2))
    assert value(scrape(b), "rabbitmq_queue_messages_published_total") == 5
    b.restart(kill=True)  # the log since the last snapshot is replayed at start
    after = scrape(b)
    assert value(after, "rabbitmq_queue_messages_ready") == 5
    assert value(after, "rabbitmq_queue_messages_published_total") == 0
    assert value(after, "rabbitmq_global_messages_received_total", protocol="amqp091") == 0
