"""``orbital chaos run CONFIG``: one chaos run end to end, stored and judged.

Theory of operation
-------------------
A run is Jepsen's composition in our terms: a *DB* (the scenario's ``[system]``, a
:class:`~harness.system.System` run by :class:`~harness.local.Cluster`: Toxiproxy and one
process per node), a *Client* (the system's, driven by :mod:`harness.workload`),
a *Nemesis* with its pure *Generator* (:mod:`chaos.nemesis`) and *Checkers* (linearizability,
Raft invariants from the nodes' storage, and the scenario's expectations). The steps:

1. validate the scenario (exit 2 naming the field), find Toxiproxy (exit 2 if missing), make
   the run directory ``STORE/<scenario>/<timestamp>/`` and write ``config.toml`` (the scenario
   as run, seed and duration included);
2. start the cluster *in* the run directory (so ``nodes/<id>/`` with data, log and roles is
   stored as it is written), wait for a leader, and, if ``setup.leader_in`` names a group,
   transfer the leadership into it (each step only if the system has the capability:
   :func:`harness.system.capabilities`; an expectation that needs a missing one is "not
   applicable", never met);
3. run the workload and the nemesis for ``duration`` seconds while a
   :class:`~harness.monitor.StatusMonitor`
   polls every node's status on its direct port (never through the proxies) to time elections;
4. the final generator heals everything, the cluster settles, every key is read once, and the
   monitor waits for every node to report the same commit/applied/last index (convergence);
5. stop every process; rewrite ``roles.jsonl`` times to ns since the run start (the node writes
   raw ``CLOCK_MONOTONIC``) and add ``down`` spans for kills and pauses; replay every node's
   storage from disk (the system's storage replay: Orbital's :mod:`harness.replay`); check
   linearizability; check expectations (:mod:`harness.expectations`); judge the protocol's
   own rules from the nodes' record (the system's record checks: Orbital's roles, votes,
   commit decisions and replayed log, :mod:`harness.raft_checks`).
   Just before the processes stop, every live node's Prometheus metrics are scraped into
   ``nodes/<id>/metrics.prom`` (the last scrape of the run);
6. write ``results.json`` (the shape of :mod:`harness.report_data` plus ``expectations`` and
   ``raft``) and ``report.html``; print a summary table (``--json``: results.json on stdout
   instead).

Exit: 0 valid and every expectation met, 1 an anomaly, an invariant violation or a failed
expectation, 2 could not run (bad config, Toxiproxy missing, no leader) or undecided (checker
"unknown"), 130 interrupted by Ctrl-C, 143 by SIGTERM, 129 by SIGHUP (every process is
stopped, what was recorded is kept and judged as far as it can be; see :mod:`harness.signals`).

``orbital chaos list`` names the bundled scenarios; ``orbital chaos run NAME`` runs one by name
(:func:`harness.scenario.resolve_scenario`), ``orbital chaos run PATH`` any file;
``--system etcd`` runs it against another system than the file names.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from chaos.nemesis import NemesisExecutor
from chaos.process import ProcessError
from chaos.toxiproxy import ToxiproxyError, find_server_binary
from harness import signals
from harness.cluster import READY_TIMEOUT_S
from harness.expectations import check_expectations
from harness.history import FaultWriter, HistoryWriter, Op, read_history
from harness.inventory import InventoryError, load_inventory
from harness.local import Cluster, ClusterError, ClusterOptions, NotApplicable
from harness.monitor import Sample, StatusMonitor, sample_json
from harness.placement import LocalPlacement, Placement, SshPlacement
from harness.run_state import Observed, RunContext
from harness.scenario import (
    Scenario,
    ScenarioError,
    bundled_scenarios,
    load_scenario,
    resolve_scenario,
)
from harness.system import Leadership, System, SystemLoadError, capabilities, load_system
from harness.workload import ClientWorkers

DRAIN_GRACE_S = 2.0
CHECK_TIME_LIMIT_S = 60.0
SCRAPE_TIMEOUT_S = 2.0


# ---- the command line --------------------------------------------------------------------------
def configure(parser: argparse.ArgumentParser) -> None:
    """Add ``chaos run``, ``chaos list`` and ``chaos matrix`` arguments."""
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = sub.add_parser("run", help="run one scenario and store the result")
    p.add_argument("config", metavar="SCENARIO", help="a bundled scenario's name, or a file")
    p.add_argument("--seed", type=int, help="override the scenario's seed")
    p.add_argument(
        "--system", metavar="KIND", help="test another system: orbital, etcd or module:Class"
    )
    p.add_argument("--time-limit", type=float, metavar="S", help="seconds of workload")
    p.add_argument(
        "--placement", choices=("local", "ssh"), help="where the nodes run (default: the file's)"
    )
    p.add_argument(
        "--inventory", metavar="FILE", help="the hosts of --placement ssh (docs/multi-host.md)"
    )
    p.add_argument("--store", type=Path, default=Path("store"), help="store root (./store)")
    p.add_argument("--no-progress", action="store_true", help="no live progress display")
    p.add_argument("--json", action="store_true", help="print results.json instead of a table")
    p = sub.add_parser("list", help="name the bundled scenarios")
    p.add_argument("--json", action="store_true", help="print JSON")
    from harness import matrix

    matrix.configure(sub.add_parser("matrix", help="scenarios x seeds from a matrix file"))


def list_scenarios(as_json: bool) -> int:
    """``orbital chaos list``: each bundled scenario's name and description."""
    rows = []
    for name, path in bundled_scenarios().items():
        try:
            scenario, _ = load_scenario(path)
        except ScenarioError as exc:
            rows.append({"name": name, "path": str(path), "error": str(exc)})
            continue
        rows.append({"name": name, "path": str(path), "description": scenario.description})
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max((len(r["name"]) for r in rows), default=0)
    for r in rows:
        text = r.get("description") or r.get("error") or ""
        print(f"{r['name']:<{width}}  {' '.join(str(text).split())}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Run a scenario; the exit code is described in the module docstring."""
    if args.action == "list":
        return list_scenarios(args.json)
    if args.action == "matrix":
        from harness import matrix

        return matrix.run(args)
    try:
        path = resolve_scenario(args.config)
        scenario, _ = load_scenario(path)
        _find_adapters_beside(path)
        if args.time_limit is not None and args.time_limit <= 0:
            raise ScenarioError("--time-limit: must be greater than 0")
        scenario = scenario.with_overrides(
            seed=args.seed, duration=args.time_limit, system=args.system,
            placement=getattr(args, "placement", None), inventory=getattr(args, "inventory", None),
        )  # fmt: skip
        make_system(scenario)  # a bad kind or options: exit 2 before anything starts
        make_placement(scenario)  # a bad inventory too
        if scenario.placement == "local":
            find_server_binary()
    except (ScenarioError, ToxiproxyError, SystemLoadError, InventoryError) as exc:
        print(f"orbital chaos: {exc}", file=sys.stderr)
        return 2
    ctx = RunContext.create(scenario, args.store)
    print(f"run directory: {ctx.run_dir}", file=sys.stderr)
    code = execute(ctx, progress=not args.no_progress and not args.json)
    if args.json:
        print(json.dumps(ctx.results, indent=2, default=str))
    else:
        print_summary(Console(), ctx.results)
    from harness.store_index import write_index

    write_index(args.store)
    return code


def say(text: str) -> None:
    """A progress line on stderr (the summary goes to stdout)."""
    print(f"[orbital chaos] {text}", file=sys.stderr, flush=True)


def _find_adapters_beside(scenario_file: Path) -> None:
    """A ``module:Class`` system may live next to its scenario file: that folder joins the
    import path (after everything else, so it shadows nothing)."""
    folder = str(scenario_file.resolve().parent)
    if folder not in sys.path:
        sys.path.append(folder)


def make_system(scenario: Scenario) -> System:
    """The scenario's system (``[system]``), given the scenario's ``[timing]`` if it takes it
    (``use_timing``)."""
    system = load_system(scenario.system.kind, scenario.system.options)
    use_timing = getattr(system, "use_timing", None)
    if use_timing is not None:
        t = scenario.timing
        use_timing(t.tick_ms, t.election_ticks, t.heartbeat_ticks, **t.raft_knobs())
    return system


def make_placement(scenario: Scenario) -> Placement:
    """Where the scenario's nodes run (``placement``; ``ssh`` reads the inventory)."""
    if scenario.placement == "local":
        return LocalPlacement()
    if scenario.inventory is None:
        raise ScenarioError('placement "ssh" needs an inventory: --inventory FILE or inventory =')
    return SshPlacement(load_inventory(Path(scenario.inventory)))


def cluster_options(scenario: Scenario) -> ClusterOptions:
    kinds = {n.kind for n in scenario.nemesis}
    return ClusterOptions(
        nodes=tuple(scenario.nodes),
        joiners=tuple(scenario.spares),
        client_sources=tuple(scenario.client_sources()),
        seed=scenario.seed,
        fake_clocks="clock" in kinds,
        disk_faults="disk" in kinds,
    )


# ---- driving the run -----------------------------------------------------------------------------
def execute(ctx: RunContext, *, progress: bool) -> int:
    """Run, store and judge; returns the exit code (``ctx.results`` is filled in)."""
    observed = Observed()
    history = HistoryWriter(ctx.run_dir / "history.jsonl", start_ns=ctx.run_start_ns)
    faults = FaultWriter(ctx.run_dir / "faults.jsonl", start_ns=ctx.run_start_ns)
    sink = _fault_sink(ctx, faults)
    system = make_system(ctx.scenario)
    observed.system = system.name
    observed.capabilities = capabilities(system)
    cluster = Cluster(
        system,
        cluster_options(ctx.scenario),
        ctx.run_dir,
        on_fault=sink,
        run_start_ns=ctx.run_start_ns,
        placement=make_placement(ctx.scenario),
    )
    if isinstance(cluster.placement, SshPlacement):
        names = ", ".join(s.name for s in cluster.placement.specs)
        say(f"placement ssh: connecting to {names}, uploading, starting agents and Toxiproxy")
    try:
        cluster.start()
        asyncio.run(drive(ctx, cluster, history, sink, observed, progress))
    except KeyboardInterrupt:
        ctx.interrupted = True
    except (ClusterError, ToxiproxyError, ProcessError, OSError, RuntimeError) as exc:
        ctx.error = f"{type(exc).__name__}: {exc}"
        print(f"orbital chaos: could not run: {str(exc).splitlines()[0]}", file=sys.stderr)
    finally:
        with signals.deferred():  # a SIGTERM now must not cut the stop (and heal) short
            try:
                observed.metrics = scrape_metrics(cluster)
            finally:
                cluster.stop()
                history.close()
                faults.close()
    with signals.deferred():  # keep and judge what was recorded, whatever arrives meanwhile
        if signals.received() is not None:
            ctx.interrupted = True
        for node in observed.silent:  # why a node went silent
            proc = cluster.procs[node]
            say(f"{node} did not answer; the end of {proc.log_path}:")
            tail = "\n".join(f"    {line}" for line in proc.log_tail(40))
            print(tail, file=sys.stderr, flush=True)
        return judge(ctx, cluster, observed)


def scrape_metrics(cluster: Cluster) -> dict[str, str]:
    """Each live node's Prometheus metrics into ``nodes/<id>/metrics.prom`` (if the system
    serves them: ``metrics_port``); per node "ok" or why not (a node that is down, paused or
    silent keeps no scrape)."""
    out: dict[str, str] = {}
    for node in sorted(cluster.all_nodes):
        url = cluster.metrics_url(node)
        if url is None:
            continue
        if not cluster.alive(node) or cluster.paused(node):
            out[node] = "not running"
            continue
        try:
            with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_S) as reply:
                text = reply.read()
            (cluster.node_dir(node) / "metrics.prom").write_bytes(text)
            out[node] = "ok"
        except OSError as exc:
            out[node] = f"scrape failed: {exc}"
    return out


