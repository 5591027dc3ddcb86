"""The cold part of a deep queue: never-delivered ready messages waiting behind the ones held
in memory, kept as packed columns (about 50 bytes each) rather than one object per message.

Their bodies, properties and names stay in the log entries that carried them (Message.source),
so only messages whose publish is in the log go cold. A queue takes them back into memory a
chunk at a time, in order, as its consumers get near them, reading the entries then: the state
they stand for is the same whether a message is hot or cold.

The tail is a row of chunks of at most CHUNK entries, each stored as one record (`packed`), so a
snapshot rewrites only the chunks that changed: the one being filled and the one being taken
from.
"""

from __future__ import annotations

import struct
from array import array
from bisect import bisect_left
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

#: never-delivered ready messages a priority level of a queue holds in memory while consumers
#: serve it: later ones wait cold until the consumers get near them (a subscriber that falls
#: behind a burst is served from memory; 16,384 messages of 1 KiB are about 23 MiB)
HOT_LIMIT = 16384
#: the same for a queue that no consumer serves (pull receivers, offline MQTT sessions): no
#: one keeps up with it, and a publish to thousands of them should not hold thousands of
#: messages in memory
IDLE_HOT_LIMIT = 128
#: cold messages taken back into memory at a time
PROMOTE = 1024
#: entries per chunk (a chunk's record is about CHUNK x 49 bytes)
CHUNK = 4096
#: columns: seq, position, enqueued_at, expires_at (-1: none), log index, size, position in
#: the entry, persistent
_COLUMNS = "qqqqqIIB"
_HEADER = struct.Struct(">II")  # entries, version of the packed form
_PACKED_VERSION = 1
_LITTLE = array("H", [1]).tobytes()[0] == 1


@dataclass(slots=True)
class ColdEntry:
    seq: int
    position: int
    enqueued_at: int
    expires_at: int | None
    source: tuple[int, int]
    size: int
    persistent: bool


class Entry(Protocol):
    """What a chunk takes in: a ColdEntry, or the message itself (core.model.Message), so
    that going cold makes no object in between."""

    @property
    def seq(self) -> int: ...
    @property
    def position(self) -> int: ...
    @property
    def enqueued_at(self) -> int: ...
    @property
    def expires_at(self) -> int | None: ...
    @property
    def source(self) -> tuple[int, int] | None: ...
    @property
    def size(self) -> int: ...
    @property
    def persistent(self) -> bool: ...


class ColdChunk:
    """Up to CHUNK consecutive entries; `number` names its record."""

    __slots__ = ("number", "_columns", "_start", "bytes", "low", "high", "ordered")

    def __init__(self, number: int) -> None:
        self.number = number
        self._columns = tuple(array(code) for code in _COLUMNS)
        #: entries before this one were taken
        self._start = 0
        self.bytes = 0
        #: the lowest and highest log index its entries ever referred to (0: none yet), and
        #: whether those indexes come in order (as they do unless a message was held)
        self.low = self.high = 0
        self.ordered = True

    def __len__(self) -> int:
        return len(self._columns[0]) - self._start

    @property
    def full(self) -> bool:
        return len(self._columns[0]) >= CHUNK

    def append(self, entry: Entry) -> None:
        seqs, positions, enqueued, expires, indexes, sizes, offsets, flags = self._columns
        seqs.append(entry.seq)
        positions.append(entry.position)
        enqueued.append(entry.enqueued_at)
        expires_at = entry.expires_at
        expires.append(-1 if expires_at is None else expires_at)
        index, offset = entry.source or (0, 0)  # (none: held whole by its queue)
        if index and index >= self.high:
            self.low = self.low or index
            self.high = index
        else:
            self.ordered = False
            if index:
                self.low = min(self.low, index) if self.low else index
        indexes.append(index)
        size = entry.size
        sizes.append(size)
        offsets.append(offset)
        flags.append(1 if entry.persistent else 0)
        self.bytes += size

    def take(self, count: int) -> list[ColdEntry]:
        start = self._start
        stop = min(start + count, len(self._columns[0]))
        out = [self._entry(i) for i in range(start, stop)]
        self.bytes -= sum(e.size for e in out)
        self._start = stop
        return out

    def __iter__(self) -> Iterator[ColdEntry]:
        for i in range(self._start, len(self._columns[0])):
            yield self._entry(i)

    def refers(self, first: int, last: int) -> bool:
        """Whether an entry refers to a log index in first..last."""
        if not self.low or last < self.low or first > self.high or not len(self):
            return False
        indexes = self._columns[4]
        if not self.ordered:  # (rare: a scan)
            return any(first <= index <= last for index in indexes[self._start :])
        i = bisect_left(indexes, first, self._start)
        return i < len(indexes) and indexes[i] <= last

    def indexes(self) -> array:
        """The log index of each entry (for counting and releasing their references)."""
        return self._columns[4][self._start :]

    def held_seqs(self) -> list[int]:
        """Seqs of the entries with no log entry (held whole by the queue: Queue.held)."""
        indexes = self._columns[4]
        if not indexes.count(0):
            return []
        seqs = self._columns[0]
        return [seqs[i] for i in range(self._start, len(indexes)) if indexes[i] == 0]

    def transient(self) -> bool:
        """Whether some entry is of a message that was not persistent."""
        return 0 in self._columns[7][self._start :]

    def keep_persistent(self) -> list[ColdEntry]:
        """Drop the entries of messages that were not persistent; returns them."""
        flags = self._columns[7]
        kept = [i for i in range(self._start, len(flags)) if flags[i]]
        dropped = [self._entry(i) for i in range(self._start, len(flags)) if not flags[i]]
        self._columns = tuple(array(col.typecode, (col[i] for i in kept)) for col in self._columns)
        self._start = 0
        self.bytes -= sum(e.size for e in dropped)
        return dropped

    def _entry(self, i: int) -> ColdEntry:
        seqs, positions, enqueued, expires, indexes, sizes, offsets, flags = self._columns
        expires_at = expires[i]
        return ColdEntry(
            seqs[i],
            positions[i],
            enqueued[i],
            None if expires_at < 0 else expires_at,
            (indexes[i], offsets[i]),
            sizes[i],
            bool(flags[i]),
        )

    def packed(self) -> bytes:
        """The entries as bytes: a header, then each column, big-endian."""
        parts = [_HEADER.pack(len(self), _PACKED_VERSION)]
        for column in self._columns:
            part = column[self._start :]
            if _LITTLE:
                part.byteswap()
            parts.append(part.tobytes())
        return b"".join(parts)

    @classmethod
    def unpacked(cls, number: int, raw: bytes) -> ColdChunk:
        count, version = _HEADER.unpack_from(raw, 0)
        if version != _PACKED_VERSION:
            raise ValueError(f"cold chunk packed in version {version}, not {_PACKED_VERSION}")
        chunk = cls(number)
        pos = _HEADER.size
        columns = []
        for code in _COLUMNS:
            column = array(code)
            width = column.itemsize * count
            column.frombytes(raw[pos : pos + width])
            if _LITTLE:
                column.byteswap()
            columns.append(column)
            pos += width
        if pos != len(raw):
            raise ValueError("cold chunk record of the wrong length")
        chunk._columns = tuple(columns)
        chunk.bytes = sum(columns[5])
        indexes = columns[4]
        if indexes:
            chunk.ordered = not indexes.count(0) and indexes == array("q", sorted(indexes))
            present = indexes if chunk.ordered else [i for i in indexes if i]
            chunk.low, chunk.high = (min(present), max(present)) if present else (0, 0)
        return chunk


