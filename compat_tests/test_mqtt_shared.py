"""MQTT shared subscriptions (`$share/<group>/<filter>`) and the `$` topics, with paho-mqtt,
amqtt and pika: each message goes to one member of a group, a member leaving loses nothing,
the group's queue goes with its last member; shared `$SYS` filters and `$` publishes are
refused."""

from __future__ import annotations

import asyncio
import queue
import time
from collections import Counter

import pika
import pika.exceptions
import pytest

from compat_tests.helpers import channel
from compat_tests.mqtt_helpers import (
    Paho,
    RawMQTT,
    publish_packet,
    subscribe_packet,
    uid,
    unsubscribe_packet,
)

pytestmark = pytest.mark.own_broker


def shared_queue_exists(broker, group: str, topic_filter: str) -> bool:
    with channel(broker) as ch:
        try:
            ch.queue_declare(f"mqtt-shared-{group}/{topic_filter}", passive=True)
        except pika.exceptions.ChannelClosedByBroker as exc:
            assert exc.reply_code == 404
            return False
    return True


def gather(members: list[Paho], n: int, timeout: float = 10) -> list[list]:
    """What each member received, once `n` messages arrived in all (a duplicate among them
    leaves one message missing, which the caller's count shows)."""
    got: list[list] = [[] for _ in members]
    deadline = time.monotonic() + timeout
    while sum(map(len, got)) < n:
        assert time.monotonic() < deadline, f"only {sum(map(len, got))} of {n} arrived"
        for i, member in enumerate(members):
            try:
                got[i].append(member.messages.get(timeout=0.02))
            except queue.Empty:
                pass
    return got


def test_each_message_goes_to_one_member_of_the_group(clients):
    topic, group = uid("jobs"), uid("workers")
    members = [clients() for _ in range(3)]
    for member in members:
        assert member.subscribe((f"$share/{group}/{topic}/+", 1)) == [1]
    everyone = clients()
    everyone.subscribe((f"{topic}/#", 1))  # a plain subscription still sees every message
    pub = clients()
    bodies = [b"job %d" % n for n in range(30)]
    for body in bodies:
        pub.publish(f"{topic}/x", body, qos=1)
    assert sorted(everyone.message().payload for _ in bodies) == sorted(bodies)
    got = gather(members, len(bodies))
    assert Counter(m.payload for share in got for m in share) == Counter(bodies)
    assert all(share for share in got), [len(share) for share in got]  # spread over members
    assert {(m.topic, m.qos) for share in got for m in share} == {(f"{topic}/x", 1)}


def test_a_member_dropping_out_gives_its_unacknowledged_messages_to_the_group(broker, clients):
    topic, group = uid("drop"), uid("g")
    raw = RawMQTT(broker)
    raw.connect(uid("raw"))
    raw.send(subscribe_packet(1, (f"$share/{group}/{topic}", 1)))
    assert raw.read().body == b"\x00\x01\x01"
    stays = clients()
    stays.subscribe((f"$share/{group}/{topic}", 1))
    pub = clients()
    pub.publish(topic, b"first", qos=1)
    pub.publish(topic, b"second", qos=1)
    # Turn by turn: one went to the raw member, which never acknowledges it.
    held = raw.read().publish()
    assert held[1] in (b"first", b"second") and held[2] == 1
    other = stays.message()
    assert other.payload != held[1]
    raw.close()
    again = stays.message()
    assert (again.payload, again.dup) == (held[1], True)


def test_a_persistent_member_keeps_the_group_and_the_last_member_ends_it(broker, clients):
    topic, group = uid("keep"), uid("g")
    keeper_id = uid("keeper")
    keeper = Paho(broker, client_id=keeper_id, clean=False)
    keeper.connect()
    keeper.subscribe((f"$share/{group}/{topic}", 1))
    keeper.close()
    # A clean member gets every message (the only one connected), acknowledges none, then
    # leaves: unsubscribe, then its connection ends. The persistent member still holds the
    # group, so what the clean one had is given back to the group, not lost.
    raw = RawMQTT(broker)
    raw.connect(uid("raw"))
    raw.send(subscribe_packet(1, (f"$share/{group}/{topic}", 1)))
    assert raw.read().type == 9
    pub = clients()
    for n in range(3):
        pub.publish(topic, b"m%d" % n, qos=1)
    assert sorted(raw.read().publish()[1] for _ in range(3)) == [b"m0", b"m1", b"m2"]
    raw.send(unsubscribe_packet(2, f"$share/{group}/{topic}"))
    assert raw.read().type == 11  # UNSUBACK
    raw.close()
    keeper = Paho(broker, client_id=keeper_id, clean=False)
    assert keeper.connect()[1] is True  # session present, its shared subscription with it
    assert sorted(keeper.message().payload for _ in range(3)) == [b"m0", b"m1", b"m2"]
    assert shared_queue_exists(broker, group, topic)
    keeper.unsubscribe(f"$share/{group}/{topic}")
    keeper.close()
    assert not shared_queue_exists(broker, group, topic)


def test_retained_messages_are_not_sent_on_a_shared_subscription(clients):
    topic, group = uid("ret"), uid("g")
    pub = clients()
    pub.publish(topic, b"retained", qos=1, retain=True)
    member = clients()
    member.subscribe((f"$share/{group}/{topic}", 1))
    pub.publish(topic, b"live", qos=1, retain=True)
    msg = member.message()
    assert (msg.payload, msg.retain) == (b"live", False)
    pub.publish(topic, b"", qos=1, retain=True)  # clears it for the other tests
    assert member.message().payload == b""


