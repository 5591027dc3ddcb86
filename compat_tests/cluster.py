"""A 3-node broker set on loopback for tests: real processes, links through proxies.

Each member reaches each other member through its own LinkProxy (compat_tests/netproxy.py), so
a test can cut one node off from the others while clients still reach it. Members are plain
BrokerProcess objects (kill -9, SIGSTOP, restart from an empty data dir...).

`status(n)` asks node n's admin socket directly (what `broker cluster status --json` prints,
without starting a Python process per question), so the waits below can poll every few
milliseconds: `leader()` (the running members agree), `wait_new_leader(old)` (a member other
than `old` leads; when), `wait_caught_up(n)`. A paused (SIGSTOPped) member is left out of
them until it is resumed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from compat_tests.conftest import BrokerProcess, free_port
from compat_tests.netproxy import ProxyMesh

T = TypeVar("T")

SECRET = "compat-tests-cluster-secret"
#: Raft's clock in these tests: elections after 0.5-1 s without a leader.
CONFIG = """
cluster_tick_ms = 50
cluster_election_ticks = 10
cluster_node_down_ms = 3000
# a short log behind snapshots: followers that fall behind get snapshots (tested that way)
cluster_log_retain = 100
"""


class Cluster:
    def __init__(self, base: Path, size: int = 3, extra_args: tuple[str, ...] = ()) -> None:
        self.base = base
        self.ids = list(range(1, size + 1))
        self.cluster_ports = {n: free_port() for n in self.ids}
        self.mesh = ProxyMesh(self.cluster_ports)
        config = base / "cluster.toml"
        base.mkdir(parents=True, exist_ok=True)
        config.write_text(CONFIG)
        self.nodes: dict[int, BrokerProcess] = {}
        for n in self.ids:
            book = self.mesh.address_book(n)
            members = {
                m: ("127.0.0.1", self.cluster_ports[n]) if m == n else book[m] for m in self.ids
            }
            spec = ",".join(f"{m}={h}:{p}" for m, (h, p) in sorted(members.items()))
            args = [
                "--config",
                str(config),
                "--node-id",
                str(n),
                "--cluster",
                spec,
                "--cluster-port",
                str(self.cluster_ports[n]),
                "--cluster-secret",
                SECRET,
                *extra_args,
            ]
            self.nodes[n] = BrokerProcess(base / f"node{n}", extra_args=args)
        self._distinct_ports()
        #: members stopped with SIGSTOP (left out of the waits until resumed)
        self.paused: set[int] = set()

    _PORT_ATTRS = (
        "port",
        "mqtt_port",
        "mqtt_ws_port",
        "http_port",
        "https_port",
        "amqps_port",
        "mqtts_port",
        "mqtt_wss_port",
        "management_port",
        "metrics_port",
    )

    def _distinct_ports(self) -> None:
        """free_port() checks each port alone: two of the 18 picked for a cluster may be
        the same one. Pick again until none is used twice."""
        taken = set(self.cluster_ports.values())
        for node in self.nodes.values():
            for attr in self._PORT_ATTRS:
                port = getattr(node, attr)
                while port in taken:
                    port = free_port()
                setattr(node, attr, port)
                taken.add(port)

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> Cluster:
        for node in self.nodes.values():
            node.launch()
        for node in self.nodes.values():
            node.wait_ready(timeout)
        return self

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM to every member at once, then wait for each; the mesh closes after.
        A member still running after `timeout` is killed and RuntimeError raised (the mesh
        left open, as before: `close()` is the teardown that always finishes)."""
        running = [n for n, node in self.nodes.items() if node.running]
        for n in running:
            self.resume(n)
            assert self.nodes[n].proc is not None
            self.nodes[n].proc.send_signal(signal.SIGTERM)
        stuck = []
        for n in running:
            try:
                self.nodes[n].stop(timeout)
            except RuntimeError:
                stuck.append(n)
        if stuck:
            raise RuntimeError(f"node(s) {stuck} did not exit within {timeout:.0f} s of SIGTERM")
        self.mesh.close()

    def close(self) -> list[str]:
        """Teardown that always finishes: stop, kill what does not stop, close the mesh.
        Returns what went wrong (a node that would not stop is worth a report)."""
        problems = []
        try:
            self.stop()
        except Exception as exc:
            problems.append(repr(exc))
            for node in self.nodes.values():
                with contextlib.suppress(Exception):
                    _resume(node)
                    node.kill9()
            self.paused.clear()
            with contextlib.suppress(Exception):
                self.mesh.close()
        return problems

    def kill9(self, n: int) -> None:
        self.resume(n)
        self.nodes[n].kill9()

    def restart(self, n: int, empty: bool = False, timeout: float = 60.0) -> None:
        node = self.nodes[n]
        if node.running:
            self.kill9(n)
        if empty:
            shutil.rmtree(node.data_dir, ignore_errors=True)
        node.start(timeout)

    def pause(self, n: int) -> None:
        proc = self.nodes[n].proc
        assert proc is not None and self.nodes[n].running, f"node {n} is not running"
        os.kill(proc.pid, signal.SIGSTOP)
        self.paused.add(n)

    def resume(self, n: int) -> None:
        _resume(self.nodes[n])
        self.paused.discard(n)

    def isolate(self, n: int) -> None:
        self.mesh.isolate(n)

    def heal(self) -> None:
        self.mesh.heal_all()

    # -- looking at it -----------------------------------------------------------------

    def live(self) -> list[int]:
        """The members running and not paused."""
        return [n for n in self.ids if self.nodes[n].running and n not in self.paused]

    def status(self, n: int, timeout: float = 2.0) -> dict[str, Any] | None:
        """Node n's `cluster status` from its admin socket; None if it does not answer."""
        node = self.nodes[n]
        if not node.running or n in self.paused:
            return None
        try:
            return control(node.data_dir, "cluster.status", timeout=timeout)
        except (OSError, ValueError, RuntimeError):
            return None

    def status_cli(self, n: int) -> dict[str, Any]:
        """The same through the command line, as an operator runs it."""
        res = self.nodes[n].cli("cluster", "status", "--json", timeout=30)
        return json.loads(res.stdout)

    def leader(self, timeout: float = 30.0, among: list[int] | None = None) -> int:
        """The node that the running members (or `among`) agree leads."""
        seen: dict[int, Any] = {}

        def agreed() -> int | None:
            nonlocal seen
            ids = among or self.live()
            seen = {n: self.status(n) for n in ids}
            leaders = {s["leader_id"] for s in seen.values() if s is not None}
            if len(leaders) == 1 and all(s is not None for s in seen.values()):
                leader = leaders.pop()
                if leader in ids:
                    return int(leader)
            return None

        try:
            return wait_for(agreed, timeout, "an agreed leader", interval=0.02)
        except AssertionError:
            raise AssertionError(f"no agreed leader within {timeout} s: {seen}") from None

    def wait_new_leader(self, old: int | None, timeout: float = 30.0) -> tuple[int, float]:
        """A member other than `old` says it leads: (that member, time.monotonic() then)."""

        def found() -> int | None:
            for n in self.live():
                if n == old:
                    continue
                s = self.status(n, timeout=0.5)
                if s is not None and s["role"] == "leader":
                    return n
            return None

        leader = wait_for(found, timeout, f"a leader other than {old}", interval=0.01)
        return leader, time.monotonic()

    def wait_caught_up(self, n: int, timeout: float = 60.0) -> dict[str, Any]:
        """Node n has applied everything the leader had committed when this was called."""
        leader = self.leader(timeout)
        target = self._status_of(leader)["commit_index"]

        def caught_up() -> dict[str, Any] | None:
            s = self.status(n)
            return s if s is not None and s["applied_index"] >= target else None

        return wait_for(caught_up, timeout, f"node {n} applying up to {target}", interval=0.05)

    def _status_of(self, n: int) -> dict[str, Any]:
        return wait_for(lambda: self.status(n), 10.0, f"node {n}'s status")

    def followers(self, leader: int) -> list[int]:
        return [n for n in self.ids if n != leader]

    def urls(self) -> list[str]:
        """Every member's AMQP URL, in member order."""
        return [self.nodes[n].amqp_url for n in self.ids]

    def log(self, n: int) -> str:
        try:
            return self.nodes[n].log_path.read_text("utf-8", "replace")
        except OSError:
            return ""

    def logs(self, tail: int = 6000) -> str:
        """Every member's log tail, for a failure report."""
        parts = []
        for n, node in self.nodes.items():
            parts.append(f"---- node {n} log ({node.log_path}) ----\n{node.log_tail(tail)}")
        return "\n".join(parts)


