"""The AMQP codec's fast paths against pamqp, and the sans-IO connection driven by bytes alone."""

from __future__ import annotations

import datetime
import string
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import body as pbody
from pamqp import commands as spec
from pamqp import frame
from pamqp import header as pheader
from pamqp.base import Frame

from broker.protocols.amqp import codec
from broker.protocols.amqp.connection import AMQPConnection, Settings, State
from tests.memory_gateway import memory_gateway

CODEC_SETTINGS = settings(max_examples=200, deadline=None)
#: pamqp packs long-long integers signed; delivery tags never get near this
PAMQP_MAX_TAG = 2**63 - 1

exchange_names = st.text(alphabet=string.ascii_letters + string.digits + "-_.:@#,/+ ", max_size=127)


def short_strings(max_bytes: int = 255) -> st.SearchStrategy[str]:
    return st.text(max_size=max_bytes).filter(lambda s: len(s.encode()) <= max_bytes)


def payload_of(method: Frame | pheader.ContentHeader, channel: int = 1) -> bytes:
    """The payload of a frame as pamqp marshals it (without frame header and end byte)."""
    raw = frame.marshal(method, channel)
    assert raw[-1] == codec.FRAME_END
    return raw[7:-1]


def split_frames(data: bytes) -> list[tuple[int, Any]]:
    """Every frame in `data`, decoded by pamqp: (channel, frame)."""
    out = []
    while data:
        used, channel, value = frame.unmarshal(data)
        out.append((channel, value))
        data = data[used:]
    return out


# -- fast-path decoders agree with pamqp ---------------------------------------------------


@CODEC_SETTINGS
@given(
    exchange=exchange_names,
    routing_key=short_strings(),
    mandatory=st.booleans(),
    immediate=st.booleans(),
)
def test_decode_publish_agrees_with_pamqp(
    exchange: str, routing_key: str, mandatory: bool, immediate: bool
) -> None:
    method = spec.Basic.Publish(
        exchange=exchange, routing_key=routing_key, mandatory=mandatory, immediate=immediate
    )
    payload = payload_of(method)
    assert codec.method_id(payload) == codec.PUBLISH_ID
    fast = codec.decode_publish(payload)
    slow = codec.decode_method(payload)
    assert isinstance(slow, spec.Basic.Publish)
    assert fast == (slow.exchange, slow.routing_key, slow.mandatory, slow.immediate)
    assert fast == (exchange, routing_key, mandatory, immediate)


@CODEC_SETTINGS
@given(tag=st.integers(0, PAMQP_MAX_TAG), multiple=st.booleans())
def test_decode_ack_agrees_with_pamqp(tag: int, multiple: bool) -> None:
    payload = payload_of(spec.Basic.Ack(delivery_tag=tag, multiple=multiple))
    assert codec.method_id(payload) == codec.ACK_ID
    slow = codec.decode_method(payload)
    assert isinstance(slow, spec.Basic.Ack)
    assert codec.decode_ack(payload) == (slow.delivery_tag, slow.multiple) == (tag, multiple)


@pytest.mark.parametrize("cut", [0, 4, 6, 7, 9])
def test_truncated_publish_is_a_syntax_error(cut: int) -> None:
    payload = payload_of(spec.Basic.Publish(exchange="ex", routing_key="rk"))
    with pytest.raises(codec.SyntaxError_):
        codec.decode_publish(payload[:cut])


def test_truncated_ack_is_a_syntax_error() -> None:
    payload = payload_of(spec.Basic.Ack(delivery_tag=5))
    with pytest.raises(codec.SyntaxError_):
        codec.decode_ack(payload[:-1])


def test_undecodable_method_is_a_syntax_error() -> None:
    with pytest.raises(codec.SyntaxError_):
        codec.decode_method(b"\x00\x3c\x00\xff")


# -- content headers -----------------------------------------------------------------------

field_values = st.recursive(
    st.one_of(
        st.booleans(),
        st.integers(-(2**31), 2**31 - 1),
        st.text(max_size=20),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.text(string.ascii_letters, min_size=1, max_size=8), inner, max_size=3),
    ),
    max_leaves=6,
)

