"""The HTML report of a stored chaos run: ``orbital report STORE_RUN_DIR [-o OUT]``.

One self-contained file that opens offline: inline CSS, plots as inline base64 PNG drawn with
matplotlib's Agg canvas (no pyplot, no global state), no external URL anywhere. The chaos runner
calls :func:`write_report` at the end of every run; the command calls it on a stored run.

Theory of operation
-------------------
Every input is optional except ``history.jsonl``. A missing or malformed part never stops the
report: its section says what is missing and why. The history and faults are read by
:mod:`harness.history`; a file that breaks the format is read again leniently (bad lines skipped
and counted, unmatched events dropped) and the report notes why, since a broken history is the
one most worth looking at.
The same run directory always gives the same bytes (no timestamps, PNG metadata stripped).
Large histories are drawn rasterized, so the file size does not grow with the number of
operations (100k ops: 0.75 MB, 4-5 s on a busy 2-core machine, most of it in reading the
history; see ``tests/test_report.py``).

Store run directory (``store/<scenario>/<timestamp>/``)
--------------------------------------------------------
``config.toml``
    The scenario as run. The report shows ``name`` and ``seed`` (top level or under
    ``[scenario]``) and the raw text.
``history.jsonl``
    The client history, ``../shared/HISTORY.md``. Required.
``faults.jsonl``
    Nemesis events, HISTORY.md format: ``{"index", "time", "fault": str,
    "action": "start"|"stop", "detail": {...}}``. A ``stop`` closes the oldest open ``start`` of
    the same ``fault`` with an equal ``detail``, else the oldest open one of that ``fault``; a
    ``start`` never stopped lasts to the end of the run. Any other action is drawn as an instant.
``results.json``
    The judgement::

        {"scenario": str, "seed": int, "valid": true|false|"unknown", "exit_code": int,
         "started_at": ISO-8601 str, "duration_s": float,
         "linearizability": CheckResult.to_json() of harness/checker/linearizable.py,
         "invariants": {"valid": bool, "violations": [{"kind": str, "detail": str, ...}]},
         "counts": {...}}

    From ``linearizability`` the report uses ``valid``, ``keys`` (a count, or the checker's
    per-key map, shown as a table) and ``anomalies`` (else the single ``anomaly``), each
    ``{"key": str, "explanation": str, "ops": [{"index": int (history line of the invoke),
    "process": int, "f": str, "value": any, "type": str, "error"?: str, "node"?: str,
    "invoke_time": ns, "complete_time": ns | null}]}``. Every key is optional. The verdict is
    ``valid``, else ``linearizability.valid``, else unknown.
``nodes/<id>/roles.jsonl``
    Each node's role and term changes, one line per change, in time order::

        {"time": int (ns since run start), "node": "n1",
         "role": "follower"|"precandidate"|"candidate"|"leader"|"down", "term": int}

    A role lasts until the node's next line or the end of the run. ``down`` means the process
    is killed or paused (its term is the last known one).
``report.html``
    This report (the default output).
"""

from __future__ import annotations

import argparse
import base64
import heapq
import html
import io
import json
import sys
import textwrap
import tomllib
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.history import HistoryError, Operation, pair_operations, read_faults, read_history

#: Completion types in drawing order, and their colors (Jepsen's timeline palette).
TYPE_COLORS: dict[str, str] = {"ok": "#4e9cf5", "fail": "#f06aa8", "info": "#f5a623"}
ROLE_COLORS: dict[str, str] = {
    "follower": "#cfd8e3",
    "precandidate": "#fde68a",
    "candidate": "#fb923c",
    "leader": "#16a34a",
    "down": "#3f3f46",
}
FAULT_PALETTE = ("#e11d48", "#7c3aed", "#0891b2", "#ca8a04", "#4d7c0f", "#c2410c", "#be185d")
ANOMALY_COLOR = "#dc2626"
TABLE_LIMIT = 200  # rows of any table before it is cut
DENSE_OPS = 20_000  # beyond, the timeline blends colors per pixel instead of drawing bars
MAX_ANOMALY_PLOTS = 4  # anomalies drawn in detail; the others are counted


class ReportError(Exception):
    """The run directory cannot be reported on (missing, or without ``history.jsonl``)."""


