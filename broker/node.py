"""A running broker node: store, state machine, commit path, listeners and admin socket.

The node is the gateway the protocol adapters call: it authenticates users, checks
permissions, submits commands to the commit path and routes the resulting effects
(deliveries, cancellations) back to the connections that own them.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import logging
import os
import shutil
import signal
from collections.abc import Callable
from typing import Any, Protocol

from broker.config import Config
from broker.control import ControlServer
from broker.core import commands as c
from broker.core.auth import check_password, hash_password, permits
from broker.core.errors import AccessRefused, NotAllowed
from broker.core.model import (
    ConsumerCancelled,
    Deliver,
    Effect,
    MessagesAvailable,
    Overflowed,
    User,
)
from broker.core.state import StateMachine
from broker.protocols.amqp.connection import Settings
from broker.protocols.amqp.server import AMQPProtocol
from broker.protocols.http.server import HttpApi
from broker.protocols.mqtt.server import start_listeners as start_mqtt_listeners
from broker.store.commit import Clock, CommitPath, Done, Store

log = logging.getLogger(__name__)

REPLY_TO_PREFIX = "amq.rabbitmq.reply-to."


class ClientConnection(Protocol):
    """What the node asks of a connection, whatever its protocol."""

    def deliver(self, effect: Deliver) -> None: ...

    def consumer_cancelled(self, effect: ConsumerCancelled) -> None: ...

    def set_blocked(self, reason: str | None) -> None: ...

    def force_close(self, reason: str) -> None:
        """Close the connection because the broker must (AMQP: 320 CONNECTION_FORCED)."""

    def session(self) -> tuple[str | None, str | None]:
        """(user name, vhost) once authenticated, for closing sessions of deleted ones."""

    def abort(self) -> None: ...


class Node:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.state = StateMachine()
        self.store: Store | None = None
        self.commit: CommitPath | None = None
        #: every client connection of every protocol, by its node-wide id
        self.connections: dict[int, ClientConnection] = {}
        self._connection_ids = itertools.count(1)
        self.servers: list[asyncio.AbstractServer] = []
        self.control: ControlServer | None = None
        self.http: HttpApi | None = None
        #: called with (vhost, queue) when a queue gains visible messages (pull consumers)
        self.queue_watchers: list[Callable[[str, str], None]] = []
        self._reply_to: dict[str, tuple[Any, int, str]] = {}
        self._blocked: str | None = None
        self._monitor: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()
        #: counters shown by `broker status`, next to the commit path's
        self.metrics: dict[str, int] = {"overflow_dropped": 0, "overflow_refused": 0}
        #: when each queue's overflow was last logged, so a flood logs once a second
        self._overflow_logged: dict[tuple[str, str], float] = {}

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        os.makedirs(cfg.data_dir, exist_ok=True)
        self.store = Store(os.path.join(cfg.data_dir, "leveldb"))
        clock = Clock()
        records = self.store.load(self.state, clock.now())
        log.info("recovered %d records from %s", records, cfg.data_dir)
        self.commit = CommitPath(self.state, self.store, self._on_effects, clock)
        await self._ensure_defaults()
        # MQTT first: the AMQP port opening is what scripts and tests take as "ready".
        self.servers.extend(await start_mqtt_listeners(self))
        self.http = HttpApi(self)
        self.queue_watchers.append(self.http.queue_gained_messages)
        await self.http.start()
        settings = Settings(cfg.channel_max, cfg.frame_max, cfg.heartbeat)
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: AMQPProtocol(self, settings, cfg.handshake_timeout),
            cfg.host,
            cfg.amqp_port,
            reuse_address=True,
            backlog=1024,
        )
        self.servers.append(server)
        self.control = ControlServer(self, os.path.join(cfg.data_dir, "control.sock"))
        await self.control.start()
        self._monitor = asyncio.create_task(self._watch_resources())
        log.info(
            "broker ready: amqp on %s:%d, mqtt on %d, mqtt over websocket on %d, "
            "cmq http on %d%s, data in %s",
            cfg.host,
            cfg.amqp_port,
            cfg.mqtt_port,
            cfg.mqtt_ws_port,
            cfg.http_port,
            f" and https on {cfg.https_port}" if cfg.tls_cert and cfg.tls_key else "",
            cfg.data_dir,
        )

    async def _ensure_defaults(self) -> None:
        assert self.commit is not None
        if self.state.vhosts or self.state.users:
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
        await self._stopped.wait()
        await self.stop()

    def request_stop(self) -> None:
        self._stopped.set()

    async def stop(self) -> None:
        log.info("shutting down")
        if self._monitor is not None:
            self._monitor.cancel()
        for server in self.servers:
            server.close()
        if self.control is not None:
            self.control.close()
        if self.http is not None:
            await self.http.stop()
        for conn in list(self.connections.values()):
            conn.force_close("broker forced connection closure with reason 'shutdown'")
        await self._wait_connections_closed(2.0)
        if self.commit is not None:
            await self.commit.drain()
            self.commit.close()
        if self.store is not None:
            self.store.close()
        log.info("stopped")

    async def _wait_connections_closed(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.connections and loop.time() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(self.connections.values()):
            conn.abort()

    # -- connections ---------------------------------------------------------------------

    def connection_opened(self, conn: ClientConnection) -> int:
        """Register a connection; returns its node-wide id (the first part of its owners)."""
        conn_id = next(self._connection_ids)
        self.connections[conn_id] = conn
        return conn_id

    def connection_closed(self, conn_id: int) -> None:
        self.connections.pop(conn_id, None)

    def close_sessions(
        self, reason: str, vhost: str | None = None, user: str | None = None
    ) -> None:
        """Force-close connections of a deleted vhost or user, as RabbitMQ does."""
        for conn in list(self.connections.values()):
            conn_user, conn_vhost = conn.session()
            if (vhost is not None and conn_vhost == vhost) or (
                user is not None and conn_user == user
            ):
                conn.force_close(reason)

    def _on_effects(self, effects: list[Effect]) -> None:
        for effect in effects:
            if isinstance(effect, Deliver):
                conn = self.connections.get(effect.owner[0])
                if conn is not None:
                    conn.deliver(effect)
            elif isinstance(effect, ConsumerCancelled):
                conn = self.connections.get(effect.owner[0])
                if conn is not None:
                    conn.consumer_cancelled(effect)
            elif isinstance(effect, MessagesAvailable):
                for watcher in self.queue_watchers:
                    watcher(effect.vhost, effect.queue)
            elif isinstance(effect, Overflowed):
                self._count_overflow(effect)

    def _count_overflow(self, effect: Overflowed) -> None:
        dropped = effect.policy == "drop-head"
        counter = "overflow_dropped" if dropped else "overflow_refused"
        self.metrics[counter] += 1
        key = (effect.vhost, effect.queue)
        now = asyncio.get_running_loop().time()
        if now - self._overflow_logged.get(key, -1.0) >= 1.0:
            self._overflow_logged[key] = now
            log.warning(
                "queue '%s' in vhost '%s' is full: %s (%s so far: %d)",
                effect.queue,
                effect.vhost,
                "dropped its oldest message" if dropped else "refused a message",
                counter,
                self.metrics[counter],
            )

    # -- the gateway the adapters call ---------------------------------------------------

    def submit(self, command: c.Command, done: Done | None = None) -> None:
        assert self.commit is not None
        self.commit.submit(command, done)

    def defer(self, callback: Callable[[], None]) -> None:
        assert self.commit is not None
        self.commit.defer(callback)

    def authenticate(self, username: str, password: str, loopback: bool) -> User:
        user = self.state.users.get(username)
        if user is None or not check_password(password, user.password_hash):
            raise AccessRefused(f"invalid credentials for user '{username}'")
        if username in self.config.loopback_users and not loopback:
            raise AccessRefused(f"user '{username}' can only connect via localhost")
        return user

    def trusted_user(self, username: str, loopback: bool) -> User:
        """A user admitted without a password (anonymous access); the loopback rule holds."""
        user = self.state.users.get(username)
        if user is None:
            raise AccessRefused(f"no user '{username}'")
        if username in self.config.loopback_users and not loopback:
            raise AccessRefused(f"user '{username}' can only connect via localhost")
        return user

    def records(self, vhost: str, group: tuple[str, ...]) -> dict[str, Any]:
        """An adapter's durable records of one group, as of the last submitted command."""
        return self.state.records_of(vhost, group)

    def vhost_access(self, user: User, vhost: str) -> None:
        if vhost not in self.state.vhosts:
            raise NotAllowed(f"vhost {vhost} not found")
        if (user.name, vhost) not in self.state.permissions:
            raise AccessRefused(f"access to vhost '{vhost}' refused for user '{user.name}'")

    def check_permission(self, user: User, vhost: str, kind: str, resource: str, name: str) -> None:
        permission = self.state.permissions.get((user.name, vhost))
        if not permits(permission, kind, name):
            raise AccessRefused(
                f"{kind} access to {resource} '{name}' in vhost '{vhost}' refused for user "
                f"'{user.name}'"
            )

    def new_name(self, prefix: str) -> str:
        return prefix + base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")

    def register_reply_to(self, connection: Any, channel: int, consumer_tag: str) -> str:
        key = self.new_name(REPLY_TO_PREFIX)
        self._reply_to[key] = (connection, channel, consumer_tag)
        return key

    def unregister_reply_to(self, key: str) -> None:
        self._reply_to.pop(key, None)

    def deliver_reply(
        self, routing_key: str, properties: dict[str, Any], body: bytes, exchange: str
    ) -> bool:
        target = self._reply_to.get(routing_key)
        if target is None:
            return False
        connection, number, tag = target
        ch = connection.channels.get(number)
        if ch is None:
            return False
        ch.deliver_reply(tag, exchange, routing_key, properties, body)
        return True

    @property
    def blocked_reason(self) -> str | None:
        return self._blocked

    # -- resource alarms -----------------------------------------------------------------

    def set_limits(self, disk_free_limit: int | None, memory_high_watermark: int | None) -> None:
        if disk_free_limit is not None:
            self.config.disk_free_limit = disk_free_limit
        if memory_high_watermark is not None:
            self.config.memory_high_watermark = memory_high_watermark
        self._check_resources()

    def _check_resources(self) -> None:
        cfg = self.config
        reason = None
        free = shutil.disk_usage(cfg.data_dir).free
        if free < cfg.disk_free_limit:
            reason = "low on disk"
        elif _rss_bytes() > (cfg.memory_high_watermark or int(0.4 * _total_memory())):
            reason = "low on memory"
        if reason != self._blocked:
            log.warning("resource alarm: %s", reason or "cleared")
            self._blocked = reason
            for conn in list(self.connections.values()):
                conn.set_blocked(reason)

    async def _watch_resources(self) -> None:
        while True:
            try:
                self._check_resources()
            except OSError:
                log.exception("resource check failed")
            await asyncio.sleep(1.0)


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def _total_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (OSError, ValueError):
        return 1 << 34
