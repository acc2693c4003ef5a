"""Faults on one node's disk, clock or membership, and link-shaped partitions, as the
nemesis applies them to a running cluster (start, then undo at the fault's end).

Each ``start_*`` takes the cluster, the fault's drawn parameters and its target node, and
returns a detail for ``faults.jsonl``; ``stop_*`` undoes it. Blocking work (killing a
process, a control call to the disk file system, a membership change through a client) is
meant to run in a worker thread (the nemesis does ``asyncio.to_thread``).

- disk (``docs/disk-faults.md``): ``lose-unsynced`` and ``torn-write`` slow the node's fsyncs
  until a log write is in flight, SIGKILL the node and crash its file system (its unsynced
  writes are lost, or that one torn), and the end of the fault restarts it; ``corrupt``
  kills it, flips a bit of its durable data (a record in the middle of its log, the last
  record, the hard state or the snapshot, chosen from the seed), and the restart must be
  refused (the node is *retired*: it stays down, naming file and offset); ``io-error`` and
  ``disk-full`` make writes and fsyncs fail (the node stops on its own; the end clears the
  fault and restarts it); ``slow-fsync`` delays every fsync.
- clock (libfaketime): ``skew`` sets the node's clock rate, ``jump`` moves it, ``strobe``
  flips it back and forth; the end resets it.
- membership: ``add`` starts a spare node and adds it (as a learner that the leader promotes
  once it has caught up), waiting for the promotion; ``remove`` removes the target (the
  leader too: it steps down once the change commits) and stops it; ``replace`` does both.
  Membership changes are not undone.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import TYPE_CHECKING, Any, Protocol

from chaos.disk import pick_corruption
from chaos.diskfs import DiskFSError, DiskMount
from raft.client import KVClient, KVError
from raft.security import ADMIN, ClientKeys

if TYPE_CHECKING:
    from chaos.clock import FakeClock
    from chaos.toxiproxy import ProxyNetwork

#: how long an added learner may take to catch up before the change is given up
CATCH_UP_TIMEOUT_S = 20.0
#: a crash fault waits this long for a write in flight (fsyncs slowed to CATCH_FSYNC_MS)
CATCH_UNSYNCED_S = 2.0
CATCH_FSYNC_MS = 300


class FaultCluster(Protocol):
    """What these faults need of a cluster (``harness.cluster.LocalCluster`` has it)."""

    disks: dict[str, DiskMount]
    clocks: dict[str, FakeClock]
    retired: set[str]
    joined: list[str]
    client_addr: dict[str, str]
    network: ProxyNetwork | None
    procs: Any

    @property
    def members(self) -> list[str]: ...
    def alive(self, node: str) -> bool: ...
    def kill(self, node: str) -> None: ...
    def restart(self, node: str) -> None: ...
    def start_joiner(self, node: str) -> None: ...
    def keys(self, role: str = ...) -> ClientKeys | None: ...


class FaultError(RuntimeError):
    """The fault cannot be applied now (no disk, no spare node, a refused change)."""


# ==== disk ====================================================================================


def _disk(cluster: FaultCluster, node: str) -> DiskMount:
    disk = cluster.disks.get(node)
    if disk is None:
        raise FaultError(f"{node} has no fault-injecting disk (scenario without disk faults)")
    return disk


def _catch_unsynced(disk: DiskMount) -> str | None:
    """Slow the node's fsyncs down until one of its log segments has a write that is not yet
    synced (a crash then loses, or tears, a write in flight: what this fault is for); the
    segment, or None if none came within :data:`CATCH_UNSYNCED_S`."""
    disk.call("slow-fsync", ms=CATCH_FSYNC_MS)
    deadline = time.monotonic() + CATCH_UNSYNCED_S
    while time.monotonic() < deadline:
        unsynced = disk.call("status")["unsynced"]
        wal = sorted(str(p) for p in unsynced if str(p).startswith("wal/"))
        if wal:
            return wal[-1]
        time.sleep(0.005)
    return None


def start_disk(cluster: FaultCluster, params: dict[str, Any], node: str) -> dict[str, Any]:
    """Apply a disk fault to ``node``; the detail says exactly what it did."""
    disk, fault = _disk(cluster, node), str(params["disk"])
    detail: dict[str, Any] = {"node": node, "disk": fault}
    if fault in ("lose-unsynced", "torn-write", "corrupt"):
        pending = _catch_unsynced(disk) if fault != "corrupt" and cluster.alive(node) else None
        detail["caught_unsynced"] = pending
        # the crash: the disk first (an fsync in flight fails), the process right after; then
        # once more, for anything the process wrote in between
        if fault == "torn-write":
            try:
                detail.update(disk.call("torn-write", path=pending))
            except DiskFSError as exc:  # nothing unsynced to tear: a plain crash
                detail["torn"] = None
                detail["note"] = str(exc)
                detail.update(disk.call("lose-unsynced"))
        else:
            detail.update(disk.call("lose-unsynced"))
        if cluster.alive(node):
            cluster.kill(node)
        detail["lost_after"] = disk.call("lose-unsynced")["lost"]
        disk.call("clear")
        if fault == "corrupt":
            spot = pick_corruption(
                disk.backing, str(params["corrupt"]), random.Random(int(params["seed"]))
            )
            detail["corrupt"] = disk.call("corrupt", path=spot.path, offset=spot.offset)
            detail["record"] = spot.record
            cluster.retired.add(node)  # it must refuse to start from now on
    elif fault == "io-error":
        disk.call("fail", errno="EIO", ops=["write", "fsync"])
    elif fault == "disk-full":
        disk.call("disk-full")
    elif fault == "slow-fsync":
        disk.call("slow-fsync", ms=int(params["fsync_ms"]))
        detail["ms"] = int(params["fsync_ms"])
    else:
        raise FaultError(f"unknown disk fault {fault!r}")
    return detail


def stop_disk(cluster: FaultCluster, params: dict[str, Any], node: str) -> None:
    """End a disk fault: clear it, restart the node if it is down (a corrupted one too: its
    refusal to start is what the run checks)."""
    disk = _disk(cluster, node)
    if params["disk"] in ("io-error", "disk-full", "slow-fsync"):
        disk.call("clear")
    if not cluster.alive(node):
        if params["disk"] in ("io-error", "disk-full"):
            disk.call("lose-unsynced")  # the node died on its failing disk: a crash
        cluster.restart(node)


# ==== clock ===================================================================================


def start_clock(cluster: FaultCluster, params: dict[str, Any], node: str) -> dict[str, Any]:
    clock = cluster.clocks.get(node)
    if clock is None:
        raise FaultError(f"{node} runs on the real clock (scenario without clock faults)")
    kind = str(params["clock"])
    if kind == "skew":
        return {"node": node, "clock": kind, **clock.skew(float(params["rate"]))}
    if kind == "jump":
        return {"node": node, "clock": kind, **clock.jump(float(params["jump_s"]))}
    period, span = float(params["strobe_period_s"]), float(params["duration"])
    detail = clock.strobe(float(params["strobe_s"]), period, span)
    return {"node": node, "clock": kind, **detail}


def stop_clock(cluster: FaultCluster, node: str) -> None:
    clock = cluster.clocks.get(node)
    if clock is not None:
        clock.reset()


# ==== membership ==============================================================================


def spare(cluster: FaultCluster, spares: list[str]) -> str:
    for node in spares:
        if node not in cluster.joined:
            return node
    raise FaultError("no spare node left to add")


async def _client_call(cluster: FaultCluster, action: str, node: str) -> dict[str, Any]:
    addrs = {n: cluster.client_addr[n] for n in cluster.members if n != node or action != "add"}
    async with KVClient(addrs, timeout=10.0, keys=cluster.keys(ADMIN)) as client:
        try:
            return await client.membership(action, node)
        except KVError as exc:
            # The client retries a request whose answer was lost; the retry of a change that
            # did take effect is refused as already done. That is the outcome asked for.
            done = "is already a member" if action.startswith("add") else "is not a member"
            if done in str(exc):
                return {"already": True, "detail": str(exc)}
            raise FaultError(f"membership {action} {node} refused: {exc}") from exc


async def _promoted(cluster: FaultCluster, node: str, timeout: float) -> None:
    """Wait until the leader's configuration has ``node`` among its voters."""
    deadline = time.monotonic() + timeout
    keys = cluster.keys(ADMIN)
    async with KVClient(dict(cluster.client_addr), timeout=1.0, keys=keys) as client:
        while time.monotonic() < deadline:
            for member in cluster.members:
                try:
                    st = await client.status(member)
                except KVError:
                    continue
                if st.get("role") == "leader" and node in st.get("voters", []):
                    return
            await asyncio.sleep(0.1)
    raise FaultError(f"{node} was not promoted within {timeout:.0f}s")


