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

Not possible without privileges: a full disk (ENOSPC needs a small filesystem: a loop mount
or tmpfs with a size, i.e. root), slow or failing fsync (needs a device-mapper target or a
FUSE layer), and faults on a running node's writes. Those are left to the deterministic
simulator's disk.

The helpers refuse to touch a data directory whose `LOCK` file is locked (the node has the
store open, or is only SIGSTOPped); they fsync what they change.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

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
