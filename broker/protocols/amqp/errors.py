"""AMQP reply codes, and the mapping from core errors to them."""

from __future__ import annotations

from pamqp.base import Frame

from broker.core import errors as core

REPLY_NAMES = {
    200: "OK",
    311: "CONTENT_TOO_LARGE",
    312: "NO_ROUTE",
    313: "NO_CONSUMERS",
    320: "CONNECTION_FORCED",
    402: "INVALID_PATH",
    403: "ACCESS_REFUSED",
    404: "NOT_FOUND",
    405: "RESOURCE_LOCKED",
    406: "PRECONDITION_FAILED",
    501: "FRAME_ERROR",
    502: "SYNTAX_ERROR",
    503: "COMMAND_INVALID",
    504: "CHANNEL_ERROR",
    505: "UNEXPECTED_FRAME",
    506: "RESOURCE_ERROR",
    530: "NOT_ALLOWED",
    540: "NOT_IMPLEMENTED",
    541: "INTERNAL_ERROR",
}
CHANNEL_CODES = frozenset({311, 312, 313, 403, 404, 405, 406})

_CORE_CODES: dict[type[core.BrokerError], int] = {
    core.NotFound: 404,
    core.AccessRefused: 403,
    core.ResourceLocked: 405,
    core.PreconditionFailed: 406,
    core.InvalidArgument: 406,
    core.ResourceLimit: 406,
    core.ReceiptHandleInvalid: 406,
    core.NotAllowed: 530,
    core.NotImplementedFeature: 540,
    core.CommandInvalid: 503,
    core.InternalError: 541,
}


def reply_text(code: int, text: str) -> str:
    """RabbitMQ style: 'NOT_FOUND - no queue ...'."""
    name = REPLY_NAMES.get(code, "")
    if not name or text.startswith(name):
        return text
    return f"{name} - {text}"


class AMQPError(Exception):
    def __init__(self, code: int, text: str, class_id: int = 0, method_id: int = 0) -> None:
        super().__init__(text)
        self.code = code
        self.text = text
        self.class_id = class_id
        self.method_id = method_id

    @property
    def connection_level(self) -> bool:
        return self.code not in CHANNEL_CODES

    @classmethod
    def from_core(cls, exc: core.BrokerError, method: Frame | None = None) -> AMQPError:
        code = 541
        for klass in type(exc).__mro__:
            if klass in _CORE_CODES:
                code = _CORE_CODES[klass]
                break
        index = getattr(method, "index", 0) or 0 if method is not None else 0
        return cls(code, str(exc), index >> 16, index & 0xFFFF)


class ConnectionError_(AMQPError):
    """An error that closes the whole connection."""
