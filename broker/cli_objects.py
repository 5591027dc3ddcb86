"""`broker queues|exchanges|bindings|consumers|connections|topics|subscriptions`: the objects of a
running node, listed as the management API shows them (`--format json` gives every field of
RabbitMQ's JSON; the table picks the usual columns), and the changes an operator makes to them."""

from __future__ import annotations

import click

from broker.cli_common import admin, data_dir_option, epoch_ms, format_option, print_rows

vhost_option = click.option("--vhost", help="Only this vhost's. [all]")


@click.group()
def queues() -> None:
    """Queues of a running node."""


@queues.command("list")
@vhost_option
@format_option
@data_dir_option
def queues_list(vhost: str | None, fmt: str, data_dir: str) -> None:
    """Name, messages (ready + unacknowledged), consumers, and the rest: messages_ram are
    held in memory, messages_paged_out waiting on disk only."""
    columns = (
        "name",
        "messages",
        "consumers",
        "vhost",
        "messages_ready",
        "messages_unacknowledged",
        "messages_ram",
        "messages_paged_out",
        "type",
        "durable",
        "policy",
    )
    print_rows(admin(data_dir, "queues.list", vhost=vhost), columns, fmt)


@queues.command("purge")
@click.argument("name")
@click.option("--vhost", default="/", show_default=True)
@data_dir_option
def queues_purge(name: str, vhost: str, data_dir: str) -> None:
    """Drop a queue's ready messages (counted as purged in `broker status`)."""
    count = admin(data_dir, "queues.purge", vhost=vhost, name=name)
    click.echo(f"queue '{name}' purged: {count} messages")


@queues.command("delete")
@click.argument("name")
@click.option("--vhost", default="/", show_default=True)
@click.option("--if-unused", is_flag=True, help="Only if it has no consumers.")
@click.option("--if-empty", is_flag=True, help="Only if it has no messages.")
@data_dir_option
def queues_delete(name: str, vhost: str, if_unused: bool, if_empty: bool, data_dir: str) -> None:
    count = admin(
        data_dir, "queues.delete", vhost=vhost, name=name, if_unused=if_unused, if_empty=if_empty
    )
    click.echo(f"queue '{name}' deleted with {count} messages")


@queues.command("rewind")
@click.argument("name")
@click.option("--vhost", default="/", show_default=True)
@click.option(
    "--since", help="Messages enqueued from this time: ISO 8601 (UTC unless it says) or epoch ms."
)
@click.option("--from-message", help="Messages from this one on, by id (msgId or message-id).")
@data_dir_option
def queues_rewind(
    name: str, vhost: str, since: str | None, from_message: str | None, data_dir: str
) -> None:
    """Make a queue's messages kept for rewind (x-rewind-ms, CMQ's rewindSeconds) consumable
    again, in order: those enqueued since a time, or from a message on."""
    if (since is None) == (from_message is None):
        raise click.UsageError("give --since TIME or --from-message ID, one of them")
    args = {"from_message": from_message} if since is None else {"since": epoch_ms(since)}
    count = admin(data_dir, "queues.rewind", vhost=vhost, name=name, **args)
    click.echo(f"queue '{name}' rewound: {count} messages consumable again")


@click.group()
def exchanges() -> None:
    """Exchanges of a running node."""


@exchanges.command("list")
@vhost_option
@format_option
@data_dir_option
def exchanges_list(vhost: str | None, fmt: str, data_dir: str) -> None:
    columns = ("name", "type", "vhost", "durable", "auto_delete", "internal", "arguments")
    print_rows(admin(data_dir, "exchanges.list", vhost=vhost), columns, fmt)


@click.group()
def bindings() -> None:
    """Bindings of a running node."""


@bindings.command("list")
@vhost_option
@format_option
@data_dir_option
def bindings_list(vhost: str | None, fmt: str, data_dir: str) -> None:
    columns = ("source", "destination_type", "destination", "routing_key", "vhost", "arguments")
    print_rows(admin(data_dir, "bindings.list", vhost=vhost), columns, fmt)


@click.group()
def consumers() -> None:
    """Consumers of a running node (of every member, in a cluster)."""


@consumers.command("list")
@vhost_option
@format_option
@data_dir_option
def consumers_list(vhost: str | None, fmt: str, data_dir: str) -> None:
    rows = admin(data_dir, "consumers.list", vhost=vhost)
    for row in rows:
        row["queue_name"] = row["queue"]["name"]
        row["vhost"] = row["queue"]["vhost"]
        row["connection"] = row["channel_details"]["connection_name"]
    columns = (
        "queue_name",
        "consumer_tag",
        "vhost",
        "connection",
        "ack_required",
        "prefetch_count",
    )
    print_rows(rows, columns, fmt)


@click.group()
def connections() -> None:
    """Client connections of a running node (AMQP, MQTT, MQTT over WebSocket)."""


@connections.command("list")
@format_option
@data_dir_option
def connections_list(fmt: str, data_dir: str) -> None:
    columns = ("name", "protocol", "user", "vhost", "channels", "connected_at", "client_properties")
    print_rows(admin(data_dir, "connections.list"), columns, fmt)


@connections.command("close")
@click.argument("name")
@click.option("--reason", default="closed by the operator", show_default=True)
@data_dir_option
def connections_close(name: str, reason: str, data_dir: str) -> None:
    """Close a connection, by the name `list` shows or its id (NODE.NUMBER)."""
    admin(data_dir, "connections.close", name=name, reason=reason)
    click.echo(f"connection '{name}' closed")


@click.group()
def topics() -> None:
    """CMQ topics of a running node."""


@topics.command("list")
@vhost_option
@format_option
@data_dir_option
def topics_list(vhost: str | None, fmt: str, data_dir: str) -> None:
    columns = ("name", "vhost", "filterType", "subscriptions", "maxMsgSize")
    print_rows(admin(data_dir, "topics.list", vhost=vhost), columns, fmt)


@click.group()
def subscriptions() -> None:
    """CMQ subscriptions of a running node."""


@subscriptions.command("list")
@vhost_option
@click.option("--topic", help="Only this topic's. [all]")
@format_option
@data_dir_option
def subscriptions_list(vhost: str | None, topic: str | None, fmt: str, data_dir: str) -> None:
    columns = ("name", "topic", "vhost", "protocol", "endpoint")
    print_rows(admin(data_dir, "subscriptions.list", vhost=vhost, topic=topic), columns, fmt)


COMMANDS = (queues, exchanges, bindings, consumers, connections, topics, subscriptions)
