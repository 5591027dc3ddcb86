"""Policies in RabbitMQ's JSON shape, as its management API, rabbitmqadmin and definitions
files carry them: {"vhost", "name", "pattern", "apply-to", "definition", "priority"}.

One place for the shape, so the admin socket, definitions and the HTTP API agree on it; what
a policy may say is the core's to check (core/policy.py).
"""

from __future__ import annotations

import re
from typing import Any

from broker.core import commands as c
from broker.core.errors import InvalidArgument
from broker.core.policy import Policy, checked_policy
from broker.core.state import StateMachine


def as_json(policy: Policy) -> dict[str, Any]:
    return {
        "vhost": policy.vhost,
        "name": policy.name,
        "pattern": policy.pattern,
        "apply-to": policy.apply_to,
        "definition": dict(policy.definition),
        "priority": policy.priority,
    }


def listed(state: StateMachine, vhost: str | None = None) -> list[dict[str, Any]]:
    """Every policy (of one vhost, or of all), by vhost then name."""
    names = sorted(state.vhosts) if vhost is None else [state.vhost(vhost).name]
    return [
        as_json(vh.policies[name])
        for vh in (state.vhosts[n] for n in names)
        for name in sorted(vh.policies)
    ]


def set_command(vhost: str, name: str, body: Any) -> c.SetPolicy:
    """A SetPolicy from a JSON object as `rabbitmqctl set_policy` and PUT /api/policies take
    it: pattern and definition required, apply-to ("all") and priority (0) optional; a
    priority may come as a string of digits, as rabbitmqadmin sends it. The values are
    checked here as the core checks them, so that the command carries the types it declares
    (a compiled core relies on them)."""
    if not isinstance(body, dict):
        raise InvalidArgument("a policy must be a JSON object")
    for key in ("pattern", "definition"):
        if key not in body:
            raise InvalidArgument(f"policy '{name}': '{key}' is required")
    priority = body.get("priority", 0)
    if isinstance(priority, str) and re.fullmatch(r"-?[0-9]{1,18}", priority):
        priority = int(priority)
    policy = checked_policy(
        vhost, name, body["pattern"], body.get("apply-to", "all"), priority, body["definition"]
    )
    return c.SetPolicy(
        vhost, name, policy.pattern, policy.apply_to, policy.priority, policy.definition
    )
