"""Teeth on real processes: a follower that loses, in a crash, entries it acknowledged.

Three nodes on the fault-injecting file system (``chaos/diskfs.py``). A ``lose-unsynced``
fault slows a follower's fsyncs until a log write of it is in flight, crashes its disk (the
write is lost) and SIGKILLs it; it restarts a second later with what it had fsynced. A
correct follower acknowledges entries only once they are durable, so the leader's view of
what it holds (its ``match``) never exceeds its disk, and it catches up after the restart.

* ``ack_before_fsync`` (``tests/teeth/bugs.py``): the follower acknowledged the write the crash
  took. The leader believes the follower holds entries it does not, rejects the follower's
  refusals of them as stale, and never sends them again: the follower never converges
  (``converge_after_heal``). (A majority still holds those entries here; with the leader lost
  as well they would be lost, which the simulator shows as ``commit_not_durable``.)
* ``backup_off_by_one``: the restarted follower is behind, and the leader's fast back-up
  probes one index past where it could match, forever: it never converges either.

Without a bug the same run passes every check (the crash lost a write in flight all the same).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.teeth.plant.run import Run, chaos_run

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(
        not os.path.exists("/dev/fuse") or os.geteuid() != 0,
        reason="needs /dev/fuse and root (scripts/setup.sh installs fuse3)",
    ),
]

SCENARIO: dict[str, Any] = {
    "name": "teeth-lost-acks",
    "seed": 8,
    "nodes": ["n1", "n2", "n3"],
    "duration": 4.0,
    # a 1 s election timeout: a leader change (on a loaded machine) would reset the leader's
    # view of the follower and hide what the run is for
    "timing": {"tick_ms": 10.0, "election_ticks": 100, "heartbeat_ticks": 10},
    "workload": {"clients": 4, "rate": 40.0, "keys": 5, "timeout": 1.0},
    "nemesis": [
        {"kind": "disk", "disk": "lose-unsynced", "target": "follower", "at": 1.0,
         "duration": 1.0},
    ],
    "final": {"settle": 1.0, "converge_timeout": 4.0},
    "expect": {"min_ok_ops": 5},
}  # fmt: skip


def crashed(run: Run) -> tuple[str, dict[str, Any]]:
    """The follower whose disk lost a log write in flight, and what it lost."""
    (fault,) = [f for f in run.results["faults_applied"] if f["kind"] == "disk"]
    detail = fault["params"]["applied"]
    assert detail["caught_unsynced"], detail  # a log write was in flight at the crash
    lost = [f for f in detail["lost"] if f["path"].startswith("wal/")]
    assert lost, detail
    assert lost[0]["bytes"] > 0, detail
    assert fault["node"] != fault["leader_before"][0]
    return fault["node"], detail


@pytest.mark.parametrize("bug", ["ack_before_fsync", "backup_off_by_one"])
def test_a_follower_left_behind_after_its_crash_is_caught(tmp_path: Path, bug: str) -> None:
    run = chaos_run(tmp_path, SCENARIO, plant=[bug])
    node, _ = crashed(run)
    assert run.code == 1, run.output
    assert "converge_after_heal" in run.failed(), run.failed()
    final = run.expectations("converge_after_heal")[0]["final_status"]
    top = max(s["last_index"] for s in final.values() if s)
    assert final[node] is None or final[node]["last_index"] < top, (node, final)


def test_the_same_run_passes_without_a_bug(tmp_path: Path) -> None:
    run = chaos_run(tmp_path, SCENARIO)
    crashed(run)
    assert run.code == 0, run.output
