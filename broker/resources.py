"""What the process uses of the machine: the resource alarms and the management API read it."""

from __future__ import annotations

import os


def rss_bytes() -> int:
    """The process's resident memory, 0 where /proc does not tell."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def total_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (OSError, ValueError):
        return 1 << 34


def memory_limit(high_watermark: int) -> int:
    """The memory alarm's threshold: the configured one, or 40% of RAM."""
    return high_watermark or int(0.4 * total_memory())


def open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0
