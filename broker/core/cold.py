"""The cold part of a deep queue: never-delivered ready messages waiting behind the ones held
in memory, kept as packed columns (about 50 bytes each) rather than one object per message.

Their bodies, properties and names stay in the log entries that carried them (Message.source),
so only messages whose publish is in the log go cold. A queue takes them back into memory a
chunk at a time, in order, as its consumers get near them (MessageQueue.promote), reading the
entries then: the state they stand for is the same whether a message is hot or cold.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Iterator
from dataclasses import dataclass

#: columns: seq, position, enqueued_at, expires_at (-1: none), log index, size, position in
#: the entry, persistent
_COLUMNS = "qqqqqIIB"
_HEADER = struct.Struct(">II")  # entries, format version of the packed form
_PACKED_VERSION = 1


@dataclass(slots=True, frozen=True)
class ColdEntry:
    seq: int
    position: int
    enqueued_at: int
    expires_at: int | None
    source: tuple[int, int]
    size: int
    persistent: bool


class ColdTail:
    """Cold messages of one priority level of one queue, oldest first."""

    __slots__ = ("_columns", "_start", "bytes")

    def __init__(self) -> None:
        self._columns = tuple(array(code) for code in _COLUMNS)
        #: entries before this one were taken (removed lazily, see _compact)
        self._start = 0
        #: sum of the sizes of the entries held
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._columns[0]) - self._start

    def append(
        self,
        seq: int,
        position: int,
        enqueued_at: int,
        expires_at: int | None,
        source: tuple[int, int],
        size: int,
        persistent: bool,
    ) -> None:
        seqs, positions, enqueued, expires, indexes, sizes, offsets, flags = self._columns
        seqs.append(seq)
        positions.append(position)
        enqueued.append(enqueued_at)
        expires.append(-1 if expires_at is None else expires_at)
        indexes.append(source[0])
        sizes.append(size)
        offsets.append(source[1])
        flags.append(1 if persistent else 0)
        self.bytes += size

    def take(self, count: int) -> list[ColdEntry]:
        """Remove and return up to `count` entries from the front."""
        start = self._start
        stop = min(start + count, len(self._columns[0]))
        out = [self._entry(i) for i in range(start, stop)]
        self.bytes -= sum(e.size for e in out)
        self._start = stop
        self._compact()
        return out

    def peek(self) -> ColdEntry | None:
        """The front entry, left in place."""
        return self._entry(self._start) if len(self) else None

    def clear(self) -> list[int]:
        """Forget every entry; returns the log index of each (their references to release)."""
        indexes = self._columns[4][self._start :].tolist()
        self._columns = tuple(array(code) for code in _COLUMNS)
        self._start = 0
        self.bytes = 0
        return indexes

    def drop_transient(self) -> list[int]:
        """Forget the entries of non-persistent messages (a restart loses them); returns
        their log indexes."""
        keep = ColdTail()
        dropped: list[int] = []
        for entry in self:
            if entry.persistent:
                keep.append(
                    entry.seq,
                    entry.position,
                    entry.enqueued_at,
                    entry.expires_at,
                    entry.source,
                    entry.size,
                    entry.persistent,
                )
            else:
                dropped.append(entry.source[0])
        self._columns, self._start, self.bytes = keep._columns, 0, keep.bytes
        return dropped

    def __iter__(self) -> Iterator[ColdEntry]:
        for i in range(self._start, len(self._columns[0])):
            yield self._entry(i)

    def indexes(self) -> array:
        """The log index of each entry (what a restore counts references with)."""
        return self._columns[4][self._start :]

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

    def _compact(self) -> None:
        """Drop taken entries once they are half the arrays (amortised O(1) per take)."""
        start = self._start
        if start and start * 2 >= len(self._columns[0]):
            self._columns = tuple(column[start:] for column in self._columns)
            self._start = 0

    # -- the stored form -----------------------------------------------------------------

    def packed(self) -> bytes:
        """The entries as bytes: a header, then each column (big-endian, whole)."""
        parts = [_HEADER.pack(len(self), _PACKED_VERSION)]
        for column in self._columns:
            part = column[self._start :]
            if _LITTLE:
                part.byteswap()
            parts.append(part.tobytes())
        return b"".join(parts)

    @classmethod
    def unpacked(cls, raw: bytes) -> ColdTail:
        count, version = _HEADER.unpack_from(raw, 0)
        if version != _PACKED_VERSION:
            raise ValueError(f"cold tail packed in version {version}, not {_PACKED_VERSION}")
        tail = cls()
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
            raise ValueError("cold tail record of the wrong length")
        tail._columns = tuple(columns)
        tail.bytes = sum(columns[5])
        return tail


_LITTLE = array("H", [1]).tobytes()[0] == 1
