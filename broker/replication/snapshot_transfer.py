"""Sending a node's snapshot to a follower that is too far behind, and receiving one.

The leader sends both of its databases as they are at one moment (LevelDB snapshots): the
state database whole (records, the snapshot's index, term and voters), and of the log the
batches up to that index, which still hold message bodies (see schema). The follower puts
them together in its data dir's INCOMING_DIR and, once complete, replaces its own databases
with them (Store.install); then Raft learns of the snapshot and the log goes on after it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from typing import Any

import plyvel

from broker.replication.raft import SnapshotMeta
from broker.replication.wire import SnapshotBegin, SnapshotChunk, SnapshotEnd
from broker.store import schema
from broker.store.disk import INCOMING_DIR, LOG_DIR, STATE_DIR, Store
from broker.store.encoding import pack, unpack

log = logging.getLogger(__name__)

#: Bytes of records per chunk.
CHUNK_BYTES = 512 * 1024
#: How long a chunk may wait for room on a link before the transfer is given up.
STALL_SECONDS = 10.0

Send = Callable[[Any], bool]


class NoSnapshotYet(Exception):
    """The leader has written no snapshot yet: take one, then send it."""


async def send_snapshot(store: Store, transfer: int, send: Send) -> SnapshotMeta:
    """Send the databases as they are now; returns the meta of the snapshot sent."""
    with store.views() as (state_view, log_view):
        raw = state_view.get(schema.META_RAFT_SNAPSHOT, verify_checksums=True)
        if raw is None:
            raise NoSnapshotYet
        index, term, voters = unpack(raw)
        meta = SnapshotMeta(index, term, tuple(voters))
        await _send(send, SnapshotBegin(transfer))
        for chunk in _chunks(state_view.iterator(verify_checksums=True)):
            await _send(send, SnapshotChunk(transfer, "state", chunk))
        log_items = log_view.iterator(
            start=schema.LOG_PREFIX, stop=schema.LOG_END, verify_checksums=True
        )
        for chunk in _chunks(_log_upto(log_items, index)):
            await _send(send, SnapshotChunk(transfer, "log", chunk))
        await _send(send, SnapshotEnd(transfer, meta))
    return meta


def _log_upto(items: Any, index: int) -> Iterator[tuple[bytes, bytes]]:
    """The log's batches up to `index` (message bodies live there); a batch reaching past it
    is cut at it: the follower's log continues after the snapshot from the leader."""
    for key, value in items:
        first, last = schema.batch_range(key)
        if last <= index:
            yield key, value
        elif first <= index:
            start, entries = unpack(value)
            kept = entries[: index - start + 1]
            yield schema.batch_key(first, index), pack((start, kept))
        else:
            return


def _chunks(items: Any) -> Iterator[tuple[tuple[bytes, bytes], ...]]:
    chunk: list[tuple[bytes, bytes]] = []
    size = 0
    for key, value in items:
        chunk.append((key, value))
        size += len(key) + len(value)
        if size >= CHUNK_BYTES:
            yield tuple(chunk)
            chunk, size = [], 0
    if chunk:
        yield tuple(chunk)


async def _send(send: Send, message: Any) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STALL_SECONDS
    while not send(message):
        if loop.time() > deadline:
            raise ConnectionError("the link to the follower stayed full or down")
        await asyncio.sleep(0.01)


class SnapshotReceiver:
    """Puts a snapshot from the leader together in the data dir's INCOMING_DIR."""

    def __init__(self, data_dir: str) -> None:
        self.path = os.path.join(data_dir, INCOMING_DIR)
        self.transfer: int | None = None
        self._dbs: dict[str, Any] = {}
        #: the meta of the snapshot complete in INCOMING_DIR, ready to install
        self.complete: SnapshotMeta | None = None

    def begin(self, msg: SnapshotBegin) -> None:
        self.abort()
        os.makedirs(self.path)
        self.transfer = msg.transfer
        self._dbs = {
            "state": plyvel.DB(os.path.join(self.path, STATE_DIR), create_if_missing=True),
            "log": plyvel.DB(os.path.join(self.path, LOG_DIR), create_if_missing=True),
        }

    def chunk(self, msg: SnapshotChunk) -> None:
        if msg.transfer != self.transfer:
            return
        with self._dbs[msg.database].write_batch() as batch:
            for key, value in msg.items:
                batch.put(key, value)

    def end(self, msg: SnapshotEnd, hard_state: tuple[int, int, int]) -> None:
        """The last chunk came: close the databases, with this node's own Raft state (term
        and vote must never go back) and the format in the log."""
        if msg.transfer != self.transfer:
            return
        log_db = self._dbs["log"]
        log_db.put(schema.META_FORMAT, pack(schema.FORMAT_VERSION))
        log_db.put(schema.META_RAFT, pack(list(hard_state)), sync=True)
        self._dbs["state"].put(schema.META_FORMAT, pack(schema.FORMAT_VERSION), sync=True)
        for db in self._dbs.values():
            db.close()
        self._dbs = {}
        self.transfer = None
        self.complete = msg.meta
        log.info("received the snapshot at index %d from the leader", msg.meta.index)

    def abort(self) -> None:
        for db in self._dbs.values():
            db.close()
        self._dbs = {}
        self.transfer = None
        self.complete = None
        shutil.rmtree(self.path, ignore_errors=True)
