"""A small disk the tests can fill: a tmpfs mounted for one test (root with CAP_SYS_ADMIN)."""

from __future__ import annotations

import contextlib
import errno
import os
import pathlib
import subprocess
from collections.abc import Iterator

import pytest


@contextlib.contextmanager
def small_disk(path: pathlib.Path, size: str) -> Iterator[pathlib.Path]:
    """A tmpfs of `size` (e.g. "64m") mounted at `path`; the test skips where it cannot be."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
            check=True,
            capture_output=True,
            text=True,
        )
    except (OSError, subprocess.CalledProcessError) as e:
        detail = getattr(e, "stderr", "") or str(e)
        pytest.skip(f"cannot mount a tmpfs to fill (needs root with CAP_SYS_ADMIN): {detail}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


def fill(disk: pathlib.Path) -> pathlib.Path:
    """Write a file until the disk refuses more; delete it to give the space back."""
    filler = disk / "filler"
    n = 0
    while filler.exists():
        n += 1
        filler = disk / f"filler{n}"
    chunk = b"\0" * (1 << 16)
    with open(filler, "wb", buffering=0) as f:
        while True:
            try:
                f.write(chunk)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                break
    # The last pages too: byte by byte writes fill what a chunk could not.
    with open(filler, "ab", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 512)
    assert os.statvfs(disk).f_bavail == 0
    return filler
