"""The replicated log as the core sees it: snapshot point, entries, commit and apply cursors.

Theory of operation
-------------------
* The log holds every entry after the snapshot point ``(snap_index, snap_term)`` in memory, in
  ``entries`` (``entries[k].index == snap_index + 1 + k``). Compaction (``compact``) moves the
  snapshot point forward and drops the entries it covers.
* Entries from ``unstable_from`` on are not yet durable: the driver must persist them (through
  the ``Ready``) before the core counts them, replies about them, or applies them. When a
  follower's log is overwritten below ``unstable_from``, ``unstable_from`` moves back.
* Invariants (asserted): ``snap_index <= applied <= committed <= last_index()``;
  ``committed`` never decreases; terms never decrease along the log.
* Log Matching (Raft §5.3): ``append_after`` only accepts entries that continue an entry we
  hold with the same term, and truncates a conflicting suffix (never a committed entry).
"""

from __future__ import annotations

from collections.abc import Sequence

from raft.core.types import LogEntry


class RaftLog:
    __slots__ = ("applied", "committed", "entries", "snap_index", "snap_term", "unstable_from")

    def __init__(self, snap_index: int = 0, snap_term: int = 0) -> None:
        self.snap_index = snap_index
        self.snap_term = snap_term
        self.entries: list[LogEntry] = []
        self.committed = snap_index
        self.applied = snap_index
        self.unstable_from = snap_index + 1

    # -- queries -------------------------------------------------------------------------
    def last_index(self) -> int:
        return self.snap_index + len(self.entries)

    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.snap_term

    def first_index(self) -> int:
        """The first index still held as an entry (``snap_index + 1``)."""
        return self.snap_index + 1

    def term(self, index: int) -> int | None:
        """The term of the entry at ``index``; ``None`` if compacted away or beyond the end."""
        snap = self.snap_index
        if index <= snap:
            return self.snap_term if index == snap else None
        k = index - snap - 1
        entries = self.entries
        return entries[k].term if k < len(entries) else None

    def entry(self, index: int) -> LogEntry:
        assert self.snap_index < index <= self.last_index(), (index, self.snap_index)
        return self.entries[index - self.snap_index - 1]

    def slice(self, lo: int, hi: int, max_bytes: int) -> list[LogEntry]:
        """Entries ``lo..hi`` (inclusive), cut at ``max_bytes`` but never empty if ``lo <= hi``."""
        assert lo > self.snap_index, (lo, self.snap_index)
        out: list[LogEntry] = []
        size = 0
        base = self.snap_index + 1
        for e in self.entries[lo - base : hi - base + 1]:
            size += len(e.command) + 24  # e.size(), inlined
            if out and size > max_bytes:
                break
            out.append(e)
        return out

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Is a candidate's log at least as up to date as ours? (Raft §5.4.1)"""
        mine = self.last_term()
        return last_term > mine or (last_term == mine and last_index >= self.last_index())

    def matches(self, index: int, term: int) -> bool:
        return self.term(index) == term

    def first_index_of_term(self, index: int) -> int:
        """The first index of the run of entries sharing the term at ``index`` (fast back-up)."""
        t = self.term(index)
        i = index
        while i - 1 > self.snap_index and self.term(i - 1) == t:
            i -= 1
        return i

    def last_index_of_term(self, term: int) -> int:
        """The last index whose entry has ``term``; 0 when we hold none."""
        for e in reversed(self.entries):
            if e.term == term:
                return e.index
            if e.term < term:
                break
        return 0

    def unstable(self) -> list[LogEntry]:
        return self.entries[self.unstable_from - self.snap_index - 1 :]

    def stable_index(self) -> int:
        return self.unstable_from - 1

    def next_committed(self, max_bytes: int) -> list[LogEntry]:
        """Committed entries not yet applied, at most ``max_bytes`` (never empty if any).

        They may include entries still unstable here: the Ready contract persists before it
        applies, and a committed entry is durable on a majority anyway.
        """
        if self.committed <= self.applied:
            return []
        return self.slice(self.applied + 1, self.committed, max_bytes)

    # -- updates -------------------------------------------------------------------------
    def append(self, entries: Sequence[LogEntry]) -> None:
        """Leader: append new entries at the end."""
        if entries:
            assert entries[0].index == self.last_index() + 1, (entries[0].index, self.last_index())
        self.entries.extend(entries)

    def append_after(self, prev_index: int, entries: Sequence[LogEntry]) -> int:
        """Follower: store ``entries`` after ``prev_index`` (already checked to match).

        Entries we already hold with the same term are skipped (they are identical by Log
        Matching); at the first conflict the suffix is truncated. Returns the last index of the
        new entries (the follower's match index).
        """
        last_new = prev_index + len(entries)
        for k, e in enumerate(entries):
            t = self.term(e.index)
            if t is None and e.index <= self.snap_index:
                continue  # already covered by our snapshot
            if t == e.term:
                continue
            if t is not None:
                assert e.index > self.committed, f"conflict at committed index {e.index}"
                del self.entries[e.index - self.snap_index - 1 :]
                self.unstable_from = min(self.unstable_from, e.index)
            self.entries.extend(entries[k:])
            break
        return last_new

    def commit_to(self, index: int) -> bool:
        if index <= self.committed:
            return False
        assert index <= self.last_index(), (index, self.last_index())
        self.committed = index
        return True

    def stable_to(self, index: int) -> None:
        """The driver made everything up to ``index`` durable."""
        self.unstable_from = max(self.unstable_from, index + 1)

    def applied_to(self, index: int) -> None:
        assert self.applied <= index <= self.committed, (self.applied, index, self.committed)
        self.applied = index

    def compact(self, index: int) -> None:
        """Drop entries up to ``index`` (covered by a local snapshot)."""
        assert self.snap_index < index <= self.applied, (self.snap_index, index, self.applied)
        term = self.term(index)
        assert term is not None
        del self.entries[: index - self.snap_index]
        self.snap_index, self.snap_term = index, term
        self.unstable_from = max(self.unstable_from, index + 1)

    def restore(self, index: int, term: int) -> None:
        """Install a snapshot at ``(index, term)``: keep a suffix that continues it (Raft §7)."""
        if self.term(index) == term:
            del self.entries[: index - self.snap_index]
        else:
            self.entries = []
        self.snap_index, self.snap_term = index, term
        self.committed = max(self.committed, index)
        self.applied = index
        self.unstable_from = max(self.unstable_from, index + 1)
        if not self.entries:
            self.unstable_from = index + 1
