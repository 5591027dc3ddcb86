"""The `broker` command: serve a node, and manage a running one through its data dir."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import sys
from typing import Any

import click

import broker
from broker import cli_objects, cli_trace
from broker.admission import raise_open_file_limit
from broker.cli_common import admin, data_dir_option, format_option, print_rows
from broker.config import Config
from broker.core.policy import APPLY_TO
from broker.store.damage import StoreUnusable

#: `broker serve` exits with this when its data dir cannot be used as it is
EXIT_STORE_UNUSABLE = 3


@click.group()
@click.version_option(broker.__version__, prog_name="broker")
def main() -> None:
    """A durable message broker speaking AMQP 0-9-1 and MQTT 3.1.1."""


@main.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False),
    help="TOML file with any of the settings below (flags win).",
)
@click.option("--data-dir", help="Where LevelDB keeps the node's state. [./broker-data]")
@click.option("--host", help="Address to listen on. [0.0.0.0]")
@click.option("--amqp-port", type=int, help="AMQP 0-9-1 port. [5672]")
@click.option("--heartbeat", type=int, help="Heartbeat interval offered to clients, s. [60]")
@click.option("--frame-max", type=int, help="Largest frame offered to clients. [131072]")
@click.option("--channel-max", type=int, help="Most channels per connection. [2047]")
@click.option("--handshake-timeout", type=float, help="Seconds to complete the handshake. [10]")
@click.option(
    "--disk-free-limit",
    type=int,
    help="Block publishers below this many free bytes on the data disk. [50000000]",
)
@click.option(
    "--disk-reserve",
    type=int,
    help="Bytes set aside on the data disk, given up when it is full so consumers and acks "
    "carry on. [0]",
)
@click.option(
    "--memory-high-watermark",
    type=int,
    help="Block publishers above this many bytes of memory. [40% of RAM]",
)
@click.option("--mqtt-port", type=int, help="MQTT 3.1.1 port. [1883]")
@click.option("--mqtt-ws-port", type=int, help="MQTT over WebSocket port (path /mqtt). [15675]")
@click.option(
    "--mqtt-allow-anonymous/--no-mqtt-allow-anonymous",
    default=None,
    help="Admit MQTT clients without a user name, as the anonymous user. [no]",
)
@click.option("--mqtt-max-packet-size", type=int, help="Largest MQTT packet, bytes. [16 MiB]")
@click.option("--mqtt-max-inflight", type=int, help="Unacked QoS 1/2 messages per client. [100]")
@click.option(
    "--mqtt-max-queued", type=int, help="Messages kept per MQTT session, 0: no limit. [100000]"
)
@click.option(
    "--mqtt-overflow",
    type=click.Choice(["drop-oldest", "refuse"]),
    help="What a full MQTT session does with one more message. [drop-oldest]",
)
@click.option(
    "--mqtt-sys-interval",
    type=float,
    help="Seconds between updates of the MQTT $SYS topics, 0: none. [10]",
)
@click.option("--http-port", type=int, help="CMQ API 2.0 over HTTP (/v2/index.php). [15680]")
@click.option(
    "--metrics-port",
    type=int,
    help="Prometheus /metrics (and /metrics/per-object), 0: off. [15692]",
)
@click.option(
    "--metrics-per-object/--no-metrics-per-object",
    default=None,
    help="/metrics shows each queue's metrics rather than their sums. [off]",
)
@click.option("--https-port", type=int, help="CMQ API over HTTPS, with --tls-cert. [15681]")
@click.option(
    "--tls-cert",
    type=click.Path(exists=True, dir_okay=False),
    help="PEM certificate (chain): opens the TLS listeners. Reloaded on SIGHUP.",
)
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), help="PEM private key.")
@click.option(
    "--tls-ca", type=click.Path(exists=True, dir_okay=False), help="PEM CA of client certificates."
)
@click.option(
    "--tls-verify-peer/--no-tls-verify-peer",
    default=None,
    help="Require client certificates signed by --tls-ca. [no]",
)
@click.option("--amqps-port", type=int, help="AMQP 0-9-1 over TLS, with --tls-cert. [5671]")
@click.option("--mqtts-port", type=int, help="MQTT over TLS, with --tls-cert. [8883]")
@click.option(
    "--mqtt-wss-port", type=int, help="MQTT over secure WebSocket, with --tls-cert. [15676]"
)
@click.option(
    "--management-port",
    type=int,
    help="RabbitMQ-compatible management HTTP API (/api), 0 turns it off. [15672]",
)
@click.option(
    "--http-timestamp-skew", type=int, help="Accepted CMQ request Timestamp skew, s. [300]"
)
@click.option(
    "--max-connections",
    type=int,
    help="Client connections of all protocols the node takes; more are refused with the "
    "protocol's error. [the file-descriptor limit less 256]",
)
@click.option(
    "--max-connections-per-ip",
    type=int,
    help="Client connections from one source address, 0: no limit. [0]",
)
@click.option(
    "--http-header-timeout",
    type=float,
    help="Seconds an HTTP request head has, from its first byte or the connection's opening. [10]",
)
@click.option(
    "--http-idle-timeout", type=float, help="Seconds an idle HTTP keep-alive connection lasts. [60]"
)
@click.option(
    "--http-body-timeout", type=float, help="Seconds an HTTP request has for its body. [30]"
)
@click.option("--node-id", type=int, help="This node's id in its cluster. [1]")
@click.option(
    "--cluster",
    help="Every member of a cluster as id=host:port,... (this node's included). [none]",
)
@click.option("--cluster-port", type=int, help="Port for the other members. [own entry's]")
@click.option("--cluster-secret", help="Shared by the members; others are refused. [none]")
@click.option(
    "--log-level", type=click.Choice(["debug", "info", "warning", "error"]), help="[info]"
)
@click.option(
    "--repair",
    is_flag=True,
    help="Start on a damaged store: keep what is intact, log what is lost.",
)
def serve(config_path: str | None, repair: bool, **flags: Any) -> None:
    """Start a node with embedded defaults."""
    try:
        config = Config.load(config_path, flags)
    except ValueError as exc:  # a configuration that cannot work: one line, no traceback
        raise click.UsageError(str(exc)) from None
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from broker import compiled
    from broker.node import Node

    stale = compiled.stale()
    if stale:
        click.echo(
            "broker: refusing to start: compiled modules older than their sources "
            f"({', '.join(stale)}): build them again or delete them (README, Compiled build)",
            err=True,
        )
        sys.exit(1)
    if compiled.compiled():
        logging.getLogger("broker").info(
            "running %d modules compiled with mypyc", len(compiled.compiled())
        )
    raise_open_file_limit()
    # Every message allocates a few objects and few of them form cycles: collect young objects
    # far less often than CPython's default (700), which otherwise rescans deep queues. A
    # collection costs what is still alive, so the rarer, the more of a command's short-lived
    # objects (entries, changes, deliveries) are gone before it: 200 000 measured 1 us/message
    # cheaper than 50 000 on an MQTT QoS 0 stream.
    gc.set_threshold(200_000, 20, 100)

    async def run() -> None:
        node = Node(config, repair=repair)
        await node.start()
        gc.freeze()  # what recovery loaded is long-lived: keep it out of every collection
        await node.serve_forever()

    try:
        import uvloop
    except ImportError:
        runner: Any = asyncio.run
    else:
        runner = uvloop.run
    try:
        runner(run())
    except StoreUnusable as exc:
        # What the operator must know, on one line: no traceback.
        click.echo(f"broker: refusing to start: {exc}", err=True)
        sys.exit(EXIT_STORE_UNUSABLE)


@main.group()
def users() -> None:
    """Manage users of a running node."""


@users.command("add")
@click.argument("name")
@click.argument("password")
@click.option("--tags", default="", help="Comma-separated tags, e.g. administrator.")
@data_dir_option
def users_add(name: str, password: str, tags: str, data_dir: str) -> None:
    admin(
        data_dir, "users.add", name=name, password=password, tags=[t for t in tags.split(",") if t]
    )
    click.echo(f"user '{name}' added")


@users.command("delete")
@click.argument("name")
@data_dir_option
def users_delete(name: str, data_dir: str) -> None:
    admin(data_dir, "users.delete", name=name)
    click.echo(f"user '{name}' deleted")


@users.command("list")
@format_option
@data_dir_option
def users_list(fmt: str, data_dir: str) -> None:
    """Name and tags."""
    users = admin(data_dir, "users.list")
    if fmt == "table":
        users = [{**u, "tags": ",".join(u["tags"])} for u in users]
    print_rows(users, ("name", "tags"), fmt)


@users.command("set-limits")
@click.argument("name")
@click.argument("limits", metavar="JSON")
@data_dir_option
def users_set_limits(name: str, limits: str, data_dir: str) -> None:
    """Replace a user's limits, as rabbitmqctl set_user_limits: '{"max-connections": 10,
    "max-channels": 100}'; '{}' (or -1) clears them."""
    _set_limits("user", name, limits, data_dir)