@dataclass(frozen=True, slots=True)
class OpRecord:
    """One operation as drawn: an invoke and its completion (``complete_time`` None: never)."""

    index: int
    process: int
    f: str
    key: str
    value: Any
    type: str
    invoke_time: int
    complete_time: int | None
    result: Any = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class FaultPeriod:
    kind: str
    start: int
    stop: int | None  # None: never stopped, lasts to the end of the run
    detail: Any
    instant: bool = False


@dataclass(frozen=True, slots=True)
class RoleSpan:
    node: str
    role: str
    term: int | None
    start: int
    stop: int


@dataclass(slots=True)
class Run:
    """Everything read from a run directory, with notes on what was missing or skipped."""

    path: Path
    ops: list[OpRecord]
    faults: list[FaultPeriod]
    roles: list[RoleSpan]
    results: dict[str, Any]
    config: dict[str, Any]
    config_text: str | None
    end: int
    notes: list[str] = field(default_factory=list)

    @property
    def anomalies(self) -> list[dict[str, Any]]:
        """The checker's anomalies: ``anomalies`` when given, else the single ``anomaly``."""
        lin = self.results.get("linearizability")
        if not isinstance(lin, dict):
            return []
        found = lin.get("anomalies")
        if not isinstance(found, list) or not found:
            found = [lin.get("anomaly")]
        return [a for a in found if isinstance(a, dict)]


# ---------------------------------------------------------------------------------- reading


