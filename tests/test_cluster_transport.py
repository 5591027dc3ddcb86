"""The links between cluster nodes: first the sans-IO handshake and frames with no network, then
PeerLinks over real loopback sockets, on asyncio's loop and on uvloop (which the node runs).

Socket tests bind port 0, and wait on conditions with deadlines (`until`), never on sleeps.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
import struct
import subprocess
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import uvloop
from hypothesis import given
from hypothesis import strategies as st

from broker.replication.framing import (
    HANDSHAKE_MAX_FRAME,
    DialerLink,
    FrameDecoder,
    FrameTooLarge,
    LinkError,
    ListenerLink,
    Refused,
)
from broker.replication.transport import UNAUTHENTICATED, PeerLinks
from broker.store.encoding import pack

SECRET = b"correct horse battery staple"
LOCAL = "127.0.0.1"
LOG = "broker.replication"


def frame(message: Any) -> bytes:
    payload = pack(message)
    return struct.pack(">I", len(payload)) + payload


# -- sans-IO: the handshake ----------------------------------------------------------------


def links(
    dialer_secret: bytes | None = SECRET,
    listener_secret: bytes | None = SECRET,
    reach: int = 2,
    known: tuple[int, ...] = (1,),
) -> tuple[DialerLink, ListenerLink]:
    """Node 1 dialing node `reach`, and node 2 listening for the nodes in `known`."""
    dialer = DialerLink(1, reach, dialer_secret, 1 << 16)
    return dialer, ListenerLink(2, lambda node: node in known, listener_secret, 1 << 16)


def feed(link: DialerLink | ListenerLink, data: bytes) -> list[Any]:
    """What a link makes of `data`: the messages it completes."""
    link.receive_data(data)
    return list(link.messages())


def shake(dialer: DialerLink, listener: ListenerLink) -> None:
    """Carry the handshake's bytes both ways until neither end has more to say."""
    while True:
        out = dialer.data_to_send()
        if out:
            feed(listener, out)
        back = listener.data_to_send()
        if back:
            feed(dialer, back)
        if not out and not back:
            return


@pytest.mark.parametrize("secret", [SECRET, None])
def test_handshake_then_messages_in_order(secret: bytes | None) -> None:
    dialer, listener = links(secret, secret)
    shake(dialer, listener)
    assert dialer.is_open and listener.is_open
    assert (dialer.peer, listener.peer) == (2, 1)
    sent = [("append", i, {"entries": [b"x" * i]}) for i in range(50)] + [None, 0, ""]
    for message in sent:
        dialer.send(message)
    data = dialer.data_to_send()
    received = []
    for i in range(len(data)):  # byte by byte: frames split anywhere
        received += feed(listener, data[i : i + 1])
    assert received == [list(m) if isinstance(m, tuple) else m for m in sent]


def test_wrong_secret_refused_by_both_ends() -> None:
    dialer, listener = links(SECRET, b"another secret")
    with pytest.raises(Refused, match="node 2 failed to prove the cluster secret"):
        shake(dialer, listener)
    # the dialer's refusal reaches the listener, which says so too
    with pytest.raises(Refused, match="node 1 refused the link: node 2 failed to prove"):
        feed(listener, dialer.data_to_send())
    assert not dialer.is_open and not listener.is_open


@pytest.mark.parametrize(
    ("dialer_secret", "listener_secret", "reason"),
    [
        (SECRET, None, "node 1 uses a cluster secret, this node has none"),
        (None, SECRET, "node 1 has no cluster secret, this node has one"),
    ],
)
def test_secret_against_no_secret_refused(
    dialer_secret: bytes | None, listener_secret: bytes | None, reason: str
) -> None:
    dialer, listener = links(dialer_secret, listener_secret)
    with pytest.raises(Refused, match=reason):
        shake(dialer, listener)
    with pytest.raises(Refused, match=f"node 2 refused the link: {reason}"):
        feed(dialer, listener.data_to_send())


def test_unknown_or_misdirected_dialer_refused() -> None:
    with pytest.raises(Refused, match="node 1 is not a member of this node's cluster"):
        shake(*links(known=(3,)))
    with pytest.raises(Refused, match="this is node 2, not node 3"):
        shake(*links(reach=3))


