"""How Raft messages travel between nodes: the :class:`Transport` protocol and two realizations.

Theory of operation
-------------------
Raft tolerates loss, duplication and reordering of messages (every RPC is idempotent, retried
by heartbeats and timeouts), so a transport here is *fire-and-forget*: ``send`` never blocks
and never reports failure; a message that cannot go out now is dropped. Received messages come
out of ``recv()`` (or ``async for``) in arrival order.

:class:`MemoryTransport` (tests): nodes of one event loop joined to a :class:`MemoryNetwork`
hub that hands the message objects themselves to the receiver's queue, and can cut links to
make partitions. It differs from the real transport on purpose (no encoding, no sockets).

:class:`ZmqTransport` (real processes): one ZeroMQ ROUTER per node, bound on 127.0.0.1 only,
receives from every peer; one DEALER per peer connects to the address configured for that peer
(in a chaos run a Toxiproxy proxy, never the peer's own port). Socket settings:

* ``SNDHWM`` bounds each peer's queue; sends are ``NOBLOCK`` and dropped when it is full;
  ``IMMEDIATE`` queues only on a live connection, so a partition drops messages rather than
  delivering a stale backlog when it heals.
* ``RECONNECT_IVL``/``_MAX`` of 10/100 ms heal partitions fast; ZMTP heartbeats notice a
  silently dead connection (through a proxy) and reconnect.
* ``MAXMSGSIZE`` (16 MiB by default) makes ZeroMQ drop a peer that sends an oversized frame;
  the same limit is checked again on receipt and before sending.
* ``LINGER 0``: closing never waits for unsent messages.

Wire format: one ZeroMQ frame holding a JSON :class:`Envelope` (pydantic): protocol version,
cluster id, and the message as a discriminated union mirroring :mod:`raft.core.messages`,
bytes fields in base64. A frame that is malformed, oversized, of another version or from
another cluster is logged (rate-limited) and dropped; it never reaches the core and never
stops the receive loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Annotated, Literal, Protocol

import zmq
import zmq.asyncio
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from raft.core.messages import (
    AppendEntries,
    AppendEntriesResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    InstallSnapshotResponse,
    Message,
    RequestVote,
    RequestVoteResponse,
    TimeoutNow,
)
from raft.core.types import ConfState, EntryKind, LogEntry, NodeId, SnapshotMeta

__all__ = [
    "MAX_FRAME_BYTES",
    "PROTOCOL_VERSION",
    "Envelope",
    "MemoryNetwork",
    "MemoryTransport",
    "Transport",
    "WireError",
    "ZmqTransport",
    "decode_frame",
    "encode_frame",
]

logger = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
MAX_FRAME_BYTES = 16 << 20
DEFAULT_SNDHWM = 1000


class Transport(Protocol):
    """Fire-and-forget delivery of Raft messages (see the module docstring)."""

    async def send(self, msg: Message) -> None:
        """Queue ``msg`` for ``msg.dst``; drop it silently if that is not possible now."""
        ...

    async def recv(self) -> Message:
        """The next message received for this node."""
        ...

    def close(self) -> None:
        """Stop sending and receiving; idempotent."""
        ...


# ==== wire format ===========================================================================
class _Wire(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, ser_json_bytes="base64", val_json_bytes="base64"
    )


class WireEntry(_Wire):
    index: int = Field(ge=1)
    term: int = Field(ge=0)
    kind: EntryKind
    command: bytes


class WireConf(_Wire):
    voters: list[str]
    learners: list[str] = []
    promoting: list[str] = []


class WireMeta(_Wire):
    index: int = Field(ge=0)
    term: int = Field(ge=0)
    conf: WireConf


class _WireMsg(_Wire):
    src: str
    dst: str
    term: int = Field(ge=0)


class WireRequestVote(_WireMsg):
    type: Literal["request_vote"] = "request_vote"
    last_log_index: int
    last_log_term: int
    pre_vote: bool = False
    transfer: bool = False


class WireRequestVoteResponse(_WireMsg):
    type: Literal["request_vote_response"] = "request_vote_response"
    granted: bool
    pre_vote: bool = False


class WireAppendEntries(_WireMsg):
    type: Literal["append_entries"] = "append_entries"
    prev_log_index: int
    prev_log_term: int
    entries: list[WireEntry]
    commit: int


class WireAppendEntriesResponse(_WireMsg):
    type: Literal["append_entries_response"] = "append_entries_response"
    success: bool
    match_index: int = 0
    reject_index: int = 0
    hint_index: int = 0
    hint_term: int = 0


class WireHeartbeat(_WireMsg):
    type: Literal["heartbeat"] = "heartbeat"
    commit: int
    context: int = 0


class WireHeartbeatResponse(_WireMsg):
    type: Literal["heartbeat_response"] = "heartbeat_response"
    context: int = 0


class WireInstallSnapshot(_WireMsg):
    type: Literal["install_snapshot"] = "install_snapshot"
    meta: WireMeta
    offset: int = Field(ge=0)
    data: bytes
    done: bool


class WireInstallSnapshotResponse(_WireMsg):
    type: Literal["install_snapshot_response"] = "install_snapshot_response"
    snapshot_index: int
    next_offset: int
    match_index: int = 0


class WireTimeoutNow(_WireMsg):
    type: Literal["timeout_now"] = "timeout_now"


WireMessage = Annotated[
    WireRequestVote
    | WireRequestVoteResponse
    | WireAppendEntries
    | WireAppendEntriesResponse
    | WireHeartbeat
    | WireHeartbeatResponse
    | WireInstallSnapshot
    | WireInstallSnapshotResponse
    | WireTimeoutNow,
    Field(discriminator="type"),
]

#: core message class -> its wire model; flat messages convert field by field
_WIRE: dict[type, type[_WireMsg]] = {
    RequestVote: WireRequestVote,
    RequestVoteResponse: WireRequestVoteResponse,
    AppendEntries: WireAppendEntries,
    AppendEntriesResponse: WireAppendEntriesResponse,
    Heartbeat: WireHeartbeat,
    HeartbeatResponse: WireHeartbeatResponse,
    InstallSnapshot: WireInstallSnapshot,
    InstallSnapshotResponse: WireInstallSnapshotResponse,
    TimeoutNow: WireTimeoutNow,
}
_CORE: dict[type[_WireMsg], type] = {w: c for c, w in _WIRE.items()}


class Envelope(_Wire):
    """One frame on the wire."""

    v: int
    cluster: str
    msg: WireMessage


class WireError(ValueError):
    """A received frame was not a valid message for this node (it is dropped)."""


def _conf_to_core(w: WireConf) -> ConfState:
    return ConfState(
        frozenset(NodeId(n) for n in w.voters),
        frozenset(NodeId(n) for n in w.learners),
        frozenset(NodeId(n) for n in w.promoting),
    )


def _to_wire(msg: Message) -> _WireMsg:
    model = _WIRE[type(msg)]
    if isinstance(msg, AppendEntries):
        entries = [
            WireEntry(index=e.index, term=e.term, kind=e.kind, command=e.command)
            for e in msg.entries
        ]
        return WireAppendEntries(
            src=msg.src,
            dst=msg.dst,
            term=msg.term,
            prev_log_index=msg.prev_log_index,
            prev_log_term=msg.prev_log_term,
            entries=entries,
            commit=msg.commit,
        )
    return model.model_validate(msg, from_attributes=True)


def _to_core(w: _WireMsg) -> Message:
    fields = {name: getattr(w, name) for name in type(w).model_fields if name != "type"}
    fields["src"], fields["dst"] = NodeId(w.src), NodeId(w.dst)
    if isinstance(w, WireAppendEntries):
        fields["entries"] = tuple(LogEntry(e.index, e.term, e.command, e.kind) for e in w.entries)
    elif isinstance(w, WireInstallSnapshot):
        m = w.meta
        fields["meta"] = SnapshotMeta(m.index, m.term, _conf_to_core(m.conf))
    msg: Message = _CORE[type(w)](**fields)
    return msg


def encode_frame(msg: Message, cluster: str) -> bytes:
    """The wire frame carrying ``msg`` for ``cluster``."""
    env = Envelope(v=PROTOCOL_VERSION, cluster=cluster, msg=_to_wire(msg))
    return env.model_dump_json().encode()


def decode_frame(frame: bytes, cluster: str, max_bytes: int = MAX_FRAME_BYTES) -> Message:
    """The message in ``frame``; ``WireError`` if it is not one for ``cluster``."""
    if len(frame) > max_bytes:
        raise WireError(f"frame of {len(frame)} bytes exceeds the {max_bytes}-byte limit")
    try:
        env = Envelope.model_validate_json(frame)
    except ValidationError as exc:
        raise WireError(f"malformed frame: {_first_error(exc)}") from None
    if env.v != PROTOCOL_VERSION:
        raise WireError(f"protocol version {env.v}, expected {PROTOCOL_VERSION}")
    if env.cluster != cluster:
        raise WireError(f"frame from cluster {env.cluster!r}, this is {cluster!r}")
    try:
        return _to_core(env.msg)
    except (TypeError, ValueError) as exc:
        raise WireError(f"invalid message: {exc}") from None


def _first_error(exc: ValidationError) -> str:
    err = exc.errors(include_url=False, include_input=False)[0]
    loc = ".".join(str(p) for p in err["loc"])
    return f"{loc}: {err['msg']}" if loc else str(err["msg"])


# ==== in-memory =============================================================================
class MemoryNetwork:
    """A hub for :class:`MemoryTransport`: delivery between joined nodes, and link cuts."""

    def __init__(self) -> None:
        self._queues: dict[NodeId, asyncio.Queue[Message]] = {}
        self._cut: set[tuple[NodeId, NodeId]] = set()
        self.delivered = 0
        self.dropped = 0

    def join(self, node: NodeId) -> MemoryTransport:
        """Attach ``node`` (replacing an earlier attachment, as a restarted node would)."""
        self._queues[node] = asyncio.Queue()
        return MemoryTransport(self, node, self._queues[node])

    def leave(self, node: NodeId, queue: asyncio.Queue[Message]) -> None:
        if self._queues.get(node) is queue:
            del self._queues[node]

    def cut(self, a: NodeId, b: NodeId, *, both: bool = True) -> None:
        """Drop messages a→b (and b→a unless ``both`` is false)."""
        self._cut.add((a, b))
        if both:
            self._cut.add((b, a))

    def isolate(self, node: NodeId, others: list[NodeId]) -> None:
        for o in others:
            if o != node:
                self.cut(node, o)

    def heal(self) -> None:
        self._cut.clear()

    def deliver(self, msg: Message) -> None:
        queue = self._queues.get(msg.dst)
        if queue is None or (msg.src, msg.dst) in self._cut:
            self.dropped += 1
            return
        self.delivered += 1
        queue.put_nowait(msg)


class MemoryTransport:
    """One node's end of a :class:`MemoryNetwork`."""

    def __init__(self, net: MemoryNetwork, node: NodeId, queue: asyncio.Queue[Message]) -> None:
        self.node = node
        self._net = net
        self._queue = queue
        self._closed = False

    async def send(self, msg: Message) -> None:
        if not self._closed:
            self._net.deliver(msg)

    async def recv(self) -> Message:
        return await self._queue.get()

    def __aiter__(self) -> AsyncIterator[Message]:
        return _iterate(self)

    def close(self) -> None:
        self._closed = True
        self._net.leave(self.node, self._queue)


