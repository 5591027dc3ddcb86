"""Counting connections against the node's and a source address's limits."""

from __future__ import annotations

import logging

import pytest

from broker.admission import (
    LOG_INTERVAL,
    REFUSALS_IN_FLIGHT,
    Admission,
    default_max_connections,
)


def NO_ABORT() -> None:
    raise AssertionError("dropped")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_node_limit_counts_admitted_connections_until_they_close() -> None:
    admission = Admission(2, 0, Clock())
    assert admission.admit((1, 1), "a", NO_ABORT) is None
    assert admission.admit((1, 2), "b", NO_ABORT) is None
    assert admission.admit((1, 3), "c", NO_ABORT) == "node connection limit (2) is reached"
    admission.released((1, 3))  # a refused connection frees no slot
    assert admission.admit((1, 4), "c", NO_ABORT) is not None
    admission.released((1, 1))
    assert admission.admit((1, 5), "c", NO_ABORT) is None


def test_the_address_limit_is_per_address() -> None:
    admission = Admission(0, 1, Clock())
    assert admission.admit((1, 1), "a", NO_ABORT) is None
    refusal = admission.admit((1, 2), "a", NO_ABORT)
    assert refusal == "source address connection limit (1) is reached"
    assert admission.admit((1, 3), "b", NO_ABORT) is None
    admission.released((1, 1))
    assert admission.admit((1, 4), "a", NO_ABORT) is None


def test_past_the_refusals_in_flight_the_oldest_refused_connection_is_dropped() -> None:
    admission = Admission(1, 0, Clock())
    admission.admit((1, 0), "a", NO_ABORT)
    dropped: list[int] = []
    for n in range(1, REFUSALS_IN_FLIGHT + 3):
        admission.admit((1, n), "a", lambda n=n: dropped.append(n))
    assert dropped == [1, 2]
    assert len(admission.refused) == REFUSALS_IN_FLIGHT
    admission.released((1, 3))  # a refused connection that closes is forgotten
    admission.admit((1, 100), "a", NO_ABORT)
    assert dropped == [1, 2]


def test_refusals_are_logged_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    admission = Admission(1, 0, clock)
    admission.admit((1, 0), "a", NO_ABORT)

    def ignore() -> None:
        """Refused connections past the bound are dropped: nothing to do here."""

    with caplog.at_level(logging.WARNING, "broker.admission"):
        for n in range(1, 101):
            admission.admit((1, n), "a", ignore)
        clock.now = LOG_INTERVAL
        admission.admit((1, 101), "a", ignore)
    assert [r.getMessage() for r in caplog.records] == [
        "refused a connection from a: node connection limit (1) is reached",
        "refused a connection from a: node connection limit (1) is reached "
        "(99 more refused since the last report)",
    ]
    assert admission.refused_total == 101


def test_the_default_limit_keeps_a_reserve_of_descriptors() -> None:
    assert default_max_connections(20000) == 20000 - 256
    assert default_max_connections(256) == 128
    assert default_max_connections(0) == 0
