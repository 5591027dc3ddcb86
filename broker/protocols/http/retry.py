"""Push retry schedules for HTTP subscriptions (CMQ's notifyStrategy).

BACKOFF_RETRY: 3 retries, each after a random 10-20 units, then the message is dropped for
that subscriber. EXPONENTIAL_DECAY_RETRY: 176 retries after 1, 2, 4 ... 512 units, then every
512 units (about one day with 1 s units). A unit is a second unless configured shorter.
"""

from __future__ import annotations

import random

BACKOFF = "BACKOFF_RETRY"
EXPONENTIAL = "EXPONENTIAL_DECAY_RETRY"
STRATEGIES = (BACKOFF, EXPONENTIAL)
_ATTEMPTS = {BACKOFF: 1 + 3, EXPONENTIAL: 1 + 176}
_EXPONENT_CAP = 512


def attempts_allowed(strategy: str) -> int:
    """Pushes tried in all, the first one included."""
    return _ATTEMPTS[strategy]


def retry_delay_ms(strategy: str, attempt: int, unit_ms: int, rng: random.Random) -> int:
    """How long to wait after failed push number `attempt` (1 for the first)."""
    if strategy == BACKOFF:
        return int(rng.uniform(10, 20) * unit_ms)
    return min(2 ** (attempt - 1), _EXPONENT_CAP) * unit_ms
