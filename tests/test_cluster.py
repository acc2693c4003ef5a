"""The brief's acceptance scenarios on a real cluster: five ``orbital node`` processes, fsync on,
wired through Toxiproxy (``harness.cluster.LocalCluster``), driven by ``KVClient``.

Every test owns its cluster through the ``LocalCluster`` context manager (every process it
started is stopped whatever the outcome) and a fresh ``tmp_path``. Timing is observed two ways:

* polling: one ``KVClient`` per node on the nodes' *direct* client ports (never through the
  proxies), all polled concurrently every ``POLL_S``;
* ``roles.jsonl``: each node appends ``{"time": CLOCK_MONOTONIC ns, "role", "term"}`` at every
  role change. The clock is system-wide, so a node's "became leader" time can be compared with
  the test's own ``time.monotonic_ns()`` (the moment of a SIGKILL, the moment a node answered).

Timing asserts are upper bounds with a documented slack; the measured values are printed
(run with ``-s``). Outcomes are deterministic: each scenario waits for the state it needs
instead of sleeping, and asserts only what must hold under any interleaving.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import pytest
import zmq

from harness.cluster import ClusterError, ClusterSpec, LocalCluster, StatusPoller
from harness.replay import read_node, replay_cluster
from raft.client import KVError, Rejected, Unknown
from raft.core.messages import Heartbeat
from raft.core.types import EntryKind, NodeId
from raft.kv import decode_command
from raft.transport import MAX_FRAME_BYTES, PROTOCOL_VERSION, encode_frame

pytestmark = pytest.mark.integration

T = TypeVar("T")

#: seeds each node's election-timeout RNG; with seed 6 the first draws are 17, 29, 27, 29
#: and 23 ticks (n1 fires first, 60 ms ahead of the next), which keeps elections uncontested
SEED = 6
POLL_S = 0.005
#: slack on top of "2 election timeouts" for the re-election bound: the poll period (5 ms), a
#: tick of quantization (10 ms), the pre-vote and vote rounds (the vote is fsynced before the
#: reply) and scheduling of 5 Python processes plus Toxiproxy on 2 cores
REELECTION_SLACK_S = 0.100
#: at most this long for anything the cluster must eventually do (a generous liveness bound)
SETTLE_S = 10.0


@pytest.fixture(autouse=True)
def _need_toxiproxy() -> None:
    from chaos.toxiproxy import ToxiproxyNotFound, find_server_binary

    try:
        find_server_binary()
    except ToxiproxyNotFound as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"toxiproxy-server not available: {exc}")


# ---- helpers ---------------------------------------------------------------------------------
def stable_leader(sts: dict[str, dict[str, Any] | None]) -> tuple[str, int] | None:
    """(leader, term) once exactly one live node leads and every live node follows it."""
    live = {n: s for n, s in sts.items() if s is not None}
    leaders = [n for n, s in live.items() if s["role"] == "leader"]
    if len(leaders) != 1:
        return None
    leader, term = leaders[0], int(live[leaders[0]]["term"])
    agreed = all(s["term"] == term and s["leader"] == leader for s in live.values())
    return (leader, term) if agreed else None


def role_events(cluster: LocalCluster) -> list[dict[str, Any]]:
    """Every node's roles.jsonl, merged in time order."""
    events = []
    for node in cluster.spec.all_nodes:
        path = cluster.node_dir(node) / "roles.jsonl"
        if path.exists():
            events += [json.loads(line) for line in path.read_text().splitlines() if line]
    return sorted(events, key=lambda e: e["time"])


def became_leader_ns(cluster: LocalCluster, node: str, term: int) -> int:
    for e in role_events(cluster):
        if e["node"] == node and e["role"] == "leader" and e["term"] == term:
            return int(e["time"])
    raise AssertionError(f"{node} has no leader record for term {term}")


