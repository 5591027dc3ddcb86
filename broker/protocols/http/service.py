"""The CMQ API as a service: parameters in, a reply dict out, no HTTP in sight.

It authenticates the request, finds the action and runs it against the core through the
gateway, so a reply is only sent once its changes are committed and on disk, and what it
reads is committed state. Every failure becomes a CMQ error reply; nothing escapes as an
HTTP 500.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from broker.core import commands as c
from broker.core.errors import BrokerError
from broker.core.model import Message
from broker.core.queue import MessageQueue
from broker.core.state import StateMachine, Vhost
from broker.gateway import Gateway
from broker.protocols.http import errors
from broker.protocols.http.auth import authenticate
from broker.protocols.http.errors import CmqError
from broker.protocols.http.params import Params, parse_request
from broker.protocols.http.waiters import QueueWaiters

if TYPE_CHECKING:
    from broker.config import Config

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Request:
    """An authenticated request: the vhost its key is bound to, and its parameters."""

    vhost: str
    params: Params
    #: the access key that signed it
    secret_id: str = ""

    def publisher(self) -> dict[str, Any]:
        """Who publishes with this request, for message trace."""
        return {"protocol": "http", "secret_id": self.secret_id}


Action = Callable[["CmqService", Request], Awaitable[dict[str, Any]]]


class Pushers(Protocol):
    """The HTTP subscriptions' delivery loops (see pusher), started and stopped by actions."""

    def start(self, vhost: str, topic: str, subscription: str) -> None: ...

    def stop(self, vhost: str, topic: str, subscription: str) -> None: ...

    #: whether they run on this node (a cluster runs them on its leader only)
    active: bool
    #: push attempts delivered, failed, and retries among them (metrics)
    counts: dict[str, int]

    def set_active(self, active: bool) -> None: ...

    def start_all(self) -> None:
        """Start the loops of every stored HTTP subscription (at node start)."""

    async def close(self) -> None: ...


class CmqService:
    def __init__(
        self,
        gateway: Gateway,
        config: Config,
        actions: dict[str, Action],
        make_pushers: Callable[[CmqService], Pushers],
    ) -> None:
        self.gateway = gateway
        self.config = config
        self.actions = {name.lower(): action for name, action in actions.items()}
        self.waiters = QueueWaiters()
        self.closing = False
        prefix = os.urandom(4).hex()
        self._message_ids = (f"{prefix}-{n}" for n in itertools.count(1))
        self._request_ids = (f"{prefix}{n:012d}" for n in itertools.count(1))
        self.pushers = make_pushers(self)

    # -- the core ------------------------------------------------------------------------

    @property
    def state(self) -> StateMachine:
        """The committed state (read only: every change is a command)."""
        return self.gateway.committed

    def call(self, command: c.Command) -> asyncio.Future[Any]:
        """Submit `command`; the future resolves once it is committed and on disk."""
        return self.gateway.call(command)

    def now_ms(self) -> int:
        return self.gateway.now_ms()

    def refuse_if_blocked(self) -> None:
        """Sending is refused while an alarm blocks publishers: AMQP and MQTT publishers are
        paused (their socket is not read), an HTTP request cannot be, so it is told."""
        reason = self.gateway.blocked_reason
        if reason is not None:
            raise CmqError(
                errors.THROTTLED, f"publishing is paused: the node is {reason}; retry later"
            )

    def vhost(self, name: str) -> Vhost:
        vh = self.state.vhosts.get(name)
        if vh is None:
            raise CmqError(errors.AUTH_FAILED, f"the key's vhost '{name}' no longer exists")
        return vh

    def queue(self, vhost: str, name: str) -> MessageQueue:
        q = self.vhost(vhost).queues.get(name)
        if q is None:
            raise CmqError(errors.NOT_FOUND, f"queue {name} does not exist")
        return q

    def records(self, vhost: str, group: tuple[str, ...]) -> dict[str, Any]:
        """An adapter record group as stored (read only: change it through PutRecord)."""
        records: dict[str, Any] = self.state.records.get((vhost, group), {})
        return records

    def new_message_id(self) -> str:
        return next(self._message_ids)

    def new_request_id(self) -> str:
        return next(self._request_ids)

    # -- requests ------------------------------------------------------------------------

    async def handle(
        self, method: str, host: str, path: str, query: str, body: bytes
    ) -> dict[str, Any]:
        """The reply to one request, errors included."""
        request_id = self.new_request_id()
        client_id = None
        try:
            if method not in ("GET", "POST"):
                raise errors.bad_method(method)
            params = parse_request(method, query, body)
            client_id = params.optional_text("clientRequestId")
            now_s = self.now_ms() // 1000
            key = authenticate(
                params,
                method,
                host,
                path,
                self.state.access_keys,
                self.gateway.first_use,
                now_s,
                self.config.http_timestamp_skew,
            )
            name = params.text("action")
            action = self.actions.get(name.lower())
            if action is None:
                raise errors.unknown_action(name)
            reply = {"code": 0, "message": "", "requestId": request_id}
            reply.update(await action(self, Request(key.vhost, params, key.secret_id)))
        except CmqError as exc:
            reply = {"code": exc.code, "message": exc.message, "requestId": request_id}
            reply.update(exc.extra)
        except BrokerError as exc:
            err = errors.from_core(exc)
            reply = {"code": err.code, "message": err.message, "requestId": request_id}
        except Exception:
            log.exception("CMQ request %s failed", request_id)
            reply = {"code": errors.INTERNAL, "message": "internal error", "requestId": request_id}
        if client_id is not None:
            reply["clientRequestId"] = client_id
        return reply


def message_id(qid: int, msg: Message) -> str:
    """The id given at publish (AMQP's message-id), or one made from the queue and sequence."""
    given = msg.properties.get("message_id")
    if given:
        return given.decode() if isinstance(given, bytes) else str(given)
    return f"{qid}-{msg.seq}"
