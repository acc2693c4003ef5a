"""etcd as a system under test: 5 real ``etcd`` members, every link through Toxiproxy.

Theory of operation
-------------------
Each member is its own ``etcd`` process (Debian's ``etcd-server``; ``ETCD_BINARY`` names
another binary) with its data in ``nodes/<id>/data`` and its log in ``nodes/<id>/node.log``.
etcd fsyncs its write-ahead log before it acknowledges (there is no switch to turn that off in
3.4). A member advertises one peer URL, which every other member dials (etcd derives member
ids from it), so the peer links go through Toxiproxy by per-source routing
(:mod:`chaos.nat`, ``peer_addressing = "shared"``): each member runs under its own group id,
and its connections to member ``j`` are sent to the proxy of link ``i -> j``. etcd's peer
transport carries both directions of a link over the connections one side dialed, so a cut of
``i -> j`` drops every connection ``i`` opened to ``j`` (both ways on it): a partition is
exact, a ``one-way`` cut is not one-way for etcd.

Timing comes from the scenario's ``[timing]`` (heartbeat ``heartbeat_ticks * tick_ms``,
election timeout ``election_ticks * tick_ms``) unless ``[system] options`` set
``heartbeat_ms`` / ``election_ms``. etcd 3.4 runs with check-quorum always on and pre-vote
off by default (``pre_vote = true`` turns it on).

The client (:class:`EtcdClient`) speaks etcd's v3 API over gRPC (the protocol buffers that
the ``aetcd`` package ships, compiled; not the JSON gateway): a read is a linearizable
``Range``, a write a ``Put``, a cas a ``Txn`` comparing the value (or, for an expected
``null``, that the key was never created) and putting the new one. Values are decimal text.
A client talks to one member at a time (process ``p`` starts at member ``p mod n``) and moves
to the next after an error. Outcomes: a read that errs is ``fail`` (it changed nothing); a
write or cas is ``fail`` only when it certainly never reached etcd (no connection, or etcd's
"too many requests", refused before proposing), else ``info``.

Capabilities: who leads (``Maintenance.Status`` on each member's direct client address:
its leader id, term, commit and applied index), leader transfer (``MoveLeader``), membership
(``MemberAdd`` then start the spare with ``--initial-cluster-state existing``;
``MemberRemove``), disk layout (its WAL under ``member/wal/``; bbolt's ``member/snap/db`` is
memory-mapped, so the disk fault file system opens it through the page cache; a ``corrupt``
fault flips a byte inside a WAL record). Clock faults
do not apply: etcd is a Go binary, which reads the clock through the vDSO, never through
libc, so libfaketime cannot change it (checked in ``tests/test_etcd.py``). No storage replay.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

# gRPC core logs at INFO to stderr each time we fork a node while its threads run; quiet it
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import grpc
from aetcd import rpc

from harness.system import (
    ClusterView,
    Completion,
    NodeCommand,
    NodeStatus,
    Operation,
    PeerAddressing,
)

ETCD_ENV: Final = "ETCD_BINARY"
#: gRPC channel options: no HTTP proxy from the environment; reconnect fast after a heal
GRPC_OPTIONS: Final = [
    ("grpc.enable_http_proxy", 0),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]
#: errors after which a write certainly did not take effect (never sent, or refused unproposed)
DEFINITE_FAILURES: Final = ("failed to connect to all addresses", "etcdserver: too many requests")
MEMBER_ADD_TIMEOUT_S: Final = 20.0


class EtcdError(RuntimeError):
    """etcd is missing, or refused an administrative call."""


def find_etcd() -> str:
    """The etcd binary: ``$ETCD_BINARY``, else ``etcd`` on PATH."""
    path = os.environ.get(ETCD_ENV) or shutil.which("etcd")
    if not path or not Path(path).is_file():
        raise EtcdError(
            "etcd not found: install Debian's etcd-server (scripts/setup.sh --tests does) "
            f"or set {ETCD_ENV}"
        )
    return path


def _url(address: str) -> str:
    return f"http://{address}"


def channel(address: str) -> Any:
    """A gRPC channel to ``host:port`` on the running event loop."""
    return grpc.aio.insecure_channel(address, options=GRPC_OPTIONS)


# ==== the client ================================================================================
def _outcome_of_error(op: Operation, exc: grpc.aio.AioRpcError, node: str) -> Completion:
    code = exc.code()
    error = f"{code.name if code is not None else 'UNKNOWN'}: {exc.details() or ''}"[:200]
    if op.f == "read" or any(text in error for text in DEFINITE_FAILURES):
        return Completion("fail", node=node, error=error)
    return Completion("info", node=node, error=error)


class EtcdClient:
    """One logical process's client of an etcd cluster (module docstring)."""

    def __init__(self, addresses: Mapping[str, str], *, start: int, timeout: float) -> None:
        self.nodes = sorted(addresses)
        self.addresses = dict(addresses)
        self.timeout = timeout
        self._at = start % len(self.nodes)
        self._channel: Any = None
        self._kv: Any = None

    @property
    def node(self) -> str:
        """The member this client talks to now."""
        return self.nodes[self._at]

    def _stub(self) -> Any:
        if self._kv is None:
            self._channel = channel(self.addresses[self.node])
            self._kv = rpc.KVStub(self._channel)
        return self._kv

    async def _next_node(self) -> None:
        await self.close()
        self._at = (self._at + 1) % len(self.nodes)

    async def invoke(self, op: Operation) -> Completion:
        """Perform ``op`` once on the current member."""
        node = self.node
        try:
            done = await self._call(op)
        except grpc.aio.AioRpcError as exc:
            await self._next_node()
            return _outcome_of_error(op, exc, node)
        if isinstance(done, Completion):
            return done
        return Completion("ok", value=done, node=node)

    async def _call(self, op: Operation) -> int | Completion | None:
        kv, key = self._stub(), op.key.encode()
        if op.f == "read":
            got = await kv.Range(rpc.RangeRequest(key=key), timeout=self.timeout)
            return int(got.kvs[0].value) if got.count else None
        if op.f == "write":
            await kv.Put(
                rpc.PutRequest(key=key, value=str(op.value).encode()), timeout=self.timeout
            )
            return None
        assert isinstance(op.value, tuple)
        expected, new = op.value
        if expected is None:  # the key was never created
            compare = rpc.Compare(
                result=rpc.Compare.EQUAL, target=rpc.Compare.VERSION, key=key, version=0
            )
        else:
            compare = rpc.Compare(
                result=rpc.Compare.EQUAL,
                target=rpc.Compare.VALUE,
                key=key,
                value=str(expected).encode(),
            )
        put = rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=str(new).encode()))
        txn = await kv.Txn(rpc.TxnRequest(compare=[compare], success=[put]), timeout=self.timeout)
        if not txn.succeeded:
            return Completion("fail", node=self.node, error="mismatch")
        return None

    async def close(self) -> None:
        channel_, self._channel, self._kv = self._channel, None, None
        if channel_ is not None:
            await channel_.close()


