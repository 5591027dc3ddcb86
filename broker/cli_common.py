"""What the `broker` commands that manage a running node share: the data dir naming the node,
the request to its admin socket, and how lists print (a header line and one tab-separated line
per object, as rabbitmqctl's list commands do, or JSON for scripts)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import click

from broker.control import ControlError, request

data_dir_option = click.option(
    "--data-dir",
    default="./broker-data",
    show_default=True,
    help="Data directory of the node to manage (it names the node).",
)

format_option = click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="Output format.",
)


def admin(data_dir: str, op: str, **args: Any) -> Any:
    """The result of one admin request; on an error, say it and exit with status 2."""
    try:
        return request(data_dir, op, args)
    except ControlError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(2)


def epoch_ms(text: str) -> int:
    """A time an operator types: epoch ms, or ISO 8601 (UTC unless it names a zone)."""
    if text.isdigit():
        return int(text)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"not a time: {text!r} (ISO 8601 or epoch ms)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def print_rows(rows: Sequence[dict[str, Any]], columns: Sequence[str], fmt: str) -> None:
    """Print `rows` (dicts) as JSON, or their `columns` as a table."""
    if fmt == "json":
        click.echo(json.dumps(list(rows), indent=2, default=str))
        return
    click.echo("\t".join(columns))
    for row in rows:
        click.echo("\t".join(_cell(row.get(col)) for col in columns))


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value).replace("\t", "\\t").replace("\n", "\\n")