def test_invalid_shared_and_sys_filters_get_suback_failure(broker):
    raw = RawMQTT(broker)
    raw.connect(uid("raw"))
    # ($SYS filters of their own are granted to monitoring users: test_mqtt_sys.py)
    refused = ["$share//t", "$share/a+/t", "$share/a#/t", "$share/g", "$share/g/"]
    refused += ["$SYS/a/#/b", "$share/g/$SYS/#", "$share/g/a/#/b"]
    filters = [(f, 1) for f in refused] + [(f"$share/{uid('g')}/t", 2)]
    raw.send(subscribe_packet(7, *filters))
    suback = raw.read()
    assert suback.type == 9
    assert suback.body == b"\x00\x07" + b"\x80" * len(refused) + b"\x02"
    raw.close()


def test_an_amqp_publish_reaches_the_group_once(broker, clients):
    topic, group = uid("cross"), uid("g")
    members = [clients() for _ in range(2)]
    for member in members:
        member.subscribe((f"$share/{group}/{topic}/#", 1))
    with channel(broker) as ch:
        for n in range(10):
            ch.basic_publish(
                "amq.topic", f"{topic}.a", b"%d" % n, pika.BasicProperties(delivery_mode=2)
            )
    got = gather(members, 10)
    assert Counter(m.payload for share in got for m in share) == Counter(
        b"%d" % n for n in range(10)
    )
    assert all(got)


def test_amqtt_and_paho_share_a_group(broker, clients):
    from amqtt.client import MQTTClient

    topic, group = uid("amqtt-share"), uid("g")
    url = f"mqtt://guest:guest@{broker.host}:{broker.mqtt_port}/"
    paho = clients()
    assert paho.subscribe((f"$share/{group}/{topic}", 2)) == [2]

    async def run() -> list[tuple[bytes, int]]:
        member = MQTTClient(client_id=uid("amqtt"))
        await member.connect(url, cleansession=True)
        assert await member.subscribe([(f"$share/{group}/{topic}", 1)]) == [1]
        pub = MQTTClient(client_id=uid("amqtt-pub"))
        await pub.connect(url, cleansession=True)
        for n in range(6):
            await pub.publish(topic, b"%d" % n, qos=2)
        await pub.disconnect()
        got = []
        deadline = time.monotonic() + 10
        while len(got) + paho.messages.qsize() < 6:
            assert time.monotonic() < deadline, "not every message arrived"
            try:
                message = await member.deliver_message(0.05)
            except TimeoutError:
                continue
            assert message is not None
            got.append((bytes(message.data), message.qos))
        await member.disconnect()
        return got

    by_amqtt = asyncio.run(run())
    by_paho = [(m.payload, m.qos) for m in (paho.message() for _ in range(6 - len(by_amqtt)))]
    assert sorted(p for p, _ in by_amqtt + by_paho) == [b"%d" % n for n in range(6)]
    assert by_amqtt and by_paho
    # Each member at the QoS it was granted: min(published 2, requested).
    assert {q for _, q in by_amqtt} == {1} and {q for _, q in by_paho} == {2}


def test_a_client_cannot_publish_into_dollar_topics(broker):
    raw = RawMQTT(broker)
    raw.connect(uid("raw"))
    raw.send(publish_packet("$SYS/broker/uptime", b"forged", qos=1, packet_id=1))
    assert raw.closed_by_broker()


def test_a_group_of_persistent_members_survives_kill_9(broker_factory):
    b = broker_factory()
    topic, group, keeper_id = uid("crash"), uid("g"), uid("keeper")
    keeper = Paho(b, client_id=keeper_id, clean=False)
    keeper.connect()
    keeper.subscribe((f"$share/{group}/{topic}", 1))
    passer = Paho(b)  # a clean member: it leaves the group when the node goes
    passer.connect()
    passer.subscribe((f"$share/{group}/{topic}", 1))
    passer.stop()
    keeper.close()
    pub = Paho(b)
    pub.connect()
    for n in range(4):
        pub.publish(topic, b"%d" % n, qos=1)
    pub.stop()
    b.restart(kill=True)
    keeper = Paho(b, client_id=keeper_id, clean=False)
    assert keeper.connect()[1] is True
    # What the clean member had in flight went back to the group when the node restarted.
    assert sorted(keeper.message().payload for _ in range(4)) == [b"%d" % n for n in range(4)]
    keeper.unsubscribe(f"$share/{group}/{topic}")
    keeper.close()
    assert not shared_queue_exists(b, group, topic)


def test_members_on_every_node_of_a_cluster_share_the_group(cluster):
    topic, group = uid("spread"), uid("g")
    cluster.leader()
    members = []
    try:
        for n in cluster.ids:
            member = Paho(cluster.nodes[n])
            member.connect()
            members.append(member)
            assert member.subscribe((f"$share/{group}/{topic}", 1)) == [1]
        publisher = members[0]
        bodies = [b"%d" % n for n in range(30)]
        for body in bodies:
            publisher.publish(topic, body, qos=1)
        got = gather(members, len(bodies))
        assert Counter(m.payload for share in got for m in share) == Counter(bodies)
        assert all(got), [len(share) for share in got]
    finally:
        for member in members:
            member.close()
