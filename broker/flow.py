"""Credit flow: publishers that fed a congested queue wait until it drains.

A queue with consumers that fall behind is congested once its ready messages pass its flow
limit (the core decides: `MessageQueue.congested`, reported in the publish's reply). A
publisher told so holds back (an MQTT connection withholds its PUBACKs, so a client with a
bounded in-flight window stops sending) and registers here; it goes on once every queue it
waits for has room again. Slowing publishers keeps the queue below its length limit, where
acknowledged messages would otherwise be dropped or refused.

Waiters are kept per queue, so the check after each applied batch costs one look per
congested queue, however many publishers wait for it.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

QueueKey = tuple[str, str]
#: whether a (vhost, queue) has room again (gone queues have)
HasRoom = Callable[[str, str], bool]


class RoomWaiters:
    def __init__(self) -> None:
        self._waiting: dict[QueueKey, list[Callable[[], None]]] = {}

    def __bool__(self) -> bool:
        return bool(self._waiting)

    def __len__(self) -> int:
        return sum(len(callbacks) for callbacks in self._waiting.values())

    def wait(self, queues: list[QueueKey], callback: Callable[[], None], has_room: HasRoom) -> None:
        """Run `callback` once every queue of `queues` has room (at once if they have)."""
        for position, key in enumerate(queues):
            if not has_room(*key):
                # Then the queues after it (none left: the callback runs).
                rest = partial(self.wait, queues[position + 1 :], callback, has_room)
                self._waiting.setdefault(key, []).append(rest)
                return
        callback()

    def check(self, has_room: HasRoom) -> None:
        """Wake the waiters of the queues that have room now."""
        drained = [key for key in self._waiting if has_room(*key)]
        for key in drained:
            for callback in self._waiting.pop(key):
                callback()
