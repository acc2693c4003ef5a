"""The state of one chaos run: what it is (:class:`RunContext`) and what it saw
(:class:`Observed`), shared by the runner and the expectations (neither imports the other).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import tomli_w

from chaos.nemesis import AppliedFault, FaultOp, make_schedule
from harness.monitor import Sample
from harness.scenario import Scenario


@dataclass(slots=True)
class RunContext:
    """Everything one run writes and remembers."""

    scenario: Scenario
    run_dir: Path
    run_start_ns: int
    started_at: str
    schedule: list[FaultOp]
    process_events: list[tuple[int, str, str]] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    interrupted: bool = False

    @classmethod
    def create(cls, scenario: Scenario, store: Path) -> RunContext:
        now = datetime.now(UTC)
        run_dir = _fresh_dir(store / scenario.name, now.strftime("%Y%m%dT%H%M%SZ"))
        schedule = make_schedule(scenario, scenario.seed, scenario.duration)
        ctx = cls(scenario, run_dir, time.monotonic_ns(), now.isoformat(), schedule)
        ctx.write_config()
        return ctx

    def write_config(self) -> None:
        doc = self.scenario.model_dump(mode="json", exclude_none=True)
        (self.run_dir / "config.toml").write_text(tomli_w.dumps(doc), encoding="utf-8")

    def rel(self, monotonic_ns: int) -> int:
        return max(0, monotonic_ns - self.run_start_ns)


def _fresh_dir(parent: Path, stamp: str) -> Path:
    for n in range(1000):
        path = parent / (stamp if n == 0 else f"{stamp}-{n}")
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"cannot make a fresh run directory under {parent}")


@dataclass(slots=True)
class Observed:
    """What the run itself saw, for the expectations and results.json."""

    applied: list[AppliedFault] = field(default_factory=list)
    leader_samples: list[Sample] = field(default_factory=list)
    converged: bool | None = None
    final_status: dict[str, Sample | None] = field(default_factory=dict)
    #: for each node that did not answer the final status poll: its process's state
    silent: dict[str, str] = field(default_factory=dict)
    final_reads_ok: int = 0
    stats: dict[str, Any] = field(default_factory=dict)
    setup_leader: tuple[str, int] | None = None
    heal_ns: int = 0
    #: node -> "ok" (nodes/<id>/metrics.prom written) or why not
    metrics: dict[str, str] = field(default_factory=dict)
    #: the system under test and its capabilities (``harness.system.capabilities``)
    system: str = "orbital"
    capabilities: set[str] = field(default_factory=set)
    #: node -> (monotonic ns, role, term) at each change its status polls showed
    role_changes: dict[str, list[tuple[int, str, int]]] = field(default_factory=dict)
    #: where the role record came from: the nodes' roles.jsonl, or the status polls
    roles_from: str = "roles.jsonl"
    #: expectation name -> why it could not be judged in this run
    not_applicable: dict[str, str] = field(default_factory=dict)
    #: node -> [(pid, exit code)] of its processes that ended on their own
    died: dict[str, list[tuple[int, int | None]]] = field(default_factory=dict)
