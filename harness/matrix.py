"""``orbital chaos matrix MATRIX``: scenarios x seeds, one chaos run each (nightly runs).

The matrix file (TOML, validated; a bad field is named, exit 2)::

    scenarios = ["../*.toml"]  # globs relative to the matrix file (the matrix file itself and
                               # files that are not scenarios are skipped); default: *.toml
    seeds = [1, 2, 3]
    time_limit = 15.0        # seconds of workload per run (--time-limit); default: each
                             # scenario's own duration
    run_timeout = 300.0      # wall-clock seconds per run; past it the run is interrupted
                             # (SIGINT: it stops its processes and keeps what it recorded)

Each run is its own ``orbital chaos run`` process, one after the other, into the same store;
its output goes to ``STORE/matrix-<time>/<scenario>-seed<S>.log``. A progress bar shows the
runs done; ``STORE/index.html`` is rewritten after each run. At the end a table gives each
run's verdict, and the exit code is 1 if any run found an anomaly (exit 1), else 2 if any
could not run, was undecided or timed out, else 0.
"""

from __future__ import annotations

import argparse
import glob
import json
import signal
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from harness.scenario import ScenarioError, load_scenario
from harness.store_index import write_index
from harness.system import SystemLoadError, load_system

#: how long an interrupted run gets to stop its processes and judge what it has
STOP_GRACE_S = 90.0


class MatrixFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    scenarios: list[str] = Field(default_factory=lambda: ["*.toml"], min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [1, 2, 3], min_length=1)
    time_limit: float | None = Field(default=None, gt=0)
    run_timeout: float = Field(default=300.0, gt=0)


@dataclass(slots=True)
class MatrixRun:
    config: Path
    scenario: str
    seed: int
    exit_code: int | None = None
    verdict: str = "not run"
    seconds: float = 0.0
    run_dir: str = ""
    log: Path | None = None


class MatrixError(ValueError):
    """The matrix file cannot be used; the message names the file and the field."""


