"""Subscription filters as topic-exchange bindings, so the core does all the routing.

A routing-key topic (filterType 2) publishes with the message's routingKey and binds each
subscription with its bindingKeys (`*`/`#` as in AMQP). A tag topic (filterType 1) publishes
with a routing key made of the message's tags, one word each, and binds a subscription with
`#.<tag>.#` per filter tag: a message reaches it when they share a tag. A subscription without
filters binds `#` and gets everything. AMQP and MQTT publishes to the exchange route the same way.
"""

from __future__ import annotations

from urllib.parse import quote

from broker.protocols.http import errors
from broker.protocols.http.params import Params

TAG_FILTER = 1
ROUTING_KEY_FILTER = 2
MAX_TAGS = 5
MAX_TAG_LENGTH = 16
MAX_KEY_BYTES = 64
MAX_KEY_DOTS = 15
MAX_BINDING_KEYS = 5
EVERYTHING = "#"


def _word(tag: str) -> str:
    """A tag as one routing-key word: dots and wildcards percent-encoded."""
    return quote(tag, safe="").replace(".", "%2E")


def tags_routing_key(tags: list[str]) -> str:
    """The routing key a tag topic publishes with (tags sorted, so equal sets match alike)."""
    return ".".join(sorted({_word(tag) for tag in tags}))


def tag_patterns(tags: list[str]) -> list[str]:
    if not tags:
        return [EVERYTHING]
    return [f"#.{word}.#" for word in sorted({_word(tag) for tag in tags})]


def key_patterns(binding_keys: list[str]) -> list[str]:
    return sorted(set(binding_keys)) if binding_keys else [EVERYTHING]


def tag_param(params: Params, name: str) -> list[str]:
    """The `msgTag.n` or `filterTag.n` of a request: at most 5, each 1-16 characters."""
    values = params.array(name, MAX_TAGS)
    for tag in values:
        if not tag or len(tag) > MAX_TAG_LENGTH:
            raise errors.out_of_range(name, f"1-{MAX_TAG_LENGTH} characters")
    return values


def check_routing_key(name: str, key: str) -> str:
    if len(key.encode()) > MAX_KEY_BYTES or key.count(".") > MAX_KEY_DOTS:
        raise errors.out_of_range(name, f"at most {MAX_KEY_BYTES} bytes and {MAX_KEY_DOTS} dots")
    return key


def binding_key_param(params: Params) -> list[str]:
    keys = params.array("bindingKey", MAX_BINDING_KEYS)
    for key in keys:
        if not key:
            raise errors.out_of_range("bindingKey", "empty")
        check_routing_key("bindingKey", key)
    return keys
