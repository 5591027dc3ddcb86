"""MQTT retained messages: kept, replaced, cleared, sent on subscribe with RETAIN, wildcards."""

from __future__ import annotations

import pytest

from compat_tests.mqtt_helpers import uid

pytestmark = pytest.mark.own_broker


def test_retained_message_is_sent_on_subscribe_with_retain_flag(clients):
    topic = uid("ret")
    pub = clients()
    pub.publish(topic, b"last known", qos=1, retain=True)
    sub = clients()
    sub.subscribe((topic, 1))
    msg = sub.message()
    assert (msg.payload, msg.retain, msg.qos) == (b"last known", True, 1)
    # Live deliveries to an established subscription carry RETAIN=0, even if retained.
    pub.publish(topic, b"live", qos=1, retain=True)
    msg = sub.message()
    assert (msg.payload, msg.retain) == (b"live", False)


def test_retained_message_is_replaced(clients):
    topic = uid("ret")
    pub = clients()
    pub.publish(topic, b"v1", qos=1, retain=True)
    pub.publish(topic, b"v2", qos=1, retain=True)
    sub = clients()
    sub.subscribe((topic, 1), (topic + "/marker", 1))
    pub.publish(topic + "/marker", b"marker", qos=1)
    assert [(m.payload, m.retain) for m in sub.messages_until(b"marker")] == [(b"v2", True)]


def test_empty_retained_payload_clears_and_is_still_delivered(clients):
    topic = uid("ret")
    pub = clients()
    pub.publish(topic, b"soon gone", qos=1, retain=True)
    live = clients()
    live.subscribe((topic, 1))
    assert live.message().payload == b"soon gone"
    pub.publish(topic, b"", qos=1, retain=True)
    assert live.message().payload == b""
    late = clients()
    late.subscribe((topic, 1), (topic + "/marker", 1))
    pub.publish(topic + "/marker", b"marker", qos=1)
    assert late.messages_until(b"marker") == []


def test_wildcard_filters_receive_matching_retained_messages(clients):
    base = uid("ret")
    pub = clients()
    for topic in (f"{base}/a/1", f"{base}/b/2", f"{base}/c", f"{base}/a/1/deep"):
        pub.publish(topic, topic.encode(), qos=0, retain=True)
    pub.publish(f"{base}-sync", b"", qos=1)  # its PUBACK: the QoS 0 publishes went through
    sub = clients()
    sub.subscribe((f"{base}/+/+", 0), (f"{base}/#", 0))
    pub.publish(f"{base}/marker", b"marker", qos=1)
    got = [(m.topic, m.retain) for m in sub.messages_until(b"marker")]
    # Each retained message once, though two filters match some of them.
    assert sorted(got) == [
        (f"{base}/a/1", True),
        (f"{base}/a/1/deep", True),
        (f"{base}/b/2", True),
        (f"{base}/c", True),
    ]


def test_retained_message_keeps_its_qos_below_the_subscription(clients):
    topic = uid("ret")
    clients().publish(topic, b"q1", qos=1, retain=True)
    sub = clients()
    sub.subscribe((topic, 2))
    msg = sub.message()
    assert (msg.payload, msg.qos, msg.retain) == (b"q1", 1, True)


def test_resubscribing_sends_retained_messages_again(clients):
    topic = uid("ret")
    clients().publish(topic, b"again", qos=1, retain=True)
    sub = clients()
    sub.subscribe((topic, 1))
    assert sub.message().retain
    sub.subscribe((topic, 1))
    msg = sub.message()
    assert (msg.payload, msg.retain) == (b"again", True)
