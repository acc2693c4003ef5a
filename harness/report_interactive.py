"""The interactive part of the report: one Plotly figure, every panel on one time axis.

Theory of operation
-------------------
The figure is built as plain JSON (no ``plotly.graph_objects``: building it is then cheap) and
drawn by plotly.js, which the ``plotly`` Python package carries and which is inlined into the
page (:func:`plotly_js`): the report opens offline, with no URL anywhere. Four panels share the
x axis (seconds since the start of the run), so a zoom or pan in one moves them all:

1. *operations*: one lane per client slot (a process retired by ``info`` is followed in its
   lane by the next process of the same client, the way the workload numbers them); each
   operation a bar from invoke to completion, colored by outcome; hovering shows the
   operation (f, key, value, result, times, node, process, index); the anomaly's operations
   are drawn again on top in red, the culprit with a marker;
2. *node roles*: one lane per node, a bar per role span, the term in the hover;
3. *latency* of each completed operation, at its completion time;
4. *throughput*: completed operations per second, by outcome.

Fault periods are shaded across all panels (one color per fault kind) and listed in a table
beside the figure. Beyond :data:`GL_OPS` operations the panels are drawn with WebGL traces,
which stay responsive with hundreds of thousands of operations.
"""

from __future__ import annotations

import html
import json
from collections import Counter
from collections.abc import Sequence
from typing import Any

from harness.report_data import TYPE_COLORS, OpRecord, Run

GL_OPS = 20_000  #: above, the figure uses WebGL traces
ROLE_COLORS = {
    "follower": "#94a3b8",
    "precandidate": "#fbbf24",
    "candidate": "#fb923c",
    "leader": "#16a34a",
    "down": "#3f3f46",
}
FAULT_PALETTE = ("#e11d48", "#7c3aed", "#0891b2", "#ca8a04", "#4d7c0f", "#c2410c", "#be185d")
ANOMALY_COLOR = "#dc2626"


def plotly_js() -> str:
    """plotly.js, minified, from the installed ``plotly`` package (inlined in the page)."""
    from plotly.offline import get_plotlyjs

    text: str = get_plotlyjs()
    return text


def _s(ns: int | None) -> float | None:
    return None if ns is None else round(ns / 1e9, 6)


def _json(value: Any) -> str:
    return json.dumps(list(value) if isinstance(value, tuple) else value)


def lanes(ops: Sequence[OpRecord]) -> tuple[dict[int, int], list[str]]:
    """Each process's lane, and the lane labels.

    A client runs one process at a time and starts a new one after ``info``. When the history
    names the client of an operation (the optional ``client`` field), its processes share that
    client's lane. Otherwise a new process continues the lane whose last process ended with
    ``info`` longest before it began (or opens a new lane). Labels name the client, its group
    (the optional ``group`` field), the processes and the node that answered most.
    """
    first: dict[int, int] = {}
    last: dict[int, tuple[int, str]] = {}
    named: dict[int, str] = {}
    for op in ops:
        first.setdefault(op.process, op.invoke_time)
        end = op.complete_time if op.complete_time is not None else 1 << 62
        if op.process not in last or end >= last[op.process][0]:
            last[op.process] = (end, op.type)
        if op.client and op.process not in named:
            named[op.process] = op.client
    lane_of: dict[int, int] = {}
    free: list[tuple[int, int]] = []  # (time the lane's process ended with info, lane)
    members: list[list[int]] = []
    names: list[str | None] = []
    by_name: dict[str, int] = {}
    for p in sorted(first, key=lambda p: (first[p], p)):
        name = named.get(p)
        if name is not None:
            lane = by_name.get(name, -1)
            if lane < 0:
                lane = by_name[name] = len(members)
                members.append([])
                names.append(name)
        else:
            choice = None
            for n, (ended, _lane) in enumerate(free):
                if ended <= first[p] and (choice is None or ended < free[choice][0]):
                    choice = n
            if choice is None:
                lane = len(members)
                members.append([])
                names.append(None)
            else:
                lane = free.pop(choice)[1]
            end, type_ = last[p]
            if type_ == "info" and end < 1 << 62:
                free.append((end, lane))
        lane_of[p] = lane
        members[lane].append(p)
    nodes: dict[int, Counter[str]] = {}
    groups: dict[int, Counter[str]] = {}
    for op in ops:
        if op.node:
            nodes.setdefault(lane_of[op.process], Counter())[op.node] += 1
        if op.group:
            groups.setdefault(lane_of[op.process], Counter())[op.group] += 1
    labels = []
    unnamed = 0
    for lane, procs in enumerate(members):
        shown = ",".join(f"p{p}" for p in procs[:3]) + ("…" if len(procs) > 3 else "")
        name = names[lane]
        if name is None:
            name, unnamed = str(unnamed), unnamed + 1
        group = groups.get(lane)
        where = f" ({group.most_common(1)[0][0]})" if group else ""
        top = nodes.get(lane)
        via = f" @{top.most_common(1)[0][0]}" if top else ""
        labels.append(f"client {name}{where}: {shown}{via}")
    return lane_of, labels


