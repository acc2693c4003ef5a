"""Each new fault family in a real, short chaos run (``orbital chaos run``), and the matrix.

Every run must end valid (linearizable, Raft's invariants from storage, expectations), and
its ``faults.jsonl`` must show that the fault took effect (a write in flight lost or torn, a
corrupted node refused, a disk error stopped its node, a clock moved, links cut in the
shape's pattern, snapshots installed, the membership changed). Runs use the helpers of
``tests/test_chaos_run.py`` (SIGINT past the deadline, never a blind kill).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from chaos.shapes import reachable
from chaos.toxiproxy import ToxiproxyNotFound, find_server_binary
from harness.history import Fault, read_faults
from harness.store_index import scan_store
from tests.test_chaos_run import CONFIGS, chaos_run, checks_by_prefix, load_results

pytestmark = pytest.mark.integration

FIVE = ["n1", "n2", "n3", "n4", "n5"]
HEAD = """
nodes = ["n1", "n2", "n3", "n4", "n5"]
[timing]
tick_ms = 10.0
election_ticks = 30
heartbeat_ticks = 5
[workload]
clients = 4
rate = 40.0
keys = 5
timeout = 1.5
[final]
settle = 2.0
"""


@pytest.fixture(autouse=True)
def _need_tools() -> None:
    try:
        find_server_binary()
    except ToxiproxyNotFound:
        if os.environ.get("CI"):
            raise
        pytest.skip("toxiproxy-server not installed")


def scenario(tmp_path: Path, name: str, body: str, duration: float, head: str = HEAD) -> Path:
    path = tmp_path / f"{name}.toml"
    text = f'name = "{name}"\nseed = 3\nduration = {duration}\n{head}\n{body}'
    path.write_text(text)
    return path


def valid_run(config: Path, store: Path, *extra: str) -> tuple[Path, dict[str, Any]]:
    code, run_dir, out = chaos_run(config, store, "--no-progress", *extra)
    assert (run_dir / "results.json").exists(), f"exit {code}, no results.json:\n{out}"
    results = load_results(run_dir)
    assert code == 0, out
    assert results["valid"] is True, results["invariants"]
    return run_dir, results


def starts(run_dir: Path, kind: str) -> list[Fault]:
    return [
        f for f in read_faults(run_dir / "faults.jsonl") if f.fault == kind and f.action == "start"
    ]


needs_fuse = pytest.mark.skipif(not Path("/dev/fuse").exists(), reason="needs /dev/fuse")


@needs_fuse
def test_disk_family(tmp_path: Path) -> None:
    """Lost and torn writes in flight, then a corruption and EIO, on the FUSE disk."""
    body = """
[[nemesis]]
kind = "disk"
disk = "lose-unsynced"
target = "leader"
at = 1.0
duration = 1.5
[[nemesis]]
kind = "disk"
disk = "torn-write"
target = "random"
at = 3.0
duration = 1.5
[[nemesis]]
kind = "disk"
disk = "io-error"
target = "random"
at = 5.0
duration = 1.5
[[nemesis]]
kind = "disk"
disk = "corrupt"
corrupt = "middle-record"
target = "random"
at = 7.0
duration = 1.0
"""
    run_dir, results = valid_run(scenario(tmp_path, "disk", body, 9.0), tmp_path / "store")
    lost, torn, io, corrupt = (f.detail for f in starts(run_dir, "disk"))
    assert lost["caught_unsynced"] is not None, lost
    assert any(x["path"].startswith("wal/") and x["bytes"] > 0 for x in lost["lost"]), lost
    assert torn["caught_unsynced"] is not None, torn
    assert torn["torn"] is None or 0 <= torn["torn"]["kept"] < torn["torn"]["length"]
    assert io["disk"] == "io-error"
    assert corrupt["corrupt"]["path"].startswith("wal/")
    (refused,) = checks_by_prefix(results, "corrupt_refused")
    assert refused["ok"] is True
    assert f"at byte offset {corrupt['record']}" in refused["observed"]
    assert [c["ok"] for c in checks_by_prefix(results, "disk_error_stops")] in ([True], [None])
    assert not (run_dir / "nodes" / "n1" / "disk").exists()  # moved back under data/


def test_clock_family(tmp_path: Path) -> None:
    body = """
