"""Teeth on real processes: exactly-once, from the committed log replayed in the checker.

The leader is cut off from its followers for 0.9 s at a time (shorter than an election
timeout: it stays leader), longer than the clients' attempt timeout (0.5 s), so a write
invoked meanwhile is retried and its ``(client, seq)`` appended two or three times; all
commit at the heal. With 500 keys, most cas operations find their key absent, as they
expect (``null``), so a second application of one mismatches. Planted
``session_applies_retry_twice`` (``tests/teeth/bugs.py``: the session table never recognises
a retry), the second copy of a cas is applied again, mismatches, and its client is told
"mismatch" for a cas that took effect: ``exactly_once`` must flag it, naming the log indexes.
Without the bug, the copies take no effect and the run passes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.teeth.plant.run import chaos_run

pytestmark = [pytest.mark.integration]

SCENARIO: dict[str, Any] = {
    "name": "teeth-exactly-once",
    "seed": 5,
    "nodes": ["n1", "n2", "n3"],
    "duration": 6.0,
    "timing": {"tick_ms": 10.0, "election_ticks": 150, "heartbeat_ticks": 10},
    "workload": {
        "clients": 4,
        "rate": 20.0,
        "keys": 500,
        "timeout": 1.5,
        "mix": {"read": 0.1, "write": 0.1, "cas": 0.8},
    },
    "nemesis": [
        {
            "kind": "partition",
            "shape": "isolate-leader",
            "interval": 1.6,
            "start": 0.5,
            "duration": 0.9,
        }
    ],
    "final": {"settle": 1.0, "converge_timeout": 10.0, "reads": False},
    "expect": {"min_ok_ops": 5},
}


def test_a_session_table_that_applies_a_retry_twice_is_caught(tmp_path: Path) -> None:
    run = chaos_run(tmp_path, SCENARIO, plant=["session_applies_retry_twice"])
    assert run.code == 1, run.output
    row = run.raft("exactly_once")
    assert row["ok"] is False, row
    kinds = {a["kind"] for a in row["violations"]}
    assert "fail_took_effect" in kinds, row
    a = next(a for a in row["violations"] if a["kind"] == "fail_took_effect")
    assert len(a["log_indexes"]) >= 2, "the effect and its applied-again copy"
    assert all(a["nodes"][str(i)] for i in a["log_indexes"]), "the nodes holding them"


def test_the_same_run_passes_with_sessions(tmp_path: Path) -> None:
    run = chaos_run(tmp_path, SCENARIO)
    assert run.code == 0, run.output
    row = run.raft("exactly_once")
    assert row["ok"] is True, row
    assert "duplicate" in row["saw"]
    assert not row["saw"].startswith("0 committed")
