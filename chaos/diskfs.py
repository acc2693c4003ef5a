"""A fault-injecting FUSE file system: a pass-through that forgets what was never fsynced.

Theory of operation
-------------------
``DiskFS`` mounts a *backing* directory at a *mount point* (a node's data directory). It
keeps its own "page cache", in the spirit of Jepsen's LazyFS, with these rules:

1. **The backing directory holds exactly what is durable.** A ``write`` or ``truncate`` does
   not reach the backing file: it is appended to the file's list of *unsynced operations*
   (per inode). Reads and ``stat`` see the backing bytes with those operations applied in
   order. ``fsync``/``fdatasync`` of a file applies its operations to the backing file and
   fsyncs it; only then are they durable.
2. **Names are durable only once their directory is fsynced.** ``create``, ``mkdir``,
   ``unlink``, ``rmdir``, ``rename`` and ``link`` change the backing tree at once, but the
   first such change in a directory records the directory's *durable listing* (name ->
   inode) and keeps a hard link to each of its files in a graveyard, so that any of them can
   be brought back. ``fsync`` of the directory makes its current listing durable (drops the
   record). So ``write tmp, fsync tmp, rename tmp -> name`` without ``fsync(dir)`` may come
   back as the old ``name``, and a file created but never made durable in its directory
   disappears.
3. **A crash is a command.** The node process is killed by the orchestrator; then
   ``lose-unsynced`` drops every file's unsynced operations and puts every directory back
   to its durable listing. ``torn-write`` does the same, except that the last unsynced write
   (of all files, or of one file) persists *in part*: a prefix of it, cut on a
   ``granularity`` boundary of the file (512 bytes by default: disk sectors are written
   whole; 1 tears anywhere). The unsynced operations of that file before it persist whole.
4. **Faults on a running node.** ``fail`` makes ``write`` and/or ``fsync`` fail with an
   errno (``EIO``, ``ENOSPC``, ...) for a while (or until ``clear``); ``disk-full`` is
   ``fail`` with ``ENOSPC`` on writes, creations and fsyncs, and ``statfs`` shows no free
   space. A failed fsync *drops* that file's unsynced operations, as Linux may (the dirty
   pages are marked clean): a program that retries the fsync and believes it is durable
   is wrong. ``slow-fsync`` delays every fsync by N ms. ``corrupt`` XORs a byte of the
   *durable* data (the backing file) with a mask.
5. **Control.** The file system listens on a Unix socket: one JSON object per line in, one
   JSON object per line out (``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``);
   ``docs/disk-faults.md`` lists the commands. :class:`DiskMount` starts the file system as
   its own process (``python -m chaos.diskfs``), waits until it answers, and unmounts it on
   ``stop()`` whatever happened (``fusermount3 -u``, then a lazy unmount if it is busy, then
   SIGKILL of the process); the process also unmounts itself when its parent dies.
   A clean unmount makes everything durable (the machine did not crash).

The kernel is told to cache nothing (``direct_io``, zero attribute and entry timeouts), so a
restarted node reads what this process says, not the kernel's memory of it. A file that must
be memory-mapped (etcd's bbolt database: a shared mapping of a ``direct_io`` file fails with
ENODEV) is named with ``--mmap PATH``: it is opened through the page cache, which the kernel
drops at every open (no ``keep_cache``), and its writes still come here one by one. Node
processes under another user or group (``chaos.nat``) need ``--allow-other``.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Protocol, Self

import mfusepy

#: disk sectors are written whole: the default granularity of a torn write
SECTOR: Final = 512
CONTROL_TIMEOUT_S: Final = 10.0
MOUNT_TIMEOUT_S: Final = 20.0
FUSERMOUNT: Final = "fusermount3"
_ERRNOS: Final = {"EIO": errno.EIO, "ENOSPC": errno.ENOSPC, "EDQUOT": errno.EDQUOT}
#: the operations a ``fail`` rule can name
FAIL_OPS: Final = frozenset({"write", "fsync", "create"})


class DiskFSError(RuntimeError):
    """The file system could not be mounted, or refused a control command."""


# ==== the page cache ==========================================================================


@dataclass(slots=True)
class _Op:
    """An unsynced ``write`` (``data`` at ``offset``) or ``truncate`` (to ``offset``)."""

    seq: int
    offset: int
    data: bytes | None  # None: a truncate


@dataclass(slots=True)
class _Inode:
    """One backing file: its descriptor and the operations not yet made durable."""

    ino: int
    fd: int
    size: int  #: the size the mount shows
    handles: int = 0
    ops: list[_Op] = field(default_factory=list)

    def durable_size(self) -> int:
        return os.fstat(self.fd).st_size

    def unsynced_bytes(self) -> int:
        return sum(len(op.data) for op in self.ops if op.data is not None)

    def read(self, offset: int, size: int) -> bytes:
        if not self.ops:
            return os.pread(self.fd, size, offset)
        size = max(0, min(size, self.size - offset))
        buf = bytearray(os.pread(self.fd, size, offset).ljust(size, b"\0"))
        end = offset + size
        for op in self.ops:
            if op.data is None:  # a truncate: everything from its size on reads as zeros
                if op.offset < end:
                    cut = max(0, op.offset - offset)
                    buf[cut:] = bytes(size - cut)
                continue
            lo, hi = max(offset, op.offset), min(end, op.offset + len(op.data))
            if lo < hi:
                buf[lo - offset : hi - offset] = op.data[lo - op.offset : hi - op.offset]
        return bytes(buf)

    def add(self, op: _Op) -> None:
        self.ops.append(op)
        if op.data is None:
            self.size = op.offset
        else:
            self.size = max(self.size, op.offset + len(op.data))

    def apply(self, ops: list[_Op]) -> None:
        """Write ``ops`` to the backing file (not synced)."""
        for op in ops:
            if op.data is None:
                os.ftruncate(self.fd, op.offset)
            else:
                view = memoryview(op.data)
                at = op.offset
                while view:
                    n = os.pwrite(self.fd, view, at)
                    view, at = view[n:], at + n

    def sync(self) -> None:
        self.apply(self.ops)
        os.fsync(self.fd)
        self.ops.clear()

    def drop(self) -> None:
        self.ops.clear()
        self.size = self.durable_size()


@dataclass(slots=True)
class _Rule:
    """Fail ``ops`` with ``code`` until ``until`` (monotonic; None: until cleared)."""

    code: int
    ops: frozenset[str]
    until: float | None
    path: str | None  #: only paths starting with this (relative to the mount, no leading /)

    def active(self, now: float) -> bool:
        return self.until is None or now < self.until

    def as_json(self) -> dict[str, Any]:
        return {
            "errno": errno.errorcode.get(self.code, str(self.code)),
            "ops": sorted(self.ops),
            "path": self.path,
        }


# ==== the file system =========================================================================


class DiskFS(mfusepy.Operations):  # type: ignore[misc]  # mfusepy ships no type hints
    """The FUSE operations (see the module docstring). One lock serializes them all."""

    use_ns = True

    def __init__(self, backing: Path, graveyard: Path) -> None:
        self.root = backing.resolve()
        self.graveyard = graveyard
        graveyard.mkdir(parents=True, exist_ok=True)
        if os.stat(graveyard).st_dev != os.stat(self.root).st_dev:
            raise DiskFSError(f"{graveyard} must be on the file system of {self.root}")
        self._mutex = threading.RLock()
        self._inodes: dict[int, _Inode] = {}
        self._handles: dict[int, _Inode] = {}
        self._next_fh = 1
        self._seq = 0
        #: directory inode -> its durable listing: name -> (inode, is_dir)
        self._tables: dict[int, dict[str, tuple[int, bool]]] = {}
        self.rules: list[_Rule] = []
        self.slow_fsync_s = 0.0
        self.slow_until: float | None = None
        self.full_until: float | None = None
        self.full = False
        #: counts crashes: an fsync that a crash overtook (while it was slowed) fails
        self._crashes = 0

    # ---- paths and inodes -------------------------------------------------------------------
    def _b(self, path: str) -> str:
        rel = path.lstrip("/")
        return str(self.root / rel) if rel else str(self.root)

    def _rel(self, path: str) -> str:
        return path.lstrip("/")

    def _inode_for_fd(self, fd: int) -> _Inode:
        st = os.fstat(fd)
        node = self._inodes.get(st.st_ino)
        if node is not None:
            os.close(fd)
            return node
        node = self._inodes[st.st_ino] = _Inode(st.st_ino, fd, st.st_size)
        return node

    def _inode_at(self, path: str) -> _Inode:
        node = self._inodes.get(os.lstat(self._b(path)).st_ino)
        if node is not None:
            return node
        return self._inode_for_fd(os.open(self._b(path), os.O_RDWR))

    def _new_handle(self, node: _Inode) -> int:
        fh = self._next_fh
        self._next_fh += 1
        node.handles += 1
        self._handles[fh] = node
        return fh

    def _release_inode(self, node: _Inode) -> None:
        if node.handles == 0 and not node.ops:
            del self._inodes[node.ino]
            os.close(node.fd)

    # ---- fault rules ------------------------------------------------------------------------
    def _check(self, op: str, path: str) -> None:
        now = time.monotonic()
        self.rules = [r for r in self.rules if r.active(now)]
        if self.full_until is not None and now >= self.full_until:
            self.full, self.full_until = False, None
        rel = self._rel(path)
        for rule in self.rules:
            if op in rule.ops and (rule.path is None or rel.startswith(rule.path)):
                raise mfusepy.FuseOSError(rule.code)

    def _slow(self) -> None:
        """Delay an fsync (slow-fsync); EIO if the machine crashed meanwhile (the fsync
        never finished, so what it was to sync is lost)."""
        with self._mutex:
            now = time.monotonic()
            if self.slow_until is not None and now >= self.slow_until:
                self.slow_fsync_s, self.slow_until = 0.0, None
            delay, crashes = self.slow_fsync_s, self._crashes
        if delay > 0:
            time.sleep(delay)  # outside the lock: other operations and commands go on
            with self._mutex:
                if self._crashes != crashes:
                    raise mfusepy.FuseOSError(errno.EIO)

    # ---- namespace durability ---------------------------------------------------------------
    def _before_change(self, parent: str) -> None:
        """Record ``parent``'s durable listing before its first unsynced change."""
        st = os.lstat(parent)
        if st.st_ino in self._tables:
            return
        table: dict[str, tuple[int, bool]] = {}
        with os.scandir(parent) as it:
            for entry in it:
                is_dir = entry.is_dir(follow_symlinks=False)
                table[entry.name] = (entry.inode(), is_dir)
                keep = self.graveyard / str(entry.inode())
                if not is_dir and not keep.exists():
                    os.link(entry.path, keep, follow_symlinks=False)
        self._tables[st.st_ino] = table

    def _parent(self, path: str) -> str:
        return os.path.dirname(self._b(path))

    def _collect_graveyard(self) -> None:
        live = {str(ino) for t in self._tables.values() for ino, d in t.values() if not d}
        for name in os.listdir(self.graveyard):
            if name not in live:
                os.unlink(self.graveyard / name)

    # ---- FUSE operations --------------------------------------------------------------------
    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        with self._mutex:
            st = os.lstat(self._b(path))
            attrs = {
                key: getattr(st, key)
                for key in ("st_mode", "st_ino", "st_uid", "st_gid", "st_size", "st_blocks")
            }
            attrs["st_nlink"] = 1 if stat.S_ISREG(st.st_mode) else st.st_nlink
            attrs.update(st_atime=st.st_atime_ns, st_mtime=st.st_mtime_ns, st_ctime=st.st_ctime_ns)
            node = self._inodes.get(st.st_ino)
            if node is not None and node.ops:
                attrs["st_size"] = node.size
            return attrs

    def readdir(self, path: str, fh: int) -> list[str]:
        with self._mutex:
            return [".", "..", *os.listdir(self._b(path))]

    def statfs(self, path: str) -> dict[str, int]:
        with self._mutex:
            sv = os.statvfs(self._b(path))
            keys = ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files")
            out = {k: getattr(sv, k) for k in (*keys, "f_ffree", "f_favail", "f_namemax")}
            if self.full:
                out["f_bfree"] = out["f_bavail"] = 0
            return out

    def mkdir(self, path: str, mode: int) -> int:
        with self._mutex:
            self._check("create", path)
            self._before_change(self._parent(path))
            os.mkdir(self._b(path), mode)
            return 0

    def rmdir(self, path: str) -> int:
        with self._mutex:
            self._before_change(self._parent(path))
            os.rmdir(self._b(path))
            return 0

    def unlink(self, path: str) -> int:
        with self._mutex:
            self._before_change(self._parent(path))
            os.unlink(self._b(path))
            return 0

    def rename(self, old: str, new: str) -> int:
        with self._mutex:
            self._before_change(self._parent(old))
            self._before_change(self._parent(new))
            os.rename(self._b(old), self._b(new))
            return 0

    def link(self, target: str, source: str) -> int:
        with self._mutex:
            self._before_change(self._parent(target))
            os.link(self._b(source), self._b(target))
            return 0

    def chmod(self, path: str, mode: int) -> int:
        with self._mutex:
            os.chmod(self._b(path), mode)
            return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        with self._mutex:
            os.chown(self._b(path), uid, gid)
            return 0

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        with self._mutex:
            if times is None:
                os.utime(self._b(path))
            else:
                os.utime(self._b(path), ns=times)
            return 0

    def create(self, path: str, mode: int, flags: int) -> int:
        with self._mutex:
            self._check("create", path)
            self._before_change(self._parent(path))
            fd = os.open(self._b(path), os.O_RDWR | os.O_CREAT | (flags & os.O_EXCL), mode)
            node = self._inode_for_fd(fd)
            if flags & os.O_TRUNC and node.size:
                self._add(node, 0, None)
            return self._new_handle(node)

    def open(self, path: str, flags: int) -> int:
        with self._mutex:
            return self._new_handle(self._inode_at(path))

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        with self._mutex:
            return self._handles[fh].read(offset, size)

    def _add(self, node: _Inode, offset: int, data: bytes | None) -> None:
        self._seq += 1
        node.add(_Op(self._seq, offset, data))

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        with self._mutex:
            self._check("write", path)
            self._add(self._handles[fh], offset, bytes(data))
            return len(data)

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        with self._mutex:
            node = self._handles[fh] if fh is not None else self._inode_at(path)
            if length > node.size:
                self._check("write", path)
            self._add(node, length, None)
            if fh is None:
                self._release_inode(node)
            return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        self._slow()
        with self._mutex:
            node = self._handles[fh]
            try:
                self._check("fsync", path)
            except OSError:
                node.drop()  # as Linux may: the dirty pages are marked clean, never written
                raise
            node.sync()
            return 0

    def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
        self._slow()
        with self._mutex:
            self._check("fsync", path)
            fd = os.open(self._b(path), os.O_RDONLY | os.O_DIRECTORY)
            try:
                self._tables.pop(os.fstat(fd).st_ino, None)
                os.fsync(fd)
            finally:
                os.close(fd)
            self._collect_graveyard()
            return 0

    def flush(self, path: str, fh: int) -> int:
        return 0

    def release(self, path: str, fh: int) -> int:
        with self._mutex:
            node = self._handles.pop(fh)
            node.handles -= 1
            self._release_inode(node)
            return 0

    def destroy(self, path: str) -> None:
        """A clean unmount: everything becomes durable (the machine did not crash)."""
        with self._mutex:
            self.checkpoint()
            for node in self._inodes.values():
                os.close(node.fd)
            self._inodes.clear()
            self._handles.clear()

    # ---- crashes and faults (control commands) -----------------------------------------------
    def checkpoint(self) -> dict[str, Any]:
        """Make every unsynced operation and every name durable."""
        synced = 0
        for node in self._inodes.values():
            synced += len(node.ops)
            node.sync()
        self._tables.clear()
        self._collect_graveyard()
        return {"synced_ops": synced}

    def _path_of(self, ino: int) -> str | None:
        for dirpath, dirnames, filenames in os.walk(self.root):
            for name in (*dirnames, *filenames):
                full = os.path.join(dirpath, name)
                if os.lstat(full).st_ino == ino:
                    return os.path.relpath(full, self.root)
        return None

    def lose_unsynced(self) -> dict[str, Any]:
        """The crash: drop every unsynced operation, put every directory back as durable."""
        self._crashes += 1
        lost = []
        for node in list(self._inodes.values()):
            if node.ops:
                lost.append(
                    {
                        "path": self._path_of(node.ino),
                        "ops": len(node.ops),
                        "bytes": node.unsynced_bytes(),
                        "size": node.size,
                        "durable_size": node.durable_size(),
                    }
                )
                node.drop()
            self._release_inode(node)
        return {"lost": lost, **self._restore_names()}

    def _restore_names(self) -> dict[str, list[str]]:
        dirs: list[tuple[int, str]] = []
        for dirpath, _, _ in os.walk(self.root):
            ino = os.lstat(dirpath).st_ino
            if ino in self._tables:
                dirs.append((dirpath.count(os.sep), dirpath))
        removed: list[str] = []
        restored: list[str] = []
        for _, dirpath in sorted(dirs):
            if not os.path.isdir(dirpath):  # removed with a parent that was not durable
                continue
            table = self._tables[os.lstat(dirpath).st_ino]
            with os.scandir(dirpath) as it:
                now = {e.name: (e.inode(), e.is_dir(follow_symlinks=False)) for e in it}
            for name, (ino, is_dir) in now.items():
                if table.get(name, (None, False))[0] != ino:
                    full = os.path.join(dirpath, name)
                    shutil.rmtree(full) if is_dir else os.unlink(full)
                    removed.append(os.path.relpath(full, self.root))
            for name, (ino, is_dir) in table.items():
                full = os.path.join(dirpath, name)
                if os.path.lexists(full):
                    continue
                if is_dir:
                    os.mkdir(full)
                else:
                    os.link(self.graveyard / str(ino), full)
                restored.append(os.path.relpath(full, self.root))
        self._tables.clear()
        self._collect_graveyard()
        for node in list(self._inodes.values()):
            if node.handles == 0:
                self._release_inode(node)
        return {"removed": removed, "restored": restored}

    def torn_write(self, path: str | None, granularity: int, keep: int | None) -> dict[str, Any]:
        """The crash, except that a prefix of the last unsynced write persists."""
        if granularity < 1:
            raise DiskFSError(f"granularity must be >= 1, got {granularity}")
        candidates = [
            (op.seq, node, op)
            for node in self._inodes.values()
            for op in node.ops
            if op.data is not None and (path is None or self._path_of(node.ino) == path.lstrip("/"))
        ]
        if not candidates:
            raise DiskFSError("no unsynced write to tear" + (f" in {path}" if path else ""))
        self._crashes += 1
        _, node, last = max(candidates, key=lambda c: c[0])
        assert last.data is not None
        end = last.offset + len(last.data)
        if keep is None:  # the last boundary inside the write, else nothing of it
            cut = (end - 1) // granularity * granularity
        else:
            cut = last.offset + keep
        kept = max(0, min(len(last.data), cut - last.offset))
        before = [op for op in node.ops if op.seq < last.seq]
        node.apply([*before, _Op(last.seq, last.offset, last.data[:kept])])
        os.fsync(node.fd)
        detail = {
            "path": self._path_of(node.ino),
            "offset": last.offset,
            "length": len(last.data),
            "kept": kept,
            "granularity": granularity,
        }
        node.ops = [op for op in node.ops if op.seq > last.seq]
        return {"torn": detail, **self.lose_unsynced()}

    def corrupt(self, path: str, offset: int, mask: int) -> dict[str, Any]:
        """XOR the durable byte at ``offset`` of ``path`` with ``mask``."""
        if not 1 <= mask <= 0xFF:
            raise DiskFSError(f"mask must be in 1..255, got {mask}")
        full = self._b(path)
        fd = os.open(full, os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            if not 0 <= offset < size:
                raise DiskFSError(f"offset {offset} is outside {path} ({size} durable bytes)")
            old = os.pread(fd, 1, offset)[0]
            os.pwrite(fd, bytes([old ^ mask]), offset)
            os.fsync(fd)
        finally:
            os.close(fd)
        return {"path": path.lstrip("/"), "offset": offset, "old": old, "new": old ^ mask}

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "unsynced": {
                str(self._path_of(n.ino)): n.unsynced_bytes()
                for n in self._inodes.values()
                if n.ops
            },
            "undurable_dirs": len(self._tables),
            "rules": [r.as_json() for r in self.rules if r.active(now)],
            "slow_fsync_ms": round(self.slow_fsync_s * 1000),
            "full": self.full,
        }

    def command(self, req: dict[str, Any]) -> dict[str, Any]:
        """Run one control command (see ``docs/disk-faults.md``)."""
        cmd = req.get("cmd")
        for_s = req.get("for_s")
        until = None if for_s is None else time.monotonic() + float(for_s)
        with self._mutex:
            if cmd == "ping":
                return {"pid": os.getpid()}
            if cmd == "status":
                return self.status()
            if cmd == "checkpoint":
                return self.checkpoint()
            if cmd == "lose-unsynced":
                return self.lose_unsynced()
            if cmd == "torn-write":
                keep = req.get("keep")
                gran = int(req.get("granularity", SECTOR))
                return self.torn_write(req.get("path"), gran, None if keep is None else int(keep))
            if cmd == "corrupt":
                return self.corrupt(str(req["path"]), int(req["offset"]), int(req.get("mask", 1)))
            if cmd == "fail":
                name = str(req.get("errno", "EIO"))
                ops = frozenset(req.get("ops", ["write", "fsync"]))
                if name not in _ERRNOS or not ops or not ops <= FAIL_OPS:
                    raise DiskFSError(
                        f"fail: errno in {sorted(_ERRNOS)}, ops in {sorted(FAIL_OPS)}"
                    )
                self.rules.append(_Rule(_ERRNOS[name], ops, until, req.get("path")))
                return {"rules": len(self.rules)}
            if cmd == "disk-full":
                self.rules.append(_Rule(errno.ENOSPC, FAIL_OPS, until, None))
                self.full, self.full_until = True, until
                return {"rules": len(self.rules)}
            if cmd == "slow-fsync":
                self.slow_fsync_s, self.slow_until = float(req["ms"]) / 1000, until
                return {"slow_fsync_ms": req["ms"]}
            if cmd == "clear":
                self.rules.clear()
                self.slow_fsync_s, self.slow_until = 0.0, None
                self.full, self.full_until = False, None
                return {}
        raise DiskFSError(f"unknown command {cmd!r}")


