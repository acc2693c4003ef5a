"""The scenario's expectations, checked against what a chaos run recorded.

Theory of operation
-------------------
Each expectation of a scenario's ``[expect]`` table becomes one or more *checks*: a dict with
its name, ``ok`` (``True``, ``False``, or ``None`` when the run gave it nothing to judge, e.g.
a fault that ended before the election bound), what was expected and what was observed.
Faults are judged by their *sides*: :func:`fault_sides` gives the side that keeps a majority
(if any) and the minority sides. After a fault that cut the leader off, a majority-side leader
must appear within the bound (from the monitor's samples, cross-checked with the nodes' own
``roles.jsonl``); while a partition lasts, no minority node may answer ``ok``, and the
majority must keep answering; after the heal, every node must converge.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from chaos.nemesis import AppliedFault
from harness.history import Op, Operation, pair_operations
from harness.monitor import Sample, sample_json
from harness.run_state import Observed, RunContext

#: disk faults that crash the node at once (as a kill does)
CRASH_DISK_FAULTS = ("lose-unsynced", "torn-write", "corrupt")


def check(name: str, ok: bool | None, expected: Any, observed: Any, **more: Any) -> dict[str, Any]:
    """One expectation's outcome (``ok`` None: not applicable in this run)."""
    return {"name": name, "ok": ok, "expected": expected, "observed": observed, **more}


def not_applicable(name: str, expected: Any, why: str) -> dict[str, Any]:
    """An expectation this run cannot judge (the system lacks what it needs): never met."""
    return check(name, None, expected, f"not applicable: {why}")


def _lacks(observed: Observed, capability: str, what: str) -> str | None:
    if capability in observed.capabilities:
        return None
    return f"{observed.system} {what}"


