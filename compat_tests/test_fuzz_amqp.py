"""AMQP 0-9-1 fuzzing: mutated sessions each close only their own connection, with a proper
reply code, while a pika client on the same broker loses nothing (see compat_tests/fuzz.py)."""

from __future__ import annotations

import pytest
from pamqp import commands, header
from pamqp import frame as pframe
from pamqp.body import ContentBody
from pamqp.exceptions import UnmarshalingException

from compat_tests import fuzz
from compat_tests.conftest import BrokerProcess
from compat_tests.rawamqp import PROTOCOL_HEADER

pytestmark = pytest.mark.own_broker

#: reply codes a broker may close a connection or a channel with on bad input
#: (541 INTERNAL_ERROR and 320 CONNECTION_FORCED are not among them)
CONNECTION_CODES = {402, 403, 501, 502, 503, 504, 505, 506, 530, 540}
CHANNEL_CODES = {403, 404, 405, 406, 530, 540}


def _frames(*items: tuple[int, object]) -> list[bytes]:
    return [pframe.marshal(value, channel) for channel, value in items]  # type: ignore[arg-type]


def _handshake() -> list[bytes]:
    return [
        PROTOCOL_HEADER,
        *_frames(
            (
                0,
                commands.Connection.StartOk(
                    client_properties={"capabilities": {"authentication_failure_close": True}},
                    mechanism="PLAIN",
                    response="\0guest\0guest",
                ),
            ),
            (0, commands.Connection.TuneOk(channel_max=64, frame_max=131072, heartbeat=0)),
            (0, commands.Connection.Open(virtual_host="/")),
            (1, commands.Channel.Open()),
        ),
    ]


def _publish(channel: int, exchange: str, key: str, body: bytes) -> list[bytes]:
    props = commands.Basic.Properties(
        content_type="text/plain", delivery_mode=2, headers={"x": 1}, message_id="m1"
    )
    return _frames(
        (channel, commands.Basic.Publish(exchange=exchange, routing_key=key)),
        (channel, header.ContentHeader(0, len(body), props)),
        (channel, ContentBody(body)),
    )


def _close() -> list[bytes]:
    return _frames(
        (1, commands.Channel.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0)),
        (0, commands.Connection.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0)),
    )


def sessions() -> list[list[bytes]]:
    """Valid sessions, as the frames a client sends (the server's replies are not waited for)."""
    q, x = "fuzz-q", "fuzz-x"
    consume = [
        *_handshake(),
        *_frames(
            (1, commands.Queue.Declare(queue=q, auto_delete=True, arguments={"x-max-length": 50})),
            (1, commands.Exchange.Declare(exchange=x, exchange_type="topic", auto_delete=True)),
            (1, commands.Queue.Bind(queue=q, exchange=x, routing_key="a.#")),
            (1, commands.Basic.Qos(prefetch_count=10)),
            (1, commands.Basic.Consume(queue=q, consumer_tag="ct")),
        ),
        *_publish(1, x, "a.b", b"hello fuzz"),
        *_frames(
            (1, commands.Basic.Ack(delivery_tag=1)),
            (1, commands.Basic.Cancel(consumer_tag="ct")),
        ),
        *_close(),
    ]
    confirm = [
        *_handshake(),
        *_frames(
            (1, commands.Confirm.Select()),
            (1, commands.Queue.Declare(queue="", exclusive=True)),
        ),
        *_publish(1, "", "fuzz-q", b"x" * 300),
        *_frames(
            (1, commands.Basic.Get(queue="fuzz-q")),
            (1, commands.Basic.Nack(delivery_tag=1, requeue=False)),
            (1, commands.Queue.Purge(queue="fuzz-q")),
        ),
        *_close(),
    ]
    tx = [
        *_handshake(),
        *_frames((1, commands.Tx.Select()), (2, commands.Channel.Open())),
        *_publish(1, "amq.direct", "k", b""),
        *_frames(
            (1, commands.Tx.Commit()),
            (2, commands.Basic.Recover(requeue=True)),
            (2, commands.Exchange.Bind(destination="fuzz-x", source="amq.topic")),
            (
                0,
                commands.Connection.Close(
                    reply_code=200, reply_text="bye", class_id=0, method_id=0
                ),
            ),
        ),
    ]
    manage = [
        *_handshake(),
        *_frames(
            (1, commands.Exchange.Declare(exchange="fuzz-h", exchange_type="headers")),
            (1, commands.Queue.Declare(queue="fuzz-m", arguments={"x-message-ttl": 100})),
            (1, commands.Queue.Bind(queue="fuzz-m", exchange="fuzz-h", arguments={"a": 1})),
            (1, commands.Basic.Consume(queue="fuzz-m", no_ack=True, exclusive=True)),
        ),
        *_publish(1, "fuzz-h", "", b"y" * 5000),
        *_frames(
            (1, commands.Basic.Reject(delivery_tag=1, requeue=True)),
            (1, commands.Basic.Recover(requeue=False)),
            (1, commands.Channel.Flow(active=True)),
            (1, commands.Queue.Unbind(queue="fuzz-m", exchange="fuzz-h", arguments={"a": 1})),
            (1, commands.Exchange.Delete(exchange="fuzz-h")),
            (1, commands.Queue.Delete(queue="fuzz-m", if_empty=True)),
            (1, commands.Tx.Select()),
            (1, commands.Tx.Rollback()),
        ),
        *_close(),
    ]
    return [consume, confirm, tx, manage]


