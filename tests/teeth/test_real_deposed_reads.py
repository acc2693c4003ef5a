"""Teeth on real processes: a leader cut off serves reads without confirming it still leads.

Three nodes, the leader cut off alone with half the clients, for 2 s, while the other two
elect a leader and take writes. ``check_quorum_off`` (an amplifier: a supported setting,
``plant/real_bugs.py``) keeps the old leader leading for the whole cut. A correct leader
confirms each ReadIndex read with a heartbeat round that a majority answers: cut off, it
serves none, and the run is linearizable.

Planted ``read_without_leadership_check`` (``tests/teeth/bugs.py``: the leader answers from
its own commit index), the cut-off leader answers reads with values the majority has since
replaced: the history is not linearizable, ``exactly_once`` finds a ``stale_read`` against
the replayed log, and ``minority_silent`` counts the answers of the cut-off side.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.teeth.plant.run import chaos_run

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SCENARIO: dict[str, Any] = {
    "name": "teeth-deposed-reads",
    "seed": 9,
    "nodes": ["n1", "n2", "n3"],
    "duration": 4.0,
    "groups": {"a": ["n1"], "b": ["n2", "n3"]},
    "timing": {"tick_ms": 10.0, "election_ticks": 30, "heartbeat_ticks": 5},
    "setup": {"leader_in": "a"},
    # one key, read-heavy: the cut-off side reads it often (a write there hangs until its
    # timeout), while the majority side changes it a dozen times a second
    "workload": {"clients": 8, "placement": {"a": 4, "b": 4}, "rate": 80.0, "keys": 1,
                 "timeout": 0.5, "mix": {"read": 0.7, "write": 0.3}},
    "nemesis": [
        {"kind": "partition", "shape": "groups", "groups": ["a", "b"], "at": 1.0, "duration": 2.0}
    ],
    "final": {"settle": 1.0, "converge_timeout": 4.0},
    # without check-quorum the cut-off leader stays leader: that expectation is not the point
    "expect": {"min_ok_ops": 5, "minority_never_acknowledges": True,
               "minority_leader_steps_down_within": False},
}  # fmt: skip


def test_a_leader_reading_without_a_heartbeat_round_is_caught(tmp_path: Path) -> None:
    run = chaos_run(tmp_path, SCENARIO, plant=["read_without_leadership_check", "check_quorum_off"])
    assert run.code == 1, run.output
    assert run.results["linearizability"]["valid"] is False, run.results["linearizability"]
    row = run.raft("exactly_once")
    assert "stale_read" in {v["kind"] for v in row["violations"]}, row
    (silent,) = run.expectations("minority_silent")
    assert silent["ok"] is False, silent
    assert silent["minority"] == ["n1"], silent


def test_the_same_run_passes_with_read_index(tmp_path: Path) -> None:
    run = chaos_run(tmp_path, SCENARIO, plant=["check_quorum_off"])
    assert run.code == 0, run.output
    (silent,) = run.expectations("minority_silent")
    assert silent["ok"] is True, silent