@users.command("limits")
@format_option
@data_dir_option
def users_limits(fmt: str, data_dir: str) -> None:
    """Each user with limits: name and its limits."""
    _show_limits("user", fmt, data_dir)


@main.group()
def vhosts() -> None:
    """Manage virtual hosts of a running node."""


@vhosts.command("add")
@click.argument("name")
@data_dir_option
def vhosts_add(name: str, data_dir: str) -> None:
    admin(data_dir, "vhosts.add", name=name)
    click.echo(f"vhost '{name}' added")


@vhosts.command("delete")
@click.argument("name")
@data_dir_option
def vhosts_delete(name: str, data_dir: str) -> None:
    admin(data_dir, "vhosts.delete", name=name)
    click.echo(f"vhost '{name}' deleted")


@vhosts.command("list")
@format_option
@data_dir_option
def vhosts_list(fmt: str, data_dir: str) -> None:
    print_rows([{"name": name} for name in admin(data_dir, "vhosts.list")], ("name",), fmt)


@vhosts.command("set-limits")
@click.argument("name")
@click.argument("limits", metavar="JSON")
@data_dir_option
def vhosts_set_limits(name: str, limits: str, data_dir: str) -> None:
    """Replace a vhost's limits, as rabbitmqctl set_vhost_limits: '{"max-connections": 100,
    "max-queues": 1000}'; '{}' (or -1) clears them."""
    _set_limits("vhost", name, limits, data_dir)


