"""The simulator itself: the brief's election timeline, seeded sweeps, determinism, teeth."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from unittest import mock

import pytest

from harness.cli import main
from harness.sim.lab import LabCluster
from harness.sim.sweep import sweep
from harness.sim.world import FAULTS, SimConfig, World
from raft.core.raft import RaftCore
from tests.teeth.bugs import BUGS

ALL_FAULTS = frozenset({"partition", "crash", "drop", "delay", "duplicate"})


def test_five_nodes_elect_and_reelect_within_two_election_timeouts() -> None:
    """The brief's acceptance test, printing its timeline (run with -s to see it)."""
    lines: list[str] = []
    lab = LabCluster(5, seed=3, names="ABCDE", trace=lines.append)
    print("[t=0.000s] cluster=[A,B,C,D,E] started")
    timeout = lab.election_timeout_s
    leader = lab.check_one_leader(within=2 * timeout)
    term = lab.get_state(leader)[0]
    elected_at = lab.now
    print("\n".join(lines))
    print(f"PASS: cluster elected {leader} as leader in term {term} within 2 election timeouts")
    assert elected_at <= 2 * timeout

    lab.run_for(2.0 - lab.now)
    lines.clear()
    crashed_at = lab.now
    lab.crash(leader)
    new_leader = lab.check_one_leader(within=2 * timeout)
    new_term = lab.get_state(new_leader)[0]
    print("\n".join(lines))
    print(f"PASS: cluster re-elected {new_leader} as leader in term {new_term}", end="")
    print(f" after {leader}'s failure")
    assert new_leader != leader
    assert new_term > term
    assert lab.now - crashed_at <= 2 * timeout
    assert any("becoming leader" in line for line in lines)


@pytest.mark.slow
def test_1000_seeded_runs_never_two_leaders_in_one_term() -> None:
    """Election safety (Raft §5.2) under partitions, crashes and drops; every other invariant
    is checked too, and any violation fails the test."""
    base = SimConfig(
        nodes=5,
        duration_us=3_000_000,
        settle_us=1_000_000,
        faults=frozenset({"partition", "crash", "drop", "churn"}),
    )
    summary = sweep(base, 0, 1000)
    assert summary.runs == 1000
    assert summary.totals["elections"] >= 1000, "the sweep must actually elect leaders"
    failing = [(r.seed, r.violations[0]) for r in summary.failing]
    assert failing == []


def test_all_faults_sweep_keeps_every_invariant() -> None:
    base = SimConfig(faults=ALL_FAULTS | {"churn"}, duration_us=5_000_000)
    summary = sweep(base, 10_000, 60)
    assert [(r.seed, r.violations) for r in summary.failing] == []
    assert summary.totals["acked"] > 1000
    assert summary.totals["crashes"] > 0


def _digest(seed: int) -> str:
    world = World(SimConfig(seed=seed, faults=ALL_FAULTS), digest=True)
    world.run()
    return world.trace_digest()


def test_same_seed_same_trace_and_different_seed_different_trace() -> None:
    assert _digest(7) == _digest(7)
    assert _digest(7) != _digest(8)


@pytest.mark.parametrize("seed", [3, 26])
def test_quiet_ticks_off_the_heap_change_nothing(seed: int) -> None:
    """The world keeps quiet ticks off the heap and hands them over in one ``skip_ticks``;
    with every tick of every node on the heap the run is the same, event for event, down to
    each core's election clock at the end."""
    cfg = SimConfig(seed=seed, faults=frozenset(FAULTS), snapshot_entries=25, spare_nodes=2)

    def run(every_tick: bool) -> tuple[object, ...]:
        world = World(cfg, digest=True, every_tick=every_tick)
        with (
            mock.patch.object(RaftCore, "tick", autospec=True, side_effect=RaftCore.tick) as tick,
            mock.patch.object(
                RaftCore, "skip_ticks", autospec=True, side_effect=RaftCore.skip_ticks
            ) as skip,
        ):
            violations = world.run()
        clocks = [
            (n.core.term, n.core.role, n.core.election_elapsed, n.core.randomized_timeout)
            for n in world.nodes
            if n.core is not None
        ]
        skipped = sum(c.args[1] for c in skip.call_args_list)
        return (world.trace_digest(), world.stats, violations, clocks), tick.call_count, skipped

    quiet, ticks_quiet, skipped = run(every_tick=False)
    every, ticks_every, none_skipped = run(every_tick=True)
    assert quiet == every
    assert none_skipped == 0
    assert skipped > 2 * ticks_quiet  # most ticks never reached the heap
    assert ticks_quiet + skipped == ticks_every


