"""Admin CLI against a running node (own broker only)."""

from __future__ import annotations

import json

import pika
import pika.exceptions
import pytest

from .conftest import run_cli
from .helpers import connection, expect_channel_close, uid, wait_until

pytestmark = pytest.mark.own_broker


def user_names(b):
    return [
        line.split("\t")[0].strip()
        for line in b.cli("users", "list").stdout.splitlines()
        if line.strip()
    ]


def test_users_add_list_delete(fresh_broker):
    b = fresh_broker
    assert "guest" in user_names(b)
    name, pw = uid("alice"), "s3cret-" + uid()
    b.cli("users", "add", name, pw)
    assert name in user_names(b)
    # a new user has no permissions yet: vhost access refused (530, like RabbitMQ)
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError):
        pika.BlockingConnection(b.params(user=name, password=pw))
    b.cli("permissions", "set", name, ".*", ".*", ".*", "--vhost", "/")
    with connection(b, user=name, password=pw) as conn:
        conn.channel().queue_declare("", exclusive=True)
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        pika.BlockingConnection(b.params(user=name, password="wrong"))
    b.cli("users", "delete", name)
    assert name not in user_names(b)
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        pika.BlockingConnection(b.params(user=name, password=pw))


def test_users_add_duplicate_and_delete_missing_fail(fresh_broker):
    # like rabbitmqctl: add_user of an existing user fails ('User "x" already exists')
    b = fresh_broker
    name = uid("bob")
    b.cli("users", "add", name, "pw")
    res = b.cli("users", "add", name, "pw", check=False)
    assert res.returncode != 0 and res.stderr.strip()
    res = b.cli("users", "delete", uid("nobody"), check=False)
    assert res.returncode != 0 and res.stderr.strip()


def test_vhosts_add_list_delete(fresh_broker):
    b = fresh_broker
    vh = uid("vh")
    b.cli("vhosts", "add", vh)
    assert vh in b.cli("vhosts", "list").stdout.split()
    assert "/" in b.cli("vhosts", "list").stdout.split()
    b.cli("permissions", "set", "guest", ".*", ".*", ".*", "--vhost", vh)
    q = uid("q")
    with connection(b, virtual_host=vh) as conn:
        ch = conn.channel()
        ch.queue_declare(q)
        ch.confirm_delivery()
        ch.basic_publish("", q, b"in-vh")
    # vhosts are isolated
    with connection(b) as conn:
        expect_channel_close(lambda: conn.channel().queue_declare(q, passive=True), 404)
    out = b.cli("queues", "list", "--vhost", vh).stdout
    assert any(line.split("\t")[0] == q for line in out.splitlines())
    b.cli("vhosts", "delete", vh)
    assert vh not in b.cli("vhosts", "list").stdout.split()
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError):
        pika.BlockingConnection(b.params(virtual_host=vh))


def test_vhost_delete_closes_its_connections(fresh_broker):
    b = fresh_broker
    vh = uid("vh")
    b.cli("vhosts", "add", vh)
    b.cli("permissions", "set", "guest", ".*", ".*", ".*", "--vhost", vh)
    conn = pika.BlockingConnection(b.params(virtual_host=vh))
    try:
        b.cli("vhosts", "delete", vh)
        # RabbitMQ: 320 "CONNECTION_FORCED - vhost 'x' is deleted"
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as ei:
            for _ in range(200):
                conn.process_data_events(time_limit=0.05)
        assert ei.value.reply_code == 320
    finally:
        if conn.is_open:
            conn.close()


def test_user_delete_closes_its_connections(fresh_broker):
    b = fresh_broker
    name, pw = uid("doomed"), "pw"
    b.cli("users", "add", name, pw)
    b.cli("permissions", "set", name, ".*", ".*", ".*", "--vhost", "/")
    conn = pika.BlockingConnection(b.params(user=name, password=pw))
    try:
        b.cli("users", "delete", name)
        # RabbitMQ: 320 "CONNECTION_FORCED - user 'x' is deleted"
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as ei:
            for _ in range(200):
                conn.process_data_events(time_limit=0.05)
        assert ei.value.reply_code == 320
    finally:
        if conn.is_open:
            conn.close()


def test_permissions_write_denied(fresh_broker):
    b = fresh_broker
    name, pw = uid("writer"), "pw"
    b.cli("users", "add", name, pw)
    # may configure/read anything, write nowhere
    b.cli("permissions", "set", name, ".*", "^$", ".*", "--vhost", "/")
    with connection(b, user=name, password=pw) as conn:
        ch = conn.channel()
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.basic_publish("", q, b"denied")
        e = expect_channel_close(lambda: ch.queue_declare(q, passive=True), 403)
        # RabbitMQ: "ACCESS_REFUSED - access to exchange 'amq.default' in vhost '/' refused
        # for user 'writer'" (the default exchange is subject to write permission too)
        assert e.reply_text.startswith("ACCESS_REFUSED")


def test_permissions_configure_and_read_denied(fresh_broker):
    b = fresh_broker
    name, pw = uid("limited"), "pw"
    b.cli("users", "add", name, pw)
    b.cli("permissions", "set", name, "^allowed-.*", ".*", "^allowed-.*", "--vhost", "/")
    other_q = uid("forbidden")
    with connection(b) as conn:
        conn.channel().queue_declare(other_q)
    with connection(b, user=name, password=pw) as conn:
        ch = conn.channel()
        ch.queue_declare("allowed-" + uid(), auto_delete=True)
        expect_channel_close(lambda: ch.queue_declare(uid("nope")), 403)
        ch = conn.channel()
        expect_channel_close(lambda: ch.basic_get(other_q), 403)


def test_queues_list(fresh_broker):
    b = fresh_broker
    q = uid("listed")
    with connection(b) as conn:
        ch = conn.channel()
        ch.queue_declare(q)
        ch.confirm_delivery()
        for _ in range(3):
            ch.basic_publish("", q, b"x")
        cch = conn.channel()
        cch.basic_qos(prefetch_count=1)
        cch.basic_consume(q, lambda *a: None)

        def row():
            for item in json.loads(b.cli("queues", "list", "--format", "json").stdout):
                if item["name"] == q and item["consumers"] == 1:
                    return item
            return None

        item = wait_until(row, message="queue listed with a consumer")
        assert (item["messages"], item["messages_ready"], item["messages_unacknowledged"]) == (
            3,
            2,
            1,
        )
        header, *lines = b.cli("queues", "list", "--vhost", "/").stdout.splitlines()
        assert header.split("\t")[:3] == ["name", "messages", "consumers"]
        assert [line.split("\t")[:3] for line in lines if line.startswith(q)] == [[q, "3", "1"]]


def test_cli_fails_without_running_node(tmp_path):
    empty = tmp_path / "no-node-here"
    empty.mkdir()
    for args in (("users", "list"), ("vhosts", "list"), ("queues", "list", "--vhost", "/")):
        res = run_cli(empty, *args)
        assert res.returncode != 0, args
        assert res.stderr.strip(), "expected an error message on stderr"


def test_cli_fails_after_node_stopped(fresh_broker):
    b = fresh_broker
    b.cli("users", "list")
    b.stop()
    res = b.cli("users", "list", check=False)
    assert res.returncode != 0 and res.stderr.strip()