properties = st.fixed_dictionaries(
    {},
    optional={
        "content_type": short_strings(40),
        "content_encoding": short_strings(20),
        "headers": st.dictionaries(
            st.text(string.ascii_letters + "-", min_size=1, max_size=12), field_values, max_size=4
        ),
        "delivery_mode": st.sampled_from([1, 2]),
        "priority": st.integers(0, 9),
        "correlation_id": short_strings(40),
        "reply_to": short_strings(40),
        "expiration": st.integers(0, 10**9).map(str),
        "message_id": short_strings(40),
        # pamqp reads values past 2**32 - 1 as milliseconds, so they do not round-trip
        "timestamp": st.integers(0, 2**32 - 1).map(
            lambda s: datetime.datetime.fromtimestamp(s, datetime.UTC)
        ),
        "message_type": short_strings(20),
        "user_id": short_strings(20),
        "app_id": short_strings(20),
    },
)


@CODEC_SETTINGS
@given(props=properties, body_size=st.integers(0, 2**40))
def test_decode_content_header_agrees_with_pamqp(props: dict[str, Any], body_size: int) -> None:
    content = pheader.ContentHeader(0, body_size, spec.Basic.Properties(**props))
    payload = payload_of(content)
    reference = pheader.ContentHeader()
    reference.unmarshal(payload)
    expected = {
        name: getattr(reference.properties, name)
        for name in codec.PROPERTY_NAMES
        if getattr(reference.properties, name) is not None
    }
    expected.pop("cluster_id", None)
    size, decoded, raw = codec.decode_content_header(payload)
    assert size == reference.body_size == body_size
    assert decoded == expected
    assert raw == payload[12:]
    # and our encoder writes the same bytes back
    assert codec.encode_properties(decoded) == raw


def test_content_header_for_another_class_is_a_syntax_error() -> None:
    payload = bytearray(payload_of(pheader.ContentHeader(0, 1, spec.Basic.Properties())))
    payload[1] = 50  # class id 50 (queue)
    with pytest.raises(codec.SyntaxError_):
        codec.decode_content_header(bytes(payload))


def test_truncated_content_header_is_a_syntax_error() -> None:
    props = spec.Basic.Properties(content_type="text/plain", message_id="abc")
    payload = payload_of(pheader.ContentHeader(0, 1, props))
    for cut in (3, 13, len(payload) - 1):
        with pytest.raises(codec.SyntaxError_):
            codec.decode_content_header(payload[:cut])


# -- outgoing frames -----------------------------------------------------------------------


@CODEC_SETTINGS
@given(
    channel=st.integers(1, 65535),
    consumer_tag=short_strings(),
    delivery_tag=st.integers(0, PAMQP_MAX_TAG),
    redelivered=st.booleans(),
    exchange=exchange_names,
    routing_key=short_strings(),
)
def test_deliver_frame_is_byte_identical_to_pamqp(
    channel: int,
    consumer_tag: str,
    delivery_tag: int,
    redelivered: bool,
    exchange: str,
    routing_key: str,
) -> None:
    ours = codec.deliver_frame(
        channel, consumer_tag, delivery_tag, redelivered, exchange, routing_key
    )
    theirs = frame.marshal(
        spec.Basic.Deliver(
            consumer_tag=consumer_tag,
            delivery_tag=delivery_tag,
            redelivered=redelivered,
            exchange=exchange,
            routing_key=routing_key,
        ),
        channel,
    )
    assert ours == theirs


@CODEC_SETTINGS
@given(
    channel=st.integers(1, 65535),
    props=properties,
    body=st.binary(max_size=300),
    frame_max=st.integers(9, 64),
)
def test_content_frames_split_bodies_at_frame_max(
    channel: int, props: dict[str, Any], body: bytes, frame_max: int
) -> None:
    raw_props = codec.encode_properties(props)
    data = codec.content_frames(channel, raw_props, body, frame_max)
    frames = split_frames(data)
    head_channel, head = frames[0]
    assert head_channel == channel
    assert isinstance(head, pheader.ContentHeader)
    assert head.body_size == len(body)
    # the header frame is what pamqp would write
    expected_head = frame.marshal(
        pheader.ContentHeader(0, len(body), spec.Basic.Properties(**props)), channel
    )
    assert data.startswith(expected_head)
    bodies = frames[1:]
    assert all(ch == channel and isinstance(b, pbody.ContentBody) for ch, b in bodies)
    assert b"".join(b.value for _, b in bodies) == body
    chunk = frame_max - 8
    assert len(bodies) == -(-len(body) // chunk)  # no empty body frames, not one too many
    pos = len(expected_head)
    for _, b in bodies:
        size = 8 + len(b.value)
        assert size <= frame_max
        assert data[pos : pos + size] == frame.marshal(b, channel)
        pos += size
    assert pos == len(data)


def test_content_frames_with_an_exact_multiple_of_the_chunk() -> None:
    data = codec.content_frames(1, codec.encode_properties({}), b"x" * 20, 18)
    bodies = [b for _, b in split_frames(data)[1:]]
    assert [len(b.value) for b in bodies] == [10, 10]


def test_heartbeat_frame_is_what_pamqp_writes() -> None:
    from pamqp.heartbeat import Heartbeat

    assert frame.marshal(Heartbeat(), 0) == codec.HEARTBEAT_FRAME


def test_raw_properties_are_reused() -> None:
    raw = codec.encode_properties({"content_type": "text/plain"})
    props = codec.RawProperties({"content_type": "text/plain"}, raw)
    assert codec.properties_bytes(props) is raw
    assert codec.properties_bytes({"content_type": "text/plain"}) == raw


# -- the sans-IO connection ----------------------------------------------------------------


class Wired:
    """Stands in for the asyncio protocol: what the gateway asks of a connection."""

    def __init__(self) -> None:
        self.conn: AMQPConnection | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)