def _fault_sink(ctx: RunContext, faults: FaultWriter) -> Any:
    def sink(kind: str, action: str, detail: dict[str, Any]) -> None:
        event = faults.record(kind, "start" if action == "start" else "stop", detail)
        if kind in ("kill", "pause") and "node" in detail:
            ctx.process_events.append((event.time, str(detail["node"]), str(detail["action"])))

    return sink


async def drive(
    ctx: RunContext,
    cluster: Cluster,
    history: HistoryWriter,
    sink: Any,
    observed: Observed,
    progress: bool,
) -> None:
    """Steps 2-4 of the module docstring, on one event loop."""
    try:
        await _drive(ctx, cluster, history, sink, observed, progress)
    finally:
        await cluster.disconnect()


async def _drive(
    ctx: RunContext,
    cluster: Cluster,
    history: HistoryWriter,
    sink: Any,
    observed: Observed,
    progress: bool,
) -> None:
    sc = ctx.scenario
    await cluster.wait_ready(READY_TIMEOUT_S)  # every node up, or exit 2 naming the one that is not
    leads = isinstance(cluster.system, Leadership)
    if leads:
        found = await cluster.wait_for_leader(max(10.0, 40 * sc.timing.election_timeout_s))
        say(f"leader {found[0]} (term {found[1]}) after {found[2]:.3f}s")
    if sc.setup.leader_in is not None:
        group = sc.groups[sc.setup.leader_in]
        try:
            observed.setup_leader = await move_leader(cluster, group, sc.setup.leader_timeout)
            say(f"leadership moved into {sc.setup.leader_in}: {observed.setup_leader}")
        except NotApplicable as exc:
            observed.not_applicable["leader_placed"] = str(exc)
            say(f"leadership not moved: {exc}")
    monitor = StatusMonitor(cluster)
    sources = {s: cluster.client_addresses(s) for s in sc.client_sources()}
    workers = ClientWorkers(
        sc.workload, sc.seed, history, sources, sc.client_sources(), cluster.open_client
    )
    groups = {s: sc.source_group(s) for s in sources}
    nemesis = NemesisExecutor(
        cluster, ctx.schedule, on_fault=sink, client_groups=groups, spares=sc.spares
    )
    try:
        await _main_phase(ctx, monitor, workers, nemesis, progress)
        observed.heal_ns = time.monotonic_ns()
        say(f"healed; settling {sc.final.settle:g}s, then final reads and convergence")
        await asyncio.sleep(sc.final.settle)
        if sc.final.reads:
            source = next(iter(sources))
            observed.final_reads_ok = await workers.final_reads(sc.workload.keys, source)
        if leads:
            ok, final = await monitor.wait_converged(sc.final.converge_timeout)
            observed.converged, observed.final_status = ok, final
            if not ok:
                observed.silent = await _diagnose_silent(cluster, final)
    finally:
        observed.died = {p.name: d for p in cluster.procs.processes() if (d := p.deaths())}
        observed.applied = list(nemesis.applied.values())
        observed.leader_samples = monitor.leader_samples
        observed.role_changes = monitor.role_changes
        observed.stats = _stats_json(workers)
        monitor.close()


