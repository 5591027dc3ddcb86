"""`broker queues rewind`: the Rewind command an operator's request asks for, checked first.

A rewind by message names the message by id, as clients know it (see
broker/protocols/http/positions.py); the command carries its sequence number.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from broker.core import commands as c
from broker.core.errors import InvalidArgument, NotFound, PreconditionFailed
from broker.protocols.http.positions import seq_of

if TYPE_CHECKING:
    from broker.node import Node


def rewind_command(node: Node, vhost: str, name: str, args: dict[str, Any]) -> c.Rewind:
    """From `since` (ms since the epoch) or `from_message` (a message id), exactly one."""
    q = node.gateway.committed.queue(vhost, name)  # NotFound, as for the other queue commands
    if not q.settings.rewind_ms:
        raise PreconditionFailed(
            f"queue '{name}' keeps no messages for rewind (x-rewind-ms or rewindSeconds is 0)"
        )
    since, from_message = args.get("since"), args.get("from_message")
    if (since is None) == (from_message is None):
        raise InvalidArgument("rewind from a time or from a message, one of them")
    if from_message is not None:
        seq = seq_of(q, str(from_message))
        if seq is None:
            raise NotFound(f"no message '{from_message}' in queue '{name}' (nor kept for rewind)")
        return c.Rewind(vhost, name, 0, seq)
    if isinstance(since, bool) or not isinstance(since, int) or since < 0:
        raise InvalidArgument("since must be a time in ms since the epoch")
    return c.Rewind(vhost, name, since)
