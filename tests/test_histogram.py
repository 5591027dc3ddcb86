"""The commit path's histograms: cumulative buckets as Prometheus reads them."""

from __future__ import annotations

from broker.histogram import CommitMetrics, Histogram


def test_buckets_are_cumulative_and_end_with_inf() -> None:
    hist = Histogram((1, 2, 4))
    for value in (0.5, 1, 1.5, 3, 100):
        hist.observe(value)
    # An observation equal to a bound belongs to that bound's bucket (le: less or equal).
    assert hist.buckets() == [(1, 2), (2, 3), (4, 4), (float("inf"), 5)]
    assert (hist.count, hist.sum) == (5, 106.0)


def test_commit_metrics_count_fsyncs_and_batches_with_entries() -> None:
    metrics = CommitMetrics()
    metrics.written(3, 1.0, 1.002, synced=True)
    metrics.written(0, 2.0, 2.001, synced=True)  # a sync alone: no batch
    metrics.written(1, 3.0, 3.0001, synced=False)
    assert metrics.fsyncs == 2
    assert (metrics.batch_sizes.count, metrics.batch_sizes.sum) == (2, 4)
    assert metrics.latency.count == 3
    assert abs(metrics.latency.sum - 0.0031) < 1e-9
