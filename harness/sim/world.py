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
* The disk is a :class:`~raft.storage.MemoryStorage` holding only what was synced. A crash
  drops the node's memory; a write in progress survives only as a random prefix of its ordered
  parts (hard state, snapshot, then entries one by one) — what a real disk may keep.
* The network delivers each message after a random delay (so it reorders), and may drop or
  duplicate it; partitions block directed links at delivery time.
* Invariants (:mod:`harness.sim.invariants`) are checked after every step.
"""

from __future__ import annotations

import hashlib
import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from heapq import heappop, heappush
from math import log as _ln
from typing import Any

from harness.sim.invariants import Invariants, Violation
from raft.core.errors import RaftError
from raft.core.messages import Message, RequestVoteResponse
from raft.core.raft import RaftConfig, RaftCore, Ready, Role
from raft.core.types import (
    ConfChange,
    ConfChangeType,
    ConfState,
    EntryKind,
    LogEntry,
    NodeId,
    Snapshot,
)
from raft.storage import MemoryStorage

FAULTS = ("partition", "crash", "drop", "delay", "duplicate", "churn", "membership", "snapshot")

# event kinds
_TICK, _DELIVER, _PERSISTED, _CLIENT, _NEMESIS, _CALL = range(6)
#: tick events sort before every other event of the same microsecond (whose sequence numbers
#: are positive), and among themselves by node: see ``World._push_tick``
_TICK_SEQ = -(1 << 62)

# aliases: an enum member looked up through its class costs ~0.1 µs in CPython 3.11
_LEADER = Role.LEADER
_FOLLOWER = Role.FOLLOWER
_NORMAL = EntryKind.NORMAL


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

    def node_names(self) -> list[str]:
        total = self.nodes + self.spare_nodes
        if self.names:
            if len(self.names) != total:
                raise ValueError(f"need {total} names, got {len(self.names)}")
            return list(self.names)
        return [f"n{i + 1}" for i in range(total)]

    def raft_config(self, rng: random.Random | None = None) -> RaftConfig:
        max_msg = self.max_msg_bytes
        if not max_msg:
            max_msg = (rng or random.Random(self.seed)).choice([40, 300, 64 * 1024])
        return RaftConfig(
            election_ticks=self.election_ticks,
            heartbeat_ticks=self.heartbeat_ticks,
            pre_vote=self.pre_vote,
            check_quorum=self.check_quorum,
            max_inflight=self.max_inflight,
            max_msg_bytes=max_msg,
            snapshot_entries=self.snapshot_entries,
            snapshot_chunk_bytes=64,
        )


@dataclass(slots=True)
class SimNode:
    name: NodeId
    idx: int
    disk: MemoryStorage = field(default_factory=MemoryStorage)
    core: RaftCore | None = None
    incarnation: int = 0
    #: the time of this node's next tick not yet accounted for (ticks are ``tick_us`` apart)
    next_tick: int = 0
    #: the time of this node's live tick event on the heap (-1: none); the live one carries
    #: ``ticks_pushed``, any older one is stale
    wake_at: int = -1
    ticks_pushed: int = 0
    busy: Ready | None = None
    #: what arrived while a write was in progress: a message, ``None`` (a tick) or ``bytes``
    #: (a client proposal); processed together once the write is durable (group commit)
    inbox: list[Message | bytes | None] = field(default_factory=list)
    chains: dict[int, int] = field(default_factory=dict)
    chain_last: int = 0
    sm_hash: int = 0
    last_commit: int = 0
    pending: dict[int, tuple[int, bytes]] = field(default_factory=dict)
    #: index -> command of every entry this node applied (only with ``record_applied``)
    applied_log: dict[int, bytes] | None = None
    #: the last term in which this node was seen leading (``World._check_leader`` done)
    led_term: int = -1

    @property
    def up(self) -> bool:
        return self.core is not None


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
        self.raft_cfg = cfg.raft_config(random.Random(f"{cfg.seed}/config"))
        names = cfg.node_names()
        self.nodes = [SimNode(NodeId(n), i) for i, n in enumerate(names)]
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
        self._faults_on = True
        self._churning = 0
        self._leaders_seen: set[tuple[int, str]] = set()
        for node in self.nodes[: cfg.nodes]:
            self._start(node)
        if cfg.client_interval_us:
            self._push(self._exp(self.rng_cli, cfg.client_interval_us), _CLIENT, None, None)
        if cfg.faults - {"snapshot"}:
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

    @staticmethod
    def _exp(rng: random.Random, mean: int) -> int:
        # rng.expovariate(1.0 / mean) inlined (the same arithmetic, so the same values)
        return int(-_ln(1.0 - rng.random()) / (1.0 / mean)) + 1

    def log(self, text: str) -> None:
        if self.trace_fn is not None:
            self.trace_fn(f"[t={self.now / 1e6:.3f}s] {text}")
        if self._digest is not None:
            self._digest.update(f"{self.now} {text}\n".encode())

    def trace_digest(self) -> str:
        assert self._digest is not None, "World(digest=True) to compute a digest"
        return self._digest.hexdigest()

    def run_until(self, end_us: int) -> list[Violation]:
        heap = self._heap
        inv = self.inv
        self._schedule_all()  # the cores may have been changed from outside since last time
        while heap and heap[0][0] <= end_us and not inv.violations:
            t, _, kind, a, b = heappop(heap)
            self.now = inv.now_us = t
            if kind == _DELIVER:
                self._deliver(a)
            elif kind == _TICK:
                self._tick(a, b)
            elif kind == _PERSISTED:
                self._persisted(a, b)
            elif kind == _CLIENT:
                self._client()
            else:
                # the nemesis and scripted calls may touch any node
                self._catch_up_all()
                if kind == _NEMESIS:
                    self._nemesis(a)
                else:
                    a()
                self._schedule_all()
        if not inv.violations:
            self.now = max(self.now, end_us)
        self._catch_up_all()  # every core as if it had ticked up to now
        return inv.violations

    def run(self) -> list[Violation]:
        cfg = self.cfg
        calm_at = max(0, cfg.duration_us - cfg.settle_us)
        self.at(calm_at, self.calm)
        try:
            violations = self.run_until(cfg.duration_us)
            if not violations and self.check_liveness:
                self._check_end()
        except Exception as exc:  # an assertion in the core is a finding, not a crash
            self.inv.fail("exception", f"{type(exc).__name__}: {exc}")
        return self.inv.violations

    # ---- nodes ----------------------------------------------------------------------------
    def _start(self, node: SimNode) -> None:
        disk = node.disk
        snap = disk.load_snapshot()
        entries = disk.load_log()
        node.incarnation += 1
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
            log=lambda text: self.log(f"{name}: {text}"),
        )
        node.core.guard.roster = self.roster
        node.last_commit = node.core.log.committed
        self._rebuild_chains(node, snap, entries)
        node.sm_hash = self._sm_from_snapshot(snap)
        first_tick = self.rng_net.randrange(1, self.cfg.tick_us)
        node.next_tick = self.now + first_tick
        node.wake_at = -1
        node.ticks_pushed += 1  # a tick event of an earlier life is stale
        self._schedule(node)

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
        node.core = None
        node.busy = None
        node.inbox = []
        node.pending = {}
        self.stats["crashes"] += 1
        self.log(f"{node.name} crashed")

    def restart(self, node: SimNode) -> None:
        if node.core is not None:
            return
        self.log(f"{node.name} restarted")
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
        core.tick()
        # A follower's tick changes nothing unless it started an election (then it has
        # messages or a new term to persist); everything else was pumped after its step.
        if core.role is not _FOLLOWER or core.msgs or core._hs_dirty():
            self._after_step(node)
        self._schedule(node)

    def _deliver(self, m: Message) -> None:
        node = self.by_name[m.dst]
        core = node.core
        if core is None or (self.blocked and (m.src, m.dst) in self.blocked):
            return
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
        if core.role is _LEADER and log.term(committed) != core.term:
            self.inv.fail(
                "leader_commit_term",
                f"leader {node.name} (term {core.term}) committed up to {committed}, "
                f"an entry of term {log.term(committed)}",
            )
        lo = max(node.last_commit, log.snap_index) + 1
        newly = log.entries[lo - log.snap_index - 1 : committed - log.snap_index]
        assert len(newly) == committed - lo + 1, (node.name, lo, committed, log.last_index())
        inv = self.inv
        for e in newly:
            inv.committed(node.name, e.index, e.term)
        self.stats["commits"] = max(self.stats["commits"], committed)
        node.last_commit = committed

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
            elif self.cfg.fsync_us:
                # Ready messages never depend on the Ready's own state: they leave now and
                # the write proceeds in parallel (a leader's fsync overlaps its followers').
                for m in rd.messages:
                    self._send(m)
                rd.messages = []
                node.busy = rd
                self._push(self.now + self.cfg.fsync_us, _PERSISTED, node, node.incarnation)
                return
            else:
                self._write(node, rd, partial=False)
                self._finish(node, rd)

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
        self._chain_entries(node, rd.entries, check=True)

    def _finish(self, node: SimNode, rd: Ready) -> None:
        core = node.core
        assert core is not None
        if rd.messages:
            send = self._send
            for m in rd.messages:
                send(m)
        if rd.snapshot is not None:
            node.sm_hash = self._sm_from_snapshot(rd.snapshot)
        entries = rd.committed_entries
        if not entries:
            # nothing applied, so nothing to compact (the policy counts applied entries)
            core.advance(rd)
            if core.role is _LEADER and core.term != node.led_term:
                self._check_leader(node)
            return
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
        core.advance(rd)
        if core.should_compact():
            applied = core.log.applied
            # padded to a seeded size so that snapshots travel in several chunks
            pad = b"." * ((self.cfg.seed * 7919 + applied * 104_729) % 400)
            core.compact(applied, f"{applied}:{node.sm_hash}:".encode() + pad)
        if core.role is _LEADER and core.term != node.led_term:
            self._check_leader(node)

    def _check_leader(self, node: SimNode) -> None:
        core = node.core
        assert core is not None
        node.led_term = core.term
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
        if type(m) is RequestVoteResponse and m.granted and not m.pre_vote:
            self.inv.vote_granted(m.src, m.term, m.dst)
            if self._churning and self.rng_nem.random() < 0.3:
                self._bounce(self.by_name[m.src])
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
        if not self._faults_on:
            return  # clients stop with the faults: the settle period only converges
        self._push(self.now + self._exp(self.rng_cli, cfg.client_interval_us), _CLIENT, 0, 0)
        guess = self._client_guess
        node = self.by_name.get(guess) if guess else None
        if node is None or node.core is None or node.core.role is not _LEADER:
            hint = node.core.lead if node is not None and node.core is not None else None
            self._client_guess = hint or self.rng_cli.choice(self.nodes).name
            return
        self._next_cmd += 1
        self.propose(node, b"c%d" % self._next_cmd)

    # ---- the nemesis ----------------------------------------------------------------------
    def calm(self) -> None:
        """Heal every fault and restart every node: the settle period before the end."""
        self._faults_on = False
        self.heal()
        self.drop_p = self.dup_p = 0.0
        self.delay_mean = self.cfg.delay_mean_us
        for node in self.nodes:
            if node.core is None and self._is_member(node):
                self.restart(node)
        self.log("nemesis: calm")

    def _is_member(self, node: SimNode) -> bool:
        return node.idx < self.cfg.nodes or node.disk.load_state().term > 0

    def _nemesis(self, action: Any) -> None:
        if not self._faults_on:
            return
        if action is not None:
            action()
            return
        rng = self.rng_nem
        kinds = sorted(self.cfg.faults - {"snapshot"})
        kind = rng.choice(kinds)
        duration = rng.randrange(200_000, 2_500_000)
        getattr(self, f"_fault_{kind}")(rng, duration)
        self._push(self.now + rng.randrange(100_000, 800_000), _NEMESIS, None, None)

    def _later(self, delay: int, fn: Callable[[], None]) -> None:
        self._push(self.now + delay, _NEMESIS, fn, None)

    def _leader(self) -> SimNode | None:
        """The leader of the highest term among live nodes, if any."""
        leaders = [n for n in self.nodes if n.core is not None and n.core.role is _LEADER]
        return max(leaders, key=lambda n: n.core.term if n.core else -1, default=None)

    def _fault_partition(self, rng: random.Random, duration: int) -> None:
        names: list[str] = [n.name for n in self.nodes]
        shape = rng.random()
        if shape < 0.4:
            rng.shuffle(names)
            k = rng.randrange(1, len(names) // 2 + 1)
            self.partition([set(names[:k])])
        elif shape < 0.7:
            leader = self._leader()
            victim = leader.name if leader is not None and rng.random() < 0.6 else rng.choice(names)
            self.partition([{victim}])
        else:
            links = {(a, b) for a in names for b in names if a != b and rng.random() < 0.3}
            self.cut(links)
        self._later(duration, self.heal)

    def _fault_crash(self, rng: random.Random, duration: int) -> None:
        up = [n for n in self.nodes if n.core is not None]
        if not up:
            return
        if rng.random() < 0.1:
            victims = up
        else:
            leader = self._leader()
            victims = [leader if leader is not None and rng.random() < 0.5 else rng.choice(up)]
        for v in victims:
            self.crash(v)
            self._later(rng.randrange(50_000, duration), self._restarter(v))

    def _fault_churn(self, rng: random.Random, duration: int) -> None:
        self._churning += 1
        self._churn(rng, rng.randrange(3, 12))

    def _bounce(self, node: SimNode) -> None:
        """Crash a node that just granted a vote and restart it a moment later: a vote that
        was not durable is forgotten, and the node may be asked again in the same term."""
        rng = self.rng_nem
        self._later(rng.randrange(1, 2_000), self._crasher(node))
        self._later(rng.randrange(2_000, 30_000), self._restarter(node))

    def _churn(self, rng: random.Random, rounds: int) -> None:
        """Figure 8's adversary: crash whoever leads a few ms after it took a proposal, and
        restart nodes so that a majority is usually up. While it runs, voters are bounced
        right after granting a vote."""
        if rounds <= 0 or not self._faults_on:
            self._churning = max(0, self._churning - 1)
            return
        leader = self._leader()
        if leader is not None:
            self._next_cmd += 1
            self.propose(leader, b"c%d" % self._next_cmd)
            self._later(rng.randrange(500, 30_000), self._crasher(leader))
        down = [n for n in self.nodes if n.core is None and self._is_member(n)]
        if down and rng.random() < 0.7:
            self.restart(rng.choice(down))
        self._later(rng.randrange(20_000, 300_000), lambda: self._churn(rng, rounds - 1))

    def _crasher(self, node: SimNode) -> Callable[[], None]:
        return lambda: self.crash(node)

    def _restarter(self, node: SimNode) -> Callable[[], None]:
        return lambda: self.restart(node)

    def _fault_drop(self, rng: random.Random, duration: int) -> None:
        self.drop_p = rng.uniform(0.05, 0.4)
        self.log(f"dropping {self.drop_p:.0%} of messages")
        self._later(duration, self._end_drop)

    def _end_drop(self) -> None:
        self.drop_p = 0.0

    def _fault_delay(self, rng: random.Random, duration: int) -> None:
        self.delay_mean = rng.randrange(5_000, 80_000)
        self.log(f"mean network delay {self.delay_mean / 1000:.0f} ms")
        self._later(duration, self._end_delay)

    def _end_delay(self) -> None:
        self.delay_mean = self.cfg.delay_mean_us

    def _fault_duplicate(self, rng: random.Random, duration: int) -> None:
        self.dup_p = rng.uniform(0.05, 0.3)
        self.log(f"duplicating {self.dup_p:.0%} of messages")
        self._later(duration, self._end_dup)

    def _end_dup(self) -> None:
        self.dup_p = 0.0

    def _fault_membership(self, rng: random.Random, duration: int) -> None:
        leader = self._leader()
        if leader is None or leader.core is None:
            return
        conf = leader.core.conf
        outside = [n for n in self.nodes if n.name not in conf.members()]
        if outside and (len(conf.voters) <= 3 or rng.random() < 0.5):
            node = rng.choice(outside)
            change = ConfChange(ConfChangeType.ADD_VOTER, node.name)
            if node.core is None:
                node.disk = MemoryStorage()  # a fresh, empty server joins
                self._start(node)
        else:
            victim = rng.choice(sorted(conf.members()))
            change = ConfChange(ConfChangeType.REMOVE, victim)
        try:
            leader.core.propose_conf_change(change)
        except RaftError as exc:
            self.log(f"membership change refused: {exc}")
            return
        self.log(f"membership change proposed: {change.type.value} {change.node}")
        self._pump(leader)

    # ---- end-of-run checks ----------------------------------------------------------------
    def _check_end(self) -> None:
        leader = self._leader()
        if leader is None or leader.core is None:
            self.inv.fail("liveness", f"no leader {self.cfg.settle_us / 1e6:.1f}s after healing")
            return
        log = leader.core.log
        for name in sorted(leader.core.conf.members()):
            member = self.by_name[name]
            if member.core is not None and member.core.log.applied < log.committed:
                self.inv.fail(
                    "liveness",
                    f"{name} applied only {member.core.log.applied} of {log.committed} "
                    f"{self.cfg.settle_us / 1e6:.1f}s after healing",
                )
                return
        for index, command in self.inv.acked_items():
            if index <= log.snap_index:
                continue
            if index > log.last_index() or log.entry(index).command != command:
                self.inv.fail(
                    "durability",
                    f"acknowledged {command!r} at {index} missing from leader {leader.name}",
                )
                return