@contextlib.contextmanager
def running_cluster(base: Path, report: Callable[[], bool] = lambda: False) -> Iterator[Cluster]:
    """A started cluster, closed whatever happens; its logs go to stderr when `report()`
    says so at the end (the test failed)."""
    cl = Cluster(base)
    try:
        cl.start()
        yield cl
    finally:
        problems = cl.close()
        if report() or problems:
            sys.stderr.write(f"cluster close: {problems}\n{cl.logs()}\n")


def wait_for(
    predicate: Callable[[], T | None],
    timeout: float = 15.0,
    what: str = "condition",
    interval: float = 0.02,
) -> T:
    """Poll `predicate` until it returns something true (returned), or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def control(
    data_dir: Path, op: str, args: dict[str, Any] | None = None, timeout: float = 2.0
) -> Any:
    """One request to a node's admin socket (broker/control.py's protocol), connected through
    /proc/self/fd so that the path stays short and the process's directory is not changed
    (other threads of the test run meanwhile)."""
    fd = os.open(data_dir, os.O_PATH)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(f"/proc/self/fd/{fd}/control.sock")
            sock.sendall(json.dumps({"op": op, "args": args or {}}).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    finally:
        os.close(fd)
    reply = json.loads(data)
    if not reply.get("ok"):
        raise RuntimeError(reply.get("error", "unknown error"))
    return reply.get("result")


def _resume(node: BrokerProcess) -> None:
    if node.running:
        os.kill(node.proc.pid, signal.SIGCONT)
