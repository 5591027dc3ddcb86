"""Policies set with `broker policies ...` act on queues real clients use, without redeclaring:
length limits, message TTL, dead-lettering; they survive kill -9; bad ones are refused."""

from __future__ import annotations

import json

import pika
import pika.exceptions
import pytest

from .helpers import channel, collect, connection, get_all, message_count, uid, wait_until

pytestmark = pytest.mark.own_broker


def set_policy(b, name, pattern, definition, *options):
    return b.cli("policies", "set", name, pattern, json.dumps(definition), *options)


def listed(b):
    return json.loads(b.cli("policies", "list", "--format", "json").stdout)


def test_a_max_length_policy_limits_a_queue_a_publisher_fills(fresh_broker):
    b = fresh_broker
    queue = uid("orders")
    with channel(b) as ch:
        ch.queue_declare(queue)
        for i in range(10):
            ch.basic_publish("", queue, f"m{i}".encode())
        wait_until(lambda: message_count(b, queue) == 10, message="10 messages queued")

        set_policy(b, "limit", f"^{queue}$", {"max-length": 3}, "--apply-to", "queues")
        # at once, on the queue as it was declared (drop-head: the oldest go)
        assert message_count(b, queue) == 3
        for i in range(10, 15):
            ch.basic_publish("", queue, f"m{i}".encode())
        wait_until(lambda: message_count(b, queue) == 3, message="the limit kept")
        assert [body for _, _, body in get_all(ch, queue)] == [b"m12", b"m13", b"m14"]

        b.cli("policies", "delete", "limit")
        for i in range(5):
            ch.basic_publish("", queue, f"n{i}".encode())
        wait_until(lambda: message_count(b, queue) == 5, message="no limit once deleted")


def test_a_reject_publish_policy_nacks_the_publisher_past_the_limit(fresh_broker):
    b = fresh_broker
    queue = uid("bounded")
    set_policy(b, "bounded", "^bounded-", {"max-length": 2, "overflow": "reject-publish"})
    with channel(b) as ch:
        ch.queue_declare(queue)  # declared after the policy: it applies at declare too
        ch.confirm_delivery()
        ch.basic_publish("", queue, b"1")
        ch.basic_publish("", queue, b"2")
        with pytest.raises(pika.exceptions.NackError):
            ch.basic_publish("", queue, b"3")
    assert message_count(b, queue) == 2


def test_the_lower_of_argument_and_policy_wins(fresh_broker):
    b = fresh_broker
    queue = uid("both")
    with channel(b) as ch:
        ch.queue_declare(queue, arguments={"x-max-length": 2})
        set_policy(b, "loose", f"^{queue}$", {"max-length": 100})
        for i in range(5):
            ch.basic_publish("", queue, f"m{i}".encode())
        wait_until(lambda: message_count(b, queue) == 2, message="the queue's own limit")


def test_a_message_ttl_policy_expires_messages(fresh_broker):
    b = fresh_broker
    queue = uid("ttl")
    with channel(b) as ch:
        ch.queue_declare(queue)
        set_policy(b, "ttl", "^ttl-", {"message-ttl": 200}, "--apply-to", "queues")
        for i in range(3):
            ch.basic_publish("", queue, f"m{i}".encode())
    wait_until(lambda: message_count(b, queue) == 0, timeout=10, message="messages expired")


def test_a_dead_letter_policy_routes_rejected_messages_to_a_consumer(fresh_broker):
    b = fresh_broker
    work, dead, dlx = uid("work"), uid("dead"), uid("dlx")
    with connection(b) as conn:
        ch = conn.channel()
        ch.exchange_declare(dlx, "fanout")
        ch.queue_declare(dead)
        ch.queue_bind(dead, dlx)
        ch.queue_declare(work)
        set_policy(b, "dlx", f"^{work}$", {"dead-letter-exchange": dlx})
        ch.basic_publish("", work, b"poison", pika.BasicProperties(message_id="p1"))
        [(method, _, body)] = collect(ch, work, 1)
        assert body == b"poison"
        ch.basic_reject(method.delivery_tag, requeue=False)

        [(method, props, body)] = collect(ch, dead, 1)
        ch.basic_ack(method.delivery_tag)
        assert body == b"poison" and props.message_id == "p1"
        [death] = props.headers["x-death"]
        assert (death["queue"], death["reason"], death["exchange"]) == (work, "rejected", "")


