"""``orbital inspect``: output, options and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.cli import main
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
from raft.storage import FileStorage


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "n1"
    with FileStorage(directory) as s:
        s.save_state(HardState(4, NodeId("n2")))
        s.append_log([LogEntry(i, 1 + i // 50, f"put k{i} v{i}".encode()) for i in range(1, 121)])
        s.append_log([LogEntry(121, 4, b"", EntryKind.NOOP)])
        conf = ConfState(frozenset({NodeId("n1"), NodeId("n2")}), frozenset({NodeId("n3")}))
        s.save_snapshot(Snapshot(SnapshotMeta(10, 1, conf), b"image"))
    return directory


def inspect(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["inspect", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_text_output_shows_state_and_last_entries(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = inspect(capsys, str(data_dir))
    assert code == 0
    assert "term 4, voted for n2" in out
    assert "index 10, term 1, voters n1,n2, learners n3" in out
    assert "111 entries (11..121)" in out
    assert "showing 50 (72..121)" in out
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert len(rows) == 50
    assert rows[-1][:4] == ["121", "4", "noop", "0"]
    assert rows[0][:5] == ["72", "2", "normal", "11", "put"]


def test_from_and_limit(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = inspect(capsys, str(data_dir), "--from", "20", "--limit", "3", "--json")
    assert code == 0
    doc = json.loads(out)
    assert [e["index"] for e in doc["entries"]] == [20, 21, 22]
    assert doc["entries"][0] == {
        "index": 20, "term": 1, "kind": "normal", "size": 11, "preview": "put k20 v20",
    }  # fmt: skip
    assert doc["log"] == {"first_index": 11, "last_index": 121, "count": 111}
    assert doc["hard_state"] == {"term": 4, "voted_for": "n2"}
    assert doc["snapshot"]["index"] == 10
    assert doc["torn_tail"] is None
    code, out, _ = inspect(capsys, str(data_dir), "--limit", "0", "--json")
    assert len(json.loads(out)["entries"]) == 111


def test_corrupted_exits_1_naming_file_and_offset(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (seg,) = sorted((data_dir / "wal").glob("*.wal"))
    data = bytearray(seg.read_bytes())
    data[100] ^= 0x10
    seg.write_bytes(bytes(data))
    code, _, err = inspect(capsys, str(data_dir))
    assert code == 1
    assert str(seg) in err
    assert "byte offset" in err


def test_torn_tail_is_reported(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (seg,) = sorted((data_dir / "wal").glob("*.wal"))
    data = seg.read_bytes()
    seg.write_bytes(data[: wal.data_end(data) - 3])  # cut into the last record
    code, out, _ = inspect(capsys, str(data_dir))
    assert code == 0
    assert "torn tail:" in out
    assert str(seg) in out


def test_missing_dir_and_bad_arguments_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = inspect(capsys, str(tmp_path / "missing"))
    assert code == 2
    assert "no such directory" in err
    code, _, _ = inspect(capsys, str(tmp_path), "--limit", "-1")
    assert code == 2
    with pytest.raises(SystemExit) as info:
        main(["inspect", str(tmp_path), "--limit", "many"])
    assert info.value.code == 2


def test_works_beside_an_open_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with FileStorage(tmp_path) as s:
        s.append_log([LogEntry(1, 1, b"\x00\xffbinary")])
        code, out, _ = inspect(capsys, str(tmp_path))
    assert code == 0
    assert "1 entries (1..1)" in out
    assert "..binary" in out