def fault_sides(f: AppliedFault, nodes: list[str]) -> tuple[set[str] | None, list[set[str]]]:
    """The side that keeps a majority (if any) and the minority sides of a fault."""
    if f.skipped is not None or f.kind in ("latency", "clock", "membership"):
        return None, []
    if f.kind == "disk" and f.params.get("disk") not in CRASH_DISK_FAULTS:
        return None, []  # the node goes on, or stops on its own at a time of its choosing
    if f.kind in ("kill", "pause", "disk"):  # the nodes it takes down
        down = f.nodes or ([f.node] if f.node else [])
        if not down:
            return None, []
        rest = set(nodes) - set(down)
        return (rest if len(rest) > len(nodes) // 2 else None), []
    if not f.groups:
        if f.node is None:
            return None, []
        return set(nodes) - {f.node}, [{f.node}]
    named = [set(g) for g in f.groups]
    rest = set(nodes) - set().union(*named)
    sides = [*named, rest] if rest else named
    majority = next((s for s in sides if len(s) > len(nodes) // 2), None)
    return majority, [s for s in sides if s is not majority]


def check_expectations(
    ctx: RunContext,
    observed: Observed,
    history: list[Op],
    roles: dict[str, list[dict[str, Any]]],
) -> list[dict[str, Any]]:
    """Every expectation of the scenario, checked against what was recorded."""
    exp = ctx.scenario.expect
    checks = [
        check("min_ok_ops", observed.stats.get("ok", 0) >= exp.min_ok_ops, exp.min_ok_ops,
              observed.stats.get("ok", 0)),
    ]  # fmt: skip
    no_leader = _lacks(observed, "leadership", "cannot tell who leads")
    if ctx.scenario.setup.leader_in is not None:
        group = ctx.scenario.groups[ctx.scenario.setup.leader_in]
        why = observed.not_applicable.get("leader_placed") or no_leader
        if why is not None:
            checks.append(not_applicable("leader_placed", group, why))
        else:
            placed = observed.setup_leader is not None and observed.setup_leader[0] in group
            checks.append(check("leader_placed", placed, group, observed.setup_leader))
    factor = exp.leader_elected_within_election_timeouts
    if factor is not None and no_leader is not None:
        checks.append(not_applicable("leader_elected", f"{factor:g} election timeouts", no_leader))
    elif factor is not None:
        checks += election_checks(ctx, observed, roles, factor)
    if exp.minority_never_acknowledges:
        checks += minority_checks(ctx, observed, history)
    if exp.majority_keeps_serving:
        checks += majority_checks(ctx, observed, history)
    if exp.minority_leader_steps_down_within is not False:
        checks += stepdown_checks(ctx, observed, roles, exp.minority_leader_steps_down_within)
    if exp.disk_faults_handled:
        checks += disk_checks(ctx, observed)
    if exp.no_node_dies:
        checks.append(death_check(ctx, observed))
    if exp.converge_after_heal and no_leader is not None:
        checks.append(not_applicable("converge_after_heal", True, no_leader))
    elif exp.converge_after_heal:
        final = {n: sample_json(s) for n, s in observed.final_status.items()}
        text = convergence_text(observed.final_status, observed.silent)
        ok: bool | None = observed.converged is True
        if observed.converged is None:  # the run ended before the final phase
            ok = None
        checks.append(
            check("converge_after_heal", ok, True, text, final_status=final, silent=observed.silent)
        )
    return checks


def convergence_text(final: dict[str, Sample | None], silent: dict[str, str]) -> str:
    marks = {
        n: None if s is None else f"commit {s.commit} applied {s.applied} last {s.last_index}"
        for n, s in final.items()
    }
    if len(set(marks.values())) == 1 and None not in marks.values():
        return f"{next(iter(marks.values()))} on all {len(marks)} nodes"
    return "; ".join(
        f"{n}: {m or 'no answer' + (f' ({silent[n]})' if n in silent else '')}"
        for n, m in marks.items()
    )


def _window(ctx: RunContext, f: AppliedFault, end: int) -> tuple[int, int]:
    stop = end if f.stopped_ns is None else ctx.rel(f.stopped_ns)
    return ctx.rel(f.applied_ns or f.started_ns), stop


def election_checks(
    ctx: RunContext, observed: Observed, roles: dict[str, list[dict[str, Any]]], factor: float
) -> list[dict[str, Any]]:
    """After every fault that removed the leader, a majority-side leader within the bound."""
    bound_s = factor * ctx.scenario.timing.election_timeout_s
    out = []
    for f in observed.applied:
        majority, _ = fault_sides(f, list(ctx.scenario.nodes))
        before = f.leader_before
        if majority is None or before is None or before[0] in majority:
            continue
        polled = _first_new_leader(observed.leader_samples, majority, before[1], f.started_ns)
        cut_ns = f.applied_ns or f.started_ns  # the leader is fully cut off from here on
        elapsed = None if polled is None else max(0, polled.time_ns - cut_ns) / 1e9
        since_start = None if polled is None else (polled.time_ns - f.started_ns) / 1e9
        from_roles = _roles_election(ctx, roles, majority, before[1], f.started_ns, cut_ns)
        ended_first = f.stopped_ns is not None and f.stopped_ns < f.started_ns + bound_s * 1e9
        ok: bool | None = elapsed is not None and elapsed <= bound_s
        if not ok and ended_first:
            ok = None
        observed_text = None if elapsed is None else round(elapsed, 4)
        out.append(check(
            f"leader_elected[{f.kind}#{f.id}]",
            ok, f"<= {bound_s:.3f}s ({factor:g} election timeouts)", observed_text,
            leader_before=list(before), new_leader=None if polled is None else polled.node,
            from_roles_s=from_roles, since_fault_start_s=since_start, majority=sorted(majority),
        ))  # fmt: skip
    return out


def _first_new_leader(
    samples: list[Sample], majority: set[str], term: int, after_ns: int
) -> Sample | None:
    found = [s for s in samples if s.node in majority and s.term > term and s.time_ns >= after_ns]
    return min(found, key=lambda s: s.time_ns, default=None)


def _roles_election(
    ctx: RunContext, roles: dict[str, list[dict[str, Any]]], majority: set[str], term: int,
    after_ns: int, cut_ns: int,
) -> float | None:  # fmt: skip
    """The same, from the nodes' own roles.jsonl (precise, but the node's word)."""
    start = ctx.rel(after_ns)
    times = [
        e["time"]
        for n in majority
        for e in roles.get(n, [])
        if e.get("role") == "leader" and int(e.get("term", 0)) > term and e["time"] >= start
    ]
    return None if not times else round(max(0, min(times) - ctx.rel(cut_ns)) / 1e9, 4)


def role_at(entries: list[dict[str, Any]], t: int) -> dict[str, Any] | None:
    """The roles.jsonl entry in force at run time ``t`` (the last one at or before it)."""
    found = None
    for e in entries:
        if e["time"] > t:
            break
        found = e
    return found


def stepdown_checks(
    ctx: RunContext, observed: Observed, roles: dict[str, list[dict[str, Any]]], factor: float
) -> list[dict[str, Any]]:
    """A leader on a minority side of a partition steps down within ``factor`` election
    timeouts of the cut (check-quorum), judged from the nodes' own roles.jsonl: one check per
    partition; not applicable (``None``) when no minority node led when the partition began,
    or when the partition healed before the bound without a step-down. Who led is read when
    the first link is cut, the bound counts from the last (a leader whose links went first may
    step down while the others are still being cut: that is within any bound)."""
    bound_ns = int(factor * ctx.scenario.timing.election_timeout_s * 1e9)
    expected = f"<= {bound_ns / 1e9:.3f}s ({factor:g} election timeouts)"
    end = max((e["time"] for es in roles.values() for e in es), default=0)
    out = []
    for f in observed.applied:
        _, minorities = fault_sides(f, list(ctx.scenario.nodes))
        if f.kind != "partition" or not minorities:
            continue
        name = f"minority_leader_steps_down[partition#{f.id}]"
        cut, heal = _window(ctx, f, end)
        begun = min(cut, ctx.rel(f.started_ns))
        minority = sorted(set().union(*minorities))
        leaders = []
        for node in minority:
            at = role_at(roles.get(node, []), begun)
            if at is not None and at.get("role") == "leader":
                leaders.append((node, at))
        if not any(roles.get(n) for n in minority):
            out.append(check(name, None, expected, "no roles.jsonl on the minority side"))
            continue
        if not leaders:
            out.append(check(name, None, expected, "no minority node led at the cut",
                             minority=minority))  # fmt: skip
            continue
        for node, at in leaders:
            window = (begun, cut, heal)
            out.append(_stepdown(name, roles[node], node, at, window, bound_ns, expected))
    return out


def _stepdown(
    name: str, entries: list[dict[str, Any]], node: str, at: dict[str, Any],
    window: tuple[int, int, int], bound_ns: int, expected: str,
) -> dict[str, Any]:  # fmt: skip
    """One minority leader: when it stopped leading (its next roles line after the partition
    began), counted from the cut (``window``: began, cut, heal)."""
    begun, cut, heal = window
    later = [
        e for e in entries
        if e["time"] > begun and (e["role"], e["term"]) != ("leader", at["term"])
    ]  # fmt: skip
    step = later[0] if later else None
    if step is None or step["time"] > heal:
        ok: bool | None = None if heal - cut < bound_ns else False
        lasted = (heal - cut) / 1e9
        text = f"{node} still led term {at['term']} at the heal, {lasted:.3f}s after the cut"
        return check(name, ok, expected, text, node=node, term=at["term"], cut_ns=cut, heal_ns=heal)
    took = max(0, step["time"] - cut)
    text = f"{node} (leader of term {at['term']}) became {step['role']} after {took / 1e9:.3f}s"
    return check(
        name, took <= bound_ns, expected, text, node=node, term=at["term"],
        stepped_down_s=round(took / 1e9, 4), cut_ns=cut,
    )  # fmt: skip


def minority_checks(ctx: RunContext, observed: Observed, history: list[Op]) -> list[dict[str, Any]]:
    """No operation *invoked after the cut took effect* is answered ``ok`` by a node on a
    minority side before the heal. An operation invoked earlier may rightly be acknowledged
    after the cut: it can have committed before it (issue 9: a write invoked 8.9 ms before a
    one-way cut and acknowledged 0.5 ms after it is no anomaly)."""
    end = history[-1].time if history else 0
    ops = pair_operations(history)
    out = []
    for f in observed.applied:
        _, minorities = fault_sides(f, list(ctx.scenario.nodes))
        minority = set().union(*minorities) if minorities else set()
        if f.kind != "partition" or not minority:
            continue
        lo, hi = _window(ctx, f, end)
        bad = minority_acks(ops, minority, lo, hi)
        earlier = minority_acks(ops, minority, lo, hi, invoked_before=True)
        out.append(check(
            f"minority_silent[partition#{f.id}]", not bad, 0, len(bad),
            minority=sorted(minority), window_ns=[lo, hi], ok_ops=bad[:20],
            invoked_before_cut=earlier[:20],
        ))  # fmt: skip
    return out


def minority_acks(
    ops: list[Operation], minority: set[str], lo: int, hi: int, *, invoked_before: bool = False
) -> list[int]:
    """History indexes (of the ``ok``) of operations a minority node acknowledged within
    ``[lo, hi]`` and invoked at or after ``lo`` (or, with ``invoked_before``, before it)."""
    found = []
    for op in ops:
        done = op.completion
        if done is None or done.type != "ok" or done.node not in minority:
            continue
        if lo <= done.time <= hi and (op.invoke.time < lo) == invoked_before:
            found.append(done.index)
    return found


def majority_checks(ctx: RunContext, observed: Observed, history: list[Op]) -> list[dict[str, Any]]:
    """The majority side answered operations ``ok`` while the minority was cut off."""
    end = history[-1].time if history else 0
    out = []
    for f in observed.applied:
        majority, minorities = fault_sides(f, list(ctx.scenario.nodes))
        if f.kind != "partition" or majority is None or not minorities:
            continue
        lo, hi = _window(ctx, f, end)
        served = sum(
            1 for op in history if op.type == "ok" and op.node in majority and lo <= op.time <= hi
        )
        out.append(check(
            f"majority_serves[partition#{f.id}]", served > 0, ">= 1 ok", served,
            majority=sorted(majority),
        ))  # fmt: skip
    return out


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1] if lines else ""


#: disk faults after which a node is expected to stop on its own (``disk_checks`` judges how)
_STOPPING_DISK_FAULTS = ("corrupt", "io-error", "disk-full")


def death_check(ctx: RunContext, observed: Observed) -> dict[str, Any]:
    """No node process ended on its own: a crash, a failed assertion or a failed restart is a
    finding even when the cluster survived it (a planted bug once killed a node with an
    ``AssertionError`` and every other check passed)."""
    expected = {
        f.node
        for f in observed.applied
        if f.kind == "disk" and f.node is not None and f.params.get("disk") in _STOPPING_DISK_FAULTS
    }
    died = {n: d for n, d in observed.died.items() if n not in expected}
    seen = {
        n: [{"pid": pid, "exit": code, "log": _last_line(ctx.run_dir / "nodes" / n / "node.log")}
            for pid, code in d]
        for n, d in died.items()
    }  # fmt: skip
    text = "; ".join(f"{n}: exit {d[-1]['exit']}: {d[-1]['log']}" for n, d in seen.items())
    return check("no_node_dies", not died, "no node process ends on its own", text or "none",
                 died=seen, expected_to_stop=sorted(expected))  # fmt: skip


def disk_checks(ctx: RunContext, observed: Observed) -> list[dict[str, Any]]:
    """A node whose durable data was corrupted refused to start, naming the file and the byte
    offset (it never voted or acknowledged with a damaged log); a node whose disk failed
    (EIO, ENOSPC) stopped with that error, if it met it."""
    out = []
    for f in observed.applied:
        if f.kind != "disk" or f.skipped is not None or f.node is None:
            continue
        fault = f.params.get("disk")
        if fault in ("corrupt", "io-error", "disk-full") and observed.system != "orbital":
            why = f"the check reads Orbital's exit message; {observed.system} has its own"
            out.append(not_applicable(f"disk_handled[disk#{f.id}]", fault, why))
            continue
        log = ctx.run_dir / "nodes" / f.node / "node.log"
        last = _last_line(log)
        if fault == "corrupt" and f.params.get("applied", {}).get("corrupt", {}) is None:
            why = str(f.params["applied"].get("note", "nothing was corrupted"))
            out.append(not_applicable(f"corrupt_refused[disk#{f.id}]", "refuses to start", why))
            continue
        if fault == "corrupt":
            applied = f.params.get("applied", {}).get("corrupt", {})
            where = f"{applied.get('path', '?')} at byte offset"
            ok = f"orbital node {f.node}: " in last and "at byte offset" in last
            out.append(check(
                f"corrupt_refused[disk#{f.id}]", ok, f"refuses to start naming {where}", last,
                node=f.node, corrupted=applied,
            ))  # fmt: skip
        elif fault in ("io-error", "disk-full"):
            code = "[EIO]" if fault == "io-error" else "[ENOSPC]"
            text = log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""
            stopped = [ln for ln in text.splitlines() if ln.startswith(f"orbital node {f.node}: ")]
            ok_: bool | None = any(code in ln for ln in stopped) if stopped else None
            out.append(check(
                f"disk_error_stops[disk#{f.id}]", ok_, f"stops with {code} (if it met it)",
                stopped[-1] if stopped else "did not stop", node=f.node,
            ))  # fmt: skip
    return out
