"""The write-ahead log under :class:`raft.storage.FileStorage`: segments of checksummed records.

Theory of operation (the byte layout is in ``docs/storage-format.md``):

1. **Append-only, into preallocated space.** A log directory holds segment files
   ``<seq:016x>.wal``; records are only ever written after the last one of the last
   segment. That segment is extended ahead of the writes by zero-filled, fsynced chunks
   (:data:`PREALLOC_MIN` doubling up to :data:`PREALLOC_MAX`), so an append changes no file
   size and ``fdatasync`` commits only its data, not a journaled size change. The only
   changes to written bytes are cutting a torn tail when a store is opened for writing, and
   deleting whole segments (compaction). So the only bytes a crash can damage are those
   written after the last sync, at the end of the last segment's records.
2. **A segment is sealed before the next is created.** A new segment is created (and its
   creation made durable: fsync of the file, then of the directory) only once the previous
   one is cut to the end of its records, fsynced, and will never be written again. A torn
   record can therefore only be at the end of the last segment, and only the last segment
   has a zero tail; anywhere else a bad record (zeros included) is corruption.
3. **Records, replayed in order.** An ``ENTRY`` record at index ``i`` replaces the stored
   suffix from ``i`` (entries ``>= i`` are dropped first); a ``BATCH`` record is the same
   for a run of entries ``i, i+1, ...`` (one append of several entries is one record: one
   CRC32C and one encode for the whole group commit); ``TRUNCATE(i)`` drops entries
   ``> i`` (``TRUNCATE(0)`` empties the log). So replacing a suffix is a plain append, and
   costs one fsync like any other. An entry that would leave a gap is corruption: the
   writer never writes one. A ``COMMIT`` record changes no entry: it is the audit of a
   leader's commit decision (:class:`CommitMark`), written with the next append (same write,
   same sync), and collected by :func:`read_wal` for the chaos run's checks.
4. **Recovery.** A record is valid when its header is complete, its length plausible, its
   body complete and its CRC32C (over the length field and the body) matches. In the last
   segment, zeros from a record boundary to the end of the file are unused preallocated
   space: the clean end of the log (a length of 0 is never a record). The first invalid
   record of the last segment is a torn tail if no valid record starts at any later byte of
   that segment *and* it shows an unwritten sector (:func:`looks_torn`: records go into
   zeros, disks write whole sectors): it is reported (and cut off by a writer). Otherwise
   (a complete record with a flipped bit, a bad record followed by a valid one, anything in
   another segment) it raises :class:`StorageCorrupted` naming the file and byte offset. A
   complete, valid record is never dropped.
5. **Compaction deletes a prefix of segments**, oldest first, never the last one. Each
   segment's *live range* (the entries it holds that replay keeps) is tracked; the live
   ranges are disjoint, ordered, and together form the log, so replaying any suffix of the
   segments yields a suffix of the log. Deleting a prefix is therefore safe at every step.
6. **Errors.** Every ``OSError`` is reported as :class:`StorageError` naming the operation,
   the file and the errno. After a failed write or fsync the writer refuses further appends
   (what reached the disk is unknown): the store must be reopened.
"""

from __future__ import annotations

import array
import errno
import itertools
import os
import struct
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import google_crc32c

from raft.core.types import EntryKind, LogEntry

