"""Teeth on real processes: a leader cut off with a minority must step down (check-quorum).

The expectation ``minority_leader_steps_down_within`` is judged from the nodes' own
``roles.jsonl``. Planted ``no_check_quorum`` (``tests/teeth/bugs.py``: the leader never
notices it lost its majority) in every node process, a short Antarctic-like run must fail
it; the same run without the bug must pass every check.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.teeth.plant.run import chaos_run

pytestmark = [pytest.mark.integration]

SCENARIO: dict[str, Any] = {
    "name": "teeth-check-quorum",
    "seed": 3,
    "nodes": ["n1", "n2", "n3"],
    "duration": 4.5,
    "groups": {"north": ["n1", "n2"], "south": ["n3"]},
    "timing": {"tick_ms": 10.0, "election_ticks": 30, "heartbeat_ticks": 5},
    "setup": {"leader_in": "south"},
    "workload": {"clients": 3, "rate": 30.0, "keys": 3, "timeout": 1.0},
    "nemesis": [
        {
            "kind": "partition",
            "shape": "groups",
            "groups": ["north", "south"],
            "at": 1.0,
            "duration": 2.5,
        }
    ],
    "final": {"settle": 1.0, "converge_timeout": 10.0},
    "expect": {
        "minority_never_acknowledges": True,
        "min_ok_ops": 10,
        "minority_leader_steps_down_within": 3.0,
    },
}


def test_a_leader_without_check_quorum_fails_the_run(tmp_path: Path) -> None:
    run = chaos_run(tmp_path, SCENARIO, plant=["no_check_quorum"])
    assert run.code == 1, run.output
    (step,) = run.expectations("minority_leader_steps_down")
    assert step["ok"] is False, step
    assert step["node"] == "n3"
    assert "still led" in step["observed"]
    assert run.failed() == [step["name"]], "nothing else is wrong with this cluster"


def test_the_same_run_passes_with_check_quorum(tmp_path: Path) -> None:
    run = chaos_run(tmp_path, SCENARIO)
    assert run.code == 0, run.output
    (step,) = run.expectations("minority_leader_steps_down")
    assert step["ok"] is True, step
    assert step["stepped_down_s"] <= 0.9
