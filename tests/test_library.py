"""The library as a user sees it: the public API, the lifecycle, sessions, logs and metrics.

In-process tests over MemoryNetwork (real asyncio time, bounded waits, outcomes only); the
example program and the metrics HTTP server use real sockets.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

import pytest

import raft
from raft import (
    FileStorage,
    MemoryNetwork,
    MemoryStorage,
    NodeId,
    NodeStopped,
    RaftNode,
    Sessions,
    StorageError,
)
from raft.sessions import SessionError, decode_result, encode_command

ROOT = Path(__file__).resolve().parents[1]
WAIT_S = 10.0
_T = TypeVar("_T")


class Counter:
    """The docs' state machine; counts how often apply ran."""

    def __init__(self) -> None:
        self.value = 0
        self.applied = 0

    def apply(self, command: bytes) -> bytes:
        self.applied += 1
        self.value += int(command or b"1")
        return str(self.value).encode()

    def snapshot(self) -> bytes:
        return str(self.value).encode()

    def restore(self, snapshot: bytes) -> None:
        self.value = int(snapshot)

    def query(self, request: bytes) -> bytes:
        return str(self.value).encode()


def run(coro: Awaitable[_T]) -> _T:
    async def bounded() -> _T:
        async with asyncio.timeout(WAIT_S * 3):
            return await coro

    return asyncio.run(bounded())


def solo(storage: Any, **kw: Any) -> RaftNode[Counter]:
    """A one-node cluster: it elects itself within an election timeout."""
    net = MemoryNetwork()
    return RaftNode("solo", ["solo"], net.join(NodeId("solo")), storage, Counter(), seed=1, **kw)


# ---- the public API ---------------------------------------------------------------------------
def test_every_public_name_resolves() -> None:
    for name in raft.__all__:
        assert getattr(raft, name) is not None, name
    assert {"RaftNode", "StateMachine", "RaftConfig", "FileStorage", "MemoryStorage"} <= set(
        raft.__all__
    )
    assert {"ZmqTransport", "MemoryTransport", "RaftError", "NotLeader", "RaftClient"} <= set(
        raft.__all__
    )
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = raft.Nope


def test_importing_the_core_does_not_import_zeromq() -> None:
    code = "import sys, raft.core.types, raft; assert 'zmq' not in sys.modules, 'zmq loaded'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# ---- the lifecycle ------------------------------------------------------------------------------
def test_a_node_is_usable_right_after_its_run_task_is_created() -> None:
    """The trap: wait_applied/submit right after create_task(node.run()) raised NodeStopped."""

    async def main() -> None:
        node = solo(MemoryStorage())
        task = asyncio.create_task(node.run())
        await node.wait_applied(1)  # the leader's no-op entry: before run() even began
        assert await node.wait_leader() == "solo"
        assert await node.submit(b"2") == b"2"
        node.stop()
        await task

    run(main())


