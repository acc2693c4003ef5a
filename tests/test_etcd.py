"""etcd as a system under test: the adapter (start, kill, restart), the gRPC client (read,
write, cas by Txn), per-source routing through the proxies, and why clock faults do not apply.

Each test owns its 5-member cluster through the ``Cluster`` context manager (every process,
proxy, route and mount is removed whatever the outcome). Skipped, saying why, without etcd
(Debian's ``etcd-server``) or nftables; ``scripts/setup.sh --tests`` installs both, and under
``CI`` a missing one fails instead.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Coroutine, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest

from chaos import nat
from harness.local import Cluster, ClusterOptions
from harness.system import Completion, Operation, capabilities, load_system
from harness.systems.etcd import EtcdError, EtcdSystem, find_etcd

pytestmark = pytest.mark.integration
T = TypeVar("T")


def _missing(reason: str) -> None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI is set but {reason} (./scripts/setup.sh --tests)")
    pytest.skip(f"{reason} (./scripts/setup.sh --tests installs it)")


@pytest.fixture(autouse=True)
def _need_etcd() -> None:
    try:
        find_etcd()
    except EtcdError as exc:
        _missing(str(exc))
    reason = nat.unavailable()
    if reason is not None:
        _missing(reason)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[Cluster]:
    system = EtcdSystem()
    system.use_timing(10.0, 30, 5)  # the shipped scenarios' timing: 300 ms election timeout
    with Cluster(system, ClusterOptions(), tmp_path / "etcd") as cluster:
        run(cluster.wait_ready(30))
        yield cluster


async def _with_client(
    cluster: Cluster, ops: list[Operation], process: int = 0
) -> list[Completion]:
    assert isinstance(cluster.system, EtcdSystem)
    client = cluster.system.open_client(
        cluster.client_addresses(), cluster, process=process, timeout=3.0
    )
    try:
        return [await client.invoke(op) for op in ops]
    finally:
        await client.close()
        await cluster.system.disconnect()


def test_load_system_builds_etcd_with_its_capabilities() -> None:
    system = load_system("etcd", {"election_ms": 500})
    assert isinstance(system, EtcdSystem)
    assert system.election_ms == 500
    caps = capabilities(system)
    assert {"leadership", "leader-transfer", "membership", "disk-layout"} <= caps
    assert "storage-replay" not in caps
    assert "clock-faults" not in caps


def test_cas_through_the_client(etcd: Cluster) -> None:
    """read, write and cas by Txn: a cas applies only when the value matches (or, for an
    expected null, when the key was never written), and a mismatch is a fail that changed
    nothing."""
    ops = [
        Operation("read", "k", None),
        Operation("cas", "k", (None, 1)),  # never written: applies
        Operation("cas", "k", (None, 2)),  # written now: mismatch
        Operation("cas", "k", (1, 3)),
        Operation("cas", "k", (1, 4)),  # holds 3: mismatch
        Operation("write", "k", 5),
        Operation("read", "k", None),
        Operation("read", "other", None),
    ]
    got = run(_with_client(etcd, ops))
    assert [(c.type, c.value, c.error) for c in got] == [
        ("ok", None, None),
        ("ok", None, None),
        ("fail", None, "mismatch"),
        ("ok", None, None),
        ("fail", None, "mismatch"),
        ("ok", None, None),
        ("ok", 5, None),
        ("ok", None, None),
    ]
    assert {c.node for c in got} == {"n1"}  # process 0 talks to the first member


def test_start_kill_restart(etcd: Cluster) -> None:
    """Five members elect a leader; SIGKILL of the leader: the other four elect another;
    the killed member restarts on its data directory, follows, and has every write."""
    leader, term, _ = run(etcd.wait_for_leader(10))
    assert all(etcd.alive(n) for n in etcd.nodes)
    assert run(_with_client(etcd, [Operation("write", "x", 7)]))[0].type == "ok"
    etcd.kill(leader)
    assert not etcd.alive(leader)
    new, new_term, took = run(etcd.wait_for_leader(10, exclude=[leader], min_term=term + 1))
    print(f"killed {leader} (term {term}); {new} leads term {new_term} after {took:.3f}s")
    etcd.restart(leader)
    process = sorted(etcd.nodes).index(leader)  # a client bound to the restarted member

    async def caught_up() -> list[Completion]:
        deadline = time.monotonic() + 20
        while True:
            st = await etcd.status(leader)
            if st is not None and st.role == "follower" and st.term >= new_term:
                return await _with_client(etcd, [Operation("read", "x", None)], process)
            assert time.monotonic() < deadline, f"{leader} did not rejoin: {st}"
            await asyncio.sleep(0.1)

    read = run(caught_up())[0]
    assert (read.type, read.value, read.node) == ("ok", 7, leader)


def test_peer_links_go_through_their_own_proxies(etcd: Cluster) -> None:
    """A partition cuts the members' own connections (per-source routing): the side without
    the leader elects one of its own, and the old leader's side cannot commit."""
    leader, term, _ = run(etcd.wait_for_leader(10))
    others = sorted(n for n in etcd.nodes if n != leader)
    minority, majority = [leader, others[0]], others[1:]
    etcd.partition([minority, majority])
    new, _, _took = run(etcd.wait_for_leader(10, exclude=minority, min_term=term + 1))
    assert new in majority
    process = sorted(etcd.nodes).index(leader)
    write = run(_with_client(etcd, [Operation("write", "y", 1)], process))[0]
    assert write.type == "info"
    assert write.node == leader
    etcd.heal()


