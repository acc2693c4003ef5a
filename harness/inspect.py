"""``orbital inspect DATA_DIR``: print a node's durable state without a running node.

Reads the directory with :func:`raft.storage.read_data_dir` (read-only, no lock: it works
beside a running node and never changes a file) and prints the hard state, the snapshot
metadata, a torn tail if there is one, and the log: index, term, kind, size and a short
printable preview of each command. By default the last 50 entries; ``--from INDEX`` and
``--limit N`` choose others (``--limit 0``: all).

Exit codes: 0 read fine (a torn tail is reported, not an error: a restart cuts it off);
1 the data is corrupted (the message names the file and byte offset); 2 bad arguments or
no such directory.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from raft.core.types import LogEntry, SnapshotMeta
from raft.storage import (
    HARDSTATE_NAME,
    SNAPSHOT_NAME,
    WAL_DIR,
    DurableView,
    StorageCorrupted,
    StorageError,
    read_data_dir,
)

PREVIEW = 40
DEFAULT_LIMIT = 50


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data_dir", metavar="DATA_DIR", type=Path, help="a node's data directory")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument(
        "--limit",
        type=int,
        default=DEFAULT_LIMIT,
        metavar="N",
        help=f"show at most N entries (default {DEFAULT_LIMIT}; 0 shows all)",
    )
    parser.add_argument(
        "--from",
        dest="from_index",
        type=int,
        default=None,
        metavar="INDEX",
        help="show entries from INDEX on (default: the last N)",
    )


def run(args: argparse.Namespace) -> int:
    if args.limit < 0 or (args.from_index is not None and args.from_index < 0):
        print("orbital inspect: --limit and --from must not be negative", file=sys.stderr)
        return 2
    problem = not_a_data_dir(args.data_dir)
    if problem is not None:
        print(f"orbital inspect: {problem}", file=sys.stderr)
        return 2
    try:
        view = read_data_dir(args.data_dir)
    except StorageCorrupted as exc:
        print(f"orbital inspect: corrupted: {exc}", file=sys.stderr)
        return 1
    except StorageError as exc:
        print(f"orbital inspect: {exc}", file=sys.stderr)
        return 2
    shown = select(view.log, args.from_index, args.limit)
    text = json.dumps(to_dict(view, shown), indent=2) if args.json else render(view, shown)
    try:
        print(text)
        sys.stdout.flush()
    except BrokenPipeError:  # `orbital inspect DIR | head`: the reader has seen enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def not_a_data_dir(path: Path) -> str | None:
    """Why ``path`` is not a node's data directory (None if it looks like one)."""
    if not path.exists():
        return f"{path}: no such directory"
    if not path.is_dir():
        return f"{path}: a file, not a node's data directory"
    if not any((path / name).exists() for name in (HARDSTATE_NAME, SNAPSHOT_NAME, WAL_DIR)):
        return (
            f"{path}: not a node's data directory (none of {HARDSTATE_NAME}, {SNAPSHOT_NAME}, "
            f"{WAL_DIR}/ in it)"
        )
    return None


def select(log: list[LogEntry], from_index: int | None, limit: int) -> list[LogEntry]:
    """The entries to show: from ``from_index`` (or the last ``limit``), at most ``limit``."""
    if from_index is None:
        return log[-limit:] if limit else list(log)
    start = 0 if not log else max(0, from_index - log[0].index)
    return log[start : start + limit] if limit else log[start:]


def preview(command: bytes) -> str:
    """A short, printable, one-line view of a command."""
    text = command[:PREVIEW].decode("utf-8", errors="replace")
    text = "".join(c if c.isprintable() and c != "\ufffd" else "." for c in text)
    return text + ("..." if len(command) > PREVIEW else "")


def _meta_dict(meta: SnapshotMeta | None) -> dict[str, object] | None:
    if meta is None:
        return None
    conf = meta.conf
    return {
        "index": meta.index,
        "term": meta.term,
        "voters": sorted(conf.voters),
        "learners": sorted(conf.learners),
    }


def _entry_dict(e: LogEntry) -> dict[str, object]:
    return {
        "index": e.index,
        "term": e.term,
        "kind": e.kind.name.lower(),
        "size": len(e.command),
        "preview": preview(e.command),
    }


def to_dict(view: DurableView, shown: list[LogEntry]) -> dict[str, object]:
    log = view.log
    torn = view.torn
    return {
        "directory": str(view.directory),
        "hard_state": {"term": view.hard_state.term, "voted_for": view.hard_state.voted_for},
        "snapshot": _meta_dict(view.snapshot_meta),
        "torn_tail": None
        if torn is None
        else {
            "file": str(torn.path),
            "offset": torn.offset,
            "bytes": torn.dropped,
            "reason": torn.reason,
        },
        "segments": [str(p) for p in view.segments],
        "log": {
            "first_index": log[0].index if log else None,
            "last_index": log[-1].index if log else None,
            "count": len(log),
        },
        "entries": [_entry_dict(e) for e in shown],
    }


def render(view: DurableView, shown: list[LogEntry]) -> str:
    """The text report."""
    hs, meta, log = view.hard_state, view.snapshot_meta, view.log
    lines = [
        f"data directory: {view.directory}",
        f"hard state:     term {hs.term}, voted for {hs.voted_for or '-'}",
    ]
    if meta is None:
        lines.append("snapshot:       none")
    else:
        voters = ",".join(sorted(meta.conf.voters)) or "-"
        learners = ",".join(sorted(meta.conf.learners)) or "-"
        lines.append(
            f"snapshot:       index {meta.index}, term {meta.term}, "
            f"voters {voters}, learners {learners}"
        )
    if view.torn is not None:
        lines.append(f"torn tail:      {view.torn} (a restart cuts it off)")
    span = f"{log[0].index}..{log[-1].index}" if log else "-"
    count = f"{len(log)} entries ({span}) in {len(view.segments)} segment(s)"
    if shown:
        count += f"; showing {len(shown)} ({shown[0].index}..{shown[-1].index})"
    lines += [f"log:            {count}", ""]
    lines.append(f"{'index':>10} {'term':>6}  {'kind':<7} {'size':>7}  command")
    for e in shown:
        kind = e.kind.name.lower()
        lines.append(
            f"{e.index:>10} {e.term:>6}  {kind:<7} {len(e.command):>7}  {preview(e.command)}"
        )
    return "\n".join(lines)
