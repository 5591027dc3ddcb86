"""The confirmed mark: the last log index the node has promised clients is on disk.

A crash never loses a synced entry, so a log that ends before the mark was damaged (truncated,
or cut short by a repair) and recovery refuses it. The mark lives in a small file of its own,
`confirmed` in the data dir, not in the log database: a mark written in the log's own
write-ahead log would be cut off with the log, and a truncated log would look like a clean
crash. It costs no extra fsync: after each synced write of the log the writer rewrites it in
place (one pwrite of 12 bytes). The entries it names are synced before it is written, so after
a power cut it may lag the log, never run ahead of it; after `kill -9` it is exact.
"""

from __future__ import annotations

import os
import struct
import zlib

from broker.store.damage import REMEDY, StoreDamaged

FILE = "confirmed"
#: the index, then a CRC-32 of its 8 bytes
_INDEX = struct.Struct(">Q")
_CRC = struct.Struct(">I")
_SIZE = _INDEX.size + _CRC.size


class ConfirmedMark:
    def __init__(self, data_dir: str) -> None:
        self.path = os.path.join(data_dir, FILE)
        created = not os.path.exists(self.path)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if created:
                os.fsync(self._fd)
                _fsync_dir(data_dir)
            self.index = self._read()
        except BaseException:
            os.close(self._fd)
            raise

    def _read(self) -> int:
        raw = os.pread(self._fd, _SIZE, 0)
        if not raw:
            return 0
        if len(raw) == _SIZE and zlib.crc32(raw[: _INDEX.size]) == _CRC.unpack_from(raw, 8)[0]:
            return int(_INDEX.unpack_from(raw)[0])
        raise StoreDamaged(f"the store is damaged ({self.path} fails its checksum): {REMEDY}")

    def advance(self, index: int) -> None:
        """Entries up to `index` are synced (called by the log's writer, after the sync)."""
        if index > self.index:
            self._write(index)

    def reset(self, index: int) -> None:
        """A repaired log ends at `index`: the mark comes down to it, durably."""
        self._write(index)
        os.fsync(self._fd)

    def _write(self, index: int) -> None:
        head = _INDEX.pack(index)
        os.pwrite(self._fd, head + _CRC.pack(zlib.crc32(head)), 0)
        self.index = index

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
