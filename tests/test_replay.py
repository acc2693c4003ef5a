"""Storage replay across nodes: reading data directories and planted invariant violations."""

from __future__ import annotations

import json
import time
from pathlib import Path

from harness.replay import read_node, replay_cluster
from raft import wal
from raft.core.types import ConfState, HardState, LogEntry, NodeId, Snapshot, SnapshotMeta
from raft.storage import FileStorage

CONF = ConfState(frozenset({NodeId("a"), NodeId("b"), NodeId("c")}))


def spec(terms: list[int], tag: str = "") -> list[LogEntry]:
    """Entries 1.. with the given terms; ``tag`` changes the commands of a diverging copy."""
    return [LogEntry(i, t, f"cmd{i}{tag}".encode()) for i, t in enumerate(terms, start=1)]


def make_node(
    directory: Path,
    log: list[LogEntry],
    *,
    term: int | None = None,
    snapshot: tuple[int, int] | None = None,
) -> Path:
    with FileStorage(directory, segment_size=4096) as s:
        s.save_state(HardState(max((e.term for e in log), default=0) if term is None else term))
        for entry in log:  # one record per entry, as a node appending one command at a time
            s.append_log([entry])
        if snapshot is not None:
            s.save_snapshot(Snapshot(SnapshotMeta(*snapshot, CONF), b"image"))
    return directory


def cluster(tmp_path: Path, logs: dict[str, list[LogEntry]]) -> dict[str, Path]:
    return {nid: make_node(tmp_path / nid, log) for nid, log in logs.items()}


def kinds(result_violations: list[object]) -> set[str]:
    return {getattr(v, "kind") for v in result_violations}  # noqa: B009


def test_identical_logs_are_valid(tmp_path: Path) -> None:
    log = spec([1, 1, 2, 2, 3])
    dirs = cluster(tmp_path, {"a": log, "b": log, "c": log[:3]})
    result = replay_cluster(dirs)
    assert result.valid, result.violations
    assert result.committed_index == 5
    assert result.committed_inferred
    assert result.nodes["c"].last_index == 3
    assert json.loads(result.to_json())["valid"] is True


def test_uncommitted_divergence_is_allowed(tmp_path: Path) -> None:
    b = [*spec([1, 1]), *spec([1, 1, 3], "x")[2:]]
    dirs = cluster(tmp_path, {"a": spec([1, 1, 2]), "b": b, "c": spec([1, 1])})
    result = replay_cluster(dirs)
    assert result.valid, result.violations
    assert result.committed_index == 2


def test_log_matching_violation(tmp_path: Path) -> None:
    a = spec([1, 1, 1, 2, 2])
    b = [*a[:2], LogEntry(3, 1, b"other"), *a[3:]]  # same (index, term) at 5, differ at 3
    result = replay_cluster(cluster(tmp_path, {"a": a, "b": b}), committed_index=0)
    (v,) = result.violations
    assert v.kind == "log_matching"
    assert v.nodes == ("a", "b")
    assert v.index == 3
    assert "other" in v.detail


def test_committed_divergence(tmp_path: Path) -> None:
    a = spec([1, 1, 1, 1, 1, 1])
    b = [*a[:3], *spec([1, 1, 1, 2, 2, 2], "x")[3:]]
    dirs = cluster(tmp_path, {"a": a, "b": b, "c": a})
    result = replay_cluster(dirs)
    assert result.committed_index == 6
    assert {(v.kind, v.nodes, v.index) for v in result.violations} == {
        ("committed_divergence", ("a", "b"), 4),
        ("committed_divergence", ("b", "c"), 4),
    }
    # with a committed index given below the divergence, there is none
    assert replay_cluster(dirs, committed_index=3).valid


def test_per_node_invariants(tmp_path: Path) -> None:
    dirs = {
        "a": make_node(tmp_path / "a", spec([1, 2, 1])),
        "b": make_node(tmp_path / "b", spec([1, 2, 3]), term=2),
    }
    found = {(v.kind, v.nodes) for v in replay_cluster(dirs, committed_index=0).violations}
    assert ("terms_monotonic", ("a",)) in found
    assert ("hard_state_term", ("b",)) in found


def test_snapshot_conflict_and_snapshots_in_comparison(tmp_path: Path) -> None:
    log = spec([1, 1, 2, 2, 2, 3])
    dirs = {
        "a": make_node(tmp_path / "a", log, snapshot=(4, 2)),
        "b": make_node(tmp_path / "b", log),
        "c": make_node(tmp_path / "c", spec([1, 1, 2, 5]), term=5),
    }
    result = replay_cluster(dirs, committed_index=3)
    assert result.nodes["a"].first_index == 5
    found = {(v.kind, v.nodes, v.index) for v in result.violations}
    assert found == {("snapshot_conflict", ("a", "c"), 4)}


def test_corrupted_node_is_a_violation(tmp_path: Path) -> None:
    dirs = cluster(tmp_path, {"a": spec([1] * 5), "b": spec([1] * 5)})
    (seg,) = sorted((dirs["b"] / "wal").glob("*.wal"))
    data = bytearray(seg.read_bytes())
    data[40] ^= 0xFF
    seg.write_bytes(bytes(data))
    dirs["missing"] = tmp_path / "nope"
    result = replay_cluster(dirs)
    found = {(v.kind, v.nodes) for v in result.violations}
    assert found == {("corrupted", ("b",)), ("unreadable", ("missing",))}
    corrupted = next(v for v in result.violations if v.kind == "corrupted")
    assert str(seg) in corrupted.detail
    assert corrupted.index is not None
    assert set(result.nodes) == {"a"}
    assert result.committed_index == 0  # one node of three is no majority


def test_torn_tail_is_reported_not_cut(tmp_path: Path) -> None:
    directory = make_node(tmp_path / "a", spec([1, 1, 1]))
    (seg,) = sorted((directory / "wal").glob("*.wal"))
    data = seg.read_bytes()
    seg.write_bytes(data[: wal.data_end(data) - 5])  # cut into the last record
    size = seg.stat().st_size
    node = read_node("a", directory)
    assert node.torn_tail is not None
    assert node.last_index == 2
    assert seg.stat().st_size == size  # read-only
    summary = json.loads(replay_cluster({"a": directory}).to_json())
    assert "incomplete" in summary["nodes"]["a"]["torn_tail"]


def test_large_logs_compare_quickly(tmp_path: Path) -> None:
    n = 20_000
    log = spec([1 + i // 5000 for i in range(n)])
    diverged = [*log[: n - 10], *spec([9] * n, "x")[n - 10 :]]
    dirs = {
        "a": make_node(tmp_path / "a", log),
        "b": make_node(tmp_path / "b", log),
        "c": make_node(tmp_path / "c", diverged, term=9),
    }
    start = time.perf_counter()
    result = replay_cluster(dirs)
    assert time.perf_counter() - start < 10
    assert result.committed_index == n
    assert {(v.kind, v.index) for v in result.violations} == {("committed_divergence", n - 9)}
