"""``orbital node``: one Raft node process serving the replicated KV store.

Theory of operation
-------------------
The process reads the cluster file (TOML, validated by :class:`ClusterConfig`; a bad file is
reported naming the field, exit 2), opens :class:`~raft.storage.FileStorage` on the node's data
directory, and runs one :class:`~raft.node.RaftNode` over a :class:`~raft.transport.ZmqTransport`
with a :class:`~raft.kv.KVStore`, all on one asyncio loop. SIGTERM or SIGINT stop it cleanly
(the batch in progress finishes, sockets close with linger 0, storage is closed).

Cluster file::

    cluster_id = "demo"
    data_dir = "data"            # each node uses data_dir/<id> unless it sets its own
    tick_ms = 10
    election_ticks = 15
    heartbeat_ticks = 3
    snapshot_entries = 10000     # compact after this many applied entries (0: never)
    snapshot_chunk_bytes = 1048576   # InstallSnapshot sends the snapshot in chunks this big
    lease_read = false           # serve reads on a leader lease (no heartbeat round): safe
    lease_drift = 0.1            #   only while clock rates differ by at most this fraction

    [nodes.n1]
    raft = "127.0.0.1:7001"      # the node's ROUTER for Raft messages
    client = "127.0.0.1:8001"    # the node's ROUTER for clients
    [nodes.n1.peers]             # optional: where n1 reaches its peers (Toxiproxy proxies)
    n2 = "127.0.0.1:9012"

    [nodes.n4]
    initial = false              # not in the bootstrap configuration: joins by membership change

Client protocol (one JSON object per ZeroMQ frame, DEALER to the node's client ROUTER)::

    {"id": 7, "op": "get", "key": "x"}
    {"id": 8, "op": "put", "key": "x", "value": 3, "client": "w1", "seq": 12}
    {"id": 9, "op": "cas", "key": "x", "expected": 3, "new": 4, "client": "w1", "seq": 13}
    {"id": 10, "op": "status"}   {"op": "transfer", "to": "n2"}
    {"op": "membership", "action": "add_voter" | "add_learner" | "remove", "node": "n4"}

Replies: ``{"id": 7, "ok": true, "value": 3, "node": "n1"}``, or ``"ok": false`` with an
``error`` code. Definite rejections (the command did not and will not take effect):
``not_leader`` (with ``leader`` and ``leader_client`` when known), ``busy`` (back-pressure),
``lost`` (overwritten by another leader), ``mismatch`` (cas; ``value`` is the current value),
``stale``, ``read_failed``, ``bad_request``, ``refused`` (membership). Indefinite:
``unknown`` (timed out or covered by a snapshot: it may take effect).

Admission control: at most ``max_in_flight`` requests are being worked on at once. Beyond
that a request is answered ``busy`` at once — its frame is parsed only for its ``id``, no
task is created, nothing reaches the node — so a flood costs the node a bounded amount of
work and memory, and every request still gets an answer. Writes run without a task: the
proposal's future answers the client from a done-callback; one sweeper timer (not a timer per
request) turns writes older than ``REQUEST_TIMEOUT_S`` into ``unknown``. Requests are read by
a :class:`~raft.transport.ZmqReader` in bursts of ``SERVE_BURST`` per event-loop iteration, and
the node steps Raft messages and ticks before client work, so heartbeats keep going out under
any load.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import faulthandler
import json
import logging
import os
import platform
import signal
import sys
import time
import tomllib
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, Literal, TypeVar

import zmq
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from raft.core.errors import ConfChangeError, NotLeader, ProposalDropped, RaftError
from raft.core.raft import RaftConfig
from raft.core.types import ConfChange, ConfChangeType, NodeId
from raft.kv import Cas, KVStore, Write, decode_result, encode_command
from raft.node import NodeStopped, OutcomeUnknown, ProposalLost, RaftNode, ReadFailed
from raft.storage import FileStorage, StorageError
from raft.transport import ZmqReader, ZmqTransport

__all__ = ["ClusterConfig", "ConfigError", "NodeConfig", "configure", "load_config", "run"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

#: how long the server waits for a command to be applied before answering "unknown"
REQUEST_TIMEOUT_S = 5.0
MAX_REQUEST_BYTES = 1 << 20
#: requests worked on at once; beyond this they are answered "busy" at once
MAX_IN_FLIGHT = 1024
#: the serving loop yields to the event loop after this many frames in a row
SERVE_BURST = 256
#: how often the sweeper looks for writes past their deadline
SWEEP_S = 0.1
#: replies queued per client connection before ZeroMQ drops them (bounded memory)
REPLY_HWM = 100_000


# ==== the cluster file ========================================================================
def _check_loopback(addr: str) -> str:
    host, sep, port = addr.rpartition(":")
    if not sep or host != "127.0.0.1" or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"must be 127.0.0.1:PORT, got {addr!r}")
    return addr


class NodeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    raft: str
    client: str
    peers: dict[str, str] = {}
    data_dir: str | None = None
    initial: bool = True

    @field_validator("raft", "client")
    @classmethod
    def _loopback(cls, v: str) -> str:
        return _check_loopback(v)

    @field_validator("peers")
    @classmethod
    def _peer_loopback(cls, v: dict[str, str]) -> dict[str, str]:
        for addr in v.values():
            _check_loopback(addr)
        return v


class ClusterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cluster_id: str = Field(min_length=1)
    data_dir: str = "data"
    tick_ms: float = Field(default=10.0, gt=0)
    election_ticks: int = Field(default=15, ge=2)
    heartbeat_ticks: int = Field(default=3, ge=1)
    snapshot_entries: int = Field(default=10_000, ge=0)
    snapshot_chunk_bytes: int = Field(default=1 << 20, ge=1)
    max_uncommitted: int = Field(default=20_000, ge=1)
    lease_read: bool = False  # reads on a leader lease: safe only within lease_drift
    lease_drift: float = Field(default=0.1, ge=0, lt=1)
    nodes: dict[str, NodeConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> ClusterConfig:
        if self.heartbeat_ticks >= self.election_ticks:
            raise ValueError("heartbeat_ticks must be < election_ticks")
        for nid, node in self.nodes.items():
            unknown = sorted(set(node.peers) - set(self.nodes))
            if unknown:
                raise ValueError(f"nodes.{nid}.peers: unknown node(s) {unknown}")
        if not any(n.initial for n in self.nodes.values()):
            raise ValueError("nodes: at least one node must have initial = true")
        return self

    # -- derived ------------------------------------------------------------------------------
    def initial_voters(self) -> list[str]:
        return sorted(n for n, c in self.nodes.items() if c.initial)

    def peer_addresses(self, node_id: str) -> dict[NodeId, str]:
        """Where ``node_id`` sends to each peer: its override, else the peer's own address."""
        own = self.nodes[node_id].peers
        return {
            NodeId(p): own.get(p, c.raft) for p, c in sorted(self.nodes.items()) if p != node_id
        }

    def raft_config(self) -> RaftConfig:
        return RaftConfig(
            election_ticks=self.election_ticks,
            heartbeat_ticks=self.heartbeat_ticks,
            snapshot_entries=self.snapshot_entries,
            snapshot_chunk_bytes=self.snapshot_chunk_bytes,
            max_uncommitted=self.max_uncommitted,
            lease_read=self.lease_read,
            lease_drift=self.lease_drift,
        )


