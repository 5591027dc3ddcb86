"""CMQ error replies: top-level codes, module codes inside messages, and core errors mapped.

CMQ answers HTTP 200 even for errors: `{"code": 4000, "message": "(10390)...", ...}`, where the
parenthesised number is the module error code a client may match on.
"""

from __future__ import annotations

from typing import Any

from broker.core.errors import (
    AccessRefused,
    BrokerError,
    ClusterUnavailable,
    InternalError,
    NotFound,
    QueueLimitReached,
    ReceiptHandleInvalid,
    ResourceLimit,
    ResourceLocked,
    StoreFailed,
)

INVALID = 4000
AUTH_FAILED = 4100
TOO_LARGE = 4400
HEAP_FULL = 4410
#: CMQ's "QPS throttled": here, publishing paused by a memory or disk alarm (retry later)
THROTTLED = 4420
HANDLE_INVALID = 4430
NOT_FOUND = 4440
TOO_MANY = 4450
EXISTS = 4460
INTERNAL = 6000
BATCH_DELETE_FAILED = 6010
NO_MESSAGE = 7000


class CmqError(Exception):
    """An error reply: `code`, a message (prefixed by its module code) and extra fields."""

    def __init__(self, code: int, message: str, module: int | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = f"({module}){message}" if module is not None else message
        self.extra = extra


def invalid_request(detail: str) -> CmqError:
    return CmqError(INVALID, f"invalid request parameters: {detail}", 10000)


def missing(name: str) -> CmqError:
    return CmqError(INVALID, f"lacked of required parameter {name}", 10390)


def key_format(name: str) -> CmqError:
    return CmqError(INVALID, f"parameter {name} key format error", 10310)


def not_repeatable(name: str) -> CmqError:
    return CmqError(INVALID, f"parameter {name} is NOT a repeatable parameter", 10330)


def out_of_range(name: str, detail: str = "") -> CmqError:
    suffix = f" ({detail})" if detail else ""
    return CmqError(INVALID, f"parameter {name} value or length is out of range{suffix}", 10350)


def wrong_type(name: str) -> CmqError:
    return CmqError(INVALID, f"parameter {name} error type", 10360)


def batch_size(name: str) -> CmqError:
    return CmqError(INVALID, f"{name} parameter batch size is out of range", 10370)


def not_consecutive(name: str) -> CmqError:
    return CmqError(INVALID, f"{name} parameter is not consequent", 10380)


def unknown_action(action: str) -> CmqError:
    return CmqError(INVALID, f"action {action} is not existed", 10280)


def bad_method(method: str) -> CmqError:
    return CmqError(
        INVALID, f"unexpected http method {method}, only GET or POST is supported", 10410
    )


def from_core(exc: BrokerError) -> CmqError:
    """The CMQ reply for a core error that escaped the adapter's own checks."""
    if isinstance(exc, ReceiptHandleInvalid):
        return CmqError(HANDLE_INVALID, str(exc))
    if isinstance(exc, NotFound):
        return CmqError(NOT_FOUND, str(exc))
    if isinstance(exc, ResourceLimit):
        return CmqError(HEAP_FULL, str(exc))
    if isinstance(exc, QueueLimitReached):
        return CmqError(TOO_MANY, str(exc))
    if isinstance(exc, AccessRefused | ResourceLocked):
        return CmqError(INVALID, str(exc), 10110)
    if isinstance(exc, InternalError):
        return CmqError(INTERNAL, "internal server error")
    if isinstance(exc, ClusterUnavailable):
        return CmqError(INTERNAL, "the node cannot reach a majority of its cluster")
    if isinstance(exc, StoreFailed):
        return CmqError(INTERNAL, "the node cannot store anything: its disk failed")
    return CmqError(INVALID, str(exc), 10110)