#: format version 2: every record ends with :data:`TRAILER` (see :func:`looks_torn`)
SEGMENT_MAGIC = b"ORBWAL\x00\x02"
#: format version 1 (records without the trailer): still read; its last segment is sealed,
#: and new records go to a version 2 segment, when a writer opens it
SEGMENT_MAGIC_V1 = b"ORBWAL\x00\x01"
#: the last byte of every version 2 record (inside its length and CRC): a complete record
#: never ends in a zero byte, so zeros at the end of a record are space never written
TRAILER = b"\xa5"
SEGMENT_SUFFIX = ".wal"
DEFAULT_SEGMENT_SIZE = 64 * 1024 * 1024
#: the last segment is extended by zero-filled chunks to the next multiple of a step: the
#: first to PREALLOC_MIN, then doubling, then by PREALLOC_MAX (about 7 ms of zeros + fsync on
#: a disk that writes 600 MB/s, once per 4 MiB of records); never past the segment size
#: unless one append needs it
PREALLOC_MIN = 64 * 1024
PREALLOC_MAX = 4 * 1024 * 1024
_ZEROS = bytes(1 << 20)
#: the sync of an append: ``fdatasync`` where there is one (no size change to commit)
datasync = getattr(os, "fdatasync", os.fsync)
#: record header: body length, CRC32C of (length field + body)
HEADER = struct.Struct("<II")
#: record body prefix: record type, index, term, entry kind; the command follows
BODY = struct.Struct("<BQQB")
MAX_BODY = 1 << 30
RT_ENTRY = 1
RT_TRUNCATE = 2
RT_BATCH = 3
RT_COMMIT = 4
#: a COMMIT record's payload: the leader's term, the monotonic time of the decision (ns)
_COMMIT = struct.Struct("<QQ")
#: array type codes of the BATCH layout's little-endian u32 and u64 fields
_U32 = "I" if array.array("I").itemsize == 4 else "L"
_U64 = "Q"
#: a BATCH record holds at most about this many bytes of commands (a bigger append is split)
BATCH_LIMIT = 16 << 20
_KINDS = frozenset(int(k) for k in EntryKind)
#: EntryKind by value (a lookup instead of an enum call per decoded entry)
_KIND_OF = {int(k): k for k in EntryKind}
_RTYPES = frozenset((RT_ENTRY, RT_TRUNCATE, RT_BATCH, RT_COMMIT))
_crc_value = google_crc32c.value
_crc_extend = google_crc32c.extend


class StorageError(Exception):
    """Storage could not do what was asked (disk full, permissions, a locked directory, ...)."""


class StorageCorrupted(StorageError):
    """Durable data failed its integrity check; the node must not start on it."""

    def __init__(
        self, message: str, *, path: Path | str | None = None, offset: int | None = None
    ) -> None:
        self.path = None if path is None else Path(path)
        self.offset = offset
        if path is not None:
            message = f"{path} at byte offset {offset}: {message}"
        super().__init__(message)


def os_error(op: str, path: Path | str, exc: OSError) -> StorageError:
    """A :class:`StorageError` saying which operation on which file failed, and why."""
    code = errno.errorcode.get(exc.errno or 0, "?")
    return StorageError(f"{op} {path} failed: {exc.strerror or exc} [{code}]")


@contextmanager
def io_errors(op: str, path: Path | str) -> Iterator[None]:
    """Turn an ``OSError`` raised inside into a :class:`StorageError` (see :func:`os_error`)."""
    try:
        yield
    except OSError as exc:
        raise os_error(op, path, exc) from exc


# ---------------------------------------------------------------------------------- records


def _record(rtype: int, index: int, term: int, kind: int, command: bytes) -> bytes:
    body = BODY.pack(rtype, index, term, kind) + command + TRAILER
    length = len(body)
    if length > MAX_BODY:
        raise ValueError(f"log entry {index} too large: {len(command)} bytes")
    crc = _crc_extend(_crc_value(length.to_bytes(4, "little")), body)
    return HEADER.pack(length, crc) + body


def encode_entry(entry: LogEntry) -> bytes:
    """The record of one log entry."""
    return _record(RT_ENTRY, entry.index, entry.term, entry.kind, entry.command)


def encode_entries(entries: Sequence[LogEntry]) -> tuple[bytes, array.array[int]]:
    """The record(s) of a contiguous run of entries, and the entries' terms.

    One entry is one ``ENTRY`` record; several are one ``BATCH`` record (several if their
    commands exceed :data:`BATCH_LIMIT`). This is the hot path of ``append_log``: per entry
    only list comprehensions reading its fields; the terms and lengths go into the record as
    arrays, and one CRC32C covers the batch. The terms come back as an array, which the
    log's shape extends by a copy. Raises ``ValueError`` if the indexes are not consecutive
    or an entry is too large.
    """
    if not entries:
        return b"", array.array(_U64)
    indexes = [e.index for e in entries]
    n, first = len(indexes), indexes[0]
    if indexes != list(range(first, first + n)):
        prev, cur = next((a, b) for a, b in itertools.pairwise(indexes) if b != a + 1)
        raise ValueError(f"entries not contiguous: {prev} then {cur}")
    terms = array.array(_U64, [e.term for e in entries])
    if n == 1:
        return encode_entry(entries[0]), terms
    commands = [e.command for e in entries]
    try:
        lengths = array.array(_U32, map(len, commands))
    except OverflowError:  # a command of 4 GiB or more
        lengths = array.array(_U64, map(len, commands))
    total = sum(lengths)
    if total <= BATCH_LIMIT:  # so no entry is too large either
        kinds = bytes([e.kind for e in entries])
        return _batch(first, terms, kinds, lengths, total, commands), terms
    if max(lengths) > MAX_BODY - BODY.size:
        big = next(e for e, k in zip(entries, lengths, strict=True) if k > MAX_BODY - BODY.size)
        raise ValueError(f"log entry {big.index} too large: {len(big.command)} bytes")
    out, start, size = [], 0, 0
    for k, length in enumerate(lengths):  # cut before the entry that would pass the limit
        if size and size + length > BATCH_LIMIT:
            out.append(encode_entries(entries[start:k])[0])
            start, size = k, 0
        size += length
    out.append(encode_entries(entries[start:])[0])
    return b"".join(out), terms