def test_nat_routes_by_group(tmp_path: Path) -> None:
    """The kernel sends a connection of a process in group G to the routed address; a process
    of another group reaches the real one (the teeth of per-source routing)."""
    real, proxy = socket.socket(), socket.socket()
    for s in (real, proxy):
        s.bind(("127.0.0.1", 0))
        s.listen()
        s.settimeout(5)
    dst = f"127.0.0.1:{real.getsockname()[1]}"
    to = f"127.0.0.1:{proxy.getsockname()[1]}"
    code = f"import socket; socket.create_connection(('127.0.0.1', {dst.split(':')[1]})).send(b'x')"
    gid = nat.GID_BASE + 99
    with nat.SourceRouting().start([nat.Route(gid, dst, to)]) as routing:
        assert routing.routes
        subprocess.run([sys.executable, "-c", code], group=gid, extra_groups=[], check=True)
        with proxy.accept()[0] as conn:
            assert conn.recv(1) == b"x"
        subprocess.run([sys.executable, "-c", code], check=True)
        with real.accept()[0] as conn:
            assert conn.recv(1) == b"x"
    listed = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    assert routing.table not in listed
    real.close()
    proxy.close()


def test_libfaketime_cannot_move_etcds_clock(tmp_path: Path) -> None:
    """Why etcd says ``clock_faults_apply = False``: under libfaketime 100 days ahead, etcd's
    own log still stamps today's date (Go reads the clock through the vDSO, not libc)."""
    libs = list(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))
    if not libs or shutil.which("faketime") is None:
        pytest.skip("libfaketime not installed")
    env = {**os.environ, "LD_PRELOAD": str(libs[0]), "FAKETIME": "+100d"}
    faked = subprocess.run(["date", "+%Y-%m-%d"], env=env, capture_output=True, text=True)
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    assert faked.stdout.strip() != today  # libfaketime works on a libc program
    argv = [find_etcd(), "--data-dir", str(tmp_path / "d"),
            "--listen-client-urls", "http://127.0.0.1:0", "--advertise-client-urls",
            "http://127.0.0.1:1", "--listen-peer-urls", "http://127.0.0.1:0"]  # fmt: skip
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert proc.stdout is not None
        stamped = ""
        for raw in proc.stdout:  # capnslog: "2026-01-02 10:01:22.144356 I | etcdmain: ..."
            line = raw.decode(errors="replace")
            if line[:4].isdigit():
                stamped = line
                break
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert stamped.startswith(today), stamped
