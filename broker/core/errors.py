"""One exception hierarchy for the core; adapters map each class to their protocol's codes."""


class BrokerError(Exception):
    """Base of every error the core raises on purpose."""

    #: True when the error concerns the whole session (AMQP: a connection error).
    session_level = False


class NotFound(BrokerError):
    """The named vhost, exchange, queue, user or message does not exist."""


class AccessRefused(BrokerError):
    """The user may not do this, or the name is reserved."""


class ResourceLocked(BrokerError):
    """Another session holds the resource exclusively."""


class PreconditionFailed(BrokerError):
    """The request conflicts with the resource's current definition or state."""


class QueueLimitReached(PreconditionFailed):
    """The vhost's max-queues are declared (AMQP 406, as RabbitMQ; CMQ 4450)."""


class InvalidArgument(BrokerError):
    """A value is malformed or out of range."""


class NotAllowed(BrokerError):
    """The operation is not allowed in this context (e.g. unknown vhost at login)."""

    session_level = True


class NotImplementedFeature(BrokerError):
    """The request asks for something this broker does not do."""


class ResourceLimit(BrokerError):
    """A configured limit (queue length, message size) refuses the request."""


class ConnectionLimit(BrokerError):
    """A connection or channel limit (the node's, a source address's, a vhost's or a user's)
    refuses the session: AMQP 530, MQTT CONNACK 3."""

    session_level = True


class ReceiptHandleInvalid(BrokerError):
    """A pull-consumer receipt handle is stale, expired or unknown."""


class CommandInvalid(BrokerError):
    """The request cannot be carried out at all (e.g. an unknown exchange type)."""

    session_level = True


class InternalError(BrokerError):
    """A bug: a command failed unexpectedly. The session is closed; the node keeps running."""

    session_level = True


class StoreFailed(BrokerError):
    """The node's disk refused a write: nothing that promises durability is acknowledged
    until its store works again."""

    session_level = True


class ClusterUnavailable(StoreFailed):
    """The node cannot reach a majority of its cluster: nothing is acknowledged until it
    can (the command may still take effect, as one in flight when a leader goes may)."""