async def _diagnose_silent(cluster: Cluster, final: dict[str, Sample | None]) -> dict[str, str]:
    """For each node that gave no final status: how its process is (running, CPU used, exit
    code), and a dump of its threads' stacks into its node.log, shown after the run."""
    out = {}
    for node, sample in final.items():
        if sample is None and node in cluster.procs:
            proc = cluster.procs[node]
            out[node] = proc.describe()
            if proc.dump_stacks():
                out[node] += "; stacks dumped to its node.log"
    if out:
        await asyncio.sleep(0.5)  # the dump is written by the node's signal handler
    return out


async def _main_phase(
    ctx: RunContext,
    monitor: StatusMonitor,
    workers: ClientWorkers,
    nemesis: NemesisExecutor,
    progress: bool,
) -> None:
    """Workload + nemesis + monitor for ``duration``; then the final generator heals all."""
    t0 = time.monotonic()
    tasks = [
        asyncio.create_task(monitor.run()),
        asyncio.create_task(nemesis.run(t0)),
    ]
    work = asyncio.create_task(workers.run())
    try:
        with _live(progress) as live:
            while (left := t0 + ctx.scenario.duration - time.monotonic()) > 0:
                live.update(progress_table(ctx, t0, workers, nemesis, monitor))
                await asyncio.sleep(min(0.25, left))
    finally:
        workers.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await _drain(work, ctx.scenario.workload.timeout + DRAIN_GRACE_S)
        await nemesis.settle()  # a restart still under way ends before the heal looks
        await asyncio.to_thread(nemesis.heal_all)


