"""Policies, as RabbitMQ defines them: optional arguments set by the operator for every queue
or exchange whose name matches a pattern, changeable at run time without redeclaring.

Only one policy applies to an object: of those whose pattern matches its name and whose
apply-to covers its kind, the one of highest priority (ties go to the name that sorts first,
so every replica picks the same one). Its definition is combined with the object's own
arguments key by key as RabbitMQ combines them: for limits (message-ttl, expires, max-length,
max-length-bytes, delivery-limit) the lower value wins, for the rest (dead-letter target,
overflow, alternate exchange) the object's own argument wins over the policy.

The stored arguments never change: the effective ones are computed from them and the policy
whenever either changes, and on restore.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from broker.core.errors import InvalidArgument

APPLY_TO = ("queues", "exchanges", "all", "classic_queues", "quorum_queues")

#: definition key -> the queue argument it sets, for keys where the lower value wins
_MIN_WINS = {
    "message-ttl": "x-message-ttl",
    "expires": "x-expires",
    "max-length": "x-max-length",
    "max-length-bytes": "x-max-length-bytes",
    "delivery-limit": "x-delivery-limit",
}
#: and for keys where the queue's own argument wins
_ARGUMENT_WINS = {
    "dead-letter-exchange": "x-dead-letter-exchange",
    "dead-letter-routing-key": "x-dead-letter-routing-key",
    "overflow": "x-overflow",
}
#: accepted and checked as RabbitMQ checks them, but they change nothing here (as the
#: arguments of the same names: memory limits and the classic queue mode)
_NO_EFFECT_INTEGERS = ("max-in-memory-length", "max-in-memory-bytes")
_CHOICES = {
    "overflow": ("drop-head", "reject-publish", "reject-publish-dlx"),
    "queue-mode": ("default", "lazy"),
}
_TEXT = ("dead-letter-exchange", "dead-letter-routing-key", "alternate-exchange")
#: the smallest value of each integer key
_LOWEST = {**{key: 0 for key in _MIN_WINS}, "expires": 1, **{k: 0 for k in _NO_EFFECT_INTEGERS}}
#: keys RabbitMQ knows in a policy that this broker would not act on: refused, not ignored
_UNSUPPORTED = {
    "ha-mode": "classic queue mirroring is not supported (a cluster replicates every queue)",
    "ha-params": "classic queue mirroring is not supported",
    "ha-sync-mode": "classic queue mirroring is not supported",
    "ha-sync-batch-size": "classic queue mirroring is not supported",
    "ha-promote-on-shutdown": "classic queue mirroring is not supported",
    "ha-promote-on-failure": "classic queue mirroring is not supported",
    "federation-upstream": "federation is not supported",
    "federation-upstream-set": "federation is not supported",
    "max-age": "streams are not supported",
    "stream-max-segment-size-bytes": "streams are not supported",
    "max-segment-size": "streams are not supported",
    "queue-leader-locator": "queue leader placement is not supported",
    "initial-cluster-size": "queue replica counts are not supported",
    "consumer-timeout": "consumer timeouts are not supported",
    "max-priority": "a queue's priorities are fixed when it is declared: use x-max-priority",
    "queue-type": "a queue's type is fixed when it is declared: use x-queue-type",
}
KNOWN_KEYS = frozenset(
    [*_MIN_WINS, *_ARGUMENT_WINS, *_NO_EFFECT_INTEGERS, *_CHOICES, *_TEXT, "queue-version"]
)


@dataclass(slots=True)
class Policy:
    vhost: str
    name: str
    pattern: str
    apply_to: str
    priority: int
    definition: dict[str, Any]
    #: the pattern, compiled once (derived)
    regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.regex = re.compile(self.pattern)

    def covers(self, kind: str, name: str, arguments: dict[str, Any]) -> bool:
        """Applies to the queue or exchange (`kind`) `name`: RabbitMQ searches the pattern
        anywhere in the name (anchor it with ^ and $ to match whole names)."""
        if not self._covers_kind(kind, arguments):
            return False
        return self.regex.search(name) is not None

    def _covers_kind(self, kind: str, arguments: dict[str, Any]) -> bool:
        if self.apply_to == "all":
            return True
        if kind == "exchange":
            return self.apply_to == "exchanges"
        if self.apply_to == "queues":
            return True
        qtype = arguments.get("x-queue-type", "classic")
        if isinstance(qtype, bytes):
            qtype = qtype.decode()
        return self.apply_to == f"{qtype}_queues"


def checked_policy(
    vhost: str, name: str, pattern: Any, apply_to: Any, priority: Any, definition: Any
) -> Policy:
    """A policy from untrusted values; InvalidArgument (RabbitMQ's wording where it has one)
    for anything it would refuse."""
    if not isinstance(name, str) or not name:
        raise InvalidArgument("a policy needs a name")
    if not isinstance(pattern, str):
        raise InvalidArgument(f"policy '{name}': the pattern must be a string")
    if apply_to not in APPLY_TO:
        raise InvalidArgument(
            f"policy '{name}': apply-to must be one of {', '.join(APPLY_TO)}, not {apply_to!r}"
        )
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise InvalidArgument(f"policy '{name}': the priority must be an integer")
    check_definition(name, definition)
    try:
        return Policy(vhost, name, pattern, apply_to, priority, dict(definition))
    except re.error as exc:
        raise InvalidArgument(f"policy '{name}': invalid pattern {pattern!r}: {exc}") from None


def check_definition(name: str, definition: Any) -> None:
    if not isinstance(definition, dict) or not all(isinstance(k, str) for k in definition):
        raise InvalidArgument(f"policy '{name}': the definition must be a JSON object")
    if not definition:
        raise InvalidArgument(f"policy '{name}': no policy provided (the definition is empty)")
    for key in sorted(definition):
        if key in _UNSUPPORTED:
            raise InvalidArgument(f"policy '{name}': '{key}' is refused: {_UNSUPPORTED[key]}")
    unknown = sorted(set(definition) - KNOWN_KEYS)
    if unknown:
        raise InvalidArgument(
            f"policy '{name}': {', '.join(unknown)} are not recognised policy settings"
        )
    for key, value in sorted(definition.items()):
        why = _invalid(key, value)
        if why:
            raise InvalidArgument(f"policy '{name}': {value!r} is not a valid {key}: {why}")


def _invalid(key: str, value: Any) -> str:
    """Why `value` is not valid for `key`, or ""."""
    if key in _LOWEST:
        if isinstance(value, bool) or not isinstance(value, int):
            return "expected an integer"
        return "out of range" if value < _LOWEST[key] else ""
    if key in _CHOICES:
        choices = _CHOICES[key]
        return "" if value in choices else f"expected one of {', '.join(choices)}"
    if key in _TEXT:
        return "" if isinstance(value, str) else "expected a string"
    if key == "queue-version":
        return "" if value in (1, 2) and not isinstance(value, bool) else "expected 1 or 2"
    return "unknown key"


def choose(
    policies: Iterable[Policy], kind: str, name: str, arguments: dict[str, Any]
) -> Policy | None:
    """The one policy that applies to a queue or exchange, or None."""
    best: Policy | None = None
    for policy in policies:
        if not policy.covers(kind, name, arguments):
            continue
        if best is None or (-policy.priority, policy.name) < (-best.priority, best.name):
            best = policy
    return best


def effective_queue_arguments(arguments: dict[str, Any], policy: Policy | None) -> dict[str, Any]:
    """The arguments a queue acts on: its own combined with its policy's definition."""
    if policy is None:
        return arguments
    out = dict(arguments)
    definition = policy.definition
    for key, arg in _MIN_WINS.items():
        if key in definition:
            own = out.get(arg)
            value = definition[key]
            out[arg] = value if not _is_int(own) else min(own, value)
    for key, arg in _ARGUMENT_WINS.items():
        if key in definition and arg not in out:
            out[arg] = definition[key]
    return out


def alternate_exchange(arguments: dict[str, Any], policy: Policy | None) -> Any:
    """An exchange's alternate exchange: its own argument, else its policy's."""
    own = arguments.get("alternate-exchange")
    if own is not None or policy is None:
        return own
    return policy.definition.get("alternate-exchange")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
