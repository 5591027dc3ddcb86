"""The encoding of log entries and records: explicit, versioned, and round-tripping what AMQP,
MQTT and the CMQ API put into commands (no pickle anywhere)."""

from __future__ import annotations

import datetime
import decimal
import pathlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.core import commands as c
from broker.store import schema
from broker.store.encoding import (
    COMMAND_CODES,
    command_fields,
    decode_entry,
    encode_entry,
    pack,
    unpack,
)

#: The wire table of format 2: changing a command's code or fields changes the format (bump
#: schema.FORMAT_VERSION and say how older data dirs are read), so this must be edited on
#: purpose, never by accident.
FORMAT_2 = {
    1: ("DeclareVhost", ("name",)),
    2: ("DeleteVhost", ("name",)),
    3: ("PutUser", ("name", "password_hash", "tags")),
    4: ("DeleteUser", ("name",)),
    5: ("SetPermissions", ("user", "vhost", "configure", "write", "read")),
    6: (
        "DeclareExchange",
        ("vhost", "name", "type", "durable", "auto_delete", "internal", "arguments", "passive"),
    ),
    7: ("DeleteExchange", ("vhost", "name", "if_unused")),
    8: (
        "DeclareQueue",
        (
            "vhost",
            "name",
            "durable",
            "exclusive_owner",
            "auto_delete",
            "arguments",
            "passive",
            "server_named",
            "requester",
        ),
    ),
    9: ("DeleteQueue", ("vhost", "name", "if_unused", "if_empty", "requester")),
    10: ("PurgeQueue", ("vhost", "name", "requester")),
    11: (
        "Bind",
        ("vhost", "source", "destination", "to_queue", "routing_key", "arguments", "requester"),
    ),
    12: (
        "Unbind",
        ("vhost", "source", "destination", "to_queue", "routing_key", "arguments", "requester"),
    ),
    13: (
        "Publish",
        ("vhost", "exchange", "routing_key", "properties", "body", "mandatory", "delay_ms"),
    ),
    14: (
        "Consume",
        (
            "vhost",
            "queue",
            "owner",
            "tag",
            "no_ack",
            "exclusive",
            "prefetch",
            "priority",
            "connection",
            "shared_prefetch",
            "active",
            "settle_transient",
        ),
    ),
    15: ("Cancel", ("owner", "tag")),
    16: ("Settle", ("owner", "deliveries", "outcome")),
    17: ("Get", ("vhost", "queue", "owner", "no_ack", "connection")),
    18: ("Recover", ("owner",)),
    19: ("ReleaseOwner", ("owner",)),
    20: ("ConnectionClosed", ("connection",)),
    21: ("ReleaseNode", ("node", "before")),
    22: ("DropTransient", ()),
    23: (
        "OpenSession",
        ("vhost", "client_id", "connection", "owner", "clean", "queue", "group", "will"),
    ),
    24: ("CloseSession", ("vhost", "client_id", "connection", "publish_will")),
    25: ("Batch", ("commands", "refuse_when_full")),
    26: ("SetFlow", ("owner", "active")),
    27: ("Tick", ()),
    28: ("Receive", ("vhost", "queue", "max_messages", "visibility_ms")),
    29: ("DeleteByHandle", ("vhost", "queue", "handle")),
    30: ("ChangeVisibility", ("vhost", "queue", "handle", "visibility_ms")),
    # from_seq came later, last and with a default: entries without it still decode
    31: ("Rewind", ("vhost", "queue", "since_ms", "from_seq")),
    32: ("StoreRetained", ("vhost", "exchange", "routing_key", "properties", "body")),
    33: ("CopyRetained", ("vhost", "patterns", "queue", "headers")),
    34: ("PutRecord", ("vhost", "group", "name", "value")),
    35: ("DropRecords", ("vhost", "group")),
    36: ("SetQueueArguments", ("vhost", "name", "arguments")),
    37: ("AddAccessKey", ("secret_id", "secret_key", "vhost")),
    38: ("DeleteAccessKey", ("secret_id",)),
    39: ("SetMembers", ("members",)),
    40: ("SetLimits", ("scope", "name", "limits")),
    41: ("SetPolicy", ("vhost", "name", "pattern", "apply_to", "priority", "definition")),
    42: ("DeletePolicy", ("vhost", "name")),
    43: ("SetTracing", ("vhost", "kind", "enabled", "queue")),
    44: ("ClearPermissions", ("user", "vhost")),
}


