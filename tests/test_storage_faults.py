"""What the store does under disk faults: torn writes against flipped bits in the WAL, and,
on the fault-injecting FUSE file system, lost unsynced writes, corruption, EIO and ENOSPC.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from chaos.disk import CORRUPTION_TARGETS, pick_corruption
from chaos.diskfs import DiskMount, mounted
from raft import storage as storage_mod
from raft import wal
from raft.core.types import ConfState, HardState, LogEntry, NodeId, Snapshot, SnapshotMeta
from raft.storage import FileStorage, StorageCorrupted, StorageError, read_data_dir

CONF = ConfState(frozenset({NodeId("a")}))


def entries(first: int, last: int, term: int = 1) -> list[LogEntry]:
    return [
        LogEntry(i, term, f'{{"put": "k{i}", "v": {i}}}'.encode()) for i in range(first, last + 1)
    ]


def _last_record(directory: Path) -> tuple[Path, wal.Record]:
    (seg,) = sorted((directory / "wal").glob("*.wal"))
    records, torn = wal.scan_segment(seg, seg.read_bytes(), last=True)
    assert torn is None
    return seg, records[-1]


# ==== the WAL alone: a torn write is not a flipped bit ==========================================


def test_any_flipped_bit_in_the_last_batch_of_64_entries_is_corruption(tmp_path: Path) -> None:
    with FileStorage(tmp_path) as s:
        s.append_log(entries(1, 3))
        s.append_log(entries(4, 67))  # one BATCH record of 64 fsynced entries, the last
    seg, rec = _last_record(tmp_path)
    clean = seg.read_bytes()
    rng = random.Random(11)
    assert rec.rtype == wal.RT_BATCH
    assert len(rec.batch) == 64
    # any byte after the length field (a flipped length pointing into the zero tail reads
    # as a torn write: see raft.wal.looks_torn): the header and body prefix whole, then a
    # sample of the rest (terms, kinds, lengths, commands), a random bit of each
    head = rec.offset + wal.HEADER.size + wal.BODY.size + 4
    rest = sorted(rng.sample(range(head, rec.end), 100))
    for at in [*range(rec.offset + 4, head), *rest, rec.end - 1]:
        data = bytearray(clean)
        data[at] ^= 1 << rng.randrange(8)
        records, torn = None, None
        with pytest.raises(StorageCorrupted) as exc:
            records, torn = wal.scan_segment(seg, bytes(data), last=True)
        assert exc.value.offset == rec.offset, (at, records, torn)


def test_a_flipped_bit_in_a_last_truncate_record_is_corruption(tmp_path: Path) -> None:
    with FileStorage(tmp_path) as s:
        s.append_log(entries(1, 9))
        s.truncate_log_after(5)  # a TRUNCATE record ends in zeros of its own
    seg, rec = _last_record(tmp_path)
    assert rec.rtype == wal.RT_TRUNCATE
    clean = seg.read_bytes()
    for at in range(rec.offset + 4, rec.end):
        for bit in range(8):
            data = bytearray(clean)
            data[at] ^= 1 << bit
            with pytest.raises(StorageCorrupted):
                wal.scan_segment(seg, bytes(data), last=True)


def test_a_write_torn_at_any_sector_boundary_is_cut(tmp_path: Path) -> None:
    with FileStorage(tmp_path) as s:
        s.append_log(entries(1, 3))
    seg, rec = _last_record(tmp_path)
    clean = seg.read_bytes()
    record = wal.encode_entries(entries(4, 80))[0]
    start = rec.end
    boundaries = range((start // wal.SECTOR + 1) * wal.SECTOR, start + len(record), wal.SECTOR)
    assert len(boundaries) >= 3
    for cut in boundaries:  # sectors before ``cut`` written, the rest still zeros
        data = bytearray(clean)
        data[start:cut] = record[: cut - start]
        records, torn = wal.scan_segment(seg, bytes(data), last=True)
        assert torn is not None
        assert torn.offset == start
        assert records[-1].offset == rec.offset
    # out of order: the header's sector never written, a later one was
    data = bytearray(clean)
    later = boundaries[1]
    data[later : later + wal.SECTOR] = record[later - start : later - start + wal.SECTOR]
    _, torn = wal.scan_segment(seg, bytes(data), last=True)
    assert torn is not None
    assert torn.offset == start


def test_a_tear_inside_one_sector_is_refused_not_guessed(tmp_path: Path) -> None:
    """Disks write whole sectors; a record that is part data and part zeros inside one sector
    cannot come from a crash, so the store refuses to start rather than drop it."""
    with FileStorage(tmp_path) as s:
        s.append_log(entries(1, 2))
    seg, rec = _last_record(tmp_path)
    data = bytearray(seg.read_bytes())
    if rec.offset // wal.SECTOR == (rec.end - 1) // wal.SECTOR:
        data[rec.end - 20 : rec.end] = bytes(20)
        with pytest.raises(StorageCorrupted, match="complete record"):
            wal.scan_segment(seg, bytes(data), last=True)
    else:  # pragma: no cover - the fixed entries above fit one sector
        pytest.fail("the record spans two sectors: adjust the entries")


def test_pick_corruption_draws_inside_the_named_thing(tmp_path: Path) -> None:
    with FileStorage(tmp_path) as s:
        s.save_state(HardState(3, NodeId("a")))
        for i in range(1, 11):
            s.append_log(entries(i, i))
        s.save_snapshot(Snapshot(SnapshotMeta(4, 1, CONF), b"image"))
    seg, last = _last_record(tmp_path)
    rng = random.Random(5)
    for _ in range(20):
        spot = pick_corruption(tmp_path, "last-record", rng)
        assert spot.path == "wal/" + seg.name
        assert last.offset + 4 <= spot.offset < last.end
        spot = pick_corruption(tmp_path, "middle-record", rng)
        assert spot.record < last.offset
        assert spot.record <= spot.offset < last.offset
        for target in ("hardstate", "snapshot"):
            spot = pick_corruption(tmp_path, target, rng)
            assert 0 <= spot.offset < (tmp_path / target).stat().st_size


# ==== on the fault-injecting file system ========================================================

fuse = pytest.mark.skipif(
    not os.path.exists("/dev/fuse") or os.geteuid() != 0,
    reason="needs /dev/fuse and root (scripts/setup.sh installs fuse3)",
)


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[DiskMount]:
    m = DiskMount(tmp_path / "backing", tmp_path / "mnt")
    try:
        yield m.start()
    finally:
        m.stop()
        assert not mounted(tmp_path / "mnt")


@pytest.mark.integration
@fuse
def test_acknowledged_appends_survive_losing_unsynced_writes(disk: DiskMount) -> None:
    d = disk.mountpoint / "data"
    with FileStorage(d) as s:
        s.append_log(entries(1, 5))  # acknowledged: append_log returned
        s.append_log(entries(6, 6))
    assert disk.call("lose-unsynced")["removed"] == ["data/LOCK"]  # never needed durable
    with FileStorage(d) as s:
        assert s.load_log() == entries(1, 6)


@pytest.mark.integration
@fuse
def test_without_syncing_the_new_log_directory_a_crash_loses_the_whole_log(
    disk: DiskMount, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Teeth for FileStorage's durable creation of ``wal/``: without it (the bug planted),
    every fsynced entry goes with the directory's name."""
    monkeypatch.setattr(storage_mod, "fsync_dir", lambda path: None)
    d = disk.mountpoint / "data"
    with FileStorage(d) as s:
        s.append_log(entries(1, 5))
    assert "data" in disk.call("lose-unsynced")["removed"]
    monkeypatch.undo()
    with FileStorage(d) as s:
        assert s.load_log() == []


