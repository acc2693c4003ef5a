"""Scenario files: the schema of ``configs/*.toml`` and how a bad one is reported.

Theory of operation
-------------------
A scenario is one TOML file validated by pydantic models with ``extra="forbid"``, so a typo is
an error rather than a silently ignored setting. :func:`load_scenario` turns any problem into a
:class:`ScenarioError` whose message names the file and the field, e.g.
``configs/x.toml: workload.rate: Input should be greater than 0``.

Sections (every one but ``name`` and ``nodes`` has defaults)::

    name = "antarctic-split-brain"
    description = "..."
    seed = 7
    nodes = ["n1", "n2", "n3", "n4", "n5"]
    duration = 26.0                  # seconds of workload (and of the nemesis schedule)
    [groups]                         # named, disjoint sets of nodes (optional)
    north = ["n1", "n2", "n3"]
    antarctic = ["n4", "n5"]
    [timing]                         # Raft timing of every node
    tick_ms = 20.0
    election_ticks = 15
    heartbeat_ticks = 3
    [setup]
    leader_in = "antarctic"          # move the leadership into this group before the workload
    [workload]
    clients = 6                      # logical processes in all
    placement = {north = 3, antarctic = 3}   # per group: each group gets its own client source
    rate = 40.0                      # ops/s over all processes
    keys = 6
    mix = {read = 0.4, write = 0.4, cas = 0.2}
    timeout = 1.5                    # seconds per operation before it is "info"
    [[nemesis]]                      # a fault: scheduled (``at``) or recurring (``interval``)
    kind = "partition"               # kill | pause | partition | latency | transfer
    shape = "groups"                 # halves | isolate-leader | isolate-node | groups | one-way
    groups = ["north", "antarctic"]
    at = 5.0
    duration = 14.0
    [final]
    settle = 3.0                     # seconds after healing before the final reads
    reads = true
    converge_timeout = 15.0
    [expect]
    leader_elected_within_election_timeouts = 2.0
    minority_never_acknowledges = true
    majority_keeps_serving = true
    converge_after_heal = true

A ``transfer`` fault asks the leader to hand its leadership to each node of its target (not
itself) at once, as two operators might: several TimeoutNow in one term make several
candidates of one term (``target = "all"``: every follower), which a node that votes twice in
a term turns into two leaders.

Nemesis ``target`` (whom a kill, pause or transfer acts on; partitions ``isolate-node`` and
``one-way`` take a single node): ``"leader"`` (resolved when the fault starts), ``"follower"``
(a node that is not the leader when the fault starts), ``"random"`` (drawn from the seed
when the schedule is made), ``"minority"`` / ``"majority"`` (that many nodes, drawn from the
seed: 2 / 3 of 5), ``"all"``, or a node id. A killed node is restarted on its own data
directory when its fault ends; a recurring kill with a sub-second ``interval`` and
``duration`` is a *kill storm* (see ``configs/crash-storm.toml``). Client sources are
``client`` when clients are not placed, else ``client-<group>`` per placed group.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from chaos.nemesis import GROUP_TARGETS, TARGET_WORDS

FaultKind = Literal["kill", "pause", "partition", "latency", "transfer"]
Shape = Literal["halves", "isolate-leader", "isolate-node", "groups", "one-way"]
OpKind = Literal["read", "write", "cas"]


class ScenarioError(ValueError):
    """A scenario file that cannot be used; the message names the file and the field."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Timing(_Model):
    """Raft timing of every node (ticks of ``tick_ms``)."""

    tick_ms: float = Field(default=10.0, gt=0, le=1000)
    election_ticks: int = Field(default=15, ge=2)
    heartbeat_ticks: int = Field(default=3, ge=1)

    @property
    def election_timeout_s(self) -> float:
        return self.election_ticks * self.tick_ms / 1000

    @model_validator(mode="after")
    def _heartbeat_below_election(self) -> Timing:
        if self.heartbeat_ticks >= self.election_ticks:
            raise ValueError("heartbeat_ticks must be smaller than election_ticks")
        return self