def _hover(op: OpRecord) -> str:
    value = _json(op.value) if op.f != "read" else ""
    result = _json(op.result) if op.f == "read" and op.type == "ok" else ""
    error = f" ({html.escape(op.error)})" if op.error else ""
    lines = [
        f"<b>{op.f}</b> key {html.escape(op.key)} {value}".rstrip(),
        f"outcome: {op.type}" + (f" → {result}" if result else "") + error,
        f"invoke: {_s(op.invoke_time):.6f} s (event {op.index})",
        "complete: never"
        if op.complete_time is None
        else f"complete: {_s(op.complete_time):.6f} s (event {op.end})",
        f"process p{op.process}"
        + (f", client {html.escape(op.client)}" if op.client else "")
        + (f", group {html.escape(op.group)}" if op.group else "")
        + (f", node {html.escape(op.node)}" if op.node else ""),
    ]
    return "<br>".join(lines)


def figure(run: Run) -> dict[str, Any]:
    """The whole figure as Plotly JSON (``data`` and ``layout``)."""
    ops = run.ops
    gl = len(ops) > GL_OPS
    kind = "scattergl" if gl else "scatter"
    lane_of, labels = lanes(ops)
    end = run.end
    data: list[dict[str, Any]] = []
    for type_, color in TYPE_COLORS.items():
        xs: list[float | None] = []
        ys: list[float | None] = []
        texts: list[str | None] = []
        for op in ops:
            if op.type != type_:
                continue
            stop = op.complete_time if op.complete_time is not None else end
            y = lane_of[op.process]
            xs += [_s(op.invoke_time), _s(stop), None]
            ys += [y, y, None]
            if not gl:
                t = _hover(op)
                texts += [t, t, None]
        hover: dict[str, Any] = (
            {"hoverinfo": "skip"}  # too many to describe; the anomaly's still are
            if gl
            else {"text": texts, "hovertemplate": "%{text}<extra></extra>"}
        )
        data.append(
            {
                "type": kind,
                "mode": "lines+markers" if not gl else "lines",
                "name": f"{type_} ops",
                "x": xs,
                "y": ys,
                **hover,
                "line": {"color": color, "width": 7},
                "marker": {"size": 3, "color": color},
                "xaxis": "x",
                "yaxis": "y",
                "legendgroup": "ops",
            }
        )
    data += _anomaly_traces(run, lane_of, kind)
    data += _role_traces(run, kind)
    data += _latency_traces(run, kind)
    data += _throughput_traces(run)
    layout = _layout(run, labels)
    return {"data": data, "layout": layout}


def anomaly_indices(run: Run) -> dict[int, str]:
    """Invoke index of each operation named by an anomaly -> ``culprit`` or ``involved``."""
    marks: dict[int, str] = {}
    for anomaly in run.anomalies:
        culprit = anomaly.get("culprit")
        ops = anomaly.get("ops") if isinstance(anomaly.get("ops"), list) else []
        for o in ops or []:
            if isinstance(o, dict) and isinstance(o.get("index"), int):
                marks.setdefault(o["index"], "involved")
        if isinstance(culprit, dict) and isinstance(culprit.get("index"), int):
            marks[culprit["index"]] = "culprit"
    return marks


