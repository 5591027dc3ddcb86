"""Why a node refuses its data dir, and what `--repair` lost: one line each, for the operator.

LevelDB checks what it reads only when asked. The databases are opened with paranoid checks, so
a damaged write-ahead log stops the open instead of being skipped, and every read verifies the
block checksums. LevelDB's error does not say which file is damaged; its info log (`LOG` in the
database's directory) does, so the refusal quotes that.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import plyvel

REMEDY = (
    "restore the data dir from a backup, or start once with `broker serve --repair`, which "
    "keeps what is intact and reports what is lost (a cluster member: move its data dir away "
    "and start it empty, to be sent a snapshot)"
)


class StoreUnusable(Exception):
    """The node cannot start on its data dir (the message is the whole explanation)."""


class StoreDamaged(StoreUnusable):
    """The data dir lost or garbled data it had acknowledged."""


def unusable(data_dir: str, exc: BaseException) -> StoreUnusable:
    """An I/O failure opening the data dir (missing, read-only, in use) as one line."""
    if isinstance(exc, OSError) and not isinstance(exc, plyvel.Error):
        reason = f"{exc.filename or data_dir}: {exc.strerror or exc}"
    else:
        reason = _text(exc)
    if "lock" in reason.lower() and "unavailable" in reason.lower():
        reason += " (another broker is using this data dir)"
    return StoreUnusable(f"cannot use the data dir {data_dir}: {reason}")


def damaged_on_open(db_path: str, exc: BaseException) -> StoreDamaged:
    """LevelDB refused to open `db_path`: name the file its info log blames."""
    dropped = dropped_records(db_path)
    where = "; ".join(dropped) if dropped else f"{db_path}: {_text(exc)}"
    return StoreDamaged(f"the store is damaged ({where}); nothing was changed: {REMEDY}")


def damaged_on_read(data_dir: str, exc: BaseException) -> StoreDamaged:
    """A checksum failed reading a table file in `data_dir` (a repair cannot restore those)."""
    return StoreDamaged(
        f"the store is damaged: a table file in {data_dir} fails its checksum ({_text(exc)}); "
        "restore the data dir from a backup (--repair keeps only what a damaged write-ahead "
        "log leaves intact, not damaged tables)"
    )


def dropped_records(db_path: str) -> list[str]:
    """What LevelDB's info log of the last open says it found damaged or dropped, e.g.
    `data/log/000003.log: dropping 18359 bytes; Corruption: checksum mismatch`."""
    try:
        with open(os.path.join(db_path, "LOG"), encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    # Each line is "<date> <thread id> <message>"; LevelDB marks what it let pass.
    messages = (line.split(" ", 2)[-1].removeprefix("(ignoring error) ") for line in lines)
    return [m for m in messages if ": dropping " in m]


def disk_full(exc: BaseException) -> bool:
    """Whether an error opening or writing the store says the disk is full (plyvel gives
    LevelDB's message only)."""
    return getattr(exc, "errno", None) == errno.ENOSPC or "No space left" in str(exc)


def _text(exc: BaseException) -> str:
    arg = exc.args[0] if exc.args else exc
    return arg.decode(errors="replace") if isinstance(arg, bytes) else str(arg)


@dataclass
class Damage:
    """What a repaired start found missing."""

    #: the confirmed mark: every entry up to it had been acknowledged as on disk
    mark: int = 0
    #: ranges (first, last) of log entries missing after the snapshot
    missing: list[tuple[int, int]] = field(default_factory=list)
    #: stored messages dropped because the log entry holding their body is missing
    lost_messages: int = 0
    #: what LevelDB dropped reading its write-ahead logs (see dropped_records)
    dropped: list[str] = field(default_factory=list)

    def add_missing(self, first: int, last: int) -> None:
        if first <= last:
            self.missing.append((first, last))

    @property
    def confirmed_lost(self) -> int:
        """Missing entries at or below the mark: commands whose reply promised durability
        (publisher confirms, PUBACKs, HTTP answers) may be among them."""
        return sum(max(0, min(last, self.mark) - first + 1) for first, last in self.missing)

    def report(self) -> list[str]:
        """One line per finding, for the log."""
        lines = [f"LevelDB read its write-ahead log: {line}" for line in self.dropped]
        ranges = ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in self.missing)
        if self.missing:
            total = sum(last - first + 1 for first, last in self.missing)
            lines.append(
                f"{total} log entries are missing ({ranges}), {self.confirmed_lost} of them "
                f"at or below the confirmed mark {self.mark}: what they did (publishes, "
                "acknowledgements, declarations) is lost"
            )
        if self.lost_messages:
            lines.append(
                f"{self.lost_messages} stored messages whose body was in a missing log entry "
                "were dropped"
            )
        if not (self.missing or self.lost_messages):
            lines.append(f"nothing is missing: all that was confirmed (up to {self.mark}) is kept")
        return lines


@contextlib.contextmanager
def reads_checked(data_dir: str) -> Iterator[None]:
    """A block of the store that fails its checksum while this reads refuses the start."""
    try:
        yield
    except plyvel.CorruptionError as exc:
        raise damaged_on_read(data_dir, exc) from None
