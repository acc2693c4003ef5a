"""A test-facing view of a simulated cluster, in the style of the classic Raft lab.

``LabCluster`` wraps a :class:`~harness.sim.world.World` with no nemesis and no background
clients: the test scripts the faults (crash, disconnect, partition, unreliable network) and
the commands, and advances simulated time explicitly. Every invariant of the world is still
checked after every step; ``run_for`` raises :class:`InvariantViolated` at the first one.

    lab = LabCluster(3, seed=1)
    lab.run_for(1.0)
    leader = lab.check_one_leader()
    index = lab.one(b"x", expected=3)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from harness.sim.invariants import Violation
from harness.sim.world import SimConfig, SimNode, World
from raft.core.raft import Role
from raft.core.types import NodeId


class InvariantViolated(AssertionError):
    def __init__(self, violations: list[Violation]) -> None:
        super().__init__("; ".join(v.describe() for v in violations))
        self.violations = violations


class LabCluster:
    def __init__(
        self,
        n: int = 3,
        *,
        seed: int = 0,
        names: Iterable[str] = (),
        trace: Callable[[str], None] | None = None,
        **overrides: int,
    ) -> None:
        settings: dict[str, int] = {
            "client_interval_us": 0,
            "settle_us": 0,
            "fsync_us": 0,
            "duration_us": 1 << 62,
        }
        settings.update(overrides)
        cfg = SimConfig(nodes=n, seed=seed, names=tuple(names), **settings)  # type: ignore[arg-type]
        self.world = World(cfg, trace=trace, check_liveness=False, record_applied=True)
        self.election_timeout_s = cfg.election_ticks * cfg.tick_us / 1e6
        self._disconnected: set[str] = set()

    # ---- time -----------------------------------------------------------------------------
    @property
    def now(self) -> float:
        return self.world.now / 1e6

    def run_for(self, seconds: float) -> None:
        violations = self.world.run_until(self.world.now + int(seconds * 1e6))
        if violations:
            raise InvariantViolated(violations)

    def run_until(self, predicate: Callable[[], bool], timeout: float, step: float = 0.005) -> bool:
        """Advance time in small steps until ``predicate()``; False if ``timeout`` passes."""
        end = self.now + timeout
        while self.now < end:
            if predicate():
                return True
            self.run_for(step)
        return predicate()

    # ---- the lab interface ----------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [n.name for n in self.world.nodes]

    def node(self, name: str) -> SimNode:
        return self.world.by_name[NodeId(name)]

    def get_state(self, name: str) -> tuple[int, bool]:
        """``(current_term, is_leader)`` of a live node."""
        core = self.node(name).core
        assert core is not None, f"{name} is down"
        return core.term, core.role is Role.LEADER

    def submit(self, name: str, command: bytes) -> tuple[int, int] | None:
        """Start agreement on ``command`` at ``name``: ``(index, term)``, or None if it is
        not the leader (no promise that it will ever commit)."""
        return self.world.propose(self.node(name), command)

    def get_committed(self, name: str, index: int) -> bytes | None:
        """The command ``name`` applied at ``index``, if it has."""
        log = self.node(name).applied_log
        assert log is not None
        return log.get(index)

    def n_committed(self, index: int) -> tuple[int, bytes | None]:
        """How many nodes applied ``index``, and what (they must agree)."""
        count, cmd = 0, None
        for name in self.names:
            c = self.get_committed(name, index)
            if c is not None:
                assert cmd is None or c == cmd, f"{name} applied {c!r} at {index}, others {cmd!r}"
                count, cmd = count + 1, c
        return count, cmd

    def leaders(self) -> list[str]:
        return [
            n.name
            for n in self.world.nodes
            if n.core is not None
            and n.core.role is Role.LEADER
            and n.name not in self._disconnected
        ]

    def check_one_leader(self, within: float | None = None) -> str:
        """Wait (simulated) for exactly one leader among connected live nodes in the newest
        term; returns its name."""
        timeout = within if within is not None else 10 * self.election_timeout_s
        found: list[str] = []

        def one() -> bool:
            by_term: dict[int, list[str]] = {}
            for name in self.leaders():
                by_term.setdefault(self.get_state(name)[0], []).append(name)
            if not by_term:
                return False
            top = by_term[max(by_term)]
            assert len(top) == 1, f"two leaders in one term: {top}"
            found[:] = top
            return True

        if not self.run_until(one, timeout):
            raise AssertionError(f"no leader within {timeout:.3f}s (t={self.now:.3f}s)")
        return found[0]

    def one(self, command: bytes, expected: int, retry: bool = True, timeout: float = 10.0) -> int:
        """Submit ``command`` to whichever node leads until ``expected`` nodes applied it;
        returns its index (the classic lab's ``one``)."""
        end = self.now + timeout
        while self.now < end:
            for name in self.names:
                node = self.node(name)
                if node.core is None or name in self._disconnected:
                    continue
                placed = self.submit(name, command)
                if placed is None:
                    continue
                index = placed[0]
                t1 = self.now + 2.0
                while self.now < t1:
                    count, cmd = self.n_committed(index)
                    if count >= expected and cmd == command:
                        return index
                    self.run_for(0.02)
                if not retry:
                    raise AssertionError(f"{command!r} did not reach agreement")
                break
            else:
                self.run_for(0.05)
        raise AssertionError(f"{command!r} did not reach agreement within {timeout}s")

    # ---- faults ---------------------------------------------------------------------------
    def crash(self, name: str) -> None:
        self.world.crash(self.node(name))

    def restart(self, name: str) -> None:
        self.world.restart(self.node(name))

    def disconnect(self, name: str) -> None:
        self._disconnected.add(name)
        self._apply_disconnects()

    def connect(self, name: str) -> None:
        self._disconnected.discard(name)
        self._apply_disconnects()

    def _apply_disconnects(self) -> None:
        names = self.names
        self.world.cut(
            {(a, b) for a in names for b in names if a != b and {a, b} & self._disconnected}
        )

    def partition(self, *groups: Iterable[str]) -> None:
        self._disconnected.clear()
        self.world.partition([set(g) for g in groups])

    def heal(self) -> None:
        self._disconnected.clear()
        self.world.heal()

    def set_unreliable(
        self, drop: float = 0.1, duplicate: float = 0.05, delay_ms: int = 10
    ) -> None:
        self.world.drop_p = drop
        self.world.dup_p = duplicate
        self.world.delay_mean = delay_ms * 1000

    def set_reliable(self) -> None:
        self.world.drop_p = self.world.dup_p = 0.0
        self.world.delay_mean = self.world.cfg.delay_mean_us
