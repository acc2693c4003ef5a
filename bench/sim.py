"""Simulator throughput: 1000 seeded runs, 5 nodes, all faults, 10 simulated seconds each.

Target: the whole sweep within 60 s wall on a 2-core machine. Prints one JSON object.

    .venv/bin/python bench/sim.py [--seeds 1000] [--jobs N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.sim.sweep import sweep
from harness.sim.world import FAULTS, SimConfig


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--target-s", type=float, default=60.0)
    args = parser.parse_args()
    base = SimConfig(
        nodes=5,
        duration_us=10_000_000,
        faults=frozenset(FAULTS),
        snapshot_entries=25,
        spare_nodes=2,
    )
    summary = sweep(base, 0, args.seeds, args.jobs)
    out = summary.to_json()
    out.update(
        {
            "benchmark": "sim",
            "nodes": 5,
            "faults": sorted(FAULTS),
            "jobs": args.jobs,
            "cpu_count": os.cpu_count(),
            "load_average_1m": round(os.getloadavg()[0], 2),
            "runs_per_second": round(summary.runs / summary.wall_s, 1),
            "target_wall_seconds": args.target_s,
            "target_met": summary.wall_s <= args.target_s,
        }
    )
    print(json.dumps(out, indent=2))
    return 0 if not summary.failing else 1


if __name__ == "__main__":
    sys.exit(main())
