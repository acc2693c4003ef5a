"""RaftNode: the asyncio driver of :class:`~raft.core.raft.RaftCore`.

Theory of operation
-------------------
One event loop, one *main loop* coroutine, and only it, or a pass run while it is parked,
touches the core. Everything that wants the core (a received message, a clock tick, a
client's proposal or read, a membership change) becomes an item in the inbox; the main loop
takes the items and steps them into the core, then, whenever ``core.has_ready()``, runs the
Ready contract of :mod:`raft.core.raft`:

1. ``rd = core.ready()``
2. send ``rd.messages`` at once (the core holds back every message that depends on state not
   yet durable, so all of a Ready's messages may leave before its persist; a leader's
   AppendEntries thus reach the followers while its own fsync runs);
3. persist, as one batch: hard state, then the snapshot, then the entries — every Storage
   write returns only once durable (fsync). A batch of at most ``PERSIST_INLINE_BYTES`` of
   commands and no snapshot is written on the loop's own thread; anything larger goes to the
   node's single persist thread (one handoff there, one back). Inline was measured faster on
   the 2-core bench machine (5-node ``bench.cluster``, interleaved runs: one client p50
   2.7-3.0 ms vs 3.4 ms through the thread, 64 clients 2400-2600 vs 2000-2300 writes/s):
   the messages already left in step 2, so the followers' fsyncs overlap the leader's
   either way, and the handoffs cost two thread wake-ups per batch;
4. restore the state machine from ``rd.snapshot``, apply ``rd.committed_entries``, serve
   ``rd.read_states``;
5. ``core.advance(rd)``; then, if the snapshot policy says so, compact.

While step 3 runs, items pile up (in ZeroMQ's queues and the inboxes) and are all stepped
after ``advance``, so they share the next batch and its single fsync (group commit). Nothing
steps the core between 1 and 5 because only the main loop does, and it is busy in 2 to 4.
The main loop does not yield after every batch (a follower's reply, released by ``advance``,
goes out in the very next pass); it yields once it has run ``MAX_RUN_S`` without awaiting.

When the main loop is parked (nothing to do), the end of a receive burst of the transport
(``set_receiver(..., after_burst=...)``) and a tick run the same steps right in their callback
(:meth:`RaftNode.kick`) instead of waking it: one task switch less per burst. Only Readies
persisted on this thread run there; one for the persist thread, a stop, or an error is handed
to the main loop. A burst is stepped as a whole, so it still shares one Ready and one fsync.

Two inboxes: Raft messages and ticks in one, client work (proposals, reads, calls) in the
other. The main loop always steps the Raft inbox first and takes at most
``MAX_CALLS_PER_BATCH`` client items per batch, so a flood of client requests can delay
neither heartbeats nor votes nor replies to the leader.

Clients: ``submit(command)`` proposes on the leader and resolves when an entry is applied at
the proposed index: with the proposal's term, its result; with another term,
:class:`ProposalLost` (a new leader overwrote it: it did *not* take effect). A proposal fails
as lost as soon as an entry of a *later* term is applied at an index at or below it: log
terms never decrease along the log, so the committed entry at the proposal's index will
carry at least that later term (no need to wait for the log to reach the index). If a
snapshot jumps over the index, :class:`OutcomeUnknown`. ``read()`` is ReadIndex
(dissertation §6.4): the leader confirms it still leads, and the call returns once this node
has applied up to the read index, so the caller's local read of the state machine is
linearizable.

Lifecycle: a node is usable as soon as it is built. Work asked of it before :meth:`run` has
started (a proposal, a read, :meth:`wait_applied`) is queued and served once it runs; only a
node that has *stopped* raises :class:`NodeStopped`. When :meth:`run` returns (after
:meth:`stop`, a cancellation or an error) it has released everything the node holds: the
transport, the storage (its directory lock, so a new node can open it in the same process),
the persist thread, the metrics HTTP server and the roles file. A node runs once; to restart
it, build a new :class:`RaftNode` on the same data directory. ``async with node:`` runs it in
a task and stops it (awaiting the release) on exit.

Observability: events go to the standard :mod:`logging` module (logger ``raft.node``, INFO,
with ``node``, ``term`` and ``event`` attributes on each record) unless a ``timeline``
callback is given. With ``metrics_address`` (``"127.0.0.1:9100"``; port 0 picks one) the node
serves Prometheus metrics over HTTP while it runs (:mod:`raft.metrics`); off by default.

Time: a tick task reads the node's clock (``clock``, the OS's monotonic clock by default; a
chaos run may fake it for the whole process with libfaketime) and enqueues one tick per
``tick_ms`` of clock time that passed (capped, so a paused process wakes with at most two
election timeouts' worth); with lease reads, the ticks the clock owes are also stepped before
client calls are (a process woken from a stop must not judge a read on a lease its missed
ticks would have ended). Timeline lines (``[t=0.150s] n1: ...``, t since ``epoch``) come
from the core's event callback; role and term changes are also appended to ``roles_path`` as
JSON lines ``{"time": ns, "node", "role", "term"}``, timed by ``record_clock`` (system-wide
CLOCK_MONOTONIC, the clock of ``history.jsonl`` and ``faults.jsonl``: the server reads it with
a raw system call, so that it stays true when the node's own clock is faked). A line is
written when the core changes role or term in memory, before that term is persisted: a node
killed in between comes back with its durable term, which may be lower than the last line
(a leader's term is always durable: its own vote in that term was persisted first).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TextIO, TypeVar

from raft.core.errors import RaftError
from raft.core.messages import Message
from raft.core.raft import RaftConfig, RaftCore, ReadState, Ready, Role
from raft.core.types import (
    ConfChange,
    ConfChangeType,
    ConfState,
    EntryKind,
    LogEntry,
    NodeId,
    Snapshot,
    decode_conf_entry,
)
from raft.kv import StateMachine
from raft.storage import Storage
from raft.transport import Transport

if TYPE_CHECKING:
    from raft.metrics import MetricsServer, NodeMetrics

__all__ = [
    "DEFAULT_CONFIG",
    "NodeStopped",
    "OutcomeUnknown",
    "ProposalLost",
    "RaftNode",
    "ReadFailed",
]

SM = TypeVar("SM", bound=StateMachine)
_LEADER = Role.LEADER

#: 10 ms ticks: heartbeats every 30 ms, election timeouts drawn from [150, 300) ms
DEFAULT_CONFIG = RaftConfig(election_ticks=15, heartbeat_ticks=3)
#: beyond this many queued items, received messages are dropped (Raft tolerates loss)
MAX_INBOX = 10_000
#: Raft messages and ticks stepped before the next Ready at most (bounds a batch)
MAX_BATCH_ITEMS = 4096
#: client items (proposals, reads, calls) stepped before the next Ready at most
MAX_CALLS_PER_BATCH = 1024
#: the main loop yields to other tasks after running this long without awaiting (seconds)
MAX_RUN_S = 0.002
#: a Ready whose entries hold at most this many command bytes (and no snapshot) is persisted
#: on the event loop's own thread; larger ones go to the persist thread (-1: always there)
PERSIST_INLINE_BYTES = int(os.environ.get("ORBITAL_PERSIST_INLINE_BYTES", 256 << 10))
#: the receive loop yields to the event loop after this many messages in a row
RECV_BURST = 64


_log = logging.getLogger("raft.node")


class ProposalLost(RaftError):
    """Another entry was committed at the proposal's index: the proposal did not take effect."""


