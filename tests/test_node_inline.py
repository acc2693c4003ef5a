"""RaftNode's pass run from the transport's burst callback (``set_receiver(after_burst=...)``)
while the main loop is parked: a follower fed by hand through a fake transport.

The fake hands messages to the node exactly as ZmqTransport's reader does (the receiver per
message, then ``after_burst``), from a callback of the event loop, and records what the node
sends. No real network and no election: the node is a follower of n1 at term 1 throughout
(elections are at least 150 ms away and every test ends well before; see ``_ticks_far``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

import pytest

from raft.core.messages import AppendEntries, AppendEntriesResponse, Message
from raft.core.raft import RaftConfig
from raft.core.types import LogEntry, NodeId
from raft.kv import KVStore, Write, encode_command
from raft.node import RaftNode
from raft.storage import MemoryStorage
from raft.wal import StorageError

N1, N2 = NodeId("n1"), NodeId("n2")
#: elections far beyond any test's length, so the follower never campaigns
_ticks_far = RaftConfig(election_ticks=500, heartbeat_ticks=3)


class BurstTransport:
    """Delivers bursts the way ZmqTransport's reader does; records what is sent."""

    def __init__(self) -> None:
        self.sent: list[Message] = []
        self.receiver: Callable[[Message], None] | None = None
        self.after_burst: Callable[[], None] | None = None

    def set_receiver(
        self,
        receiver: Callable[[Message], None] | None,
        *,
        after_burst: Callable[[], None] | None = None,
    ) -> None:
        self.receiver, self.after_burst = receiver, after_burst

    def deliver(self, msgs: Sequence[Message]) -> None:
        """One burst, from an event loop callback (as a reader's ``add_reader`` callback)."""
        assert self.receiver is not None
        assert self.after_burst is not None
        for m in msgs:
            self.receiver(m)
        self.after_burst()

    async def send(self, msg: Message) -> None:
        self.sent.append(msg)

    def send_batch(self, msgs: list[Message]) -> None:
        self.sent.extend(msgs)

    async def recv(self) -> Message:
        raise AssertionError("a node given set_receiver never calls recv")

    def close(self) -> None:
        pass


class FailingStorage(MemoryStorage):
    """Fails every append once ``fail`` is set, as a disk that died."""

    fail = False

    def __init__(self) -> None:
        super().__init__()
        self.appends: list[int] = []  #: entries per append_log call (one fsync each)

    def append_log(self, entries: Sequence[LogEntry]) -> None:
        if self.fail:
            raise StorageError("append_log: the disk is gone")
        super().append_log(entries)
        self.appends.append(len(entries))


def command(i: int, size: int = 0) -> bytes:
    return encode_command(Write(key=f"k{i}" + "x" * size, value=i))


def append(prev: int, count: int, commit: int, size: int = 0) -> AppendEntries:
    entries = tuple(LogEntry(prev + k, 1, command(prev + k, size)) for k in range(1, count + 1))
    return AppendEntries(N1, N2, 1, prev, 1 if prev else 0, entries, commit)


def acks(t: BurstTransport) -> list[int]:
    return [m.match_index for m in t.sent if isinstance(m, AppendEntriesResponse) and m.success]


async def until(check: Callable[[], bool], what: str) -> None:
    async with asyncio.timeout(5):
        while not check():
            await asyncio.sleep(0.001)
    assert check(), what


Body = Callable[[RaftNode[KVStore], BurstTransport, FailingStorage], Awaitable[None]]


def run(body: Body) -> None:
    async def main() -> None:
        t, storage = BurstTransport(), FailingStorage()
        node = RaftNode(
            "n2", ["n1", "n2", "n3"], t, storage, KVStore(), _ticks_far, timeline=None, seed=1
        )
        task = asyncio.create_task(node.run())
        try:
            await until(lambda: t.after_burst is not None, "the node registered its receiver")
            await body(node, t, storage)
        finally:
            node.stop()
            async with asyncio.timeout(5):
                await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())


def test_a_burst_is_stepped_in_the_callback_and_acknowledged_after_its_persist() -> None:
    async def body(node: RaftNode[KVStore], t: BurstTransport, storage: FailingStorage) -> None:
        loop = asyncio.get_running_loop()
        loop.call_soon(t.deliver, [append(0, 3, 0)])
        await until(lambda: acks(t) == [3], "three entries acknowledged")
        assert [e.index for e in storage.load_log()] == [1, 2, 3]
        # two AppendEntries in one burst: one pass, one persist (group commit) for both
        loop.call_soon(t.deliver, [append(3, 2, 3), append(5, 2, 3)])
        await until(lambda: acks(t)[-1:] == [7], "the burst acknowledged")
        assert acks(t) == [3, 5, 7]
        assert storage.appends == [3, 4]
        assert node.status()["applied"] == 3  # commit 3 arrived with the burst
        assert node.sm.get("k3") == 3

    run(body)


def test_a_ready_for_the_persist_thread_goes_to_the_main_loop() -> None:
    async def body(node: RaftNode[KVStore], t: BurstTransport, storage: FailingStorage) -> None:
        node._inline_bytes = 100  # entries bigger than this are persisted on the thread
        asyncio.get_running_loop().call_soon(t.deliver, [append(0, 2, 0, size=200)])
        await until(lambda: acks(t) == [2], "acknowledged after the thread's persist")
        assert [e.index for e in storage.load_log()] == [1, 2]

    run(body)


def test_a_storage_failure_in_the_callback_stops_the_node() -> None:
    async def main() -> None:
        t, storage = BurstTransport(), FailingStorage()
        node = RaftNode(
            "n2", ["n1", "n2", "n3"], t, storage, KVStore(), _ticks_far, timeline=None, seed=1
        )
        task = asyncio.create_task(node.run())
        await until(lambda: t.after_burst is not None, "the node registered its receiver")
        storage.fail = True
        asyncio.get_running_loop().call_soon(t.deliver, [append(0, 1, 0)])
        with pytest.raises(StorageError, match="the disk is gone"):
            async with asyncio.timeout(5):
                await task
        assert acks(t) == [], "nothing acknowledged that was not persisted"

    asyncio.run(main())
