"""The TCP proxy that the cluster fault tests cut links with: forwarding, cut, heal, clean close,
and PeerLinks noticing a cut at once and relinking soon after the heal.

Targets are plain listening sockets driven by hand from the test; every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Iterator

import pytest

from broker.replication.transport import PeerLinks
from compat_tests.netproxy import LinkProxy, ProxyMesh
from tests.test_cluster_transport import until

LOCAL = "127.0.0.1"


@pytest.fixture
def target() -> Iterator[socket.socket]:
    with socket.create_server((LOCAL, 0)) as server:
        server.settimeout(2)
        yield server


def forwarded(address: tuple[str, int], target: socket.socket) -> socket.socket:
    """Connect through a proxy and check bytes pass both ways; the client's socket."""
    client = socket.create_connection(address, timeout=2)
    client.sendall(b"ping")
    far, _ = target.accept()
    with far:
        far.settimeout(2)
        assert far.recv(4) == b"ping"
        far.sendall(b"pong")
        assert client.recv(4) == b"pong"
        return client


def assert_reset(address: tuple[str, int], target: socket.socket) -> None:
    """A new connection through a cut proxy is reset, and never reaches the target."""
    assert_reset_on_connect(address)
    target.setblocking(False)  # a cut proxy never dials: nothing can be on its way
    try:
        with pytest.raises(BlockingIOError):
            target.accept()
    finally:
        target.settimeout(2)


def assert_reset_on_connect(address: tuple[str, int]) -> None:
    """The proxy accepts, then resets: seen by connect() or by the first recv()."""
    with pytest.raises(ConnectionResetError), socket.create_connection(address, 2) as client:
        client.recv(1)


def proxy_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "netproxy"]


def open_sockets() -> set[str]:
    """This process's sockets, by inode (fd numbers are reused, inodes are not)."""
    links = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            links.add(os.readlink(f"/proc/self/fd/{fd}"))
        except FileNotFoundError:  # the fd listdir itself used
            pass
    return {link for link in links if link.startswith("socket:")}


def test_forwards_both_ways_and_leaves_nothing_behind(target: socket.socket) -> None:
    before = open_sockets()
    proxy = LinkProxy(target.getsockname())
    assert proxy_threads()
    big = os.urandom(4 << 20)  # more than socket buffers hold: flow control on the way
    with socket.create_connection((LOCAL, proxy.port), timeout=2) as client:
        far, _ = target.accept()
        with far:
            far.settimeout(2)
            sender = threading.Thread(target=client.sendall, args=(big,))
            sender.start()
            received = bytearray()
            while len(received) < len(big):
                received += far.recv(1 << 16)
            sender.join(2)
            assert received == big
            far.sendall(b"back")
            assert client.recv(4) == b"back"
            proxy.close()
            with pytest.raises(ConnectionResetError):
                client.recv(1)
    assert not proxy_threads()
    assert open_sockets() <= before
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((LOCAL, proxy.port), timeout=2)


def test_cut_and_heal(target: socket.socket) -> None:
    proxy = LinkProxy(target.getsockname())
    address = (LOCAL, proxy.port)
    try:
        forwarded(address, target).close()
        client = socket.create_connection(address, timeout=2)
        far, _ = target.accept()
        proxy.cut()
        for end in (client, far):  # both ends: reset
            with end, pytest.raises(ConnectionResetError):
                end.recv(1)
        assert_reset(address, target)
        assert_reset(address, target)
        proxy.heal()
        forwarded(address, target).close()
    finally:
        proxy.close()


def test_a_proxy_to_a_dead_target_refuses_like_it() -> None:
    with socket.socket() as nowhere:
        nowhere.bind((LOCAL, 0))  # bound, not listening: connections refused
        proxy = LinkProxy(nowhere.getsockname())
        try:
            assert_reset_on_connect((LOCAL, proxy.port))
        finally:
            proxy.close()


def test_mesh() -> None:
    targets = {i: socket.create_server((LOCAL, 0)) for i in (1, 2, 3)}
    for server in targets.values():
        server.settimeout(2)
    mesh = ProxyMesh({i: server.getsockname()[1] for i, server in targets.items()})
    try:
        books = {i: mesh.address_book(i) for i in targets}
        assert sorted(books[1]) == [2, 3] and sorted(books[2]) == [1, 3]
        ports = {port for book in books.values() for _, port in book.values()}
        assert len(ports) == 6 and mesh[1, 2].port == books[1][2][1]
        for book in books.values():
            for j, address in book.items():
                forwarded(address, targets[j]).close()

        mesh.isolate(2)
        for i, j in ((1, 2), (2, 1), (3, 2), (2, 3)):
            assert_reset(books[i][j], targets[j])
        for i, j in ((1, 3), (3, 1)):
            forwarded(books[i][j], targets[j]).close()

        mesh.heal_all()
        for book in books.values():
            for j, address in book.items():
                forwarded(address, targets[j]).close()
    finally:
        mesh.close()
        for server in targets.values():
            server.close()
    assert not proxy_threads()


def test_peer_links_notice_a_cut_and_relink_after_the_heal() -> None:
    async def scenario() -> None:
        nodes = {i: PeerLinks(i, (LOCAL, 0), {}, lambda sender, message: None) for i in (1, 2, 3)}
        for node in nodes.values():
            await node.start()
        mesh = ProxyMesh({i: node.port for i, node in nodes.items()})

        def linked(i: int, j: int) -> bool:
            return nodes[i].connected(j) and nodes[j].connected(i)

        try:
            for i, node in nodes.items():
                node.set_peers(mesh.address_book(i))
            await until(lambda: linked(1, 2) and linked(1, 3) and linked(2, 3))
            await asyncio.to_thread(mesh.isolate, 2)
            took = await until(lambda: not linked(1, 2) and not linked(2, 3))
            assert took < 0.5 and linked(1, 3)
            assert not nodes[1].send(2, "lost") and nodes[1].send(3, "through")
            await asyncio.to_thread(mesh.heal_all)
            took = await until(lambda: linked(1, 2) and linked(2, 3))
            assert took < 1.5, f"relinked after {took:.2f} s"
        finally:
            for node in nodes.values():
                await node.close()
            await asyncio.to_thread(mesh.close)

    asyncio.run(asyncio.wait_for(scenario(), 15))
