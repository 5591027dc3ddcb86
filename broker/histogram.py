"""A cumulative histogram as Prometheus exposes one: count, sum and counts per upper bound.

Kept by the commit path for each write (batch sizes, commit latency), so `observe` must cost
next to nothing: a bisect and two additions; the cumulative counts are only made when read.
"""

from __future__ import annotations

from bisect import bisect_left

#: commit latency bounds, seconds (a sync on a fast disk takes 0.1-2 ms, on a slow one 10+)
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
#: log entries per write
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Histogram:
    __slots__ = ("bounds", "_counts", "count", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        #: observations per bucket (not cumulative); the last is the one above every bound
        self._counts = [0] * (len(bounds) + 1)
        self.count = 0
        self.sum: float = 0

    def observe(self, value: float) -> None:
        self._counts[bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.sum += value

    def buckets(self) -> list[tuple[float, int]]:
        """(upper bound, observations at or below it), cumulative, ending with +Inf."""
        out = []
        total = 0
        for bound, n in zip((*self.bounds, float("inf")), self._counts, strict=True):
            total += n
            out.append((bound, total))
        return out


class CommitMetrics:
    """What the commit path measures of its log writes (exposed by broker.metrics_http)."""

    __slots__ = ("fsyncs", "batch_sizes", "latency")

    def __init__(self) -> None:
        #: syncs of the log to disk (each an fsync)
        self.fsyncs = 0
        #: log entries per write that held any
        self.batch_sizes = Histogram(BATCH_BUCKETS)
        #: seconds from a write being started to it being done, with its sync if it had one
        self.latency = Histogram(LATENCY_BUCKETS)

    def written(self, entries: int, started: float, ended: float, synced: bool) -> None:
        if entries:
            self.batch_sizes.observe(entries)
        self.latency.observe(ended - started)
        if synced:
            self.fsyncs += 1