class ColdTail:
    """Cold messages of one priority level of one queue, oldest first, in chunks."""

    __slots__ = ("chunks", "_next_number", "count", "bytes")

    def __init__(self) -> None:
        self.chunks: deque[ColdChunk] = deque()
        self._next_number = 1
        self.count = 0
        self.bytes = 0

    def __len__(self) -> int:
        return self.count

    def append(self, entry: Entry) -> ColdChunk:
        """Add `entry` at the back; returns the chunk that changed."""
        chunks = self.chunks
        if not chunks or chunks[-1].full:
            chunks.append(ColdChunk(self._next_number))
            self._next_number += 1
        chunk = chunks[-1]
        chunk.append(entry)
        self.count += 1
        self.bytes += entry.size
        return chunk

    def take(self, count: int) -> tuple[list[ColdEntry], list[ColdChunk]]:
        """Up to `count` entries from the front, and the chunks that changed (emptied ones
        are gone from the tail: their records are to delete)."""
        out: list[ColdEntry] = []
        changed: list[ColdChunk] = []
        while len(out) < count and self.chunks:
            chunk = self.chunks[0]
            out += chunk.take(count - len(out))
            changed.append(chunk)
            if not len(chunk):
                self.chunks.popleft()
        self.count -= len(out)
        self.bytes -= sum(e.size for e in out)
        return out, changed

    def drop_transient(self, chunk: ColdChunk) -> list[ColdEntry]:
        """Drop the entries of one chunk that were not persistent; returns them (the chunk
        stays, even empty: `drop_empty` then takes empty ones out)."""
        dropped = chunk.keep_persistent()
        self.count -= len(dropped)
        self.bytes -= sum(e.size for e in dropped)
        return dropped

    def drop_empty(self) -> None:
        self.chunks = deque(chunk for chunk in self.chunks if len(chunk))

    def peek(self) -> ColdEntry | None:
        for chunk in self.chunks:
            for entry in chunk:
                return entry
        return None

    def clear(self) -> list[ColdChunk]:
        """Forget every entry; returns the chunks (their records to delete, their log
        indexes to release)."""
        gone = list(self.chunks)
        self.chunks.clear()
        self.count = self.bytes = 0
        return gone

    def restore(self, chunk: ColdChunk) -> None:
        """Add a chunk read back from the store (chunks arrive in number order)."""
        if len(chunk):
            self.chunks.append(chunk)
            self.count += len(chunk)
            self.bytes += chunk.bytes
        self._next_number = max(self._next_number, chunk.number + 1)

    def __iter__(self) -> Iterator[ColdEntry]:
        for chunk in self.chunks:
            yield from chunk
