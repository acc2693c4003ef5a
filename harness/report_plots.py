"""The plots of the report (:mod:`harness.report`) of a :class:`~harness.report_data.Run`:
latency and throughput, the process timeline, each anomaly in detail, node roles.

Theory of operation
-------------------
Each ``plot_*`` function returns one ``<img>`` tag: an inline base64 PNG drawn with matplotlib's
Agg canvas (no pyplot, no global state), PNG metadata stripped so the same run always gives the
same bytes. matplotlib and numpy are imported only when a plot is drawn. Fault periods are
shaded on every plot. Large histories are drawn rasterized, so the file size does not grow with
the number of operations: beyond :data:`DENSE_OPS` operations the timeline blends the type
colors per pixel instead of drawing one bar per operation.
"""

from __future__ import annotations

import base64
import heapq
import io
import json
import textwrap
from collections import Counter
from collections.abc import Sequence
from typing import Any

from harness.report_data import TYPE_COLORS, FaultPeriod, OpRecord, RoleSpan, Run, _int

ROLE_COLORS: dict[str, str] = {
    "follower": "#cfd8e3",
    "precandidate": "#fde68a",
    "candidate": "#fb923c",
    "leader": "#16a34a",
    "down": "#3f3f46",
}
FAULT_PALETTE = ("#e11d48", "#7c3aed", "#0891b2", "#ca8a04", "#4d7c0f", "#c2410c", "#be185d")
ANOMALY_COLOR = "#dc2626"
DENSE_OPS = 20_000  # beyond, the timeline blends colors per pixel instead of drawing bars


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


def _short(value: Any, limit: int = 40) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


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
