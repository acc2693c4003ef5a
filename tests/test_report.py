"""The HTML report of a stored run (harness/report.py), on synthetic run directories.

The run directories are generated here from a seeded RNG (``make_run``), so every test is
deterministic and needs no cluster. The Chromium test renders the page for real and checks the
screenshot is not blank.
"""

from __future__ import annotations

import html
import json
import os
import random
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from harness import report
from harness.cli import main

SECONDS = 1_000_000_000
EXPLANATION = "read of x returned 1 after the write of 2 had completed (stale read)"
EXTERNAL = re.compile(r"""(?:src|href|action)\s*=\s*["']?\s*(?:[a-z]+:)?//|url\(""", re.I)
SECTION_IDS = ("summary", "anomaly", "timeline", "faults", "files", "invariants")


# ------------------------------------------------------------------------- synthetic runs


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def synth_history(
    n_ops: int, seed: int, clients: int = 5, duration_s: float = 10.0
) -> list[dict[str, Any]]:
    """A plausible history: ``clients`` workers, each one op at a time; info retires a process."""
    rng = random.Random(seed)
    per_client = max(1, n_ops // clients)
    gap = int(duration_s * SECONDS / per_client)
    events: list[tuple[int, dict[str, Any]]] = []
    for c in range(clients):
        proc, t = c, rng.randrange(gap)
        for _ in range(per_client):
            f, key = rng.choice(("read", "write", "cas")), rng.choice(("x", "y"))
            value: Any = {"read": None, "write": rng.randrange(5), "cas": [1, 2]}[f]
            latency = int(rng.lognormvariate(14.5, 0.8))  # ~2 ms median
            kind = rng.choices(("ok", "fail", "info"), (88, 8, 4))[0]
            done: dict[str, Any] = {"process": proc, "type": kind, "f": f, "key": key}
            done["value"] = rng.randrange(5) if f == "read" and kind == "ok" else value
            if kind != "ok":
                done["error"] = "mismatch" if f == "cas" and kind == "fail" else "timeout"
            events.append(
                (t, {"process": proc, "type": "invoke", "f": f, "key": key, "value": value})
            )
            events.append((t + latency, done))
            t += latency + gap // 2 + rng.randrange(gap)
            if kind == "info":
                proc += clients
    events.sort(key=lambda e: e[0])
    return [{"index": i, "time": t, **ev} for i, (t, ev) in enumerate(events)]


def synth_faults() -> list[dict[str, Any]]:
    raw = [
        (2.0, "partition", "start", {"halves": [["n1"], ["n2", "n3"]]}),
        (4.0, "partition", "stop", {}),
        (5.5, "kill", "start", {"node": "n2"}),
        (6.5, "kill", "stop", {"node": "n2"}),
        (7.0, "latency", "start", {"ms": 50}),
    ]
    return [
        {"index": i, "time": int(t * SECONDS), "fault": f, "action": a, "detail": d}
        for i, (t, f, a, d) in enumerate(raw)
    ]


def synth_roles() -> dict[str, list[tuple[float, str, int]]]:
    return {
        "n1": [
            (0.0, "follower", 0),
            (0.3, "candidate", 1),
            (0.31, "leader", 1),
            (2.4, "follower", 1),
            (4.1, "follower", 2),
        ],
        "n2": [
            (0.0, "follower", 0),
            (0.31, "follower", 1),
            (2.3, "precandidate", 1),
            (2.35, "candidate", 2),
            (2.36, "leader", 2),
            (5.5, "down", 2),
            (6.5, "follower", 2),
        ],
        "n3": [(0.0, "follower", 0), (0.31, "follower", 1), (2.36, "follower", 2)],
    }


def make_run(
    root: Path, *, n_ops: int = 300, anomaly: bool = False, extras: bool = True, seed: int = 7
) -> Path:
    """A store run directory; ``extras`` adds config, faults, roles and results."""
    run = root / "run"
    history = synth_history(n_ops, seed)
    _write_jsonl(run / "history.jsonl", history)
    if not extras:
        return run
    (run / "config.toml").write_text('name = "partition-kill"\nseed = 42\nnodes = 3\n')
    _write_jsonl(run / "faults.jsonl", synth_faults())
    for node, changes in synth_roles().items():
        _write_jsonl(
            run / "nodes" / node / "roles.jsonl",
            [
                {"time": int(t * SECONDS), "node": node, "role": r, "term": term}
                for t, r, term in changes
            ],
        )
    found = _anomaly(history) if anomaly else None
    results = {
        "scenario": "partition-kill",
        "seed": 42,
        "valid": not anomaly,
        "exit_code": int(anomaly),
        "started_at": "2024-05-01T12:00:00Z",
        "duration_s": 10.0,
        "linearizability": {"valid": not anomaly, "keys": 2, "anomaly": found},
        "invariants": {"valid": True, "violations": []},
        "counts": {"ops": n_ops},
    }
    (run / "results.json").write_text(json.dumps(results))
    return run


def _anomaly(history: list[dict[str, Any]]) -> dict[str, Any]:
    """Two ops on key x from the history: the first completed write and a later read."""
    pairs, pending = [], {}
    for e in history:
        if e["type"] == "invoke":
            pending[e["process"]] = e
        elif e["process"] in pending and e["key"] == "x" and e["type"] == "ok":
            pairs.append((pending.pop(e["process"]), e))
    write = next(p for p in pairs if p[0]["f"] == "write")
    read = next(p for p in pairs if p[0]["f"] == "read" and p[0]["time"] > write[1]["time"])
    ops = [
        {
            "index": inv["index"],
            "process": inv["process"],
            "f": inv["f"],
            "value": done["value"],
            "type": done["type"],
            "invoke_time": inv["time"],
            "complete_time": done["time"],
        }
        for inv, done in (write, read)
    ]
    return {"key": "x", "explanation": EXPLANATION, "ops": ops}


def _render(run: Path) -> str:
    return report.write_report(run).read_text(encoding="utf-8")


def _figure(page: str) -> dict[str, Any]:
    match = re.search(r'<script type="application/json" id="figure-data">(.*?)</script>', page)
    assert match, "no figure data"
    data: dict[str, Any] = json.loads(match.group(1).replace("<\\/", "</"))
    return data


def _without_plotly_js(page: str) -> str:
    """The page with the inlined plotly.js library cut out (its own text mentions URLs that
    only map and font features use; nothing in the report loads them)."""
    start = page.index("<script>", page.index("<head>"))
    return page[:start] + page[page.index("</script>", start) :]


def _section(page: str, sid: str) -> str:
    match = re.search(rf'<section id="{sid}">(.*?)</section>', page, re.S)
    assert match, f"section {sid} missing"
    return match.group(1)


# ------------------------------------------------------------------------------- the tests


def test_valid_run_has_every_section_and_is_self_contained(tmp_path: Path) -> None:
    page = _render(make_run(tmp_path))
    for sid in SECTION_IDS:
        _section(page, sid)
    assert '<span class="verdict valid">VALID</span>' in page
    assert not EXTERNAL.search(_without_plotly_js(page))
    own = _without_plotly_js(page)
    assert "http://" not in own
    assert "https://" not in own
    assert "Plotly.newPlot" in page
    names = [t["name"] for t in _figure(page)["data"]]
    for name in ("ok ops", "fail ops", "info ops", "leader", "follower"):
        assert name in names
    assert len(_figure(page)["layout"]["shapes"]) == 3  # one shaded period per fault
    assert "could not be drawn" not in page
    assert "read leniently" not in page  # the synthetic history follows HISTORY.md
    assert "partition-kill" in page
    assert "<td>seed</td><td>42</td>" in page
    assert "No anomaly found." in _section(page, "anomaly")


def test_counts_per_operation(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _write_jsonl(
        run / "history.jsonl",
        [
            {
                "index": 0,
                "time": 1,
                "process": 0,
                "type": "invoke",
                "f": "write",
                "key": "x",
                "value": 1,
            },
            {
                "index": 1,
                "time": 2,
                "process": 1,
                "type": "invoke",
                "f": "read",
                "key": "x",
                "value": None,
            },
            {
                "index": 2,
                "time": 3,
                "process": 0,
                "type": "ok",
                "f": "write",
                "key": "x",
                "value": 1,
            },
            {
                "index": 3,
                "time": 4,
                "process": 1,
                "type": "fail",
                "f": "read",
                "key": "x",
                "value": None,
            },
            {
                "index": 4,
                "time": 5,
                "process": 0,
                "type": "invoke",
                "f": "write",
                "key": "x",
                "value": 2,
            },
        ],
    )
    summary = _section(_render(run), "summary")
    rows = re.findall(r"<tr><td>(\w+)</td>((?:<td class=n>\d+</td>)+)</tr>", summary)
    table = {f: re.findall(r"\d+", cells) for f, cells in rows}
    assert table == {
        "read": ["0", "1", "0", "1"],
        "write": ["1", "0", "1", "2"],
        "all": ["1", "1", "1", "3"],
    }
    assert "1 invoke(s) never completed" in summary


def test_anomaly_is_explained_and_marked(tmp_path: Path) -> None:
    page = _render(make_run(tmp_path, anomaly=True))
    assert '<span class="verdict invalid">INVALID</span>' in page
    section = _section(page, "anomaly")
    assert EXPLANATION in section
    anomaly = next(t for t in _figure(page)["data"] if t["name"] == "anomaly ops")
    assert len([x for x in anomaly["x"] if x is not None]) == 4  # two ops, two ends each
    assert "could not be drawn" not in page
    assert not EXTERNAL.search(_without_plotly_js(page))


def test_faults_are_paired_and_listed(tmp_path: Path) -> None:
    page = _render(make_run(tmp_path))
    faults = _section(page, "faults")
    for kind in ("partition", "kill", "latency"):
        assert kind in faults
    assert "never" in faults  # the latency fault was never stopped


def test_missing_parts_degrade_with_reasons(tmp_path: Path) -> None:
    page = _render(make_run(tmp_path, extras=False))
    assert '<span class="verdict unknown">UNKNOWN</span>' in page
    assert "No results.json" in page
    assert "No node roles were recorded" in _section(page, "timeline")
    assert "No faults.jsonl events" in _section(page, "faults")
    assert "No config.toml" in _section(page, "config")


def test_malformed_lines_are_skipped_and_noted(tmp_path: Path) -> None:
    run = make_run(tmp_path, extras=False)
    with (run / "history.jsonl").open("a") as fh:
        fh.write('{"index": 9999, "time": \n[1, 2]\n')
    (run / "results.json").write_text("{not json")
    page = _render(run)
    assert "history.jsonl breaks the history format, read leniently" in page
    assert "history.jsonl: skipped 2 malformed line(s)" in page
    assert "results.json: unreadable" in page


def test_html_is_escaped(tmp_path: Path) -> None:
    run = make_run(tmp_path, anomaly=True)
    results = json.loads((run / "results.json").read_text())
    results["linearizability"]["anomaly"]["explanation"] = "<script>alert(1)</script>"
    (run / "results.json").write_text(json.dumps(results))
    page = _render(run)
    assert "<script>alert(1)" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_same_run_gives_same_bytes(tmp_path: Path) -> None:
    run = make_run(tmp_path, anomaly=True)
    first = report.write_report(run, tmp_path / "a.html").read_bytes()
    second = report.write_report(run, tmp_path / "b.html").read_bytes()
    assert first == second


def test_fault_pairing_rules() -> None:
    events = [
        {"time": 1, "fault": "kill", "action": "start", "detail": {"node": "n1"}},
        {"time": 2, "fault": "kill", "action": "start", "detail": {"node": "n2"}},
        {"time": 3, "fault": "kill", "action": "stop", "detail": {"node": "n2"}},
        {"time": 4, "fault": "clock", "action": "bump", "detail": {"ms": 5}},
        {"time": 5, "fault": "kill", "action": "stop", "detail": {}},
        {"time": 6, "fault": "pause", "action": "start", "detail": {}},
    ]
    periods = [(p.kind, p.start, p.stop, p.instant) for p in report.fault_periods(events)]
    assert periods == [
        ("kill", 1, 5, False),
        ("kill", 2, 3, False),
        ("clock", 4, 4, True),
        ("pause", 6, None, False),
    ]


def test_cli_writes_to_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = make_run(tmp_path)
    out = tmp_path / "elsewhere" / "r.html"
    assert main(["report", str(run), "-o", str(out)]) == 0
    assert out.is_file()
    assert not (run / "report.html").exists()
    assert capsys.readouterr().out.strip() == str(out)


def test_cli_exit_status_is_the_verdict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """0 valid, 1 invalid, 2 unknown: as ``orbital check``, so a script can act on it."""
    valid = make_run(tmp_path / "a")
    assert main(["report", str(valid)]) == 0
    assert capsys.readouterr().err.strip() == "orbital report: verdict valid (exit 0)"
    invalid = make_run(tmp_path / "b", anomaly=True)
    assert main(["report", str(invalid)]) == 1
    assert "verdict invalid (exit 1)" in capsys.readouterr().err
    # a run whose checks all passed but whose linearizability was undecided
    undecided = make_run(tmp_path / "c")
    results = json.loads((undecided / "results.json").read_text())
    results["valid"] = "unknown"
    results["linearizability"]["valid"] = "unknown"
    (undecided / "results.json").write_text(json.dumps(results))
    assert main(["report", str(undecided)]) == 2
    assert "verdict unknown (exit 2)" in capsys.readouterr().err
    # a bare history nobody judged: judged now; one with no operations is unknown
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["report", str(empty)]) == 2
    assert (tmp_path / "report.html").is_file()
    bare = tmp_path / "d" / "history.jsonl"
    _write_jsonl(
        bare,
        [
            {"index": 0, "time": 0, "process": 0, "type": "invoke", "f": "write", "key": "x",
             "value": 1},
            {"index": 1, "time": 5, "process": 0, "type": "ok", "f": "write", "key": "x",
             "value": 1},
        ],
    )  # fmt: skip
    assert main(["report", str(bare)]) == 0


def test_cli_missing_dir_or_history_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["report", str(tmp_path)]) == 2
    assert "has no history.jsonl" in capsys.readouterr().err


