"""/api/policies as RabbitMQ serves it: set, show, list and delete policies over HTTP and
with rabbitmqadmin; they act on the queues pika uses; only policymakers and administrators
may touch them."""

from __future__ import annotations

import pytest

from .helpers import channel, message_count, uid, wait_until
from .management_helpers import Api, RabbitmqAdmin, quote, rabbitmqadmin_path

pytestmark = pytest.mark.own_broker

POLICY_FIELDS = {"vhost", "name", "pattern", "apply-to", "definition", "priority"}


@pytest.fixture
def api(broker):
    return Api(broker)


def test_put_show_list_delete_and_the_effect_on_a_queue(api, broker):
    queue, name = uid("capped"), uid("cap")
    path = f"/api/policies/%2F/{name}"
    with channel(broker) as ch:
        ch.queue_declare(queue)
        for i in range(6):
            ch.basic_publish("", queue, f"m{i}".encode())
    wait_until(lambda: message_count(broker, queue) == 6, message="6 messages queued")

    body = {"pattern": f"^{queue}$", "definition": {"max-length": 2}, "apply-to": "queues"}
    assert api.put(path, body) == 201
    assert message_count(broker, queue) == 2  # applied at once, without a redeclare
    shown = api.get(path)
    assert shown == {**body, "vhost": "/", "name": name, "priority": 0}
    assert shown.keys() == POLICY_FIELDS
    assert name in [p["name"] for p in api.get("/api/policies")]
    assert name in [p["name"] for p in api.get("/api/policies/%2F")]
    info = api.get(f"/api/queues/%2F/{queue}")
    assert info["policy"] == name and info["effective_policy_definition"] == {"max-length": 2}

    assert api.put(path, {**body, "definition": {"max-length": 4}, "priority": 3}) == 204
    assert api.get(path)["priority"] == 3
    with channel(broker) as ch:
        for i in range(6):
            ch.basic_publish("", queue, f"n{i}".encode())
    wait_until(lambda: message_count(broker, queue) == 4, message="the new limit")

    assert api.delete(path) == 204
    assert api.call("GET", path)[0] == 404
    assert api.delete(path) == 404
    assert api.get(f"/api/queues/%2F/{queue}")["policy"] is None


def test_bad_policies_are_400_with_the_reason_and_change_nothing(api, broker):
    path = f"/api/policies/%2F/{uid('bad')}"
    for body, reason in (
        ({"pattern": ".*", "definition": {"max-length": -1}}, "not a valid max-length"),
        ({"pattern": ".*", "definition": {"ha-mode": "all"}}, "mirroring is not supported"),
        ({"pattern": ".*", "definition": {"x": 1}}, "x are not recognised policy settings"),
        ({"pattern": "(", "definition": {"max-length": 1}}, "invalid pattern"),
        ({"pattern": ".*", "definition": {}}, "no policy provided"),
        ({"pattern": ".*"}, "'definition' is required"),
        ({"pattern": ".*", "definition": {"max-length": 1}, "apply-to": "x"}, "apply-to"),
        ({"pattern": ".*", "definition": {"max-length": 1}, "priority": "high"}, "priority"),
        ({"pattern": ".*", "definition": {"max-length": 1}, "priority": "--5"}, "priority"),
    ):
        status, error = api.call("PUT", path, body)
        assert status == 400 and reason in error["reason"], (body, status, error)
    status, error = api.call("PUT", path, raw=b"{not json")
    assert status == 400 and error["error"] == "bad_request"
    status, _ = api.call("PUT", f"/api/policies/{uid('nowhere')}/p", {"pattern": ".*"})
    assert status == 404
    assert api.call("GET", path)[0] == 404


def test_rabbitmqadmin_declares_lists_and_deletes_policies(api, broker):
    admin = RabbitmqAdmin(rabbitmqadmin_path(), broker)
    name, queue = uid("ttl"), uid("expiring")
    out = admin.run(
        "declare",
        "policy",
        f"name={name}",
        f"pattern=^{queue}$",
        'definition={"message-ttl": 100}',
        "priority=5",
        "apply-to=queues",
    )
    assert "policy declared" in out.stdout
    [mine] = [p for p in admin.json("list", "policies") if p["name"] == name]
    assert (mine["priority"], mine["apply-to"], mine["definition"]) == (
        5,
        "queues",
        {"message-ttl": 100},
    )
    with channel(broker) as ch:
        ch.queue_declare(queue)
        ch.basic_publish("", queue, b"short-lived")
    wait_until(lambda: message_count(broker, queue) == 0, message="expired by the policy")
    assert "policy deleted" in admin.run("delete", "policy", f"name={name}").stdout
    assert name not in [p["name"] for p in admin.json("list", "policies")]


def make_user(api: Api, tags: str, vhosts: list[str]) -> Api:
    name = uid("user")
    assert api.put(f"/api/users/{name}", {"password": "pw", "tags": tags}) == 201
    for vhost in vhosts:
        body = {"configure": ".*", "write": ".*", "read": ".*"}
        assert api.put(f"/api/permissions/{quote(vhost)}/{name}", body) == 201
    return api.as_user(name, "pw")


def test_only_policymakers_and_administrators_manage_policies_of_their_vhosts(api, broker):
    mine, other = uid("vh"), uid("vh")
    for vhost in (mine, other):
        assert api.put(f"/api/vhosts/{vhost}", None) == 201
    body = {"pattern": "^q", "definition": {"max-length": 1}}
    assert api.put(f"/api/policies/{other}/theirs", body) == 201

    policymaker = make_user(api, "policymaker", [mine])
    assert policymaker.put(f"/api/policies/{mine}/p", body) == 201
    assert [p["name"] for p in policymaker.get("/api/policies")] == ["p"]
    status, error = policymaker.call("PUT", f"/api/policies/{other}/p", body)
    assert status == 401 and error["error"] == "not_authorised"
    assert policymaker.call("GET", f"/api/policies/{other}")[0] == 401

    for tags in ("management", "monitoring"):
        user = make_user(api, tags, [mine])
        status, error = user.call("GET", "/api/policies")
        assert (status, error["reason"]) == (401, "Not policymaker user")
        assert user.call("DELETE", f"/api/policies/{mine}/p")[0] == 401
    assert api.get(f"/api/policies/{mine}/p")["definition"] == {"max-length": 1}
    assert policymaker.delete(f"/api/policies/{mine}/p") == 204


def test_definitions_over_http_carry_policies(api, broker):
    vhost = uid("vh")
    assert api.put(f"/api/vhosts/{vhost}", None) == 201
    body = {"pattern": "^jobs", "definition": {"expires": 60000}, "apply-to": "queues"}
    assert api.put(f"/api/policies/{vhost}/expiring", body) == 201
    exported = api.get(f"/api/definitions/{vhost}")
    assert exported["policies"] == [{**body, "name": "expiring", "priority": 0}]
    target = uid("vh")
    assert api.put(f"/api/vhosts/{target}", None) == 201
    status, _ = api.post(f"/api/definitions/{target}", exported)
    assert status in (200, 201, 204)
    assert api.get(f"/api/policies/{target}/expiring")["definition"] == {"expires": 60000}
    assert any(p["vhost"] == vhost for p in api.get("/api/definitions")["policies"])
