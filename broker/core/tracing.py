"""Which vhosts and queues are traced, and what RabbitMQ's firehose publishes.

Two ways to watch messages, both switched by SetTracing and kept in the state, so that every
replica traces alike and a restart keeps them on:

- message trace: the state machine emits a `Traced` effect for each step of the life of a
  message in a traced vhost or queue (published and routed, delivered, acknowledged, returned,
  dead-lettered, expired, dropped); the node records them where they can be queried.
- the firehose (RabbitMQ's `rabbitmqctl trace_on`): a copy of every message published in the
  vhost goes to its `amq.rabbitmq.trace` exchange with routing key `publish.<exchange>`, and of
  every delivery with `deliver.<queue>`, its headers saying where the message went.
"""

from __future__ import annotations

from typing import Any

from broker.core.errors import InvalidArgument

TRACE = "trace"
FIREHOSE = "firehose"
FIREHOSE_EXCHANGE = "amq.rabbitmq.trace"


class Tracing:
    """The trace settings of a node's state."""

    def __init__(self) -> None:
        #: (vhost, queue) traced; queue "" for the whole vhost
        self.traced: set[tuple[str, str]] = set()
        #: vhosts with any trace setting: the one look-up a publish pays when none is on
        self.traced_vhosts: set[str] = set()
        self.firehose: set[str] = set()
        #: vhosts with any setting: empty while nothing is traced, the one check the message
        #: path makes then
        self.watched: set[str] = set()

    def set(self, vhost: str, kind: str, enabled: bool, queue: str) -> bool:
        """Apply one setting; True if it changed anything."""
        if kind == FIREHOSE:
            if queue:
                raise InvalidArgument("the firehose is turned on for a whole vhost")
            before = vhost in self.firehose
            if enabled:
                self.firehose.add(vhost)
            else:
                self.firehose.discard(vhost)
            self.watched = self.traced_vhosts | self.firehose
            return before != enabled
        if kind != TRACE:
            raise InvalidArgument(f"unknown trace kind '{kind}': trace or firehose")
        key = (vhost, queue)
        before = key in self.traced
        if enabled:
            self.traced.add(key)
        else:
            self.traced.discard(key)
        self.traced_vhosts = {v for v, _ in self.traced}
        self.watched = self.traced_vhosts | self.firehose
        return before != enabled

    def covers(self, vhost: str, queue: str) -> bool:
        """Whether steps of messages in this queue are traced."""
        return vhost in self.traced_vhosts and (
            (vhost, "") in self.traced or (vhost, queue) in self.traced
        )

    def settings(self) -> list[tuple[str, str, str]]:
        """(vhost, kind, queue) of every setting that is on, sorted."""
        out = [(vhost, TRACE, queue) for vhost, queue in self.traced]
        out += [(vhost, FIREHOSE, "") for vhost in self.firehose]
        return sorted(out)

    def forget_vhost(self, vhost: str) -> list[tuple[str, str, str]]:
        """Drop the settings of a deleted vhost; returns those it had."""
        gone = [s for s in self.settings() if s[0] == vhost]
        for _, kind, queue in gone:
            self.set(vhost, kind, False, queue)
        return gone


def firehose_headers(
    exchange: str,
    routing_key: str,
    properties: dict[str, Any],
    node: str,
    redelivered: bool | None = None,
) -> dict[str, Any]:
    """The headers RabbitMQ's firehose puts on its copy of a message."""
    headers: dict[str, Any] = {
        "exchange_name": exchange,
        "routing_keys": [routing_key],
        "properties": {k: v for k, v in properties.items() if v is not None},
        "node": node,
    }
    if redelivered is not None:
        headers["redelivered"] = int(redelivered)
    return headers
