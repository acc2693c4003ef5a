"""Teeth on real processes: a node process that ends on its own fails the run.

Planted ``follower_dies_on_an_assertion`` (n2 fails an assertion once it has applied 30
entries), a short fault-free run must fail ``no_node_dies`` and name n2, its exit code and the
last line of its log; the same run without the plant passes. Before this check, a node killed
by a planted bug's assertion left a run that every other check called valid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.teeth.plant.run import chaos_run

pytestmark = [pytest.mark.integration]

SCENARIO: dict[str, Any] = {
    "name": "teeth-node-dies",
    "seed": 2,
    "nodes": ["n1", "n2", "n3"],
    "duration": 3.0,
    "timing": {"tick_ms": 10.0, "election_ticks": 30, "heartbeat_ticks": 5},
    "workload": {"clients": 3, "rate": 40.0, "keys": 3, "timeout": 1.0},
    "final": {"settle": 0.5, "converge_timeout": 5.0},
    "expect": {"min_ok_ops": 30, "converge_after_heal": False},
}


def test_a_node_that_dies_on_its_own_fails_the_run(tmp_path: Path) -> None:
    run = chaos_run(tmp_path, SCENARIO, plant=["follower_dies_on_an_assertion"])
    assert run.code == 1, run.output
    (dies,) = run.expectations("no_node_dies")
    assert dies["ok"] is False, dies
    assert list(dies["died"]) == ["n2"]
    assert "planted: n2 gave up" in dies["observed"]
    assert run.failed() == ["no_node_dies"], "the cluster served on with two nodes"


def test_the_same_run_passes_when_no_node_dies(tmp_path: Path) -> None:
    run = chaos_run(tmp_path, SCENARIO)
    assert run.code == 0, run.output
    (dies,) = run.expectations("no_node_dies")
    assert dies["ok"] is True, dies
    assert dies["observed"] == "none"
