"""FileStorage throughput: group commit against one fsync per entry and the disk's fsync rate.

Prints one JSON object. Cases, each run for ``--seconds`` on the same disk in the same run:

* ``raw_fsync``: write 100 bytes + ``os.fsync`` in a loop on a temp file in the same dir;
* ``per_entry``: ``append_log`` of one 100-byte entry per call (one fsync per entry);
* ``group_commit_N``: ``append_log`` of N 100-byte entries per call (one fsync per batch).

The cases run interleaved in short slices (raw, per entry, 64, 256, raw, ...) so that all see
the same disk conditions on a shared machine. ``fsync_ratio`` is a case's append_log calls
per second over the raw fsync rate: the goal is that group commit reaches at least 0.8 of
what the disk's fsync rate allows.

Usage: ``python -m bench.storage [--seconds 3] [--rounds 10] [--dir DIR]``. The default DIR is
a fresh temp dir under the system temp directory, removed afterwards; the JSON says where,
and whether it is on the repository's filesystem.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from raft.core.types import LogEntry
from raft.storage import FileStorage

ENTRY_BYTES = 100
GOAL = 0.8
REPO = Path(__file__).resolve().parent.parent


class RawFsync:
    """Write 100 bytes + ``os.fsync`` in a loop on a temp file."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "raw-fsync"
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.payload = b"r" * ENTRY_BYTES

    def step(self) -> int:
        os.write(self.fd, self.payload)
        os.fsync(self.fd)
        return 0

    def close(self) -> None:
        os.close(self.fd)


class Appender:
    """``append_log`` of ``batch`` 100-byte entries per call on a fresh FileStorage."""

    def __init__(self, directory: Path, batch: int) -> None:
        self.store = FileStorage(tempfile.mkdtemp(dir=directory, prefix=f"store-{batch}-"))
        self.batch = batch
        self.index = 1
        self.command = b"c" * ENTRY_BYTES

    def step(self) -> int:
        first = self.index
        self.index += self.batch
        self.store.append_log([LogEntry(i, 1, self.command) for i in range(first, self.index)])
        return self.batch

    def close(self) -> None:
        self.store.close()


class Case:
    """Calls, entries and time accumulated over the slices a case ran."""

    def __init__(self, name: str, runner: RawFsync | Appender) -> None:
        self.name, self.runner = name, runner
        self.calls = self.entries = 0
        self.elapsed = 0.0

    def run_slice(self, seconds: float) -> None:
        start = time.perf_counter()
        while (now := time.perf_counter()) - start < seconds:
            self.entries += self.runner.step()
            self.calls += 1
        self.elapsed += now - start

    @property
    def rate(self) -> float:
        return self.calls / self.elapsed


def measure(work: Path, seconds: float, rounds: int) -> tuple[Case, list[Case]]:
    """Run every case in interleaved slices, so that all see the same disk conditions."""
    raw = Case("raw_fsync", RawFsync(work))
    cases = [
        Case("per_entry" if b == 1 else f"group_commit_{b}", Appender(work, b))
        for b in (1, 64, 256)
    ]
    try:
        for _ in range(rounds):
            for case in (raw, *cases):
                case.run_slice(seconds / rounds)
    finally:
        for case in (raw, *cases):
            case.runner.close()
    return raw, cases


def report(case: Case, raw: Case) -> dict[str, object]:
    return {
        "name": case.name,
        "batch": case.entries // max(case.calls, 1),
        "append_log_calls_per_s": round(case.rate, 1),
        "appends_per_s": round(case.entries / case.elapsed, 1),
        "mb_per_s": round(case.entries * ENTRY_BYTES / case.elapsed / 1e6, 3),
        "fsync_ratio": round(case.rate / raw.rate, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per case (default 3)")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved slices per case")
    parser.add_argument("--dir", type=Path, default=None, help="where to make the temp dir")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="orbital-bench-", dir=args.dir))
    try:
        raw, cases = measure(work, args.seconds, args.rounds)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results = [report(c, raw) for c in cases]
    group = [r for r in results if str(r["name"]).startswith("group")]
    print(
        json.dumps(
            {
                "directory": str(work),
                "same_filesystem_as_repo": os.stat(work.parent).st_dev == os.stat(REPO).st_dev,
                "seconds_per_case": args.seconds,
                "interleaved_rounds": args.rounds,
                "entry_bytes": ENTRY_BYTES,
                "raw_fsync_per_s": round(raw.rate, 1),
                "cases": results,
                "goal": f"group commit append_log calls/s >= {GOAL} * raw fsync/s",
                "goal_met": all(float(str(r["fsync_ratio"])) >= GOAL for r in group),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
