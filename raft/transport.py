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

:class:`ZmqTransport` (real processes): one ZeroMQ ROUTER per node, bound on the node's
address (IPv4 or IPv6, :mod:`raft.netaddr`), receives from every peer; one DEALER per peer
connects to the address configured for that peer (in a chaos run a Toxiproxy proxy, never the
peer's own port). With node keys (:class:`~raft.security.NodeKeys`) every socket speaks CURVE:
the ROUTER admits only the cluster's node keys, each connection named by the node id its key
belongs to, and a message whose ``src`` is not that name is dropped (a member cannot speak
as another); the DEALERs authenticate the peer by its public key. Without keys the ROUTER
binds only a loopback address, unless ``insecure=True`` says otherwise in so many words.
Socket settings:

* ``SNDHWM`` bounds each peer's queue; sends are ``NOBLOCK`` and dropped when it is full;
  ``IMMEDIATE`` queues only on a live connection, so a partition drops messages rather than
  delivering a stale backlog when it heals.
* ``RECONNECT_IVL``/``_MAX`` of 10/100 ms heal partitions fast; ZMTP heartbeats notice a
  silently dead connection (through a proxy) and reconnect.
* ``MAXMSGSIZE`` (16 MiB by default) makes ZeroMQ drop a peer that sends an oversized frame;
  the same limit is checked again on receipt and before sending.
* ``LINGER 0``: closing never waits for unsent messages.

Receiving avoids pyzmq's per-message futures: a :class:`ZmqReader` watches the ROUTER's
file descriptor with ``loop.add_reader`` and, each time it fires, receives (NOBLOCK) up to a
burst of frames in one callback — decoded into an inbox ``recv()`` takes from, or, once
:meth:`ZmqTransport.set_receiver` is given a callback (what :class:`raft.node.RaftNode` does),
handed to that callback at once: no task switch per message, and an ``after_burst`` callback
once the burst is handed over, so the receiver can act on it as one batch — then, if more
are waiting,
comes back on the next loop iteration (ZeroMQ's descriptor is edge-triggered: it will not
fire again for frames already queued), so other work interleaves with a flood.

The wire format (one MessagePack frame per message: the msgspec schema
:class:`~raft.wire.Envelope`, the encoder :func:`~raft.wire.encode_frame` and the validating
:func:`~raft.wire.decode_frame`) is :mod:`raft.wire`; the names callers import from here
(``encode_frame``, ``decode_frame``, ``WireError``, ``MAX_FRAME_BYTES``, ...) are re-exported.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Protocol

import msgspec
import zmq
import zmq.asyncio

from raft import netaddr
from raft.core.messages import AppendEntries, Message
from raft.core.types import NodeId
from raft.security import GuardedServer, NodeKeys, guard_server
from raft.wire import (
    MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    Envelope,
    WireError,
    decode_frame,
    encode_entries,
    encode_frame,
)

# a private helper tests reach into: re-exported explicitly (mypy --strict has no implicit
# re-export)
from raft.wire import _model_frame as _model_frame

__all__ = [
    "MAX_FRAME_BYTES",
    "PROTOCOL_VERSION",
    "Envelope",
    "MemoryNetwork",
    "MemoryTransport",
    "Transport",
    "WireError",
    "ZmqReader",
    "ZmqTransport",
    "decode_frame",
    "encode_frame",
]

logger = logging.getLogger(__name__)

DEFAULT_SNDHWM = 1000
#: frames received per callback before the reader lets the event loop run other work
RECV_BURST = 64
#: decoded messages waiting for ``recv()`` at most; beyond, frames are dropped (Raft
#: tolerates loss)
MAX_INBOX = 10_000


class Transport(Protocol):
    """Fire-and-forget delivery of Raft messages (see the module docstring)."""

    async def send(self, msg: Message) -> None:
        """Queue ``msg`` for ``msg.dst``; drop it silently if that is not possible now."""
        ...

    def send_batch(self, msgs: list[Message]) -> None:
        """:meth:`send` for each of ``msgs``, in order, without waiting."""
        ...

    async def recv(self) -> Message:
        """The next message received for this node."""
        ...

    def close(self) -> None:
        """Stop sending and receiving; idempotent."""
        ...


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

    def send_batch(self, msgs: list[Message]) -> None:
        if not self._closed:
            for m in msgs:
                self._net.deliver(m)

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
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)


def _readable(sock: zmq.Socket[bytes]) -> bool:
    events = sock.getsockopt(_EVENTS)
    return isinstance(events, int) and bool(events & _POLLIN)


