"""Queue depth rates of the management API (broker/management/rates.py): the change between
the last two samples, per second; a sample only when the last is old enough; none before two
samples; gone with the queue; vhost totals too."""

from __future__ import annotations

from broker.core import commands as c
from broker.management.rates import DepthRates
from tests.core_helpers import VH, Core


def test_rates_are_the_change_between_the_last_two_samples() -> None:
    core = Core()
    core.apply(c.DeclareQueue(VH, "q"))
    now = [0.0]
    rates = DepthRates(clock=lambda: now[0])
    rates.refresh(core.sm)
    assert rates.details(VH, "q") == {} and rates.total_details([VH]) == {}
    for i in range(10):
        core.apply(c.Publish(VH, "", "q", {}, b"%d" % i))
    now[0] = 1.0
    rates.refresh(core.sm)  # too soon: no sample
    assert rates.details(VH, "q") == {}
    now[0] = 5.0
    rates.refresh(core.sm)
    assert rates.details(VH, "q") == {
        "messages_details": {"rate": 2.0},
        "messages_ready_details": {"rate": 2.0},
        "messages_unacknowledged_details": {"rate": 0.0},
    }
    assert rates.total_details([VH]) == rates.details(VH, "q")
    core.apply(c.Get(VH, "q", (1, 1, 1)))
    core.apply(c.DeclareQueue(VH, "new"))
    now[0] = 10.0
    rates.refresh(core.sm)
    details = rates.details(VH, "q")
    assert details["messages_ready_details"] == {"rate": -0.2}
    assert details["messages_unacknowledged_details"] == {"rate": 0.2}
    assert details["messages_details"] == {"rate": 0.0}
    assert rates.details(VH, "new") == {}  # one sample so far

    core.apply(c.DeleteQueue(VH, "q"))
    now[0] = 15.0
    rates.refresh(core.sm)
    assert rates.details(VH, "q") == {}
    # the totals fall by the 10 messages the deleted queue held
    assert rates.total_details([VH])["messages_details"] == {"rate": -2.0}
