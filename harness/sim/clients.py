"""Simulated KV clients: what a user of the cluster sees, recorded and judged in every run.

Theory of operation
-------------------
Each simulated node runs the library's replicated KV state machine (``raft.kv.KVStore``, with
client sessions). :class:`SimClients` plays a few logical clients against the cluster, the way
a real client library does: each client has a session (its name, and a ``seq`` per command),
sends its operation to the node it believes leads, follows redirects, retries the *same*
``(client, seq)`` after a timeout, a lost proposal or a node that crashed, and gives up on an
operation after ``OP_DEADLINE_US`` (an ``info``: it may still take effect; the client goes on
under a new process number, as Jepsen's do). Writes and cas go through the log; reads use
ReadIndex (dissertation §6.4): the leader confirms its leadership with a heartbeat round and
the read is served once the node has applied up to the read index. Requests and replies take a
random network delay each way; clients are never partitioned from nodes (only nodes from each
other), so what they see is the cluster's behaviour, not the clients' isolation.

Every invoke and completion is recorded as a history event in the ``shared/HISTORY.md`` form
(time in nanoseconds of simulated time), and at the end of the run the history goes through the
same linearizability checker as a real chaos run's (``harness.checker``). Written values are
unique across the run, which keeps the check polynomial (the checker's unique-value path).

Two checks run while the run goes on:

* *exactly once*: an independent model of the KV store (:class:`ReferenceKV`: a dict and the
  last ``seq`` per client, not the library's code) applies every committed command in log order,
  each ``(client, seq)`` at most once; after a node applies an entry, the value of the entry's
  key in the node's store must equal the model's at that index. A session table that applies a
  retry twice shows here the moment the duplicate changes a value;
* the node-side of ReadIndex reads: a read is answered from the node's applied state only.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from harness.history import Op, OpF, OpType
from raft.core.errors import NotLeader, RaftError
from raft.core.raft import ReadState, Role
from raft.core.types import LogEntry, NodeId
from raft.kv import Cas, Write, decode_result, encode_command

if TYPE_CHECKING:
    from harness.sim.world import SimNode, World

#: a client's wait for one attempt's answer before it tries again elsewhere
ATTEMPT_TIMEOUT_US = 400_000
#: a client gives up on an operation (``info``) after this long
OP_DEADLINE_US = 2_000_000
#: one-way delay between a client and a node: minimum and mean of the exponential part
NET_MIN_US = 100
NET_MEAN_US = 500

_LEADER = Role.LEADER


@dataclass(slots=True)
class _Attempt:
    client: _Client
    number: int


@dataclass(slots=True)
class _Client:
    name: str
    process: int
    seq: int = 0
    #: the operation in progress: (f, key, value as recorded at invoke), or None
    op: tuple[OpF, str, Any] | None = None
    attempt: int = 0
    started: int = 0
    guess: NodeId | None = None
    #: the last value this client saw per key (what its next cas expects)
    seen: dict[str, int | None] | None = None


class ReferenceKV:
    """An independent model of the KV store: the value each committed index leaves its key at."""

    __slots__ = ("at", "expected", "sessions", "values")

    def __init__(self) -> None:
        self.values: dict[str, int] = {}
        self.sessions: dict[str, int] = {}
        self.at = 0
        #: index -> (key, value after applying it), for entries that name a key
        self.expected: dict[int, tuple[str, int | None]] = {}

    def apply(self, index: int, command: bytes) -> None:
        self.at = index
        try:
            cmd = json.loads(command)
            op, key = cmd["op"], cmd["key"]
        except (ValueError, TypeError, KeyError):
            return  # not a KV command (the nemesis's blind proposals): no effect
        client, seq = cmd.get("client"), cmd.get("seq", 0)
        if client is not None:
            if seq <= self.sessions.get(client, 0):
                self.expected[index] = (key, self.values.get(key))
                return  # a retry (or older): applied once already
            self.sessions[client] = seq
        if op == "write":
            self.values[key] = cmd["value"]
        elif op == "cas" and self.values.get(key) == cmd["expected"]:
            self.values[key] = cmd["new"]
        self.expected[index] = (key, self.values.get(key))


class SimClients:
    """The clients of one simulated run; see the module docstring."""

    def __init__(self, world: World, count: int, keys: int, interval_us: int) -> None:
        self.world = world
        self.rng = random.Random(f"{world.cfg.seed}/kv-clients")
        self.keys = [f"k{i}" for i in range(keys)]
        self.interval_us = interval_us
        self.clients = [_Client(f"c{i}", i, seen={}) for i in range(count)]
        self._next_process = count
        self._next_value = 0
        self.events: list[Op] = []
        self.active = True
        self.reference = ReferenceKV()
        self.stats = {"ok": 0, "fail": 0, "info": 0}
        #: node -> index -> (term, attempt): proposals waiting to be applied
        self._writes: dict[NodeId, dict[int, tuple[int, _Attempt]]] = {}
        #: node -> ReadIndex request id -> (attempt, key, highest index committed anywhere
        #: when the read reached the node)
        self._reads: dict[NodeId, dict[int, tuple[_Attempt, str, int]]] = {}
        #: node -> [(read index, attempt, key)] waiting for the node to apply that far
        self._parked: dict[NodeId, list[tuple[int, _Attempt, str]]] = {}

    # ---- scheduling -----------------------------------------------------------------------
    def _delay(self) -> int:
        return NET_MIN_US + int(self.rng.expovariate(1.0 / NET_MEAN_US))

    def _later(self, delay: int, fn: Callable[[Any], None], arg: Any) -> None:
        self.world.call_later(delay, fn, arg)

    def start(self) -> None:
        for c in self.clients:
            self._later(int(self.rng.expovariate(1.0 / self.interval_us)) + 1, self._begin, c)

    def stop(self) -> None:
        """No new operations; those in progress run to their end."""
        self.active = False

    # ---- history ----------------------------------------------------------------------------
    def _record(
        self, c: _Client, type_: OpType, value: Any, node: str | None, error: str | None
    ) -> None:
        assert c.op is not None
        f, key, _ = c.op
        self.events.append(
            Op.model_construct(
                index=len(self.events),
                time=self.world.now * 1000,
                process=c.process,
                type=type_,
                f=f,
                key=key,
                value=value,
                node=node,
                error=error,
                client=c.name if type_ == "invoke" else None,
            )
        )

    # ---- the client side ----------------------------------------------------------------------
    def _begin(self, c: _Client) -> None:
        if not self.active or c.op is not None:
            return
        rng = self.rng
        key = rng.choice(self.keys)
        roll = rng.random()
        value: Any
        f: OpF
        if roll < 0.4:
            f, value = "read", None
        else:
            self._next_value += 1
            if roll < 0.75:
                f, value = "write", self._next_value
            else:
                assert c.seen is not None
                f, value = "cas", (c.seen.get(key), self._next_value)
        c.seq += 1
        c.op = (f, key, value)
        c.started = self.world.now
        self._record(c, "invoke", value, None, None)
        self._send(c)

    def _send(self, c: _Client) -> None:
        c.attempt += 1
        attempt = _Attempt(c, c.attempt)
        names = self.world.by_name
        node = names.get(c.guess) if c.guess is not None else None
        if node is None:
            node = self.rng.choice(self.world.nodes)
        self._later(self._delay(), self._arrive, (node, attempt))
        self._later(ATTEMPT_TIMEOUT_US, self._timeout, attempt)

    def _current(self, attempt: _Attempt) -> bool:
        c = attempt.client
        return c.op is not None and c.attempt == attempt.number

    def _timeout(self, attempt: _Attempt) -> None:
        if self._current(attempt):
            attempt.client.guess = None
            self._retry(attempt.client, 0)

    def _retry(self, c: _Client, backoff_us: int) -> None:
        if self.world.now - c.started >= OP_DEADLINE_US:
            self._complete(c, "info", None, None, "timed out")
            return
        c.attempt += 1  # answers to the attempt that failed no longer count
        self._later(backoff_us + 1, self._resend, (c, c.attempt))

    def _resend(self, arg: tuple[_Client, int]) -> None:
        c, number = arg
        if c.op is not None and c.attempt == number:
            self._send(c)

    def _reply(self, attempt: _Attempt, node: NodeId, outcome: tuple[Any, ...]) -> None:
        self._later(self._delay(), self._answered, (attempt, node, outcome))

    def _answered(self, arg: tuple[_Attempt, NodeId, tuple[Any, ...]]) -> None:
        attempt, node, outcome = arg
        if not self._current(attempt):
            return
        c = attempt.client
        assert c.op is not None
        value = c.op[2]
        kind = outcome[0]
        if kind == "redirect":
            c.guess = outcome[1]
            self._retry(c, 1_000 if outcome[1] else 20_000)
        elif kind == "retry":
            self._retry(c, 5_000)
        elif kind == "read":
            self._complete(c, "ok", outcome[1], node, None)
        else:
            result = decode_result(outcome[1])
            if result.ok:
                self._complete(c, "ok", value, node, None)
            elif result.error == "mismatch":
                self._complete(c, "fail", value, node, "mismatch")
            else:
                self._complete(c, "info", value, node, result.error)

    def _complete(
        self,
        c: _Client,
        type_: Literal["ok", "fail", "info"],
        value: Any,
        node: str | None,
        error: str | None,
    ) -> None:
        assert c.op is not None
        assert c.seen is not None
        f, key, invoked = c.op
        if type_ == "info" and f == "read":
            value = None
        self._record(c, type_, value if f == "read" else invoked, node, error)
        self.stats[type_] += 1
        if type_ == "ok":
            c.seen[key] = value if f == "read" else (invoked if f == "write" else invoked[1])
        elif error == "mismatch":
            c.seen.pop(key, None)
        c.op = None
        c.attempt += 1
        if type_ == "info":
            c.process = self._next_process  # a process that got info never invokes again
            self._next_process += 1
        if self.active:
            self._later(int(self.rng.expovariate(1.0 / self.interval_us)) + 1, self._begin, c)

    # ---- the node side ------------------------------------------------------------------------
    def _arrive(self, arg: tuple[SimNode, _Attempt]) -> None:
        node, attempt = arg
        if node.core is None:
            return  # a crashed node answers nothing: the client times out
        world = self.world
        world.catch_up(node)
        if node.busy is not None:
            node.inbox.append(lambda: self._handle(node, attempt))
            return
        self._handle(node, attempt)
        world.stepped(node)

    def _handle(self, node: SimNode, attempt: _Attempt) -> None:
        core = node.core
        assert core is not None
        c = attempt.client
        assert c.op is not None
        if core.role is not _LEADER:
            self._reply(attempt, node.name, ("redirect", core.lead))
            return
        f, key, value = c.op
        try:
            if f == "read":
                request = core.read_index()
                floor = self.world.inv.max_committed
                self._reads.setdefault(node.name, {})[request] = (attempt, key, floor)
                return
            op = (
                Write(key=key, value=value)
                if f == "write"
                else Cas(key=key, expected=value[0], new=value[1])
            )
            index, term = core.propose(encode_command(op, c.name, c.seq))
        except NotLeader as exc:
            self._reply(attempt, node.name, ("redirect", exc.leader_hint))
            return
        except RaftError:
            self._reply(attempt, node.name, ("retry",))
            return
        self._writes.setdefault(node.name, {})[index] = (term, attempt)

    def applied(self, node: SimNode, entry: LogEntry, result: bytes) -> str | None:
        """``node`` applied ``entry`` with ``result``; returns an exactly-once violation."""
        ref = self.reference
        index = entry.index
        if index == ref.at + 1:
            ref.apply(index, entry.command)
        waiting = self._writes.get(node.name)
        if waiting:
            w = waiting.pop(index, None)
            if w is not None:
                term, attempt = w
                if term == entry.term:
                    self._reply(attempt, node.name, ("result", result))
                    self.world.inv.acknowledged(index, entry.command)
                    self.world.stats["acked"] += 1
                else:
                    self._reply(attempt, node.name, ("retry",))
        want = ref.expected.get(index)
        if want is None or node.kv is None:
            return None
        key, value = want
        got = node.kv.get(key)
        if got == value:
            return None
        return (
            f"{node.name} applied {entry.command.decode(errors='replace')} at {index}: "
            f"{key} = {got}, but applying each (client, seq) once gives {value}"
        )

    def read_states(self, node: SimNode, states: list[ReadState]) -> str | None:
        """ReadIndex answers; returns a violation: a read index below what was committed
        anywhere when the read arrived (dissertation §6.4: the leader must first confirm it
        still leads, so its commit index covers every committed entry)."""
        reads = self._reads.get(node.name)
        core = node.core
        assert core is not None
        problem = None
        for rs in states:
            waiting = reads.pop(rs.request, None) if reads else None
            if waiting is None:
                continue
            attempt, key, floor = waiting
            if rs.index is None:
                self._reply(attempt, node.name, ("redirect", core.lead))
                continue
            if rs.index < floor and problem is None:
                problem = (
                    f"{node.name} (term {core.term}) answered a read of {key} at read index "
                    f"{rs.index}, but index {floor} was committed when the read arrived"
                )
            self._parked.setdefault(node.name, []).append((rs.index, attempt, key))
        self.serve_reads(node)
        return problem

    def serve_reads(self, node: SimNode) -> None:
        parked = self._parked.get(node.name)
        if not parked or node.core is None or node.kv is None:
            return
        applied = node.core.log.applied
        still = []
        for index, attempt, key in parked:
            if index <= applied:
                self._reply(attempt, node.name, ("read", node.kv.get(key)))
            else:
                still.append((index, attempt, key))
        self._parked[node.name] = still

    def crashed(self, node: SimNode) -> None:
        """A node lost its memory: nothing it was about to answer will be answered."""
        self._writes.pop(node.name, None)
        self._reads.pop(node.name, None)
        self._parked.pop(node.name, None)
