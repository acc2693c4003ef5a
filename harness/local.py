"""Any :class:`~harness.system.System` as a local cluster of real processes behind Toxiproxy.

Theory of operation
-------------------
:meth:`Cluster.start` picks a free loopback port for every port the system names on every
node, starts a Toxiproxy server and a :class:`~chaos.toxiproxy.ProxyNetwork` with one proxy
per directed peer link ``i -> j`` (upstream: ``j``'s ``peer`` port) and one per (client
source, node) (upstream: the node's ``client`` port). How a node reaches its peers' proxies
depends on :attr:`System.peer_addressing`:

- ``per-link``: the system writes ``cluster.dial(i, j)`` (the proxy of ``i -> j``) into
  ``i``'s configuration (Orbital's cluster file);
- ``shared``: every node dials ``j`` at ``j``'s own address; each node process runs under its
  own group id and :class:`chaos.nat.SourceRouting` sends its connections to ``j`` to the
  proxy of ``i -> j`` in the kernel (etcd). This needs root and nftables;
- ``none``: nodes do not talk to each other (a single-node system).

Then it calls :meth:`System.prepare` (configuration files) and starts each initial node as
its own process (:class:`~chaos.process.ProcessManager`): output in ``nodes/<id>/node.log``,
data in ``nodes/<id>/data``. With ``disk_faults`` the data directory is a mount of the
fault-injecting file system (:mod:`chaos.diskfs`), with ``fake_clocks`` the node runs on its
own libfaketime clock (:mod:`chaos.clock`) if the system's clock can be faked.

Every fault is reported to ``on_fault(kind, action, detail)`` (a runner writes
``faults.jsonl``). The harness watches nodes on their *direct* addresses (``status`` of the
:class:`~harness.system.Leadership` capability, ``is_up``), never through the proxies: what
it sees must not depend on the faults it injects. Clients use :meth:`client_addresses`.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from chaos.clock import FakeClock
from chaos.diskfs import Disk, DiskMount
from chaos.nat import GID_BASE, Route, SourceRouting
from chaos.process import ProcessEvent
from chaos.remote import RemoteDisk
from chaos.toxiproxy import CLIENT, Link, ProxyNetwork, ToxiproxyServer
from harness.history import Op
from harness.placement import LocalPlacement, NodeProcess, Placement, PlacementError, Processes
from harness.system import (
    Client,
    DiskLayout,
    Leadership,
    LeaderTransfer,
    Membership,
    NodeStatus,
    RecordChecks,
    StorageReplay,
    System,
)

FaultSink = Callable[[str, str, dict[str, Any]], None]
Statuses = dict[str, NodeStatus | None]


class ClusterError(RuntimeError):
    """The cluster could not be started or did not behave as required."""


class NotApplicable(RuntimeError):
    """The system lacks the capability a step needs (the step is skipped, saying so)."""


@dataclass(frozen=True, slots=True)
class ClusterOptions:
    """What to run, whatever the system: node ids, client sources, which faults are possible."""

    nodes: tuple[str, ...] = ("n1", "n2", "n3", "n4", "n5")
    joiners: tuple[str, ...] = ()  #: spares, started outside the configuration
    client_sources: tuple[str, ...] = (CLIENT,)
    toxiproxy: bool = True
    seed: int | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    #: run every node on its own libfaketime clock (``clocks``), for clock faults
    fake_clocks: bool = False
    #: mount the fault-injecting file system (``disks``) under every node's data dir
    disk_faults: bool = False

    @property
    def all_nodes(self) -> tuple[str, ...]:
        return self.nodes + self.joiners


class Cluster:
    """The nodes of one system, run locally (module docstring)."""

    def __init__(
        self,
        system: System,
        options: ClusterOptions,
        workdir: Path,
        *,
        on_fault: FaultSink | None = None,
        run_start_ns: int | None = None,
        placement: Placement | None = None,
    ) -> None:
        self.system = system
        #: where the processes run (this machine unless told otherwise: harness.placement)
        self.placement: Placement = placement or LocalPlacement()
        self.options = options
        self.spec: ClusterOptions = options  #: the same (``harness.cluster`` narrows it)
        self._workdir = workdir.resolve()
        self._run_start_ns = run_start_ns if run_start_ns is not None else time.monotonic_ns()
        self._on_fault = on_fault
        #: node -> port name -> host:port it listens on
        self.addr: dict[str, dict[str, str]] = {}
        self.network: ProxyNetwork | None = None
        self.routing: SourceRouting | None = None
        self.placement.bind(self._process_event)
        #: each node's libfaketime clock (``options.fake_clocks``)
        self.clocks: dict[str, FakeClock] = {}
        #: each node's fault-injecting file system (``options.disk_faults``)
        self.disks: dict[str, Disk] = {}
        #: nodes out of the cluster by design (removed, or refusing a corrupted disk): not
        #: expected to answer, not restarted by a heal
        self.retired: set[str] = set()
        #: spares that were started
        self.joined: list[str] = []
        #: why clock faults cannot be applied, when the system says libfaketime cannot move its
        #: clock (``clock_faults_apply = False``)
        self.no_fake_clock: str | None = None
        if not getattr(system, "clock_faults_apply", True):
            self.no_fake_clock = (
                f"clock faults do not apply to {system.name}: libfaketime cannot move its clock"
            )

    @property
    def procs(self) -> Processes:
        """The node processes, wherever they run (:mod:`harness.placement`)."""
        return self.placement.procs

    @property
    def server(self) -> ToxiproxyServer | None:
        """The local Toxiproxy server (None with a remote placement: one per host)."""
        return self.placement.server if isinstance(self.placement, LocalPlacement) else None

    # ---- the ClusterView a system sees ------------------------------------------------------
    @property
    def workdir(self) -> Path:
        return self._workdir

    @property
    def nodes(self) -> tuple[str, ...]:
        return self.options.nodes

    @property
    def all_nodes(self) -> tuple[str, ...]:
        return self.options.all_nodes

    @property
    def members(self) -> list[str]:
        """The initial nodes and the joined spares, less the retired."""
        return [n for n in (*self.options.nodes, *self.joined) if n not in self.retired]

    @property
    def seed(self) -> int | None:
        return self.options.seed

    @property
    def run_start_ns(self) -> int:
        return self._run_start_ns

    def listen(self, node: str, port: str) -> str:
        return self.addr[node][port]

    def dial(self, src: str, dst: str) -> str:
        if self.network is not None and self.system.peer_addressing == "per-link":
            return self.network.address(src, dst)
        return self.addr[dst]["peer"]

    def node_dir(self, node: str) -> Path:
        return self._workdir / "nodes" / node

    def data_dir(self, node: str) -> Path:
        return self.node_dir(node) / "data"

    def log_path(self, node: str) -> Path:
        return self.node_dir(node) / "node.log"

    def gid(self, node: str) -> int | None:
        """The group id ``node``'s process runs under (``shared`` peer addressing only)."""
        if self.routing is None:
            return None
        return GID_BASE + self.options.all_nodes.index(node)

    # ---- lifecycle --------------------------------------------------------------------------
    def start(self) -> Self:
        try:
            self._workdir.mkdir(parents=True, exist_ok=True)
            self._check_placement()
            self.placement.open(self._workdir, self.options.all_nodes)
            self._allocate_ports()
            if self.options.toxiproxy:
                self._start_network()
            before = _files(self._workdir)
            self.system.prepare(self)
            after = _files(self._workdir)
            self.placement.share(p for p, st in after.items() if before.get(p) != st)
            for node in self.options.nodes:
                self._start_node(node)
        except BaseException:
            self.stop()
            raise
        return self

    def _check_placement(self) -> None:
        """What a remote placement cannot do yet is refused before anything starts."""
        if self.placement.name == "local":
            return
        if self.system.peer_addressing == "shared":
            raise PlacementError(
                f"placement {self.placement.name}: {self.system.name} dials every peer at one "
                "address (shared peer addressing needs per-host kernel routing: not supported)"
            )

    def _allocate_ports(self) -> None:
        for node in self.options.all_nodes:
            self.addr[node] = self.placement.addresses(node, self.system.ports)

    def _start_network(self) -> None:
        has_peers = "peer" in self.system.ports and self.system.peer_addressing != "none"
        port = "peer" if has_peers else "client"
        self.network = self.placement.network(
            {n: a[port] for n, a in self.addr.items()},
            {n: a["client"] for n, a in self.addr.items()},
            self.options.client_sources,
        )
        if has_peers and self.system.peer_addressing == "shared":
            self.routing = SourceRouting().start(self._routes(self.options.all_nodes))

    def _routes(self, nodes: Iterable[str]) -> list[Route]:
        assert self.network is not None
        out = []
        for src in nodes:
            gid = GID_BASE + self.options.all_nodes.index(src)
            for dst in self.options.all_nodes:
                if dst != src:
                    addr = self.network.address(src, dst)
                    out.append(Route(gid, self.addr[dst]["peer"], addr))
        return out

    def stop(self) -> None:
        """Stop every process we started, then the mounts, routes, proxies and Toxiproxy, and
        read the nodes' directories back (a remote placement). Every step runs whatever
        became of the ones before it; the first error is raised at the end."""
        for clock in self.clocks.values():
            clock.stop_strobe()
        steps = [
            self.procs.stop_all,
            getattr(self.system, "close", None),  # the system's status and admin connections
            self._unmount_disks,
            self._close_routing,
            self._close_network,
            self.placement.collect,  # the nodes' logs and data, for the replay
            self.placement.close,
        ]
        first: BaseException | None = None
        for step in steps:
            if step is None:
                continue
            try:
                step()
            except BaseException as exc:  # the rest of the clean-up still runs
                first = first or exc
        if first is not None:
            raise first

    def _close_routing(self) -> None:
        if self.routing is not None:
            self.routing.close()
            self.routing = None

    def _close_network(self) -> None:
        if self.network is not None:
            self.network.close()
            self.network = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _unmount_disks(self) -> None:
        """Unmount every disk (what the stopped nodes wrote is kept) and put its durable
        content where the data dir was, for a storage replay."""
        disks, self.disks = self.disks, {}
        errors = []
        for disk in disks.values():  # each, whatever became of the others
            try:
                disk.settle()
            except (OSError, RuntimeError) as exc:
                errors.append(str(exc))
        if errors:
            raise ClusterError("; ".join(errors))

    def _env(self, node: str, extra: Mapping[str, str]) -> dict[str, str]:
        """What a node's environment adds to its place's (the placement adds the rest)."""
        env = dict(extra)
        env.update(self.options.env)
        if self.options.fake_clocks and getattr(self.system, "clock_faults_apply", True):
            if node not in self.clocks:
                self.clocks[node] = self.placement.clock(node, self.node_dir(node) / "clock.rc")
            env.update(self.clocks[node].env())
        return env

    def _start_node(self, node: str) -> NodeProcess:
        self.node_dir(node).mkdir(parents=True, exist_ok=True)
        if self.options.disk_faults and node not in self.disks:
            self.disks[node] = self.placement.disk(
                node,
                self.node_dir(node) / "disk",
                self.data_dir(node),
                self.node_dir(node) / "disk.fs",
                mmap_paths=tuple(getattr(self.system, "mmap_paths", ())),
                allow_other=self.routing is not None,
            )
        cmd = self.system.command(node, self)
        env = self._env(node, cmd.env)
        proc = self.placement.start(node, cmd, env, self.log_path(node), self.gid(node))
        if node in self.clocks:
            self.clocks[node].process_started()
        return proc

    def start_joiner(self, node: str) -> None:
        """Start a spare (a membership change adds it)."""
        if node not in self.options.joiners:
            raise ClusterError(f"{node} is not a spare of this cluster")
        if node in self.joined:
            raise ClusterError(f"{node} has already joined")
        self._start_node(node)
        self.joined.append(node)

    # ---- addresses --------------------------------------------------------------------------
    def client_addresses(self, source: str = CLIENT) -> dict[str, str]:
        """Where a client of ``source`` reaches each node (through the proxies if any)."""
        if self.network is None:
            return {n: a["client"] for n, a in self.addr.items()}
        return {n: self.network.client_address(n, source) for n in self.options.all_nodes}

    def direct_addresses(self, port: str = "client") -> dict[str, str]:
        """Every node's own address for ``port`` (never through a proxy)."""
        return {n: a[port] for n, a in self.addr.items()}

    # ---- process faults ---------------------------------------------------------------------
    def kill(self, node: str) -> None:
        self.procs[node].kill()

    def pause(self, node: str) -> None:
        self.procs[node].pause()

    def resume(self, node: str) -> None:
        self.procs[node].resume()

    def restart(self, node: str) -> None:
        self.procs[node].restart()
        if node in self.clocks:
            self.clocks[node].process_started()

    def stop_node(self, node: str) -> None:
        """Stop a node for good (SIGTERM, then SIGKILL): a removed member."""
        if node in self.procs:
            self.procs[node].stop()

    def alive(self, node: str) -> bool:
        try:
            return self.procs[node].alive()
        except KeyError:
            return False

    def paused(self, node: str) -> bool:
        try:
            return self.procs[node].paused
        except KeyError:
            return False

    def check_no_crash(self) -> None:
        """Raise :class:`ClusterError` if a node's process ended without a kill or stop from
        us (a start that failed, or a crash), with the end of its log."""
        for proc in self.procs.processes():
            if proc.exited_on_its_own:
                lines = "".join(f"\n    {line}" for line in proc.log_tail(10))
                raise ClusterError(
                    f"{proc.name} {proc.describe()} on its own; the end of {proc.log_path}:{lines}"
                )

    def _process_event(self, event: ProcessEvent) -> None:
        kinds = {"kill": "kill", "pause": "pause", "resume": "pause", "restart": "kill"}
        kind = kinds.get(event.action)
        if kind is None or self._on_fault is None:
            return
        action = "start" if event.action in ("kill", "pause") else "stop"
        self._on_fault(kind, action, event.as_detail())

    # ---- network faults ---------------------------------------------------------------------
    def _net(self) -> ProxyNetwork:
        if self.network is None:
            raise ClusterError("this cluster runs without Toxiproxy: no network faults")
        return self.network

    def partition(
        self, groups: Iterable[Iterable[str]], clients: Mapping[str, int] | None = None
    ) -> None:
        groups = [sorted(g) for g in groups]
        self._net().partition(groups, clients)
        self._fault("partition", "start", {"groups": groups, "clients": dict(clients or {})})

    def cut(self, src: str, dst: str) -> None:
        self._net().cut(src, dst)
        self._fault("cut", "start", {"link": [src, dst]})

    def latency(self, ms: int, jitter_ms: int = 0, links: Iterable[Link] | None = None) -> None:
        self._net().latency(ms, jitter_ms, links)
        self._fault("latency", "start", {"ms": ms, "jitter_ms": jitter_ms})

    def heal(self) -> None:
        """Remove every network fault (each open one gets its ``stop``)."""
        net = self._net()
        state = net.state()
        net.heal()
        if state["cuts"]:
            self._fault("partition", "stop", {"healed": state["cuts"]})
        if state["latency"]:
            self._fault("latency", "stop", {})

    def _fault(self, kind: str, action: str, detail: dict[str, Any]) -> None:
        if self._on_fault is not None:
            self._on_fault(kind, action, detail)

    # ---- the system's capabilities, for the runner and the nemesis ---------------------------
    def open_client(self, addresses: Mapping[str, str], process: int, timeout: float) -> Client:
        """A client of the system for logical process ``process``."""
        return self.system.open_client(addresses, self, process=process, timeout=timeout)

    async def disconnect(self) -> None:
        """Let the system close its status and admin connections of this event loop."""
        hook = getattr(self.system, "disconnect", None)
        if hook is not None:
            await hook()

    def _needs(self, capability: type, what: str) -> Any:
        if not isinstance(self.system, capability):
            raise NotApplicable(f"{self.system.name} has no {what}")
        return self.system

    async def transfer_leader(self, leader: str, target: str) -> None:
        system = self._needs(LeaderTransfer, "leader transfer")
        await system.transfer_leader(leader, target, self)

    async def add_member(self, node: str) -> dict[str, Any]:
        system = self._needs(Membership, "membership changes")
        detail: dict[str, Any] = await system.add_member(node, self)
        return detail

    async def remove_member(self, node: str) -> dict[str, Any]:
        system = self._needs(Membership, "membership changes")
        detail: dict[str, Any] = await system.remove_member(node, self)
        return detail

    @property
    def log_prefix(self) -> str | None:
        return self.system.log_prefix if isinstance(self.system, DiskLayout) else None

    def pick_corruption(self, node: str, target: str, seed: int) -> tuple[str, int, Any]:
        """Where a corruption of ``target`` lands in ``node``'s durable data (the disk's
        backing directory: what is fsynced)."""
        if not isinstance(self.system, DiskLayout):
            raise ValueError(f"{self.system.name} does not say where its data can be corrupted")
        disk = self.disks.get(node)
        if disk is None:
            return self.system.pick_corruption(self.data_dir(node), target, seed)
        if not isinstance(disk, RemoteDisk):
            assert isinstance(disk, DiskMount), disk
            return self.system.pick_corruption(disk.backing, target, seed)
        copy = self._workdir / "hosts" / f"{node}.durable"  # a remote disk: a copy, here
        shutil.rmtree(copy, ignore_errors=True)
        try:
            return self.system.pick_corruption(disk.fetch_durable(copy), target, seed)
        finally:
            shutil.rmtree(copy, ignore_errors=True)

    def replay(self, nodes: Iterable[str]) -> dict[str, Any] | None:
        """The system's storage replay of ``nodes``' data dirs; None if it has none."""
        if not isinstance(self.system, StorageReplay):
            return None
        return self.system.replay({n: self.data_dir(n) for n in nodes})

    def check_record(
        self,
        roles: dict[str, list[dict[str, Any]]],
        nodes: list[str],
        history: list[Op],
        *,
        seed: int,
        majority: int | None,
    ) -> dict[str, Any] | None:
        """The system's own rules judged from its nodes' record (after :meth:`replay`); None
        if the system has no :class:`~harness.system.RecordChecks`."""
        if not isinstance(self.system, RecordChecks):
            return None
        return self.system.check_record(roles, nodes, history, seed=seed, majority=majority)

    def metrics_url(self, node: str) -> str | None:
        """Where ``node`` serves Prometheus metrics (the system's ``metrics_port``), if it
        does."""
        port = getattr(self.system, "metrics_port", None)
        if port is None or port not in self.addr.get(node, {}):
            return None
        return f"http://{self.addr[node][port]}/metrics"

    # ---- observation (direct addresses, never through the proxies) ---------------------------
    async def status(self, node: str, timeout: float = 0.3) -> NodeStatus | None:
        """``node``'s own status (None if it is down, paused, silent, or the system cannot
        say: no :class:`~harness.system.Leadership`)."""
        if not isinstance(self.system, Leadership):
            return None
        if not self.alive(node) or self.paused(node):
            return None
        try:
            return await asyncio.wait_for(self.system.status(node, self, timeout), timeout * 2)
        except (TimeoutError, OSError):
            return None

    async def node_statuses(self, timeout: float = 0.3) -> Statuses:
        """Every member's own status, asked concurrently."""
        nodes = self.members
        found = await asyncio.gather(*(self.status(n, timeout) for n in nodes))
        return dict(zip(nodes, found, strict=True))

    async def leader(self) -> tuple[str, int] | None:
        """The leader of the highest term that any member reports, if any."""
        return leader_of(await self.node_statuses())

    async def wait_ready(self, timeout: float) -> float:
        """Poll until every initial node is up (:meth:`System.is_up`); how long it took.
        Raises :class:`ClusterError` as soon as a node has ended on its own, or when
        ``timeout`` passes."""
        t0 = time.monotonic()
        while True:
            self.check_no_crash()
            up = await asyncio.gather(*(self.system.is_up(n, self) for n in self.options.nodes))
            silent = [n for n, ok in zip(self.options.nodes, up, strict=True) if not ok]
            if not silent:
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise ClusterError(f"{', '.join(silent)} did not answer within {timeout:.1f}s")
            await asyncio.sleep(0.05)

    async def wait_for_leader(
        self, timeout: float, exclude: Iterable[str] = (), min_term: int = 0
    ) -> tuple[str, int, float]:
        """Poll until a node (not in ``exclude``) leads in a term >= ``min_term``; the leader,
        its term and how long it took. Needs :class:`~harness.system.Leadership`."""
        if not isinstance(self.system, Leadership):
            raise ClusterError(f"{self.system.name} cannot tell who leads")
        t0 = time.monotonic()
        skip = set(exclude)
        while True:
            self.check_no_crash()
            found = await self.leader()
            if found is not None and found[0] not in skip and found[1] >= min_term:
                return found[0], found[1], time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise ClusterError(f"no leader within {timeout:.1f}s (last seen: {found})")
            await asyncio.sleep(0.02)


def _files(root: Path) -> dict[Path, tuple[int, int]]:
    """Every file under ``root`` with its (mtime, size): what a system's ``prepare`` wrote is
    what differs afterwards."""
    out = {}
    for path in root.rglob("*"):
        if path.is_file():
            st = path.stat()
            out[path] = (st.st_mtime_ns, st.st_size)
    return out


def leader_of(statuses: Mapping[str, NodeStatus | None]) -> tuple[str, int] | None:
    """The node that reports leading in the highest term, and that term."""
    best: tuple[str, int] | None = None
    for node, st in statuses.items():
        if st is not None and st.role == "leader" and (best is None or st.term > best[1]):
            best = (node, st.term)
    return best
