"""A client that leaves is freed by reference counting, at once, not by the garbage collector.

The node collects young objects rarely (cli.serve raises the threshold to 200 000 allocations),
so a connection caught in a reference cycle, or held by a timer still pending, stays in memory
long after its client left: under connection churn the node grew by kilobytes per connection
(compat_tests/test_soak.py). Each test here runs with the collector off and checks that the
last reference to go frees the object.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from broker.core.model import User
from broker.protocols.amqp.connection import Settings as AMQPSettings
from broker.protocols.amqp.server import AMQPProtocol
from broker.protocols.mqtt.connection import Settings as MQTTSettings
from broker.protocols.mqtt.server import MQTTProtocol
from broker.protocols.timer_wheel import TimerWheel

from .memory_gateway import memory_gateway
from .pure_python import pure_python_only
from .test_mqtt_connection import connect


@pytest.fixture
def no_collector() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


class _Transport(asyncio.Transport):
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 50000) if name == "peername" else default

    def write(self, data: Any) -> None:
        pass

    def is_closing(self) -> bool:
        return False


def _run(scenario: Callable[[], Awaitable[list[weakref.ref[Any]]]]) -> list[Any]:
    """What the references point to once the scenario's objects went out of scope."""
    loop = asyncio.new_event_loop()
    try:
        return [ref() for ref in loop.run_until_complete(scenario())]
    finally:
        loop.close()


def test_a_lost_amqp_connection_is_freed_with_its_channels(no_collector: None) -> None:
    async def scenario() -> list[weakref.ref[Any]]:
        gateway, _ = memory_gateway()
        protocol = AMQPProtocol(
            gateway, AMQPSettings(), handshake_timeout=60, deadlines=TimerWheel()
        )
        protocol.connection_made(_Transport())
        assert protocol.conn is not None
        protocol.conn.user = User("guest", "", ())  # as if logged in
        protocol.conn._open_channel(1)
        refs = [weakref.ref(o) for o in (protocol, protocol.conn, protocol.conn.channels[1])]
        protocol.connection_lost(None)
        return refs

    assert _run(scenario) == [None, None, None]


@pure_python_only
def test_an_mqtt_connection_is_freed_once_its_client_left(no_collector: None) -> None:
    async def scenario() -> list[weakref.ref[Any]]:
        gateway, commit = memory_gateway()
        protocol = MQTTProtocol(
            gateway, MQTTSettings(), handshake_timeout=60, websocket=False, deadlines=TimerWheel()
        )
        protocol.connection_made(_Transport())
        packet = bytearray(connect("release", clean=True))
        packet[10:12] = (60).to_bytes(2, "big")  # a keepalive, as paho's default
        protocol.data_received(bytes(packet))
        commit.run()  # the session is open: CONNACK
        refs = [weakref.ref(protocol), weakref.ref(protocol.conn)]
        protocol.connection_lost(None)
        commit.run()
        return refs

    # nor does the node's timer wheel, which held the connection for its keepalive
    assert _run(scenario) == [None, None]
