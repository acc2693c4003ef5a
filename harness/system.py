"""What a system under test provides: Jepsen's DB and Client protocols, in our terms.

Theory of operation
-------------------
A chaos run does not know which system it tests. It runs every node of a :class:`System` as
its own process, on this machine or on a host over SSH (:class:`harness.local.Cluster` picks
the ports, the directories, the Toxiproxy proxies and starts, kills, pauses and restarts the
processes, wherever its :mod:`harness.placement` says), drives the workload
through a :class:`Client` per logical process, and judges the history it recorded. A system
is two small classes:

- :class:`System` says how to run one node: the ports it listens on, how peers reach each
  other (:attr:`System.peer_addressing`), the command that starts it, and how to tell it is
  up. It writes its configuration in :meth:`System.prepare`.
- :class:`Client` performs one operation (``read``, ``write`` or ``cas`` on a key) and says
  what happened: a :class:`Completion` of type ``ok`` (it took effect), ``fail`` (it
  certainly did not; a cas whose expected value did not match is ``fail`` with ``error =
  "mismatch"``) or ``info`` (unknown: it may take effect later, or never). The workload
  records the invoke and the completion in ``history.jsonl`` (../shared/HISTORY.md's format
  is in the README) the same way for every system; an exception out of ``invoke`` is ``info``.

Optional capabilities are further methods; the run uses each only where the system has it
(:func:`capabilities`), and an expectation that needs a missing one is reported "not
applicable", never "met":

- :class:`Leadership` — "who leads now": each node's own :class:`NodeStatus`. Used for
  faults aimed at the leader, election timing, leader placement and convergence.
- :class:`LeaderTransfer` — move the leadership to a chosen node (``setup.leader_in``).
- :class:`Membership` — add a spare node, remove a member (membership faults).
- :class:`StorageReplay` — read every node's data directory after the run and check the
  protocol's invariants across them (Orbital replays its WAL).
- :class:`RecordChecks` — judge the protocol's own rules from what the nodes recorded
  (Orbital: roles, votes, commit decisions, exactly-once), results.json's ``raft``.
- :class:`DiskLayout` — where the node's log lives on disk and where to flip a bit of it
  (``disk`` faults ``lose-unsynced``, ``torn-write`` aim at a log write in flight; ``corrupt``
  needs :meth:`DiskLayout.pick_corruption`).
- ``clock_faults_apply`` (an attribute, default True) — False when libfaketime cannot change
  the system's clock (a Go binary reads the time without libc), so clock faults are skipped
  and said so.
- ``use_timing(tick_ms, election_ticks, heartbeat_ticks, **knobs)`` — take the scenario's
  ``[timing]`` (``knobs``: its other settings, for the system to use or ignore).
- ``metrics_port`` (an attribute) — the port that serves Prometheus metrics at ``/metrics``;
  the run keeps each node's last scrape in ``nodes/<id>/metrics.prom``.
- ``mmap_paths`` (an attribute) — files under the data dir that the system memory-maps (the
  disk-fault file system opens them through the page cache).
- ``disconnect()`` (async) — close the connections the capabilities opened on this event loop;
  ``close()`` — release them all once the cluster has stopped.

A scenario names its system in ``[system]``: ``kind = "orbital"``, ``"etcd"``, or a
third-party adapter ``"package.module:ClassName"`` (:func:`load_system`); the class is built
with the table's ``options``. ``docs/testing-your-system.md`` walks through a whole example.

Example (a system whose node is ``mykv --port P --data DIR``)::

    class MyKV:
        name = "mykv"
        ports = ("client",)
        peer_addressing = "none"

        def prepare(self, cluster: ClusterView) -> None:
            pass

        def command(self, node: str, cluster: ClusterView) -> NodeCommand:
            port = cluster.listen(node, "client").rpartition(":")[2]
            return NodeCommand(["mykv", "--port", port, "--data", str(cluster.data_dir(node))])

        async def is_up(self, node: str, cluster: ClusterView) -> bool:
            return await tcp_answers(cluster.listen(node, "client"))

        def open_client(self, addresses, cluster, *, process, timeout) -> Client:
            return MyKVClient(addresses, timeout)
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from harness.history import Op, OpF, Value

CompletionType = Literal["ok", "fail", "info"]
#: ``per-link``: a node's configuration can name a different address for each peer (each
#: node dials its own proxies). ``shared``: every node dials a peer at the one address that
#: peer advertises, so the cluster routes each node's connections to its own proxies in the
#: kernel (``chaos.nat``: root and nftables). ``none``: nodes do not talk to each other.
PeerAddressing = Literal["per-link", "shared", "none"]

#: the built-in systems, for ``[system] kind``
BUILTIN_SYSTEMS: dict[str, str] = {
    "orbital": "harness.systems.orbital:OrbitalSystem",
    "etcd": "harness.systems.etcd:EtcdSystem",
}


class SystemLoadError(RuntimeError):
    """A system cannot be loaded or built (a bad ``kind`` or options)."""


@dataclass(frozen=True, slots=True)
class Operation:
    """One client operation: ``read`` (value None), ``write`` (an int), ``cas`` ([old, new])."""

    f: OpF
    key: str
    value: Value

    def to_json(self) -> list[object]:
        value = list(self.value) if isinstance(self.value, tuple) else self.value
        return [self.f, self.key, value]


@dataclass(frozen=True, slots=True)
class Completion:
    """What became of an operation (../shared/HISTORY.md's completion types).

    ``value``: the value read for an ``ok`` read (None: never written); ``node``: the node that
    answered, if known (partition checks use it); ``error``: why it failed or is unknown.
    """

    type: CompletionType
    value: Value = None
    node: str | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """A node's own account of itself (:class:`Leadership`).

    ``role``: ``leader``, ``follower``, ``candidate``, ``learner`` or anything else the system
    says; ``commit``, ``applied`` and ``last_index`` are positions in its log (convergence is
    every node reporting the same three; a system without some reports the others in their
    place).
    """

    role: str
    term: int
    commit: int = 0
    applied: int = 0
    last_index: int = 0
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class NodeCommand:
    """How to start one node: its argv, environment added to ours, working directory."""

    argv: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path | None = None


class ClusterView(Protocol):
    """What a system may ask of the cluster it runs in (:class:`harness.local.Cluster`)."""

    @property
    def workdir(self) -> Path: ...
    @property
    def nodes(self) -> tuple[str, ...]:
        """The initial members."""

    @property
    def all_nodes(self) -> tuple[str, ...]:
        """The initial members and the spares that membership faults may add."""

    @property
    def members(self) -> list[str]:
        """The nodes in the cluster now (joined spares included, removed ones not)."""

    @property
    def seed(self) -> int | None: ...
    @property
    def run_start_ns(self) -> int:
        """``time.monotonic_ns()`` at the start of the run (history times count from it)."""

    def listen(self, node: str, port: str) -> str:
        """``host:port`` that ``node`` listens on for ``port`` (one of :attr:`System.ports`)."""

    def dial(self, src: str, dst: str) -> str:
        """Where ``src`` reaches ``dst``'s ``peer`` port: the proxy of link ``src -> dst``
        (``per-link`` systems), else ``dst``'s own address."""

    def node_dir(self, node: str) -> Path: ...
    def data_dir(self, node: str) -> Path: ...
    def log_path(self, node: str) -> Path: ...
    def start_joiner(self, node: str) -> None:
        """Start a spare's process (:class:`Membership`)."""


class Client(Protocol):
    """One logical process's connection to the system (Jepsen's Client).

    Example (a client of a text protocol ``GET k`` / ``SET k v`` / ``CAS k old new``)::

        class MyKVClient:
            async def invoke(self, op: Operation) -> Completion:
                try:
                    reply = await self.conn.ask(wire(op))        # raises on a timeout
                except TimeoutError:
                    return Completion("info", error="timeout")  # it may have happened
                if reply == "MISMATCH":
                    return Completion("fail", error="mismatch")
                return Completion("ok", value=parse(reply) if op.f == "read" else None)

            async def close(self) -> None:
                await self.conn.close()
    """

    async def invoke(self, op: Operation) -> Completion:
        """Perform ``op`` once (no retry that could apply it twice) and say what happened."""
        ...

    async def close(self) -> None:
        """Release the connection (the process is finished)."""
        ...


class System(Protocol):
    """How to run one node of a system (Jepsen's DB). See the module docstring's example."""

    #: the system's name (``[system] kind`` of the built-ins), shown in reports
    name: str
    #: the ports each node listens on; ``client`` is required (clients reach it through a
    #: proxy per client source); ``peer`` is the port peers dial (a proxy per directed
    #: link); any other is reached directly (metrics, admin)
    ports: tuple[str, ...]
    peer_addressing: PeerAddressing

    def prepare(self, cluster: ClusterView) -> None:
        """Once, before any node starts: write configuration files, keys, ..."""
        ...

    def command(self, node: str, cluster: ClusterView) -> NodeCommand:
        """The command that starts ``node`` (the same one restarts it on its data dir)."""
        ...

    async def is_up(self, node: str, cluster: ClusterView) -> bool:
        """Whether ``node`` is up and answering (asked on its direct address)."""
        ...

    def open_client(
        self, addresses: Mapping[str, str], cluster: ClusterView, *, process: int, timeout: float
    ) -> Client:
        """A client for logical process ``process``; ``addresses``: node -> the address of
        its ``client`` port that this client must use (through the proxies of its client
        source); ``timeout``: seconds before an operation is ``info``."""
        ...


# ---- optional capabilities --------------------------------------------------------------------
@runtime_checkable
class Leadership(Protocol):
    """Who leads now: each node's own status, asked on its direct address.

    Example (etcd's Maintenance.Status)::

        async def status(self, node, cluster, timeout):
            st = await maintenance(cluster.listen(node, "client")).Status(timeout=timeout)
            role = "leader" if st.leader == st.header.member_id else "follower"
            return NodeStatus(role, st.raftTerm, st.raftIndex, st.raftAppliedIndex, st.raftIndex)
    """

    async def status(self, node: str, cluster: ClusterView, timeout: float) -> NodeStatus | None:
        """``node``'s status, or None if it does not answer within ``timeout``."""
        ...


@runtime_checkable
class LeaderTransfer(Protocol):
    """Hand the leadership over. Example: ``await admin(leader).transfer(target)``."""

    async def transfer_leader(self, leader: str, target: str, cluster: ClusterView) -> None:
        """Ask ``leader`` to hand over to ``target`` (best effort: the caller polls)."""
        ...


@runtime_checkable
class Membership(Protocol):
    """Membership changes, one node at a time.

    Example: ``add_member`` asks the cluster to add the spare ``node`` and starts it, and
    returns a detail for ``faults.jsonl`` once it votes; ``remove_member`` removes it.
    """

    async def add_member(self, node: str, cluster: ClusterView) -> dict[str, Any]:
        """Add the spare ``node``, starting its process (``cluster.start_joiner``) when the
        system wants it (Orbital: before the change; etcd: after it); return once it votes."""
        ...

    async def remove_member(self, node: str, cluster: ClusterView) -> dict[str, Any]:
        """Remove ``node`` from the configuration (the caller stops its process)."""
        ...


@runtime_checkable
class StorageReplay(Protocol):
    """Check the protocol's invariants from every node's data directory after the run.

    Example: ``return replay_cluster(data_dirs).to_dict()`` — a dict with ``valid`` (True,
    False or "unknown") and ``violations``, stored as results.json's ``invariants``.
    """

    def replay(self, data_dirs: Mapping[str, Path]) -> dict[str, Any]: ...


@runtime_checkable
class RecordChecks(Protocol):
    """Judge the protocol's own rules from what the nodes recorded, after :class:`StorageReplay`
    (Orbital: election safety from ``roles.jsonl``, one vote per term from the vote logs,
    commits of the leader's own term from the WAL's commit audit, exactly-once from the
    replayed log: :mod:`harness.raft_checks`).

    Example: ``return judge_record(self.last_replay, roles, nodes, history, seed=seed,
    majority=majority)`` — a dict with ``valid`` and ``checks`` (results.json's ``raft``).
    """

    def check_record(
        self,
        roles: Mapping[str, list[dict[str, Any]]],
        nodes: list[str],
        history: list[Op],
        *,
        seed: int,
        majority: int | None,
    ) -> dict[str, Any]: ...


@runtime_checkable
class DiskLayout(Protocol):
    """Where a node keeps its log, for disk faults aimed at it.

    Example: ``log_prefix = "member/wal/"`` (paths relative to the data directory).
    """

    log_prefix: str

    def pick_corruption(self, data_dir: Path, target: str, seed: int) -> tuple[str, int, Any]:
        """Where a ``corrupt`` fault flips a bit: (path relative to ``data_dir``, offset,
        a description); raise ``ValueError`` if there is nothing of that kind to corrupt."""
        ...


CAPABILITIES: dict[str, type] = {
    "leadership": Leadership,
    "leader-transfer": LeaderTransfer,
    "membership": Membership,
    "storage-replay": StorageReplay,
    "record-checks": RecordChecks,
    "disk-layout": DiskLayout,
}


def capabilities(system: object) -> set[str]:
    """The optional capabilities ``system`` has (the keys of :data:`CAPABILITIES`, and
    ``clock-faults`` unless it says ``clock_faults_apply = False``)."""
    found = {name for name, proto in CAPABILITIES.items() if isinstance(system, proto)}
    if getattr(system, "clock_faults_apply", True):
        found.add("clock-faults")
    return found


def load_system(kind: str, options: Mapping[str, Any] | None = None) -> System:
    """Build the system a scenario names: a built-in name or ``module:Class``."""
    target = BUILTIN_SYSTEMS.get(kind, kind)
    module_name, sep, class_name = target.partition(":")
    if not sep or not module_name or not class_name:
        known = ", ".join(BUILTIN_SYSTEMS)
        raise SystemLoadError(f"system kind {kind!r}: not one of {known}, nor module:Class")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SystemLoadError(
            f"system kind {kind!r}: cannot import {module_name} ({exc}); put it next to the "
            "scenario file or on PYTHONPATH"
        ) from None
    cls = getattr(module, class_name, None)
    if cls is None:
        raise SystemLoadError(f"system kind {kind!r}: {module_name} has no {class_name}")
    try:
        system = cls(**dict(options or {}))
    except (TypeError, ValueError) as exc:
        raise SystemLoadError(f"system kind {kind!r}: bad options: {exc}") from None
    missing = [
        m for m in ("name", "ports", "command", "is_up", "open_client") if not hasattr(system, m)
    ]
    if missing:
        raise SystemLoadError(f"system kind {kind!r}: {class_name} lacks {', '.join(missing)}")
    if "client" not in system.ports:
        raise SystemLoadError(f"system kind {kind!r}: ports must include 'client'")
    return system  # type: ignore[no-any-return]


async def tcp_answers(address: str, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections at ``host:port`` (a simple :meth:`is_up`)."""
    host, _, port = address.rpartition(":")
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), timeout)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True
