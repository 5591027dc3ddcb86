"""A deterministic world for the Raft core: a fake clock, network and disk, all from one seed.

Each step of the world, in order:

    chaos     crashes and restarts, partitions and one-way cuts, compactions, membership
              changes, leadership transfers (all at random, from the seed)
    clients   propose unique payloads to the node they think leads
    network   deliver the messages due now (each had a random delay; some were dropped or
              duplicated on the way; a cut link drops what crosses it)
    clocks    each node ticks, at its own rate
    disks     a write that is done lands in storage; the host sends what waited for it,
              applies what is committed and advances; then it takes its next Ready

and then every safety property is checked (`Checker`). A crash loses the write in progress
and everything the node had in memory; storage (`MemStorage`) keeps what was written, less an
unsynced commit index. The host's state machine is the list of payloads it applied; a
snapshot is a copy of it. `World.settle` heals everything and checks that the cluster still
makes progress.
"""

from __future__ import annotations

import heapq
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from broker.replication.raft import (
    AppendEntries,
    AppendResponse,
    Entry,
    HardState,
    InstallSnapshot,
    Message,
    NotLeader,
    ProposalRefused,
    Raft,
    Ready,
    Role,
    SnapshotMeta,
    VoteResponse,
)

Voters = tuple[int, ...]


class SafetyViolation(AssertionError):
    """A Raft property does not hold: the world's seed reproduces it."""


