"""A real ``orbital node`` process whose data directory is on the fault-injecting file system:
it refuses to start on corrupted data (naming file and offset), stops cleanly when its disk
fails (acknowledging nothing it could not make durable), and restarts once the disk works.
"""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from chaos.disk import pick_corruption
from chaos.diskfs import DiskMount, mounted
from chaos.toxiproxy import free_port
from raft.client import KVClient, KVError

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not Path("/dev/fuse").exists(), reason="needs /dev/fuse (scripts/setup.sh installs fuse3)"
    ),
]

START_TIMEOUT_S = 30.0


class OneNode:
    """One node (a cluster of one) with its data dir on a DiskMount; only its own process is
    ever signalled."""

    def __init__(self, tmp: Path, disk: DiskMount) -> None:
        self.tmp = tmp
        self.disk = disk
        self.client_addr = f"127.0.0.1:{free_port()}"
        self.config = tmp / "cluster.toml"
        self.config.write_text(
            "\n".join(
                [
                    'cluster_id = "disk"',
                    f'data_dir = "{disk.mountpoint}"',
                    "[nodes.n1]",
                    f'raft = "127.0.0.1:{free_port()}"',
                    f'client = "{self.client_addr}"',
                    "",
                ]
            )
        )
        self.log = tmp / "n1.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            argv = [sys.executable, "-m", "harness.cli", "node", "--config", str(self.config)]
            self.proc = subprocess.Popen(
                [*argv, "--id", "n1", "--quiet"], stdout=log, stderr=subprocess.STDOUT
            )

    def wait_exit(self, timeout: float = START_TIMEOUT_S) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def client(self) -> KVClient:
        return KVClient({"n1": self.client_addr}, timeout=3.0)

    async def wait_leader(self) -> None:
        async with asyncio.timeout(START_TIMEOUT_S):
            async with self.client() as c:
                while True:
                    try:
                        if (await c.status("n1")).get("role") == "leader":
                            return
                    except KVError:
                        pass
                    await asyncio.sleep(0.05)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[OneNode]:
    disk = DiskMount(tmp_path / "backing", tmp_path / "data")
    n = OneNode(tmp_path, disk)
    try:
        disk.start()
        yield n
    finally:
        n.kill()
        disk.stop()
        assert not mounted(tmp_path / "data")


async def put_all(n: OneNode, values: range) -> None:
    await n.wait_leader()
    async with n.client() as c:
        for v in values:
            await c.put("x", v)


async def read_x(n: OneNode) -> int | None:
    await n.wait_leader()
    async with n.client() as c:
        return await c.get("x")


def test_a_node_refuses_to_start_on_a_corrupted_last_record(node: OneNode) -> None:
    node.start()
    asyncio.run(put_all(node, range(1, 6)))
    node.kill()
    node.disk.call("lose-unsynced")
    data = node.disk.backing / "n1"
    spot = pick_corruption(data, "last-record", random.Random(2))
    node.disk.call("corrupt", path="n1/" + spot.path, offset=spot.offset, mask=0x01)
    node.start()
    assert node.wait_exit() == 1
    tail = node.log.read_text().strip().splitlines()[-1]
    where = f"{node.disk.mountpoint / 'n1' / spot.path} at byte offset {spot.record}"
    assert tail.startswith("orbital node n1: ")
    assert where in tail
    assert "corruption" in tail


def test_a_failing_fsync_stops_the_node_and_nothing_unsynced_is_acknowledged(
    node: OneNode,
) -> None:
    node.start()
    asyncio.run(put_all(node, range(1, 4)))
    node.disk.call("fail", errno="EIO", ops=["fsync"])

    async def doomed_put() -> None:
        async with node.client() as c:
            await c.put("x", 99)

    with pytest.raises(KVError):
        asyncio.run(doomed_put())
    assert node.wait_exit() == 1
    tail = node.log.read_text().strip().splitlines()[-1]
    assert tail.startswith("orbital node n1: ")
    assert "[EIO]" in tail
    node.disk.call("clear")
    node.disk.call("lose-unsynced")  # whatever the failed fsync did not write is gone
    node.start()
    assert asyncio.run(read_x(node)) == 3


def test_after_a_disk_full_crash_the_node_restarts_once_space_is_freed(node: OneNode) -> None:
    node.start()
    asyncio.run(put_all(node, range(1, 4)))
    node.disk.call("disk-full")

    async def doomed_put() -> None:
        async with node.client() as c:
            await c.put("x", 99)

    with pytest.raises(KVError):
        asyncio.run(doomed_put())
    assert node.wait_exit() == 1
    assert "[ENOSPC]" in node.log.read_text()
    node.disk.call("lose-unsynced")
    node.start()  # still full: it cannot even take its lock
    assert node.wait_exit() == 1
    node.disk.call("clear")  # space is freed
    node.start()
    assert asyncio.run(read_x(node)) == 3
    asyncio.run(put_all(node, range(4, 6)))
    assert asyncio.run(read_x(node)) == 5
