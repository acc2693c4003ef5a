"""``orbital sim``: seeded simulations of the Raft core, checked after every step.

    orbital sim --nodes 5 --seeds 1000                 # every fault kind, swarm, KV clients
    orbital sim --seeds 1000 --faults partition,crash  # only these kinds (each seed picks some)
    orbital sim --seed 42 --trace                      # replay one run and print its timeline
    orbital sim --classic --seeds 1000                 # the fixed-rate sweep of earlier versions

By default each seed draws its own mix of the given fault kinds and their rates (swarm testing),
and simulated KV clients use the cluster; their history is checked for linearizability at the
end of each run. Prints a JSON summary; exit 0 when no run violated an invariant, 1 when one
did (with the seed, the trace leading to the violation and the command that replays it), 2 for
bad arguments.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import replace

from harness.sim.world import FAULTS, SimConfig, sweep_config
from raft.argtypes import whole_number

DEFAULT_FAULTS = ",".join(FAULTS)
DEFAULT_CLIENTS = 4
_UNITS = {"us": 1, "ms": 1_000, "s": 1_000_000, "m": 60_000_000}


def parse_duration(text: str) -> int:
    """``10s``, ``500ms``, ``2m`` or a bare number of seconds -> microseconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(us|ms|s|m)?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (try 10s, 500ms, 2m)")
    value = float(m.group(1)) * _UNITS[m.group(2) or "s"]
    if value <= 0:
        raise argparse.ArgumentTypeError(f"duration must be positive: {text!r}")
    return int(value)


def parse_faults(text: str) -> frozenset[str]:
    names = {f.strip() for f in text.split(",") if f.strip()}
    if text.strip() in ("", "none"):
        return frozenset()
    unknown = names - set(FAULTS)
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown fault(s) {', '.join(sorted(unknown))}; choose from {', '.join(FAULTS)}"
        )
    return frozenset(names)


_positive = whole_number(1)
_count = whole_number(0, 64)
_seed = whole_number(0, note="seeds are non-negative")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nodes", type=_positive, default=5, help="cluster size (default 5)")
    parser.add_argument("--seeds", type=_positive, default=100, help="number of runs")
    parser.add_argument("--start-seed", type=_seed, default=0, help="first seed (default 0)")
    parser.add_argument("--seed", type=_seed, help="replay this one seed")
    parser.add_argument("--trace", action="store_true", help="with --seed: print the timeline")
    parser.add_argument(
        "--time", type=parse_duration, default=10_000_000, help="simulated time per run (10s)"
    )
    parser.add_argument(
        "--faults",
        type=parse_faults,
        default=parse_faults(DEFAULT_FAULTS),
        help=f"comma-separated, from: {','.join(FAULTS)} (default {DEFAULT_FAULTS}; 'none')",
    )
    parser.add_argument(
        "--clients",
        type=_count,
        default=DEFAULT_CLIENTS,
        help=f"simulated KV clients at most (default {DEFAULT_CLIENTS}; 0: a blind proposer, "
        "no history)",
    )
    parser.add_argument(
        "--no-swarm",
        action="store_true",
        help="every run uses every fault kind at fixed rates (no per-seed draw)",
    )
    parser.add_argument(
        "--classic",
        action="store_true",
        help="the sweep of earlier versions: --no-swarm --clients 0 (replays their seeds)",
    )
    parser.add_argument("--jobs", type=_positive, help="worker processes (default: all cores)")
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bar (default when not a TTY)"
    )


#: election timeouts (the base one, [T, 2T) randomized) the fault-free end of a run must span
#: for its liveness check to be fair: a leader elected, every member caught up
SETTLE_ELECTION_TIMEOUTS = 3


def min_time_us(cfg: SimConfig) -> int:
    """The shortest ``--time`` whose settle period (half of it) allows a fair liveness check."""
    return 2 * SETTLE_ELECTION_TIMEOUTS * cfg.election_ticks * cfg.tick_us


def base_config(args: argparse.Namespace) -> SimConfig:
    classic = bool(args.classic)
    return sweep_config(
        args.nodes,
        args.time,
        args.faults,
        swarm=not (classic or args.no_swarm),
        clients=0 if classic else args.clients,
    )


def replay_command(base: SimConfig, seed: int) -> str:
    """The ``orbital sim`` command that replays ``seed`` of a sweep of ``base``."""
    flags = ""
    if not base.swarm and not base.clients:
        flags = " --classic"
    else:
        if not base.swarm:
            flags += " --no-swarm"
        if base.clients != DEFAULT_CLIENTS:
            flags += f" --clients {base.clients}"
    return (
        f"orbital sim --seed {seed} --trace --nodes {base.nodes} --time {base.duration_us}us "
        f"--faults {','.join(sorted(base.faults)) or 'none'}{flags}"
    )


def run(args: argparse.Namespace) -> int:
    if args.trace and args.seed is None:
        print("orbital sim: --trace needs --seed S", file=sys.stderr)
        return 2
    if args.nodes > 15:
        print("orbital sim: --nodes is at most 15", file=sys.stderr)
        return 2
    shortest = min_time_us(SimConfig())
    if args.time < shortest:
        print(
            f"orbital sim: --time {args.time / 1e6:g}s is too short: the liveness check needs "
            f"at least {shortest / 1e6:g}s (its fault-free last half must span "
            f"{SETTLE_ELECTION_TIMEOUTS} election timeouts)",
            file=sys.stderr,
        )
        return 2
    base = base_config(args)
    if args.seed is not None:
        return _replay_one(replace(base, seed=args.seed), args.trace)
    return _sweep(base, args)


def _replay_one(cfg: SimConfig, show_trace: bool) -> int:
    from harness.sim.sweep import replay

    lines, result = replay(cfg)
    if show_trace:
        print("\n".join(lines))
    print(
        json.dumps(
            {
                "seed": cfg.seed,
                "violations": result.violations,
                "run": result.params,
                **result.stats,
            }
        )
    )
    return 1 if result.violations else 0


def _sweep(base: SimConfig, args: argparse.Namespace) -> int:
    from harness.sim.sweep import RunResult, replay, sweep

    show = not args.no_progress and sys.stderr.isatty()
    if show:
        from rich.progress import Progress

        with Progress(transient=True) as progress:
            task = progress.add_task(f"{args.seeds} seeded runs", total=args.seeds)

            def tick(r: RunResult) -> None:
                progress.advance(task)
                if r.violations:
                    progress.console.print(f"seed {r.seed}: {r.violations[0][0]}")

            summary = sweep(base, args.start_seed, args.seeds, args.jobs, tick)
    else:
        summary = sweep(base, args.start_seed, args.seeds, args.jobs)
    print(json.dumps(summary.to_json(), indent=2))
    if not summary.failing:
        return 0
    first = summary.failing[0]
    kind, _, detail = first.violations[0]
    print(f"\nseed {first.seed} violated {kind}: {detail}", file=sys.stderr)
    print(f"that run: {first.params}", file=sys.stderr)
    lines, _ = replay(replace(base, seed=first.seed))
    window = lines[-40:]
    print(f"the last {len(window)} events of seed {first.seed}:", file=sys.stderr)
    print("\n".join(window), file=sys.stderr)
    print(f"replay: {replay_command(base, first.seed)}", file=sys.stderr)
    return 1