class Setup(_Model):
    """What happens after the cluster has a leader, before the workload starts."""

    leader_in: str | None = None  #: a group name: transfer the leadership into it
    leader_timeout: float = Field(default=10.0, gt=0)


def _default_mix() -> dict[OpKind, float]:
    return {"read": 0.4, "write": 0.4, "cas": 0.2}


class Workload(_Model):
    """The client processes and the operations they issue."""

    clients: int = Field(default=4, ge=1, le=64)
    placement: dict[str, int] = Field(default_factory=dict)
    rate: float = Field(default=50.0, gt=0, le=5000)
    keys: int = Field(default=5, ge=1, le=1000)
    mix: dict[OpKind, float] = Field(default_factory=_default_mix)
    timeout: float = Field(default=2.0, gt=0, le=60)
    cas_own_value: float = Field(default=0.7, ge=0, le=1)  #: P(cas expects its last value)

    @model_validator(mode="after")
    def _check(self) -> Workload:
        if not any(w > 0 for w in self.mix.values()) or any(w < 0 for w in self.mix.values()):
            raise ValueError("mix needs non-negative weights, at least one positive")
        if self.placement and sum(self.placement.values()) != self.clients:
            raise ValueError(
                f"placement puts {sum(self.placement.values())} clients, clients is {self.clients}"
            )
        if any(n < 0 for n in self.placement.values()):
            raise ValueError("placement counts must be >= 0")
        return self


class Nemesis(_Model):
    """One fault: scheduled once (``at``) or recurring every ``interval`` seconds."""

    kind: FaultKind
    shape: Shape | None = None  #: partitions only (default: halves)
    groups: list[str] = Field(default_factory=list)  #: shape "groups": group names
    target: str = "random"  #: "leader", "follower", "random", "minority", "majority", "all", id
    at: float | None = Field(default=None, ge=0)
    interval: float | None = Field(default=None, gt=0)
    jitter: float = Field(default=0.0, ge=0, le=1)  #: fraction of interval, drawn per fault
    start: float = Field(default=1.0, ge=0)  #: recurring faults: first one not before this
    stop: float | None = Field(default=None, gt=0)  #: recurring: none starts after this
    duration: float = Field(default=3.0, gt=0)
    latency_ms: int = Field(default=100, ge=0)
    latency_jitter_ms: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _check(self) -> Nemesis:
        if (self.at is None) == (self.interval is None):
            raise ValueError("give exactly one of 'at' (scheduled) or 'interval' (recurring)")
        if self.kind != "partition" and (self.shape is not None or self.groups):
            raise ValueError("shape and groups apply to partitions only")
        if self.shape == "groups" and len(self.groups) < 1:
            raise ValueError("shape 'groups' needs groups = [names]")
        if self.latency_jitter_ms > self.latency_ms:
            raise ValueError("latency_jitter_ms must not exceed latency_ms")
        if self.target in GROUP_TARGETS and self.kind not in ("kill", "pause", "transfer"):
            raise ValueError(f"target {self.target!r} applies to kill, pause and transfer only")
        return self

    @property
    def partition_shape(self) -> Shape:
        return self.shape or "halves"


class Final(_Model):
    """The end of a run: heal everything, settle, read every key, wait for convergence."""

    settle: float = Field(default=2.0, ge=0)
    reads: bool = True
    converge_timeout: float = Field(default=15.0, gt=0)


