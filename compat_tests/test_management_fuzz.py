"""Random requests against every management endpoint: the broker answers each with a JSON
reply or RabbitMQ's error shape (never a 500), stays up, and logs no traceback.

The seed is random and printed with a failure; MGMT_FUZZ_SEED=<seed> replays a run,
MGMT_FUZZ_CASES=<n> sets its size."""

from __future__ import annotations

import json
import os
import random

import pytest

from .management_helpers import Api

pytestmark = pytest.mark.own_broker

CASES = int(os.environ.get("MGMT_FUZZ_CASES", "600"))

PATHS = [
    "/api/overview", "/api/nodes", "/api/nodes/{any}", "/api/cluster-name", "/api/whoami",
    "/api/vhosts", "/api/vhosts/{vhost}", "/api/vhosts/{vhost}/permissions",
    "/api/vhosts/{vhost}/connections", "/api/vhosts/{vhost}/channels", "/api/users",
    "/api/users/{user}", "/api/users/{user}/permissions", "/api/permissions",
    "/api/permissions/{vhost}/{user}", "/api/exchanges", "/api/exchanges/{vhost}",
    "/api/exchanges/{vhost}/{exchange}", "/api/exchanges/{vhost}/{exchange}/publish",
    "/api/exchanges/{vhost}/{exchange}/bindings/source", "/api/queues", "/api/queues/{vhost}",
    "/api/queues/{vhost}/{queue}", "/api/queues/{vhost}/{queue}/get",
    "/api/queues/{vhost}/{queue}/contents", "/api/queues/{vhost}/{queue}/bindings",
    "/api/bindings", "/api/bindings/{vhost}", "/api/bindings/{vhost}/e/{exchange}/q/{queue}",
    "/api/bindings/{vhost}/e/{exchange}/q/{queue}/{any}", "/api/connections",
    "/api/connections/{any}", "/api/channels", "/api/consumers", "/api/consumers/{vhost}",
    "/api/definitions", "/api/definitions/{vhost}", "/api/health/checks/alarms",
    "/api/health/checks/port-listener/{any}", "/api/health/checks/protocol-listener/{any}",
    "/api/aliveness-test/{vhost}", "/api/cmq/topics/{vhost}", "/api/cmq/subscriptions",
    "/api/cmq/queues/{vhost}/{queue}/rewind", "/api/cmq/keys/{any}",
    "/api/vhost-limits/{vhost}/{any}", "/api/user-limits/{user}/{any}", "/api/parameters",
    "/api/policies", "/api/policies/{vhost}/{any}", "/api/trace", "/api/trace/{vhost}",
    "/api/trace/{vhost}/messages/{any}", "/api/trace/{vhost}/queues/{queue}",
    "/api/nothing/{any}",
]  # fmt: skip
METHODS = ["GET", "PUT", "POST", "DELETE", "PATCH"]
KEYS = [
    "durable", "auto_delete", "arguments", "type", "internal", "routing_key", "payload",
    "payload_encoding", "properties", "count", "ackmode", "encoding", "truncate", "password",
    "password_hash", "hashing_algorithm", "tags", "configure", "write", "read", "value",
    "since", "queues", "exchanges", "bindings", "users", "vhosts", "permissions", "exclusive",
    "requeue", "headers", "delivery_mode", "priority", "timestamp", "user_id", "kind",
    "enabled", "queue", "pattern", "definition", "apply-to",
]  # fmt: skip
NAMES = ["%2F", "fz", "amq.direct", "amq.default", "", "%25", "~", "a%2Fb", "x" * 300, "%C3%A9"]


def value(rng: random.Random, depth: int = 0):
    kinds = ["null", "bool", "int", "big", "float", "str", "list", "dict", "numstr"]
    kind = rng.choice(kinds if depth < 3 else kinds[:6])
    if kind == "null":
        return None
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "int":
        return rng.choice([0, 1, -1, 2, 255, 256, 65536])
    if kind == "big":
        return rng.choice([2**63, -(2**63) - 1, 10**30])
    if kind == "float":
        return rng.choice([0.5, -1.5, 1e300])
    if kind == "str":
        return rng.choice(
            ["", "true", "false", "auto", "base64", "ack_requeue_false", "x" * 300, "trace", ".*"]
        )
    if kind == "numstr":
        return rng.choice(["1", "-5", "99999999999999999999999"])
    if kind == "list":
        return [value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {rng.choice(KEYS): value(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def body(rng: random.Random) -> bytes | None:
    roll = rng.random()
    if roll < 0.1:
        return None
    if roll < 0.2:
        return rng.choice([b"{", b"[]", b"null", b"\xff\xfe", b'{"a": NaN}', b"1" * 10])
    doc = {key: value(rng) for key in rng.sample(KEYS, rng.randint(0, 6))}
    return json.dumps(doc).encode()


def test_random_requests_get_json_answers_and_no_traceback(fresh_broker):
    b = fresh_broker
    api = Api(b)
    api.put("/api/queues/%2F/fz", {})
    api.put("/api/exchanges/%2F/fz", {"type": "direct"})
    seed = int(os.environ.get("MGMT_FUZZ_SEED", random.randrange(2**32)))
    rng = random.Random(seed)
    statuses: dict[int, int] = {}
    for case in range(CASES):
        path = rng.choice(PATHS)
        for key in ("vhost", "user", "exchange", "queue", "any"):
            path = path.replace("{%s}" % key, rng.choice(NAMES), 1)
        method = rng.choice(METHODS)
        raw = body(rng)
        status, reply = api.call(method, path + rng.choice(["", "?page=x", "?sort=name"]), raw=raw)
        statuses[status] = statuses.get(status, 0) + 1
        where = f"seed {seed} case {case}: {method} {path} {raw!r} -> {status} {reply}"
        assert status < 500 or status == 503, where
        if status == 503:  # a failed health check
            assert reply["status"] == "failed" and reply["reason"], where
        elif status >= 400:
            assert set(reply) == {"error", "reason"}, where
    # (A case may have deleted the vhost "/": PUT makes it again, or changes nothing.)
    assert api.put("/api/vhosts/%2F", {}) in (201, 204), f"seed {seed}"
    alive = api.call("GET", "/api/aliveness-test/%2F")
    assert alive == (200, {"status": "ok"}), f"seed {seed}"
    assert "Traceback" not in b.log_tail(200_000), f"seed {seed}"
    assert statuses.get(200, 0) and statuses.get(400, 0) and statuses.get(404, 0), statuses