class MemStorage:
    """raft.Storage in memory, with the host's writes. It survives crashes of its node."""

    def __init__(self, voters: Voters) -> None:
        self.initial_voters = voters
        self.hard = HardState()
        #: what a crash leaves of the hard state (a commit-only change is written unsynced)
        self.synced_hard = HardState()
        self.snap = SnapshotMeta(0, 0, voters)
        #: the state machine as of snap.index: the payloads applied, in order
        self.snap_data: tuple[Any, ...] = ()
        #: entries snap.index+1 .. last_index
        self.log: list[Entry] = []
        #: (index, voters) of the config entries in `log`
        self.configs: list[tuple[int, Voters]] = []

    # -- raft.Storage ----------------------------------------------------------------------

    def initial_state(self) -> tuple[HardState, Voters]:
        return self.hard, self.initial_voters

    def snapshot(self) -> SnapshotMeta:
        return self.snap

    def first_index(self) -> int:
        return self.snap.index + 1

    def last_index(self) -> int:
        return self.snap.index + len(self.log)

    def term(self, index: int) -> int:
        if index == self.snap.index:
            return self.snap.term
        if not self.snap.index < index <= self.last_index():
            raise IndexError(f"term({index}) outside {self.snap.index}..{self.last_index()}")
        return self.log[index - self.snap.index - 1].term

    def entries(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        if not self.snap.index < lo < hi <= self.last_index() + 1:
            raise IndexError(f"entries({lo}, {hi}) outside the log")
        out: list[Entry] = []
        size = 0
        for entry in self.log[lo - self.snap.index - 1 : hi - self.snap.index - 1]:
            if out and size + entry.size > max_bytes:
                break
            out.append(entry)
            size += entry.size
        return out

    # -- the host's side -------------------------------------------------------------------

    def entry(self, index: int) -> Entry | None:
        if self.snap.index < index <= self.last_index():
            return self.log[index - self.snap.index - 1]
        return None

    def holds(self, index: int, term: int) -> bool:
        """Is the entry (index, term) on disk, itself or inside the snapshot?"""
        if index <= self.snap.index:
            return True
        entry = self.entry(index)
        return entry is not None and entry.term == term

    def write(self, rd: Ready, snapshot_data: tuple[Any, ...] | None) -> None:
        """One atomic write of a Ready: snapshot, then entries, then hard state."""
        if rd.snapshot is not None:
            assert snapshot_data is not None
            self.snap, self.snap_data, self.log = rd.snapshot, snapshot_data, []
            self.configs = []
        if rd.entries:
            first = rd.entries[0].index
            assert self.snap.index < first <= self.last_index() + 1, "a gap in the log"
            del self.log[first - self.snap.index - 1 :]
            self.log.extend(rd.entries)
            self.configs = [c for c in self.configs if c[0] < first]
            self.configs += [(e.index, e.config) for e in rd.entries if e.config is not None]
        if rd.hard_state is not None:
            self.hard = rd.hard_state
        if rd.must_sync:
            self.synced_hard = self.hard

    def compact(self, index: int, data: tuple[Any, ...], config: Voters) -> None:
        term = self.term(index)
        del self.log[: index - self.snap.index]
        self.snap = SnapshotMeta(index, term, config)
        self.snap_data = data
        self.configs = [c for c in self.configs if c[0] > index]

    def config_before(self, index: int) -> Voters:
        """The voters in force just before `index`, as this disk says."""
        for at, voters in reversed(self.configs):
            if at < index:
                return voters
        return self.snap.config if self.snap.index else self.initial_voters

    def crash(self) -> None:
        self.hard = self.synced_hard


@dataclass
class Host:
    """A node: its storage (which survives a crash), and its Raft core and memory (which don't)."""

    id: int
    storage: MemStorage
    raft: Raft | None = None
    incarnation: int = 0
    #: the Ready being written, when the write is done, and the snapshot data it installs
    writing: tuple[Ready, int, tuple[Any, ...] | None] | None = None
    #: the state machine: payloads applied in order, up to `applied`
    state: list[Any] = field(default_factory=list)
    applied: int = 0
    #: voters as of `applied` (what a snapshot taken now records)
    config: Voters = ()
    #: snapshot data received from leaders, by index, until installed
    received: dict[int, tuple[Any, ...]] = field(default_factory=dict)
    tick_rate: float = 1.0
    down_until: int = 0
    last_commit: int = 0
    last_applied: int = 0


@dataclass(order=True)
class Envelope:
    due: int
    seq: int
    msg: Message = field(compare=False)
    #: InstallSnapshot: the snapshot's data, travelling beside the message
    data: tuple[Any, ...] | None = field(compare=False, default=None)
    sender_incarnation: int = field(compare=False, default=0)


@dataclass(slots=True)
class Proposal:
    node: int
    incarnation: int
    index: int


@dataclass
class Params:
    """The knobs of one run, drawn from the seed."""

    nodes: int
    pre_vote: bool
    check_quorum: bool
    election_ticks: int
    heartbeat_ticks: int
    max_inflight: int
    max_batch_bytes: int
    drop: float
    duplicate: float
    max_delay: int
    max_disk_delay: int
    disk_stall: float
    crash: float
    partition: float
    heal: float
    compact: float
    membership: float
    transfer: float
    propose: float

    @classmethod
    def draw(cls, rng: random.Random) -> Params:
        both_on = rng.random() < 0.75
        max_delay = rng.choice((2, 4, 8))
        max_disk_delay = rng.choice((0, 1, 3))
        # Raft needs elections to take less than an election timeout: a vote takes two
        # hops and two writes (and ticks come at 0.85 to 1 per step)
        round_trip = 2 * (max_delay + max_disk_delay)
        pre_vote = both_on or rng.random() < 0.5
        check_quorum = both_on or rng.random() < 0.5
        # with neither, a removed server that times out disrupts the cluster for ever
        # (dissertation §4.2.3): no membership changes then
        membership = rng.choice((0.0, 0.01, 0.03)) if pre_vote or check_quorum else 0.0
        return cls(
            nodes=rng.choice((3, 3, 5)),
            pre_vote=pre_vote,
            check_quorum=check_quorum,
            election_ticks=round_trip + rng.choice((2, 8)),
            heartbeat_ticks=rng.choice((1, 2)),
            max_inflight=rng.choice((1, 2, 8, 64)),
            max_batch_bytes=rng.choice((60, 1 << 20)),
            drop=rng.choice((0.0, 0.02, 0.1)),
            duplicate=rng.choice((0.0, 0.02, 0.05)),
            max_delay=max_delay,
            max_disk_delay=max_disk_delay,
            disk_stall=rng.choice((0.0, 0.02)),
            crash=rng.choice((0.0, 0.005, 0.02)),
            partition=rng.choice((0.0, 0.01, 0.03)),
            heal=rng.choice((0.02, 0.05)),
            compact=rng.choice((0.0, 0.02, 0.1)),
            membership=membership,
            transfer=rng.choice((0.0, 0.01, 0.03)),
            propose=rng.choice((0.1, 0.3, 0.6)),
        )


def run_seed(seed: int, steps: int, settle_steps: int = 1000) -> World:
    """One run: `steps` of chaos, then healing; a SafetyViolation names the seed."""
    world = World(seed)
    world.run(steps)
    world.settle(settle_steps)
    return world


class World:
    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.p = Params.draw(self.rng)
        self.now = 0
        voters = tuple(range(1, self.p.nodes + 1))
        self.hosts: dict[int, Host] = {}
        for node in voters:
            self.hosts[node] = Host(node, MemStorage(voters), config=voters)
            self._start(self.hosts[node])
        self.max_nodes = self.p.nodes + 1
        self.network: list[Envelope] = []
        self.seq = 0
        self.cut: set[tuple[int, int]] = set()
        self.chaos = True
        self.next_payload = 1
        self.proposals: dict[int, Proposal] = {}
        self.leader_guess = 1
        #: what happened, for a look at what a sweep covers
        self.stats: Counter[str] = Counter()
        self.check = Checker(self)

    # -- running ---------------------------------------------------------------------------

    def run(self, steps: int) -> None:
        for _ in range(steps):
            self.step()

    def step(self) -> None:
        self.now += 1
        if self.chaos:
            self._chaos()
        self._restart_due()
        self._clients()
        self._deliver()
        for host in self.live():
            if self.rng.random() < host.tick_rate:
                self._raft(host).tick()
        for host in self.live():
            self._pump(host)
        self.check.after_step()

    def settle(self, max_steps: int) -> None:
        """Heal everything, stop the chaos, then require a leader, and a fresh proposal
        committed and applied on every voter, within max_steps."""
        self.chaos = False
        self.cut.clear()
        self.p.drop = self.p.duplicate = 0.0
        self.p.propose = 0.0
        for host in self.hosts.values():
            if host.raft is None and host.down_until:
                host.down_until = self.now
        payloads: list[int] = []
        for step in range(max_steps):
            self.step()
            leader = self.leader()
            if leader is None:
                continue
            if step % 50 == 0 or not payloads:  # again now and then: a leader may lose one
                payload = self._propose_to(leader)
                if payload is not None:
                    payloads.append(payload)
            voters = [self.hosts[v] for v in self._raft(leader).voters]
            if any(all(p in h.state for h in voters) for p in payloads):
                return
        raise SafetyViolation(
            f"seed {self.seed}: no progress in {max_steps} steps after healing "
            f"(proposed {payloads})\n  {self.describe()}"
        )

    def live(self) -> list[Host]:
        return [h for h in self.hosts.values() if h.raft is not None]

    def leader(self) -> Host | None:
        leaders = [h for h in self.live() if self._raft(h).role is Role.LEADER]
        return max(leaders, key=lambda h: self._raft(h).term, default=None)

    def describe(self) -> str:
        parts = []
        for h in self.hosts.values():
            if h.raft is None:
                parts.append(f"{h.id}:down")
            else:
                r = h.raft
                parts.append(
                    f"{h.id}:{r.role}/t{r.term}/c{r.commit_index}/a{r.applied_index}"
                    f"/l{r.last_index}/v{list(r.voters)}"
                )
        return " ".join(parts)

    @staticmethod
    def _raft(host: Host) -> Raft:
        assert host.raft is not None
        return host.raft

    # -- nodes -----------------------------------------------------------------------------

    def _start(self, host: Host) -> None:
        p = self.p
        host.raft = Raft(
            host.id,
            host.storage,
            random.Random(self.rng.getrandbits(32)),
            election_ticks=p.election_ticks,
            heartbeat_ticks=p.heartbeat_ticks,
            max_inflight=p.max_inflight,
            max_batch_bytes=p.max_batch_bytes,
            pre_vote=p.pre_vote,
            check_quorum=p.check_quorum,
            # Nodes here never lose a synced write: one that starts empty never had a log, and
            # its abstention (see Raft._catch_up) only delays elections that need it.
            rejoin_ticks=3 * p.election_ticks,
        )
        host.incarnation += 1
        snap = host.storage.snap
        host.state = list(host.storage.snap_data)
        host.applied = snap.index
        host.config = snap.config if snap.index else host.storage.initial_voters
        host.received = {}
        host.writing = None
        host.tick_rate = self.rng.uniform(0.85, 1.0)
        host.last_commit = host.raft.commit_index
        host.last_applied = host.raft.applied_index

    def _crash(self, host: Host) -> None:
        self.stats["crash"] += 1
        host.raft = None
        host.writing = None
        host.storage.crash()
        host.down_until = self.now + self.rng.randint(5, 60)

    def _restart_due(self) -> None:
        for host in self.hosts.values():
            if host.raft is None and host.down_until and host.down_until <= self.now:
                host.down_until = 0
                self._start(host)

    def _pump(self, host: Host) -> None:
        """Finish the write in progress if it is done, then take the next Ready."""
        for _ in range(3):
            if host.writing is not None:
                rd, done_at, data = host.writing
                if done_at > self.now:
                    return
                self._finish_write(host, rd, data)
            raft = self._raft(host)
            if not raft.has_ready():
                return
            rd = raft.ready()
            data = None
            if rd.snapshot is not None:
                data = host.received.pop(rd.snapshot.index, None)
                assert data is not None, "a snapshot to install that never arrived"
            self.check.on_ready(host, rd)
            if rd.role == Role.LEADER:
                self._send_all(host, rd.messages)
            delay = self.rng.randint(0, self.p.max_disk_delay)
            if self.rng.random() < self.p.disk_stall:
                delay += self.rng.randint(3, 15)  # an fsync that takes its time
            host.writing = (rd, self.now + delay, data)

    def _finish_write(self, host: Host, rd: Ready, data: tuple[Any, ...] | None) -> None:
        host.writing = None
        if rd.entries and rd.entries[0].index <= host.storage.last_index():
            self.stats["log cut"] += 1
            self.check.recheck_all = True
        host.storage.write(rd, data)
        if rd.snapshot is not None:
            self.stats["snapshot installed"] += 1
            self.check.on_snapshot_installed(host, rd.snapshot)
            host.state = list(host.storage.snap_data)
            host.applied = rd.snapshot.index
            host.config = rd.snapshot.config
            self.check.recheck_all = True
        if rd.role != Role.LEADER:
            self.check.on_follower_send(host, rd.messages)
            self._send_all(host, rd.messages)
        for entry in rd.committed:
            self.check.on_apply(host, entry)
            host.applied = entry.index
            if entry.config is not None:
                host.config = entry.config
            if entry.data is not None:
                host.state.append(entry.data)
                self._acknowledge(host, entry)
        self._raft(host).advance(rd)

    def _acknowledge(self, host: Host, entry: Entry) -> None:
        prop = self.proposals.get(entry.data)
        if prop is not None and prop.node == host.id and prop.incarnation == host.incarnation:
            self.check.on_ack(entry)

    # -- clients ---------------------------------------------------------------------------

    def _clients(self) -> None:
        if self.rng.random() >= self.p.propose:
            return
        host = self.hosts.get(self.leader_guess)
        if host is None or host.raft is None:
            self.leader_guess = self.rng.choice(sorted(self.hosts))
            return
        self._propose_to(host)

    def _propose_to(self, host: Host) -> int | None:
        payload = self.next_payload
        try:
            index = self._raft(host).propose(payload, size=self.rng.randint(0, 20))
        except NotLeader as e:
            self.leader_guess = e.leader or self.rng.choice(sorted(self.hosts))
            return None
        except ProposalRefused:
            return None
        self.next_payload += 1
        self.proposals[payload] = Proposal(host.id, host.incarnation, index)
        return payload

    # -- the network -----------------------------------------------------------------------

    def _send_all(self, host: Host, messages: list[Message]) -> None:
        for msg in messages:
            data = None
            if isinstance(msg, InstallSnapshot):
                assert msg.meta == host.storage.snap, "InstallSnapshot names an old snapshot"
                data = host.storage.snap_data
            if self.rng.random() < self.p.drop:
                self._lost(msg, host.incarnation)
                continue
            copies = 2 if self.rng.random() < self.p.duplicate else 1
            for _ in range(copies):
                delay = self.rng.randint(1, self.p.max_delay)
                if self.rng.random() < 0.02:
                    delay += self.rng.randint(5, 30)  # a straggler, overtaken by later ones
                self.seq += 1
                env = Envelope(self.now + delay, self.seq, msg, data, host.incarnation)
                heapq.heappush(self.network, env)

    def _deliver(self) -> None:
        while self.network and self.network[0].due <= self.now:
            env = heapq.heappop(self.network)
            msg = env.msg
            dst = self.hosts.get(msg.dst)
            if dst is None or dst.raft is None or (msg.src, msg.dst) in self.cut:
                self._lost(msg, env.sender_incarnation)
                continue
            self.stats[type(msg).__name__] += 1
            if isinstance(msg, InstallSnapshot):
                assert env.data is not None
                dst.received[msg.meta.index] = env.data
            dst.raft.step(msg)
            if isinstance(msg, InstallSnapshot):
                self._snapshot_report(msg, env.sender_incarnation, ok=True)

    def _lost(self, msg: Message, sender_incarnation: int) -> None:
        """A message that did not arrive: a real host may notice (a link down, a transfer
        failed) and say so."""
        if isinstance(msg, InstallSnapshot):
            self._snapshot_report(msg, sender_incarnation, ok=False)
        elif self.rng.random() < 0.3:
            sender = self.hosts[msg.src]
            if sender.raft is not None and sender.incarnation == sender_incarnation:
                sender.raft.report_unreachable(msg.dst)

    def _snapshot_report(self, msg: InstallSnapshot, incarnation: int, ok: bool) -> None:
        sender = self.hosts[msg.src]
        if sender.raft is not None and sender.incarnation == incarnation:
            sender.raft.report_snapshot(msg.dst, ok)

    # -- chaos -----------------------------------------------------------------------------

    def _chaos(self) -> None:
        rng, p = self.rng, self.p
        live = self.live()
        if live and rng.random() < p.crash:
            self._crash(rng.choice(live))
        if rng.random() < p.partition:
            self._partition()
        if rng.random() < p.partition / 2:
            a, b = rng.sample(sorted(self.hosts), 2)
            self.cut.add((a, b))
        if self.cut and rng.random() < p.heal:
            self.cut.clear()
        for host in live:
            if host.raft is not None and rng.random() < p.compact:
                self._compact(host)
        if rng.random() < p.membership:
            self._change_membership()
        if rng.random() < p.transfer:
            leader = self.leader()
            if leader is not None:
                voters = [v for v in self._raft(leader).voters if v != leader.id]
                if voters:
                    self._raft(leader).transfer_leadership(rng.choice(voters))

    def _partition(self) -> None:
        nodes = sorted(self.hosts)
        self.rng.shuffle(nodes)
        split = self.rng.randint(1, len(nodes) - 1)
        for a in nodes[:split]:
            for b in nodes[split:]:
                self.cut.add((a, b))
                self.cut.add((b, a))

    def _compact(self, host: Host) -> None:
        storage = host.storage
        if host.applied <= storage.snap.index:
            return
        storage.compact(host.applied, tuple(host.state), host.config)
        self.stats["compaction"] += 1

    def _change_membership(self) -> None:
        leader = self.leader()
        if leader is None:
            return
        raft = self._raft(leader)
        voters = set(raft.voters)
        others = sorted(set(self.hosts) - voters)
        rng = self.rng
        if len(voters) > 1 and (rng.random() < 0.5 or not others):
            new = voters - {rng.choice(sorted(voters))}
        elif others and (len(self.hosts) >= self.max_nodes or rng.random() < 0.5):
            node = rng.choice(others)
            if rng.random() < 0.3 and self._forgotten(node):
                self._wipe(self.hosts[node])  # the machine was replaced: same id, empty disk
            new = voters | {node}
        elif len(self.hosts) < self.max_nodes:
            node = max(self.hosts) + 1
            self.hosts[node] = Host(node, MemStorage(()))
            self.stats["node added"] += 1
            self._start(self.hosts[node])
            new = voters | {node}
        else:
            return
        try:
            raft.propose_config(tuple(sorted(new)))
        except ProposalRefused:
            pass

    def _forgotten(self, node: int) -> bool:
        """May this node's disk be replaced? Only if no config anywhere (in memory, on disk,
        on the way) counts it as a voter."""
        others = [h for h in self.hosts.values() if h.id != node]
        configs = [h.raft.voters for h in others if h.raft is not None]
        for h in others:
            s = h.storage
            configs.append(s.snap.config if s.snap.index else s.initial_voters)
            configs += [e.config for e in s.log if e.config is not None]
            if h.writing is not None:
                configs += [e.config for e in h.writing[0].entries if e.config is not None]
        for env in self.network:
            if isinstance(env.msg, AppendEntries):
                configs += [e.config for e in env.msg.entries if e.config is not None]
            elif isinstance(env.msg, InstallSnapshot):
                configs.append(env.msg.meta.config)
        return all(node not in c for c in configs)

    def _wipe(self, host: Host) -> None:
        if host.raft is not None:
            self._crash(host)
        host.storage = MemStorage(())
        host.down_until = self.now + 1
        self.check.on_wipe(host)
        self.stats["wipe"] += 1


class Checker:
    """Raft's safety properties, checked as the world runs."""

    def __init__(self, world: World) -> None:
        self.world = world
        #: term -> the node that led it
        self.leaders: dict[int, int] = {}
        #: index -> (term, data, config) of the entry applied there, by whoever applied it first
        self.applied: dict[int, tuple[int, Any, Voters | None]] = {}
        self.applied_payloads: dict[Any, int] = {}
        #: (index, term) -> (data, config, term of the entry before) of every entry ever handed
        #: to a host to write: one entry per (index, term), one log before it
        self.written: dict[tuple[int, int], tuple[Any, Voters | None, int | None]] = {}
        #: index -> voters, of the config entries ever written
        self.config_entries: dict[int, set[Voters]] = {}
        #: acknowledged proposals: index -> term
        self.acked: dict[int, int] = {}
        #: the committed configs, in log order
        self.committed_configs: list[tuple[int, Voters]] = []
        #: entries to check are durable at the end of the step; or all of them
        self.to_check: set[int] = set()
        self.recheck_all = False
        #: terms whose leader has been checked for completeness
        self.completeness_checked: set[int] = set()

    def fail(self, what: str) -> None:
        w = self.world
        raise SafetyViolation(f"seed {w.seed}, step {w.now}: {what}\n  {w.describe()}")

    # -- events ----------------------------------------------------------------------------

    def on_ready(self, host: Host, rd: Ready) -> None:
        storage = host.storage
        if rd.role == Role.LEADER:
            for msg in rd.messages:
                pre_vote = isinstance(msg, VoteResponse) and msg.pre_vote  # the asker's term
                if msg.term > storage.hard.term and not pre_vote:
                    self.fail(f"leader {host.id} sends {msg} before its term is on disk")
            self._check_leader_complete(host, rd)
        self._check_config(host, rd)
        prev_term: int | None = None
        if rd.entries:
            before = rd.entries[0].index - 1
            if rd.snapshot is not None and before == rd.snapshot.index:
                prev_term = rd.snapshot.term
            elif storage.snap.index <= before <= storage.last_index():
                prev_term = storage.term(before)
        for entry in rd.entries:
            self._check_matching(entry, prev_term)
            if entry.config is not None:
                self.config_entries.setdefault(entry.index, set()).add(entry.config)
            prev_term = entry.term

    def _check_config(self, host: Host, rd: Ready) -> None:
        """The voters the core counts are those of the last config entry in its log (its
        disk, then this Ready, which holds all it has not written), else of its snapshot."""
        configs = [e.config for e in rd.entries if e.config is not None]
        if configs:
            expected = configs[-1]
        elif rd.snapshot is not None:
            expected = rd.snapshot.config
        else:
            cut = rd.entries[0].index if rd.entries else host.storage.last_index() + 1
            expected = host.storage.config_before(cut)
        voters = self.world._raft(host).voters
        if voters != expected:
            self.fail(f"node {host.id} counts voters {voters}; its log says {expected}")

    def _check_matching(self, entry: Entry, prev_term: int | None) -> None:
        """Log matching, entry by entry: one (index, term) always holds the same entry, after
        the same (index-1, term); by induction, two logs that share an (index, term) share
        everything before it."""
        key = (entry.index, entry.term)
        known = self.written.setdefault(key, (entry.data, entry.config, prev_term))
        if known[:2] != (entry.data, entry.config):
            self.fail(f"log matching: {key} holds {known[:2]} and {entry.data, entry.config}")
        if prev_term is None:
            return
        if known[2] is None:
            self.written[key] = (entry.data, entry.config, prev_term)
        elif known[2] != prev_term:
            self.fail(f"log matching: {key} follows terms {known[2]} and {prev_term}")

    def _check_leader_complete(self, host: Host, rd: Ready) -> None:
        """Leader completeness: a new leader's log (its disk, then this Ready: the first of
        its term) holds every entry applied anywhere so far."""
        term = self.world._raft(host).term
        if term in self.completeness_checked:
            return
        self.completeness_checked.add(term)
        storage = host.storage
        cut = rd.entries[0].index if rd.entries else storage.last_index() + 1
        fresh = {e.index: e.term for e in rd.entries}
        for index, (entry_term, _, _) in self.applied.items():
            if index >= cut:
                held = fresh.get(index) == entry_term
            else:
                held = storage.holds(index, entry_term)
            if not held:
                self.fail(f"leader completeness: leader {host.id} of term {term} lacks {index}")

    def on_snapshot_installed(self, host: Host, meta: SnapshotMeta) -> None:
        expected = tuple(
            data for index, (_, data, _) in sorted(self.applied.items()) if index <= meta.index
        )
        if host.storage.snap_data != tuple(d for d in expected if d is not None):
            self.fail(f"node {host.id} installed a snapshot at {meta.index} unlike the log")

    def on_follower_send(self, host: Host, messages: list[Message]) -> None:
        """A follower's answers promise what is on its disk now."""
        for msg in messages:
            if (
                isinstance(msg, AppendResponse)
                and msg.success
                and msg.index > host.storage.last_index()
            ):
                self.fail(f"node {host.id} acknowledges {msg.index} it has not written")

    def on_apply(self, host: Host, entry: Entry) -> None:
        if entry.index != host.applied + 1:
            self.fail(f"node {host.id} applies {entry.index} after {host.applied}")
        if not host.storage.holds(entry.index, entry.term):
            self.fail(f"node {host.id} applies {entry.index} before it is on its disk")
        record = (entry.term, entry.data, entry.config)
        known = self.applied.setdefault(entry.index, record)
        if known != record:
            self.fail(f"state machine safety at {entry.index}: {known} and {record}")
        if entry.data is not None:
            first = self.applied_payloads.setdefault(entry.data, entry.index)
            if first != entry.index:
                self.fail(f"payload {entry.data} applied at {first} and at {entry.index}")
        if known is record:  # the first time anyone applies this index: newly committed
            self.to_check.add(entry.index)
            if entry.config is not None:
                self.committed_configs.append((entry.index, entry.config))
                self.recheck_all = True
                self.world.stats["config committed"] += 1

    def on_ack(self, entry: Entry) -> None:
        self.world.stats["acknowledged"] += 1
        self.acked[entry.index] = entry.term
        self.to_check.add(entry.index)

    def on_wipe(self, host: Host) -> None:
        self.recheck_all = True

    # -- after every step ------------------------------------------------------------------

    def after_step(self) -> None:
        for host in self.world.live():
            raft = host.raft
            assert raft is not None
            if raft.role is Role.LEADER:
                if raft.term not in self.leaders:
                    self.world.stats["leader"] += 1
                first = self.leaders.setdefault(raft.term, host.id)
                if first != host.id:
                    self.fail(f"election safety: {first} and {host.id} both led term {raft.term}")
            if raft.commit_index < host.last_commit or raft.applied_index < host.last_applied:
                self.fail(f"node {host.id}: commit or applied index went backwards")
            host.last_commit, host.last_applied = raft.commit_index, raft.applied_index
        if self.recheck_all:
            # something was cut or replaced on some disk: all acknowledged entries, and the
            # last committed one (the others are before it, on the same disks)
            self.to_check.update(self.acked)
            self.to_check.add(max(self.applied, default=0))
        for index in sorted(self.to_check):
            self._check_durable(index)
        self.to_check.clear()
        self.recheck_all = False

    def _check_durable(self, index: int) -> None:
        """A committed entry (every acknowledged one among them) is on the disks of a
        majority of a config that could have committed it, and of the latest config
        committed after it."""
        if index not in self.applied:
            return
        term = self.applied[index][0]
        before = [c for i, c in self.committed_configs if i < index]
        # a config entry is in force from its own index on
        after = [c for i, c in self.committed_configs if i >= index]
        if after:
            allowed = [after[-1]]
        else:
            allowed = [before[-1] if before else tuple(range(1, self.world.p.nodes + 1))]
            allowed += [c for i, cs in self.config_entries.items() if i >= index for c in cs]
        hosts = self.world.hosts
        holders = {n for n, h in hosts.items() if h.storage.holds(index, term)}
        if not any(len(holders & set(c)) > len(c) // 2 for c in allowed):
            what = "acknowledged" if index in self.acked else "committed"
            self.fail(
                f"{what} entry {index} (term {term}) is only on the disks of {sorted(holders)}; "
                f"configs {allowed}"
            )
