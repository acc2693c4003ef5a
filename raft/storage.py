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

:class:`FileStorage` keeps one directory (format: ``docs/storage-format.md``)::

    LOCK        flock'ed by the process that has the store open for writing
    hardstate   term and vote; replaced atomically (temp file, fsync, rename, fsync dir)
    snapshot    snapshot metadata and data in one file; replaced atomically
    wal/        the log: segments of checksummed records (:mod:`raft.wal`)
    votes       the vote log: one JSON line per vote granted (audit, never read back;
                created with the first hard state, so an empty one says "no vote")

Two audit trails, for checkers that judge a node from the outside (the chaos run's), cost
nothing on the hot path: every vote this node grants (``save_state`` with a new
``(term, voted_for)``) is appended to ``votes`` as ``{"term", "candidate", "time"}`` and
fdatasync'ed within the same ``save_state``, after the hard state (so a vote on the log was
durable before any reply that grants it could leave; elections only, never per command); and
:meth:`FileStorage.note_commit` records a leader's commit decision as a ``COMMIT`` record
that goes into the WAL with the next ``append_log`` (same write, same sync).

Its rules, besides the contract: one sync per ``append_log`` (``fdatasync`` into the
preallocated segment, plus an fsync when the segment is extended; suffix replacement
included: it is an append, see :mod:`raft.wal`); the stored log is kept such that replaying the
segments gives a log whose :func:`entries_after_snapshot` is exactly what ``load_log``
returns, at every step of every method (so a crash anywhere leaves a consistent store):
``save_snapshot`` writes the snapshot first, then, if the log does not continue it,
appends ``TRUNCATE(0)``, and only then deletes segments whose entries are all below the
snapshot index. :func:`read_data_dir` is the same reader, read-only and without the lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import logging
import os
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Protocol

import google_crc32c

from raft.core.types import ConfState, HardState, LogEntry, NodeId, Snapshot, SnapshotMeta
from raft.wal import (
    DEFAULT_SEGMENT_SIZE,
    TEMP_SUFFIX,
    CommitMark,
    LogShape,
    StorageCorrupted,
    StorageError,
    TornTail,
    WalWriter,
    atomic_write,
    datasync,
    encode_commit_fields,
    encode_entries,
    encode_truncate,
    fsync_dir,
    io_errors,
    read_wal,
)

__all__ = [
    "CommitMark",
    "FileStorage",
    "MemoryStorage",
    "Storage",
    "StorageCorrupted",
    "StorageError",
    "TornTail",
    "VoteRecord",
    "check_contiguous",
    "entries_after_snapshot",
    "read_data_dir",
    "read_votes",
]

logger = logging.getLogger(__name__)


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
    return entries_after_meta(log, None if snapshot is None else snapshot.meta)


