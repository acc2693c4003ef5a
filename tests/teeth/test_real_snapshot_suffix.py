"""Teeth on real processes: an InstallSnapshot that keeps a conflicting suffix.

Three nodes that compact after every applied entry (``snapshot_entries = 1``). The leader n1
is cut off alone for 2 s with every client: ``check_quorum_off`` (an amplifier: a supported
setting, ``plant/real_bugs.py``) keeps it leading, so it appends a long suffix of writes that
nobody commits. The other two elect a leader, commit its no-op and compact it. At the heal
n1 is behind that leader's compacted log and receives its snapshot, whose last entry n1
holds with another term. A correct n1 drops its whole log (Raft §7); the run passes.

Planted ``snapshot_keeps_conflicting_suffix`` (``tests/teeth/bugs.py``), n1 keeps its entries
after the snapshot point, of the old term, and writes them back after the snapshot: a log
whose terms go down. Later appends replace them, so the final logs agree;
``snapshot_continuation`` reads n1's WAL history and finds the log it started afresh after
the snapshot beginning with a term below the one committed at the snapshot point.

The clients write slowly (6 a second): the leader compacts after every entry, so a follower
still catching up gets each new entry as yet another snapshot; only when a snapshot round
trip is quicker than the time between two writes does n1 append an entry after its fresh
start, which is what the check reads. At 40 writes a second, with faster clients, n1 took
snapshots until the end and the unplanted run had nothing to judge ("not applicable").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.teeth.plant.run import chaos_run

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SCENARIO: dict[str, Any] = {
    "name": "teeth-snapshot-suffix",
    "seed": 11,
    "nodes": ["n1", "n2", "n3"],
    "duration": 4.0,
    "groups": {"a": ["n1"], "b": ["n2", "n3"]},
    "timing": {"tick_ms": 10.0, "election_ticks": 30, "heartbeat_ticks": 5,
               "snapshot_entries": 1},
    "setup": {"leader_in": "a"},
    "workload": {"clients": 8, "placement": {"a": 8}, "rate": 6.0, "keys": 5, "timeout": 3.0,
                 "mix": {"write": 0.6, "cas": 0.4}},
    "nemesis": [
        {"kind": "partition", "shape": "groups", "groups": ["a", "b"], "at": 1.0, "duration": 2.0}
    ],
    "final": {"settle": 1.0, "converge_timeout": 4.0},
    "expect": {"min_ok_ops": 5, "minority_leader_steps_down_within": False},
}  # fmt: skip


def test_a_snapshot_install_keeping_a_conflicting_suffix_is_caught(tmp_path: Path) -> None:
    run = chaos_run(
        tmp_path, SCENARIO, plant=["snapshot_keeps_conflicting_suffix", "check_quorum_off"]
    )
    assert run.code == 1, run.output
    row = run.raft("snapshot_continuation")
    assert row["ok"] is False, row
    v = row["violations"][0]
    assert v["node"] == "n1", row
    assert v["term"] < v["committed_term"], row
    assert run.failed() == ["snapshot_continuation"], run.failed()


def test_the_same_run_passes_when_the_install_drops_the_log(tmp_path: Path) -> None:
    run = chaos_run(tmp_path, SCENARIO, plant=["check_quorum_off"])
    assert run.code == 0, run.output
    row = run.raft("snapshot_continuation")
    assert row["ok"] is True, row
    assert not row["saw"].startswith("0 log"), row
