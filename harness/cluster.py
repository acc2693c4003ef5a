"""A local cluster of real ``orbital node`` processes, wired through Toxiproxy.

Theory of operation
-------------------
``LocalCluster.start()`` picks free loopback ports (a Raft port and a client port per node),
starts a Toxiproxy server and creates a :class:`~chaos.toxiproxy.ProxyNetwork`: one proxy per
directed node link i->j, and one per (client source, node). It writes ``cluster.toml`` in which
each node's ``peers`` are the proxies it must dial, then starts every node as its own process
(:class:`~chaos.process.ProcessManager`), with its output in ``nodes/<id>/node.log``, its
data in ``nodes/<id>/data`` and its role changes in ``nodes/<id>/roles.jsonl``.

Every fault goes through here: network faults to the proxy network, process faults (SIGKILL,
SIGSTOP/SIGCONT, restart on the same data directory) to the process manager. Each is reported
to ``on_fault(kind, action, detail)`` so a runner can write ``faults.jsonl``.

Security: unless ``ClusterSpec.curve`` is off, ``start()`` first creates CURVE keys in
``keys/`` (a pair per node, one client pair, one admin pair; secret keys mode 0600) and lists
the public keys in ``cluster.toml``, so every socket of the run speaks CURVE, through the
proxies too (Toxiproxy forwards the encrypted bytes untouched). :meth:`LocalCluster.keys`
gives a client's keys (``client`` or ``admin``), :meth:`LocalCluster.kv_client` a client
holding them.

The harness watches the cluster on the nodes' *direct* client ports (``status``), never through
the proxies: what it sees must not depend on the faults it injects. Clients under test use
``client_addresses(source)``, through the proxies.

``orbital cluster up --nodes 5`` runs one in the foreground until Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

import tomli_w

from chaos.clock import FakeClock
from chaos.diskfs import DiskMount
from chaos.process import ManagedProcess, ProcessEvent, ProcessManager
from chaos.toxiproxy import (
    CLIENT,
    LOOPBACK,
    Link,
    ProxyNetwork,
    ToxiproxyError,
    ToxiproxyServer,
    free_port,
)
from harness import signals
from raft.security import ADMIN, ClientKeys, KeyPair, create_key_pair, load_key_pair
from raft.security import CLIENT as CLIENT_KEY

if TYPE_CHECKING:
    from raft.client import KVClient

FaultSink = Callable[[str, str, dict[str, Any]], None]
Statuses = dict[str, dict[str, Any] | None]
_T = TypeVar("_T")

#: how long every node of a starting cluster has to answer its status (Python start-up and
#: imports take seconds on a loaded 2-core machine)
READY_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    """What to run: node ids, timing, and the client sources that get their own proxies."""

    nodes: tuple[str, ...] = ("n1", "n2", "n3", "n4", "n5")
    joiners: tuple[str, ...] = ()  #: started outside the configuration (membership tests)
    cluster_id: str = "orbital"
    tick_ms: float = 10.0
    election_ticks: int = 15
    heartbeat_ticks: int = 3
    snapshot_entries: int = 10_000
    snapshot_chunk_bytes: int = 1 << 20
    max_uncommitted: int = 20_000
    client_sources: tuple[str, ...] = (CLIENT,)
    toxiproxy: bool = True
    seed: int | None = None  #: seeds each node's election-timeout RNG (seed + node position)
    env: Mapping[str, str] = field(default_factory=dict)
    lease_read: bool = False
    lease_drift: float = 0.1
    #: run every node on its own libfaketime clock (``clocks``), for clock faults
    fake_clocks: bool = False
    #: mount the fault-injecting file system (``disks``) under every node's data dir
    disk_faults: bool = False
    curve: bool = True  #: CURVE keys on every socket (raft.security)

    @property
    def all_nodes(self) -> tuple[str, ...]:
        return self.nodes + self.joiners

    @property
    def election_timeout_s(self) -> float:
        return self.election_ticks * self.tick_ms / 1000


class ClusterError(RuntimeError):
    """The cluster could not be started or did not behave as required."""


class LocalCluster:
    def __init__(
        self,
        spec: ClusterSpec,
        workdir: Path,
        *,
        on_fault: FaultSink | None = None,
        run_start_ns: int | None = None,
    ) -> None:
        self.spec = spec
        # absolute: the node resolves relative paths in cluster.toml against the file's folder
        self.workdir = workdir.resolve()
        self.config_path = workdir / "cluster.toml"
        self.run_start_ns = run_start_ns if run_start_ns is not None else time.monotonic_ns()
        self._on_fault = on_fault
        self.raft_addr: dict[str, str] = {}
        self.client_addr: dict[str, str] = {}
        #: each node's Prometheus metrics (HTTP, direct: never through a proxy)
        self.metrics_addr: dict[str, str] = {}
        self.server: ToxiproxyServer | None = None
        self.network: ProxyNetwork | None = None
        self.procs = ProcessManager(on_event=self._process_event)
        #: each node's libfaketime clock (``spec.fake_clocks``)
        self.clocks: dict[str, FakeClock] = {}
        #: each node's fault-injecting file system (``spec.disk_faults``)
        self.disks: dict[str, DiskMount] = {}
        #: nodes out of the cluster by design (removed, or refusing a corrupted disk): not
        #: expected to answer, not restarted by a heal
        self.retired: set[str] = set()
        #: joiners that were started
        self.joined: list[str] = []
        self.keys_dir = self.workdir / "keys"
        #: public keys: every node's by id, and the client's and admin's
        self.public_keys: dict[str, bytes] = {}
        self._pairs: dict[str, KeyPair] = {}

    # ---- lifecycle ------------------------------------------------------------------------
    def start(self) -> Self:
        try:
            self._allocate_ports()
            if self.spec.curve:
                self._create_keys()
            if self.spec.toxiproxy:
                self.server = ToxiproxyServer().start()
                self.network = ProxyNetwork.create(
                    self.server,
                    self.raft_addr,
                    client_upstreams=self.client_addr,
                    client_sources=self.spec.client_sources,
                )
            self._write_config()
            for node in self.spec.nodes:
                self._start_node(node)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every process we started, then the proxies and the Toxiproxy server."""
        for clock in self.clocks.values():
            clock.stop_strobe()
        try:
            self.procs.stop_all()
        finally:
            self._unmount_disks()
        if self.network is not None:
            self.network.close()
            self.network = None
        if self.server is not None:
            self.server.stop()
            self.server = None

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
        """Unmount every disk (cleanly: what the stopped nodes wrote is kept) and put its
        durable content where the data dir was, for the storage replay."""
        disks, self.disks = self.disks, {}
        for node, disk in disks.items():
            disk.stop()
            data = self.data_dir(node)
            if data.is_dir() and not any(data.iterdir()):
                data.rmdir()
                disk.backing.rename(data)
            shutil.rmtree(disk.state_dir / "graveyard", ignore_errors=True)

    @property
    def members(self) -> list[str]:
        """The nodes expected in the cluster now: the initial ones and the joined, less the
        retired."""
        return [n for n in (*self.spec.nodes, *self.joined) if n not in self.retired]

    def _allocate_ports(self) -> None:
        for node in self.spec.all_nodes:
            self.raft_addr[node] = f"{LOOPBACK}:{free_port()}"
            self.client_addr[node] = f"{LOOPBACK}:{free_port()}"
            self.metrics_addr[node] = f"{LOOPBACK}:{free_port()}"

    def _create_keys(self) -> None:
        for name in (*self.spec.all_nodes, CLIENT_KEY, ADMIN):
            if (self.keys_dir / f"{name}.key_secret").exists():  # a restarted run: reuse
                pair = load_key_pair(self.keys_dir / f"{name}.key_secret")
            else:
                pair = create_key_pair(self.keys_dir, name)
            self._pairs[name] = pair
            self.public_keys[name] = pair.public

    def keys(self, role: str = CLIENT_KEY) -> ClientKeys | None:
        """A client's keys (``client`` or ``admin``) for this cluster; None without CURVE."""
        if not self.spec.curve:
            return None
        servers = {n: self.public_keys[n] for n in self.spec.all_nodes}
        return ClientKeys(self._pairs[role], servers)

    def kv_client(
        self, addresses: Mapping[str, str] | None = None, *, role: str = CLIENT_KEY, **kw: Any
    ) -> KVClient:
        """A :class:`KVClient` of this cluster holding ``role``'s keys (``addresses``:
        default the direct client ports)."""
        from raft.client import KVClient

        addrs = dict(self.client_addr if addresses is None else addresses)
        return KVClient(addrs, keys=self.keys(role), **kw)

    def node_dir(self, node: str) -> Path:
        return self.workdir / "nodes" / node

    def data_dir(self, node: str) -> Path:
        return self.node_dir(node) / "data"

    def _write_config(self) -> None:
        spec = self.spec
        nodes: dict[str, Any] = {}
        for node in spec.all_nodes:
            entry: dict[str, Any] = {
                "raft": self.raft_addr[node],
                "client": self.client_addr[node],
                "metrics": self.metrics_addr[node],
                "data_dir": str(self.data_dir(node)),
                "initial": node in spec.nodes,
            }
            if spec.curve:
                entry["public_key"] = self.public_keys[node].decode()
                entry["secret_key_file"] = str(self.keys_dir / f"{node}.key_secret")
            if self.network is not None:
                entry["peers"] = {
                    p: self.network.address(node, p) for p in spec.all_nodes if p != node
                }
            nodes[node] = entry
        doc = {
            "cluster_id": spec.cluster_id,
            "tick_ms": spec.tick_ms,
            "election_ticks": spec.election_ticks,
            "heartbeat_ticks": spec.heartbeat_ticks,
            "snapshot_entries": spec.snapshot_entries,
            "snapshot_chunk_bytes": spec.snapshot_chunk_bytes,
            "max_uncommitted": spec.max_uncommitted,
            "lease_read": spec.lease_read,
            "lease_drift": spec.lease_drift,
            "nodes": nodes,
        }
        if spec.curve:
            doc["security"] = {
                "client_keys": [self.public_keys[CLIENT_KEY].decode()],
                "admin_keys": [self.public_keys[ADMIN].decode()],
            }
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_bytes(tomli_w.dumps(doc).encode())

    def _argv(self, node: str) -> list[str]:
        argv = [sys.executable, "-m", "harness.cli", "node", "--config", str(self.config_path)]
        argv += ["--id", node, "--roles", str(self.node_dir(node) / "roles.jsonl")]
        if self.spec.seed is not None:
            argv += ["--seed", str(self.spec.seed * 1000 + self.spec.all_nodes.index(node))]
        return argv

    def _env(self, node: str) -> dict[str, str]:
        env = dict(os.environ)
        env["ORBITAL_RUN_START_NS"] = str(self.run_start_ns)
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.spec.env)
        if self.spec.fake_clocks:
            clock = self.clocks.setdefault(node, FakeClock(self.node_dir(node) / "clock.rc"))
            env.update(clock.env())
        return env

    def _start_node(self, node: str) -> ManagedProcess:
        self.node_dir(node).mkdir(parents=True, exist_ok=True)
        if self.spec.disk_faults and node not in self.disks:
            disk = DiskMount(
                self.node_dir(node) / "disk", self.data_dir(node), self.node_dir(node) / "disk.fs"
            )
            self.disks[node] = disk.start()
        proc = self.procs.start(
            node, self._argv(node), self.node_dir(node) / "node.log", env=self._env(node)
        )
        if node in self.clocks:
            self.clocks[node].process_started()
        return proc

    def start_joiner(self, node: str) -> None:
        """Start a node listed in ``joiners`` (it waits to be added by a membership change)."""
        if node not in self.spec.joiners:
            raise ClusterError(f"{node} is not a joiner of this cluster")
        self._start_node(node)
        self.joined.append(node)

    # ---- addresses ------------------------------------------------------------------------
    def client_addresses(self, source: str = CLIENT) -> dict[str, str]:
        """Where a client of ``source`` reaches each node (through the proxies if any)."""
        if self.network is None:
            return dict(self.client_addr)
        return {n: self.network.client_address(n, source) for n in self.spec.all_nodes}

    # ---- process faults -------------------------------------------------------------------
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

    def alive(self, node: str) -> bool:
        try:
            return self.procs[node].alive()
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

    # ---- network faults -------------------------------------------------------------------
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

    # ---- clock faults (libfaketime: ``spec.fake_clocks``) ------------------------------------
    def clock(self, node: str) -> FakeClock:
        if node not in self.clocks:
            raise ClusterError(f"{node} runs on the real clock: set ClusterSpec.fake_clocks")
        return self.clocks[node]

    def clock_jump(self, node: str, seconds: float) -> None:
        self._fault("clock", "start", {"node": node, **self.clock(node).jump(seconds)})

    def clock_skew(self, node: str, rate: float) -> None:
        self._fault("clock", "start", {"node": node, **self.clock(node).skew(rate)})

    def clock_strobe(self, node: str, delta_s: float, period_s: float, duration_s: float) -> None:
        detail = self.clock(node).strobe(delta_s, period_s, duration_s)
        self._fault("clock", "start", {"node": node, "strobe": detail})

    def clock_reset(self, node: str) -> None:
        self._fault("clock", "stop", {"node": node, **self.clock(node).reset()})

    def _fault(self, kind: str, action: str, detail: dict[str, Any]) -> None:
        if self._on_fault is not None:
            self._on_fault(kind, action, detail)

    # ---- observation (direct ports, never through the proxies) -----------------------------
    def paused(self, node: str) -> bool:
        try:
            return self.procs[node].paused
        except KeyError:
            return False

    async def statuses(self, timeout: float = 0.5) -> Statuses:
        """Each node's own status; None for a node that did not answer."""
        with StatusPoller(self, timeout) as poller:
            return await poller.poll()

    async def leader(self) -> tuple[str, int] | None:
        """The leader of the highest term that any reachable node reports, if any."""
        return leader_of(await self.statuses())

    async def wait_ready(self, timeout: float) -> float:
        """Poll until every node of ``spec.nodes`` answers its status; how long it took.
        Raises :class:`ClusterError` as soon as a node has ended on its own (a port taken, a
        bad config: its log is quoted), or when ``timeout`` passes. Call it before relying on
        the whole cluster: a leader can be elected while one node is still failing to start."""
        t0 = time.monotonic()
        with StatusPoller(self) as poller:
            while True:
                self.check_no_crash()
                statuses = await poller.poll()
                silent = [n for n in self.spec.nodes if statuses.get(n) is None]
                if not silent:
                    return time.monotonic() - t0
                if time.monotonic() - t0 > timeout:
                    names = ", ".join(silent)
                    raise ClusterError(f"{names} did not answer within {timeout:.1f}s")
                await asyncio.sleep(0.02)

    async def wait_for_leader(
        self, timeout: float, exclude: Iterable[str] = (), min_term: int = 0
    ) -> tuple[str, int, float]:
        """Poll until a node (not in ``exclude``) leads in a term >= ``min_term``; returns the
        leader, its term and how long it took."""
        t0 = time.monotonic()
        skip = set(exclude)
        while True:
            self.check_no_crash()
            found = await self.leader()
            if found is not None and found[0] not in skip and found[1] >= min_term:
                return found[0], found[1], time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise ClusterError(f"no leader within {timeout:.1f}s (last seen: {found})")
            await asyncio.sleep(0.01)


