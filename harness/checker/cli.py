"""``orbital check HISTORY.jsonl...``: linearizability of recorded client histories.

One verdict per file: linearizable, NOT linearizable (with the anomaly in plain words: its
kind, the key, the operations with the one that cannot be placed first, the longest
linearizable prefix), unknown (with the reason per key) or unreadable (the reader's one-line
message naming file, line and field). With several files a summary line follows. ``--json``
prints one document ``{"files": [{"path", "linearizability" | "error"}]}`` instead.
``--report OUT.html`` also writes the interactive HTML report of the (single) history.

Exit 0 when every file is linearizable, 1 when any is not, else 2 (any unknown or unreadable
file, or bad arguments). All files are checked in this one process (and its worker pool), so
many small files cost one Python start-up; only the modules a check needs are imported.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import TYPE_CHECKING, Any

from raft.argtypes import whole_number

if TYPE_CHECKING:
    from harness.checker.linearizable import CheckResult


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


_jobs = whole_number(0, note="0: all cores")


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``check`` arguments."""
    parser.add_argument("histories", nargs="+", metavar="HISTORY.jsonl", help="history files")
    parser.add_argument("--json", action="store_true", help="print machine-readable results")
    parser.add_argument(
        "--time-limit",
        type=_seconds,
        default=60.0,
        metavar="S",
        help="wall-clock seconds per file, all keys and workers together, after which the "
        "keys not decided are 'unknown' (default 60)",
    )
    parser.add_argument(
        "--jobs", type=_jobs, default=0, metavar="N", help="worker processes (default 0: all cores)"
    )
    parser.add_argument(
        "--report",
        metavar="OUT.html",
        help="also write the interactive HTML report of the history (one file only)",
    )


def _count(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def show(value: Any) -> str:
    """A value as JSON spells it (``null``, ``true``, ``[1, 2]``)."""
    return json.dumps(value)


def verdict_text(path: str, result: CheckResult) -> str:
    """The human-readable verdict of one file (several lines for an anomaly)."""
    doc = result.to_json()
    sizes = f"{_count(doc['ops'], 'op')}, {_count(len(doc['keys']), 'key')}, {doc['seconds']:.2f} s"
    if result.valid is True:
        return f"{path}: linearizable ({sizes})"
    if result.valid == "unknown":
        if result.reason:
            return f"{path}: unknown ({sizes}): {result.reason}"
        by_reason: dict[str, list[str]] = {}
        for key, r in sorted(result.keys.items()):
            if r.valid == "unknown":
                by_reason.setdefault(r.reason or "undecided", []).append(key)
        lines = [f"{path}: unknown ({sizes})"]
        for reason, keys in by_reason.items():
            shown = ", ".join(repr(k) for k in keys[:8]) + (" ..." if len(keys) > 8 else "")
            lines.append(f"  {_count(len(keys), 'key')} {shown}: {reason}")
        return "\n".join(lines)
    lines = [f"{path}: NOT linearizable ({sizes})"]
    for anomaly in doc["anomalies"]:
        lines += anomaly_lines(anomaly)
    return "\n".join(lines)


def anomaly_lines(anomaly: dict[str, Any]) -> list[str]:
    """An anomaly as indented text: kind and key, paragraph, operations (culprit first)."""
    import textwrap

    lines = [f"  key {anomaly['key']!r}: {anomaly['kind']}"]
    lines += textwrap.wrap(
        anomaly["explanation"], width=96, initial_indent="    ", subsequent_indent="    "
    )
    culprit = anomaly.get("culprit") or {}
    for op in anomaly["ops"]:
        mark = "culprit" if op == culprit else ""
        lines.append(f"    {mark:<8}{op_text(op)}")
    prefix = anomaly.get("prefix")
    if prefix:
        tail = ", ".join(
            f"{op_text(o, short=True)} -> {show(o['after'])}" for o in prefix["last"][-4:]
        )
        lines.append(
            f"    longest linearizable prefix: {_count(prefix['ops'], 'op')}, through event "
            f"{prefix['through_event']}; it ends: {tail}"
        )
    return lines


def op_text(op: dict[str, Any], short: bool = False) -> str:
    """``events 4-5  p1 read -> 1 (ok, node n2)``."""
    end = "?" if op["completion_index"] is None else op["completion_index"]
    if op["f"] == "read":
        what = f"p{op['process']} read -> {show(op['value'])}"
    else:
        what = f"p{op['process']} {op['f']} {show(op['value'])}"
    if short:
        return what
    extra = [op["type"]] + [x for x in (op.get("error"), op.get("node")) if x]
    return f"events {op['index']}-{end}  {what} ({', '.join(extra)})"


def run(args: argparse.Namespace) -> int:
    """Check every file; print verdicts; return the exit code."""
    from harness.checker.events import HistoryError
    from harness.checker.run import Checker

    if args.report and len(args.histories) != 1:
        print("orbital check: --report needs exactly one history file", file=sys.stderr)
        return 2
    progress = _progress if sys.stderr.isatty() and not args.json else None
    verdicts: list[object] = []
    documents: list[dict[str, Any]] = []
    last: CheckResult | None = None
    with Checker(time_limit=args.time_limit, jobs=args.jobs, progress=progress) as checker:
        for path in args.histories:
            try:
                result = checker.check_file(path)
            except HistoryError as exc:
                print(f"orbital check: {exc}", file=sys.stderr)
                verdicts.append("unreadable")
                documents.append({"path": path, "error": str(exc)})
                if not args.json:
                    print(f"{path}: unreadable: {exc}")
                continue
            last = result
            verdicts.append(result.valid)
            documents.append({"path": path, "linearizability": result.to_json()})
            if not args.json:
                print(verdict_text(path, result), flush=True)
    if args.json:
        print(json.dumps({"files": documents}, indent=2))
    elif len(args.histories) > 1:
        print(_summary(verdicts))
    code = 1 if False in verdicts else 0 if all(v is True for v in verdicts) else 2
    if args.report and last is not None:
        code = max(code, _write_report(args.histories[0], last, args.report))
    return code


def _summary(verdicts: list[object]) -> str:
    names = {True: "linearizable", False: "NOT linearizable", "unknown": "unknown"}
    counts: dict[str, int] = {}
    for v in verdicts:
        name = names.get(v, "unreadable") if isinstance(v, bool | str) else "unreadable"
        counts[name] = counts.get(name, 0) + 1
    parts = [f"{n} {name}" for name, n in counts.items()]
    return f"{_count(len(verdicts), 'file')}: " + ", ".join(parts)


def _write_report(history: str, result: CheckResult, out: str) -> int:
    from harness.report import ReportError, write_history_report

    try:
        path = write_history_report(history, out, result.to_json())
    except (ReportError, OSError) as exc:
        print(f"orbital check: cannot write the report: {exc}", file=sys.stderr)
        return 2
    print(f"report: {path}", file=sys.stderr)
    return 0


def _progress(text: str) -> None:
    print(f"orbital check: {text} ...", file=sys.stderr, flush=True)
