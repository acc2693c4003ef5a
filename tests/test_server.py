"""Real ``orbital node`` processes on 127.0.0.1 with FileStorage, driven by KVClient.

Only processes started here are ever signalled (by their PID, through the Popen we keep), and
a fixture finalizer kills whatever is still running, whatever the outcome.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.cli import main as orbital
from raft.client import CasMismatch, KVClient, KVError

pytestmark = pytest.mark.integration


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Processes:
    """The node processes this test started."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        ports = free_ports(6)
        self.ids = ["n1", "n2", "n3"]
        self.clients = {n: f"127.0.0.1:{ports[3 + i]}" for i, n in enumerate(self.ids)}
        lines = ['cluster_id = "itest"', 'data_dir = "data"', ""]
        for i, n in enumerate(self.ids):
            lines += [
                f"[nodes.{n}]",
                f'raft = "127.0.0.1:{ports[i]}"',
                f'client = "{self.clients[n]}"',
                "",
            ]
        self.config = tmp / "cluster.toml"
        self.config.write_text("\n".join(lines))
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, node: str) -> None:
        log = (self.tmp / f"{node}.log").open("ab")
        self.procs[node] = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "harness.cli",
                "node",
                "--config",
                str(self.config),
                "--id",
                node,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def kill(self, node: str) -> None:
        p = self.procs[node]
        p.send_signal(signal.SIGKILL)
        p.wait(10)

    def cleanup(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
                p.wait(10)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(tmp_path)
    try:
        for n in procs.ids:
            procs.start(n)
        yield procs
    finally:
        procs.cleanup()


async def leader_of(c: KVClient, nodes: list[str], timeout: float = 20.0) -> str:
    async with asyncio.timeout(timeout):
        while True:
            for n in nodes:
                try:
                    st = await c.status(n)
                except KVError:  # a node still starting answers nothing
                    continue
                if st.get("role") == "leader":
                    return n
            await asyncio.sleep(0.05)


def test_three_processes_serve_and_survive_leader_kill(cluster: Processes) -> None:
    async def main() -> None:
        async with KVClient(cluster.clients, timeout=20) as c:
            await c.put("x", 1)
            assert await c.get("x") == 1
            await c.cas("x", 1, 2)
            with pytest.raises(CasMismatch) as err:
                await c.cas("x", 1, 5)
            assert err.value.current == 2
            first = await leader_of(c, cluster.ids)
            cluster.kill(first)
            t0 = time.monotonic()
            await c.put("x", 3)
            failover = time.monotonic() - t0
            assert await c.get("x") == 3
            rest = [n for n in cluster.ids if n != first]
            second = await leader_of(c, rest)
            assert second != first
            print(f"failover write after SIGKILL of {first}: {failover:.3f}s, leader {second}")
        for n in rest:  # a clean shutdown on SIGTERM
            cluster.procs[n].send_signal(signal.SIGTERM)
        for n in rest:
            assert cluster.procs[n].wait(15) == 0, (cluster.tmp / f"{n}.log").read_text()
        roles = [
            json.loads(x)
            for x in (cluster.tmp / "data" / second / "roles.jsonl").read_text().splitlines()
        ]
        assert any(r["role"] == "leader" for r in roles)

    asyncio.run(main())


def test_bad_config_names_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('cluster_id = "c"\n[nodes.n1]\nraft = "10.0.0.1:5"\nclient = "127.0.0.1:1"\n')
    assert orbital(["node", "--config", str(bad), "--id", "n1"]) == 2
    assert "nodes.n1.raft" in capsys.readouterr().err