class ZmqReader:
    """Feeds every multipart message a (synchronous) ZeroMQ socket receives to ``on_message``,
    on the event loop, in bursts of at most ``burst`` per loop iteration (see the module
    docstring). Call :meth:`recheck` after sending on the same socket: a send can consume the
    descriptor's edge, leaving received frames unannounced.

    ``authenticated``: the socket is a CURVE ROUTER; each message is handed over with the
    name its connection authenticated as (the ZAP ``User-Id``) as an extra first part."""

    def __init__(
        self,
        sock: zmq.Socket[bytes],
        on_message: Callable[[list[bytes]], None],
        *,
        burst: int = RECV_BURST,
        on_burst_end: Callable[[], None] | None = None,
        authenticated: bool = False,
    ) -> None:
        self._sock = sock
        self._on_message = on_message
        self._burst = burst
        self._authenticated = authenticated
        #: called after a burst that delivered at least one message
        self.on_burst_end = on_burst_end
        fd = sock.getsockopt(zmq.FD)
        assert isinstance(fd, int)
        self._fd = fd
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scheduled = False

    def start(self) -> None:
        """Watch the socket from the running loop (idempotent; moves to a new loop)."""
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            return
        self.stop()
        self._loop, self._scheduled = loop, False
        loop.add_reader(self._fd, self._read)
        self.recheck()

    def recheck(self) -> None:
        if self._loop is not None and not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._read)

    def _read(self) -> None:
        self._scheduled = False
        sock = self._sock
        got = 0
        try:
            for _ in range(self._burst):
                # ZMQ_EVENTS both tells and re-arms the edge; cheaper than a recv raising Again
                if self._loop is None or not _readable(sock):
                    return  # stopped (the callback may close the socket), or nothing queued
                try:
                    if self._authenticated:
                        parts = _recv_authenticated(sock)
                    else:
                        parts = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    return
                got += 1
                self._on_message(parts)
            self.recheck()  # a full burst: more may be queued, and the descriptor stays quiet
        finally:
            if got and self.on_burst_end is not None and self._loop is not None:
                self.on_burst_end()

    def stop(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._fd)
        self._loop = None


def _recv_authenticated(sock: zmq.Socket[bytes]) -> list[bytes]:
    """One message of a CURVE ROUTER (its routing id, then at least one part), with its
    connection's ``User-Id`` as an extra first part. Only the parts after the routing id are
    received as frames, the metadata's carriers, and a frame's own ``more`` flag replaces the
    socket's ``RCVMORE`` (a pyzmq attribute lookup per call): 1.4 us a message, measured
    against 2.0-2.6 us for a plain ``recv_multipart`` (and 5-6 us for a first version that
    asked the socket for ``RCVMORE``)."""
    rid = sock.recv(zmq.NOBLOCK)
    frame = sock.recv(zmq.NOBLOCK, copy=False)
    try:
        name = frame.get("User-Id")
    except zmq.ZMQError:  # no ZAP answer on this connection: no name, and no message passes
        name = ""
    parts = [name.encode() if isinstance(name, str) else b"", rid, frame.bytes]
    while frame.more:  # more parts than a peer of ours sends: the receiver drops the message
        frame = sock.recv(zmq.NOBLOCK, copy=False)
        parts.append(frame.bytes)
    return parts