def _batch(
    first: int,
    terms: array.array[int],
    kinds: bytes,
    lengths: array.array[int],
    total: int,
    commands: list[bytes],
) -> bytes:
    n = len(terms)
    le_terms, le_lengths = terms, lengths
    if sys.byteorder == "big":  # the record is little-endian; arrays are in native order
        le_terms, le_lengths = array.array(_U64, terms), array.array(_U32, lengths)
        le_terms.byteswap()
        le_lengths.byteswap()
    length = BODY.size + 4 + 13 * n + total + 1
    head = BODY.pack(RT_BATCH, first, terms[-1], 0) + n.to_bytes(4, "little")
    body = b"".join([head, le_terms, kinds, le_lengths, *commands, TRAILER])
    crc = _crc_extend(_crc_value(length.to_bytes(4, "little")), body)
    return HEADER.pack(length, crc) + body


def _batch_fields(rec: Record) -> tuple[int, tuple[Any, ...], tuple[Any, ...], tuple[Any, ...]]:
    """A ``BATCH`` record's layout, validated: where its commands start, and its entries'
    terms, kinds and command lengths."""
    payload = rec.command
    if len(payload) < 4:
        raise ValueError("batch record without an entry count")
    n = int.from_bytes(payload[:4], "little")
    meta = 4 + 13 * n
    if n < 2 or len(payload) < meta:
        raise ValueError(f"batch record of {n} entries in {len(payload)} bytes")
    fields = struct.unpack_from(f"<{n}Q{n}B{n}I", payload, 4)
    terms, kinds, lengths = fields[:n], fields[n : 2 * n], fields[2 * n :]
    if meta + sum(lengths) != len(payload):
        raise ValueError("batch record: command lengths do not add up to its size")
    if terms[-1] != rec.term or not _KINDS.issuperset(kinds):
        raise ValueError("batch record: bad last term or entry kind")
    return meta, terms, kinds, lengths


def decode_batch(rec: Record) -> list[LogEntry]:
    """The entries of a valid ``BATCH`` record; ``ValueError`` if its layout is inconsistent
    (a checksum that matched bytes the writer never wrote as a batch: a bug, or corruption)."""
    meta, terms, kinds, lengths = _batch_fields(rec)
    payload, kind_of = rec.command, _KIND_OF
    ends = list(itertools.accumulate(lengths, initial=meta))
    return [
        LogEntry(rec.index + k, terms[k], payload[ends[k] : ends[k + 1]], kind_of[kinds[k]])
        for k in range(len(terms))
    ]


def batch_count(rec: Record) -> int:
    """How many entries a ``BATCH`` record holds, as its header says (validated later)."""
    return int.from_bytes(rec.command[:4], "little") if len(rec.command) >= 4 else 0


#: a stand-in, in :func:`read_wal`'s entries, for an entry at or below its ``after`` (never
#: returned)
_SKIPPED = LogEntry(0, 0, b"")


def encode_truncate(index: int) -> bytes:
    """The record that drops every entry after ``index``."""
    return _record(RT_TRUNCATE, index, 0, 0, b"")


@dataclass(frozen=True, slots=True)
class CommitMark:
    """A leader's commit decision: it advanced its commit index to ``index``, whose entry has
    term ``term``, while leading in ``leader_term``, at ``time_ns`` (``CLOCK_MONOTONIC``)."""

    index: int
    term: int
    leader_term: int
    time_ns: int