def run(scenario: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(scenario())


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator[Callable[[ClusterSpec], LocalCluster]]:
    made: list[LocalCluster] = []

    def make(spec: ClusterSpec) -> LocalCluster:
        c = LocalCluster(spec, tmp_path / f"cluster{len(made)}")
        made.append(c)
        return c

    yield make
    for c in made:  # belt and braces: the tests use ``with``, this covers a failed __enter__
        c.stop()


async def wait_all_ready(poller: StatusPoller) -> int:
    """Poll every node (each in its own task, every ``POLL_S``) until it has answered a
    status once; the monotonic ns of the last first answer (when the last node was known
    to be serving)."""

    async def first_answer(node: str) -> int:
        while await poller.one(node) is None:
            await asyncio.sleep(POLL_S)
        return time.monotonic_ns()

    async with asyncio.timeout(SETTLE_S):
        return max(await asyncio.gather(*(first_answer(n) for n in poller.clients)))


async def put_many(
    cluster: LocalCluster, addrs: dict[str, str], writers: int, per_writer: int
) -> list[tuple[str, int]]:
    """``writers`` concurrent clients, each putting ``per_writer`` distinct keys; every write
    must be acknowledged. Returns the (client id, seq) of each write."""

    async def writer(w: int) -> list[tuple[str, int]]:
        done = []
        async with cluster.kv_client(addrs, client_id=f"w{w}", timeout=SETTLE_S) as c:
            for i in range(per_writer):
                await c.put(f"w{w}-k{i}", i)
                done.append((c.client_id, i + 1))
        return done

    parts = await asyncio.gather(*(writer(w) for w in range(writers)))
    return [x for part in parts for x in part]


def command_ids(entries: list[Any]) -> list[tuple[str, int]]:
    """(client, seq) of each normal entry that carries a client command."""
    out = []
    for e in entries:
        if e.kind is EntryKind.NORMAL and e.command:
            cmd = decode_command(e.command)
            if cmd.client is not None:
                out.append((cmd.client, cmd.seq))
    return out


# ---- leader election -------------------------------------------------------------------------
def test_five_node_election_within_two_election_timeouts(
    cluster_factory: Callable[[ClusterSpec], LocalCluster],
) -> None:
    """Exactly one leader within 2 election timeouts (2 x 150 ms) of the cluster being ready.

    What is measured: from the moment the *last* of the five processes first answered a status
    request (each is then serving: storage loaded, sockets bound, ticking) to the moment the
    winner wrote "leader" in its roles.jsonl (same system-wide monotonic clock). Python start-up
    (~0.5-1 s of imports per process) is before "ready" and is excluded; a node that answers
    late does not delay the election if three others are up, so the value can be negative.
    Readiness is seen by a poll every 5 ms, so "ready" is late by up to one poll round (which
    shortens the measured value by at most ~10 ms). The conservative alternative, measured
    from the last node's first roles.jsonl record (its Raft state loaded, before it answers),
    is printed too and held to the same bound.
    """
    spec = ClusterSpec(seed=SEED)
    et = spec.election_timeout_s

    async def scenario() -> None:
        with cluster_factory(spec) as cluster:
            poller = StatusPoller(cluster)
            try:
                ready_ns = await wait_all_ready(poller)
                (leader, term), _ = await poller.until(stable_leader, SETTLE_S)
                elected_ns = became_leader_ns(cluster, leader, term)
                loaded_ns = max(
                    min(e["time"] for e in role_events(cluster) if e["node"] == n)
                    for n in spec.nodes
                )
                sts = await poller.poll()
            finally:
                poller.close()
        from_ready = (elected_ns - ready_ns) / 1e9
        from_loaded = (elected_ns - loaded_ns) / 1e9
        print(f"\ncluster={list(spec.nodes)} ready (every node answered a status)")
        print(f"{leader}: leader in term {term}, {from_ready * 1000:.0f} ms after ready")
        print(f"({from_loaded * 1000:.0f} ms after the last node loaded its Raft state)")
        leaders = [n for n, s in sts.items() if s is not None and s["role"] == "leader"]
        assert leaders == [leader], sts
        assert all(s is not None and s["leader"] == leader for s in sts.values()), sts
        assert from_ready <= 2 * et, f"elected {from_ready:.3f}s after ready (> {2 * et}s)"
        assert from_loaded <= 2 * et, f"elected {from_loaded:.3f}s after load (> {2 * et}s)"
        print(f"PASS: cluster elected {leader} as leader in term {term} within 2 election timeouts")

    run(scenario)


def test_reelection_after_leader_sigkill(
    cluster_factory: Callable[[ClusterSpec], LocalCluster],
) -> None:
    """After SIGKILL of a steady leader, a new leader within 2 election timeouts + slack.

    What is measured: from just before the SIGKILL (test clock) to (a) the first 5-ms poll that
    sees a survivor leading in a higher term (asserted: <= 2 x 150 ms + ``REELECTION_SLACK_S``)
    and (b) the new leader's roles.jsonl record (printed: the precise value). The followers'
    timers started at the last heartbeat (<= 30 ms before the kill), so detection is bounded
    by the largest timeout (< 300 ms) plus a pre-vote and a vote round plus a poll; the slack
    covers those, tick quantization and CPU contention.
    """
    spec = ClusterSpec(seed=SEED)
    et = spec.election_timeout_s

    async def scenario() -> tuple[str, int, str, int, float, float]:
        with cluster_factory(spec) as cluster:
            poller = StatusPoller(cluster)
            try:
                (old, old_term), _ = await poller.until(stable_leader, SETTLE_S)
                await asyncio.sleep(3 * et)  # steady: heartbeats flowing, leases settled
                (old, old_term), _ = await poller.until(stable_leader, SETTLE_S)
                killed_ns = time.monotonic_ns()
                cluster.kill(old)

                def new_leader(sts: dict[str, dict[str, Any] | None]) -> tuple[str, int] | None:
                    for n, s in sts.items():
                        if n != old and s and s["role"] == "leader" and s["term"] > old_term:
                            return n, int(s["term"])
                    return None

                (new, new_term), seen = await poller.until(new_leader, SETTLE_S)
                detected = seen - killed_ns / 1e9
                precise = (became_leader_ns(cluster, new, new_term) - killed_ns) / 1e9
                (final, _), _ = await poller.until(stable_leader, SETTLE_S)
                assert final == new
            finally:
                poller.close()
        return old, old_term, new, new_term, detected, precise

    old, old_term, new, new_term, detected, precise = run(scenario)
    print(f"\n{old} (leader, term {old_term}) SIGKILLed")
    print(f"{new}: leader in term {new_term}: {precise * 1000:.0f} ms after the kill (roles.jsonl)")
    print(f"first poll that saw it: {detected * 1000:.0f} ms after the kill")
    bound = 2 * et + REELECTION_SLACK_S
    assert detected <= bound, f"re-elected after {detected:.3f}s (> {bound:.3f}s)"
    print(f"PASS: cluster re-elected {new} as leader in term {new_term} after {old}'s failure")


# ---- log replication -------------------------------------------------------------------------
def test_thousand_commands_identical_logs_on_disk(
    cluster_factory: Callable[[ClusterSpec], LocalCluster],
) -> None:
    """1000 writes through KVClient (10 concurrent clients x 100); once every node has applied
    the leader's commit index, stop the nodes and read all five data directories from disk:
    the logs are identical entry for entry, hold each of the 1000 commands at or below the
    commit index, and ``replay_cluster`` reports no violation."""
    spec = ClusterSpec(seed=SEED)
    cluster = cluster_factory(spec)

    async def scenario() -> tuple[list[tuple[str, int]], int]:
        with cluster:
            poller = StatusPoller(cluster)
            try:
                await poller.until(stable_leader, SETTLE_S)
                acked = await put_many(
                    cluster, cluster.client_addresses(), writers=10, per_writer=100
                )
                commit, _ = await poller.until(converged, SETTLE_S)
            finally:
                poller.close()
        return acked, commit  # leaving ``with`` stopped the nodes (SIGTERM, clean exit)

    acked, commit = run(scenario)
    assert len(acked) == 1000
    dirs = {n: cluster.data_dir(n) for n in spec.nodes}
    result = replay_cluster(dirs, committed_index=commit)
    assert result.valid, result.to_json()
    logs = {n: read_node(n, d).log for n, d in dirs.items()}
    reference = logs["n1"]
    assert reference[-1].index == commit
    for node, log in logs.items():
        assert log == reference, f"{node}'s log differs from n1's"
    ids = command_ids([e for e in reference if e.index <= commit])
    assert set(acked) <= set(ids), f"missing: {sorted(set(acked) - set(ids))[:5]}"
    print(f"\n1000 commands acknowledged; 5 logs identical up to commit index {commit}")


def converged(sts: dict[str, dict[str, Any] | None]) -> int | None:
    """The common commit index once every node has committed, applied and holds the same."""
    if any(s is None for s in sts.values()):
        return None
    done = {(s["commit"], s["applied"], s["last_index"]) for s in sts.values() if s}
    if len(done) == 1:
        commit, applied, last = done.pop()
        if commit == applied == last:
            return int(commit)
    return None


# ---- persistence -----------------------------------------------------------------------------
def test_sigkill_all_five_and_restart_loses_nothing_committed(
    cluster_factory: Callable[[ClusterSpec], LocalCluster],
) -> None:
    """Writers run while all five nodes are SIGKILLed (no clean shutdown: only what was
    fsynced survives); after a restart on the same data directories, every write that was
    acknowledged before the kill reads back through the client with its value, and every one
    is in the committed prefix of the logs read from disk (replay finds no violation)."""
    spec = ClusterSpec(seed=SEED)
    cluster = cluster_factory(spec)
    acked: dict[tuple[str, int], tuple[str, int]] = {}  #: (client, seq) -> (key, value)

    async def writer(addrs: dict[str, str], w: int, stop: asyncio.Event) -> None:
        async with cluster.kv_client(addrs, client_id=f"w{w}", timeout=1.0) as c:
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    await c.put(f"w{w}-k{i}", 1000 * w + i)
                except KVError:  # the cluster died under it: outcome unknown, not acked
                    return
                acked[(c.client_id, i)] = (f"w{w}-k{i}", 1000 * w + i)

    async def scenario() -> int:
        with cluster:
            poller = StatusPoller(cluster)
            try:
                await poller.until(stable_leader, SETTLE_S)
                stop = asyncio.Event()
                addrs = cluster.client_addresses()
                tasks = [asyncio.create_task(writer(addrs, w, stop)) for w in range(8)]
                while len(acked) < 300:
                    await asyncio.sleep(0.01)
                for node in spec.nodes:  # crash every node while writes are in flight
                    cluster.kill(node)
                stop.set()
                # a reply a leader sent before it died may still be read here (the kills
                # blocked this loop): such a write is acknowledged, and read back below
                await asyncio.gather(*tasks)
                for node in spec.nodes:
                    cluster.restart(node)
                await poller.until(stable_leader, SETTLE_S)
                async with cluster.kv_client(addrs, timeout=SETTLE_S) as reader:
                    for key, value in acked.values():
                        assert await reader.get(key) == value, key
                commit, _ = await poller.until(converged, SETTLE_S)
            finally:
                poller.close()
        return commit

    commit = run(scenario)
    dirs = {n: cluster.data_dir(n) for n in spec.nodes}
    result = replay_cluster(dirs, committed_index=commit)
    assert result.valid, result.to_json()
    ids = set(command_ids([e for e in read_node("n1", dirs["n1"]).log if e.index <= commit]))
    missing = set(acked) - ids
    assert not missing, f"acknowledged but not in the committed log: {sorted(missing)[:5]}"
    print(f"\n{len(acked)} acknowledged writes survived SIGKILL of all 5 nodes")


# ---- transport robustness --------------------------------------------------------------------
def test_malformed_frames_leave_nodes_serving(
    cluster_factory: Callable[[ClusterSpec], LocalCluster],
) -> None:
    """Raw ZeroMQ DEALERs send every node, on its own Raft port, garbage, a JSON frame of the
    wrong shape, a two-part message, envelopes of another cluster and another protocol version
    (a heartbeat with a term 100 ahead: harmful if it were accepted), a heartbeat for another
    node, and a frame over ``MAX_FRAME_BYTES`` (ZeroMQ drops that peer). Afterwards the same
    leader leads in the same term, every node follows it, every process is alive, the nodes'
    logs show the frames were received and dropped, and client writes and reads still work."""
    # no keys: this is about the wire decoder (with keys a stranger's frames never reach it,
    # see tests/test_security.py)
    spec = ClusterSpec(seed=SEED, cluster_id="orbital-test", curve=False)

    async def scenario() -> None:
        with cluster_factory(spec) as cluster:
            poller = StatusPoller(cluster)
            try:
                (leader, term), _ = await poller.until(stable_leader, SETTLE_S)
                ctx = zmq.Context()
                try:
                    for node in spec.nodes:
                        send_bad_frames(ctx, cluster.raft_addr[node], node, term)
                finally:
                    ctx.destroy(linger=0)
                await asyncio.sleep(4 * spec.election_timeout_s)
                sts = await poller.poll()
                assert stable_leader(sts) == (leader, term), sts
                assert all(cluster.alive(n) for n in spec.nodes)
                for node in spec.nodes:
                    text = (cluster.node_dir(node) / "node.log").read_text()
                    assert "dropped a frame" in text, f"{node} never saw the bad frames"
                async with cluster.kv_client(cluster.client_addresses(), timeout=SETTLE_S) as c:
                    await c.put("after-garbage", 7)
                    assert await c.get("after-garbage") == 7
                assert stable_leader(await poller.poll()) == (leader, term)
            finally:
                poller.close()

    run(scenario)


def send_bad_frames(ctx: zmq.Context[zmq.Socket[bytes]], addr: str, node: str, term: int) -> None:
    """Send the bad frames to one node's Raft ROUTER; wait until they are flushed."""
    hb = Heartbeat(src=NodeId("n1"), dst=NodeId(node), term=term + 100, commit=10**9)
    foreign = encode_frame(hb, "another-cluster")
    _, cluster_id, msg = msgspec.msgpack.decode(encode_frame(hb, "orbital-test"))
    misrouted = encode_frame(
        Heartbeat(src=NodeId("n1"), dst=NodeId("n9"), term=term + 100, commit=0), "orbital-test"
    )
    frames: list[list[bytes]] = [
        [b"\x00\xff\xfenot msgpack at all"],
        [msgspec.msgpack.encode([PROTOCOL_VERSION, "orbital-test", ["nonsense"]])],
        [b"two", b"parts"],
        [foreign],
        [msgspec.msgpack.encode([99, cluster_id, msg])],
        [misrouted],
        [b"{" * 4096],
    ]
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 2000)
    sock.connect(f"tcp://{addr}")
    for parts in frames:
        sock.send_multipart(parts)
    sock.close(linger=2000)  # flushes the queue before returning
    big = ctx.socket(zmq.DEALER)
    big.setsockopt(zmq.LINGER, 2000)
    big.connect(f"tcp://{addr}")
    big.send(b"x" * (MAX_FRAME_BYTES + 1024))
    big.close(linger=2000)