async def _drain(work: asyncio.Task[None], timeout: float) -> None:
    """Let operations in flight finish; cancel what is left (it stays invoked: info)."""
    done, _ = await asyncio.wait([work], timeout=timeout)
    if not done:
        work.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await work


class _NoLive:
    def update(self, renderable: Any) -> None:
        pass


@contextlib.contextmanager
def _live(enabled: bool) -> Iterator[Live | _NoLive]:
    if not enabled:
        yield _NoLive()
        return
    with Live(console=Console(stderr=True), refresh_per_second=4, transient=True) as live:
        yield live


def progress_table(
    ctx: RunContext,
    t0: float,
    workers: ClientWorkers,
    nemesis: NemesisExecutor,
    monitor: StatusMonitor,
) -> Table:
    """The live display: elapsed, outcomes so far, faults in force, leader."""
    out = workers.stats.outcomes
    leader = monitor.leader
    table = Table(title=f"orbital chaos: {ctx.scenario.name} (seed {ctx.scenario.seed})")
    for col in ("elapsed", "ok", "fail", "info", "faults", "leader"):
        table.add_column(col)
    table.add_row(
        f"{time.monotonic() - t0:5.1f}/{ctx.scenario.duration:.0f}s",
        str(out["ok"]), str(out["fail"]), str(out["info"]),
        nemesis.describe_active(),
        "-" if leader is None else f"{leader[0]} (term {leader[1]})",
    )  # fmt: skip
    return table


