"""Credentials: users from the CLI and from RabbitMQ definitions, refused logins logged once
and slowed per source address, and guest kept to loopback (own broker only)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import time

import pika
import pika.exceptions
import pytest

from .helpers import connection, uid, wait_until
from .mqtt_helpers import Paho

pytestmark = pytest.mark.own_broker

#: paho 2 reports MQTT 3.1.1 CONNACK codes 4 and 5 as these reason codes
PAHO_BAD_CREDENTIALS = 134
PAHO_NOT_AUTHORIZED = 135


def rabbit_hash(password: str, digest=hashlib.sha256) -> str:
    """RabbitMQ's documented scheme: base64(salt + digest(salt + UTF-8 password)), 4-byte salt."""
    salt = os.urandom(4)
    return base64.b64encode(salt + digest(salt + password.encode()).digest()).decode()


def mqtt_connack(broker, username, password, host=None, bind_address=""):
    """CONNACK code of a paho login to `host` from `bind_address`, and how long it took, s."""
    client = Paho(broker, username=username, password=password)
    started = time.monotonic()
    client.client.connect(
        host or broker.host, broker.mqtt_port, keepalive=60, bind_address=bind_address
    )
    client.client.loop_start()
    try:
        code, _ = client.connacks.get(timeout=10)
        return code, time.monotonic() - started
    finally:
        client.client.disconnect()
        client.client.loop_stop()


def amqp_refusal_seconds(broker, **kw) -> float:
    started = time.monotonic()
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        pika.BlockingConnection(broker.params(**kw))
    return time.monotonic() - started


def refusals_logged(broker, user: str) -> list[str]:
    """Every log line about a refusal of `user`, whoever logged it."""
    return [
        line
        for line in broker.log_tail(200_000).splitlines()
        if f"'{user}'" in line and "refused" in line
    ]


def test_user_imported_from_rabbitmq_definitions_logs_in(fresh_broker, tmp_path):
    b = fresh_broker
    vhost = uid("vh")
    definitions = {
        "rabbit_version": "3.13.7",
        "global_parameters": [{"name": "cluster_name", "value": "rabbit@old"}],
        "users": [
            {
                "name": "sha256-user",
                "password_hash": rabbit_hash("first secret"),
                "hashing_algorithm": "rabbit_password_hashing_sha256",
                "tags": ["administrator"],
                "limits": {},
            },
            # RabbitMQ before 3.6: MD5, no hashing_algorithm, tags as one string
            {
                "name": "md5-user",
                "password_hash": rabbit_hash("second secret", hashlib.md5),
                "tags": "management,monitoring",
            },
        ],
        "vhosts": [{"name": vhost, "limits": [], "metadata": {}}],
        "permissions": [
            {"user": u, "vhost": vhost, "configure": ".*", "write": ".*", "read": ".*"}
            for u in ("sha256-user", "md5-user")
        ],
    }
    path = tmp_path / "definitions.json"
    path.write_text(json.dumps(definitions))
    out = b.cli("definitions", "import", path).stdout
    assert (
        "1 vhosts, 2 users, 2 permissions, 0 policies, 0 exchanges, 0 queues, 0 bindings imported"
        in out
    )
    with connection(b, user="sha256-user", password="first secret", virtual_host=vhost) as c:
        c.channel().queue_declare("", exclusive=True)
    with connection(b, user="md5-user", password="second secret", virtual_host=vhost) as c:
        c.channel().queue_declare("", exclusive=True)
    amqp_refusal_seconds(b, user="sha256-user", password="second secret", virtual_host=vhost)
    assert mqtt_connack(b, f"{vhost}:md5-user", "second secret")[0] == 0

    exported = json.loads(b.cli("definitions", "export").stdout)
    users = {u["name"]: u for u in exported["users"]}
    assert users["sha256-user"]["password_hash"] == definitions["users"][0]["password_hash"]
    assert users["md5-user"]["hashing_algorithm"] == "rabbit_password_hashing_md5"
    assert users["md5-user"]["tags"] == ["management", "monitoring"]


