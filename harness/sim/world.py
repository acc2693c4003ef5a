"""A deterministic simulated cluster that drives the real :class:`~raft.core.raft.RaftCore`.

Theory of operation
-------------------
* One seed, one run: every random choice (network delays, drops, the nemesis, clients, the
  cores' election timeouts) comes from ``random.Random`` instances derived from the seed, and
  events are ordered by ``(time, sequence number)`` in one heap; at equal times ticks come
  first, by node. The same seed gives the same event trace, bit for bit (``trace_digest``).
* Time is simulated, in integer microseconds. A node ticks every ``tick_us``.
* Each node follows the Ready contract exactly like the asyncio runtime: persist (which takes
  ``fsync_us`` of simulated time, during which arriving messages and ticks queue up and are then
  processed together: group commit), send, apply, advance.
* The disk is a :class:`~harness.sim.disk.SimDisk` holding only what was synced. A crash
  drops the node's memory; a write in progress survives only as a random prefix of its ordered
  parts (hard state, snapshot, then entries one by one) — what a real disk may keep.
* The network delivers each message after a random delay (so it reorders), and may drop or
  duplicate it; partitions block directed links at delivery time.
* The nemesis (:mod:`harness.sim.nemesis`) acts out the run's faults; with ``swarm`` each seed
  draws its own fault mix and rates (:mod:`harness.sim.params`).
* With ``clients``, simulated KV clients (:mod:`harness.sim.clients`) use the cluster through
  the library's KV state machine with sessions and ReadIndex; their history is checked for
  linearizability at the end of the run.
* Invariants (:mod:`harness.sim.invariants`) are checked after every step. A run that exceeds
  its budget of events or wall time is reported ``stuck``, with its seed: never a hang.
"""

from __future__ import annotations

import hashlib
import random
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from heapq import heappop, heappush
from math import log as _ln
from typing import Any

from harness.sim.clients import SimClients
from harness.sim.disk import SimDisk
from harness.sim.invariants import Invariants, Violation
from harness.sim.nemesis import SimNemesis
from harness.sim.params import FAULTS, RunParams, swarm_draw
from raft.core.errors import RaftError
from raft.core.messages import (
    AppendEntriesResponse,
    HeartbeatResponse,
    InstallSnapshot,
    InstallSnapshotResponse,
    Message,
    RequestVoteResponse,
)
from raft.core.raft import RaftConfig, RaftCore, Ready, Role
from raft.core.types import ConfState, EntryKind, LogEntry, NodeId, Snapshot
from raft.kv import KVStore

__all__ = ["FAULTS", "SimConfig", "SimNode", "World", "sweep_config"]

# event kinds
_TICK, _DELIVER, _PERSISTED, _CLIENT, _NEMESIS, _CALL, _KV = range(7)
#: how much longer than the settle period a converging cluster may take (µs)
END_GRACE_US = 3_000_000
#: responses that tell a leader a follower is alive (what check-quorum counts)
_ALIVE = (AppendEntriesResponse, HeartbeatResponse, InstallSnapshotResponse)
#: tick events sort before every other event of the same microsecond (whose sequence numbers
#: are positive), and among themselves by node: see ``World._push_tick``
_TICK_SEQ = -(1 << 62)

# aliases: an enum member looked up through its class costs ~0.1 µs in CPython 3.11
_LEADER = Role.LEADER
_FOLLOWER = Role.FOLLOWER
_NORMAL = EntryKind.NORMAL
_CONFIG = EntryKind.CONFIG


