"""Checking whole files: one budget per file, across every key and every worker process.

Theory of operation
-------------------
A :class:`Checker` checks files one after another in this process (``orbital check`` with many
files pays for Python and its imports once). Each file gets one wall-clock deadline, shared by
all its keys: keys are checked until the deadline, and a key still running then (or not yet
started) is ``unknown`` with the reason. Once a key is found not linearizable the file's other
keys stop (they are reported as not checked): the verdict is already ``False``.

A file with many keys and many operations is checked on ``jobs`` worker processes (a pool
forked once, before the big file is read, so that the workers stay small and are shared by all
files). The deadline is an absolute ``time.monotonic()`` reading (one clock for every process
on the machine); a shared event tells the workers to stop when one key fails. A worker that
crashes makes its key ``unknown``, never the whole check.
"""

from __future__ import annotations

import contextlib
import gc
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from harness.checker.events import OpRecord, read_records
from harness.checker.linearizable import (
    NOT_CHECKED,
    CheckResult,
    KeyResult,
    Row,
    as_row,
    by_key,
    check_prepared,
    check_records,
    finish,
    key_result,
    prepare_rows,
)
from harness.checker.model import DEFAULT_MAX_CONFIGS, Budget, RawResult

if TYPE_CHECKING:
    from concurrent.futures import Future, ProcessPoolExecutor

PARALLEL_MIN_OPS = 20_000  #: below this many operations a file is checked in this process
PREFORK_BYTES = 2_000_000  #: fork the workers before reading a file at least this big
LATE = "the time limit ran out before this key was checked"

_stop: Any = None  # the worker's shared stop event (set by the pool initializer)


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    """The cyclic garbage collector off: reading and checking build millions of small
    objects and no cycles, and each collection would scan them all again (it more than
    doubled the time to read a million operations)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _init_worker(stop: Any) -> None:
    global _stop
    _stop = stop


def _noop() -> None:
    return None


def _task(rows: list[Row], deadline: float, max_configs: int) -> RawResult:
    """A worker's job: one key (its operations as plain tuples, quick to send) under the
    file's budget."""
    stop = _stop
    if time.monotonic() > deadline:
        return RawResult("unknown", NOT_CHECKED, reason=LATE)
    if stop is not None and stop.is_set():
        return RawResult("unknown", NOT_CHECKED, reason="stopped: another key is not linearizable")
    budget = Budget(deadline, max_configs, stop=None if stop is None else stop.is_set)
    with _no_gc():
        result = check_prepared(prepare_rows(rows), budget=budget)
    if result.valid is False and stop is not None:
        stop.set()
    return result


class Checker:
    """Checks history files one after another, sharing one pool of worker processes."""

    def __init__(
        self,
        *,
        time_limit: float | None = 60.0,
        jobs: int = 0,
        max_configs: int = DEFAULT_MAX_CONFIGS,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self.time_limit = time_limit
        self.jobs = jobs or os.cpu_count() or 1
        self.max_configs = max_configs
        self.progress = progress
        self._pool: ProcessPoolExecutor | None = None
        self._stop: Any = None

    def __enter__(self) -> Checker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the worker processes."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _say(self, text: str) -> None:
        if self.progress is not None:
            self.progress(text)

    def pool(self) -> ProcessPoolExecutor:
        """The worker pool, started (all workers forked) on first use."""
        if self._pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            ctx = multiprocessing.get_context("fork")
            self._stop = ctx.Event()
            self._pool = ProcessPoolExecutor(
                self.jobs, mp_context=ctx, initializer=_init_worker, initargs=(self._stop,)
            )
            for f in [self._pool.submit(_noop) for _ in range(self.jobs)]:
                f.result()
        return self._pool

    def check_file(self, path: str) -> CheckResult:
        """Read, validate and check one file (raises ``HistoryError`` on bad input)."""
        started = time.monotonic()
        try:
            big = os.path.getsize(path) >= PREFORK_BYTES
        except OSError:
            big = False
        if big and self.jobs > 1:
            self.pool()  # fork now, while this process is small
            self._say(f"{path}: reading")
        with _no_gc():
            records = read_records(path)
            return self.check_records(records, started)

    def check_records(
        self, records: Sequence[OpRecord], started: float | None = None
    ) -> CheckResult:
        """Check operations under one budget starting at ``started`` (default: now)."""
        started = time.monotonic() if started is None else started
        deadline = started + self.time_limit if self.time_limit is not None else float("inf")
        groups = by_key(records)
        if self.jobs > 1 and len(groups) > 1 and len(records) >= PARALLEL_MIN_OPS:
            self._say(
                f"checking {len(records)} operations on {len(groups)} keys, {self.jobs} workers"
            )
            return self._parallel(groups, started, deadline)
        budget = Budget(deadline, self.max_configs)
        return check_records(records, budget=budget, started=started)

    def _parallel(
        self, groups: dict[str, list[OpRecord]], started: float, deadline: float
    ) -> CheckResult:
        from concurrent.futures import FIRST_COMPLETED, wait

        pool = self.pool()
        self._stop.clear()
        keys = sorted(groups, key=lambda k: (-len(groups[k]), k))  # longest first
        futures: dict[Future[RawResult], str] = {}
        for key in keys:
            rows = [as_row(o) for o in groups[key]]
            futures[pool.submit(_task, rows, deadline, self.max_configs)] = key
        results: dict[str, KeyResult] = {}
        failed: str | None = None
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in done:
                key = futures[f]
                raw = _outcome(f)
                results[key] = key_result(key, groups[key], raw)
                if raw.valid is False and failed is None:
                    failed = key
                    self._stop.set()
                    for other in pending:
                        other.cancel()
        why = f"stopped after key {failed!r} was found not linearizable"
        for key in keys:
            r = results[key]
            if failed is not None and r.reason is not None and r.reason.startswith("stopped"):
                r.reason = why
        return finish(results, started)


def _outcome(f: Future[RawResult]) -> RawResult:
    if f.cancelled():
        return RawResult("unknown", NOT_CHECKED, reason="stopped")
    try:
        return f.result()
    except Exception as exc:  # a crashing checker gives unknown, as in Jepsen
        return RawResult("unknown", "search", reason=f"checker failed: {type(exc).__name__}: {exc}")