[[nemesis]]
kind = "clock"
clock = "strobe"
strobe_s = 2.0
strobe_period_s = 0.3
target = "leader"
at = 1.0
duration = 2.0
[[nemesis]]
kind = "clock"
clock = "skew"
rate = 3.0
target = "random"
at = 3.5
duration = 1.5
[[nemesis]]
kind = "clock"
clock = "jump"
jump_s = -4.0
target = "leader"
at = 5.5
duration = 1.5
"""
    run_dir, _ = valid_run(scenario(tmp_path, "clock", body, 7.5), tmp_path / "store")
    strobe, skew, jump = (f.detail for f in starts(run_dir, "clock"))
    assert strobe["clock"] == "strobe"
    assert skew["rate"] == 3.0
    assert jump["jump_s"] == -4.0
    stops = [f for f in read_faults(run_dir / "faults.jsonl") if f.fault == "clock"]
    assert [f.action for f in stops].count("stop") == 3
    for node in FIVE:  # every node ran on its own libfaketime clock
        assert (run_dir / "nodes" / node / "clock.rc").read_text().startswith("+0.000000 x1")


def test_network_shapes_family(tmp_path: Path) -> None:
    body = "".join(
        f'[[nemesis]]\nkind = "partition"\nshape = "{shape}"\nat = {at}\nduration = 1.5\n'
        for shape, at in (("ring", 1.0), ("bridge", 3.0), ("majorities-ring", 5.0))
    )
    body += '[[nemesis]]\nkind = "partition"\nshape = "one-way"\ntarget = "random"\n'
    body += "at = 7.0\nduration = 1.0\n"
    run_dir, _ = valid_run(scenario(tmp_path, "shapes", body, 8.5), tmp_path / "store")
    shaped = [f.detail for f in starts(run_dir, "partition")]
    assert [d.get("shape") for d in shaped[:3]] == ["ring", "bridge", "majorities-ring"]
    ring = reachable(FIVE, [tuple(x) for x in shaped[0]["links"]])
    assert all(len(peers) == 2 for peers in ring.values())
    assert shaped[3].get("one_way") in FIVE


def test_snapshot_family(tmp_path: Path) -> None:
    run_dir, results = valid_run(
        CONFIGS / "snapshot-install.toml", tmp_path / "store", "--time-limit", "9"
    )
    snaps = [n["snapshot"] for n in results["invariants"]["nodes"].values()]
    assert any(s is not None for s in snaps), "no node compacted its log"
    logs = "".join((run_dir / "nodes" / n / "node.log").read_text() for n in FIVE)
    assert "snapshot" in logs.lower()


def test_membership_family(tmp_path: Path) -> None:
    run_dir, results = valid_run(
        CONFIGS / "membership-churn.toml", tmp_path / "store", "--time-limit", "15"
    )
    add, remove, replace = (f.detail for f in starts(run_dir, "membership"))
    assert add["added"] == "n6"
    assert remove["removed"] in FIVE
    assert replace["added"] == "n7"
    final = results["final_status"]
    assert "n6" in final
    assert remove["removed"] not in final


def test_matrix_runs_scenarios_times_seeds_and_indexes_the_store(tmp_path: Path) -> None:
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "kill.toml").write_text((CONFIGS / "kill-leader.toml").read_text())
    matrix = configs / "matrix.toml"
    # 4 s: the kill lands at 2 s, and the scenario's min_ok_ops (50) needs the time after it
    # too on a loaded machine
    matrix.write_text('scenarios = ["*.toml"]\nseeds = [1, 2]\ntime_limit = 4.0\n')
    store = tmp_path / "store"
    argv = [sys.executable, "-m", "harness.cli", "chaos", "matrix", str(matrix)]
    proc = subprocess.run(
        [*argv, "--store", str(store), "--no-progress"],
        capture_output=True, text=True, timeout=400, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "kill-leader" in proc.stdout
    rows = scan_store(store)
    assert sorted(r.seed for r in rows) == [1, 2]
    assert all(r.valid is True and r.has_report for r in rows)
    page = (store / "index.html").read_text()
    assert page.count("report.html") == 2
    bad = configs / "bad.toml"
    bad.write_text('scenarios = ["*.toml"]\nseeds = []\n')
    proc = subprocess.run([*argv[:-1], str(bad)], capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert "seeds" in proc.stderr
