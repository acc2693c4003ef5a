"""The simulator has teeth: every bug of the catalogue (tests/teeth/bugs.py) is found.

Each test plants one bug and runs the seeds of ``sweep_config()`` (what ``orbital sim`` runs)
from 0 until the first violation, which must come within the bug's ``sim_bound`` and be of a
kind the bug explains. The same seeds pass with the bug removed (the control test), so what is
found is the bug, not the harness crying wolf. The seed each bug is found at is printed by
``bench/teeth.py`` and listed in the README.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest

from harness.sim.sweep import sweep
from harness.sim.world import World, sweep_config
from tests.teeth.bugs import BUGS, Bug

CONFIG = sweep_config()


def first_violation(bug: Bug) -> tuple[int, str, str] | None:
    with bug.planted():
        for seed in range(bug.sim_bound):
            violations = World(replace(CONFIG, seed=seed)).run()
            if violations:
                return seed, violations[0].kind, violations[0].detail
    return None


@pytest.mark.parametrize("name", sorted(BUGS))
def test_the_simulator_finds_the_planted_bug(name: str) -> None:
    bug = BUGS[name]
    found = first_violation(bug)
    assert found is not None, f"{name}: nothing found in {bug.sim_bound} seeds"
    seed, kind, detail = found
    assert kind in bug.expected, f"{name} at seed {seed}: {kind}: {detail}"


def test_the_unpatched_core_passes_the_seeds_the_bugs_are_found_at() -> None:
    """Control: the seeds the catalogue needs (the largest bound) are clean without a bug."""
    most = max(b.sim_bound for b in BUGS.values())
    summary = sweep(CONFIG, 0, most, jobs=2)
    assert [(r.seed, r.violations[0]) for r in summary.failing] == []


def test_the_catalogue_holds_the_classic_bugs() -> None:
    """At least a dozen bugs, each with a description and a patch that really changes code."""
    assert len(BUGS) >= 12
    for bug in BUGS.values():
        assert bug.summary
        assert bug.patches
        for owner, attr, fn in bug.patches:
            assert getattr(owner, attr) is not fn
            with bug.planted():
                assert getattr(owner, attr) is fn
            assert getattr(owner, attr) is not fn


def test_every_bug_names_the_real_run_that_flags_it() -> None:
    """``real`` names a check and the test file that plants the bug in a real chaos run; the
    file exists and plants that very bug (so the README's table cannot claim a test that is
    not there)."""
    here = Path(__file__).resolve().parent
    for bug in BUGS.values():
        found = re.search(r"\((test_real_\w+\.py)\)", bug.real)
        assert found, (bug.name, bug.real)
        text = (here / found.group(1)).read_text(encoding="utf-8")
        assert f'"{bug.name}"' in text, (bug.name, found.group(1))
