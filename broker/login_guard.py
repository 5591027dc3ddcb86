"""Refused logins: logged without flooding the log, and slowed per source address.

An address's first refusal is answered at once, its second after 0.1 s, and each further one
after twice as long as the one before, up to MAX_DELAY, until the address has not failed for
FORGET_AFTER. Good logins and other addresses are not slowed (holding good logins too would hide
the answer from a guesser who gives up early, but delays every client behind a shared address
and runs into MQTT keepalives). The connection's transport holds its output by a timer: nothing
sleeps on the event loop.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

FIRST_DELAY = 0.1
MAX_DELAY = 2.0
#: a source's failures are forgotten this long after its last one, s
FORGET_AFTER = 60.0
#: at most one log line per source per this many seconds; the refusals between are counted
LOG_INTERVAL = 10.0
#: sources remembered at most (the least recently failing are forgotten first)
MAX_SOURCES = 10_000


@dataclass
class _Source:
    failures: int = 0
    last_failure: float = 0.0
    last_logged: float | None = None
    unlogged: int = 0


class LoginGuard:
    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._sources: OrderedDict[str, _Source] = OrderedDict()

    def delay(self, source: str) -> float:
        """How long to hold the refusal just counted against `source`, s."""
        entry = self._sources.get(source)
        if entry is None or entry.failures < 2:
            return 0.0
        return min(MAX_DELAY, FIRST_DELAY * 2.0 ** (entry.failures - 2))

    def refused(self, user: str, source: str, reason: str) -> None:
        """Count a refused login against `source`, and log it unless it logged one lately."""
        now = self._clock()
        entry = self._sources.pop(source, None) or _Source()
        if now - entry.last_failure > FORGET_AFTER:
            entry.failures = 0
        self._sources[source] = entry
        if len(self._sources) > MAX_SOURCES:
            self._sources.popitem(last=False)
        entry.failures += 1
        entry.last_failure = now
        if entry.last_logged is not None and now - entry.last_logged < LOG_INTERVAL:
            entry.unlogged += 1
            return
        more = f" ({entry.unlogged} more refused from this address)" if entry.unlogged else ""
        log.warning("login refused for user '%s' from %s: %s%s", user, source or "?", reason, more)
        entry.last_logged = now
        entry.unlogged = 0