def _anomaly_traces(run: Run, lane_of: dict[int, int], kind: str) -> list[dict[str, Any]]:
    marks = anomaly_indices(run)
    if not marks:
        return []
    xs: list[float | None] = []
    ys: list[float | None] = []
    texts: list[str | None] = []
    cx: list[float | None] = []
    cy: list[int] = []
    ct: list[str] = []
    for op in run.ops:
        mark = marks.get(op.index)
        if mark is None:
            continue
        stop = op.complete_time if op.complete_time is not None else run.end
        y = lane_of[op.process]
        t = f"<b>{mark.upper()}</b><br>" + _hover(op)
        xs += [_s(op.invoke_time), _s(stop), None]
        ys += [y, y, None]
        texts += [t, t, None]
        if mark == "culprit":
            cx.append(_s(op.invoke_time))
            cy.append(y)
            ct.append(t)
    traces: list[dict[str, Any]] = [
        {
            "type": kind,
            "mode": "lines",
            "name": "anomaly ops",
            "x": xs,
            "y": ys,
            "text": texts,
            "hovertemplate": "%{text}<extra></extra>",
            "line": {"color": ANOMALY_COLOR, "width": 12},
            "opacity": 0.85,
            "xaxis": "x",
            "yaxis": "y",
        }
    ]
    if cx:
        traces.append(
            {
                "type": kind,
                "mode": "markers",
                "name": "culprit",
                "x": cx,
                "y": cy,
                "text": ct,
                "hovertemplate": "%{text}<extra></extra>",
                "marker": {"symbol": "x", "size": 14, "color": "#111827"},
                "xaxis": "x",
                "yaxis": "y",
            }
        )
    return traces


def _role_traces(run: Run, kind: str) -> list[dict[str, Any]]:
    nodes = sorted({s.node for s in run.roles})
    out = []
    for role, color in ROLE_COLORS.items():
        xs: list[float | None] = []
        ys: list[str | None] = []
        texts: list[str | None] = []
        for s in run.roles:
            if s.role != role:
                continue
            t = f"<b>{s.node}</b>: {s.role}, term {s.term}<br>{_s(s.start):.3f}-{_s(s.stop):.3f} s"
            xs += [_s(s.start), _s(s.stop), None]
            ys += [s.node, s.node, None]
            texts += [t, t, None]
        if xs:
            out.append(
                {
                    "type": kind,
                    "mode": "lines",
                    "name": role,
                    "x": xs,
                    "y": ys,
                    "text": texts,
                    "hovertemplate": "%{text}<extra></extra>",
                    "line": {"color": color, "width": 14},
                    "xaxis": "x2",
                    "yaxis": "y2",
                    "legendgroup": "roles",
                }
            )
    if not out and nodes:
        return []
    return out


def _latency_traces(run: Run, kind: str) -> list[dict[str, Any]]:
    out = []
    for type_, color in TYPE_COLORS.items():
        done = [op for op in run.ops if op.type == type_ and op.complete_time is not None]
        if not done:
            continue
        out.append(
            {
                "type": kind,
                "mode": "markers",
                "name": f"{type_} latency",
                "x": [_s(op.complete_time) for op in done],
                "y": [
                    round((op.complete_time - op.invoke_time) / 1e6, 3)
                    for op in done
                    if op.complete_time is not None
                ],
                "text": [f"{op.f} p{op.process} event {op.index}" for op in done],
                "hovertemplate": "%{text}<br>%{y} ms<extra></extra>",
                "marker": {"size": 4, "color": color, "opacity": 0.6},
                "xaxis": "x3",
                "yaxis": "y3",
                "showlegend": False,
            }
        )
    return out


def _throughput_traces(run: Run) -> list[dict[str, Any]]:
    end_s = max(run.end / 1e9, 1e-3)
    width = max(end_s / 200, 0.01)
    out = []
    for type_, color in TYPE_COLORS.items():
        bins: Counter[int] = Counter()
        for op in run.ops:
            if op.type == type_ and op.complete_time is not None:
                bins[int(op.complete_time / 1e9 / width)] += 1
        if not bins:
            continue
        xs = [round((b + 0.5) * width, 6) for b in range(int(end_s / width) + 1)]
        out.append(
            {
                "type": "bar",
                "name": f"{type_} per s",
                "x": xs,
                "y": [round(bins.get(b, 0) / width, 2) for b in range(len(xs))],
                "marker": {"color": color},
                "hovertemplate": "%{y} ops/s at %{x:.2f} s<extra>" + type_ + "</extra>",
                "xaxis": "x4",
                "yaxis": "y4",
                "showlegend": False,
            }
        )
    return out


