"""A replicated counter of your own on Orbital Raft: three nodes in one process.

    python examples/counter.py [--dir DATA_DIR]

The same class runs over the wire, one process per node (docs/library.md):

    cd examples && orbital node --config cluster.toml --id n1 --state-machine counter:Counter
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
from pathlib import Path

from raft import FileStorage, NodeId, RaftNode, ZmqTransport


class Counter:
    """The state machine: deterministic, so every replica ends in the same state."""

    def __init__(self) -> None:
        self.value = 0

    def apply(self, command: bytes) -> bytes:  # a committed command, in log order
        self.value += int(command or b"1")
        return str(self.value).encode()

    def snapshot(self) -> bytes:  # the whole state, for log compaction
        return str(self.value).encode()

    def restore(self, snapshot: bytes) -> None:  # the inverse of snapshot()
        self.value = int(snapshot)

    def query(self, request: bytes) -> bytes:  # a read (served after a ReadIndex round)
        return str(self.value).encode()


def make_nodes(ids: list[str], data: Path) -> dict[str, RaftNode[Counter]]:
    """One node per id, each with its own ZeroMQ transport (any free port) and data dir."""
    transports = {i: ZmqTransport(NodeId(i), "counter", "127.0.0.1:0", {}) for i in ids}
    for i, t in transports.items():  # tell each node where the others listen
        for j, other in transports.items():
            if i != j:
                t.connect(NodeId(j), other.address)
    return {i: RaftNode(i, ids, transports[i], FileStorage(data / i), Counter()) for i in ids}


async def main(data: Path) -> None:
    ids = ["n1", "n2", "n3"]
    nodes = make_nodes(ids, data)
    async with contextlib.AsyncExitStack() as stack:
        for node in nodes.values():
            await stack.enter_async_context(node)  # runs it; stops and releases it on exit
        leader = nodes[await nodes["n1"].wait_leader()]
        for _ in range(10):
            result = await leader.submit(b"1")  # returns once committed and applied
        print(f"leader {leader.id}: counter = {result.decode()}")
        await leader.read()  # linearizable read barrier (ReadIndex)
        print(f"read on {leader.id}: {leader.sm.query(b'').decode()}")
        applied = leader.status()["applied"]
        for node in nodes.values():
            await node.wait_applied(applied)
        print("replicas:", ", ".join(f"{n.id}={n.sm.value}" for n in nodes.values()))
    # every node has stopped and released its storage: the same directories reopen at once
    nodes = make_nodes(ids, data)
    async with contextlib.AsyncExitStack() as stack:
        for node in nodes.values():
            await stack.enter_async_context(node)
        leader = nodes[await nodes["n1"].wait_leader()]
        print(f"after a restart: counter = {(await leader.submit(b'5')).decode()}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="a replicated counter on three Raft nodes")
    parser.add_argument("--dir", type=Path, help="data directory (default: a temporary one)")
    args = parser.parse_args()
    with contextlib.ExitStack() as cleanup:
        data = args.dir or Path(cleanup.enter_context(tempfile.TemporaryDirectory()))
        asyncio.run(main(data))
