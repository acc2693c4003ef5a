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
- membership: ``add`` adds a spare node (the system starts it and adds it: Orbital as a
  learner that the leader promotes once it has caught up), waiting until it votes; ``remove``
  removes the target (the leader too: it steps down once the change commits) and stops it;
  ``replace`` does both. Membership changes are not undone.

The cluster is any system's (:class:`FaultCluster`): what a fault needs of the system itself
(a membership change, where its log lives on disk, where a corruption lands) it asks the
cluster, which asks the system's capabilities; a missing one raises :class:`FaultError`
(the fault is skipped, saying why).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from chaos.diskfs import Disk, DiskFSError

if TYPE_CHECKING:
    from chaos.clock import FakeClock
    from chaos.toxiproxy import ProxyNetwork

#: a crash fault waits this long for a write in flight (fsyncs slowed to CATCH_FSYNC_MS)
CATCH_UNSYNCED_S = 2.0
CATCH_FSYNC_MS = 300


class FaultCluster(Protocol):
    """What these faults need of a cluster (``harness.local.Cluster`` has it)."""

    @property
    def disks(self) -> Mapping[str, Disk]: ...

    clocks: dict[str, FakeClock]
    retired: set[str]
    joined: list[str]
    network: ProxyNetwork | None

    @property
    def members(self) -> list[str]: ...
    @property
    def log_prefix(self) -> str | None:
        """Where the system's log lives under a data dir (``wal/``), if it says."""

    def alive(self, node: str) -> bool: ...
    def kill(self, node: str) -> None: ...
    def restart(self, node: str) -> None: ...
    def stop_node(self, node: str) -> None: ...
    async def add_member(self, node: str) -> dict[str, Any]: ...
    async def remove_member(self, node: str) -> dict[str, Any]: ...
    def pick_corruption(self, node: str, target: str, seed: int) -> tuple[str, int, Any]: ...
    async def disconnect(self) -> None: ...


class FaultError(RuntimeError):
    """The fault cannot be applied now (no disk, no spare node, a refused change)."""


# ==== disk ====================================================================================


def _disk(cluster: FaultCluster, node: str) -> Disk:
    disk = cluster.disks.get(node)
    if disk is None:
        raise FaultError(f"{node} has no fault-injecting disk (scenario without disk faults)")
    return disk


def _catch_unsynced(disk: Disk, prefix: str) -> str | None:
    """Slow the node's fsyncs down until one of its log files (under ``prefix``) has a write
    that is not yet synced (a crash then loses, or tears, a write in flight: what this fault
    is for); that file, or None if none came within :data:`CATCH_UNSYNCED_S`."""
    disk.call("slow-fsync", ms=CATCH_FSYNC_MS)
    deadline = time.monotonic() + CATCH_UNSYNCED_S
    while time.monotonic() < deadline:
        unsynced = disk.call("status")["unsynced"]  # path -> unsynced bytes
        wal = sorted(str(p) for p, n in unsynced.items() if str(p).startswith(prefix) and n)
        if wal:
            return wal[-1]
        time.sleep(0.005)
    return None


def start_disk(cluster: FaultCluster, params: dict[str, Any], node: str) -> dict[str, Any]:
    """Apply a disk fault to ``node``; the detail says exactly what it did."""
    disk, fault = _disk(cluster, node), str(params["disk"])
    detail: dict[str, Any] = {"node": node, "disk": fault}
    if fault == "corrupt":  # can the system say where? (before anything is done)
        try:
            cluster.pick_corruption(node, str(params["corrupt"]), int(params["seed"]))
        except ValueError as exc:
            raise FaultError(str(exc)) from None
    if fault in ("lose-unsynced", "torn-write", "corrupt"):
        prefix = cluster.log_prefix
        catch = fault != "corrupt" and cluster.alive(node) and prefix is not None
        pending = _catch_unsynced(disk, prefix or "") if catch else None
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
            try:
                path, offset, record = cluster.pick_corruption(
                    node, str(params["corrupt"]), int(params["seed"])
                )
            except ValueError as exc:  # the crash lost it all: the crash stands, said so
                detail["corrupt"] = None
                detail["note"] = f"nothing left to corrupt after the crash: {exc}"
                return detail
            detail["corrupt"] = disk.call("corrupt", path=path, offset=offset)
            detail["record"] = record
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
        why = getattr(cluster, "no_fake_clock", None) or "scenario without clock faults"
        raise FaultError(f"{node} runs on the real clock ({why})")
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


async def add_node(cluster: FaultCluster, node: str) -> dict[str, Any]:
    """Add the spare ``node`` (the system starts it) and wait until it votes."""
    try:
        return await cluster.add_member(node)
    except RuntimeError as exc:
        raise FaultError(f"membership add {node}: {exc}") from exc


async def remove_node(cluster: FaultCluster, node: str) -> dict[str, Any]:
    """Remove ``node`` from the configuration, then stop its process."""
    try:
        detail = await cluster.remove_member(node)
    except RuntimeError as exc:
        raise FaultError(f"membership remove {node}: {exc}") from exc
    cluster.retired.add(node)
    if cluster.alive(node):
        cluster.stop_node(node)
    return detail


def start_membership(
    cluster: FaultCluster, params: dict[str, Any], node: str, spares: list[str]
) -> dict[str, Any]:
    """Apply a membership change (blocking: run it in a worker thread)."""
    change = str(params["membership"])
    detail: dict[str, Any] = {"membership": change}

    async def change_membership() -> None:
        try:
            if change in ("add", "replace"):
                detail.update(await add_node(cluster, spare(cluster, spares)))
            if change in ("remove", "replace"):
                detail.update(await remove_node(cluster, node))
        finally:
            await cluster.disconnect()  # the system's connections of this event loop

    asyncio.run(change_membership())
    return detail


# ==== link-shaped partitions ==================================================================


def start_links(cluster: FaultCluster, links: list[list[str]]) -> None:
    """Cut every directed link of a shape (``chaos.shapes``)."""
    net = cluster.network
    if net is None:
        raise FaultError("partition shapes need Toxiproxy")
    for src, dst in links:
        net.cut(src, dst)
