"""A local cluster of real ``orbital node`` processes, wired through Toxiproxy.

Theory of operation
-------------------
``LocalCluster`` is :class:`harness.local.Cluster` running
:class:`harness.systems.orbital.OrbitalSystem` from a :class:`ClusterSpec`. ``start()`` picks
free loopback ports (a Raft, a client and a metrics port per node), starts a Toxiproxy server
and creates a :class:`~chaos.toxiproxy.ProxyNetwork`: one proxy per directed node link i->j,
and one per (client source, node). The system writes ``cluster.toml`` in which each node's
``peers`` are the proxies it must dial; every node runs as its own process
(:class:`~chaos.process.ProcessManager`), with its output in ``nodes/<id>/node.log``, its
data in ``nodes/<id>/data`` and its role changes in ``nodes/<id>/roles.jsonl``.

Every fault goes through the cluster: network faults to the proxy network, process faults
(SIGKILL, SIGSTOP/SIGCONT, restart on the same data directory) to the process manager. Each is
reported to ``on_fault(kind, action, detail)`` so a runner can write ``faults.jsonl``.

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
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self, TypeVar

from chaos.clock import FakeClock
from chaos.toxiproxy import ToxiproxyError
from harness import signals
from harness.local import Cluster, ClusterError, ClusterOptions, FaultSink
from harness.systems.orbital import OrbitalSystem
from raft.security import ADMIN, ClientKeys
from raft.security import CLIENT as CLIENT_KEY

if TYPE_CHECKING:
    from raft.client import KVClient

__all__ = ["READY_TIMEOUT_S", "ClusterError", "ClusterSpec", "LocalCluster", "StatusPoller"]

Statuses = dict[str, dict[str, Any] | None]
_T = TypeVar("_T")

#: how long every node of a starting cluster has to answer its status (Python start-up and
#: imports take seconds on a loaded 2-core machine)
READY_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class ClusterSpec(ClusterOptions):
    """What to run: node ids, client sources (:class:`~harness.local.ClusterOptions`), and
    the cluster file's Raft settings."""

    cluster_id: str = "orbital"
    tick_ms: float = 10.0
    election_ticks: int = 15
    heartbeat_ticks: int = 3
    snapshot_entries: int = 10_000
    snapshot_chunk_bytes: int = 1 << 20
    max_uncommitted: int = 20_000
    lease_read: bool = False
    lease_drift: float = 0.1
    curve: bool = True  #: CURVE keys on every socket (raft.security)

    @property
    def election_timeout_s(self) -> float:
        return self.election_ticks * self.tick_ms / 1000


class LocalCluster(Cluster):
    """Orbital Raft nodes as a :class:`~harness.local.Cluster` (module docstring)."""

    def __init__(
        self,
        spec: ClusterSpec,
        workdir: Path,
        *,
        on_fault: FaultSink | None = None,
        run_start_ns: int | None = None,
    ) -> None:
        system = OrbitalSystem(
            cluster_id=spec.cluster_id,
            tick_ms=spec.tick_ms,
            election_ticks=spec.election_ticks,
            heartbeat_ticks=spec.heartbeat_ticks,
            snapshot_entries=spec.snapshot_entries,
            snapshot_chunk_bytes=spec.snapshot_chunk_bytes,
            max_uncommitted=spec.max_uncommitted,
            lease_read=spec.lease_read,
            lease_drift=spec.lease_drift,
            curve=spec.curve,
        )
        super().__init__(system, spec, workdir, on_fault=on_fault, run_start_ns=run_start_ns)
        self.orbital = system
        self.spec: ClusterSpec = spec
        self.config_path = self.workdir / "cluster.toml"

    @property
    def raft_addr(self) -> dict[str, str]:
        return self.direct_addresses("peer")

    @property
    def client_addr(self) -> dict[str, str]:
        return self.direct_addresses("client")

    @property
    def metrics_addr(self) -> dict[str, str]:
        """Each node's Prometheus metrics (HTTP, direct: never through a proxy)."""
        return self.direct_addresses("metrics")

    # ---- CURVE keys (the system creates them in ``keys/``) -----------------------------------
    @property
    def keys_dir(self) -> Path:
        return self.orbital.keys_dir(self)

    @property
    def public_keys(self) -> dict[str, bytes]:
        """Public keys: every node's by id, and the client's and admin's."""
        return self.orbital.public_keys

    def keys(self, role: str = CLIENT_KEY) -> ClientKeys | None:
        """A client's keys (``client`` or ``admin``) for this cluster; None without CURVE."""
        return self.orbital.keys(role)

    def kv_client(
        self, addresses: Mapping[str, str] | None = None, *, role: str = CLIENT_KEY, **kw: Any
    ) -> KVClient:
        """A :class:`KVClient` of this cluster holding ``role``'s keys (``addresses``:
        default the direct client ports)."""
        addrs = dict(self.client_addr if addresses is None else addresses)
        return self.orbital.kv_client(addrs, role=role, **kw)

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

    # ---- observation: the node's own status dicts (direct ports) ---------------------------
    async def statuses(self, timeout: float = 0.5) -> Statuses:
        """Each node's own status as the node says it (``orbital kv status``); None for a
        node that did not answer."""
        with StatusPoller(self, timeout) as poller:
            return await poller.poll()


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