@dataclass(frozen=True, slots=True)
class SimConfig:
    nodes: int = 5
    seed: int = 0
    duration_us: int = 10_000_000
    faults: frozenset[str] = frozenset()
    tick_us: int = 10_000
    election_ticks: int = 15  #: 150-300 ms election timeouts with 10 ms ticks
    heartbeat_ticks: int = 3
    pre_vote: bool = True
    check_quorum: bool = True
    delay_min_us: int = 200
    delay_mean_us: int = 1_000
    fsync_us: int = 300
    client_interval_us: int = 15_000  #: mean time between client commands (0: no clients)
    settle_us: int = 2_000_000  #: fault-free time at the end, for the liveness check
    snapshot_entries: int = 0
    names: tuple[str, ...] = ()
    spare_nodes: int = 0  #: extra nodes that start outside the cluster (membership faults)
    max_inflight: int = 64
    #: bytes of entries per AppendEntries; 0: drawn per run from one entry to 64 KiB, so some
    #: runs replicate entry by entry (which exposes commit-counting bugs, Figure 8)
    max_msg_bytes: int = 0
    #: each seed draws its own fault mix and rates out of ``faults`` (harness.sim.params)
    swarm: bool = False
    #: simulated KV clients (with ``swarm``: at most this many); 0: a blind proposer instead
    clients: int = 0
    keys: int = 3
    #: chances of the aimed crashes (see harness.sim.nemesis); with ``swarm`` drawn per seed
    crash_vote_write_p: float = 0.0
    crash_entries_write_p: float = 0.0
    crash_chunk_p: float = 0.0
    crash_change_p: float = 0.0
    overlap_change_p: float = 0.0
    #: budget: events per simulated second, and wall seconds, before the run is ``stuck``
    max_events_per_s: int = 200_000
    max_wall_s: float = 60.0

    def node_names(self) -> list[str]:
        total = self.nodes + self.spare_nodes
        if self.names:
            if len(self.names) != total:
                raise ValueError(f"need {total} names, got {len(self.names)}")
            return list(self.names)
        return [f"n{i + 1}" for i in range(total)]

    def run_params(self) -> RunParams:
        """What this seed's run uses (drawn per seed with ``swarm``)."""
        if self.swarm:
            return swarm_draw(self.seed, self.faults, self.clients, self.nodes)
        return RunParams(
            faults=self.faults,
            crash_vote_write_p=self.crash_vote_write_p,
            crash_entries_write_p=self.crash_entries_write_p,
            crash_chunk_p=self.crash_chunk_p,
            crash_change_p=self.crash_change_p,
            overlap_change_p=self.overlap_change_p,
            snapshot_entries=self.snapshot_entries,
            clients=self.clients,
            keys=self.keys,
            client_interval_us=self.client_interval_us,
        )

    def raft_config(
        self, rng: random.Random | None = None, params: RunParams | None = None
    ) -> RaftConfig:
        max_msg = self.max_msg_bytes
        if not max_msg:
            max_msg = (rng or random.Random(self.seed)).choice([40, 300, 64 * 1024])
        p = params or self.run_params()
        election = p.election_ticks or self.election_ticks
        return RaftConfig(
            election_ticks=election,
            heartbeat_ticks=min(self.heartbeat_ticks, max(1, election // 4)),
            pre_vote=self.pre_vote if p.pre_vote is None else p.pre_vote,
            check_quorum=self.check_quorum if p.check_quorum is None else p.check_quorum,
            max_inflight=self.max_inflight,
            max_msg_bytes=max_msg,
            snapshot_entries=p.snapshot_entries,
            snapshot_chunk_bytes=p.snapshot_chunk_bytes,
        )


def sweep_config(
    nodes: int = 5,
    duration_us: int = 10_000_000,
    faults: frozenset[str] = frozenset(FAULTS),
    *,
    swarm: bool = True,
    clients: int = 4,
) -> SimConfig:
    """What ``orbital sim`` runs for each seed: swarm testing over ``faults``, KV clients whose
    histories are checked, spare servers for membership changes, snapshots when asked for.
    ``swarm=False, clients=0`` is the classic sweep: every fault in every run at fixed rates,
    and a blind proposer instead of clients."""
    return SimConfig(
        nodes=nodes,
        duration_us=duration_us,
        faults=faults,
        settle_us=min(2_000_000, duration_us // 2),
        snapshot_entries=25 if "snapshot" in faults else 0,
        spare_nodes=2 if "membership" in faults else 0,
        swarm=swarm,
        clients=clients,
    )


@dataclass(slots=True)
class SimNode:
    name: NodeId
    idx: int
    disk: SimDisk = field(default_factory=SimDisk)
    core: RaftCore | None = None
    #: the KV state machine (runs with clients), else ``sm_hash`` stands for the state
    kv: KVStore | None = None
    incarnation: int = 0
    #: the time of this node's next tick not yet accounted for (ticks are ``tick_us`` apart)
    next_tick: int = 0
    #: the time of this node's live tick event on the heap (-1: none); the live one carries
    #: ``ticks_pushed``, any older one is stale
    wake_at: int = -1
    ticks_pushed: int = 0
    busy: Ready | None = None
    #: what arrived while a write was in progress: a message, ``None`` (a tick), ``bytes``
    #: (a blind proposal) or a client's request; processed together once the write is durable
    #: (group commit)
    inbox: list[Message | bytes | Callable[[], None] | None] = field(default_factory=list)
    chains: dict[int, int] = field(default_factory=dict)
    chain_last: int = 0
    sm_hash: int = 0
    last_commit: int = 0
    pending: dict[int, tuple[int, bytes]] = field(default_factory=dict)
    #: index -> command of every entry this node applied (only with ``record_applied``)
    applied_log: dict[int, bytes] | None = None
    #: the last term in which this node was seen leading (``World._check_leader`` done)
    led_term: int = -1
    #: voter -> when this node last heard that voter answer it as leader (check-quorum)
    heard: dict[str, int] = field(default_factory=dict)
    #: when this node became leader of ``led_term``, or its voters last changed
    led_since: int = 0
    #: the voters ``led_since`` refers to
    quorum_of: frozenset[NodeId] = frozenset()
    #: how long this node's writes take (µs)
    fsync_us: int = 0
    #: term -> candidate of every vote this incarnation granted and sent
    votes_out: dict[int, str] = field(default_factory=dict)

    @property
    def up(self) -> bool:
        return self.core is not None


def _durable_on(disk: SimDisk, index: int, term: int | None) -> bool:
    """Does ``disk`` hold the entry ``(index, term)`` (or a snapshot covering it)?"""
    snap = disk.snapshot
    if snap is not None and index <= snap.meta.index:
        return True
    log = disk.log
    k = index - log[0].index if log else -1
    return 0 <= k < len(log) and log[k].term == term


class World:
    """One simulated run. ``run()`` returns the violations found (empty when safe)."""

    def __init__(
        self,
        cfg: SimConfig,
        *,
        trace: Callable[[str], None] | None = None,
        digest: bool = False,
        check_liveness: bool = True,
        record_applied: bool = False,
        every_tick: bool = False,
    ) -> None:
        """``every_tick``: put every tick of every node on the heap, quiet or not (the same run,
        only slower: for tests of the quiet-tick machinery)."""
        self.cfg = cfg
        self.every_tick = every_tick
        self.now = 0
        self._seq = 0
        self._heap: list[tuple[int, int, int, Any, Any]] = []
        self.rng_net = random.Random(f"{cfg.seed}/net")
        self.rng_nem = random.Random(f"{cfg.seed}/nemesis")
        self.rng_cli = random.Random(f"{cfg.seed}/client")
        self.inv = Invariants()
        self.trace_fn = trace
        self._digest = hashlib.blake2b(digest_size=16) if digest else None
        self.check_liveness = check_liveness
        self.params = cfg.run_params()
        #: how long a write takes (simulated µs; 0: writes are instant)
        self.fsync_us = cfg.fsync_us if self.params.fsync_us is None else self.params.fsync_us
        slow_us = self.params.slow_fsync_us
        self.raft_cfg = cfg.raft_config(random.Random(f"{cfg.seed}/config"), self.params)
        #: how long a leader may go unanswered by a majority (0: no check-quorum, no check)
        rc = self.raft_cfg
        self._check_quorum_bound = (
            (2 * rc.election_ticks + 4) * cfg.tick_us + 10 * max(self.fsync_us, slow_us)
            if rc.check_quorum
            else 0
        )
        self.events = 0
        self._event_budget = max(1, cfg.max_events_per_s * cfg.duration_us // 1_000_000)
        self._wall_deadline = 0.0
        names = cfg.node_names()
        self.nodes = [SimNode(NodeId(n), i) for i, n in enumerate(names)]
        for node in self.nodes:
            node.fsync_us = slow_us if node.idx in self.params.slow_disks else self.fsync_us
        self.by_name = {n.name: n for n in self.nodes}
        if record_applied:
            for n in self.nodes:
                n.applied_log = {}
        self.initial_conf = ConfState(frozenset(NodeId(n) for n in names[: cfg.nodes]))
        #: every node of the run, spares included: the guard's roster (raft.core.guard), as
        #: a real node's is its cluster file's nodes
        self.roster = frozenset(n.name for n in self.nodes)
        self.blocked: set[tuple[str, str]] = set()
        self.drop_p = 0.0
        self.dup_p = 0.0
        self.delay_mean = cfg.delay_mean_us
        self.stats = {"elections": 0, "commits": 0, "messages": 0, "crashes": 0, "acked": 0}
        self._next_cmd = 0
        self._client_guess: NodeId | None = None
        self._leaders_seen: set[tuple[int, str]] = set()
        self.nemesis = SimNemesis(self)
        p = self.params
        self.clients = (
            SimClients(self, p.clients, p.keys, p.client_interval_us) if p.clients else None
        )
        if cfg.swarm:
            self.log(f"swarm: {p.describe()}")
        for node in self.nodes[: cfg.nodes]:
            self._start(node)
        if self.clients is not None:
            self.clients.start()
        elif cfg.client_interval_us:
            self._push(self._exp(self.rng_cli, cfg.client_interval_us), _CLIENT, None, None)
        if p.faults - {"snapshot"}:
            self._push(self.rng_nem.randrange(200_000, 1_000_000), _NEMESIS, None, None)

    # ---- event machinery ------------------------------------------------------------------
    def _push(self, at: int, kind: int, a: Any, b: Any) -> None:
        self._seq += 1
        heappush(self._heap, (at, self._seq, kind, a, b))

    def _push_tick(self, node: SimNode, at: int) -> None:
        """Put a node's tick at ``at`` on the heap (any earlier-pushed one becomes stale).

        Ticks are ordered before the other events of the same microsecond, and by node among
        themselves, not by when they were scheduled: so the order does not depend on how far
        ahead a tick was put on the heap, which lets quiet ticks stay off the heap."""
        node.ticks_pushed += 1
        node.wake_at = at
        key = _TICK_SEQ + (node.idx << 40) + node.ticks_pushed
        heappush(self._heap, (at, key, _TICK, node, node.ticks_pushed))

    # Quiet ticks. A node ticks every ``tick_us``, but most ticks of a follower or candidate
    # only advance its election clock (``RaftCore.quiet_ticks``). Those stay off the heap: the
    # heap holds a node's tick only where it may act (every tick of a leader; a follower's
    # election timeout), and the quiet ticks before anything else reaches the node are handed
    # to it first, in one ``skip_ticks`` (or, during a write, queued in its inbox as every tick
    # is). Ticks come first within a microsecond, so "ticks up to now" is exact; a tick that
    # would act cannot be skipped (``skip_ticks`` raises, and the run reports it).
    def _catch_up(self, node: SimNode, upto: int) -> None:
        """Give ``node`` its quiet ticks due at or before ``upto``."""
        nt = node.next_tick
        core = node.core
        if nt > upto or core is None:
            return
        tick_us = self.cfg.tick_us
        n = (upto - nt) // tick_us + 1
        node.next_tick = nt + n * tick_us
        if node.busy is not None:
            node.inbox.extend([None] * n)
        else:
            core.skip_ticks(n)

    def _schedule(self, node: SimNode) -> None:
        """Make sure the heap holds ``node``'s first tick that may act (none during a write:
        its ticks wait in the inbox, and the write's end reschedules)."""
        core = node.core
        if core is None or node.busy is not None:
            return
        wake = node.wake_at
        if core.role is _LEADER or self.every_tick:
            if wake != node.next_tick:
                self._push_tick(node, node.next_tick)
            return
        tick_us = self.cfg.tick_us
        # Fast path: a live tick no later than the election timeout is early enough (quiet
        # ticks are never more than this; a tick that turns out quiet just reschedules).
        if (
            0
            <= wake
            <= node.next_tick + (core.randomized_timeout - core.election_elapsed - 1) * tick_us
        ):
            return
        quiet = core.quiet_ticks()
        if quiet is None:
            return
        at = node.next_tick + quiet * tick_us
        if at < wake or wake < 0:
            self._push_tick(node, at)

    def _catch_up_all(self) -> None:
        for node in self.nodes:
            self._catch_up(node, self.now)

    def _schedule_all(self) -> None:
        for node in self.nodes:
            self._schedule(node)

    def at(self, time_us: int, fn: Callable[[], None]) -> None:
        """Schedule a call at a simulated time (tests use it to script scenarios)."""
        self._push(time_us, _CALL, fn, None)

    def call_later(self, delay_us: int, fn: Callable[[Any], None], arg: Any) -> None:
        """``fn(arg)`` in ``delay_us``; ``fn`` touches nodes only through ``catch_up`` and
        ``stepped`` (the clients' events: cheaper than ``at``, which catches up every node)."""
        self._push(self.now + delay_us, _KV, fn, arg)

    def push_nemesis(self, at: int, fn: Callable[[], None] | None) -> None:
        self._push(at, _NEMESIS, fn, None)

    def catch_up(self, node: SimNode) -> None:
        """Give ``node`` its quiet ticks up to now, before something else reaches its core."""
        if node.next_tick <= self.now:
            self._catch_up(node, self.now)

    def stepped(self, node: SimNode) -> None:
        """Something outside the world stepped ``node``'s core: check and pump it."""
        if node.core is not None:
            self._after_step(node)
            self._schedule(node)

    @staticmethod
    def _exp(rng: random.Random, mean: int) -> int:
        # rng.expovariate(1.0 / mean) inlined (the same arithmetic, so the same values)
        return int(-_ln(1.0 - rng.random()) / (1.0 / mean)) + 1

    def log(self, text: str) -> None:
        if self.trace_fn is not None:
            self.trace_fn(f"[t={self.now / 1e6:.3f}s] {text}")
        if self._digest is not None:
            self._digest.update(f"{self.now} {text}\n".encode())

    def _core_event(self, name: str, text: str) -> None:
        self.log(f"{name}: {text}")
        if text.startswith("refused "):
            # Every node here is correct: a message its guard refuses (raft.core.guard) is a
            # rule that would cost a real cluster a correct message (the guard logs the first
            # refusal of each kind, so none goes unseen).
            self.inv.fail("guard_refused", f"{name} {text}")

    def trace_digest(self) -> str:
        assert self._digest is not None, "World(digest=True) to compute a digest"
        return self._digest.hexdigest()

    def run_until(self, end_us: int) -> list[Violation]:
        heap = self._heap
        inv = self.inv
        self._schedule_all()  # the cores may have been changed from outside since last time
        budget = self._event_budget
        events = self.events
        while heap and heap[0][0] <= end_us and not inv.violations:
            t, _, kind, a, b = heappop(heap)
            self.now = inv.now_us = t
            events += 1
            if not events & 0x3FF:
                self.events = events
                self._check_budget(events, budget)
            if kind == _DELIVER:
                self._deliver(a)
            elif kind == _TICK:
                self._tick(a, b)
            elif kind == _PERSISTED:
                self._persisted(a, b)
            elif kind == _KV:
                a(b)
            elif kind == _CLIENT:
                self._client()
            else:
                # the nemesis and scripted calls may touch any node
                self._catch_up_all()
                if kind == _NEMESIS:
                    self.nemesis.act(a)
                else:
                    a()
                self._schedule_all()
        self.events = events
        if not inv.violations:
            self.now = max(self.now, end_us)
        self._catch_up_all()  # every core as if it had ticked up to now
        return inv.violations

    def _check_budget(self, events: int, budget: int) -> None:
        """A run that does far more work than a run of its length should is ``stuck`` (a
        message storm, a livelock): reported with its seed, never a hang."""
        if not self._wall_deadline:
            self._wall_deadline = time.monotonic() + self.cfg.max_wall_s
        if events > budget:
            self.inv.fail(
                "stuck",
                f"{events} events by t={self.now / 1e6:.3f}s, over the budget of {budget} "
                f"for {self.cfg.duration_us / 1e6:g}s ({self.stats['messages']} messages)",
            )
        elif time.monotonic() > self._wall_deadline:
            self.inv.fail(
                "stuck",
                f"over {self.cfg.max_wall_s:g}s of wall time at t={self.now / 1e6:.3f}s "
                f"({events} events, {self.stats['messages']} messages)",
            )

    def run(self) -> list[Violation]:
        cfg = self.cfg
        calm_at = max(0, cfg.duration_us - cfg.settle_us)
        self.at(calm_at, self.calm)
        self._wall_deadline = time.monotonic() + cfg.max_wall_s
        try:
            violations = self.run_until(cfg.duration_us)
            if not violations and self.check_liveness:
                self._check_end()
            if not self.inv.violations and self.clients is not None:
                self._check_history()
        except Exception as exc:  # an assertion in the core is a finding, not a crash
            self.inv.fail("exception", f"{type(exc).__name__}: {exc}")
        return self.inv.violations

    def _check_history(self) -> None:
        from harness.checker.linearizable import check_history

        assert self.clients is not None
        events = self.clients.events
        result = check_history(events, time_limit=10.0)
        self.stats.update({f"ops_{k}": v for k, v in self.clients.stats.items()})
        if result.valid is False:
            anomaly = result.anomaly
            detail = anomaly.explanation if anomaly is not None else "not linearizable"
            self.inv.fail("linearizability", f"{len(events)} history events: {detail}")
        elif result.valid == "unknown":
            self.stats["history_unknown"] = 1

    # ---- nodes ----------------------------------------------------------------------------
    def _start(self, node: SimNode) -> None:
        disk = node.disk
        snap = disk.load_snapshot()
        entries = disk.load_log()
        node.incarnation += 1
        node.votes_out = {}
        node.busy = None
        node.inbox = []
        node.pending = {}
        name = node.name
        node.core = RaftCore(
            name,
            self.initial_conf if node.idx < self.cfg.nodes else ConfState(frozenset()),
            rng=random.Random(f"{self.cfg.seed}/{name}/{node.incarnation}"),
            config=self.raft_cfg,
            hard_state=disk.load_state(),
            snapshot=snap,
            entries=entries,
            log=lambda text: self._core_event(name, text),
        )
        node.core.guard.roster = self.roster
        node.last_commit = node.core.log.committed
        self._rebuild_chains(node, snap, entries)
        if self.clients is not None:
            node.kv = KVStore()
            if snap is not None:
                node.kv.restore(snap.data)
        else:
            node.sm_hash = self._sm_from_snapshot(snap)
        first_tick = self.rng_net.randrange(1, self.cfg.tick_us)
        node.next_tick = self.now + first_tick
        node.wake_at = -1
        node.ticks_pushed += 1  # a tick event of an earlier life is stale
        self._schedule(node)

    def _sent_vote(self, m: RequestVoteResponse) -> None:
        self.inv.vote_granted(m.src, m.term, m.dst)
        voter = self.by_name[m.src]
        voter.votes_out[m.term] = m.dst
        self.nemesis.vote_granted(voter)

    def _rebuild_chains(self, node: SimNode, snap: Snapshot | None, log: list[LogEntry]) -> None:
        node.chains = {}
        base = 0
        if snap is not None:
            base = snap.meta.index
            node.chains[base] = self.inv._chain_at.get((base, snap.meta.term), 0)
        else:
            node.chains[0] = 0
        node.chain_last = base
        self._chain_entries(node, log, check=False)

    def _chain_entries(self, node: SimNode, entries: list[LogEntry], check: bool) -> None:
        chains = node.chains
        if not entries:
            return
        first = entries[0].index
        for i in range(first, node.chain_last + 1):
            chains.pop(i, None)
        prev = chains.get(first - 1, 0)
        inv = self.inv
        for e in entries:
            prev = hash((prev, e.term, e.command))
            chains[e.index] = prev
            if check:
                inv.persisted(node.name, e.index, e.term, prev)
        node.chain_last = entries[-1].index

    @staticmethod
    def _sm_from_snapshot(snap: Snapshot | None) -> int:
        return int(snap.data.decode().split(":")[1]) if snap is not None else 0

    def crash(self, node: SimNode) -> None:
        """Drop all of a node's memory; an unfinished write keeps a random prefix."""
        if node.core is None:
            return
        rd = node.busy
        if rd is not None:
            self._write(node, rd, partial=True)
        self._check_votes_durable(node)
        node.core = None
        node.busy = None
        node.inbox = []
        node.pending = {}
        node.kv = None
        if self.clients is not None:
            self.clients.crashed(node)
        self.stats["crashes"] += 1
        self.log(f"{node.name} crashed")

    def _check_votes_durable(self, node: SimNode) -> None:
        """Figure 2: every vote a node granted and sent is on its disk (its term passed, or
        ``voted_for`` names that candidate) when the node crashes."""
        d = node.disk.state
        for term, candidate in node.votes_out.items():
            if d.term < term or (d.term == term and d.voted_for != candidate):
                self.inv.fail(
                    "vote_not_durable",
                    f"{node.name} crashed after granting its term-{term} vote to {candidate}, "
                    f"but its disk holds term {d.term}, vote {d.voted_for}",
                )
                return
        node.votes_out = {}

    def restart(self, node: SimNode) -> None:
        if node.core is not None:
            return
        self.log(f"{node.name} restarted")
        self._start(node)

    def fresh(self, node: SimNode) -> None:
        """Start ``node`` as a new, empty server (a membership change adds it)."""
        node.disk = SimDisk()
        self._start(node)

    def _tick(self, node: SimNode, token: int) -> None:
        core = node.core
        if token != node.ticks_pushed or core is None:
            return  # stale
        node.wake_at = -1
        now = self.now
        if node.next_tick < now:
            self._catch_up(node, now - 1)
        assert node.next_tick == now, (node.name, node.next_tick, now)
        node.next_tick = now + self.cfg.tick_us
        if node.busy is not None:
            node.inbox.append(None)
            return
        if core.role is _LEADER and self._check_quorum_bound:
            self._check_leader_quorum(node, core)
        core.tick()
        # A follower's tick changes nothing unless it started an election (then it has
        # messages or a new term to persist); everything else was pumped after its step.
        if core.role is not _FOLLOWER or core.msgs or core._hs_dirty():
            self._after_step(node)
        self._schedule(node)

    def _check_leader_quorum(self, node: SimNode, core: RaftCore) -> None:
        """Check-quorum (dissertation §6.2): a leader that has heard from no majority of voters
        for two election timeouts (its check runs once per timeout) has stepped down."""
        voters = core.conf.voters
        if voters != node.quorum_of:  # a new configuration: its quorum is counted anew
            node.quorum_of = voters
            node.led_since = self.now
        heard = node.heard
        since = node.led_since
        times = sorted(
            (self.now if v == node.name else max(heard.get(v, 0), since) for v in voters),
            reverse=True,
        )
        if not times:
            return
        last_quorum = times[len(times) // 2]
        if self.now - last_quorum > self._check_quorum_bound:
            self.inv.fail(
                "leader_without_quorum",
                f"{node.name} still leads term {core.term} although no majority of "
                f"{{{','.join(sorted(voters))}}} has answered it for "
                f"{(self.now - last_quorum) / 1e6:.3f}s",
            )

    def _deliver(self, m: Message) -> None:
        node = self.by_name[m.dst]
        core = node.core
        if core is None or (self.blocked and (m.src, m.dst) in self.blocked):
            return
        if isinstance(m, _ALIVE):
            node.heard[m.src] = self.now
        if node.next_tick <= self.now:
            self._catch_up(node, self.now)
        if node.busy is not None:
            node.inbox.append(m)
            return
        core.step(m)
        self._after_step(node)
        self._schedule(node)

    def _after_step(self, node: SimNode) -> None:
        core = node.core
        assert core is not None
        if core.role is _LEADER and core.term != node.led_term:
            self._check_leader(node)
        committed = core.log.committed
        if committed != node.last_commit:
            self._commit_moved(node, committed)
        self._pump(node)

    def _commit_moved(self, node: SimNode, committed: int) -> None:
        core = node.core
        assert core is not None
        if committed < node.last_commit:
            self.inv.commit_regressed(node.name, node.last_commit, committed)
            return
        log = core.log
        if core.role is _LEADER:
            if log.term(committed) != core.term:
                self.inv.fail(
                    "leader_commit_term",
                    f"leader {node.name} (term {core.term}) committed up to {committed}, "
                    f"an entry of term {log.term(committed)}",
                )
            self._check_commit_durable(node, core, committed)
        lo = max(node.last_commit, log.snap_index) + 1
        newly = log.entries[lo - log.snap_index - 1 : committed - log.snap_index]
        assert len(newly) == committed - lo + 1, (node.name, lo, committed, log.last_index())
        inv = self.inv
        for e in newly:
            inv.committed(node.name, e.index, e.term)
        self.stats["commits"] = max(self.stats["commits"], committed)
        node.last_commit = committed

    def _check_commit_durable(self, node: SimNode, core: RaftCore, index: int) -> None:
        """Raft §5.3: a leader commits an entry once it is stored on a majority of voters; here
        "stored" is what their disks hold, not what they said."""
        term = core.log.term(index)
        voters = core.conf.voters
        holding = sum(1 for v in voters if _durable_on(self.by_name[v].disk, index, term))
        if holding <= len(voters) // 2:
            self.inv.fail(
                "commit_not_durable",
                f"leader {node.name} (term {core.term}) committed index {index} (term {term}) "
                f"while only {holding} of {len(voters)} voters held it on disk",
            )

    def pump(self, node: SimNode) -> None:
        """Hand ``node``'s Readys to its disk and network until it is busy or has none."""
        self._pump(node)

    def _pump(self, node: SimNode) -> None:
        core = node.core
        if core is None:
            return
        while node.busy is None and core.has_ready():
            rd = core.ready()
            if (
                rd.hard_state is None
                and not rd.entries
                and rd.snapshot is None
                and rd.compacted is None
            ):
                self._finish(node, rd)
                continue
            if rd.entries and core.role is _LEADER:
                self._check_conf_entries(node, core, rd.entries)
            fsync_us = node.fsync_us
            if fsync_us:
                # Ready messages never depend on the Ready's own state: they leave now and
                # the write proceeds in parallel (a leader's fsync overlaps its followers').
                for m in rd.messages:
                    self._send(m)
                rd.messages = []
                node.busy = rd
                self._push(self.now + fsync_us, _PERSISTED, node, node.incarnation)
                self.nemesis.writing(node, rd.hard_state is not None, fsync_us)
                return
            self._write(node, rd, partial=False)
            self._finish(node, rd)

    def _check_conf_entries(self, node: SimNode, core: RaftCore, entries: list[LogEntry]) -> None:
        """Dissertation §4.1: a leader appends a configuration entry only once every earlier
        one in its log is committed (one single-server change at a time)."""
        for e in entries:
            if e.kind is not _CONFIG:
                continue
            log = core.log
            i = e.index - 1
            while i > log.snap_index and log.entry(i).kind is not _CONFIG:
                i -= 1
            if i > log.snap_index and i > self.inv.max_committed:
                self.inv.fail(
                    "config_overlap",
                    f"leader {node.name} appended a configuration change at {e.index} while "
                    f"the one at {i} was not committed (committed: {self.inv.max_committed})",
                )

    def _persisted(self, node: SimNode, incarnation: int) -> None:
        if node.incarnation != incarnation or node.busy is None:
            return
        self._catch_up(node, self.now)  # into the inbox, before the write completes
        rd = node.busy
        self._write(node, rd, partial=False)
        node.busy = None
        self._finish(node, rd)
        core = node.core
        inbox, node.inbox = node.inbox, []
        for item in inbox:
            if core is None:
                break
            if item is None:
                core.tick()
            elif isinstance(item, bytes):
                self._propose_now(node, item)
            elif callable(item):
                item()
            else:
                core.step(item)
        if core is not None:
            self._after_step(node)
        self._schedule(node)

    def _write(self, node: SimNode, rd: Ready, partial: bool) -> None:
        """Make ``rd``'s state durable, in the order a real driver does: hard state, then
        snapshot, then entries. ``partial``: a crash cut the write short somewhere."""
        disk = node.disk
        if partial:
            parts = int(rd.hard_state is not None) + int(rd.snapshot is not None)
            parts += int(rd.compacted is not None) + len(rd.entries)
            keep = self.rng_net.randrange(parts + 1)
            if keep and rd.hard_state is not None:
                disk.save_state(rd.hard_state)
                keep -= 1
            for snap in (rd.snapshot, rd.compacted):
                if keep and snap is not None:
                    disk.save_snapshot(snap)
                    keep -= 1
            if keep and rd.entries:
                disk.append_log(rd.entries[:keep])
            return
        if rd.hard_state is not None:
            disk.save_state(rd.hard_state)
        if rd.snapshot is not None:
            disk.save_snapshot(rd.snapshot)
        if rd.compacted is not None:
            disk.save_snapshot(rd.compacted)
        if rd.entries:
            disk.append_log(rd.entries)
        if rd.snapshot is not None:
            self._rebuild_chains(node, rd.snapshot, [])
            # The log a node keeps after installing a snapshot must continue the snapshot
            # (Raft §7): what its core holds beyond the snapshot is chained anew and checked.
            core = node.core
            assert core is not None
            first_new = rd.entries[0].index if rd.entries else core.log.last_index() + 1
            kept = [e for e in core.log.entries if e.index < first_new]
            self._chain_entries(node, kept, check=True)
        self._chain_entries(node, rd.entries, check=True)

    def _finish(self, node: SimNode, rd: Ready) -> None:
        core = node.core
        assert core is not None
        if rd.messages:
            send = self._send
            for m in rd.messages:
                send(m)
        kv = node.kv
        if rd.snapshot is not None:
            if kv is not None:
                kv.restore(rd.snapshot.data)
            else:
                node.sm_hash = self._sm_from_snapshot(rd.snapshot)
        entries = rd.committed_entries
        if not entries:
            # nothing applied, so nothing to compact (the policy counts applied entries)
            core.advance(rd)
            if rd.read_states and self.clients is not None:
                self._read_states(node, rd)
            if core.role is _LEADER and core.term != node.led_term:
                self._check_leader(node)
            return
        if kv is not None:
            self._apply_kv(node, kv, entries)
        else:
            self._apply_blind(node, entries)
        core.advance(rd)
        if self.clients is not None:
            if rd.read_states:
                self._read_states(node, rd)
            else:
                self.clients.serve_reads(node)
        if core.should_compact():
            applied = core.log.applied
            if kv is not None:
                core.compact(applied, kv.snapshot())
            else:
                # padded to a seeded size so that snapshots travel in several chunks
                pad = b"." * ((self.cfg.seed * 7919 + applied * 104_729) % 400)
                core.compact(applied, f"{applied}:{node.sm_hash}:".encode() + pad)
        if core.role is _LEADER and core.term != node.led_term:
            self._check_leader(node)

    def _read_states(self, node: SimNode, rd: Ready) -> None:
        assert self.clients is not None
        problem = self.clients.read_states(node, rd.read_states)
        if problem is not None:
            self.inv.fail("read_index_stale", problem)

    def _apply_blind(self, node: SimNode, entries: list[LogEntry]) -> None:
        inv = self.inv
        for e in entries:
            if e.kind is _NORMAL:
                # crc32, not hash(): bytes hash differently in every process, and this value
                # ends up in snapshot data whose size decides how many chunks are sent
                node.sm_hash = zlib.crc32(e.command, node.sm_hash)
            inv.applied(node.name, e.index, e.term, e.command)
            if node.applied_log is not None:
                node.applied_log[e.index] = e.command
            waiting = node.pending.pop(e.index, None)
            if waiting is not None and waiting[0] == e.term:
                inv.acknowledged(e.index, e.command)
                self.stats["acked"] += 1

    def _apply_kv(self, node: SimNode, kv: KVStore, entries: list[LogEntry]) -> None:
        inv = self.inv
        clients = self.clients
        assert clients is not None
        for e in entries:
            result = kv.apply(e.command) if e.kind is _NORMAL else b""
            inv.applied(node.name, e.index, e.term, e.command)
            if node.applied_log is not None:
                node.applied_log[e.index] = e.command
            problem = clients.applied(node, e, result)
            if problem is not None:
                inv.fail("exactly_once", problem)

    def _check_leader(self, node: SimNode) -> None:
        core = node.core
        assert core is not None
        node.led_term = core.term
        node.led_since = self.now
        key = (core.term, core.id)
        if key in self._leaders_seen:
            return
        self._leaders_seen.add(key)
        self.stats["elections"] += 1
        mc = self.inv.max_committed
        self.inv.became_leader(node.name, core.term, {mc: core.log.term(mc)})

    # ---- network --------------------------------------------------------------------------
    def _send(self, m: Message) -> None:
        rng = self.rng_net
        self.stats["messages"] += 1
        if type(m) is RequestVoteResponse:
            if m.granted and not m.pre_vote:
                self._sent_vote(m)
        elif type(m) is InstallSnapshot and not m.done:
            self.nemesis.chunk_sent(self.by_name[m.src], self.by_name[m.dst])
        if self.drop_p and rng.random() < self.drop_p:
            return
        # _exp and _push inlined: this runs for every message
        at = self.now + self.cfg.delay_min_us
        at += int(-_ln(1.0 - rng.random()) / (1.0 / self.delay_mean)) + 1
        self._seq += 1
        heappush(self._heap, (at, self._seq, _DELIVER, m, None))
        if self.dup_p and rng.random() < self.dup_p:
            self._push(at + self._exp(rng, self.delay_mean), _DELIVER, m, None)

    def partition(self, groups: list[set[str]]) -> None:
        """Cut every link between different groups (nodes not listed form one more group)."""
        listed: set[str] = set().union(*groups)
        rest = {str(n.name) for n in self.nodes} - listed
        all_groups = [g for g in [*groups, rest] if g]
        self.blocked = {
            (a, b) for g1 in all_groups for g2 in all_groups if g1 is not g2 for a in g1 for b in g2
        }
        self.log(f"partition {' | '.join(','.join(sorted(g)) for g in all_groups)}")

    def cut(self, links: set[tuple[str, str]]) -> None:
        self.blocked = set(links)
        self.log(f"one-way cuts {sorted(links)}")

    def heal(self) -> None:
        if self.blocked:
            self.log("network healed")
        self.blocked = set()

    # ---- clients --------------------------------------------------------------------------
    def propose(self, node: SimNode, command: bytes) -> tuple[int, int] | None:
        """Submit ``command`` at ``node``: its ``(index, term)``, or None if ``node`` is not
        the leader or is in the middle of a write (then the proposal is queued, as the
        runtime queues it, and may still be appended)."""
        if node.core is None:
            return None
        self._catch_up(node, self.now)
        if node.busy is not None:
            node.inbox.append(command)
            return None
        placed = self._propose_now(node, command)
        self._after_step(node)
        self._schedule(node)
        return placed

    def _propose_now(self, node: SimNode, command: bytes) -> tuple[int, int] | None:
        assert node.core is not None
        try:
            index, term = node.core.propose(command)
        except RaftError:
            return None
        node.pending[index] = (term, command)
        return index, term

    def _client(self) -> None:
        cfg = self.cfg
        if not self.nemesis.faults_on:
            return  # clients stop with the faults: the settle period only converges
        self._push(self.now + self._exp(self.rng_cli, cfg.client_interval_us), _CLIENT, 0, 0)
        guess = self._client_guess
        node = self.by_name.get(guess) if guess else None
        if node is None or node.core is None or node.core.role is not _LEADER:
            hint = node.core.lead if node is not None and node.core is not None else None
            self._client_guess = hint or self.rng_cli.choice(self.nodes).name
            return
        self.propose_blind(node)

    def propose_blind(self, node: SimNode) -> None:
        """Propose the next numbered command (``c1``, ``c2``...) at ``node``."""
        self._next_cmd += 1
        self.propose(node, b"c%d" % self._next_cmd)

    def calm(self) -> None:
        """Heal every fault and restart every node: the settle period before the end."""
        if self.clients is not None:
            self.clients.stop()
        self.nemesis.calm()

    # ---- end-of-run checks -----------------------------------------------------------------------
    def _lagging(self) -> str | None:
        """What keeps the cluster from having converged: no leader, or a member behind it."""
        leader = self.nemesis.leader()
        if leader is None or leader.core is None:
            return "no leader"
        log = leader.core.log
        for name in sorted(leader.core.conf.members()):
            member = self.by_name[name]
            if member.core is not None and member.core.log.applied < log.committed:
                return f"{name} applied only {member.core.log.applied} of {log.committed}"
        return None

    def _check_end(self) -> None:
        """Liveness after the settle period, then durability of what clients were told.

        A cluster still converging when the settle period ends (a slow disk catching up over a
        reordering network, say) gets up to ``END_GRACE_US`` more, with no faults and no new
        client work; only one that has not converged by then is a liveness violation."""
        settle = self.cfg.settle_us
        waited = 0
        lag = self._lagging()
        while lag is not None and waited < END_GRACE_US and not self.inv.violations:
            self.run_until(self.now + 500_000)
            waited += 500_000
            lag = self._lagging()
        if self.inv.violations:
            return
        if lag is not None:
            self.inv.fail("liveness", f"{lag} {(settle + waited) / 1e6:.1f}s after healing")
            return
        leader = self.nemesis.leader()
        assert leader is not None
        assert leader.core is not None
        log = leader.core.log
        for index, command in self.inv.acked_items():
            if index <= log.snap_index:
                continue
            if index > log.last_index() or log.entry(index).command != command:
                self.inv.fail(
                    "durability",
                    f"acknowledged {command!r} at {index} missing from leader {leader.name}",
                )
                return