@vhosts.command("limits")
@format_option
@data_dir_option
def vhosts_limits(fmt: str, data_dir: str) -> None:
    """Each vhost with limits: name and its limits."""
    _show_limits("vhost", fmt, data_dir)


def _set_limits(scope: str, name: str, limits: str, data_dir: str) -> None:
    admin(data_dir, f"{scope}s.set_limits", name=name, limits=_json_object(limits))
    click.echo(f"limits of {scope} '{name}' set")


def _show_limits(scope: str, fmt: str, data_dir: str) -> None:
    limits = admin(data_dir, f"{scope}s.limits").items()
    print_rows([{"name": name, "limits": value} for name, value in limits], ("name", "limits"), fmt)


def _json_object(text: str, example: str = '{"max-connections": 10}') -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise click.BadParameter(f"expected a JSON object such as {example}")
    return value


@main.group()
def permissions() -> None:
    """Manage permissions on a running node."""


@permissions.command("set")
@click.argument("user")
@click.argument("configure")
@click.argument("write")
@click.argument("read")
@click.option("--vhost", default="/", show_default=True)
@data_dir_option
def permissions_set(
    user: str, configure: str, write: str, read: str, vhost: str, data_dir: str
) -> None:
    """Set USER's CONFIGURE, WRITE and READ regexes on a vhost, as rabbitmqctl does."""
    admin(
        data_dir,
        "permissions.set",
        user=user,
        vhost=vhost,
        configure=configure,
        write=write,
        read=read,
    )
    click.echo(f"permissions of '{user}' on vhost '{vhost}' set")