def test_the_command_table_is_the_format_2_table() -> None:
    assert schema.FORMAT_VERSION == 2
    actual = {code: (cls.__name__, command_fields(cls)) for cls, code in COMMAND_CODES.items()}
    assert actual == FORMAT_2


def test_every_command_type_has_a_code() -> None:
    named = {
        obj
        for obj in vars(c).values()
        if isinstance(obj, type) and obj.__module__ == c.__name__ and hasattr(obj, "__slots__")
    }
    assert named - {c.Meta, c.Will} == set(COMMAND_CODES)


amqp_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20)
    | st.decimals(allow_nan=False, allow_infinity=False, places=3)
    | st.datetimes(min_value=datetime.datetime(1971, 1, 1))
    | st.datetimes(min_value=datetime.datetime(1971, 1, 1), timezones=st.just(datetime.UTC)),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@given(value=amqp_values)
def test_values_round_trip(value: object) -> None:
    assert unpack(pack(value)) == value


@given(
    headers=st.dictionaries(st.text(max_size=8), amqp_values, max_size=5),
    body=st.binary(max_size=100),
    time=st.integers(0, 2**48),
)
def test_publish_entries_round_trip(headers: dict[str, object], body: bytes, time: int) -> None:
    properties = {
        "delivery_mode": 2,
        "headers": headers,
        "timestamp": datetime.datetime(2026, 1, 2),
    }
    command = c.Publish("/", "amq.topic", "a.b", properties, body, True, 5)
    assert decode_entry(encode_entry(7, time, command)) == (7, time, command)


def test_nested_and_tuple_fields_come_back_as_they_were() -> None:
    owner = (1, 2, 3)
    will = c.Will("amq.topic", "w", {"delivery_mode": 2}, b"bye", True)
    commands = [
        c.Settle(owner, [("/", "q", 1), ("/", "q", 2)], "ack"),
        c.OpenSession(
            "/", "id", (1, 2), owner, False, "mqtt-subscription-id", ("mqtt", "id"), will
        ),
        c.DeclareQueue("/", "x", exclusive_owner=(1, 2), requester=(1, 2)),
        c.Batch([c.Publish("/", "", "q", {}, b"1"), c.Settle(owner, [("/", "q", 3)], "ack")]),
        c.PutRecord("/", ("cmq", "topics"), "t", {"filterType": 2, "tags": ["a"]}),
        c.ReleaseNode(3),
        c.Tick(),
    ]
    for command in commands:
        assert decode_entry(encode_entry(1, 2, command))[2] == command


def test_a_rewind_logged_before_positions_decodes_as_a_rewind_by_time() -> None:
    # The wire form of a Rewind entry written before from_seq existed: three fields.
    old_entry = pack((4, 1_000, [COMMAND_CODES[c.Rewind], "/", "q", 500]))
    assert decode_entry(old_entry) == (4, 1_000, c.Rewind("/", "q", 500, 0))
    by_position = c.Rewind("/", "q", 0, 42)
    assert decode_entry(encode_entry(4, 1_000, by_position))[2] == by_position


def test_decimals_and_datetimes_keep_their_kind() -> None:
    aware = datetime.datetime(2026, 12, 1, 10, 0, tzinfo=datetime.UTC)
    naive = datetime.datetime(2026, 12, 1, 10, 0, 0, 123456)
    value = unpack(pack({"d": decimal.Decimal("1.50"), "a": aware, "n": naive}))
    assert value == {"d": decimal.Decimal("1.50"), "a": aware, "n": naive}
    assert value["a"].tzinfo is not None and value["n"].tzinfo is None


def test_what_cannot_be_encoded_is_refused_and_the_packer_recovers() -> None:
    with pytest.raises(TypeError):
        pack({"x": object()})
    assert unpack(pack([1, "two"])) == [1, "two"]


def test_no_pickle_in_the_broker() -> None:
    root = pathlib.Path(__file__).resolve().parent.parent / "broker"
    offenders = [str(p) for p in root.rglob("*.py") if "pickle" in p.read_text()]
    assert offenders == []
