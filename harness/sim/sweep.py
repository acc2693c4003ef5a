"""Many seeded simulator runs on all cores, summarised.

Each run is independent and fully determined by its seed, so runs are farmed out to a
process pool in seed order and their results merged; the summary is the same whatever the
number of workers. A failing seed can be replayed alone with a trace (``replay``).
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.pool
import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from harness.sim.world import SimConfig, World


@dataclass(frozen=True, slots=True)
class RunResult:
    seed: int
    violations: list[tuple[str, int, str]]  #: (kind, time in µs, detail)
    stats: dict[str, int]
    sim_us: int
    #: what the run used (its swarm draw), one line
    params: str = ""


@dataclass(slots=True)
class Summary:
    runs: int = 0
    violations: Counter[str] = field(default_factory=Counter)
    failing: list[RunResult] = field(default_factory=list)
    totals: Counter[str] = field(default_factory=Counter)
    sim_us: int = 0
    wall_s: float = 0.0

    def add(self, r: RunResult) -> None:
        self.runs += 1
        self.totals.update(r.stats)
        self.sim_us += r.sim_us
        if r.violations:
            self.failing.append(r)
            self.violations.update(kind for kind, _, _ in r.violations)

    def to_json(self) -> dict[str, Any]:
        return {
            "runs": self.runs,
            "violations": sum(self.violations.values()),
            "violations_by_kind": dict(sorted(self.violations.items())),
            "failing_seeds": sorted(r.seed for r in self.failing),
            "elections": self.totals["elections"],
            "commits": self.totals["commits"],
            "acknowledged": self.totals["acked"],
            "messages": self.totals["messages"],
            "crashes": self.totals["crashes"],
            "client_ops": {k: self.totals[f"ops_{k}"] for k in ("ok", "fail", "info")},
            "histories_undecided": self.totals["history_unknown"],
            "simulated_seconds": round(self.sim_us / 1e6, 3),
            "wall_seconds": round(self.wall_s, 3),
        }


def run_one(cfg: SimConfig) -> RunResult:
    world = World(cfg)
    violations = world.run()
    return RunResult(
        cfg.seed,
        [(v.kind, v.time_us, v.detail) for v in violations],
        dict(world.stats),
        world.now,
        world.params.describe(),
    )


def _configs(base: SimConfig, start: int, count: int) -> Iterator[SimConfig]:
    for seed in range(start, start + count):
        yield replace(base, seed=seed)


def _default_signals() -> None:
    """A worker dies of SIGTERM, whatever handler the parent had: ``Pool.terminate`` ends
    workers with SIGTERM and waits for them, and an inherited handler that does not exit
    (uvloop's, left behind by a closed loop) made that wait last for ever."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def worker_pool(jobs: int) -> multiprocessing.pool.Pool:
    """The sweep's worker processes (forked where possible: no re-import per worker), each
    with SIGTERM's default action."""
    ctx = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
    return ctx.Pool(jobs, initializer=_default_signals)


def sweep(
    base: SimConfig,
    start_seed: int,
    count: int,
    jobs: int | None = None,
    on_result: Callable[[RunResult], None] | None = None,
) -> Summary:
    """Run seeds ``start_seed .. start_seed+count-1``; ``on_result`` sees each as it ends."""
    jobs = jobs or os.cpu_count() or 1
    summary = Summary()
    t0 = time.monotonic()
    if jobs == 1 or count == 1:
        results: Iterator[RunResult] = map(run_one, _configs(base, start_seed, count))
        for r in results:
            summary.add(r)
            if on_result:
                on_result(r)
    else:
        with worker_pool(jobs) as pool:
            # Small chunks: a run takes ~0.1 s and a task costs well under a millisecond, but
            # the last chunk runs while the other workers idle (16 runs ~ 1.6 s at the end).
            chunk = max(1, count // (jobs * 256))
            for r in pool.imap_unordered(run_one, _configs(base, start_seed, count), chunk):
                summary.add(r)
                if on_result:
                    on_result(r)
    summary.failing.sort(key=lambda r: r.seed)
    summary.wall_s = time.monotonic() - t0
    return summary


def replay(cfg: SimConfig) -> tuple[list[str], RunResult]:
    """Run one seed again, collecting its trace lines."""
    lines: list[str] = []
    world = World(cfg, trace=lines.append)
    violations = world.run()
    for v in violations:
        lines.append(f"VIOLATION {v.describe()}")
    result = RunResult(
        cfg.seed,
        [(v.kind, v.time_us, v.detail) for v in violations],
        dict(world.stats),
        world.now,
        world.params.describe(),
    )
    return lines, result
