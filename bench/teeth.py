"""The catalogue of planted Raft bugs, and where the harness finds each.

For every bug in ``tests/teeth/bugs.py``: the first seed of ``orbital sim``'s sweep
(``sweep_config()``) at which the simulator reports a violation with the bug planted, the kind
and detail of that violation, the bound the tests hold it to, and which check of a real chaos
run flags it (``Bug.real``; empty where the bug cannot show on real processes or no real test
exists yet). Prints one JSON object; ``--table`` prints a Markdown table instead.

    .venv/bin/python -m bench.teeth [--table] [--jobs N]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.sim.world import World, sweep_config
from tests.teeth.bugs import BUGS


def probe(name: str) -> dict[str, Any]:
    bug = BUGS[name]
    config = sweep_config()
    started = time.monotonic()
    row: dict[str, Any] = {"bug": name, "summary": bug.summary, "bound": bug.sim_bound}
    with bug.planted():
        for seed in range(bug.sim_bound):
            violations = World(replace(config, seed=seed)).run()
            if violations:
                v = violations[0]
                row.update(seed=seed, kind=v.kind, detail=v.detail, found=v.kind in bug.expected)
                break
        else:
            row.update(seed=None, kind=None, detail=None, found=False)
    row["seconds"] = round(time.monotonic() - started, 2)
    row["real"] = bug.real
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--table", action="store_true", help="a Markdown table, not JSON")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(args.jobs) as pool:
        rows = pool.map(probe, sorted(BUGS), chunksize=1)
    if args.table:
        print("| bug | found by the simulator | bound | real chaos run |")
        print("|---|---|---|---|")
        for r in rows:
            sim = f"seed {r['seed']}: `{r['kind']}`" if r["found"] else "**not found**"
            print(f"| `{r['bug']}`: {r['summary']} | {sim} | {r['bound']} | {r['real'] or '—'} |")
    else:
        print(json.dumps({"benchmark": "teeth", "bugs": rows}, indent=2))
    return 0 if all(r["found"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
