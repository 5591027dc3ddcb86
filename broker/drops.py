"""Counting and logging the messages a node dropped (the core's Dropped effects, and pushes
an adapter gave up).

Every message that leaves a queue without reaching a consumer or a place the user chose is
counted here under `dropped_<reason>` (shown by `broker status`) and logged: at once the first
time for a source and reason, then at most once per interval with what accumulated meanwhile,
so a flood of drops costs a line per interval, not one per message.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from broker.core.model import Dropped

log = logging.getLogger("broker.drops")

LOG_INTERVAL_S = 10.0

#: reason -> whether the user asked for it (logged at INFO) or not (WARNING)
REASONS = {
    "expired": True,
    "rejected": True,
    "purged": True,
    "queue-deleted": True,
    "not-persistent": True,
    "unroutable": True,
    "maxlen": False,
    "delivery-limit": False,
    "push-given-up": False,
}
#: the reasons a message dies for, which a dead-letter target may catch
DEAD_LETTER_REASONS = {"expired", "rejected", "maxlen", "delivery-limit"}


@dataclass(slots=True)
class _Pending:
    logged_at: float
    count: int = 0
    detail: str = ""


class DropLedger:
    def __init__(self, clock: Callable[[], float], interval: float = LOG_INTERVAL_S) -> None:
        self._clock = clock
        self._interval = interval
        #: `dropped_<reason>` -> messages; `dead_letter_failed` counts those whose queue had a
        #: dead-letter target that did not take them
        self.counts: dict[str, int] = {_counter(r): 0 for r in REASONS}
        self.counts["dead_letter_failed"] = 0
        self._pending: dict[tuple[str, str, str], _Pending] = {}

    def note(self, effect: Dropped) -> None:
        name = _counter(effect.reason)
        self.counts[name] = self.counts.get(name, 0) + effect.count
        if effect.detail and effect.reason in DEAD_LETTER_REASONS:
            self.counts["dead_letter_failed"] += effect.count
        key = (effect.vhost, effect.source, effect.reason)
        pending = self._pending.get(key)
        if pending is None:
            self._pending[key] = _Pending(self._clock())
            self._log(*key, effect.count, effect.detail)
        else:
            pending.count += effect.count
            pending.detail = effect.detail or pending.detail

    def flush(self, everything: bool = False) -> None:
        """Log what accumulated for sources whose interval has passed (called periodically),
        or for all of them (`everything`: the node stops)."""
        now = self._clock()
        for key, pending in list(self._pending.items()):
            if now - pending.logged_at < self._interval and not everything:
                continue
            if pending.count:
                self._log(*key, pending.count, pending.detail)
                self._pending[key] = _Pending(now)
            else:
                del self._pending[key]

    def _log(self, vhost: str, source: str, reason: str, count: int, detail: str) -> None:
        asked_for = REASONS.get(reason, False) and not detail
        where = f"'{source}'" if source else "the default exchange"
        log.log(
            logging.INFO if asked_for else logging.WARNING,
            "%s in vhost '%s' dropped %d message%s (%s%s)",
            where,
            vhost,
            count,
            "" if count == 1 else "s",
            reason,
            f": {detail}" if detail else "",
        )


def _counter(reason: str) -> str:
    return f"dropped_{reason.replace('-', '_')}"