def leader_of(statuses: Statuses) -> tuple[str, int] | None:
    """The node that reports leading in the highest term, and that term."""
    best: tuple[str, int] | None = None
    for node, st in statuses.items():
        if st and st.get("role") == "leader":
            term = int(st.get("term", 0))
            if best is None or term > best[1]:
                best = (node, term)
    return best


class StatusPoller:
    """Every node's own status, asked concurrently on its direct client port (one client per
    node, so a silent node costs its own timeout, not everyone's). A dead or paused process
    counts as silent without being asked."""

    def __init__(self, cluster: LocalCluster, timeout: float = 0.25) -> None:
        from raft.client import KVClient

        self.cluster = cluster
        keys = cluster.keys(ADMIN)
        self.clients: dict[str, KVClient] = {
            n: KVClient({n: a}, timeout=timeout, attempt_timeout=timeout, keys=keys)
            for n, a in cluster.client_addr.items()
        }

    async def one(self, node: str) -> dict[str, Any] | None:
        from raft.client import KVError

        if not self.cluster.alive(node) or self.cluster.paused(node):
            return None
        try:
            return await self.clients[node].status(node)
        except KVError:
            return None

    async def poll(self) -> Statuses:
        nodes = list(self.clients)
        found = await asyncio.gather(*(self.one(n) for n in nodes))
        return dict(zip(nodes, found, strict=True))

    async def until(
        self, ok: Callable[[Statuses], _T | None], timeout: float, interval: float = 0.005
    ) -> tuple[_T, float]:
        """Poll until ``ok(statuses)`` returns something: that, and when (monotonic s)."""
        deadline = time.monotonic() + timeout
        last: Statuses = {}
        while time.monotonic() < deadline:
            last = await self.poll()
            found = ok(last)
            if found is not None:
                return found, time.monotonic()
            await asyncio.sleep(interval)
        raise ClusterError(f"condition not reached within {timeout}s; last statuses: {last}")

    def close(self) -> None:
        for c in self.clients.values():
            c.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---- orbital cluster up ---------------------------------------------------------------------
