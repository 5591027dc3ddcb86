"""The node's gateway for unit tests: the real gateway and committer over a disk in memory.

Adapters under test talk to the same `LocalGateway` a node runs, on the same `Committer`; only
the disk is a dict and the writes happen when the test says so. `run()` writes and applies
until nothing is left, so a test feeds bytes, runs, and reads what came out. In an asyncio
test, `auto=True` runs it at the end of each loop turn instead, as the node's driver would.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from broker.core import commands as c
from broker.core.auth import hash_password
from broker.core.errors import BrokerError
from broker.core.state import StateMachine
from broker.local_gateway import LocalGateway
from broker.store.applier import Done
from broker.store.committer import Committer

NODE = 1


class MemoryCommitPath:
    def __init__(
        self,
        state: StateMachine | None = None,
        auto: bool = False,
        clock: Callable[[], int] | None = None,
    ) -> None:
        self.committer = Committer(state or StateMachine())
        self.disk: dict[bytes, bytes] = {}
        self.on_effects: Callable[[list[Any]], None] = lambda effects: None
        #: the time proposals are stamped with (ms), unless a clock is given
        self.time = 1_000_000
        self.clock = clock
        self.auto = auto
        self._scheduled = False
        #: every command proposed, in log order
        self.log: list[c.Command] = []
        #: set to an exception to make the next write fail
        self.fail_next_write: BaseException | None = None

    @property
    def state(self) -> StateMachine:
        return self.committer.state

    def now_ms(self) -> int:
        return self.clock() if self.clock is not None else self.time

    def submit(self, command: c.Command, done: Done | None = None, durable: bool = True) -> None:
        self.log.append(command)
        self.committer.propose(command, self.now_ms(), done, durable)
        self._wake()

    def read_done(self) -> None:
        """Commands are applied as the loop runs here: nothing to hurry."""

    def after(self, callback: Callable[[], None]) -> None:
        self.committer.barrier(lambda reply, error: callback() if error is None else None)
        self._wake()

    def call(self, command: c.Command) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def done(reply: Any, error: BrokerError | None) -> None:
            if not fut.done():
                if error is not None:
                    fut.set_exception(error)
                else:
                    fut.set_result(reply)

        self.submit(command, done)
        return fut

    def _wake(self) -> None:
        if self.auto and not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.run)

    def run(self) -> None:
        """Write, apply and release until nothing is left to do."""
        self._scheduled = False
        committer = self.committer
        while True:
            while self._release():
                pass
            write = committer.next_write()
            if write is None:
                return
            if self.fail_next_write is not None:
                exc, self.fail_next_write = self.fail_next_write, None
                committer.write_failed(exc)
                continue
            for key, value in write.ops:
                if value is None:
                    self.disk.pop(key, None)
                else:
                    self.disk[key] = value
            committer.written(write)

    def _release(self) -> bool:
        releases = self.committer.take_releases()
        for done, reply, error, effects in releases:
            if effects:
                self.on_effects(effects)
            if done is not None:
                done(reply, error)
        return bool(releases)


def memory_gateway(
    auto: bool = False, users: bool = True, clock: Callable[[], int] | None = None
) -> tuple[LocalGateway, MemoryCommitPath]:
    """A gateway for node 1 with vhost "/" and the user guest/guest allowed everything
    (committed already, unless `auto`: then once the loop has turned)."""
    commit = MemoryCommitPath(auto=auto, clock=clock)
    gateway = LocalGateway(NODE)
    gateway.attach(commit)
    commit.on_effects = gateway.on_effects
    commit.submit(c.DeclareVhost("/"))
    if users:
        commit.submit(c.PutUser("guest", hash_password("guest", b"salt"), ("administrator",)))
        commit.submit(c.SetPermissions("guest", "/", ".*", ".*", ".*"))
    if not auto:
        commit.run()
    return gateway, commit
