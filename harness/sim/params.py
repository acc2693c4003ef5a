"""The knobs of one simulated run, and swarm testing: each seed draws its own.

Theory of operation
-------------------
A :class:`SimConfig` says what a sweep may use (which fault kinds, how many clients at most);
:class:`RunParams` is what one run actually uses. Without ``swarm`` they are the same for every
seed: the run uses every fault kind it was given, at fixed rates. With ``swarm`` (Groce et al.,
"Swarm Testing", ISSTA 2012) each seed draws, from its own random stream, a subset of the fault
kinds and their rates: how often the nemesis strikes, how lossy and slow the network gets, how
likely a node is to crash inside the window between a Ready's messages leaving and its write
becoming durable, how small snapshots and their chunks are, how many clients run and on how
many keys. A bug that needs a rare combination (no partitions but many crashes, say) then gets
whole runs of it instead of a share of every run. The draw is part of the seed: replaying a
seed replays the draw, and ``describe()`` prints it at the top of a trace.

The draw comes from its own stream (``"{seed}/swarm"``), so the other streams of a seed (network,
nemesis, clients) are the same with and without it; and without ``swarm`` nothing here draws
at all, so runs of a non-swarm configuration are unchanged by this module.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

#: fault kinds the nemesis acts out; "snapshot" is a setting (small snapshot thresholds)
FAULTS = ("partition", "crash", "drop", "delay", "duplicate", "churn", "membership", "snapshot")


@dataclass(frozen=True, slots=True)
class RunParams:
    faults: frozenset[str]
    #: time between two nemesis actions, drawn uniformly from this range (µs)
    nemesis_gap_us: tuple[int, int] = (100_000, 800_000)
    #: how long a fault lasts (µs)
    fault_span_us: tuple[int, int] = (200_000, 2_500_000)
    drop_p: tuple[float, float] = (0.05, 0.4)
    dup_p: tuple[float, float] = (0.05, 0.3)
    delay_mean_us: tuple[int, int] = (5_000, 80_000)
    #: chance that a node crashes while a Ready that changes its term or vote is being written
    crash_vote_write_p: float = 0.0
    #: ... while a Ready that only appends entries is being written
    crash_entries_write_p: float = 0.0
    #: chance that an InstallSnapshot chunk (not the last) crashes its sender or receiver
    crash_chunk_p: float = 0.0
    #: chance that a leader crashes right after a membership change was proposed to it
    crash_change_p: float = 0.0
    #: chance that a second membership change is proposed at once after the first
    overlap_change_p: float = 0.0
    snapshot_entries: int = 0
    snapshot_chunk_bytes: int = 64
    clients: int = 0
    keys: int = 3
    client_interval_us: int = 15_000
    #: proposals pushed at a leader the nemesis cuts off alone (its clients keep writing):
    #: a long uncommitted suffix that the new leader's log, and snapshots, must replace
    minority_burst: int = 0
    #: how long a write takes (µs; None: the configuration's)
    fsync_us: int | None = None
    #: nodes (by position) whose disk is slow, and how long their writes take (µs)
    slow_disks: tuple[int, ...] = ()
    slow_fsync_us: int = 0
    #: Raft settings the run overrides (None: the configuration's)
    pre_vote: bool | None = None
    check_quorum: bool | None = None
    election_ticks: int | None = None

    def describe(self) -> str:
        parts = [f"faults={','.join(sorted(self.faults)) or 'none'}"]
        if self.pre_vote is False:
            parts.append("no pre-vote")
        if self.check_quorum is False:
            parts.append("no check-quorum")
        if self.election_ticks is not None:
            parts.append(f"election timeout {self.election_ticks} ticks")
        if self.crash_vote_write_p or self.crash_entries_write_p:
            parts.append(
                f"crash-in-write p={self.crash_vote_write_p:g}/{self.crash_entries_write_p:g}"
            )
        if self.crash_chunk_p:
            parts.append(f"crash-mid-chunk p={self.crash_chunk_p:g}")
        if self.overlap_change_p or self.crash_change_p:
            parts.append(
                f"overlapping changes p={self.overlap_change_p:g}, "
                f"crash after change p={self.crash_change_p:g}"
            )
        if self.snapshot_entries:
            parts.append(
                f"snapshot every {self.snapshot_entries} entries, "
                f"{self.snapshot_chunk_bytes} B chunks"
            )
        if self.fsync_us is not None:
            parts.append(f"writes take {self.fsync_us / 1000:g} ms")
        if self.slow_disks:
            which = ",".join(f"n{i + 1}" for i in self.slow_disks)
            parts.append(f"slow disks on {which} ({self.slow_fsync_us / 1000:g} ms)")
        if self.minority_burst:
            parts.append(f"{self.minority_burst} proposals at a leader cut off")
        if self.clients:
            parts.append(
                f"{self.clients} clients on {self.keys} keys every "
                f"{self.client_interval_us / 1000:g} ms"
            )
        lo, hi = self.nemesis_gap_us
        parts.append(f"nemesis every {lo / 1000:g}-{hi / 1000:g} ms")
        return "; ".join(parts)


def swarm_draw(seed: int, faults: frozenset[str], clients: int, nodes: int) -> RunParams:
    """What seed ``seed`` uses, out of what the sweep allows."""
    rng = random.Random(f"{seed}/swarm")
    acted = sorted(faults - {"snapshot"})
    chosen = {f for f in acted if rng.random() < 0.6}
    if acted and not chosen:
        chosen.add(rng.choice(acted))
    snapshots = "snapshot" in faults and rng.random() < 0.7
    if snapshots:
        chosen.add("snapshot")
    crashes = "crash" in chosen or "churn" in chosen
    scale = rng.choice([0.5, 1.0, 2.0])
    return RunParams(
        faults=frozenset(chosen),
        nemesis_gap_us=(int(100_000 * scale), int(800_000 * scale)),
        fault_span_us=(200_000, rng.choice([1_000_000, 2_500_000])),
        drop_p=(0.02, rng.uniform(0.05, 0.5)),
        dup_p=(0.02, rng.uniform(0.05, 0.4)),
        delay_mean_us=(2_000, rng.choice([10_000, 40_000, 100_000])),
        crash_vote_write_p=rng.choice([0.0, 0.05, 0.2, 0.5]) if crashes else 0.0,
        crash_entries_write_p=rng.choice([0.0, 0.005, 0.02, 0.05]) if crashes else 0.0,
        crash_chunk_p=rng.choice([0.0, 0.05, 0.2]) if snapshots else 0.0,
        crash_change_p=rng.choice([0.0, 0.3]) if "membership" in chosen else 0.0,
        overlap_change_p=rng.choice([0.3, 0.7]) if "membership" in chosen else 0.0,
        snapshot_entries=rng.choice([5, 10, 25, 60]) if snapshots else 0,
        snapshot_chunk_bytes=rng.choice([16, 64, 256, 4096]),
        clients=rng.randint(1, clients) if clients else 0,
        keys=rng.choice([1, 2, 3, 5]),
        client_interval_us=rng.choice([10_000, 30_000, 60_000]),
        # Pre-vote varies; check-quorum stays on: without both, a removed server can disrupt
        # the cluster for ever (dissertation §4.2.3), a known limit, not a bug to look for.
        pre_vote=rng.random() >= 0.3,
        minority_burst=rng.choice([0, 10, 40]) if "partition" in chosen else 0,
        fsync_us=rng.choice([300, 300, 2_000]),
        slow_disks=tuple(sorted(rng.sample(range(nodes), rng.choice([0, 1, 2])))),
        slow_fsync_us=rng.choice([5_000, 20_000]),
        election_ticks=rng.choice([8, 15, 15, 30]),
    )