async def _iterate(t: Transport) -> AsyncIterator[Message]:
    while True:
        yield await t.recv()


# ==== ZeroMQ ================================================================================
class ZmqTransport:
    """ROUTER bound on 127.0.0.1, a DEALER per peer (see the module docstring).

    ``bind`` is ``"127.0.0.1:PORT"`` (port 0: an ephemeral port, see :attr:`address`);
    ``peers`` maps each peer's id to the address to connect to for it.
    """

    def __init__(
        self,
        node: NodeId,
        cluster: str,
        bind: str,
        peers: dict[NodeId, str],
        *,
        ctx: zmq.asyncio.Context | None = None,
        max_frame_bytes: int = MAX_FRAME_BYTES,
        sndhwm: int = DEFAULT_SNDHWM,
    ) -> None:
        self.node = node
        self.cluster = cluster
        self.max_frame_bytes = max_frame_bytes
        self._sndhwm = sndhwm
        endpoint = f"tcp://{_loopback(bind)}"
        self._own_ctx = ctx is None
        self._ctx = ctx or zmq.asyncio.Context()
        #: DEALERs are plain (synchronous) sockets: a NOBLOCK send that finds the queue full
        #: raises ``zmq.Again`` at once instead of failing a future nobody awaits
        self._sync_ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.shadow(self._ctx.underlying)
        self._closed = False
        self._dealers: dict[NodeId, zmq.Socket[bytes]] = {}
        self._router = self._ctx.socket(zmq.ROUTER)
        try:
            #: the address actually bound ("127.0.0.1:PORT")
            self.address = self._bind_router(endpoint)
            for peer, addr in sorted(peers.items()):
                self.connect(peer, addr)
        except BaseException:
            self.close()
            raise
        self._log_limiter = _RateLimiter(per_second=5)
        self.sent = 0
        self.dropped_sends = 0
        self.dropped_frames = 0

    def _bind_router(self, endpoint: str) -> str:
        r = self._router
        r.setsockopt(zmq.LINGER, 0)
        r.setsockopt(zmq.MAXMSGSIZE, self.max_frame_bytes)
        r.setsockopt(zmq.RCVHWM, 10_000)
        r.bind(endpoint)
        bound = r.getsockopt(zmq.LAST_ENDPOINT)
        assert isinstance(bound, bytes)
        return bound.decode().removeprefix("tcp://")

    def connect(self, peer: NodeId, address: str) -> None:
        """Start (or replace) the DEALER to ``peer`` at ``address``."""
        old = self._dealers.pop(peer, None)
        if old is not None:
            old.close(linger=0)
        s = self._sync_ctx.socket(zmq.DEALER)
        for opt, val in (
            (zmq.LINGER, 0),
            (zmq.SNDHWM, self._sndhwm),
            (zmq.IMMEDIATE, 1),
            (zmq.RECONNECT_IVL, 10),
            (zmq.RECONNECT_IVL_MAX, 100),
            (zmq.HEARTBEAT_IVL, 500),
            (zmq.HEARTBEAT_TIMEOUT, 1500),
            (zmq.MAXMSGSIZE, self.max_frame_bytes),
        ):
            s.setsockopt(opt, val)
        s.connect(f"tcp://{address}")
        self._dealers[peer] = s

    async def send(self, msg: Message) -> None:
        self.send_nowait(msg)

    def send_nowait(self, msg: Message) -> None:
        """Queue ``msg`` without waiting; dropped if the peer is unknown or its queue full."""
        sock = self._dealers.get(msg.dst)
        if sock is None or self._closed:
            self.dropped_sends += 1
            return
        frame = encode_frame(msg, self.cluster)
        if len(frame) > self.max_frame_bytes:
            self._warn(
                "not sending a %d-byte %s to %s: over the limit",
                len(frame),
                type(msg).__name__,
                msg.dst,
            )
            self.dropped_sends += 1
            return
        try:
            sock.send(frame, zmq.NOBLOCK, copy=len(frame) < 65536)
            self.sent += 1
        except zmq.Again:
            self.dropped_sends += 1

    async def recv(self) -> Message:
        while True:
            parts = await self._router.recv_multipart(copy=True)
            msg = self._decode(parts)
            if msg is not None:
                return msg

    def __aiter__(self) -> AsyncIterator[Message]:
        return _iterate(self)

    def _decode(self, parts: list[bytes]) -> Message | None:
        if len(parts) != 2:
            self._drop(f"{len(parts) - 1} frames in one message, expected 1")
            return None
        try:
            msg = decode_frame(parts[1], self.cluster, self.max_frame_bytes)
        except WireError as exc:
            self._drop(str(exc))
            return None
        if msg.dst != self.node:
            self._drop(f"message for {msg.dst} arrived at {self.node}")
            return None
        return msg

    def _drop(self, why: str) -> None:
        self.dropped_frames += 1
        self._warn("%s: dropped a frame: %s", self.node, why)

    def _warn(self, fmt: str, *args: object) -> None:
        if self._log_limiter.allow():
            logger.warning(fmt, *args)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for s in self._dealers.values():
            s.close(linger=0)
        self._router.close(linger=0)
        if self._own_ctx:
            self._ctx.term()


def _loopback(address: str) -> str:
    host, sep, port = address.rpartition(":")
    if not sep or host != "127.0.0.1" or not port.isdigit():
        raise ValueError(f"bind address must be 127.0.0.1:PORT, got {address!r}")
    return f"127.0.0.1:{'*' if int(port) == 0 else port}"


class _RateLimiter:
    """At most ``per_second`` allowed events per second (so a flood cannot fill the log)."""

    def __init__(self, per_second: int) -> None:
        self._per_second = per_second
        self._window = 0
        self._count = 0

    def allow(self) -> bool:
        window = int(time.monotonic())
        if window != self._window:
            self._window, self._count = window, 0
        self._count += 1
        return self._count <= self._per_second
