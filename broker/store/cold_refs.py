"""Which log entries cold messages still use, for deciding which log batches may go.

In-memory messages count their entries in StateMachine.entry_refs. Cold ones do not: a
count per message of a deep backlog would cost more memory than the packed entry itself. Their
chunks answer instead, each by its span of log indexes; this index over the spans of every
chunk is built once per check (a snapshot, a recovery).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable

from broker.core.cold import ColdChunk


class ColdRefs:
    def __init__(self, chunks: Iterable[ColdChunk]) -> None:
        spans = sorted(
            ((chunk.low, chunk.high, chunk) for chunk in chunks if chunk.low and len(chunk)),
            key=lambda span: span[0],
        )
        self._lows = [low for low, _, _ in spans]
        self._chunks = [chunk for _, _, chunk in spans]
        #: the highest index any chunk up to this one reaches
        self._reach: list[int] = []
        reach = 0
        for _, high, _ in spans:
            reach = max(reach, high)
            self._reach.append(reach)

    def refer(self, first: int, last: int) -> bool:
        """Whether a cold message uses an entry in first..last."""
        i = bisect_right(self._lows, last) - 1
        while i >= 0 and self._reach[i] >= first:
            if self._chunks[i].refers(first, last):
                return True
            i -= 1
        return False
