"""Short real chaos runs for the teeth tests, with bugs planted in the node processes.

:func:`chaos_run` writes a scenario (a dict) as TOML and runs ``orbital chaos run`` in a
subprocess, the command a user types, with this directory and the repository root on
``PYTHONPATH`` and ``ORBITAL_PLANT`` naming the bugs (see ``sitecustomize.py``). The runner
stops every process it started; a run that overstays its deadline gets SIGINT (the runner's
own Ctrl-C path), never a blind kill.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

PLANT_DIR = Path(__file__).resolve().parent
REPO = PLANT_DIR.parents[2]
RUN_DEADLINE_S = 120.0


@dataclass(frozen=True, slots=True)
class Run:
    code: int
    run_dir: Path
    output: str
    results: dict[str, Any]

    def raft(self, name: str) -> dict[str, Any]:
        """The row of one check of ``results.json``'s ``raft``."""
        rows = [c for c in self.results["raft"]["checks"] if c["name"] == name]
        assert len(rows) == 1, (name, self.results.get("raft"))
        found: dict[str, Any] = rows[0]
        return found

    def expectations(self, prefix: str) -> list[dict[str, Any]]:
        checks = self.results["expectations"]["checks"]
        return [c for c in checks if c["name"].startswith(prefix)]

    def failed(self) -> list[str]:
        """Every check that failed: linearizability, invariants, raft rows, expectations."""
        r = self.results
        out = [k for k in ("linearizability", "invariants") if r[k].get("valid") is False]
        out += [c["name"] for c in r["raft"]["checks"] if c["ok"] is False]
        return out + [c["name"] for c in r["expectations"]["checks"] if c["ok"] is False]


def chaos_run(tmp: Path, scenario: dict[str, Any], plant: Sequence[str] = ()) -> Run:
    """Run ``scenario`` under ``tmp`` with ``plant`` planted in every node process."""
    config = tmp / f"{scenario['name']}.toml"
    config.write_text(tomli_w.dumps(scenario), encoding="utf-8")
    store = tmp / "store"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(PLANT_DIR), str(REPO)])
    env["ORBITAL_PLANT"] = ",".join(plant)
    argv = [sys.executable, "-m", "harness.cli", "chaos", "run", str(config),
            "--store", str(store), "--no-progress"]  # fmt: skip
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO
    )
    try:
        out, _ = proc.communicate(timeout=RUN_DEADLINE_S)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
        raise AssertionError(f"chaos run overran {RUN_DEADLINE_S}s:\n{out}") from None
    runs = sorted(p for p in store.glob("*/*") if p.is_dir())
    assert len(runs) == 1, out
    found = runs[0] / "results.json"
    assert found.exists(), f"the run wrote no results.json (exit {proc.returncode}):\n{out}"
    results = json.loads(found.read_text())
    for node_log in runs[0].glob("nodes/*/node.log"):
        text = node_log.read_text(errors="replace")
        for name in plant:  # every node process of the run carried the bug
            assert f"orbital plant: planted {name}" in text, (node_log, out)
    return Run(proc.returncode, runs[0], out, results)
