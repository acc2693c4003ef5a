"""The simulator's nemesis: seeded faults acted out on a :class:`~harness.sim.world.World`.

Theory of operation
-------------------
Every ``nemesis_gap_us`` (drawn from the run's :class:`~harness.sim.params.RunParams`) the
nemesis picks one of the run's fault kinds and acts it out for a while: partitions of any
shape and one-way cuts, crashes (of the leader, of anyone, of everyone) with restarts from the
node's disk, message loss, delay and duplication, "churn" (Figure 8's adversary: crash whoever
leads just after it took a proposal, and bounce voters right after they grant a vote), and
membership changes (add a fresh server, remove anyone, the leader included).

Beyond the scheduled faults, crashes are aimed where Raft's bugs live (each with a chance the
run's parameters set, zero unless the run asks for it):

* inside a write: a node crashes while a Ready is being persisted, after its messages left
  (``crash_vote_write_p`` for a Ready that changes term or vote, ``crash_entries_write_p`` for
  one that only appends); the write survives as a random prefix of its parts;
* mid-snapshot: the sender or receiver of an InstallSnapshot chunk that is not the last;
* mid-change: the leader, right after a membership change was proposed to it; and a second
  change proposed at once after the first (``overlap_change_p``), which the leader must refuse
  while the first is uncommitted (dissertation §4.1).

All randomness comes from the world's nemesis stream, so a seed replays the same faults.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING

from raft.core.errors import RaftError
from raft.core.raft import Role
from raft.core.types import ConfChange, ConfChangeType

if TYPE_CHECKING:
    from harness.sim.world import SimNode, World

_LEADER = Role.LEADER


class SimNemesis:
    def __init__(self, world: World) -> None:
        self.w = world
        self.p = world.params
        self.rng = world.rng_nem
        self.faults_on = True
        self.churning = 0

    # ---- scheduling -------------------------------------------------------------------------
    def act(self, action: Callable[[], None] | None) -> None:
        """One nemesis event: a scheduled action, or the next fault of the schedule."""
        if not self.faults_on:
            return
        if action is not None:
            action()
            return
        rng = self.rng
        kinds = sorted(self.p.faults - {"snapshot"})
        kind = rng.choice(kinds)
        duration = rng.randrange(*self.p.fault_span_us)
        getattr(self, f"_fault_{kind}")(rng, duration)
        self.w.push_nemesis(self.w.now + rng.randrange(*self.p.nemesis_gap_us), None)

    def later(self, delay: int, fn: Callable[[], None]) -> None:
        self.w.push_nemesis(self.w.now + delay, fn)

    def calm(self) -> None:
        """Heal every fault and restart every node: the settle period before the end."""
        w = self.w
        self.faults_on = False
        w.heal()
        w.drop_p = w.dup_p = 0.0
        w.delay_mean = w.cfg.delay_mean_us
        for node in w.nodes:
            if node.core is None and self.is_member(node):
                w.restart(node)
        w.log("nemesis: calm")

    def is_member(self, node: SimNode) -> bool:
        return node.idx < self.w.cfg.nodes or node.disk.load_state().term > 0

    def leader(self) -> SimNode | None:
        """The leader of the highest term among live nodes, if any."""
        leaders = [n for n in self.w.nodes if n.core is not None and n.core.role is _LEADER]
        return max(leaders, key=lambda n: n.core.term if n.core else -1, default=None)

    def crasher(self, node: SimNode) -> Callable[[], None]:
        return lambda: self.w.crash(node)

    def restarter(self, node: SimNode) -> Callable[[], None]:
        return lambda: self.w.restart(node)

    def crash_for(self, node: SimNode, after: int, down: tuple[int, int]) -> None:
        """Crash ``node`` in ``after`` µs and restart it ``down`` (a range, µs) later."""
        rng = self.rng
        self.later(after, self.crasher(node))
        self.later(after + rng.randrange(*down), self.restarter(node))

    # ---- crashes aimed at windows --------------------------------------------------------------
    def writing(self, node: SimNode, changes_vote: bool, fsync_us: int) -> None:
        """``node`` started a write whose messages already left: maybe crash it before the end."""
        p = self.p.crash_vote_write_p if changes_vote else self.p.crash_entries_write_p
        if p and self.faults_on and self.rng.random() < p:
            self.w.log(f"nemesis: {node.name} crashes inside its write")
            self.crash_for(node, self.rng.randrange(0, fsync_us), (2_000, 200_000))

    def chunk_sent(self, src: SimNode, dst: SimNode) -> None:
        """A snapshot chunk (not the last) left ``src`` for ``dst``: maybe crash one of them."""
        p = self.p.crash_chunk_p
        if p and self.faults_on and self.rng.random() < p:
            victim = src if self.rng.random() < 0.5 else dst
            self.w.log(f"nemesis: {victim.name} crashes mid-snapshot")
            self.crash_for(victim, self.rng.randrange(0, 3_000), (10_000, 300_000))

    def vote_granted(self, voter: SimNode) -> None:
        """While churn runs, a voter is bounced right after it granted a vote: a vote that was
        not durable is forgotten, and the node may be asked again in the same term."""
        if self.churning and self.rng.random() < 0.3:
            rng = self.rng
            self.later(rng.randrange(1, 2_000), self.crasher(voter))
            self.later(rng.randrange(2_000, 30_000), self.restarter(voter))

    # ---- scheduled faults ------------------------------------------------------------------------
    def _fault_partition(self, rng: random.Random, duration: int) -> None:
        w = self.w
        names: list[str] = [n.name for n in w.nodes]
        shape = rng.random()
        if shape < 0.4:
            rng.shuffle(names)
            k = rng.randrange(1, len(names) // 2 + 1)
            w.partition([set(names[:k])])
        elif shape < 0.7:
            leader = self.leader()
            victim = leader.name if leader is not None and rng.random() < 0.6 else rng.choice(names)
            w.partition([{victim}])
            if leader is not None and victim == leader.name and self.p.minority_burst:
                for _ in range(rng.randrange(1, self.p.minority_burst + 1)):
                    w.propose_blind(leader)
        else:
            links = {(a, b) for a in names for b in names if a != b and rng.random() < 0.3}
            w.cut(links)
        self.later(duration, w.heal)

    def _fault_crash(self, rng: random.Random, duration: int) -> None:
        up = [n for n in self.w.nodes if n.core is not None]
        if not up:
            return
        if rng.random() < 0.1:
            victims = up
        else:
            leader = self.leader()
            victims = [leader if leader is not None and rng.random() < 0.5 else rng.choice(up)]
        for v in victims:
            self.w.crash(v)
            self.later(rng.randrange(50_000, duration), self.restarter(v))

    def _fault_churn(self, rng: random.Random, duration: int) -> None:
        self.churning += 1
        self._churn(rng, rng.randrange(3, 12))

    def _churn(self, rng: random.Random, rounds: int) -> None:
        """Figure 8's adversary: crash whoever leads a few ms after it took a proposal, and
        restart nodes so that a majority is usually up."""
        w = self.w
        if rounds <= 0 or not self.faults_on:
            self.churning = max(0, self.churning - 1)
            return
        leader = self.leader()
        if leader is not None:
            w.propose_blind(leader)
            self.later(rng.randrange(500, 30_000), self.crasher(leader))
        down = [n for n in w.nodes if n.core is None and self.is_member(n)]
        if down and rng.random() < 0.7:
            w.restart(rng.choice(down))
        self.later(rng.randrange(20_000, 300_000), lambda: self._churn(rng, rounds - 1))

    def _fault_drop(self, rng: random.Random, duration: int) -> None:
        w = self.w
        w.drop_p = rng.uniform(*self.p.drop_p)
        w.log(f"dropping {w.drop_p:.0%} of messages")
        self.later(duration, self._end_drop)

    def _end_drop(self) -> None:
        self.w.drop_p = 0.0

    def _fault_delay(self, rng: random.Random, duration: int) -> None:
        w = self.w
        w.delay_mean = rng.randrange(*self.p.delay_mean_us)
        w.log(f"mean network delay {w.delay_mean / 1000:.0f} ms")
        self.later(duration, self._end_delay)

    def _end_delay(self) -> None:
        self.w.delay_mean = self.w.cfg.delay_mean_us

    def _fault_duplicate(self, rng: random.Random, duration: int) -> None:
        w = self.w
        w.dup_p = rng.uniform(*self.p.dup_p)
        w.log(f"duplicating {w.dup_p:.0%} of messages")
        self.later(duration, self._end_dup)

    def _end_dup(self) -> None:
        self.w.dup_p = 0.0

    def _fault_membership(self, rng: random.Random, duration: int) -> None:
        leader = self.leader()
        if leader is None or leader.core is None:
            return
        change = self._draw_change(rng, leader)
        if not self._propose_change(leader, change):
            return
        if self.p.overlap_change_p and rng.random() < self.p.overlap_change_p:
            second = self._draw_change(rng, leader)
            if second.node != change.node:
                self._propose_change(leader, second)  # the guard must refuse it
        self.w.pump(leader)
        if self.p.crash_change_p and rng.random() < self.p.crash_change_p:
            self.w.log(f"nemesis: {leader.name} crashes mid-change")
            self.crash_for(leader, rng.randrange(200, 20_000), (20_000, 400_000))

    def _draw_change(self, rng: random.Random, leader: SimNode) -> ConfChange:
        assert leader.core is not None
        conf = leader.core.conf
        outside = [n for n in self.w.nodes if n.name not in conf.members()]
        if outside and (len(conf.voters) <= 3 or rng.random() < 0.5):
            node = rng.choice(outside)
            if node.core is None:
                self.w.fresh(node)  # a fresh, empty server joins
            return ConfChange(ConfChangeType.ADD_VOTER, node.name)
        return ConfChange(ConfChangeType.REMOVE, rng.choice(sorted(conf.members())))

    def _propose_change(self, leader: SimNode, change: ConfChange) -> bool:
        w = self.w
        assert leader.core is not None
        try:
            leader.core.propose_conf_change(change)
        except RaftError as exc:
            w.log(f"membership change refused: {exc}")
            return False
        w.log(f"membership change proposed: {change.type.value} {change.node}")
        return True