class Expect(_Model):
    """Claims checked after the run, beyond linearizability and Raft's invariants."""

    leader_elected_within_election_timeouts: float | None = Field(default=None, gt=0)
    minority_never_acknowledges: bool = False
    majority_keeps_serving: bool = False
    converge_after_heal: bool = True
    min_ok_ops: int = Field(default=1, ge=0)
    #: a leader cut off on a minority side steps down within this many election timeouts of
    #: the cut (checked from the nodes' roles.jsonl, for every partition); ``false``: off
    minority_leader_steps_down_within: float | Literal[False] = 3.0

    @field_validator("minority_leader_steps_down_within", mode="before")
    @classmethod
    def _bound_or_false(cls, v: object) -> object:
        if v is False:
            return v
        if isinstance(v, bool) or not isinstance(v, int | float) or v <= 0:
            raise ValueError("give a number of election timeouts > 0, or false")
        return float(v)


class Scenario(_Model):
    """A whole chaos scenario (see the module docstring)."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    seed: int = Field(default=1, ge=0)
    nodes: list[str] = Field(min_length=1, max_length=15)
    groups: dict[str, list[str]] = Field(default_factory=dict)
    duration: float = Field(default=30.0, gt=0, le=3600)
    timing: Timing = Field(default_factory=Timing)
    setup: Setup = Field(default_factory=Setup)
    workload: Workload = Field(default_factory=Workload)
    nemesis: list[Nemesis] = Field(default_factory=list)
    final: Final = Field(default_factory=Final)
    expect: Expect = Field(default_factory=Expect)

    @model_validator(mode="after")
    def _check_references(self) -> Scenario:
        if len(set(self.nodes)) != len(self.nodes):
            raise ValueError("nodes: ids must be unique")
        seen: set[str] = set()
        for name, members in self.groups.items():
            for node in members:
                if node not in self.nodes:
                    raise ValueError(f"groups.{name}: unknown node {node!r}")
                if node in seen:
                    raise ValueError(f"groups.{name}: node {node!r} is in two groups")
                seen.add(node)
        self._check_group_names()
        return self

    def _check_group_names(self) -> None:
        for name in self.workload.placement:
            if name not in self.groups:
                raise ValueError(f"workload.placement: unknown group {name!r}")
        if self.setup.leader_in is not None and self.setup.leader_in not in self.groups:
            raise ValueError(f"setup.leader_in: unknown group {self.setup.leader_in!r}")
        for i, nem in enumerate(self.nemesis):
            for name in nem.groups:
                if name not in self.groups:
                    raise ValueError(f"nemesis.{i}.groups: unknown group {name!r}")
            if nem.target not in (*TARGET_WORDS, *self.nodes):
                words = ", ".join(repr(w) for w in TARGET_WORDS)
                raise ValueError(f"nemesis.{i}.target: not one of {words} or a node id")

    def client_sources(self) -> dict[str, int]:
        """Client source name -> number of processes on it."""
        if not self.workload.placement:
            return {"client": self.workload.clients}
        return {f"client-{g}": n for g, n in self.workload.placement.items() if n > 0}

    def source_group(self, source: str) -> str | None:
        """The group a client source stands in (``None`` for the unplaced ``client``)."""
        group = source.removeprefix("client-")
        return group if group != source and group in self.groups else None

    def with_overrides(self, *, seed: int | None = None, duration: float | None = None) -> Scenario:
        """A copy with the command line's ``--seed`` / ``--time-limit`` applied."""
        changes: dict[str, Any] = {}
        if seed is not None:
            changes["seed"] = seed
        if duration is not None:
            changes["duration"] = duration
        return self.model_copy(update=changes)


def _format_error(path: str, exc: ValidationError) -> str:
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first.get("loc", ()))
    msg = str(first.get("msg", "invalid")).removeprefix("Value error, ")
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{path}: {loc}: {msg}{more}" if loc else f"{path}: {msg}{more}"


def parse_scenario(data: dict[str, Any], path: str = "<scenario>") -> Scenario:
    """Validate a parsed TOML document; raises :class:`ScenarioError`."""
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        raise ScenarioError(_format_error(path, exc)) from None


def load_scenario(path: str | Path) -> tuple[Scenario, str]:
    """Read and validate a scenario file; returns it and its raw text."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: not valid TOML: {exc}") from None
    return parse_scenario(data, str(path)), text
