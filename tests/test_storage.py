"""Storage contract tests, run against MemoryStorage and FileStorage alike, plus the
FileStorage-specific rules: recovery of a torn tail, corruption, errors, the lock, compaction.
"""

from __future__ import annotations

import errno
import os
import struct
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raft import wal
from raft.core.types import (
    ConfState,
    EntryKind,
    HardState,
    LogEntry,
    NodeId,
    Snapshot,
    SnapshotMeta,
)
from raft.storage import (
    FileStorage,
    MemoryStorage,
    Storage,
    StorageCorrupted,
    StorageError,
    read_data_dir,
)

CONF = ConfState(frozenset({NodeId("a"), NodeId("b"), NodeId("c")}))


def entries(first: int, last: int, term: int = 1) -> list[LogEntry]:
    return [LogEntry(i, term, f"cmd-{i}-{term}".encode()) for i in range(first, last + 1)]


def snap(index: int, term: int, data: bytes = b"image") -> Snapshot:
    return Snapshot(SnapshotMeta(index, term, CONF), data)


class Harness:
    """A store under test and a way to 'restart' it (a new FileStorage on the same dir)."""

    def __init__(self, kind: str, directory: Path, segment_size: int) -> None:
        self.kind = kind
        self.directory = directory
        self.segment_size = segment_size
        self.store: Storage = self._open()

    def _open(self) -> Storage:
        if self.kind == "memory":
            return MemoryStorage()
        return FileStorage(self.directory, segment_size=self.segment_size)

    def reopen(self) -> Storage:
        if self.kind == "file":
            self.store.close()
            self.store = self._open()
        return self.store


@pytest.fixture(params=["memory", "file"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    h = Harness(request.param, tmp_path / "node", segment_size=512)
    yield h
    h.store.close()


# ------------------------------------------------------------------------------- contract


def test_fresh_store_is_empty(harness: Harness) -> None:
    s = harness.store
    assert s.load_state() == HardState()
    assert s.load_log() == []
    assert s.load_snapshot() is None


def test_hard_state_survives_reopen(harness: Harness) -> None:
    harness.store.save_state(HardState(3, NodeId("b")))
    harness.store.save_state(HardState(4, None))
    assert harness.reopen().load_state() == HardState(4, None)


def test_append_and_reload(harness: Harness) -> None:
    log = [
        *entries(1, 3),
        LogEntry(4, 2, b"", EntryKind.NOOP),
        LogEntry(5, 2, b"{}", EntryKind.CONFIG),
    ]
    harness.store.append_log(log[:2])
    harness.store.append_log(log[2:])
    assert harness.store.load_log() == log
    assert harness.reopen().load_log() == log


def test_append_replaces_suffix(harness: Harness) -> None:
    harness.store.append_log(entries(1, 10))
    harness.store.append_log(entries(6, 7, term=2))
    expected = entries(1, 5) + entries(6, 7, term=2)
    assert harness.store.load_log() == expected
    assert harness.reopen().load_log() == expected


def test_append_rejects_gaps_and_non_contiguous(harness: Harness) -> None:
    harness.store.append_log(entries(1, 3))
    with pytest.raises(ValueError, match="gap"):
        harness.store.append_log(entries(5, 6))
    with pytest.raises(ValueError, match="contiguous"):
        harness.store.append_log([*entries(4, 4), *entries(6, 6)])
    assert harness.reopen().load_log() == entries(1, 3)


def test_truncate_log_after(harness: Harness) -> None:
    harness.store.append_log(entries(1, 10))
    harness.store.truncate_log_after(4)
    harness.store.truncate_log_after(8)  # no-op
    assert harness.store.load_log() == entries(1, 4)
    assert harness.reopen().load_log() == entries(1, 4)
    harness.store.append_log(entries(5, 6, term=3))
    assert harness.reopen().load_log() == entries(1, 4) + entries(5, 6, term=3)
    harness.store.truncate_log_after(0)
    assert harness.reopen().load_log() == []


def test_snapshot_keeps_log_that_continues_it(harness: Harness) -> None:
    harness.store.append_log(entries(1, 40))
    harness.store.save_snapshot(snap(30, 1))
    assert harness.store.load_log() == entries(31, 40)
    s = harness.reopen()
    assert s.load_log() == entries(31, 40)
    assert s.load_snapshot() == snap(30, 1)
    s.append_log(entries(41, 42))
    assert harness.reopen().load_log() == entries(31, 42)


def test_snapshot_discards_log_that_differs(harness: Harness) -> None:
    harness.store.append_log(entries(1, 40))
    harness.store.save_snapshot(snap(30, 7))
    assert harness.store.load_log() == []
    s = harness.reopen()
    assert s.load_log() == []
    s.append_log(entries(31, 33, term=7))
    assert harness.reopen().load_log() == entries(31, 33, term=7)


def test_snapshot_beyond_log_then_append(harness: Harness) -> None:
    harness.store.append_log(entries(1, 5))
    harness.store.save_snapshot(snap(20, 2))
    assert harness.reopen().load_log() == []
    harness.store.append_log(entries(21, 22, term=2))
    assert harness.reopen().load_log() == entries(21, 22, term=2)


def test_snapshot_at_log_end_then_append(harness: Harness) -> None:
    harness.store.append_log(entries(1, 5))
    harness.store.save_snapshot(snap(5, 1))
    assert harness.reopen().load_log() == []
    harness.store.append_log(entries(6, 7))
    assert harness.reopen().load_log() == entries(6, 7)


def test_log_starting_right_after_snapshot_is_kept(harness: Harness) -> None:
    harness.store.save_snapshot(snap(10, 1))
    harness.store.append_log(entries(11, 12))
    harness.store.save_snapshot(snap(10, 1, b"again"))
    assert harness.reopen().load_log() == entries(11, 12)
    assert harness.store.load_snapshot() == snap(10, 1, b"again")


# ------------------------------------------------------------- model test against memory

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(0, 6), st.integers(1, 8), st.integers(0, 2)),
        st.tuples(st.just("truncate"), st.integers(-3, 1)),
        st.tuples(st.just("snapshot"), st.integers(-4, 3), st.integers(0, 1)),
        st.tuples(st.just("reopen")),
        st.tuples(st.just("state"), st.integers(0, 9)),
    ),
    max_size=30,
)


