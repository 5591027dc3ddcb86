"""The one interface between the protocol adapters and the node.

Adapters submit core commands and get their replies once the commands are committed and
applied; they read the committed state, never a speculative one; they never see the store,
the commit path or the node itself. What is not core state but must work on whichever node
leads (direct reply-to routing, the request-signing replay guard) goes through here as well.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any, Protocol

from broker.core import commands as c
from broker.core.errors import BrokerError
from broker.core.model import ConsumerCancelled, Deliver, Dropped, User
from broker.core.state import StateMachine

if TYPE_CHECKING:
    from broker.trace_log.recorder import TraceRecorder

#: Called once a command is applied (and durable when it was submitted as such).
Done = Callable[[Any, BrokerError | None], None]


class Traffic:
    """Messages one protocol's clients exchanged with this node, counted by its adapter
    where it does the work: node-wide and per protocol, as RabbitMQ's global counters are
    (queue counters, in the core, say what each queue did)."""

    __slots__ = ("connections", "received", "delivered", "packets_received", "packets_sent")

    def __init__(self) -> None:
        #: connections opened since the node started
        self.connections = 0
        #: messages clients published
        self.received = 0
        #: messages sent to clients (pushed, got, received by pull)
        self.delivered = 0
        #: protocol packets of any kind, where the protocol counts them (MQTT's $SYS does)
        self.packets_received = 0
        self.packets_sent = 0


#: the protocols of `Gateway.traffic`, named as RabbitMQ's metrics label them
PROTOCOLS = ("amqp091", "mqtt", "http")


class ClientConnection(Protocol):
    """What the node asks of a client connection, whatever its protocol."""

    def deliver(self, effect: Deliver) -> None: ...

    def consumer_cancelled(self, effect: ConsumerCancelled) -> None: ...

    def deliver_reply(
        self,
        channel: int,
        consumer_tag: str,
        exchange: str,
        routing_key: str,
        properties: dict[str, Any],
        body: bytes,
    ) -> bool:
        """A direct reply-to message for a reply consumer; False if its channel is gone."""

    def set_blocked(self, reason: str | None) -> None: ...

    def force_close(self, reason: str) -> None:
        """Close the connection because the broker must (AMQP: 320 CONNECTION_FORCED)."""

    def session(self) -> tuple[str | None, str | None]:
        """(user name, vhost) once authenticated, for closing sessions of deleted ones."""

    def abort(self) -> None: ...

    def channel_count(self) -> int:
        """Channels open on the connection (AMQP's; 0 for protocols without channels)."""

    def info(self) -> dict[str, Any]:
        """What operators are shown of the connection (management API, CLI): `protocol`,
        `user` and `vhost` (None before login), `peer_host`, `peer_port`, `host`, `port`,
        `ssl`, `connected_at` (ms since the epoch), `channels`, plus the protocol's own:
        AMQP's `client_properties`, `frame_max`, `channel_max`, `heartbeat` and
        `channel_details` (per channel: number, prefetch, confirm and tx modes, unacked
        deliveries, consumers); MQTT's `client_id`, `keepalive`, `websocket`."""


class Gateway(Protocol):
    #: this node's id: the first part of every connection id and owner it hands out
    node_id: int
    #: the client connections of every protocol on this node, to read (operators' views)
    connections: dict[c.ConnectionId, ClientConnection]
    #: protocol (PROTOCOLS) -> what its clients exchanged with this node
    traffic: dict[str, Traffic]
    #: where the steps of traced messages are recorded and queried (once the node is up)
    trace: TraceRecorder | None

    # -- connections ---------------------------------------------------------------------

    def connection_opened(self, conn: ClientConnection) -> c.ConnectionId:
        """Register a connection; returns its id (owners are (*id, session number))."""

    def admit(self, connection: Hashable, peer: Any, abort: Callable[[], None]) -> str | None:
        """Count a new connection (a connection id, or any key for connections the gateway
        does not hold) from `peer` (its socket address) against the node's and its source
        address's limits; the reason it is refused, for its protocol to answer with before
        closing. Refused connections past a bound are dropped with their `abort`, oldest
        first."""

    def release(self, connection: Hashable) -> None:
        """An admitted connection the gateway does not hold has closed (connection_closed
        releases the others)."""

    def connection_closed(self, connection: c.ConnectionId) -> None: ...

    def close_sessions(
        self, reason: str, vhost: str | None = None, user: str | None = None
    ) -> None:
        """Force-close this node's connections of a deleted vhost or user."""

    # -- commands and state --------------------------------------------------------------

    def submit(self, command: c.Command, done: Done | None = None, durable: bool = True) -> None:
        """Propose `command`; `done(reply, error)` runs once it is applied, and also on disk
        unless `durable` is False (for replies that promise nothing, such as QoS 0)."""

    def call(self, command: c.Command) -> asyncio.Future[Any]:
        """Submit and get a future of the reply (raises the BrokerError)."""

    def after(self, callback: Callable[[], None]) -> None:
        """Run `callback` once everything submitted before it is applied and on disk."""

    def wait_for_room(self, queues: list[tuple[str, str]], callback: Callable[[], None]) -> None:
        """Run `callback` once none of `queues` (vhost, queue) is congested any more: a
        publish's reply names the congested queues it fed (PublishResult.congested), and its
        publisher holds back until then (broker.flow)."""

    def read_done(self) -> None:
        """A connection has handled what it read (the node may write and apply now)."""

    @property
    def committed(self) -> StateMachine:
        """The committed state, to read only (change it with commands)."""

    def now_ms(self) -> int:
        """The node's clock, ms since the epoch (request timestamps, not core state)."""

    # -- access --------------------------------------------------------------------------

    def authenticate(self, username: str, password: str, loopback: bool, source: str = "") -> User:
        """Check credentials of a client at address `source`; raises AccessRefused (the
        refusal is logged and counted against `source`)."""

    def refusal_delay(self, source: str) -> float:
        """Seconds to hold the refusal of a login from `source` (asked once refused): the more
        the address failed lately, the longer (broker.login_guard)."""

    def trusted_user(self, username: str, loopback: bool, source: str = "") -> User:
        """A user admitted without a password (anonymous access); the loopback rule holds."""

    def vhost_access(self, user: User, vhost: str) -> None:
        """Raises NotAllowed (no such vhost), AccessRefused (no permission) or ConnectionLimit
        (the vhost's or the user's max-connections are open on this node)."""

    def check_permission(self, user: User, vhost: str, kind: str, resource: str, name: str) -> None:
        """Raises AccessRefused unless `user` has `kind` permission on the resource."""

    def check_channel_limit(self, user: User) -> None:
        """Raises ConnectionLimit when the user's max-channels are open (on this node)."""

    def first_use(self, secret_id: str, timestamp: int, nonce: int) -> bool:
        """True the first time a signed request's (key, Timestamp, Nonce) is seen."""

    @property
    def blocked_reason(self) -> str | None:
        """Why publishers are blocked (memory or disk alarm), or None."""

    def dropped(self, effect: Dropped) -> None:
        """Count and log messages an adapter gave up (a push past its last retry), as the
        node does those the core drops."""

    def new_name(self, prefix: str) -> str:
        """A unique broker-generated name (server-named queues, consumer tags, client ids)."""

    def note_publisher(self, command: c.Publish, who: Callable[[], dict[str, Any]]) -> None:
        """Say who sends `command` (called before submitting it), for message trace: when
        its vhost is traced, the trace of the publish names `who()`."""

    # -- direct reply-to -----------------------------------------------------------------

    def register_reply_to(self, connection: c.ConnectionId, channel: int, consumer_tag: str) -> str:
        """Register a direct reply-to consumer; returns its routing key."""

    def unregister_reply_to(self, key: str) -> None: ...

    def deliver_reply(
        self, routing_key: str, properties: dict[str, Any], body: bytes, exchange: str
    ) -> bool:
        """Deliver a direct reply-to message; False if the requester is gone."""
