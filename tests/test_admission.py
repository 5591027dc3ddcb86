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


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_node_limit_counts_admitted_connections_until_they_close() -> None:
    admission = Admission(2, 0, Clock())
    assert admission.admit((1, 1), "a") is None
    assert admission.admit((1, 2), "b") is None
    assert admission.admit((1, 3), "c") == "node connection limit (2) is reached"
    admission.released((1, 3))  # a refused connection frees no slot
    assert admission.admit((1, 4), "c") is not None
    admission.released((1, 1))
    assert admission.admit((1, 5), "c") is None


def test_the_address_limit_is_per_address() -> None:
    admission = Admission(0, 1, Clock())
    assert admission.admit((1, 1), "a") is None
    assert admission.admit((1, 2), "a") == "source address connection limit (1) is reached"
    assert admission.admit((1, 3), "b") is None
    admission.released((1, 1))
    assert admission.admit((1, 4), "a") is None


def test_too_many_refused_connections_in_flight_is_an_overload() -> None:
    admission = Admission(1, 0, Clock())
    admission.admit((1, 0), "a")
    for n in range(1, REFUSALS_IN_FLIGHT + 2):
        admission.admit((1, n), "a")
    assert admission.overloaded
    admission.released((1, 1))
    assert not admission.overloaded


def test_refusals_are_logged_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    admission = Admission(1, 0, clock)
    admission.admit((1, 0), "a")
    with caplog.at_level(logging.WARNING, "broker.admission"):
        for n in range(1, 101):
            admission.admit((1, n), "a")
        clock.now = LOG_INTERVAL
        admission.admit((1, 101), "a")
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
