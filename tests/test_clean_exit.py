"""Clean exits: SIGTERM and SIGKILL of the orchestrator leave no process behind (by PID).

``orbital cluster up --json`` prints the PIDs of its nodes and of the Toxiproxy server once the
cluster is ready; ``orbital chaos run`` is looked at with psutil. Each PID is held as a
``psutil.Process`` from before the signal (psutil checks the creation time, so a reused PID is
never mistaken for ours) and, if a test fails, killed in its cleanup. Small driver scripts
plant the bugs the checks exist for: a child started without ``PR_SET_PDEATHSIG`` outlives a
SIGKILLed parent, and a SIGTERM without our handler skips the cleanup.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from chaos.toxiproxy import ToxiproxyNotFound, find_server_binary

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
START_S = 90.0  #: a loaded 2-core machine takes seconds to start Python nodes
GONE_S = 15.0


@pytest.fixture
def toxiproxy() -> None:
    try:
        find_server_binary()
    except ToxiproxyNotFound:
        if os.environ.get("CI"):
            raise
        pytest.skip("toxiproxy-server not installed")


@pytest.fixture
def leftovers() -> Iterator[list[psutil.Process]]:
    """Processes a test watches; whatever is still alive at the end is killed (by PID)."""
    procs: list[psutil.Process] = []
    yield procs
    for p in procs:
        if _alive(p):
            p.kill()
    psutil.wait_procs(procs, timeout=10)


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def assert_all_gone(procs: list[psutil.Process], timeout: float = GONE_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [p for p in procs if _alive(p)]
        if not alive:
            return
        time.sleep(0.1)
    raise AssertionError(f"still running: {[(p.pid, p.name()) for p in alive]}")


def read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    """The next stdout line of ``proc`` (fails the test on timeout or exit)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            line = proc.stdout.readline()
            if line:
                return line
        if proc.poll() is not None:
            pytest.fail(f"exited with {proc.returncode}: {proc.stdout.read()}")
    pytest.fail("no output in time")


def cluster_up(
    tmp_path: Path, leftovers: list[psutil.Process]
) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    argv = [sys.executable, "-m", "harness.cli", "cluster", "up", "--nodes", "3", "--json",
            "--dir", str(tmp_path / "cluster")]  # fmt: skip
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=tmp_path
    )
    leftovers.append(psutil.Process(proc.pid))
    try:
        info = json.loads(read_line(proc, START_S))
    except BaseException:
        proc.kill()
        proc.communicate(timeout=10)
        raise
    pids = [d["pid"] for d in info["nodes"].values()] + [info["toxiproxy_pid"]]
    leftovers += [psutil.Process(pid) for pid in pids]
    return proc, info


def test_sigkill_of_the_orchestrator_leaves_no_node_and_no_toxiproxy(
    tmp_path: Path, toxiproxy: None, leftovers: list[psutil.Process]
) -> None:
    proc, _ = cluster_up(tmp_path, leftovers)
    children = leftovers[1:]
    assert len(children) == 4
    assert all(_alive(p) for p in children)
    proc.kill()
    proc.communicate(timeout=10)
    assert_all_gone(children)


def test_sigterm_of_cluster_up_stops_everything_and_exits_143(
    tmp_path: Path, toxiproxy: None, leftovers: list[psutil.Process]
) -> None:
    proc, _ = cluster_up(tmp_path, leftovers)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == 143
    assert_all_gone(leftovers, timeout=1.0)  # stopped by us before we exited, not by the kernel


SCENARIO = """
name = "sigterm"
seed = 3
nodes = ["n1", "n2", "n3"]
duration = 60.0
[timing]
tick_ms = 20.0
election_ticks = 15
heartbeat_ticks = 3
[workload]
clients = 2
rate = 20.0
keys = 2
[[nemesis]]
kind = "partition"
shape = "isolate-node"
target = "n3"
at = 1.0
duration = 50.0
[final]
settle = 1.0
converge_timeout = 10.0
"""