def _both(store: Storage, model: MemoryStorage, act: Callable[[Storage], None]) -> None:
    """Do ``act`` on both stores: both must succeed, or both refuse with ValueError."""
    outcomes = []
    for target in (model, store):
        try:
            act(target)
            outcomes.append("ok")
        except ValueError:
            outcomes.append("ValueError")
    assert outcomes[0] == outcomes[1], f"memory: {outcomes[0]}, file: {outcomes[1]}"


def _apply(store: Storage, model: MemoryStorage, op: tuple[object, ...], term: int) -> None:
    """Apply ``op`` to both stores; offsets are relative to the model's last index."""
    mlog = model.load_log()
    last = mlog[-1].index if mlog else (s.meta.index if (s := model.load_snapshot()) else 0)
    name = op[0]
    if name == "append":
        _, back, count, bump = op
        assert isinstance(back, int)
        assert isinstance(count, int)
        assert isinstance(bump, int)
        first = max(1, last + 1 - back)
        batch = entries(first, first + count - 1, term + bump)
        _both(store, model, lambda s: s.append_log(batch))
    elif name == "truncate":
        index = max(0, last + int(str(op[1])))
        store.truncate_log_after(index)
        model.truncate_log_after(index)
    elif name == "snapshot":
        # as in Raft, snapshots never go back, and two at one index agree on its term
        prev = model.load_snapshot()
        index = max(1, last + int(str(op[1])), prev.meta.index if prev else 0)
        at = [e.term for e in mlog if e.index == index]
        if prev is not None and prev.meta.index == index:
            s = snap(index, prev.meta.term)
        else:
            s = snap(index, (at[0] if at else term) + int(str(op[2])))
        store.save_snapshot(s)
        model.save_snapshot(s)
    elif name == "state":
        hs = HardState(int(str(op[1])), NodeId("x"))
        store.save_state(hs)
        model.save_state(hs)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS)
