"""Node configuration: embedded defaults, an optional TOML file, then command-line flags."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any


@dataclass
class Config:
    data_dir: str = "./broker-data"
    #: this node's id: it qualifies the connections and consumers the node holds
    node_id: int = 1
    host: str = "0.0.0.0"
    amqp_port: int = 5672
    heartbeat: int = 60
    frame_max: int = 131072
    channel_max: int = 2047
    handshake_timeout: float = 10.0
    #: publishers are blocked while free disk space is below this many bytes
    disk_free_limit: int = 50_000_000
    #: bytes kept in a file in the data dir and given up when the disk is full, so that the
    #: node keeps storing acks and consumers while its publishers are blocked (0: none)
    disk_reserve: int = 0
    #: publishers are blocked while the process uses more memory than this (0: 40% of RAM)
    memory_high_watermark: int = 0
    default_user: str = "guest"
    default_password: str = "guest"
    #: users that may only connect from loopback addresses, as RabbitMQ does for guest
    loopback_users: tuple[str, ...] = ("guest",)
    log_level: str = "info"
    mqtt_port: int = 1883
    #: MQTT over WebSocket (path /mqtt, subprotocol mqtt), RabbitMQ Web MQTT's port
    mqtt_ws_port: int = 15675
    #: vhost of MQTT users who do not name one ("vhost:user")
    mqtt_vhost: str = "/"
    #: admit MQTT clients without a user name, as `mqtt_anonymous_user`
    mqtt_allow_anonymous: bool = False
    mqtt_anonymous_user: str = "guest"
    #: larger MQTT packets close the connection
    mqtt_max_packet_size: int = 16 * 1024 * 1024
    #: unacknowledged QoS 1/2 messages in flight to one MQTT client
    mqtt_max_inflight: int = 100
    #: messages kept for one MQTT session before `mqtt_overflow` applies (0: no limit)
    mqtt_max_queued: int = 100_000
    #: "drop-oldest" or "refuse"; either way counted in `broker status` and logged
    mqtt_overflow: str = "drop-oldest"
    #: how long message trace keeps what it recorded, s (broker trace)
    trace_retention: int = 3 * 24 * 3600

    #: CMQ API 2.0 over HTTP (path /v2/index.php); HTTPS only when tls_cert and tls_key are set
    http_port: int = 15680
    https_port: int = 15681
    #: the TLS listeners (amqps, mqtts, mqtt_wss, https; 0 turns one off) open when these are
    #: set; the cluster links use them too unless cluster_tls_* are set
    tls_cert: str | None = None
    tls_key: str | None = None
    #: CA of client certificates (and of the other members' on cluster links)
    tls_ca: str | None = None
    #: require a client certificate signed by tls_ca on the client listeners
    tls_verify_peer: bool = False
    amqps_port: int = 5671
    mqtts_port: int = 8883
    #: MQTT over secure WebSocket (path /mqtt), RabbitMQ Web MQTT's TLS port
    mqtt_wss_port: int = 15676
    #: requests whose Timestamp is further than this from the node's clock are refused, s
    http_timestamp_skew: int = 300
    #: Nonces remembered for replay detection; past this the oldest are forgotten
    http_nonce_cache_size: int = 1_000_000
    #: a connection whose request head is not whole within this many seconds of its first
    #: byte (of the connection's opening, for its first request) is closed
    http_header_timeout: float = 10.0
    #: a keep-alive connection sending nothing for this many seconds after a reply is closed
    http_idle_timeout: float = 60.0
    #: a request body not received within this many seconds of its head is refused (4000)
    #: and its connection closed
    http_body_timeout: float = 30.0
    #: larger request bodies are refused (a batch of 16 x 64 KB, URL-encoded, fits)
    http_max_body_bytes: int = 8 * 1024 * 1024
    #: queues (and, separately, topics) one vhost may have through the CMQ API (error 4450)
    http_max_queues: int = 1000
    http_max_topics: int = 1000
    #: lowest msgRetentionSeconds accepted (CMQ: 60)
    http_min_retention_seconds: int = 60
    #: the second of the push retry schedules: BACKOFF_RETRY waits 10-20 units,
    #: EXPONENTIAL_DECAY_RETRY 1, 2, 4 ... 512 units (tests shorten it)
    http_push_retry_unit_ms: int = 1000
    #: an HTTP push not answered within this many seconds failed
    http_push_timeout: float = 15.0

    #: the RabbitMQ-compatible management HTTP API (broker/management), 0 turns it off
    management_port: int = 15672
    #: Prometheus metrics (GET /metrics, /metrics/per-object), rabbitmq_prometheus's port
    #: (0 turns it off)
    metrics_port: int = 15692
    #: /metrics shows every queue's metrics, not their sums (for small installations: a
    #: scrape grows with the queues), as prometheus.return_per_object_metrics
    metrics_per_object: bool = False
    #: seconds between publishes of the MQTT $SYS topics, as Mosquitto's sys_interval (0:
    #: none)
    mqtt_sys_interval: float = 10.0

    #: client connections of every protocol together; more are refused with the protocol's
    #: error (0: the process's file-descriptor limit less admission.FD_RESERVE)
    max_connections: int = 0
    #: client connections from one source address (0: no limit)
    max_connections_per_ip: int = 0

    #: a cluster: every member as "id=host:port" (this node's included), comma-separated;
    #: empty for a single node
    cluster: str = ""
    #: the port this node listens on for the others (default: its own entry's port)
    cluster_port: int = 0
    #: shared by the members; links from nodes without it are refused
    cluster_secret: str | None = None
    #: TLS between members when these are set (PEM files; the CA verifies the peers)
    cluster_tls_cert: str | None = None
    cluster_tls_key: str | None = None
    cluster_tls_ca: str | None = None
    #: Raft's clock: a heartbeat per tick, an election after 10-20 ticks without one
    cluster_tick_ms: int = 100
    cluster_election_ticks: int = 10
    #: a member silent this long has what its clients held released by the leader
    cluster_node_down_ms: int = 5000
    #: log entries kept behind a snapshot, for members a little behind
    cluster_log_retain: int = 20000

    def cluster_members(self) -> dict[int, tuple[str, int]]:
        """The members named by `cluster`, {} for a single node."""
        members: dict[int, tuple[str, int]] = {}
        for item in filter(None, (part.strip() for part in self.cluster.split(","))):
            node, sep, address = item.partition("=")
            host, colon, port = address.rpartition(":")
            if not sep or not colon or not node.strip().isdigit() or not port.isdigit():
                raise ValueError(f"cluster member {item!r} is not id=host:port")
            members[int(node)] = (host, int(port))
        if members and self.node_id not in members:
            raise ValueError(f"this node's id {self.node_id} is not among the cluster members")
        return members

    @classmethod
    def load(cls, path: str | None, overrides: dict[str, Any]) -> Config:
        values: dict[str, Any] = {}
        if path:
            with Path(path).open("rb") as f:
                raw = tomllib.load(f)
            names = {f.name for f in fields(cls)}
            for key, value in raw.items():
                key = key.replace("-", "_")
                if key not in names:
                    raise ValueError(f"unknown configuration key '{key}' in {path}")
                values[key] = tuple(value) if isinstance(value, list) else value
        values.update({k: v for k, v in overrides.items() if v is not None})
        config = cls(**values)
        if config.tls_verify_peer and not config.tls_ca:
            raise ValueError(
                "tls_verify_peer (--tls-verify-peer) needs tls_ca (--tls-ca): the CA whose "
                "signature client certificates must carry"
            )
        return config