def test_a_reflected_proof_fails() -> None:
    """A stranger hands the listener's own answer back to it as the dialer's."""
    listener = ListenerLink(2, lambda node: True, SECRET, 1 << 16)
    feed(listener, frame(["hello", 1, 1, 2, b"n" * 32]))
    reply = FrameDecoder(1 << 16)
    reply.feed(listener.data_to_send())
    [[_, _, listener_proof]] = list(reply.messages())  # the welcome
    with pytest.raises(Refused, match="node 1 failed to prove the cluster secret"):
        feed(listener, frame(["proof", listener_proof]))


def test_a_replayed_handshake_fails() -> None:
    """A dialer's bytes recorded from one connection do not open another."""
    dialer, first = links()
    hello = dialer.data_to_send()
    feed(first, hello)
    feed(dialer, first.data_to_send())
    proof = dialer.data_to_send()
    feed(first, proof)
    assert first.is_open
    _, second = links()
    feed(second, hello)
    with pytest.raises(Refused, match="failed to prove the cluster secret"):
        feed(second, proof)


def test_a_dialer_reaching_itself_fails() -> None:
    """A connection to its own port (TCP self-connect) hands the dialer its own hello."""
    dialer = DialerLink(1, 2, SECRET, 1 << 16)
    with pytest.raises(LinkError, match="expected a welcome from node 2"):
        feed(dialer, dialer.data_to_send())


# -- sans-IO: frames -----------------------------------------------------------------------


def test_frame_limits() -> None:
    dialer, listener = links()
    with pytest.raises(FrameTooLarge):  # before the handshake, frames are small
        feed(listener, struct.pack(">I", HANDSHAKE_MAX_FRAME + 1))
    dialer, listener = links()
    shake(dialer, listener)
    dialer.send(b"x" * ((1 << 16) - 5))  # 5 bytes of msgpack header: exactly max_frame
    assert feed(listener, dialer.data_to_send()) == [b"x" * ((1 << 16) - 5)]
    with pytest.raises(FrameTooLarge):  # a caller's bug: raised, nothing queued
        dialer.send(b"x" * (1 << 16))
    assert dialer.buffered == 0
    with pytest.raises(FrameTooLarge):
        feed(listener, struct.pack(">I", (1 << 16) + 1))


def test_the_listener_sends_no_messages() -> None:
    dialer, listener = links()
    shake(dialer, listener)
    with pytest.raises(LinkError, match="one-way"):
        feed(dialer, frame("hi"))


_garbage = st.one_of(
    st.binary(max_size=300),
    st.lists(st.binary(max_size=40), max_size=8).map(
        lambda payloads: b"".join(struct.pack(">I", len(p)) + p for p in payloads)
    ),
)


@given(data=_garbage, opened=st.booleans())
def test_garbage_gives_messages_or_a_link_error(data: bytes, opened: bool) -> None:
    dialer, listener = links()
    if opened:
        shake(dialer, listener)
    for link in (listener, dialer):
        try:
            assert isinstance(feed(link, data), list)
        except LinkError:
            pass


# -- over sockets ----------------------------------------------------------------------------

_LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}
Run = Callable[[Coroutine[Any, Any, None]], None]


@pytest.fixture(params=list(_LOOPS))
def run(request: pytest.FixtureRequest) -> Run:
    """Run a test's coroutine to the end in a fresh loop, within 15 s."""

    def run(scenario: Coroutine[Any, Any, None]) -> None:
        with asyncio.Runner(loop_factory=_LOOPS[request.param]) as runner:
            runner.run(asyncio.wait_for(scenario, 15))

    return run


async def until(condition: Callable[[], bool], timeout: float = 3.0) -> float:
    """Wait for `condition` to hold, and say how long that took; fail past `timeout`."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not condition():
        if loop.time() - start > timeout:
            raise AssertionError(f"still not true after {timeout} s")
        await asyncio.sleep(0.005)
    return loop.time() - start


class Node:
    """A PeerLinks that records what it receives, and its links going up and down."""

    def __init__(self, node_id: int, port: int = 0, **options: Any) -> None:
        self.id = node_id
        self.received: list[tuple[int, Any]] = []
        self.events: list[tuple[int, bool]] = []
        self.links = PeerLinks(
            node_id,
            (LOCAL, port),
            {},
            lambda sender, message: self.received.append((sender, message)),
            on_peer=lambda peer, up: self.events.append((peer, up)),
            **options,
        )

    @property
    def address(self) -> tuple[str, int]:
        return (LOCAL, self.links.port)

    def sent_by(self, sender: int) -> list[Any]:
        return [message for s, message in self.received if s == sender]

    def linked(self, *others: Node) -> bool:
        """Links to and from each of `others` through the handshake."""
        return all(self.links.connected(o.id) and o.links.connected(self.id) for o in others)


async def started(*nodes: Node) -> None:
    """Start the nodes, then give each the others' addresses."""
    for node in nodes:
        await node.links.start()
    for node in nodes:
        node.links.set_peers({o.id: o.address for o in nodes if o is not node})


