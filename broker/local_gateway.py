"""The gateway as one node implements it: connections, effects, access checks, reply-to.

It sits on a commit path (the driver in production, an in-memory one in unit tests) and
routes what the committed commands produce back to the connections of this node: deliveries
and cancellations to their owners, wake-ups to pull consumers, connection closes.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import logging
import os
import time
from collections.abc import Callable, Hashable
from typing import Any, NoReturn, Protocol

from broker.admission import Admission
from broker.core import commands as c
from broker.core.auth import check_password, permits
from broker.core.errors import AccessRefused, ConnectionLimit, NotAllowed
from broker.core.model import (
    TOO_LARGE,
    CloseConnection,
    ConsumerCancelled,
    Deliver,
    Dropped,
    Effect,
    MessagesAvailable,
    Overflowed,
    Traced,
    User,
)
from broker.core.state import StateMachine
from broker.drops import DropLedger
from broker.flow import RoomWaiters
from broker.gateway import PROTOCOLS, ClientConnection, Done, Traffic
from broker.login_guard import LoginGuard
from broker.protocols.http.auth import ReplayGuard
from broker.trace_log.recorder import TraceRecorder

log = logging.getLogger(__name__)

REPLY_TO_PREFIX = "amq.rabbitmq.reply-to."


#: Connection numbers of one run of a node: its incarnation (ms since the epoch at start)
#: above these bits.
CONNECTION_BITS = 20

#: how often publishers waiting for congested queues are checked when nothing is applied
#: (the check also runs after every applied batch)
ROOM_CHECK_INTERVAL = 0.1


class CommitPath(Protocol):
    """What the gateway needs from a commit path."""

    def submit(
        self, command: c.Command, done: Done | None = None, durable: bool = True
    ) -> None: ...

    def call(self, command: c.Command) -> asyncio.Future[Any]: ...

    def after(self, callback: Callable[[], None]) -> None: ...

    def read_done(self) -> None: ...

    @property
    def state(self) -> StateMachine: ...

    def now_ms(self) -> int: ...


class LocalGateway:
    def __init__(
        self,
        node_id: int,
        loopback_users: tuple[str, ...] = (),
        timestamp_skew: int = 300,
        nonce_cache_size: int = 1_000_000,
        incarnation: int = 0,
        max_connections: int = 0,
        max_connections_per_ip: int = 0,
    ) -> None:
        self.node_id = node_id
        #: this run's connections are numbered from here up: ReleaseNode(node, before=this)
        #: releases what earlier runs held and nothing of this one
        self.first_connection = incarnation << CONNECTION_BITS
        self.loopback_users = loopback_users
        self.commit: CommitPath | None = None
        #: every client connection of every protocol on this node
        self.connections: dict[c.ConnectionId, ClientConnection] = {}
        self._numbers = itertools.count(self.first_connection + 1)
        #: called with (vhost, queue) when a queue gains visible messages (pull consumers)
        self.queue_watchers: list[Callable[[str, str], None]] = []
        self._reply_to: dict[str, tuple[c.ConnectionId, int, str]] = {}
        #: in a cluster: hands a direct reply-to answer to the node its requester is on
        self.relay_reply: Callable[[int, str, dict[str, Any], bytes, str], bool] | None = None
        self._nonces = ReplayGuard(timestamp_skew, nonce_cache_size)
        self._blocked: str | None = None
        self.traffic = {protocol: Traffic() for protocol in PROTOCOLS}
        #: counters shown by `broker status`, next to the commit path's
        self.metrics: dict[str, int] = {"overflow_refused": 0, "oversized_refused": 0}
        #: when each queue's overflow was last logged, so a flood logs once a second
        self._overflow_logged: dict[tuple[str, str], float] = {}
        #: messages dropped, by reason (also shown by `broker status`)
        self.drops = DropLedger(time.monotonic)
        self.admission = Admission(max_connections, max_connections_per_ip, time.monotonic)
        #: refused logins, logged and slowed per client address
        self.logins = LoginGuard(time.monotonic)
        #: publishers waiting for congested queues to drain (credit flow)
        self._room = RoomWaiters()
        self._room_timer: asyncio.TimerHandle | None = None
        #: where traced steps go (the node sets it once its data dir is open)
        self.trace: TraceRecorder | None = None

    def attach(self, commit: CommitPath) -> None:
        self.commit = commit
        # The hottest call goes straight to the commit path.
        self.submit = commit.submit  # type: ignore[method-assign]

    # -- connections ---------------------------------------------------------------------

    def connection_opened(self, conn: ClientConnection) -> c.ConnectionId:
        connection = (self.node_id, next(self._numbers))
        self.connections[connection] = conn
        return connection

    def admit(self, connection: Hashable, peer: Any, abort: Callable[[], None]) -> str | None:
        return self.admission.admit(connection, str(peer[0]) if peer else "", abort)

    def release(self, connection: Hashable) -> None:
        self.admission.released(connection)

    def connection_closed(self, connection: c.ConnectionId) -> None:
        self.connections.pop(connection, None)
        self.admission.released(connection)

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

    def close_all(self, reason: str) -> None:
        for conn in list(self.connections.values()):
            conn.force_close(reason)

    def set_blocked(self, reason: str | None) -> None:
        self._blocked = reason
        for conn in list(self.connections.values()):
            conn.set_blocked(reason)

    @property
    def blocked_reason(self) -> str | None:
        return self._blocked

    def dropped(self, effect: Dropped) -> None:
        self.drops.note(effect)

    # -- effects -------------------------------------------------------------------------

    def on_effects(self, effects: list[Effect]) -> None:
        node = self.node_id
        connections = self.connections
        for effect in effects:
            kind = type(effect)
            if kind is Deliver:
                owner = effect.owner  # type: ignore[union-attr]
                if owner[0] == node:
                    conn = connections.get((node, owner[1]))
                    if conn is not None:
                        conn.deliver(effect)  # type: ignore[arg-type]
            elif kind is MessagesAvailable:
                for watcher in self.queue_watchers:
                    watcher(effect.vhost, effect.queue)  # type: ignore[union-attr]
            elif kind is ConsumerCancelled:
                owner = effect.owner  # type: ignore[union-attr]
                conn = connections.get((owner[0], owner[1]))
                if conn is not None:
                    conn.consumer_cancelled(effect)  # type: ignore[arg-type]
            elif kind is CloseConnection:
                conn = connections.get(effect.connection)  # type: ignore[union-attr]
                if conn is not None:
                    conn.force_close(effect.reason)  # type: ignore[union-attr]
            elif kind is Dropped:
                self.drops.note(effect)  # type: ignore[arg-type]
            elif kind is Overflowed:
                self._count_overflow(effect)  # type: ignore[arg-type]
            elif kind is Traced and self.trace is not None:
                self.trace.record(effect)  # type: ignore[arg-type]
        if self._room:
            self._room.check(self.committed.has_room)

    def note_publisher(self, command: c.Publish, who: Callable[[], dict[str, Any]]) -> None:
        trace = self.trace
        if trace is not None and command.vhost in self.committed.tracing.traced_vhosts:
            trace.note_publisher(command, who())

    # -- credit flow ---------------------------------------------------------------------

    def wait_for_room(self, queues: list[tuple[str, str]], callback: Callable[[], None]) -> None:
        self._room.wait(queues, callback, self.committed.has_room)
        self._watch_room()

    def _watch_room(self) -> None:
        """Queues also drain without effects (a consumer leaves, a purge): look now and then."""
        if self._room and self._room_timer is None:
            loop = asyncio.get_running_loop()
            self._room_timer = loop.call_later(ROOM_CHECK_INTERVAL, self._room_tick)

    def _room_tick(self) -> None:
        self._room_timer = None
        self._room.check(self.committed.has_room)
        self._watch_room()

    def _count_overflow(self, effect: Overflowed) -> None:
        if effect.reason == TOO_LARGE:
            counter, what = "oversized_refused", "refused a message over its x-max-message-size"
        else:
            counter, what = "overflow_refused", "is full: refused a message"
        self.metrics[counter] += 1
        key = (effect.vhost, effect.queue)
        now = asyncio.get_running_loop().time()
        if now - self._overflow_logged.get(key, -1.0) >= 1.0:
            self._overflow_logged[key] = now
            log.warning(
                "queue '%s' in vhost '%s' %s (%s so far: %d)",
                effect.queue,
                effect.vhost,
                what,
                counter,
                self.metrics[counter],
            )

    # -- commands and state --------------------------------------------------------------

    def _commit(self) -> CommitPath:
        assert self.commit is not None, "the gateway has no commit path yet"
        return self.commit

    def submit(self, command: c.Command, done: Done | None = None, durable: bool = True) -> None:
        self._commit().submit(command, done, durable)

    def call(self, command: c.Command) -> asyncio.Future[Any]:
        return self._commit().call(command)

    def after(self, callback: Callable[[], None]) -> None:
        self._commit().after(callback)

    def read_done(self) -> None:
        self._commit().read_done()

    @property
    def committed(self) -> StateMachine:
        return self._commit().state

    def now_ms(self) -> int:
        return self._commit().now_ms()

    # -- access --------------------------------------------------------------------------

    def authenticate(self, username: str, password: str, loopback: bool, source: str = "") -> User:
        user = self.committed.users.get(username)
        if user is None or not check_password(password, user.password_hash):
            self._refuse(username, source, "invalid credentials")
        self._check_loopback(username, loopback, source)
        return user

    def trusted_user(self, username: str, loopback: bool, source: str = "") -> User:
        user = self.committed.users.get(username)
        if user is None:
            self._refuse(username, source, "no such user")
        self._check_loopback(username, loopback, source)
        return user

    def _check_loopback(self, username: str, loopback: bool, source: str) -> None:
        if username in self.loopback_users and not loopback:
            self._refuse(username, source, "the user can only connect via localhost")

    def _refuse(self, username: str, source: str, reason: str) -> NoReturn:
        self.logins.refused(username, source, reason)
        raise AccessRefused(f"login refused for user '{username}': {reason}")

    def refusal_delay(self, source: str) -> float:
        return self.logins.delay(source)

    def vhost_access(self, user: User, vhost: str) -> None:
        state = self.committed
        if vhost not in state.vhosts:
            raise NotAllowed(f"vhost {vhost} not found")
        if (user.name, vhost) not in state.permissions:
            raise AccessRefused(f"access to vhost '{vhost}' refused for user '{user.name}'")
        self._check_session_limits(user.name, vhost)

    def _check_session_limits(self, user: str, vhost: str) -> None:
        """The vhost's and the user's max-connections, over this node's open sessions."""
        state = self.committed
        vhost_max = state.limit("vhost", vhost, "max-connections")
        user_max = state.limit("user", user, "max-connections")
        if vhost_max is None and user_max is None:
            return
        sessions = [conn.session() for conn in self.connections.values()]
        reason = None
        if vhost_max is not None and sum(1 for _, v in sessions if v == vhost) >= vhost_max:
            reason = (
                f"access to vhost '{vhost}' refused for user '{user}': "
                f"connection limit ({vhost_max}) is reached"
            )
        elif user_max is not None and (
            sum(1 for u, v in sessions if u == user and v is not None) >= user_max
        ):
            reason = (
                f"Connection refused for user '{user}': user connection limit ({user_max}) "
                "is reached"
            )
        if reason is not None:
            self.admission.note_refusal("", reason)
            raise ConnectionLimit(reason)

    def check_channel_limit(self, user: User) -> None:
        limit = self.committed.limit("user", user.name, "max-channels")
        if limit is None:
            return
        opened = sum(
            conn.channel_count()
            for conn in self.connections.values()
            if conn.session()[0] == user.name
        )
        if opened >= limit:
            raise ConnectionLimit(
                f"number of channels opened for user '{user.name}' has reached the maximum "
                f"allowed user limit of ({limit})"
            )

    def check_permission(self, user: User, vhost: str, kind: str, resource: str, name: str) -> None:
        permission = self.committed.permissions.get((user.name, vhost))
        if not permits(permission, kind, name):
            raise AccessRefused(
                f"{kind} access to {resource} '{name}' in vhost '{vhost}' refused for user "
                f"'{user.name}'"
            )

    def first_use(self, secret_id: str, timestamp: int, nonce: int) -> bool:
        return self._nonces.first_use(secret_id, timestamp, nonce, self.now_ms() // 1000)

    def new_name(self, prefix: str) -> str:
        return prefix + base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")

    # -- direct reply-to -----------------------------------------------------------------

    def register_reply_to(self, connection: c.ConnectionId, channel: int, consumer_tag: str) -> str:
        key = self.new_name(f"{REPLY_TO_PREFIX}{self.node_id}.")
        self._reply_to[key] = (connection, channel, consumer_tag)
        return key

    def unregister_reply_to(self, key: str) -> None:
        self._reply_to.pop(key, None)

    def deliver_reply(
        self, routing_key: str, properties: dict[str, Any], body: bytes, exchange: str
    ) -> bool:
        target = self._reply_to.get(routing_key)
        if target is None:
            node = _reply_to_node(routing_key)
            if node is not None and node != self.node_id and self.relay_reply is not None:
                return self.relay_reply(node, routing_key, properties, body, exchange)
            return False
        connection, channel, tag = target
        conn = self.connections.get(connection)
        if conn is None:
            return False
        return conn.deliver_reply(channel, tag, exchange, routing_key, properties, body)


def _reply_to_node(routing_key: str) -> int | None:
    """The node a direct reply-to key was handed out by (see register_reply_to)."""
    node, _, _ = routing_key[len(REPLY_TO_PREFIX) :].partition(".")
    return int(node) if routing_key.startswith(REPLY_TO_PREFIX) and node.isdigit() else None
