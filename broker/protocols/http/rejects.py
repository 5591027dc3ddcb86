"""One rate-limited log line per rejected HTTP request, instead of aiohttp's tracebacks.

aiohttp logs every malformed, cut or reset request with `logger.exception`, a full traceback
at ERROR: a client could fill the log (and, through it, the disk). It is given this logger
instead. The client's faults become one WARNING line without traceback, at most one per
source address per interval (with how many were left out); anything else is our own bug
and keeps its traceback.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

#: exceptions a client causes: bad HTTP, a cut or malformed body, a dropped connection
CLIENT_FAULTS = (HttpProcessingError, RequestPayloadError, ConnectionError, asyncio.TimeoutError)
#: sources remembered; past this the table starts over (a flood from many addresses)
_MAX_SOURCES = 10_000


class RejectLog:
    """Stands in for aiohttp's server logger (`debug` and `exception` are all it calls)."""

    def __init__(
        self,
        log: logging.Logger,
        interval_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log = log
        self.interval_s = interval_s
        self.clock = clock
        #: source -> (when its last line was logged, rejections left out since)
        self._sources: dict[str, tuple[float, int]] = {}

    def debug(self, msg: str, *args: Any, **kw: Any) -> None:
        self.log.debug(msg, *args, **kw)

    def exception(self, msg: str, *args: Any, exc_info: Any = True, **kw: Any) -> None:
        exc = exc_info if isinstance(exc_info, BaseException) else None
        if not isinstance(exc, CLIENT_FAULTS):
            self.log.error(msg, *args, exc_info=exc_info, **kw)
            return
        # aiohttp names the client's address, None once the connection is gone
        source = args[0] if msg.endswith("from %s") and args else None
        self.rejected(source, f"{type(exc).__name__}: {exc}")

    def rejected(self, source: str | None, reason: str) -> None:
        """Log that a request from `source` was refused, unless its interval's line is out."""
        source = source or "unknown"
        now = self.clock()
        last, left_out = self._sources.get(source, (None, 0))
        if last is not None and now - last < self.interval_s:
            self._sources[source] = (last, left_out + 1)
            return
        if len(self._sources) >= _MAX_SOURCES:
            self._sources.clear()
        self._sources[source] = (now, 0)
        more = f" ({left_out} more from it left out)" if left_out else ""
        self.log.warning("rejected HTTP request from %s: %.200r%s", source, reason, more)