# ==== the control socket ======================================================================


def serve_control(fs: DiskFS, sock: socket.socket) -> None:
    """Answer control connections on ``sock`` until it is closed (a daemon thread)."""
    while True:
        try:
            conn, _ = sock.accept()
        except OSError:
            return
        threading.Thread(target=_serve_conn, args=(fs, conn), daemon=True).start()


def _serve_conn(fs: DiskFS, conn: socket.socket) -> None:
    with conn, conn.makefile("rwb") as f:
        for line in f:
            try:
                req = json.loads(line)
                if not isinstance(req, dict):
                    raise DiskFSError("a command is a JSON object")
                reply = {"ok": True, **fs.command(req)}
            except (DiskFSError, OSError, KeyError, TypeError, ValueError) as exc:
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            f.write(json.dumps(reply).encode() + b"\n")
            f.flush()


#: the longest socket path ``bind``/``connect`` take as is (``sun_path`` holds 108 bytes)
MAX_SOCKET_PATH = 100


@contextlib.contextmanager
def socket_address(path: Path) -> Iterator[str]:
    """An address for the Unix socket at ``path`` that fits ``sun_path``: ``path`` itself, or,
    when it is too long (a deep run directory), the same file reached through an open file
    descriptor of its directory (``/proc/self/fd/N/name``), valid while the context lasts."""
    if len(os.fsencode(path)) <= MAX_SOCKET_PATH:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


