"""Disk faults on a stopped node's data dir: a fake one shaped like the WAL, then a real one."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

from chaos.disk import DiskFaultError, flip_byte, newest_segment, truncate_tail
from raft.core.types import LogEntry
from raft.storage import FileStorage
from raft.wal import SEGMENT_MAGIC, StorageCorrupted


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


def test_the_zero_tail_of_a_preallocated_segment_is_not_written_data(data_dir: Path) -> None:
    newest = newest_segment(data_dir)
    newest.write_bytes(b"0123456789" + bytes(50))
    fault = truncate_tail(data_dir, 3)
    assert fault.path.read_bytes() == b"0123456"
    assert fault.detail == {"old_size": 10, "new_size": 7}
    newest.write_bytes(b"0123456789" + bytes(50))
    assert flip_byte(data_dir, -1).detail["offset"] == 9


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


# --- against the real FileStorage: the helpers find its files and it sees the faults --------


def _store_with_five_entries(path: Path) -> list[LogEntry]:
    log = [LogEntry(i, 1, f"cmd-{i}".encode()) for i in range(1, 6)]
    with FileStorage(path) as store:
        for entry in log:  # one record each (one append of several is one BATCH record)
            store.append_log([entry])
    return log


def test_a_torn_tail_is_cut_off_by_file_storage(tmp_path: Path) -> None:
    log = _store_with_five_entries(tmp_path)
    with FileStorage(tmp_path), pytest.raises(DiskFaultError, match="locked"):
        truncate_tail(tmp_path, 3)  # refused while the store is open
    truncate_tail(tmp_path, 3)
    with FileStorage(tmp_path) as store:
        assert store.recovered_tail is not None
        assert store.load_log() == log[:4]


def test_a_flipped_byte_stops_file_storage_from_opening(tmp_path: Path) -> None:
    _store_with_five_entries(tmp_path)
    fault = flip_byte(tmp_path, len(SEGMENT_MAGIC) + 12)  # inside the first record
    with pytest.raises(StorageCorrupted) as exc:
        FileStorage(tmp_path)
    assert exc.value.path == fault.path