async def close(*nodes: Node) -> None:
    for node in nodes:
        await node.links.close()


async def refused_us(reader: asyncio.StreamReader) -> bytes:
    """Read until the node closes the connection; what it said meanwhile."""
    said = b""
    try:
        while data := await reader.read(65536):
            said += data
    except ConnectionResetError:
        pass
    return said


async def dial_as(node_id: int, target: Node) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A hand-made dialer (no secret) through the handshake with `target`, as `node_id`."""
    reader, writer = await asyncio.open_connection(*target.address)
    link = DialerLink(node_id, target.id, None, 1 << 20)
    writer.write(link.data_to_send())
    while not link.is_open:
        data = await reader.read(4096)
        assert data, "closed during the handshake"
        feed(link, data)
        writer.write(link.data_to_send())
    return reader, writer


def test_messages_both_ways_between_three_nodes(run: Run) -> None:
    async def scenario() -> None:
        nodes = [Node(i, secret=SECRET) for i in (1, 2, 3)]
        one, two, three = nodes
        assert not one.links.send(2, "too early")
        await started(*nodes)
        await until(lambda: one.linked(two, three) and two.linked(three))
        for node in nodes:  # on_peer said so, once per peer
            assert sorted(node.events) == [(o.id, True) for o in nodes if o is not node]
        for turn in range(10):  # several loop turns, several messages in each
            for node in nodes:
                for other in nodes:
                    if other is not node:
                        for i in range(20):
                            assert node.links.send(other.id, (node.id, turn * 20 + i, b"."))
            await asyncio.sleep(0)
        await until(lambda: all(len(node.received) == 400 for node in nodes))
        for node in nodes:
            for other in nodes:
                if other is not node:
                    assert node.sent_by(other.id) == [[other.id, i, b"."] for i in range(200)]
        assert not one.links.send(4, "a stranger")
        await close(*nodes)

    run(scenario())


def test_a_restarted_peer_relinks_by_itself(run: Run) -> None:
    async def scenario() -> None:
        one, two = Node(1, secret=SECRET), Node(2, secret=SECRET)
        await started(one, two)
        await until(lambda: one.linked(two))
        port = two.links.port
        await two.links.close()
        await until(lambda: not one.links.connected(2))
        assert one.events == [(2, True), (2, False)]
        two = Node(2, port, secret=SECRET)
        two.links.set_peers({1: one.address})
        await start_on_its_port(two)
        took = await until(lambda: one.linked(two))
        assert took < 1.5, f"relinked after {took:.2f} s"
        assert one.links.send(2, "again") and two.links.send(1, "again")
        await until(lambda: one.sent_by(2) == ["again"] and two.sent_by(1) == ["again"])
        await close(one, two)

    run(scenario())


async def start_on_its_port(node: Node) -> None:
    """Start a node on the port it had: a kernel can briefly hold that port (an outgoing
    connection given it as its own, since bind(0) ports are ephemeral ones), so retry a
    little."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 1
    while True:
        try:
            await node.links.start()
            return
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or loop.time() > deadline:
                raise
            await asyncio.sleep(0.01)


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records]


def logged(caplog: pytest.LogCaptureFixture, *parts: str) -> Callable[[], bool]:
    """Whether some log line holds all of `parts`."""
    return lambda: any(all(p in line for p in parts) for line in messages(caplog))


def test_wrong_secret_refused_on_both_sides(run: Run, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, LOG)

    async def scenario() -> None:
        one, two = Node(1, secret=SECRET), Node(2, secret=b"another secret")
        await started(one, two)
        for dialer, listener in ((1, 2), (2, 1)):
            reason = f"node {listener} failed to prove the cluster secret"
            await until(logged(caplog, f"no link to node {listener}", reason))
            await until(logged(caplog, "refused a link", f"node {dialer} refused", reason))
        assert not one.links.connected(2) and not two.links.connected(1)
        assert one.events == two.events == []
        await close(one, two)

    run(scenario())