def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    up = sub.add_parser("up", help="run a local cluster in the foreground until Ctrl-C")
    up.add_argument("--nodes", type=int, default=5, help="number of nodes (default 5)")
    up.add_argument("--dir", type=Path, help="work directory (default: a new temp dir)")
    up.add_argument("--no-toxiproxy", action="store_true", help="nodes talk directly")
    up.add_argument(
        "--json", action="store_true", help="once ready, print the cluster as one JSON line"
    )
    up.add_argument(
        "--no-curve", action="store_true", help="no CURVE keys (traffic unauthenticated)"
    )


def run(args: argparse.Namespace) -> int:
    """Exit 0 never (it runs until stopped), 1 a node exited, 2 could not start, 130/143/129
    stopped by Ctrl-C/SIGTERM/SIGHUP (every process stopped first)."""
    if not 1 <= args.nodes <= 15:
        print("orbital cluster: --nodes must be between 1 and 15", file=sys.stderr)
        return 2
    workdir = args.dir or Path(tempfile.mkdtemp(prefix="orbital-cluster-"))
    spec = ClusterSpec(
        nodes=tuple(f"n{i + 1}" for i in range(args.nodes)),
        toxiproxy=not args.no_toxiproxy,
        curve=not args.no_curve,
    )
    try:
        with LocalCluster(spec, workdir) as cluster:
            return _serve(cluster, args.json)
    except KeyboardInterrupt:
        print("orbital cluster: stopped", file=sys.stderr)
        return signals.exit_code()
    except (ClusterError, ToxiproxyError) as exc:
        print(f"orbital cluster: {exc}", file=sys.stderr)
        return 2