class ConfigError(ValueError):
    """The cluster file is missing, not TOML, or invalid; the message names the field."""


def load_config(path: str | os.PathLike[str]) -> tuple[ClusterConfig, Path]:
    """The validated cluster file and the directory relative paths are resolved against."""
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    try:
        return ClusterConfig.model_validate(raw), p.resolve().parent
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False, include_input=False):
            loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
            problems.append(f"{loc}: {err['msg']}")
        raise ConfigError(f"{p}: " + "; ".join(problems)) from None


def node_data_dir(cfg: ClusterConfig, base: Path, node_id: str) -> Path:
    own = cfg.nodes[node_id].data_dir
    return base / (own if own is not None else os.path.join(cfg.data_dir, node_id))


# ==== the client-facing server ================================================================
class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: int | str | None = None
    op: Literal["get", "put", "cas", "status", "transfer", "membership"]
    key: str | None = None
    value: int | None = None
    expected: int | None = None
    new: int | None = None
    client: str | None = None
    seq: int = Field(default=0, ge=0)
    to: str | None = None
    action: Literal["add_voter", "add_learner", "remove"] | None = None
    node: str | None = None


class ClientServer:
    """Answers client requests for one node (see the module docstring for the protocol)."""

    def __init__(
        self,
        node: RaftNode[KVStore],
        cfg: ClusterConfig,
        address: str,
        *,
        max_in_flight: int = MAX_IN_FLIGHT,
    ) -> None:
        self.node = node
        self.cfg = cfg
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self.refused = 0  #: requests answered "busy" by admission control
        self._closed = False
        # its own context (I/O thread): sharing the transport's was measured to lengthen the
        # 1-client p99 (4 -> 6-9 ms), the client and the Raft traffic queueing behind each other
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST_BYTES)
        self._sock.setsockopt(zmq.SNDHWM, REPLY_HWM)
        self._sock.bind(f"tcp://{address}")
        # writes are queued with the node during a burst and stepped together at its end
        self._reader = ZmqReader(
            self._sock, self._on_frames, burst=SERVE_BURST, on_burst_end=node.kick
        )
        self._tasks: set[asyncio.Task[None]] = set()
        #: writes in flight -> their deadline (loop time), oldest first
        self._writes: dict[asyncio.Future[bytes], float] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._ok_tail = f', "node": {json.dumps(node.id)}}}'.encode()

    async def serve(self) -> None:
        """Answer requests until cancelled."""
        self._reader.start()
        try:
            await asyncio.Event().wait()
        finally:
            self._reader.stop()

    def _on_frames(self, parts: list[bytes]) -> None:
        if len(parts) == 2:
            self._admit(parts[0], parts[1])

    def _admit(self, ident: bytes, frame: bytes) -> None:
        """Refuse (``busy``), reject (``bad_request``), or start working on one request."""
        if self.in_flight >= self.max_in_flight:
            self.refused += 1
            busy = {"ok": False, "error": "busy", "message": "too many requests in flight"}
            self._send(ident, _request_id(frame), busy)
            return
        try:
            req = Request.model_validate_json(frame)
        except ValidationError as exc:
            err = exc.errors(include_url=False, include_input=False)[0]
            loc = ".".join(str(x) for x in err["loc"])
            bad = {"ok": False, "error": "bad_request", "message": f"{loc}: {err['msg']}"}
            self._send(ident, None, bad)
            return
        self.in_flight += 1
        if req.op in ("put", "cas"):
            self._start_write(ident, req)
            return
        task = asyncio.create_task(self._answer(ident, req))
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self.in_flight -= 1

    async def _answer(self, ident: bytes, req: Request) -> None:
        self._send(ident, req.id, await self.handle(req))

    def _send(self, ident: bytes, rid: int | str | None, reply: dict[str, Any]) -> None:
        if self._closed:
            return
        reply["id"] = rid
        reply["node"] = self.node.id
        self._send_frame(ident, json.dumps(reply).encode())

    def _send_frame(self, ident: bytes, frame: bytes) -> None:
        # a ROUTER never blocks: the reply is queued, or dropped if the client is gone
        with contextlib.suppress(zmq.ZMQError):
            self._sock.send_multipart([ident, frame], zmq.NOBLOCK)
        self._reader.recheck()

    # -- writes: no task, a callback on the proposal's future ----------------------------------
    def _start_write(self, ident: bytes, req: Request) -> None:
        try:
            fut = self.node.propose(self._command(req), wake=False)  # the burst end kicks
        except (RaftError, ValueError) as exc:
            self.in_flight -= 1
            self._send(ident, req.id, self._error_reply(exc))
            return
        loop = asyncio.get_running_loop()
        self._writes[fut] = loop.time() + REQUEST_TIMEOUT_S
        fut.add_done_callback(partial(self._write_done, ident, req.id))
        if self._sweeper is None:
            self._sweeper = loop.call_later(SWEEP_S, self._sweep)

    def _sweep(self) -> None:
        """Cancel the writes past their deadline (their callbacks answer ``unknown``)."""
        self._sweeper = None
        writes = self._writes
        now = asyncio.get_running_loop().time()
        while writes:
            fut, deadline = next(iter(writes.items()))
            if deadline > now:
                break
            del writes[fut]
            fut.cancel()
        if writes:
            self._sweeper = asyncio.get_running_loop().call_later(SWEEP_S, self._sweep)

    def _write_done(self, ident: bytes, rid: int | str | None, fut: asyncio.Future[bytes]) -> None:
        self._writes.pop(fut, None)
        self.in_flight -= 1
        if fut.cancelled():
            reply: dict[str, Any] = {"ok": False, "error": "unknown", "message": "timed out"}
        elif (exc := fut.exception()) is not None:
            reply = self._error_reply(exc)
        else:
            reply = self._write_result(fut.result())
            if reply is _OK:  # the common answer, without a JSON encoder
                if not self._closed:
                    head = b'{"ok": true, "id": ' + json.dumps(rid).encode()
                    self._send_frame(ident, head + self._ok_tail)
                return
        self._send(ident, rid, reply)

    @staticmethod
    def _command(req: Request) -> bytes:
        key = _need(req.key, "key")
        op: Write | Cas
        if req.op == "put":
            op = Write(key=key, value=_need(req.value, "value"))
        else:
            op = Cas(key=key, expected=req.expected, new=_need(req.new, "new"))
        return encode_command(op, req.client, req.seq)

    @staticmethod
    def _write_result(raw: bytes) -> dict[str, Any]:
        result = decode_result(raw)
        if result.ok:
            return _OK
        return {"ok": False, "error": result.error, "value": result.value}

    async def handle(self, req: Request) -> dict[str, Any]:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                return await self._dispatch(req)
        except TimeoutError:
            return {"ok": False, "error": "unknown", "message": "timed out"}
        except (RaftError, ValueError) as exc:
            return self._error_reply(exc)

    def _error_reply(self, exc: BaseException) -> dict[str, Any]:
        if isinstance(exc, NotLeader):
            return self._not_leader(exc.leader_hint)
        if isinstance(exc, ProposalDropped):
            return {"ok": False, "error": "busy", "message": str(exc)}
        if isinstance(exc, ProposalLost):
            return {"ok": False, "error": "lost", "message": str(exc)}
        if isinstance(exc, ReadFailed):
            return {"ok": False, "error": "read_failed", "message": str(exc)}
        if isinstance(exc, ConfChangeError):
            return {"ok": False, "error": "refused", "message": str(exc)}
        if isinstance(exc, OutcomeUnknown | NodeStopped):
            return {"ok": False, "error": "unknown", "message": str(exc)}
        if isinstance(exc, RaftError | ValueError):
            return {"ok": False, "error": "bad_request", "message": str(exc)}
        raise exc

    def _not_leader(self, hint: str | None) -> dict[str, Any]:
        reply: dict[str, Any] = {"ok": False, "error": "not_leader", "leader": hint}
        if hint is not None and hint in self.cfg.nodes:
            reply["leader_client"] = self.cfg.nodes[hint].client
        return reply

    async def _dispatch(self, req: Request) -> dict[str, Any]:
        if req.op == "status":  # clock_s: this process's monotonic clock, as it reads it
            return {"ok": True, "value": {**self.node.status(), "clock_s": time.monotonic()}}
        if req.op == "get":
            await self.node.read()
            return {"ok": True, "value": self.node.sm.get(_need(req.key, "key"))}
        if req.op in ("put", "cas"):
            return dict(self._write_result(await self.node.submit(self._command(req))))
        if req.op == "transfer":
            await self.node.transfer_leader(_need(req.to, "to"))
            return {"ok": True}
        return await self._membership(req)

    async def _membership(self, req: Request) -> dict[str, Any]:
        action = ConfChangeType(_need(req.action, "action"))
        await self.node.change_membership(ConfChange(action, NodeId(_need(req.node, "node"))))
        return {"ok": True, "value": self.node.status()}

    def close(self) -> None:
        self._closed = True
        self._reader.stop()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for t in self._tasks:
            t.cancel()
        self._sock.close(linger=0)
        self._ctx.term()


