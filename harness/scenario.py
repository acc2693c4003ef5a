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
    [system]                         # the system under test (default: orbital)
    kind = "orbital"                 # orbital | etcd | "package.module:Class" (your adapter,
                                     # docs/testing-your-system.md)
    options = {}                     # keyword arguments of the system's class
    [groups]                         # named, disjoint sets of nodes (optional)
    north = ["n1", "n2", "n3"]
    antarctic = ["n4", "n5"]
    [timing]                         # Raft timing of every node
    tick_ms = 20.0
    election_ticks = 15
    heartbeat_ticks = 3
    snapshot_entries = 10000         # compact after this many applied entries
    snapshot_chunk_bytes = 1048576   # InstallSnapshot chunk size
    lease_read = false               # reads on a leader lease (lease_drift = 0.1)
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
    kind = "partition"               # kill | pause | partition | latency | transfer | disk |
                                     # clock | membership
    shape = "groups"                 # halves | isolate-leader | isolate-node | groups | one-way |
                                     # ring | bridge | majorities-ring
    groups = ["north", "antarctic"]
    at = 5.0
    duration = 14.0
    [[nemesis]]
    kind = "disk"                    # on the FUSE disk (docs/disk-faults.md)
    disk = "corrupt"                 # lose-unsynced | torn-write | corrupt | io-error |
                                     # disk-full | slow-fsync (fsync_ms = 200)
    corrupt = "last-record"          # middle-record | last-record | hardstate | snapshot
    target = "random"
    at = 9.0
    [[nemesis]]
    kind = "clock"                   # libfaketime, per node process
    clock = "strobe"                 # skew (rate = 2.0) | jump (jump_s = 5.0) |
    strobe_s = 2.0                   # strobe (strobe_s every strobe_period_s)
    strobe_period_s = 0.5
    interval = 6.0
    [[nemesis]]
    kind = "membership"              # add (a spare) | remove (the target) | replace
    membership = "replace"
    at = 12.0
    spares = ["n6"]                  # (a top-level key) nodes outside the configuration
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
A ``membership = "remove"`` fault with a group target (``"minority"``, ``"majority"``,
``"all"``) asks the leader to remove each of those nodes at once, as several operators might:
the leader takes one change at a time and refuses the others while it is uncommitted (what
``one_config_change_at_a_time`` checks from its log); the nodes it removed are stopped.

Nemesis ``target`` (whom a kill, pause or transfer acts on; partitions ``isolate-node`` and
``one-way`` take a single node): ``"leader"`` (resolved when the fault starts), ``"follower"``
(a node that is not the leader when the fault starts), ``"random"`` (drawn from the seed
when the schedule is made), ``"minority"`` / ``"majority"`` (that many nodes, drawn from the
seed: 2 / 3 of 5), ``"all"``, or a node id. A killed node is restarted on its own data
directory when its fault ends; a recurring kill with a sub-second ``interval`` and
``duration`` is a *kill storm* (see ``configs/crash-storm.toml``). Client sources are
``client`` when clients are not placed, else ``client-<group>`` per placed group.

Bundled scenarios: the repository's ``configs/*.toml`` ship in the wheel as the package data
of ``harness.scenarios`` (pyproject.toml maps that package onto ``configs/``). They are named
by file stem (:func:`bundled_scenarios`): ``orbital chaos run antarctic-split-brain`` works
from any directory, in a source checkout or an installed wheel (:func:`resolve_scenario`).
"""

from __future__ import annotations

import re
import tomllib
from importlib import resources
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

FaultKind = Literal[
    "kill", "pause", "partition", "latency", "transfer", "disk", "clock", "membership"
]  # fmt: skip
Shape = Literal[
    "halves", "isolate-leader", "isolate-node", "groups", "one-way",
    "ring", "bridge", "majorities-ring",
]  # fmt: skip
DiskFault = Literal["lose-unsynced", "torn-write", "corrupt", "io-error", "disk-full", "slow-fsync"]
CorruptTarget = Literal["middle-record", "last-record", "hardstate", "snapshot"]
ClockFault = Literal["skew", "jump", "strobe"]
MembershipChange = Literal["add", "remove", "replace"]
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
    #: compact after this many applied entries (0: never); small values make real runs
    #: snapshot, and lagging or new nodes receive InstallSnapshot
    snapshot_entries: int = Field(default=10_000, ge=0)
    snapshot_chunk_bytes: int = Field(default=1 << 20, ge=64)  #: InstallSnapshot chunk size
    lease_read: bool = False  #: reads on a leader lease (see the README)
    lease_drift: float = Field(default=0.1, ge=0, lt=1)

    def raft_knobs(self) -> dict[str, Any]:
        """The settings that go to every node's cluster file (beyond the timing)."""
        return {
            "snapshot_entries": self.snapshot_entries,
            "snapshot_chunk_bytes": self.snapshot_chunk_bytes,
            "lease_read": self.lease_read,
            "lease_drift": self.lease_drift,
        }

    @property
    def election_timeout_s(self) -> float:
        return self.election_ticks * self.tick_ms / 1000

    @model_validator(mode="after")
    def _heartbeat_below_election(self) -> Timing:
        if self.heartbeat_ticks >= self.election_ticks:
            raise ValueError("heartbeat_ticks must be smaller than election_ticks")
        return self


#: a built-in system's name, or ``module:Class`` of an adapter (``harness.system.load_system``)
SYSTEM_KIND = r"^(orbital|etcd|[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*)$"


