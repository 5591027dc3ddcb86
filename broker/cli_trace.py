"""`broker trace`: message trace and RabbitMQ's firehose of a running node."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click

from broker.cli_common import admin, data_dir_option, epoch_ms, format_option, print_rows


@click.group()
def trace() -> None:
    """Message trace, and RabbitMQ's firehose (copies to amq.rabbitmq.trace)."""


@trace.command("on")
@click.option("--vhost", default="/", show_default=True)
@data_dir_option
def trace_on(vhost: str, data_dir: str) -> None:
    """Turn the firehose on for a vhost (as rabbitmqctl trace_on)."""
    admin(data_dir, "trace.set", vhost=vhost, kind="firehose", enabled=True)
    click.echo(f"firehose on for vhost '{vhost}'")


@trace.command("off")
@click.option("--vhost", default="/", show_default=True)
@data_dir_option
def trace_off(vhost: str, data_dir: str) -> None:
    """Turn the firehose off for a vhost (as rabbitmqctl trace_off)."""
    admin(data_dir, "trace.set", vhost=vhost, kind="firehose", enabled=False)
    click.echo(f"firehose off for vhost '{vhost}'")


@trace.command("messages")
@click.argument("state", type=click.Choice(["on", "off"]))
@click.option("--vhost", default="/", show_default=True)
@click.option("--queue", default="", help="Only this queue. [the whole vhost]")
@data_dir_option
def trace_messages(state: str, vhost: str, queue: str, data_dir: str) -> None:
    """Record (or stop recording) every step of each message's life."""
    admin(data_dir, "trace.set", vhost=vhost, kind="trace", enabled=state == "on", queue=queue)
    where = f"queue '{queue}' in vhost '{vhost}'" if queue else f"vhost '{vhost}'"
    click.echo(f"message trace {state} for {where}")


@trace.command("status")
@format_option
@data_dir_option
def trace_status(fmt: str, data_dir: str) -> None:
    """What is traced."""
    print_rows(admin(data_dir, "trace.status"), ("vhost", "kind", "queue"), fmt)


@trace.command("show")
@click.argument("message_id")
@click.option("--limit", default=1000, show_default=True)
@format_option
@data_dir_option
def trace_show(message_id: str, limit: int, fmt: str, data_dir: str) -> None:
    """The life of one message, by trace id or message_id property."""
    steps = admin(data_dir, "trace.by_id", id=message_id, limit=limit)
    print_rows([_step_row(s) for s in steps], TRACE_COLUMNS, fmt)


@trace.command("queue")
@click.argument("queue")
@click.option("--vhost", default="/", show_default=True)
@click.option("--since", help="From this time: ISO 8601 (UTC unless it says) or epoch ms.")
@click.option("--until", help="Up to this time, included.")
@click.option("--limit", default=1000, show_default=True)
@format_option
@data_dir_option
def trace_queue(
    queue: str,
    vhost: str,
    since: str | None,
    until: str | None,
    limit: int,
    fmt: str,
    data_dir: str,
) -> None:
    """What happened in a queue between two times."""
    steps = admin(
        data_dir,
        "trace.by_queue",
        vhost=vhost,
        queue=queue,
        since=epoch_ms(since) if since else 0,
        until=epoch_ms(until) if until else None,
        limit=limit,
    )
    print_rows([_step_row(s) for s in steps], TRACE_COLUMNS, fmt)


TRACE_COLUMNS = ("time", "event", "queue", "seq", "id", "detail")
_STEP_FIELDS = ("time", "event", "vhost", "queue", "seq", "id")


def _step_row(step: dict[str, Any]) -> dict[str, Any]:
    """A trace step as a table shows it: the time in ISO 8601, the rest as detail."""
    row = {key: step.get(key) for key in _STEP_FIELDS}
    row["time"] = datetime.fromtimestamp(step["time"] / 1000, UTC).isoformat(
        timespec="milliseconds"
    )
    row["detail"] = {k: v for k, v in step.items() if k not in _STEP_FIELDS}
    return row
