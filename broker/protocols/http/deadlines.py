"""The header deadline of an HTTP connection, around aiohttp's own protocol.

aiohttp closes a connection only when it has sent no whole request head for
`keepalive_timeout` since it opened or had its last reply: one timer for idle keep-alive
and slow headers alike. Here a request head must also be whole within `header_timeout` of
its first byte (or, for a connection's first request, of the connection's opening), so the
idle timeout can be long without giving a client sending a byte a second as long.

The wrapper sees every byte go in; the request handler says when a head was whole
(`head_received`) and when its reply is done (`replied`). A head's clock is a start time, not
a timer of its own: one timer per connection stays armed while heads come in time and, when
it fires, closes the connection or waits out what is left of the current head's deadline.
Arming and cancelling a timer for every request cost more than reading its head.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class HeaderDeadline(asyncio.Protocol):
    """Forwards everything to `inner` (an aiohttp RequestHandler), closing late heads."""

    def __init__(
        self,
        inner: asyncio.Protocol,
        header_timeout: float,
        watched: dict[asyncio.BaseTransport, HeaderDeadline],
    ) -> None:
        self.inner = inner
        self.header_timeout = header_timeout
        self._watched = watched
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.BaseTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        #: when the head being waited for began (loop time), None while no head is due
        self._head_started: float | None = None
        #: a request is being handled: bytes now belong to it or are pipelined
        self._busy = False
        #: bytes came in while busy: the next head may have begun
        self._pending = False

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._watched[transport] = self
        self._start_head()
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._busy:
            self._pending = True
        elif self._head_started is None:
            self._start_head()
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_started = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None:
            self._watched.pop(self._transport, None)
        self.inner.connection_lost(exc)

    # -- told by the request handler --------------------------------------------------------

    def head_received(self) -> None:
        self._head_started = None
        self._busy, self._pending = True, False

    def replied(self) -> None:
        """The reply is written: bytes that came meanwhile start the next head's clock."""
        self._busy = False
        if self._pending:
            self._pending = False
            self._start_head()

    # -- the clock --------------------------------------------------------------------------

    def _start_head(self) -> None:
        self._head_started = self._loop.time()
        if self._timer is None:
            self._timer = self._loop.call_later(self.header_timeout, self._expired)

    def _expired(self) -> None:
        self._timer = None
        started = self._head_started
        if started is None or self._busy or self._transport is None:
            return  # no head is due: the next one to begin arms the timer again
        left = started + self.header_timeout - self._loop.time()
        if left > 0:
            self._timer = self._loop.call_later(left, self._expired)
        else:
            self._transport.close()


def watch(
    factory: Callable[[], asyncio.Protocol],
    header_timeout: float,
    watched: dict[asyncio.BaseTransport, HeaderDeadline],
) -> Callable[[], HeaderDeadline]:
    """A protocol factory for `loop.create_server`: aiohttp's `factory`, each under a deadline."""
    return lambda: HeaderDeadline(factory(), header_timeout, watched)
