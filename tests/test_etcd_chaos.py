"""The shipped scenarios against etcd: one short chaos run per fault family, the command a user
types (``orbital chaos run NAME --system etcd --time-limit S``).

What each run must show is what the family is for: the Antarctic split-brain (the leader moved
into the minority, which never acknowledges while cut off; the majority elects and serves),
kills and pauses of the leader (a new leader within the scenario's bound), a crash storm, the
link shapes, disk faults through the FUSE file system under etcd's data dir (and what a crash
that loses unsynced data does to etcd), and membership changes; every history linearizable.
Clock faults do not apply to etcd (a Go binary reads the
clock through the vDSO, which libfaketime cannot replace): they are skipped, saying so, never
counted as passed. What etcd did on full-length runs is in docs/etcd.md.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.test_chaos_run import chaos_run
from tests.test_etcd import _need_etcd  # noqa: F401  (autouse: skip or fail without etcd)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def etcd_run(
    tmp_path: Path, scenario: str, seconds: float, may_miss: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Run ``scenario`` against etcd: linearizable, nothing failed but the expectations named
    in ``may_miss`` (exit 0, or 1 for those alone)."""
    code, run_dir, out = chaos_run(
        CONFIGS / f"{scenario}.toml", tmp_path / "store", "--system", "etcd",
        "--time-limit", str(seconds),
    )  # fmt: skip
    results: dict[str, Any] = json.loads((run_dir / "results.json").read_text())
    assert results["system"] == "etcd"
    assert results["linearizability"]["valid"] is True, out
    assert results["invariants"]["valid"] is None  # no storage replay for etcd: n/a, not met
    assert results["raft"]["valid"] is None
    failed = [c["name"] for c in results["expectations"]["checks"] if c["ok"] is False]
    # An etcd member was seen ending on its own with SIGSEGV right after a restart, silently
    # (1 kill-leader run of 5 here, docs/etcd.md): no_node_dies reports it, it is etcd's.
    may_miss = (*may_miss, "no_node_dies")
    assert all(name.startswith(may_miss) for name in failed), out
    assert code == (1 if failed else 0), out
    return results


def checks(results: dict[str, Any], prefix: str) -> list[dict[str, Any]]:
    found = [c for c in results["expectations"]["checks"] if c["name"].startswith(prefix)]
    assert found, f"no {prefix} check in {results['expectations']['checks']}"
    return found


def applied(results: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [f for f in results["faults_applied"] if f["kind"] == kind and f["skipped"] is None]


def test_antarctic_split_brain(tmp_path: Path) -> None:
    """The antarctic leader (placed by MoveLeader) steps down and acknowledges nothing while
    cut off; the north elects and serves; all converge. The north's election may take more
    than the brief's 2 election timeouts: exactly a majority (3 of 5) is reachable, etcd 3.4
    runs without pre-vote and has no split-vote breaker (docs/etcd.md: 0.37 s and 1.27 s
    seen, bound 0.6 s)."""
    results = etcd_run(tmp_path, "antarctic-split-brain", 12, may_miss=("leader_elected",))
    assert checks(results, "leader_placed")[0]["ok"] is True
    (elected,) = checks(results, "leader_elected")
    assert elected["new_leader"] in ("n1", "n2", "n3")  # a north leader, however long it took
    for name in ("minority_silent", "majority_serves", "minority_leader_steps_down"):
        assert all(c["ok"] is True for c in checks(results, name)), name
    assert results["roles_from"] == "status polls"
    assert checks(results, "converge_after_heal")[0]["ok"] is True


def test_kill_and_pause_the_leader(tmp_path: Path) -> None:
    results = etcd_run(tmp_path, "kill-leader", 8)
    assert len(applied(results, "kill")) >= 1
    assert all(c["ok"] is not False for c in checks(results, "leader_elected"))
    results = etcd_run(tmp_path / "pause", "pause", 8)
    assert len(applied(results, "pause")) >= 1


def test_crash_storm(tmp_path: Path) -> None:
    results = etcd_run(tmp_path, "crash-storm", 10)
    assert len(applied(results, "kill")) >= 3


def test_link_shapes(tmp_path: Path) -> None:
    results = etcd_run(tmp_path, "majorities-ring", 8)
    assert applied(results, "partition")


def test_disk_faults(tmp_path: Path) -> None:
    results = etcd_run(tmp_path, "disk-slow-fsync", 8)
    assert applied(results, "disk")


def test_a_crash_loses_etcds_member_directory(tmp_path: Path) -> None:
    """What etcd 3.4 does when a crash loses what it never made durable (docs/etcd.md): it
    never fsyncs its data directory after creating ``member/`` in it, so the disk-fault file
    system drops ``member/`` whole; the member restarts empty, refuses to bootstrap again
    ("has already been bootstrapped") and stays down. Nothing acknowledged is lost."""
    code, run_dir, out = chaos_run(
        CONFIGS / "disk-lose-unsynced.toml", tmp_path / "store", "--system", "etcd",
        "--time-limit", "8",
    )  # fmt: skip
    results = json.loads((run_dir / "results.json").read_text())
    assert code == 1, out
    assert results["linearizability"]["valid"] is True
    crashes = applied(results, "disk")
    assert crashes
    for f in crashes:
        assert "member" in f["params"]["applied"]["removed"], f
        log = (run_dir / "nodes" / f["node"] / "node.log").read_text()
        assert "has already been bootstrapped" in log
    (converge,) = checks(results, "converge_after_heal")
    assert converge["ok"] is False
    assert set(converge["silent"]) == {f["node"] for f in crashes}


def test_clock_faults_are_skipped_saying_why(tmp_path: Path) -> None:
    results = etcd_run(tmp_path, "clock-strobe", 6)
    clocks = [f for f in results["faults_applied"] if f["kind"] == "clock"]
    assert clocks
    assert all(f["skipped"] and "clock" in f["skipped"] for f in clocks)


def segfaulted(results: dict[str, Any]) -> list[str]:
    """The members that ended by SIGSEGV on their own (etcd's crash, docs/etcd.md)."""
    (deaths,) = checks(results, "no_node_dies")
    died: dict[str, list[dict[str, Any]]] = deaths.get("died", {})
    return sorted(n for n, ends in died.items() if any(e["exit"] == -11 for e in ends))


def test_membership_changes(tmp_path: Path) -> None:
    """An etcd member was seen dying by SIGSEGV at its first start, silently, as after a
    restart (docs/etcd.md): the spare being added never came up and the add waited for it
    until the run ended. That is etcd's crash, not the membership fault's: the run is made
    once more when it happens (and the first run's crash is shown)."""
    results = etcd_run(tmp_path / "first", "membership-churn", 12)
    if crashed := segfaulted(results):
        print(f"etcd crashed by SIGSEGV in the first run: {crashed}; running again")
        results = etcd_run(tmp_path / "again", "membership-churn", 12)
    changes = applied(results, "membership")
    assert changes
    assert any("added" in f["params"]["applied"] for f in changes)