class Client:
    """Drives an AMQPConnection with bytes and decodes what it sends back."""

    def __init__(self, frame_max: int = 131072) -> None:
        self.gateway, self.commit = memory_gateway()
        wired = Wired()
        conn_id = self.gateway.connection_opened(wired)  # type: ignore[arg-type]
        self.conn = AMQPConnection(conn_id, self.gateway, Settings(frame_max=frame_max), True)
        wired.conn = self.conn

    def send(self, data: bytes) -> list[tuple[int, Any]]:
        self.conn.receive_data(data)
        self.commit.run()
        return split_frames(self.conn.data_to_send())

    def method(self, channel: int, method: Frame) -> list[tuple[int, Any]]:
        return self.send(frame.marshal(method, channel))

    def handshake(self, frame_max: int = 0, vhost: str = "/") -> None:
        ((_, start),) = self.send(codec.PROTOCOL_HEADER)
        assert isinstance(start, spec.Connection.Start)
        ((_, tune),) = self.method(0, spec.Connection.StartOk(response="\0guest\0guest"))
        assert isinstance(tune, spec.Connection.Tune)
        assert self.method(0, spec.Connection.TuneOk(2047, frame_max, 0)) == []
        ((_, ok),) = self.method(0, spec.Connection.Open(virtual_host=vhost))
        assert isinstance(ok, spec.Connection.OpenOk)
        assert self.conn.state is State.OPEN


def only_close(frames: list[tuple[int, Any]]) -> spec.Connection.Close:
    ((channel, close),) = frames
    assert channel == 0
    assert isinstance(close, spec.Connection.Close)
    return close


def test_protocol_header_gets_connection_start() -> None:
    client = Client()
    ((channel, start),) = client.send(codec.PROTOCOL_HEADER)
    assert channel == 0
    assert isinstance(start, spec.Connection.Start)
    assert (start.version_major, start.version_minor) == (0, 9)
    assert "PLAIN" in start.mechanisms.split()
    assert start.server_properties["capabilities"]["publisher_confirms"] is True
    assert client.conn.state is State.AWAIT_START_OK


def test_external_only_with_a_verified_certificate() -> None:
    """EXTERNAL is offered, and logs in as the certificate's CN, only when the transport
    verified a client certificate (the asyncio layer sets `cert_user`)."""
    plain = Client()
    ((_, start),) = plain.send(codec.PROTOCOL_HEADER)
    assert "EXTERNAL" not in start.mechanisms.split()
    refused = only_close(plain.method(0, spec.Connection.StartOk(mechanism="EXTERNAL")))
    assert refused.reply_code == 403
    tls = Client()
    tls.conn.cert_user = "guest"
    ((_, start),) = tls.send(codec.PROTOCOL_HEADER)
    assert "EXTERNAL" in start.mechanisms.split()
    ((_, tune),) = tls.method(0, spec.Connection.StartOk(mechanism="EXTERNAL"))
    assert isinstance(tune, spec.Connection.Tune)
    assert tls.conn.user is not None and tls.conn.user.name == "guest"


def test_protocol_header_byte_by_byte() -> None:
    client = Client()
    for byte in codec.PROTOCOL_HEADER[:-1]:
        assert client.send(bytes([byte])) == []
    ((_, start),) = client.send(codec.PROTOCOL_HEADER[-1:])
    assert isinstance(start, spec.Connection.Start)


