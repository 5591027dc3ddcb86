"""Fuzzing on raw sockets: seeded mutations of a recorded valid session, one connection per case.

A case is the bytes of a valid session (a list of frames) after one to three mutations. Each
case is sent on its own connection; the broker's reply is read until the broker closes, or until
the client half-closes after a short quiet spell and the broker then must close within a
deadline (a broker that keeps a connection open after its peer's EOF is hung).

Reproducing: the seed is random unless ``FUZZ_SEED`` is set, and every failure message starts
with it; ``FUZZ_CASE=<index>`` runs only that case of the seed. ``FUZZ_CASES`` sets the number
of cases per test (20 times the CI count by default under ``-m slow``).
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import random
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pika

from compat_tests.conftest import BrokerProcess

SEED = int(os.environ.get("FUZZ_SEED") or random.SystemRandom().randrange(2**32))
#: parallel connections: most cases end in a few milliseconds, the rest wait out QUIET
WORKERS = 24
#: how long a case waits for the broker to act on its bytes before half-closing
QUIET = 0.15
#: how long the broker may take to close a connection after its peer's EOF
DEADLINE = 10.0
SLOW_FACTOR = 20


def case_count(ci: int, slow: bool = False) -> int:
    """Cases for one test: FUZZ_CASES if set, else `ci` (times SLOW_FACTOR for slow runs)."""
    env = os.environ.get("FUZZ_CASES")
    if env:
        return int(env)
    return ci * SLOW_FACTOR if slow else ci


def time_limit(cases: int) -> float:
    """Seconds a test of `cases` cases may take (pytest-timeout), with room for a busy host."""
    return 120 + cases / 20


# -- mutations ---------------------------------------------------------------------------------


def _bit_flip(rng: random.Random, frame: bytes) -> bytes:
    if not frame:
        return bytes([rng.randrange(256)])
    data = bytearray(frame)
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(data))
        data[i] ^= 1 << rng.randrange(8)
    return bytes(data)


def _truncate(rng: random.Random, frame: bytes) -> bytes:
    return frame[: rng.randrange(len(frame))] if frame else frame


def _corrupt_field(rng: random.Random, frame: bytes) -> bytes:
    """Overwrite 1, 2 or 4 bytes (a length, a count, an id) with an extreme or random value."""
    width = rng.choice((1, 2, 4))
    if len(frame) < width:
        return _bit_flip(rng, frame)
    i = rng.randrange(len(frame) - width + 1)
    top = (1 << (8 * width)) - 1
    value = rng.choice((0, 1, top, top >> 1, (top >> 1) + 1, rng.randrange(top + 1)))
    return frame[:i] + value.to_bytes(width, "big") + frame[i + width :]


def _random_bytes(rng: random.Random, frame: bytes) -> bytes:
    junk = rng.randbytes(rng.choice((1, 2, 7, 8, 16, rng.randrange(512))))
    i = rng.randrange(len(frame) + 1)
    return frame[:i] + junk + frame[i:]


_FRAME_OPS: dict[str, Callable[[random.Random, bytes], bytes]] = {
    "flip": _bit_flip,
    "truncate": _truncate,
    "field": _corrupt_field,
    "insert": _random_bytes,
}


@dataclass
class Case:
    index: int
    data: bytes
    ops: list[str]


@dataclass
class Mutator:
    """Seeded cases from recorded sessions (each a list of frames, in the order they are sent).

    Each case has its own generator, seeded by the run's seed and its index, so a case is the
    same whatever came before it (HTTP sessions differ in length from run to run)."""

    sessions: list[list[bytes]]
    seed: int

    def case(self, index: int) -> Case:
        rng = random.Random(f"{self.seed}/{index}")
        frames = list(rng.choice(self.sessions))
        ops = []
        for _ in range(rng.choice((1, 1, 1, 2, 3))):
            op, frames = self._mutate(rng, frames)
            ops.append(op)
        return Case(index, b"".join(frames), ops)

    def _mutate(self, rng: random.Random, frames: list[bytes]) -> tuple[str, list[bytes]]:
        kind = rng.choice(("frame",) * 6 + ("duplicate", "drop", "swap", "splice", "noise"))
        if not frames:
            kind = "noise"
        if kind == "frame":
            i = rng.randrange(len(frames))
            name = rng.choice(list(_FRAME_OPS))
            mutated = _FRAME_OPS[name](rng, frames[i])
            # a truncated frame ends the session: what follows would only re-align by luck
            tail = [] if name == "truncate" and rng.random() < 0.5 else frames[i + 1 :]
            return f"{name}@{i}", [*frames[:i], mutated, *tail]
        if kind == "duplicate":
            i = rng.randrange(len(frames))
            copies = [frames[i]] * rng.randint(1, 3)
            return f"dup@{i}", [*frames[: i + 1], *copies, *frames[i + 1 :]]
        if kind == "drop":
            i = rng.randrange(len(frames))
            return f"drop@{i}", frames[:i] + frames[i + 1 :]
        if kind == "swap":
            i, j = rng.randrange(len(frames)), rng.randrange(len(frames))
            frames[i], frames[j] = frames[j], frames[i]
            return f"swap@{i},{j}", frames
        if kind == "splice":
            other = rng.choice(self.sessions)
            i, j = rng.randrange(len(frames) + 1), rng.randrange(len(other) + 1)
            return f"splice@{i},{j}", frames[:i] + other[j:]
        return "noise", [rng.randbytes(rng.randrange(1, 1024))]


# -- running cases -----------------------------------------------------------------------------


class Hang(AssertionError):
    """The broker kept a connection open after the client's EOF."""


