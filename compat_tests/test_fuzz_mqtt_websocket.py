"""MQTT over WebSocket fuzzing: the MQTT sessions of test_fuzz_mqtt behind a WebSocket upgrade,
one packet per masked frame; the handshake is refused with a 4xx, a bad frame with a close
frame of a protocol-error code, and the MQTT inside is judged as on plain TCP."""

from __future__ import annotations

import base64
import random
import struct

import pytest

from compat_tests import fuzz
from compat_tests.conftest import BrokerProcess
from compat_tests.test_fuzz_mqtt import check_replies
from compat_tests.test_fuzz_mqtt import sessions as mqtt_sessions

pytestmark = pytest.mark.own_broker

#: close codes for bad input (RFC 6455 section 7.4.1); 1011 (internal error) is not one
CLOSE_CODES = {1000, 1002, 1003, 1007, 1009}


def _upgrade(port: int, rng: random.Random) -> bytes:
    key = base64.b64encode(rng.randbytes(16)).decode()
    return (
        f"GET /mqtt HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Protocol: mqtt\r\n\r\n"
    ).encode()


def ws_frame(rng: random.Random, payload: bytes, opcode: int = 2, final: bool = True) -> bytes:
    """A client frame: masked, as RFC 6455 requires of clients."""
    n = len(payload)
    first = (0x80 if final else 0) | opcode
    if n < 126:
        head = bytes((first, 0x80 | n))
    elif n < 0x10000:
        head = bytes((first, 0x80 | 126)) + struct.pack(">H", n)
    else:
        head = bytes((first, 0x80 | 127)) + struct.pack(">Q", n)
    mask = rng.randbytes(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def sessions(port: int) -> list[list[bytes]]:
    rng = random.Random(fuzz.SEED)  # keys and masks too come from the seed
    recorded = [[_upgrade(port, rng), *(ws_frame(rng, p) for p in s)] for s in mqtt_sessions()]
    first, *rest = mqtt_sessions()[0]
    # one packet split over a fragmented message, and a ping between packets
    split = [
        _upgrade(port, rng),
        ws_frame(rng, first[:3], final=False),
        ws_frame(rng, first[3:], opcode=0),
        ws_frame(rng, b"are you there", opcode=9),
        *(ws_frame(rng, p) for p in rest),
    ]
    return [*recorded, split]


def _server_frames(data: bytes) -> list[tuple[int, bytes]]:
    out = []
    pos = 0
    while pos < len(data):
        assert pos + 2 <= len(data), f"cut frame {data[pos:]!r}"
        first, second = data[pos], data[pos + 1]
        assert not second & 0x80, "server frames are never masked"
        size, pos = second & 0x7F, pos + 2
        if size == 126:
            (size,), pos = struct.unpack(">H", data[pos : pos + 2]), pos + 2
        elif size == 127:
            (size,), pos = struct.unpack(">Q", data[pos : pos + 8]), pos + 8
        assert pos + size <= len(data), f"cut frame {data[pos - 2 :][:40]!r}"
        out.append((first & 0x0F, data[pos : pos + size]))
        pos += size
    return out


def judge(broker: BrokerProcess, case: fuzz.Case) -> str:
    got = fuzz.exchange(broker.host, broker.mqtt_ws_port, case.data)
    head, sep, rest = got.received.partition(b"\r\n\r\n")
    if not got.received:
        return "closed" if got.closed_first else "left-open"
    assert sep, f"cut handshake reply {got.received!r}"
    status = head.split(b" ")[1]
    if status != b"101":
        assert status.startswith(b"4") and not rest, f"handshake reply {got.received[:200]!r}"
        assert got.closed_first, "a refused handshake left the connection open"
        return f"http-{status.decode()}"
    mqtt = b""
    outcome = ""
    for opcode, payload in _server_frames(rest):
        assert opcode in (2, 8, 10), f"server sent opcode {opcode}"
        if opcode == 2:
            mqtt += payload
        elif opcode == 8:
            (code,) = struct.unpack(">H", payload[:2])
            assert code in CLOSE_CODES, f"close code {code}: {payload!r}"
            outcome = f"ws-close-{code}"
    mqtt_outcome = check_replies(mqtt, got.closed_first)
    return outcome or mqtt_outcome


def _run(tmp_path_factory: pytest.TempPathFactory, count: int) -> None:
    with fuzz.fuzzed_broker(tmp_path_factory.mktemp("fuzz-ws")) as broker:
        recorded = sessions(broker.mqtt_ws_port)
        fuzz.fuzz_alongside_client(broker, recorded, lambda case: judge(broker, case), count)


@pytest.mark.timeout(fuzz.time_limit(fuzz.case_count(800)))
def test_fuzz_mqtt_websocket(tmp_path_factory):
    _run(tmp_path_factory, fuzz.case_count(800))


@pytest.mark.slow
@pytest.mark.timeout(fuzz.time_limit(fuzz.case_count(800, slow=True)))
def test_fuzz_mqtt_websocket_long(tmp_path_factory):
    _run(tmp_path_factory, fuzz.case_count(800, slow=True))
