"""RabbitMQ definitions (`rabbitmqctl export_definitions`, GET /api/definitions): the
vhosts, users, permissions, policies, exchanges, queues and bindings they hold, as core
commands to import, and the same of a node's state to export, whole or for one vhost.

Other sections (parameters, ...) are refused, not skipped, unless empty, so an import never
looks complete when it is not.
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
from broker.core.state import PREDECLARED_EXCHANGES, StateMachine
from broker.field_values import check_short_string, check_table

#: exchanges every vhost has: not exported, as RabbitMQ leaves them out
PREDECLARED = {name for name, _ in PREDECLARED_EXCHANGES}

#: sections we import; the version fields are informational
IMPORTED = ("users", "vhosts", "permissions", "policies", "exchanges", "queues", "bindings")
#: the sections of one vhost's definitions (GET /api/definitions/{vhost})
VHOST_SECTIONS = ("policies", "exchanges", "queues", "bindings")
#: and the node identity (cluster_name, internal_cluster_id) of the exporting cluster
INFORMATIONAL = (
    "rabbit_version",
    "rabbitmq_version",
    "product_name",
    "product_version",
    "global_parameters",
)


def import_commands(doc: Any, state: StateMachine, vhost: str | None = None) -> list[c.Command]:
    """The commands that apply `doc` to `state`, in RabbitMQ's order: vhosts, users,
    permissions (each of a user and vhost that exists or is imported), policies (checked
    here as the core checks them, so a bad one refuses the import before anything is
    applied), exchanges, queues, bindings (between objects that exist or are imported).
    With `vhost`, `doc` is one vhost's definitions and everything in it goes to that vhost."""
    if not isinstance(doc, dict):
        raise InvalidArgument("definitions must be a JSON object")
    sections = IMPORTED if vhost is None else VHOST_SECTIONS
    unsupported = [k for k, v in doc.items() if k not in sections + INFORMATIONAL and v]
    if unsupported:
        names = ", ".join(sorted(unsupported))
        raise InvalidArgument(f"definitions sections not supported: {names}")
    if vhost is not None:
        if vhost not in state.vhosts:
            raise InvalidArgument(f"vhost '{vhost}' does not exist")
        doc = {k: [dict(item, vhost=vhost) for item in _items(doc, k)] for k in VHOST_SECTIONS}
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
    commands += _policies(doc, vhosts)
    commands += _objects(doc, state, vhosts)
    return commands


def _policies(doc: dict[str, Any], vhosts: set[str]) -> list[c.Command]:
    commands: list[c.Command] = []
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


def _objects(doc: dict[str, Any], state: StateMachine, vhosts: set[str]) -> list[c.Command]:
    """Exchanges, queues and bindings, each in a vhost that exists or is imported, each
    binding between objects that exist or are imported."""
    exchanges = [_exchange(e) for e in _items(doc, "exchanges")]
    queues = [_queue(q) for q in _items(doc, "queues")]
    bindings = [_binding(b) for b in _items(doc, "bindings")]
    for command in exchanges + queues + bindings:
        if command.vhost not in vhosts:
            raise InvalidArgument(f"definitions refer to unknown vhost '{command.vhost}'")
    known_exchanges = {(e.vhost, e.name) for e in exchanges} | {
        (v, name) for v, vh in state.vhosts.items() for name in vh.exchanges
    }
    known_queues = {(q.vhost, q.name) for q in queues} | {
        (v, name) for v, vh in state.vhosts.items() for name in vh.queues
    }
    for b in bindings:
        if (b.vhost, b.source) not in known_exchanges:
            raise InvalidArgument(f"binding from unknown exchange '{b.source}' in '{b.vhost}'")
        known = known_queues if b.to_queue else known_exchanges
        if (b.vhost, b.destination) not in known:
            raise InvalidArgument(f"binding to unknown '{b.destination}' in '{b.vhost}'")
    return [*exchanges, *queues, *bindings]


def _exchange(entry: dict[str, Any]) -> c.DeclareExchange:
    return c.DeclareExchange(
        _text(entry, "vhost"),
        check_short_string(_text(entry, "name"), "exchange name"),
        _text(entry, "type"),
        durable=_flag(entry, "durable", True),
        auto_delete=_flag(entry, "auto_delete", False),
        internal=_flag(entry, "internal", False),
        arguments=_table(entry, "arguments"),
    )


def _queue(entry: dict[str, Any]) -> c.DeclareQueue:
    return c.DeclareQueue(
        _text(entry, "vhost"),
        check_short_string(_text(entry, "name"), "queue name"),
        durable=_flag(entry, "durable", True),
        auto_delete=_flag(entry, "auto_delete", False),
        arguments=_table(entry, "arguments"),
    )


