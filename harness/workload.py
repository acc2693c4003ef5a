"""Client workers that run a scenario's workload and record the history.

Theory of operation
-------------------
The workload is ``clients`` *slots*, each a loop on the runner's asyncio event loop. A slot is
one logical process at a time in the ``shared/HISTORY.md`` sense: it invokes an operation,
waits for its outcome and records both. When an outcome is unknown (``info``: a timeout after a
possible delivery, or any unexpected client error) the slot's process is finished for good:
the slot closes its :class:`~harness.system.Client` and continues as a *new* process number
with a new client (a new session), exactly as Jepsen does. Clients come from the system under
test (``open_client``): the history is recorded the same way for every system.

Each slot reaches the nodes through the proxies of its client source (``client`` or
``client-<group>``), so a partition that places a source on one side cuts its clients off the
other side, as real clients in that region would be. Every invoke names its client (``c<slot>``;
``final-reads`` for the closing reads) and, for a placed source, its ``group``.

Operations are generated per slot by :func:`op_stream`, a pure function of the seed and the
slot number: the same seed gives every slot the same sequence of operations whatever the
timing. Written values are unique in the whole run (``counter * clients + slot + 1``), so the
linearizability checker's unique-values fast path applies. A cas expects, with probability
``cas_own_value``, the last value this slot wrote to the key (else ``null``), which makes both
successful and mismatching cas operations common.

A shared :class:`RateLimiter` spaces invocations ``1/rate`` seconds apart over all slots.
Outcomes are the client's :class:`~harness.system.Completion` (``ok`` with ``node`` = the node
that answered, ``fail`` with ``error: "mismatch"`` for a cas that did not match, ``info``);
an exception out of the client is ``info``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field

from harness.history import HistoryWriter, OpF
from harness.scenario import Workload
from harness.system import Client, Operation

#: one generated operation (``harness.system.Operation``)
OpSpec = Operation
#: opens a client: (node -> address, process number, timeout) -> Client
ClientFactory = Callable[[Mapping[str, str], int, float], Client]


def key_name(i: int) -> str:
    return f"k{i}"


def client_id(seed: int, process: int) -> str:
    """The session id of a process's client: its writes and cas operations carry it, with
    ``seq`` 1, 2, ... (:mod:`harness.exactly_once` finds them in the log by it)."""
    return f"w{seed}-p{process}"


def op_stream(workload: Workload, seed: int, slot: int) -> Iterator[OpSpec]:
    """The endless, deterministic sequence of operations of one slot."""
    rng = random.Random(f"orbital-workload:{seed}:{slot}")
    kinds: list[OpF] = [k for k, w in workload.mix.items() if w > 0]
    weights = [workload.mix[k] for k in kinds]
    last_written: dict[str, int] = {}
    for counter in itertools.count():
        f = rng.choices(kinds, weights)[0]
        key = key_name(rng.randrange(workload.keys))
        fresh = counter * workload.clients + slot + 1
        if f == "read":
            yield OpSpec("read", key, None)
            continue
        if f == "write":
            last_written[key] = fresh
            yield OpSpec("write", key, fresh)
            continue
        own = last_written.get(key) if rng.random() < workload.cas_own_value else None
        last_written[key] = fresh
        yield OpSpec("cas", key, (own, fresh))


class RateLimiter:
    """Hands out invocation instants ``1/rate`` apart, shared by every slot."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self._next = time.monotonic()

    async def wait(self) -> None:
        now = time.monotonic()
        slot = max(now, self._next)
        self._next = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)


@dataclass(slots=True)
class WorkloadStats:
    """Live counts for the progress display and results.json."""

    outcomes: Counter[str] = field(default_factory=Counter)
    by_f: dict[str, Counter[str]] = field(default_factory=dict)
    processes: int = 0

    def count(self, f: str, outcome: str) -> None:
        self.outcomes[outcome] += 1
        self.by_f.setdefault(f, Counter())[outcome] += 1


class ClientWorkers:
    """Runs the slots until stopped; every event goes to ``history``."""

    def __init__(
        self,
        workload: Workload,
        seed: int,
        history: HistoryWriter,
        sources: Mapping[str, dict[str, str]],
        placement: Mapping[str, int],
        open_client: ClientFactory,
    ) -> None:
        """``sources``: client source -> node addresses; ``placement``: source -> slots;
        ``open_client``: the system's clients."""
        self.open_client = open_client
        self.workload = workload
        self.seed = seed
        self.history = history
        self.sources = dict(sources)
        self.slot_sources = [s for s, n in placement.items() for _ in range(n)]
        self.stats = WorkloadStats()
        self.limiter = RateLimiter(workload.rate)
        self._next_process = itertools.count()
        self._stop = asyncio.Event()

    def new_process(self) -> int:
        self.stats.processes += 1
        return next(self._next_process)

    def stop(self) -> None:
        """Ask every slot to finish its current operation and return."""
        self._stop.set()

    async def run(self) -> None:
        """Run every slot until :meth:`stop` (operations in flight finish first)."""
        async with asyncio.TaskGroup() as tg:
            for slot, source in enumerate(self.slot_sources):
                tg.create_task(self._slot(slot, source))

    async def _slot(self, slot: int, source: str) -> None:
        ops = op_stream(self.workload, self.seed, slot)
        while not self._stop.is_set():
            process = self.new_process()
            async with self._client(process, source) as client:
                await self._process(process, client, ops, f"c{slot}", source)

    @contextlib.asynccontextmanager
    async def _client(self, process: int, source: str) -> AsyncIterator[Client]:
        client = self.open_client(self.sources[source], process, self.workload.timeout)
        try:
            yield client
        finally:
            with contextlib.suppress(Exception):  # a client that cannot close is gone anyway
                await client.close()

    async def _process(
        self, process: int, client: Client, ops: Iterator[OpSpec], name: str, source: str
    ) -> None:
        """Run operations as ``process`` of the client ``name`` until it gets ``info`` or the
        workload stops."""
        while not self._stop.is_set():
            await self.limiter.wait()
            if self._stop.is_set():
                return
            outcome = await perform(self.history, process, client, next(ops), name, source)
            self.stats.count(outcome[0], outcome[1])
            if outcome[1] == "info":
                return

    async def final_reads(self, keys: int, source: str, attempts: int = 3) -> int:
        """Read every key once (retrying a failed read as a new operation); ok reads."""
        done = 0
        for i in range(keys):
            for _ in range(attempts):
                process = self.new_process()
                async with self._client(process, source) as client:
                    _, outcome = await perform(
                        self.history,
                        process,
                        client,
                        OpSpec("read", key_name(i), None),
                        "final-reads",
                        source,
                    )
                self.stats.count("final-read", outcome)
                if outcome == "ok":
                    done += 1
                    break
        return done


async def perform(
    history: HistoryWriter,
    process: int,
    client: Client,
    op: OpSpec,
    name: str | None = None,
    source: str = "client",
) -> tuple[str, str]:
    """Invoke ``op`` as ``process``, record the invoke and the outcome; ``(f, outcome)``.
    The invoke names the client (``name``) and its group (the client source's, if placed)."""
    group = source.removeprefix("client-") if source != "client" else None
    history.invoke(process, op.f, op.key, op.value, client=name, group=group)
    try:
        done = await client.invoke(op)
    except Exception as exc:  # any client trouble: the outcome is unknown
        history.complete(process, "info", error=f"{type(exc).__name__}: {exc}"[:200])
        return op.f, "info"
    value = done.value if done.type == "ok" else None
    history.complete(process, done.type, value, node=done.node, error=done.error)
    return op.f, done.type
