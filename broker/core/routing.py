"""Exchange routing: which bindings of an exchange match a message.

Matching rules follow RabbitMQ: direct compares keys, fanout matches all, topic keys are
dot-separated words with `*` (exactly one word) and `#` (zero or more words), headers match on
`x-match` = all / any (/ all-with-x / any-with-x).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from broker.core.model import BindingKey

EXCHANGE_TYPES = ("direct", "fanout", "topic", "headers", "x-delayed-message")


@lru_cache(maxsize=65536)
def topic_matches(pattern: str, routing_key: str) -> bool:
    """True when an AMQP topic binding pattern matches a routing key."""
    return _match_words(_words(pattern), _words(routing_key))


def _words(key: str) -> tuple[str, ...]:
    """An empty key has no words (so `*` does not match it), as RabbitMQ treats it."""
    return tuple(key.split(".")) if key else ()


def _match_words(pattern: tuple[str, ...], words: tuple[str, ...]) -> bool:
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        if not rest:
            return True
        return any(_match_words(rest, words[i:]) for i in range(len(words) + 1))
    if not words:
        return False
    if head == "*" or head == words[0]:
        return _match_words(rest, words[1:])
    return False


def headers_match(binding_args: dict[str, Any], headers: dict[str, Any] | None) -> bool:
    """Match a headers-exchange binding against message headers."""
    headers = headers or {}
    mode = binding_args.get("x-match", "all")
    if isinstance(mode, bytes):
        mode = mode.decode()
    with_x = mode.endswith("-with-x")
    wanted = {
        k: v
        for k, v in binding_args.items()
        if k != "x-match" and (with_x or not k.startswith("x-"))
    }
    if mode.startswith("any"):
        return any(_header_equal(headers, k, v) for k, v in wanted.items())
    return all(_header_equal(headers, k, v) for k, v in wanted.items())


def _header_equal(headers: dict[str, Any], key: str, value: Any) -> bool:
    if key not in headers:
        return False
    # A binding argument of void type matches on presence alone.
    return value is None or headers[key] == value


def binding_matches(
    exchange_type: str, binding: BindingKey, routing_key: str, headers: dict[str, Any] | None
) -> bool:
    if exchange_type == "fanout":
        return True
    if exchange_type == "direct":
        return binding.routing_key == routing_key
    if exchange_type == "topic":
        return topic_matches(binding.routing_key, routing_key)
    if exchange_type == "headers":
        return headers_match(dict(binding.arguments), headers)
    return False


def freeze_arguments(arguments: dict[str, Any] | None) -> tuple[tuple[str, Any], ...]:
    """A hashable, order-independent form of binding arguments."""
    if not arguments:
        return ()
    return tuple(sorted((k, _freeze(v)) for k, v in arguments.items()))


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return freeze_arguments(value)
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value
