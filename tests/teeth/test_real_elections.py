"""Teeth on real processes: election safety and votes, judged from roles.jsonl and the vote
logs the nodes write.

A ``transfer`` fault asks the leader to hand over to all four followers at once: four
TimeoutNow, four candidates of one term. A correct cluster splits that vote (nobody gets a
majority) and elects a leader in a later term. Planted ``votes_twice_in_a_term``
(``tests/teeth/bugs.py``: a voter forgets it already voted in the term), every voter grants
every candidate: several leaders of one term in ``roles.jsonl`` (``election_safety``) and
voters with two candidates in one term on their vote logs (``votes_one_per_term``).

Planted ``vote_not_persisted`` (``real_bugs.py``: the term is persisted, the vote is not),
no leader has a durable majority of votes (``leader_votes_durable``), in any run.

Five transfer rounds, not two: on a loaded machine the four TimeoutNow of one round can land
far enough apart that the candidates end up in four different terms (no two leaders of one
term even with the bug); each round is another chance, so a missed catch needs all five to
spread out (seen once in a loaded full-suite run with two rounds).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.teeth.plant.run import chaos_run

pytestmark = [pytest.mark.integration]

SCENARIO: dict[str, Any] = {
    "name": "teeth-elections",
    "seed": 4,
    "nodes": ["n1", "n2", "n3", "n4", "n5"],
    "duration": 6.0,
    "timing": {"tick_ms": 10.0, "election_ticks": 30, "heartbeat_ticks": 5},
    "workload": {"clients": 3, "rate": 10.0, "keys": 5, "timeout": 1.0},
    "nemesis": [
        {"kind": "transfer", "target": "all", "interval": 1.0, "start": 1.0, "duration": 0.2}
    ],
    "final": {"settle": 1.0, "converge_timeout": 4.0},
    "expect": {"min_ok_ops": 5},
}


def test_a_node_voting_twice_in_a_term_is_caught(tmp_path: Path) -> None:
    run = chaos_run(tmp_path, SCENARIO, plant=["votes_twice_in_a_term"])
    assert run.code == 1, run.output
    safety = run.raft("election_safety")
    assert safety["ok"] is False, safety
    assert len(safety["violations"][0]["leaders"]) >= 2
    votes = run.raft("votes_one_per_term")
    assert votes["ok"] is False, votes
    assert len(votes["violations"][0]["candidates"]) >= 2


def test_a_vote_that_is_never_durable_is_caught(tmp_path: Path) -> None:
    run = chaos_run(tmp_path, SCENARIO, plant=["vote_not_persisted"])
    assert run.code == 1, run.output
    row = run.raft("leader_votes_durable")
    assert row["ok"] is False, row


def test_the_same_run_passes_without_bugs(tmp_path: Path) -> None:
    run = chaos_run(tmp_path, SCENARIO)
    assert run.code == 0, run.output
    for name in ("election_safety", "votes_one_per_term", "leader_votes_durable"):
        assert run.raft(name)["ok"] is True, run.raft(name)
    transfers = [f for f in run.results["faults_applied"] if f["kind"] == "transfer"]
    done = [f for f in transfers if f["skipped"] is None]
    assert done, transfers
    assert all(len(f["nodes"]) == 4 for f in done), "to all four followers at once"
