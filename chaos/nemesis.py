"""The nemesis: a pure, seeded fault schedule, and an executor that applies it to a cluster.

Theory of operation
-------------------
As in Jepsen, the generator is pure and the side effects live elsewhere.
:func:`make_schedule` turns a scenario's ``[[nemesis]]`` entries, a seed and a duration into a
list of :class:`FaultOp` (``start``/``stop`` pairs sharing an ``id``), sorted by time. The same
inputs give the same list, byte for byte (:func:`schedule_json`): every random choice (jitter,
the node of ``target = "random"``, the nodes of ``"minority"`` and ``"majority"``, the order in
which ``"follower"`` picks, the sides of ``halves``, the fallback of ``"leader"``) is drawn from
a ``random.Random`` seeded with the seed and the entry's position, never from global state.
Faults never overlap: an occurrence that would overlap one already accepted is dropped
(scheduled ``at`` entries are placed first), so a heal always ends exactly one fault, and every
stop lies within the duration.

:class:`NemesisExecutor` follows a schedule in real time against a cluster of any system (a
:class:`ClusterLike`, i.e. ``harness.local.Cluster``; ``chaos`` never imports ``harness``).
A ``"leader"`` target is resolved when its fault starts (``cluster.leader()``; the drawn
fallback if there is none, and always for a system that cannot tell who leads), so is
``"follower"`` (the first node of the drawn order
that is not the leader), and the stop acts on the nodes the start chose: a kill's stop
restarts each killed node on its own data directory, a pause's resumes it. A target that is
down or paused when its fault starts is left out; one still starting up (or recovering its
storage) is killed like any other: any node, any time. A ``transfer`` asks the leader to
transfer to each of its targets at once (the system's leader transfer; skipped, saying so,
for a system without one); a membership ``remove`` with a group target asks for the removal
of each of them at once (the system's membership changes). Blocking cluster calls
(Toxiproxy's REST API, waiting for a SIGKILLed process) run in a worker thread so the
clients' event loop keeps going; such a call runs to its end even when the nemesis is
cancelled, and :meth:`NemesisExecutor.settle` waits for the ones still going (a heal that ran
beside a restart still under way would start a node twice on one data directory). Every fault
is reported to ``faults.jsonl`` through the cluster's ``on_fault`` (one-way cuts, which the
cluster reports as ``cut``, are reported here as ``partition`` so that the heal closes them).
:meth:`heal_all` is the final generator: heal the network, reset clocks, clear disk faults,
resume paused nodes, restart dead ones (not the *retired*: removed members and nodes refusing
a corrupted disk); it runs at the end whatever happened, including after a cancellation.
Disk, clock and membership
faults, and the link-shaped partitions (ring, bridge, majorities-ring, drawn here from the
seed by :mod:`chaos.shapes`), are applied by :mod:`chaos.node_faults`.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol, TypeVar

from chaos import node_faults
from chaos.diskfs import DiskFSError
from chaos.node_faults import FaultCluster
from chaos.shapes import cut_links

_T = TypeVar("_T")
#: how long :meth:`NemesisExecutor.settle` waits for fault calls still running
SETTLE_TIMEOUT_S = 60.0

Action = Literal["start", "stop"]
#: targets that name a set of nodes (kills, pauses and transfers)
GROUP_TARGETS = ("minority", "majority", "all")
#: every target word besides a node id
TARGET_WORDS = ("leader", "follower", "random", *GROUP_TARGETS)


# ---- what the nemesis needs of a scenario and a cluster (``chaos`` never imports ``harness``:
# ``harness.scenario.Scenario`` and ``harness.local.Cluster`` are these) ----------------------
class NemesisSpec(Protocol):
    """One ``[[nemesis]]`` entry (``harness.scenario.Nemesis``)."""

    @property
    def kind(self) -> str: ...
    @property
    def groups(self) -> list[str]: ...
    @property
    def target(self) -> str: ...
    @property
    def at(self) -> float | None: ...
    @property
    def interval(self) -> float | None: ...
    @property
    def jitter(self) -> float: ...
    @property
    def start(self) -> float: ...
    @property
    def stop(self) -> float | None: ...
    @property
    def duration(self) -> float: ...
    @property
    def latency_ms(self) -> int: ...
    @property
    def latency_jitter_ms(self) -> int: ...
    @property
    def partition_shape(self) -> str: ...
    # disk, clock and membership faults (see harness.scenario.Nemesis)
    @property
    def disk(self) -> Any: ...
    @property
    def corrupt(self) -> Any: ...
    @property
    def fsync_ms(self) -> Any: ...
    @property
    def clock(self) -> Any: ...
    @property
    def rate(self) -> Any: ...
    @property
    def jump_s(self) -> Any: ...
    @property
    def strobe_s(self) -> Any: ...
    @property
    def strobe_period_s(self) -> Any: ...
    @property
    def membership(self) -> Any: ...


class ScenarioSpec(Protocol):
    """What a schedule is made from (``harness.scenario.Scenario``)."""

    @property
    def nodes(self) -> list[str]: ...
    @property
    def groups(self) -> dict[str, list[str]]: ...
    @property
    def nemesis(self) -> Sequence[NemesisSpec]: ...


class _Spec(Protocol):
    @property
    def nodes(self) -> tuple[str, ...]: ...


class ClusterLike(FaultCluster, Protocol):
    """The cluster the executor acts on (``harness.local.Cluster``, any system): what the node
    faults need (:class:`chaos.node_faults.FaultCluster`), and process and network faults."""

    @property
    def spec(self) -> _Spec: ...
    async def leader(self) -> tuple[str, int] | None: ...
    async def transfer_leader(self, leader: str, target: str) -> None: ...
    def paused(self, node: str) -> bool: ...
    def pause(self, node: str) -> None: ...
    def resume(self, node: str) -> None: ...
    def partition(self, groups: Any, clients: Any = None) -> None: ...
    def heal(self) -> None: ...
    def latency(self, ms: int, jitter_ms: int = 0, links: Any = None) -> None: ...


@dataclass(frozen=True, slots=True)
class FaultOp:
    """One timed step of a schedule; ``params`` holds what was drawn when it was made."""

    at: float  #: seconds after the workload starts
    action: Action
    kind: str  #: kill, pause, partition, latency
    id: int  #: shared by a fault's start and stop
    params: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# ---- the pure generator ------------------------------------------------------------------------
def _occurrences(entry: NemesisSpec, rng: random.Random, duration: float) -> list[float]:
    """Start times of an entry's faults within ``duration``."""
    if entry.at is not None:
        return [entry.at]
    assert entry.interval is not None
    stop = min(entry.stop if entry.stop is not None else duration, duration)
    times: list[float] = []
    t = entry.start
    while True:
        t_at = t + entry.interval * entry.jitter * rng.random()
        if t_at > stop:
            return times
        times.append(round(t_at, 6))
        t += entry.interval


