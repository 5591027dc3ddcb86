"""The Prometheus text exposition format (version 0.0.4), written by hand.

The format is small (a HELP and a TYPE line per family, then `name{labels} value` lines), and
writing it here keeps the runtime free of a dependency whose registry and collectors would
add nothing: the node reads its counters on each scrape anyway. The tests parse what this
writes with prometheus_client's parser.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from broker.histogram import Histogram

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Labels = Mapping[str, str]
KINDS = ("counter", "gauge", "histogram", "untyped")


class Exposition:
    """Families added one by one; `text()` is the page."""

    def __init__(self) -> None:
        self._lines: list[str] = []

    def family(
        self, name: str, kind: str, help_text: str, samples: Iterable[tuple[Labels, float]]
    ) -> None:
        """A counter or gauge: `samples` are (labels, value); counters' names end in _total."""
        if kind not in KINDS or kind == "histogram":
            raise ValueError(f"{kind!r} is not a simple metric kind")
        self._head(name, kind, help_text)
        for labels, value in samples:
            self._lines.append(f"{name}{_labels(labels)} {_value(value)}")

    def value(self, name: str, kind: str, help_text: str, value: float) -> None:
        """A family of one unlabelled sample."""
        self.family(name, kind, help_text, [({}, value)])

    def histogram(
        self, name: str, help_text: str, series: Iterable[tuple[Labels, Histogram]]
    ) -> None:
        self._head(name, "histogram", help_text)
        for labels, hist in series:
            for bound, count in hist.buckets():
                le = {**labels, "le": _value(bound)}
                self._lines.append(f"{name}_bucket{_labels(le)} {count}")
            self._lines.append(f"{name}_sum{_labels(labels)} {_value(hist.sum)}")
            self._lines.append(f"{name}_count{_labels(labels)} {hist.count}")

    def _head(self, name: str, kind: str, help_text: str) -> None:
        self._lines.append(f"# HELP {name} {_escape_help(help_text)}")
        self._lines.append(f"# TYPE {name} {kind}")

    def text(self) -> str:
        return "\n".join(self._lines) + "\n"


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{key}="{_escape_label(value)}"' for key, value in labels.items())
    return "{" + inner + "}"


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _value(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(float(value))
