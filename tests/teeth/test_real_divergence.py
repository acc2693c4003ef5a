"""Teeth on real processes: a follower that must throw away what an old leader gave it.

Five nodes split 2 | 3 with the leader and half the clients on the pair: the old leader
appends (and its follower stores) writes nobody commits; the three elect a leader of their
own and commit writes at the same indexes. At the heal the pair must replace those entries.
Each planted bug (``tests/teeth/bugs.py``) makes the pair keep them instead, at indexes the
majority committed, and the run is flagged from what the nodes wrote: the storage replay
(``committed_divergence``) and ``committed_entries_agree`` (the new leader's commit records
against the final logs):

* ``heartbeat_commit_beyond_match`` — the new leader's first heartbeat carries its commit
  index; the pair commits its own conflicting entries there and never lets them go;
* ``apply_before_commit`` — the old leader's follower commits (and applies) what it receives,
  so the same entries are committed on it before anyone committed them;
* ``no_truncate_on_conflict`` — the pair appends the new leader's entries after its own
  instead of replacing them, and acknowledges them as if it held them.

Without a bug the same run passes every check.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.teeth.plant.run import chaos_run

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PAIR = ["n1", "n2"]

SCENARIO: dict[str, Any] = {
    "name": "teeth-divergence",
    "seed": 6,
    "nodes": ["n1", "n2", "n3", "n4", "n5"],
    "duration": 4.0,
    "groups": {"a": PAIR, "b": ["n3", "n4", "n5"]},
    "timing": {"tick_ms": 10.0, "election_ticks": 30, "heartbeat_ticks": 5},
    "setup": {"leader_in": "a"},
    "workload": {"clients": 6, "placement": {"a": 3, "b": 3}, "rate": 40.0, "keys": 5,
                 "timeout": 1.0},
    "nemesis": [
        {"kind": "partition", "shape": "groups", "groups": ["a", "b"], "at": 1.0, "duration": 2.0}
    ],
    "final": {"settle": 1.0, "converge_timeout": 4.0},
    "expect": {"min_ok_ops": 5, "minority_never_acknowledges": True},
}  # fmt: skip


@pytest.mark.parametrize(
    "bug", ["heartbeat_commit_beyond_match", "apply_before_commit", "no_truncate_on_conflict"]
)
def test_a_follower_keeping_entries_the_majority_replaced_is_caught(
    tmp_path: Path, bug: str
) -> None:
    run = chaos_run(tmp_path, SCENARIO, plant=[bug])
    assert run.code == 1, run.output
    agree = run.raft("committed_entries_agree")
    assert agree["ok"] is False, agree
    differs = agree["violations"][0]["differs_on"]
    assert differs, agree
    assert set(differs) <= set(PAIR), agree
    kinds = {v["kind"] for v in run.results["invariants"]["violations"]}
    assert "committed_divergence" in kinds, run.results["invariants"]


def test_the_same_run_passes_without_a_bug(tmp_path: Path) -> None:
    run = chaos_run(tmp_path, SCENARIO)
    assert run.code == 0, run.output
    assert run.raft("committed_entries_agree")["ok"] is True
    assert run.results["invariants"]["valid"] is True
    (cut,) = [f for f in run.results["faults_applied"] if f["kind"] == "partition"]
    assert cut["groups"] == [PAIR, ["n3", "n4", "n5"]]
