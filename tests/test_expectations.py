"""The scenario's expectations against recorded runs (synthetic records, no cluster)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from chaos.nemesis import AppliedFault
from harness.expectations import check_expectations, fault_sides, minority_checks, stepdown_checks
from harness.history import Op
from harness.runner import Observed, RunContext
from harness.scenario import parse_scenario

MS = 1_000_000
NODES = ["n1", "n2", "n3", "n4", "n5"]


def context(**expect: Any) -> RunContext:
    doc = {"name": "t", "nodes": NODES, "timing": {"tick_ms": 10, "election_ticks": 30}}
    scenario = parse_scenario({**doc, "expect": expect})
    return RunContext(scenario, Path("/nonexistent"), 0, "2026-01-01T00:00:00+00:00", [])


def one_way(node: str, applied: int, stopped: int) -> AppliedFault:
    return AppliedFault(
        0, "partition", {"shape": "one-way"}, node=node, leader_before=(node, 1),
        started_ns=applied - 2 * MS, applied_ns=applied, stopped_ns=stopped,
    )  # fmt: skip


def halves(minority: list[str], applied: int, stopped: int | None) -> AppliedFault:
    majority = sorted(set(NODES) - set(minority))
    return AppliedFault(
        1, "partition", {"shape": "halves"}, groups=[minority, majority],
        started_ns=applied - MS, applied_ns=applied, stopped_ns=stopped,
    )  # fmt: skip


class Events:
    """A history written event by event (times in ms)."""

    def __init__(self) -> None:
        self.ops: list[Op] = []

    def add(self, t_ms: float, process: int, type_: str, **kw: Any) -> None:
        doc = {"index": len(self.ops), "time": int(t_ms * MS), "process": process,
               "type": type_, "f": "write", "key": "k1", "value": process, **kw}  # fmt: skip
        self.ops.append(Op.model_validate(doc))


def test_an_op_invoked_before_a_one_way_cut_and_acknowledged_after_it_is_no_anomaly() -> None:
    """mixed.toml seed 1 (issue 9): invoked 8.9 ms before the cut, acknowledged 0.5 ms after
    it by the node that was cut off. It may have committed before the cut: not counted."""
    h = Events()
    h.add(1000 - 8.9, 7, "invoke")
    h.add(1000 + 0.5, 7, "ok", node="n2")
    observed = Observed(applied=[one_way("n2", 1000 * MS, 4000 * MS)])
    (silent,) = minority_checks(context(), observed, h.ops)
    assert silent["ok"] is True
    assert silent["observed"] == 0
    assert silent["invoked_before_cut"] == [1]


def test_an_op_invoked_after_the_cut_and_acknowledged_by_the_minority_is_flagged() -> None:
    h = Events()
    h.add(1000 + 1, 8, "invoke")
    h.add(1000 + 30, 8, "ok", node="n2")
    h.add(1000 + 31, 9, "invoke")
    h.add(1000 + 40, 9, "ok", node="n3")  # the majority side: fine
    observed = Observed(applied=[one_way("n2", 1000 * MS, 4000 * MS)])
    (silent,) = minority_checks(context(), observed, h.ops)
    assert silent["ok"] is False
    assert silent["ok_ops"] == [1]


def test_kills_of_several_nodes_leave_a_majority_only_if_few() -> None:
    kill2 = AppliedFault(0, "kill", {}, nodes=["n1", "n2"])
    kill3 = AppliedFault(0, "kill", {}, nodes=["n1", "n2", "n3"])
    assert fault_sides(kill2, NODES) == ({"n3", "n4", "n5"}, [])
    assert fault_sides(kill3, NODES) == (None, [])


def roles(*lines: tuple[float, str, str, int]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {n: [] for n in NODES}
    for t_ms, node, role, term in lines:
        out[node].append({"time": int(t_ms * MS), "node": node, "role": role, "term": term})
    return out


@pytest.mark.parametrize(
    ("step_ms", "stopped_ms", "ok"),
    [
        (1000 + 450, 15_000, True),  # stepped down 0.45 s after the cut: within 3 x 0.3 s
        (1000 + 2000, 15_000, False),  # 2 s: too late
        (None, 15_000, False),  # led through the whole 14 s cut (no check-quorum)
        (None, 1000 + 500, None),  # healed after 0.5 s: the bound was never reached
    ],
)
def test_a_minority_leader_steps_down_within_the_bound(
    step_ms: float | None, stopped_ms: float, ok: bool | None
) -> None:
    lines = [(10.0, "n4", "leader", 3), (20.0, "n1", "follower", 3)]
    if step_ms is not None:
        lines.append((step_ms, "n4", "follower", 3))
    observed = Observed(applied=[halves(["n4", "n5"], 1000 * MS, int(stopped_ms * MS))])
    (c,) = stepdown_checks(context(), observed, roles(*lines), 3.0)
    assert c["ok"] is ok, c
    assert c["node"] == "n4"


def test_a_leader_that_steps_down_while_the_cut_is_still_being_applied_is_judged() -> None:
    """Applying a partition is one Toxiproxy call per link: under load the last lands long after
    the first, and a check-quorum leader whose links went first may step down in between. Who
    led is read when the partition began; the bound counts from the last link."""
    slow = AppliedFault(
        1, "partition", {"shape": "halves"}, groups=[["n4", "n5"], ["n1", "n2", "n3"]],
        started_ns=1000 * MS, applied_ns=1800 * MS, stopped_ns=15_000 * MS,
    )  # fmt: skip
    stepped = roles((10.0, "n4", "leader", 3), (1500.0, "n4", "follower", 3))
    (c,) = stepdown_checks(context(), Observed(applied=[slow]), stepped, 3.0)
    assert c["ok"] is True, c
    assert (c["node"], c["stepped_down_s"]) == ("n4", 0)
    # the same leader still leading at the heal is caught, as before
    kept = roles((10.0, "n4", "leader", 3))
    (c,) = stepdown_checks(context(), Observed(applied=[slow]), kept, 3.0)
    assert c["ok"] is False, c


def test_no_minority_leader_is_not_applicable_never_met() -> None:
    observed = Observed(applied=[halves(["n4", "n5"], 1000 * MS, 5000 * MS)])
    recorded = roles((5.0, "n4", "follower", 3), (10.0, "n1", "leader", 3))
    (c,) = stepdown_checks(context(), observed, recorded, 3.0)
    assert c["ok"] is None
    assert c["observed"] == "no minority node led at the cut"
    (c,) = stepdown_checks(context(), observed, roles(), 3.0)
    assert c["ok"] is None
    assert c["observed"] == "no roles.jsonl on the minority side"


def test_the_expectation_is_on_by_default_and_can_be_turned_off() -> None:
    observed = Observed(applied=[halves(["n4", "n5"], 1000 * MS, 15_000 * MS)])
    recorded = roles((10.0, "n4", "leader", 3))
    names = [c["name"] for c in check_expectations(context(), observed, [], recorded)]
    assert "minority_leader_steps_down[partition#1]" in names
    off = context(minority_leader_steps_down_within=False)
    assert not [c for c in check_expectations(off, observed, [], recorded) if "steps" in c["name"]]