async def move_leader(cluster: Cluster, group: list[str], timeout: float) -> tuple[str, int] | None:
    """Transfer the leadership into ``group`` (to its first node) and wait until it is there.
    Raises :class:`NotApplicable` if the system cannot tell who leads or cannot transfer."""
    if not isinstance(cluster.system, Leadership):
        raise NotApplicable(f"{cluster.system.name} cannot tell who leads")
    deadline = time.monotonic() + timeout
    target = sorted(group)[0]
    while time.monotonic() < deadline:
        found = await cluster.leader()
        if found is not None and found[0] in group:
            return found
        if found is not None:
            try:
                await cluster.transfer_leader(found[0], target)
            except NotApplicable:
                raise
            except Exception as exc:  # refused or timed out: polled again below
                say(f"transfer to {target} not done yet: {type(exc).__name__}: {exc}")
        await _wait_leader_in(cluster, group, 1.0)
    raise ClusterError(f"could not move the leadership into {group} within {timeout}s")


async def _wait_leader_in(cluster: Cluster, group: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = await cluster.leader()
        if found is not None and found[0] in group:
            return
        await asyncio.sleep(0.05)


def _stats_json(workers: ClientWorkers) -> dict[str, Any]:
    s = workers.stats
    return {
        "ok": s.outcomes["ok"],
        "fail": s.outcomes["fail"],
        "info": s.outcomes["info"],
        "processes": s.processes,
        "by_f": {f: dict(c) for f, c in sorted(s.by_f.items())},
    }


# ---- after the run: storage, checks, results ------------------------------------------------
def judge(ctx: RunContext, cluster: Cluster, observed: Observed) -> int:
    """Steps 5-6 of the module docstring; fills ``ctx.results`` and returns the exit code."""
    say("nodes stopped; replaying storage, checking the history, writing the report")
    nodes = [*ctx.scenario.nodes, *cluster.joined]
    roles = {n: fix_roles(ctx, cluster.node_dir(n) / "roles.jsonl", n) for n in nodes}
    if not any(roles.values()) and observed.role_changes:  # the nodes keep no role record
        roles = polled_roles(ctx, observed, nodes)
        for n, lines in roles.items():  # for the report's timeline
            text = "".join(json.dumps(e, separators=(",", ":")) + "\n" for e in lines)
            (cluster.node_dir(n) / "roles.jsonl").write_text(text, encoding="utf-8")
    corrupted = {  # their storage was damaged on purpose: they refuse it, replay skips it
        f.node for f in observed.applied if f.kind == "disk" and f.params.get("disk") == "corrupt"
    }
    replay = replay_json(cluster, [n for n in nodes if n not in corrupted])
    history = read_history_safe(ctx.run_dir / "history.jsonl")
    lin = linearizability_json(history)
    checks = check_expectations(ctx, observed, history, roles)
    raft = raft_json(cluster, roles, nodes, history, ctx.scenario.seed, smallest_majority(ctx))
    valid, code = verdict(ctx, lin, replay, checks, raft)
    ctx.results = {
        "scenario": ctx.scenario.name,
        "system": observed.system,
        "capabilities": sorted(observed.capabilities),
        "seed": ctx.scenario.seed,
        "valid": valid,
        "exit_code": code,
        "started_at": ctx.started_at,
        "duration_s": round((time.monotonic_ns() - ctx.run_start_ns) / 1e9, 3),
        "workload_duration_s": ctx.scenario.duration,
        "linearizability": lin,
        "invariants": replay,
        "raft": raft,
        "counts": {**observed.stats, "final_reads_ok": observed.final_reads_ok},
        "expectations": {"valid": all(c["ok"] is not False for c in checks), "checks": checks},
        "schedule": [op.to_json() for op in ctx.schedule],
        "faults_applied": [f.to_json(ctx.run_start_ns) for f in observed.applied],
        "leader_changes": leader_changes(ctx, observed.leader_samples),
        "roles_from": observed.roles_from,
        "final_status": {n: sample_json(s) for n, s in observed.final_status.items()},
        "setup_leader": observed.setup_leader,
        "error": ctx.error,
        "interrupted": ctx.interrupted,
        "metrics": observed.metrics,
        "placement": cluster.placement.describe(),
        "run_dir": str(ctx.run_dir),
    }
    write_results(ctx)
    return code


def write_results(ctx: RunContext) -> None:
    """results.json, then report.html (a report failure is noted, never fatal)."""
    from harness.report import write_report

    path = ctx.run_dir / "results.json"
    path.write_text(json.dumps(ctx.results, indent=2, default=str) + "\n", encoding="utf-8")
    try:
        write_report(ctx.run_dir)
    except Exception as exc:  # the run is judged; a missing picture must not hide it
        ctx.results["report_error"] = f"{type(exc).__name__}: {exc}"
        path.write_text(json.dumps(ctx.results, indent=2, default=str) + "\n", encoding="utf-8")


def verdict(
    ctx: RunContext,
    lin: dict[str, Any],
    replay: dict[str, Any],
    checks: list[dict[str, Any]],
    raft: dict[str, Any] | None = None,
) -> tuple[bool | str, int]:
    """(valid, exit code) from the checks (see the module docstring)."""
    if ctx.error is not None:
        return "unknown", 2
    failed = lin.get("valid") is False or replay.get("valid") is False
    failed = failed or any(c["ok"] is False for c in checks)
    failed = failed or (raft is not None and raft.get("valid") is False)
    valid: bool | str = False if failed else (lin.get("valid") is True or "unknown")
    if ctx.interrupted:
        return valid, signals.exit_code()
    if valid is True:
        return valid, 0
    return valid, 1 if valid is False else 2


def fix_roles(ctx: RunContext, path: Path, node: str) -> list[dict[str, Any]]:
    """Rewrite a node's roles.jsonl in run time (ns since the run start), adding ``down``."""
    lines: list[dict[str, Any]] = []
    with contextlib.suppress(OSError):
        for raw in path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(raw)
                lines.append({**entry, "time": ctx.rel(int(entry["time"])), "node": node})
    events = [(t, a) for t, n, a in ctx.process_events if n == node]
    merged = _merge_down(sorted(lines, key=lambda e: e["time"]), events, node)
    if merged or path.exists():
        text = "".join(json.dumps(e, separators=(",", ":")) + "\n" for e in merged)
        path.write_text(text, encoding="utf-8")
    return merged


def polled_roles(ctx: RunContext, observed: Observed, nodes: list[str]) -> dict[str, list[Any]]:
    """The role record as the status polls saw it (a system whose nodes write no
    roles.jsonl), in run time, with ``down`` at kills and pauses; written to each node's
    roles.jsonl (results.json's ``roles_from`` says "status polls")."""
    observed.roles_from = "status polls"
    out = {}
    for n in nodes:
        lines = [
            {"time": ctx.rel(t), "node": n, "role": role, "term": term}
            for t, role, term in observed.role_changes.get(n, [])
        ]
        events = [(t, a) for t, node, a in ctx.process_events if node == n]
        out[n] = _merge_down(lines, events, n)
    return out


def _merge_down(
    lines: list[dict[str, Any]], events: list[tuple[int, str]], node: str
) -> list[dict[str, Any]]:
    """Insert ``down`` at kills and pauses, and the role held before a pause at its resume."""
    out: list[dict[str, Any]] = []
    tagged = [(e["time"], 1, e) for e in lines] + [(t, 0, {"action": a}) for t, a in events]
    last: dict[str, Any] = {"role": "follower", "term": 0}
    for t, is_line, item in sorted(tagged, key=lambda x: (x[0], x[1])):
        if is_line:
            out.append(item)
            last = item
        elif item["action"] in ("kill", "pause"):
            out.append({"time": t, "node": node, "role": "down", "term": last.get("term", 0)})
        elif item["action"] == "resume" and last.get("role") != "down":
            out.append({"time": t, "node": node, "role": last["role"], "term": last["term"]})
        if not is_line and item["action"] in ("kill", "pause"):
            last = {**last, "role": last.get("role", "follower")}
    return out


def replay_json(cluster: Cluster, nodes: list[str]) -> dict[str, Any]:
    """The protocol's invariants from every node's storage (the system's storage replay), as
    results.json's ``invariants``; ``valid`` None when the system has none."""
    try:
        result = cluster.replay(nodes)
    except Exception as exc:  # a crashing checker gives unknown, as in Jepsen
        return {"valid": "unknown", "reason": f"replay failed: {exc}", "violations": []}
    if result is None:
        reason = f"not applicable: {cluster.system.name} has no storage replay"
        return {"valid": None, "reason": reason, "violations": []}
    return result


def smallest_majority(ctx: RunContext) -> int:
    """A majority of the smallest configuration the run can have had: the scenario's voters
    less one per membership remove or replace (a spare added later only makes majorities
    larger, so counting without it never flags a correct election)."""
    sc = ctx.scenario
    removes = sum(1 for op in ctx.schedule if op.action == "start" and op.params.get(
        "membership") in ("remove", "replace"))  # fmt: skip
    return max(1, len(sc.nodes) - removes) // 2 + 1


def raft_json(
    cluster: Cluster,
    roles: dict[str, list[dict[str, Any]]],
    nodes: list[str],
    history: list[Op],
    seed: int,
    majority: int | None = None,
) -> dict[str, Any]:
    """The protocol's own rules judged from the nodes' record (the system's record checks,
    after its storage replay), as results.json's ``raft``; not applicable for a system
    without them; a crash of the checks makes them unknown, never met."""
    try:
        found = cluster.check_record(roles, nodes, history, seed=seed, majority=majority)
    except Exception as exc:  # a crashing checker gives unknown
        reason = f"checks failed: {type(exc).__name__}: {exc}"
        return {"valid": "unknown", "reason": reason, "checks": []}
    if found is None:
        reason = f"not applicable: {cluster.system.name} keeps no record of its own to judge"
        return {"valid": None, "reason": reason, "checks": []}
    return found


def linearizability_json(history: list[Op]) -> dict[str, Any]:
    """The linearizability verdict of the history (``unknown`` if the checker cannot tell)."""
    from harness.checker.linearizable import check_history

    if not history:
        return {"valid": "unknown", "reason": "no readable history"}
    try:
        return check_history(history, time_limit=CHECK_TIME_LIMIT_S).to_json()
    except Exception as exc:  # a crashing checker gives unknown
        return {"valid": "unknown", "reason": f"checker failed: {type(exc).__name__}: {exc}"}


def leader_changes(ctx: RunContext, samples: list[Sample]) -> list[list[Any]]:
    """Leader samples reduced to changes: ``[time ns since start, node, term]``."""
    out: list[list[Any]] = []
    for s in sorted(samples, key=lambda s: s.time_ns):
        if not out or out[-1][1:] != [s.node, s.term]:
            out.append([ctx.rel(s.time_ns), s.node, s.term])
    return out


def print_summary(console: Console, results: dict[str, Any]) -> None:
    """The summary table of a finished run."""
    table = Table(title=f"chaos run: {results.get('scenario')} (seed {results.get('seed')})")
    table.add_column("check")
    table.add_column("result")
    table.add_column("detail", overflow="fold")
    counts = results.get("counts", {})
    table.add_row("operations", "", f"ok {counts.get('ok')}  fail {counts.get('fail')}  "
                  f"info {counts.get('info')}  processes {counts.get('processes')}")  # fmt: skip
    for name in ("linearizability", "invariants"):
        part = results.get(name) or {}
        table.add_row(name, _mark(part.get("valid")), str(part.get("reason") or ""))
    raft = results.get("raft") or {}
    if raft and not raft.get("checks"):
        table.add_row("raft", _mark(raft.get("valid")), escape(str(raft.get("reason") or "")))
    for check in raft.get("checks", []):
        table.add_row(escape(check["name"]), _mark(check["ok"]), escape(str(check.get("saw"))))
    for check in results.get("expectations", {}).get("checks", []):
        table.add_row(escape(check["name"]), _mark(check["ok"]), escape(str(check.get("observed"))))
    if results.get("error"):
        table.add_row("error", _mark(False), escape(str(results["error"])))
    table.add_row("verdict", _mark(results.get("valid")), f"exit {results.get('exit_code')}")
    table.add_row("store", "", str(results.get("run_dir")))
    console.print(table)


def _mark(valid: Any) -> str:
    if valid is None:
        return "n/a"
    if valid is True:
        return "[green]valid[/green]"
    return "[red]INVALID[/red]" if valid is False else "[yellow]unknown[/yellow]"


def read_history_safe(path: Path) -> list[Op]:
    """The history, or an empty one if it cannot be read."""
    try:
        return read_history(path)
    except ValueError:
        return []


if __name__ == "__main__":  # pragma: no cover
    parser = argparse.ArgumentParser(prog="orbital chaos")
    configure(parser)
    sys.exit(run(parser.parse_args()))
