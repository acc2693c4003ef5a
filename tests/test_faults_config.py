"""The new fault families on paper: scenario validation, the pure schedule, the disk
expectations (with a planted failure each), the matrix file and the store's index."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from chaos.nemesis import AppliedFault, make_schedule
from harness.expectations import disk_checks, fault_sides
from harness.matrix import MatrixError, MatrixRun, load_matrix, matrix_exit, verdict_of
from harness.scenario import ScenarioError, parse_scenario
from harness.store_index import render_index, scan_store, write_index
from harness.store_index import run as serve

BASE: dict[str, Any] = {"name": "t", "nodes": ["n1", "n2", "n3", "n4", "n5"], "duration": 10.0}


def scenario(*nemesis: dict[str, Any], **more: Any) -> Any:
    return parse_scenario({**BASE, "nemesis": list(nemesis), **more})


def test_fault_kinds_and_their_fields_go_together() -> None:
    with pytest.raises(ScenarioError, match=r"nemesis\.0: kind 'disk' and the field 'disk'"):
        scenario({"kind": "disk", "at": 1.0})
    with pytest.raises(ScenarioError, match="kind 'clock'"):
        scenario({"kind": "kill", "clock": "skew", "at": 1.0})
    with pytest.raises(ScenarioError, match="spares"):
        scenario({"kind": "membership", "membership": "add", "at": 1.0})
    with pytest.raises(ScenarioError, match=r"nemesis\.0\.disk"):
        scenario({"kind": "disk", "disk": "melt", "at": 1.0})
    with pytest.raises(ScenarioError, match="unique"):
        scenario(spares=["n1"])
    ok = scenario(
        {"kind": "disk", "disk": "corrupt", "corrupt": "hardstate", "at": 1.0},
        {"kind": "clock", "clock": "strobe", "at": 3.0},
        {"kind": "partition", "shape": "majorities-ring", "at": 5.0},
        {"kind": "membership", "membership": "replace", "at": 7.0},
        spares=["n6"],
        timing={"snapshot_entries": 20, "snapshot_chunk_bytes": 256, "lease_read": True},
    )
    assert ok.timing.raft_knobs() == {
        "snapshot_entries": 20,
        "snapshot_chunk_bytes": 256,
        "lease_read": True,
        "lease_drift": 0.1,
    }


def test_the_schedule_draws_shapes_and_fault_parameters_from_the_seed() -> None:
    sc = scenario(
        {"kind": "partition", "shape": "ring", "at": 1.0, "duration": 1.0},
        {"kind": "disk", "disk": "corrupt", "at": 3.0, "duration": 1.0},
        {"kind": "clock", "clock": "skew", "rate": 4.0, "at": 5.0, "duration": 1.0},
    )
    a, b = make_schedule(sc, 7, 10.0), make_schedule(sc, 7, 10.0)
    assert a == b
    ring, disk, clock = (op.params for op in a if op.action == "start")
    assert len(ring["links"]) == 10  # five nodes, each keeps two neighbours
    assert disk["disk"] == "corrupt"
    assert disk["corrupt"] == "last-record"
    assert isinstance(disk["seed"], int)
    assert clock["rate"] == 4.0
    other = make_schedule(sc, 8, 10.0)
    assert [op.params.get("links") for op in other] != [op.params.get("links") for op in a]


def applied(fid: int, kind: str, node: str, **params: Any) -> AppliedFault:
    return AppliedFault(fid, kind, params, node=node)


def test_only_crashing_disk_faults_have_sides() -> None:
    nodes = ["n1", "n2", "n3"]
    assert fault_sides(applied(0, "disk", "n1", disk="lose-unsynced"), nodes)[0] == {"n2", "n3"}
    assert fault_sides(applied(1, "disk", "n1", disk="slow-fsync"), nodes) == (None, [])
    assert fault_sides(applied(2, "clock", "n1", clock="skew"), nodes) == (None, [])


def run_ctx(tmp_path: Path, logs: dict[str, str], faults: list[AppliedFault]) -> tuple[Any, Any]:
    for node, text in logs.items():
        (tmp_path / "nodes" / node).mkdir(parents=True)
        (tmp_path / "nodes" / node / "node.log").write_text(text)
    return SimpleNamespace(run_dir=tmp_path), SimpleNamespace(applied=faults, system="orbital")


REFUSED = "orbital node n2: /d/wal/0000000000000001.wal at byte offset 77: checksum mismatch\n"


def test_a_corrupted_node_must_refuse_to_start_naming_file_and_offset(tmp_path: Path) -> None:
    fault = applied(0, "disk", "n2", disk="corrupt", applied={"corrupt": {"path": "wal/x"}})
    ctx, observed = run_ctx(tmp_path / "good", {"n2": "starting\n" + REFUSED}, [fault])
    (c,) = disk_checks(ctx, observed)
    assert c["ok"] is True
    # planted: a node that started on its damaged log (served on; no refusal)
    ctx, observed = run_ctx(tmp_path / "bad", {"n2": "[t=1.0s] n2: follower, term=3\n"}, [fault])
    (c,) = disk_checks(ctx, observed)
    assert c["ok"] is False


def test_a_disk_error_must_stop_the_node_with_its_errno(tmp_path: Path) -> None:
    fault = applied(0, "disk", "n3", disk="disk-full")
    stopped = "orbital node n3: write /d/wal/x failed: No space left on device [ENOSPC]\n"
    ctx, observed = run_ctx(tmp_path / "good", {"n3": stopped}, [fault])
    assert disk_checks(ctx, observed)[0]["ok"] is True
    ctx, observed = run_ctx(tmp_path / "quiet", {"n3": "never wrote\n"}, [fault])
    assert disk_checks(ctx, observed)[0]["ok"] is None  # it never met the full disk
    # planted: the node died of something else than its disk
    other = "orbital node n3: Address already in use\n"
    ctx, observed = run_ctx(tmp_path / "bad", {"n3": other}, [fault])
    assert disk_checks(ctx, observed)[0]["ok"] is False


def test_matrix_files_are_validated_naming_the_field(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text('name = "a"\nnodes = ["n1"]\n')
    m = tmp_path / "m.toml"
    m.write_text("seeds = [1, 2]\nrun_timeout = 60\n")
    matrix, scenarios = load_matrix(m)
    assert matrix.seeds == [1, 2]
    assert [name for _, name in scenarios] == ["a"]
    m.write_text("seeds = [1]\nbogus = 1\n")
    with pytest.raises(MatrixError, match="bogus"):
        load_matrix(m)
    m.write_text('scenarios = ["none-*.toml"]\n')
    with pytest.raises(MatrixError, match="matches no file"):
        load_matrix(m)


def test_the_matrix_exit_code_puts_anomalies_first() -> None:
    def r(verdict: str) -> MatrixRun:
        return MatrixRun(Path("x"), "x", 1, verdict=verdict)

    assert matrix_exit([r("valid"), r("valid")]) == 0
    assert matrix_exit([r("valid"), r("timeout")]) == 2
    assert matrix_exit([r("timeout"), r("ANOMALY")]) == 1
    assert verdict_of(None, "") == "timeout"
    assert verdict_of(0, "") == "valid"
    assert verdict_of(1, "") == "ANOMALY"
    assert verdict_of(2, "") == "undecided"


def stored_run(store: Path, scenario: str, stamp: str, valid: Any, report: bool) -> None:
    run = store / scenario / stamp
    run.mkdir(parents=True)
    schedule = [{"action": "start", "kind": "disk", "params": {"disk": "torn-write"}}]
    results = {
        "scenario": scenario, "seed": 3, "valid": valid, "exit_code": 0 if valid else 1,
        "started_at": f"2026-12-0{stamp[-1]}T00:00:00+00:00", "schedule": schedule,
        "counts": {"ok": 10},
    }  # fmt: skip
    (run / "results.json").write_text(json.dumps(results))
    if report:
        (run / "report.html").write_text("<html></html>")


def test_the_index_lists_every_stored_run_newest_first(tmp_path: Path) -> None:
    store = tmp_path / "store"
    stored_run(store, "disk", "r1", True, report=True)
    stored_run(store, "disk", "r2", False, report=False)
    (store / "broken" / "r3").mkdir(parents=True)
    (store / "broken" / "r3" / "results.json").write_text("{not json")
    rows = scan_store(store)
    assert [(r.path, r.valid) for r in rows] == [("disk/r2", False), ("disk/r1", True)]
    assert rows[0].faults == ["disk:torn-write"]
    page = render_index(rows, "t")
    assert 'href="disk/r1/report.html"' in page
    assert 'href="disk/r2/results.json"' in page  # no report: the results instead
    assert "INVALID" in page
    assert write_index(store).read_text() == render_index(
        scan_store(store), f"Orbital chaos runs: {store}"
    )


def test_serve_refuses_a_missing_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = argparse.Namespace(store=tmp_path / "nope", port=8080, host="127.0.0.1")
    assert serve(args) == 2
    assert "no such store" in capsys.readouterr().err
