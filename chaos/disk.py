"""Disk faults, applied to a STOPPED node's data directory between two incarnations.

- `truncate_tail`: cut the last N written bytes of the newest WAL segment (the zero-filled
  space the store preallocates after its records does not count). If those bytes held a
  record the node had not yet acknowledged, this is a torn write, which the node must repair
  on open (cut the torn record off). If they held fsynced, acknowledged records, it is lost
  durable data: Raft assumes durable storage, so this breaks the fault model on purpose, and
  the checker is entitled to find an anomaly if that node's lost entries were needed.
- `flip_byte`: XOR one byte at an offset of a file (a negative offset counts back from the
  end of its written bytes, as above). Inside a record before the tail this is corruption
  the node must detect and refuse to start on (naming the file and offset).

Faults on a running node's writes (lost unsynced writes, torn writes, EIO, ENOSPC, slow
fsync) are the FUSE file system's (:mod:`chaos.diskfs`). :func:`pick_corruption` chooses, from
the durable bytes of a data directory, where a ``corrupt`` fault flips a bit: inside a middle
record of the log, inside its last record (not its length field: see
:func:`raft.wal.looks_torn`), in the hard state, or in the snapshot.

The helpers refuse to touch a data directory whose `LOCK` file is locked (the node has the
store open, or is only SIGSTOPped); they fsync what they change.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from raft.wal import HEADER, list_segments, scan_segment

# raft/wal.py names segments f"{seq:016x}.wal" under <data dir>/wal/, so the newest
# segment is the greatest name.
SEGMENT_GLOB: Final = "wal/*.wal"
LOCK_FILE: Final = "LOCK"


class DiskFaultError(RuntimeError):
    """The fault cannot be applied (node running, no segment, offset out of range)."""


@dataclass(frozen=True, slots=True)
class DiskFault:
    """What was done to which file, for a faults.jsonl `detail`."""

    kind: str
    path: Path
    detail: dict[str, int]

    def as_detail(self) -> dict[str, Any]:
        """JSON-ready description of the fault."""
        return {"kind": self.kind, "path": str(self.path), **self.detail}


@contextlib.contextmanager
def stopped(data_dir: Path) -> Iterator[None]:
    """Hold the data dir's LOCK (if it has one) while changing it; fail if a node holds it."""
    lock = data_dir / LOCK_FILE
    if not lock.exists():
        yield
        return
    fd = os.open(lock, os.O_RDWR)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise DiskFaultError(f"{data_dir} is locked by a running node") from exc
            raise
        yield
    finally:
        os.close(fd)


def newest_segment(data_dir: Path, pattern: str = SEGMENT_GLOB) -> Path:
    """The newest log segment: the greatest file name matching `pattern`."""
    segments = sorted(data_dir.glob(pattern), key=lambda p: p.name)
    if not segments:
        raise DiskFaultError(f"no file matches {pattern} in {data_dir}")
    return segments[-1]


def written_size(path: Path) -> int:
    """The bytes of `path` up to its last non-zero byte: a WAL segment's zero tail is space
    the store preallocated, not written data (a record ending in zeros ends a little later)."""
    return len(path.read_bytes().rstrip(b"\0"))


def truncate_tail(data_dir: Path, nbytes: int, pattern: str = SEGMENT_GLOB) -> DiskFault:
    """Cut the last `nbytes` (at most all) of the newest segment's written bytes, and the
    zero tail after them."""
    if nbytes < 0:
        raise ValueError(f"nbytes must be >= 0, got {nbytes}")
    with stopped(data_dir):
        path = newest_segment(data_dir, pattern)
        size = written_size(path)
        new_size = max(0, size - nbytes)
        with path.open("r+b") as f:
            f.truncate(new_size)
            os.fsync(f.fileno())
    return DiskFault("truncate", path, {"old_size": size, "new_size": new_size})


def flip_byte(
    data_dir: Path,
    offset: int,
    *,
    path: Path | None = None,
    mask: int = 0xFF,
    pattern: str = SEGMENT_GLOB,
) -> DiskFault:
    """XOR the byte at `offset` (negative: from the end) with `mask`.

    The file is `path`, or by default the newest segment.
    """
    if not 1 <= mask <= 0xFF:
        raise ValueError(f"mask must be in 1..255, got {mask}")
    with stopped(data_dir):
        path = path or newest_segment(data_dir, pattern)
        size = path.stat().st_size
        at = offset + written_size(path) if offset < 0 else offset
        if not 0 <= at < size:
            raise DiskFaultError(f"offset {offset} is outside {path} ({size} bytes)")
        with path.open("r+b") as f:
            f.seek(at)
            old = f.read(1)[0]
            f.seek(at)
            f.write(bytes([old ^ mask]))
            os.fsync(f.fileno())
    return DiskFault("flip", path, {"offset": at, "old": old, "new": old ^ mask})


#: where :func:`pick_corruption` can flip a bit
CORRUPTION_TARGETS: Final = ("middle-record", "last-record", "hardstate", "snapshot")


@dataclass(frozen=True, slots=True)
class CorruptionSpot:
    """A byte to damage: ``path`` relative to the data dir, ``offset`` in it, and the offset
    of the record that holds it (WAL targets) or -1."""

    target: str
    path: str
    offset: int
    record: int = -1


def pick_corruption(data_dir: Path, target: str, rng: random.Random) -> CorruptionSpot:
    """A byte of durable data for ``target`` (one of :data:`CORRUPTION_TARGETS`), drawn with
    ``rng``; :class:`DiskFaultError` if the data dir has no such thing yet."""
    if target in ("hardstate", "snapshot"):
        path = data_dir / target
        size = path.stat().st_size if path.exists() else 0
        if size == 0:
            raise DiskFaultError(f"{data_dir} has no {target} to corrupt")
        return CorruptionSpot(target, target, rng.randrange(size))
    if target not in CORRUPTION_TARGETS:
        raise DiskFaultError(f"unknown corruption target {target!r}: {CORRUPTION_TARGETS}")
    spots: list[tuple[Path, int, int]] = []  # segment, record offset, record end
    segments = list_segments(data_dir / "wal")
    for i, seg in enumerate(segments):
        records, _ = scan_segment(seg.path, seg.path.read_bytes(), last=i == len(segments) - 1)
        spots += [(seg.path, r.offset, r.end) for r in records]
    if target == "last-record":
        spots = spots[-1:]
    else:
        spots = spots[:-1]
    if not spots:
        raise DiskFaultError(f"{data_dir} has no {target} to corrupt")
    path, start, end = rng.choice(spots)
    # past the length field: a flipped length pointing into the zero tail reads as torn
    offset = rng.randrange(start + 4 if target == "last-record" else start, end)
    assert start + HEADER.size <= end
    return CorruptionSpot(target, str(path.relative_to(data_dir)), offset, start)
