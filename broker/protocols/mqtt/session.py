"""One MQTT session's state and the durable copy of it.

A session outlives its connections when the client asks for clean session 0. Its messages
live in a core queue (`mqtt-subscription-<client id>`, bound to `amq.topic`); everything else
the protocol needs after a restart is kept as core adapter records in the group
("mqtt", client id):

- "session": {"subscriptions": {filter: granted QoS}} — its presence is "session present";
  shared subscriptions (`$share/<group>/<filter>`) are among them, under their full filter;
- "in:<id>": an inbound QoS 2 packet id whose PUBLISH went on but whose PUBREL has not come;
- "out:<id>": an outbound QoS 2 packet id released (PUBREC seen, message acked in the queue)
  whose PUBCOMP has not come, so PUBREL is sent again on reconnect.
"""

from __future__ import annotations

from collections.abc import Set
from typing import Any

from broker.core import commands as c
from broker.protocols.mqtt.topics import (
    SHARE_PREFIX,
    shared_filter,
    subscribable,
    sys_filter,
    to_pattern,
)

QUEUE_PREFIX = "mqtt-subscription-"
SHARED_QUEUE_PREFIX = "mqtt-shared-"
#: the packet ids of a session that has none in a QoS 2 exchange (most: QoS 2 is rare), shared
#: by all of them; a session gets a set of its own with its first
_NO_IDS: frozenset[int] = frozenset()


def shared_queue(group: str, topic_filter: str) -> str:
    """The core queue of one shared subscription group and filter, in a vhost: its members
    consume it (the group ends at the first `/`, so the name is unambiguous)."""
    return f"{SHARED_QUEUE_PREFIX}{group}/{topic_filter}"


class Session:
    # Slots: a node holds one per connected device.
    __slots__ = (
        "vhost",
        "client_id",
        "persistent",
        "group",
        "queue",
        "subscriptions",
        "awaiting_release",
        "awaiting_complete",
    )

    def __init__(self, vhost: str, client_id: str, persistent: bool) -> None:
        self.vhost = vhost
        self.client_id = client_id
        self.persistent = persistent
        self.group = ("mqtt", client_id)
        self.queue = QUEUE_PREFIX + client_id
        self.subscriptions: dict[str, int] = {}
        #: inbound QoS 2 packet ids between PUBLISH and PUBREL
        self.awaiting_release: Set[int] = _NO_IDS
        #: outbound QoS 2 packet ids between PUBREL and PUBCOMP
        self.awaiting_complete: Set[int] = _NO_IDS

    def restore(self, records: dict[str, Any], monitoring: bool = False) -> None:
        """The session as saved; `$SYS` filters stay only for a `monitoring` user (the
        client id may now be used by another user)."""
        saved = records.get("session", {}).get("subscriptions", {})
        # An earlier release granted invalid `$share/` filters: they are gone.
        self.subscriptions = {f: qos for f, qos in saved.items() if _still_valid(f, monitoring)}
        for name in records:
            kind, _, number = name.partition(":")
            if kind == "in":
                self.awaiting_release = _adding(self.awaiting_release, int(number))
            elif kind == "out":
                self.awaiting_complete = _adding(self.awaiting_complete, int(number))

    def patterns(self) -> set[str]:
        """The binding patterns of the session queue (shared subscriptions have their own)."""
        return {to_pattern(f) for f in self.subscriptions if not f.startswith(SHARE_PREFIX)}

    def shared(self) -> dict[str, tuple[str, str]]:
        """Shared queue -> (full filter, filter) of each shared subscription."""
        out = {}
        for full in self.subscriptions:
            parsed = shared_filter(full)
            if parsed is not None:
                out[shared_queue(*parsed)] = (full, parsed[1])
        return out

    # Each method below updates the state and returns the commands that make it durable
    # (none for a clean session, which ends with its connection).

    def save_subscriptions(self) -> list[c.Command]:
        return self._put("session", {"subscriptions": dict(self.subscriptions)})

    def received(self, packet_id: int) -> list[c.Command]:
        self.awaiting_release = _adding(self.awaiting_release, packet_id)
        return self._put(f"in:{packet_id}", True)

    def released_by_client(self, packet_id: int) -> list[c.Command]:
        _discard(self.awaiting_release, packet_id)
        return self._put(f"in:{packet_id}", None)

    def released_by_us(self, packet_id: int) -> list[c.Command]:
        self.awaiting_complete = _adding(self.awaiting_complete, packet_id)
        return self._put(f"out:{packet_id}", True)

    def completed(self, packet_id: int) -> list[c.Command]:
        _discard(self.awaiting_complete, packet_id)
        return self._put(f"out:{packet_id}", None)

    def _put(self, name: str, value: Any) -> list[c.Command]:
        if not self.persistent:
            return []
        return [c.PutRecord(self.vhost, self.group, name, value)]


def _adding(ids: Set[int], packet_id: int) -> set[int]:
    """`ids` with `packet_id` added: the shared empty one is replaced by a set of its own."""
    own = ids if isinstance(ids, set) else set(ids)
    own.add(packet_id)
    return own


def _discard(ids: Set[int], packet_id: int) -> None:
    if isinstance(ids, set):
        ids.discard(packet_id)


def _still_valid(topic_filter: str, monitoring: bool) -> bool:
    if monitoring and sys_filter(topic_filter):
        return True
    try:
        return shared_filter(topic_filter) is not None or subscribable(topic_filter)
    except ValueError:
        return False
