"""The HTML report of a run or a bare history: ``orbital report PATH [-o OUT]``.

One self-contained file that opens offline: inline CSS, and an interactive figure drawn by
plotly.js, inlined from the ``plotly`` package (:mod:`harness.report_interactive`): every
operation per client lane with hover, zoom and pan, fault periods shaded, node roles and terms,
latency and throughput, all on one time axis; no external URL anywhere. The chaos runner calls
:func:`write_report` at the end of every run; ``orbital report`` calls it on a stored run
directory or on a bare history file (with ``faults.jsonl`` beside it if present), and when
there is no linearizability result it runs the checker first, so any history is judged.

Theory of operation
-------------------
Three modules, one per stage: :mod:`harness.report_data` reads the run directory into a
:class:`Run` (its docstring gives the layout of a store run directory and the shape of
``results.json``), :mod:`harness.report_plots` draws the plots, and this module renders the
HTML and provides the ``orbital report`` command. The names tests and other modules use are
re-exported here (``__all__``).

Every input is optional except ``history.jsonl``. A missing or malformed part never stops the
report: its section says what is missing and why, and a plot that fails to draw becomes a
message in its section.
The same run directory always gives the same bytes (no timestamps, PNG metadata stripped).
Large histories are drawn rasterized, so the file size does not grow with the number of
operations (100k ops: 0.75 MB, 4-5 s on a busy 2-core machine, most of it in reading the
history; see ``tests/test_report.py``).
"""

from __future__ import annotations

import argparse
import html
import json
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from harness.report_data import (
    TYPE_COLORS,
    FaultPeriod,
    OpRecord,
    ReportError,
    RoleSpan,
    Run,
    fault_periods,
    load_run,
    pair_ops,
    read_fault_events,
    read_ops,
    role_spans,
)
from harness.report_plots import (
    ANOMALY_COLOR,
    DENSE_OPS,
    FAULT_PALETTE,
    ROLE_COLORS,
    _anomaly_ops,
    plot_anomaly_detail,
    plot_latency_throughput,
    plot_roles,
    plot_timeline,
    process_rows,
)
from harness.report_raft import section_raft

__all__ = [
    "ANOMALY_COLOR",
    "DENSE_OPS",
    "FAULT_PALETTE",
    "MAX_ANOMALY_PLOTS",
    "ROLE_COLORS",
    "TABLE_LIMIT",
    "TYPE_COLORS",
    "FaultPeriod",
    "OpRecord",
    "ReportError",
    "RoleSpan",
    "Run",
    "configure",
    "fault_periods",
    "load_run",
    "pair_ops",
    "plot_anomaly_detail",
    "plot_latency_throughput",
    "plot_roles",
    "plot_timeline",
    "process_rows",
    "read_fault_events",
    "read_ops",
    "render_html",
    "role_spans",
    "run",
    "write_report",
]

TABLE_LIMIT = 200  # rows of any table before it is cut
MAX_ANOMALY_PLOTS = 4  # anomalies drawn in detail; the others are counted


# ------------------------------------------------------------------------------------- HTML


CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;
 color:#111827;background:#f8fafc}
