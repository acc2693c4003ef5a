"""The simulator's disk: what one simulated node has made durable, and nothing else.

Theory of operation
-------------------
The simulator models a disk by what survives a crash. A :class:`SimDisk` holds the hard state,
the latest snapshot and the log entries after it, each as last *synced*; a write in progress
when the node crashes survives only as a prefix of its ordered parts, which the world decides
(``World._write``), exactly as the runtime's storage orders its writes: hard state, snapshot,
then entries. The rules mirror the storage contract of the library (``raft.storage``): an append
replaces the stored suffix from its first index; a snapshot drops the entries it covers, and
the whole log unless the log continues it (an entry at the snapshot's index with its term).

It is its own small model, not the library's ``MemoryStorage``: the simulator judges the core,
so it does not borrow the runtime's code for what a disk keeps.
"""

from __future__ import annotations

from collections.abc import Sequence

from raft.core.types import HardState, LogEntry, Snapshot


class SimDisk:
    __slots__ = ("log", "snapshot", "state")

    def __init__(self) -> None:
        self.state = HardState()
        self.snapshot: Snapshot | None = None
        #: entries after the snapshot, contiguous
        self.log: list[LogEntry] = []

    def load_state(self) -> HardState:
        return self.state

    def load_snapshot(self) -> Snapshot | None:
        return self.snapshot

    def load_log(self) -> list[LogEntry]:
        return list(self.log)

    def save_state(self, state: HardState) -> None:
        self.state = state

    def append_log(self, entries: Sequence[LogEntry]) -> None:
        if not entries:
            return
        first = entries[0].index
        log = self.log
        if log:
            del log[max(0, first - log[0].index) :]
            assert not log or log[-1].index + 1 == first, (
                f"append at {first} leaves a gap after {log[-1].index}"
            )
        log.extend(entries)

    def save_snapshot(self, snapshot: Snapshot) -> None:
        meta = snapshot.meta
        log = self.log
        kept: list[LogEntry] = []
        if log and log[-1].index > meta.index:
            first = log[0].index
            if first > meta.index:
                kept = log if first == meta.index + 1 else []
            elif log[meta.index - first].term == meta.term:
                kept = log[meta.index - first + 1 :]
        self.snapshot = snapshot
        self.log = kept