def test_a_node_with_a_secret_and_one_without_refuse_each_other(
    run: Run, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, LOG)

    async def scenario() -> None:
        one, two = Node(1, secret=SECRET), Node(2)
        await started(one, two)
        await until(logged(caplog, "refused a link", "node 1 uses a cluster secret"))
        await until(logged(caplog, "no link to node 2", "node 1 uses a cluster secret"))
        await until(logged(caplog, "refused a link", "node 2 has no cluster secret"))
        await until(logged(caplog, "no link to node 1", "node 2 has no cluster secret"))
        assert not one.links.connected(2) and not two.links.connected(1)
        assert messages(caplog).count(UNAUTHENTICATED) == 1  # node 2's, once
        await close(one, two)

    run(scenario())


def test_unknown_or_misdirected_node_refused(run: Run, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, LOG)

    async def scenario() -> None:
        one, two = Node(1), Node(2)
        await one.links.start()
        await two.links.start()
        one.links.set_peers({2: two.address})  # two does not know one
        await until(logged(caplog, "no link to node 2", "node 1 is not a member"))
        three = Node(3)
        three.links.set_peers({5: two.address})  # three takes two for node 5
        await three.links.start()
        await until(logged(caplog, "refused a link", "this is node 2, not node 5"))
        await until(logged(caplog, "no link to node 5", "this is node 2, not node 5"))
        assert not one.links.connected(2) and not three.links.connected(5)
        await close(one, two, three)

    run(scenario())


def test_bad_input_closes_only_that_connection(run: Run, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, LOG)

    async def scenario() -> None:
        one, two = Node(1, max_frame=1 << 20), Node(2, max_frame=1 << 20)
        await started(one, two)
        # node 3 exists for node 2 (it will be hand-made below); dialing it is refused
        with socket.socket() as nowhere:
            nowhere.bind((LOCAL, 0))
            two.links.set_peers({1: one.address, 3: nowhere.getsockname()})
            await until(lambda: one.linked(two))

            # before the handshake: garbage, then a frame too long for a handshake
            for data in (b"\x00\x00\x00\x03\xc1\xc1\xc1", struct.pack(">I", 1 << 16)):
                reader, writer = await asyncio.open_connection(*two.address)
                writer.write(data)
                await refused_us(reader)
                writer.close()
            # after the handshake: a message, then garbage; then a frame over max_frame
            for data in (frame("hi") + b"\x00\x00\x00\x01\xc1", struct.pack(">I", 1 << 21)):
                reader, writer = await dial_as(3, two)
                writer.write(data)
                await refused_us(reader)
                writer.close()
            assert two.sent_by(3) == ["hi"]
            assert logged(caplog, "closing the link from node 3", "malformed frame")()
            assert logged(caplog, "closing the link from node 3", "a frame of 2097152 bytes")()

            assert one.links.send(2, "still here") and two.links.send(1, "still here")
            await until(lambda: one.sent_by(2) == two.sent_by(1) == ["still here"])
            assert one.events == [(2, True)] and (1, False) not in two.events
        await close(one, two)

    run(scenario())


def test_a_silent_connection_is_dropped(run: Run) -> None:
    async def scenario() -> None:
        node = Node(1, handshake_timeout=0.2)
        await node.links.start()
        reader, writer = await asyncio.open_connection(*node.address)
        assert await asyncio.wait_for(refused_us(reader), 2) == b""
        writer.close()
        await node.links.close()

    run(scenario())


def test_membership_changes(run: Run) -> None:
    async def scenario() -> None:
        nodes = [Node(i) for i in (1, 2, 3)]
        one, two, three = nodes
        await started(*nodes)
        await until(lambda: one.linked(two, three))
        one.links.set_peers({2: two.address})  # 3 leaves
        assert one.events[-1] == (3, False) and not one.links.connected(3)
        await until(lambda: not three.links.connected(1))  # and 1 will not take it back
        assert not one.links.send(3, "gone")
        one.links.set_peers({2: two.address, 3: three.address})
        await until(lambda: one.linked(two, three))
        assert one.links.send(3, "back")
        await until(lambda: three.sent_by(1) == ["back"])
        await close(*nodes)

    run(scenario())


