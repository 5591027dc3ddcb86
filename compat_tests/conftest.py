"""Fixtures for the AMQP compatibility suite.

By default every test runs against our own broker (``python -m broker serve``)
started in a temporary data dir on a free port.  If ``BROKER_AMQP_URL`` is set
(e.g. ``amqp://guest:guest@127.0.0.1:5672/%2F``) the tests run against that
external broker instead (used to validate the assertions against RabbitMQ), and
tests marked ``own_broker`` are skipped.
"""

from __future__ import annotations

import os
import pathlib
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.parse

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
EXTERNAL_URL = os.environ.get("BROKER_AMQP_URL")
DEFAULT_TIMEOUT = 60  # seconds per test unless the test says otherwise
START_TIMEOUT = float(os.environ.get("BROKER_START_TIMEOUT", "30"))


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "own_broker: needs our own broker process (kill -9, restart, admin CLI, "
        "runtime limits, non-RabbitMQ features); skipped when BROKER_AMQP_URL is set",
    )
    config.addinivalue_line("markers", "slow: takes more than ~20 s")


def pytest_collection_modifyitems(config, items):
    here = pathlib.Path(__file__).resolve().parent
    skip_own = pytest.mark.skip(reason="needs our own broker process (BROKER_AMQP_URL is set)")
    for item in items:
        if here not in pathlib.Path(str(item.fspath)).resolve().parents:
            continue
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(DEFAULT_TIMEOUT))
        if EXTERNAL_URL and item.get_closest_marker("own_broker") is not None:
            item.add_marker(skip_own)


#: Listening ports for test brokers come from below Linux's ephemeral range (32768-60999):
#: a port the kernel picked with bind(0) may be handed to a client's outgoing connection
#: before the broker binds it.
_PORTS = range(20000, 32000)
_random = random.Random()  # its own: tests that seed the global one do not repeat ports


def free_port(host: str = "127.0.0.1") -> int:
    for _ in range(200):
        port = _random.choice(_PORTS)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {_PORTS}")


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class _BrokerBase:
    host: str
    port: int
    vhost: str = "/"
    user: str = "guest"
    password: str = "guest"
    external: bool = False

    @property
    def amqp_url(self) -> str:
        return self.url()

    def url(
        self,
        vhost: str | None = None,
        user: str | None = None,
        password: str | None = None,
        query: str = "",
    ) -> str:
        vhost = self.vhost if vhost is None else vhost
        user = self.user if user is None else user
        password = self.password if password is None else password
        u = "amqp://%s:%s@%s:%d/%s" % (
            urllib.parse.quote(user, safe=""),
            urllib.parse.quote(password, safe=""),
            self.host,
            self.port,
            urllib.parse.quote(vhost, safe=""),
        )
        return u + ("?" + query if query else "")

    def params(self, **kw):
        """pika.ConnectionParameters for this broker (keyword overrides allowed)."""
        import pika

        creds = pika.PlainCredentials(kw.pop("user", self.user), kw.pop("password", self.password))
        kw.setdefault("virtual_host", self.vhost)
        kw.setdefault("connection_attempts", 1)
        kw.setdefault("socket_timeout", 10)
        kw.setdefault("blocked_connection_timeout", None)
        kw.setdefault("credentials", creds)
        return pika.ConnectionParameters(host=self.host, port=self.port, **kw)


class ExternalBroker(_BrokerBase):
    """A broker we do not control (e.g. RabbitMQ); lifecycle operations skip."""

    external = True

    def __init__(self, url: str):
        p = urllib.parse.urlparse(url)
        self.host = p.hostname or "127.0.0.1"
        self.port = p.port or 5672
        self.user = urllib.parse.unquote(p.username or "guest")
        self.password = urllib.parse.unquote(p.password or "guest")
        path = p.path[1:] if p.path.startswith("/") else p.path
        self.vhost = urllib.parse.unquote(path) if path else "/"
        self.data_dir = None

    def _skip(self, *a, **kw):
        pytest.skip("operation needs our own broker process")

    start = stop = kill9 = restart = cli = _skip


