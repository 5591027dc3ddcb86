"""Where a node keeps message trace: its own LevelDB beside the state, queried by message id
or by queue and time, and pruned past the retention period.

Trace is a record of what happened, not state: each node writes what its state machine
traced (every replica traces alike) without syncing, so a crash of the machine (not of the
process) may lose the last moments of it. Keys:

- `E` + time + number: one step, as a msgpack map (see TraceRecorder for its fields);
- `I` + id + time + number: the steps of one message, by its trace id (the log position of
  its publish, "index.position") and by its message_id property when it had one;
- `Q` + vhost + queue + time + number: the steps that concern a queue;
- `S` + vhost + queue + seq: the trace id of the message stored there, so the steps after the
  publish (which the state machine knows by queue and sequence number) join the publish's.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Any

import plyvel

from broker.store.encoding import pack, unpack

_TIME = struct.Struct(">QQ")
_SEQ = struct.Struct(">Q")
_LEN = struct.Struct(">H")
#: the latest time a key can hold (a query past it means "until the end")
_LAST_TIME = 2**64 - 2
#: steps that end a message's life in a queue: its id is no longer needed there
_FINAL = frozenset(("rejected", "expired", "maxlen", "delivery-limit"))


def _text(*parts: str) -> bytes:
    out = bytearray()
    for part in parts:
        raw = part.encode()[:65535]
        out += _LEN.pack(len(raw)) + raw
    return bytes(out)


#: ids of recent locations kept in memory, so that most steps need no read to find theirs
IDS_KEPT = 100_000
#: queue keys kept encoded
PLACES_KEPT = 10_000


class TraceStore:
    def __init__(self, path: str) -> None:
        self.db = plyvel.DB(path, create_if_missing=True)
        self._number = 0
        last = next(self.db.iterator(prefix=b"E", reverse=True, include_value=False), None)
        if last is not None:
            self._number = _TIME.unpack(last[1:])[1]
        self._places: dict[tuple[str, str], bytes] = {}
        self._ids: dict[bytes, str | None] = {}

    def close(self) -> None:
        self.db.close()

    # -- writing -------------------------------------------------------------------------

    def write(self, steps: Iterable[dict[str, Any]]) -> None:
        """Store steps (in the order they happened), giving each its message's trace id."""
        if len(self._ids) > IDS_KEPT:
            self._ids.clear()
        with self.db.write_batch() as batch:
            for step in steps:
                self._number += 1
                stamp = _TIME.pack(step["time"], self._number)
                vhost = step["vhost"]
                if step["event"] == "published":
                    trace_id = step["id"]
                    places = [self._place(vhost, queue) for queue, _ in step["routed"]]
                    for place, (_, seq) in zip(places, step["routed"], strict=True):
                        self._locate(batch, b"S" + place + _SEQ.pack(seq), trace_id, step["time"])
                    names = [trace_id, step.get("message_id")]
                else:
                    place = self._place(vhost, step["queue"])
                    places = [place]
                    location = b"S" + place + _SEQ.pack(step["seq"])
                    trace_id = self._id_of(location)
                    names = [trace_id]
                    if trace_id is not None:
                        step["id"] = trace_id
                        for queue, seq in step.get("dead_lettered", ()):
                            key = b"S" + self._place(vhost, queue) + _SEQ.pack(seq)
                            self._locate(batch, key, trace_id, step["time"])
                    if step["event"] in _FINAL or step.get("no_ack"):
                        self._ids.pop(location, None)
                        batch.delete(location)
                batch.put(b"E" + stamp, pack(step))
                for name in names:
                    if isinstance(name, str) and name:
                        batch.put(b"I" + _text(name) + stamp, b"")
                for place in places:
                    batch.put(b"Q" + place + stamp, b"")

    def _place(self, vhost: str, queue: str) -> bytes:
        place = self._places.get((vhost, queue))
        if place is None:
            if len(self._places) > PLACES_KEPT:
                self._places.clear()
            place = self._places[(vhost, queue)] = _text(vhost, queue)
        return place

    def _locate(self, batch: Any, location: bytes, trace_id: str, time: int) -> None:
        self._ids[location] = trace_id
        batch.put(location, pack([trace_id, time]))

    def _id_of(self, location: bytes) -> str | None:
        if location in self._ids:
            return self._ids[location]
        raw = self.db.get(location)
        return None if raw is None else unpack(raw)[0]

    def prune(self, before: int) -> int:
        """Forget the steps that happened before `before` (ms); returns how many."""
        gone = 0
        with self.db.write_batch() as batch:
            for key, raw in self.db.iterator(start=b"E", stop=b"E" + _TIME.pack(before, 0)):
                step = unpack(raw)
                stamp = key[1:]
                batch.delete(key)
                for name in (step.get("id"), step.get("message_id")):
                    if isinstance(name, str) and name:
                        batch.delete(b"I" + _text(name) + stamp)
                routed = step.get("routed") or [[step["queue"], 0]]
                for queue, _ in routed:
                    batch.delete(b"Q" + _text(step["vhost"], queue) + stamp)
                gone += 1
            for key, raw in self.db.iterator(prefix=b"S"):
                if unpack(raw)[1] < before:
                    batch.delete(key)
        return gone

    # -- reading -------------------------------------------------------------------------

    def by_id(self, trace_id: str, limit: int = 1000) -> list[dict[str, Any]]:
        """The steps of one message by its trace id, oldest first; by a message_id property,
        those of every message that had it."""
        steps = self._steps(self._stamps(trace_id, limit))
        ids = {s["id"] for s in steps if s["event"] == "published"} - {trace_id}
        if not ids:
            return steps
        stamps = sorted({s for name in ids for s in self._stamps(name, limit)})
        return self._steps(stamps[:limit])

    def _stamps(self, name: str, limit: int) -> list[bytes]:
        prefix = b"I" + _text(name)
        keys = self.db.iterator(prefix=prefix, include_value=False)
        return [key[len(prefix) :] for key, _ in zip(keys, range(limit), strict=False)]

    def by_queue(
        self, vhost: str, queue: str, since: int = 0, until: int | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        """The steps that concern a queue between two times (ms, both included), oldest
        first."""
        prefix = b"Q" + _text(vhost, queue)
        since = min(max(since, 0), _LAST_TIME)
        stop = prefix + (
            _TIME.pack(min(until, _LAST_TIME) + 1, 0) if until is not None else b"\xff" * 16
        )
        stamps = []
        for key in self.db.iterator(
            start=prefix + _TIME.pack(since, 0), stop=stop, include_value=False
        ):
            stamps.append(key[len(prefix) :])
            if len(stamps) >= limit:
                break
        return self._steps(stamps)

    def _steps(self, stamps: list[bytes]) -> list[dict[str, Any]]:
        out = []
        for stamp in stamps:
            raw = self.db.get(b"E" + stamp)
            if raw is not None:
                out.append(unpack(raw))
        return out