def test_tls(run: Run, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, LOG)
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
        + ["-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1"]
        + ["-subj", "/CN=node", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=cert)
    server.verify_mode = ssl.CERT_REQUIRED  # the caller's choice: nodes must show the cert
    client = ssl.create_default_context(cafile=cert)
    for context in (server, client):
        context.load_cert_chain(cert, key)
    with pytest.raises(ValueError, match="both"):
        PeerLinks(1, (LOCAL, 0), {}, print, ssl_server=server)

    async def scenario() -> None:
        tls: dict[str, Any] = {"ssl_server": server, "ssl_client": client, "secret": SECRET}
        one, two = Node(1, **tls), Node(2, **tls)
        await started(one, two)
        await until(lambda: one.linked(two))
        for i in range(100):
            assert one.links.send(2, i) and two.links.send(1, i)
        await until(lambda: one.sent_by(2) == two.sent_by(1) == list(range(100)))
        plain = Node(3, secret=SECRET)  # no TLS: the TLS listener cannot make sense of it
        plain.links.set_peers({2: two.address})
        await plain.links.start()
        await until(logged(caplog, "no link to node 2"))
        assert not plain.links.connected(2)
        await close(one, two, plain)

    run(scenario())


def test_a_slow_peer_costs_bounded_memory(run: Run) -> None:
    async def scenario() -> None:
        reading = asyncio.Event()
        done = asyncio.Event()

        async def stalled_peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            """Node 2 in name: through the handshake, then not reading until told to."""
            link = ListenerLink(2, lambda node: True, None, 1 << 20)
            while not link.is_open:
                data = await reader.read(4096)
                assert data
                feed(link, data)
                writer.write(link.data_to_send())
            await reading.wait()
            while await reader.read(1 << 20):
                pass
            await done.wait()
            writer.close()

        listening = socket.socket()
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # small kernel buffers
        listening.bind((LOCAL, 0))
        stalled = await asyncio.start_server(stalled_peer, sock=listening)
        limit, size = 256 << 10, 16 << 10
        one = Node(1, max_buffered=limit)
        one.links.set_peers({2: listening.getsockname()})
        await one.links.start()
        await until(lambda: one.links.connected(2))
        conn = one.links._out[2]
        assert conn.transport is not None
        for i in range(10_000):  # far more than the kernel buffers hold
            if not one.links.send(2, b"x" * size):
                break
            if i % 8 == 7:
                await asyncio.sleep(0)  # let writes go out
        else:
            raise AssertionError("send() never refused")
        unsent = conn.link.buffered + conn.transport.get_write_buffer_size()
        assert limit <= unsent <= limit + size + 16
        assert not one.links.send(2, b"x") and one.links.connected(2)
        reading.set()  # the peer reads again: room comes back
        await until(lambda: one.links.send(2, b"x"))
        done.set()
        await one.links.close()
        stalled.close()
        await stalled.wait_closed()

    run(scenario())


class CountingWrites:
    """A transport that counts its writes (uvloop's cannot be patched: wrap it)."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


def test_one_write_per_loop_turn_without_delay(run: Run) -> None:
    async def scenario() -> None:
        one, two = Node(1), Node(2)
        await started(one, two)
        await until(lambda: one.linked(two))
        conn = one.links._out[2]
        sock = conn.transport.get_extra_info("socket")  # type: ignore[union-attr]
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        counting = conn.transport = CountingWrites(conn.transport)  # type: ignore[assignment,arg-type]
        for turn in range(3):
            for i in range(100):
                assert one.links.send(2, (turn, i))
            await asyncio.sleep(0)
        await until(lambda: len(two.received) == 300)
        assert counting.writes == 3
        await close(one, two)

    run(scenario())


def test_a_failing_message_handler_closes_that_connection(run: Run) -> None:
    async def scenario() -> None:
        one, two = Node(1), Node(2)
        received = two.links.on_message

        def on_message(sender: int, message: Any) -> None:
            if message == "boom":
                raise RuntimeError("a bug in the node")
            received(sender, message)

        two.links.on_message = on_message
        await started(one, two)
        await until(lambda: one.linked(two))
        assert one.links.send(2, "boom")
        await until(lambda: (2, False) in one.events)
        await until(lambda: one.linked(two))  # dialed again
        assert one.links.send(2, "fine")
        await until(lambda: two.sent_by(1) == ["fine"])
        await close(one, two)

    run(scenario())
