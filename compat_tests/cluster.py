"""A 3-node broker set on loopback for tests: real processes, links through proxies.

Each member reaches each other member through its own LinkProxy (compat_tests/netproxy.py), so
a test can cut one node off from the others while clients still reach it. Members are plain
BrokerProcess objects (kill -9, SIGSTOP, restart from an empty data dir...).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

from compat_tests.conftest import BrokerProcess, free_port
from compat_tests.netproxy import ProxyMesh

SECRET = "compat-tests-cluster-secret"
#: Raft's clock in these tests: elections after 0.5-1 s without a leader.
CONFIG = """
cluster_tick_ms = 50
cluster_election_ticks = 10
cluster_node_down_ms = 3000
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

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> Cluster:
        for node in self.nodes.values():
            node.launch()
        for node in self.nodes.values():
            node.wait_ready(timeout)
        return self

    def stop(self) -> None:
        for node in self.nodes.values():
            if node.running:
                _resume(node)
                node.stop()
        self.mesh.close()

    def kill9(self, n: int) -> None:
        _resume(self.nodes[n])
        self.nodes[n].kill9()

    def restart(self, n: int, empty: bool = False, timeout: float = 60.0) -> None:
        node = self.nodes[n]
        if node.running:
            node.kill9()
        if empty:
            shutil.rmtree(node.data_dir, ignore_errors=True)
        node.start(timeout)

    def pause(self, n: int) -> None:
        os.kill(self.nodes[n].proc.pid, signal.SIGSTOP)

    def resume(self, n: int) -> None:
        _resume(self.nodes[n])

    def isolate(self, n: int) -> None:
        self.mesh.isolate(n)

    def heal(self) -> None:
        self.mesh.heal_all()

    # -- looking at it -----------------------------------------------------------------

    def status(self, n: int) -> dict[str, Any] | None:
        node = self.nodes[n]
        if not node.running:
            return None
        res = node.cli("cluster", "status", "--json", check=False, timeout=10)
        if res.returncode != 0:
            return None
        return json.loads(res.stdout)

    def leader(self, timeout: float = 30.0, among: list[int] | None = None) -> int:
        """The node that the running members (or `among`) agree leads."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ids = among or [n for n in self.ids if self.nodes[n].running]
            seen = {n: self.status(n) for n in ids}
            leaders = {s["leader_id"] for s in seen.values() if s is not None}
            if len(leaders) == 1:
                leader = leaders.pop()
                if leader in ids and all(s is not None for s in seen.values()):
                    return leader
            time.sleep(0.1)
        raise AssertionError(f"no agreed leader within {timeout} s: {seen}")

    def followers(self, leader: int) -> list[int]:
        return [n for n in self.ids if n != leader]


def _resume(node: BrokerProcess) -> None:
    if node.running:
        os.kill(node.proc.pid, signal.SIGCONT)
