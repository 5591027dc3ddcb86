"""The node's LevelDB database: the log, the snapshot and the meta values (see schema).

Only the commit driver's writer thread writes here; reads happen at start-up and when the
state has to be rebuilt, while no write is in flight.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import plyvel

from broker.store import schema
from broker.store.encoding import decode_entry, pack, unpack

Op = tuple[bytes, bytes | None]

_FORMAT1_HELP = (
    "the data dir {path} was written by broker 0.1 (store format 1), which this release "
    "(store format {version}) does not read. Convert it once with "
    "`python scripts/migrate_format1.py {path}` from this release's source tree (it keeps "
    "the old database next to the new one), or start on an empty data dir."
)


class Store:
    def __init__(self, path: str) -> None:
        self.path = path
        self.db = plyvel.DB(path, create_if_missing=True)
        try:
            self._check_format()
        except schema.FormatError:
            self.db.close()
            raise

    def _check_format(self) -> None:
        raw = self.db.get(schema.META_FORMAT)
        if raw is None:
            if next(self.db.iterator(include_value=False), None) is not None:
                raise schema.FormatError(
                    _FORMAT1_HELP.format(path=self.path, version=schema.FORMAT_VERSION)
                )
            self.db.put(schema.META_FORMAT, pack(schema.FORMAT_VERSION), sync=True)
            return
        version = unpack(raw)
        if version != schema.FORMAT_VERSION:
            raise schema.FormatError(
                f"the data dir {self.path} has store format {version}; this release reads "
                f"format {schema.FORMAT_VERSION} only"
            )

    # -- reading -------------------------------------------------------------------------

    def snapshot_index(self) -> int:
        raw = self.db.get(schema.META_SNAPSHOT)
        return 0 if raw is None else int(unpack(raw))

    def skipped(self) -> set[int]:
        """Log entries the state leaves out (they failed half-way when first applied)."""
        raw = self.db.get(schema.META_SKIPPED)
        return set() if raw is None else set(unpack(raw))

    def snapshot_records(self) -> Iterator[tuple[str, Any, Any]]:
        """The snapshot's records, in restore order."""
        with self.db.snapshot() as snap, snap.iterator() as items:
            yield from schema.iter_records(items)

    def log_entries(self, after: int) -> Iterator[tuple[int, int, int, Any]]:
        """(index, term, time, command) of every entry after `after`, in order."""
        start = schema.log_key(after + 1)
        with self.db.iterator(start=start, stop=schema.LOG_END) as items:
            for key, raw in items:
                term, time, command = decode_entry(raw)
                yield schema.log_index(key), term, time, command

    def last_index(self) -> int:
        with self.db.iterator(prefix=schema.LOG_PREFIX, reverse=True, include_value=False) as it:
            key = next(it, None)
        return self.snapshot_index() if key is None else schema.log_index(key)

    # -- writing -------------------------------------------------------------------------

    def write(self, ops: list[Op], sync: bool) -> None:
        """One atomic batch; with `sync` it and everything written before are on disk."""
        with self.db.write_batch(sync=sync) as batch:
            for key, value in ops:
                if value is None:
                    batch.delete(key)
                else:
                    batch.put(key, value)

    def close(self) -> None:
        self.db.close()
