"""The owner of the messages the API takes from queues.

`POST /api/queues/{vhost}/{name}/get` takes messages as basic.get does: each is held by an
owner until the request settles it (acks, requeues or rejects it), like any delivery. The
API's owners are (this node, connection 0, a number per request): the gateway numbers client
connections from above the node's incarnation, so connection 0 is never a client's, and a
restart of the node (ReleaseNode) or its loss in a cluster releases these owners as it does
the clients'. Nothing is ever delivered to them (the API does not consume), so they need no
connection registered with the gateway.
"""

from __future__ import annotations

import itertools

from broker.core import commands as c

#: the connection number of the API's owners
API_CONNECTION = 0


class OwnerNumbers:
    def __init__(self, node_id: int) -> None:
        self.node_id = node_id
        self._numbers = itertools.count(1)

    def new_owner(self) -> c.Owner:
        """An owner of its own for one request's messages."""
        return (self.node_id, API_CONNECTION, next(self._numbers))