@main.group()
def definitions() -> None:
    """Import or export users, vhosts, permissions, exchanges, queues and bindings as RabbitMQ
    definitions JSON."""


@definitions.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@data_dir_option
def definitions_import(path: str, data_dir: str) -> None:
    """Import PATH (from `rabbitmqctl export_definitions` or the management UI)."""
    with open(path, encoding="utf-8") as file:
        try:
            doc = json.load(file)
        except ValueError as exc:
            raise click.BadParameter(f"not JSON: {exc}", param_hint="PATH") from None
    counts = admin(data_dir, "definitions.import", definitions=doc)
    click.echo(", ".join(f"{n} {kind}" for kind, n in counts.items()) + " imported")


@definitions.command("export")
@data_dir_option
def definitions_export(data_dir: str) -> None:
    """Print the node's users (with password hashes), vhosts, permissions, exchanges, queues
    and bindings as JSON."""
    click.echo(json.dumps(admin(data_dir, "definitions.export"), indent=2))


@main.group()
def policies() -> None:
    """Manage policies (RabbitMQ's): optional arguments for every queue or exchange whose
    name matches a pattern, applied at once without redeclaring."""


@policies.command("set")
@click.argument("name")
@click.argument("pattern")
@click.argument("definition", metavar="DEFINITION_JSON")
@click.option("--priority", type=int, default=0, show_default=True)
@click.option(
    "--apply-to",
    type=click.Choice(APPLY_TO),
    default="all",
    show_default=True,
)
@click.option("--vhost", default="/", show_default=True)
@data_dir_option
def policies_set(
    name: str,
    pattern: str,
    definition: str,
    priority: int,
    apply_to: str,
    vhost: str,
    data_dir: str,
) -> None:
    """Create or replace policy NAME, as rabbitmqctl set_policy: PATTERN is a regular
    expression searched in names, DEFINITION_JSON e.g. '{"max-length": 1000}'."""
    body = {
        "pattern": pattern,
        "definition": _json_object(definition, '{"max-length": 1000}'),
        "priority": priority,
        "apply-to": apply_to,
    }
    admin(data_dir, "policies.set", vhost=vhost, name=name, policy=body)
    click.echo(f"policy '{name}' set on vhost '{vhost}'")


@policies.command("list")
@click.option("--vhost", help="Only this vhost's. [all]")
@format_option
@data_dir_option
def policies_list(vhost: str | None, fmt: str, data_dir: str) -> None:
    """The policies, as RabbitMQ's management API lists them (json), or one line each: vhost,
    name, pattern, apply-to, priority, definition."""
    columns = ("vhost", "name", "pattern", "apply-to", "priority", "definition")
    print_rows(admin(data_dir, "policies.list", vhost=vhost), columns, fmt)


@policies.command("delete")
@click.argument("name")
@click.option("--vhost", default="/", show_default=True)
@data_dir_option
def policies_delete(name: str, vhost: str, data_dir: str) -> None:
    admin(data_dir, "policies.delete", vhost=vhost, name=name)
    click.echo(f"policy '{name}' deleted from vhost '{vhost}'")


@main.command("set-disk-free-limit")
@click.argument("limit", type=int)
@data_dir_option
def set_disk_free_limit(limit: int, data_dir: str) -> None:
    """Change the free-disk threshold (bytes) below which publishers are blocked."""
    admin(data_dir, "limits.set", disk_free_limit=limit)
    click.echo(f"disk free limit set to {limit}")


