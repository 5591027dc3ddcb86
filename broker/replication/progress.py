"""What a leader knows of each follower's log, and how fast it may send to it.

    probe ──(an append accepted)──► replicate ──(a reject, or the link lost)──► probe
      │ ▲                                                                        │
      ▼ └──(the snapshot sent, or an append accepted past it)── snapshot ◄──────┘
          (the entries it needs are compacted away)

- probe: the leader does not know where the follower's log matches its own; one append at a
  time, then it waits for the answer (or the next heartbeat) before the next.
- replicate: the logs match up to `match`; appends stream out optimistically from `next`, up
  to `max_inflight` unanswered at once.
- snapshot: the follower needs entries the leader no longer has; nothing is sent but
  heartbeats until the snapshot transfer ends.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum


class ProgressState(StrEnum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


@dataclass(slots=True)
class Progress:
    #: the follower's log is known to match the leader's up to here
    match: int = 0
    #: the next entry to send
    next: int = 1
    state: ProgressState = ProgressState.PROBE
    #: probe: an append is out and nothing more goes until it is answered or a heartbeat is due
    probe_sent: bool = False
    #: replicate: the last index of each append in flight, oldest first
    inflight: deque[int] = field(default_factory=deque)
    #: snapshot: the one being sent
    snapshot_index: int = 0
    snapshot_term: int = 0
    #: heard from since the leader last checked its quorum
    recent_active: bool = False

    def become_probe(self) -> None:
        if self.state is ProgressState.SNAPSHOT:
            self.next = max(self.match + 1, self.snapshot_index + 1)
        else:
            self.next = self.match + 1
        self._enter(ProgressState.PROBE)

    def become_replicate(self) -> None:
        self.next = self.match + 1
        self._enter(ProgressState.REPLICATE)

    def become_snapshot(self, index: int, term: int) -> None:
        self._enter(ProgressState.SNAPSHOT)
        self.snapshot_index, self.snapshot_term = index, term

    def _enter(self, state: ProgressState) -> None:
        self.state = state
        self.probe_sent = False
        self.inflight.clear()
        self.snapshot_index = self.snapshot_term = 0

    def paused(self, max_inflight: int) -> bool:
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.REPLICATE:
            return len(self.inflight) >= max_inflight
        return True

    def sent(self, last_index: int) -> None:
        """An append carrying entries up to `last_index` (or none, if it is next-1) went out."""
        if self.state is ProgressState.REPLICATE:
            if last_index >= self.next:
                self.next = last_index + 1
                self.inflight.append(last_index)
        else:
            self.probe_sent = True

    def acknowledged(self, index: int) -> bool:
        """The follower matches up to `index`. Did that teach us anything?"""
        while self.inflight and self.inflight[0] <= index:
            self.inflight.popleft()
        if index <= self.match:
            return False
        self.match = index
        self.next = max(self.next, index + 1)
        return True

    def rejected(self, rejected: int, hint: int) -> bool:
        """The follower refused an append whose prev_index was `rejected`; it suggests `hint`
        as the last index that may match. Back off; False if the answer is stale."""
        if hint < self.match:
            # The follower holds less than it once acknowledged: it lost its log (restarted
            # from an empty data dir). Start again from what it has.
            self.become_probe()
            self.match = hint
            self.next = hint + 1
            return True
        if self.state is ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.become_probe()
        elif self.state is ProgressState.SNAPSHOT or rejected != self.next - 1:
            return False
        self.next = max(min(rejected, hint + 1), self.match + 1)
        self.probe_sent = False
        return True
