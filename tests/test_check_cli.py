"""``orbital check``: arguments, exit codes over many files, the text of an anomaly, the
parallel path's single budget and its stop after a failing key (issue 15's findings)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from harness.checker.events import HistoryError, parse_records
from harness.checker.run import Checker


def _lines(events: list[dict[str, Any]]) -> str:
    out = []
    for i, e in enumerate(events):
        out.append(json.dumps({"index": i, "time": i * 10, **e}))
    return "\n".join(out) + "\n"


def _op(p: int, f: str, value: Any, result: Any = None, key: str = "x") -> list[dict[str, Any]]:
    done = result if f == "read" else value
    return [
        {"process": p, "type": "invoke", "f": f, "key": key, "value": value},
        {"process": p, "type": "ok", "f": f, "key": key, "value": done},
    ]


GOOD = _op(0, "write", 1) + _op(1, "read", None, 1)
STALE = _op(0, "write", 1) + _op(0, "write", 2) + _op(1, "read", None, 1)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", "check", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--time-limit", "-1"], "positive number of seconds"),
        (["--time-limit", "nan"], "positive number of seconds"),
        (["--time-limit", "inf"], "positive number of seconds"),
        (["--time-limit", "soon"], "not a number"),
        (["--jobs", "-1"], "0 or more (0: all cores)"),
    ],
)
def test_bad_arguments_exit_2(tmp_path: Path, args: list[str], words: str) -> None:
    path = tmp_path / "h.jsonl"
    path.write_text(_lines(GOOD))
    done = _cli(str(path), *args)
    assert done.returncode == 2
    assert words in done.stderr
    assert "Traceback" not in done.stderr


def test_a_bad_file_among_good_ones_is_reported_and_sets_the_exit_code(tmp_path: Path) -> None:
    good = tmp_path / "good.jsonl"
    good.write_text(_lines(GOOD))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(_lines(GOOD) + "{nope\n")
    done = _cli(str(good), str(bad), str(good))
    assert done.returncode == 2
    assert f"{bad}: unreadable: {bad}:5: not valid JSON" in done.stdout
    assert done.stdout.strip().endswith("3 files: 2 linearizable, 1 unreadable")
    stale = tmp_path / "stale.jsonl"
    stale.write_text(_lines(STALE))
    done = _cli(str(good), str(bad), str(stale))
    assert done.returncode == 1  # an anomaly is the bigger news
    assert "1 NOT linearizable" in done.stdout


def test_empty_history_is_not_called_linearizable(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    done = _cli(str(path))
    assert done.returncode == 2
    assert "unknown" in done.stdout
    assert "the history has no operations" in done.stdout


def test_anomaly_text_names_the_kind_and_lists_the_culprit_first(tmp_path: Path) -> None:
    path = tmp_path / "stale.jsonl"
    path.write_text(_lines(_op(0, "write", 1) + _op(1, "read", None, None)))
    done = _cli(str(path))
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert lines[1] == "  key 'x': stale read"
    ops = [line for line in lines if line.startswith("    culprit") or "events " in line[:20]]
    assert ops[0].startswith("    culprit events 2-3  p1 read -> null (ok)")
    assert "None" not in done.stdout  # values are spelled as JSON
    assert "returned null, the key's initial value" in done.stdout


def test_json_output_is_json_with_the_culprit(tmp_path: Path) -> None:
    path = tmp_path / "stale.jsonl"
    path.write_text(_lines(STALE))
    done = _cli(str(path), "--json")
    doc = json.loads(done.stdout)
    anomaly = doc["files"][0]["linearizability"]["anomaly"]
    assert anomaly["ops"][0] == anomaly["culprit"]
    assert anomaly["kind"] == "lost write"


def test_time_going_backwards_is_refused() -> None:
    lines = [
        json.dumps({"index": 0, "time": 50, "process": 0, "type": "invoke", "f": "read",
                    "key": "x", "value": None}),
        json.dumps({"index": 1, "time": 40, "process": 1, "type": "invoke", "f": "read",
                    "key": "x", "value": None}),
    ]  # fmt: skip
    with pytest.raises(HistoryError) as exc:
        parse_records(lines, "h.jsonl")
    assert (exc.value.line, exc.value.field) == (2, "time")
    assert "time goes backwards: 40 after 50" in str(exc.value)


def _many_keys(keys: int, per_key: int, stale_key: int | None = None) -> list[str]:
    events: list[dict[str, Any]] = []
    for k in range(keys):
        for n in range(per_key // 2):
            events += _op(0, "write", n + 1, key=f"k{k}") + _op(1, "read", None, n + 1, f"k{k}")
        if k == stale_key:
            events += _op(2, "read", None, 1, f"k{k}")
    return _lines(events).splitlines()


def test_parallel_path_stops_every_key_once_one_fails() -> None:
    records = parse_records(_many_keys(8, 3000, stale_key=0))
    with Checker(time_limit=60, jobs=2) as checker:
        result = checker.check_records(records)
    assert result.valid is False
    assert result.keys["k0"].valid is False
    stopped = [k for k, r in result.keys.items() if r.method == "not checked"]
    assert stopped  # the keys still waiting were not checked
    for key in stopped:
        assert result.keys[key].reason == "stopped after key 'k0' was found not linearizable"


def test_time_limit_is_one_budget_for_the_whole_file() -> None:
    records = parse_records(_many_keys(8, 3000))
    started = time.monotonic()
    with Checker(time_limit=0.05, jobs=2) as checker:
        result = checker.check_records(records, started - 0.05)  # the budget is spent
    assert result.valid == "unknown"
    assert {r.reason for r in result.keys.values()} == {
        "the time limit ran out before this key was checked"
    }


def test_report_judges_a_bare_history_and_check_writes_one(tmp_path: Path) -> None:
    from harness.cli import main

    path = tmp_path / "stale.jsonl"
    path.write_text(_lines(_op(0, "write", 1) + _op(1, "read", None, None)))
    # nothing judged it: the report runs the checker, and exits with its verdict
    assert main(["report", str(path)]) == 1
    page = (tmp_path / "report.html").read_text()
    assert '<span class="verdict invalid">INVALID</span>' in page
    assert '<span class="kind">stale read</span>' in page
    assert '<tr class="culprit">' in page
    assert 'href="stale.jsonl"' in page
    out = tmp_path / "out" / "r.html"
    assert main(["check", str(path), "--report", str(out)]) == 1
    assert '<span class="kind">stale read</span>' in out.read_text()
    assert 'href="../stale.jsonl"' in out.read_text()  # links relative to the report
    assert main(["check", str(path), str(path), "--report", str(out)]) == 2  # one file only
