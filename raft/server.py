"""``orbital node``: one Raft node process serving the replicated KV store, or your own
state machine (``--state-machine module:Class``).

Theory of operation
-------------------
The process reads the cluster file (TOML, validated by :class:`ClusterConfig`; a bad file is
reported naming the field, exit 2), opens :class:`~raft.storage.FileStorage` on the node's data
directory, and runs one :class:`~raft.node.RaftNode` over a :class:`~raft.transport.ZmqTransport`
with a :class:`~raft.kv.KVStore`, all on one asyncio loop: uvloop's (``ORBITAL_EVENT_LOOP=asyncio``
selects asyncio's own; uvloop was measured faster in alternating 5-node windows, see the
README's benchmarks). SIGTERM, SIGINT or SIGHUP stop it cleanly (the batch in progress
finishes, sockets close with linger 0, storage is closed).

``--state-machine module:Class`` runs ``Class()`` instead (imported from the current
directory or the installed packages), wrapped in :class:`~raft.sessions.Sessions` so that a
client's retried command is applied once; clients use ``submit`` and ``query``
(:class:`~raft.client.RaftClient`). The class implements :class:`~raft.kv.StateMachine`
(``apply``, ``snapshot``, ``restore``) and, for linearizable reads, ``query(bytes) -> bytes``.

Metrics: Prometheus text on ``http://<metrics>/metrics`` (the node's ``metrics`` address in
the cluster file; without one, a free port on 127.0.0.1, printed in the log and shown by
``status``); ``--no-metrics`` turns them off. Logs go through :mod:`logging` to stdout:
``--log-level`` (default INFO: every Raft event), ``--log-format json`` for one JSON object
per line (``time`` wall clock ISO 8601 UTC, ``level``, ``logger``, ``node``, ``term``,
``event``).

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

    [security]                   # CURVE keys (orbital keys init writes all of this)
    client_keys = ["Z85..."]     # public keys of clients: get, put, cas, status
    admin_keys = ["Z85..."]      # public keys of admins: also membership and transfer
    insecure = false             # true: no keys, and yet addresses beyond loopback

    [nodes.n1]
    raft = "10.0.0.1:7001"       # the node's ROUTER for Raft messages (IPv4, or [IPv6])
    client = "10.0.0.1:8001"     # the node's ROUTER for clients
    listen = "0.0.0.0"           # optional: bind those ports on this address instead
    metrics = "127.0.0.1:9101"   # optional: Prometheus metrics over HTTP (no keys: keep
                                 # it on loopback or a management network)
    public_key = "Z85..."        # n1's public key (every node has one, or none has)
    secret_key_file = "keys/n1.key_secret"   # the default; only n1's machine needs it
    [nodes.n1.peers]             # optional: where n1 reaches its peers (Toxiproxy proxies)
    n2 = "127.0.0.1:9012"

    [nodes.n4]
    initial = false              # not in the bootstrap configuration: joins by membership change

Keys: with public keys listed, every socket speaks CURVE (:mod:`raft.security`): nodes admit
only node keys on their Raft port (and a message only from the node its key belongs to), and
only client and admin keys on their client port; ``transfer`` and ``membership`` need an
admin key (``forbidden`` otherwise). Without keys, every address must be loopback unless
``insecure = true``; nothing is then authenticated and every client may do everything. The
guard's roster (``raft.core.guard``) is the file's nodes: every node that may ever be a
member must be listed (``initial = false`` for those that join later).

Client protocol (one JSON object per ZeroMQ frame, DEALER to the node's client ROUTER; decoded
with msgspec, numbers given as strings accepted, unknown fields refused)::

    {"id": 7, "op": "get", "key": "x"}
    {"id": 8, "op": "put", "key": "x", "value": 3, "client": "w1", "seq": 12}
    {"id": 9, "op": "cas", "key": "x", "expected": 3, "new": 4, "client": "w1", "seq": 13}
    {"id": 10, "op": "status"}   {"op": "transfer", "to": "n2"}
    {"op": "membership", "action": "add_voter" | "add_learner" | "remove", "node": "n4"}
    {"id": 11, "op": "submit", "command": "<base64>", "client": "w1", "seq": 14}
    {"id": 12, "op": "query", "query": "<base64>"}      # --state-machine nodes only

Replies: ``{"id": 7, "ok": true, "value": 3, "node": "n1"}`` (``"result": "<base64>"`` for
submit and query), or ``"ok": false`` with an
``error`` code. Definite rejections (the command did not and will not take effect):
``not_leader`` (with ``leader`` and ``leader_client`` when known), ``busy`` (back-pressure),
``lost`` (overwritten by another leader), ``mismatch`` (cas; ``value`` is the current value),
``stale``, ``read_failed``, ``bad_request``, ``refused`` (membership), ``forbidden`` (an
admin operation with a client key), ``failed`` (the state machine's ``query`` raised).
Indefinite:
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
import base64
import binascii
import contextlib
import ctypes
import faulthandler
import importlib
import json
import logging
import os
import platform
import signal
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import msgspec
import zmq
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from raft import netaddr
from raft.argtypes import whole_number
from raft.core.errors import ConfChangeError, NotLeader, ProposalDropped, RaftError
from raft.core.raft import RaftConfig
from raft.core.types import ConfChange, ConfChangeType, NodeId
from raft.kv import Cas, KVStore, Write, decode_result, encode_command
from raft.node import NodeStopped, OutcomeUnknown, ProposalLost, RaftNode, ReadFailed
from raft.security import (
    ADMIN,
    CLIENT,
    ClientKeys,
    GuardedServer,
    KeyFileError,
    KeyPair,
    NodeKeys,
    ServerCurve,
    guard_server,
    load_key_pair,
    parse_public_key,
)
from raft.sessions import SessionError, Sessions
from raft.sessions import decode_result as decode_session_result
from raft.sessions import encode_command as encode_session_command
from raft.storage import FileStorage, StorageError
from raft.transport import ZmqReader, ZmqTransport, check_bind

__all__ = [
    "ClusterConfig",
    "ConfigError",
    "NodeConfig",
    "configure",
    "load_config",
    "load_state_machine",
    "run",
]

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
#: operations only an admin key may ask for
ADMIN_OPS = frozenset({"transfer", "membership"})


def _public_key(v: str) -> str:
    try:
        parse_public_key(v)
    except KeyFileError as exc:
        raise ValueError(str(exc)) from None
    return v


class SecurityConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    client_keys: list[str] = []
    admin_keys: list[str] = []
    #: no keys, and yet addresses beyond loopback: traffic readable and forgeable by anyone
    #: on the network (the file must say so in so many words)
    insecure: bool = False

    @field_validator("client_keys", "admin_keys")
    @classmethod
    def _keys(cls, v: list[str]) -> list[str]:
        return [_public_key(k) for k in v]


class NodeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    raft: str
    client: str
    #: bind the raft and client ports on this IP instead (e.g. "0.0.0.0", "::": every
    #: interface); others still dial ``raft`` and ``client``
    listen: str | None = None
    peers: dict[str, str] = {}
    data_dir: str | None = None
    initial: bool = True
    metrics: str | None = None
    public_key: str | None = None
    secret_key_file: str | None = None

    @field_validator("raft", "client")
    @classmethod
    def _own(cls, v: str) -> str:
        return netaddr.validate(v, bind=True)

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str | None) -> str | None:
        if v is not None:
            netaddr.validate(_with_port(v, 1), bind=True)
        return v

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, v: str | None) -> str | None:
        return None if v is None else netaddr.validate(v, bind=True)

    @field_validator("peers")
    @classmethod
    def _peer_addresses(cls, v: dict[str, str]) -> dict[str, str]:
        for addr in v.values():
            netaddr.validate(addr, bind=False)
        return v

    @field_validator("public_key")
    @classmethod
    def _key(cls, v: str | None) -> str | None:
        return None if v is None else _public_key(v)

    def bind_address(self, address: str) -> str:
        """Where this node binds the port of ``address`` (its ``listen`` host, if any)."""
        if self.listen is None:
            return address
        return _with_port(self.listen, netaddr.split(address)[1])


def _with_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


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
    security: SecurityConfig = SecurityConfig()
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
        self._check_keys()
        if not self.secure and not self.security.insecure:
            self._check_loopback()
        return self

    def _check_keys(self) -> None:
        keyed = [n for n, c in self.nodes.items() if c.public_key is not None]
        if keyed and len(keyed) != len(self.nodes):
            missing = sorted(set(self.nodes) - set(keyed))
            raise ValueError(
                f"nodes: every node needs a public_key once one has; {missing} lack it"
            )
        sec = self.security
        if not keyed and (sec.client_keys or sec.admin_keys):
            raise ValueError("security: client or admin keys, but no node has a public_key")
        every = [c.public_key for c in self.nodes.values()] + sec.client_keys + sec.admin_keys
        if keyed and len(set(every)) != len(every):
            raise ValueError("security: a public key is listed twice (each key has one role)")
        if keyed and sec.insecure:
            raise ValueError("security.insecure: a cluster with keys is not insecure")

    def _check_loopback(self) -> None:
        for nid, node in self.nodes.items():
            addresses = [("raft", node.raft), ("client", node.client)]
            addresses += [(f"peers.{p}", a) for p, a in node.peers.items()]
            if node.listen is not None:
                addresses.append(("listen", node.bind_address(node.raft)))
            if node.metrics is not None:
                addresses.append(("metrics", node.metrics))
            for name, addr in addresses:
                if not netaddr.is_loopback(addr):
                    raise ValueError(
                        f"nodes.{nid}.{name}: {addr} is not loopback, and this cluster has no"
                        " keys: anyone on that network could read and forge its traffic"
                        " (give every node a public_key, or set security.insecure = true)"
                    )

    # -- derived ------------------------------------------------------------------------------
    @property
    def secure(self) -> bool:
        """Every socket speaks CURVE (the nodes have keys)."""
        return any(c.public_key is not None for c in self.nodes.values())

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

    def public_keys(self) -> dict[str, bytes]:
        """Every node's public key, by id (empty without keys)."""
        return {
            n: parse_public_key(c.public_key)
            for n, c in sorted(self.nodes.items())
            if c.public_key is not None
        }

    def secret_key_path(self, node_id: str, base: Path) -> Path:
        own = self.nodes[node_id].secret_key_file
        return base / (own if own is not None else os.path.join("keys", f"{node_id}.key_secret"))

    def node_keys(self, node_id: str, base: Path) -> NodeKeys | None:
        """``node_id``'s keys (None without keys); ``KeyFileError`` if its secret key file is
        missing, too widely readable, or not the pair of its public key in the file."""
        if not self.secure:
            return None
        path = self.secret_key_path(node_id, base)
        pair = load_key_pair(path)
        public = self.public_keys()
        if pair.public != public[node_id]:
            raise KeyFileError(f"{path} is not the key pair of {node_id}'s public_key")
        return NodeKeys(pair, public)

    def client_curve(self, pair: KeyPair) -> ServerCurve:
        """A node's client port: its own key pair; client and admin keys may connect."""
        allowed = {k.encode(): CLIENT for k in self.security.client_keys}
        allowed.update({k.encode(): ADMIN for k in self.security.admin_keys})
        return ServerCurve(pair, allowed)

    def client_keys(self, pair: KeyPair) -> ClientKeys:
        """What a client holding ``pair`` needs to reach every node."""
        return ClientKeys(pair, self.public_keys())


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
class Request(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One client request (see the module docstring), decoded by msgspec in lax mode
    (``"3"`` is taken for ``3``); unknown fields are refused."""

    id: int | str | None = None
    op: Literal["get", "put", "cas", "status", "transfer", "membership", "submit", "query"]
    key: str | None = None
    value: int | None = None
    expected: int | None = None
    new: int | None = None
    client: str | None = None
    seq: Annotated[int, msgspec.Meta(ge=0)] = 0
    to: str | None = None
    action: Literal["add_voter", "add_learner", "remove"] | None = None
    node: str | None = None
    command: str | None = None  #: submit: base64
    query: str | None = None  #: query: base64


_REQUEST = msgspec.json.Decoder(Request, strict=False)
_encode_json = msgspec.json.Encoder().encode


class ClientServer:
    """Answers client requests for one node (see the module docstring for the protocol)."""

    def __init__(
        self,
        node: RaftNode[Any],
        cfg: ClusterConfig,
        address: str,
        *,
        max_in_flight: int = MAX_IN_FLIGHT,
        curve: ServerCurve | None = None,
        insecure: bool = False,
    ) -> None:
        check_bind(address, secure=curve is not None, insecure=insecure)
        self.node = node
        self.cfg = cfg
        #: a user's state machine in Sessions (submit/query); None: the KV store (get/put/cas)
        sm = getattr(node, "sm", None)
        self.sessions: Sessions[Any] | None = sm if isinstance(sm, Sessions) else None
        self.max_in_flight = max_in_flight
        self._secure = curve is not None
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
        self._tasks: set[asyncio.Task[None]] = set()
        #: writes in flight -> their deadline (loop time), oldest first
        self._writes: dict[asyncio.Future[bytes], float] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._guard: GuardedServer | None = None
        if curve is not None:
            self._guard = guard_server(self._ctx, self._sock, curve, f"client/{node.id}")
        if netaddr.is_ipv6(address):
            self._sock.setsockopt(zmq.IPV6, 1)
        try:
            self._sock.bind(netaddr.endpoint(address))
        except zmq.ZMQError:
            self.close()
            raise
        # writes are queued with the node during a burst and stepped together at its end
        self._reader = ZmqReader(
            self._sock,
            self._on_frames,
            burst=SERVE_BURST,
            on_burst_end=node.kick,
            authenticated=curve is not None,
        )
        self._ok_tail = f', "node": {json.dumps(node.id)}}}'.encode()

    async def serve(self) -> None:
        """Answer requests until cancelled."""
        self._reader.start()
        try:
            await asyncio.Event().wait()
        finally:
            self._reader.stop()

    @property
    def refused_connections(self) -> int:
        """Connections to the client port refused for their keys or their handshake."""
        return 0 if self._guard is None else self._guard.refused

    def _on_frames(self, parts: list[bytes]) -> None:
        role = ADMIN.encode()  # without keys nothing tells clients apart: all may do all
        if self._secure:
            role, parts = parts[0], parts[1:]
        if len(parts) == 2:
            self._admit(parts[0], parts[1], role == b"admin")

    def _admit(self, ident: bytes, frame: bytes, admin: bool = True) -> None:
        """Refuse (``busy``), reject (``bad_request``, ``forbidden``), or start working on one
        request."""
        if self.in_flight >= self.max_in_flight:
            self.refused += 1
            busy = {"ok": False, "error": "busy", "message": "too many requests in flight"}
            self._send(ident, _request_id(frame), busy)
            return
        try:
            req = _REQUEST.decode(frame)
        except msgspec.DecodeError as exc:
            bad = {"ok": False, "error": "bad_request", "message": str(exc)}
            self._send(ident, None, bad)
            return
        if req.op in ADMIN_OPS and not admin:
            message = f"{req.op} needs an admin key; this connection holds a client key"
            self._send(ident, req.id, {"ok": False, "error": "forbidden", "message": message})
            return
        self.in_flight += 1
        if req.op in ("put", "cas", "submit"):
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
        self._send_frame(ident, _encode_json(reply))

    def _send_frame(self, ident: bytes, frame: bytes) -> None:
        # a ROUTER never blocks: the reply is queued, or dropped if the client is gone. Two
        # sends with plain int flags: send_multipart combines enum flags in Python (1.3 us
        # a reply against 3.6, measured)
        sock = self._sock
        with contextlib.suppress(zmq.ZMQError):
            sock.send(ident, _NOBLOCK_MORE)
            sock.send(frame, _NOBLOCK)
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

    def _command(self, req: Request) -> bytes:
        if req.op == "submit":
            if self.sessions is None:
                raise ValueError("this node runs the KV store: use get, put and cas")
            command = _b64(_need(req.command, "command"), "command")
            return encode_session_command(command, req.client, req.seq)
        if self.sessions is not None:
            raise ValueError(f"op {req.op!r}: this node runs {self._sm_name()}: use submit")
        key = _need(req.key, "key")
        op: Write | Cas
        if req.op == "put":
            op = Write(key=key, value=_need(req.value, "value"))
        else:
            op = Cas(key=key, expected=req.expected, new=_need(req.new, "new"))
        return encode_command(op, req.client, req.seq)

    def _sm_name(self) -> str:
        sm = self.node.sm
        inner = sm.inner if isinstance(sm, Sessions) else sm
        return type(inner).__name__

    def _write_result(self, raw: bytes) -> dict[str, Any]:
        if self.sessions is not None:
            try:
                payload = decode_session_result(raw)
            except SessionError as exc:
                code = "stale" if str(exc) == "stale" else "bad_request"
                return {"ok": False, "error": code, "message": str(exc)}
            return {"ok": True, "result": base64.b64encode(payload).decode()}
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
            status = {**self.node.status(), "clock_s": time.monotonic()}
            transport = getattr(self.node.transport, "refused_connections", 0)
            status["refused_connections"] = {"raft": transport, "client": self.refused_connections}
            return {"ok": True, "value": status}
        if req.op == "get":
            if self.sessions is not None:
                raise ValueError(f"op 'get': this node runs {self._sm_name()}: use query")
            await self.node.read()
            return {"ok": True, "value": self.node.sm.get(_need(req.key, "key"))}
        if req.op == "query":
            return await self._query(_b64(_need(req.query, "query"), "query"))
        if req.op in ("put", "cas", "submit"):
            return dict(self._write_result(await self.node.submit(self._command(req))))
        if req.op == "transfer":
            await self.node.transfer_leader(_need(req.to, "to"))
            return {"ok": True}
        return await self._membership(req)

    async def _query(self, request: bytes) -> dict[str, Any]:
        sm = self.node.sm
        inner = sm.inner if isinstance(sm, Sessions) else sm
        query = getattr(inner, "query", None)
        if query is None:
            raise ValueError(f"{type(inner).__name__} has no query(bytes) method")
        await self.node.read()
        try:
            result = query(request)
        except Exception as exc:  # the user's code: its failure is an answer, not a crash
            return {"ok": False, "error": "failed", "message": f"{type(exc).__name__}: {exc}"}
        if not isinstance(result, bytes):
            return {"ok": False, "error": "failed", "message": "query() did not return bytes"}
        return {"ok": True, "result": base64.b64encode(result).decode()}

    async def _membership(self, req: Request) -> dict[str, Any]:
        action = ConfChangeType(_need(req.action, "action"))
        await self.node.change_membership(ConfChange(action, NodeId(_need(req.node, "node"))))
        return {"ok": True, "value": self.node.status()}

    def close(self) -> None:
        self._closed = True
        if hasattr(self, "_reader"):
            self._reader.stop()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for t in self._tasks:
            t.cancel()
        self._sock.close(linger=0)
        if self._guard is not None:  # after the socket: never a CURVE socket without ZAP
            self._guard.close()
        self._ctx.term()


_NOBLOCK = int(zmq.NOBLOCK)
_NOBLOCK_MORE = int(zmq.NOBLOCK | zmq.SNDMORE)

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


def _b64(text: str, name: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"field {name!r} is not base64") from None


def _need(value: _T | None, name: str) -> _T:
    if value is None:
        raise ValueError(f"missing field {name!r}")
    return value


# ==== the process =============================================================================
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="the cluster file (TOML)")
    parser.add_argument("--id", required=True, help="this node's id (a key of [nodes])")
    parser.add_argument("--roles", help="roles.jsonl path (default: DATA_DIR/roles.jsonl)")
    parser.add_argument("--seed", type=_seed, help="seed of the election-timeout RNG")
    parser.add_argument(
        "--state-machine",
        metavar="MODULE:CLASS",
        help="run CLASS() from MODULE instead of the KV store (see docs/library.md)",
    )
    parser.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="serve Prometheus metrics here (default: the node's 'metrics' in the cluster "
        "file, else a free port on 127.0.0.1)",
    )
    parser.add_argument("--no-metrics", action="store_true", help="serve no metrics")
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        default="INFO",
        help="INFO logs every Raft event (default); WARNING only problems",
    )
    parser.add_argument(
        "--log-format", choices=("text", "json"), default="text", help="log line format"
    )
    parser.add_argument("--quiet", action="store_true", help="the same as --log-level WARNING")


_seed = whole_number(0)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: wall time (UTC), level, logger, message, and the node's
    ``node``, ``term`` and ``event`` when the record carries them."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
        }
        for name in ("node", "term", "event"):
            if hasattr(record, name):
                doc[name] = getattr(record, name)
        doc["message"] = record.getMessage()
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def setup_logging(level: str, fmt: str) -> None:
    """Route every logger to stdout (the node's log) at ``level``, as text or JSON lines."""
    handler = logging.StreamHandler(sys.stdout)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter(
                "%(asctime)s.%(msecs)03d %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S"
            )
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def load_state_machine(spec: str) -> Any:
    """``module:Class`` -> ``Class()``; raises :class:`ConfigError` with a one-line reason.
    The current directory is searched first, as for ``python -m``."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"--state-machine: expected MODULE:CLASS, got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"--state-machine: cannot import {module_name!r}: {exc}") from None
    cls = getattr(module, attr, None)
    if cls is None:
        raise ConfigError(f"--state-machine: {module_name!r} has no attribute {attr!r}")
    try:
        sm = cls()
    except Exception as exc:
        raise ConfigError(
            f"--state-machine: {spec}() failed: {type(exc).__name__}: {exc}"
        ) from None
    missing = [m for m in ("apply", "snapshot", "restore") if not callable(getattr(sm, m, None))]
    if missing:
        raise ConfigError(f"--state-machine: {spec} lacks {', '.join(missing)}()")
    return sm


def run(args: argparse.Namespace) -> int:
    setup_logging("WARNING" if args.quiet else args.log_level, args.log_format)
    # ``kill -USR1 PID`` prints every thread's stack to the node's output (its node.log): how
    # the chaos runner shows where a node that stopped answering is stuck
    with contextlib.suppress(AttributeError, ValueError, OSError):  # no file descriptor
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        cfg, base = load_config(args.config)
        if args.id not in cfg.nodes:
            raise ConfigError(f"--id {args.id!r} is not in [nodes] ({', '.join(cfg.nodes)})")
        sm: Any = KVStore()
        if args.state_machine:
            sm = Sessions(load_state_machine(args.state_machine))
        metrics = None
        if not args.no_metrics:
            metrics = args.metrics or cfg.nodes[args.id].metrics or "127.0.0.1:0"
            from raft.metrics import parse_address

            parse_address(metrics)
    except (ConfigError, ValueError) as exc:
        print(f"orbital node: {exc}", file=sys.stderr)
        return 2
    try:
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            runner.run(serve_node(cfg, base, args, sm, metrics))
    except KeyFileError as exc:
        print(f"orbital node {args.id}: {exc}", file=sys.stderr)
        return 2
    except (OSError, zmq.ZMQError, RaftError, StorageError) as exc:
        print(f"orbital node {args.id}: {exc}", file=sys.stderr)
        return 1
    return 0


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when it is installed, unless ``ORBITAL_EVENT_LOOP=asyncio``
    (None: asyncio's own)."""
    if os.environ.get("ORBITAL_EVENT_LOOP", "uvloop") == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


async def serve_node(
    cfg: ClusterConfig,
    base: Path,
    args: argparse.Namespace,
    state_machine: Any = None,
    metrics: str | None = None,
) -> None:
    node_id: str = args.id
    me = cfg.nodes[node_id]
    keys = cfg.node_keys(node_id, base)  # before anything is opened: a bad key file exits 2
    data_dir = node_data_dir(cfg, base, node_id)
    storage = FileStorage(data_dir)
    insecure = cfg.security.insecure
    try:
        transport = ZmqTransport(
            NodeId(node_id),
            cfg.cluster_id,
            me.bind_address(me.raft),
            cfg.peer_addresses(node_id),
            keys=keys,
            insecure=insecure,
        )
    except BaseException:
        storage.close()
        raise
    try:
        node = RaftNode(
            node_id,
            cfg.initial_voters() if me.initial else [],
            transport,
            storage,
            KVStore() if state_machine is None else state_machine,
            cfg.raft_config(),
            tick_ms=cfg.tick_ms,
            seed=args.seed,
            record_clock=system_monotonic_ns,
            roles_path=Path(args.roles) if args.roles else data_dir / "roles.jsonl",
            roster=cfg.nodes,
            metrics_address=metrics,
        )
        curve = None if keys is None else cfg.client_curve(keys.pair)
        server = ClientServer(node, cfg, me.bind_address(me.client), curve=curve, insecure=insecure)
    except BaseException:
        transport.close()
        storage.close()
        raise
    await _run_until_signal(node, server, storage)


async def _run_until_signal(
    node: RaftNode[Any], server: ClientServer, storage: FileStorage
) -> None:
    loop = asyncio.get_running_loop()
    with stop_on_signals(loop, node.stop):
        serving = asyncio.create_task(server.serve())
        if node.metrics is not None:
            loop.call_soon(_announce_metrics, node)
        try:
            await node.run()
        finally:
            serving.cancel()
            await asyncio.gather(serving, return_exceptions=True)
            server.close()
            storage.close()


#: the signals that stop a node gracefully
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


@contextlib.contextmanager
def stop_on_signals(loop: asyncio.AbstractEventLoop, stop: Callable[[], object]) -> Iterator[None]:
    """Call ``stop`` on SIGTERM, SIGINT or SIGHUP while inside; afterwards every one of them
    has the handler it had before. (uvloop leaves its own handler installed when its loop
    closes: in a process that goes on, e.g. a test or an application that runs a node and
    then forks workers, a later SIGTERM would be swallowed and the worker never end.)"""
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            loop.remove_signal_handler(sig)
            if handler is not None:
                signal.signal(sig, handler)


def _announce_metrics(node: RaftNode[Any]) -> None:
    if node.metrics_url is not None:
        logger.warning("%s: metrics on %s", node.id, node.metrics_url)


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
