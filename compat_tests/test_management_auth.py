"""Who may use the management API: HTTP basic auth against the broker's users, and
RabbitMQ's user tags (administrator, monitoring, policymaker, management) deciding what each
may read and change; refusals are 401 with RabbitMQ's JSON error."""

from __future__ import annotations

import urllib.error
import urllib.request

import pika
import pytest

from .helpers import connection, uid, wait_until
from .management_helpers import Api, quote

pytestmark = pytest.mark.own_broker


@pytest.fixture
def api(broker):
    return Api(broker)


def make_user(api: Api, tags: str, vhosts: dict[str, str] | None = None) -> Api:
    """A new user with `tags`, full permissions in each of `vhosts` (vhost -> configure
    regex); the API as that user."""
    name = uid("user")
    assert api.put(f"/api/users/{name}", {"password": "pw", "tags": tags}) == 201
    for vhost, configure in (vhosts or {}).items():
        body = {"configure": configure, "write": ".*", "read": ".*"}
        assert api.put(f"/api/permissions/{quote(vhost)}/{name}", body) == 201
    return api.as_user(name, "pw")


def new_vhost(api: Api) -> str:
    vhost = uid("vh")
    assert api.put(f"/api/vhosts/{vhost}", None) == 201
    return vhost


def test_no_or_wrong_credentials_are_401_with_a_basic_challenge(api, broker):
    request = urllib.request.Request(f"{api.base}/api/overview")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=10)
    assert info.value.code == 401
    assert info.value.headers["WWW-Authenticate"].startswith("Basic ")
    status, error = api.as_user("guest", "wrong").call("GET", "/api/overview")
    assert (status, error) == (401, {"error": "not_authorised", "reason": "Login failed"})
    # a page's own scripts get no challenge (the browser would open its login dialog)
    request.add_header("X-Requested-With", "XMLHttpRequest")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=10)
    assert info.value.code == 401 and "WWW-Authenticate" not in info.value.headers
    status, _ = api.as_user(uid("ghost"), "pw").call("GET", "/api/overview")
    assert status == 401


def test_a_user_without_a_management_tag_is_refused(api, broker):
    plain = make_user(api, "", {"/": ".*"})
    status, error = plain.call("GET", "/api/overview")
    assert (status, error["reason"]) == (401, "Not management user")
    # the same user is fine over AMQP
    with connection(broker, user=plain.user, password="pw") as conn:
        assert conn.is_open


def test_monitoring_reads_everything_but_changes_nothing(api, broker):
    other = new_vhost(api)
    q = uid("q")
    assert api.put(f"/api/queues/{other}/{q}", {}) == 201
    monitor = make_user(api, "monitoring")
    assert q in [item["name"] for item in monitor.get("/api/queues")]
    assert monitor.get(f"/api/queues/{other}/{q}")["name"] == q
    assert monitor.get("/api/nodes")[0]["running"] is True
    assert monitor.get("/api/health/checks/alarms") == {"status": "ok"}
    with connection(broker):
        assert wait_until(lambda: monitor.get("/api/connections"), message="a connection")
    for method, path, body in (
        ("PUT", f"/api/queues/{other}/{uid('q')}", {}),
        ("DELETE", f"/api/queues/{other}/{q}", None),
        ("DELETE", f"/api/queues/{other}/{q}/contents", None),
        ("POST", f"/api/exchanges/{other}/amq.default/publish", {"routing_key": q}),
        ("GET", "/api/users", None),
        ("PUT", f"/api/users/{uid('u')}", {"password": "x", "tags": ""}),
        ("PUT", f"/api/vhosts/{uid('vh')}", None),
        ("GET", "/api/definitions", None),
        ("GET", "/api/permissions", None),
    ):
        status, error = monitor.call(method, path, body)
        assert status == 401 and set(error) == {"error", "reason"}, (method, path, error)
    assert api.get(f"/api/queues/{other}/{q}")["name"] == q
    api.delete(f"/api/vhosts/{other}")


def test_management_users_see_and_change_their_own_vhosts_only(api, broker):
    mine, theirs = new_vhost(api), new_vhost(api)
    api.put(f"/api/queues/{theirs}/hidden", {})
    user = make_user(api, "management", {mine: "^app-"})
    assert user.put(f"/api/queues/{mine}/app-orders", {}) == 201
    status, error = user.call("PUT", f"/api/queues/{mine}/other", {})
    assert status == 401 and error["error"] == "access_refused"
    assert "configure access to queue 'other'" in error["reason"]

    names = {(q["vhost"], q["name"]) for q in user.get("/api/queues")}
    assert (mine, "app-orders") in names and (theirs, "hidden") not in names
    assert [v["name"] for v in user.get("/api/vhosts")] == [mine]
    for path in (f"/api/queues/{theirs}", f"/api/queues/{theirs}/hidden", "/api/nodes"):
        status, _ = user.call("GET", path)
        assert status == 401, path
    assert user.get("/api/overview")["object_totals"]["queues"] == 1
    assert user.get("/api/whoami") == {"name": user.user, "tags": ["management"]}
    for vhost in (mine, theirs):
        api.delete(f"/api/vhosts/{vhost}")


def test_users_see_and_close_their_own_connections_only(api, broker):
    alice = make_user(api, "management", {"/": ".*"})
    bob = make_user(api, "management", {"/": ".*"})
    with (
        connection(broker, user=alice.user, password="pw") as a,
        connection(broker, user=bob.user, password="pw") as b,
    ):
        [own] = wait_until(lambda: alice.get("/api/connections"), message="alice's")
        assert own["user"] == alice.user
        bobs = wait_until(lambda: bob.get("/api/connections"), message="bob's")
        assert alice.call("DELETE", f"/api/connections/{quote(bobs[0]['name'])}")[0] == 404
        assert alice.delete(f"/api/connections/{quote(own['name'])}") == 204
        wait_until(lambda: _closed(a), message="alice's connection closed")
        assert b.is_open
        assert api.delete(f"/api/connections/{quote(bobs[0]['name'])}") == 204
        wait_until(lambda: _closed(b), message="bob's connection closed by an admin")


def _closed(conn) -> bool:
    try:
        conn.process_data_events(time_limit=0.1)
    except pika.exceptions.AMQPError:
        return True
    return not conn.is_open


def test_administrators_manage_users_and_permissions(api, broker):
    name = uid("u")
    assert api.put(f"/api/users/{name}", {"password": "one", "tags": "monitoring"}) == 201
    assert api.as_user(name, "one").get("/api/whoami")["tags"] == ["monitoring"]
    # a new tag list without a password keeps the password
    assert api.put(f"/api/users/{name}", {"tags": ["management", "policymaker"]}) == 204
    assert api.as_user(name, "one").get("/api/whoami")["tags"] == ["management", "policymaker"]
    assert api.put(f"/api/permissions/%2F/{name}", {"configure": "", "write": "", "read": ""})
    assert [p["user"] for p in api.get(f"/api/users/{name}/permissions")] == [name]
    assert api.delete(f"/api/permissions/%2F/{name}") == 204
    assert api.call("GET", f"/api/permissions/%2F/{name}")[0] == 404
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika.BlockingConnection(broker.params(user=name, password="one"))
    assert api.delete(f"/api/users/{name}") == 204
    assert api.as_user(name, "one").call("GET", "/api/whoami")[0] == 401
