"""Lease reads against a clock that lies (teeth for both the lease and the clock fault).

Three real nodes, each on its own libfaketime clock. The leader's clock is strobed far
beyond the lease's drift bound (it flips 60 s back for 8 s: its ticks stop) and the leader is
cut off from the other two, which elect a new leader and accept a write. A read on the old
leader then:
- with lease reads, is served from its lease, which its stopped clock never ends: the old
  value, after the new one was acknowledged. The linearizability checker flags the history.
- with ReadIndex (the default), cannot confirm leadership and never returns a value: the
  same history is valid.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from harness.checker.linearizable import CheckResult, check_history
from harness.cluster import ClusterSpec, LocalCluster
from harness.history import HistoryWriter, read_history
from raft.client import KVError

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not any(Path("/usr/lib").glob("*/faketime/libfaketimeMT.so.1")),
        reason="needs Debian's libfaketime (scripts/setup.sh installs it)",
    ),
]

NODES = ("n1", "n2", "n3")


async def scenario(cluster: LocalCluster, history: HistoryWriter, *, strobe: bool) -> None:
    await cluster.wait_ready(30)
    old, _, _ = await cluster.wait_for_leader(30)
    others = [n for n in NODES if n != old]
    addrs = cluster.client_addresses()
    async with (
        cluster.kv_client(addrs, timeout=10.0) as writer,
        cluster.kv_client({old: addrs[old]}, timeout=3.0) as reader,
    ):
        history.invoke(0, "write", "x", 1)
        await writer.put("x", 1)
        history.complete(0, "ok", node=writer.last_node)
        # a read through the old leader works and gives it a fresh lease (or a round)
        assert await reader.get("x") == 1
        # the leader's clock flips 60 s back for 8 s (its ticks, heartbeats and lease stop),
        # and it is cut off from the others, in both directions
        if strobe:
            cluster.clock_strobe(old, -60.0, 8.0, 8.0)
        for other in others:
            cluster.cut(old, other)
            cluster.cut(other, old)
        async with cluster.kv_client({n: addrs[n] for n in others}, timeout=10.0) as majority:
            history.invoke(1, "write", "x", 2)
            await majority.put("x", 2)  # a new leader among the others
            history.complete(1, "ok", node=majority.last_node)
        history.invoke(2, "read", "x")
        try:
            value = await reader.get("x")
        except KVError as exc:
            history.complete(2, "info", error=str(exc)[:80])
        else:
            history.complete(2, "ok", value, node=old)
    cluster.clock_reset(old)
    cluster.heal()


def run(tmp_path: Path, *, lease_read: bool, strobe: bool = True) -> CheckResult:
    spec = ClusterSpec(nodes=NODES, lease_read=lease_read, fake_clocks=True, seed=7)
    path = tmp_path / "history.jsonl"
    with LocalCluster(spec, tmp_path / "cluster") as cluster, HistoryWriter(path) as history:
        asyncio.run(scenario(cluster, history, strobe=strobe))
    return check_history(read_history(path), time_limit=30)


def test_lease_reads_under_a_clock_strobe_beyond_the_bound_are_not_linearizable(
    tmp_path: Path,
) -> None:
    result = run(tmp_path, lease_read=True)
    assert result.valid is False
    anomaly = result.anomaly
    assert anomaly is not None
    assert anomaly.key == "x"


def test_the_same_run_with_read_index_is_linearizable(tmp_path: Path) -> None:
    result = run(tmp_path, lease_read=False)
    assert result.valid is True
    ops = read_history(tmp_path / "history.jsonl")
    assert [o.type for o in ops if o.process == 2] == ["invoke", "info"]  # never a value


def test_lease_reads_with_true_clocks_expire_in_time(tmp_path: Path) -> None:
    """The lease itself is sound: with the same cut and no clock fault it runs out before the
    others can elect a new leader, and the old leader gives no stale value."""
    result = run(tmp_path, lease_read=True, strobe=False)
    assert result.valid is True
    ops = read_history(tmp_path / "history.jsonl")
    assert [o.type for o in ops if o.process == 2] == ["invoke", "info"]
