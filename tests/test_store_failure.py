"""A write the disk refuses: no protocol confirms what is not on disk, each says so its way.

Driven through the real adapters on the node's gateway and committer, over a disk in memory
that is told to fail its next write.
"""

from __future__ import annotations

import asyncio

from pamqp import commands as spec
from pamqp import frame

from broker.protocols.amqp import codec as amqp_codec
from broker.protocols.mqtt import codec as mqtt_codec
from tests.test_amqp_codec import Client
from tests.test_http_service import FakeNode as HttpNode
from tests.test_mqtt_connection import Node as MqttNode


def test_amqp_confirms_become_nacks() -> None:
    client = Client()
    client.handshake()
    client.method(1, spec.Channel.Open())
    client.method(1, spec.Queue.Declare(queue="q"))
    client.method(1, spec.Confirm.Select())
    publish = frame.marshal(spec.Basic.Publish(routing_key="q"), 1)
    message = publish + amqp_codec.content_frames(
        1, amqp_codec.encode_properties({"delivery_mode": 2}), b"m", 131072
    )
    client.commit.fail_next_write = OSError("no space left on device")
    frames = client.send(message + message)
    assert [type(f).__name__ for _, f in frames] == ["Nack", "Nack"]
    assert client.commit.state.queue("/", "q").ready_count == 0


def test_mqtt_qos1_gets_no_puback_and_the_connection_closes() -> None:
    node = MqttNode()
    pub = node.connected("pub")
    node.commit.fail_next_write = OSError("no space left on device")
    pub.receive_data(mqtt_codec.publish(b"t", b"m", 1, False, False, 7))
    assert node.sent(pub) == []
    assert pub.should_close


def test_http_answers_an_internal_error() -> None:
    async def scenario() -> None:
        node = HttpNode()
        await node.request("CreateQueue", queueName="q")
        node.commit.fail_next_write = OSError("no space left on device")
        reply = await asyncio.wait_for(node.request("SendMessage", queueName="q", msgBody="m"), 5)
        assert (reply["code"], reply["message"]) == (
            6000,
            "the node cannot store anything: its disk failed",
        )
        later = await node.request("ListQueue")
        assert later["code"] == 0  # reads still work

    asyncio.run(scenario())
