"""Vhost and user limits (SetLimits): validated, durable, and the queue limit enforced;
clearing permissions (ClearPermissions)."""

from __future__ import annotations

import pytest

from broker.core import commands as c
from broker.core.errors import InvalidArgument, NotAllowed, NotFound, QueueLimitReached
from tests.core_helpers import VH, Core, reloaded


def test_limits_are_set_replaced_and_cleared() -> None:
    core = Core()
    core.apply(c.SetLimits("vhost", VH, {"max-connections": 2, "max-queues": 5}))
    assert core.sm.limit("vhost", VH, "max-queues") == 5
    core.apply(c.SetLimits("vhost", VH, {"max-queues": 1}))
    assert core.sm.limits[("vhost", VH)] == {"max-queues": 1}
    core.apply(c.SetLimits("vhost", VH, {"max-queues": -1}))
    assert ("vhost", VH) not in core.sm.limits


def test_unknown_limits_scopes_and_names_are_refused() -> None:
    core = Core()
    with pytest.raises(InvalidArgument):
        core.apply(c.SetLimits("vhost", VH, {"max-channels": 1}))
    with pytest.raises(InvalidArgument):
        core.apply(c.SetLimits("node", VH, {"max-connections": 1}))
    with pytest.raises(NotAllowed):
        core.apply(c.SetLimits("vhost", "nope", {"max-queues": 1}))
    with pytest.raises(NotFound):
        core.apply(c.SetLimits("user", "nobody", {"max-channels": 1}))


def test_the_queue_limit_refuses_new_queues_but_not_redeclarations() -> None:
    core = Core()
    core.apply(c.SetLimits("vhost", VH, {"max-queues": 1}))
    core.apply(c.DeclareQueue(VH, "a"))
    core.apply(c.DeclareQueue(VH, "a"))
    with pytest.raises(QueueLimitReached, match=r"vhost queue limit \(1\) is reached"):
        core.apply(c.DeclareQueue(VH, "b"))


def test_limits_survive_a_snapshot_and_go_with_their_user() -> None:
    core = Core()
    core.apply(c.PutUser("bob", "hash"))
    core.apply(c.SetLimits("user", "bob", {"max-channels": 3}))
    core.apply(c.SetLimits("vhost", VH, {"max-connections": 0}))
    after = reloaded(core)
    assert after.sm.limits == {
        ("user", "bob"): {"max-channels": 3},
        ("vhost", VH): {"max-connections": 0},
    }
    core.apply(c.DeleteUser("bob"))
    assert ("user", "bob") not in reloaded(core).sm.limits


def test_cleared_permissions_are_gone_after_a_reload_and_clearing_twice_is_fine() -> None:
    """ClearPermissions (the management API's DELETE /api/permissions) is durable and
    idempotent, as rabbitmqctl clear_permissions."""
    core = Core()
    core.apply(c.PutUser("u", ""))
    core.apply(c.SetPermissions("u", VH, ".*", ".*", ".*"))
    core.apply(c.ClearPermissions("u", VH))
    core.apply(c.ClearPermissions("u", VH))
    assert ("u", VH) not in core.sm.permissions
    assert ("u", VH) not in reloaded(core).sm.permissions