#: the reply to a successful write (never mutated: the fast path sends it pre-encoded)
_OK: dict[str, Any] = {"ok": True}


def _request_id(frame: bytes) -> int | str | None:
    """The ``id`` of a request, if its frame is a JSON object with a valid one."""
    try:
        obj = json.loads(frame)
    except ValueError:
        return None
    rid = obj.get("id") if isinstance(obj, dict) else None
    return rid if isinstance(rid, int | str) and not isinstance(rid, bool) else None


def _need(value: _T | None, name: str) -> _T:
    if value is None:
        raise ValueError(f"missing field {name!r}")
    return value


# ==== the process =============================================================================
def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="the cluster file (TOML)")
    parser.add_argument("--id", required=True, help="this node's id (a key of [nodes])")
    parser.add_argument("--roles", help="roles.jsonl path (default: DATA_DIR/roles.jsonl)")
    parser.add_argument("--seed", type=int, help="seed of the election-timeout RNG")
    parser.add_argument("--quiet", action="store_true", help="no timeline lines on stdout")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    # ``kill -USR1 PID`` prints every thread's stack to the node's output (its node.log): how
    # the chaos runner shows where a node that stopped answering is stuck
    with contextlib.suppress(AttributeError, ValueError, OSError):  # no file descriptor
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        cfg, base = load_config(args.config)
    except ConfigError as exc:
        print(f"orbital node: {exc}", file=sys.stderr)
        return 2
    if args.id not in cfg.nodes:
        print(
            f"orbital node: --id {args.id!r} is not in [nodes] ({', '.join(cfg.nodes)})",
            file=sys.stderr,
        )
        return 2
    try:
        asyncio.run(serve_node(cfg, base, args))
    except (OSError, zmq.ZMQError, RaftError, StorageError) as exc:
        print(f"orbital node {args.id}: {exc}", file=sys.stderr)
        return 1
    return 0


