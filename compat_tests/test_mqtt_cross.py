"""MQTT and AMQP on one core: amq.topic joins them, with QoS and persistence carried across."""

from __future__ import annotations

import pika
import pytest

from compat_tests.helpers import channel, wait_get
from compat_tests.mqtt_helpers import Paho, uid

pytestmark = pytest.mark.own_broker


def test_paho_publish_reaches_pika_queue_bound_to_amq_topic(broker):
    queue = uid("amqp-side")
    device = uid("dev")
    with channel(broker) as ch:
        ch.queue_declare(queue, durable=True)
        ch.queue_bind(queue, "amq.topic", f"{device}.*.temp")
        paho = Paho(broker)
        paho.connect()
        paho.publish(f"{device}/42/temp", b"21.5", qos=1)
        paho.publish(f"{device}/43/temp", b"19.0", qos=0, retain=True)
        paho.publish(f"{device}/42/humidity", b"80", qos=1)
        paho.close()
        method, props, body = wait_get(ch, queue)
        assert (method.routing_key, body) == (f"{device}.42.temp", b"21.5")
        assert props.delivery_mode == 2
        assert props.headers == {"x-mqtt-publish-qos": 1, "x-mqtt-retain": False}
        method, props, body = wait_get(ch, queue)
        assert (method.routing_key, body) == (f"{device}.43.temp", b"19.0")
        assert props.delivery_mode == 1
        assert props.headers == {"x-mqtt-publish-qos": 0, "x-mqtt-retain": True}
        assert ch.basic_get(queue)[0] is None  # humidity did not match
        ch.queue_delete(queue)


def test_pika_publish_to_amq_topic_reaches_paho_subscriber(broker):
    device = uid("dev")
    paho = Paho(broker)
    paho.connect()
    paho.subscribe((f"{device}/+/temp", 2))
    with channel(broker) as ch:
        persistent = pika.BasicProperties(delivery_mode=2)
        ch.basic_publish("amq.topic", f"{device}.7.temp", b"persistent", persistent)
        ch.basic_publish("amq.topic", f"{device}.8.temp", b"transient")
    first, second = paho.message(), paho.message()
    # As RabbitMQ does it: persistent AMQP messages are QoS 1, others QoS 0.
    assert (first.topic, first.payload, first.qos) == (f"{device}/7/temp", b"persistent", 1)
    assert (second.topic, second.payload, second.qos) == (f"{device}/8/temp", b"transient", 0)
    paho.close()


def test_dots_and_slashes_swap_between_protocols(broker):
    queue = uid("dots")
    with channel(broker) as ch:
        ch.queue_declare(queue, exclusive=True)
        ch.queue_bind(queue, "amq.topic", "v1/2.#")
        paho = Paho(broker)
        paho.connect()
        paho.subscribe(("v1.2/#", 1))
        paho.publish("v1.2/x", b"dotted", qos=1)
        assert wait_get(ch, queue)[0].routing_key == "v1/2.x"
        assert paho.message().topic == "v1.2/x"
        ch.basic_publish("amq.topic", "v1/2.y", b"from amqp", pika.BasicProperties(delivery_mode=2))
        msg = paho.message()
        assert (msg.topic, msg.payload) == ("v1.2/y", b"from amqp")
        paho.close()


def test_mqtt_session_queue_is_visible_to_amqp_tools(broker):
    client_id = uid("visible")
    paho = Paho(broker, client_id=client_id, clean=False)
    paho.connect()
    paho.subscribe((uid("t"), 1))
    paho.close()
    listing = broker.cli("queues", "list").stdout
    assert f"mqtt-subscription-{client_id}\t0\t0" in listing
    clean = Paho(broker, client_id=client_id, clean=True)
    clean.connect()
    clean.close()