class SystemSpec(_Model):
    """The system under test: a built-in (``orbital``, ``etcd``) or ``module:Class``."""

    kind: str = "orbital"
    #: keyword arguments of the system's class (etcd: ``election_ms``, ``heartbeat_ms``, ...)
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("kind")
    @classmethod
    def _kind(cls, kind: str) -> str:
        if not re.match(SYSTEM_KIND, kind):
            raise ValueError(f"{kind!r} is not orbital, etcd or package.module:Class")
        return kind


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
    #: kind "disk" (docs/disk-faults.md): which fault, on ``target``
    disk: DiskFault | None = None
    corrupt: CorruptTarget = "last-record"
    fsync_ms: int = Field(default=200, ge=1, le=60_000)
    #: kind "clock" (libfaketime): skew (``rate``), jump (``jump_s``), strobe (``strobe_s``
    #: every ``strobe_period_s``), on ``target``, undone at the fault's end
    clock: ClockFault | None = None
    rate: float = Field(default=2.0, ge=0.01, le=100)
    jump_s: float = 5.0
    strobe_s: float = 2.0
    strobe_period_s: float = Field(default=0.5, gt=0)
    #: kind "membership": add a spare node (learner, caught up, promoted), remove ``target``
    #: (the leader too), or replace ``target`` by a spare
    membership: MembershipChange | None = None

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
        grouped = self.kind in ("kill", "pause", "transfer") or (
            self.kind == "membership" and self.membership == "remove"
        )
        if self.target in GROUP_TARGETS and not grouped:
            raise ValueError(
                f"target {self.target!r} applies to kill, pause, transfer and membership "
                "remove only"
            )
        for kind in ("disk", "clock", "membership"):
            if (self.kind == kind) != (getattr(self, kind) is not None):
                raise ValueError(f"kind {kind!r} and the field {kind!r} go together")
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
    disk_faults_handled: bool = True  #: corrupt data refused; EIO/ENOSPC stop the node
    #: no node process ends on its own during the run (a crash, an assertion, a failed
    #: restart); nodes a disk fault is expected to stop are judged by ``disk_faults_handled``
    no_node_dies: bool = True
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
    system: SystemSpec = Field(default_factory=SystemSpec)
    timing: Timing = Field(default_factory=Timing)
    setup: Setup = Field(default_factory=Setup)
    workload: Workload = Field(default_factory=Workload)
    nemesis: list[Nemesis] = Field(default_factory=list)
    #: nodes started outside the configuration, for membership faults to add
    spares: list[str] = Field(default_factory=list, max_length=15)
    final: Final = Field(default_factory=Final)
    expect: Expect = Field(default_factory=Expect)
    #: where the nodes run: ``local`` (this machine) or ``ssh`` (the hosts of ``inventory``,
    #: docs/multi-host.md)
    placement: Literal["local", "ssh"] = "local"
    inventory: str | None = None  #: the inventory file of ``placement = "ssh"``

    @model_validator(mode="after")
    def _check_references(self) -> Scenario:
        if len(set(self.nodes) | set(self.spares)) != len(self.nodes) + len(self.spares):
            raise ValueError("nodes and spares: ids must be unique")
        adds = sum(n.membership in ("add", "replace") for n in self.nemesis)
        if adds and not self.spares:
            raise ValueError("spares: membership add or replace needs spare nodes")
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

    def with_overrides(
        self,
        *,
        seed: int | None = None,
        duration: float | None = None,
        system: str | None = None,
        placement: str | None = None,
        inventory: str | None = None,
    ) -> Scenario:
        """A copy with the command line's ``--seed`` / ``--time-limit`` / ``--system``
        applied, validated like the file (raises :class:`ScenarioError` naming the option).
        ``--system`` replaces the kind and drops the file's system options."""
        changes: dict[str, Any] = {}
        if seed is not None:
            changes["seed"] = seed
        if duration is not None:
            changes["duration"] = duration
        if system is not None:
            changes["system"] = {"kind": system}
        if placement is not None:
            changes["placement"] = placement
        if inventory is not None:
            changes["inventory"] = inventory
        if not changes:
            return self
        try:
            return Scenario.model_validate({**self.model_dump(), **changes})
        except ValidationError as exc:
            option = {"seed": "--seed", "duration": "--time-limit", "system": "--system",
                      "placement": "--placement", "inventory": "--inventory"}  # fmt: skip
            first = exc.errors()[0]
            loc = str(first.get("loc", ("",))[0])
            msg = str(first.get("msg", "invalid")).removeprefix("Value error, ")
            raise ScenarioError(f"{option.get(loc, loc)}: {msg}") from None


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
    except UnicodeDecodeError as exc:
        raise ScenarioError(
            f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start})"
        ) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: not valid TOML: {exc}") from None
    return parse_scenario(data, str(path)), text


SOURCE_CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def bundled_scenarios() -> dict[str, Path]:
    """Scenario name (file stem) -> file, from the installed package data, else from the
    source tree's ``configs/`` (an editable install)."""
    found: dict[str, Path] = {}
    try:
        root = resources.files("harness.scenarios")
        for item in root.iterdir():
            if item.name.endswith(".toml"):
                found[item.name.removesuffix(".toml")] = Path(str(item))
    except ModuleNotFoundError:
        pass
    if not found and SOURCE_CONFIGS.is_dir():
        found = {p.stem: p for p in SOURCE_CONFIGS.glob("*.toml")}
    return dict(sorted(found.items()))


def resolve_scenario(arg: str | Path) -> Path:
    """A scenario file's path: ``arg`` itself if it names a file, else the bundled scenario
    of that name. Raises :class:`ScenarioError` naming the choices."""
    path = Path(arg)
    if path.is_file() or path.suffix == ".toml" or len(path.parts) > 1:
        return path  # a path (a missing one is reported by load_scenario)
    bundled = bundled_scenarios()
    if str(arg) in bundled:
        return bundled[str(arg)]
    names = ", ".join(bundled) or "none installed"
    raise ScenarioError(f"{arg}: no such file or bundled scenario (bundled: {names})")
