"""MQTT `$SYS` topics, as Mosquitto publishes them, so MQTT dashboards that watch them work.

Every `interval` seconds (Mosquitto's sys_interval) the values that changed since the last
round go out as retained QoS 0 messages on `amq.topic` of the MQTT vhost, through the core
like any retained publish (StoreRetained and Publish, one Batch): a subscriber of `$SYS/#`
gets the current values when it subscribes and the changes as they come. Only users tagged
monitoring or administrator may subscribe (connection.SYS_TAGS), and filters starting with a
wildcard never match them (MQTT 3.1.1, 4.7.2).

The values are node-wide: clients and retained messages from the core state (a cluster's),
messages counted by this node's MQTT connections. The retained values are cluster state, so in
a cluster only the leader publishes them (`active`, set as leadership changes), as only it runs
the CMQ pushers. `messages/*` count packets of every kind,
`publish/messages/*` PUBLISH packets; `load/*/1min` (5min, 15min) are those per minute,
averaged with an exponential decay over the window, as Mosquitto's are.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

from broker import __version__
from broker.core import commands as c
from broker.core.errors import BrokerError
from broker.core.state import StateMachine
from broker.gateway import Gateway
from broker.periodic import Periodic
from broker.protocols.mqtt.session import QUEUE_PREFIX, SHARED_QUEUE_PREFIX
from broker.protocols.mqtt.topics import to_routing_key

log = logging.getLogger(__name__)

EXCHANGE = "amq.topic"
#: retained QoS 0, as the MQTT adapter marks its own publishes
PROPERTIES: dict[str, Any] = {
    "delivery_mode": 1,
    "headers": {"x-mqtt-publish-qos": 0, "x-mqtt-retain": True},
}
#: averaging windows of the load topics, minutes
WINDOWS = (1, 5, 15)
#: counters averaged as loads: topic part -> what it reads from the MQTT traffic
LOADS: dict[str, Callable[[Any], int]] = {
    "messages/received": lambda t: t.packets_received,
    "messages/sent": lambda t: t.packets_sent,
    "publish/received": lambda t: t.received,
    "publish/sent": lambda t: t.delivered,
}


class SysTopics:
    def __init__(
        self,
        gateway: Gateway,
        vhost: str,
        interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.gateway = gateway
        self.vhost = vhost
        self._clock = clock
        self._started = clock()
        self._last_round = self._started
        self._last_counts = {name: 0 for name in LOADS}
        #: (load name, window) -> messages per minute, decayed
        self._loads = {(name, w): 0.0 for name in LOADS for w in WINDOWS}
        self._maximum = 0
        #: topic -> payload last published
        self._published: dict[str, str] = {}
        self._every = Periodic(self.publish, interval)
        #: publish from this node (a cluster's leader only: see set_active)
        self.active = True

    def set_active(self, active: bool) -> None:
        """Publish from this node or not; a new leader publishes every topic again."""
        if active and not self.active:
            self._published.clear()
        self.active = active

    def start(self) -> None:
        self._every.start()

    async def stop(self) -> None:
        await self._every.stop()

    def values(self) -> dict[str, str]:
        """Every `$SYS` topic and its payload now (the loads move on with each call)."""
        state = self.gateway.committed
        traffic = self.gateway.traffic["mqtt"]
        now = self._clock()
        self._update_loads(traffic, now)
        connected, disconnected = _clients(state)
        self._maximum = max(self._maximum, connected)
        out = {
            "$SYS/broker/version": f"broker version {__version__}",
            "$SYS/broker/uptime": f"{int(now - self._started)} seconds",
            "$SYS/broker/clients/connected": str(connected),
            "$SYS/broker/clients/disconnected": str(disconnected),
            "$SYS/broker/clients/total": str(connected + disconnected),
            "$SYS/broker/clients/maximum": str(self._maximum),
            "$SYS/broker/messages/received": str(traffic.packets_received),
            "$SYS/broker/messages/sent": str(traffic.packets_sent),
            "$SYS/broker/publish/messages/received": str(traffic.received),
            "$SYS/broker/publish/messages/sent": str(traffic.delivered),
            "$SYS/broker/retained messages/count": str(
                sum(len(vh.retained) for vh in state.vhosts.values())
            ),
            "$SYS/broker/subscriptions/count": str(_subscriptions(state)),
        }
        for (name, window), load in self._loads.items():
            out[f"$SYS/broker/load/{name}/{window}min"] = f"{load:.2f}"
        return out

    def _update_loads(self, traffic: Any, now: float) -> None:
        elapsed = now - self._last_round
        if elapsed <= 0:
            return
        for name, read in LOADS.items():
            count = read(traffic)
            per_minute = (count - self._last_counts[name]) * 60.0 / elapsed
            self._last_counts[name] = count
            for window in WINDOWS:
                decay = math.exp(-elapsed / (60.0 * window))
                key = (name, window)
                self._loads[key] = self._loads[key] * decay + per_minute * (1 - decay)
        self._last_round = now

    def publish(self) -> None:
        """One round: the topics whose payload changed go out, retained."""
        if not self.active or self.vhost not in self.gateway.committed.vhosts:
            return
        commands: list[c.Command] = []
        for topic, payload in self.values().items():
            if self._published.get(topic) == payload:
                continue
            self._published[topic] = payload
            key = to_routing_key(topic)
            body = payload.encode()
            commands.append(c.StoreRetained(self.vhost, EXCHANGE, key, PROPERTIES, body))
            # Mandatory: an update nobody subscribes to is not counted and logged as a
            # dropped message (the reply, which says it was not routed, is ignored).
            commands.append(c.Publish(self.vhost, EXCHANGE, key, PROPERTIES, body, True))
        if commands:
            self.gateway.submit(c.Batch(commands), self._done, durable=False)

    def _done(self, reply: Any, error: BrokerError | None) -> None:
        if error is not None:
            # Published again in full next round (the vhost may come back, the store recover).
            self._published.clear()
            log.debug("$SYS topics not published: %s", error)


def _clients(state: StateMachine) -> tuple[int, int]:
    """MQTT clients connected, and persistent sessions whose client is not."""
    connected = len(state.sessions)
    disconnected = sum(
        1
        for (vhost, group), records in state.records.items()
        if group[:1] == ("mqtt",)
        and "session" in records
        and (vhost, group[1]) not in state.sessions
    )
    return connected, disconnected


def _subscriptions(state: StateMachine) -> int:
    """Subscriptions of MQTT sessions: the bindings of their queues to amq.topic."""
    total = 0
    for vh in state.vhosts.values():
        for key in vh.bindings.get(EXCHANGE, ()):
            destination = key.destination
            if key.to_queue and (
                destination.startswith(QUEUE_PREFIX) or destination.startswith(SHARED_QUEUE_PREFIX)
            ):
                total += 1
    return total