@pytest.mark.integration
@fuse
def test_a_torn_unsynced_append_is_cut_and_nothing_acknowledged_is_lost(
    disk: DiskMount, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = disk.mountpoint / "data"
    s = FileStorage(d)
    s.append_log(entries(1, 4))

    def crash(fd: int) -> None:  # the process dies between write and fdatasync
        raise OSError(5, "killed before the sync")

    monkeypatch.setattr(wal, "datasync", crash)
    with pytest.raises(StorageError):
        s.append_log(entries(5, 60))  # never acknowledged
    monkeypatch.undo()
    torn = disk.call("torn-write", path="data/wal/" + wal.segment_name(1))["torn"]
    s.close()
    assert 0 < torn["kept"] < torn["length"]
    with FileStorage(d) as s2:
        assert s2.recovered_tail is not None
        assert s2.load_log() == entries(1, 4)
        s2.append_log(entries(5, 5))
    with FileStorage(d) as s3:
        assert s3.load_log() == entries(1, 5)


@pytest.mark.integration
@fuse
@pytest.mark.parametrize("target", CORRUPTION_TARGETS)
def test_corrupted_durable_data_is_refused_naming_file_and_offset(
    disk: DiskMount, target: str
) -> None:
    d = disk.mountpoint / "data"
    with FileStorage(d) as s:
        s.save_state(HardState(2, NodeId("a")))
        for i in range(1, 8):
            s.append_log(entries(i, i))
        s.save_snapshot(Snapshot(SnapshotMeta(3, 1, CONF), b"state machine image" * 10))
    spot = pick_corruption(disk.backing / "data", target, random.Random(3))
    disk.call("corrupt", path="data/" + spot.path, offset=spot.offset, mask=0x10)
    with pytest.raises(StorageCorrupted) as exc, FileStorage(d) as s:
        s.load_snapshot()  # what a node does at start
    assert exc.value.path == d / spot.path
    assert exc.value.offset is not None
    assert f"{d / spot.path} at byte offset {exc.value.offset}" in str(exc.value)
    if spot.record >= 0:
        assert exc.value.offset == spot.record


@pytest.mark.integration
@fuse
@pytest.mark.parametrize(("errno_name", "ops"), [("EIO", ["fsync"]), ("ENOSPC", ["write"])])
def test_a_failed_append_stops_the_writer_and_loses_nothing_acknowledged(
    disk: DiskMount, errno_name: str, ops: list[str]
) -> None:
    d = disk.mountpoint / "data"
    s = FileStorage(d)
    try:
        s.append_log(entries(1, 3))
        disk.call("fail", errno=errno_name, ops=ops)
        with pytest.raises(StorageError, match=errno_name):
            s.append_log(entries(4, 4))
        disk.call("clear")
        with pytest.raises(StorageError, match="failed earlier"):  # no retry on a bad disk
            s.append_log(entries(4, 4))
    finally:
        s.close()
    disk.call("lose-unsynced")
    with FileStorage(d) as s2:  # restarts once the disk works again
        assert s2.load_log() == entries(1, 3)
        s2.append_log(entries(4, 5))
        assert s2.load_log() == entries(1, 5)


def test_read_data_dir_reports_a_corrupted_last_record(tmp_path: Path) -> None:
    with FileStorage(tmp_path) as s:
        s.append_log(entries(1, 4))
    spot = pick_corruption(tmp_path, "last-record", random.Random(1))
    path = tmp_path / spot.path
    data = bytearray(path.read_bytes())
    data[spot.offset] ^= 0x04
    path.write_bytes(bytes(data))
    with pytest.raises(StorageCorrupted, match=f"offset {spot.record}"):
        read_data_dir(tmp_path)


# ==== a full disk: restart with little space, and give space back =============================


def _wal_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in (directory / "wal").glob("*.wal"))


