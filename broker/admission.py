"""How many client connections a node takes: its own limit and each source address's.

A connection over a limit is still accepted, so that its protocol can say why it is refused
(AMQP connection.close 530, MQTT CONNACK 3) instead of the client seeing a reset; the limits
are set below the process's file-descriptor limit so that accepting never fails. Refused
connections still hold a descriptor until they close: past REFUSALS_IN_FLIGHT of them the
oldest is dropped, so a flood cannot eat the reserve, and a client that speaks soon after it
connects is still told why, however many silent ones hold their sockets. Refusals are logged
as one WARNING line per LOG_INTERVAL, whatever the flood.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Hashable

log = logging.getLogger(__name__)

#: refused connections kept open to be told why; past this the oldest is dropped unanswered
REFUSALS_IN_FLIGHT = 64
#: seconds between two log lines about refused connections
LOG_INTERVAL = 10.0
#: descriptors kept for what is not a client connection: the store, the admin socket, cluster
#: links, HTTP clients, and refused connections on their way out
FD_RESERVE = 256


#: connections the kernel may hold accepted but not yet taken by the node, per listener (it
#: caps this at net.core.somaxconn): a thousand devices reconnecting at once after an outage
#: overflow a short queue, and each one dropped waits a second for its SYN to be sent again
LISTEN_BACKLOG = 4096

#: the soft descriptor limit asked for when the hard one is unlimited (macOS caps it lower)
UNLIMITED_TARGET = 65536


def raise_open_file_limit() -> None:
    """Each client is a socket: allow as many as the hard limit permits, as RabbitMQ does."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = UNLIMITED_TARGET if hard == resource.RLIM_INFINITY else hard
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ImportError, ValueError, OSError):
        pass


def open_file_limit() -> int:
    """The process's soft descriptor limit; 0 when unknown or unlimited."""
    try:
        import resource
    except ImportError:
        return 0
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return 0 if soft == resource.RLIM_INFINITY else soft


def default_max_connections(fd_limit: int) -> int:
    """The node's connection limit when none is configured: the descriptor limit less a
    reserve (half of it when the limit is small); 0 (none) when the limit is unknown."""
    if fd_limit <= 0:
        return 0
    return max(1, fd_limit - min(FD_RESERVE, fd_limit // 2))


class Admission:
    def __init__(
        self, max_connections: int, max_per_address: int, clock: Callable[[], float]
    ) -> None:
        #: 0: no limit
        self.max_connections = max_connections
        self.max_per_address = max_per_address
        self._clock = clock
        self._address: dict[Hashable, str] = {}
        self._per_address: Counter[str] = Counter()
        #: connections over a limit that have not closed yet, oldest first, and how to drop them
        self.refused: dict[Hashable, Callable[[], None]] = {}
        #: connections refused since the node started (by any limit, `broker status`)
        self.refused_total = 0
        self._logged_at = -math.inf
        self._unlogged = 0

    def admit(self, connection: Hashable, address: str, abort: Callable[[], None]) -> str | None:
        """Count a new connection from `address`; the reason it is refused, if it is."""
        if self.max_connections and len(self._address) >= self.max_connections:
            reason = f"node connection limit ({self.max_connections}) is reached"
        elif self.max_per_address and self._per_address[address] >= self.max_per_address:
            reason = f"source address connection limit ({self.max_per_address}) is reached"
        else:
            self._address[connection] = address
            self._per_address[address] += 1
            return None
        if len(self.refused) >= REFUSALS_IN_FLIGHT:
            oldest = next(iter(self.refused))
            self.refused.pop(oldest)()
        self.refused[connection] = abort
        self.note_refusal(address, reason)
        return reason

    def released(self, connection: Hashable) -> None:
        self.refused.pop(connection, None)
        address = self._address.pop(connection, None)
        if address is not None:
            left = self._per_address[address] - 1
            if left:
                self._per_address[address] = left
            else:
                del self._per_address[address]

    def note_refusal(self, address: str, reason: str) -> None:
        """Count a refused connection (by any limit) and log it, once per LOG_INTERVAL."""
        self.refused_total += 1
        now = self._clock()
        if now - self._logged_at < LOG_INTERVAL:
            self._unlogged += 1
            return
        also = f" ({self._unlogged} more refused since the last report)" if self._unlogged else ""
        log.warning("refused a connection from %s: %s%s", address or "?", reason, also)
        self._logged_at = now
        self._unlogged = 0
