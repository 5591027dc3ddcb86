"""The pusher's account of pushes given up: counted per subscription, logged at a limited rate."""

from __future__ import annotations

import asyncio
import logging
from typing import cast

import pytest

from broker.protocols.http import pusher
from broker.protocols.http.pusher import PushManager
from broker.protocols.http.service import CmqService

KEY = ("/", "orders", "mailer")
URL = "http://example.invalid/hook"


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == pusher.__name__]


def test_dropped_pushes_are_logged_once_per_interval(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pusher, "DROP_LOG_INTERVAL", 0.05)
    caplog.set_level(logging.WARNING, pusher.__name__)

    async def scenario() -> None:
        manager = PushManager(cast(CmqService, object()))  # counting needs no service
        for _ in range(3):
            manager._count_dropped(KEY, URL)
        assert len(lines(caplog)) == 1
        assert "gave up 1 message(s)" in lines(caplog)[0]
        deadline = asyncio.get_running_loop().time() + 5
        while len(lines(caplog)) < 2 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        assert "gave up 2 message(s)" in lines(caplog)[1]
        assert "(3 since the node started)" in lines(caplog)[1]
        manager._count_dropped(KEY, URL)
        await manager.close()  # what is pending is logged, not lost

    asyncio.run(scenario())
    first, *_, last = lines(caplog)
    assert all(word in first for word in ("mailer", "orders", URL))
    assert "gave up 1 message(s)" in last and "(4 since the node started)" in last
