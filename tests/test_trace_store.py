"""The node's message trace store: ids joined across steps, queries, pruning."""

from __future__ import annotations

from typing import Any

from broker.trace_log.store import TraceStore


def step(event: str, time: int, queue: str = "", seq: int = 0, **detail: Any) -> dict[str, Any]:
    return {"event": event, "vhost": "/", "queue": queue, "seq": seq, "time": time, **detail}


def test_steps_join_the_publish_and_follow_dead_lettering(tmp_path) -> None:
    store = TraceStore(str(tmp_path / "trace"))
    store.write(
        [
            step("published", 10, id="5.0", routed=[["q", 1], ["r", 7]], message_id="m"),
            step("delivered", 11, "q", 1),
        ]
    )
    store.write([step("rejected", 12, "q", 1, dead_lettered=[["dead", 3]])])
    store.write([step("delivered", 13, "dead", 3), step("acked", 14, "dead", 3)])
    events = [(s["event"], s["queue"]) for s in store.by_id("5.0")]
    assert events == [
        ("published", ""),
        ("delivered", "q"),
        ("rejected", "q"),
        ("delivered", "dead"),
        ("acked", "dead"),
    ]
    assert store.by_id("m") == store.by_id("5.0")
    assert [s["event"] for s in store.by_queue("/", "r")] == ["published"]
    assert [s["time"] for s in store.by_queue("/", "q", since=11, until=12)] == [11, 12]
    assert store.by_id("nothing") == []
    store.close()


def test_numbering_goes_on_after_a_reopen_and_pruning_forgets_old_steps(tmp_path) -> None:
    path = str(tmp_path / "trace")
    store = TraceStore(path)
    store.write([step("published", 10, id="1.0", routed=[["q", 1]])])
    store.close()
    store = TraceStore(path)
    store.write([step("published", 10, id="2.0", routed=[["q", 2]])])
    assert len(store.by_queue("/", "q")) == 2
    store.write([step("published", 50, id="3.0", routed=[["q", 3]])])
    assert store.prune(before=20) == 2
    assert [s["id"] for s in store.by_queue("/", "q")] == ["3.0"]
    assert store.by_id("1.0") == []
    assert list(store.db.iterator(prefix=b"S")) != []  # the live one's id is kept
    store.close()