class ZmqTransport:
    """ROUTER bound on the node's address, a DEALER per peer (see the module docstring).

    ``bind`` is ``"HOST:PORT"`` (port 0: an ephemeral port, see :attr:`address`); ``peers``
    maps each peer's id to the address to connect to for it; ``keys``: CURVE on every
    socket; ``insecure``: bind beyond loopback without keys.
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
        keys: NodeKeys | None = None,
        insecure: bool = False,
    ) -> None:
        self.node = node
        self.cluster = cluster
        self.max_frame_bytes = max_frame_bytes
        self._sndhwm = sndhwm
        self._keys = keys
        check_bind(bind, secure=keys is not None, insecure=insecure)
        self._own_ctx = ctx is None
        self._ctx = ctx or zmq.asyncio.Context()
        #: DEALERs are plain (synchronous) sockets: a NOBLOCK send that finds the queue full
        #: raises ``zmq.Again`` at once instead of failing a future nobody awaits
        self._sync_ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.shadow(self._ctx.underlying)
        self._closed = False
        self._dealers: dict[NodeId, zmq.Socket[bytes]] = {}
        self._router = self._sync_ctx.socket(zmq.ROUTER)
        self._inbox: deque[Message] = deque()
        self._receiver: Callable[[Message], None] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._reader = ZmqReader(self._router, self._received, authenticated=keys is not None)
        self._guard: GuardedServer | None = None
        try:
            if keys is not None:
                self._guard = guard_server(
                    self._sync_ctx, self._router, keys.server(), f"raft/{node}"
                )
            #: the address actually bound ("HOST:PORT")
            self.address = self._bind_router(bind)
            for peer, addr in sorted(peers.items()):
                self.connect(peer, addr)
        except BaseException:
            self.close()
            raise
        self._log_limiter = _RateLimiter(per_second=5)
        self.sent = 0
        self.dropped_sends = 0
        self.dropped_frames = 0

    @property
    def refused_connections(self) -> int:
        """Connections to the Raft port refused for their keys or their handshake."""
        return 0 if self._guard is None else self._guard.refused

    def _bind_router(self, bind: str) -> str:
        r = self._router
        r.setsockopt(zmq.LINGER, 0)
        r.setsockopt(zmq.MAXMSGSIZE, self.max_frame_bytes)
        r.setsockopt(zmq.RCVHWM, 10_000)
        if netaddr.is_ipv6(bind):
            r.setsockopt(zmq.IPV6, 1)
        r.bind(netaddr.endpoint(bind))
        bound = r.getsockopt(zmq.LAST_ENDPOINT)
        assert isinstance(bound, bytes)
        return netaddr.from_endpoint(bound.decode())

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
            (zmq.IPV6, int(netaddr.is_ipv6(address))),
        ):
            s.setsockopt(opt, val)
        if self._keys is not None:
            self._keys.client().apply(s, peer)
        s.connect(netaddr.endpoint(address))
        self._dealers[peer] = s

    async def send(self, msg: Message) -> None:
        self.send_nowait(msg)

    def send_batch(self, msgs: list[Message]) -> None:
        """Send each of ``msgs`` without waiting. AppendEntries carrying the same run of
        entries (a broadcast: same first entry, same length) share one encoding of it."""
        runs: dict[tuple[int, int, int], msgspec.Raw] = {}
        for m in msgs:
            if isinstance(m, AppendEntries) and m.entries:
                first = m.entries[0]
                key = (first.index, first.term, len(m.entries))
                run = runs.get(key)
                if run is None:
                    run = runs[key] = encode_entries(m.entries)
                self.send_nowait(m, run)
            else:
                self.send_nowait(m)

    def send_nowait(self, msg: Message, entries: msgspec.Raw | None = None) -> None:
        """Queue ``msg`` without waiting; dropped if the peer is unknown or its queue full.
        ``entries``: the encoded entries of an AppendEntries, if already at hand."""
        sock = self._dealers.get(msg.dst)
        if sock is None or self._closed:
            self.dropped_sends += 1
            return
        frame = encode_frame(msg, self.cluster, entries)
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
        self._reader.start()
        inbox = self._inbox
        while not inbox:
            if self._closed:
                raise zmq.ZMQError(zmq.ENOTSOCK, "transport closed")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return inbox.popleft()

    def set_receiver(
        self,
        receiver: Callable[[Message], None] | None,
        *,
        after_burst: Callable[[], None] | None = None,
    ) -> None:
        """Hand each received message to ``receiver`` straight from the socket's reader
        callback, instead of queueing it for :meth:`recv` (``None``: back to queueing), and
        call ``after_burst`` once the reader has handed over what it read in one go (so the
        receiver can act on a batch). Saves a task switch per message. Call from the running
        event loop."""
        self._receiver = receiver
        self._reader.on_burst_end = after_burst if receiver is not None else None
        if receiver is not None:
            self._reader.start()

    def _received(self, parts: list[bytes]) -> None:
        user = None
        if self._keys is not None:
            user, parts = parts[0].decode("utf-8", "replace"), parts[1:]
        msg = self._decode(parts)
        if msg is None:
            return
        if user is not None and msg.src != user:
            src = msg.src[:64]
            self._drop(f"a message from {src!r} on a connection authenticated as {user!r}")
            return
        if self._receiver is not None:
            self._receiver(msg)
            return
        if len(self._inbox) >= MAX_INBOX:
            self.dropped_frames += 1
            return
        self._inbox.append(msg)
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

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
        self._reader.stop()
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)  # recv() sees the transport closed
        for s in self._dealers.values():
            s.close(linger=0)
        self._router.close(linger=0)
        if self._guard is not None:  # after the socket: never a CURVE socket without ZAP
            self._guard.close()
        if self._own_ctx:
            self._ctx.term()


def check_bind(address: str, *, secure: bool, insecure: bool) -> None:
    """Refuse to bind a non-loopback ``address`` without CURVE keys unless ``insecure``
    (``ValueError``, naming the address)."""
    netaddr.validate(address, bind=True)
    if not secure and not insecure and not netaddr.is_loopback(address):
        raise ValueError(
            f"refusing to bind {address} without CURVE keys: anyone on that network could "
            "read and forge the traffic (give keys, or set insecure = true)"
        )


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
