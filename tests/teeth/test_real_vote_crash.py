"""Teeth on real processes: a vote granted before it is durable, and the voter crashing.

Three nodes. A ``transfer`` fault asks the leader to hand over to both followers at once: two
candidates of one term, each voting for itself, so the old leader's vote decides. Two
amplifiers, not bugs (``plant/real_bugs.py``; correct code passes with them): persisting a
vote for a transfer candidate takes 3 s (``slow_transfer_vote``), and every RequestVote
arrives 0.4 s late (``late_vote_requests``), so the old leader first learns the new term from
a candidate's answer to its heartbeat and persists it without a vote. Then every node is
killed while that vote is still being written. A correct voter's grant leaves only once the
vote is durable, so the kill costs the candidates the election; ``leader_votes_durable``
(every leader of the record has a majority of votes on the voters' vote logs) holds.

* ``vote_not_durable_before_reply`` (``tests/teeth/bugs.py``): vote replies leave before the
  persist; a candidate leads with a vote that the crash erased.
* ``hold_decided_at_creation`` (issue 9's bug): whether a reply may leave before the persist
  was decided when the reply was built, and the grant is built before the vote is recorded;
  in a term the voter had already persisted (here: learned from the candidate's answer) the
  grant leaves at once. The same leader without a durable majority.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.teeth.plant.run import Run, chaos_run

pytestmark = [pytest.mark.integration, pytest.mark.slow]

AMPLIFIERS = ["slow_transfer_vote", "late_vote_requests"]

SCENARIO: dict[str, Any] = {
    "name": "teeth-vote-crash",
    "seed": 10,
    "nodes": ["n1", "n2", "n3"],
    "duration": 3.5,
    "timing": {"tick_ms": 10.0, "election_ticks": 60, "heartbeat_ticks": 5},
    "workload": {"clients": 2, "rate": 20.0, "keys": 2, "timeout": 1.0, "mix": {"read": 1.0}},
    "nemesis": [
        {"kind": "transfer", "target": "all", "at": 1.0, "duration": 0.2},
        {"kind": "kill", "target": "all", "at": 2.2, "duration": 1.0},
    ],
    "final": {"settle": 1.0, "converge_timeout": 10.0},
    "expect": {"min_ok_ops": 5},
}


def transferred(run: Run) -> str:
    """The leader that handed over to both followers at once (the deciding voter)."""
    (transfer,) = [f for f in run.results["faults_applied"] if f["kind"] == "transfer"]
    assert transfer["skipped"] is None, transfer
    assert len(transfer["nodes"]) == 2, transfer
    (kill,) = [f for f in run.results["faults_applied"] if f["kind"] == "kill"]
    assert sorted(kill["nodes"]) == ["n1", "n2", "n3"], kill
    leader: str = transfer["leader_before"][0]
    return leader


@pytest.mark.parametrize("bug", ["vote_not_durable_before_reply", "hold_decided_at_creation"])
def test_a_vote_replied_before_it_was_durable_is_caught(tmp_path: Path, bug: str) -> None:
    run = chaos_run(tmp_path, SCENARIO, plant=[bug, *AMPLIFIERS])
    voter = transferred(run)
    assert run.code == 1, run.output
    row = run.raft("leader_votes_durable")
    assert row["ok"] is False, row
    v = row["violations"][0]
    assert v["leader"] != voter, row
    assert v["durable_votes"] == [v["leader"]], row
    assert run.failed() == ["leader_votes_durable"], run.failed()


def test_the_same_run_passes_when_votes_are_durable_first(tmp_path: Path) -> None:
    run = chaos_run(tmp_path, SCENARIO, plant=AMPLIFIERS)
    transferred(run)
    assert run.code == 0, run.output
    assert run.raft("leader_votes_durable")["ok"] is True