@pytest.mark.parametrize(
    "header",
    [
        b"AMQP\x00\x00\x09\x00",  # 0-9-0
        b"AMQP\x01\x01\x00\x0a",  # 0-10
        b"AMQP\x00\x00\x08\x00",  # 0-8
        b"GET / HTTP/1.1\r\n\r\n",
        b"AMQX",  # refused before eight bytes arrived
    ],
)
def test_bad_protocol_header_gets_ours_and_a_close(header: bytes) -> None:
    client = Client()
    client.conn.receive_data(header)
    assert client.conn.data_to_send() == codec.PROTOCOL_HEADER
    assert client.conn.should_close
    assert client.conn.state is State.CLOSED
    client.conn.receive_data(codec.PROTOCOL_HEADER)  # ignored once closed
    assert client.conn.data_to_send() == b""


def test_handshake_and_channel_open() -> None:
    client = Client(frame_max=65536)
    ((_, start),) = client.send(codec.PROTOCOL_HEADER)
    ((_, tune),) = client.method(0, spec.Connection.StartOk(response="\0guest\0guest"))
    assert isinstance(tune, spec.Connection.Tune)
    assert (tune.channel_max, tune.frame_max) == (2047, 65536)
    assert client.method(0, spec.Connection.TuneOk(100, 8192, 0)) == []
    assert client.conn.frame_max == 8192
    assert client.conn.channel_max == 100
    ((_, ok),) = client.method(0, spec.Connection.Open(virtual_host="/"))
    assert isinstance(ok, spec.Connection.OpenOk)
    ((channel, opened),) = client.method(1, spec.Channel.Open())
    assert channel == 1 and isinstance(opened, spec.Channel.OpenOk)
    ((channel, declared),) = client.method(1, spec.Queue.Declare(queue="q1"))
    assert channel == 1 and isinstance(declared, spec.Queue.DeclareOk)
    assert declared.queue == "q1"
    assert "q1" in client.commit.state.vhosts["/"].queues


def test_heartbeats_on_channel_zero_are_accepted() -> None:
    client = Client()
    client.handshake()
    assert client.send(codec.HEARTBEAT_FRAME) == []
    assert client.conn.state is State.OPEN


def test_frame_bigger_than_frame_max_closes_with_501() -> None:
    client = Client()
    client.handshake(frame_max=4096)
    # the frame header alone is enough to know
    close = only_close(client.send(codec.FRAME_HEADER_STRUCT.pack(codec.FRAME_BODY, 1, 4096)))
    assert close.reply_code == 501
    assert close.reply_text.startswith("FRAME_ERROR")
    assert client.conn.state in (State.CLOSING, State.CLOSED)


def test_unsigned_delivery_tags_round_trip() -> None:
    tag = 2**64 - 1
    frame_bytes = codec.deliver_frame(1, "t", tag, False, "", "")
    assert frame_bytes[7 + 4 + 2 : 7 + 4 + 2 + 8] == tag.to_bytes(8, "big")
    assert codec.decode_ack(b"\x00\x3c\x00\x50" + tag.to_bytes(8, "big") + b"\x01") == (tag, True)


def test_framing_error_does_not_leave_the_connection_hanging() -> None:
    client = Client()
    client.handshake(frame_max=4096)
    oversized = codec.FRAME_HEADER_STRUCT.pack(codec.FRAME_BODY, 1, 5000) + b"x" * 5000 + b"\xce"
    assert only_close(client.send(oversized)).reply_code == 501
    client.method(0, spec.Connection.CloseOk())
    assert client.conn.should_close


def test_a_method_that_does_not_decode_while_closing_is_discarded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = Client()
    client.handshake(frame_max=4096)
    oversized = codec.FRAME_HEADER_STRUCT.pack(codec.FRAME_BODY, 1, 5000) + b"x" * 5000 + b"\xce"
    assert only_close(client.send(oversized)).reply_code == 501
    # A connection.close whose reply text is not UTF-8: not an internal error, just ignored.
    bad_close = b"\x00\x0a\x00\x32\x00\xc8\x02\xe2\x28\x00\x00\x00\x00"
    frame_bytes = codec.FRAME_HEADER_STRUCT.pack(codec.FRAME_METHOD, 0, len(bad_close))
    assert client.send(frame_bytes + bad_close + b"\xce") == []
    assert "unexpected error" not in caplog.text
    assert client.conn.state is State.CLOSING
    client.method(0, spec.Connection.CloseOk())
    assert client.conn.should_close


def test_close_ok_without_our_close_is_an_error() -> None:
    client = Client()
    client.handshake()
    assert only_close(client.method(0, spec.Connection.CloseOk())).reply_code == 504