def test_trace_does_not_depend_on_python_hash_seed() -> None:
    """Set iteration order varies with PYTHONHASHSEED; the trace must not."""
    code = (
        "from harness.sim.world import FAULTS, SimConfig, World\n"
        "w = World(SimConfig(seed=7, faults=frozenset(FAULTS), snapshot_entries=25,"
        " spare_nodes=2), digest=True)\n"
        "w.run(); print(w.trace_digest(), w.stats['messages'])"
    )
    digests = set()
    for hash_seed in ("1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        digests.add(out.stdout.strip())
    assert len(digests) == 1, digests


# ---- the harness has teeth: see tests/teeth/ ----------------------------------------------------


# ---- orbital sim -------------------------------------------------------------------------------


def test_cli_sweep_prints_a_json_summary(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["sim", "--seeds", "6", "--time", "2s", "--jobs", "2", "--no-progress"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert out["runs"] == 6
    assert out["violations"] == 0
    assert out["simulated_seconds"] == 12.0
    assert {"elections", "commits", "wall_seconds", "violations_by_kind"} <= out.keys()


def test_cli_reports_a_violation_with_seed_and_trace(capsys: pytest.CaptureFixture[str]) -> None:
    with BUGS["no_election_restriction"].planted():
        code = main(["sim", "--seeds", "20", "--jobs", "1", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 1
    assert json.loads(captured.out)["violations"] >= 1
    assert "violated" in captured.err
    assert "orbital sim --seed" in captured.err
    assert "VIOLATION" in captured.err


def test_cli_replays_one_seed_with_its_timeline(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["sim", "--seed", "4", "--trace", "--time", "1s", "--faults", "none"])
    out = capsys.readouterr().out
    assert code == 0
    assert "becoming leader" in out
    assert out.splitlines()[0].startswith("[t=0.000s]")


@pytest.mark.parametrize(
    "argv",
    [
        ["sim", "--seeds", "0"],
        ["sim", "--seeds", "x"],
        ["sim", "--time", "soon"],
        ["sim", "--faults", "meteor"],
        ["sim", "--start-seed", "-1"],
    ],
)
def test_cli_bad_arguments_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_cli_trace_without_seed_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "--trace"]) == 2
    assert "--trace needs --seed" in capsys.readouterr().err


def test_majority_of_exactly_three_elects_within_two_timeouts_on_every_seed() -> None:
    """The Antarctic shape: the leader and one follower are cut off, three nodes remain.

    With exactly a majority left, two candidates in one term can never win, so a split vote
    costs a whole extra election timeout. The core's split-vote breaker (a pre-candidate yields
    to a stronger one; a follower that grants a pre-vote postpones its own timeout) made this
    hold on every one of 300 seeds measured (max 0.256 s against 0.300 s), where without it 5
    of 300 exceeded two election timeouts (max 0.365 s).
    """
    slowest = 0.0
    for seed in range(150):
        lab = LabCluster(5, seed=seed)
        leader = lab.check_one_leader()
        lab.run_for(0.5)
        other = next(n for n in lab.names if n != leader)
        north = [n for n in lab.names if n not in (leader, other)]
        cut_at = lab.now
        lab.partition([leader, other], north)

        def north_leads(lab: LabCluster = lab, north: list[str] = north) -> bool:
            return any(lab.get_state(n)[1] for n in north)

        assert lab.run_until(north_leads, timeout=2.0, step=0.001), seed
        took = lab.now - cut_at
        slowest = max(slowest, took)
        assert took <= 2 * lab.election_timeout_s, (seed, took)
    assert slowest > lab.election_timeout_s  # the check measured real elections


# ---- the double vote of issue 9 ------------------------------------------------------------------

_ISSUE9 = SimConfig(
    nodes=5,
    duration_us=10_000_000,
    faults=frozenset(FAULTS),
    settle_us=2_000_000,
    snapshot_entries=25,
    spare_nodes=2,
)


@pytest.mark.parametrize(("seed", "voter"), [(3787, "n5"), (6057, "n1")])
def test_double_vote_seeds_of_the_10000_seed_sweep_pass(seed: int, voter: str) -> None:
    """`orbital sim --seeds 10000 --faults <all>` found a double vote at these seeds: a vote
    granted in a term the voter had already persisted without a vote left before the vote was
    durable. The core now decides the hold at ``ready()``, and these runs pass. With the old
    decision (made when the reply was built) planted back, the same runs fail at the same
    voter: now already at its crash (``vote_not_durable``: it had sent a vote its disk lacks),
    before it votes a second time."""
    config = replace(_ISSUE9, seed=seed)
    assert World(config).run() == []
    with BUGS["hold_decided_at_creation"].planted():
        violations = World(config).run()
    assert [v.kind for v in violations] == ["vote_not_durable"]
    assert violations[0].detail.startswith(f"{voter} crashed after granting")