def fault_colors(run: Run) -> dict[str, str]:
    """One color per fault kind."""
    kinds = sorted({p.kind for p in run.faults})
    return {k: FAULT_PALETTE[i % len(FAULT_PALETTE)] for i, k in enumerate(kinds)}


def _layout(run: Run, labels: list[str]) -> dict[str, Any]:
    colors = fault_colors(run)
    shapes = []
    for p in run.faults:
        stop = run.end if p.stop is None else p.stop
        shapes.append(
            {
                "type": "rect",
                "xref": "x",
                "yref": "paper",
                "x0": _s(p.start),
                "x1": _s(max(stop, p.start + run.end // 400)),
                "y0": 0,
                "y1": 1,
                "fillcolor": colors[p.kind],
                "opacity": 0.12,
                "line": {"width": 0},
                "layer": "below",
            }
        )
    nodes = sorted({s.node for s in run.roles})
    ops_height = max(160, 22 * len(labels))
    roles_height = 40 + 22 * len(nodes) if nodes else 60
    heights = [ops_height, roles_height, 160, 120]
    total = sum(heights) + 60 * len(heights)
    domains = []
    top = 1.0
    for h in heights:
        span = h / total
        domains.append([max(0.0, top - span), top])
        top -= span + 60 / total
    axis = {"matches": "x", "showspikes": True, "spikemode": "across", "spikethickness": 1}
    return {
        "height": total,
        "margin": {"l": 190, "r": 20, "t": 30, "b": 40},
        "hovermode": "closest",
        "dragmode": "zoom",
        "legend": {"orientation": "h", "y": 1.0, "yanchor": "bottom"},
        "shapes": shapes,
        "xaxis": {"anchor": "y", "title": {"text": ""}, "showspikes": True},
        "xaxis2": {"anchor": "y2", **axis},
        "xaxis3": {"anchor": "y3", **axis},
        "xaxis4": {"anchor": "y4", **axis, "title": {"text": "seconds since the start of the run"}},
        "yaxis": {
            "domain": domains[0],
            "tickvals": list(range(len(labels))),
            "ticktext": labels,
            "autorange": "reversed",
            "title": {"text": "operations"},
            "fixedrange": True,
        },
        "yaxis2": {
            "domain": domains[1],
            "type": "category",
            "categoryorder": "array",
            "categoryarray": nodes,
            "title": {"text": "roles"},
            "fixedrange": True,
        },
        "yaxis3": {"domain": domains[2], "title": {"text": "latency (ms)"}, "type": "log"},
        "yaxis4": {"domain": domains[3], "title": {"text": "ops/s"}},
        "barmode": "stack",
        "bargap": 0,
    }


SCRIPT = """
(function(){
  var fig = JSON.parse(document.getElementById('figure-data').textContent);
  var el = document.getElementById('figure');
  Plotly.newPlot(el, fig.data, fig.layout, {responsive: true, displaylogo: false,
    scrollZoom: true, modeBarButtonsToRemove: ['select2d', 'lasso2d']});
  el.on('plotly_hover', function(ev){
    var p = ev.points[0];
    var box = document.getElementById('hovered');
    if (box && p && p.text) { box.innerHTML = p.text; }
  });
  window.orbitalFigure = el;
  document.body.setAttribute('data-figure', 'ready');
})();
"""


def figure_html(run: Run) -> str:
    """The figure's container, its data and the script that draws it (plotly.js separate)."""
    data = json.dumps(figure(run), separators=(",", ":")).replace("</", "<\\/")
    return (
        '<div id="figure" class="figure"></div>'
        '<p class="hovered-box">Last hovered: <span id="hovered">(point at an operation)</span></p>'
        f'<script type="application/json" id="figure-data">{data}</script>'
        f"<script>{SCRIPT}</script>"
    )
