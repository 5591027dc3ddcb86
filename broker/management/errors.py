"""Errors as RabbitMQ's management API answers them: a status and {"error", "reason"}.

Handlers raise ApiError, or let a core BrokerError through; the middleware in server.py
turns either into the JSON reply, and anything else into a 500 that names no internals.
"""

from __future__ import annotations

from aiohttp import web

from broker.core import errors as core
from broker.management.jsonable import dumps

#: WWW-Authenticate of a 401, as RabbitMQ sends it
REALM = 'Basic realm="RabbitMQ Management"'


class ApiError(Exception):
    def __init__(self, status: int, error: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.error = error
        self.reason = reason


def not_found(reason: str = "Not Found") -> ApiError:
    return ApiError(404, "Object Not Found", reason)


def bad_request(reason: str) -> ApiError:
    return ApiError(400, "bad_request", reason)


def not_authorised(reason: str) -> ApiError:
    return ApiError(401, "not_authorised", reason)


#: core errors by status; the first matching class wins (subclasses before their bases)
_CORE_STATUS: tuple[tuple[type[core.BrokerError], int, str], ...] = (
    (core.NotFound, 404, "Object Not Found"),
    (core.NotAllowed, 404, "Object Not Found"),
    (core.AccessRefused, 401, "access_refused"),
    (core.ClusterUnavailable, 503, "cluster_unavailable"),
    (core.StoreFailed, 503, "store_failed"),
    (core.InternalError, 500, "internal_error"),
    (core.NotImplementedFeature, 400, "not_implemented"),
    (core.ResourceLocked, 400, "resource_locked"),
)


def from_core(exc: core.BrokerError) -> ApiError:
    """A core error as the API reports it: most are the request's fault (400)."""
    for kind, status, error in _CORE_STATUS:
        if isinstance(exc, kind):
            return ApiError(status, error, str(exc))
    return bad_request(str(exc))


def response(exc: ApiError, challenge: bool = True) -> web.Response:
    """The JSON error; a 401 carries the Basic challenge unless `challenge` is False (a
    browser would pop up its own login dialog over a page that has one)."""
    headers = {"WWW-Authenticate": REALM} if exc.status == 401 and challenge else None
    return web.Response(
        status=exc.status,
        text=dumps({"error": exc.error, "reason": exc.reason}),
        content_type="application/json",
        headers=headers,
    )
