"""The confirmed mark: how far the log reached when the node last synced it.

A crash never loses a synced write, so a log that ends before the mark was damaged (truncated,
or cut short by a repair) and recovery refuses it. A single node's mark is the last entry it
confirmed to clients; a cluster member's is the last entry it has told the leader it holds,
with Raft's term and vote as they were synced (a member that lost them could vote twice in a
term).

The mark lives in a small file of its own, `confirmed` in the data dir, not in the log
database: a mark written in the log's own write-ahead log would be cut off with the log, and a
truncated log would look like a clean crash. It costs no extra fsync: after each synced write
of the log the writer rewrites it in place (one pwrite of 28 bytes). What it names is synced
before it is written, so after a power cut it may lag the log, never run ahead of it; after
`kill -9` it is exact. Only a mark that must come down (a cluster member's log cut back to
the leader's) is written, and synced, before the write that cuts the log.
"""

from __future__ import annotations

import os
import struct
import zlib

from broker.store.damage import REMEDY, StoreDamaged

FILE = "confirmed"
#: index, term, vote, then a CRC-32 of those 24 bytes
_VALUES = struct.Struct(">QQQ")
_CRC = struct.Struct(">I")
_SIZE = _VALUES.size + _CRC.size


class ConfirmedMark:
    def __init__(self, data_dir: str) -> None:
        self.path = os.path.join(data_dir, FILE)
        created = not os.path.exists(self.path)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if created:
                # Written whole before anything else: later writes overwrite it in place, so
                # a power cut can never leave a file extended but not yet filled.
                self._write(0, 0, 0)
                os.fsync(self._fd)
                _fsync_dir(data_dir)
            self.index, self.term, self.vote = self._read()
        except BaseException:
            os.close(self._fd)
            raise

    def _read(self) -> tuple[int, int, int]:
        raw = os.pread(self._fd, _SIZE, 0)
        if not raw:
            return 0, 0, 0
        if len(raw) == _SIZE and zlib.crc32(raw[: _VALUES.size]) == _CRC.unpack_from(raw, 24)[0]:
            index, term, vote = _VALUES.unpack_from(raw)
            return index, term, vote
        raise StoreDamaged(f"the store is damaged ({self.path} fails its checksum): {REMEDY}")

    def synced(self, index: int, term: int = 0, vote: int = 0) -> None:
        """A synced write left the log ending at `index`, with Raft's `term` and `vote`.
        A lower index must have been set with `lower` before that write."""
        if (index, term, vote) != (self.index, self.term, self.vote):
            self._write(max(index, self.index), term, vote)

    def lower(self, index: int) -> None:
        """The log is about to be cut back to `index`, or was (a repair): the mark comes
        down first, durably, so a crash in between cannot make the cut look like damage."""
        self._write(index, self.term, self.vote)
        os.fsync(self._fd)

    def _write(self, index: int, term: int, vote: int) -> None:
        values = _VALUES.pack(index, term, vote)
        os.pwrite(self._fd, values + _CRC.pack(zlib.crc32(values)), 0)
        self.index, self.term, self.vote = index, term, vote

    def close(self) -> None:
        try:
            os.fsync(self._fd)
        finally:
            os.close(self._fd)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