def _parse(data: bytes) -> list[tuple[int, object]]:
    out = []
    pos = 0
    while pos < len(data):
        try:
            used, channel, value = pframe.unmarshal(data[pos:])
        except UnmarshalingException as exc:
            unreadable = data[pos:][:60]
            raise AssertionError(f"broker sent a frame pamqp cannot read: {unreadable!r}") from exc
        out.append((channel, value))
        pos += used
    return out


def judge(broker: BrokerProcess, case: fuzz.Case) -> str:
    bad_header = case.data[:8] != PROTOCOL_HEADER[: len(case.data[:8])]
    got = fuzz.exchange(broker.host, broker.port, case.data, expect_close=bad_header)
    if bad_header:
        assert got.received == PROTOCOL_HEADER, f"bad header answered with {got.received[:60]!r}"
        assert got.closed_first, "connection left open after a bad protocol header"
        return "bad-header"
    if len(case.data) < 8:
        assert got.received == b"", got.received
        return "short-header"
    frames = _parse(got.received)
    closes = [f for _, f in frames if isinstance(f, commands.Connection.Close)]
    for ch, f in frames:
        if isinstance(f, commands.Channel.Close):
            assert f.reply_code in CHANNEL_CODES | CONNECTION_CODES, (ch, f)
    if closes:
        assert len(closes) == 1, closes
        code = closes[0].reply_code
        assert code in CONNECTION_CODES, closes[0]
        return f"close-{code}"
    if any(isinstance(f, commands.Connection.CloseOk) for _, f in frames):
        return "clean"
    # Past authentication (connection.tune sent), errors close with connection.close; before
    # it, a failed login may just close the socket (AMQP 0-9-1 section 4.10.2).
    tuned = any(isinstance(f, commands.Connection.Tune) for _, f in frames)
    if got.closed_first and tuned:
        raise AssertionError("broker closed the connection without connection.close")
    return "dropped-by-broker" if got.closed_first else "left-open"


def _run(tmp_path_factory: pytest.TempPathFactory, count: int) -> None:
    with fuzz.fuzzed_broker(tmp_path_factory.mktemp("fuzz-amqp")) as broker:
        fuzz.fuzz_alongside_client(broker, sessions(), lambda case: judge(broker, case), count)


@pytest.mark.timeout(fuzz.time_limit(fuzz.case_count(1500)))
def test_fuzz_amqp(tmp_path_factory):
    _run(tmp_path_factory, fuzz.case_count(1500))


@pytest.mark.slow
@pytest.mark.timeout(fuzz.time_limit(fuzz.case_count(1500, slow=True)))
def test_fuzz_amqp_long(tmp_path_factory):
    _run(tmp_path_factory, fuzz.case_count(1500, slow=True))
