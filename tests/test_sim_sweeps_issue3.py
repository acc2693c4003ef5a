"""Seeded sweeps of the simulator with random membership changes and aggressive snapshots
under partitions, crashes and message loss: every invariant holds in every run, the faults
really happen, and the cluster ends correctly configured everywhere. Plus ``orbital sim``
with these faults.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace

import pytest

from harness.cli import main
from harness.sim.sweep import Summary, sweep
from harness.sim.world import SimConfig, World

BASE = SimConfig(
    duration_us=3_000_000,
    settle_us=1_000_000,
    faults=frozenset({"membership", "snapshot", "partition", "crash", "drop"}),
    spare_nodes=2,
    snapshot_entries=25,
)
JOBS = 2  #: the suite shares two cores


def describe_failures(summary: Summary) -> str:
    lines = [f"{len(summary.failing)} of {summary.runs} seeds violated an invariant:"]
    for r in summary.failing[:20]:
        for kind, t, detail in r.violations:
            lines.append(f"  seed {r.seed} [t={t / 1e6:.6f}s] {kind}: {detail}")
    lines.append(
        "replay: orbital sim --seed S --trace --time 3s --faults " + ",".join(sorted(BASE.faults))
    )
    return "\n".join(lines)


@pytest.mark.slow
def test_1000_seeds_with_membership_and_snapshots_keep_every_invariant() -> None:
    summary = sweep(BASE, 0, 1000, jobs=JOBS)
    assert summary.runs == 1000
    assert summary.failing == [], describe_failures(summary)
    assert summary.totals["commits"] > 50_000
    assert summary.totals["crashes"] > 500


def test_100_seeds_with_membership_and_snapshots_keep_every_invariant() -> None:
    """The quick version for every run of the suite (seeds disjoint from the slow sweep's)."""
    summary = sweep(BASE, 5000, 100, jobs=JOBS)
    assert summary.runs == 100
    assert summary.failing == [], describe_failures(summary)


def test_runs_change_membership_install_snapshots_and_converge() -> None:
    """The faults are not vacuous (members are added, promoted and removed, removed leaders
    step down, snapshots are installed), and after the settle period every member of the
    final configuration is up, has that configuration and has caught up with the leader."""
    seen: Counter[str] = Counter()
    marks = {
        "membership change proposed: add_voter": "add",
        "membership change proposed: remove": "remove",
        "promoting it to voter": "promote",
        "removed from the configuration, stepping down": "removed_leader_steps_down",
        "installing snapshot": "install",
    }
    for seed in range(40):
        lines: list[str] = []
        world = World(replace(BASE, seed=seed), trace=lines.append)
        violations = world.run()
        assert violations == [], (seed, [v.describe() for v in violations])
        for line in lines:
            for mark, name in marks.items():
                if mark in line:
                    seen[name] += 1
        leader = world.nemesis.leader()
        assert leader is not None, seed
        assert leader.core is not None, seed
        conf, committed = leader.core.conf, leader.core.log.committed
        assert not conf.learners, (seed, conf)  # every learner added as a voter was promoted
        assert len(conf.voters) >= 3, (seed, conf)
        for node in world.nodes:
            if node.name not in conf.members():
                continue
            core = node.core
            assert core is not None, (seed, node.name, "member down at the end")
            assert core.conf == conf, (seed, node.name, core.conf, conf)
            assert core.log.committed == committed, (seed, node.name)
            assert node.sm_hash == leader.sm_hash, (seed, node.name)
    for name in marks.values():
        assert seen[name] > 0, (name, seen)
    assert seen["promote"] <= seen["add"]
    assert seen["install"] >= 20


def test_cli_sim_with_membership_and_snapshot_faults(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["sim", "--seeds", "20", "--time", "2s", "--faults", "membership,snapshot,crash"]
    rc = main([*argv, "--no-progress", "--jobs", str(JOBS)])
    out = capsys.readouterr().out
    summary = json.loads(out)
    assert rc == 0, out
    assert summary["runs"] == 20
    assert summary["violations"] == 0
    assert summary["failing_seeds"] == []
    assert summary["commits"] > 0
    assert summary["simulated_seconds"] == 40.0