def _read_jsonl(path: Path, notes: list[str]) -> list[dict[str, Any]]:
    """The JSON objects of a JSON Lines file; bad lines are skipped and noted."""
    records: list[dict[str, Any]] = []
    bad = 0
    with path.open(encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if isinstance(obj, dict):
                records.append(obj)
            else:
                bad += 1
    if bad:
        notes.append(f"{path.name}: skipped {bad} malformed line(s)")
    return records


def _int(value: Any, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def read_ops(path: Path, notes: list[str]) -> list[OpRecord]:
    """The operations of ``history.jsonl``, in invoke order.

    Read by :mod:`harness.history`, the format's single implementation. A file that breaks the
    format (a run that crashed mid-line, a buggy client) is read leniently instead, with a note
    saying why: a broken history is exactly the run whose report someone wants to see.
    """
    try:
        events = read_history(path)
    except HistoryError as exc:
        notes.append(f"history.jsonl breaks the history format, read leniently: {exc}")
        return pair_ops(_read_jsonl(path, notes), notes)
    return [_from_operation(operation) for operation in pair_operations(events)]


def _from_operation(operation: Operation) -> OpRecord:
    inv, done = operation.invoke, operation.completion
    return OpRecord(
        index=inv.index,
        process=inv.process,
        f=inv.f,
        key=inv.key,
        value=inv.value,
        type=operation.outcome,
        invoke_time=inv.time,
        complete_time=done.time if done else None,
        result=done.value if done else None,
        error=done.error if done else None,
    )


def read_fault_events(path: Path, notes: list[str]) -> list[dict[str, Any]]:
    """The events of ``faults.jsonl`` (none when absent), leniently if it breaks the format."""
    if not path.is_file():
        return []
    try:
        return [fault.model_dump() for fault in read_faults(path)]
    except HistoryError as exc:
        notes.append(f"faults.jsonl breaks the history format, read leniently: {exc}")
        return _read_jsonl(path, notes)


def pair_ops(events: Iterable[dict[str, Any]], notes: list[str]) -> list[OpRecord]:
    """Lenient pairing: each invoke with the next completion of its process, in invoke order."""
    open_: dict[int, dict[str, Any]] = {}
    done: list[OpRecord] = []
    orphans = 0
    for i, ev in enumerate(events):
        proc, kind = _int(ev.get("process"), -1), ev.get("type")
        if kind == "invoke":
            open_[proc] = {**ev, "index": _int(ev.get("index"), i)}
        elif kind in TYPE_COLORS and proc in open_:
            done.append(_make_op(open_.pop(proc), ev))
        else:
            orphans += 1
    done.extend(_make_op(inv, None) for inv in open_.values())
    if orphans:
        notes.append(f"history.jsonl: {orphans} event(s) without a matching invoke")
    done.sort(key=lambda op: op.index)
    return done


def _make_op(inv: dict[str, Any], comp: dict[str, Any] | None) -> OpRecord:
    return OpRecord(
        index=inv["index"],
        process=_int(inv.get("process"), -1),
        f=str(inv.get("f", "?")),
        key=str(inv.get("key", "")),
        value=inv.get("value"),
        type=str(comp["type"]) if comp else "info",
        invoke_time=_int(inv.get("time")),
        complete_time=_int(comp.get("time")) if comp else None,
        result=comp.get("value") if comp else None,
        error=str(comp["error"]) if comp and comp.get("error") is not None else None,
    )


def fault_periods(events: Sequence[dict[str, Any]]) -> list[FaultPeriod]:
    """Pair fault starts with stops (see the module docstring for the rule)."""
    open_: list[dict[str, Any]] = []
    out: list[FaultPeriod] = []
    for ev in events:
        kind, action, t = str(ev.get("fault", "?")), ev.get("action"), _int(ev.get("time"))
        if action == "start":
            open_.append(ev)
        elif action == "stop":
            same = [s for s in open_ if str(s.get("fault", "?")) == kind]
            exact = [s for s in same if s.get("detail") == ev.get("detail")]
            match = next(iter(exact or same), None)
            if match is not None:
                open_.remove(match)
                out.append(FaultPeriod(kind, _int(match.get("time")), t, match.get("detail")))
        else:
            out.append(FaultPeriod(kind, t, t, ev.get("detail"), instant=True))
    out.extend(
        FaultPeriod(str(s.get("fault", "?")), _int(s.get("time")), None, s.get("detail"))
        for s in open_
    )
    out.sort(key=lambda p: (p.start, p.kind))
    return out


def role_spans(events: Sequence[dict[str, Any]], node: str, end: int) -> list[RoleSpan]:
    """A node's role changes as spans, repeats merged; the last lasts until ``end``."""
    changes: list[tuple[int, str, int | None]] = []
    for ev in sorted(events, key=lambda e: _int(e.get("time"))):
        term = ev.get("term")
        change = (
            _int(ev.get("time")),
            str(ev.get("role", "?")),
            term if isinstance(term, int) else None,
        )
        if not changes or changes[-1][1:] != change[1:]:
            changes.append(change)
    stops = [t for t, _, _ in changes[1:]] + [max(end, changes[-1][0])] if changes else []
    return [
        RoleSpan(node, role, term, start, stop)
        for (start, role, term), stop in zip(changes, stops, strict=True)
    ]


def _read_json(path: Path, notes: list[str]) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        notes.append(f"{path.name}: unreadable ({exc})")
        return {}
    return data if isinstance(data, dict) else {}


def _read_config(path: Path, notes: list[str]) -> tuple[dict[str, Any], str | None]:
    if not path.is_file():
        return {}, None
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as exc:
        notes.append(f"config.toml: not valid TOML ({exc})")
        return {}, text


def load_run(run_dir: Path) -> Run:
    """Read a run directory; raise :class:`ReportError` when it cannot be reported on."""
    if not run_dir.is_dir():
        raise ReportError(f"run directory {run_dir} does not exist")
    history = run_dir / "history.jsonl"
    if not history.is_file():
        raise ReportError(f"{run_dir} has no history.jsonl")
    notes: list[str] = []
    ops = read_ops(history, notes)
    fault_events = read_fault_events(run_dir / "faults.jsonl", notes)
    results = _read_json(run_dir / "results.json", notes)
    config, config_text = _read_config(run_dir / "config.toml", notes)
    role_events = {
        p.parent.name: _read_jsonl(p, notes) for p in sorted(run_dir.glob("nodes/*/roles.jsonl"))
    }
    end = _run_end(ops, fault_events, role_events, results)
    roles = [s for node, evs in role_events.items() for s in role_spans(evs, node, end)]
    return Run(
        run_dir, ops, fault_periods(fault_events), roles, results, config, config_text, end, notes
    )


def _run_end(
    ops: Sequence[OpRecord],
    faults: Sequence[dict[str, Any]],
    roles: dict[str, list[dict[str, Any]]],
    results: dict[str, Any],
) -> int:
    times = [op.complete_time or op.invoke_time for op in ops]
    times += [_int(e.get("time")) for e in faults]
    times += [_int(e.get("time")) for evs in roles.values() for e in evs]
    duration = results.get("duration_s")
    if isinstance(duration, int | float) and not isinstance(duration, bool):
        times.append(int(duration * 1e9))
    return max(times, default=0) or 1


# --------------------------------------------------------------------------------- plotting


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img class="plot" alt="plot" src="data:image/png;base64,{data}">'


def _fault_colors(periods: Sequence[FaultPeriod]) -> dict[str, str]:
    kinds = sorted({p.kind for p in periods})
    return {k: FAULT_PALETTE[i % len(FAULT_PALETTE)] for i, k in enumerate(kinds)}


def _shade_faults(ax: Any, periods: Sequence[FaultPeriod], end: int) -> list[Any]:
    """Shade fault periods on ``ax``; return one legend handle per fault kind."""
    from matplotlib.patches import Patch

    colors = _fault_colors(periods)
    for p in periods:
        stop = end if p.stop is None else p.stop
        if p.instant:
            ax.axvline(p.start / 1e9, color=colors[p.kind], lw=1, ls=":", zorder=0)
        else:
            ax.axvspan(p.start / 1e9, stop / 1e9, color=colors[p.kind], alpha=0.13, lw=0, zorder=0)
    return [Patch(color=c, alpha=0.35, label=f"fault: {k}") for k, c in colors.items()]


def plot_latency_throughput(run: Run) -> str:
    """Latency per completed op (log scale, with p50/p99) above throughput, faults shaded."""
    import numpy as np

    done = [op for op in run.ops if op.complete_time is not None]
    fig = _figure(12, 6.5)
    lat_ax, thr_ax = fig.subplots(2, 1, sharex=True, height_ratios=[3, 2])
    handles = _shade_faults(lat_ax, run.faults, run.end)
    _shade_faults(thr_ax, run.faults, run.end)
    edges = np.linspace(0, run.end / 1e9, 121)
    for kind, color in TYPE_COLORS.items():
        sel = [op for op in done if op.type == kind]
        t, lat = _latencies(sel)
        lat_ax.scatter(
            t, lat, s=4, color=color, alpha=0.5, lw=0, rasterized=True, label=f"{kind} ({len(sel)})"
        )
        counts, _ = np.histogram(t, bins=edges)
        thr_ax.plot(
            edges[:-1],
            counts / (edges[1] - edges[0]),
            color=color,
            lw=1.3,
            label=kind,
            drawstyle="steps-post",
        )
    _percentile_lines(lat_ax, done, edges)
    lat_ax.set_yscale("log")
    lat_ax.set_ylabel("latency (ms)")
    lat_ax.set_title("Latency of completed operations (invoke → completion)")
    _legend(fig, [*lat_ax.get_legend_handles_labels()[0], *handles])
    thr_ax.set_ylabel("completions / s")
    thr_ax.set_xlabel("time since run start (s)")
    thr_ax.set_title("Throughput")
    thr_ax.set_xlim(0, run.end / 1e9)
    return _png(fig)


def _latencies(ops: Sequence[OpRecord]) -> tuple[Any, Any]:
    """Completion times (s) and latencies (ms, at least 1 ns) of completed ops, as arrays."""
    import numpy as np

    done = [(op.invoke_time, op.complete_time) for op in ops if op.complete_time is not None]
    pairs = np.array(done, dtype=np.int64).reshape(-1, 2)
    lat = np.maximum(pairs[:, 1] - pairs[:, 0], 1)
    return pairs[:, 1] / 1e9, lat / 1e6


def _legend(fig: Any, handles: list[Any]) -> None:
    """One legend above the plots, outside the data."""
    fig.legend(
        handles=handles,
        loc="outside upper center",
        ncol=min(len(handles), 8),
        fontsize=8,
        markerscale=3,
        frameon=False,
    )


def _percentile_lines(ax: Any, done: Sequence[OpRecord], edges: Any) -> None:
    import numpy as np

    ok = [op for op in done if op.type == "ok"]
    if len(ok) < 20:
        return
    t, lat = _latencies(ok)
    slot = np.digitize(t, edges)
    mids, p50, p99 = [], [], []
    for b in np.unique(slot):
        vals = lat[slot == b]
        mids.append((edges[min(b, len(edges) - 1)] + edges[b - 1]) / 2)
        p50.append(np.percentile(vals, 50))
        p99.append(np.percentile(vals, 99))
    ax.plot(mids, p50, color="#111827", lw=1, label="ok p50")
    ax.plot(mids, p99, color="#111827", lw=1, ls="--", label="ok p99")


def plot_timeline(run: Run) -> str:
    """Processes on the y axis, one bar per op from invoke to completion, colored by type.

    Up to :data:`DENSE_OPS` operations each op is a bar. Beyond, ops are far thinner than a
    pixel, so each pixel of a lane blends the type colors by the time each type covers in it.
    """
    from matplotlib.patches import Patch

    rank, labels = process_rows(run.ops, run.end)
    height = min(14.0, max(3.0, 1.2 + 0.22 * len(labels)))
    fig = _figure(12, height)
    ax = fig.subplots()
    handles = _shade_faults(ax, run.faults, run.end)
    lw = max(0.6, min(7.0, 0.55 * height * 72 / max(len(labels), 1)))
    dense = len(run.ops) > DENSE_OPS
    counts = Counter(op.type for op in run.ops)
    if dense:
        _draw_density(ax, run, rank, len(labels))
    else:
        _draw_bars(ax, run, rank, lw)
    _mark_anomaly(ax, run, rank, lw)
    _row_ticks(ax, labels)
    ax.set_ylim(len(labels) - 0.5, -0.5)
    ax.set_xlim(0, run.end / 1e9)
    ax.set_xlabel("time since run start (s)")
    lanes = len(labels) < len(rank)
    ax.set_ylabel("client lane (processes in turn)" if lanes else "process")
    blend = ", colors blended per pixel" if dense else ""
    ax.set_title(f"Operations per process (invoke → completion{blend})")
    kinds = [Patch(color=c, label=f"{k} ({counts[k]})") for k, c in TYPE_COLORS.items()]
    _legend(fig, [*kinds, *handles])
    return _png(fig)


def _draw_bars(ax: Any, run: Run, rank: dict[int, int], lw: float) -> None:
    """Each op a bar, one NaN-separated polyline per type (fast for thousands of bars)."""
    import numpy as np

    for kind, color in TYPE_COLORS.items():
        sel = [op for op in run.ops if op.type == kind]
        starts, stops, rows = _op_arrays(sel, rank, run.end)
        stops = np.maximum(stops, starts + run.end / 1e9 / 1200)  # at least a pixel long
        gaps = np.full(len(sel), np.nan)
        xs = np.column_stack([starts, stops, gaps]).ravel()
        ys = np.column_stack([rows, rows, gaps]).ravel()
        ax.plot(xs, ys, color=color, lw=lw, solid_capstyle="butt", rasterized=True)


def _op_arrays(ops: Sequence[OpRecord], rank: dict[int, int], end: int) -> tuple[Any, Any, Any]:
    """Invoke and completion times (s; ``end`` if never completed) and rows, as arrays."""
    import numpy as np

    starts = np.array([op.invoke_time for op in ops], dtype=np.float64) / 1e9
    stops = [end if op.complete_time is None else op.complete_time for op in ops]
    rows = np.array([rank[op.process] for op in ops], dtype=np.int64)
    return starts, np.array(stops, dtype=np.float64) / 1e9, rows


def _draw_density(ax: Any, run: Run, rank: dict[int, int], n_rows: int) -> None:
    """Each pixel of each lane: the mean of the type colors, weighted by the time they cover."""
    import numpy as np
    from matplotlib.colors import to_rgb

    width, sub = 1200, 4  # pixels, and sub-pixel steps of the coverage count
    end_s = run.end / 1e9
    mixed = np.zeros((n_rows, width, 3))
    total = np.zeros((n_rows, width))
    for kind, color in TYPE_COLORS.items():
        starts, stops, rows = _op_arrays([op for op in run.ops if op.type == kind], rank, run.end)
        cells = width * sub
        first = np.clip((starts / end_s * cells).astype(np.int64), 0, cells - 1)
        last = np.clip(np.maximum(first + 1, (stops / end_s * cells).astype(np.int64)), 0, cells)
        steps = np.zeros((n_rows, cells + 1))
        np.add.at(steps, (rows, first), 1.0)
        np.add.at(steps, (rows, last), -1.0)
        cover = np.cumsum(steps, axis=1)[:, :cells].reshape(n_rows, width, sub).sum(axis=2)
        mixed += cover[..., None] * np.array(to_rgb(color))
        total += cover
    image = np.zeros((n_rows, 5, width, 4))  # each lane: a transparent row above and below
    image[:, 1:4, :, :3] = (mixed / np.maximum(total, 1e-9)[..., None])[:, None]
    image[:, 1:4, :, 3] = (total > 0)[:, None]
    ax.imshow(
        image.reshape(n_rows * 5, width, 4),
        extent=(0, end_s, n_rows - 0.5, -0.5),
        aspect="auto",
        interpolation="nearest",
        zorder=2,
    )


def process_rows(
    ops: Sequence[OpRecord], end: int, limit: int = 40
) -> tuple[dict[int, int], list[str]]:
    """Map each process to a timeline row; return the map and the row labels.

    Up to ``limit`` processes get a row each. Beyond, processes are packed into lanes: a
    process ended by ``info`` is retired and its client goes on as a new process, so a lane
    holds one process after another and the timeline stays as tall as the concurrency.
    """
    spans: dict[int, tuple[int, int]] = {}
    for op in ops:
        stop = end if op.complete_time is None else op.complete_time
        lo, hi = spans.get(op.process, (op.invoke_time, stop))
        spans[op.process] = (min(lo, op.invoke_time), max(hi, stop))
    if len(spans) <= limit:
        procs = sorted(spans)
        return {p: i for i, p in enumerate(procs)}, [str(p) for p in procs]
    rows = _pack_lanes(spans)
    return rows, [f"lane {i}" for i in range(max(rows.values()) + 1)]


def _pack_lanes(spans: dict[int, tuple[int, int]]) -> dict[int, int]:
    """Greedy interval colouring: each process takes the lowest lane free at its start."""
    free: list[int] = []  # lanes free again
    busy: list[tuple[int, int]] = []  # (busy until, lane)
    rows: dict[int, int] = {}
    for proc in sorted(spans, key=lambda p: (spans[p][0], p)):
        start, stop = spans[proc]
        while busy and busy[0][0] < start:
            heapq.heappush(free, heapq.heappop(busy)[1])
        rows[proc] = heapq.heappop(free) if free else len(busy)
        heapq.heappush(busy, (stop, rows[proc]))
    return rows


def _row_ticks(ax: Any, labels: Sequence[str]) -> None:
    step = max(1, len(labels) // 30)
    ax.set_yticks(range(0, len(labels), step), labels[::step], fontsize=7)


def _anomaly_ops(anomaly: dict[str, Any]) -> list[dict[str, Any]]:
    ops = anomaly.get("ops")
    return [o for o in ops if isinstance(o, dict)] if isinstance(ops, list) else []


def _mark_anomaly(ax: Any, run: Run, rank: dict[int, int], lw: float) -> None:
    """Outline every anomaly's ops, shade its window and label it on a timeline."""
    for number, anomaly in enumerate(run.anomalies, start=1):
        marked = [o for o in _anomaly_ops(anomaly) if _int(o.get("process"), -1) in rank]
        if not marked:
            continue
        starts = [_int(o.get("invoke_time")) for o in marked]
        stops = [_op_stop(o, run.end) for o in marked]
        ax.axvspan(min(starts) / 1e9, max(stops) / 1e9, color=ANOMALY_COLOR, alpha=0.15, lw=0)
        ax.axvline(min(starts) / 1e9, color=ANOMALY_COLOR, lw=0.8, ls="--", zorder=3)
        for o, lo, hi in zip(marked, starts, stops, strict=True):
            y = rank[_int(o.get("process"), -1)]
            for color, extra, z in (("black", 3, 4), (ANOMALY_COLOR, 1, 5)):
                bar = ax.hlines(y, lo / 1e9, hi / 1e9, colors=color, lw=lw + extra, zorder=z)
                bar.set_capstyle("projecting")
        ax.annotate(
            f"anomaly {number}: key {anomaly.get('key', '?')}",
            (min(starts) / 1e9, 0),
            xytext=(4, 2),
            textcoords="offset points",
            color=ANOMALY_COLOR,
            fontweight="bold",
            fontsize=9,
            zorder=6,
            va="top",
            annotation_clip=False,
        )


def _op_stop(o: dict[str, Any], end: int) -> int:
    stop = o.get("complete_time")
    return _int(stop) if isinstance(stop, int) else end


def plot_anomaly_detail(run: Run, anomaly: dict[str, Any]) -> str:
    """A zoom on an anomaly: every op on its key near its window, labelled, anomaly outlined."""
    marked = _anomaly_ops(anomaly)
    lo = min(_int(o.get("invoke_time")) for o in marked)
    hi = max(_op_stop(o, run.end) for o in marked)
    pad = max((hi - lo) // 4, 1)
    key = str(anomaly.get("key", ""))
    near = [
        op
        for op in run.ops
        if op.key == key
        and op.invoke_time <= hi + pad
        and (op.complete_time or run.end) >= lo - pad
    ][:60]
    wanted = {_int(o.get("index"), -1) for o in marked}
    procs = sorted({op.process for op in near} | {_int(o.get("process"), -1) for o in marked})
    rank = {p: i for i, p in enumerate(procs)}
    fig = _figure(12, min(9.0, 1.8 + 0.45 * len(procs)))
    ax = fig.subplots()
    _shade_faults(ax, run.faults, run.end)
    for op in near:
        _detail_bar(ax, op, rank[op.process], op.index in wanted, run.end)
    ax.set_xlim((lo - pad) / 1e9, (hi + pad) / 1e9)
    ax.set_ylim(len(procs) - 0.5, -0.6)
    _row_ticks(ax, [str(p) for p in procs])
    ax.set_xlabel("time since run start (s)")
    ax.set_ylabel("process")
    wrapped = textwrap.fill(str(anomaly.get("explanation", "")), 150)
    ax.set_title(f"Anomaly on key {key!r}\n{wrapped}", fontsize=9, loc="left", color=ANOMALY_COLOR)
    return _png(fig)


def _detail_bar(ax: Any, op: OpRecord, y: int, highlight: bool, end: int) -> None:
    stop = end if op.complete_time is None else op.complete_time
    color = TYPE_COLORS.get(op.type, "#999999")
    edge: dict[str, Any] = {"edgecolor": ANOMALY_COLOR, "linewidth": 2.5} if highlight else {}
    ax.broken_barh(
        [(op.invoke_time / 1e9, max(stop - op.invoke_time, 1) / 1e9)],
        (y - 0.32, 0.64),
        facecolors=color,
        **edge,
    )
    label = f"{op.f} {_short(op.value)}"
    if op.type == "ok" and op.f == "read":
        label = f"read → {_short(op.result)}"
    elif op.type != "ok":
        label += f" ({op.type}{': ' + op.error if op.error else ''})"
    ax.annotate(
        label,
        (op.invoke_time / 1e9, y),
        xytext=(3, 0),
        textcoords="offset points",
        va="center",
        fontsize=7.5,
        fontweight="bold" if highlight else "normal",
        color="#111827",
        clip_on=True,
    )


def plot_roles(run: Run) -> str:
    """Each node's role over time as colored bands, annotated with the term when it changes."""
    from matplotlib.patches import Patch

    nodes = sorted({s.node for s in run.roles})
    fig = _figure(12, min(8.0, 1.6 + 0.55 * len(nodes)))
    ax = fig.subplots()
    _shade_faults(ax, run.faults, run.end)
    span_s = run.end / 1e9
    for y, node in enumerate(nodes):
        spans = [s for s in run.roles if s.node == node]
        ax.broken_barh(
            [(s.start / 1e9, (s.stop - s.start) / 1e9) for s in spans],
            (y - 0.35, 0.7),
            facecolors=[ROLE_COLORS.get(s.role, "#a1a1aa") for s in spans],
            rasterized=len(spans) > 2000,
        )
        _term_labels(ax, spans, y, span_s)
    ax.set_yticks(range(len(nodes)), nodes)
    ax.set_ylim(len(nodes) - 0.5, -0.5)
    ax.set_xlim(0, span_s)
    ax.set_xlabel("time since run start (s)")
    ax.set_title("Node roles (bands) and terms (labels)")
    roles = [Patch(color=c, label=r) for r, c in ROLE_COLORS.items()]
    ax.legend(handles=roles, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=5, fontsize=8)
    return _png(fig)


def _term_labels(ax: Any, spans: Sequence[RoleSpan], y: int, span_s: float) -> None:
    """Label every band wide enough to hold it with its term."""
    for s in spans:
        width = (s.stop - s.start) / 1e9
        if s.term is not None and width >= span_s / 60:
            dark = s.role in ("leader", "down")
            ax.text(
                s.start / 1e9 + width / 2,
                y,
                f"t{s.term}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if dark else "#111827",
                clip_on=True,
            )


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
    ("expectations", "Expectations"),
    ("config", "Configuration"),
)


def _e(value: Any) -> str:
    """HTML-escaped text of a value: strings as they are, None as nothing, the rest as JSON."""
    if value is None:
        return ""
    return html.escape(value if isinstance(value, str) else json.dumps(value, default=str))


def _short(value: Any, limit: int = 40) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


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
            "met" if c.get("ok") else "NOT MET",
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
