"""The exposition writer and the metrics page, read back with prometheus_client's parser."""

from __future__ import annotations

import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from broker.config import Config
from broker.core import commands as c
from broker.histogram import Histogram
from broker.metrics import Sources, render
from broker.prometheus import Exposition
from tests.memory_gateway import memory_gateway


def families(text: str) -> dict[str, object]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """name (as a sample is named) -> {sorted labels: value}."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_counters_gauges_and_escaped_labels_parse_back() -> None:
    out = Exposition()
    out.value("broker_things", "gauge", "Things\nover two lines", 3)
    out.family(
        "broker_events_total",
        "counter",
        "Events",
        [({"queue": 'a "quoted" \\ name\n'}, 2), ({"queue": "plain"}, 0.5)],
    )
    text = out.text()
    parsed = families(text)
    assert parsed["broker_things"].type == "gauge"  # type: ignore[attr-defined]
    assert parsed["broker_things"].documentation == "Things\nover two lines"  # type: ignore[attr-defined]
    assert parsed["broker_events"].type == "counter"  # type: ignore[attr-defined]
    assert samples(text, "broker_events_total") == {
        (("queue", 'a "quoted" \\ name\n'),): 2.0,
        (("queue", "plain"),): 0.5,
    }


def test_a_histogram_parses_back_with_its_buckets_sum_and_count() -> None:
    hist = Histogram((0.1, 1.0))
    for value in (0.05, 0.5, 5.0):
        hist.observe(value)
    out = Exposition()
    out.histogram("broker_latency_seconds", "Latency", [({}, hist)])
    text = out.text()
    assert families(text)["broker_latency_seconds"].type == "histogram"  # type: ignore[attr-defined]
    assert samples(text, "broker_latency_seconds_bucket") == {
        (("le", "0.1"),): 1.0,
        (("le", "1.0"),): 2.0,
        (("le", "+Inf"),): 3.0,
    }
    assert samples(text, "broker_latency_seconds_count") == {(): 3.0}
    assert samples(text, "broker_latency_seconds_sum") == {(): 5.55}


def test_a_histogram_is_not_a_simple_family() -> None:
    with pytest.raises(ValueError):
        Exposition().family("x", "histogram", "no", [])


def page(per_object: bool) -> str:
    gateway, commit = memory_gateway()
    commit.submit(c.DeclareQueue("/", "q1", True, None, False, {}))
    commit.submit(c.DeclareQueue("/", "q2", True, None, False, {}))
    for queue in ("q1", "q1", "q2"):
        commit.submit(c.Publish("/", "", queue, {}, b"m"))
    commit.run()
    gateway.traffic["amqp091"].received = 3
    sources = Sources(Config(), gateway, lambda: None, lambda: 0, lambda: {}, time.monotonic())
    return render(sources, per_object)


def test_the_page_sums_queues_unless_per_object_is_asked_for() -> None:
    aggregated = page(per_object=False)
    assert samples(aggregated, "rabbitmq_queue_messages_ready") == {(): 3.0}
    assert samples(aggregated, "rabbitmq_queue_messages_published_total") == {(): 3.0}
    assert samples(aggregated, "rabbitmq_queues") == {(): 2.0}
    received = samples(aggregated, "rabbitmq_global_messages_received_total")
    assert received[(("protocol", "amqp091"),)] == 3.0
    per_queue = page(per_object=True)
    assert samples(per_queue, "rabbitmq_queue_messages_ready") == {
        (("queue", "q1"), ("vhost", "/")): 2.0,
        (("queue", "q2"), ("vhost", "/")): 1.0,
    }