def test_sigterm_of_a_chaos_run_heals_keeps_and_judges_then_exits_143(
    tmp_path: Path, toxiproxy: None, leftovers: list[psutil.Process]
) -> None:
    config = tmp_path / "sigterm.toml"
    config.write_text(SCENARIO)
    store = tmp_path / "store"
    argv = [sys.executable, "-m", "harness.cli", "chaos", "run", str(config), "--store",
            str(store), "--no-progress"]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    me = psutil.Process(proc.pid)
    leftovers.append(me)
    try:
        history = _wait_for(lambda: next(store.glob("*/*/history.jsonl"), None), START_S)
        faults = history.parent / "faults.jsonl"
        _wait_for(lambda: '"partition"' in faults.read_text() or None, START_S)
        children = me.children(recursive=True)
        leftovers += children
        names = sorted(p.name() for p in children)
        assert len(children) >= 4, names  # three nodes and Toxiproxy
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, out
    assert_all_gone(leftovers, timeout=1.0)
    results = json.loads((history.parent / "results.json").read_text())
    assert results["interrupted"] is True
    assert results["exit_code"] == 143
    assert results["linearizability"]["valid"] in (True, "unknown"), results["linearizability"]
    assert results["counts"]["ok"] >= 1  # what was recorded was kept
    assert results["metrics"] == {"n1": "ok", "n2": "ok", "n3": "ok"}  # the last scrape, kept
    assert "orbital_raft_term" in (history.parent / "nodes" / "n3" / "metrics.prom").read_text()
    events = [json.loads(line) for line in faults.read_text().splitlines()]
    partitions = [(e["fault"], e["action"]) for e in events if e["fault"] == "partition"]
    assert ("partition", "stop") in partitions, events  # healed before stopping


def _wait_for(find: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = find()
        except OSError:
            found = None
        if found:
            return found
        time.sleep(0.1)
    pytest.fail("timed out")


# ---- teeth: the bugs these checks catch ---------------------------------------------------
DRIVER = """
import sys, time
from pathlib import Path
import chaos.process
from harness import signals
planted = sys.argv[1]
if planted == "no-pdeathsig":
    chaos.process._prctl = None
if planted != "no-handler":
    signals.install()
manager = chaos.process.ProcessManager()
child = manager.start("child", [sys.executable, "-c", "import time; time.sleep(120)"],
                      Path(sys.argv[2]))
try:
    print(child.pid, flush=True)
    time.sleep(120)
except KeyboardInterrupt:
    manager.stop_all()
    print("cleanup ran", flush=True)
    sys.exit(signals.exit_code())
"""


def driver(
    tmp_path: Path, planted: str, leftovers: list[psutil.Process]
) -> tuple[subprocess.Popen[str], psutil.Process]:
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER, planted, str(tmp_path / "child.log")],
        stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    leftovers.append(psutil.Process(proc.pid))
    child = psutil.Process(int(read_line(proc, 30)))
    leftovers.append(child)
    return proc, child


@pytest.mark.parametrize("planted", ["none", "no-pdeathsig"])
def test_a_child_dies_with_its_sigkilled_parent_only_with_pdeathsig(
    tmp_path: Path, planted: str, leftovers: list[psutil.Process]
) -> None:
    proc, child = driver(tmp_path, planted, leftovers)
    proc.kill()
    proc.communicate(timeout=10)
    if planted == "none":
        assert_all_gone([child])
    else:
        time.sleep(1.0)
        assert _alive(child), "without PR_SET_PDEATHSIG the child outlives its parent"


@pytest.mark.parametrize("planted", ["none", "no-handler"])
def test_sigterm_runs_the_cleanup_only_with_the_handler(
    tmp_path: Path, planted: str, leftovers: list[psutil.Process]
) -> None:
    proc, child = driver(tmp_path, planted, leftovers)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    if planted == "none":
        assert proc.returncode == 143
        assert "cleanup ran" in out
        assert not _alive(child)
    else:
        assert proc.returncode == -signal.SIGTERM
        assert "cleanup ran" not in out