def _binding(entry: dict[str, Any]) -> c.Bind:
    kind = entry.get("destination_type", "queue")
    if kind not in ("queue", "exchange"):
        raise InvalidArgument(f"binding destination_type must be queue or exchange: {entry}")
    return c.Bind(
        _text(entry, "vhost"),
        _text(entry, "source"),
        _text(entry, "destination"),
        kind == "queue",
        check_short_string(
            _text(dict(entry, routing_key=entry.get("routing_key") or ""), "routing_key"),
            "routing_key",
        ),
        _table(entry, "arguments"),
    )


def describe(command: c.Command) -> str:
    """One imported definition, as an error names it."""
    if isinstance(command, c.SetPermissions):
        return f"permissions of user '{command.user}' in vhost '{command.vhost}'"
    if isinstance(command, c.Bind):
        return (
            f"binding from '{command.source}' to '{command.destination}' in vhost '{command.vhost}'"
        )
    kind = {c.DeclareVhost: "vhost", c.PutUser: "user", c.DeclareExchange: "exchange"}
    name = getattr(command, "name", "")
    where = f" in vhost '{command.vhost}'" if hasattr(command, "vhost") else ""
    return f"{kind.get(type(command), 'queue')} '{name}'{where}"


def counts(commands: list[c.Command]) -> dict[str, int]:
    """How many of each section an import applied, in the sections' order."""
    kinds = {
        c.DeclareVhost: "vhosts",
        c.PutUser: "users",
        c.SetPermissions: "permissions",
        c.SetPolicy: "policies",
        c.DeclareExchange: "exchanges",
        c.DeclareQueue: "queues",
        c.Bind: "bindings",
    }
    found = {kind: 0 for kind in kinds.values()}
    for command in commands:
        found[kinds[type(command)]] += 1
    return found


def export(state: StateMachine, vhost: str | None = None) -> dict[str, Any]:
    """The node's vhosts, users (with their hashes), permissions, policies, exchanges, queues
    and bindings in RabbitMQ's layout; with `vhost`, that vhost's policies and objects
    (without their vhost field), as RabbitMQ exports one vhost."""
    if vhost is not None:
        if vhost not in state.vhosts:
            raise InvalidArgument(f"vhost '{vhost}' does not exist")
        objects = {"policies": policies.listed(state, vhost), **_export_objects(state, [vhost])}
        for section in objects.values():
            for item in section:
                del item["vhost"]
        return {"parameters": [], **objects}
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
        "parameters": [],
        "global_parameters": [],
        "policies": policies.listed(state),
        **_export_objects(state, sorted(state.vhosts)),
    }


def _export_objects(state: StateMachine, vhosts: list[str]) -> dict[str, list[dict[str, Any]]]:
    """What clients declared: not the predeclared exchanges, not exclusive queues (they
    belong to a connection), not the default exchange's implicit bindings."""
    exchanges, queues, bindings = [], [], []
    for name in vhosts:
        vh = state.vhosts[name]
        for ex in sorted(vh.exchanges.values(), key=lambda e: e.name):
            if ex.name in PREDECLARED:
                continue
            exchanges.append(
                {
                    "name": ex.name,
                    "vhost": name,
                    "type": ex.type,
                    "durable": ex.durable,
                    "auto_delete": ex.auto_delete,
                    "internal": ex.internal,
                    "arguments": _plain(ex.arguments),
                }
            )
        for q in sorted(vh.queues.values(), key=lambda q: q.name):
            if q.exclusive_owner is not None:
                continue
            queues.append(
                {
                    "name": q.name,
                    "vhost": name,
                    "durable": q.durable,
                    "auto_delete": q.auto_delete,
                    "arguments": _plain(q.arguments),
                }
            )
        for source in sorted(vh.bindings):
            for key, _ in sorted(vh.bindings[source].items(), key=lambda item: item[1]):
                if key.to_queue and (
                    key.destination not in vh.queues
                    or vh.queues[key.destination].exclusive_owner is not None
                ):
                    continue
                bindings.append(
                    {
                        "source": key.source,
                        "vhost": name,
                        "destination": key.destination,
                        "destination_type": "queue" if key.to_queue else "exchange",
                        "routing_key": key.routing_key,
                        "arguments": _plain(dict(key.arguments)),
                    }
                )
    return {"exchanges": exchanges, "queues": queues, "bindings": bindings}


def _plain(value: Any) -> Any:
    """Declare arguments as JSON carries them (AMQP tables may hold bytes and tuples)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


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


def _flag(entry: dict[str, Any], key: str, default: bool) -> bool:
    value = entry.get(key, default)
    if isinstance(value, str) and value in ("true", "false"):
        return value == "true"
    if not isinstance(value, bool):
        raise InvalidArgument(f"definitions entry {entry}: '{key}' must be true or false")
    return value


def _table(entry: dict[str, Any], key: str) -> dict[str, Any]:
    return check_table(entry.get(key) or {}, f"definitions entry {entry}: '{key}'")


def _text(entry: dict[str, Any], key: str) -> str:
    value = entry.get(key)
    if not isinstance(value, str):
        raise InvalidArgument(f"definitions entry {entry} has no '{key}' string")
    return value