@dataclass
class Exchange:
    """What the broker sent on a case's connection, and whether it closed before our EOF."""

    received: bytes
    closed_first: bool


def exchange(host: str, port: int, data: bytes, expect_close: bool = False) -> Exchange:
    """Send `data` on a new connection and read until the broker closes (see module doc).

    With `expect_close` the broker gets the whole deadline to close by itself."""
    received = bytearray()
    with socket.create_connection((host, port), timeout=DEADLINE) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with contextlib.suppress(OSError):
            sock.sendall(data)
        if _read_until_eof(sock, received, DEADLINE if expect_close else QUIET):
            return Exchange(bytes(received), True)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
        if not _read_until_eof(sock, received, DEADLINE):
            raise Hang(f"connection still open {DEADLINE:.0f}s after the client's EOF")
        return Exchange(bytes(received), False)


def _read_until_eof(sock: socket.socket, into: bytearray, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return False
        except OSError:  # reset: the broker closed with our bytes unread
            return True
        if not chunk:
            return True
        into += chunk


@dataclass
class Report:
    """Outcomes of a fuzz run, by kind, and its failures."""

    outcomes: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def check(self) -> None:
        if self.failures:
            shown = "\n".join(self.failures[:10])
            raise AssertionError(
                f"FUZZ_SEED={SEED}: {len(self.failures)} failing cases "
                f"(outcomes {dict(self.outcomes)}):\n{shown}"
            )


def run_cases(
    mutator: Mutator, count: int, judge: Callable[[Case], str], workers: int = WORKERS
) -> Report:
    """Build `count` cases and judge each, in parallel.

    `judge` sends the case and returns the outcome's name, or raises (AssertionError for a
    wrong answer; anything else, such as an unreadable reply, fails the case as well)."""
    only = os.environ.get("FUZZ_CASE")
    cases = [mutator.case(i) for i in ([int(only)] if only else range(count))]
    report = Report()

    def one(case: Case) -> None:
        try:
            outcome = judge(case)
        except Exception as exc:
            with report.lock:
                report.failures.append(
                    f"case {case.index} {case.ops}: {exc!r}\n  sent {case.data[:300]!r}"
                )
            return
        with report.lock:
            report.outcomes[outcome] += 1

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, cases))
    return report


# -- the broker, the well-behaved client and the broker's log ----------------------------------


@contextlib.contextmanager
def fuzzed_broker(
    base: pathlib.Path, args: Sequence[object] = (), tracebacks_fail: bool = True
) -> Iterator[BrokerProcess]:
    """A broker of its own for a fuzz test; once stopped, its log must hold no traceback
    (client input must never cause one), or with `tracebacks_fail=False` they are counted."""
    broker = BrokerProcess(base / "data", args)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
    traces = tracebacks(broker.log_path.read_bytes())
    kinds = Counter(t.kind for t in traces)
    print(f"FUZZ_SEED={SEED}: {len(traces)} tracebacks in the broker log: {dict(kinds)}")
    if tracebacks_fail:
        shown = "\n".join(f"{t.record}\n{t.text}" for t in traces[:3])
        assert not traces, f"FUZZ_SEED={SEED}: {len(traces)} tracebacks:\n{shown}"


