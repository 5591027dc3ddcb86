"""MQTT fleets: hundreds of device connections at once, each a raw socket.

Devices publish QoS 1 telemetry to one subscriber on `telemetry/#`: every PUBACKed message
must reach it. Keepalive deadlines of many connections at once (the node keeps them all under
one timer) still close a silent device after 1.5 x its keepalive, and only the silent ones.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from .mqtt_helpers import (
    Received,
    ack_packet,
    connect_packet,
    publish_packet,
    subscribe_packet,
    uid,
)

DEVICES = 300
PUBLISHES = 3
#: devices connecting at once (the rest wait their turn)
CONNECTING = 50
TIMEOUT = 30.0

PUBLISH, PUBACK, SUBACK, PINGRESP = 3, 4, 9, 13


async def read_packet(reader: asyncio.StreamReader) -> Received:
    first = (await reader.readexactly(1))[0]
    length, shift = 0, 0
    while True:
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    return Received(first >> 4, first & 0x0F, await reader.readexactly(length))


async def open_device(
    broker: Any, client_id: str, keepalive: int = 60
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(broker.host, broker.mqtt_port)
    writer.write(connect_packet(client_id, keepalive=keepalive))
    connack = await asyncio.wait_for(read_packet(reader), TIMEOUT)
    assert connack.type == 2 and connack.body[1] == 0, connack
    return reader, writer


async def subscriber(broker: Any, subscribed: asyncio.Event, expected: int) -> set[bytes]:
    """Acks every delivery; returns the payloads once it has `expected` of them."""
    reader, writer = await open_device(broker, uid("fleet-sub"))
    writer.write(subscribe_packet(1, ("telemetry/#", 1)))
    suback = await asyncio.wait_for(read_packet(reader), TIMEOUT)
    assert suback.type == SUBACK and suback.body[2:] == b"\x01", suback
    subscribed.set()
    payloads: set[bytes] = set()
    while len(payloads) < expected:
        got = await read_packet(reader)
        assert got.type == PUBLISH, got
        _, payload, qos, _, _, packet_id = got.publish()
        assert qos == 1
        payloads.add(payload)
        writer.write(ack_packet("puback", packet_id))
    writer.close()
    return payloads


async def device(broker: Any, number: int, run: str, gate: asyncio.Semaphore) -> list[bytes]:
    """Publishes PUBLISHES messages at QoS 1; returns the payloads the broker PUBACKed."""
    async with gate:
        reader, writer = await open_device(broker, f"{run}-{number}")
    payloads = {seq + 1: f"{run}/{number}/{seq}".encode() for seq in range(PUBLISHES)}
    for packet_id, payload in payloads.items():
        writer.write(publish_packet(f"telemetry/{run}/{number}", payload, 1, packet_id))
    acked = []
    while len(acked) < len(payloads):
        got = await read_packet(reader)
        assert got.type == PUBACK, got
        acked.append(payloads[got.packet_id])
    writer.close()
    return acked


def test_every_pubacked_message_of_a_fleet_is_delivered(fresh_broker):
    async def main() -> None:
        run = uid("fleet")
        subscribed = asyncio.Event()
        listening = asyncio.create_task(subscriber(fresh_broker, subscribed, DEVICES * PUBLISHES))
        await asyncio.wait_for(subscribed.wait(), TIMEOUT)
        gate = asyncio.Semaphore(CONNECTING)
        sent = await asyncio.wait_for(
            asyncio.gather(*(device(fresh_broker, n, run, gate) for n in range(DEVICES))),
            TIMEOUT,
        )
        pubacked = {payload for acked in sent for payload in acked}
        assert len(pubacked) == DEVICES * PUBLISHES
        delivered = await asyncio.wait_for(listening, TIMEOUT)
        assert pubacked - delivered == set()

    asyncio.run(main())


def test_keepalive_closes_the_silent_devices_of_a_fleet_and_only_them(fresh_broker):
    """Half the devices ping twice a second within a 1 s keepalive, half say nothing: the
    silent ones are closed after 1.5 s (not before), the others stay."""

    async def ping_until(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stop: asyncio.Event
    ) -> None:
        while not stop.is_set():
            writer.write(b"\xc0\x00")
            assert (await asyncio.wait_for(read_packet(reader), TIMEOUT)).type == PINGRESP
            await asyncio.sleep(0.5)

    async def closed_after(reader: asyncio.StreamReader, start: float) -> float:
        assert await reader.read() == b""  # nothing comes before the broker closes
        return time.monotonic() - start

    async def main() -> None:
        run = uid("keepalive")
        gate = asyncio.Semaphore(CONNECTING)

        async def connected(number: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            async with gate:
                return await open_device(fresh_broker, f"{run}-{number}", keepalive=1)

        pinging = [await connected(n) for n in range(50)]
        stop = asyncio.Event()
        pings = [asyncio.create_task(ping_until(r, w, stop)) for r, w in pinging]
        start = time.monotonic()
        silent = await asyncio.gather(*(connected(n) for n in range(50, 250)))
        # Each silent device's clock starts at its CONNECT, at most this long after `start`.
        connected_within = time.monotonic() - start
        lasted = await asyncio.wait_for(
            asyncio.gather(*(closed_after(r, start) for r, _ in silent)), TIMEOUT
        )
        assert min(lasted) >= 1.4  # its deadline is 1.5 s after its CONNECT, after `start`
        assert max(lasted) < 1.5 + connected_within + 2.5
        # The pinging devices outlived the silent ones' deadline, and are still served.
        assert not any(task.done() for task in pings)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*pings), TIMEOUT)
        for _, writer in (*pinging, *silent):
            writer.close()

    asyncio.run(main())
