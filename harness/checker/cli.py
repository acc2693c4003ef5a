"""``orbital check HISTORY.jsonl...``: linearizability of recorded client histories.

One verdict line per file (with the anomaly's explanation and operations when there is one),
or with ``--json`` one JSON document ``{"files": [{"path", "linearizability" | "error"}]}``.
Exit 0 when every file is linearizable, 1 when any is not, 2 when any is unknown or unreadable
(an unreadable file prints the reader's message naming file, line and field, no traceback;
an empty history is refused the same way: there is nothing to call linearizable).

Keys are independent, so a history with many keys and many operations is checked on all cores
(a process pool over keys); a small one is checked in this process, so that checking a tiny
file costs little more than starting Python. Heavy imports happen inside :func:`run`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harness.checker.linearizable import CheckResult, KOp, RawResult
    from harness.history import Operation

#: below this many operations (or with one key) a history is checked in-process
PARALLEL_MIN_OPS = 20_000


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``check`` arguments."""
    parser.add_argument("histories", nargs="+", metavar="HISTORY.jsonl", help="history files")
    parser.add_argument("--json", action="store_true", help="print machine-readable results")
    parser.add_argument(
        "--time-limit",
        type=float,
        default=60.0,
        metavar="S",
        help="seconds per file after which the verdict is 'unknown' (default 60)",
    )
    parser.add_argument(
        "--jobs", type=int, default=0, metavar="N", help="worker processes (default: all cores)"
    )


def _check_task(kops: list[KOp], time_limit: float) -> RawResult:
    from harness.checker.linearizable import check_prepared

    return check_prepared(kops, time_limit=time_limit)


def check_parallel(operations: Sequence[Operation], time_limit: float, jobs: int) -> CheckResult:
    """Check operations key by key on ``jobs`` worker processes."""
    from concurrent.futures import ProcessPoolExecutor

    from harness.checker.linearizable import CheckResult, by_key, combine, key_result, prepare

    started = time.monotonic()
    groups = by_key(operations)
    keys = sorted(groups, key=lambda k: -len(groups[k]))  # longest first
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = {k: pool.submit(_check_task, prepare(groups[k]), time_limit) for k in keys}
        results = {k: key_result(k, groups[k], futures[k].result()) for k in keys}
    verdict = combine(r.valid for r in results.values())
    return CheckResult(verdict, results, time.monotonic() - started)


def check_file(path: str, time_limit: float, jobs: int) -> CheckResult:
    """Read, validate and check one history file (raises ``HistoryError`` on bad input)."""
    from harness.checker.linearizable import check_operations
    from harness.history import HistoryError, pair_operations, read_history

    operations = pair_operations(read_history(path))
    if not operations:
        raise HistoryError("empty history: no operations to check", path=path)
    many_keys = len({o.invoke.key for o in operations}) > 1
    if jobs > 1 and many_keys and len(operations) >= PARALLEL_MIN_OPS:
        return check_parallel(operations, time_limit, jobs)
    return check_operations(operations, time_limit=time_limit)


def _verdict_line(path: str, result: CheckResult) -> str:
    doc = result.to_json()
    sizes = f"{doc['ops']} ops, {len(doc['keys'])} keys, {doc['seconds']:.2f}s"
    if result.valid is True:
        return f"{path}: linearizable ({sizes})"
    if result.valid == "unknown":
        reasons = {r.reason for r in result.keys.values() if r.reason}
        keys = ", ".join(doc["unknown_keys"])
        return f"{path}: unknown ({sizes}; keys {keys}: {'; '.join(sorted(reasons))})"
    anomaly = result.anomaly
    assert anomaly is not None
    lines = [f"{path}: NOT linearizable ({sizes}); key {anomaly.key!r}: {anomaly.explanation}"]
    for op in anomaly.to_json()["ops"]:
        end = "never completed" if op["completion_index"] is None else f"{op['completion_index']}"
        what = f"p{op['process']} {op['f']} {op['value']!r} -> {op['type']}"
        error = f" ({op['error']})" if op["error"] else ""
        lines.append(f"    event {op['index']}..{end}  {what}{error}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Check every file; print verdicts; return the exit code."""
    from harness.history import HistoryError

    jobs = args.jobs or os.cpu_count() or 1
    verdicts: list[object] = []
    documents: list[dict[str, Any]] = []
    for path in args.histories:
        try:
            result = check_file(path, args.time_limit, jobs)
        except HistoryError as exc:
            print(f"orbital check: {exc}", file=sys.stderr)
            verdicts.append("bad")
            documents.append({"path": path, "error": str(exc)})
            continue
        verdicts.append(result.valid)
        documents.append({"path": path, "linearizability": result.to_json()})
        if not args.json:
            print(_verdict_line(path, result))
    if args.json:
        print(json.dumps({"files": documents}, indent=2))
    if False in verdicts:
        return 1
    return 0 if all(v is True for v in verdicts) else 2