class DiskControl:
    """A client of one file system's control socket."""

    def __init__(self, path: Path, timeout: float = CONTROL_TIMEOUT_S) -> None:
        self.path = path
        self.timeout = timeout

    def call(self, cmd: str, **args: Any) -> dict[str, Any]:
        """Send one command; its reply (without ``ok``); :class:`DiskFSError` if refused."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(self.timeout)
            try:
                with socket_address(self.path) as address:
                    s.connect(address)
                s.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
                with s.makefile("rb") as f:
                    line = f.readline()
            except OSError as exc:
                raise DiskFSError(f"{self.path}: {cmd}: {exc}") from exc
        if not line:
            raise DiskFSError(f"{self.path}: {cmd}: no answer")
        reply: dict[str, Any] = json.loads(line)
        if not reply.pop("ok", False):
            raise DiskFSError(f"{cmd}: {reply.get('error')}")
        return reply


# ==== mounting ================================================================================


def mounted(path: Path) -> bool:
    """Whether ``path`` is a mount point (per /proc/self/mountinfo)."""
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 4 and _unescape(fields[4]) == target:
                return True
    return False


def _unescape(s: str) -> str:
    return s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n")


def unmount(path: Path) -> None:
    """Unmount ``path`` if it is mounted: normally, else lazily (busy, or a dead server)."""
    for args in ([FUSERMOUNT, "-u", "-q"], [FUSERMOUNT, "-u", "-z", "-q"]):
        if not mounted(path):
            return
        subprocess.run([*args, str(path)], check=False, capture_output=True, timeout=30)
    if mounted(path):
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True, timeout=30)


class Disk(Protocol):
    """A node's fault-injecting disk, wherever it runs: :class:`DiskMount` on this machine,
    ``chaos.remote.RemoteDisk`` on a host (through its agent)."""

    def call(self, cmd: str, **args: Any) -> dict[str, Any]:
        """A control command (``docs/disk-faults.md``); raises :class:`DiskFSError`."""
        ...

    def settle(self) -> None:
        """Unmount, and leave the durable content where the data directory was."""
        ...


class DiskMount:
    """A :class:`DiskFS` process serving ``backing`` at ``mountpoint``.

    ``state_dir`` (default: beside ``backing``) holds the control socket, the process's log
    and the graveyard of not-yet-durable names; it must be on ``backing``'s file system.
    """

    def __init__(
        self,
        backing: Path,
        mountpoint: Path,
        state_dir: Path | None = None,
        *,
        mmap_paths: tuple[str, ...] = (),
        allow_other: bool = False,
    ) -> None:
        self.mmap_paths = mmap_paths  #: relative paths opened through the page cache
        self.allow_other = allow_other  #: other users and groups may use the mount
        self.backing = backing.resolve()
        self.mountpoint = mountpoint.resolve()
        self.state_dir = (state_dir or self.backing.with_name(self.backing.name + ".fs")).resolve()
        self.control = DiskControl(self.state_dir / "control.sock")
        self.log_path = self.state_dir / "diskfs.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        for d in (self.backing, self.mountpoint, self.state_dir):
            d.mkdir(parents=True, exist_ok=True)
        if mounted(self.mountpoint):
            raise DiskFSError(f"{self.mountpoint} is already a mount point")
        self.control.path.unlink(missing_ok=True)
        argv = [sys.executable, "-m", "chaos.diskfs", "--backing", str(self.backing)]
        argv += ["--mount", str(self.mountpoint), "--state", str(self.state_dir)]
        for path in self.mmap_paths:
            argv += ["--mmap", path]
        if self.allow_other:
            argv.append("--allow-other")
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + MOUNT_TIMEOUT_S
        assert self._proc is not None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise DiskFSError(f"the disk file system exited at start:\n{tail}")
            if self.control.path.exists() and mounted(self.mountpoint):
                with contextlib.suppress(DiskFSError):
                    self.control.call("ping")
                    return
            time.sleep(0.02)
        raise DiskFSError(f"{self.mountpoint} not mounted after {MOUNT_TIMEOUT_S} s")

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def call(self, cmd: str, **args: Any) -> dict[str, Any]:
        return self.control.call(cmd, **args)

    def stop(self) -> None:
        """Unmount (lazily if busy) and end the process; safe to call more than once."""
        try:
            unmount(self.mountpoint)
        finally:
            proc, self._proc = self._proc, None
            if proc is not None:
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                unmount(self.mountpoint)  # a killed server leaves a dead mount behind

    def settle(self) -> None:
        """:meth:`stop`, then put the durable content (the backing directory: what was
        fsynced) where the mount point was, for a storage replay."""
        self.stop()
        data = self.mountpoint
        if data.is_dir() and not any(data.iterdir()):
            data.rmdir()
            self.backing.rename(data)
        shutil.rmtree(self.state_dir / "graveyard", ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


# ==== the server process ======================================================================


def _watch_parent(mountpoint: Path) -> None:
    """Unmount (which ends the FUSE loop) once the process that started us is gone."""
    parent = os.getppid()
    while os.getppid() == parent:
        time.sleep(0.5)
    unmount(mountpoint)


class _FUSE(mfusepy.FUSE):  # type: ignore[misc]  # mfusepy ships no type hints
    """``direct_io`` per file: every file but the ones that must be memory-mapped."""

    def __init__(self, ops: DiskFS, mount: str, mmap_paths: frozenset[str], **opts: Any) -> None:
        self._mmap = mmap_paths
        super().__init__(ops, mount, **opts)

    def _cache_mode(self, path: bytes, fip: Any) -> None:
        fip.contents.direct_io = 0 if path.decode().lstrip("/") in self._mmap else 1
        fip.contents.keep_cache = 0

    def open(self, path: bytes, fip: Any) -> int:
        result: int = super().open(path, fip)
        self._cache_mode(path, fip)
        return result

    def create(self, path: bytes, mode: int, fip: Any) -> int:
        result: int = super().create(path, mode, fip)
        self._cache_mode(path, fip)
        return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos.diskfs", description=__doc__)
    parser.add_argument("--backing", required=True, type=Path)
    parser.add_argument("--mount", required=True, type=Path)
    parser.add_argument("--state", required=True, type=Path)
    parser.add_argument("--mmap", action="append", default=[], help="a file to mmap (relative)")
    parser.add_argument("--allow-other", action="store_true", help="other users may use it")
    args = parser.parse_args(argv)
    try:
        fs = DiskFS(args.backing, args.state / "graveyard")
    except (DiskFSError, OSError) as exc:
        print(f"diskfs: {exc}", file=sys.stderr)
        return 2
    ctl_path = args.state / "control.sock"
    ctl_path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with socket_address(ctl_path) as address:
        sock.bind(address)
    sock.listen(16)
    threading.Thread(target=serve_control, args=(fs, sock), daemon=True).start()
    threading.Thread(target=_watch_parent, args=(args.mount,), daemon=True).start()
    try:
        extra = {"allow_other": True} if args.allow_other else {}
        _FUSE(
            fs,
            str(args.mount),
            frozenset(p.strip("/") for p in args.mmap),
            foreground=True,
            attr_timeout=0,
            entry_timeout=0,
            negative_timeout=0,
            fsname="orbital-diskfs",
            **extra,
        )
    except RuntimeError as exc:
        print(f"diskfs: mount failed: {exc}", file=sys.stderr)
        return 1
    finally:
        sock.close()
        ctl_path.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
