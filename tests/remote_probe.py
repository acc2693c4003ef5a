"""Run inside the test bed's control namespace by tests/test_ssh_placement.py (not a test).

``python -m tests.remote_probe INVENTORY WORKDIR [--plant undelivered-kill]`` starts a 5-node
Orbital cluster on the inventory's hosts over SSH, then kills the leader, pauses and resumes
a follower and restarts the killed node through the cluster (the orchestrator's API), and
prints what it saw *on the hosts*, independently of the agent: for each process, the network
namespace it lives in (``ip netns identify``: which host runs it) and its state in ``/proc``
(gone, ``T`` stopped, running). ``--plant undelivered-kill`` replaces the remote kill by one
that records the fault but never reaches the host: the test shows its check catches that.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from chaos.clock import FakeClock
from chaos.diskfs import DiskMount
from chaos.remote import RemoteProcess
from harness.inventory import load_inventory
from harness.local import Cluster, ClusterOptions
from harness.placement import SshPlacement
from harness.system import ClusterView, NodeCommand
from harness.systems.orbital import OrbitalSystem


def netns_of(pid: int | None) -> str:
    if pid is None:
        return ""
    out = subprocess.run(["ip", "netns", "identify", str(pid)], capture_output=True, text=True)
    return out.stdout.strip()


def state_of(pid: int | None) -> str:
    """``gone``, or the state letter of /proc/PID/stat (R, S, T, Z, ...)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "gone"
    return stat.rpartition(")")[2].split()[0]


def state_within(pid: int | None, wanted: Callable[[str], bool], seconds: float = 2.0) -> str:
    """The state of ``pid`` once ``wanted`` holds, or after ``seconds`` (a signal is acted on
    when the process is next scheduled: SIGSTOP may take a moment on a loaded machine)."""
    deadline = time.monotonic() + seconds
    while True:
        state = state_of(pid)
        if wanted(state) or time.monotonic() > deadline:
            return state
        time.sleep(0.01)


def _undelivered_kill(self: RemoteProcess) -> None:
    """The planted bug: the fault is recorded, the host never hears of it."""
    self._emit("kill")
    self._ended_by_us = True
    self._running = False


class FailsOnThirdNode(OrbitalSystem):
    """Orbital, except that n3's command exits at once: a node that fails to start."""

    def command(self, node: str, cluster: ClusterView) -> NodeCommand:
        if node != "n3":
            return super().command(node, cluster)
        return NodeCommand([sys.executable, "-c", "raise SystemExit('n3 cannot start here')"])


def _clock_here(self: SshPlacement, node: str, path: Path) -> FakeClock:
    """The planted bug: the clock's file is written on the control node, not the host."""
    return FakeClock(path)


async def _clock_of(cluster: Cluster, node: str) -> float:
    st = await cluster.status(node, timeout=2.0)
    assert st is not None, f"{node} did not answer"
    return float(st.extra["clock_s"])


def _disk_here(self: SshPlacement, node: str, backing: Path, mountpoint: Path,
               state_dir: Path, **kw: Any) -> DiskMount:  # fmt: skip
    """The planted bug: the node's disk is mounted on the control node, not its host."""
    return DiskMount(backing, mountpoint, state_dir).start()


def fuse_mounts(pid: int | None) -> list[str]:
    """The FUSE mount points process ``pid`` sees (its mount namespace's)."""
    try:
        lines = Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
    except OSError:
        return []
    return [ln.split()[4] for ln in lines if " - fuse" in ln]


def disks(inventory: Path, workdir: Path, plant: str | None) -> dict[str, Any]:
    """Three nodes on fault-injecting disks: where each disk is mounted, seen from the node."""
    if plant == "disk-here":
        SshPlacement.disk = _disk_here  # type: ignore[method-assign]
    placement = SshPlacement(load_inventory(inventory))
    options = ClusterOptions(nodes=("n1", "n2", "n3"), seed=3, disk_faults=True)
    out: dict[str, Any] = {}
    with Cluster(OrbitalSystem(), options, workdir, placement=placement) as cluster:
        asyncio.run(cluster.wait_ready(60.0))
        for node in cluster.nodes:
            host = placement.host_of[node]
            out[node] = {
                "data_dir": placement.translate(host, str(cluster.data_dir(node))),
                "node_sees": fuse_mounts(cluster.procs[node].pid),
                "status": sorted(cluster.disks[node].call("status")),
            }
        out["control_sees"] = fuse_mounts(os.getpid())
    out["read_back"] = sorted(p.name for p in (workdir / "nodes" / "n1" / "data").iterdir())
    return out


def main() -> int:
    inventory, workdir = Path(sys.argv[1]), Path(sys.argv[2])
    plant = sys.argv[sys.argv.index("--plant") + 1] if "--plant" in sys.argv else None
    if "--disks" in sys.argv:
        print(json.dumps(disks(inventory, workdir, plant)))
        return 0
    if plant == "undelivered-kill":
        RemoteProcess.kill = _undelivered_kill  # type: ignore[method-assign]
    if plant == "clock-here":
        SshPlacement.clock = _clock_here  # type: ignore[method-assign]
    placement = SshPlacement(load_inventory(inventory))
    options = ClusterOptions(nodes=("n1", "n2", "n3", "n4", "n5"), seed=3, fake_clocks=True)
    system = OrbitalSystem(election_ticks=30, heartbeat_ticks=5)
    out: dict[str, Any] = {}
    with Cluster(system, options, workdir, placement=placement) as cluster:
        asyncio.run(cluster.wait_ready(60.0))
        leader, _term, _ = asyncio.run(cluster.wait_for_leader(30.0))
        follower = next(n for n in cluster.nodes if n != leader)
        out["hosts"] = {n: netns_of(cluster.procs[n].pid) for n in cluster.nodes}
        out["placed"] = dict(placement.host_of)
        pid = cluster.procs[leader].pid
        cluster.kill(leader)
        out["kill"] = {"node": leader, "pid": pid, "after": state_of(pid)}
        fpid = cluster.procs[follower].pid
        cluster.pause(follower)
        out["pause"] = {"node": follower, "pid": fpid, "after": state_within(fpid, "T".__eq__)}
        cluster.resume(follower)
        after = state_within(fpid, lambda st: st not in ("T", "t"))
        out["resume"] = {"node": follower, "pid": fpid, "after": after}
        cluster.restart(leader)
        new = cluster.procs[leader].pid
        out["restart"] = {"node": leader, "pid": new, "ns": netns_of(new), "after": state_of(new)}
        out["old_after_restart"] = state_of(pid)
        out["pids"] = [cluster.procs[n].pid for n in cluster.nodes]
        other = next(n for n in cluster.nodes if n not in (leader, follower))
        before, t0 = asyncio.run(_clock_of(cluster, other)), time.monotonic()
        cluster.clocks[other].jump(100.0)
        after, t1 = asyncio.run(_clock_of(cluster, other)), time.monotonic()
        out["clock"] = {"node": other, "moved_s": after - before, "elapsed_s": t1 - t0,
                        "file": str(cluster.clocks[other].path)}  # fmt: skip
    out["after_stop"] = {str(p): state_of(p) for p in out["pids"]}
    out["read_back"] = sorted(p.name for p in (workdir / "nodes" / leader).iterdir())
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
