"""Real ``orbital node`` processes on 127.0.0.1 with FileStorage, driven by KVClient.

Only processes started here are ever signalled (by their PID, through the Popen we keep), and
a fixture finalizer kills whatever is still running, whatever the outcome.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
import zmq.asyncio

from chaos.toxiproxy import free_port
from harness.cli import main as orbital
from raft.client import CasMismatch, KVClient, KVError
from raft.node import ProposalLost

pytestmark = pytest.mark.integration


def free_ports(n: int) -> list[int]:
    """Ports outside the ephemeral range (see ``chaos.toxiproxy.free_port``)."""
    return [free_port() for _ in range(n)]


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


class _StubNode:
    """Just what ClientServer's write path uses: proposals that complete when told to."""

    id = "stub"

    def __init__(self) -> None:
        self.proposals: list[asyncio.Future[bytes]] = []
        self.calls: list[str] = []  #: "propose" / "propose+wake" / "kick", in order

    def propose(self, command: bytes, *, wake: bool = True) -> asyncio.Future[bytes]:
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.proposals.append(fut)
        self.calls.append("propose+wake" if wake else "propose")
        return fut

    def kick(self) -> None:
        self.calls.append("kick")


def test_admission_control_answers_the_excess_busy_at_once() -> None:
    """Beyond ``max_in_flight`` requests are refused ``busy`` without reaching the node; the
    admitted ones are answered when their proposals complete; every request gets one answer;
    a malformed frame is ``bad_request``; a proposal refused by back-pressure is ``busy``."""
    from raft.core.errors import ProposalDropped
    from raft.kv import Result, encode_result
    from raft.server import ClientServer, ClusterConfig

    port = free_ports(1)[0]
    cfg = ClusterConfig.model_validate(
        {"cluster_id": "t", "nodes": {"stub": {"raft": "127.0.0.1:1", "client": "127.0.0.1:2"}}}
    )

    async def main() -> None:
        node = _StubNode()
        server = ClientServer(node, cfg, f"127.0.0.1:{port}", max_in_flight=3)  # type: ignore[arg-type]
        serving = asyncio.create_task(server.serve())
        ctx = zmq.asyncio.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(f"tcp://127.0.0.1:{port}")
        try:
            await sock.send(b"{not json")
            for i in range(20):
                await sock.send(json.dumps({"id": i, "op": "put", "key": "k", "value": i}).encode())
            replies = []
            async with asyncio.timeout(10):
                while len(replies) < 18:
                    replies.append(json.loads(await sock.recv()))
            assert len(node.proposals) == 3
            # queued without waking the node, and stepped at the end of the burst they came in
            assert "propose+wake" not in node.calls
            assert node.calls[-1] == "kick"
            assert sorted(r["id"] for r in replies if r.get("error") == "busy") == list(
                range(3, 20)
            )
            assert any(r["error"] == "bad_request" and r["id"] is None for r in replies)
            node.proposals[0].set_result(encode_result(Result(ok=True)))
            node.proposals[1].set_exception(ProposalDropped("too many uncommitted"))
            node.proposals[2].set_exception(ProposalLost("replaced"))
            async with asyncio.timeout(10):
                last = {r["id"]: r for r in [json.loads(await sock.recv()) for _ in range(3)]}
            assert last[0]["ok"] is True
            assert last[1]["error"] == "busy"
            assert last[2]["error"] == "lost"
            assert server.in_flight == 0
            assert server.refused == 17
        finally:
            serving.cancel()
            await asyncio.gather(serving, return_exceptions=True)
            server.close()
            sock.close(linger=0)
            ctx.term()

    asyncio.run(main())


def test_writes_past_their_deadline_are_answered_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    """A proposal that never completes is answered ``unknown`` by the sweeper, and frees its
    admission slot."""
    import raft.server as server_mod
    from raft.server import ClientServer, ClusterConfig

    monkeypatch.setattr(server_mod, "REQUEST_TIMEOUT_S", 0.2)
    monkeypatch.setattr(server_mod, "SWEEP_S", 0.05)
    port = free_ports(1)[0]
    cfg = ClusterConfig.model_validate(
        {"cluster_id": "t", "nodes": {"stub": {"raft": "127.0.0.1:1", "client": "127.0.0.1:2"}}}
    )

    async def main() -> None:
        node = _StubNode()
        server = ClientServer(node, cfg, f"127.0.0.1:{port}")  # type: ignore[arg-type]
        serving = asyncio.create_task(server.serve())
        ctx = zmq.asyncio.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(f"tcp://127.0.0.1:{port}")
        try:
            for i in range(3):
                await sock.send(json.dumps({"id": i, "op": "put", "key": "k", "value": i}).encode())
            async with asyncio.timeout(10):
                replies = [json.loads(await sock.recv()) for _ in range(3)]
            assert sorted(r["id"] for r in replies) == [0, 1, 2]
            assert all(r["error"] == "unknown" for r in replies)
            assert all(f.cancelled() for f in node.proposals)
            assert server.in_flight == 0
        finally:
            serving.cancel()
            await asyncio.gather(serving, return_exceptions=True)
            server.close()
            sock.close(linger=0)
            ctx.term()

    asyncio.run(main())