@main.command("set-memory-high-watermark")
@click.argument("limit", type=int)
@data_dir_option
def set_memory_high_watermark(limit: int, data_dir: str) -> None:
    """Change the memory threshold (bytes) above which publishers are blocked."""
    admin(data_dir, "limits.set", memory_high_watermark=limit)
    click.echo(f"memory high watermark set to {limit}")


@main.command()
@data_dir_option
def status(data_dir: str) -> None:
    """Connections and commit-path counters of a running node."""
    for key, value in admin(data_dir, "status").items():
        click.echo(f"{key}\t{value}")


@main.group()
def keys() -> None:
    """Manage CMQ API access keys (SecretId/SecretKey bound to a vhost) of a running node."""


@keys.command("create")
@click.option("--vhost", required=True, help="The vhost (tenant) the key gives access to.")
@click.option("--secret-id", help="Use this SecretId instead of a generated one.")
@click.option("--secret-key", help="Use this SecretKey instead of a generated one.")
@data_dir_option
def keys_create(vhost: str, secret_id: str | None, secret_key: str | None, data_dir: str) -> None:
    key = admin(data_dir, "keys.create", vhost=vhost, secret_id=secret_id, secret_key=secret_key)
    click.echo(f"SecretId: {key['secret_id']}")
    click.echo(f"SecretKey: {key['secret_key']}")


@keys.command("list")
@format_option
@data_dir_option
def keys_list(fmt: str, data_dir: str) -> None:
    """SecretId and vhost of each key."""
    print_rows(admin(data_dir, "keys.list"), ("secret_id", "vhost"), fmt)


@keys.command("delete")
@click.argument("secret_id")
@data_dir_option
def keys_delete(secret_id: str, data_dir: str) -> None:
    admin(data_dir, "keys.delete", secret_id=secret_id)
    click.echo(f"key '{secret_id}' deleted")


@main.group()
def cluster() -> None:
    """Inspect and change the cluster a running node is in."""


@cluster.command("status")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@data_dir_option
def cluster_status(as_json: bool, data_dir: str) -> None:
    """Leader, term, commit and applied index, and each member's match index."""
    info = admin(data_dir, "cluster.status")
    if as_json:
        click.echo(json.dumps(info))
        return
    for key in ("node_id", "role", "leader_id", "term", "commit_index", "applied_index"):
        click.echo(f"{key}\t{info[key]}")
    for member in info["members"]:
        match = member["match_index"]
        lag = "-" if match is None else info["commit_index"] - match
        click.echo(f"member {member['node_id']}\t{member['address']}\tmatch {match}\tlag {lag}")


@cluster.command("add")
@click.argument("member", metavar="ID=HOST:PORT")
@data_dir_option
def cluster_add(member: str, data_dir: str) -> None:
    """Add a member (start it first, with the new member list in --cluster)."""
    node, sep, address = member.partition("=")
    if not sep or not node.isdigit():
        raise click.BadParameter("expected ID=HOST:PORT", param_hint="MEMBER")
    admin(data_dir, "cluster.add", node=int(node), address=address)
    click.echo(f"node {node} added")


@cluster.command("remove")
@click.argument("node", type=int)
@data_dir_option
def cluster_remove(node: int, data_dir: str) -> None:
    """Remove a member."""
    admin(data_dir, "cluster.remove", node=node)
    click.echo(f"node {node} removed")


@cluster.command("transfer")
@click.argument("node", type=int)
@data_dir_option
def cluster_transfer(node: int, data_dir: str) -> None:
    """Hand leadership to another member."""
    admin(data_dir, "cluster.transfer", node=node)
    click.echo(f"leadership handed to node {node}")


for _group in (*cli_objects.COMMANDS, cli_trace.trace):
    main.add_command(_group)
