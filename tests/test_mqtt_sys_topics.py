"""The `$SYS` topics: retained through the core, only the changed ones each round, seen by a
`$SYS/#` subscriber and never by `#`."""

from __future__ import annotations

import math

from broker.core import commands as c
from broker.protocols.mqtt import codec
from broker.protocols.mqtt.sys_topics import SysTopics
from tests.test_mqtt_connection import Node, packets, subscribe


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def published(node: Node, conn: object) -> dict[str, bytes]:
    node.commit.run()
    return {p.topic: p.payload for p in packets(conn) if isinstance(p, codec.Publish)}  # type: ignore[arg-type]


def test_values_go_out_retained_and_only_when_they_change() -> None:
    node = Node()
    clock = Clock()
    sys_topics = SysTopics(node.gateway, "/", 10.0, clock)
    sys_topics.publish()
    node.commit.run()
    retained = node.commit.state.vhosts["/"].retained
    assert retained["$SYS.broker.clients.connected"].body == b"0"
    assert retained["$SYS.broker.version"].body.startswith(b"broker version ")

    watcher = node.connected("watcher")
    everything = node.connected("everything")
    watcher.receive_data(subscribe(1, "$SYS/#", 0))
    everything.receive_data(subscribe(1, "#", 0))
    first = published(node, watcher)  # the retained values, on subscribing
    assert first["$SYS/broker/clients/connected"] == b"0"
    assert published(node, everything) == {}  # MQTT-4.7.2: `#` does not match `$SYS`

    node.connected("third")
    clock.now += 10
    sys_topics.publish()
    update = published(node, watcher)
    assert update["$SYS/broker/clients/connected"] == b"3"
    assert update["$SYS/broker/uptime"] == b"10 seconds"
    assert "$SYS/broker/version" not in update  # unchanged: not sent again
    assert published(node, everything) == {}
    traffic = node.gateway.traffic["mqtt"]
    assert traffic.packets_received == 5  # three CONNECTs, two SUBSCRIBEs
    assert traffic.delivered == len(first) + len(update)


def test_loads_are_per_minute_rates_averaged_over_their_window() -> None:
    node = Node()
    clock = Clock()
    sys_topics = SysTopics(node.gateway, "/", 10.0, clock)
    traffic = node.gateway.traffic["mqtt"]
    clock.now += 60
    traffic.received = 60  # one a second: 60 a minute
    values = sys_topics.values()
    for window in (1, 5, 15):
        expected = 60 * (1 - math.exp(-1 / window))
        assert values[f"$SYS/broker/load/publish/received/{window}min"] == f"{expected:.2f}"
    assert values["$SYS/broker/publish/messages/received"] == "60"


def test_nothing_is_published_to_a_vhost_that_does_not_exist() -> None:
    node = Node()
    SysTopics(node.gateway, "elsewhere", 10.0, Clock()).publish()
    node.commit.run()
    assert "elsewhere" not in node.commit.state.vhosts
    assert not node.commit.state.vhosts["/"].retained


def test_only_an_active_node_publishes_and_a_new_leader_publishes_everything() -> None:
    node = Node()
    sys_topics = SysTopics(node.gateway, "/", 10.0, Clock())
    sys_topics.set_active(False)  # a follower: the leader publishes the cluster's values
    sys_topics.publish()
    node.commit.run()
    assert not node.commit.state.vhosts["/"].retained

    def batch_size() -> int:
        node.commit.run()
        last = node.commit.log[-1]
        return len(last.commands) if isinstance(last, c.Batch) else 0

    sys_topics.set_active(True)
    sys_topics.publish()
    everything = batch_size()
    assert everything == 2 * len(sys_topics.values())  # StoreRetained and Publish each
    sys_topics.publish()  # the retained count changed with the first round: it alone
    assert batch_size() == 2
    proposed = len(node.commit.log)
    sys_topics.publish()  # nothing changed: nothing sent
    assert len(node.commit.log) == proposed
    sys_topics.set_active(False)
    sys_topics.set_active(True)  # leader again: what it published before may be stale
    sys_topics.publish()
    assert batch_size() == everything