def test_file_storage_behaves_like_memory_storage(ops: list[tuple[object, ...]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        h = Harness("file", Path(tmp), segment_size=200)
        model = MemoryStorage()
        try:
            for term, op in enumerate(ops, start=1):
                if op[0] == "reopen":
                    h.reopen()
                else:
                    _apply(h.store, model, op, term)
                assert h.store.load_log() == model.load_log()
            h.reopen()
            assert h.store.load_log() == model.load_log()
            assert h.store.load_state() == model.load_state()
            assert h.store.load_snapshot() == model.load_snapshot()
        finally:
            h.store.close()


# ----------------------------------------------------------------- FileStorage specifics


def _segments(directory: Path) -> list[Path]:
    return sorted((directory / "wal").glob("*.wal"))


def test_segments_roll_and_compaction_removes_old_ones(tmp_path: Path) -> None:
    with FileStorage(tmp_path, segment_size=100) as s:
        for i in range(1, 61, 3):
            s.append_log(entries(i, i + 2))
        before = _segments(tmp_path)
        assert len(before) > 5
        s.save_snapshot(snap(50, 1))
        after = _segments(tmp_path)
        assert len(after) < len(before)
        assert s.load_log() == entries(51, 60)
    view = read_data_dir(tmp_path)
    assert view.stored_log[0].index <= 50  # the entry at the snapshot index is kept
    assert view.log == entries(51, 60)
    with FileStorage(tmp_path, segment_size=300) as s:
        assert s.load_log() == entries(51, 60)


def test_second_open_is_refused(tmp_path: Path) -> None:
    with FileStorage(tmp_path), pytest.raises(StorageError, match="locked by pid"):
        FileStorage(tmp_path)
    FileStorage(tmp_path).close()  # released on close


def test_one_sync_per_append(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with FileStorage(tmp_path) as s:
        s.append_log(entries(1, 10))
        calls: list[int] = []
        real_fsync, real_datasync = os.fsync, wal.datasync
        monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real_fsync(fd))[1])
        monkeypatch.setattr(wal, "datasync", lambda fd: (calls.append(fd), real_datasync(fd))[1])
        s.append_log(entries(11, 300))  # fits in the space the first append preallocated
        assert len(calls) == 1
        s.append_log(entries(5, 20, term=2))  # replacing a suffix is an append too
        assert len(calls) == 2
        s.truncate_log_after(7)
        assert len(calls) == 3


def _write_log(directory: Path, count: int) -> None:
    with FileStorage(directory) as s:
        for i in range(1, count + 1):
            s.append_log(entries(i, i))


def _record_offsets(path: Path) -> list[int]:
    records, _ = wal.scan_segment(path, path.read_bytes(), last=True)
    return [r.offset for r in records]


def test_flipped_byte_in_middle_record_is_corruption(tmp_path: Path) -> None:
    _write_log(tmp_path, 10)
    (seg,) = _segments(tmp_path)
    offsets = _record_offsets(seg)
    data = bytearray(seg.read_bytes())
    data[offsets[4] + 20] ^= 0x01
    seg.write_bytes(bytes(data))
    with pytest.raises(StorageCorrupted) as info:
        FileStorage(tmp_path)
    assert info.value.path == seg
    assert info.value.offset == offsets[4]
    assert f"{seg} at byte offset {offsets[4]}" in str(info.value)
    with pytest.raises(StorageCorrupted):
        read_data_dir(tmp_path)


def test_flipped_length_in_middle_record_is_corruption(tmp_path: Path) -> None:
    _write_log(tmp_path, 10)
    (seg,) = _segments(tmp_path)
    offsets = _record_offsets(seg)
    data = bytearray(seg.read_bytes())
    data[offsets[3]] ^= 0x40
    seg.write_bytes(bytes(data))
    with pytest.raises(StorageCorrupted, match=f"offset {offsets[3]}"):
        FileStorage(tmp_path)


@pytest.mark.parametrize("cut", [1, 7, 8, 20, -1])
def test_tail_cut_mid_record_is_recovered(
    tmp_path: Path, cut: int, caplog: pytest.LogCaptureFixture
) -> None:
    _write_log(tmp_path, 10)
    (seg,) = _segments(tmp_path)
    offsets = _record_offsets(seg)
    size = wal.data_end(seg.read_bytes())  # the zero-filled preallocated tail is not data
    with open(seg, "r+b") as f:
        f.truncate(offsets[9] + cut if cut > 0 else size + cut)
    view = read_data_dir(tmp_path)  # read-only: reports, changes nothing
    assert view.torn is not None
    assert view.torn.offset == offsets[9]
    assert view.log == entries(1, 9)
    with FileStorage(tmp_path) as s:
        assert s.recovered_tail is not None
        assert s.recovered_tail.path == seg
        assert s.recovered_tail.offset == offsets[9]
        assert s.load_log() == entries(1, 9)
        s.append_log(entries(10, 11))
    assert "torn" in caplog.text
    with FileStorage(tmp_path) as s:
        assert s.recovered_tail is None
        assert s.load_log() == entries(1, 11)


def test_bad_checksum_on_last_record_is_corruption_not_a_torn_tail(tmp_path: Path) -> None:
    _write_log(tmp_path, 5)
    (seg,) = _segments(tmp_path)
    last = _record_offsets(seg)[-1]
    data = bytearray(seg.read_bytes())
    data[wal.data_end(data) - 1] ^= 0xFF  # the last byte of the last record, fsynced
    seg.write_bytes(bytes(data))
    # every sector of the record was written (records go into zeros): a flipped bit, not a
    # write that did not finish; cutting it would lose an acknowledged entry
    with pytest.raises(StorageCorrupted, match="checksum mismatch in a complete record") as exc:
        FileStorage(tmp_path)
    assert (exc.value.path, exc.value.offset) == (seg, last)
    with pytest.raises(StorageCorrupted):
        read_data_dir(tmp_path)


def test_torn_segment_header_is_recovered(tmp_path: Path) -> None:
    with FileStorage(tmp_path, segment_size=100) as s:
        s.append_log(entries(1, 3))
    first = tmp_path / "wal" / wal.segment_name(1)
    os.truncate(first, wal.data_end(first.read_bytes()))  # sealed, as before a new segment
    (tmp_path / "wal" / wal.segment_name(2)).write_bytes(wal.SEGMENT_MAGIC[:3])
    with FileStorage(tmp_path, segment_size=100) as s:
        assert s.recovered_tail is not None
        assert s.recovered_tail.offset == 0
        s.append_log(entries(4, 4))
    with FileStorage(tmp_path) as s:
        assert s.load_log() == entries(1, 4)


def test_corruption_in_non_final_segment(tmp_path: Path) -> None:
    with FileStorage(tmp_path, segment_size=100) as s:
        for i in range(1, 8):
            s.append_log(entries(i, i))
    first = _segments(tmp_path)[0]
    with open(first, "r+b") as f:
        f.truncate(first.stat().st_size - 3)  # torn, but not in the last segment
    with pytest.raises(StorageCorrupted, match=str(first)):
        FileStorage(tmp_path)


def test_corrupted_small_files(tmp_path: Path) -> None:
    with FileStorage(tmp_path) as s:
        s.save_state(HardState(2, NodeId("a")))
        s.save_snapshot(snap(3, 1, b"x" * 100))
    path = tmp_path / "snapshot"
    data = bytearray(path.read_bytes())
    data[-5] ^= 1
    path.write_bytes(bytes(data))
    with FileStorage(tmp_path) as s, pytest.raises(StorageCorrupted, match="snapshot"):
        s.load_snapshot()
    hs = tmp_path / "hardstate"
    hs.write_bytes(hs.read_bytes()[:-1] + b"?")
    with pytest.raises(StorageCorrupted, match="hardstate at byte offset 8"):
        FileStorage(tmp_path)


def _failing(code: int) -> Callable[..., int]:
    def fail(*args: object) -> int:
        raise OSError(code, os.strerror(code))

    return fail


@pytest.mark.parametrize(
    ("where", "code", "message"),
    [
        ((os, "write"), errno.ENOSPC, r"write .*\.wal failed: No space left .*ENOSPC"),
        ((wal, "datasync"), errno.EIO, r"fdatasync .*0001\.wal failed.*EIO"),
    ],
    ids=["disk-full-on-write", "eio-on-fdatasync"],
)
def test_failed_append_stops_the_writer_and_loses_nothing_acknowledged(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    where: tuple[object, str],
    code: int,
    message: str,
) -> None:
    s = FileStorage(tmp_path)
    s.append_log(entries(1, 3))
    monkeypatch.setattr(*where, _failing(code))
    with pytest.raises(StorageError, match=message):
        s.append_log(entries(4, 5))
    monkeypatch.undo()
    with pytest.raises(StorageError, match="failed earlier"):
        s.append_log(entries(4, 5))
    s.close()
    with FileStorage(tmp_path) as s:
        assert s.load_log() == entries(1, 3)


def test_preallocation_failure_on_append(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with FileStorage(tmp_path) as s:
        monkeypatch.setattr(os, "fsync", _failing(errno.EIO))
        with pytest.raises(StorageError, match=r"preallocate .*0001\.wal failed.*EIO"):
            s.append_log(entries(1, 1))
    monkeypatch.undo()
    with FileStorage(tmp_path) as s:
        assert s.recovered_tail is None
        assert s.load_log() == []


def test_disk_full_on_hard_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with FileStorage(tmp_path) as s:
        s.save_state(HardState(1, None))
        monkeypatch.setattr(os, "write", _failing(errno.ENOSPC))
        with pytest.raises(StorageError, match=r"hardstate\.tmp failed: No space"):
            s.save_state(HardState(2, NodeId("b")))
        monkeypatch.undo()
        assert not (tmp_path / "hardstate.tmp").exists()
    with FileStorage(tmp_path) as s:
        assert s.load_state() == HardState(1, None)


def test_permission_denied_on_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "open", _failing(errno.EACCES))
    with pytest.raises(StorageError, match=r"Permission denied.*EACCES"):
        FileStorage(tmp_path)


def test_read_data_dir_needs_no_lock_and_changes_nothing(tmp_path: Path) -> None:
    with FileStorage(tmp_path) as s:
        s.save_state(HardState(5, NodeId("c")))
        s.append_log(entries(1, 4))
        view = read_data_dir(tmp_path)
        assert view.hard_state == HardState(5, NodeId("c"))
        assert view.log == entries(1, 4)
        assert view.torn is None
    with pytest.raises(StorageError, match="no such data directory"):
        read_data_dir(tmp_path / "missing")


def test_partial_record_followed_by_zeros_is_torn(tmp_path: Path) -> None:
    _write_log(tmp_path, 3)
    (seg,) = _segments(tmp_path)
    end = _scan_end(seg, last=True)
    record = wal.encode_entry(LogEntry(4, 1, b"c" * 3000))
    cut = (end // wal.SECTOR + 2) * wal.SECTOR - end  # two sectors written, the rest not
    with open(seg, "r+b") as f:  # as after a power loss: whole sectors, zeros after them
        f.seek(end)
        f.write(record[:cut])
    with FileStorage(tmp_path) as s:
        assert s.recovered_tail is not None
        assert s.recovered_tail.offset == end
        assert s.load_log() == entries(1, 3)


def test_the_last_segment_is_preallocated_and_its_zero_tail_is_the_clean_end(
    tmp_path: Path,
) -> None:
    with FileStorage(tmp_path) as s:
        s.append_log(entries(1, 5))
        (seg,) = _segments(tmp_path)
        data = seg.read_bytes()
        end = wal.data_end(data)
        assert len(data) == wal.PREALLOC_MIN  # zero-filled ahead of the records
        assert _record_offsets(seg)[-1] < end
        size_after_first = len(data)
        s.append_log(entries(6, 9))  # written into the zeros: the size does not change
        assert seg.stat().st_size == size_after_first
    with FileStorage(tmp_path) as s:
        assert s.recovered_tail is None  # zeros after the records are not a torn write
        assert seg.stat().st_size == size_after_first  # and are kept
        s.append_log(entries(10, 10))
        assert s.load_log() == entries(1, 10)
    assert read_data_dir(tmp_path).torn is None


def test_preallocation_doubles_up_to_its_cap_and_fits_a_big_append(tmp_path: Path) -> None:
    big = [LogEntry(1, 1, b"x" * (wal.PREALLOC_MIN * 3))]
    with FileStorage(tmp_path) as s:
        s.append_log(big)
        (seg,) = _segments(tmp_path)
        assert seg.stat().st_size == wal.data_end(seg.read_bytes())  # exactly what it needed
        size = seg.stat().st_size
        s.append_log(entries(2, 2))
        assert seg.stat().st_size == 2 * size  # one more chunk as big as the segment
        command = b"y" * (wal.PREALLOC_MAX // 2)
        for i in range(3, 12):
            before = seg.stat().st_size
            s.append_log([LogEntry(i, 1, command)])
            assert seg.stat().st_size - before <= max(wal.PREALLOC_MAX, before)
        assert s.load_log()[0] == big[0]
        assert len(s.load_log()) == 11


def test_sealed_segments_have_no_zero_tail(tmp_path: Path) -> None:
    with FileStorage(tmp_path, segment_size=300) as s:
        for i in range(1, 40):
            s.append_log(entries(i, i))
    segments = _segments(tmp_path)
    assert len(segments) > 2
    for seg in segments[:-1]:  # cut to their records before the next segment was created
        assert seg.stat().st_size == _scan_end(seg)
    first = segments[0]
    with open(first, "ab") as f:  # zeros after a sealed segment's records: not a clean end
        f.write(bytes(64))
    with pytest.raises(StorageCorrupted, match=str(first)):
        FileStorage(tmp_path)


def _scan_end(seg: Path, *, last: bool = False) -> int:
    records, torn = wal.scan_segment(seg, seg.read_bytes(), last=last)
    assert torn is None
    return records[-1].end


def test_torn_write_into_preallocated_space_is_cut_then_appends_go_on(tmp_path: Path) -> None:
    _write_log(tmp_path, 4)
    (seg,) = _segments(tmp_path)
    end = _scan_end(seg, last=True)
    record = wal.encode_entry(LogEntry(5, 1, b"lost" * 300))
    kept = (end // wal.SECTOR + 1) * wal.SECTOR - end  # its first sector persisted
    with open(seg, "r+b") as f:  # a crash persisted part of the record, zeros after it
        f.seek(end)
        f.write(record[:kept])
    with FileStorage(tmp_path) as s:
        assert s.recovered_tail is not None
        assert s.recovered_tail.offset == end
        assert s.recovered_tail.dropped == kept
        assert seg.stat().st_size == end  # the cut is the file's end, made durable
        s.append_log(entries(5, 6))
    with FileStorage(tmp_path) as s:
        assert s.recovered_tail is None
        assert s.load_log() == entries(1, 6)


def _scan(data: bytes) -> list[wal.Record]:
    records, torn = wal.scan_segment(Path("seg"), wal.SEGMENT_MAGIC + data, last=True)
    assert torn is None
    return records


def test_an_append_of_several_entries_is_one_batch_record(monkeypatch: pytest.MonkeyPatch) -> None:
    kinds = list(EntryKind)
    run = [
        LogEntry(i, 7 + i // 3, bytes([i]) * (i * 13 % 40), kinds[i % len(kinds)])
        for i in range(5, 30)
    ]
    data, terms = wal.encode_entries(run)
    assert list(terms) == [e.term for e in run]
    (record,) = _scan(data)
    assert (record.rtype, record.index, record.batch) == (wal.RT_BATCH, 5, run)
    # one entry is a plain ENTRY record
    one, one_term = wal.encode_entries(run[:1])
    assert (one, list(one_term)) == (wal.encode_entry(run[0]), [run[0].term])
    empty, no_terms = wal.encode_entries([])
    assert (empty, list(no_terms)) == (b"", [])
    with pytest.raises(ValueError, match="not contiguous: 6 then 8"):
        wal.encode_entries([*run[:2], *run[3:]])
    # commands over the batch limit are split into several records, in order
    monkeypatch.setattr(wal, "BATCH_LIMIT", 100)
    data, _ = wal.encode_entries(run)
    records = _scan(data)
    assert len(records) > 3
    assert [e for r in records for e in (r.batch or [wal_entry(r)])] == run


def wal_entry(record: wal.Record) -> LogEntry:
    return LogEntry(record.index, record.term, record.command, EntryKind(record.kind))


@pytest.mark.parametrize(
    "payload",
    [
        b"\x01",  # no room for the count
        (2).to_bytes(4, "little") + b"\x00" * 10,  # count says 2, too short for their fields
        (2).to_bytes(4, "little") + struct.pack("<2Q2B2I", 1, 1, 0, 0, 3, 3) + b"abc",  # 6 != 3
        (2).to_bytes(4, "little") + struct.pack("<2Q2B2I", 1, 1, 0, 9, 1, 1) + b"ab",  # kind 9
    ],
)
def test_a_checksummed_but_malformed_batch_is_corruption(tmp_path: Path, payload: bytes) -> None:
    record = wal._record(wal.RT_BATCH, 1, 1, 0, payload)
    good = wal.encode_entry(LogEntry(3, 1, b"x"))
    with pytest.raises(StorageCorrupted, match="batch record") as exc:
        wal.scan_segment(tmp_path / "seg", wal.SEGMENT_MAGIC + record + good, last=True)
    assert exc.value.offset == len(wal.SEGMENT_MAGIC)


# ------------------------------------------- reading only what a snapshot does not cover


def _check_after(waldir: Path) -> None:
    """``read_wal(after=k)`` returns exactly the entries above ``k`` of a full read."""
    full = wal.read_wal(waldir).entries
    top = full[-1].index if full else 0
    for after in sorted({0, 1, top // 3, top // 2, top - 1, top, top + 5}):
        got = wal.read_wal(waldir, after=max(0, after)).entries
        assert got == [e for e in full if e.index > after], f"after={after}"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS)
def test_reading_only_entries_above_an_index_matches_a_full_read(
    ops: list[tuple[object, ...]],
) -> None:
    """What the log's rewrite after a snapshot reads (``read_wal(after=...)``, which leaves
    the batches it covers undecoded) is the tail of a full read, whatever the appends,
    truncations and snapshots before it."""
    with tempfile.TemporaryDirectory() as tmp:
        h = Harness("file", Path(tmp), segment_size=1 << 20)  # one segment: no rewrite
        model = MemoryStorage()
        try:
            for term, op in enumerate(ops, start=1):
                if op[0] == "snapshot":
                    continue  # snapshots rewrite the log; here only the reading is tested
                if op[0] == "reopen":
                    h.reopen()
                else:
                    _apply(h.store, model, op, term)
                _check_after(Path(tmp) / "wal")
        finally:
            h.store.close()


def _batches_then_truncate(directory: Path) -> Path:
    store = FileStorage(directory)
    store.append_log(entries(1, 4))
    store.append_log(entries(5, 8))
    store.truncate_log_after(6)
    store.append_log(entries(7, 9, term=2))
    store.close()
    return directory / "wal"


def test_reading_above_an_index_keeps_the_batch_that_ends_right_above_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    waldir = _batches_then_truncate(tmp_path / "node")
    _check_after(waldir)
    got = wal.read_wal(waldir, after=3).entries
    assert [(e.index, e.term) for e in got] == [(4, 1), (5, 1), (6, 1), (7, 2), (8, 2), (9, 2)]
    # teeth: a skip test off by one (a batch ending at after + 1 left undecoded) is caught
    real = wal.batch_count
    monkeypatch.setattr(wal, "batch_count", lambda rec: real(rec) - 1)
    with pytest.raises(AssertionError, match="after="):
        _check_after(waldir)
