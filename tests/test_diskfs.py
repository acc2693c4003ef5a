"""The fault-injecting FUSE file system (chaos/diskfs.py): every fault takes effect, exactly.

Each test mounts its own file system in a temp dir; the fixture unmounts it whatever happens
and checks that nothing is left mounted.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from chaos.diskfs import SECTOR, DiskFSError, DiskMount, mounted

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not os.path.exists("/dev/fuse") or os.geteuid() != 0,
        reason="needs /dev/fuse and root (scripts/setup.sh installs fuse3)",
    ),
]


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[DiskMount]:
    m = DiskMount(tmp_path / "backing", tmp_path / "mnt")
    try:
        yield m.start()
    finally:
        m.stop()
        assert not mounted(tmp_path / "mnt")


def write_file(path: Path, data: bytes, *, sync: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def test_lose_unsynced_drops_exactly_the_writes_after_the_last_fsync(disk: DiskMount) -> None:
    f = disk.mountpoint / "f"
    fd = os.open(f, os.O_RDWR | os.O_CREAT, 0o644)
    os.write(fd, b"durable ")
    os.fsync(fd)
    fsync_dir(disk.mountpoint)
    os.write(fd, b"lost")
    os.pwrite(fd, b"D", 0)  # an overwrite of synced bytes is lost too
    assert f.read_bytes() == b"Durable lost"  # the cache serves reads
    assert (disk.backing / "f").read_bytes() == b"durable "  # the backing holds the durable
    os.close(fd)
    reply = disk.call("lose-unsynced")
    assert reply["lost"] == [{"path": "f", "ops": 2, "bytes": 5, "size": 12, "durable_size": 8}]
    assert f.read_bytes() == b"durable "
    assert os.stat(f).st_size == 8


def test_lose_unsynced_is_per_file(disk: DiskMount) -> None:
    a, b = disk.mountpoint / "a", disk.mountpoint / "b"
    write_file(a, b"aaaa", sync=True)
    write_file(b, b"bbbb", sync=False)
    fsync_dir(disk.mountpoint)
    write_file(a, b"AA", sync=False)
    reply = disk.call("lose-unsynced")
    assert sorted(x["path"] for x in reply["lost"]) == ["a", "b"]
    assert a.read_bytes() == b"aaaa"
    assert b.read_bytes() == b""  # named durably, but its data was never synced


def test_unsynced_truncate_is_lost_and_reads_follow_the_operations(disk: DiskMount) -> None:
    f = disk.mountpoint / "f"
    write_file(f, b"0123456789", sync=True)
    fsync_dir(disk.mountpoint)
    with open(f, "r+b") as h:
        h.truncate(3)
        h.seek(6)
        h.write(b"x")
        h.flush()
        assert f.read_bytes() == b"012\0\0\0x"  # the truncated bytes do not come back
    disk.call("lose-unsynced")
    assert f.read_bytes() == b"0123456789"


def test_a_rename_is_durable_only_once_its_directory_is_fsynced(disk: DiskMount) -> None:
    name, tmp = disk.mountpoint / "state", disk.mountpoint / "state.tmp"
    write_file(name, b"old", sync=True)
    fsync_dir(disk.mountpoint)
    write_file(tmp, b"new", sync=True)
    os.replace(tmp, name)
    assert name.read_bytes() == b"new"
    reply = disk.call("lose-unsynced")
    assert name.read_bytes() == b"old"
    assert not tmp.exists()
    assert reply["restored"] == ["state"]
    write_file(tmp, b"new", sync=True)
    os.replace(tmp, name)
    fsync_dir(disk.mountpoint)
    disk.call("lose-unsynced")
    assert name.read_bytes() == b"new"


def test_a_new_file_or_directory_needs_its_parent_fsynced(disk: DiskMount) -> None:
    d = disk.mountpoint / "d"
    d.mkdir()
    write_file(d / "seg", b"synced data", sync=True)
    fsync_dir(d)  # the file is durable in d, but d itself is not durable in the root
    reply = disk.call("lose-unsynced")
    assert reply["removed"] == ["d"]
    assert not d.exists()
    d.mkdir()
    fsync_dir(disk.mountpoint)
    write_file(d / "seg", b"synced data", sync=True)
    fsync_dir(d)
    disk.call("lose-unsynced")
    assert (d / "seg").read_bytes() == b"synced data"


def test_an_unsynced_unlink_is_undone(disk: DiskMount) -> None:
    f = disk.mountpoint / "f"
    write_file(f, b"keep me", sync=True)
    fsync_dir(disk.mountpoint)
    f.unlink()
    assert disk.call("lose-unsynced")["restored"] == ["f"]
    assert f.read_bytes() == b"keep me"


def test_torn_write_keeps_a_sector_aligned_prefix_of_the_last_write(disk: DiskMount) -> None:
    f = disk.mountpoint / "f"
    write_file(f, bytes(4 * SECTOR), sync=True)  # zero-filled space, like a WAL's tail
    fsync_dir(disk.mountpoint)
    fd = os.open(f, os.O_RDWR)
    os.pwrite(fd, b"a" * 100, 0)  # an earlier unsynced write persists whole
    os.pwrite(fd, b"b" * 1000, 300)  # the last one: sectors [0,512) [512,1024) [1024,1536)
    os.close(fd)
    reply = disk.call("torn-write")
    assert reply["torn"] == {
        "path": "f",
        "offset": 300,
        "length": 1000,
        "kept": 1024 - 300,
        "granularity": SECTOR,
    }
    data = f.read_bytes()
    assert data == b"a" * 100 + bytes(200) + b"b" * 724 + bytes(4 * SECTOR - 1024)


def test_torn_write_at_byte_granularity_and_with_an_explicit_prefix(disk: DiskMount) -> None:
    f = disk.mountpoint / "f"
    write_file(f, b"", sync=True)
    fsync_dir(disk.mountpoint)
    write_file(f, b"0123456789", sync=False)
    assert disk.call("torn-write", path="f", keep=4)["torn"]["kept"] == 4
    assert f.read_bytes() == b"0123"
    write_file(f, b"abcdefghij", sync=False)
    assert disk.call("torn-write", granularity=1)["torn"]["kept"] == 9
    assert f.read_bytes() == b"abcdefghi"
    with pytest.raises(DiskFSError, match="no unsynced write"):
        disk.call("torn-write")


def test_corrupt_flips_one_durable_byte(disk: DiskMount) -> None:
    f = disk.mountpoint / "f"
    write_file(f, b"abc", sync=True)
    fsync_dir(disk.mountpoint)
    reply = disk.call("corrupt", path="f", offset=1, mask=0x01)
    assert reply == {"path": "f", "offset": 1, "old": ord("b"), "new": ord("b") ^ 1}
    assert f.read_bytes() == b"a" + bytes([ord("b") ^ 1]) + b"c"
    with pytest.raises(DiskFSError, match="outside"):
        disk.call("corrupt", path="f", offset=3)


def test_io_error_on_write_and_on_fsync_then_cleared(disk: DiskMount) -> None:
    f = disk.mountpoint / "f"
    write_file(f, b"", sync=True)
    disk.call("fail", errno="EIO", ops=["write"])
    with pytest.raises(OSError, match=os.strerror(errno.EIO)) as err:
        write_file(f, b"x", sync=False)
    assert err.value.errno == errno.EIO
    disk.call("clear")
    disk.call("fail", errno="EIO", ops=["fsync"])
    fd = os.open(f, os.O_RDWR)
    try:
        os.write(fd, b"never durable")
        with pytest.raises(OSError, match=os.strerror(errno.EIO)) as err:
            os.fsync(fd)
        assert err.value.errno == errno.EIO
        disk.call("clear")
        os.fsync(fd)  # the retry "succeeds", but the failed fsync dropped the data (Linux)
    finally:
        os.close(fd)
    assert f.read_bytes() == b""


def test_a_fault_for_a_while_ends_by_itself(disk: DiskMount) -> None:
    f = disk.mountpoint / "f"
    disk.call("fail", errno="ENOSPC", ops=["write"], for_s=0.2)
    with pytest.raises(OSError, match=os.strerror(errno.ENOSPC)) as err:
        write_file(f, b"x", sync=False)
    assert err.value.errno == errno.ENOSPC
    time.sleep(0.25)
    write_file(f, b"x", sync=True)
    assert f.read_bytes() == b"x"


def test_disk_full_refuses_writes_creations_and_fsyncs_and_shows_no_space(
    disk: DiskMount,
) -> None:
    f = disk.mountpoint / "f"
    write_file(f, b"", sync=True)
    disk.call("disk-full")
    assert os.statvfs(disk.mountpoint).f_bavail == 0
    for action in (
        lambda: write_file(f, b"x", sync=False),
        lambda: write_file(disk.mountpoint / "new", b"", sync=False),
    ):
        with pytest.raises(OSError, match=os.strerror(errno.ENOSPC)) as err:
            action()
        assert err.value.errno == errno.ENOSPC
    disk.call("clear")
    assert os.statvfs(disk.mountpoint).f_bavail > 0
    write_file(f, b"x", sync=True)


def test_slow_fsync_delays_every_fsync(disk: DiskMount) -> None:
    f = disk.mountpoint / "f"
    write_file(f, b"x", sync=True)
    disk.call("slow-fsync", ms=200)
    fd = os.open(f, os.O_RDWR)
    try:
        start = time.monotonic()
        os.fsync(fd)
        assert time.monotonic() - start >= 0.2
        disk.call("clear")
        start = time.monotonic()
        os.fsync(fd)
        assert time.monotonic() - start < 0.2 or pytest.fail("fsync still slow after clear")
    finally:
        os.close(fd)


def test_bad_commands_are_refused_with_a_reason(disk: DiskMount) -> None:
    with pytest.raises(DiskFSError, match="unknown command"):
        disk.call("explode")
    with pytest.raises(DiskFSError, match="errno in"):
        disk.call("fail", errno="EPERM")
    with pytest.raises(DiskFSError, match="mask"):
        disk.call("corrupt", path="x", offset=0, mask=0)


def test_checkpoint_and_clean_unmount_make_everything_durable(tmp_path: Path) -> None:
    m = DiskMount(tmp_path / "b", tmp_path / "m").start()
    try:
        write_file(m.mountpoint / "f", b"unsynced", sync=False)
    finally:
        m.stop()
    assert (tmp_path / "b" / "f").read_bytes() == b"unsynced"


def test_stop_unmounts_a_busy_mount_and_a_killed_server(tmp_path: Path) -> None:
    m = DiskMount(tmp_path / "b", tmp_path / "m").start()
    held = os.open(m.mountpoint, os.O_RDONLY)  # keeps the mount busy
    try:
        m.stop()
        assert not mounted(tmp_path / "m")
    finally:
        os.close(held)
    m = DiskMount(tmp_path / "b", tmp_path / "m").start()
    try:
        assert m.pid is not None
        os.kill(m.pid, signal.SIGKILL)
    finally:
        m.stop()
    assert not mounted(tmp_path / "m")


def test_the_file_system_unmounts_itself_when_its_parent_dies(tmp_path: Path) -> None:
    mnt = tmp_path / "m"
    code = (
        "import sys, time; from pathlib import Path; from chaos.diskfs import DiskMount; "
        f"DiskMount(Path({str(tmp_path / 'b')!r}), Path({str(mnt)!r})).start(); "
        "print('up', flush=True); time.sleep(60)"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert parent.stdout is not None
        assert parent.stdout.readline() == b"up\n"
        assert mounted(mnt)
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 20
        while mounted(mnt) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not mounted(mnt)
    finally:
        parent.kill()
        parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()
        DiskMount(tmp_path / "b", mnt).stop()


def test_a_deep_state_directory_still_mounts_and_answers(tmp_path: Path) -> None:
    """A control socket path longer than ``sun_path`` (a deep ``--store``) is bound and
    reached through the directory's file descriptor, not refused with 'path too long'."""
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    m = DiskMount(deep / "backing", deep / "mnt")
    assert len(str(m.state_dir / "control.sock")) > 108
    try:
        m.start()
        assert m.call("ping")["pid"] > 0
        write_file(m.mountpoint / "f", b"x", sync=True)
        assert m.call("status")["unsynced"] == {}
    finally:
        m.stop()
