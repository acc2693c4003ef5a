"""Pieces of the chaos runner that need no cluster."""

from __future__ import annotations

from harness.expectations import convergence_text
from harness.monitor import Sample, converged


def sample(node: str, mark: int) -> Sample:
    return Sample(0, node, "follower", 3, mark, mark, mark)


def test_convergence_needs_every_node_at_one_mark() -> None:
    same = {n: sample(n, 545) for n in ("n1", "n2", "n3")}
    assert converged(same)
    assert convergence_text(same, {}) == "commit 545 applied 545 last 545 on all 3 nodes"
    assert not converged({**same, "n3": sample("n3", 544)})
    assert not converged({**same, "n3": None})


def test_a_silent_node_is_explained() -> None:
    final = {"n1": sample("n1", 545), "n5": None, "n6": None}
    text = convergence_text(final, {"n5": "running, 14.2 CPU s used"})
    assert text == (
        "n1: commit 545 applied 545 last 545; n5: no answer (running, 14.2 CPU s used); "
        "n6: no answer"
    )