class OutcomeUnknown(RaftError):
    """The proposal may or may not have taken effect (a snapshot covered its index)."""


class ReadFailed(RaftError):
    """A ReadIndex round failed (leadership was lost before it was confirmed)."""


class NodeStopped(RaftError):
    """The node has stopped (or was asked to): it takes no more work."""


@dataclass(slots=True)
class _Tick:
    pass


@dataclass(slots=True)
class _Call:
    fn: Callable[[], Any]
    future: asyncio.Future[Any]


@dataclass(slots=True)
class _Propose:
    command: bytes
    future: asyncio.Future[bytes]


@dataclass(slots=True)
class _Stop:
    pass


_RaftItem = Message | _Tick
_ClientItem = _Call | _Propose | _Stop


@dataclass(slots=True)
class _Proposal:
    term: int
    future: asyncio.Future[bytes]
    started: float = 0.0  #: perf_counter() at the proposal, when metrics are on


#: the states of a node's life: built, running, stopped (for good)
_NEW, _RUNNING, _STOPPED = "new", "running", "stopped"


def print_timeline(line: str) -> None:
    """A timeline sink printing to stdout, flushed."""
    print(line, flush=True)


class RaftNode(Generic[SM]):
    """One Raft node on an asyncio event loop; see the module docstring.

    ``peers`` is the bootstrap configuration: every initial voter, this node included if it is
    one (a node joining later is started with the current voters, not itself). Storage and
    state are loaded here, so a node built on an existing store restarts from it.

    ``timeline``: a callback for each event line (``[t=0.150s] n1: ...``); by default events
    go to :mod:`logging`. ``metrics_address``: serve Prometheus metrics there while running.
    ``roster``: every node that may ever be a member (the guard's roster, see
    :mod:`raft.core.guard`; ``None`` turns its sender rule off).
    """

    def __init__(
        self,
        node_id: str,
        peers: list[str],
        transport: Transport,
        storage: Storage,
        state_machine: SM,
        config: RaftConfig | None = None,
        *,
        tick_ms: float = 10.0,
        seed: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        record_clock: Callable[[], int] = time.monotonic_ns,
        epoch: float | None = None,
        timeline: Callable[[str], None] | None = None,
        roles_path: Path | None = None,
        persist_inline_bytes: int = PERSIST_INLINE_BYTES,
        metrics_address: str | None = None,
        roster: Iterable[str] | None = None,
    ) -> None:
        self.id = NodeId(node_id)
        self._inline_bytes = persist_inline_bytes
        self.transport = transport
        self.storage = storage
        self.sm = state_machine
        self.tick_s = tick_ms / 1000.0
        self._clock = clock
        #: the clock time up to which ticks were counted (see ``_due_ticks``)
        self._tick_last: float | None = None
        self._record_clock = record_clock
        self._epoch = time.monotonic() if epoch is None else epoch
        self._timeline = timeline
        self._roles: TextIO | None = None
        if roles_path is not None:
            self._roles = roles_path.open("a", encoding="utf-8", buffering=1)
        self._last_role: tuple[str, int] | None = None
        #: Raft messages and ticks (stepped first), and client work
        self._raft_inbox: deque[_RaftItem] = deque()
        self._client_inbox: deque[_ClientItem] = deque()
        self._wakeup: asyncio.Future[None] | None = None
        #: set by a pass run from a callback (see kick) for the main loop to act on: a Ready
        #: to persist on the thread, a stop that was drained, an error to raise
        self._deferred: Ready | None = None
        self._stopping = False
        self._failure: BaseException | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._proposals: dict[int, _Proposal] = {}
        self._read_requests: dict[int, asyncio.Future[int]] = {}
        self._applied_waiters: list[tuple[int, asyncio.Future[None]]] = []
        #: the commit audit (``FileStorage.note_commit``), if the storage keeps one; the last
        #: commit index noted while leading
        self._note_commit: Callable[[int, int, int], None] | None = getattr(
            storage, "note_commit", None
        )
        self._commit_noted = 0
        self._state = _NEW
        self._run_task: asyncio.Task[None] | None = None
        self._leader_waiters: list[asyncio.Future[str]] = []
        #: counters and histograms for Prometheus (None: metrics off, nothing is counted)
        self.metrics: NodeMetrics | None = None
        self.metrics_address = metrics_address
        self._metrics_server: MetricsServer | None = None
        self._last_lead: str | None = None
        if metrics_address is not None:
            from raft.metrics import NodeMetrics

            self.metrics = NodeMetrics(self)
        self.core = self._load(peers, config or DEFAULT_CONFIG, seed)
        self._lease_read = self.core.cfg.lease_read
        if roster is not None:  # every node that may ever be a member (raft.core.guard)
            self.core.guard.roster = frozenset(NodeId(n) for n in roster)
        self._record_role()

    def _load(self, peers: list[str], config: RaftConfig, seed: int | None) -> RaftCore:
        hs = self.storage.load_state()
        snap = self.storage.load_snapshot()
        entries = self.storage.load_log()
        bootstrap = ConfState(frozenset(NodeId(p) for p in peers))
        self.membership: ConfState = bootstrap if snap is None else snap.meta.conf
        if snap is not None:
            self.sm.restore(snap.data)
        return RaftCore(
            self.id,
            bootstrap,
            rng=random.Random(seed),
            config=config,
            hard_state=hs,
            snapshot=snap,
            entries=entries,
            log=self._on_core_event,
        )

    # ==== public API ========================================================================
    async def run(self) -> None:
        """Drive the node until :meth:`stop` (or cancellation); storage errors propagate.

        On return everything the node holds is released (see the module docstring). A node
        runs once: calling it again raises :class:`NodeStopped`.
        """
        if self._state != _NEW:
            raise NodeStopped(f"{self.id} has already run; build a new RaftNode to restart it")
        self._state = _RUNNING
        executor = self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"{self.id}-persist")
        helpers: list[asyncio.Task[None]] = []
        try:
            if self.metrics is not None and self.metrics_address is not None:
                from raft.metrics import MetricsServer

                self._metrics_server = MetricsServer.start(self.metrics, self.metrics_address)
            helpers.append(asyncio.create_task(self._tick_loop(), name=f"{self.id}-tick"))
            set_receiver = getattr(self.transport, "set_receiver", None)
            if set_receiver is not None:  # messages go to the inbox from the socket's reader,
                set_receiver(self._received, after_burst=self.kick)  # stepped after each burst
            else:
                helpers.append(asyncio.create_task(self._receive_loop(), name=f"{self.id}-recv"))
            await self._main_loop()
        finally:
            self._state = _STOPPED
            for t in helpers:
                t.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            # a persist still running (cancelled while awaited) finishes before storage closes
            executor.shutdown(wait=True)
            self._executor = None
            self._release()

    def _release(self) -> None:
        """Close everything the node holds (each step even if an earlier one failed)."""
        try:
            self._fail_everything(NodeStopped(f"{self.id} stopped"))
            for f in self._leader_waiters:
                _fail(f, NodeStopped(f"{self.id} stopped"))
            self._leader_waiters.clear()
        finally:
            try:
                if self._metrics_server is not None:
                    self._metrics_server.close()
                    self._metrics_server = None
            finally:
                try:
                    self.transport.close()
                finally:
                    try:
                        self.storage.close()
                    finally:
                        if self._roles is not None:
                            self._roles.close()
                            self._roles = None

    def stop(self) -> None:
        """Ask the main loop to finish (after the batch in progress); :meth:`run` returns
        once everything is released. Work asked of the node afterwards raises
        :class:`NodeStopped`."""
        if self._state == _STOPPED:
            return
        self._client_inbox.append(_Stop())
        self._wake()

    async def __aenter__(self) -> RaftNode[SM]:
        """Run the node in a task (``async with node: ...``)."""
        if self._run_task is None:
            self._run_task = asyncio.create_task(self.run(), name=f"{self.id}-run")
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Stop the node and wait until it has released everything; its error, if any,
        propagates."""
        task = self._run_task
        if task is None:
            return
        self.stop()
        await task

    @property
    def metrics_url(self) -> str | None:
        """Where the metrics are served while the node runs (``None`` when off)."""
        server = self._metrics_server
        return None if server is None else server.url

    def _check_open(self) -> None:
        if self._state == _STOPPED or self._stopping:
            raise NodeStopped(f"{self.id} is not running")

    async def submit(self, command: bytes) -> bytes:
        """Replicate ``command`` and return the state machine's result once applied.

        Raises ``NotLeader`` (with a hint), ``ProposalDropped`` (back-pressure or a transfer in
        progress: nothing was appended), :class:`ProposalLost`, :class:`OutcomeUnknown`.
        """
        return await self.propose(command)

    def propose(self, command: bytes, *, wake: bool = True) -> asyncio.Future[bytes]:
        """:meth:`submit` without a coroutine: the future of its outcome (for callbacks).

        Raises :class:`NodeStopped` at once if the node has stopped; every other outcome
        arrives through the future. Cancelling the future abandons the wait, not the command.
        ``wake=False``: only queue it; the caller calls :meth:`kick` once it has queued what
        it has (a server at the end of a receive burst: the burst is one batch, stepped in
        its callback).
        """
        self._check_open()
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._client_inbox.append(_Propose(command, fut))
        if wake:
            self._wake()
        return fut

    async def read(self) -> int:
        """Linearizable read barrier (ReadIndex); returns once the local state machine may be
        read. Raises ``NotLeader`` or :class:`ReadFailed`."""
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        def start() -> None:
            self._read_requests[self.core.read_index()] = fut

        await self._call(start)
        index = await fut
        await self.wait_applied(index)
        return index

    async def change_membership(self, change: ConfChange) -> None:
        """Propose a single-server change; returns once it is applied (for ADD_VOTER: once
        the node has been promoted to voter). Raises ``NotLeader``, ``ConfChangeError``..."""
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        def propose() -> None:
            index, term = self.core.propose_conf_change(change)
            self._track(index, term, fut)

        await self._call(propose)
        await fut
        if change.type is ConfChangeType.ADD_VOTER:
            while change.node not in self.membership.voters:
                await self.wait_applied(self.core.log.applied + 1)

    async def transfer_leader(self, target: str) -> None:
        """Start handing leadership to ``target`` (returns at once; raises ``NotLeader``)."""
        await self._call(lambda: self.core.transfer_leader(NodeId(target)))

    async def wait_applied(self, index: int) -> None:
        """Return once this node has applied every entry up to ``index``."""
        if self.core.log.applied >= index:
            return
        self._check_open()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._applied_waiters.append((index, fut))
        await fut

    async def wait_leader(self) -> str:
        """Return the leader's id once this node knows one (at once if it already does)."""
        lead = self.core.lead
        if lead is not None:
            return lead
        self._check_open()
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._leader_waiters.append(fut)
        return await fut

    def is_leader(self) -> bool:
        return self.core.is_leader()

    def get_state(self) -> tuple[int, bool]:
        """``(current_term, is_leader)``."""
        return self.core.term, self.core.is_leader()

    def leader(self) -> str | None:
        return self.core.lead

    def status(self) -> dict[str, Any]:
        core, log = self.core, self.core.log
        conf = self.membership
        return {
            "id": self.id,
            "role": core.role.value,
            "term": core.term,
            "leader": core.lead,
            "commit": log.committed,
            "applied": log.applied,
            "last_index": log.last_index(),
            "snapshot_index": log.snap_index,
            "voters": sorted(conf.voters),
            "learners": sorted(conf.learners),
            "refused": dict(core.guard.refused),
            # leader only: how far each peer's log is known to reach, and what it lacks
            "peers": {
                p: {"match": pr.match, "lag": max(0, log.last_index() - pr.match)}
                for p, pr in sorted(core.prs.items())
                if p != self.id and core.is_leader()
            },
            "metrics": self.metrics_url,
        }

    # ==== the main loop =====================================================================
    async def _main_loop(self) -> None:
        loop = asyncio.get_running_loop()
        ran_since = loop.time()
        while True:
            if self._failure is not None:
                raise self._failure
            rd, self._deferred = self._deferred, None  # taken from the core: finish it first
            if rd is None and (self._stopping or not self._drain()):
                return
            if rd is not None or self.core.has_ready():
                if await self._handle_ready(rd):
                    ran_since = loop.time()
                elif loop.time() - ran_since > MAX_RUN_S:
                    await asyncio.sleep(0)  # let the readers and the tick task run
                    ran_since = loop.time()
                continue
            if self._raft_inbox or self._client_inbox:
                continue
            self._wakeup = loop.create_future()
            try:
                await self._wakeup
            finally:
                self._wakeup = None

    def _wake(self) -> None:
        w = self._wakeup
        if w is not None and not w.done():
            w.set_result(None)

    def kick(self) -> None:
        """Step what the inboxes hold now, from a callback (the end of a receive burst, a
        tick), if the main loop is parked; otherwise it will get to it. Saves the main loop's
        wake-up (a future and a task step) per burst: the pass runs right in the callback.
        A Ready that needs the persist thread, a drained stop, or an error (a storage
        failure must stop the node, not end in the loop's exception handler) is handed to
        the main loop, woken for it."""
        w = self._wakeup
        if w is None or w.done():
            return
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            while True:
                if not self._drain():
                    self._stopping = True
                    break
                if not self.core.has_ready():
                    if self._raft_inbox or self._client_inbox:
                        continue
                    return  # all done: the main loop stays parked
                rd = self.core.ready()
                if self._needs_thread(rd):
                    self._deferred = rd
                    break
                self._finish_ready(rd)
                if loop.time() - start > MAX_RUN_S:
                    break
        except BaseException as exc:
            self._failure = exc
        if not w.done():
            w.set_result(None)

    def _drain(self) -> bool:
        """Step queued items into the core, Raft traffic first; False once a stop was asked
        for."""
        raft, core = self._raft_inbox, self.core
        audit = self._note_commit is not None
        for _ in range(min(len(raft), MAX_BATCH_ITEMS)):
            item = raft.popleft()
            if isinstance(item, _Tick):
                core.tick()
                continue
            try:
                core.step(item)
            except RaftError as exc:
                self._line(f"dropped {type(item).__name__} from {item.src}: {exc}")
                if self.metrics is not None:
                    self.metrics.count_dropped(item, "refused")
            if audit and core.role is _LEADER and core.log.committed > self._commit_noted:
                self._audit_commit()
        calls = self._client_inbox
        if calls and self._lease_read:
            # a lease is counted in ticks: a process that was stopped (SIGSTOP, a VM stall)
            # wakes with its reads ready before its tick task has run, and a read judged
            # before the owed ticks were stepped is served on a lease that ran out long ago
            for _ in range(self._due_ticks()):
                core.tick()
        for _ in range(min(len(calls), MAX_CALLS_PER_BATCH)):
            call = calls.popleft()
            if isinstance(call, _Propose):
                self._propose(call)
            elif isinstance(call, _Call):
                self._run_call(call)
            else:
                return False
        return True

    def _propose(self, item: _Propose) -> None:
        if item.future.done():  # the caller gave up (cancelled)
            return
        try:
            index, term = self.core.propose(item.command)
        except RaftError as exc:
            item.future.set_exception(exc)
            return
        self._track(index, term, item.future)

    def _track(self, index: int, term: int, fut: asyncio.Future[bytes]) -> None:
        old = self._proposals.pop(index, None)
        if old is not None:  # proposed here at an earlier term, overwritten since: undecided
            _fail(old.future, OutcomeUnknown(f"entry {index} was proposed again"))
        if self.metrics is None:
            self._proposals[index] = _Proposal(term, fut)
        else:
            self.metrics.proposals += 1
            self._proposals[index] = _Proposal(term, fut, time.perf_counter())

    @staticmethod
    def _run_call(call: _Call) -> None:
        if call.future.done():  # the caller gave up (cancelled)
            return
        try:
            call.future.set_result(call.fn())
        except RaftError as exc:
            call.future.set_exception(exc)

    async def _call(self, fn: Callable[[], Any]) -> Any:
        self._check_open()
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._client_inbox.append(_Call(fn, fut))
        self._wake()
        return await fut

    def _needs_thread(self, rd: Ready) -> bool:
        """Whether ``rd``'s persist goes to the persist thread (see the module docstring)."""
        return (
            rd.snapshot is not None
            or rd.compacted is not None
            or (bool(rd.entries) and sum(len(e.command) for e in rd.entries) > self._inline_bytes)
        )

    async def _handle_ready(self, rd: Ready | None = None) -> bool:
        """One pass of the Ready contract (over ``rd`` if the core's Ready was taken already);
        whether it awaited (let other tasks run)."""
        if rd is None:
            rd = self.core.ready()
        if not self._needs_thread(rd):
            self._finish_ready(rd)
            return False
        if rd.messages:  # step 2 before step 3: the core held whatever needs the persist
            self._send(rd.messages)
        await asyncio.get_running_loop().run_in_executor(self._executor, self._persist, rd)
        self._after_persist(rd)
        return True

    def _finish_ready(self, rd: Ready) -> None:
        """The Ready contract for a Ready persisted on this thread."""
        if rd.messages:  # step 2 before step 3: the core held whatever needs the persist
            self._send(rd.messages)
        if rd.hard_state is not None or rd.entries:
            self._persist(rd)  # small: inline beats two thread handoffs (see module doc)
        self._after_persist(rd)

    def _audit_commit(self) -> None:
        """Hand a leader's new commit index (and its entry's term) to the storage's audit,
        which writes it with the next append. Called after every step that can advance a
        leader's commit index (a reply stepped, ``advance``), so a checker can tell whether a
        leader ever committed by counting replicas of an entry of an earlier term."""
        core = self.core
        log = core.log
        if log.committed > self._commit_noted and self._note_commit is not None:
            self._commit_noted = log.committed
            term = log.term(log.committed)
            self._note_commit(log.committed, -1 if term is None else term, core.term)

    def _send(self, messages: list[Message]) -> None:
        self.transport.send_batch(messages)
        if self.metrics is not None:
            self.metrics.count_sent(messages)

    def _after_persist(self, rd: Ready) -> None:
        """Steps 4 and 5 of the contract."""
        if rd.snapshot is not None:
            self._restore(rd.snapshot)
        self._apply(rd.committed_entries)
        self._serve_reads(rd.read_states)
        self.core.advance(rd)
        if self.core.role is _LEADER and self.core.log.committed > self._commit_noted:
            self._audit_commit()  # a leader's own entries count once durable
        self._wake_applied_waiters()
        if self.core.lead != self._last_lead:
            self._leader_changed()
        if self.core.should_compact():
            self.core.compact(self.core.log.applied, self.sm.snapshot())
            if self.metrics is not None:
                self.metrics.snapshots_taken += 1

    def _leader_changed(self) -> None:
        lead = self._last_lead = self.core.lead
        if lead is None:
            return
        if self.metrics is not None:
            self.metrics.leader_changes += 1
        waiters, self._leader_waiters = self._leader_waiters, []
        for f in waiters:
            if not f.done():
                f.set_result(lead)

    def _persist(self, rd: Ready) -> None:
        """Step 3 of the contract; each write is durable on return (timed for the metrics)."""
        if self.metrics is None:
            self._write(rd)
            return
        started = time.perf_counter()
        self._write(rd)
        self.metrics.fsync_seconds.observe(time.perf_counter() - started)

    def _write(self, rd: Ready) -> None:
        s = self.storage
        if rd.hard_state is not None:
            s.save_state(rd.hard_state)
        for snap in (rd.snapshot, rd.compacted):
            if snap is not None:
                s.save_snapshot(snap)
        if rd.entries:
            s.append_log(rd.entries)

    def _restore(self, snap: Snapshot) -> None:
        self.sm.restore(snap.data)
        self.membership = snap.meta.conf
        if self.metrics is not None:
            self.metrics.snapshots_installed += 1
        for index in sorted(i for i in self._proposals if i <= snap.meta.index):
            p = self._proposals.pop(index)
            _fail(p.future, OutcomeUnknown(f"a snapshot at {snap.meta.index} covered {index}"))
        self._fail_superseded(snap.meta.index, snap.meta.term)

    def _apply(self, entries: list[LogEntry]) -> None:
        for e in entries:
            result = b""
            if e.kind is EntryKind.NORMAL:
                result = self.sm.apply(e.command)
            elif e.kind is EntryKind.CONFIG:
                _, self.membership = decode_conf_entry(e.command)
            p = self._proposals.pop(e.index, None)
            if p is None or p.future.done():
                continue
            if p.term == e.term:
                p.future.set_result(result)
                if p.started:
                    assert self.metrics is not None
                    self.metrics.proposal_seconds.observe(time.perf_counter() - p.started)
            else:
                _fail(p.future, ProposalLost(f"entry {e.index} of term {e.term} replaced it"))
        if entries:
            self._fail_superseded(entries[-1].index, entries[-1].term)

    def _fail_superseded(self, index: int, term: int) -> None:
        """Entry ``index`` of ``term`` is committed: every pending proposal above it from an
        earlier term is lost (terms never decrease along the log, so the committed entry at
        its index will be of ``term`` or later). Proposals are tracked in the order they were
        made, hence in non-decreasing term: only the oldest ones need looking at."""
        props = self._proposals
        while props:
            at, p = next(iter(props.items()))
            if p.term >= term:
                return
            del props[at]
            _fail(p.future, ProposalLost(f"entry {index} of term {term} committed before it"))

    def _serve_reads(self, states: list[ReadState]) -> None:
        for rs in states:
            fut = self._read_requests.pop(rs.request, None)
            if fut is None or fut.done():
                continue
            if rs.index is None:
                fut.set_exception(ReadFailed(f"read {rs.request} failed: leadership lost"))
            else:
                fut.set_result(rs.index)

    def _wake_applied_waiters(self) -> None:
        applied = self.core.log.applied
        waiting = []
        for index, fut in self._applied_waiters:
            if fut.done():
                continue
            if index <= applied:
                fut.set_result(None)
            else:
                waiting.append((index, fut))
        self._applied_waiters = waiting

    def _fail_everything(self, exc: RaftError) -> None:
        futures: list[asyncio.Future[Any]] = [p.future for p in self._proposals.values()]
        futures += list(self._read_requests.values())
        futures += [f for _, f in self._applied_waiters]
        self._proposals.clear()
        self._read_requests.clear()
        self._applied_waiters.clear()
        while self._client_inbox:
            item = self._client_inbox.popleft()
            if not isinstance(item, _Stop):
                futures.append(item.future)
        self._raft_inbox.clear()
        for f in futures:
            _fail(f, exc)

    # ==== helpers: receiving and ticking ======================================================
    def _received(self, msg: Message) -> None:
        """A message from the transport's reader, which calls :meth:`kick` after its burst."""
        if len(self._raft_inbox) < MAX_INBOX:
            self._raft_inbox.append(msg)
        elif self.metrics is not None:
            self.metrics.count_dropped(msg, "inbox_full")

    async def _receive_loop(self) -> None:
        inbox = self._raft_inbox
        burst = 0
        while True:
            msg = await self.transport.recv()
            if len(inbox) < MAX_INBOX:
                inbox.append(msg)
                self._wake()
            elif self.metrics is not None:
                self.metrics.count_dropped(msg, "inbox_full")
            burst += 1
            if burst >= RECV_BURST:  # a recv that is ready at once never yields by itself
                burst = 0
                await asyncio.sleep(0)

    async def _tick_loop(self) -> None:
        self._tick_last = self._clock()
        while True:
            await asyncio.sleep(self.tick_s)
            n = self._due_ticks()
            if n <= 0:
                continue
            for _ in range(n):
                self._raft_inbox.append(_Tick())
            self.kick()

    def _due_ticks(self) -> int:
        """The ticks the clock owes since they were last counted (capped at two election
        timeouts), counted now: the tick task's, or a lease read's before it is judged."""
        last = self._tick_last
        if last is None:
            return 0
        now = self._clock()
        n = int((now - last) / self.tick_s)
        if n <= 0:
            return 0
        cap = 2 * self.core.cfg.election_ticks
        self._tick_last = now if n > cap else last + n * self.tick_s
        return min(n, cap)

    # ==== timeline and roles ==================================================================
    def _on_core_event(self, text: str) -> None:
        self._line(text)
        if hasattr(self, "core"):
            self._record_role()

    def _line(self, text: str) -> None:
        if self._timeline is not None:
            self._timeline(f"[t={time.monotonic() - self._epoch:.3f}s] {self.id}: {text}")
        elif _log.isEnabledFor(logging.INFO):
            core = getattr(self, "core", None)
            term = None if core is None else core.term
            extra = {"node": self.id, "term": term, "event": text}
            _log.info("%s term=%s: %s", self.id, term, text, extra=extra)

    def _record_role(self) -> None:
        now = (self.core.role.value, self.core.term)
        if now == self._last_role:
            return
        self._last_role = now
        if self.core.role is Role.LEADER:  # what it learned as a follower is not its decision
            self._commit_noted = self.core.log.committed
        if self.metrics is not None:
            self.metrics.role_entered(now[0])
        if self._roles is not None:
            line = {"time": self._record_clock(), "node": self.id, "role": now[0], "term": now[1]}
            self._roles.write(json.dumps(line) + "\n")


def _fail(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
        # a caller that already gave up must not produce "exception never retrieved" noise
        fut.exception()
