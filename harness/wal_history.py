"""Every entry a node ever wrote: its WAL's whole history, not only what replay keeps.

A node's write-ahead log is append-only (:mod:`raft.wal`): replacing a suffix is a new record
after the old ones, so the segments still on disk also hold the entries a node wrote and
later dropped (a follower's conflicting suffix, a leader's entries that a later leader
overwrote). The storage replay (:mod:`harness.replay`) judges the final logs; this module
gives the checks what the final logs no longer show. Segments deleted by compaction are gone,
with what they held: the history is what is still on disk (never more than was written).

:func:`written_terms`, :func:`fresh_starts` and :func:`config_appends` read it, read-only and
without the store's lock, with the WAL's own record reader (a torn tail ends the history, as
it ends the log).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from raft.core.types import EntryKind, LogEntry
from raft.storage import WAL_DIR
from raft.wal import (
    RT_BATCH,
    RT_COMMIT,
    RT_ENTRY,
    RT_TRUNCATE,
    Record,
    list_segments,
    scan_segment,
)


def _records(directory: Path) -> list[Record]:
    """Every valid record of the node's WAL, in the order written."""
    out: list[Record] = []
    segments = list_segments(Path(directory) / WAL_DIR)
    for i, seg in enumerate(segments):
        records, _ = scan_segment(seg.path, seg.path.read_bytes(), last=i == len(segments) - 1)
        out += records
    return out


def written_terms(directory: Path) -> dict[int, int]:
    """index -> the highest term of any entry the node in ``directory`` ever wrote at that
    index (every ``ENTRY`` and ``BATCH`` record of its WAL, overwritten ones included).
    Raises :class:`raft.wal.StorageError` (``StorageCorrupted``) like the replay does."""
    out: dict[int, int] = {}
    for rec in _records(directory):
        if rec.rtype == RT_BATCH:
            pairs = [(e.index, e.term) for e in rec.batch]
        elif rec.rtype == RT_ENTRY:
            pairs = [(rec.index, rec.term)]
        else:
            continue
        for index, term in pairs:
            if term > out.get(index, -1):
                out[index] = term
    return out


def fresh_starts(directory: Path) -> list[tuple[int, int]]:
    """(index, term) of the first entry the node wrote each time after emptying its log
    (``TRUNCATE(0)``: the store does it when a snapshot replaces a log that does not continue
    it, or when an append starts the log afresh after the snapshot point)."""
    out: list[tuple[int, int]] = []
    emptied = False
    for rec in _records(directory):
        if rec.rtype == RT_TRUNCATE:
            emptied = emptied or rec.index == 0
        elif rec.rtype in (RT_BATCH, RT_ENTRY):
            if emptied:
                out.append((rec.index, rec.batch[0].term if rec.batch else rec.term))
            emptied = False
    return out


@dataclass(frozen=True, slots=True)
class ConfigAppend:
    """A configuration entry as a node wrote it, and what the node knew then."""

    index: int
    term: int
    #: the configuration entry before it in the node's log at that moment (None: none left,
    #: e.g. compacted into a snapshot, which only holds committed entries)
    previous: int | None
    #: the highest index the node had recorded as committed (its ``COMMIT`` records so far;
    #: they go into the same write as the next append, ahead of its entries)
    committed: int


def config_appends(directory: Path) -> list[ConfigAppend]:
    """Every configuration entry the node in ``directory`` wrote, in order, with the
    configuration entry before it in its log and the commit index it had recorded."""
    out: list[ConfigAppend] = []
    configs: list[int] = []  # indexes of the configuration entries in the replayed log
    committed = 0
    for rec in _records(directory):
        if rec.rtype == RT_COMMIT:
            committed = max(committed, rec.index)
            continue
        if rec.rtype == RT_TRUNCATE:
            configs = [i for i in configs if i <= rec.index]
            continue
        if rec.rtype == RT_BATCH:
            entries = rec.batch
        elif rec.rtype == RT_ENTRY:
            entries = [LogEntry(rec.index, rec.term, rec.command, EntryKind(rec.kind))]
        else:
            continue
        configs = [i for i in configs if i < entries[0].index]
        for e in entries:
            if e.kind is EntryKind.CONFIG:
                out.append(ConfigAppend(e.index, e.term, configs[-1] if configs else None,
                                        committed))  # fmt: skip
                configs.append(e.index)
    return out


__all__ = ["ConfigAppend", "config_appends", "fresh_starts", "written_terms"]
