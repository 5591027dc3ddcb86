"""Long runs, left out of CI (`bash scripts/test.sh -m slow`): connection churn must not leak.

Python brokers have a history of growing per connection (hbmqtt, amqtt). Each round here opens
and closes AMQP connections that declare an exclusive queue, consume and publish, and MQTT
connections that publish at QoS 1; after a warm-up the broker's resident memory must level off.
"""

from __future__ import annotations

import paho.mqtt.client as mqtt
import pika
import pytest

from .helpers import uid

pytestmark = [pytest.mark.slow, pytest.mark.own_broker]


def _resident_kib(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * 4096 // 1024


def _churn(broker, rounds: int) -> None:
    for _ in range(rounds):
        conn = pika.BlockingConnection(broker.params())
        ch = conn.channel()
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.basic_consume(q, lambda *a: None)
        ch.basic_publish("", q, b"x" * 100)
        conn.process_data_events(time_limit=0.01)
        conn.close()
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=uid("churn"), protocol=mqtt.MQTTv311
        )
        client.username_pw_set("guest", "guest")
        client.connect(broker.host, broker.mqtt_port)
        client.loop_start()
        try:
            client.publish("churn/t", b"y", qos=1).wait_for_publish(10)
        finally:
            client.loop_stop()
            client.disconnect()


@pytest.mark.timeout(1800)
def test_connection_churn_levels_off(fresh_broker):
    pid = fresh_broker.proc.pid
    _churn(fresh_broker, 300)  # warm-up: allocator arenas, caches
    levels = [_resident_kib(pid)]
    for _ in range(3):
        _churn(fresh_broker, 300)
        levels.append(_resident_kib(pid))
    growth = [b - a for a, b in zip(levels, levels[1:], strict=False)]
    assert growth[-1] < 2048, f"still growing after warm-up: {growth} KiB per 300 rounds"
    assert levels[-1] - levels[0] < 8192, f"grew {levels[-1] - levels[0]} KiB: {growth}"
