"""Where a write's CPU goes: a 5-node cluster under the throughput workload, measured per process.

Prints one JSON object. For each level (clients), on a fresh cluster (``bench.cluster``'s: five
``orbital node`` processes, fsync on, CURVE unless ``--no-curve``, direct ZeroMQ), the closed
loop of ``bench.cluster`` runs for ``--seconds``; the CPU time (user + system, psutil) each
process used in the window is divided by the writes committed in it:

* ``cpu_ms_per_write``: ``leader``, ``follower`` (mean of the four), ``nodes`` (all five),
  ``client`` (this process: the load generator), ``total``. Unlike writes/s, CPU per write
  hardly depends on what else runs on the machine, so it is the figure to compare versions by.
* with ``--py-spy`` (the ``py-spy`` sampling profiler on PATH or in the venv): the leader and
  one follower are sampled for the window (``--nonblocking``: the processes are not stopped),
  and ``profile`` gives, per node, the functions with the largest share of samples on the CPU
  (``self``: the function itself; ``inclusive``: with what it calls), a text flame graph in
  a few lines. ``--flame-dir DIR`` keeps the collapsed stacks (one ``a;b;c N`` line per stack,
  the input of flamegraph.pl or speedscope).

Usage: ``python -m bench.profile [--levels 1,64] [--seconds 5] [--py-spy] [--no-curve]
[--env NAME=VALUE ...] [--flame-dir DIR]``. ``--env`` sets variables in the nodes' environment
(to compare a variant of the runtime).

A/B comparison: ``--variant NAME=ENV:VALUE,ENV:VALUE`` (twice or more) and ``--rounds R``
run every level once per variant per round, on fresh clusters, the order reversed every
other round, and ``compare`` gives each variant's medians (writes/s, p50, CPU per write) and
its per-round writes/s ratio to the first variant: what a machine shared with other work
still lets one see (``PYTHONPATH:DIR`` runs the nodes from another copy of the code).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil

from bench.cluster import closed_loop, steady, steady_cluster
from harness.cluster import ClusterSpec, LocalCluster, StatusPoller


def _cpu(proc: psutil.Process) -> float:
    try:
        t = proc.cpu_times()
    except psutil.Error:
        return 0.0
    return float(t.user + t.system)


def _detail(proc: psutil.Process) -> dict[str, float]:
    """CPU seconds of the process's main thread (the event loop) and of its other threads
    (ZeroMQ's I/O threads, ZAP, the persist thread), user and system, and its context
    switches (voluntary: it waited; involuntary: it was preempted)."""
    try:
        threads = proc.threads()
        ctx = proc.num_ctx_switches()
    except psutil.Error:
        return {}
    main = [t for t in threads if t.id == proc.pid]
    rest = [t for t in threads if t.id != proc.pid]
    return {
        "main_user": sum(t.user_time for t in main),
        "main_system": sum(t.system_time for t in main),
        "other_threads_user": sum(t.user_time for t in rest),
        "other_threads_system": sum(t.system_time for t in rest),
        "voluntary_switches": float(ctx.voluntary),
        "involuntary_switches": float(ctx.involuntary),
    }


def py_spy() -> str | None:
    """The py-spy binary: next to this Python, else on PATH."""
    here = Path(sys.executable).with_name("py-spy")
    return str(here) if here.exists() else shutil.which("py-spy")


def summarize(collapsed: str, top: int = 15) -> dict[str, Any]:
    """Self and inclusive shares of the sampled functions (``name (file)``), largest first,
    from py-spy's raw (collapsed) output; samples in the event loop's selector (waiting for
    the next event) are counted as ``idle`` and left out of the shares. An fsync shows as
    the function that calls it (``WalWriter._write``): py-spy counts a thread in a system
    call that is not a wait as busy."""
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = idle = 0
    for line in collapsed.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        frames = [_frame(f) for f in stack.split(";") if f]
        frames = [f for f in frames if f]
        if not frames:
            continue
        if frames[-1].split(" ")[0] in _IDLE:
            idle += count
            continue
        total += count
        own[frames[-1]] += count
        for f in set(frames):
            incl[f] += count

    def shares(c: Counter[str]) -> list[str]:
        return [f"{100 * k / total:5.1f}% {name}" for name, k in c.most_common(top)]

    return {
        "samples_busy": total,
        "samples_idle": idle,
        "self": shares(own) if total else [],
        "inclusive": shares(incl) if total else [],
    }


#: leaf frames of a thread waiting for the event loop's next event
_IDLE = frozenset({"select", "poll", "EpollSelector.select", "PollSelector.select"})


def _frame(raw: str) -> str:
    """``func (path/to/file.py:123)`` -> ``func (file.py)``; py-spy's process/thread frames
    are dropped."""
    raw = raw.strip()
    if raw.startswith(("process ", "thread ")):
        return ""
    name, _, where = raw.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    return f"{name} ({os.path.basename(where)})" if where else name


async def level(
    workdir: Path,
    clients: int,
    seconds: float,
    curve: bool,
    env: dict[str, str],
    spy: str | None,
    flame_dir: Path | None,
) -> dict[str, Any]:
    spec = ClusterSpec(toxiproxy=False, curve=curve, env=env)
    async with steady_cluster(spec, workdir) as cluster:
        with StatusPoller(cluster) as poller:
            leader = (await poller.until(steady, 30.0))[0][0]
        follower = next(n for n in spec.nodes if n != leader)
        procs = {n: psutil.Process(cluster.procs[n].pid) for n in spec.nodes}
        me = psutil.Process()
        addrs = cluster.client_addresses()
        result: dict[str, Any] = {"clients": clients, "leader": leader}
        before: dict[str, float] = {}
        details_before: dict[str, dict[str, float]] = {}
        spies: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}

        def window_starts() -> None:  # every client connected, warmed up: measure from now
            nonlocal spies
            before.update({n: _cpu(p) for n, p in procs.items()} | {"client": _cpu(me)})
            details_before.update({n: _detail(p) for n, p in procs.items()})
            details_before["client"] = _detail(me)
            spies = _start_spies(spy, cluster, {"leader": leader, "follower": follower}, seconds)

        try:
            window = await closed_loop(
                lambda i: cluster.kv_client(addrs, client_id=f"p{clients}-{i}", timeout=5.0),
                clients,
                seconds,
                window_starts,
            )
            after = {n: _cpu(p) for n, p in procs.items()} | {"client": _cpu(me)}
            details_after = {n: _detail(p) for n, p in procs.items()} | {"client": _detail(me)}
        finally:
            profiles = _collect(spies, flame_dir, clients)
        writes = max(1, int(window["writes"]))
        used = {n: after[n] - before[n] for n in before}
        per = {n: round(1000 * s / writes, 4) for n, s in used.items()}
        followers = [per[n] for n in spec.nodes if n != leader]
        nodes = sum(used[n] for n in spec.nodes)
        result |= {
            "writes_per_s": window["writes_per_s"],
            "p50_ms": window["p50_ms"],
            "p99_ms": window["p99_ms"],
            "cpu_ms_per_write": {
                "leader": per[leader],
                "follower": round(sum(followers) / len(followers), 4),
                "nodes": round(1000 * nodes / writes, 4),
                "client": per["client"],
                "total": round(1000 * (nodes + used["client"]) / writes, 4),
            },
            "loadavg_1m": round(os.getloadavg()[0], 2),
        }
        who = {"leader": leader, "follower": follower, "client": "client"}
        result["per_write_detail_us"] = {
            role: {
                k: round(1e6 * (details_after[p][k] - details_before[p][k]) / writes, 2)
                if "switches" not in k
                else round((details_after[p][k] - details_before[p][k]) / writes, 2)
                for k in details_after[p]
                if k in details_before.get(p, {})
            }
            for role, p in who.items()
        }
        if profiles:
            result["profile"] = profiles
        return result


def _start_spies(
    spy: str | None, cluster: LocalCluster, who: dict[str, str], seconds: float
) -> dict[str, tuple[subprocess.Popen[bytes], Path]]:
    if spy is None:
        return {}
    out = {}
    for role, node in who.items():
        path = cluster.workdir / f"{role}.collapsed"
        argv = [spy, "record", "--pid", str(cluster.procs[node].pid), "--format", "raw"]
        argv += ["--rate", "250", "--nonblocking", "--gil"]
        argv += ["--duration", str(max(1, round(seconds))), "--output", str(path)]
        spy_proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        out[role] = (spy_proc, path)
    return out


def _collect(
    spies: dict[str, tuple[subprocess.Popen[bytes], Path]], keep: Path | None, clients: int
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for role, (proc, path) in spies.items():
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        if not path.exists():
            out[role] = {"error": err.decode(errors="replace").strip()[-300:]}
            continue
        text = path.read_text()
        out[role] = summarize(text)
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            (keep / f"{clients}-{role}.collapsed").write_text(text)
    return out


async def compare(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """Alternating rounds of every variant (see the module docstring)."""
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {
        name: {n: [] for n in args.levels} for name in args.variants
    }
    names = list(args.variants)
    for r in range(args.rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            env = args.env | args.variants[name]
            for n in args.levels:
                where = root / f"{name}-{n}-{r}"
                w = await level(where, n, args.seconds, not args.no_curve, env, None, None)
                runs[name][n].append(w)
    out: dict[str, Any] = {}
    first = names[0]
    for name in names:
        out[name] = {"env": args.variants[name]}
        for n in args.levels:
            ws = runs[name][n]
            med = statistics.median
            row: dict[str, Any] = {
                "median_writes_per_s": med([w["writes_per_s"] for w in ws]),
                "median_p50_ms": med([w["p50_ms"] for w in ws]),
                "median_p99_ms": med([w["p99_ms"] for w in ws]),
                "median_cpu_ms_per_write": {
                    k: round(med([w["cpu_ms_per_write"][k] for w in ws]), 4)
                    for k in ("leader", "follower", "nodes", "client", "total")
                },
                "writes_per_s": [w["writes_per_s"] for w in ws],
                "loadavg_1m": [w["loadavg_1m"] for w in ws],
            }
            if name != first:
                base = runs[first][n]
                ratios = [
                    round(w["writes_per_s"] / b["writes_per_s"], 3)
                    for w, b in zip(ws, base, strict=True)
                    if b["writes_per_s"]
                ]
                row["writes_per_s_ratio_each_round"] = ratios
                row["rounds_faster"] = sum(1 for x in ratios if x > 1)
            out[name][str(n)] = row
    return out


async def main_async(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    if args.variants:
        return {
            "setup": {
                "curve": not args.no_curve,
                "seconds": args.seconds,
                "rounds": args.rounds,
                "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
            },
            "compare": await compare(args, root),
        }
    spy = py_spy() if args.py_spy else None
    result: dict[str, Any] = {
        "setup": {
            "curve": not args.no_curve,
            "env": args.env,
            "seconds": args.seconds,
            "cpus": os.cpu_count(),
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
            "py_spy": spy if args.py_spy else "off",
        },
        "levels": [],
    }
    if args.py_spy and spy is None:
        result["setup"]["py_spy"] = "not found (pip install py-spy)"
    for n in args.levels:
        result["levels"].append(
            await level(
                root / f"l{n}-{time.monotonic_ns()}",
                n,
                args.seconds,
                not args.no_curve,
                args.env,
                spy,
                args.flame_dir,
            )
        )
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    p.add_argument("--levels", default="1,64", help="clients per window (default 1,64)")
    p.add_argument("--seconds", type=float, default=5.0, help="measured seconds per level")
    p.add_argument("--py-spy", action="store_true", help="sample the leader and a follower")
    p.add_argument("--no-curve", action="store_true", help="the cluster without keys")
    p.add_argument("--flame-dir", type=Path, help="keep the collapsed stacks here")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=ENV:VALUE,...")
    p.add_argument("--rounds", type=int, default=5, help="rounds of an A/B comparison")
    args = p.parse_args(argv)
    args.variants = {}
    for item in args.variant:
        name, _, spec = item.partition("=")
        pairs = [x.partition(":") for x in spec.split(",") if x]
        if not name or any(not sep for _, sep, _ in pairs):
            p.error(f"--variant: expected NAME=ENV:VALUE,..., got {item!r}")
        args.variants[name] = {k: v for k, _, v in pairs}
    if len(args.variants) == 1:
        p.error("--variant: give at least two to compare")
    try:
        args.levels = [int(x) for x in args.levels.split(",") if x.strip()]
    except ValueError:
        p.error(f"--levels: comma-separated client counts, got {args.levels!r}")
    if not args.levels or min(args.levels) < 1 or args.seconds <= 0:
        p.error("--levels must be positive client counts and --seconds > 0")
    env = {}
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep or not name:
            p.error(f"--env: expected NAME=VALUE, got {item!r}")
        env[name] = value
    args.env = env
    root = Path(tempfile.mkdtemp(prefix="orbital-bench-profile-"))
    try:
        result = asyncio.run(main_async(args, root))
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(root)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