def encode_commit(mark: CommitMark) -> bytes:
    """The ``COMMIT`` record of ``mark`` (it changes no entry when replayed)."""
    return encode_commit_fields(mark.index, mark.term, mark.leader_term, mark.time_ns)


def encode_commit_fields(index: int, term: int, leader_term: int, time_ns: int) -> bytes:
    """:func:`encode_commit` without building the mark (the writer's path: about 1 us)."""
    return _record(RT_COMMIT, index, term, 0, _COMMIT.pack(leader_term, time_ns))


@dataclass(frozen=True, slots=True)
class Record:
    """One decoded record and where it sits in its segment."""

    rtype: int
    index: int
    term: int
    kind: int
    command: bytes  # a BATCH record's payload (see :func:`decode_batch`)
    offset: int
    end: int
    #: a BATCH record's entries (filled in by :func:`scan_segment`)
    batch: list[LogEntry] = field(default_factory=list)
    #: a BATCH record left undecoded (all its entries at or below ``scan_segment``'s
    #: ``after``): its entries' terms
    terms: tuple[int, ...] = ()


def record_problem(buf: bytes, pos: int) -> str | None:
    """Why the bytes at ``pos`` are not a valid record, or ``None`` if they are."""
    left = len(buf) - pos
    if left < HEADER.size:
        return f"incomplete record header ({left} bytes)"
    length, crc = HEADER.unpack_from(buf, pos)
    if length < BODY.size or length > MAX_BODY:
        return f"implausible record length {length}"
    if length > left - HEADER.size:
        return f"incomplete record ({length} byte body, {left - HEADER.size} bytes left)"
    body = buf[pos + HEADER.size : pos + HEADER.size + length]
    if _crc_extend(_crc_value(buf[pos : pos + 4]), body) != crc:
        return "checksum mismatch"
    return None


def decode_record(buf: bytes, pos: int, *, trailer: bool = True) -> Record:
    """Decode the record at ``pos``, which :func:`record_problem` found valid (``trailer``:
    a version 2 record, ending in :data:`TRAILER`; ``ValueError`` if it does not)."""
    length = HEADER.unpack_from(buf, pos)[0]
    rtype, index, term, kind = BODY.unpack_from(buf, pos + HEADER.size)
    end = pos + HEADER.size + length
    if trailer:
        if length <= BODY.size or buf[end - 1 : end] != TRAILER:
            raise ValueError("record without its trailer byte")
        end_of_command = end - 1
    else:
        end_of_command = end
    command = buf[pos + HEADER.size + BODY.size : end_of_command]
    return Record(rtype, index, term, kind, command, pos, end)


def is_zero_tail(buf: bytes, pos: int) -> bool:
    """Whether every byte of ``buf`` from ``pos`` on is zero (unused preallocated space)."""
    return buf.count(0, pos) == len(buf) - pos


def data_end(buf: bytes) -> int:
    """Where the bytes of a segment that are not its zero tail end (an upper bound of where
    its records end: a record may itself end in zeros)."""
    return len(buf.rstrip(b"\0"))