async def add_node(cluster: FaultCluster, node: str) -> dict[str, Any]:
    """Start ``node`` (a spare) and add it: it joins as a learner, and the leader promotes it
    once it has caught up (dissertation §4.2.1; ``add_voter``); wait for the promotion."""
    cluster.start_joiner(node)
    t0 = time.monotonic()
    await _client_call(cluster, "add_voter", node)
    await _promoted(cluster, node, CATCH_UP_TIMEOUT_S)
    return {"added": node, "promoted_after_s": round(time.monotonic() - t0, 3)}


async def remove_node(cluster: FaultCluster, node: str) -> dict[str, Any]:
    """Remove ``node`` from the configuration, then stop its process."""
    await _client_call(cluster, "remove", node)
    cluster.retired.add(node)
    if cluster.alive(node):
        cluster.procs[node].stop()
    return {"removed": node}


def start_membership(
    cluster: FaultCluster, params: dict[str, Any], node: str, spares: list[str]
) -> dict[str, Any]:
    """Apply a membership change (blocking: run it in a worker thread)."""
    change = str(params["membership"])
    detail: dict[str, Any] = {"membership": change}
    if change in ("add", "replace"):
        detail.update(asyncio.run(add_node(cluster, spare(cluster, spares))))
    if change in ("remove", "replace"):
        detail.update(asyncio.run(remove_node(cluster, node)))
    return detail


# ==== link-shaped partitions ==================================================================


def start_links(cluster: FaultCluster, links: list[list[str]]) -> None:
    """Cut every directed link of a shape (``chaos.shapes``)."""
    net = cluster.network
    if net is None:
        raise FaultError("partition shapes need Toxiproxy")
    for src, dst in links:
        net.cut(src, dst)
