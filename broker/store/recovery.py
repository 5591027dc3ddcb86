"""Rebuilding the state machine from the store: the snapshot, then the log after it.

Used at start-up, and when a command failed half-way through its application (the state is
rebuilt without it). The entries skipped that way are stored (META_SKIPPED), so a failure that
does not happen again at replay still leaves the entry out; an entry that fails half-way
during the replay is skipped too and the replay starts over.

Recovery also checks that nothing is missing: the log must run without a gap from the
snapshot on, and reach the confirmed mark (mark.py), the last entry a client was told is on
disk. Otherwise the store was damaged and the start is refused, unless the store was opened
to repair it: then what is missing is recorded in `store.damage` and the rest recovered.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from broker.core.commands import Meta
from broker.core.state import StateMachine
from broker.store.applier import Applier
from broker.store.cold_refs import ColdRefs
from broker.store.damage import REMEDY, StoreDamaged, reads_checked
from broker.store.disk import Store

log = logging.getLogger(__name__)


@dataclass
class Recovered:
    state: StateMachine
    #: the entries left out (stored as skipped, or failing again now)
    skipped: set[int]
    #: the index the snapshot is at, and the last entry replayed after it
    snapshot_index: int
    last_index: int
    #: what the replayed entries changed since the snapshot
    dirty: dict[tuple[str, Any], Any]
    #: per queue, its next sequence number as the snapshot has it (see Committer.stored_seq)
    stored_seq: dict[int, int]
    #: the log's batches on disk, and those behind the snapshot that no message uses (left
    #: by a crash), to delete
    batches: list[tuple[int, int]]
    garbage: list[tuple[int, int]]
    entries: int


class _EntryFailed(Exception):
    def __init__(self, index: int) -> None:
        super().__init__(index)
        self.index = index


def recover(store: Store, skip: set[int] | None = None, upto: int | None = None) -> Recovered:
    """The state as of the end of the log (or `upto`), leaving out the entries in `skip`."""
    with reads_checked(store.path):
        skipped = store.skipped() | set(skip or ())
        while True:
            try:
                return _replay(store, skipped, upto)
            except _EntryFailed as failed:
                log.error("log entry %d fails half-way; it is left out", failed.index)
                skipped.add(failed.index)


def rebuild(applier: Applier, store: Store, index: int) -> None:
    """Give `applier` the state rebuilt without entry `index`, which failed half-way."""
    recovered = recover(store, skip=applier.skipped | {index}, upto=index - 1)
    applier.rebuilt(recovered.state, recovered.dirty, recovered.stored_seq)


def _replay(store: Store, skip: set[int], upto: int | None) -> Recovered:
    state = StateMachine()
    state.entries = store.entry_reader()
    dirty: dict[tuple[str, Any], Any] = {}
    damage = store.damage
    damage.missing, damage.lost_messages = [], 0

    def bodiless(key: Any) -> None:
        """(repairing) A stored message whose body is gone: out of the state and the store."""
        dirty["message", key] = None
        damage.lost_messages += 1

    store.load_snapshot(state, bodiless if store.repair else None)
    snapshot_index = last = store.snapshot_index()
    # What the snapshot on disk refers to: its batches stay until a later snapshot lets go of
    # them, whatever the entries replayed after it remove (a crash before then reloads it).
    batches = store.log_batches()
    refs, cold = state.entry_refs, ColdRefs(state.cold_chunks())
    garbage = [
        (first, end)
        for first, end in batches
        if end <= snapshot_index
        and refs.keys().isdisjoint(range(first, end + 1))
        and not cold.refer(first, end)
    ]
    stored_seq = {qid: q.next_seq for qid, q in state.queues_by_qid.items()}
    entries = 0
    for index, (_term, time, command, key, floor) in store.log_entries(snapshot_index):
        if upto is not None and index > upto:
            break
        if index != last + 1:
            _missing(store, last + 1, index - 1, "although later ones are there")
        last = index
        if index in skip or command is None:
            continue
        try:
            _, _, _, changes = state.apply(command, Meta(index, time, key, floor))
        except Exception as exc:
            log.debug("replaying entry %d failed: %r", index, exc)
            raise _EntryFailed(index) from exc
        dirty.update(changes)
        entries += 1
    log_end, mark = store.last_index(), store.mark
    if log_end < mark.index:
        why = f"which were confirmed to clients (the log ends at {log_end})"
        _missing(store, log_end + 1, mark.index, why)
    _check_vote(store)
    return Recovered(
        state, skip, snapshot_index, last, dirty, stored_seq, batches, garbage, entries
    )


def _check_vote(store: Store) -> None:
    """A cluster member's Raft term and vote must be those it synced last: one that lost its
    vote could vote again in the same term (and two leaders be elected)."""
    mark, hard = store.mark, store.raft_state()
    term, vote = (hard[0], hard[1]) if hard is not None else (0, 0)
    if term < mark.term or (term == mark.term and mark.vote and vote != mark.vote):
        raise StoreDamaged(
            f"the store is damaged: Raft's term and vote in {store.path} are {term}/{vote}, "
            f"older than the {mark.term}/{mark.vote} synced before; its write-ahead log was "
            f"truncated or damaged: {REMEDY}"
        )


def _missing(store: Store, first: int, last: int, why: str) -> None:
    """Entries `first`..`last` are not in the log: refused, or noted when repairing."""
    if store.repair:
        store.damage.add_missing(first, last)
        return
    files = ", ".join(store.wal_files) or "its write-ahead log"
    raise StoreDamaged(
        f"the store is damaged: log entries {first}-{last} are missing from {store.path}, "
        f"{why}; its write-ahead log ({files}) was truncated or damaged: {REMEDY}"
    )
