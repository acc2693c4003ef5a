"""The index of past runs in a store: ``STORE/index.html``, and ``orbital serve STORE``.

Every run directory ``STORE/<scenario>/<timestamp>/`` with a ``results.json`` is one row:
verdict, scenario, seed, date, the kinds of fault its schedule held, counts, and a link to its
``report.html``. :func:`write_index` (re)writes the page from what is on disk, so it is always
complete whoever wrote the runs; ``orbital chaos run`` and ``orbital chaos matrix`` call it
after every run. ``orbital serve STORE`` rewrites it and serves the store over HTTP on
127.0.0.1 (Jepsen's ``serve``), until Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import html
import http.server
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

INDEX_NAME = "index.html"


@dataclass(frozen=True, slots=True)
class RunRow:
    """One stored run, as the index shows it."""

    path: str  #: the run directory, relative to the store
    scenario: str
    seed: int | None
    started_at: str
    valid: Any
    exit_code: int | None
    faults: list[str]
    ok_ops: int | None
    has_report: bool


def _faults(results: dict[str, Any]) -> list[str]:
    kinds: list[str] = []
    for op in results.get("schedule") or []:
        if op.get("action") != "start":
            continue
        params = op.get("params") or {}
        what = params.get("disk") or params.get("clock") or params.get("membership")
        what = what or params.get("shape")
        kind = f"{op.get('kind')}:{what}" if what else str(op.get("kind"))
        if kind not in kinds:
            kinds.append(kind)
    return kinds


def scan_store(store: Path) -> list[RunRow]:
    """Every run with a readable ``results.json``, newest first."""
    rows = []
    for results_path in store.glob("*/*/results.json"):
        with contextlib.suppress(OSError, ValueError):
            results = json.loads(results_path.read_text(encoding="utf-8"))
            if not isinstance(results, dict):
                continue
            run_dir = results_path.parent
            counts = results.get("counts") or {}
            rows.append(
                RunRow(
                    path=str(run_dir.relative_to(store)),
                    scenario=str(results.get("scenario", run_dir.parent.name)),
                    seed=results.get("seed"),
                    started_at=str(results.get("started_at", "")),
                    valid=results.get("valid"),
                    exit_code=results.get("exit_code"),
                    faults=_faults(results),
                    ok_ops=counts.get("ok"),
                    has_report=(run_dir / "report.html").exists(),
                )
            )
    return sorted(rows, key=lambda r: (r.started_at, r.path), reverse=True)


def _verdict(valid: Any) -> tuple[str, str]:
    if valid is True:
        return "valid", "ok"
    if valid is False:
        return "INVALID", "bad"
    return str(valid or "unknown"), "unknown"


_STYLE = """
body{font:14px system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse}td,th{padding:4px 10px;border-bottom:1px solid #ddd;text-align:left}
th{background:#f4f4f4}.ok{color:#17702a}.bad{color:#b3261e;font-weight:bold}.unknown{color:#8a6d00}
code{font-size:12px}
"""


def render_index(rows: list[RunRow], title: str) -> str:
    """The index page (self-contained HTML)."""
    valid = sum(1 for r in rows if r.valid is True)
    invalid = sum(1 for r in rows if r.valid is False)
    body = []
    for r in rows:
        text, cls = _verdict(r.valid)
        link = f"{r.path}/report.html" if r.has_report else f"{r.path}/results.json"
        body.append(
            "<tr>"
            f'<td class="{cls}">{html.escape(text)}</td>'
            f"<td>{html.escape(r.scenario)}</td>"
            f"<td>{'' if r.seed is None else r.seed}</td>"
            f"<td>{html.escape(r.started_at[:19].replace('T', ' '))}</td>"
            f"<td>{html.escape(', '.join(r.faults) or '-')}</td>"
            f"<td>{'' if r.ok_ops is None else r.ok_ops}</td>"
            f"<td>{'' if r.exit_code is None else r.exit_code}</td>"
            f'<td><a href="{html.escape(link)}"><code>{html.escape(r.path)}</code></a></td>'
            "</tr>"
        )
    head = "".join(
        f"<th>{h}</th>"
        for h in ("verdict", "scenario", "seed", "date (UTC)", "faults", "ok ops", "exit", "run")
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
        f"<p>{len(rows)} runs: {valid} valid, {invalid} invalid, "
        f"{len(rows) - valid - invalid} undecided or not run.</p>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
        "</body></html>\n"
    )


def write_index(store: Path) -> Path:
    """Write ``STORE/index.html`` from the runs on disk; its path."""
    store.mkdir(parents=True, exist_ok=True)
    path = store / INDEX_NAME
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(render_index(scan_store(store), f"Orbital chaos runs: {store}"), "utf-8")
    tmp.replace(path)
    return path


# ---- orbital serve -----------------------------------------------------------------------------
def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("store", type=Path, nargs="?", default=Path("store"), help="the store")
    parser.add_argument("--port", type=int, default=8080, help="TCP port (default 8080)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def run(args: argparse.Namespace) -> int:
    store: Path = args.store
    if not store.is_dir():
        print(f"orbital serve: {store}: no such store directory", file=sys.stderr)
        return 2
    if not 0 < args.port < 65536:
        print(f"orbital serve: --port: must be 1..65535, got {args.port}", file=sys.stderr)
        return 2
    write_index(store)
    handler = functools.partial(_QuietHandler, directory=str(store))
    try:
        server = http.server.ThreadingHTTPServer((args.host, args.port), handler)
    except OSError as exc:
        print(f"orbital serve: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2
    print(f"serving {store} at http://{args.host}:{server.server_port}/ (Ctrl-C stops)")
    with server, contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0