def entries_after_meta(log: Sequence[LogEntry], meta: SnapshotMeta | None) -> list[LogEntry]:
    """:func:`entries_after_snapshot` given only the snapshot's metadata."""
    if meta is None:
        return list(log)
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
        if self._log:
            del self._log[max(0, index - self._log[0].index + 1) :]

    def save_snapshot(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot
        self._log = entries_after_snapshot(self._log, snapshot)

    def load_snapshot(self) -> Snapshot | None:
        return self._snapshot

    def close(self) -> None:
        pass


# ------------------------------------------------------------------------------ small files

LOCK_NAME = "LOCK"
HARDSTATE_NAME = "hardstate"
SNAPSHOT_NAME = "snapshot"
WAL_DIR = "wal"
VOTES_NAME = "votes"
HARDSTATE_MAGIC = b"ORBHST\x00\x01"
SNAPSHOT_MAGIC = b"ORBSNP\x00\x01"
#: a snapshot gives back the space of the last segment once it holds this many bytes
#: (or the segment size, if smaller) of mostly covered entries
RECLAIM_BYTES = 4 << 20
_BLOCK = struct.Struct("<II")  # payload length, CRC32C of the payload
_DATA = struct.Struct("<QI")  # snapshot data length, CRC32C of the data


def _block(payload: bytes) -> bytes:
    return _BLOCK.pack(len(payload), google_crc32c.value(payload)) + payload


def _read_block(path: Path, buf: bytes, pos: int) -> tuple[bytes, int]:
    """The checksummed payload at ``pos`` and where it ends."""
    if len(buf) < pos + _BLOCK.size:
        raise StorageCorrupted("file too short", path=path, offset=pos)
    length, crc = _BLOCK.unpack_from(buf, pos)
    start = pos + _BLOCK.size
    payload = buf[start : start + length]
    if len(payload) != length:
        raise StorageCorrupted(f"truncated: {length} bytes expected", path=path, offset=pos)
    if google_crc32c.value(payload) != crc:
        raise StorageCorrupted("checksum mismatch", path=path, offset=pos)
    return payload, start + length


def _check_magic(path: Path, buf: bytes, magic: bytes) -> None:
    if buf[: len(magic)] != magic:
        raise StorageCorrupted(f"bad magic (expected {magic!r})", path=path, offset=0)


def _json(path: Path, payload: bytes, offset: int) -> dict[str, object]:
    try:
        obj = json.loads(payload)
    except ValueError as exc:
        raise StorageCorrupted(f"bad JSON: {exc}", path=path, offset=offset) from exc
    if not isinstance(obj, dict):
        raise StorageCorrupted("bad JSON: not an object", path=path, offset=offset)
    return obj


def encode_hard_state(state: HardState) -> bytes:
    payload = json.dumps({"term": state.term, "voted_for": state.voted_for}, sort_keys=True)
    return HARDSTATE_MAGIC + _block(payload.encode())


def read_hard_state(path: Path) -> HardState:
    """The hard state stored at ``path``; ``HardState()`` if there is none."""
    if not path.exists():
        return HardState()
    with io_errors("read", path):
        buf = path.read_bytes()
    _check_magic(path, buf, HARDSTATE_MAGIC)
    payload, _ = _read_block(path, buf, len(HARDSTATE_MAGIC))
    obj = _json(path, payload, len(HARDSTATE_MAGIC))
    term, voted_for = obj.get("term"), obj.get("voted_for")
    if not isinstance(term, int) or not (voted_for is None or isinstance(voted_for, str)):
        raise StorageCorrupted("bad hard state fields", path=path, offset=len(HARDSTATE_MAGIC))
    return HardState(term, None if voted_for is None else NodeId(voted_for))


def encode_snapshot(snapshot: Snapshot) -> bytes:
    meta = snapshot.meta
    conf = json.loads(meta.conf.encode())
    payload = json.dumps({"index": meta.index, "term": meta.term, "conf": conf}, sort_keys=True)
    data = snapshot.data
    header = _DATA.pack(len(data), google_crc32c.value(data))
    return b"".join((SNAPSHOT_MAGIC, _block(payload.encode()), header, data))


def _decode_meta(path: Path, payload: bytes, offset: int) -> SnapshotMeta:
    obj = _json(path, payload, offset)
    index, term, conf = obj.get("index"), obj.get("term"), obj.get("conf")
    if not isinstance(index, int) or not isinstance(term, int) or not isinstance(conf, dict):
        raise StorageCorrupted("bad snapshot metadata fields", path=path, offset=offset)
    try:
        conf_state = ConfState.decode(json.dumps(conf).encode())
    except (KeyError, TypeError, ValueError) as exc:
        raise StorageCorrupted(f"bad configuration: {exc}", path=path, offset=offset) from exc
    return SnapshotMeta(index, term, conf_state)


def read_snapshot(path: Path, *, with_data: bool = True) -> tuple[SnapshotMeta, bytes] | None:
    """The snapshot stored at ``path`` (data is ``b""`` unless ``with_data``), or ``None``."""
    if not path.exists():
        return None
    with io_errors("read", path), path.open("rb") as f:
        buf = f.read(len(SNAPSHOT_MAGIC) + _BLOCK.size)
        if len(buf) == len(SNAPSHOT_MAGIC) + _BLOCK.size:
            buf += f.read(_BLOCK.unpack_from(buf, len(SNAPSHOT_MAGIC))[0])
        if with_data:
            buf += f.read()
    _check_magic(path, buf, SNAPSHOT_MAGIC)
    payload, pos = _read_block(path, buf, len(SNAPSHOT_MAGIC))
    meta = _decode_meta(path, payload, len(SNAPSHOT_MAGIC))
    if not with_data:
        return meta, b""
    if len(buf) < pos + _DATA.size:
        raise StorageCorrupted("snapshot data header missing", path=path, offset=pos)
    length, crc = _DATA.unpack_from(buf, pos)
    data = buf[pos + _DATA.size :]
    if len(data) != length or google_crc32c.value(data) != crc:
        raise StorageCorrupted("snapshot data length or checksum mismatch", path=path, offset=pos)
    return meta, data


# ----------------------------------------------------------------------------- the vote log


@dataclass(frozen=True, slots=True)
class VoteRecord:
    """A vote this node granted (to itself, as a candidate, too)."""

    term: int
    candidate: str
    time_ns: int  #: ``CLOCK_MONOTONIC`` when it was made durable


def encode_vote(state: HardState, time_ns: int) -> bytes:
    line = {"term": state.term, "candidate": state.voted_for, "time": time_ns}
    return json.dumps(line, separators=(",", ":")).encode() + b"\n"


def read_votes(directory: str | os.PathLike[str]) -> list[VoteRecord] | None:
    """The vote log of a data directory (``None`` if it has none). A line that is not a vote
    (the last one, cut short by a crash mid-write) is skipped."""
    path = Path(directory) / VOTES_NAME
    if not path.exists():
        return None
    with io_errors("read", path):
        text = path.read_bytes().decode(errors="replace")
    votes = []
    for raw in text.splitlines():
        try:
            obj = json.loads(raw)
            votes.append(VoteRecord(int(obj["term"]), str(obj["candidate"]), int(obj["time"])))
        except (ValueError, KeyError, TypeError):
            continue
    return votes


# ----------------------------------------------------------------------------- the reader


@dataclass(frozen=True, slots=True)
class DurableView:
    """Everything durable in a data directory, as :func:`read_data_dir` found it."""

    directory: Path
    hard_state: HardState
    snapshot_meta: SnapshotMeta | None
    stored_log: list[LogEntry]  #: what the segments hold, replayed
    log: list[LogEntry]  #: what ``load_log`` returns: the stored log after the snapshot rule
    torn: TornTail | None  #: an unfinished final write (a writer would cut it off)
    segments: tuple[Path, ...]
    commits: list[CommitMark] = field(default_factory=list)  #: the WAL's COMMIT records


def read_data_dir(directory: str | os.PathLike[str]) -> DurableView:
    """Read a data directory without locking or changing it (for tools; raises
    :class:`StorageCorrupted` on corruption, :class:`StorageError` if it is missing)."""
    path = Path(directory)
    if not path.is_dir():
        raise StorageError(f"{path}: no such data directory")
    hard_state = read_hard_state(path / HARDSTATE_NAME)
    snap = read_snapshot(path / SNAPSHOT_NAME, with_data=False)
    meta = None if snap is None else snap[0]
    wal = read_wal(path / WAL_DIR)
    segments = tuple(s.path for s in wal.shape.segments)
    log = entries_after_meta(wal.entries, meta)
    return DurableView(path, hard_state, meta, wal.entries, log, wal.torn, segments, wal.commits)


def _lock_directory(directory: Path) -> int:
    """Take the directory's write lock (``flock`` on ``LOCK``); return its descriptor."""
    path = directory / LOCK_NAME
    with io_errors("open", path):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise StorageError(
            f"data directory {directory} is already open: {path} is locked by pid {holder}"
        ) from exc
    with io_errors("write", path):
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _make_dirs(path: Path) -> None:
    """Create ``path`` and its missing parents, durably: each new directory's name is synced
    in its parent (without that, a crash may lose the whole log directory, fsynced segments
    and all: a name is durable only once its directory is fsynced)."""
    if path.is_dir():
        return
    _make_dirs(path.parent)
    with io_errors("create directory", path):
        path.mkdir(exist_ok=True)
    fsync_dir(path.parent)


def _remove_temp_files(directory: Path) -> None:
    """Delete temp files an interrupted atomic replacement left behind."""
    for tmp in directory.glob(f"*{TEMP_SUFFIX}"):
        with io_errors("delete", tmp):
            tmp.unlink()


# ------------------------------------------------------------------------------ FileStorage


class FileStorage:
    """Durable storage in one directory (see the module docstring and
    ``docs/storage-format.md``). One process at a time: opening takes a lock.

    ``recovered_tail`` is the torn final write that opening cut off, if any.
    """

    def __init__(
        self, directory: str | os.PathLike[str], *, segment_size: int = DEFAULT_SEGMENT_SIZE
    ) -> None:
        self.directory = Path(directory)
        self._waldir = self.directory / WAL_DIR
        _make_dirs(self._waldir)
        self._lock_fd = _lock_directory(self.directory)
        self._closed = False
        self._votes_fd = -1
        #: commit decisions waiting for the next append: (index, term, leader term, time)
        self._marks: list[tuple[int, int, int, int]] = []
        try:
            self._open(segment_size)
        except BaseException:
            if self._votes_fd >= 0:
                os.close(self._votes_fd)
            os.close(self._lock_fd)
            raise

    def _open(self, segment_size: int) -> None:
        _remove_temp_files(self.directory)
        self._state = read_hard_state(self.directory / HARDSTATE_NAME)
        snap = read_snapshot(self.directory / SNAPSHOT_NAME, with_data=False)
        self._meta = None if snap is None else snap[0]
        wal = read_wal(self._waldir, keep_entries=False)
        self.recovered_tail: TornTail | None = wal.torn
        if wal.torn is not None:
            logger.warning("cutting off a torn log tail: %s", wal.torn)
        self._shape: LogShape = wal.shape
        self._wal = WalWriter(
            self._waldir, wal.shape, wal.end, segment_size, torn=wal.torn is not None
        )
        self._repair_vote_log()

    def _repair_vote_log(self) -> None:
        """A crash between the hard state and the vote log leaves the hard state's vote off
        the log (its reply never left): append it, so the log holds every vote the node
        may still act on."""
        hs = self._state
        if hs.voted_for is None:
            return
        votes = read_votes(self.directory) or []
        if not votes or (votes[-1].term, votes[-1].candidate) != (hs.term, hs.voted_for):
            self._open_vote_log(sync_dir=True)
            self._append_vote(hs)

    def _open_vote_log(self, *, sync_dir: bool) -> int:
        """The vote log's descriptor, the file created if missing (with ``sync_dir``, its
        creation made durable here; else the caller's next directory sync does it)."""
        if self._votes_fd < 0:
            path = self.directory / VOTES_NAME
            with io_errors("open", path):
                created = not path.exists()
                self._votes_fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            if created and sync_dir:
                fsync_dir(self.directory)
        return self._votes_fd

    def __enter__(self) -> FileStorage:
        return self

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError(f"storage {self.directory} is closed")

    def save_state(self, state: HardState) -> None:
        self._check_open()
        if self._votes_fd < 0:  # created with the first hard state: an empty log says "no
            self._open_vote_log(sync_dir=False)  # vote"; the atomic write syncs the directory
        atomic_write(self.directory / HARDSTATE_NAME, encode_hard_state(state))
        old, self._state = self._state, state
        if state.voted_for is not None and (state.term, state.voted_for) != (
            old.term,
            old.voted_for,
        ):
            self._append_vote(state)

    def _append_vote(self, state: HardState) -> None:
        """Append the vote to the vote log and sync it (after the hard state: a vote on the
        log is always durable in ``hardstate`` too)."""
        fd = self._open_vote_log(sync_dir=True)
        with io_errors("append to", self.directory / VOTES_NAME):
            os.write(fd, encode_vote(state, time.monotonic_ns()))
            datasync(fd)

    def note_commit(self, index: int, term: int, leader_term: int) -> None:
        """Audit a leader's commit decision (index, the term of its entry, the leader's term):
        a ``COMMIT`` record written with the next :meth:`append_log`, in the same sync (none
        of its own), or at :meth:`close`. Of consecutive decisions that commit an entry of
        the leader's own term only the latest is kept (it implies the others, by Log
        Matching); one that commits an earlier term's entry is always kept."""
        mark = (index, term, leader_term, time.monotonic_ns())
        marks = self._marks
        if marks and term == leader_term and marks[-1][1] == marks[-1][2]:
            marks[-1] = mark
        else:
            marks.append(mark)

    def load_state(self) -> HardState:
        return self._state

    def append_log(self, entries: Sequence[LogEntry]) -> None:
        if not entries:
            return
        records, terms = encode_entries(entries)  # checks that they are contiguous
        self._check_open()
        first, shape = entries[0].index, self._shape
        floor = self._floor()
        if shape.terms and shape.last > floor and first > shape.last + 1:
            raise ValueError(f"append at {first} leaves a gap after {shape.last}")
        # Entries up to ``floor`` are kept only for the snapshot rule: writing over them, or
        # after a gap, starts the stored log afresh, as MemoryStorage's trimmed log would.
        reset = bool(shape.terms) and (first <= floor or first > shape.last + 1)
        if reset:
            records = encode_truncate(0) + records
        if self._marks:
            records = self._take_marks() + records
        seg = self._wal.append(records)
        if reset:
            shape.cut_after(0)
        shape.add(seg, first, terms)

    def _take_marks(self) -> bytes:
        marks, self._marks = self._marks, []
        return b"".join(encode_commit_fields(*m) for m in marks)

    def _continues_snapshot(self) -> bool:
        """Whether the stored log holds the snapshot's last entry or starts right after it."""
        meta, shape = self._meta, self._shape
        if meta is None or not shape.terms:
            return True
        return shape.term_at(meta.index) == meta.term or shape.first == meta.index + 1

    def _floor(self) -> int:
        """Stored entries up to this index are covered by the snapshot (the log continues it)."""
        meta = self._meta
        return meta.index if meta is not None and self._continues_snapshot() else 0

    def load_log(self) -> list[LogEntry]:
        self._check_open()
        return entries_after_meta(read_wal(self._waldir).entries, self._meta)

    def truncate_log_after(self, index: int) -> None:
        self._check_open()
        if not self._shape.terms or index >= self._shape.last:
            return
        if index < self._floor():  # nothing after the snapshot is left: start afresh
            index = 0
        self._wal.append(encode_truncate(index))
        self._shape.cut_after(index)

    def save_snapshot(self, snapshot: Snapshot) -> None:
        self._check_open()
        atomic_write(self.directory / SNAPSHOT_NAME, encode_snapshot(snapshot))
        meta = self._meta = snapshot.meta
        shape = self._shape
        if not self._continues_snapshot():
            self._wal.append(encode_truncate(0))
            shape.cut_after(0)
        dead = itertools.takewhile(lambda s: s.empty or s.hi < meta.index, shape.segments[:-1])
        self._wal.remove_prefix(sum(1 for _ in dead))
        self._reclaim_last_segment(meta)

    def _reclaim_last_segment(self, meta: SnapshotMeta) -> None:
        """If the only segment left is mostly entries the snapshot covers and big enough to
        matter, move its entries after the snapshot to a new segment and delete it. A crash
        in between leaves both: replaying the new one's records over the old gives the same
        log. Without this, a log that stays below the segment size never gives space back."""
        shape, writer = self._shape, self._wal
        if len(shape.segments) != 1 or writer.written < min(RECLAIM_BYTES, writer.segment_size):
            return
        if shape.terms and shape.last - meta.index > (shape.last - shape.first + 1) // 2:
            return  # most of it is still live: rewriting it would cost more than it frees
        live = read_wal(self._waldir, after=meta.index).entries
        data, terms = encode_entries(live)
        seg = writer.roll(data)
        shape.cut_after(meta.index)
        if live:
            shape.add(seg, live[0].index, terms)
        writer.remove_prefix(1)

    def load_snapshot(self) -> Snapshot | None:
        self._check_open()
        snap = read_snapshot(self.directory / SNAPSHOT_NAME)
        return None if snap is None else Snapshot(*snap)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self._marks:
                with contextlib.suppress(StorageError):  # an audit record is not worth a failure
                    self._wal.append(self._take_marks())
            self._wal.close()
        finally:
            if self._votes_fd >= 0:
                os.close(self._votes_fd)
            os.close(self._lock_fd)