def test_a_policy_survives_kill_9_and_keeps_applying(fresh_broker):
    b = fresh_broker
    queue = uid("durable")
    with channel(b) as ch:
        ch.queue_declare(queue, durable=True)
    set_policy(b, "keep", "^durable-", {"max-length": 2}, "--priority", "7")
    b.restart(kill=True)

    [policy] = listed(b)
    assert policy == {
        "vhost": "/",
        "name": "keep",
        "pattern": "^durable-",
        "apply-to": "all",
        "definition": {"max-length": 2},
        "priority": 7,
    }
    with channel(b) as ch:
        for i in range(5):
            ch.basic_publish("", queue, f"m{i}".encode(), pika.BasicProperties(delivery_mode=2))
        wait_until(lambda: message_count(b, queue) == 2, message="the limit after restart")
        assert [body for _, _, body in get_all(ch, queue)] == [b"m3", b"m4"]


def test_bad_policies_are_refused_with_a_clear_error(fresh_broker):
    b = fresh_broker
    for args, error in (
        (("p", ".*", '{"max-length": -1}'), "-1 is not a valid max-length"),
        (("p", ".*", '{"ha-mode": "all"}'), "mirroring is not supported"),
        (("p", ".*", '{"nonsense": 1}'), "nonsense are not recognised policy settings"),
        (("p", "([", '{"max-length": 1}'), "invalid pattern"),
        (("p", ".*", "[1]"), "expected a JSON object"),
        (("p", ".*", '{"max-length": 1}', "--vhost", "nowhere"), "vhost 'nowhere' not found"),
    ):
        res = b.cli("policies", "set", *args, check=False)
        assert res.returncode != 0 and error in res.stderr, res.stderr
    res = b.cli("policies", "delete", "nope", check=False)
    assert res.returncode != 0 and "no policy 'nope'" in res.stderr
    assert listed(b) == []
    with channel(b) as ch:  # the broker is fine
        ch.queue_declare("", exclusive=True)


def test_list_shows_a_table_by_default(fresh_broker):
    b = fresh_broker
    b.cli("vhosts", "add", "other")
    set_policy(b, "b", "^x", {"message-ttl": 5}, "--vhost", "other", "--apply-to", "queues")
    set_policy(b, "a", ".*", {"max-length": 1})
    lines = b.cli("policies", "list").stdout.splitlines()
    assert lines == [
        "vhost\tname\tpattern\tapply-to\tpriority\tdefinition",
        '/\ta\t.*\tall\t0\t{"max-length": 1}',
        'other\tb\t^x\tqueues\t0\t{"message-ttl": 5}',
    ]
    only = json.loads(b.cli("policies", "list", "--vhost", "other", "--format", "json").stdout)
    assert [p["name"] for p in only] == ["b"]


def test_definitions_export_and_import_policies(fresh_broker, broker_factory, tmp_path):
    b = fresh_broker
    set_policy(b, "dlx", "^jobs\\.", {"dead-letter-exchange": "dead"}, "--priority", "2")
    exported = json.loads(b.cli("definitions", "export").stdout)
    assert exported["policies"] == [
        {
            "vhost": "/",
            "name": "dlx",
            "pattern": "^jobs\\.",
            "apply-to": "all",
            "definition": {"dead-letter-exchange": "dead"},
            "priority": 2,
        }
    ]
    path = tmp_path / "definitions.json"
    path.write_text(json.dumps(exported))
    other = broker_factory()
    assert "1 policies," in other.cli("definitions", "import", path).stdout
    assert listed(other) == exported["policies"]

    path.write_text(json.dumps({"policies": [{**exported["policies"][0], "vhost": "gone"}]}))
    res = other.cli("definitions", "import", path, check=False)
    assert res.returncode != 0 and "unknown vhost 'gone'" in res.stderr


@pytest.mark.timeout(90)
def test_a_policy_set_on_a_follower_applies_on_every_member(cluster):
    from compat_tests.cluster import control, wait_for

    leader = cluster.leader()
    follower = cluster.followers(leader)[0]
    body = {"pattern": "^capped$", "definition": {"max-length": 2}, "apply-to": "queues"}
    control(cluster.nodes[follower].data_dir, "policies.set", {"name": "cap", "policy": body})
    nodes = list(cluster.nodes.values())
    for node in nodes:
        wait_for(
            lambda node=node: control(node.data_dir, "policies.list", timeout=5),
            what="the policy on every member",
        )
    with connection(cluster.nodes[leader]) as conn:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare("capped", durable=True)
        for i in range(5):
            ch.basic_publish("", "capped", f"m{i}".encode(), pika.BasicProperties(delivery_mode=2))
    for node in nodes:
        wait_until(lambda node=node: message_count(node, "capped") == 2, message="2 on each")