def _serve(cluster: LocalCluster, as_json: bool) -> int:
    spec = cluster.spec
    asyncio.run(cluster.wait_ready(READY_TIMEOUT_S))
    found = asyncio.run(cluster.wait_for_leader(10 * spec.election_timeout_s))
    nodes: dict[str, dict[str, Any]] = {
        n: {
            "raft": cluster.raft_addr[n],
            "client": cluster.client_addr[n],
            "metrics": f"http://{cluster.metrics_addr[n]}/metrics",
            "pid": cluster.procs[n].pid,
        }
        for n in spec.nodes
    }
    info = {
        "config": str(cluster.config_path),
        "keys": str(cluster.keys_dir) if spec.curve else None,
        "nodes": nodes,
        "toxiproxy_pid": None if cluster.server is None else cluster.server.pid,
        "leader": found[0],
        "term": found[1],
    }
    if as_json:
        print(json.dumps(info), flush=True)
    else:
        print(f"cluster file: {cluster.config_path}")
        for n, d in nodes.items():
            print(f"  {n}: raft {d['raft']}  client {d['client']}  metrics {d['metrics']}")
        if spec.curve:
            print(f"keys: {cluster.keys_dir} (CURVE on every socket)")
        print(f"leader: {found[0]} (term {found[1]}) after {found[2]:.3f}s")
        print(f"try: orbital kv --config {cluster.config_path} put x 1")
        print("Ctrl-C stops the cluster", flush=True)
    while all(cluster.alive(n) for n in spec.nodes):
        time.sleep(0.5)
    print("orbital cluster: a node exited; see its node.log", file=sys.stderr)
    return 1