def fuzz_alongside_client(
    broker: BrokerProcess, recorded: list[list[bytes]], judge: Callable[[Case], str], count: int
) -> None:
    """Run `count` cases mutated from the `recorded` sessions while a SteadyClient works on
    the same broker; then the broker must be up, the client complete and every case judged."""
    steady = SteadyClient(broker, f"steady-{SEED}")
    try:
        report = run_cases(Mutator(recorded, SEED), count, judge)
        assert broker.running, f"FUZZ_SEED={SEED}: broker died:\n{broker.log_tail()}"
        steady.finish()
    finally:
        steady.stop.set()
    print(
        f"FUZZ_SEED={SEED} outcomes: {dict(report.outcomes)}; "
        f"the pika client sent and got {len(steady.sent)} messages"
    )
    report.check()


class SteadyClient:
    """A pika publisher with confirms and a consumer, on their own connections and threads,
    working for as long as the fuzzing goes on; `finish` checks that every message arrived."""

    def __init__(self, broker: BrokerProcess, queue: str, at_least: int = 100) -> None:
        self.broker = broker
        self.queue = queue
        self.at_least = at_least
        self.sent: list[bytes] = []
        self.got: set[bytes] = set()
        self.errors: list[BaseException] = []
        self.stop = threading.Event()
        with self._channel() as ch:
            ch.queue_declare(queue, durable=True)
        self.publisher = threading.Thread(target=self._guard(self._publish), daemon=True)
        self.consumer = threading.Thread(target=self._guard(self._consume), daemon=True)
        self.publisher.start()
        self.consumer.start()

    @contextlib.contextmanager
    def _channel(self) -> Iterator[pika.adapters.blocking_connection.BlockingChannel]:
        conn = pika.BlockingConnection(self.broker.params())
        try:
            yield conn.channel()
        finally:
            with contextlib.suppress(Exception):
                conn.close()

    def _guard(self, fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except BaseException as exc:  # reported by finish()
                self.errors.append(exc)

        return run

    def _publish(self) -> None:
        """Publish (each confirmed before the next) until stopped, and at least `at_least`."""
        with self._channel() as ch:
            ch.confirm_delivery()
            while not self.stop.is_set() or len(self.sent) < self.at_least:
                body = b"steady-%d" % len(self.sent)
                ch.basic_publish("", self.queue, body, pika.BasicProperties(delivery_mode=2))
                self.sent.append(body)
                ch.connection.process_data_events(time_limit=0.02)  # spread over the run

    def _consume(self) -> None:
        with self._channel() as ch:
            ch.basic_qos(prefetch_count=50)
            for method, _props, body in ch.consume(self.queue, inactivity_timeout=0.1):
                if method is not None:
                    self.got.add(body)
                    ch.basic_ack(method.delivery_tag)
                elif not self.publisher.is_alive() and self.got.issuperset(self.sent):
                    return

    def finish(self, timeout: float = 30.0) -> None:
        """Stop publishing, then wait for the consumer to have every message."""
        self.stop.set()
        self.publisher.join(timeout)
        self.consumer.join(timeout)
        assert not self.errors, f"FUZZ_SEED={SEED}: the well-behaved client failed: {self.errors!r}"
        missing = set(self.sent) - self.got
        assert not missing, f"FUZZ_SEED={SEED}: {len(missing)} confirmed messages never arrived"
        assert not self.publisher.is_alive() and not self.consumer.is_alive(), "client stuck"
        assert len(self.sent) >= self.at_least


_RECORD = re.compile(r"^\d{4}-\d\d-\d\d ")


@dataclass
class Traceback:
    record: str  # the log line that introduced it
    text: str

    @property
    def kind(self) -> str:
        """The logger's message (ids left out) and the exception's type, to count by."""
        message = re.sub(r"[0-9a-f]{8,}|\d+(\.\d+)+", "#", self.record.split(" ", 2)[-1])
        last = [line for line in self.text.splitlines() if line and not line[0].isspace()]
        return f"{message} / {last[-1].split(':')[0] if last else '?'}"


def tracebacks(log: bytes) -> list[Traceback]:
    """The tracebacks in a broker log, each with the log line that introduced it."""
    out: list[Traceback] = []
    record = ""
    for line in log.decode("utf-8", "replace").splitlines():
        if _RECORD.match(line):
            record = line
        elif line.startswith("Traceback (most recent call last):"):
            out.append(Traceback(record, line))
        elif out and out[-1].record == record:
            out[-1].text += "\n" + line
    return out
