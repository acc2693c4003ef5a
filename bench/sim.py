"""Simulator throughput: seeded runs of 5 nodes with every fault, 10 simulated seconds each.

The runs are what ``orbital sim`` runs by default (``sweep_config()``: swarm testing, KV
clients whose histories are checked for linearizability); ``--classic`` measures the fixed-rate
sweep without clients. Targets (issue 16): 1000 seeds within 60 s wall on a 2-core machine,
10,000 seeds within 10 minutes. ``--seeds`` takes one sweep size or several (``1000,10000``);
each sweep is reported with its wall time, its CPU time (this process and its workers: per
run, and as cores kept busy) and the load average before and after, since other work on a
shared machine takes cores from the sweep: ``cpu_bound_wall_s`` is the sweep's CPU time
spread over the machine's cores, the wall time it would take with the cores to itself.
``targets`` says per sweep whether the *measured* wall time met its target. Prints one JSON
object.

    .venv/bin/python bench/sim.py [--seeds 1000[,10000]] [--start-seed S] [--jobs N] [--classic]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.sim.sweep import sweep
from harness.sim.world import FAULTS, SimConfig, sweep_config

#: the issue's wall-clock targets by sweep size (seeds -> seconds)
TARGETS_S = {1000: 60.0, 10_000: 600.0}


def _cpu_s() -> float:
    """CPU seconds of this process and its finished workers so far."""
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


def target_for(seeds: int) -> float:
    """The wall-clock target of a sweep: the issue's for 1000 and 10,000 seeds, else 60 ms a
    seed up to 1000 and 60 s per 1000 beyond (the 10,000-seed target's rate)."""
    if seeds in TARGETS_S:
        return TARGETS_S[seeds]
    return 0.06 * seeds


def one_sweep(base: SimConfig, start: int, seeds: int, jobs: int) -> dict[str, Any]:
    load_before = os.getloadavg()[0]
    cpu_before = _cpu_s()
    summary = sweep(base, start, seeds, jobs)
    cpu_s = _cpu_s() - cpu_before
    cores = os.cpu_count() or 1
    out = summary.to_json()
    out.update(
        {
            "seeds": seeds,
            "start_seed": start,
            "load_average_1m_before": round(load_before, 2),
            "load_average_1m_after": round(os.getloadavg()[0], 2),
            "runs_per_second": round(summary.runs / summary.wall_s, 1),
            "cpu_s": round(cpu_s, 1),
            "cpu_ms_per_run": round(cpu_s / max(1, summary.runs) * 1000, 1),
            "cores_busy": round(cpu_s / summary.wall_s, 2),
            "cpu_bound_wall_s": round(cpu_s / min(cores, jobs), 1),
        }
    )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", default="1000", help="sweep sizes, comma-separated")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--start-seed", type=int, default=0)
    parser.add_argument("--classic", action="store_true", help="no swarm, no clients")
    args = parser.parse_args()
    try:
        sizes = [int(x) for x in args.seeds.split(",") if x.strip()]
    except ValueError:
        parser.error(f"--seeds: comma-separated counts, got {args.seeds!r}")
    if not sizes or min(sizes) < 1 or args.jobs < 1:
        parser.error("--seeds and --jobs must be positive")
    base = sweep_config(swarm=not args.classic, clients=0 if args.classic else 4)
    sweeps = [one_sweep(base, args.start_seed, n, args.jobs) for n in sizes]
    out = {
        "benchmark": "sim",
        "sweep": "classic" if args.classic else "swarm + clients",
        "nodes": 5,
        "simulated_seconds_per_run": base.duration_us / 1e6,
        "faults": sorted(FAULTS),
        "jobs": args.jobs,
        "cpu_count": os.cpu_count(),
        "sweeps": sweeps,
        "targets": {
            f"{s['seeds']}_seeds": {
                "target_wall_s": target_for(s["seeds"]),
                "wall_s": s["wall_seconds"],
                "met": s["wall_seconds"] <= target_for(s["seeds"]),
                "violations": s["violations"],
                "cpu_bound_wall_s": s["cpu_bound_wall_s"],
                "load_average_1m_before": s["load_average_1m_before"],
            }
            for s in sweeps
        },
    }
    print(json.dumps(out, indent=2))
    return 0 if all(not s["violations"] for s in sweeps) else 1


if __name__ == "__main__":
    sys.exit(main())