class BrokerProcess(_BrokerBase):
    """Our broker as a child process: ``python -m broker serve ...``."""

    def __init__(self, data_dir, extra_args=(), host="127.0.0.1", port=None, log_path=None):
        self.host = host
        self.port = port or free_port(host)
        # Every listener gets a free port, so brokers of parallel tests never collide, and
        # each its own: a port nothing listens on yet may come up twice (or be `port`, given
        # for a restart), and the broker could not bind the second listener.
        taken = {self.port}

        def pick() -> int:
            while (chosen := free_port(host)) in taken:
                pass
            taken.add(chosen)
            return chosen

        self.mqtt_port = pick()
        self.mqtt_ws_port = pick()
        self.http_port = pick()
        self.https_port = pick()
        self.amqps_port = pick()
        self.mqtts_port = pick()
        self.mqtt_wss_port = pick()
        self.management_port = pick()
        self.metrics_port = pick()
        self.data_dir = pathlib.Path(data_dir)
        self.extra_args = [str(a) for a in extra_args]
        self.log_path = (
            pathlib.Path(log_path)
            if log_path
            else self.data_dir.parent / (self.data_dir.name + ".log")
        )
        self.proc: subprocess.Popen | None = None
        self._log = None

    # -- lifecycle -------------------------------------------------------
    def command(self):
        return [
            sys.executable,
            "-m",
            "broker",
            "serve",
            "--data-dir",
            str(self.data_dir),
            "--host",
            self.host,
            "--amqp-port",
            str(self.port),
            "--mqtt-port",
            str(self.mqtt_port),
            "--mqtt-ws-port",
            str(self.mqtt_ws_port),
            "--http-port",
            str(self.http_port),
            "--https-port",
            str(self.https_port),
            "--amqps-port",
            str(self.amqps_port),
            "--mqtts-port",
            str(self.mqtts_port),
            "--mqtt-wss-port",
            str(self.mqtt_wss_port),
            "--management-port",
            str(self.management_port),
            "--metrics-port",
            str(self.metrics_port),
            *self.extra_args,
        ]

    def start(self, timeout: float = START_TIMEOUT):
        self.launch()
        return self.wait_ready(timeout)

    def launch(self):
        """Start the process without waiting for it (a cluster's members start together)."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop/kill9)
        self.proc = subprocess.Popen(
            self.command(),
            cwd=str(REPO_ROOT),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def wait_ready(self, timeout: float = START_TIMEOUT):
        """Wait until the AMQP port opens (the node's last step of start-up)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    "broker exited with %s during start-up:\n%s"
                    % (self.proc.returncode, self.log_tail())
                )
            if port_open(self.host, self.port):
                return self
            time.sleep(0.05)
        self.kill9()
        raise RuntimeError(
            "broker did not open port %d within %.0fs:\n%s" % (self.port, timeout, self.log_tail())
        )

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""

    def _wait_port_closed(self, timeout: float = 10):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and port_open(self.host, self.port):
            time.sleep(0.05)

    def kill9(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self._close_log()

    def stop(self, timeout: float = 15) -> int | None:
        """SIGTERM and wait; returns the exit code (SIGKILL after ``timeout``)."""
        rc = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired as e:
                self.proc.kill()
                self.proc.wait(timeout=10)
                raise RuntimeError("broker did not exit within %.0fs of SIGTERM" % timeout) from e
        elif self.proc is not None:
            rc = self.proc.returncode
        self._close_log()
        return rc

    def restart(self, kill: bool = False, timeout: float = START_TIMEOUT):
        """Stop (SIGTERM, or SIGKILL with kill=True) and start again on the same port/data dir."""
        if kill:
            self.kill9()
        else:
            self.stop()
        self._wait_port_closed()
        return self.start(timeout=timeout)

    def _close_log(self):
        if self._log is not None:
            self._log.close()
            self._log = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- admin CLI -------------------------------------------------------
    def cli(self, *args, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        cmd = [
            sys.executable,
            "-m",
            "broker",
            *[str(a) for a in args],
            "--data-dir",
            str(self.data_dir),
        ]
        res = subprocess.run(
            cmd,
            cwd=str(REPO_ROOT),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        if check and res.returncode != 0:
            raise AssertionError(
                "%s failed (%d):\nstdout: %s\nstderr: %s"
                % (" ".join(map(str, args)), res.returncode, res.stdout, res.stderr)
            )
        return res


def run_cli(data_dir, *args, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run an admin command against an arbitrary data dir (no BrokerProcess needed)."""
    cmd = [sys.executable, "-m", "broker", *[str(a) for a in args], "--data-dir", str(data_dir)]
    return subprocess.run(
        cmd,
        cwd=str(REPO_ROOT),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    """A broker shared by the fast tests (external if BROKER_AMQP_URL is set)."""
    if EXTERNAL_URL:
        yield ExternalBroker(EXTERNAL_URL)
        return
    base = tmp_path_factory.mktemp("shared-broker")
    b = BrokerProcess(base / "data")
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def broker_factory(tmp_path, request):
    """Factory: ``broker_factory(*extra_serve_args)`` -> a freshly started BrokerProcess.

    With BROKER_AMQP_URL set it returns the external broker (tests that need a
    specific server configuration or process control must be marked own_broker).
    """
    started: list[BrokerProcess] = []

    def make(*extra_args, start: bool = True):
        if EXTERNAL_URL:
            return ExternalBroker(EXTERNAL_URL)
        b = BrokerProcess(tmp_path / ("data%d" % len(started)), extra_args)
        started.append(b)
        if start:
            b.start()
        return b

    yield make
    for b in started:
        try:
            b.stop()
        except Exception:
            b.kill9()
        if getattr(request.node, "rep_call_failed", False):
            sys.stderr.write("broker log (%s):\n%s\n" % (b.log_path, b.log_tail()))


@pytest.fixture
def fresh_broker(broker_factory):
    """A broker of our own, started with default options, just for this test."""
    return broker_factory()


@pytest.fixture
def cluster(tmp_path, request):
    """A 3-node set of our own (compat_tests/cluster.py), its logs shown if the test fails."""
    from compat_tests.cluster import running_cluster  # it builds on this module

    with running_cluster(
        tmp_path / "cluster", lambda: getattr(request.node, "rep_call_failed", False)
    ) as cl:
        yield cl


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    rep = yield
    if rep.when == "call" and rep.failed:
        item.rep_call_failed = True
        shared = getattr(item, "funcargs", {}).get("broker")
        if isinstance(shared, BrokerProcess):
            rep.sections.append(("shared broker log (tail)", shared.log_tail(3000)))
    return rep


def _stub_mailcap():
    """Tencent's CMQ SDK imports the stdlib's mailcap (deprecated, gone in Python 3.13) and
    never uses it: import it quietly, or stand a stub in, before any test module imports cmq."""
    import types
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import mailcap  # noqa: F401
        except ImportError:
            sys.modules["mailcap"] = types.SimpleNamespace(subst=None)


_stub_mailcap()


@pytest.fixture(scope="session")
def cmq_broker(tmp_path_factory):
    """Our broker for the CMQ HTTP API tests: short push retries, and an access key."""
    if EXTERNAL_URL:
        pytest.skip("the CMQ API tests need our own broker")
    from compat_tests.cmq_helpers import CmqBroker, write_config

    base = tmp_path_factory.mktemp("cmq-broker")
    b = BrokerProcess(base / "data", ["--config", write_config(base)])
    b.start()
    try:
        yield CmqBroker.attach(b)
    finally:
        b.stop()


@pytest.fixture
def clients(broker):
    """A factory of connected paho (MQTT) clients, all closed when the test ends."""
    from compat_tests.mqtt_helpers import Paho

    made = []

    def make(**kw):
        client = Paho(broker, **kw)
        client.connect()
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()