def test_stopping_releases_the_storage_so_the_node_restarts_in_the_same_process(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with solo(FileStorage(tmp_path)) as node:
            await node.wait_leader()
            assert await node.submit(b"5") == b"5"
        # the same directory opens again at once: run() released the LOCK
        async with solo(FileStorage(tmp_path)) as again:
            await again.wait_leader()
            assert await again.submit(b"1") == b"6"  # the log was replayed

    run(main())


def test_the_restart_test_catches_a_node_that_keeps_its_storage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Teeth: a node that does not close its storage (the old behaviour) leaves the lock."""
    monkeypatch.setattr(FileStorage, "close", lambda self: None)

    async def main() -> None:
        async with solo(FileStorage(tmp_path)) as node:
            await node.wait_leader()
        with pytest.raises(StorageError, match="is locked by pid"):
            FileStorage(tmp_path)

    run(main())


def test_a_stopped_node_refuses_work_and_runs_once() -> None:
    async def main() -> None:
        node = solo(MemoryStorage())
        async with node:
            await node.wait_leader()
        with pytest.raises(NodeStopped):
            node.propose(b"1")
        with pytest.raises(NodeStopped):
            await node.read()
        with pytest.raises(NodeStopped, match="already run"):
            await node.run()

    run(main())


def test_a_stop_before_run_starts_ends_it_at_once() -> None:
    async def main() -> None:
        node = solo(MemoryStorage())
        waiting = asyncio.ensure_future(node.submit(b"1"))
        node.stop()
        await node.run()
        with pytest.raises(NodeStopped):
            await waiting

    run(main())


def test_events_go_to_logging_with_node_term_and_event(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with solo(MemoryStorage()) as node:
            await node.wait_leader()

    with caplog.at_level(logging.INFO, logger="raft.node"):
        run(main())
    leader = [r for r in caplog.records if "becoming leader" in getattr(r, "event", "")]
    assert leader, [r.getMessage() for r in caplog.records]
    record = leader[0]
    assert record.node == "solo"  # type: ignore[attr-defined]
    assert record.term == 1  # type: ignore[attr-defined]


# ---- metrics ------------------------------------------------------------------------------------
def scrape(url: str) -> dict[str, float]:
    """Prometheus text -> {"name{labels}": value}."""
    with urllib.request.urlopen(url, timeout=5) as reply:
        text = reply.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def test_metrics_are_served_while_running_and_released_at_stop() -> None:
    async def main() -> None:
        net = MemoryNetwork()
        ids = ["a", "b", "c"]
        nodes = {
            i: RaftNode(
                i, ids, net.join(NodeId(i)), MemoryStorage(), Counter(), seed=7,
                metrics_address="127.0.0.1:0",
            )
            for i in ids
        }  # fmt: skip
        for n in nodes.values():
            await n.__aenter__()
        try:
            leader = nodes[await nodes["a"].wait_leader()]
            for _ in range(5):
                await leader.submit(b"1")
            url = leader.metrics_url
            assert url is not None
            m = await asyncio.to_thread(scrape, url)  # the scrape needs the node's loop
            me = f'node="{leader.id}"'
            assert m[f"orbital_raft_is_leader{{{me}}}"] == 1
            assert m[f"orbital_raft_term{{{me}}}"] >= 1
            assert m[f"orbital_raft_elections_won_total{{{me}}}"] >= 1
            assert m[f"orbital_raft_proposals_total{{{me}}}"] >= 5
            assert m[f"orbital_raft_proposal_seconds_count{{{me}}}"] >= 5
            assert m[f"orbital_raft_fsync_seconds_count{{{me}}}"] >= 5
            assert m[f"orbital_raft_applied_index{{{me}}}"] >= 6
            lags = {k: v for k, v in m.items() if k.startswith("orbital_raft_peer_lag{")}
            assert len(lags) == 2, lags
            sent = [k for k in m if k.startswith("orbital_raft_messages_sent_total{")]
            assert any('kind="AppendEntries"' in k for k in sent), sent
            assert any(k.startswith("orbital_raft_inbox_depth{") for k in m)
        finally:
            for n in nodes.values():
                await n.__aexit__(None, None, None)
        host, port = url.removeprefix("http://").removesuffix("/metrics").split(":")
        with pytest.raises(ConnectionRefusedError):  # nothing listens there any more
            socket.create_connection((host, int(port)), timeout=5).close()
        with socket.socket() as s:  # and the port can be bound again (as servers do)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, int(port)))
        assert leader.metrics_url is None

    run(main())


def test_metrics_are_off_by_default() -> None:
    async def main() -> None:
        async with solo(MemoryStorage()) as node:
            await node.wait_leader()
            assert node.metrics is None
            assert node.metrics_url is None
            assert node.status()["metrics"] is None

    run(main())


# ---- sessions -----------------------------------------------------------------------------------
def test_a_retried_command_is_applied_once() -> None:
    sm = Sessions(Counter())
    first = sm.apply(encode_command(b"3", "c1", 1))
    again = sm.apply(encode_command(b"3", "c1", 1))  # the retry
    assert decode_result(first) == decode_result(again) == b"3"
    assert sm.inner.applied == 1
    assert decode_result(sm.apply(encode_command(b"3", "c1", 2))) == b"6"
    with pytest.raises(SessionError, match="stale"):
        decode_result(sm.apply(encode_command(b"3", "c1", 1)))
    assert decode_result(sm.apply(encode_command(b"1"))) == b"7"  # no session: always applied
    assert decode_result(sm.apply(encode_command(b"1"))) == b"8"
    assert sm.inner.applied == 4


def test_sessions_without_dedup_would_be_caught() -> None:
    """Teeth: the same check against a machine that applies every retry fails."""

    class Forgetful(Sessions[Counter]):
        def apply(self, command: bytes) -> bytes:
            self.sessions.clear()
            return super().apply(command)

    sm = Forgetful(Counter())
    sm.apply(encode_command(b"3", "c1", 1))
    sm.apply(encode_command(b"3", "c1", 1))
    assert sm.inner.applied == 2


def test_sessions_survive_a_snapshot_and_expire_deterministically() -> None:
    sm = Sessions(Counter(), session_ttl=2)
    sm.apply(encode_command(b"1", "old", 1))
    copy = Sessions(Counter(), session_ttl=2)
    copy.restore(sm.snapshot())
    assert copy.inner.value == 1
    assert decode_result(copy.apply(encode_command(b"1", "old", 1))) == b"1"  # still known
    for _ in range(3):
        copy.apply(encode_command(b"1"))
    assert "old" not in copy.sessions  # idle for more than 2 commands


def test_a_malformed_envelope_is_an_error_result_never_an_exception() -> None:
    sm = Sessions(Counter())
    for garbage in (b"", b"incr", b"OS1", b"OS1\xff\xff", b"OS1\x02\x00\xff\xfe" + b"\x00" * 8):
        with pytest.raises(SessionError, match="bad envelope"):
            decode_result(sm.apply(garbage))
    assert sm.inner.applied == 0


# ---- the example --------------------------------------------------------------------------------
@pytest.mark.integration
def test_the_example_runs(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "counter.py"), "--dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert re.fullmatch(r"leader n\d: counter = 10", lines[0]), lines
    assert lines[2] == "replicas: n1=10, n2=10, n3=10", lines
    assert lines[3] == "after a restart: counter = 15", lines
    assert {p.name for p in tmp_path.iterdir()} == {"n1", "n2", "n3"}
