"""A running broker node: store, commit path, gateway, listeners and admin socket.

Start-up recovers the state from the store (snapshot, then the log after it), releases what
the connections of the previous run held and drops what was not durable (both as commands,
so the log says so), and only then opens the listeners. In a cluster the commit path is
Raft's (replication/cluster.py): the node joins the others first, and opens its listeners once
its release is committed; what is not durable lives on while the cluster does.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import shutil
import signal
import ssl
import sys
import time
from typing import Any

from broker.admission import LISTEN_BACKLOG, default_max_connections, open_file_limit
from broker.config import Config
from broker.control import ControlServer
from broker.core import commands as c
from broker.core.auth import hash_password
from broker.core.errors import ClusterUnavailable, InvalidArgument
from broker.local_gateway import CONNECTION_BITS, LocalGateway
from broker.management.context import Context as ManagementContext
from broker.management.server import ManagementServer
from broker.management.session import OwnerNumbers
from broker.metrics import Sources
from broker.metrics_http import MetricsServer
from broker.protocols.amqp.connection import Settings
from broker.protocols.amqp.server import AMQPProtocol
from broker.protocols.http.server import HttpApi
from broker.protocols.mqtt.server import start_listeners as start_mqtt_listeners
from broker.protocols.mqtt.sys_topics import SysTopics
from broker.protocols.timer_wheel import TimerWheel
from broker.replication.cluster import ClusterCommit, ClusterSettings
from broker.replication.wire import ReplyTo
from broker.resources import memory_limit, rss_bytes
from broker.stats import RateSampler, read
from broker.store.damage import StoreUnusable, disk_full
from broker.store.disk import Store
from broker.store.driver import CommitDriver
from broker.store.recovery import recover
from broker.tls import Reloader, TlsFiles, server_context
from broker.tls import serve as serve_tls
from broker.trace_log.recorder import TraceRecorder

log = logging.getLogger(__name__)

#: How long the loop may hold the GIL while the writer thread waits to hand back a write.
GIL_SWITCH_INTERVAL = 0.0005
#: How often a cluster's leader looks for HTTP subscriptions without a pusher, s.
PUSHERS_CHECK = 0.5
#: Seconds between samples of the message counters (the rates of broker.stats).
RATE_INTERVAL = 5.0
CLUSTER_REPAIR = (
    "--repair works on a single node; a cluster member with a damaged store starts again "
    "from the others: move its data dir away and start it, and the leader sends it a snapshot"
)


class Node:
    def __init__(self, config: Config, repair: bool = False) -> None:
        self.config = config
        #: start on a damaged store: keep what is intact, report what is lost (store/damage.py)
        self.repair = repair
        self.gateway = LocalGateway(
            config.node_id,
            tuple(config.loopback_users),
            config.http_timestamp_skew,
            config.http_nonce_cache_size,
            incarnation=int(time.time() * 1000),
            max_connections=config.max_connections or default_max_connections(open_file_limit()),
            max_connections_per_ip=config.max_connections_per_ip,
        )
        self.store: Store | None = None
        self.commit: CommitDriver | ClusterCommit | None = None
        self.servers: list[asyncio.AbstractServer] = []
        self.control: ControlServer | None = None
        self.http: HttpApi | None = None
        self.management: ManagementServer | None = None
        self.started_at = int(time.time() * 1000)
        self._monitor: asyncio.Task[None] | None = None
        self._pushers: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()
        #: every TLS context of the node, reloaded on SIGHUP
        self.tls = Reloader()
        self.started = time.monotonic()
        #: message rates (publish, deliver_get, ack ... per second; broker.stats)
        self.rates = RateSampler(
            lambda: read(self.gateway.traffic, self.gateway.committed), RATE_INTERVAL
        )
        self.metrics: MetricsServer | None = None
        self.sys_topics: SysTopics | None = None

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        sys.setswitchinterval(GIL_SWITCH_INTERVAL)
        members = cfg.cluster_members()
        if members and self.repair:
            raise StoreUnusable(CLUSTER_REPAIR)
        self.store = await self._open_store()
        if members:
            await self._join_cluster(members)
        else:
            recovered = recover(self.store)
            log.info(
                "recovered the snapshot at index %d and replayed %d log entries after it",
                recovered.snapshot_index,
                recovered.entries,
            )
            # What the replay counted happened in an earlier run: counters start at 0.
            recovered.state.reset_counters()
            self.commit = CommitDriver(self.store, recovered, self.gateway.on_effects)
            self.commit.on_store_error = self._store_error_changed
            if cfg.disk_reserve and not self.store.make_reserve(cfg.disk_reserve):
                log.warning("no room for the %d bytes to set aside on disk", cfg.disk_reserve)
            self.gateway.attach(self.commit)
            # What the previous run's connections held is released, and what was not durable
            # dropped, before any client can connect.
            self.commit.submit(c.ReleaseNode(cfg.node_id, before=self.gateway.first_connection))
            self.commit.submit(c.DropTransient())
            if self.repair:
                await self._finish_repair()
        await self._ensure_defaults()
        self.gateway.trace = TraceRecorder(
            os.path.join(cfg.data_dir, "trace"), cfg.trace_retention * 1000
        )
        tls = self._client_tls()
        # MQTT first: the AMQP port opening is what scripts and tests take as "ready".
        self.servers.extend(await start_mqtt_listeners(self.gateway, cfg, tls))
        self.http = HttpApi(self.gateway, cfg, tls)
        if isinstance(self.commit, ClusterCommit):
            self.http.service.pushers.active = self.commit.raft.role == "leader"
        self.gateway.queue_watchers.append(self.http.queue_gained_messages)
        await self.http.start()
        if cfg.management_port:  # 0 turns it off
            self.management = ManagementServer(
                ManagementContext(
                    self.gateway,
                    cfg,
                    self.status,
                    self.listeners,
                    OwnerNumbers(cfg.node_id),
                    started_at=self.started_at,
                    message_stats=self.rates.message_stats,
                )
            )
            await self.management.start()
        settings = Settings(cfg.channel_max, cfg.frame_max, cfg.heartbeat)
        deadlines = TimerWheel()
        loop = asyncio.get_running_loop()
        if tls is not None and cfg.amqps_port:  # 0 turns it off
            amqps = await serve_tls(
                lambda: AMQPProtocol(self.gateway, settings, cfg.handshake_timeout, deadlines),
                tls,
                cfg.host,
                cfg.amqps_port,
                "amqps",
                cfg.handshake_timeout,
            )
            self.servers.append(amqps)
        server = await loop.create_server(
            lambda: AMQPProtocol(self.gateway, settings, cfg.handshake_timeout, deadlines),
            cfg.host,
            cfg.amqp_port,
            reuse_address=True,
            backlog=LISTEN_BACKLOG,
        )
        self.servers.append(server)
        self.control = ControlServer(self, os.path.join(cfg.data_dir, "control.sock"))
        await self.control.start()
        self._monitor = asyncio.create_task(self._watch_resources())
        self.rates.start()
        if cfg.metrics_port:  # 0 turns it off
            self.metrics = MetricsServer(
                self._metric_sources(), cfg.host, cfg.metrics_port, cfg.metrics_per_object
            )
            await self.metrics.start()
        if cfg.mqtt_sys_interval > 0:
            self.sys_topics = SysTopics(self.gateway, cfg.mqtt_vhost, cfg.mqtt_sys_interval)
            if isinstance(self.commit, ClusterCommit):
                self.sys_topics.active = self.commit.raft.role == "leader"
            self.sys_topics.start()
        log.info(
            "broker ready: node %d, amqp on %s:%d, mqtt on %d, mqtt over websocket on %d, "
            "cmq http on %d, management on %d, metrics on %d%s, data in %s",
            cfg.node_id,
            cfg.host,
            cfg.amqp_port,
            cfg.mqtt_port,
            cfg.mqtt_ws_port,
            cfg.http_port,
            cfg.management_port,
            cfg.metrics_port,
            _tls_listeners(cfg) if tls is not None else "",
            cfg.data_dir,
        )

    def _metric_sources(self) -> Sources:
        http = self.http
        return Sources(
            self.config,
            self.gateway,
            lambda: self.commit,
            lambda: http.admission.open if http is not None else 0,
            lambda: http.service.pushers.counts if http is not None else {},
            self.started,
        )

    def _client_tls(self) -> ssl.SSLContext | None:
        """The context of the client TLS listeners, when a certificate and key are set."""
        cfg = self.config
        if not (cfg.tls_cert and cfg.tls_key):
            return None
        files = TlsFiles(cfg.tls_cert, cfg.tls_key, cfg.tls_ca, cfg.tls_verify_peer)
        return self.tls.add(server_context(files), files)

    def reload_tls(self) -> None:
        """SIGHUP: the certificates, keys and CAs are read again; open connections keep
        the certificate they were made with."""
        try:
            self.tls.reload()
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            log.error("TLS certificates not reloaded, the ones in use stay: %s", exc)
        else:
            log.info("TLS certificates reloaded")

    async def _finish_repair(self) -> None:
        """The repaired state goes to disk as a snapshot before any client comes, so the next
        start finds no hole in the log; the mark comes down to where the log now ends."""
        assert isinstance(self.commit, CommitDriver) and self.store is not None
        await self.commit.checkpoint()
        self.store.mark.lower(self.commit.committer.synced_index)
        for line in self.store.damage.report():
            log.warning("repair: %s", line)
        log.warning("repair done: the store is consistent again; later starts need no --repair")

    async def _open_store(self) -> Store:
        """Open the store; on a full disk, give up the space set aside and try again, and
        wait for room if that is not enough (opening LevelDB writes what its log holds)."""
        data_dir = self.config.data_dir
        waiting = False
        while True:
            try:
                return Store(data_dir, repair=self.repair)
            except OSError as exc:
                if not disk_full(exc):
                    raise
                if Store.release_reserve_of(data_dir):
                    log.warning("the disk is full: gave up the space set aside to start")
                    continue
                if not waiting:
                    log.error("no room on the disk to open the store (%s); waiting for room", exc)
                    waiting = True
                await asyncio.sleep(1.0)

    async def _join_cluster(self, members: dict[int, tuple[str, int]]) -> None:
        cfg = self.config
        assert self.store is not None
        own_host, own_port = members[cfg.node_id]
        settings = ClusterSettings(
            cfg.node_id,
            members,
            (cfg.host, cfg.cluster_port or own_port),
            secret=cfg.cluster_secret.encode() if cfg.cluster_secret else None,
            tick_ms=cfg.cluster_tick_ms,
            election_ticks=cfg.cluster_election_ticks,
            node_down_ms=cfg.cluster_node_down_ms,
            retain_entries=cfg.cluster_log_retain,
            **self._cluster_tls(),
        )
        gateway = self.gateway
        commit = ClusterCommit(
            self.store,
            settings,
            gateway.first_connection >> CONNECTION_BITS,
            gateway.on_effects,
            self._leadership_changed,
        )
        commit.on_reply_to = lambda m: bool(
            gateway.deliver_reply(m.routing_key, m.properties, m.body, m.exchange)
        )
        commit.on_lost = gateway.close_all
        gateway.relay_reply = lambda node, key, props, body, exchange: commit.send_reply_to(
            node, ReplyTo(key, props, body, exchange)
        )
        self.commit = commit
        gateway.attach(commit)
        await commit.start()
        log.info(
            "node %d joining its cluster %s; waiting for a leader",
            cfg.node_id,
            ", ".join(f"{n}={h}:{p}" for n, (h, p) in sorted(members.items())),
        )
        # What this node's previous runs held is released before any client connects here.
        release = c.ReleaseNode(cfg.node_id, before=gateway.first_connection)
        while True:
            try:
                await commit.call(release)
                break
            except ClusterUnavailable:
                log.warning("node %d still has no majority of its cluster: waiting", cfg.node_id)

    def _cluster_tls(self) -> dict[str, Any]:
        """TLS contexts for the links between members, from cluster_tls_* or else from the
        client listeners' tls_* (a CA is needed either way): each side presents its
        certificate and verifies the other's against the CA."""
        cfg = self.config
        cert, key, ca = cfg.cluster_tls_cert, cfg.cluster_tls_key, cfg.cluster_tls_ca
        if not (cert and key and ca):
            cert, key, ca = cfg.tls_cert, cfg.tls_key, cfg.tls_ca
        if not (cert and key and ca):
            return {}
        files = TlsFiles(cert, key, ca, verify_peer=True)
        server = self.tls.add(server_context(files), files)
        client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
        client.minimum_version = ssl.TLSVersion.TLSv1_2
        client.load_cert_chain(cert, key)
        client.check_hostname = False
        self.tls.add(client, files)
        return {"ssl_server": server, "ssl_client": client}

    def _leadership_changed(self, leading: bool) -> None:
        if self._pushers is not None:
            self._pushers.cancel()
            self._pushers = None
        if self.http is not None:
            self.http.service.pushers.set_active(leading)
        if self.sys_topics is not None:
            self.sys_topics.set_active(leading)
        if leading:
            self._pushers = asyncio.create_task(self._keep_pushers())

    async def _keep_pushers(self) -> None:
        """On the leader: start the pushers of HTTP subscriptions made through other nodes."""
        while True:
            await asyncio.sleep(PUSHERS_CHECK)
            if self.http is not None:
                self.http.service.pushers.start_all()

    def cluster(self) -> ClusterCommit:
        if not isinstance(self.commit, ClusterCommit):
            raise InvalidArgument("this node is not in a cluster")
        return self.commit

    async def _ensure_defaults(self) -> None:
        assert self.commit is not None
        await self.commit.drain()
        state = self.commit.state
        if state.vhosts or state.users:
            return
        cfg = self.config
        await self.commit.call(c.DeclareVhost("/"))
        password_hash = hash_password(cfg.default_password, os.urandom(4))
        await self.commit.call(c.PutUser(cfg.default_user, password_hash, ("administrator",)))
        await self.commit.call(c.SetPermissions(cfg.default_user, "/", ".*", ".*", ".*"))

    async def serve_forever(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stopped.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload_tls)
        await self._stopped.wait()
        await self.stop()

    def request_stop(self) -> None:
        self._stopped.set()

    async def stop(self) -> None:
        log.info("shutting down")
        if self._monitor is not None:
            self._monitor.cancel()
        if self._pushers is not None:
            self._pushers.cancel()
        await self.rates.stop()
        if self.sys_topics is not None:
            await self.sys_topics.stop()
        if self.metrics is not None:
            await self.metrics.stop()
        for server in self.servers:
            server.close()
        if self.control is not None:
            self.control.close()
        if self.http is not None:
            await self.http.stop()
        if self.management is not None:
            await self.management.stop()
        connections = self.gateway.connections
        for conn in list(connections.values()):
            conn.force_close("broker forced connection closure with reason 'shutdown'")
        await self._wait_connections_closed(2.0)
        if self.commit is not None:
            await self.commit.close()
        if self.gateway.trace is not None:
            await self.gateway.trace.close()
        if self.store is not None:
            self.store.close()
        self.gateway.drops.flush(everything=True)
        log.info("stopped")

    async def _wait_connections_closed(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.gateway.connections and loop.time() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(self.gateway.connections.values()):
            conn.abort()

    def status(self) -> dict[str, int]:
        """Counters for `broker status`: connections, the commit path's, the gateway's."""
        stats = {}
        if isinstance(self.commit, CommitDriver):
            stats = {"commands": self.commit.committer.last_index, **self.commit.stats}
        elif self.commit is not None:
            stats = {"commands": self.commit.applier.applied_index, **self.commit.stats}
        gateway = self.gateway
        return {
            "connections": len(gateway.connections),
            "connections_refused": gateway.admission.refused_total,
            **stats,
            **gateway.metrics,
            **gateway.drops.counts,
        }

    def listeners(self) -> list[tuple[str, int]]:
        """The open client listeners, (protocol as RabbitMQ names it, port)."""
        cfg = self.config
        tls = bool(cfg.tls_cert and cfg.tls_key)
        ports = [
            ("amqp", cfg.amqp_port, True),
            ("amqp/ssl", cfg.amqps_port, tls),
            ("mqtt", cfg.mqtt_port, True),
            ("mqtt/ssl", cfg.mqtts_port, tls),
            ("http/web-mqtt", cfg.mqtt_ws_port, True),
            ("https/web-mqtt", cfg.mqtt_wss_port, tls),
            ("http/cmq", cfg.http_port, True),
            ("https/cmq", cfg.https_port, tls),
            ("http", cfg.management_port, True),
        ]
        if cfg.cluster:
            own = cfg.cluster_members()[cfg.node_id][1]
            ports.append(("clustering", cfg.cluster_port or own, True))
        return [(name, port) for name, port, on in ports if on and port]

    # -- resource alarms -----------------------------------------------------------------

    def set_limits(self, disk_free_limit: int | None, memory_high_watermark: int | None) -> None:
        if disk_free_limit is not None:
            self.config.disk_free_limit = disk_free_limit
        if memory_high_watermark is not None:
            self.config.memory_high_watermark = memory_high_watermark
        self._check_resources()

    def _store_error_changed(self) -> None:
        try:
            self._check_resources()
        except OSError:
            log.exception("resource check failed")

    def _check_resources(self) -> None:
        cfg = self.config
        reason = None
        free = shutil.disk_usage(cfg.data_dir).free
        store_error = None
        if isinstance(self.commit, CommitDriver):
            store_error = self.commit.store_error
            if store_error is None and cfg.disk_reserve:
                store_error = self._keep_reserve(self.commit.store, free)
        elif isinstance(self.commit, ClusterCommit):
            store_error = self.commit.store_error
        if store_error is not None:
            # Whatever the limits say: publishers are blocked while nothing can be stored,
            # or while the node lives on the space it had set aside.
            reason = "low on disk" if disk_full(store_error) else "disk write failed"
        elif free < cfg.disk_free_limit:
            reason = "low on disk"
        elif rss_bytes() > memory_limit(cfg.memory_high_watermark):
            reason = "low on memory"
        if reason != self.gateway.blocked_reason:
            log.warning("resource alarm: %s", reason or "cleared")
            self.gateway.set_blocked(reason)

    def _keep_reserve(self, store: Store, free: int) -> OSError | None:
        """Set the reserve aside again once the disk has room for it (it was given up when
        the disk filled); an error while it is still missing."""
        reserve = self.config.disk_reserve
        if store.has_reserve(reserve):
            return None
        if free >= self.config.disk_free_limit + reserve and store.make_reserve(reserve):
            log.info("the disk has room again: %d bytes set aside", reserve)
            return None
        return OSError(errno.ENOSPC, "No space left: the space set aside is in use")

    async def _watch_resources(self) -> None:
        while True:
            try:
                self._check_resources()
            except OSError:
                log.exception("resource check failed")
            self.gateway.drops.flush()
            await asyncio.sleep(1.0)


def _tls_listeners(cfg: Config) -> str:
    ports = (
        ("amqps", cfg.amqps_port),
        ("mqtts", cfg.mqtts_port),
        ("mqtt over secure websocket", cfg.mqtt_wss_port),
        ("https", cfg.https_port),
    )
    listeners = ", ".join(f"{name} on {port}" for name, port in ports if port)
    verify = ", client certificates required" if cfg.tls_verify_peer else ""
    return f"; tls: {listeners or 'no listener'}{verify}"
