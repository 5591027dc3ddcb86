"""HTTP basic auth against the broker's users, and RabbitMQ's user tags.

Tags decide what a user may do through the API, as in RabbitMQ:

- none of the tags below: no access to the API at all (401 "Not management user");
- `management`: the objects of the vhosts the user has permissions in;
- `policymaker`: that, plus the policies of those vhosts;
- `monitoring`: reading everything (every vhost's objects, every connection, the node);
- `administrator`: everything (users, vhosts, permissions, definitions, any connection).

Changing a vhost's objects (declare, delete, bind, publish, get, purge) also needs the user's
AMQP permissions in that vhost (configure, write, read), checked as for an AMQP client.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Awaitable, Callable

from aiohttp import web

from broker.core.errors import AccessRefused
from broker.core.model import User
from broker.management.context import CONTEXT_KEY
from broker.management.errors import ApiError, not_authorised, not_found
from broker.protocols.transport import is_loopback, source_of

ADMINISTRATOR = "administrator"
MONITORING = "monitoring"
POLICYMAKER = "policymaker"
MANAGEMENT = "management"
#: tags that let a user in at all
MANAGEMENT_TAGS = frozenset((ADMINISTRATOR, MONITORING, POLICYMAKER, MANAGEMENT))

USER_KEY = web.RequestKey("management-user", User)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _credentials(request: web.Request) -> tuple[str, str]:
    header = request.headers.get("Authorization", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        raise not_authorised("Login failed")
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, ValueError):
        raise not_authorised("Login failed") from None
    username, sep, password = decoded.partition(":")
    if not sep:
        raise not_authorised("Login failed")
    return username, password


def _peer(request: web.Request) -> tuple[str, bool]:
    """(address, whether it is a loopback one) of the client."""
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return source_of(peer), is_loopback(peer)


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Requests under /api/ must carry a management user's credentials; other paths (the
    console's static files) are open."""
    if not request.path.startswith("/api/"):
        return await handler(request)
    gateway = request.app[CONTEXT_KEY].gateway
    username, password = _credentials(request)
    source, loopback = _peer(request)
    try:
        user = gateway.authenticate(username, password, loopback, source)
    except AccessRefused:
        # Held like a refused AMQP login: the more an address failed lately, the longer.
        await asyncio.sleep(gateway.refusal_delay(source))
        raise not_authorised("Login failed") from None
    if not MANAGEMENT_TAGS.intersection(user.tags):
        raise not_authorised("Not management user")
    request[USER_KEY] = user
    return await handler(request)


def user_of(request: web.Request) -> User:
    return request[USER_KEY]


def is_admin(user: User) -> bool:
    return ADMINISTRATOR in user.tags


def is_monitor(user: User) -> bool:
    """Reads everything: monitoring and administrator users."""
    return ADMINISTRATOR in user.tags or MONITORING in user.tags


def require_admin(request: web.Request) -> User:
    user = user_of(request)
    if not is_admin(user):
        raise not_authorised("Not administrator user")
    return user


def require_monitor(request: web.Request) -> User:
    user = user_of(request)
    if not is_monitor(user):
        raise not_authorised("Not monitor user")
    return user


def require_policymaker(request: web.Request) -> User:
    user = user_of(request)
    if not (is_admin(user) or POLICYMAKER in user.tags):
        raise not_authorised("Not policymaker user")
    return user


def visible_vhosts(request: web.Request) -> list[str]:
    """The vhosts whose objects the user may read, sorted."""
    user = user_of(request)
    state = request.app[CONTEXT_KEY].gateway.committed
    if is_monitor(user):
        return sorted(state.vhosts)
    return sorted(v for v in state.vhosts if (user.name, v) in state.permissions)


def readable_vhost(request: web.Request, vhost: str) -> str:
    """`vhost` if it exists (404) and the user may read its objects (401)."""
    state = request.app[CONTEXT_KEY].gateway.committed
    if vhost not in state.vhosts:
        raise not_found(f"vhost '{vhost}' not found")
    user = user_of(request)
    if not is_monitor(user) and (user.name, vhost) not in state.permissions:
        raise not_authorised("User not authorised to access virtual host")
    return vhost


def writable_vhost(request: web.Request, vhost: str) -> str:
    """`vhost` if it exists and the user has permissions in it, whatever its tags."""
    state = request.app[CONTEXT_KEY].gateway.committed
    if vhost not in state.vhosts:
        raise not_found(f"vhost '{vhost}' not found")
    if (user_of(request).name, vhost) not in state.permissions:
        raise not_authorised("User not authorised to access virtual host")
    return vhost


def check_permission(request: web.Request, vhost: str, kind: str, resource: str, name: str) -> None:
    """The user's AMQP `kind` permission (configure, write, read) on a resource (401)."""
    gateway = request.app[CONTEXT_KEY].gateway
    try:
        gateway.check_permission(user_of(request), vhost, kind, resource, name)
    except AccessRefused as exc:
        raise ApiError(401, "access_refused", str(exc)) from None
