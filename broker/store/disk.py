"""The node's two LevelDB databases, in its data dir (see schema for what is in them).

- `leveldb/`: the state, as of the last snapshot: its records and meta values;
- `log/`: the log, in batches of entries.

Two databases, so that writing a snapshot never makes an append to the log wait (LevelDB
writes one batch at a time). Only the commit driver writes; reads happen at start-up and
when the state has to be rebuilt.

Both are opened with LevelDB's paranoid checks, and every read verifies block checksums: a
damaged file stops the start (damage.py says why and what to do) rather than being skipped.
With `repair`, the write-ahead logs are read as LevelDB recovers them by default: records
whose checksum fails are dropped (never let in), and recovery reports what is missing. Beside
them, the confirmed mark (mark.py) says how far the log must reach.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from typing import Any

import plyvel

from broker.core.state import StateMachine
from broker.store import schema
from broker.store.damage import (
    Damage,
    damaged_on_open,
    disk_full,
    dropped_records,
    reads_checked,
    unusable,
)
from broker.store.encoding import StoredEntry, pack, unpack
from broker.store.mark import ConfirmedMark

Op = tuple[bytes, bytes | None]

STATE_DIR = "leveldb"
#: space set aside, given up when the disk is full (see Store.make_reserve)
RESERVE_FILE = "reserve"
LOG_DIR = "log"
#: where a snapshot received from a cluster's leader is put together before it replaces both
INCOMING_DIR = "incoming"
READY_MARKER = "complete"

_FORMAT1_HELP = (
    "the data dir {path} was written by broker 0.1 (store format 1), which this release "
    "(store format {version}) does not read. Convert it once with "
    "`python scripts/migrate_format1.py {path}` from this release's source tree (it keeps "
    "the old database next to the new one), or start on an empty data dir."
)


class Store:
    def __init__(self, data_dir: str, repair: bool = False) -> None:
        self.path = data_dir
        self.repair = repair
        #: what a repaired open found (recovery adds what the log lacks)
        self.damage = Damage()
        #: the log's write-ahead log files as found (LevelDB replaces them once it recovers)
        self.wal_files: list[str] = []
        state_path, log_path = (os.path.join(data_dir, name) for name in (STATE_DIR, LOG_DIR))
        try:
            os.makedirs(data_dir, exist_ok=True)
            _finish_install(data_dir)
            self.mark = ConfirmedMark(data_dir)
            if os.path.isdir(log_path):
                wal = sorted(f for f in os.listdir(log_path) if f.endswith(".log"))
                self.wal_files = [os.path.join(log_path, f) for f in wal]
        except OSError as exc:
            raise unusable(data_dir, exc) from None
        self.damage.mark = self.mark.index
        try:
            self.state_db = _open(state_path, data_dir, legacy=True, repair=repair)
            try:
                self.log_db = _open(log_path, data_dir, legacy=False, repair=repair)
                _mark_batches(self.log_db, data_dir)
            except BaseException:
                self.state_db.close()
                raise
        except BaseException:
            self.mark.close()
            raise
        if repair:
            self.damage.dropped = dropped_records(state_path) + dropped_records(log_path)

    # -- the state -----------------------------------------------------------------------

    def snapshot_index(self) -> int:
        raw = self.state_db.get(schema.META_SNAPSHOT, verify_checksums=True)
        return 0 if raw is None else int(unpack(raw))

    def skipped(self) -> set[int]:
        """Log entries the state leaves out (they failed half-way when first applied)."""
        raw = self.state_db.get(schema.META_SKIPPED, verify_checksums=True)
        return set() if raw is None else set(unpack(raw))

    def load_snapshot(self, state: StateMachine, bodiless: Callable[[Any], None] | None) -> None:
        """Restore the stored snapshot into `state`, message bodies read from the log (see
        schema.restore for `bodiless`)."""
        with (
            self.state_db.snapshot() as snap,
            self.log_db.snapshot() as log_snap,
            snap.iterator(verify_checksums=True) as items,
        ):
            batches = _BatchReader(log_snap)
            schema.restore(state, items, batches.command, bodiless)

    def entry_reader(self) -> Callable[[int], Any]:
        """The command of a log entry by index, read from the live log (the state machine's
        way back to the bodies of cold messages: their entries stay until none is left)."""
        return _BatchReader(self.log_db).command

    def write_state(self, ops: list[Op]) -> None:
        """One atomic, synced batch: a snapshot is on disk once this returns."""
        _write(self.state_db, ops, sync=True)

    # -- the log -------------------------------------------------------------------------

    def log_entries(self, after: int) -> Iterator[tuple[int, StoredEntry]]:
        """(index, (term, time, command, key, floor)) of every entry after `after`, in order."""
        start = schema.seek_key(after + 1)
        with self.log_db.iterator(start=start, stop=schema.LOG_END, verify_checksums=True) as items:
            for _, raw in items:
                first, entries = schema.decode_batch(raw)
                for index, entry in enumerate(entries, first):
                    if index > after:
                        yield index, entry

    def log_batches(self) -> list[tuple[int, int]]:
        """(first, last) of every stored batch of the log, in order (from their marks: the
        entries themselves are not read)."""
        with self.log_db.iterator(
            prefix=schema.MARK_PREFIX, include_value=False, verify_checksums=True
        ) as keys:
            return [schema.batch_range(key) for key in keys]

    def last_index(self) -> int:
        prefix = schema.LOG_PREFIX
        with self.log_db.iterator(
            prefix=prefix, reverse=True, include_value=False, verify_checksums=True
        ) as it:
            key = next(it, None)
        last = self.snapshot_index()
        return last if key is None else max(last, schema.batch_range(key)[1])

    def write_log(
        self,
        ops: list[Op],
        sync: bool,
        confirmed: int | None = None,
        term: int = 0,
        vote: int = 0,
    ) -> None:
        """One atomic batch; with `sync`, it and everything written before are on disk.
        `confirmed`: where the log ends once a synced write is done (with Raft's term and
        vote), for the confirmed mark (mark.py)."""
        ops = schema.with_marks(ops)
        if not sync or confirmed is None:
            _write(self.log_db, ops, sync)
            return
        if confirmed < self.mark.index:
            self.mark.lower(confirmed)
        _write(self.log_db, ops, sync)
        self.mark.synced(confirmed, term, vote)

    # -- in a cluster --------------------------------------------------------------------

    def raft_state(self) -> Any:
        """Raft's (term, vote, commit) as last written, or None."""
        raw = self.log_db.get(schema.META_RAFT, verify_checksums=True)
        return None if raw is None else unpack(raw)

    def raft_snapshot(self) -> Any:
        """(index, term, voters) of the snapshot the state is at, or None."""
        raw = self.state_db.get(schema.META_RAFT_SNAPSHOT, verify_checksums=True)
        return None if raw is None else unpack(raw)

    @contextlib.contextmanager
    def views(self) -> Iterator[tuple[Any, Any]]:
        """Read-only views of both databases, as they are now (for sending a snapshot)."""
        with self.state_db.snapshot() as state, self.log_db.snapshot() as log:
            yield state, log

    def install(self) -> None:
        """Replace both databases by those put together in INCOMING_DIR (a snapshot from the
        leader, complete and closed). A crash half-way is finished at the next start."""
        self.close()
        _write_marker(os.path.join(self.path, INCOMING_DIR, READY_MARKER))
        self.__init__(self.path)  # type: ignore[misc]

    def reopen_log(self) -> None:
        """Close and open the log again: after a failed write LevelDB's log file may end in a
        torn record, and what it appended after that would be lost at the next open. Opening
        writes out what the old log file holds (it needs that much free space)."""
        self.log_db.close()
        self.log_db = _open(os.path.join(self.path, LOG_DIR), self.path, legacy=False)

    def reopen_state(self) -> None:
        """The same for the state database, after a snapshot failed."""
        self.state_db.close()
        self.state_db = _open(os.path.join(self.path, STATE_DIR), self.path, legacy=True)

    # -- space set aside ------------------------------------------------------------------

    def make_reserve(self, size: int) -> bool:
        """Set `size` bytes of the disk aside in a file (allocated, not sparse), unless it is
        there already; False if the disk has not that much room."""
        path = os.path.join(self.path, RESERVE_FILE)
        if self.has_reserve(size):
            return True
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.posix_fallocate(fd, 0, size)
            finally:
                os.close(fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.remove(path)
            return False
        return True

    def has_reserve(self, size: int) -> bool:
        try:
            return os.path.getsize(os.path.join(self.path, RESERVE_FILE)) >= size
        except OSError:
            return False

    def release_reserve(self) -> bool:
        """Give the space set aside back to the disk; True if there was some."""
        return Store.release_reserve_of(self.path)

    @staticmethod
    def release_reserve_of(data_dir: str) -> bool:
        """The same for a store not open (it may not open for want of room)."""
        try:
            os.remove(os.path.join(data_dir, RESERVE_FILE))
        except FileNotFoundError:
            return False
        return True

    def close(self) -> None:
        self.log_db.close()
        self.state_db.close()
        self.mark.close()


def _finish_install(data_dir: str) -> None:
    """Move a complete incoming snapshot in (idempotent); drop an incomplete one."""
    incoming = os.path.join(data_dir, INCOMING_DIR)
    if not os.path.isdir(incoming):
        return
    if not os.path.exists(os.path.join(incoming, READY_MARKER)):
        shutil.rmtree(incoming)
        return
    replaced = os.path.join(data_dir, "replaced")
    os.makedirs(replaced, exist_ok=True)
    for name in (STATE_DIR, LOG_DIR):
        if os.path.isdir(os.path.join(incoming, name)):
            current = os.path.join(data_dir, name)
            if os.path.isdir(current):
                shutil.rmtree(os.path.join(replaced, name), ignore_errors=True)
                os.rename(current, os.path.join(replaced, name))
            os.rename(os.path.join(incoming, name), current)
    shutil.rmtree(incoming)
    shutil.rmtree(replaced)


def _write_marker(path: str) -> None:
    with open(path, "wb") as f:
        os.fsync(f.fileno())
    fd = os.open(os.path.dirname(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _open(path: str, data_dir: str, legacy: bool, repair: bool = False) -> Any:
    """Open one database: with paranoid checks, or not (`repair`: see the module doc)."""
    try:
        db = plyvel.DB(
            path, create_if_missing=True, paranoid_checks=not repair, write_buffer_size=64 << 20
        )
    except plyvel.CorruptionError as exc:
        raise damaged_on_open(path, exc) from None
    except (plyvel.Error, OSError) as exc:
        if disk_full(exc):
            raise  # as it is: whoever opens the store may wait for room
        raise unusable(data_dir, exc) from None
    try:
        with reads_checked(data_dir):
            _check_format(db, data_dir, legacy)
    except BaseException:
        db.close()
        raise
    return db


def _check_format(db: Any, data_dir: str, legacy: bool) -> None:
    raw = db.get(schema.META_FORMAT, verify_checksums=True)
    if raw is None:
        if next(db.iterator(include_value=False, verify_checksums=True), None) is not None:
            if legacy:
                text = _FORMAT1_HELP.format(path=data_dir, version=schema.FORMAT_VERSION)
            else:
                text = f"the data dir {data_dir} holds a log this release does not know"
            raise schema.FormatError(text)
        db.put(schema.META_FORMAT, pack(schema.FORMAT_VERSION), sync=True)
        return
    version = unpack(raw)
    if version != schema.FORMAT_VERSION:
        raise schema.FormatError(
            f"the data dir {data_dir} has store format {version}; this release reads "
            f"format {schema.FORMAT_VERSION} only"
        )


def _mark_batches(log_db: Any, data_dir: str) -> None:
    """Give every batch of a log written without marks (an older release, a snapshot
    received from a leader) its mark: read the whole log once, never again."""
    if log_db.get(schema.META_MARKS, verify_checksums=True) is not None:
        return
    with reads_checked(data_dir), log_db.write_batch(sync=True) as batch:
        with log_db.iterator(
            start=schema.LOG_PREFIX, stop=schema.LOG_END, include_value=False, verify_checksums=True
        ) as keys:
            for key in keys:
                batch.put(schema.MARK_PREFIX + key[1:], b"")
        batch.put(schema.META_MARKS, pack(1))


def _write(db: Any, ops: list[Op], sync: bool) -> None:
    with db.write_batch(sync=sync) as batch:
        for key, value in ops:
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)


class _BatchReader:
    """Commands of log entries by index, one batch decoded at a time (messages that refer to
    the log mostly come in the order they were published)."""

    def __init__(self, snap: Any) -> None:
        self.snap = snap
        self.first = self.last = 0
        self.commands: list[Any] = []

    def command(self, index: int) -> Any:
        if not self.first <= index <= self.last:
            with self.snap.iterator(
                start=schema.seek_key(index), stop=schema.LOG_END, verify_checksums=True
            ) as it:
                found = next(it, None)
            if found is None:
                return None
            self.first, entries = schema.decode_batch(found[1])
            self.last = self.first + len(entries) - 1
            self.commands = [entry[2] for entry in entries]
            if not self.first <= index <= self.last:
                return None
        return self.commands[index - self.first]