def valid_record_after(buf: bytes, pos: int) -> bool:
    """Whether a valid record starts at any byte offset after ``pos``."""
    if is_zero_tail(buf, pos):  # zeros (a length of 0) are never a record
        return False
    if len(buf) - pos >= HEADER.size:  # fast path: where the bad record says it ends
        nxt = pos + HEADER.size + HEADER.unpack_from(buf, pos)[0]
        if nxt + HEADER.size <= len(buf) and record_problem(buf, nxt) is None:
            return True
    limit = len(buf) - HEADER.size - BODY.size
    for shift in range(1, 5):  # every offset, read as 4-byte lengths at 4 alignments
        start = pos + shift
        count = max(0, (limit - start) // 4 + 1)
        lengths = array.array("I", buf[start : start + 4 * count])
        if sys.byteorder == "big":
            lengths.byteswap()
        for k, length in enumerate(lengths):
            here = start + 4 * k
            if (
                BODY.size <= length <= limit - here + BODY.size
                and record_problem(buf, here) is None
            ):
                return True
    return False


#: disks write whole sectors: a torn write leaves whole sectors unwritten (still zeros)
SECTOR = 512
#: in a version 1 segment, a zero piece of a sector at the end of a record counts as
#: unwritten only from this size on: a complete record may end in zeros of its own there (a
#: TRUNCATE's zero term and kind and the high bytes of its index; the zero lengths of a
#: batch's empty commands). Version 2 records end in TRAILER.
MIN_UNWRITTEN_TAIL = 64


def looks_torn(buf: bytes, pos: int, *, trailer: bool = True) -> bool:
    """Whether the invalid record at ``pos`` (the last bytes of the last segment that are not
    zeros) is explained by a write that did not finish, rather than by damage to a complete
    record.

    Records are written into zero-filled space (the preallocated tail) and a disk writes
    whole sectors, so a torn write leaves at least one sector of the record all zeros. Torn:
    the header is incomplete or all zeros; the record runs past the end of a file that has
    no zero tail (less than a sector of zeros: written without preallocation); or a
    :data:`SECTOR`-aligned block of the file after the header's, clipped to the record's
    claimed extent, is all zeros. A bit flip in a complete record leaves every sector of it
    written: corruption. A version 2 record ends in :data:`TRAILER`, never zero, so a last,
    partial block of zeros is unwritten whatever its size; in a version 1 segment
    (``trailer`` false) it counts only from :data:`MIN_UNWRITTEN_TAIL` bytes, as a record
    may end in zeros of its own there. A flip in the length field that points into the zero
    tail cannot be told from a torn write (nor, in etcd's WAL, which draws the same line),
    nor can a record whose own data holds a whole sector of zeros: both are treated as torn.
    """
    size = len(buf)
    if size - pos < HEADER.size or buf.count(0, pos, pos + HEADER.size) == HEADER.size:
        return True
    length = HEADER.unpack_from(buf, pos)[0]
    claimed = pos + HEADER.size + length
    end = data_end(buf)
    if BODY.size <= length <= MAX_BODY and claimed > size:
        return size - end < SECTOR  # cut by the end of a file without a zero tail
    hi = claimed if BODY.size <= length <= MAX_BODY else end
    # the sector holding the header's last byte was written (the header is not zeros)
    lo = ((pos + HEADER.size - 1) // SECTOR + 1) * SECTOR
    while lo < hi:
        stop = min(hi, lo + SECTOR)
        whole = stop - lo == SECTOR or trailer or stop - lo >= MIN_UNWRITTEN_TAIL
        if whole and buf.count(0, lo, stop) == stop - lo:
            return True
        lo = stop
    return False


# --------------------------------------------------------------------------------- segments


@dataclass(frozen=True, slots=True)
class TornTail:
    """An unfinished write found at the end of the last segment: the bytes from ``offset``."""

    path: Path
    offset: int
    dropped: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path} at byte offset {self.offset}: {self.reason} ({self.dropped} bytes)"


@dataclass(slots=True)
class Segment:
    """A segment file and its live range ``lo..hi`` of log indexes (empty when lo > hi)."""

    seq: int
    path: Path
    lo: int = 1
    hi: int = 0

    @property
    def empty(self) -> bool:
        return self.lo > self.hi


def segment_name(seq: int) -> str:
    return f"{seq:016x}{SEGMENT_SUFFIX}"


def list_segments(waldir: Path) -> list[Segment]:
    """The segment files of ``waldir`` in order (other files are ignored)."""
    with io_errors("list", waldir):
        names = os.listdir(waldir) if waldir.is_dir() else []
    segments = []
    for name in names:
        stem = name.removesuffix(SEGMENT_SUFFIX)
        if name.endswith(SEGMENT_SUFFIX) and len(stem) == 16:
            try:
                segments.append(Segment(int(stem, 16), waldir / name))
            except ValueError:
                continue
    return sorted(segments, key=lambda s: s.seq)


def scan_segment(
    path: Path, buf: bytes, *, last: bool, after: int = 0
) -> tuple[list[Record], TornTail | None]:
    """The valid records of one segment, and its torn tail (only the last may have one). A
    ``BATCH`` record whose entries are all at or below ``after`` is validated but its entries
    are not built (``Record.terms`` instead of ``Record.batch``)."""
    magic = len(SEGMENT_MAGIC)
    if buf[:magic] not in (SEGMENT_MAGIC, SEGMENT_MAGIC_V1):
        if last and len(buf) < magic and SEGMENT_MAGIC.startswith(buf):
            return [], TornTail(path, 0, len(buf), "incomplete segment header")
        raise StorageCorrupted("not a segment file (bad magic)", path=path, offset=0)
    trailer = buf[:magic] == SEGMENT_MAGIC
    records: list[Record] = []
    pos = magic
    while pos < len(buf):
        problem = record_problem(buf, pos)
        if problem is not None:
            if last and is_zero_tail(buf, pos):
                return records, None  # unused preallocated space: the clean end
            if last and not valid_record_after(buf, pos):
                if looks_torn(buf, pos, trailer=trailer):
                    return records, TornTail(path, pos, data_end(buf) - pos, problem)
                problem += " in a complete record (every sector of it was written): corruption"
            raise StorageCorrupted(problem, path=path, offset=pos)
        try:
            record = decode_record(buf, pos, trailer=trailer)
        except ValueError as exc:
            raise StorageCorrupted(str(exc), path=path, offset=pos) from exc
        if record.rtype == RT_COMMIT and len(record.command) != _COMMIT.size:
            raise StorageCorrupted("commit record of a bad size", path=path, offset=pos)
        if record.rtype not in _RTYPES or record.kind not in _KINDS:
            raise StorageCorrupted(
                f"unknown record type {record.rtype} or kind {record.kind}", path=path, offset=pos
            )
        if record.rtype == RT_BATCH:
            try:
                if record.index + batch_count(record) - 1 <= after:
                    terms = tuple(_batch_fields(record)[1])
                    record = replace(record, terms=terms)
                else:
                    record = replace(record, batch=decode_batch(record))
            except (ValueError, struct.error) as exc:
                raise StorageCorrupted(str(exc), path=path, offset=pos) from exc
        records.append(record)
        pos = record.end
    return records, None


# ----------------------------------------------------------------------------------- replay


@dataclass(slots=True)
class LogShape:
    """Index and term of every entry of the log, and each segment's live range."""

    first: int = 0
    terms: array.array[int] = field(default_factory=lambda: array.array("Q"))
    segments: list[Segment] = field(default_factory=list)

    @property
    def last(self) -> int:
        return self.first + len(self.terms) - 1 if self.terms else 0

    def term_at(self, index: int) -> int | None:
        if self.terms and self.first <= index <= self.last:
            return self.terms[index - self.first]
        return None

    def cut_after(self, index: int) -> None:
        """Drop the entries after ``index``."""
        if not self.terms or index >= self.last:
            return
        del self.terms[max(0, index - self.first + 1) :]
        for seg in self.segments:
            seg.hi = min(seg.hi, index)

    def add(self, seg: Segment, index: int, terms: Sequence[int]) -> None:
        """Record entries ``index, index+1, ...`` with ``terms``, written to ``seg``."""
        self.cut_after(index - 1)
        if not self.terms:
            self.first = index
        elif index != self.last + 1:
            raise ValueError(f"entry {index} leaves a gap after {self.last}")
        self.terms.extend(terms)
        if seg.empty:
            seg.lo = index
        seg.hi = index + len(terms) - 1

    def drop_segments(self, count: int) -> None:
        """Forget the first ``count`` segments and the entries only they held."""
        del self.segments[:count]
        live = [s.lo for s in self.segments if not s.empty]
        new_first = min(live) if live else self.last + 1
        if self.terms and new_first > self.first:
            del self.terms[: new_first - self.first]
            self.first = new_first if self.terms else 0


@dataclass(slots=True)
class WalState:
    """What reading a log directory found."""

    shape: LogShape
    entries: list[LogEntry]
    torn: TornTail | None
    end: int  # where the last segment's valid data ends
    #: the COMMIT records still stored, in order (only read with ``keep_entries``)
    commits: list[CommitMark] = field(default_factory=list)


def read_wal(waldir: Path, *, keep_entries: bool = True, after: int = 0) -> WalState:
    """Read and replay every segment of ``waldir`` (no file is changed). With ``after``, the
    entries returned are only those above that index (the others are not even built: what
    a snapshot covers, when the log is rewritten without it)."""
    shape = LogShape(segments=list_segments(waldir))
    entries: list[LogEntry] = []
    commits: list[CommitMark] = []
    torn: TornTail | None = None
    end = 0
    for i, seg in enumerate(shape.segments):
        with io_errors("read", seg.path):
            buf = seg.path.read_bytes()
        last = i == len(shape.segments) - 1
        records, torn = scan_segment(seg.path, buf, last=last, after=after)
        end = torn.offset if torn else records[-1].end if records else len(SEGMENT_MAGIC)
        for rec in records:
            if rec.rtype == RT_COMMIT:
                if keep_entries:
                    commits.append(CommitMark(rec.index, rec.term, *_COMMIT.unpack(rec.command)))
                continue
            _replay(shape, seg, rec, entries if keep_entries else None)
    if after:  # the stand-ins sit at indexes <= after: entries[k] is entry shape.first + k
        entries = entries[max(0, after - shape.first + 1) :] if shape.terms else []
    return WalState(shape, entries, torn, end, commits)


def _replay(shape: LogShape, seg: Segment, rec: Record, entries: list[LogEntry] | None) -> None:
    if rec.rtype == RT_TRUNCATE:
        shape.cut_after(rec.index)
        if entries is not None:
            del entries[len(shape.terms) :]
        return
    if shape.terms and rec.index > shape.last + 1:
        msg = f"entry {rec.index} leaves a gap after {shape.last}"
        raise StorageCorrupted(msg, path=seg.path, offset=rec.offset)
    if rec.rtype == RT_BATCH:
        if rec.batch:
            shape.add(seg, rec.index, [e.term for e in rec.batch])
            n = len(rec.batch)
        else:  # left undecoded: entries read_wal does not return
            shape.add(seg, rec.index, rec.terms)
            n = len(rec.terms)
        if entries is not None:  # the shape kept a prefix of its entries, then added these
            del entries[len(shape.terms) - n :]
            entries.extend(rec.batch or [_SKIPPED] * n)
        return
    shape.add(seg, rec.index, [rec.term])
    if entries is not None:  # the shape kept a prefix of its entries, then added this one
        del entries[len(shape.terms) - 1 :]
        entries.append(LogEntry(rec.index, rec.term, rec.command, EntryKind(rec.kind)))


# ---------------------------------------------------------------------------------- writing

TEMP_SUFFIX = ".tmp"


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte of ``data`` is written."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def fsync_dir(directory: Path) -> None:
    """Make the creation, renaming or removal of files in ``directory`` durable."""
    with io_errors("fsync directory", directory):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` by ``data``: write a temp file, fsync it, rename it, fsync the dir."""
    tmp = path.with_name(path.name + TEMP_SUFFIX)
    op = "create"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            op = "write"
            write_all(fd, data)
            op = "fsync"
            os.fsync(fd)
        finally:
            os.close(fd)
        op = "rename"
        os.replace(tmp, path)
    except OSError as exc:
        with suppress(OSError):
            os.unlink(tmp)
        raise os_error(op, tmp if op != "rename" else path, exc) from exc
    fsync_dir(path.parent)


class WalWriter:
    """Appends records to the last segment of a log directory, one sync per :meth:`append`.

    Keeps the last segment open, and zero-filled (and fsynced) ahead of the records, so that
    an append is a write into allocated space plus ``fdatasync``: no size change to commit.
    Opening cuts the torn tail the reader found (``end`` is where the valid records stop;
    ``torn`` says whether what follows is a torn write rather than unused zeros) and makes
    the cut durable before anything is appended.
    """

    def __init__(
        self, waldir: Path, shape: LogShape, end: int, segment_size: int, *, torn: bool = False
    ) -> None:
        self.waldir = waldir
        self.shape = shape
        self.segment_size = segment_size
        self._failed: StorageError | None = None
        self._fd = -1
        self._end = 0
        self._allocated = 0  # the file's size: zeros from _end to here
        if shape.segments:
            if self._open_last(end, torn):  # version 1: it gets no version 2 records
                self._seal()
                self._create(self.current.seq + 1)
        else:
            self._create(1)

    @property
    def current(self) -> Segment:
        return self.shape.segments[-1]

    def _open_last(self, end: int, torn: bool) -> bool:
        """Open the last segment for appending (cutting a torn tail); whether it is of
        format version 1."""
        path = self.current.path
        op = "open"
        try:
            self._fd = os.open(path, os.O_RDWR)
            size = os.fstat(self._fd).st_size
            old = end > 0 and os.pread(self._fd, len(SEGMENT_MAGIC_V1), 0) == SEGMENT_MAGIC_V1
            if torn or end == 0 or size < end:
                op = "cut torn tail of"
                os.ftruncate(self._fd, end)
                if end == 0:
                    write_all(self._fd, SEGMENT_MAGIC)
                    end = len(SEGMENT_MAGIC)
                os.fsync(self._fd)
                size = end
            os.lseek(self._fd, end, os.SEEK_SET)
        except OSError as exc:
            self.close()
            raise os_error(op, path, exc) from exc
        self._end, self._allocated = end, size
        return old

    def _create(self, seq: int) -> None:
        """Start segment ``seq`` (the previous one is sealed: see :meth:`_seal`)."""
        path = self.waldir / segment_name(seq)
        op = "create"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                op = "write"
                write_all(fd, SEGMENT_MAGIC)
                op = "fsync"
                os.fsync(fd)
            except OSError:
                os.close(fd)
                raise
        except OSError as exc:
            raise os_error(op, path, exc) from exc
        fsync_dir(self.waldir)
        self.close()
        self._fd, self._end = fd, len(SEGMENT_MAGIC)
        self._allocated = self._end
        self.shape.segments.append(Segment(seq, path))

    def _seal(self) -> None:
        """Cut the current segment's zero tail and fsync it: it is never written again, and
        only the last segment may end in zeros."""
        if self._allocated > self._end:
            with io_errors("cut preallocated tail of", self.current.path):
                os.ftruncate(self._fd, self._end)
                os.fsync(self._fd)
            self._allocated = self._end

    def _preallocate(self, need: int) -> None:
        """Zero-fill the current segment up to at least ``need`` bytes, and fsync it. On a
        (nearly) full disk, only ``need``: a node restarted once a little space is free must
        be able to append without the next whole chunk."""
        step = min(max(PREALLOC_MIN, self._allocated), PREALLOC_MAX)
        target = max(need, min((self._allocated // step + 1) * step, self.segment_size))
        try:
            self._zero_fill(target)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or target == need:
                raise os_error("preallocate", self.current.path, exc) from exc
            with io_errors("preallocate", self.current.path):
                os.ftruncate(self._fd, self._allocated)  # give back what the chunk took
                self._zero_fill(need)

    def _zero_fill(self, target: int) -> None:
        at = self._allocated
        while at < target:
            at += os.pwrite(self._fd, memoryview(_ZEROS)[: target - at], at)
        os.fsync(self._fd)
        self._allocated = target

    def append(self, data: bytes) -> Segment:
        """Write ``data`` (whole records) and sync; return the segment written to."""
        if self._failed is not None:
            raise StorageError(f"the log writer failed earlier ({self._failed}); reopen the store")
        try:
            if self._end >= self.segment_size:
                self._seal()
                self._create(self.current.seq + 1)
            if self._end + len(data) > self._allocated:
                self._preallocate(self._end + len(data))
            return self._write(data)
        except StorageError as exc:
            self._failed = exc
            raise

    def _write(self, data: bytes) -> Segment:
        seg = self.current
        op = "write"
        try:
            write_all(self._fd, data)
            op = "fdatasync"
            datasync(self._fd)
        except OSError as exc:
            with suppress(OSError):  # best effort: leave no partial record behind
                os.ftruncate(self._fd, self._end)
                self._allocated = self._end
            raise os_error(op, seg.path, exc) from exc
        self._end += len(data)
        return seg

    @property
    def written(self) -> int:
        """Bytes of records (and magic) in the current segment."""
        return self._end

    def roll(self, data: bytes) -> Segment:
        """Seal the current segment, start the next one with ``data`` (whole records) in it,
        synced; return it. With :meth:`remove_prefix` this gives back the space of a last
        segment whose entries a snapshot covers, which deleting segments alone never could."""
        if self._failed is not None:
            raise StorageError(f"the log writer failed earlier ({self._failed}); reopen the store")
        try:
            self._seal()
            self._create(self.current.seq + 1)
            if data:
                self._preallocate(self._end + len(data))
                self._write(data)
        except StorageError as exc:
            self._failed = exc
            raise
        return self.current

    def remove_prefix(self, count: int) -> None:
        """Delete the first ``count`` segments (never the last), oldest first."""
        count = min(count, len(self.shape.segments) - 1)
        if count <= 0:
            return
        for _ in range(count):
            path = self.shape.segments[0].path
            with io_errors("delete", path):
                path.unlink()
            self.shape.drop_segments(1)
        fsync_dir(self.waldir)

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)