# ---- partitions and client sources -----------------------------------------------------------
def test_minority_client_cannot_commit_until_healed(
    cluster_factory: Callable[[ClusterSpec], LocalCluster],
) -> None:
    """Two client sources, each placed with one side of a 3/2 partition whose minority holds
    the current leader. While cut off, client-b (minority side) cannot get a write
    acknowledged (it ends Rejected or Unknown) and a read on the majority side does not see
    it; client-a (majority side) commits after the majority elects a leader. After the heal,
    client-b's next write is acknowledged and both sides read both values."""
    spec = ClusterSpec(seed=SEED, client_sources=("client-a", "client-b"))

    async def scenario() -> None:
        with cluster_factory(spec) as cluster:
            poller = StatusPoller(cluster)
            try:
                (leader, term), _ = await poller.until(stable_leader, SETTLE_S)
                others = [n for n in spec.nodes if n != leader]
                minority, majority = [leader, others[0]], others[1:]
                cluster.partition([majority, minority], clients={"client-a": 0, "client-b": 1})
                a = cluster.kv_client(
                    cluster.client_addresses("client-a"), client_id="a", timeout=5.0
                )
                b = cluster.kv_client(
                    cluster.client_addresses("client-b"), client_id="b", timeout=1.5
                )
                try:
                    with pytest.raises((Rejected, Unknown)):
                        await b.put("kb", 1)
                    await a.put("ka", 1)  # the majority elects a leader and commits
                    assert await a.get("kb") is None, "a write from the minority committed"
                    (_, new_term), _ = await poller.until(
                        lambda sts: stable_leader({n: sts[n] for n in majority}), SETTLE_S
                    )
                    assert new_term > term
                    with pytest.raises((Rejected, Unknown)):
                        await b.put("kb", 2)
                    cluster.heal()
                    b.timeout = SETTLE_S
                    await b.put("kb", 3)
                    assert await b.get("kb") == 3
                    assert await b.get("ka") == 1
                    assert await a.get("kb") == 3
                finally:
                    a.close()
                    b.close()
                await poller.until(stable_leader, SETTLE_S)
            finally:
                poller.close()

    run(scenario)


