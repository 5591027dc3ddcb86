"""MQTT topic names and filters, and their mapping onto AMQP topic routing keys.

As RabbitMQ does it: `/` and `.` swap places, so the MQTT topic `a/b.c` is the routing key
`a.b/c` on `amq.topic` and every topic maps back unchanged; the filter wildcard `+` becomes
`*` and `#` stays `#`. AMQP patterns are slightly wider than MQTT filters (a literal `*` level,
the `$` rule), so deliveries are checked against the client's filters with `filter_matches`.
"""

from __future__ import annotations

from functools import lru_cache

_SWAP = str.maketrans({"/": ".", ".": "/"})


def valid_filter(topic_filter: str) -> bool:
    """Wildcards must fill a whole level, and `#` must be the last one (section 4.7.1)."""
    if not topic_filter:
        return False
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if level == "#":
            if i != len(levels) - 1:
                return False
        elif level != "+" and ("+" in level or "#" in level):
            return False
    return True


SHARE_PREFIX = "$share/"


def shared_filter(topic_filter: str) -> tuple[str, str] | None:
    """(group, filter) of a shared subscription `$share/<group>/<filter>`, else None.

    Raises ValueError for a `$share/` filter without a group, with `+` or `#` in its group,
    or without a valid filter after it (Mosquitto and EMQX read 3.1.1 filters this way).
    """
    if not topic_filter.startswith(SHARE_PREFIX):
        return None
    group, slash, inner = topic_filter[len(SHARE_PREFIX) :].partition("/")
    if not group or "+" in group or "#" in group or not slash or not subscribable(inner):
        raise ValueError(f"invalid shared subscription '{topic_filter}'")
    return group, inner


def subscribable(topic_filter: str) -> bool:
    """A valid filter that is not a `$SYS` one (those are for monitoring users: `sys_filter`)."""
    return valid_filter(topic_filter) and not is_sys(topic_filter)


def is_sys(topic_filter: str) -> bool:
    """A filter of the broker's `$SYS` topics."""
    return topic_filter.split("/", 1)[0] == "$SYS"


def sys_filter(topic_filter: str) -> bool:
    """A valid `$SYS` filter (granted to users tagged monitoring or administrator only)."""
    return is_sys(topic_filter) and valid_filter(topic_filter)


@lru_cache(maxsize=4096)
def to_routing_key(topic: str) -> str:
    """Publishers repeat a few topics: the mapping is cached (str.translate is slow)."""
    return topic.translate(_SWAP)


def to_topic(routing_key: str) -> str:
    return routing_key.translate(_SWAP)


def to_pattern(topic_filter: str) -> str:
    """The AMQP binding pattern of a (valid) filter."""
    return ".".join(
        "*" if level == "+" else level.replace(".", "/") for level in topic_filter.split("/")
    )


@lru_cache(maxsize=65536)
def filter_matches(topic_filter: str, topic: str) -> bool:
    """MQTT matching, including: a filter starting with a wildcard never matches `$` topics."""
    if topic[:1] == "$" and topic_filter[:1] in ("+", "#"):
        return False
    levels = topic.split("/")
    wanted = topic_filter.split("/")
    for i, level in enumerate(wanted):
        if level == "#":
            return True
        if i >= len(levels) or (level != "+" and level != levels[i]):
            return False
    return len(wanted) == len(levels)
