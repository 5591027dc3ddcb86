"""MQTT `$SYS` topics with paho-mqtt: a user tagged monitoring subscribes to `$SYS/#`, gets
the retained values at once and sees clients/connected change as clients come and go; a user
without the tag is refused (SUBACK 0x80); `#` never matches them."""

from __future__ import annotations

import time

import pytest

from compat_tests.cluster import Cluster
from compat_tests.mqtt_helpers import TIMEOUT, Paho, uid

pytestmark = pytest.mark.own_broker

CONNECTED = "$SYS/broker/clients/connected"


@pytest.fixture
def sys_broker(broker_factory):
    b = broker_factory("--mqtt-sys-interval", "0.2")
    b.cli("users", "add", "watcher", "pw", "--tags", "monitoring")
    b.cli("users", "add", "device", "pw")
    for user in ("watcher", "device"):
        b.cli("permissions", "set", user, ".*", ".*", ".*", "--vhost", "/")
    made: list[Paho] = []

    def client(user: str = "guest", password: str = "guest") -> Paho:
        c = Paho(b, username=user, password=password)
        c.connect()
        made.append(c)
        return c

    yield b, client
    for c in made:
        c.close()


def next_value(client: Paho, topic: str, wanted: bytes) -> None:
    """Read the client's messages until `topic` carries `wanted`."""
    deadline = time.monotonic() + TIMEOUT
    seen = []
    while time.monotonic() < deadline:
        msg = client.message(timeout=max(0.01, deadline - time.monotonic()))
        if msg.topic == topic:
            seen.append(msg.payload)
            if msg.payload == wanted:
                return
    raise AssertionError(f"{topic} never said {wanted!r}: {seen}")


def test_a_monitoring_user_watches_clients_connect(sys_broker):
    _, client = sys_broker
    watcher = client("watcher", "pw")
    assert watcher.subscribe(("$SYS/#", 0)) == [0]
    retained = {}
    while "$SYS/broker/version" not in retained or CONNECTED not in retained:
        msg = watcher.message()
        if msg.retain:
            retained[msg.topic] = msg.payload
    assert retained["$SYS/broker/version"].startswith(b"broker version ")
    if retained[CONNECTED] != b"1":  # it may predate the watcher's own connection
        next_value(watcher, CONNECTED, b"1")
    other = client()
    next_value(watcher, CONNECTED, b"2")
    other.close()
    next_value(watcher, CONNECTED, b"1")


def test_a_user_without_the_tag_is_refused(sys_broker):
    _, client = sys_broker
    device = client("device", "pw")
    assert device.subscribe(("$SYS/#", 0), ("$SYS/broker/uptime", 0), ("a/b", 1)) == [
        0x80,
        0x80,
        1,
    ]


def test_hash_does_not_match_sys_topics(sys_broker):
    _, client = sys_broker
    watcher = client("watcher", "pw")
    everything = client()
    assert everything.subscribe(("#", 0)) == [0]
    assert watcher.subscribe(("$SYS/broker/uptime", 0)) == [0]
    watcher.message()  # the retained uptime
    first = watcher.message().payload  # the next round's: `everything` was subscribed by then
    assert first.endswith(b" seconds")
    marker = uid("marker").encode()
    client().publish("end", marker)
    assert [m.topic for m in everything.messages_until(marker)] == []


def test_in_a_cluster_the_leader_publishes_the_clusters_clients(tmp_path):
    """The values are retained cluster state: the leader publishes them, and a client of a
    follower sees clients connecting to any member."""
    cl = Cluster(tmp_path / "cluster", extra_args=("--mqtt-sys-interval", "0.2"))
    made: list[Paho] = []
    try:
        cl.start()
        leader = cl.leader()
        follower, other = cl.followers(leader)
        watcher = Paho(cl.nodes[follower])
        watcher.connect()
        made.append(watcher)
        assert watcher.subscribe((CONNECTED, 0)) == [0]
        next_value(watcher, CONNECTED, b"1")
        for n in (other, leader):
            client = Paho(cl.nodes[n])
            client.connect()
            made.append(client)
        next_value(watcher, CONNECTED, b"3")
        for n in cl.ids:
            log = cl.log(n)
            assert "Traceback" not in log, n
    finally:
        for client in made:
            client.close()
        problems = cl.close()
        assert not problems, problems