# ==== the system ================================================================================
class EtcdSystem:
    """etcd members as local processes (module docstring). Options (``[system] options``):
    ``heartbeat_ms``, ``election_ms`` (default: from ``[timing]``), ``snapshot_count``,
    ``pre_vote``, ``binary``, ``log_level``."""

    name = "etcd"
    ports: tuple[str, ...] = ("peer", "client")
    peer_addressing: PeerAddressing = "shared"
    clock_faults_apply = False
    mmap_paths = ("member/snap/db",)
    log_prefix = "member/wal/"

    def __init__(
        self,
        *,
        heartbeat_ms: float | None = None,
        election_ms: float | None = None,
        snapshot_count: int = 10_000,
        pre_vote: bool = False,
        binary: str | None = None,
        log_level: str = "info",
    ) -> None:
        self.heartbeat_ms = heartbeat_ms
        self.election_ms = election_ms
        self.snapshot_count = snapshot_count
        self.pre_vote = pre_vote
        self.binary = binary
        self.log_level = log_level
        self.token = "orbital-etcd"
        #: (event loop, address) -> gRPC channel, for status and admin calls
        self._channels: dict[tuple[asyncio.AbstractEventLoop, str], Any] = {}

    def use_timing(
        self, tick_ms: float, election_ticks: int, heartbeat_ticks: int, **knobs: Any
    ) -> None:
        """Take the scenario's timing where the options did not set it (Orbital's other
        knobs, ``knobs``, do not apply to etcd)."""
        if self.heartbeat_ms is None:
            self.heartbeat_ms = heartbeat_ticks * tick_ms
        if self.election_ms is None:
            self.election_ms = election_ticks * tick_ms

    # ---- the System protocol --------------------------------------------------------------
    def prepare(self, cluster: ClusterView) -> None:
        self.binary = self.binary or find_etcd()
        digest = hashlib.sha256(str(cluster.workdir).encode()).hexdigest()[:12]
        self.token = f"orbital-{digest}"

    def command(self, node: str, cluster: ClusterView) -> NodeCommand:
        joining = node not in cluster.nodes
        members = [m for m in cluster.members if m != node] + [node]
        if not joining:
            members = list(cluster.nodes)
        initial = ",".join(f"{m}={_url(cluster.listen(m, 'peer'))}" for m in members)
        peer, client = _url(cluster.listen(node, "peer")), _url(cluster.listen(node, "client"))
        argv = [
            self.binary or find_etcd(),
            f"--name={node}",
            f"--data-dir={cluster.data_dir(node)}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--initial-cluster={initial}",
            f"--initial-cluster-state={'existing' if joining else 'new'}",
            f"--initial-cluster-token={self.token}",
            f"--heartbeat-interval={round(self.heartbeat_ms or 100)}",
            f"--election-timeout={round(self.election_ms or 1000)}",
            f"--snapshot-count={self.snapshot_count}",
            "--logger=zap",
            "--log-outputs=stderr",
            f"--log-level={self.log_level}",
        ]
        if self.pre_vote:
            argv.append("--pre-vote")
        return NodeCommand(argv)

    async def is_up(self, node: str, cluster: ClusterView) -> bool:
        return await self.status(node, cluster, 0.5) is not None

    def open_client(
        self, addresses: Mapping[str, str], cluster: ClusterView, *, process: int, timeout: float
    ) -> EtcdClient:
        return EtcdClient(addresses, start=process, timeout=timeout)

    # ---- capabilities -----------------------------------------------------------------------
    def _channel(self, address: str) -> Any:
        loop = asyncio.get_running_loop()
        for key in [k for k in self._channels if k[0].is_closed()]:
            del self._channels[key]  # a finished event loop's channel cannot be used or closed
        found = self._channels.get((loop, address))
        if found is None:
            found = self._channels[(loop, address)] = channel(address)
        return found

    def close(self) -> None:
        """Forget every channel (the cluster has stopped; those of a running event loop are
        closed by :meth:`disconnect`)."""
        self._channels.clear()

    async def disconnect(self) -> None:
        """Close the status and admin channels of the running event loop."""
        loop = asyncio.get_running_loop()
        for key in [k for k in self._channels if k[0] is loop]:
            await self._channels.pop(key).close()

    async def _status(self, node: str, cluster: ClusterView, timeout: float) -> Any:
        stub = rpc.MaintenanceStub(self._channel(cluster.listen(node, "client")))
        return await stub.Status(rpc.StatusRequest(), timeout=timeout)

    async def status(self, node: str, cluster: ClusterView, timeout: float) -> NodeStatus | None:
        """The member's own view: leader id, term, commit and applied index."""
        try:
            st = await self._status(node, cluster, timeout)
        except grpc.aio.AioRpcError:
            return None
        me = st.header.member_id
        role = "leader" if st.leader == me else ("follower" if st.leader else "none")
        return NodeStatus(
            role, int(st.raftTerm), int(st.raftIndex), int(st.raftAppliedIndex),
            int(st.raftIndex), {"member_id": f"{me:x}", "leader_id": f"{st.leader:x}"},
        )  # fmt: skip

    async def _members(self, cluster: ClusterView, via: list[str]) -> tuple[str, list[Any]]:
        """The member list, from the first member of ``via`` that answers."""
        last: Exception | None = None
        for node in via:
            stub = rpc.ClusterStub(self._channel(cluster.listen(node, "client")))
            try:
                return node, list(
                    (await stub.MemberList(rpc.MemberListRequest(), timeout=2)).members
                )
            except grpc.aio.AioRpcError as exc:
                last = exc
        raise EtcdError(f"no member answered MemberList: {last}")

    async def _member_id(self, node: str, cluster: ClusterView) -> int:
        _, members = await self._members(cluster, [node, *cluster.members])
        for m in members:
            if m.name == node or _url(cluster.listen(node, "peer")) in m.peerURLs:
                return int(m.ID)
        raise EtcdError(f"{node} is not a member")

    async def transfer_leader(self, leader: str, target: str, cluster: ClusterView) -> None:
        """``MoveLeader`` on the leader, to ``target``'s member id."""
        target_id = await self._member_id(target, cluster)
        stub = rpc.MaintenanceStub(self._channel(cluster.listen(leader, "client")))
        try:
            await stub.MoveLeader(rpc.MoveLeaderRequest(targetID=target_id), timeout=5)
        except grpc.aio.AioRpcError as exc:
            raise EtcdError(f"MoveLeader to {target} refused: {exc.details()}") from None

    async def add_member(self, node: str, cluster: ClusterView) -> dict[str, Any]:
        """``MemberAdd`` with the spare's peer URL (retried while etcd finds it unsafe), then
        start the spare; return once it answers its status."""
        t0 = time.monotonic()
        request = rpc.MemberAddRequest(peerURLs=[_url(cluster.listen(node, "peer"))])
        while True:
            try:
                via = [m for m in cluster.members if m != node]
                stub = rpc.ClusterStub(self._channel(cluster.listen(via[0], "client")))
                added = await stub.MemberAdd(request, timeout=5)
                break
            except grpc.aio.AioRpcError as exc:
                if time.monotonic() - t0 > MEMBER_ADD_TIMEOUT_S:
                    raise EtcdError(f"MemberAdd {node} refused: {exc.details()}") from None
                await asyncio.sleep(0.5)
        cluster.start_joiner(node)
        while await self.status(node, cluster, 0.5) is None:
            if time.monotonic() - t0 > MEMBER_ADD_TIMEOUT_S:
                raise EtcdError(f"{node} did not start within {MEMBER_ADD_TIMEOUT_S:.0f}s")
            await asyncio.sleep(0.1)
        return {"added": node, "member_id": f"{added.member.ID:x}",
                "started_after_s": round(time.monotonic() - t0, 3)}  # fmt: skip

    async def remove_member(self, node: str, cluster: ClusterView) -> dict[str, Any]:
        """``MemberRemove`` of ``node``'s member id (asked of another member)."""
        member_id = await self._member_id(node, cluster)
        others = [m for m in cluster.members if m != node]
        last = ""
        for via in others:
            stub = rpc.ClusterStub(self._channel(cluster.listen(via, "client")))
            try:
                await stub.MemberRemove(rpc.MemberRemoveRequest(ID=member_id), timeout=5)
                return {"removed": node, "member_id": f"{member_id:x}"}
            except grpc.aio.AioRpcError as exc:
                last = exc.details() or ""
        raise EtcdError(f"MemberRemove {node} refused: {last}")

    def pick_corruption(self, data_dir: Path, target: str, seed: int) -> tuple[str, int, Any]:
        """A byte inside a record of etcd's WAL (``middle-record``: any but the last,
        ``last-record``: the last), past its 8-byte length: the record's CRC no longer
        matches. etcd has no separate hard-state or snapshot file of ours to aim at."""
        if target not in ("middle-record", "last-record"):
            raise ValueError(f"etcd: corruption target {target!r} does not apply (its WAL only)")
        records = [
            (path, start, end)
            for path in sorted((data_dir / "member" / "wal").glob("*.wal"))
            for start, end in wal_records(path.read_bytes())
        ]
        records = records[-1:] if target == "last-record" else records[:-1]
        if not records:
            raise ValueError(f"{data_dir}: no WAL record to corrupt ({target})")
        rng = random.Random(seed)
        path, start, end = rng.choice(records)
        return str(path.relative_to(data_dir)), rng.randrange(start + 8, end), start


def wal_records(data: bytes) -> list[tuple[int, int]]:
    """(offset, end) of each record frame of an etcd WAL file: a little-endian uint64 whose low
    56 bits are the record's length and, when its top bit is set, bits 56-58 the padding
    after it; zeros (preallocated space) end the file."""
    out, at = [], 0
    while at + 8 <= len(data):
        field = int.from_bytes(data[at : at + 8], "little")
        length = field & ((1 << 56) - 1)
        pad = (field >> 56) & 0x7 if field >> 63 else 0
        if length == 0 or at + 8 + length + pad > len(data):
            break
        out.append((at, at + 8 + length))
        at += 8 + length + pad
    return out