@pytest.mark.slow
def test_large_history_stays_small_and_fast(tmp_path: Path) -> None:
    run = make_run(tmp_path, n_ops=100_000, anomaly=True)
    began = time.perf_counter()
    out = report.write_report(run)
    elapsed = time.perf_counter() - began
    size = out.stat().st_size
    print(f"100k ops: {elapsed:.2f} s, {size / 1e6:.2f} MB")
    assert size < 20_000_000  # plotly.js is 4.8 MB of it; beyond 20k ops no per-op hover text
    assert elapsed < 60  # generous for a shared machine


# ------------------------------------------------------------------------------- Chromium


@pytest.fixture
def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("CI is set but chromium is not installed (./scripts/setup.sh --tests)")
        pytest.skip("chromium not installed (./scripts/setup.sh --tests installs it)")
    return found


@pytest.mark.integration
def test_report_renders_in_headless_chromium(tmp_path: Path, chromium: str) -> None:
    import numpy as np
    from PIL import Image

    page = report.write_report(make_run(tmp_path, n_ops=2_000, anomaly=True))
    shot = tmp_path / "shot.png"
    command = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={shot}",
        "--window-size=1280,2000",
        page.resolve().as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert shot.is_file(), f"no screenshot (exit {done.returncode}): {done.stderr[-2000:]}"
    with Image.open(shot) as img:
        pixels = np.asarray(img.convert("RGB"))
    assert pixels.shape == (2000, 1280, 3)
    non_white = float((pixels.min(axis=2) < 235).mean())
    colors = len(np.unique(pixels.reshape(-1, 3), axis=0))
    assert non_white > 0.05, f"screenshot nearly blank: {non_white:.1%} non-white"
    assert colors > 50, f"only {colors} distinct colors"
    keep = os.environ.get("ORBITAL_REPORT_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)


def test_many_processes_are_packed_into_lanes() -> None:
    # Two clients; every op ends in info, so each op is a new process (as after timeouts).
    ops = [
        report.OpRecord(
            index=i,
            process=i,
            f="read",
            key="x",
            value=None,
            type="info",
            invoke_time=10 * (i // 2),
            complete_time=10 * (i // 2) + 5,
        )
        for i in range(100)
    ]
    rows, labels = report.process_rows(ops, end=1000)
    assert labels == ["lane 0", "lane 1"]
    assert [rows[i] for i in range(4)] == [0, 1, 0, 1]
    few, few_labels = report.process_rows(ops[:6], end=1000)
    assert few_labels == [str(p) for p in range(6)]
    assert few == {p: p for p in range(6)}


def test_renders_the_real_checker_result(tmp_path: Path) -> None:
    from harness.checker.linearizable import check_history
    from harness.history import read_history

    run = tmp_path / "run"
    ms = 1_000_000
    raw = [  # (time ms, process, type, f, key, value): x gets a stale read, y is fine
        (1, 0, "invoke", "write", "x", 1),
        (3, 0, "ok", "write", "x", 1),
        (4, 1, "invoke", "write", "x", 2),
        (6, 1, "ok", "write", "x", 2),
        (7, 2, "invoke", "read", "x", None),
        (9, 2, "ok", "read", "x", 1),
        (10, 0, "invoke", "write", "y", 5),
        (12, 0, "ok", "write", "y", 5),
        (13, 1, "invoke", "read", "y", None),
        (15, 1, "ok", "read", "y", 5),
    ]
    _write_jsonl(
        run / "history.jsonl",
        [
            {"index": i, "time": t * ms, "process": p, "type": ty, "f": f, "key": k, "value": v}
            for i, (t, p, ty, f, k, v) in enumerate(raw)
        ],
    )
    lin = check_history(read_history(run / "history.jsonl")).to_json()
    assert lin["valid"] is False
    (run / "results.json").write_text(json.dumps({"valid": False, "linearizability": lin}))
    page = _render(run)
    assert '<span class="verdict invalid">INVALID</span>' in page
    explanation = lin["anomaly"]["explanation"]
    assert html.escape(explanation) in _section(page, "anomaly")
    assert "Linearizability per key" in page
    assert '<tr class="culprit">' in _section(page, "anomaly")
    assert '<span class="kind">lost write</span>' in page
    assert "could not be drawn" not in page


def test_invariant_violations_are_listed(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    results = json.loads((run / "results.json").read_text())
    results["valid"] = False
    results["invariants"] = {
        "valid": False,
        "violations": [
            {"kind": "election-safety", "detail": "two leaders in term 3", "nodes": ["n1", "n2"]}
        ],
    }
    (run / "results.json").write_text(json.dumps(results))
    section = _section(_render(run), "invariants")
    assert "election-safety" in section
    assert "two leaders in term 3" in section
    assert "n2" in section


def test_scenario_expectations_are_listed_failed_first(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    results = json.loads((run / "results.json").read_text())
    results["expectations"] = {
        "valid": False,
        "checks": [
            {"name": "converge_after_heal", "ok": True, "expected": True, "observed": "all 545"},
            {"name": "leader_elected", "ok": False, "expected": "<= 0.600s", "observed": 0.695},
        ],
    }
    (run / "results.json").write_text(json.dumps(results))
    section = _section(_render(run), "expectations")
    assert "NOT MET" in section
    assert section.index("leader_elected") < section.index("converge_after_heal")
    assert "0.695" in section


def test_missing_expectations_say_so(tmp_path: Path) -> None:
    section = _section(_render(make_run(tmp_path)), "expectations")
    assert "No scenario expectations" in section


PROBE = """
<script>
window.addEventListener('load', function () {
  var out = {};
  try {
    var el = window.orbitalFigure;
    out.traces = el.data.map(function (t) { return t.name; });
    var ok = el.data.findIndex(function (t) { return t.name === 'ok ops'; });
    Plotly.Fx.hover(el, [{curveNumber: ok, pointNumber: 0}]);
    out.hover = Array.prototype.map.call(
      document.querySelectorAll('.hoverlayer .hovertext'), function (n) { return n.textContent; });
    out.box = document.getElementById('hovered').textContent;
    var a = el.data.find(function (t) { return t.name === 'anomaly ops'; });
    out.anomaly_points = a ? a.x.filter(function (v) { return v !== null; }).length : 0;
    out.culprit_rows = document.querySelectorAll('tr.culprit').length;
    out.anomaly_drawn = document.querySelectorAll('.scatterlayer .trace').length;
    Plotly.relayout(el, {'xaxis.range': [1, 2]});
    out.linked = [el.layout.xaxis3.range, el.layout.xaxis4.range];
  } catch (e) { out.error = String(e); }
  var pre = document.createElement('pre');
  pre.id = 'probe';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>
"""


@pytest.mark.integration
def test_report_is_interactive_in_headless_chromium(tmp_path: Path, chromium: str) -> None:
    """The page renders offline (every host unresolvable), the anomaly's operations are drawn
    and its culprit row highlighted, hovering an operation shows its details, and a zoom on
    the operations panel moves the latency and throughput panels with it."""
    run = make_run(tmp_path, n_ops=400)
    with (run / "history.jsonl").open("a") as fh:
        last = json.loads((run / "history.jsonl").read_text().splitlines()[-1])
        fh.writelines(json.dumps(e) + "\n" for e in _planted(last))
    (run / "results.json").unlink()  # not judged: the report runs the checker
    page = report.write_report(run, judge=True)
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    command = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--host-resolver-rules=MAP * ~NOTFOUND",  # offline: no host resolves
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=5000",
        "--dump-dom",
        probe.resolve().as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    found = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout, re.S)
    assert found, f"no probe output (exit {done.returncode}): {done.stderr[-2000:]}"
    out = json.loads(html.unescape(found.group(1)))
    assert "error" not in out, out
    assert "anomaly ops" in out["traces"]
    assert "culprit" in out["traces"]
    assert out["anomaly_points"] >= 4
    assert out["culprit_rows"] == 1
    assert out["hover"], "hovering showed no label"
    assert "invoke:" in out["hover"][0]
    assert "process p" in out["hover"][0]
    assert out["linked"] == [[1, 2], [1, 2]]


def _planted(last: dict[str, Any]) -> list[dict[str, Any]]:
    """A write of a fresh value, then a read returning null (a stale read of the initial
    value), appended after ``last`` on key x."""
    i, t = last["index"] + 1, last["time"] + 1000
    p = 10_000
    out = []
    for n, (proc, type_, f, value) in enumerate(
        [
            (p, "invoke", "write", 777),
            (p, "ok", "write", 777),
            (p + 1, "invoke", "read", None),
            (p + 1, "ok", "read", None),
        ]
    ):
        out.append(
            {"index": i + n, "time": t + n * 1000, "process": proc, "type": type_, "f": f,
             "key": "x", "value": value}
        )  # fmt: skip
    return out


def _op(i: int, process: int, start: int, end: int | None, type_: str = "ok", **extra: Any) -> Any:
    return report.OpRecord(
        index=i,
        process=process,
        f="write",
        key="x",
        value=i,
        type=type_,
        invoke_time=start,
        complete_time=end,
        **extra,
    )


def test_lanes_are_labelled_with_client_group_and_node() -> None:
    from harness.report_interactive import lanes

    ops = [
        _op(0, 0, 0, 5, "info", client="c0", group="north", node="n1"),
        _op(1, 1, 1, 4, client="c1", group="antarctic", node="n4"),
        _op(2, 2, 2, 9, client="c0", group="north", node="n2"),  # c0 again, after info
        _op(3, 2, 10, 12, client="c0", group="north", node="n2"),
        _op(4, 3, 11, 13, client="c1", group="antarctic", node="n4"),  # not after info: named
    ]
    lane_of, labels = lanes(ops)
    assert lane_of == {0: 0, 2: 0, 1: 1, 3: 1}
    assert labels == ["client c0 (north): p0,p2 @n2", "client c1 (antarctic): p1,p3 @n4"]


def test_lanes_without_client_names_are_packed_as_before() -> None:
    """A history from before the client field (or another tool): a process after info
    continues the lane that freed first; labels number the lanes."""
    from harness.report_interactive import lanes

    ops = [
        _op(0, 0, 0, 5, "info", node="n1"),
        _op(1, 1, 1, 20, node="n3"),
        _op(2, 2, 6, 9, node="n1", group="east"),
    ]
    lane_of, labels = lanes(ops)
    assert lane_of == {0: 0, 1: 1, 2: 0}
    assert labels == ["client 0 (east): p0,p2 @n1", "client 1: p1 @n3"]


def test_hover_names_client_and_group() -> None:
    from harness.report_interactive import _hover

    text = _hover(_op(0, 7, 0, 5, client="c3", group="north", node="n2"))
    assert "process p7, client c3, group north, node n2" in text
