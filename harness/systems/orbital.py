"""Orbital Raft as a system under test: the first implementation of :mod:`harness.system`.

Theory of operation
-------------------
Each node is an ``orbital node`` process (``python -m harness.cli node``) started with the
run's ``cluster.toml``, which :meth:`OrbitalSystem.prepare` writes: every node's Raft, client
and metrics address, its data directory, and, per peer, the address it dials (the proxy of
that directed link: ``peer_addressing = "per-link"``). The node appends its role changes to
``nodes/<id>/roles.jsonl`` (raw ``CLOCK_MONOTONIC``; the runner rewrites them in run time).

Every socket speaks CURVE unless ``curve = false``: :meth:`OrbitalSystem.prepare` makes a key
pair per node and a client and an admin pair in ``keys/`` (secret keys 0600) and lists the
public keys in the cluster file; every client this system makes holds its role's keys
(:meth:`OrbitalSystem.kv_client`: ``admin`` for status, transfers and membership changes).

The client (:class:`OrbitalClient`) is a :class:`~raft.client.KVClient` with a session of its
own (exactly once across retries), following leader hints; its outcomes map to history
completions: a value is ``ok``, :class:`~raft.client.CasMismatch` is ``fail`` with
``mismatch``, any other :class:`~raft.client.Rejected` is ``fail`` with the server's code,
:class:`~raft.client.Unknown` is ``info``.

Every capability of :mod:`harness.system`: who leads (``status`` on the direct client port),
leader transfer, membership (the spare starts first and is added with ``add_voter``: a
learner the leader promotes once it has caught up), storage replay (the WAL of every node,
:mod:`harness.replay`), record checks (Raft's rules from roles, votes, the commit audit and
exactly-once, :mod:`harness.raft_checks`), the disk layout (``wal/``; a corruption lands in a
record, the hard state or the snapshot, :func:`chaos.disk.pick_corruption`), and clock faults
(a Python process reads the time through libc, which libfaketime replaces).
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomli_w

from harness.history import Op
from harness.replay import ReplayResult
from harness.system import (
    ClusterView,
    Completion,
    NodeCommand,
    NodeStatus,
    Operation,
    PeerAddressing,
)
from harness.workload import client_id
from raft.client import CasMismatch, KVClient, KVError, Rejected, Unknown
from raft.security import ADMIN, ClientKeys, KeyPair, create_key_pair, load_key_pair
from raft.security import CLIENT as CLIENT_KEY

#: how long an added learner may take to catch up before the change is given up
CATCH_UP_TIMEOUT_S = 20.0


class OrbitalClient:
    """A :class:`KVClient` as a :class:`~harness.system.Client` (module docstring)."""

    def __init__(self, client: KVClient) -> None:
        self.kv = client

    async def invoke(self, op: Operation) -> Completion:
        self.kv.last_node = None
        try:
            value = await self._call(op)
        except CasMismatch:
            return Completion("fail", node=self.kv.last_node, error="mismatch")
        except Rejected as exc:
            return Completion("fail", node=self.kv.last_node, error=exc.error)
        except Unknown as exc:
            return Completion("info", node=self.kv.last_node, error=exc.error)
        return Completion("ok", value=value, node=self.kv.last_node)

    async def _call(self, op: Operation) -> int | None:
        if op.f == "read":
            return await self.kv.get(op.key)
        if op.f == "write":
            assert isinstance(op.value, int)
            await self.kv.put(op.key, op.value)
            return None
        assert isinstance(op.value, tuple)
        await self.kv.cas(op.key, op.value[0], op.value[1])
        return None

    async def close(self) -> None:
        self.kv.close()


class OrbitalSystem:
    """Orbital Raft nodes (module docstring); the keyword arguments are the cluster file's
    settings (``docs/library.md``), also accepted as ``[system] options``."""

    name = "orbital"
    ports: tuple[str, ...] = ("peer", "client", "metrics")
    peer_addressing: PeerAddressing = "per-link"
    metrics_port = "metrics"
    log_prefix = "wal/"

    def __init__(
        self,
        *,
        cluster_id: str = "orbital",
        tick_ms: float = 10.0,
        election_ticks: int = 15,
        heartbeat_ticks: int = 3,
        snapshot_entries: int = 10_000,
        snapshot_chunk_bytes: int = 1 << 20,
        max_uncommitted: int = 20_000,
        lease_read: bool = False,
        lease_drift: float = 0.1,
        seed_timeouts: bool = True,
        curve: bool = True,
    ) -> None:
        self.settings: dict[str, Any] = {
            "cluster_id": cluster_id,
            "tick_ms": tick_ms,
            "election_ticks": election_ticks,
            "heartbeat_ticks": heartbeat_ticks,
            "snapshot_entries": snapshot_entries,
            "snapshot_chunk_bytes": snapshot_chunk_bytes,
            "max_uncommitted": max_uncommitted,
            "lease_read": lease_read,
            "lease_drift": lease_drift,
        }
        #: seed each node's election-timeout RNG from the run's seed (and its position)
        self.seed_timeouts = seed_timeouts
        #: CURVE keys on every socket (raft.security): a pair per node, a client and an admin
        #: pair, made by :meth:`prepare` in ``keys/``
        self.curve = curve
        self.public_keys: dict[str, bytes] = {}
        self._pairs: dict[str, KeyPair] = {}
        self._nodes: tuple[str, ...] = ()
        self._status_clients: dict[tuple[asyncio.AbstractEventLoop, str], KVClient] = {}
        #: the stored state read by the last :meth:`replay`
        self.last_replay: ReplayResult | None = None

    def use_timing(
        self, tick_ms: float, election_ticks: int, heartbeat_ticks: int, **knobs: Any
    ) -> None:
        """The scenario's ``[timing]`` (its other knobs too: snapshots, lease reads)."""
        self.settings.update(
            tick_ms=tick_ms, election_ticks=election_ticks, heartbeat_ticks=heartbeat_ticks
        )
        self.settings.update({k: v for k, v in knobs.items() if k in self.settings})

    def config_path(self, cluster: ClusterView) -> Path:
        return cluster.workdir / "cluster.toml"

    def keys_dir(self, cluster: ClusterView) -> Path:
        return cluster.workdir / "keys"

    def _create_keys(self, cluster: ClusterView) -> None:
        keys_dir = self.keys_dir(cluster)
        for name in (*cluster.all_nodes, CLIENT_KEY, ADMIN):
            secret = keys_dir / f"{name}.key_secret"
            pair = load_key_pair(secret) if secret.exists() else create_key_pair(keys_dir, name)
            self._pairs[name] = pair  # (a restarted run reuses its keys)
            self.public_keys[name] = pair.public

    def keys(self, role: str = CLIENT_KEY) -> ClientKeys | None:
        """A client's keys (``client`` or ``admin``); None without CURVE."""
        if not self.curve or not self._pairs:
            return None
        return ClientKeys(self._pairs[role], {n: self.public_keys[n] for n in self._nodes})

    # ---- the System protocol --------------------------------------------------------------
    def prepare(self, cluster: ClusterView) -> None:
        """Write ``cluster.toml`` (per node: its addresses, data dir, and its peers' proxies;
        with CURVE its public key and secret key file, and the client and admin keys)."""
        self._nodes = cluster.all_nodes
        if self.curve:
            self._create_keys(cluster)
        nodes: dict[str, Any] = {}
        for node in cluster.all_nodes:
            nodes[node] = {
                "raft": cluster.listen(node, "peer"),
                "client": cluster.listen(node, "client"),
                "metrics": cluster.listen(node, "metrics"),
                "data_dir": str(cluster.data_dir(node)),
                "initial": node in cluster.nodes,
                "peers": {p: cluster.dial(node, p) for p in cluster.all_nodes if p != node},
            }
            if self.curve:
                nodes[node]["public_key"] = self.public_keys[node].decode()
                secret = self.keys_dir(cluster) / f"{node}.key_secret"
                nodes[node]["secret_key_file"] = str(secret)
        doc: dict[str, Any] = {**self.settings, "nodes": nodes}
        if self.curve:
            doc["security"] = {
                "client_keys": [self.public_keys[CLIENT_KEY].decode()],
                "admin_keys": [self.public_keys[ADMIN].decode()],
            }
        self.config_path(cluster).write_bytes(tomli_w.dumps(doc).encode())

    def command(self, node: str, cluster: ClusterView) -> NodeCommand:
        argv = [sys.executable, "-m", "harness.cli", "node"]
        argv += ["--config", str(self.config_path(cluster)), "--id", node]
        argv += ["--roles", str(cluster.node_dir(node) / "roles.jsonl")]
        if self.seed_timeouts and cluster.seed is not None:
            argv += ["--seed", str(cluster.seed * 1000 + cluster.all_nodes.index(node))]
        env = {"ORBITAL_RUN_START_NS": str(cluster.run_start_ns), "PYTHONUNBUFFERED": "1"}
        return NodeCommand(argv, env)

    async def is_up(self, node: str, cluster: ClusterView) -> bool:
        return await self.status(node, cluster, 0.25) is not None

    def open_client(
        self, addresses: Mapping[str, str], cluster: ClusterView, *, process: int, timeout: float
    ) -> OrbitalClient:
        attempt = min(1.0, max(0.2, timeout / 3))
        session = client_id(cluster.seed or 0, process)  # harness.exactly_once finds it by this
        kv = self.kv_client(addresses, client_id=session, timeout=timeout, attempt_timeout=attempt)
        return OrbitalClient(kv)

    def kv_client(
        self, addresses: Mapping[str, str], *, role: str = CLIENT_KEY, **kw: Any
    ) -> KVClient:
        """A client of the nodes at ``addresses``, as ``role`` (``client`` for the workload,
        ``admin`` for status, transfers and membership changes: the one place a client of
        this system is made), holding that role's CURVE keys."""
        return KVClient(dict(addresses), keys=self.keys(role), **kw)

    # ---- capabilities -----------------------------------------------------------------------
    def _status_client(self, node: str, cluster: ClusterView, timeout: float) -> KVClient:
        loop = asyncio.get_running_loop()
        for key in [k for k in self._status_clients if k[0].is_closed()]:
            self._status_clients.pop(key).close()
        found = self._status_clients.get((loop, node))
        if found is None:
            address = {node: cluster.listen(node, "client")}
            found = self.kv_client(address, role=ADMIN, timeout=timeout, attempt_timeout=timeout)
            self._status_clients[(loop, node)] = found
        return found

    def close(self) -> None:
        """Close every status client (the cluster has stopped)."""
        for client in self._status_clients.values():
            client.close()
        self._status_clients.clear()

    async def disconnect(self) -> None:
        """Close the status clients of the running event loop."""
        loop = asyncio.get_running_loop()
        for key in [k for k in self._status_clients if k[0] is loop]:
            self._status_clients.pop(key).close()

    async def status(self, node: str, cluster: ClusterView, timeout: float) -> NodeStatus | None:
        try:
            st = await self._status_client(node, cluster, timeout).status(node)
        except KVError:
            return None
        return NodeStatus(
            str(st.get("role")), int(st.get("term", 0)), int(st.get("commit", 0)),
            int(st.get("applied", 0)), int(st.get("last_index", 0)), st,
        )  # fmt: skip

    async def transfer_leader(self, leader: str, target: str, cluster: ClusterView) -> None:
        address = {leader: cluster.listen(leader, "client")}
        async with self.kv_client(address, role=ADMIN, timeout=1.0, attempt_timeout=0.5) as client:
            await client.transfer(target)

    async def _change(self, action: str, node: str, cluster: ClusterView) -> dict[str, Any]:
        members = [n for n in cluster.members if n != node or action != "add_voter"]
        addrs = {n: cluster.listen(n, "client") for n in members}
        async with self.kv_client(addrs, role=ADMIN, timeout=10.0) as client:
            try:
                return await client.membership(action, node)
            except KVError as exc:
                # The client retries a request whose answer was lost; the retry of a change
                # that did take effect is refused as already done: the outcome asked for.
                done = "is already a member" if action.startswith("add") else "is not a member"
                if done in str(exc):
                    return {"already": True, "detail": str(exc)}
                raise RuntimeError(f"membership {action} {node} refused: {exc}") from exc

    async def add_member(self, node: str, cluster: ClusterView) -> dict[str, Any]:
        """Start the spare, add it (a learner the leader promotes once it has caught up:
        dissertation §4.2.1), and wait until the leader lists it among its voters."""
        cluster.start_joiner(node)
        t0 = time.monotonic()
        await self._change("add_voter", node, cluster)
        while time.monotonic() - t0 < CATCH_UP_TIMEOUT_S:
            for member in cluster.members:
                st = await self.status(member, cluster, 1.0)
                if st is not None and st.role == "leader" and node in st.extra.get("voters", []):
                    return {"added": node, "promoted_after_s": round(time.monotonic() - t0, 3)}
            await asyncio.sleep(0.1)
        raise RuntimeError(f"{node} was not promoted within {CATCH_UP_TIMEOUT_S:.0f}s")

    async def remove_member(self, node: str, cluster: ClusterView) -> dict[str, Any]:
        await self._change("remove", node, cluster)
        return {"removed": node}

    def replay(self, data_dirs: Mapping[str, Path]) -> dict[str, Any]:
        """Raft's invariants across every node's WAL (:mod:`harness.replay`); the stored
        state is kept for :meth:`check_record`."""
        from harness.replay import replay_cluster

        self.last_replay = None
        self.last_replay = replay_cluster(dict(data_dirs))
        return self.last_replay.to_dict()

    def check_record(
        self,
        roles: Mapping[str, list[dict[str, Any]]],
        nodes: list[str],
        history: list[Op],
        *,
        seed: int,
        majority: int | None,
    ) -> dict[str, Any]:
        """Raft's own rules from the record (:mod:`harness.raft_checks`): roles, votes, the
        commit audit and the log read back by :meth:`replay` (None if it failed)."""
        from harness.raft_checks import judge_record

        return judge_record(
            self.last_replay, dict(roles), nodes, history, seed=seed, majority=majority
        )

    def pick_corruption(self, data_dir: Path, target: str, seed: int) -> tuple[str, int, Any]:
        from chaos.disk import DiskFaultError, pick_corruption

        try:
            spot = pick_corruption(data_dir, target, random.Random(seed))
        except DiskFaultError as exc:
            raise ValueError(str(exc)) from None
        return spot.path, spot.offset, spot.record
