"""Simulator throughput: 1000 seeded runs, 5 nodes, all faults, 10 simulated seconds each.

The runs are what ``orbital sim`` runs by default (``sweep_config()``: swarm testing, KV
clients whose histories are checked for linearizability); ``--classic`` measures the fixed-rate
sweep without clients. Target: the whole sweep within 60 s wall on a 2-core machine. Prints one
JSON object.

    .venv/bin/python bench/sim.py [--seeds 1000] [--start-seed S] [--jobs N] [--classic]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.sim.sweep import sweep
from harness.sim.world import FAULTS, sweep_config


def _cpu_s() -> float:
    """CPU seconds of this process and its finished workers so far."""
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--start-seed", type=int, default=0)
    parser.add_argument("--target-s", type=float, default=60.0)
    parser.add_argument("--classic", action="store_true", help="no swarm, no clients")
    args = parser.parse_args()
    base = sweep_config(swarm=not args.classic, clients=0 if args.classic else 4)
    load_before = os.getloadavg()[0]
    cpu_before = _cpu_s()
    summary = sweep(base, args.start_seed, args.seeds, args.jobs)
    cpu_s = _cpu_s() - cpu_before
    out = summary.to_json()
    out.update(
        {
            "benchmark": "sim",
            "sweep": "classic" if args.classic else "swarm + clients",
            "nodes": 5,
            "faults": sorted(FAULTS),
            "jobs": args.jobs,
            "cpu_count": os.cpu_count(),
            #: before the sweep (other work on the machine) and after it (includes the sweep)
            "load_average_1m_before": round(load_before, 2),
            "load_average_1m": round(os.getloadavg()[0], 2),
            "runs_per_second": round(summary.runs / summary.wall_s, 1),
            #: CPU of this process and its workers: per run, and as cores kept busy
            "cpu_ms_per_run": round(cpu_s / max(1, summary.runs) * 1000, 1),
            "cores_busy": round(cpu_s / summary.wall_s, 2),
            "target_wall_seconds": args.target_s,
            "target_met": summary.wall_s <= args.target_s,
        }
    )
    print(json.dumps(out, indent=2))
    return 0 if not summary.failing else 1


if __name__ == "__main__":
    sys.exit(main())
