"""RabbitMQ definitions (`rabbitmqctl export_definitions`): the vhosts, users, permissions
and policies they hold, as core commands to import, and the same of a node's state to export.

Other sections (queues, exchanges, bindings, parameters, ...) are refused, not skipped, unless
empty, so an import never looks complete when it is not.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from broker import policies
from broker.core import commands as c
from broker.core.auth import HASHING, split_stored, stored_hash
from broker.core.errors import InvalidArgument
from broker.core.policy import checked_policy
from broker.core.state import StateMachine

#: sections we import; the version fields are informational
IMPORTED = ("users", "vhosts", "permissions", "policies")
#: and the node identity (cluster_name, internal_cluster_id) of the exporting cluster
INFORMATIONAL = (
    "rabbit_version",
    "rabbitmq_version",
    "product_name",
    "product_version",
    "global_parameters",
)


def import_commands(doc: Any, state: StateMachine) -> list[c.Command]:
    """The commands that apply `doc` to `state`: vhosts first, then users, then permissions
    (each of a user and vhost that exists or is imported), then policies (checked here as
    the core checks them, so a bad one refuses the import before anything is applied)."""
    if not isinstance(doc, dict):
        raise InvalidArgument("definitions must be a JSON object")
    unsupported = [k for k, v in doc.items() if k not in IMPORTED + INFORMATIONAL and v]
    if unsupported:
        names = ", ".join(sorted(unsupported))
        raise InvalidArgument(f"definitions sections not supported: {names}")
    commands: list[c.Command] = [_vhost(v) for v in _items(doc, "vhosts")]
    commands += [_user(u) for u in _items(doc, "users")]
    commands += [
        c.SetPermissions(
            _text(p, "user"),
            _text(p, "vhost"),
            _text(p, "configure"),
            _text(p, "write"),
            _text(p, "read"),
        )
        for p in _items(doc, "permissions")
    ]
    users = set(state.users) | {u.name for u in commands if isinstance(u, c.PutUser)}
    vhosts = set(state.vhosts) | {v.name for v in commands if isinstance(v, c.DeclareVhost)}
    for p in commands:
        if isinstance(p, c.SetPermissions) and (p.user not in users or p.vhost not in vhosts):
            raise InvalidArgument(f"permissions of unknown user '{p.user}' or vhost '{p.vhost}'")
    for entry in _items(doc, "policies"):
        command = policies.set_command(_text(entry, "vhost"), _text(entry, "name"), entry)
        if command.vhost not in vhosts:
            raise InvalidArgument(f"policy '{command.name}' of unknown vhost '{command.vhost}'")
        checked_policy(
            command.vhost,
            command.name,
            command.pattern,
            command.apply_to,
            command.priority,
            command.definition,
        )
        commands.append(command)
    return commands


def export(state: StateMachine) -> dict[str, Any]:
    """The node's vhosts, users (with their hashes), permissions and policies, in RabbitMQ's
    layout."""
    users = []
    for user in sorted(state.users.values(), key=lambda u: u.name):
        algorithm, password_hash = split_stored(user.password_hash)
        users.append(
            {
                "name": user.name,
                "password_hash": password_hash,
                "hashing_algorithm": algorithm,
                "tags": list(user.tags),
                "limits": {},
            }
        )
    return {
        "users": users,
        "vhosts": [{"name": name} for name in sorted(state.vhosts)],
        "permissions": [
            {
                "user": user,
                "vhost": vhost,
                "configure": p.configure,
                "write": p.write,
                "read": p.read,
            }
            for (user, vhost), p in sorted(state.permissions.items())
        ],
        "policies": policies.listed(state),
    }


def _vhost(entry: dict[str, Any]) -> c.DeclareVhost:
    """A vhost; its metadata (description, tags) is informational, its limits are refused."""
    name = _text(entry, "name")
    _no_limits(entry, f"vhost '{name}'")
    return c.DeclareVhost(name)


def _user(entry: dict[str, Any]) -> c.PutUser:
    name = _text(entry, "name")
    _no_limits(entry, f"user '{name}'")
    password_hash = entry.get("password_hash") or ""
    if not isinstance(password_hash, str):
        raise InvalidArgument(f"user '{name}': password_hash must be a string")
    algorithm = entry.get("hashing_algorithm") or _guess_algorithm(name, password_hash)
    try:
        stored = stored_hash(algorithm, password_hash)
    except InvalidArgument as exc:
        raise InvalidArgument(f"user '{name}': {exc}") from None
    tags = entry.get("tags") or []
    if isinstance(tags, str):  # before RabbitMQ 3.12 tags were one comma-separated string
        tags = [t for t in tags.split(",") if t]
    return c.PutUser(name, stored, tuple(str(t) for t in tags))


def _guess_algorithm(name: str, password_hash: str) -> str:
    """Definitions without `hashing_algorithm` (RabbitMQ before 3.6 used MD5): the digest's
    length tells which algorithm made it."""
    try:
        size = len(base64.b64decode(password_hash, validate=True)) - 4
    except (binascii.Error, ValueError):
        raise InvalidArgument(f"user '{name}': password_hash is not base64") from None
    for algorithm, digest in HASHING.items():
        if len(digest(b"")) == size:
            return algorithm
    raise InvalidArgument(f"user '{name}': password_hash of no known hashing algorithm")


def _no_limits(entry: dict[str, Any], what: str) -> None:
    if entry.get("limits"):
        raise InvalidArgument(f"{what}: limits are not supported")


def _items(doc: dict[str, Any], section: str) -> list[dict[str, Any]]:
    items = doc.get(section) or []
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise InvalidArgument(f"definitions section '{section}' must be a list of objects")
    return items


def _text(entry: dict[str, Any], key: str) -> str:
    value = entry.get(key)
    if not isinstance(value, str):
        raise InvalidArgument(f"definitions entry {entry} has no '{key}' string")
    return value
