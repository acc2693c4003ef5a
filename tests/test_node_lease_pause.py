"""A lease read on a leader that wakes from a stop (SIGSTOP, a VM stall) — in one event loop.

A lease is counted in the leader's own ticks, and a stopped process counts none: its clock
moves on, its tick task does not run. On waking, a read that is ready before the tick task
has run must not be judged on the lease as it was when the process stopped. Here the old
leader's clock stands still while it is cut off (a stopped process: no ticks), the others
elect a new leader and acknowledge a write, then the clock jumps to the present (the wake)
and a read is stepped at once, before the tick task can run: it must give no value (the
node steps the ticks its clock owes first). Planted (the catch-up removed), the read is
served from the lease: the value before the acknowledged write.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from raft import node as node_module
from raft.core.errors import NotLeader
from raft.core.raft import RaftConfig
from raft.core.types import NodeId
from raft.kv import KVStore, decode_result
from raft.node import RaftNode, ReadFailed
from raft.storage import MemoryStorage
from raft.transport import MemoryNetwork
from tests.test_node_memory import Cluster, put, run, wait_for

CONFIG = RaftConfig(election_ticks=10, heartbeat_ticks=2, lease_read=True)


class StoppableClock:
    """time.monotonic, or the moment it was stopped until it is woken."""

    def __init__(self) -> None:
        self.stopped_at: float | None = None

    def __call__(self) -> float:
        return time.monotonic() if self.stopped_at is None else self.stopped_at

    def stop(self) -> None:
        self.stopped_at = time.monotonic()

    def wake(self) -> None:
        self.stopped_at = None


class ClockedCluster(Cluster):
    def __init__(self) -> None:
        super().__init__(3, CONFIG, seed=5)
        self.clocks = {n: StoppableClock() for n in self.ids}

    def clock(self, node_id: str) -> StoppableClock:
        return self.clocks[node_id]


def read_after_waking(plant: bool) -> tuple[str, Any]:
    """What the old leader's read gave: ("value", v), or ("refused", the error)."""
    outcome: list[tuple[str, Any]] = []

    async def main() -> None:
        c = ClockedCluster()
        try:
            c.start_all()
            old = await c.leader()
            assert decode_result(await old.submit(put("x", 1, 1))).ok
            await old.read()  # a fresh lease
            c.clocks[old.id].stop()  # the process stops: its ticks stop
            others = [n for n in c.ids if n != old.id]
            c.net.isolate(NodeId(old.id), [NodeId(n) for n in others])

            def new_leader() -> RaftNode[KVStore] | None:
                for n in others:
                    node = c.nodes[n]
                    if node.is_leader() and node.core.term > old.core.term:
                        return node
                return None

            new = await wait_for(new_leader, 10.0)
            assert decode_result(await new.submit(put("x", 2, 2))).ok
            assert old.is_leader(), "the stopped leader saw nothing"
            if plant:
                old._lease_read = False  # the catch-up is off: the bug
            # the wake: the clock is back to the present, and the read is stepped before
            # the tick task (or anything else) can run
            c.clocks[old.id].wake()
            barrier: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

            def start() -> None:
                old._read_requests[old.core.read_index()] = barrier

            old._client_inbox.append(node_module._Call(start, done))
            old._drain()
            old._wake()
            try:
                async with asyncio.timeout(1.0):
                    await done
                    await barrier
                    await old.wait_applied(barrier.result())
                outcome.append(("value", old.sm.get("x")))
            except (NotLeader, ReadFailed, TimeoutError) as exc:
                outcome.append(("refused", exc))
        finally:
            await c.stop_all()

    run(main)
    return outcome[0]


def test_a_lease_read_on_waking_counts_the_ticks_the_stop_owed_first() -> None:
    kind, what = read_after_waking(plant=False)
    assert kind == "refused", f"served {what!r} after x=2 was acknowledged elsewhere"


def test_planted_without_the_catch_up_the_stale_value_is_served() -> None:
    assert read_after_waking(plant=True) == ("value", 1)


def test_without_lease_reads_the_drain_reads_no_clock() -> None:
    """The catch-up is for lease reads only: the hot path of the default reads no clock."""
    reads: list[float] = []

    async def main() -> None:
        def clock() -> float:
            reads.append(time.monotonic())
            return time.monotonic()

        n = RaftNode(
            "n1", ["n1"], MemoryNetwork().join(NodeId("n1")), MemoryStorage(), KVStore(),
            RaftConfig(),
            clock=clock,
        )  # fmt: skip
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        n._client_inbox.append(node_module._Call(lambda: None, done))
        n._tick_last = 0.0
        n._drain()
        assert done.done()

    asyncio.run(main())
    assert reads == []
