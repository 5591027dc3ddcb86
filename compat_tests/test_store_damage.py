"""A damaged store is refused with one line, or repaired on request with a report; never
served with confirmed messages silently missing or garbled (issue 9).

Messages are published with pika in confirm mode to a durable queue; the broker is killed
with kill -9, and the write-ahead log of its log database (`data/log/*.log`, where the
messages are until LevelDB turns it into a table) is damaged before the restart.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import re
import shutil
import stat
import subprocess
import tempfile

import pika
import pytest

from .conftest import REPO_ROOT, BrokerProcess

pytestmark = pytest.mark.own_broker

QUEUE = "damaged-store"
N = 2000
#: `broker serve`'s exit code for a data dir it cannot use (cli.EXIT_STORE_UNUSABLE)
EXIT_STORE_UNUSABLE = 3
REFUSED = "broker: refusing to start: "


def body(i: int) -> bytes:
    """Message i: its number, then 1000 bytes that depend on it (a flipped byte shows)."""
    return b"%06d:" % i + (hashlib.sha256(b"%d" % i).digest() * 32)[:1000]


def publish_confirmed(broker: BrokerProcess, n: int) -> None:
    conn = pika.BlockingConnection(broker.params())
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare(QUEUE, durable=True)
        for i in range(n):
            # With confirms on, pika returns once the broker has acked (raises on a nack).
            ch.basic_publish("", QUEUE, body(i), pika.BasicProperties(delivery_mode=2))
    finally:
        conn.close()


def consume_all(broker: BrokerProcess) -> list[int]:
    """The numbers of the messages in the queue, each body checked intact."""
    conn = pika.BlockingConnection(broker.params())
    try:
        ch = conn.channel()
        expected = ch.queue_declare(QUEUE, durable=True, passive=True).method.message_count
        got = []
        for _ in range(expected):
            method, _, raw = ch.basic_get(QUEUE, auto_ack=True)
            assert method is not None
            i = int(raw[:6])
            assert raw == body(i), f"message {i} came back garbled"
            got.append(i)
        assert ch.basic_get(QUEUE, auto_ack=True)[0] is None
        return got
    finally:
        conn.close()


def wal(data_dir: pathlib.Path) -> pathlib.Path:
    """The log database's write-ahead log holding the messages (the largest .log)."""
    return max((data_dir / "log").glob("*.log"), key=lambda p: p.stat().st_size)


