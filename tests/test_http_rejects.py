"""The HTTP listener's reject log: one line per source and interval, tracebacks for our bugs."""

from __future__ import annotations

import logging

import pytest
from aiohttp.http_exceptions import BadStatusLine

from broker.protocols.http.rejects import RejectLog


def test_client_faults_are_one_line_per_source_and_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    rejects = RejectLog(logging.getLogger("t.rejects"), interval_s=10, clock=lambda: now[0])
    with caplog.at_level(logging.DEBUG, "t.rejects"):
        for _ in range(100):
            rejects.exception(
                "Error handling request from %s", "1.2.3.4", exc_info=BadStatusLine("x")
            )
        rejects.exception("Unhandled exception", exc_info=ConnectionResetError())
        now[0] = 11
        rejects.rejected("1.2.3.4", "bad header")
    lines = [(r.levelno, r.getMessage(), r.exc_info) for r in caplog.records]
    assert [level for level, _, _ in lines] == [logging.WARNING] * 3
    assert all(exc_info is None for _, _, exc_info in lines)
    assert "1.2.3.4" in lines[0][1] and "unknown" in lines[1][1]
    assert "99 more from it left out" in lines[2][1]


def test_our_own_bugs_keep_their_traceback(caplog: pytest.LogCaptureFixture) -> None:
    rejects = RejectLog(logging.getLogger("t.rejects"))
    with caplog.at_level(logging.DEBUG, "t.rejects"):
        try:
            raise KeyError("bug")
        except KeyError as exc:
            rejects.exception("Error handling request from %s", "1.2.3.4", exc_info=exc)
    (record,) = caplog.records
    assert record.levelno == logging.ERROR and record.exc_info is not None
