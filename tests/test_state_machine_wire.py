"""Your own state machine over the wire: ``orbital node --state-machine counter:Counter``.

Three real node processes (the class of ``examples/counter.py``, imported from the current
directory), a :class:`~raft.client.RaftClient` that finds the leader and retries, a retried
command that must apply once, linearizable queries, JSON logs, and the nodes' Prometheus
metrics, scraped over HTTP, moving when the leader is SIGKILLed.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from chaos.toxiproxy import free_port
from harness.cli import main as orbital
from raft import RaftClient, Rejected

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
IDS = ("n1", "n2", "n3")
WAIT_S = 60.0


class Cluster:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.config = tmp / "cluster.toml"
        self.client = {n: f"127.0.0.1:{free_port()}" for n in IDS}
        self.metrics = {n: f"127.0.0.1:{free_port()}" for n in IDS}
        lines = ['cluster_id = "wire"', f'data_dir = "{tmp / "data"}"', "tick_ms = 20"]
        for n in IDS:
            lines += [f"[nodes.{n}]", f'raft = "127.0.0.1:{free_port()}"',
                      f'client = "{self.client[n]}"', f'metrics = "{self.metrics[n]}"']  # fmt: skip
        self.config.write_text("\n".join(lines) + "\n")
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def log(self, node: str) -> Path:
        return self.tmp / f"{node}.log"

    def start(self, node: str) -> None:
        argv = [sys.executable, "-m", "harness.cli", "node", "--config", str(self.config),
                "--id", node, "--state-machine", "counter:Counter",
                "--log-format", "json"]  # fmt: skip
        with self.log(node).open("ab") as log:
            self.procs[node] = subprocess.Popen(
                argv, cwd=ROOT / "examples", stdout=log, stderr=subprocess.STDOUT,
                env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
            )  # fmt: skip

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        for n in IDS:
            c.start(n)
        yield c
    finally:
        c.stop()


def scrape(address: str) -> dict[str, float]:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


async def leader_of(client: RaftClient, nodes: tuple[str, ...]) -> tuple[str, int]:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        for n in nodes:
            try:
                st = await client.status(n)
            except Rejected:
                continue
            if st.get("role") == "leader":
                return n, int(st["term"])
        await asyncio.sleep(0.05)
    raise AssertionError("no leader")


def test_own_state_machine_clients_metrics_and_a_leader_kill(
    cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    async def main() -> None:
        async with RaftClient(cluster.client, timeout=WAIT_S) as client:
            assert await client.submit(b"2") == b"2"  # found the leader by itself
            assert await client.submit(b"3") == b"5"
            assert await client.query(b"") == b"5"
            # a retry of an applied command (same client, same seq) answers, applies nothing
            body = {"op": "submit", "command": base64.b64encode(b"10").decode(),
                    "client": "retrier", "seq": 1}  # fmt: skip
            first = await client._until_answered(body, True)
            again = await client._until_answered(body, True)
            assert first["result"] == again["result"] == base64.b64encode(b"15").decode()
            assert await client.query(b"") == b"15"
            with pytest.raises(Rejected, match="bad_request"):
                await client.request({"op": "get", "key": "x"}, write=False)

            leader, term = await leader_of(client, IDS)
            await _metrics_move_when_the_leader_dies(cluster, client, leader, term)
            assert await client.submit(b"1") == b"16"  # the survivors serve on

    asyncio.run(main())

    # the CLI speaks to the same nodes
    assert orbital(["kv", "--config", str(cluster.config), "query"]) == 0
    assert capsys.readouterr().out.strip() == "16"
    assert orbital(["kv", "submit", "4", "--config", str(cluster.config), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["result"] == "20"
    assert orbital(["kv", "--config", str(cluster.config), "status"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:8] == ["node", "role", "term", "leader", "commit", "applied",
                                    "last", "peer"]  # fmt: skip
    rows = {r.split()[0]: r.split() for r in table[1:]}
    leader_row = next(r for r in rows.values() if r[1] == "leader")
    assert re.fullmatch(r"n\d:\d+", leader_row[7]), leader_row  # "n2:0 n3:0": peer lag
    assert leader_row[-1].startswith("http://127.0.0.1:"), leader_row  # metrics URL
    dead = next(r for r in rows.values() if r[1] == "unreachable")
    assert dead[0] not in {r[0] for r in rows.values() if r[1] != "unreachable"}

    # the JSON log: wall time, node, term and event on every Raft event
    events = [json.loads(line) for line in cluster.log("n1").read_text().splitlines()
              if line.startswith("{")]  # fmt: skip
    raft_events = [e for e in events if "event" in e]
    assert raft_events
    assert {"time", "level", "node", "term", "event"} <= set(raft_events[0])
    assert raft_events[0]["time"].endswith("+00:00")


async def _metrics_move_when_the_leader_dies(
    cluster: Cluster, client: RaftClient, leader: str, term: int
) -> None:
    before = {n: scrape(cluster.metrics[n]) for n in IDS}
    me = f'node="{leader}"'
    assert before[leader][f"orbital_raft_is_leader{{{me}}}"] == 1
    assert before[leader][f"orbital_raft_term{{{me}}}"] == term
    assert before[leader][f"orbital_raft_proposals_total{{{me}}}"] >= 3
    assert before[leader][f"orbital_raft_fsync_seconds_count{{{me}}}"] >= 1
    peers = [n for n in IDS if n != leader]
    for p in peers:
        assert f'orbital_raft_peer_lag{{{me},peer="{p}"}}' in before[leader]

    cluster.procs[leader].send_signal(signal.SIGKILL)
    cluster.procs[leader].wait(10)
    new, new_term = await leader_of(client, tuple(peers))
    assert new_term > term
    await client.submit(b"0")  # something committed in the new term
    after = {n: scrape(cluster.metrics[n]) for n in peers}
    me = f'node="{new}"'
    assert after[new][f"orbital_raft_is_leader{{{me}}}"] == 1
    assert after[new][f"orbital_raft_term{{{me}}}"] == new_term
    assert after[new][f"orbital_raft_elections_won_total{{{me}}}"] >= 1
    for p in peers:
        key = f'orbital_raft_leader_changes_total{{node="{p}"}}'
        assert after[p][key] > before[p][key], (p, before[p][key], after[p][key])
        term_key = f'orbital_raft_term{{node="{p}"}}'
        assert after[p][term_key] > before[p][term_key]
