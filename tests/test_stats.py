"""The rate sampler: counts of the newest sample, rates between the last two."""

from __future__ import annotations

import asyncio

from broker.core import commands as c
from broker.gateway import PROTOCOLS, Traffic
from broker.stats import RateSampler, Sample, read
from tests.core_helpers import VH, Core


def scripted(samples: list[Sample]) -> RateSampler:
    """A sampler reading `samples` one after the other."""
    it = iter(samples)
    return RateSampler(lambda: next(it), interval=5.0)


def test_rates_are_the_change_over_the_last_interval() -> None:
    sampler = scripted(
        [
            Sample(0.0, {"publish": 10}, {("/", "q"): (10, 0, 0, 0, 0, 0)}),
            Sample(5.0, {"publish": 60}, {("/", "q"): (30, 5, 0, 5, 0, 0)}),
            Sample(10.0, {"publish": 70}, {("/", "q"): (30, 5, 0, 5, 0, 0)}),
        ]
    )
    sampler.sample()
    assert sampler.rate("publish") == 0.0  # one sample: no rate yet
    sampler.sample()
    assert sampler.rate("publish") == 10.0
    assert sampler.rate("publish", ("/", "q")) == 4.0
    assert sampler.rate("ack", ("/", "q")) == 1.0
    sampler.sample()
    assert sampler.rate("publish") == 2.0
    assert sampler.rate("publish", ("/", "q")) == 0.0


def test_message_stats_have_rabbitmqs_shape() -> None:
    sampler = scripted(
        [
            Sample(0.0, {"publish": 0, "ack": 0}, {("/", "q"): (0, 0, 0, 0, 0, 0)}),
            Sample(2.0, {"publish": 5, "ack": 1}, {("/", "q"): (5, 3, 1, 1, 0, 0)}),
        ]
    )
    assert sampler.message_stats() == {}
    sampler.sample()
    sampler.sample()
    assert sampler.message_stats() == {
        "publish": 5,
        "publish_details": {"rate": 2.5},
        "ack": 1,
        "ack_details": {"rate": 0.5},
    }
    stats = sampler.message_stats(("/", "q"))
    assert stats["deliver_get"] == 3 and stats["deliver_get_details"] == {"rate": 1.5}
    assert stats["redeliver"] == 1
    assert sampler.message_stats(("/", "gone")) == {}


def test_a_counter_going_down_gives_no_negative_rate() -> None:
    sampler = scripted([Sample(0.0, {"drop": 9}), Sample(1.0, {"drop": 4})])
    sampler.sample()
    sampler.sample()
    assert sampler.rate("drop") == 0.0


def test_read_sums_protocols_and_queues_with_deleted_ones() -> None:
    core = Core()
    core.queue("a")
    core.queue("b")
    core.publish("a", b"1")
    core.publish("b", b"2")
    assert core.get("a") is not None
    msg = core.get("b")
    assert msg is not None
    core.settle("ack", "b", msg.seq)
    core.apply(c.DeleteQueue(VH, "b"))
    traffic = {p: Traffic() for p in PROTOCOLS}
    traffic["amqp091"].received = 2
    traffic["mqtt"].received = 3
    traffic["http"].delivered = 4
    sample = read(traffic, core.sm, at=1.0)
    assert sample.node == {
        "publish": 5,
        "deliver_get": 4,
        "ack": 1,
        "redeliver": 0,
        "drop": 0,
        "dead_letter": 0,
    }
    assert sample.queues == {("/", "a"): (1, 1, 0, 0, 0, 0)}


def test_started_it_samples_on_its_own() -> None:
    reads: list[int] = []

    def counting() -> Sample:
        reads.append(len(reads))
        return Sample(float(len(reads)), {"publish": 3 * len(reads)})

    async def main() -> float:
        sampler = RateSampler(counting, interval=0.01)
        sampler.start()
        deadline = asyncio.get_running_loop().time() + 5
        while len(reads) < 3 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        await sampler.stop()
        return sampler.rate("publish")

    assert asyncio.run(main()) == 3.0
    assert len(reads) >= 3
