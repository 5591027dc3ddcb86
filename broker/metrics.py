"""What a scrape of /metrics shows: the node's counters and gauges as Prometheus families.

RabbitMQ's metric names where RabbitMQ has the same thing (so its dashboards and alerts work
unchanged), `broker_*` for the rest. Queue metrics are sums over the node's queues unless
`per_object` is asked for, as rabbitmq_prometheus does for large installations (its
/metrics/per-object endpoint and `prometheus.return_per_object_metrics`): one labelled
(vhost, queue) sample per queue then.

Everything is read on the scrape, from counters kept where the work is done (broker.stats
says which), so a scrape costs O(queues + connections) and serving none costs nothing.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from broker import __version__
from broker.config import Config
from broker.core.queue import MessageQueue, QueueCounters
from broker.core.state import StateMachine
from broker.histogram import CommitMetrics
from broker.local_gateway import LocalGateway
from broker.prometheus import Exposition


class CommitPath(Protocol):
    @property
    def stats(self) -> dict[str, int]: ...

    @property
    def metrics(self) -> CommitMetrics: ...


@dataclass
class Sources:
    """Where the numbers come from (the node fills it in)."""

    config: Config
    gateway: LocalGateway
    #: the commit path once there is one
    commit: Callable[[], CommitPath | None]
    #: open CMQ HTTP connections and the pushers' counts ({} without the HTTP API)
    http_connections: Callable[[], int]
    push_counts: Callable[[], dict[str, int]]
    #: time.monotonic() when the node started
    started: float


def render(src: Sources, per_object: bool) -> str:
    out = Exposition()
    gateway = src.gateway
    state = gateway.committed
    _node(out, src)
    _connections(out, src)
    _messages(out, src)
    _queues(out, state, per_object)
    _commit(out, src.commit())
    _mqtt(out, src, state)
    return out.text()


def _node(out: Exposition, src: Sources) -> None:
    out.family(
        "broker_build_info", "gauge", "Version of this broker", [({"version": __version__}, 1)]
    )
    out.value(
        "broker_uptime_seconds",
        "gauge",
        "Seconds since the node started",
        round(time.monotonic() - src.started, 3),
    )
    try:
        free = shutil.disk_usage(src.config.data_dir).free
    except OSError:
        free = 0
    out.value("rabbitmq_disk_space_available_bytes", "gauge", "Disk space available in bytes", free)
    out.value(
        "rabbitmq_disk_space_available_limit_bytes",
        "gauge",
        "Free disk space low watermark in bytes",
        src.config.disk_free_limit,
    )
    blocked = src.gateway.blocked_reason
    out.value(
        "rabbitmq_alarms_free_disk_space_watermark",
        "gauge",
        "1 while publishers are blocked for want of disk space",
        int(blocked == "low on disk" or blocked == "disk write failed"),
    )
    out.value(
        "rabbitmq_alarms_memory_used_watermark",
        "gauge",
        "1 while publishers are blocked for want of memory",
        int(blocked == "low on memory"),
    )


def _connections(out: Exposition, src: Sources) -> None:
    gateway = src.gateway
    by_protocol = dict.fromkeys(gateway.traffic, 0)
    channels = 0
    for conn in gateway.connections.values():
        protocol = getattr(conn, "protocol", "")
        by_protocol[protocol] = by_protocol.get(protocol, 0) + 1
        channels += conn.channel_count()
    by_protocol["http"] = src.http_connections()
    traffic = gateway.traffic
    out.value(
        "rabbitmq_connections",
        "gauge",
        "Connections currently open (AMQP and MQTT)",
        len(gateway.connections),
    )
    out.value(
        "rabbitmq_connections_opened_total",
        "counter",
        "Total number of connections opened (AMQP and MQTT)",
        sum(t.connections for p, t in traffic.items() if p != "http"),
    )
    out.family(
        "broker_connections",
        "gauge",
        "Client connections open, by protocol",
        [({"protocol": p}, n) for p, n in by_protocol.items()],
    )
    out.family(
        "broker_connections_opened_total",
        "counter",
        "Client connections opened, by protocol",
        [({"protocol": p}, t.connections) for p, t in traffic.items()],
    )
    out.value(
        "broker_connections_refused_total",
        "counter",
        "Connections refused over the node's or an address's connection limit",
        gateway.admission.refused_total,
    )
    out.value("rabbitmq_channels", "gauge", "Channels currently open", channels)


def _messages(out: Exposition, src: Sources) -> None:
    gateway = src.gateway
    traffic = gateway.traffic
    state = gateway.committed
    out.family(
        "rabbitmq_global_messages_received_total",
        "counter",
        "Total number of messages received from publishers",
        [({"protocol": p}, t.received) for p, t in traffic.items()],
    )
    out.family(
        "rabbitmq_global_messages_delivered_total",
        "counter",
        "Total number of messages delivered to consumers",
        [({"protocol": p}, t.delivered) for p, t in traffic.items()],
    )
    totals = _queue_totals(state)
    out.value(
        "rabbitmq_global_messages_acknowledged_total",
        "counter",
        "Total number of messages acknowledged by consumers",
        totals.acked,
    )
    out.value(
        "rabbitmq_global_messages_redelivered_total",
        "counter",
        "Total number of messages redelivered to consumers",
        totals.redelivered,
    )
    out.value(
        "rabbitmq_global_messages_routed_total",
        "counter",
        "Total number of messages routed to queues",
        totals.published,
    )
    drops = gateway.drops.counts
    out.value(
        "rabbitmq_global_messages_unroutable_dropped_total",
        "counter",
        "Total number of messages published as non-mandatory into an exchange and "
        "dropped as unroutable",
        drops.get("dropped_unroutable", 0),
    )
    out.value(
        "broker_messages_dead_lettered_total",
        "counter",
        "Messages that died in a queue and went to its dead-letter exchange",
        totals.dead_lettered,
    )
    out.family(
        "broker_messages_dropped_total",
        "counter",
        "Messages dropped without reaching a consumer or a place the user chose, by reason",
        [
            ({"reason": name.removeprefix("dropped_")}, n)
            for name, n in drops.items()
            if name.startswith("dropped_")
        ],
    )
    out.value(
        "broker_dead_letter_failed_total",
        "counter",
        "Messages whose queue had a dead-letter target that did not take them",
        drops.get("dead_letter_failed", 0),
    )
    out.family(
        "broker_messages_refused_total",
        "counter",
        "Publishes a full queue refused (overflow reject-publish) or that were over "
        "a queue's x-max-message-size",
        [
            ({"reason": "overflow"}, gateway.metrics["overflow_refused"]),
            ({"reason": "oversized"}, gateway.metrics["oversized_refused"]),
        ],
    )
    out.value("rabbitmq_consumers", "gauge", "Consumers currently connected", len(state.consumers))


def _queue_totals(state: StateMachine) -> QueueCounters:
    totals = QueueCounters()
    totals.add(state.retired)
    for q in state.queues_by_qid.values():
        totals.add(q.counters)
    return totals


#: (name, kind, help, value of a queue) of the queue families
_QUEUE_FAMILIES: list[tuple[str, str, str, Callable[[MessageQueue], int]]] = [
    (
        "rabbitmq_queue_messages_ready",
        "gauge",
        "Messages ready to be delivered to consumers",
        lambda q: q.ready_count,
    ),
    (
        "rabbitmq_queue_messages_ready_bytes",
        "gauge",
        "Size in bytes of ready messages",
        lambda q: q.ready_bytes,
    ),
    (
        "rabbitmq_queue_messages_unacked",
        "gauge",
        "Messages delivered to consumers but not yet acknowledged",
        lambda q: len(q.unacked) + q.hidden_count - q.delayed_count,
    ),
    (
        "rabbitmq_queue_messages",
        "gauge",
        "Sum of ready and unacknowledged messages - total queue depth",
        lambda q: q.ready_count + len(q.unacked) + q.hidden_count - q.delayed_count,
    ),
    (
        "broker_queue_messages_delayed",
        "gauge",
        "Messages not visible yet (delaySeconds)",
        lambda q: q.delayed_count,
    ),
    ("rabbitmq_queue_consumers", "gauge", "Consumers on a queue", lambda q: len(q.consumers)),
    (
        "rabbitmq_queue_messages_published_total",
        "counter",
        "Total number of messages published to queues",
        lambda q: q.counters.published,
    ),
    (
        "broker_queue_messages_delivered_total",
        "counter",
        "Deliveries from queues: pushed to consumers, got, received by pull",
        lambda q: q.counters.delivered,
    ),
    (
        "broker_queue_messages_redelivered_total",
        "counter",
        "Deliveries of messages delivered or returned before",
        lambda q: q.counters.redelivered,
    ),
    (
        "broker_queue_messages_acked_total",
        "counter",
        "Messages acknowledged",
        lambda q: q.counters.acked,
    ),
    (
        "broker_queue_messages_dead_lettered_total",
        "counter",
        "Messages that died in the queue and went to its dead-letter exchange",
        lambda q: q.counters.dead_lettered,
    ),
    (
        "broker_queue_messages_dropped_total",
        "counter",
        "Messages that died in the queue and went nowhere",
        lambda q: q.counters.dropped,
    ),
]


def _queues(out: Exposition, state: StateMachine, per_object: bool) -> None:
    queues = list(state.queues_by_qid.values())
    out.value("rabbitmq_queues", "gauge", "Queues available", len(queues))
    for name, kind, help_text, value in _QUEUE_FAMILIES:
        if per_object:
            samples: list[tuple[dict[str, str], int]] = [
                ({"vhost": q.vhost, "queue": q.name}, value(q)) for q in queues
            ]
        else:
            total = sum(value(q) for q in queues)
            if kind == "counter":
                total += _retired(name, state.retired)
            samples = [({}, total)]
        out.family(name, kind, help_text, samples)


def _retired(name: str, gone: QueueCounters) -> int:
    """What deleted queues counted, so that aggregated counters never go down."""
    field = {
        "rabbitmq_queue_messages_published_total": "published",
        "broker_queue_messages_delivered_total": "delivered",
        "broker_queue_messages_redelivered_total": "redelivered",
        "broker_queue_messages_acked_total": "acked",
        "broker_queue_messages_dead_lettered_total": "dead_lettered",
        "broker_queue_messages_dropped_total": "dropped",
    }[name]
    value: int = getattr(gone, field)
    return value


def _commit(out: Exposition, commit: CommitPath | None) -> None:
    if commit is None:
        return
    stats: dict[str, Any] = commit.stats
    metrics = commit.metrics
    out.value("broker_log_writes_total", "counter", "Writes to the log", stats.get("writes", 0))
    out.value("broker_fsyncs_total", "counter", "Syncs of the log to disk (fsync)", metrics.fsyncs)
    out.value(
        "broker_snapshots_total",
        "counter",
        "Snapshots of the state written",
        stats.get("snapshots", 0),
    )
    out.histogram("broker_commit_batch_size", "Log entries per write", [({}, metrics.batch_sizes)])
    out.histogram(
        "broker_commit_latency_seconds",
        "Time a log write took, with its sync when it had one",
        [({}, metrics.latency)],
    )


def _mqtt(out: Exposition, src: Sources, state: StateMachine) -> None:
    persistent = sum(
        1
        for (_, group), records in state.records.items()
        if group[:1] == ("mqtt",) and "session" in records
    )
    retained = sum(len(vh.retained) for vh in state.vhosts.values())
    out.family(
        "broker_mqtt_sessions",
        "gauge",
        "MQTT sessions: held by a connected client, kept for a client (clean session "
        "0) whether connected or not",
        [({"state": "connected"}, len(state.sessions)), ({"state": "persistent"}, persistent)],
    )
    out.value("broker_mqtt_retained_messages", "gauge", "Retained messages (MQTT)", retained)
    mqtt = src.gateway.traffic["mqtt"]
    out.value(
        "broker_mqtt_packets_received_total",
        "counter",
        "MQTT packets received",
        mqtt.packets_received,
    )
    out.value("broker_mqtt_packets_sent_total", "counter", "MQTT packets sent", mqtt.packets_sent)
    pushes = src.push_counts()
    out.family(
        "broker_cmq_pushes_total",
        "counter",
        "HTTP pushes to CMQ subscription endpoints, by outcome",
        [({"outcome": o}, pushes.get(o, 0)) for o in ("delivered", "failed")],
    )
    out.value(
        "broker_cmq_push_retries_total",
        "counter",
        "HTTP pushes that were retries of a failed one",
        pushes.get("retries", 0),
    )
