"""TCP proxies between the nodes of a cluster on one machine, to cut and heal their links.

Node i reaches peer j at the port of the proxy (i, j), which forwards to j's real cluster port;
`ProxyMesh.address_book(i)` is what node i is given as its peers. The proxies run on an event
loop of their own, in a background thread, so that synchronous tests can drive them while
they drive real broker processes.

A cut resets every connection through the proxy at both ends (TCP RST: no FIN, nothing
flushed) and resets every new one as soon as it is accepted, without dialing the target. Both
nodes see the link fail at once and keep failing on each redial, as behind a partition that
rejects packets. A silent blackhole would look more like a pulled cable, but then a node only
notices through its own timeouts (and TCP's, minutes long), its writes pile up in buffers,
and a healed link would resume stale connections rather than redial; SIGSTOP already gives
the tests that silent kind of failure.

Cluster links are one-way (node i sends to j on the connection i dialed, and hears from j on
the one j dialed), so cutting the proxy (i, j) alone makes an asymmetric partition: what i
sends no longer reaches j, what j sends still reaches i.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

#: how long a synchronous call waits for the proxies' loop
TIMEOUT = 10.0
_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST


class LoopThread:
    """An event loop running in a daemon thread, for synchronous code to call into."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="netproxy", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(TIMEOUT)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(TIMEOUT)
        self.loop.close()


class _End(asyncio.Protocol):
    """One end of a proxied connection: what it receives goes out of the other end."""

    def __init__(self, on_made: Callable[[_End], None] | None = None) -> None:
        self.transport: asyncio.Transport | None = None
        self.other: _End | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._on_made = on_made

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self._on_made is not None:
            self._on_made(self)

    def data_received(self, data: bytes) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set_result(None)
        if self.other is not None and self.other.transport is not None:
            self.other.transport.close()  # after writing what it still holds

    # the other end cannot keep up: stop reading this one until it can
    def pause_writing(self) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.resume_reading()

    def reset(self) -> None:
        """Drop the connection with a TCP RST, as a partition (or a refusing peer) looks."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
        transport.abort()


class LinkProxy:
    """One listening port forwarding every connection to one target, until cut."""

    def __init__(
        self,
        target: tuple[str, int],
        listen_host: str = "127.0.0.1",
        *,
        runner: LoopThread | None = None,
    ) -> None:
        """`runner`: the loop thread to run on (a mesh shares one); by default, one of its own."""
        self.target = target
        self._own_runner = runner is None
        self._runner = runner or LoopThread()
        self._cut = False
        self._ends: set[_End] = set()
        self._dials: set[asyncio.Task[None]] = set()
        self._server = self._runner.run(self._listen(listen_host))
        self.port: int = self._server.sockets[0].getsockname()[1]

    def cut(self) -> None:
        """Reset every connection through the proxy, and every new one until `heal`."""
        self._runner.run(self._cut_all())

    def heal(self) -> None:
        """Forward new connections again (the nodes redial by themselves)."""
        self._cut = False  # a flag the loop reads at each accept

    def close(self) -> None:
        self._runner.run(self._close())
        if self._own_runner:
            self._runner.close()

    # -- on the loop ---------------------------------------------------------------------

    async def _listen(self, host: str) -> asyncio.Server:
        return await asyncio.get_running_loop().create_server(self._accept, host, 0)

    def _accept(self) -> _End:
        return _End(self._accepted)

    def _accepted(self, client: _End) -> None:
        assert client.transport is not None
        self._track(client)
        if self._cut:
            client.reset()
            return
        client.transport.pause_reading()  # nowhere to write to yet
        task = asyncio.get_running_loop().create_task(self._dial(client))
        self._dials.add(task)
        task.add_done_callback(self._dials.discard)

    def _track(self, end: _End) -> None:
        self._ends.add(end)
        end.closed.add_done_callback(lambda _: self._ends.discard(end))

    async def _dial(self, client: _End) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, upstream = await loop.create_connection(_End, *self.target)
        except OSError:
            client.reset()  # the target refused: so does the proxy
            return
        except asyncio.CancelledError:
            client.reset()
            raise
        self._track(upstream)
        client_transport = client.transport
        if self._cut or client_transport is None or client_transport.is_closing():
            upstream.reset()
            client.reset()
            return
        client.other, upstream.other = upstream, client
        client_transport.resume_reading()

    async def _cut_all(self) -> None:
        self._cut = True
        ends = list(self._ends)
        for end in ends:
            end.reset()
        await asyncio.gather(*(end.closed for end in ends))

    async def _close(self) -> None:
        self._server.close()
        for task in list(self._dials):
            task.cancel()
        await asyncio.gather(*self._dials, return_exceptions=True)
        await self._cut_all()
        await self._server.wait_closed()


class ProxyMesh:
    """The N*(N-1) proxies of a cluster: `mesh[i, j]` carries node i's link to node j."""

    def __init__(self, cluster_ports: dict[int, int], host: str = "127.0.0.1") -> None:
        """`cluster_ports`: each node's real cluster port, on `host`."""
        self.host = host
        self._runner = LoopThread()
        self._proxies = {
            (i, j): LinkProxy((host, port), host, runner=self._runner)
            for i in cluster_ports
            for j, port in cluster_ports.items()
            if i != j
        }

    def __getitem__(self, link: tuple[int, int]) -> LinkProxy:
        return self._proxies[link]

    def address_book(self, node: int) -> dict[int, tuple[str, int]]:
        """The peers' addresses to give `node`: the proxies of its links."""
        return {j: (self.host, proxy.port) for (i, j), proxy in self._proxies.items() if i == node}

    def isolate(self, node: int) -> None:
        """Cut every link from and to `node`."""
        for (i, j), proxy in self._proxies.items():
            if node in (i, j):
                proxy.cut()

    def heal_all(self) -> None:
        for proxy in self._proxies.values():
            proxy.heal()

    def close(self) -> None:
        for proxy in self._proxies.values():
            proxy.close()
        self._runner.close()
