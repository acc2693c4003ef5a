"""Durable storage of a node: the :class:`Storage` protocol and :class:`MemoryStorage`.

Contract (every implementation):

* Every method that writes returns only after what it wrote is durable (for a file-backed
  store: after fsync). The runtime relies on this to keep Raft's rule "persist before you
  reply" (Raft §5, Figure 2): it calls these methods, and only then sends the messages that
  depend on them.
* ``append_log(entries)`` takes a contiguous run of entries. Any stored entry at an index
  >= ``entries[0].index`` is replaced: the stored suffix from there is discarded first.
* ``save_snapshot(snapshot)`` stores the snapshot atomically. Afterwards ``load_log`` returns
  only entries after ``snapshot.meta.index``, and only if the stored log continues the
  snapshot: if the log holds an entry at ``meta.index`` whose term is not ``meta.term`` (the
  snapshot came from a leader whose log differs), the whole log is discarded (Raft §7: "If
  existing log entry has same index and term as snapshot's last included entry, retain log
  entries following it"). This rule is applied on load too, so a crash between writing the
  snapshot and trimming the log leaves a consistent store.
* ``load_*`` return what is durable; a fresh store has ``HardState()``, no log, no snapshot.

Methods are synchronous: the asyncio runtime runs them off the event loop, one batch at a time
(group commit). Synchronous methods keep the storage usable by tools that read a data
directory without a running node (``orbital inspect``, the chaos run's storage replay).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Protocol

from raft.core.types import HardState, LogEntry, Snapshot


class StorageError(Exception):
    """Storage could not do what was asked (disk full, permissions, ...)."""


class StorageCorrupted(StorageError):
    """Durable data failed its integrity check; the node must not start on it."""


class Storage(Protocol):
    def save_state(self, state: HardState) -> None: ...
    def load_state(self) -> HardState: ...
    def append_log(self, entries: Sequence[LogEntry]) -> None: ...
    def load_log(self) -> list[LogEntry]: ...
    def truncate_log_after(self, index: int) -> None: ...
    def save_snapshot(self, snapshot: Snapshot) -> None: ...
    def load_snapshot(self) -> Snapshot | None: ...
    def close(self) -> None: ...


def check_contiguous(entries: Sequence[LogEntry]) -> None:
    """Raise ``ValueError`` unless ``entries`` have consecutive indexes."""
    for prev, cur in itertools.pairwise(entries):
        if cur.index != prev.index + 1:
            raise ValueError(f"entries not contiguous: {prev.index} then {cur.index}")


def entries_after_snapshot(log: Sequence[LogEntry], snapshot: Snapshot | None) -> list[LogEntry]:
    """The part of ``log`` that continues ``snapshot`` (see the module contract)."""
    if snapshot is None:
        return list(log)
    meta = snapshot.meta
    if not log or log[-1].index <= meta.index:
        return []
    first = log[0].index
    if first <= meta.index:
        at = log[meta.index - first]
        if at.term != meta.term:
            return []
        return list(log[meta.index - first + 1 :])
    # The log starts after the snapshot point: it continues it only if it starts right after.
    return list(log) if first == meta.index + 1 else []


class MemoryStorage:
    """Storage held in memory: for tests and the simulator's reference. Not durable."""

    def __init__(self) -> None:
        self._state = HardState()
        self._log: list[LogEntry] = []
        self._snapshot: Snapshot | None = None

    def save_state(self, state: HardState) -> None:
        self._state = state

    def load_state(self) -> HardState:
        return self._state

    def append_log(self, entries: Sequence[LogEntry]) -> None:
        if not entries:
            return
        check_contiguous(entries)
        self.truncate_log_after(entries[0].index - 1)
        if self._log and self._log[-1].index + 1 != entries[0].index:
            raise ValueError(
                f"append at {entries[0].index} leaves a gap after {self._log[-1].index}"
            )
        self._log.extend(entries)

    def load_log(self) -> list[LogEntry]:
        return entries_after_snapshot(self._log, self._snapshot)

    def truncate_log_after(self, index: int) -> None:
        self._log = [e for e in self._log if e.index <= index]

    def save_snapshot(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot
        self._log = entries_after_snapshot(self._log, snapshot)

    def load_snapshot(self) -> Snapshot | None:
        return self._snapshot

    def close(self) -> None:
        pass