def test_a_snapshot_gives_back_the_space_of_a_last_segment_below_the_segment_size(
    tmp_path: Path,
) -> None:
    command = b"x" * 1000
    with FileStorage(tmp_path) as s:  # 64 MiB segments: everything stays in the first
        for first in range(1, 6001, 500):
            s.append_log([LogEntry(i, 1, command) for i in range(first, first + 500)])
        assert _wal_bytes(tmp_path) > 6_000_000
        s.save_snapshot(Snapshot(SnapshotMeta(5990, 1, CONF), b"image"))
        assert _wal_bytes(tmp_path) < 100_000
        assert [e.index for e in s.load_log()] == list(range(5991, 6001))
        s.append_log([LogEntry(6001, 2, b"next")])
    with FileStorage(tmp_path) as s:
        log = s.load_log()
        assert [e.index for e in log] == list(range(5991, 6002))
        assert log[-1] == LogEntry(6001, 2, b"next")


def test_a_crash_in_the_middle_of_giving_space_back_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    command = b"y" * 1000
    with FileStorage(tmp_path) as s:
        for first in range(1, 5001, 1000):
            s.append_log([LogEntry(i, 1, command) for i in range(first, first + 1000)])

    def crash(self: wal.WalWriter, count: int) -> None:
        if count > 0:
            raise StorageError("crashed before deleting the old segment")

    s = FileStorage(tmp_path)
    monkeypatch.setattr(wal.WalWriter, "remove_prefix", crash)
    with pytest.raises(StorageError, match="crashed"):
        s.save_snapshot(Snapshot(SnapshotMeta(4900, 1, CONF), b"image"))
    s.close()
    monkeypatch.undo()
    assert len(list((tmp_path / "wal").glob("*.wal"))) == 2  # the old one and the new one
    with FileStorage(tmp_path) as s2:
        assert [e.index for e in s2.load_log()] == list(range(4901, 5001))


