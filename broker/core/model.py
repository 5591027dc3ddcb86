"""Plain data held by the state machine: messages, exchanges, bindings, users, effects."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from broker.core.commands import ConnectionId, Owner, Will
from broker.core.policy import Policy

# Message states inside a queue.
READY = 0  # waiting for a consumer
UNACKED = 1  # pushed to a consumer, awaiting settlement
HIDDEN = 2  # pulled with a visibility timeout, or delayed: invisible until `visible_at`
RETAINED = 3  # acknowledged but kept for rewind until `acked_at + rewind window`


@dataclass(slots=True)
class Message:
    """One message as stored in one queue."""

    seq: int
    exchange: str
    routing_key: str
    properties: dict[str, Any]
    body: bytes
    persistent: bool
    enqueued_at: int
    expires_at: int | None = None
    priority: int = 0
    delivery_count: int = 0
    returns: int = 0
    visible_at: int = 0
    handle: int = 0
    first_delivered_at: int = 0
    acked_at: int = 0
    state: int = READY
    #: order among never-delivered ready messages (see MessageQueue.next_position)
    position: int = 0
    #: (log index, position in it) of the publish that carried this body, when it came
    #: straight from a log entry: the stored message then refers to the entry, not a copy
    source: tuple[int, int] | None = None
    #: the store has heard of it (a change named it): only then does forgetting it need one
    recorded: bool = False

    @property
    def size(self) -> int:
        return len(self.body)


@dataclass(slots=True)
class Exchange:
    vhost: str
    name: str
    type: str
    durable: bool = True
    auto_delete: bool = False
    internal: bool = False
    arguments: dict[str, Any] = field(default_factory=dict)
    #: the policy that applies to it (derived: set by the state machine, also on restore)
    policy: Policy | None = None


@dataclass(slots=True, frozen=True)
class BindingKey:
    """Identity of a binding, as AMQP defines it: source, destination, key and arguments."""

    source: str
    destination: str
    to_queue: bool
    routing_key: str
    arguments: tuple[tuple[str, Any], ...]


@dataclass(slots=True)
class User:
    name: str
    password_hash: str
    tags: tuple[str, ...] = ()


@dataclass(slots=True)
class AccessKey:
    """A request-signing key bound to one vhost (see AddAccessKey)."""

    secret_id: str
    secret_key: str
    vhost: str
    created_at: int = 0


@dataclass(slots=True)
class Permission:
    configure: str
    write: str
    read: str


@dataclass(slots=True)
class SharedLimit:
    """A prefetch limit shared by all consumers of one owner (AMQP global qos)."""

    limit: int
    in_flight: int = 0


@dataclass(slots=True)
class Consumer:
    queue: str
    vhost: str
    owner: Owner
    tag: str
    no_ack: bool
    exclusive: bool
    prefetch: int
    priority: int
    in_flight: int = 0
    active: bool = True
    shared: SharedLimit | None = None
    #: consume order across the node's state: a queue serves its consumers in this order
    seq: int = 0
    #: see commands.Consume.settle_transient
    settle_transient: bool = False

    def has_capacity(self) -> bool:
        if not self.active or (self.prefetch and self.in_flight >= self.prefetch):
            return False
        shared = self.shared
        return shared is None or shared.in_flight < shared.limit


@dataclass(slots=True)
class PublishResult:
    routed: bool
    #: a target queue refused the message (overflow reject-publish)
    rejected: bool = False
    #: (vhost, queue) of target queues congested with ready messages (MessageQueue.flow_limit)
    congested: list[tuple[str, str]] | None = None


@dataclass(slots=True)
class GetResult:
    message: Message | None
    seq: int = 0
    redelivered: bool = False
    message_count: int = 0


@dataclass(slots=True)
class Received:
    """One message handed out by a pull receive, with its receipt handle."""

    message: Message
    handle: str
    #: the queue's number (CMQ message ids derive from it)
    qid: int = 0


@dataclass(slots=True)
class RetainedMessage:
    """The last message kept for one routing key of a vhost (see StoreRetained)."""

    exchange: str
    routing_key: str
    properties: dict[str, Any]
    body: bytes


@dataclass(slots=True)
class QueueInfo:
    name: str
    message_count: int
    consumer_count: int
    #: the queue's number in the store (CMQ shows it as the queue id)
    qid: int = 0


@dataclass(slots=True)
class SessionHolder:
    """Which connection holds a client id (OpenSession), and what its end must undo."""

    connection: ConnectionId
    owner: Owner
    clean: bool
    queue: str
    group: tuple[str, ...]
    will: Will | None = None


@dataclass(slots=True)
class Proposer:
    """The proposals of one node's run (its incarnation, `session`) applied so far: those
    numbered below `floor` and those in `seen` (see commands.Meta)."""

    session: int
    floor: int = 0
    seen: set[int] = field(default_factory=set)


# Effects: what the node must do once the command is durable.


@dataclass(slots=True)
class Deliver:
    owner: Owner
    tag: str
    queue: str
    message: Message
    redelivered: bool
    delivery_count: int


@dataclass(slots=True)
class ConsumerCancelled:
    """The broker ended a consumer (its queue was deleted)."""

    owner: Owner
    tag: str


@dataclass(slots=True)
class MessagesAvailable:
    """A queue no consumer serves gained ready messages where it had none (or its last
    consumer left some behind), or was deleted: wake long-polling receivers."""

    vhost: str
    queue: str


@dataclass(slots=True)
class Overflowed:
    """A queue refused a new message (the publisher is told): at its length limit, or larger
    than its x-max-message-size.

    Never silent: the node counts these and logs them.
    """

    vhost: str
    queue: str
    #: "full" (over the length limit) or TOO_LARGE (refused whatever the overflow policy)
    reason: str = "full"


TOO_LARGE = "too-large"


@dataclass(slots=True)
class Dropped:
    """Messages left the broker without reaching a consumer or a place the user chose.

    Every such exit produces one (the node counts and logs them), so no message is lost in
    silence: expired, over a length limit or rejected with no dead-letter target, a
    dead-letter target that is missing or routes nowhere, a queue deleted or purged with
    messages in it, a publish that matched no queue, transient messages at a restart.
    """

    vhost: str
    #: the queue the messages left, or the exchange that routed a publish nowhere
    source: str
    #: why: "expired", "maxlen", "rejected", "delivery-limit" (each with no dead-letter
    #: target that took them), "queue-deleted", "purged", "unroutable", "not-persistent"
    reason: str
    count: int = 1
    #: why the queue's dead-letter target did not take them, when it has one
    detail: str = ""


@dataclass(slots=True)
class CloseConnection:
    """The broker ends a connection (its client id was taken over by another one)."""

    connection: ConnectionId
    reason: str


@dataclass(slots=True)
class Traced:
    """One step in the life of a message whose vhost or queue is traced (SetTracing).

    `event` is "published" (queue empty, seq 0; `detail` names the routes), "delivered",
    "acked", "requeued", or a way out: "rejected", "expired", "maxlen", "delivery-limit"
    (each with the dead-letter routes taken, if any), "purged", "queue-deleted".
    """

    event: str
    vhost: str
    queue: str
    seq: int
    time: int
    detail: dict[str, Any]
    #: the publish itself, for "published": the node it arrived at can say who sent it
    command: Any = None


Effect = (
    Deliver
    | ConsumerCancelled
    | MessagesAvailable
    | Overflowed
    | Dropped
    | CloseConnection
    | Traced
)
