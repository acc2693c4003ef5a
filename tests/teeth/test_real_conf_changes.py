"""Teeth on real processes: two membership changes in flight at once.

Five nodes, n1 leading. A membership fault removes n3; then one with a group target asks
the leader to remove n4 and n5 at the same moment, as two operators might
(``chaos/nemesis.py``). The
amplifier ``slow_follower_config`` (not a bug, ``plant/real_bugs.py``: a follower takes 0.2 s
to persist a configuration entry) keeps the first of them uncommitted while the second
arrives. A correct leader takes one single-server change at a time (dissertation §4.1) and
refuses the other; ``one_config_change_at_a_time`` (each leader's WAL: a configuration entry
appended only once the one before it committed) holds, judged on the two changes it took.

Planted ``concurrent_conf_changes`` (``tests/teeth/bugs.py``: the pending-change guard
forgotten), the leader appends both, and the check names the second and the uncommitted one
before it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.teeth.plant.run import Run, chaos_run

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SCENARIO: dict[str, Any] = {
    "name": "teeth-conf-changes",
    "seed": 12,  # the group target "minority" draws n4 and n5 (checked below)
    "nodes": ["n1", "n2", "n3", "n4", "n5"],
    "duration": 6.0,  # room for the removals to be answered and the nodes stopped
    "groups": {"a": ["n1"]},
    "timing": {"tick_ms": 10.0, "election_ticks": 30, "heartbeat_ticks": 5},
    "setup": {"leader_in": "a"},  # the leader removes others, never itself
    "workload": {"clients": 3, "rate": 30.0, "keys": 5, "timeout": 1.0},
    "nemesis": [
        {"kind": "membership", "membership": "remove", "target": "n3", "at": 1.0,
         "duration": 0.8},
        {"kind": "membership", "membership": "remove", "target": "minority", "at": 2.0,
         "duration": 0.5},
    ],
    "final": {"settle": 1.0, "converge_timeout": 5.0},
    "expect": {"min_ok_ops": 5},
}  # fmt: skip


def removals(run: Run) -> dict[str, Any]:
    first, at_once = [f for f in run.results["faults_applied"] if f["kind"] == "membership"]
    assert first["params"]["applied"] == {"membership": "remove", "removed": "n3"}, first
    assert at_once["nodes"] == ["n4", "n5"], at_once
    assert first["leader_before"][0] == at_once["leader_before"][0] == "n1"
    assert "applied" in at_once["params"], at_once  # answered before the run ended
    detail: dict[str, Any] = at_once["params"]["applied"]
    return detail


def test_a_second_change_appended_while_one_is_pending_is_caught(tmp_path: Path) -> None:
    run = chaos_run(tmp_path, SCENARIO, plant=["concurrent_conf_changes", "slow_follower_config"])
    assert removals(run) == {"membership": "remove", "removed": ["n4", "n5"], "refused": {}}
    assert run.code == 1, run.output
    row = run.raft("one_config_change_at_a_time")
    assert row["ok"] is False, row
    v = row["violations"][0]
    assert v["previous"] < v["index"], row
    assert v["committed"] < v["previous"], row
    assert run.failed() == ["one_config_change_at_a_time"], run.failed()


def test_the_same_run_passes_when_the_leader_refuses_the_second(tmp_path: Path) -> None:
    run = chaos_run(tmp_path, SCENARIO, plant=["slow_follower_config"])
    detail = removals(run)
    assert len(detail["removed"]) == 1, detail
    (why,) = detail["refused"].values()
    assert "a membership change is still pending" in why
    assert run.code == 0, run.output
    row = run.raft("one_config_change_at_a_time")
    assert row["ok"] is True, row