def test_definitions_with_unknown_hashing_or_sections_are_refused(fresh_broker, tmp_path):
    b = fresh_broker
    for doc, error in (
        (
            {"users": [{"name": "x", "password_hash": "", "hashing_algorithm": "bcrypt"}]},
            "unsupported hashing_algorithm 'bcrypt'",
        ),
        ({"parameters": [{"name": "p", "vhost": "/"}]}, "not supported: parameters"),
        (
            {"vhosts": [{"name": "v", "limits": {"max-connections": 10}}]},
            "vhost 'v': limits are not supported",
        ),
        (
            {
                "permissions": [
                    {"user": "nobody", "vhost": "/", "configure": "", "write": "", "read": ""}
                ]
            },
            "unknown user 'nobody'",
        ),
    ):
        path = tmp_path / "bad.json"
        path.write_text(json.dumps(doc))
        res = b.cli("definitions", "import", path, check=False)
        assert res.returncode != 0 and error in res.stderr
    assert "x" not in b.cli("users", "list").stdout.split()


def test_wrong_password_refused_and_logged_once(fresh_broker):
    b = fresh_broker
    name = uid("victim")
    b.cli("users", "add", name, "right")
    amqp_refusal_seconds(b, user=name, password="wrong")
    lines = wait_until(lambda: refusals_logged(b, name), message="the refusal logged")
    assert len(lines) == 1 and " WARNING " in lines[0] and "from 127.0.0.1" in lines[0]

    code, _ = mqtt_connack(b, name, "wrong", bind_address="127.0.0.2")
    assert code == PAHO_BAD_CREDENTIALS
    wait_until(lambda: len(refusals_logged(b, name)) == 2, message="the MQTT refusal logged")
    assert "from 127.0.0.2" in refusals_logged(b, name)[1]


def amqp_login_seconds(broker, **kw) -> float:
    started = time.monotonic()
    with connection(broker, **kw) as conn:
        conn.channel().queue_declare("", exclusive=True)
        return time.monotonic() - started


def test_repeated_failures_from_one_address_get_slower(fresh_broker):
    b = fresh_broker
    name, right = uid("target"), "rïght-パス"
    b.cli("users", "add", name, right)
    b.cli("permissions", "set", name, ".*", ".*", ".*")
    # the 2nd, 3rd, 4th, 5th refusal to one address wait 0.1, 0.2, 0.4, 0.8 s
    timings = [amqp_refusal_seconds(b, user=name, password="wrong") for _ in range(5)]
    assert timings[4] >= 0.75, timings
    code, seconds = mqtt_connack(b, name, "wrong")
    assert code == PAHO_BAD_CREDENTIALS and seconds >= 1.5  # the 6th: 1.6 s
    # a user added by the CLI (a non-ASCII password) still logs in from that address, on both
    # protocols
    assert amqp_login_seconds(b, user=name, password=right) < 1.5
    assert mqtt_connack(b, name, right)[0] == 0
    # another loopback address is not slowed: its first refusal comes at once
    code, seconds = mqtt_connack(b, name, "wrong", bind_address="127.0.0.2")
    assert code == PAHO_BAD_CREDENTIALS and seconds < 1.5
    # the log holds one line for the six from 127.0.0.1 (rate-limited per address)
    lines = refusals_logged(b, name)
    assert [line for line in lines if "from 127.0.0.1" in line] == lines[:1]
    assert len(lines) == 2 and "from 127.0.0.2" in lines[1]


def _non_loopback_address() -> str | None:
    """This machine's address on a non-loopback interface, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks a route
        except OSError:
            return None
        address = s.getsockname()[0]
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def test_guest_is_loopback_only_on_amqp_and_mqtt(tmp_path):
    from .conftest import BrokerProcess

    address = _non_loopback_address()
    if address is None:
        pytest.skip("no non-loopback interface")
    b = BrokerProcess(tmp_path / "data", host="0.0.0.0")
    b.start()
    try:
        b.host = address
        # guest from a non-loopback address: refused on both protocols
        amqp_refusal_seconds(b)
        assert mqtt_connack(b, "guest", "guest")[0] == PAHO_BAD_CREDENTIALS
        # any 127.x address is loopback: guest is admitted
        assert mqtt_connack(b, "guest", "guest", "127.0.0.1", "127.0.0.3")[0] == 0
        b.host = "127.0.0.1"
        with connection(b) as conn:
            conn.channel().queue_declare("", exclusive=True)
        # another user from the same non-loopback address is admitted
        b.cli("users", "add", "remote", "pw")
        b.cli("permissions", "set", "remote", ".*", ".*", ".*")
        b.host = address
        with connection(b, user="remote", password="pw") as conn:
            conn.channel().queue_declare("", exclusive=True)
        assert mqtt_connack(b, "remote", "pw")[0] == 0
        assert "the user can only connect via localhost" in b.log_tail(100_000)
    finally:
        b.stop()
