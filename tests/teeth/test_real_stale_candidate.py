"""Teeth on real processes: a node votes for a candidate whose log lacks committed entries.

Three nodes; the network takes the bridge shape for 2 s: n2 (the bridge) talks to both,
n1 (the leader) and n3 cannot talk to each other. The seed draws that shape (checked below).
n1 and n2 commit writes that n3 never sees; n3 hears no leader and campaigns through n2.
``check_quorum_off`` (an amplifier: a supported setting, ``plant/real_bugs.py``) leaves n2
without a leader lease, so it judges n3's request on the logs alone. A correct n2 refuses
(§5.4.1: n3's log is less up to date) and the run passes.

Planted ``no_election_restriction`` (``tests/teeth/bugs.py``), n2 votes for n3, which leads
a term without the entries n1 committed and writes its own entry at one of their indexes.
It is repaired soon after (here its next step trips an assertion, and the restarted node
follows the rightful leader), so the final logs agree; ``leader_completeness`` reads every
WAL's whole history and finds the entry of a later term written at or below a committed
index.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.teeth.plant.run import Run, chaos_run

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SCENARIO: dict[str, Any] = {
    "name": "teeth-stale-candidate",
    "seed": 14,  # draws the bridge n1 - n2 - n3 (n2 the bridge)
    "nodes": ["n1", "n2", "n3"],
    "duration": 4.0,
    "groups": {"a": ["n1"]},
    "timing": {"tick_ms": 10.0, "election_ticks": 30, "heartbeat_ticks": 5},
    "setup": {"leader_in": "a"},
    "workload": {"clients": 4, "rate": 40.0, "keys": 5, "timeout": 1.0},
    "nemesis": [{"kind": "partition", "shape": "bridge", "at": 1.0, "duration": 2.0}],
    "final": {"settle": 1.0, "converge_timeout": 4.0},
    "expect": {"min_ok_ops": 5},
}


def bridged(run: Run) -> None:
    (cut,) = [f for f in run.results["faults_applied"] if f["kind"] == "partition"]
    assert cut["params"]["links"] == [["n1", "n3"], ["n3", "n1"]], cut
    assert cut["leader_before"][0] == "n1", cut


def test_a_vote_for_a_less_up_to_date_candidate_is_caught(tmp_path: Path) -> None:
    run = chaos_run(tmp_path, SCENARIO, plant=["no_election_restriction", "check_quorum_off"])
    bridged(run)
    assert run.code == 1, run.output
    row = run.raft("leader_completeness")
    assert row["ok"] is False, row
    v = row["violations"][0]
    assert (v["node"], v["committed_by"]) == ("n3", "n1"), row
    assert v["term"] > v["committed_term"], row
    assert v["index"] <= v["committed_index"], row


def test_the_same_run_passes_with_the_election_restriction(tmp_path: Path) -> None:
    run = chaos_run(tmp_path, SCENARIO, plant=["check_quorum_off"])
    bridged(run)
    assert run.code == 0, run.output
    assert run.raft("leader_completeness")["ok"] is True