def load_matrix(path: Path) -> tuple[MatrixFile, list[tuple[Path, str]]]:
    """The matrix and its scenarios (path, name), in a stable order."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise MatrixError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise MatrixError(f"{path}: not valid TOML: {exc}") from None
    try:
        matrix = MatrixFile.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise MatrixError(f"{path}: {loc}: {err['msg']}") from None
    found: list[tuple[Path, str]] = []
    for pattern in matrix.scenarios:
        matches = sorted(Path(m) for m in glob.glob(str(path.parent / pattern)))
        if not matches:
            raise MatrixError(f"{path}: scenarios: {pattern!r} matches no file")
        for config in matches:
            if config.resolve() == path.resolve() or config in [c for c, _ in found]:
                continue
            try:
                scenario, _ = load_scenario(config)
            except ScenarioError as exc:
                if "name" in str(exc) and "Field required" in str(exc):
                    continue  # not a scenario file (another matrix, say)
                raise MatrixError(str(exc)) from None
            found.append((config, scenario.name))
    if not found:
        raise MatrixError(f"{path}: scenarios: no scenario file")
    return matrix, found


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("matrix", type=Path, help="matrix file (configs/matrices/nightly.toml)")
    parser.add_argument("--store", type=Path, default=Path("store"), help="store root (./store)")
    parser.add_argument("--seeds", help="override the seeds: a comma-separated list")
    parser.add_argument("--time-limit", type=float, metavar="S", help="seconds of workload")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--system", metavar="KIND", help="run every scenario against this system (etcd, ...)"
    )


def _seeds(text: str | None, default: list[int]) -> list[int]:
    if text is None:
        return default
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise MatrixError(f"--seeds: not a comma-separated list of integers: {text!r}") from None
    if not seeds or any(s < 0 for s in seeds):
        raise MatrixError("--seeds: give at least one seed, each >= 0")
    return seeds


def run(args: argparse.Namespace) -> int:
    try:
        matrix, scenarios = load_matrix(args.matrix)
        seeds = _seeds(args.seeds, matrix.seeds)
        if args.time_limit is not None and args.time_limit <= 0:
            raise MatrixError("--time-limit: must be greater than 0")
        if args.system is not None:
            load_system(args.system)  # a bad kind: one line, exit 2, before any run
    except (MatrixError, SystemLoadError) as exc:
        print(f"orbital chaos matrix: {exc}", file=sys.stderr)
        return 2
    time_limit = args.time_limit if args.time_limit is not None else matrix.time_limit
    runs = [MatrixRun(config, name, seed) for config, name in scenarios for seed in seeds]
    logs = args.store / f"matrix-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}"
    logs.mkdir(parents=True, exist_ok=True)
    console = Console(stderr=True)
    console.print(
        f"{len(runs)} runs ({len(scenarios)} scenarios x {len(seeds)} seeds); logs {logs}"
    )
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, disable=args.no_progress,
    )  # fmt: skip
    with progress:
        task = progress.add_task("matrix", total=len(runs))
        for r in runs:
            progress.update(task, description=f"{r.scenario} seed {r.seed}")
            execute_one(r, args.store, logs, time_limit, matrix.run_timeout, args.system)
            write_index(args.store)
            progress.advance(task)
            if args.no_progress:
                console.print(f"{r.scenario} seed {r.seed}: {r.verdict} ({r.seconds:.0f}s)")
    Console().print(summary_table(runs))
    print(f"index: {args.store / 'index.html'}", file=sys.stderr)
    return matrix_exit(runs)


def execute_one(
    r: MatrixRun,
    store: Path,
    logs: Path,
    time_limit: float | None,
    timeout: float,
    system: str | None = None,
) -> None:
    """One ``orbital chaos run`` in its own process, stopped (SIGINT) past ``timeout``."""
    argv = [sys.executable, "-m", "harness.cli", "chaos", "run", str(r.config)]
    argv += ["--seed", str(r.seed), "--store", str(store), "--no-progress"]
    if time_limit is not None:
        argv += ["--time-limit", str(time_limit)]
    if system is not None:
        argv += ["--system", system]
    r.log = logs / f"{r.scenario}-seed{r.seed}.log"
    t0 = time.monotonic()
    with r.log.open("wb") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        try:
            r.exit_code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)  # the run stops its processes and judges
            try:
                proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            r.exit_code = None
    r.seconds = time.monotonic() - t0
    r.run_dir = _run_dir(r.log)
    r.verdict = verdict_of(r.exit_code, r.run_dir)


def _run_dir(log: Path) -> str:
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("run directory: "):
            return line.removeprefix("run directory: ").strip()
    return ""


def verdict_of(code: int | None, run_dir: str) -> str:
    if code is None:
        return "timeout"
    if code == 0:
        return "valid"
    if code == 1:
        return "ANOMALY"
    if run_dir:
        try:
            results = json.loads((Path(run_dir) / "results.json").read_text(encoding="utf-8"))
            if results.get("error"):
                return "could not run"
        except (OSError, ValueError):
            return "could not run"
    return "undecided" if code == 2 else f"exit {code}"


def summary_table(runs: list[MatrixRun]) -> Table:
    table = Table(title="orbital chaos matrix")
    for col in ("scenario", "seed", "verdict", "exit", "time", "run directory"):
        table.add_column(col)
    for r in runs:
        style = {"valid": "green", "ANOMALY": "bold red"}.get(r.verdict, "yellow")
        table.add_row(
            r.scenario, str(r.seed), f"[{style}]{r.verdict}[/]",
            "-" if r.exit_code is None else str(r.exit_code),
            f"{r.seconds:.0f}s", r.run_dir or str(r.log),
        )  # fmt: skip
    return table


def matrix_exit(runs: list[MatrixRun]) -> int:
    """1 if any run found an anomaly, else 2 if any did not end valid, else 0."""
    if any(r.verdict == "ANOMALY" for r in runs):
        return 1
    return 0 if all(r.verdict == "valid" for r in runs) else 2
