"""What the endpoint modules are given: the gateway and a few facts about the node."""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from broker.config import Config
from broker.gateway import Gateway
from broker.management.rates import DepthRates
from broker.management.session import OwnerNumbers


@dataclass
class Context:
    gateway: Gateway
    config: Config
    #: the node's counters (connections, commands, drops ...), as `broker status` shows them
    counters: Callable[[], dict[str, int]]
    #: the node's client listeners: (protocol as RabbitMQ names it, port), open ones only
    listeners: Callable[[], list[tuple[str, int]]]
    #: hands out the owners of the messages the API gets from queues
    owners: OwnerNumbers
    #: when the node started, ms since the epoch
    started_at: int = 0
    #: queue depth rates, sampled when queues are looked at
    rates: DepthRates = field(default_factory=DepthRates)
    #: RabbitMQ's message_stats (counts and rates) of the node, or of one (vhost, queue)
    #: (broker.stats.RateSampler.message_stats)
    message_stats: Callable[[tuple[str, str] | None], dict[str, object]] = lambda _: {}

    @property
    def node_name(self) -> str:
        return node_name(self.gateway.node_id)


_HOST = socket.gethostname()


def node_name(node_id: int) -> str:
    """RabbitMQ names nodes name@host; ours are numbered (the host is this one's: the
    members of a cluster are told apart by number)."""
    return f"broker-{node_id}@{_HOST}"


#: how endpoint modules register their routes
AddRoutes = Callable[[web.Application, Context], None]

#: where the Context is kept in the aiohttp application
CONTEXT_KEY = web.AppKey("management-context", Context)