@pytest.mark.integration
def test_relative_workdir_keeps_node_data_where_replay_looks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`orbital chaos run` stores under a relative `store/` by default. The node process
    resolves relative paths in cluster.toml against the file's own folder, so the cluster must
    write absolute ones or the data lands in a nested copy of the path, out of replay's sight."""
    monkeypatch.chdir(tmp_path)
    spec = ClusterSpec(nodes=("n1",), toxiproxy=False)
    with LocalCluster(spec, Path("run")) as cluster:
        run(lambda: cluster.wait_for_leader(10.0))
        assert cluster.data_dir("n1") == tmp_path / "run" / "nodes" / "n1" / "data"
    stored = read_node("n1", tmp_path / "run" / "nodes" / "n1" / "data")
    assert stored.log, "no log where replay looks"
    assert not (tmp_path / "run" / "run").exists()


def test_a_node_that_cannot_start_is_reported_not_waited_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node whose port is taken exits at once; waiting for the cluster says so (which node,
    why, from its log) instead of timing out or running the scenario one node short. (The
    other two may elect a leader meanwhile: only ``wait_ready`` waits for every node.)"""
    import socket

    import harness.placement as cluster_module

    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    ports = iter([taken])
    real = cluster_module.free_port
    monkeypatch.setattr(cluster_module, "free_port", lambda: next(ports, None) or real())
    spec = ClusterSpec(nodes=("n1", "n2", "n3"), toxiproxy=False)
    try:
        with LocalCluster(spec, tmp_path / "c") as cluster:
            assert cluster.raft_addr["n1"].endswith(f":{taken}")
            t0 = time.monotonic()
            with pytest.raises(ClusterError, match=r"n1 exited with code \d+ on its own") as err:
                run(lambda: cluster.wait_ready(60.0))
            assert "Address already in use" in str(err.value)
            assert time.monotonic() - t0 < 30.0, "reported when the node exited, not at timeout"
    finally:
        squatter.close()