def test_a_nearly_full_disk_preallocates_only_what_an_append_needs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FileStorage(tmp_path) as s:
        s.append_log(entries(1, 3))
    (seg,) = sorted((tmp_path / "wal").glob("*.wal"))
    room = seg.stat().st_size + 300  # the disk has 300 bytes left beyond the segment
    real_pwrite = os.pwrite

    def pwrite(fd: int, data: bytes | memoryview, offset: int) -> int:
        if offset + len(data) > room:
            raise OSError(28, os.strerror(28))
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(wal.os, "pwrite", pwrite)
    with FileStorage(tmp_path, segment_size=10 << 20) as s:
        filler = wal.PREALLOC_MIN - wal.data_end(seg.read_bytes()) - 8 - wal.BODY.size
        s.append_log([LogEntry(4, 1, b"f" * filler)])  # fills the preallocated chunk
        assert seg.stat().st_size <= room
        s.append_log([LogEntry(5, 1, b"after")])  # needs more: gets exactly its room
        assert seg.stat().st_size <= room
    monkeypatch.undo()
    with FileStorage(tmp_path) as s:
        assert [e.index for e in s.load_log()] == [1, 2, 3, 4, 5]


# ==== format version 2: the trailer makes a short unwritten tail unambiguous ===================


def test_a_tear_leaving_a_few_bytes_in_the_next_sector_is_torn(tmp_path: Path) -> None:
    """Found by a chaos run (disk-torn-write): a record of 88 bytes from offset 4039 torn at
    4096 left 31 zero bytes in the next sector; a record ends in TRAILER, so those zeros are
    unwritten space, never the record's own."""
    with FileStorage(tmp_path) as s:
        s.append_log(entries(1, 2))
    seg, rec = _last_record(tmp_path)
    clean = bytearray(seg.read_bytes())
    for tail in (1, 5, 31, 63):  # bytes of the record that fall into the next sector
        record = wal.encode_entry(LogEntry(3, 1, b"t" * 80))
        start = wal.SECTOR * 2 - (len(record) - tail)
        assert start > rec.end
        data = bytearray(clean)
        data[rec.end : rec.end + 4] = bytes(4)  # keep the log clean up to the new record
        pad = wal.encode_entry(LogEntry(3, 1, b"p" * (start - rec.end - 26 - 1)))
        assert len(pad) == start - rec.end
        data[rec.end : start] = pad
        data[start : start + len(record) - tail] = record[: len(record) - tail]
        records, torn = wal.scan_segment(seg, bytes(data), last=True)
        assert torn is not None, tail
        assert torn.offset == start
        assert records[-1].index == 3  # the pad


def v1_record(index: int, term: int, command: bytes) -> bytes:
    """A record as format version 1 wrote it (no trailer)."""
    import google_crc32c

    body = wal.BODY.pack(wal.RT_ENTRY, index, term, 0) + command
    length = len(body).to_bytes(4, "little")
    crc = google_crc32c.extend(google_crc32c.value(length), body)
    return length + crc.to_bytes(4, "little") + body


def test_a_version_1_log_is_read_and_new_records_go_to_a_version_2_segment(
    tmp_path: Path,
) -> None:
    wal_dir = tmp_path / "wal"
    wal_dir.mkdir()
    old = wal_dir / wal.segment_name(1)
    old.write_bytes(
        wal.SEGMENT_MAGIC_V1 + b"".join(v1_record(i, 1, b"old%d" % i) for i in range(1, 4))
    )
    with FileStorage(tmp_path) as s:
        assert [e.command for e in s.load_log()] == [b"old1", b"old2", b"old3"]
        s.append_log([LogEntry(4, 1, b"new4")])
    segments = sorted(wal_dir.glob("*.wal"))
    assert [p.read_bytes()[:8] for p in segments] == [wal.SEGMENT_MAGIC_V1, wal.SEGMENT_MAGIC]
    with FileStorage(tmp_path) as s:
        assert [e.command for e in s.load_log()] == [b"old1", b"old2", b"old3", b"new4"]
    # in a version 1 segment a record may end in zeros of its own: a flip there is corruption
    data = bytearray(wal.SEGMENT_MAGIC_V1 + v1_record(1, 1, b"x" * 600 + bytes(40)))
    data[20] ^= 1
    with pytest.raises(StorageCorrupted, match="complete record"):
        wal.scan_segment(old, bytes(data) + bytes(4096), last=True)
