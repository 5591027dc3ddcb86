"""Who waits for a queue to gain messages: long-polling receives and the HTTP pushers.

The node calls `notify` for each MessagesAvailable effect (a publish to a queue with no ready
message, a delayed message coming due, a visibility timeout running out, a rewind, the queue's
deletion); every waiter of that queue wakes and tries to receive again. Register before
receiving, so a message that lands in between still wakes: a receive that finds nothing leaves
the queue with no ready message, so the next one to arrive is announced.
"""

from __future__ import annotations

import asyncio


class QueueWaiters:
    def __init__(self) -> None:
        self._waiting: dict[tuple[str, str], set[asyncio.Future[None]]] = {}

    def register(self, vhost: str, queue: str) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault((vhost, queue), set()).add(fut)
        return fut

    def unregister(self, vhost: str, queue: str, fut: asyncio.Future[None]) -> None:
        key = (vhost, queue)
        waiting = self._waiting.get(key)
        if waiting is not None:
            waiting.discard(fut)
            if not waiting:
                del self._waiting[key]
        if not fut.done():
            fut.cancel()

    def notify(self, vhost: str, queue: str) -> None:
        for fut in self._waiting.pop((vhost, queue), ()):
            if not fut.done():
                fut.set_result(None)

    def wake_all(self) -> None:
        """Wake everyone (shutdown): each goes back to its loop and finds it must stop."""
        for key in list(self._waiting):
            vhost, queue = key
            self.notify(vhost, queue)
