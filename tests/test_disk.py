"""Disk faults on a stopped node's data directory (a fake one: files shaped like the WAL)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

from chaos.disk import DiskFaultError, flip_byte, newest_segment, truncate_tail


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    wal = tmp_path / "wal"
    wal.mkdir()
    (wal / f"{1:016x}.wal").write_bytes(b"old segment")
    (wal / f"{10:016x}.wal").write_bytes(b"0123456789")  # 10 > 2 in hex order too
    (wal / f"{2:016x}.wal").write_bytes(b"middle")
    (tmp_path / "LOCK").touch()
    return tmp_path


def test_newest_segment_is_the_greatest_sequence(data_dir: Path) -> None:
    assert newest_segment(data_dir).name == f"{10:016x}.wal"


def test_truncate_tail_cuts_the_newest_segment(data_dir: Path) -> None:
    fault = truncate_tail(data_dir, 3)
    assert fault.path.read_bytes() == b"0123456"
    assert fault.as_detail()["old_size"] == 10
    assert fault.as_detail()["new_size"] == 7
    assert truncate_tail(data_dir, 100).path.read_bytes() == b""


def test_flip_byte_xors_one_byte(data_dir: Path) -> None:
    fault = flip_byte(data_dir, -1, mask=0x01)
    assert fault.path.read_bytes() == b"012345678" + bytes([ord("9") ^ 1])
    assert fault.detail == {"offset": 9, "old": ord("9"), "new": ord("9") ^ 1}
    other = data_dir / "wal" / f"{1:016x}.wal"
    flip_byte(data_dir, 0, path=other)
    assert other.read_bytes()[0] == ord("o") ^ 0xFF
    with pytest.raises(DiskFaultError, match="outside"):
        flip_byte(data_dir, 10)


def test_a_locked_data_dir_is_refused(data_dir: Path) -> None:
    fd = os.open(data_dir / "LOCK", os.O_RDWR)  # as the running node holds it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(DiskFaultError, match="locked by a running node"):
            truncate_tail(data_dir, 1)
    finally:
        os.close(fd)
    assert newest_segment(data_dir).read_bytes() == b"0123456789"


def test_no_segment_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DiskFaultError, match="no file matches"):
        truncate_tail(tmp_path, 1)
