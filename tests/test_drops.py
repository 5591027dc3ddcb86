"""The node's account of dropped messages: counted by reason, logged at once the first time
for a source and reason, then once per interval with what accumulated."""

from __future__ import annotations

import logging

import pytest

from broker.core.model import Dropped
from broker.drops import DropLedger


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def lines(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "broker.drops"]


def test_counts_by_reason_and_dead_letter_failures() -> None:
    ledger = DropLedger(Clock())
    ledger.note(Dropped("/", "q", "expired", 3))
    ledger.note(Dropped("/", "q", "expired", 1, "its dead-letter exchange 'x' does not exist"))
    ledger.note(Dropped("/", "t/s", "push-given-up", 1, "pushing to http://h/ failed"))
    assert ledger.counts["dropped_expired"] == 4
    assert ledger.counts["dead_letter_failed"] == 1  # a push is not dead-lettered
    assert ledger.counts["dropped_push_given_up"] == 1
    assert ledger.counts["dropped_purged"] == 0  # every reason is shown, even at 0


def test_a_flood_is_logged_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "broker.drops")
    clock = Clock()
    ledger = DropLedger(clock, interval=10.0)
    for _ in range(5):
        ledger.note(Dropped("/", "q", "maxlen"))
    assert lines(caplog) == [(logging.WARNING, "'q' in vhost '/' dropped 1 message (maxlen)")]
    clock.now += 5
    ledger.flush()  # the interval has not passed
    assert len(lines(caplog)) == 1
    clock.now += 5
    ledger.flush()
    assert lines(caplog)[1] == (logging.WARNING, "'q' in vhost '/' dropped 4 messages (maxlen)")
    clock.now += 10
    ledger.flush()  # nothing since: the source is forgotten, its next drop logged at once
    ledger.note(Dropped("/", "q", "maxlen"))
    assert len(lines(caplog)) == 3


def test_what_the_user_asked_for_is_info_and_failures_warn(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "broker.drops")
    ledger = DropLedger(Clock())
    ledger.note(Dropped("/", "q", "purged", 2))
    ledger.note(Dropped("/", "r", "expired", 1, "its dead-letter exchange 'x' does not exist"))
    ledger.note(Dropped("/", "", "unroutable"))
    assert lines(caplog) == [
        (logging.INFO, "'q' in vhost '/' dropped 2 messages (purged)"),
        (
            logging.WARNING,
            "'r' in vhost '/' dropped 1 message (expired: its dead-letter exchange 'x' does "
            "not exist)",
        ),
        (logging.INFO, "the default exchange in vhost '/' dropped 1 message (unroutable)"),
    ]


def test_what_is_pending_is_logged_when_the_node_stops(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "broker.drops")
    ledger = DropLedger(Clock())
    ledger.note(Dropped("/", "q", "rejected"))
    ledger.note(Dropped("/", "q", "rejected"))
    ledger.flush(everything=True)
    assert lines(caplog)[-1] == (logging.INFO, "'q' in vhost '/' dropped 1 message (rejected)")
