"""The admin socket: `broker users add ...` talks to a running node through its data dir.

One JSON request per connection, one JSON reply. Changes are core commands submitted through
the gateway like every other, so they are committed and on disk when the reply arrives; what
it lists is the committed state.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import socket
import string
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from broker import control_lists as lists
from broker import definitions, policies
from broker.control_rewind import rewind_command
from broker.core import commands as c
from broker.core.auth import hash_password
from broker.core.errors import BrokerError, InvalidArgument, PreconditionFailed
from broker.field_values import check_table

if TYPE_CHECKING:
    from broker.node import Node
    from broker.trace_log.recorder import TraceRecorder

Handler = Callable[[dict[str, Any]], Awaitable[Any]]


class ControlError(Exception):
    """The node answered with an error, or no node runs in that data dir."""


@contextlib.contextmanager
def _in_directory(path: str) -> Any:
    """Unix socket paths are limited to ~100 bytes: bind and connect by a relative name."""
    old = os.getcwd()
    os.chdir(os.path.dirname(os.path.abspath(path)))
    try:
        yield os.path.basename(path)
    finally:
        os.chdir(old)


class ControlServer:
    def __init__(self, node: Node, path: str) -> None:
        self.node = node
        self.path = path
        self.server: asyncio.AbstractServer | None = None
        self.handlers: dict[str, Handler] = {
            "users.add": self._users_add,
            "users.delete": self._users_delete,
            "users.list": self._users_list,
            "vhosts.add": self._vhosts_add,
            "vhosts.delete": self._vhosts_delete,
            "vhosts.list": self._vhosts_list,
            "permissions.set": self._permissions_set,
            "vhosts.set_limits": self._vhosts_set_limits,
            "vhosts.limits": self._vhosts_limits,
            "users.set_limits": self._users_set_limits,
            "users.limits": self._users_limits,
            "queues.list": self._queues_list,
            "queues.purge": self._queues_purge,
            "queues.delete": self._queues_delete,
            "queues.rewind": self._queues_rewind,
            "exchanges.list": self._exchanges_list,
            "bindings.list": self._bindings_list,
            "consumers.list": self._consumers_list,
            "connections.list": self._connections_list,
            "connections.close": self._connections_close,
            "topics.list": self._topics_list,
            "subscriptions.list": self._subscriptions_list,
            "policies.set": self._policies_set,
            "policies.list": self._policies_list,
            "policies.delete": self._policies_delete,
            "limits.set": self._limits_set,
            "status": self._status,
            "keys.create": self._keys_create,
            "keys.list": self._keys_list,
            "keys.delete": self._keys_delete,
            "definitions.import": self._definitions_import,
            "definitions.export": self._definitions_export,
            "cluster.status": self._cluster_status,
            "cluster.add": self._cluster_add,
            "cluster.remove": self._cluster_remove,
            "cluster.transfer": self._cluster_transfer,
            "trace.set": self._trace_set,
            "trace.status": self._trace_status,
            "trace.by_id": self._trace_by_id,
            "trace.by_queue": self._trace_by_queue,
        }

    async def start(self) -> None:
        # The store's lock proves no other node uses this data dir: a leftover socket is stale.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with _in_directory(self.path) as name:
            sock.bind(name)
        os.chmod(self.path, 0o600)
        self.server = await asyncio.start_unix_server(self._serve, sock=sock)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 10)
            request = json.loads(line)
            handler = self.handlers.get(request.get("op"))
            if handler is None:
                reply: dict[str, Any] = {"ok": False, "error": f"unknown op {request.get('op')}"}
            else:
                reply = {"ok": True, "result": await handler(request.get("args") or {})}
        except BrokerError as exc:
            reply = {"ok": False, "error": str(exc)}
        except (ValueError, KeyError, TypeError, TimeoutError) as exc:
            reply = {"ok": False, "error": f"bad request: {exc}"}
        writer.write(json.dumps(reply).encode() + b"\n")
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    async def _call(self, command: c.Command) -> Any:
        return await self.node.gateway.call(command)

    async def _users_add(self, args: dict[str, Any]) -> None:
        if args["name"] in self.node.gateway.committed.users:
            raise PreconditionFailed(f"user '{args['name']}' already exists")
        tags = tuple(args.get("tags") or ())
        await self._call(
            c.PutUser(args["name"], hash_password(args["password"], os.urandom(4)), tags)
        )

    async def _users_delete(self, args: dict[str, Any]) -> None:
        await self._call(c.DeleteUser(args["name"]))
        self.node.gateway.close_sessions(f"user '{args['name']}' is deleted", user=args["name"])

    async def _users_list(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        users = self.node.gateway.committed.users.values()
        return [{"name": u.name, "tags": list(u.tags)} for u in sorted(users, key=lambda u: u.name)]

    async def _vhosts_add(self, args: dict[str, Any]) -> None:
        await self._call(c.DeclareVhost(args["name"]))

    async def _vhosts_delete(self, args: dict[str, Any]) -> None:
        await self._call(c.DeleteVhost(args["name"]))
        self.node.gateway.close_sessions(f"vhost '{args['name']}' is deleted", vhost=args["name"])

    async def _vhosts_list(self, args: dict[str, Any]) -> list[str]:
        return sorted(self.node.gateway.committed.vhosts)

    async def _permissions_set(self, args: dict[str, Any]) -> None:
        await self._call(
            c.SetPermissions(
                args["user"], args["vhost"], args["configure"], args["write"], args["read"]
            )
        )

    async def _vhosts_set_limits(self, args: dict[str, Any]) -> None:
        await self._call(c.SetLimits("vhost", args["name"], _limits(args["limits"])))

    async def _users_set_limits(self, args: dict[str, Any]) -> None:
        await self._call(c.SetLimits("user", args["name"], _limits(args["limits"])))

    async def _vhosts_limits(self, args: dict[str, Any]) -> dict[str, dict[str, int]]:
        return self._list_limits("vhost")

    async def _users_limits(self, args: dict[str, Any]) -> dict[str, dict[str, int]]:
        return self._list_limits("user")

    def _list_limits(self, scope: str) -> dict[str, dict[str, int]]:
        limits = self.node.gateway.committed.limits
        return {name: dict(limits[(kind, name)]) for kind, name in sorted(limits) if kind == scope}

    async def _queues_list(self, args: dict[str, Any]) -> lists.Rows:
        return lists.queues(self.node, args.get("vhost"))

    async def _queues_purge(self, args: dict[str, Any]) -> int:
        return int(await self._call(c.PurgeQueue(args.get("vhost") or "/", args["name"])))

    async def _queues_delete(self, args: dict[str, Any]) -> int:
        vhost, name = args.get("vhost") or "/", args["name"]
        self.node.gateway.committed.queue(vhost, name)  # NotFound, as rabbitmqctl says
        command = c.DeleteQueue(
            vhost, name, bool(args.get("if_unused")), bool(args.get("if_empty"))
        )
        return int(await self._call(command))

    async def _queues_rewind(self, args: dict[str, Any]) -> int:
        """From `since` (ms since the epoch) or from the message `from_message` names."""
        vhost, name = args.get("vhost") or "/", args["name"]
        return int(await self._call(rewind_command(self.node, vhost, name, args)))

    async def _exchanges_list(self, args: dict[str, Any]) -> lists.Rows:
        return lists.exchanges(self.node, args.get("vhost"))

    async def _bindings_list(self, args: dict[str, Any]) -> lists.Rows:
        return lists.bindings(self.node, args.get("vhost"))

    async def _consumers_list(self, args: dict[str, Any]) -> lists.Rows:
        return lists.consumers(self.node, args.get("vhost"))

    async def _connections_list(self, args: dict[str, Any]) -> lists.Rows:
        return lists.connections(self.node)

    async def _connections_close(self, args: dict[str, Any]) -> None:
        lists.close_connection(self.node, args["name"], args.get("reason") or "closed")

    async def _topics_list(self, args: dict[str, Any]) -> lists.Rows:
        return lists.topics(self.node, args.get("vhost"))

    async def _subscriptions_list(self, args: dict[str, Any]) -> lists.Rows:
        return lists.subscriptions(self.node, args.get("vhost"), args.get("topic"))

    async def _trace_set(self, args: dict[str, Any]) -> None:
        await self._call(
            c.SetTracing(
                args.get("vhost") or "/", args["kind"], bool(args["enabled"]), args.get("queue", "")
            )
        )

    async def _trace_status(self, args: dict[str, Any]) -> list[dict[str, str]]:
        settings = self.node.gateway.committed.tracing.settings()
        return [{"vhost": v, "kind": kind, "queue": q} for v, kind, q in settings]

    async def _trace_by_id(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        return await self._trace().by_id(str(args["id"]), int(args.get("limit", 1000)))

    async def _trace_by_queue(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        until = args.get("until")
        return await self._trace().by_queue(
            args.get("vhost") or "/",
            args["queue"],
            int(args.get("since", 0)),
            None if until is None else int(until),
            int(args.get("limit", 1000)),
        )

    def _trace(self) -> TraceRecorder:
        trace = self.node.gateway.trace
        if trace is None:
            raise InvalidArgument("message trace is not open yet")
        return trace

    async def _policies_set(self, args: dict[str, Any]) -> None:
        vhost = args.get("vhost") or "/"
        await self._call(policies.set_command(vhost, args["name"], args["policy"]))

    async def _policies_list(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        return policies.listed(self.node.gateway.committed, args.get("vhost"))

    async def _policies_delete(self, args: dict[str, Any]) -> None:
        await self._call(c.DeletePolicy(args.get("vhost") or "/", args["name"]))

    async def _limits_set(self, args: dict[str, Any]) -> None:
        self.node.set_limits(args.get("disk_free_limit"), args.get("memory_high_watermark"))

    async def _keys_create(self, args: dict[str, Any]) -> dict[str, str]:
        """A new access key for a vhost: generated unless secret_id / secret_key are given."""
        secret_id = args.get("secret_id") or "AKID" + _random_text(32)
        secret_key = args.get("secret_key") or _random_text(32)
        for name, value in (("secret id", secret_id), ("secret key", secret_key)):
            if not isinstance(value, str) or not value.isprintable() or " " in value:
                raise InvalidArgument(f"the {name} must be printable text without spaces")
        key = await self._call(c.AddAccessKey(secret_id, secret_key, args["vhost"]))
        return {"secret_id": key.secret_id, "secret_key": key.secret_key, "vhost": key.vhost}

    async def _keys_list(self, args: dict[str, Any]) -> list[dict[str, str]]:
        keys = sorted(self.node.gateway.committed.access_keys.values(), key=lambda k: k.secret_id)
        return [{"secret_id": k.secret_id, "vhost": k.vhost} for k in keys]

    async def _keys_delete(self, args: dict[str, Any]) -> None:
        await self._call(c.DeleteAccessKey(args["secret_id"]))

    async def _definitions_import(self, args: dict[str, Any]) -> dict[str, int]:
        """Everything is checked before anything is applied; then applied in order."""
        commands = definitions.import_commands(args["definitions"], self.node.gateway.committed)
        for command in commands:
            await self._call(command)
        return definitions.counts(commands)

    async def _definitions_export(self, args: dict[str, Any]) -> dict[str, Any]:
        return definitions.export(self.node.gateway.committed)

    async def _status(self, args: dict[str, Any]) -> dict[str, Any]:
        return self.node.status()

    async def _cluster_status(self, args: dict[str, Any]) -> dict[str, Any]:
        return self.node.cluster().status()

    async def _cluster_add(self, args: dict[str, Any]) -> None:
        await self.node.cluster().change_members(int(args["node"]), str(args["address"]))

    async def _cluster_remove(self, args: dict[str, Any]) -> None:
        await self.node.cluster().change_members(int(args["node"]), None)

    async def _cluster_transfer(self, args: dict[str, Any]) -> None:
        await self.node.cluster().transfer_leadership(int(args["node"]))


def _limits(value: Any) -> dict[str, int]:
    """A limits definition as rabbitmqctl takes it: a JSON object of integers (the core
    checks the names and types; what the log cannot carry is refused here)."""
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise InvalidArgument('limits must be a JSON object such as {"max-connections": 10}')
    return check_table(value, "limits")


def _random_text(length: int) -> str:
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(length))


def request(
    data_dir: str, op: str, args: dict[str, Any] | None = None, timeout: float = 30.0
) -> Any:
    """Send one admin request to the node running in `data_dir` and return its result."""
    path = os.path.join(data_dir, "control.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        with _in_directory(path) as name:
            sock.connect(name)
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        raise ControlError(f"no broker node is running with data dir {data_dir}") from None
    with sock:
        sock.sendall(json.dumps({"op": op, "args": args or {}}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    if not data:
        raise ControlError("the node closed the admin connection without a reply")
    reply = json.loads(data)
    if not reply.get("ok"):
        raise ControlError(reply.get("error", "unknown error"))
    return reply.get("result")
