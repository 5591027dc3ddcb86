"""The arguments of basic.consume: a consumer priority, checked as RabbitMQ checks it, and a
refusal for the ones that ask for what this broker does not do (stream offsets and filters,
a cancel on failover), rather than consuming as if they had not been given."""

from __future__ import annotations

from typing import Any

from broker.protocols.amqp.errors import AMQPError

#: consume arguments only a stream queue acts on; no queue here is one
STREAM_ONLY = ("x-stream-offset", "x-stream-filter", "x-stream-match-unfiltered")


def consumer_priority(vhost: str, queue: str, args: dict[str, Any]) -> int:
    """The consumer's x-priority (0 by default); raises 406 for an argument we must refuse."""

    def refuse(key: str, why: str) -> AMQPError:
        return AMQPError(406, f"invalid arg '{key}' for queue '{queue}' in vhost '{vhost}': {why}")

    for key in STREAM_ONLY:
        if key in args:
            raise refuse(key, "only a stream queue takes it, and there are no streams here")
    failover = args.get("x-cancel-on-ha-failover", False)
    if not isinstance(failover, bool):
        raise refuse("x-cancel-on-ha-failover", "expected a boolean")
    if failover:
        raise refuse("x-cancel-on-ha-failover", "consumers are not cancelled on a failover here")
    priority = args.get("x-priority", 0)
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise refuse("x-priority", "expected an integer")
    return priority
