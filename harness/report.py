"""The HTML report of a stored chaos run: ``orbital report STORE_RUN_DIR [-o OUT]``.

One self-contained file that opens offline: inline CSS, plots as inline base64 PNG drawn with
matplotlib's Agg canvas (no pyplot, no global state), no external URL anywhere. The chaos runner
calls :func:`write_report` at the end of every run; the command calls it on a stored run.

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
    _fault_colors,
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
.missing{color:#6b7280;font-style:italic}.explain{border-left:4px solid #dc2626;padding:6px 12px;
 background:#fef2f2;white-space:pre-wrap}pre{background:#fff;border:1px solid #e5e7eb;padding:8px;
 overflow:auto;max-height:420px}code{font-size:12px}
"""

SECTIONS = (
    ("summary", "Summary"),
    ("anomaly", "Anomaly"),
    ("latency", "Latency & throughput"),
    ("timeline", "Process timeline"),
    ("roles", "Node roles"),
    ("faults", "Faults"),
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
    extra = f"<p>Counts reported by the runner: <code>{_e(counts)}</code></p>" if counts else ""
    return (_table(["check", "verdict", "keys"], rows) if rows else "") + per_key + extra


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
    """One anomaly: its explanation, its operations as a table and as a zoomed timeline."""
    ops = _anomaly_ops(anomaly)
    head = ["index", "process", "f", "value", "type", "error", "node", "invoke (s)", "complete (s)"]
    rows = [
        [o.get(k) for k in ("index", "process", "f", "value", "type", "error", "node")]
        + [_seconds(o.get("invoke_time")), _seconds(o.get("complete_time"))]
        for o in ops[:TABLE_LIMIT]
    ]
    body = (
        f"<h3>Anomaly {number}: key <code>{_e(anomaly.get('key', '?'))}</code></h3>"
        f'<div class="explain">{_e(str(anomaly.get("explanation", "(no explanation)")))}</div>'
        + _table(head, rows)
    )
    if not ops:
        return body + _missing("The anomaly lists no operations to draw.")
    return body + _guard("anomaly detail", lambda: plot_anomaly_detail(run, anomaly))


def _seconds(ns: Any) -> str:
    return f"{ns / 1e9:.6f}" if isinstance(ns, int) and not isinstance(ns, bool) else "never"


def section_latency(run: Run) -> str:
    if not any(op.complete_time is not None for op in run.ops):
        return _missing("No completed operations in history.jsonl: nothing to plot.")
    why = "" if run.faults else _missing("No faults.jsonl events: no fault periods to shade.")
    return why + _guard("latency", lambda: plot_latency_throughput(run))


def section_timeline(run: Run) -> str:
    if not run.ops:
        return _missing("history.jsonl has no operations.")
    rows, labels = process_rows(run.ops, run.end)
    packed = (
        f", packed into {len(labels)} lanes (a process retired by info is followed in its lane "
        "by a later one)"
        if len(labels) < len(rows)
        else ""
    )
    return (
        f"<p>{len(run.ops)} operations by {len(rows)} processes{packed}. "
        "The anomaly's operations, if any, are outlined in red.</p>"
        + _guard("timeline", lambda: plot_timeline(run))
    )


def section_roles(run: Run) -> str:
    if not run.roles:
        return _missing("No nodes/<id>/roles.jsonl in this run: node roles were not recorded.")
    return _guard("roles", lambda: plot_roles(run))


def section_faults(run: Run) -> str:
    if not run.faults:
        return _missing("No faults.jsonl events: the run injected no faults or did not log them.")
    colors = _fault_colors(run.faults)
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
    return f"<p>{legend}</p>" + _table(["fault", "start (s)", "stop (s)", "detail"], rows) + cut


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
    "latency": section_latency,
    "timeline": section_timeline,
    "roles": section_roles,
    "faults": section_faults,
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
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}'
        f"</title><style>{CSS}</style></head><body><main><h1>{_e(title)}</h1>"
        f"<nav>{nav}</nav>{body}</main></body></html>\n"
    )


def write_report(run_dir: Path, out: Path | None = None) -> Path:
    """Write the HTML report of ``run_dir`` to ``out`` (default ``run_dir/report.html``)."""
    run_dir = Path(run_dir)
    target = Path(out) if out is not None else run_dir / "report.html"
    page = render_html(load_run(run_dir))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(page, encoding="utf-8")
    return target


# -------------------------------------------------------------------------------------- CLI


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``orbital report``."""
    parser.add_argument(
        "run_dir",
        type=Path,
        metavar="STORE_RUN_DIR",
        help="a stored run: store/<scenario>/<timestamp>/",
    )
    parser.add_argument(
        "-o",
        "--out",
        type=Path,
        default=None,
        help="where to write the HTML (default: STORE_RUN_DIR/report.html)",
    )


def run(args: argparse.Namespace) -> int:
    """Write the report; exit 0, or 2 when the run directory cannot be reported on."""
    try:
        path = write_report(args.run_dir, args.out)
    except ReportError as exc:
        print(f"orbital report: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0
