"""What the AMQP connection machine needs from the node, as an interface.

The sans-IO connection never touches sockets or the event loop; it calls these methods, and
tests can hand it a fake.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from broker.core.commands import Command
from broker.core.errors import BrokerError
from broker.core.model import User

Done = Callable[[Any, BrokerError | None], None]


class Gateway(Protocol):
    def submit(self, command: Command, done: Done | None = None) -> None:
        """Apply a core command; `done` runs once it is durable."""

    def defer(self, callback: Callable[[], None]) -> None:
        """Run `callback` once everything submitted before it is durable (keeps order)."""

    def authenticate(self, username: str, password: str, loopback: bool) -> User:
        """Check credentials; raises AccessRefused."""

    def vhost_access(self, user: User, vhost: str) -> None:
        """Raises NotAllowed (no such vhost) or AccessRefused (no permission)."""

    def check_permission(self, user: User, vhost: str, kind: str, resource: str, name: str) -> None:
        """Raises AccessRefused unless `user` has `kind` permission on the resource."""

    def register_reply_to(self, connection: Any, channel: int, consumer_tag: str) -> str:
        """Register a direct reply-to consumer; returns its routing key."""

    def unregister_reply_to(self, key: str) -> None: ...

    def deliver_reply(
        self, routing_key: str, properties: dict[str, Any], body: bytes, exchange: str
    ) -> bool:
        """Deliver a direct reply-to message; False if the requester is gone."""

    @property
    def blocked_reason(self) -> str | None:
        """Why publishers are blocked (memory or disk alarm), or None."""

    def new_name(self, prefix: str) -> str:
        """A unique broker-generated name (server-named queues, consumer tags)."""
