"""Credentials: users from the CLI and from RabbitMQ definitions, refused logins logged once
and slowed per source address, and guest kept to loopback (own broker only)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time

import pika
import pika.exceptions
import pytest

from .helpers import connection, uid
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
    assert "1 vhosts, 2 users, 2 permissions imported" in out
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
        ({"queues": [{"name": "q", "vhost": "/"}]}, "not supported: queues"),
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
