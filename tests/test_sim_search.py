"""The simulator's search is not vacuous: swarm draws differ, aimed crashes happen, clients
record histories with every kind of outcome, the budget stops a run that does too much."""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import replace

from harness.sim.params import FAULTS, swarm_draw
from harness.sim.sweep import sweep
from harness.sim.world import SimConfig, World, sweep_config
from tests.teeth.bugs import BUGS

CONFIG = sweep_config()


def test_swarm_draws_differ_by_seed_and_replay_the_same() -> None:
    draws = [swarm_draw(seed, frozenset(FAULTS), 4, 5) for seed in range(40)]
    assert swarm_draw(7, frozenset(FAULTS), 4, 5) == draws[7]
    assert len({d.faults for d in draws}) > 10
    assert {d.pre_vote for d in draws} == {True, False}
    assert len({d.snapshot_entries for d in draws}) > 2
    assert any(d.slow_disks for d in draws)
    assert any(not d.slow_disks for d in draws)
    for d in draws:
        assert d.faults <= frozenset(FAULTS)
        assert d.faults - {"snapshot"}, "every run has a fault the nemesis acts out"


def test_aimed_faults_happen_and_the_guard_refuses_overlapping_changes() -> None:
    seen: Counter[str] = Counter()
    marks = {
        "crashes inside its write": "crash_in_write",
        "crashes mid-snapshot": "crash_mid_snapshot",
        "crashes mid-change": "crash_mid_change",
        "membership change refused: a membership change is still pending": "overlap_refused",
        "installing snapshot": "install",
    }
    for seed in range(60):
        lines: list[str] = []
        assert World(replace(CONFIG, seed=seed), trace=lines.append).run() == [], seed
        for line in lines:
            for mark, name in marks.items():
                if mark in line:
                    seen[name] += 1
    for name in marks.values():
        assert seen[name] > 0, (name, seen)


def test_clients_record_histories_with_every_outcome() -> None:
    summary = sweep(CONFIG, 0, 30, jobs=2)
    assert summary.failing == []
    ops = {k: summary.totals[f"ops_{k}"] for k in ("ok", "fail", "info")}
    assert ops["ok"] > 1000
    assert ops["fail"] > 0  # cas mismatches
    assert ops["info"] > 0  # given up on, outcome unknown
    assert summary.totals["history_unknown"] == 0, "every history decided"


def test_a_history_event_per_invoke_and_completion_in_time_order() -> None:
    world = World(replace(CONFIG, seed=3))
    assert world.run() == []
    assert world.clients is not None
    events = world.clients.events
    assert events, "the clients did something"
    assert [e.index for e in events] == list(range(len(events)))
    assert all(a.time <= b.time for a, b in itertools.pairwise(events))
    invokes = sum(1 for e in events if e.type == "invoke")
    completions = len(events) - invokes
    assert 0 <= invokes - completions <= len(world.clients.clients)  # at most one open each


def test_every_invoke_names_its_client() -> None:
    world = World(replace(CONFIG, seed=3))
    assert world.run() == []
    assert world.clients is not None
    names = {c.name for c in world.clients.clients}
    client_of: dict[int, str] = {}
    for e in world.clients.events:
        if e.type == "invoke":
            assert e.client in names
            assert client_of.setdefault(e.process, e.client) == e.client  # one client each
    assert len(set(client_of.values())) == len(names)
    assert len(client_of) > len(names), "some client went on as a new process after info"


def test_a_run_over_its_event_budget_is_stuck_not_a_hang() -> None:
    world = World(replace(CONFIG, seed=1, max_events_per_s=100))
    violations = world.run()
    assert [v.kind for v in violations] == ["stuck"]
    assert "over the budget of 1000" in violations[0].detail


def test_a_run_over_its_wall_time_is_stuck() -> None:
    violations = World(replace(CONFIG, seed=1, max_wall_s=0.0)).run()
    assert [v.kind for v in violations] == ["stuck"]
    assert "wall time" in violations[0].detail


def test_a_livelock_is_reported_within_the_budget() -> None:
    """The planted back-up bug never converges: reported (liveness), and quickly."""
    with BUGS["backup_off_by_one"].planted():
        violations = World(replace(CONFIG, seed=0)).run()
    assert violations
    assert violations[0].kind in {"liveness", "stuck"}


def test_classic_runs_are_unchanged_by_the_search() -> None:
    """Without swarm and clients the world makes the same random choices as before the
    search existed (so ``--classic`` replays the seeds of earlier sweeps, 3787 and 6057 among
    them): the digest of a classic run is pinned to the one the simulator gave before."""
    world = World(
        SimConfig(seed=7, faults=frozenset(FAULTS), snapshot_entries=25, spare_nodes=2),
        digest=True,
    )
    assert world.run() == []
    assert world.trace_digest() == "c608c1605756dd76716575a73beb79eb"
    assert world.clients is None