def _draw_params(entry: NemesisSpec, scenario: ScenarioSpec, rng: random.Random) -> dict[str, Any]:
    """What a fault acts on, drawn now (pure), resolved further at run time for "leader"."""
    nodes = list(scenario.nodes)
    p: dict[str, Any] = {"target": entry.target, "fallback": rng.choice(nodes)}
    if entry.target not in TARGET_WORDS:  # a node id
        p["fallback"] = entry.target
    if entry.kind == "partition":
        p["shape"] = entry.partition_shape
        if p["shape"] == "halves":
            shuffled = rng.sample(nodes, len(nodes))
            p["groups"] = [sorted(shuffled[: len(nodes) // 2]), sorted(shuffled[len(nodes) // 2 :])]
        elif p["shape"] == "groups":
            p["groups"] = [sorted(scenario.groups[g]) for g in entry.groups]
            p["group_names"] = list(entry.groups)
        elif p["shape"] == "isolate-leader":
            p["target"] = "leader"
        elif p["shape"] in ("ring", "bridge", "majorities-ring"):
            p["links"] = [list(link) for link in cut_links(p["shape"], nodes, rng)]
    if entry.kind == "latency":
        p["ms"], p["jitter_ms"] = entry.latency_ms, entry.latency_jitter_ms
    if entry.kind == "disk":
        p.update(disk=entry.disk, corrupt=entry.corrupt, fsync_ms=entry.fsync_ms)
        p["seed"] = rng.randrange(2**31)  # where a corruption lands
    if entry.kind == "clock":
        p.update(clock=entry.clock, rate=entry.rate, jump_s=entry.jump_s)
        p.update(strobe_s=entry.strobe_s, strobe_period_s=entry.strobe_period_s)
        p["duration"] = entry.duration
    if entry.kind == "membership":
        p["membership"] = entry.membership
        p["seed"] = rng.randrange(2**31)  # a random target that is gone is drawn again
    # drawn last, and only for these targets, so the older targets' schedules stay as they were
    if entry.target == "follower":
        p["order"] = rng.sample(nodes, len(nodes))
    elif entry.target in GROUP_TARGETS:
        size = {"minority": (len(nodes) - 1) // 2, "majority": len(nodes) // 2 + 1}
        count = size.get(entry.target, len(nodes))
        p["nodes"] = sorted(rng.sample(nodes, count))
    return p


def _overlaps(a: tuple[float, float], taken: Sequence[tuple[float, float]]) -> bool:
    return any(a[0] < b[1] and b[0] < a[1] for b in taken)


def make_schedule(scenario: ScenarioSpec, seed: int, duration: float) -> list[FaultOp]:
    """The fault schedule of ``scenario`` for ``seed`` and ``duration`` (pure)."""
    candidates: list[tuple[int, float, float, NemesisSpec, dict[str, Any]]] = []
    for number, entry in enumerate(scenario.nemesis):
        rng = random.Random(f"orbital-nemesis:{seed}:{number}")
        for start in _occurrences(entry, rng, duration):
            stop = min(start + entry.duration, duration)
            if stop > start:
                priority = 0 if entry.at is not None else 1
                candidates.append(
                    (priority, start, stop, entry, _draw_params(entry, scenario, rng))
                )
    candidates.sort(key=lambda c: (c[0], c[1]))
    taken: list[tuple[float, float]] = []
    accepted = []
    for _, start, stop, entry, params in candidates:
        if not _overlaps((start, stop), taken):
            taken.append((start, stop))
            accepted.append((start, stop, entry, params))
    accepted.sort(key=lambda c: c[0])
    ops: list[FaultOp] = []
    for fid, (start, stop, entry, params) in enumerate(accepted):
        ops.append(FaultOp(start, "start", entry.kind, fid, params))
        ops.append(FaultOp(round(stop, 6), "stop", entry.kind, fid, {}))
    ops.sort(key=lambda op: (op.at, op.action == "start", op.id))
    return ops


def schedule_json(ops: Sequence[FaultOp]) -> str:
    """A canonical JSON form of a schedule (equal schedules give equal strings)."""
    return json.dumps([op.to_json() for op in ops], sort_keys=True, separators=(",", ":"))


# ---- the executor --------------------------------------------------------------------------------
@dataclass(slots=True)
class AppliedFault:
    """A fault as it actually happened: resolved target, sides, and monotonic times."""

    id: int
    kind: str
    params: dict[str, Any]
    node: str | None = None  #: the node acted on (kill, pause, isolate), if there is one
    nodes: list[str] = field(default_factory=list)  #: every node a kill or pause acted on
    groups: list[list[str]] = field(default_factory=list)  #: partition sides as applied
    leader_before: tuple[str, int] | None = None
    started_ns: int = 0  #: monotonic, just before the fault was applied
    applied_ns: int = 0  #: monotonic, once it was fully in place (0: never, e.g. still going)
    stopped_ns: int | None = None  #: monotonic, just before the fault began to be undone
    skipped: str | None = None

    def to_json(self, run_start_ns: int) -> dict[str, Any]:
        def rel(t: int | None) -> int | None:
            return None if t is None else t - run_start_ns

        return {
            "id": self.id,
            "kind": self.kind,
            "params": self.params,
            "node": self.node,
            "nodes": self.nodes,
            "groups": self.groups,
            "leader_before": None if self.leader_before is None else list(self.leader_before),
            "start": rel(self.started_ns),
            "applied": rel(self.applied_ns or None),
            "stop": rel(self.stopped_ns),
            "skipped": self.skipped,
        }


class NemesisExecutor:
    """Applies a schedule to a cluster at its times; :meth:`heal_all` ends every fault."""

    def __init__(
        self,
        cluster: ClusterLike,
        schedule: Sequence[FaultOp],
        *,
        on_fault: Callable[[str, str, dict[str, Any]], None] | None = None,
        client_groups: dict[str, str | None] | None = None,
        spares: Sequence[str] = (),
    ) -> None:
        self.cluster = cluster
        self.schedule = list(schedule)
        self.applied: dict[int, AppliedFault] = {}
        self.active: dict[int, AppliedFault] = {}
        self._on_fault = on_fault
        self._client_groups = client_groups or {}
        self._spares = list(spares)
        #: blocking calls still running in a worker thread (see :meth:`settle`)
        self._jobs: set[asyncio.Task[Any]] = set()

    async def _thread(self, fn: Callable[..., _T], *args: Any) -> _T:
        """``fn(*args)`` in a worker thread, run to its end even if the caller is cancelled."""
        job = asyncio.ensure_future(asyncio.to_thread(fn, *args))
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)
        return await asyncio.shield(job)

    async def settle(self, timeout: float = SETTLE_TIMEOUT_S) -> bool:
        """Wait for the blocking calls still running (their callers were cancelled): call it
        before :meth:`heal_all`, so that the heal never races a kill or a restart. False if
        some were still running after ``timeout`` s (every such call has its own bound, far
        below it; the heal then goes on rather than hang the run's end)."""
        deadline = time.monotonic() + timeout
        while self._jobs:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            await asyncio.wait(list(self._jobs), timeout=left)
        return True

    def describe_active(self) -> str:
        """A short text of the faults in force, for the progress display."""
        return ", ".join(_describe(f) for f in self.active.values()) or "-"

    async def run(self, t0: float) -> None:
        """Follow the schedule; ``t0`` is the ``time.monotonic()`` of the workload's start."""
        for op in self.schedule:
            delay = t0 + op.at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if op.action == "start":
                await self._start(op)
            else:
                await self._stop(op)

    async def _start(self, op: FaultOp) -> None:
        fault = AppliedFault(op.id, op.kind, dict(op.params))
        fault.leader_before = await self.cluster.leader()
        fault.started_ns = time.monotonic_ns()
        self.applied[op.id] = fault
        try:
            await self._apply_start(fault)
        except Exception as exc:  # a fault that cannot be applied is noted, not fatal
            fault.skipped = f"{type(exc).__name__}: {exc}"
            return
        fault.applied_ns = time.monotonic_ns()
        if fault.skipped is None:
            self.active[op.id] = fault

    async def _apply_start(self, f: AppliedFault) -> None:
        if f.kind in ("kill", "pause"):
            await self._process_fault(f, self._resolve_targets(f))
            return
        if f.kind == "transfer":
            await self._transfer(f, self._resolve_targets(f))
            return
        if f.kind == "membership" and f.params.get("target") in GROUP_TARGETS:
            await self._removals(f, [str(n) for n in f.params["nodes"]])
            return
        target = self._resolve_target(f)
        if f.kind == "latency":
            await self._thread(self.cluster.latency, f.params["ms"], f.params["jitter_ms"])
        elif f.kind in ("disk", "clock", "membership"):
            await self._node_fault(f, target)
        else:
            await self._partition(f, target)

    async def _process_fault(self, f: AppliedFault, targets: list[str]) -> None:
        """SIGKILL or SIGSTOP every target that is running; skipped if none is."""
        running = [n for n in targets if self.cluster.alive(n) and not self.cluster.paused(n)]
        f.nodes = running
        f.node = running[0] if len(running) == 1 else None
        if not running:
            f.skipped = f"{', '.join(targets)}: not running"
            return
        call = self.cluster.kill if f.kind == "kill" else self.cluster.pause
        for node in running:
            await self._thread(call, node)

    async def _transfer(self, f: AppliedFault, targets: list[str]) -> None:
        """Ask the leader, on its direct client port, to transfer to every target at once."""
        if f.leader_before is None:
            f.skipped = "no leader to transfer from"
            return
        leader = f.leader_before[0]
        f.nodes = [n for n in targets if n != leader]
        if not f.nodes:
            f.skipped = f"the only target is the leader {leader}"
            return
        found = await asyncio.gather(
            *(self.cluster.transfer_leader(leader, n) for n in f.nodes), return_exceptions=True
        )
        failed = [f"{n}: {r}" for n, r in zip(f.nodes, found, strict=True) if r is not None]
        if len(failed) == len(f.nodes):
            f.skipped = "; ".join(failed)
            return
        if self._on_fault is not None:
            self._on_fault("transfer", "start", {"leader": leader, "to": f.nodes})

    async def _removals(self, f: AppliedFault, targets: list[str]) -> None:
        """Ask for the removal of every target at once (each its own request, as several
        operators might); stop the nodes removed. A Raft leader takes one change at a time:
        the others are refused while it is uncommitted."""
        if f.leader_before is None:
            f.skipped = "no leader to ask"
            return
        f.nodes = [
            n for n in targets if n in self.cluster.members and n not in self.cluster.retired
        ]
        found = await asyncio.gather(
            *(self.cluster.remove_member(n) for n in f.nodes), return_exceptions=True
        )
        # (a retry whose first answer was lost, refused as already done, comes back done)
        done = [isinstance(r, dict) for r in found]
        removed = [n for n, ok in zip(f.nodes, done, strict=True) if ok]
        refused = {n: str(r) for n, r, ok in zip(f.nodes, found, done, strict=True) if not ok}
        if not removed:
            f.skipped = "; ".join(f"{n}: {r}" for n, r in refused.items()) or "no target"
            return
        for node in removed:
            self.cluster.retired.add(node)
        alive = [n for n in removed if self.cluster.alive(n)]
        await asyncio.gather(*(self._thread(self.cluster.stop_node, n) for n in alive))
        detail = {"membership": "remove", "removed": removed, "refused": refused}
        f.params["applied"] = detail
        self._report("membership", "start", detail)

    def _resolve_targets(self, f: AppliedFault) -> list[str]:
        """The nodes a kill or pause acts on (see the module docstring)."""
        target = str(f.params.get("target", "random"))
        if target in GROUP_TARGETS:
            return list(f.params["nodes"])
        if target == "follower":
            leader = None if f.leader_before is None else f.leader_before[0]
            order = [str(n) for n in f.params["order"]]
            return [next((n for n in order if n != leader), order[0])]
        return [self._resolve_target(f)]

    async def _node_fault(self, f: AppliedFault, target: str) -> None:
        """Disk, clock and membership faults (:mod:`chaos.node_faults`)."""
        if (
            f.kind == "membership"
            and f.params.get("target") == "random"
            and target not in self.cluster.members
        ):  # removed or replaced before: draw among the members of now
            target = random.Random(f.params["seed"]).choice(sorted(self.cluster.members))
        f.node = target
        if target in self.cluster.retired:
            f.skipped = f"{target} is out of the cluster"
            return
        if f.kind == "disk":
            detail = await self._thread(node_faults.start_disk, self.cluster, f.params, target)
        elif f.kind == "clock":
            detail = node_faults.start_clock(self.cluster, f.params, target)
        else:
            detail = await self._thread(
                node_faults.start_membership, self.cluster, f.params, target, self._spares
            )
        f.params["applied"] = detail
        self._report(f.kind, "start", detail)

    def _report(self, kind: str, action: str, detail: dict[str, Any]) -> None:
        if self._on_fault is not None:
            self._on_fault(kind, action, detail)

    def _resolve_target(self, f: AppliedFault) -> str:
        target = str(f.params.get("target", "random"))
        if target == "leader":
            found = f.leader_before
            return found[0] if found is not None else str(f.params["fallback"])
        if target == "follower":
            return self._resolve_targets(f)[0]
        return str(f.params["fallback"]) if target == "random" else target

    async def _partition(self, f: AppliedFault, target: str) -> None:
        shape = f.params["shape"]
        if "links" in f.params:  # ring, bridge, majorities-ring: cut links, not groups
            await self._thread(node_faults.start_links, self.cluster, f.params["links"])
            self._report("partition", "start", {"shape": shape, "links": f.params["links"]})
            return
        if shape == "one-way":
            f.node = target
            await self._thread(self._one_way, target)
            return
        if shape in ("isolate-leader", "isolate-node"):
            f.node = target
            groups = [[target], sorted(n for n in self.cluster.spec.nodes if n != target)]
        else:
            groups = [list(g) for g in f.params["groups"]]
        f.groups = groups
        clients = self._place_clients(f.params.get("group_names", []))
        await self._thread(self.cluster.partition, groups, clients)

    def _place_clients(self, group_names: Sequence[str]) -> dict[str, int]:
        """Client sources standing in a named group go to that group's side."""
        return {
            source: group_names.index(group)
            for source, group in self._client_groups.items()
            if group is not None and group in group_names
        }

    def _one_way(self, src: str) -> None:
        """``src`` can no longer send to any other node (it still hears them)."""
        net = self.cluster.network
        if net is None:
            raise RuntimeError("one-way cuts need Toxiproxy")
        others = [n for n in self.cluster.spec.nodes if n != src]
        for dst in others:
            net.cut(src, dst)
        if self._on_fault is not None:
            self._on_fault("partition", "start", {"one_way": src, "to": others})

    async def _stop(self, op: FaultOp) -> None:
        fault = self.active.pop(op.id, None)
        if fault is None:
            return
        # the heal begins now: healing link by link takes a while, and what the nodes do
        # meanwhile (a cut-off leader learning a newer term) is no longer the fault's
        fault.stopped_ns = time.monotonic_ns()
        await self._thread(self._undo, fault)

    def _undo(self, f: AppliedFault) -> None:
        if f.kind in ("kill", "pause"):
            for node in f.nodes:
                if f.kind == "kill" and not self.cluster.alive(node):
                    self.cluster.restart(node)  # on its own data directory
                elif f.kind == "pause" and self.cluster.paused(node):
                    self.cluster.resume(node)
        elif f.kind in ("partition", "latency") and self.cluster.network is not None:
            self.cluster.heal()
        elif f.kind == "transfer" and self._on_fault is not None:
            self._on_fault("transfer", "stop", {"to": f.nodes})
        elif f.kind == "disk" and f.node is not None:
            node_faults.stop_disk(self.cluster, f.params, f.node)
            self._report("disk", "stop", {"node": f.node, "disk": f.params["disk"]})
        elif f.kind == "clock" and f.node is not None:
            node_faults.stop_clock(self.cluster, f.node)
            self._report("clock", "stop", {"node": f.node})

    def heal_all(self) -> None:
        """The final generator: heal the network, resume paused nodes, restart dead ones."""
        now = time.monotonic_ns()
        for fault in self.active.values():
            fault.stopped_ns = now
        self.active.clear()
        if self.cluster.network is not None:
            self.cluster.heal()
        for clock in self.cluster.clocks.values():
            clock.reset()
        for disk in self.cluster.disks.values():
            try:
                disk.call("clear")
            except DiskFSError as exc:  # noted, the heal goes on
                self._report("disk", "stop", {"clear_failed": str(exc)})
        for node in self.cluster.members:
            if self.cluster.paused(node):
                self.cluster.resume(node)
            elif not self.cluster.alive(node):
                self.cluster.restart(node)


def _describe(f: AppliedFault) -> str:
    if f.kind == "partition" and "links" in f.params:
        return f"partition {f.params['shape']}"
    if f.kind == "partition":
        sides = " | ".join(",".join(g) for g in f.groups) if f.groups else f"{f.node} one-way"
        return f"partition {sides}"
    if f.kind == "latency":
        return f"latency {f.params.get('ms')}ms"
    if f.kind == "transfer":
        return f"transfer to {','.join(f.nodes)}"
    what = f.params.get("disk") or f.params.get("clock") or f.params.get("membership")
    if what:
        return f"{f.kind} {what} {f.node}"
    return f"{f.kind} {','.join(f.nodes) or f.node}"