main{max-width:1240px;margin:0 auto;padding:16px 24px 48px}
h1{font-size:22px;margin:8px 0}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #e5e7eb}
nav a{margin-right:14px;color:#2563eb;text-decoration:none}
.verdict{display:inline-block;padding:6px 16px;border-radius:6px;font-weight:700;font-size:20px;
 color:#fff}.valid{background:#16a34a}.invalid{background:#dc2626}.unknown{background:#d97706}
table{border-collapse:collapse;margin:8px 0;background:#fff}
td,th{border:1px solid #e5e7eb;padding:3px 10px;text-align:left;vertical-align:top}
th{background:#f1f5f9}td.n{text-align:right;font-variant-numeric:tabular-nums}
.plot{max-width:100%;height:auto;border:1px solid #e5e7eb;background:#fff}
.figure{width:100%;background:#fff;border:1px solid #e5e7eb}
.hovered-box{font-size:12px;color:#374151}tr.culprit td{background:#fee2e2;font-weight:600}
.kind{display:inline-block;padding:2px 8px;border-radius:4px;background:#dc2626;color:#fff}
.missing{color:#6b7280;font-style:italic}.explain{border-left:4px solid #dc2626;padding:6px 12px;
 background:#fef2f2;white-space:pre-wrap}pre{background:#fff;border:1px solid #e5e7eb;padding:8px;
 overflow:auto;max-height:420px}code{font-size:12px}
"""

SECTIONS = (
    ("summary", "Summary"),
    ("anomaly", "Anomaly"),
    ("timeline", "Timeline: operations, node roles, latency, throughput"),
    ("faults", "Faults"),
    ("files", "Files"),
    ("invariants", "Invariants"),
    ("raft", "Raft rules"),
    ("expectations", "Expectations"),
    ("config", "Configuration"),
)


def _e(value: Any) -> str:
    """HTML-escaped text of a value: strings as they are, None as nothing, the rest as JSON."""
    if value is None:
        return ""
    return html.escape(value if isinstance(value, str) else json.dumps(value, default=str))


def _table(head: Sequence[str], rows: Iterable[Sequence[Any]], numeric: int = 0) -> str:
    """An HTML table (no header row when ``head`` is empty); the last ``numeric`` columns are
    right-aligned."""
    out = ["<table>"]
    if head:
        out.append("<tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>")
    for row in rows:
        cells = [
            f"<td{' class=n' if i >= len(row) - numeric else ''}>{_e(c)}</td>"
            for i, c in enumerate(row)
        ]
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "".join(out) + "</table>"


def _missing(text: str) -> str:
    return f'<p class="missing">{_e(text)}</p>'


def _verdict(results: dict[str, Any]) -> str:
    valid = results.get("valid")
    if valid is None and isinstance(results.get("linearizability"), dict):
        valid = results["linearizability"].get("valid")
    if valid is True:
        return "valid"
    return "invalid" if valid is False else "unknown"


def _meta(run: Run) -> dict[str, Any]:
    cfg, res = run.config, run.results
    found = cfg.get("scenario")
    scenario: dict[str, Any] = found if isinstance(found, dict) else {}
    return {
        "scenario": res.get("scenario") or cfg.get("name") or scenario.get("name"),
        "seed": res.get("seed", cfg.get("seed", scenario.get("seed"))),
        "started at": res.get("started_at"),
        "duration (s)": res.get("duration_s"),
        "exit code": res.get("exit_code"),
        "run directory": str(run.path),
    }


def section_summary(run: Run) -> str:
    verdict = _verdict(run.results)
    meta = [(k, v) for k, v in _meta(run).items() if v is not None]
    by_f: dict[str, Counter[str]] = {}
    for op in run.ops:
        by_f.setdefault(op.f, Counter())[op.type] += 1
    pending = sum(op.complete_time is None for op in run.ops)
    rows = [(f, c["ok"], c["fail"], c["info"], c.total()) for f, c in sorted(by_f.items())]
    total = Counter(op.type for op in run.ops)
    rows.append(("all", total["ok"], total["fail"], total["info"], total.total()))
    checks = _checks(run.results)
    reason = "" if run.results else _missing("No results.json: the run was not judged.")
    return (
        f'<p><span class="verdict {verdict}">{verdict.upper()}</span></p>{reason}'
        + _table([], meta)
        + _table(["f", "ok", "fail", "info", "total"], rows, numeric=4)
        + f"<p>{pending} invoke(s) never completed, counted as info.</p>" * bool(pending)
        + checks
    )


def _checks(results: dict[str, Any]) -> str:
    rows = []
    for name in ("linearizability", "invariants"):
        part = results.get(name)
        if isinstance(part, dict):
            keys = part.get("keys", "")
            count = len(keys) if isinstance(keys, dict) else keys
            rows.append((name, _verdict({"valid": part.get("valid")}).upper(), count))
    lin = results.get("linearizability")
    keys = lin.get("keys") if isinstance(lin, dict) else None
    per_key = _key_table(keys) if isinstance(keys, dict) and keys else ""
    counts = results.get("counts")
    extra = _counts_table(counts) if isinstance(counts, dict) and counts else ""
    return (_table(["check", "verdict", "keys"], rows) if rows else "") + per_key + extra


def _counts_table(counts: dict[str, Any]) -> str:
    """The runner's counts as a table (nested maps flattened to ``a / b`` rows)."""
    rows: list[tuple[str, Any]] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix} / {k}" if prefix else str(k), v)
        else:
            rows.append((prefix, value))

    walk("", counts)
    return "<h3>Counts reported by the runner</h3>" + _table(
        ["count", "value"], rows[:TABLE_LIMIT], numeric=1
    )


def _key_table(keys: dict[str, Any]) -> str:
    """The checker's verdict per key, the keys that are not valid first."""
    items = [(k, v) for k, v in keys.items() if isinstance(v, dict)]
    items.sort(key=lambda kv: (kv[1].get("valid") is True, kv[0]))
    fields = ("ops", "method", "seconds", "reason")
    rows = [
        [
            k,
            _verdict({"valid": v.get("valid")}).upper(),
            *("" if v.get(f) is None else v.get(f) for f in fields),
        ]
        for k, v in items[:TABLE_LIMIT]
    ]
    cut = f"<p>First {TABLE_LIMIT} of {len(items)} keys.</p>" * (len(items) > TABLE_LIMIT)
    head = ["key", "linearizable", "ops", "method", "seconds", "reason"]
    return (
        "<details><summary>Linearizability per key</summary>"
        + _table(head, rows)
        + cut
        + ("</details>")
    )


def section_anomaly(run: Run) -> str:
    if not run.anomalies:
        lin = run.results.get("linearizability")
        why = "No anomaly found." if isinstance(lin, dict) else "No linearizability result."
        return _missing(why)
    shown = run.anomalies[:MAX_ANOMALY_PLOTS]
    parts = [_anomaly_block(run, n, a) for n, a in enumerate(shown, start=1)]
    if len(run.anomalies) > len(shown):
        rest = len(run.anomalies) - len(shown)
        parts.append(f"<p>{rest} more anomal{'y' if rest == 1 else 'ies'} in results.json.</p>")
    return "".join(parts)


def _anomaly_block(run: Run, number: int, anomaly: dict[str, Any]) -> str:
    """One anomaly: its kind, its paragraph, its operations (the culprit first, highlighted)
    and the end of the longest linearizable prefix."""
    ops = _anomaly_ops(anomaly)
    culprit = anomaly.get("culprit")
    head = ["", "index", "process", "f", "value", "type", "error", "node", "invoke (s)",
            "complete (s)"]  # fmt: skip
    rows = []
    for o in ops[:TABLE_LIMIT]:
        mark = "culprit" if o == culprit else ""
        cells = [mark] + [o.get(k) for k in ("index", "process", "f", "value", "type", "error")]
        cells += [o.get("node"), _seconds(o.get("invoke_time")), _seconds(o.get("complete_time"))]
        tr = '<tr class="culprit">' if mark else "<tr>"
        rows.append(tr + "".join(f"<td>{_v(c)}</td>" for c in cells) + "</tr>")
    table = (
        '<table class="anomaly-ops"><tr>'
        + "".join(f"<th>{_e(h)}</th>" for h in head)
        + "</tr>"
        + "".join(rows)
        + "</table>"
    )
    kind = anomaly.get("kind") or "not linearizable"
    body = (
        f'<h3>Anomaly {number}: <span class="kind">{_e(kind)}</span> on key '
        f"<code>{_e(anomaly.get('key', '?'))}</code></h3>"
        f'<div class="explain">{_e(str(anomaly.get("explanation", "(no explanation)")))}</div>'
        + table
    )
    prefix = anomaly.get("prefix")
    if isinstance(prefix, dict) and isinstance(prefix.get("last"), list):
        prow = [
            [o.get("index"), o.get("process"), o.get("f"), o.get("value"), o.get("after")]
            for o in prefix["last"]
            if isinstance(o, dict)
        ]
        body += (
            f"<p>Longest linearizable prefix: {_e(prefix.get('ops'))} operations, every one "
            f"that completed before event {_e(prefix.get('through_event'))}. Its last ones, "
            "with the value the key holds after each:</p>"
            + _table(["index", "process", "f", "value", "key holds after"], prow)
        )
    if not ops:
        body += _missing("The anomaly lists no operations.")
    return body


def _v(value: Any) -> str:
    """A value cell: JSON spelling (``null``, ``[1, 2]``), empty for a missing one."""
    if value is None or value == "":
        return ""
    return html.escape(value if isinstance(value, str) else json.dumps(value))


def _seconds(ns: Any) -> str:
    return f"{ns / 1e9:.6f}" if isinstance(ns, int) and not isinstance(ns, bool) else "never"


def section_timeline(run: Run) -> str:
    if not run.ops:
        return _missing("history.jsonl has no operations.")
    from harness.report_interactive import figure_html, lanes

    lane_of, labels = lanes(run.ops)
    processes = len(lane_of)
    roles = "" if run.roles else " No node roles were recorded (no nodes/<id>/roles.jsonl)."
    return (
        f"<p>{len(run.ops)} operations by {processes} processes in {len(labels)} client "
        "lanes (a client whose operation ended in <i>info</i> continues as a new process in "
        "the same lane). Hover an operation for its details; drag to zoom, double-click to "
        "reset; the panels share the time axis. Fault periods are shaded; the anomaly's "
        f"operations are drawn in red, the culprit marked with a cross.{roles}</p>"
        + _guard("timeline", lambda: figure_html(run))
    )


def section_faults(run: Run) -> str:
    if not run.faults:
        return _missing("No faults.jsonl events: the run injected no faults or did not log them.")
    from harness.report_interactive import fault_colors

    colors = fault_colors(run)
    rows = [
        (
            p.kind,
            f"{p.start / 1e9:.3f}",
            "instant" if p.instant else "never" if p.stop is None else f"{p.stop / 1e9:.3f}",
            p.detail,
        )
        for p in run.faults[:TABLE_LIMIT]
    ]
    legend = " ".join(f'<span style="color:{c}">■</span> {_e(k)}' for k, c in colors.items())
    cut = f"<p>First {TABLE_LIMIT} of {len(run.faults)}.</p>" * (len(run.faults) > TABLE_LIMIT)
    rows = [(k, a, b, _detail(d)) for k, a, b, d in rows]
    head = ["fault", "start (s)", "stop (s)", "detail"]
    return f"<p>{legend}</p>" + _table(head, rows) + cut


def _detail(detail: Any) -> str:
    """A fault's detail in words: ``groups: [n1, n2] | [n3]; node: n1``."""
    if not isinstance(detail, dict):
        return "" if detail is None else json.dumps(detail)
    parts = []
    for k, v in detail.items():
        if k == "groups" and isinstance(v, list):
            v = " | ".join("[" + ", ".join(map(str, g)) + "]" for g in v if isinstance(g, list))
        elif not isinstance(v, str):
            v = json.dumps(v)
        parts.append(f"{k}: {v}")
    return "; ".join(parts)


def section_files(run: Run) -> str:
    """Links to the run's files, relative to where the report is written."""
    base = run.report_dir or run.path
    found: list[Path] = []
    if run.history is not None:
        found.append(run.history)
    for name in ("faults.jsonl", "results.json", "config.toml"):
        if (run.path / name).is_file():
            found.append(run.path / name)
    found += sorted(p for p in run.path.glob("nodes/*/*") if p.is_file() and p.suffix != ".seg")
    if not found:
        return _missing("No files beside the history.")
    items = []
    for p in found[:TABLE_LIMIT]:
        href = os.path.relpath(p.resolve(), base.resolve())
        items.append(
            f'<li><a href="{_e(Path(href).as_posix())}">{_e(Path(href).as_posix())}</a></li>'
        )
    return "<ul>" + "".join(items) + "</ul>"


def section_invariants(run: Run) -> str:
    inv = run.results.get("invariants")
    if not isinstance(inv, dict):
        return _missing("No invariant results in results.json.")
    found = inv.get("violations")
    violations = [v for v in found if isinstance(v, dict)] if isinstance(found, list) else []
    if not violations:
        return "<p>No invariant violations.</p>"
    rows = [
        (
            v.get("kind", "?"),
            v.get("detail", ""),
            {k: x for k, x in v.items() if k not in ("kind", "detail")} or "",
        )
        for v in violations[:TABLE_LIMIT]
    ]
    return _table(["kind", "detail", "more"], rows)


def section_expectations(run: Run) -> str:
    """The scenario's own checks (results.json ``expectations``), failed ones first."""
    exp = run.results.get("expectations")
    checks = exp.get("checks") if isinstance(exp, dict) else None
    if not isinstance(checks, list) or not checks:
        return _missing("No scenario expectations in results.json.")
    items = [c for c in checks if isinstance(c, dict)]
    items.sort(key=lambda c: c.get("ok") is True)
    rows = [
        (
            c.get("name", "?"),
            "met" if c.get("ok") else "not applicable" if c.get("ok") is None else "NOT MET",
            c.get("expected"),
            c.get("observed"),
        )
        for c in items[:TABLE_LIMIT]
    ]
    return _table(["expectation", "result", "expected", "observed"], rows)


def section_config(run: Run) -> str:
    parts = [
        f"<pre><code>{_e(run.config_text)}</code></pre>"
        if run.config_text
        else _missing("No config.toml in this run.")
    ]
    if run.results:
        text = json.dumps(run.results, indent=2, default=str)
        parts.append(
            f"<details><summary>results.json</summary><pre><code>{_e(text)}</code></pre></details>"
        )
    if run.notes:
        parts.append(
            "<p>Reading notes:</p><ul>" + "".join(f"<li>{_e(n)}</li>" for n in run.notes) + "</ul>"
        )
    return "".join(parts)


def _guard(name: str, draw: Callable[[], str]) -> str:
    """Draw a plot; a failure becomes a message in its section rather than a lost report."""
    try:
        return draw()
    except Exception as exc:  # a bad input must not cost the rest of the report
        return _missing(f"The {name} plot could not be drawn: {type(exc).__name__}: {exc}")


RENDERERS: dict[str, Callable[[Run], str]] = {
    "summary": section_summary,
    "anomaly": section_anomaly,
    "timeline": section_timeline,
    "faults": section_faults,
    "files": section_files,
    "invariants": section_invariants,
    "raft": section_raft,
    "expectations": section_expectations,
    "config": section_config,
}


def render_html(run: Run) -> str:
    """The whole report as one HTML string."""
    meta = _meta(run)
    where = f"{run.path.resolve().parent.name}/{run.path.resolve().name}"
    title = f"Orbital Raft run: {meta['scenario'] or where}"
    nav = "".join(f'<a href="#{sid}">{_e(label)}</a>' for sid, label in SECTIONS)
    body = "".join(
        f'<section id="{sid}"><h2>{_e(label)}</h2>{RENDERERS[sid](run)}</section>'
        for sid, label in SECTIONS
    )
    from harness.report_interactive import plotly_js

    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}'
        f"</title><style>{CSS}</style><script>{plotly_js()}</script></head><body><main>"
        f"<h1>{_e(title)}</h1><nav>{nav}</nav>{body}</main></body></html>\n"
    )


def write_report(
    run_dir: Path,
    out: Path | None = None,
    *,
    history: Path | None = None,
    linearizability: dict[str, Any] | None = None,
    judge: bool = False,
    time_limit: float = 60.0,
) -> Path:
    """Write the HTML report of ``run_dir`` (or of the bare ``history`` file) to ``out``
    (default ``report.html`` beside the history).

    ``linearizability`` is a checker result to show (``CheckResult.to_json()``); with
    ``judge`` and no result in ``results.json``, the checker runs first (``time_limit`` s).
    """
    return _write_report(run_dir, out, history, linearizability, judge, time_limit)[0]


def _write_report(
    run_dir: Path,
    out: Path | None,
    history: Path | None,
    linearizability: dict[str, Any] | None,
    judge: bool,
    time_limit: float,
) -> tuple[Path, str]:
    """:func:`write_report`; also the verdict the page shows (``valid``, ``invalid``,
    ``unknown``)."""
    run_dir = Path(run_dir)
    run = load_run(run_dir, history)
    base = run.history.parent if run.history is not None else run_dir
    target = Path(out) if out is not None else base / "report.html"
    if (
        linearizability is None
        and judge
        and not isinstance(run.results.get("linearizability"), dict)
    ):
        linearizability = judge_history(run, time_limit)
    if linearizability is not None:
        run.results = dict(run.results)
        run.results["linearizability"] = linearizability
        run.results.setdefault("valid", linearizability.get("valid"))
    run.report_dir = target.resolve().parent
    page = render_html(run)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(page, encoding="utf-8")
    return target, _verdict(run.results)


def judge_history(run: Run, time_limit: float) -> dict[str, Any]:
    """Check the run's history now (the report of a history nobody judged yet)."""
    from harness.checker.events import HistoryError
    from harness.checker.run import Checker

    assert run.history is not None
    try:
        with Checker(time_limit=time_limit) as checker:
            result = checker.check_file(str(run.history))
    except HistoryError as exc:
        run.notes.append(f"not judged: {exc}")
        return {"valid": "unknown", "reason": f"the history cannot be checked: {exc}"}
    run.notes.append("judged by orbital report: there was no linearizability result")
    return result.to_json()


def write_history_report(
    history: str | Path, out: str | Path, linearizability: dict[str, Any]
) -> Path:
    """The report of a bare history file with a checker result (``orbital check --report``)."""
    path = Path(history)
    return write_report(path.parent, Path(out), history=path, linearizability=linearizability)


# -------------------------------------------------------------------------------------- CLI


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``orbital report``."""
    parser.epilog = (
        "Exit status: the verdict the report shows, as 'orbital check': 0 valid, 1 invalid "
        "(not linearizable, or a stored run that failed a check), 2 unknown (undecided or not "
        "judged) or nothing to report on."
    )
    parser.add_argument(
        "path",
        type=Path,
        metavar="PATH",
        help="a stored run (store/<scenario>/<timestamp>/) or a bare history file",
    )
    parser.add_argument(
        "-o",
        "--out",
        type=Path,
        default=None,
        help="where to write the HTML (default: report.html beside the history)",
    )
    parser.add_argument(
        "--time-limit",
        type=float,
        default=60.0,
        metavar="S",
        help="seconds for the checker when the history was not judged yet (default 60)",
    )


#: ``orbital report``'s exit status per verdict, as ``orbital check`` and ``orbital chaos run``
EXIT = {"valid": 0, "invalid": 1, "unknown": 2}


def run(args: argparse.Namespace) -> int:
    """Write the report and print its path; the exit status is the verdict the report shows:
    0 valid, 1 invalid (not linearizable, or a run that failed a check), 2 unknown (undecided,
    not judged) or nothing to report on (the reason on stderr)."""
    path: Path = args.path
    history = path if path.is_file() else None
    run_dir = path.parent if history is not None else path
    try:
        out, verdict = _write_report(run_dir, args.out, history, None, True, args.time_limit)
    except ReportError as exc:
        print(f"orbital report: {exc}", file=sys.stderr)
        return 2
    print(out)
    print(f"orbital report: verdict {verdict} (exit {EXIT[verdict]})", file=sys.stderr)
    return EXIT[verdict]
