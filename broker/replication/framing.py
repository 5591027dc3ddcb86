"""The protocol of the links between cluster nodes, sans-IO: frames, the handshake, messages.

A frame is a 4-byte big-endian length, then a msgpack payload (`broker.store.encoding`). A
link is one-way: the node that dialed sends messages, the node that listens receives them, so
each pair of nodes has one connection per direction and neither ever chooses between two.
Before any message, the two ends say who they are and prove it:

    dialer   -> ["hello", VERSION, dialer id, listener id, dialer nonce]
    listener -> ["welcome", listener nonce, listener proof]      or ["refused", reason]
    dialer   -> ["proof", dialer proof]                          or ["refused", reason]
    listener -> ["ready"]                                        or ["refused", reason]

With a shared secret, a nonce is 32 random bytes and a proof is HMAC-SHA256(secret, CONTEXT
|| role || dialer nonce || listener nonce || ids). The role keeps an answer from being
reflected back as the other end's; the verifier's own fresh nonce keeps an answer from an
earlier connection from being replayed; the ids keep an answer given for one pair of nodes
from serving another. Without a secret, nonces and proofs are None (nothing is proved), and
a node with a secret and a node without refuse each other rather than link unauthenticated.

Until the handshake is over, frames are limited to HANDSHAKE_MAX_FRAME, so a stranger cannot
make a node buffer a large frame before it has proved anything.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import struct
from collections.abc import Callable, Iterator
from typing import Any

from broker.store.encoding import pack, unpack

VERSION = 1
NONCE_SIZE = 32
HANDSHAKE_MAX_FRAME = 1024
CONTEXT = b"broker cluster link v1\0"
_DIALER = b"dialer\0"
_LISTENER = b"listener\0"
_HEADER = struct.Struct(">I")


class LinkError(Exception):
    """The other end broke the protocol, or the handshake failed: close the connection."""


class FrameTooLarge(LinkError):
    """A frame longer than the limit: received (close) or about to be sent (a caller's bug)."""


class Refused(LinkError):
    """The handshake failed for the reason given: a refusal has been queued for the other end."""


def _proof(
    secret: bytes, role: bytes, dialer_nonce: bytes, listener_nonce: bytes, ids: bytes
) -> bytes:
    mac = hmac.new(secret, CONTEXT + role + dialer_nonce + listener_nonce + ids, hashlib.sha256)
    return mac.digest()


def _ids(dialer: int, listener: int) -> bytes:
    return b"%d>%d" % (dialer, listener)


class FrameDecoder:
    """Splits a byte stream into frames and decodes their payloads."""

    def __init__(self, max_frame: int) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()
        self._pos = 0

    def feed(self, data: bytes) -> None:
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def messages(self) -> Iterator[Any]:
        """The complete frames fed so far, decoded; `max_frame` is read before each one."""
        buf = self._buf
        while len(buf) - self._pos >= _HEADER.size:
            (size,) = _HEADER.unpack_from(buf, self._pos)
            if size > self.max_frame:
                raise FrameTooLarge(f"a frame of {size} bytes (limit {self.max_frame})")
            start = self._pos + _HEADER.size
            end = start + size
            if len(buf) < end:
                return
            self._pos = end
            try:
                message = unpack(bytes(memoryview(buf)[start:end]))
            except Exception as exc:  # whatever garbage makes msgpack (or its ext hook) raise
                raise LinkError(f"malformed frame: {exc!r}") from exc
            yield message


class _Link:
    """What both ends share: the frame codec, the output buffer, the secret and this end's nonce."""

    #: takes the next handshake message (each end moves it along as the handshake goes);
    #: None once messages are what comes in
    _step: Callable[[Any], None] | None

    def __init__(self, node_id: int, secret: bytes | None, max_frame: int) -> None:
        self.node_id = node_id
        self.max_frame = max_frame
        #: the node at the other end (the listener knows it once it has read the hello)
        self.peer: int | None = None
        self.is_open = False
        #: bytes queued by `send` and the handshake, not yet taken by `data_to_send`
        self.buffered = 0
        #: the secret and this end's nonce for this connection, when there is a secret
        self._auth = None if secret is None else (secret, secrets.token_bytes(NONCE_SIZE))
        #: how the proofs name the two ends: set once both ids are known
        self._ids = b""
        self._decoder = FrameDecoder(HANDSHAKE_MAX_FRAME)
        self._out: list[bytes] = []

    def receive_data(self, data: bytes) -> None:
        """Bytes from the other end in; drain `messages()` after each call."""
        self._decoder.feed(data)

    def messages(self) -> Iterator[Any]:
        """The messages received, one at a time; the handshake moves on as its frames are read.

        Raises LinkError at the first bad frame, once the good ones before it are out.
        """
        for message in self._decoder.messages():
            if self._step is None:
                yield message
            else:
                self._step(message)

    def data_to_send(self) -> bytes:
        data = b"".join(self._out)
        self._out.clear()
        self.buffered = 0
        return data

    def _write(self, message: Any, limit: int = HANDSHAKE_MAX_FRAME) -> None:
        payload = pack(message)
        if len(payload) > limit:
            raise FrameTooLarge(f"a message of {len(payload)} bytes (limit {limit})")
        self._out += (_HEADER.pack(len(payload)), payload)
        self.buffered += _HEADER.size + len(payload)

    def _open(self) -> None:
        self.is_open = True
        self._decoder.max_frame = self.max_frame

    def _refuse(self, reason: str) -> Refused:
        self._write(["refused", reason])
        return Refused(reason)

    def _refused(self, message: list[Any]) -> Refused:
        reason = str(message[1])[:200] if len(message) == 2 else "no reason given"
        return Refused(f"node {self.peer} refused the link: {reason}")


class DialerLink(_Link):
    """The sending end: says hello to `peer`, checks its proof, proves itself, then sends."""

    def __init__(self, node_id: int, peer: int, secret: bytes | None, max_frame: int) -> None:
        super().__init__(node_id, secret, max_frame)
        self.peer = peer
        self._ids = _ids(node_id, peer)
        self._step = self._on_welcome
        nonce = self._auth[1] if self._auth is not None else None
        self._write(["hello", VERSION, node_id, peer, nonce])

    def send(self, message: Any) -> None:
        """Queue one message (plain data). Raises FrameTooLarge past max_frame."""
        assert self.is_open, "send before the handshake is over"
        self._write(message, self.max_frame)

    def _on_welcome(self, message: Any) -> None:
        peer = self.peer
        match message:
            case ["refused", *_]:
                raise self._refused(message)
            case ["welcome", None, None]:
                if self._auth is not None:
                    raise self._refuse(f"node {peer} has no cluster secret, this node has one")
                proof = None
            case ["welcome", bytes(nonce), bytes(theirs)] if len(nonce) == NONCE_SIZE:
                if self._auth is None:
                    raise self._refuse(f"node {peer} uses a cluster secret, this node has none")
                secret, mine = self._auth
                expected = _proof(secret, _LISTENER, mine, nonce, self._ids)
                if not hmac.compare_digest(theirs, expected):
                    raise self._refuse(f"node {peer} failed to prove the cluster secret")
                proof = _proof(secret, _DIALER, mine, nonce, self._ids)
            case _:
                raise LinkError(f"expected a welcome from node {peer}, got {message!r:.100}")
        self._write(["proof", proof])
        self._step = self._on_ready

    def _on_ready(self, message: Any) -> None:
        match message:
            case ["ready"]:
                self._open()
                self._step = self._one_way
            case ["refused", *_]:
                raise self._refused(message)
            case _:
                raise LinkError(f"expected ready from node {self.peer}, got {message!r:.100}")

    def _one_way(self, message: Any) -> None:
        raise LinkError(f"node {self.peer} sent data over a one-way link")


class ListenerLink(_Link):
    """The receiving end: checks who dials and their proof, then hands over their messages."""

    def __init__(
        self,
        node_id: int,
        known: Callable[[int], bool],
        secret: bytes | None,
        max_frame: int,
    ) -> None:
        super().__init__(node_id, secret, max_frame)
        self._known = known
        self._dialer_nonce = b""
        self._step = self._on_hello

    def _on_hello(self, message: Any) -> None:
        match message:
            case ["hello", int(version), int(dialer), int(listener), (bytes() | None) as nonce]:
                pass
            case _:
                raise self._refuse(f"expected a hello, got {message!r:.100}")
        if version != VERSION:
            raise self._refuse(f"link protocol version {version} (this node speaks {VERSION})")
        if listener != self.node_id:
            raise self._refuse(f"this is node {self.node_id}, not node {listener}")
        if not self._known(dialer):
            raise self._refuse(f"node {dialer} is not a member of this node's cluster")
        self.peer = int(dialer)
        self._ids = _ids(self.peer, self.node_id)
        if self._auth is None:
            if nonce is not None:
                raise self._refuse(f"node {dialer} uses a cluster secret, this node has none")
            self._write(["welcome", None, None])
        else:
            if nonce is None:
                raise self._refuse(f"node {dialer} has no cluster secret, this node has one")
            if len(nonce) != NONCE_SIZE:
                raise self._refuse(f"a nonce of {len(nonce)} bytes, not {NONCE_SIZE}")
            secret, mine = self._auth
            self._dialer_nonce = nonce
            self._write(["welcome", mine, _proof(secret, _LISTENER, nonce, mine, self._ids)])
        self._step = self._on_proof

    def _on_proof(self, message: Any) -> None:
        match message:
            case ["proof", (bytes() | None) as proof]:
                pass
            case ["refused", *_]:
                raise self._refused(message)
            case _:
                raise self._refuse(f"expected a proof, got {message!r:.100}")
        if self._auth is not None:
            secret, mine = self._auth
            expected = _proof(secret, _DIALER, self._dialer_nonce, mine, self._ids)
            if proof is None or not hmac.compare_digest(proof, expected):
                raise self._refuse(f"node {self.peer} failed to prove the cluster secret")
        self._write(["ready"])
        self._open()
        self._step = None