async def serve_node(cfg: ClusterConfig, base: Path, args: argparse.Namespace) -> None:
    node_id: str = args.id
    me = cfg.nodes[node_id]
    data_dir = node_data_dir(cfg, base, node_id)
    storage = FileStorage(data_dir)
    transport = ZmqTransport(NodeId(node_id), cfg.cluster_id, me.raft, cfg.peer_addresses(node_id))
    try:
        node = RaftNode(
            node_id,
            cfg.initial_voters() if me.initial else [],
            transport,
            storage,
            KVStore(),
            cfg.raft_config(),
            tick_ms=cfg.tick_ms,
            seed=args.seed,
            record_clock=system_monotonic_ns,
            timeline=None if args.quiet else _print_line,
            roles_path=Path(args.roles) if args.roles else data_dir / "roles.jsonl",
        )
        server = ClientServer(node, cfg, me.client)
    except BaseException:
        transport.close()
        storage.close()
        raise
    await _run_until_signal(node, server, storage)


async def _run_until_signal(
    node: RaftNode[KVStore], server: ClientServer, storage: FileStorage
) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, node.stop)
    serving = asyncio.create_task(server.serve())
    try:
        await node.run()
    finally:
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)
        server.close()
        storage.close()


#: ``clock_gettime`` by number, per machine: a raw system call is not faked by an
#: LD_PRELOAD library (libfaketime) that fakes the libc function
_SYS_CLOCK_GETTIME = {"x86_64": 228, "aarch64": 113}


class _Timespec(ctypes.Structure):
    _fields_ = [("sec", ctypes.c_long), ("nsec", ctypes.c_long)]


def _raw_monotonic() -> Callable[[], int] | None:
    number = _SYS_CLOCK_GETTIME.get(platform.machine())
    if sys.platform != "linux" or number is None:
        return None
    syscall = ctypes.CDLL(None, use_errno=True).syscall
    ts = _Timespec()
    ref = ctypes.byref(ts)
    clock = time.CLOCK_MONOTONIC

    def read() -> int:
        if syscall(number, clock, ref) != 0:
            return time.monotonic_ns()
        return int(ts.sec) * 1_000_000_000 + int(ts.nsec)

    return read


def system_monotonic_ns() -> int:
    """The system's CLOCK_MONOTONIC in ns, also when this process's clock is faked (for the
    records the harness lines up with its own clock)."""
    return _RAW_MONOTONIC() if _RAW_MONOTONIC is not None else time.monotonic_ns()


_RAW_MONOTONIC = _raw_monotonic()


def _print_line(line: str) -> None:
    print(line, flush=True)
