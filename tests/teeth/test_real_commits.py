"""Teeth on real processes: commits on the record (the WAL's COMMIT records).

Four nodes, split 2 | 2 with the leader's pair (and every client) on one side: no side has
a majority, so the leader's pair keeps entries of its term that nobody commits, and after
the heal one of the pair leads again (the other pair's logs are shorter). It appends its
no-op and replicates the older entries to the other pair; with ``tiny_append_batches`` (an
amplifier, not a bug: one entry per AppendEntries) they are acknowledged one by one, before
the no-op. Planted ``commit_earlier_term_by_counting`` (``tests/teeth/bugs.py``: Figure 8's
rule forgotten), the new leader commits them by counting replicas, and
``commit_current_term`` must say so. With the amplifier alone the run passes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.teeth.plant.run import chaos_run

pytestmark = [pytest.mark.integration]

SCENARIO: dict[str, Any] = {
    "name": "teeth-commits",
    "seed": 2,
    "nodes": ["n1", "n2", "n3", "n4"],
    "duration": 5.0,
    "groups": {"a": ["n1", "n2"], "b": ["n3", "n4"]},
    "timing": {"tick_ms": 10.0, "election_ticks": 30, "heartbeat_ticks": 5},
    "setup": {"leader_in": "a"},
    "workload": {"clients": 6, "placement": {"a": 6}, "rate": 60.0, "keys": 50, "timeout": 1.0},
    "nemesis": [
        {"kind": "partition", "shape": "groups", "groups": ["a", "b"], "at": 1.0, "duration": 2.0}
    ],
    "final": {"settle": 1.0, "converge_timeout": 10.0, "reads": False},
    "expect": {"min_ok_ops": 5},
}


def test_a_leader_committing_an_earlier_terms_entry_is_caught(tmp_path: Path) -> None:
    run = chaos_run(
        tmp_path, SCENARIO, plant=["commit_earlier_term_by_counting", "tiny_append_batches"]
    )
    assert run.code == 1, run.output
    row = run.raft("commit_current_term")
    assert row["ok"] is False, row
    v = row["violations"][0]
    assert v["entry_term"] < v["leader_term"]
    assert v["node"] in ("n1", "n2")


def test_the_same_run_passes_without_the_bug(tmp_path: Path) -> None:
    run = chaos_run(tmp_path, SCENARIO, plant=["tiny_append_batches"])
    assert run.code == 0, run.output
    row = run.raft("commit_current_term")
    assert row["ok"] is True, row
    assert run.raft("committed_entries_agree")["ok"] is True
