"""FileStorage throughput: group commit against one fsync per entry and the disk's fsync rate.

Prints one JSON object. Only the storage call (or the raw write + sync) is timed: the entries
of the next batch are built before its clock starts. Cases, all on the same disk in the same
run, interleaved in short slices (so that all see the same disk conditions on a shared
machine), in a new random order each round (so that no case always follows the one whose
writes the disk may still be flushing):

* ``raw_fsync_100B``: ``os.write`` of 100 bytes + ``os.fsync``, appending to a file;
* ``raw_fsync_<n>B``: the same with ``n`` = the bytes one ``append_log`` of the batch writes
  (records are 126 bytes per 100-byte entry): the same syscalls, on the same kind of file,
  as the store makes, so the same disk work per call;
* ``raw_fdatasync_prewritten_<n>B``: ``n`` bytes + ``os.fdatasync`` over a zero-filled,
  fsynced file (no size or extent change per sync), with the zero-filling left out of the
  time: the bound for FileStorage, which preallocates its last segment the same way but pays
  for the zeros inside the appends that extend it;
* ``per_entry`` / ``group_commit_N``: ``append_log`` of 1 / N 100-byte entries per call.

``fsync_ratio`` (the goal: >= 0.8 for group commit) is a case's ``append_log`` calls/s over
``raw_fsync_<n>B``/s: the same bytes per call, appended and fsynced, the way a log without
preallocation must write them. The store's ratio passes 1 where preallocation saves more
than its own work (CPU, zero-filling) costs. ``ratio_vs_raw_fsync_100B`` (the issue's
first reference) and ``ratio_vs_prewritten_fdatasync`` are reported beside it.
``cpu_us_per_call`` is process CPU time per call, kernel time of write and fsync included;
the same for the raw case of the same bytes is beside it, so the difference is the store's
own CPU (encoding, bookkeeping).

Usage: ``python -m bench.storage [--seconds 2] [--rounds 10] [--dir DIR]``. The default DIR is
a fresh temp dir under the system temp directory, removed afterwards; the JSON says where,
and whether it is on the repository's filesystem.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Protocol

from raft.core.types import LogEntry
from raft.storage import FileStorage
from raft.wal import encode_entries

ENTRY_BYTES = 100
BATCHES = (1, 64, 256)
GOAL = 0.8
PREWRITTEN = 64 << 20
REPO = Path(__file__).resolve().parent.parent


class Runner(Protocol):
    def prepare(self) -> None: ...
    def step(self) -> int: ...
    def close(self) -> None: ...


class RawWrite:
    """``os.write`` of ``size`` bytes + a sync, appending (or over a zero-filled file)."""

    def __init__(self, directory: Path, size: int, *, prewritten: bool = False) -> None:
        self.path = directory / f"raw-{size}-{'prewritten' if prewritten else 'append'}"
        self.size, self.prewritten = size, prewritten
        self.payload = b"r" * size
        self.fd = -1
        self._reopen()

    def _reopen(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.path.unlink()
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        if self.prewritten:
            zeros = bytes(1 << 20)
            for _ in range(PREWRITTEN >> 20):
                os.write(self.fd, zeros)
            os.fsync(self.fd)
            os.lseek(self.fd, 0, os.SEEK_SET)
        self.written = 0
        self.sync = os.fdatasync if self.prewritten else os.fsync

    def prepare(self) -> None:
        if self.prewritten and self.written + self.size > PREWRITTEN:
            self._reopen()

    def step(self) -> int:
        os.write(self.fd, self.payload)
        self.sync(self.fd)
        self.written += self.size
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
        self.entries: list[LogEntry] = []

    def prepare(self) -> None:
        first, self.index = self.index, self.index + self.batch
        self.entries = [LogEntry(i, 1, self.command) for i in range(first, self.index)]

    def step(self) -> int:
        self.store.append_log(self.entries)
        return self.batch

    def close(self) -> None:
        self.store.close()


class Case:
    """Calls, entries, wall and CPU time of the timed calls over the slices a case ran."""

    def __init__(self, name: str, runner: Runner, bytes_per_call: int) -> None:
        self.name, self.runner, self.bytes_per_call = name, runner, bytes_per_call
        self.calls = self.entries = 0
        self.elapsed = self.cpu = 0.0

    def run_slice(self, seconds: float) -> None:
        runner, clock, cpu_clock = self.runner, time.perf_counter, time.process_time
        end = clock() + seconds
        while clock() < end:
            runner.prepare()  # not timed
            cpu, start = cpu_clock(), clock()
            self.entries += runner.step()
            self.elapsed += clock() - start
            self.cpu += cpu_clock() - cpu
            self.calls += 1

    @property
    def rate(self) -> float:
        return self.calls / self.elapsed


def record_bytes(batch: int) -> int:
    """Bytes one ``append_log`` of ``batch`` 100-byte entries writes."""
    return len(encode_entries([LogEntry(i, 1, b"c" * ENTRY_BYTES) for i in range(1, batch + 1)])[0])


def measure(work: Path, seconds: float, rounds: int) -> tuple[list[Case], dict[int, Case]]:
    """Run every case in interleaved slices, so that all see the same disk conditions."""
    cases = [Case("raw_fsync_100B", RawWrite(work, ENTRY_BYTES), ENTRY_BYTES)]
    stores: dict[int, Case] = {}
    for batch in BATCHES:
        n = record_bytes(batch)
        cases.append(Case(f"raw_fsync_{n}B", RawWrite(work, n), n))
        prewritten = RawWrite(work, n, prewritten=True)
        cases.append(Case(f"raw_fdatasync_prewritten_{n}B", prewritten, n))
        name = "per_entry" if batch == 1 else f"group_commit_{batch}"
        stores[batch] = Case(name, Appender(work, batch), n)
        cases.append(stores[batch])
    order = random.Random(0)  # the order of the cases changes from round to round
    try:
        for _ in range(rounds):
            for case in order.sample(cases, len(cases)):
                case.run_slice(seconds / rounds)
    finally:
        for case in cases:
            case.runner.close()
    return cases, stores


def by_name(cases: list[Case], name: str) -> Case:
    return next(c for c in cases if c.name == name)


def report(case: Case, cases: list[Case]) -> dict[str, object]:
    n = case.bytes_per_call
    same = by_name(cases, f"raw_fsync_{n}B")
    prewritten = by_name(cases, f"raw_fdatasync_prewritten_{n}B")
    raw100 = by_name(cases, "raw_fsync_100B")
    return {
        "name": case.name,
        "batch": case.entries // max(case.calls, 1),
        "bytes_per_call": n,
        "append_log_calls_per_s": round(case.rate, 1),
        "appends_per_s": round(case.entries / case.elapsed, 1),
        "mb_per_s": round(case.entries * ENTRY_BYTES / case.elapsed / 1e6, 3),
        "cpu_us_per_call": round(case.cpu / case.calls * 1e6, 1),
        f"raw_fsync_{n}B_cpu_us_per_call": round(same.cpu / same.calls * 1e6, 1),
        f"raw_fsync_{n}B_per_s": round(same.rate, 1),
        "fsync_ratio": round(case.rate / same.rate, 3),
        "ratio_vs_raw_fsync_100B": round(case.rate / raw100.rate, 3),
        "ratio_vs_prewritten_fdatasync": round(case.rate / prewritten.rate, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per case (default 2)")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved slices per case")
    parser.add_argument("--dir", type=Path, default=None, help="where to make the temp dir")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="orbital-bench-", dir=args.dir))
    load_before = os.getloadavg()
    try:
        cases, stores = measure(work, args.seconds, args.rounds)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load_after = os.getloadavg()
    results = [report(c, cases) for c in stores.values()]
    group = [r for r in results if str(r["name"]).startswith("group")]
    raw = {c.name: round(c.rate, 1) for c in cases if c.name.startswith("raw")}
    print(
        json.dumps(
            {
                "directory": str(work),
                "same_filesystem_as_repo": os.stat(work.parent).st_dev == os.stat(REPO).st_dev,
                "cpus": os.cpu_count(),
                "loadavg_1_5_15_before": [round(x, 2) for x in load_before],
                "loadavg_1_5_15_after": [round(x, 2) for x in load_after],
                "seconds_per_case": args.seconds,
                "interleaved_rounds": args.rounds,
                "entry_bytes": ENTRY_BYTES,
                "raw_per_s": raw,
                "cases": results,
                "goal": f"group commit append_log calls/s >= {GOAL} * raw_fsync_<same bytes>/s",
                "goal_met": all(float(str(r["fsync_ratio"])) >= GOAL for r in group),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