def test_empty_method_frame_on_a_channel_never_opened() -> None:
    client = Client()
    client.handshake()
    empty = codec.FRAME_HEADER_STRUCT.pack(codec.FRAME_METHOD, 5, 0) + b"\xce"
    assert only_close(client.send(empty)).reply_code == 504


def test_method_frame_too_short_for_its_ids_on_an_open_channel() -> None:
    client = Client()
    client.handshake()
    client.method(1, spec.Channel.Open())
    short = codec.FRAME_HEADER_STRUCT.pack(codec.FRAME_METHOD, 1, 2) + b"\x00\x3c\xce"
    assert only_close(client.send(short)).reply_code == 502


def test_frame_max_applies_before_tune_too() -> None:
    client = Client(frame_max=4096)
    client.send(codec.PROTOCOL_HEADER)
    close = only_close(client.send(codec.FRAME_HEADER_STRUCT.pack(codec.FRAME_METHOD, 0, 5000)))
    assert close.reply_code == 501


def test_a_frame_exactly_at_frame_max_is_fine() -> None:
    client = Client()
    client.handshake(frame_max=4096)
    client.method(1, spec.Channel.Open())
    client.method(1, spec.Queue.Declare(queue="q"))
    publish = frame.marshal(spec.Basic.Publish(routing_key="q"), 1)
    body = b"x" * (4096 - 8)
    data = publish + codec.content_frames(1, codec.encode_properties({}), body, 4096)
    assert client.send(data) == []
    assert client.commit.state.queue("/", "q").ready_count == 1


def test_frame_on_an_unopened_channel_closes_with_504() -> None:
    client = Client()
    client.handshake()
    close = only_close(client.method(3, spec.Basic.Qos(prefetch_count=1)))
    assert close.reply_code == 504
    assert (close.class_id, close.method_id) == (60, 10)
    assert client.conn.state is State.CLOSING


def test_content_frame_on_an_unopened_channel_closes_with_504() -> None:
    client = Client()
    client.handshake()
    close = only_close(client.send(frame.marshal(pbody.ContentBody(b"x"), 2)))
    assert close.reply_code == 504


def test_channel_frame_before_connection_open_closes_with_504() -> None:
    client = Client()
    client.send(codec.PROTOCOL_HEADER)
    close = only_close(client.method(1, spec.Channel.Open()))
    assert close.reply_code == 504


def test_bad_frame_end_closes_with_501() -> None:
    client = Client()
    client.handshake()
    data = bytearray(frame.marshal(spec.Channel.Open(), 1))
    data[-1] = 0
    close = only_close(client.send(bytes(data)))
    assert close.reply_code == 501


def test_heartbeat_on_a_channel_closes_with_501() -> None:
    client = Client()
    client.handshake()
    close = only_close(client.send(b"\x08\x00\x01\x00\x00\x00\x00\xce"))
    assert close.reply_code == 501


def test_wrong_credentials_close_with_403() -> None:
    client = Client()
    client.send(codec.PROTOCOL_HEADER)
    close = only_close(client.method(0, spec.Connection.StartOk(response="\0guest\0nope")))
    assert close.reply_code == 403
    assert "ACCESS_REFUSED" in close.reply_text


def test_frame_max_below_the_minimum_closes_with_530() -> None:
    client = Client()
    client.send(codec.PROTOCOL_HEADER)
    client.method(0, spec.Connection.StartOk(response="\0guest\0guest"))
    close = only_close(client.method(0, spec.Connection.TuneOk(0, 1024, 0)))
    assert close.reply_code == 530


def test_unknown_vhost_closes_with_530() -> None:
    client = Client()
    client.send(codec.PROTOCOL_HEADER)
    client.method(0, spec.Connection.StartOk(response="\0guest\0guest"))
    client.method(0, spec.Connection.TuneOk(0, 0, 0))
    close = only_close(client.method(0, spec.Connection.Open(virtual_host="nope")))
    assert close.reply_code == 530


def test_client_close_is_confirmed() -> None:
    client = Client()
    client.handshake()
    close = spec.Connection.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0)
    ((_, ok),) = client.method(0, close)
    assert isinstance(ok, spec.Connection.CloseOk)
    assert client.conn.should_close
    assert client.conn.state is State.CLOSED


def test_frames_split_across_reads() -> None:
    client = Client()
    client.handshake()
    data = frame.marshal(spec.Channel.Open(), 1)
    out: list[tuple[int, Any]] = []
    for i in range(len(data)):
        out += client.send(data[i : i + 1])
    ((channel, opened),) = out
    assert channel == 1 and isinstance(opened, spec.Channel.OpenOk)