def flip_middle(path: pathlib.Path) -> None:
    size = path.stat().st_size
    with path.open("r+b") as f:
        f.seek(size // 2)
        chunk = f.read(16)
        f.seek(size // 2)
        f.write(bytes(b ^ 0xFF for b in chunk))


def run_serve(
    broker: BrokerProcess, *extra: str, bound: bool = False
) -> subprocess.CompletedProcess:
    """`broker serve` as `broker` would start it (with `extra` flags), expected to exit at
    once. `bound`: bound by file permissions even as root (without the capability to
    override them)."""
    try:
        return subprocess.run(
            (permission_bound() if bound else []) + broker.command() + list(extra),
            cwd=str(REPO_ROOT),
            capture_output=True,
            text=True,
            timeout=20,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the broker started on this data dir instead of refusing it")


def assert_refused(result: subprocess.CompletedProcess, *needles: str) -> str:
    """One line saying why and what to do, a non-zero exit, no traceback."""
    out = result.stdout + result.stderr
    assert result.returncode == EXIT_STORE_UNUSABLE, out
    assert "Traceback" not in out
    lines = [line for line in out.splitlines() if line.startswith(REFUSED)]
    assert len(lines) == 1, out
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def damaged(tmp_path: pathlib.Path, damage) -> tuple[BrokerProcess, pathlib.Path]:
    """A broker whose N confirmed messages were followed by kill -9 and `damage(wal)`."""
    broker = BrokerProcess(tmp_path / "data")
    broker.start()
    try:
        publish_confirmed(broker, N)
    finally:
        broker.kill9()
    log_file = wal(broker.data_dir)
    damage(log_file)
    return broker, log_file


def repaired(broker: BrokerProcess) -> tuple[BrokerProcess, str]:
    """The same data dir started with --repair; its log, once it is ready."""
    fixer = BrokerProcess(broker.data_dir, ["--repair"], port=broker.port)
    fixer.start()
    return fixer, fixer.log_tail(20000)


def check_repair(broker: BrokerProcess) -> None:
    """--repair starts, says what is lost; the messages left are intact and a plain start
    afterwards needs no repair."""
    fixer, log = repaired(broker)
    try:
        assert "repair done" in log
        found = re.search(r"(\d+) log entries are missing .*?, (\d+) of them at or below", log)
        if found:
            confirmed_lost = int(found.group(2))
        else:  # LevelDB dropped no more than an empty sync record: then nothing is lost
            assert "nothing is missing" in log, log
            confirmed_lost = 0
        left = consume_all(fixer)
        # Each publish is one log entry: the report counts the lost ones, and at most the
        # few entries the publisher's connection made around them (its closing).
        lost = N - len(left)
        assert lost <= confirmed_lost <= lost + 3
        assert set(left) <= set(range(N))
        fixer.cli("status")  # serving; a publish now is kept too
        publish_confirmed(fixer, 1)
    finally:
        assert fixer.stop() == 0
    plain = BrokerProcess(broker.data_dir, port=broker.port)
    plain.start()
    try:
        assert consume_all(plain) == [0]
    finally:
        plain.stop()


def test_flipped_bytes_in_the_log_refuse_the_start_then_repair_reports_the_loss(tmp_path):
    broker, log_file = damaged(tmp_path, flip_middle)
    line = assert_refused(run_serve(broker), log_file.name, "--repair", "Corruption")
    assert str(broker.data_dir / "log") in line
    # Refused again: the refusal changed nothing.
    assert_refused(run_serve(broker), log_file.name)
    check_repair(broker)


def test_a_truncated_log_refuses_the_start_then_repair_reports_the_loss(tmp_path):
    broker, log_file = damaged(tmp_path, lambda p: os.truncate(p, p.stat().st_size // 2))
    line = assert_refused(run_serve(broker), log_file.name, "--repair", "confirmed to clients")
    assert re.search(r"log entries \d+-\d+ are missing", line), line
    check_repair(broker)


def test_an_undamaged_store_after_kill_9_starts_with_everything(tmp_path):
    broker = BrokerProcess(tmp_path / "data")
    broker.start()
    try:
        publish_confirmed(broker, 200)
    finally:
        broker.kill9()
    broker.start()
    try:
        assert sorted(consume_all(broker)) == list(range(200))
    finally:
        broker.stop()


def test_a_cluster_member_with_a_truncated_log_is_refused_and_rejoins_empty(cluster):
    """A member must not rejoin as if it had the entries it acknowledged and lost."""
    leader = cluster.leader()
    publish_confirmed(cluster.nodes[leader], 300)
    member = cluster.followers(leader)[0]
    cluster.wait_caught_up(member)
    cluster.kill9(member)
    node = cluster.nodes[member]
    log_file = wal(node.data_dir)
    os.truncate(log_file, log_file.stat().st_size // 2)

    line = assert_refused(run_serve(node), log_file.name, "confirmed to clients")
    assert re.search(r"log entries \d+-\d+ are missing", line), line
    assert_refused(run_serve(node, "--repair"), "move its data dir away")

    cluster.restart(member, empty=True)  # the remedy: it is sent the leader's snapshot
    cluster.wait_caught_up(member)
    assert sorted(consume_all(node)) == list(range(300))


# -- data dirs that cannot be used ------------------------------------------------------------


@pytest.fixture
def open_tmp():
    """A temporary dir any user may enter (pytest's own are private to their owner)."""
    path = pathlib.Path(tempfile.mkdtemp(prefix="broker-datadir-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def permission_bound() -> list[str]:
    """A command prefix that makes root respect file permissions, as any user does."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: permissions cannot be enforced")
    caps = "-dac_override,-dac_read_search"
    return ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}"]


def test_a_read_only_data_dir_gives_one_line(open_tmp):
    broker = BrokerProcess(open_tmp / "data")
    broker.start()
    broker.stop()
    for path in [broker.data_dir, *broker.data_dir.rglob("*")]:
        mode = path.stat().st_mode
        path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    assert_refused(run_serve(broker, bound=True), str(broker.data_dir), "denied")


def test_an_unwritable_parent_gives_one_line(open_tmp):
    parent = open_tmp / "parent"
    parent.mkdir(mode=0o555)
    broker = BrokerProcess(parent / "data")
    assert_refused(run_serve(broker, bound=True), str(broker.data_dir), "denied")


def test_a_data_dir_in_use_gives_one_line(tmp_path):
    broker = BrokerProcess(tmp_path / "data")
    broker.start()
    try:
        second = run_serve(broker)
    finally:
        broker.stop()
    assert_refused(second, str(broker.data_dir), "another broker is using this data dir")


def test_a_parent_that_is_a_file_gives_one_line(open_tmp):
    (open_tmp / "parent").write_bytes(b"not a directory")
    broker = BrokerProcess(open_tmp / "parent" / "data")
    assert_refused(run_serve(broker), str(broker.data_dir), "Not a directory")
