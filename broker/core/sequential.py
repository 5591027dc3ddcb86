"""Sequential queues: strict order for push consumers and pull receivers alike.

A sequential queue (argument `x-sequential`, CMQ attribute `sequential`) hands out at most one
message at a time per message group: the next message of a group is deliverable only once the
one in flight is settled (acked, deleted, dead-lettered) or comes back (requeued, or its
visibility timeout ran out), and one that comes back goes first. The group is the message's
`x-group-id` header, as SQS FIFO's MessageGroupId; messages without one form one group, so a
queue whose publishers name no group has one message in flight at a time.

What is in flight is derived state: rebuilt from the queue's unacked and pulled messages when
a queue turns sequential or is restored, never stored. Order within a group holds because a
group's messages are delivered one after another in queue order, and a message that comes
back is the oldest of its group, ahead of every never-delivered one.

When the head's group is in flight, a later message of another group may go first: the search
looks at the first `WINDOW` entries of the in-memory ready index only (and of the returned
messages), so a queue whose first `WINDOW` waiting messages all belong to groups in flight
waits for one of them to settle rather than scan a deep backlog on every delivery.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Iterable
from typing import Any

from broker.core.model import READY, Message

#: the message header naming a message's group
GROUP_HEADER = "x-group-id"
#: how many ready entries a delivery looks through for a group not in flight
WINDOW = 1000

Group = str | None


def group_of(msg: Message) -> Group:
    """The message's group as text (None: the queue's default group)."""
    headers = msg.properties.get("headers")
    if not headers:
        return None
    return group_text(headers.get(GROUP_HEADER))


def group_text(value: Any) -> Group:
    """A header value as a group key: AMQP may carry text as bytes, or a number."""
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return value if isinstance(value, str) else str(value)


class Sequencer:
    """Which groups of one sequential queue have a message in flight."""

    __slots__ = ("_held", "_groups")

    def __init__(self, in_flight: Iterable[Message] = ()) -> None:
        #: seq -> group of each message in flight
        self._held: dict[int, Group] = {}
        #: group -> how many of its messages are in flight (more than one only for messages
        #: delivered before the queue turned sequential)
        self._groups: dict[Group, int] = {}
        for msg in in_flight:
            self.hold(msg)

    def hold(self, msg: Message) -> None:
        """`msg` was delivered or received: its group waits for it."""
        if msg.seq in self._held:
            return
        group = group_of(msg)
        self._held[msg.seq] = group
        self._groups[group] = self._groups.get(group, 0) + 1

    def release(self, seq: int) -> None:
        """The message is settled or back in the queue (a no-op for one not in flight)."""
        if seq not in self._held:
            return
        group = self._held.pop(seq)
        left = self._groups[group] - 1
        if left:
            self._groups[group] = left
        else:
            del self._groups[group]

    def blocks(self, msg: Message) -> bool:
        """Whether `msg`'s group has a message in flight."""
        return bool(self._groups) and group_of(msg) in self._groups

    def first_free(
        self, returned: list[int], ready: deque[int], messages: dict[int, Message]
    ) -> Message | None:
        """The first ready message whose group has nothing in flight: returned messages
        (a heap by seq) first, then the ready index, each looked at up to `WINDOW` entries.
        Stale entries (messages no longer ready) are skipped, as the queue skips them."""
        groups = self._groups
        ordered_returned = heapq.nsmallest(WINDOW, returned) if returned else []
        for seq in itertools.chain(ordered_returned, itertools.islice(ready, WINDOW)):
            msg = messages.get(seq)
            if msg is not None and msg.state == READY and group_of(msg) not in groups:
                return msg
        return None


def merge_rewound(ready: deque[int], messages: dict[int, Message], rewound: list[Message]) -> None:
    """Put the rewound messages, just pushed to the front of `ready` in position order, in
    position order with the waiting messages too.

    Elsewhere every waiting message is newer than any message taken, so rewound ones simply
    go first; here a group in flight leaves older messages waiting while newer ones of other
    groups go. A restored queue orders its waiting messages by position, so this must too.
    Only the front is touched: the waiting messages older than the newest rewound one (stale
    entries met there are dropped, as they would be skipped).
    """
    front = [ready.popleft() for _ in rewound]
    last = rewound[-1].position
    taken = set(front)
    older: list[int] = []
    while ready:
        msg = messages.get(ready[0])
        waiting = msg if _waiting(msg) and ready[0] not in taken else None
        if waiting is not None and waiting.position > last:
            break
        ready.popleft()
        if waiting is not None:
            older.append(waiting.seq)
    merged = sorted(front + older, key=lambda seq: messages[seq].position)
    ready.extendleft(reversed(merged))


def _waiting(msg: Message | None) -> bool:
    """Ready and never delivered: what the ready index (not the returned heap) holds."""
    return msg is not None and msg.state == READY and msg.delivery_count == 0
