"""Checks the arguments of a declaration pass before the queue or exchange is made.

`QueueSettings` reads the arguments the queues act on. RabbitMQ knows more, and a client that
names one expects its effect: what this broker does not do is refused here, so nothing asked
for is ignored in silence, and the ones accepted because they change nothing here (memory
limits, placement, the classic queue mode) are still checked for RabbitMQ's types and values.
Stored queues are not checked again when loaded: only a declaration is refused.
"""

from __future__ import annotations

from typing import Any

from broker.core.errors import PreconditionFailed

#: refused: RabbitMQ acts on these, this broker would not
_UNSUPPORTED = {
    "x-consumer-timeout": "consumer timeouts are not supported",
}
_CHOICES = {
    "x-queue-mode": ("default", "lazy"),
    "x-dead-letter-strategy": ("at-most-once", "at-least-once"),
}
_NON_NEGATIVE = ("x-max-in-memory-length", "x-max-in-memory-bytes")
_BOOLEANS = ("x-single-active-consumer", "x-sequential")


def check_queue_arguments(vhost: str, name: str, args: dict[str, Any]) -> None:
    """Raise PreconditionFailed, as RabbitMQ words it, for an argument we must not accept."""

    def refuse(key: str, why: str) -> PreconditionFailed:
        return PreconditionFailed(
            f"invalid arg '{key}' for queue '{name}' in vhost '{vhost}': {why}"
        )

    if _text(args.get("x-queue-type")) == "stream":
        raise refuse("x-queue-type", "unsupported queue type 'stream' (no streams here)")
    for key, why in _UNSUPPORTED.items():
        if key in args:
            raise refuse(key, why)
    for key in _BOOLEANS:
        if key in args and not isinstance(args[key], bool):
            raise refuse(key, "expected a boolean")
    for key, choices in _CHOICES.items():
        if key in args and _text(args[key]) not in choices:
            raise refuse(key, f"expected one of {', '.join(choices)}")
    if "x-dead-letter-exchange" in args and not _is_text(args["x-dead-letter-exchange"]):
        raise refuse("x-dead-letter-exchange", "expected a string (an exchange name)")
    if "x-dead-letter-routing-key" in args:
        if not _is_text(args["x-dead-letter-routing-key"]):
            raise refuse("x-dead-letter-routing-key", "expected a string")
        if "x-dead-letter-exchange" not in args:
            raise refuse("x-dead-letter-routing-key", "routing key but no dead-letter exchange")
    for key in _NON_NEGATIVE:
        value = args.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise refuse(key, "expected a non-negative integer")


def check_exchange_arguments(vhost: str, name: str, args: dict[str, Any]) -> None:
    """A new exchange's alternate exchange must be named by a string (RabbitMQ's 406)."""
    if "alternate-exchange" in args and not _is_text(args["alternate-exchange"]):
        raise PreconditionFailed(
            f"invalid type for arg 'alternate-exchange' in exchange '{name}' in vhost '{vhost}'"
        )


def check_binding_arguments(exchange_type: str, args: dict[str, Any]) -> None:
    """A headers binding's x-match must be one RabbitMQ knows (another one matched as 'all')."""
    if exchange_type != "headers" or "x-match" not in args:
        return
    mode = _text(args["x-match"])
    if mode not in ("all", "any", "all-with-x", "any-with-x"):
        raise PreconditionFailed(
            f"Invalid x-match field value {mode!r}; expected all, any, all-with-x, or any-with-x"
        )


def _is_text(value: Any) -> bool:
    return isinstance(value, str | bytes)


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value
