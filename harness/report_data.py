"""Reading a stored chaos run for the report (:mod:`harness.report`): a run directory becomes
one :class:`Run`, with notes on what was missing or skipped.

Theory of operation
-------------------
Every input is optional except ``history.jsonl``. A missing or malformed part never stops the
report: its section says what is missing and why. The history and faults are read by
:mod:`harness.history`; a file that breaks the format is read again leniently (bad lines skipped
and counted, unmatched events dropped) and the report notes why, since a broken history is the
one most worth looking at. Reading the history is most of the report's cost on a large run.

Store run directory (``store/<scenario>/<timestamp>/``)
--------------------------------------------------------
``config.toml``
    The scenario as run. The report shows ``name`` and ``seed`` (top level or under
    ``[scenario]``) and the raw text.
``history.jsonl``
    The client history, ``../shared/HISTORY.md``. Required.
``faults.jsonl``
    Nemesis events, HISTORY.md format: ``{"index", "time", "fault": str,
    "action": "start"|"stop", "detail": {...}}``. A ``stop`` closes the oldest open ``start`` of
    the same ``fault`` with an equal ``detail``, else the oldest open one of that ``fault``; a
    ``start`` never stopped lasts to the end of the run. Any other action is drawn as an instant.
``results.json``
    The judgement::

        {"scenario": str, "seed": int, "valid": true|false|"unknown", "exit_code": int,
         "started_at": ISO-8601 str, "duration_s": float,
         "linearizability": CheckResult.to_json() of harness/checker/linearizable.py,
         "invariants": {"valid": bool, "violations": [{"kind": str, "detail": str, ...}]},
         "counts": {...}}

    From ``linearizability`` the report uses ``valid``, ``keys`` (a count, or the checker's
    per-key map, shown as a table) and ``anomalies`` (else the single ``anomaly``), each
    ``{"key": str, "explanation": str, "ops": [{"index": int (history line of the invoke),
    "process": int, "f": str, "value": any, "type": str, "error"?: str, "node"?: str,
    "invoke_time": ns, "complete_time": ns | null}]}``. Every key is optional. The verdict is
    ``valid``, else ``linearizability.valid``, else unknown.
``nodes/<id>/roles.jsonl``
    Each node's role and term changes, one line per change, in time order::

        {"time": int (ns since run start), "node": "n1",
         "role": "follower"|"precandidate"|"candidate"|"leader"|"down", "term": int}

    A role lasts until the node's next line or the end of the run. ``down`` means the process
    is killed or paused (its term is the last known one).
``report.html``
    The report itself (the default output of :func:`harness.report.write_report`).
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.checker.events import HistoryError, OpRecord, read_records
from harness.history import read_faults

__all__ = ["OpRecord"]

#: Completion types in drawing order, and their colors (Jepsen's timeline palette).
TYPE_COLORS: dict[str, str] = {"ok": "#4e9cf5", "fail": "#f06aa8", "info": "#f5a623"}


class ReportError(Exception):
    """The run directory cannot be reported on (missing, or without ``history.jsonl``)."""


@dataclass(frozen=True, slots=True)
class FaultPeriod:
    kind: str
    start: int
    stop: int | None  # None: never stopped, lasts to the end of the run
    detail: Any
    instant: bool = False


@dataclass(frozen=True, slots=True)
class RoleSpan:
    node: str
    role: str
    term: int | None
    start: int
    stop: int


@dataclass(slots=True)
class Run:
    """Everything read from a run directory, with notes on what was missing or skipped."""

    path: Path
    ops: list[OpRecord]
    faults: list[FaultPeriod]
    roles: list[RoleSpan]
    results: dict[str, Any]
    config: dict[str, Any]
    config_text: str | None
    end: int
    notes: list[str] = field(default_factory=list)
    history: Path | None = None
    report_dir: Path | None = None  # where the report goes (links are relative to it)

    @property
    def anomalies(self) -> list[dict[str, Any]]:
        """The checker's anomalies: ``anomalies`` when given, else the single ``anomaly``."""
        lin = self.results.get("linearizability")
        if not isinstance(lin, dict):
            return []
        found = lin.get("anomalies")
        if not isinstance(found, list) or not found:
            found = [lin.get("anomaly")]
        return [a for a in found if isinstance(a, dict)]


# ---------------------------------------------------------------------------------- reading


def _read_jsonl(path: Path, notes: list[str]) -> list[dict[str, Any]]:
    """The JSON objects of a JSON Lines file; bad lines are skipped and noted."""
    records: list[dict[str, Any]] = []
    bad = 0
    with path.open(encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if isinstance(obj, dict):
                records.append(obj)
            else:
                bad += 1
    if bad:
        notes.append(f"{path.name}: skipped {bad} malformed line(s)")
    return records


def _int(value: Any, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def read_ops(path: Path, notes: list[str]) -> list[OpRecord]:
    """The operations of ``history.jsonl``, in invoke order.

    Read by :mod:`harness.checker.events`, the format's single validator. A file that breaks
    the format (a run that crashed mid-line, a buggy client) is read leniently instead, with a
    note saying why: a broken history is exactly the run whose report someone wants to see.
    """
    try:
        return read_records(path)
    except HistoryError as exc:
        notes.append(f"{path.name} breaks the history format, read leniently: {exc}")
        return pair_ops(_read_jsonl(path, notes), notes)


def read_fault_events(path: Path, notes: list[str]) -> list[dict[str, Any]]:
    """The events of ``faults.jsonl`` (none when absent), leniently if it breaks the format."""
    if not path.is_file():
        return []
    try:
        return [fault.model_dump() for fault in read_faults(path)]
    except HistoryError as exc:
        notes.append(f"faults.jsonl breaks the history format, read leniently: {exc}")
        return _read_jsonl(path, notes)


def pair_ops(events: Iterable[dict[str, Any]], notes: list[str]) -> list[OpRecord]:
    """Lenient pairing: each invoke with the next completion of its process, in invoke order."""
    open_: dict[int, dict[str, Any]] = {}
    done: list[OpRecord] = []
    orphans = 0
    for i, ev in enumerate(events):
        proc, kind = _int(ev.get("process"), -1), ev.get("type")
        if kind == "invoke":
            open_[proc] = {**ev, "index": _int(ev.get("index"), i)}
        elif kind in TYPE_COLORS and proc in open_:
            done.append(_make_op(open_.pop(proc), ev))
        else:
            orphans += 1
    done.extend(_make_op(inv, None) for inv in open_.values())
    if orphans:
        notes.append(f"history.jsonl: {orphans} event(s) without a matching invoke")
    done.sort(key=lambda op: op.index)
    return done


def _make_op(inv: dict[str, Any], comp: dict[str, Any] | None) -> OpRecord:
    return OpRecord(
        index=inv["index"],
        process=_int(inv.get("process"), -1),
        f=str(inv.get("f", "?")),
        key=str(inv.get("key", "")),
        value=inv.get("value"),
        type=str(comp["type"]) if comp else "info",
        invoke_time=_int(inv.get("time")),
        complete_time=_int(comp.get("time")) if comp else None,
        result=comp.get("value") if comp else None,
        error=str(comp["error"]) if comp and comp.get("error") is not None else None,
        node=str(comp["node"]) if comp and comp.get("node") is not None else None,
        end=_int(comp.get("index"), -1) if comp else None,
    )


def fault_periods(events: Sequence[dict[str, Any]]) -> list[FaultPeriod]:
    """Pair fault starts with stops (see the module docstring for the rule)."""
    open_: list[dict[str, Any]] = []
    out: list[FaultPeriod] = []
    for ev in events:
        kind, action, t = str(ev.get("fault", "?")), ev.get("action"), _int(ev.get("time"))
        if action == "start":
            open_.append(ev)
        elif action == "stop":
            same = [s for s in open_ if str(s.get("fault", "?")) == kind]
            exact = [s for s in same if s.get("detail") == ev.get("detail")]
            match = next(iter(exact or same), None)
            if match is not None:
                open_.remove(match)
                out.append(FaultPeriod(kind, _int(match.get("time")), t, match.get("detail")))
        else:
            out.append(FaultPeriod(kind, t, t, ev.get("detail"), instant=True))
    out.extend(
        FaultPeriod(str(s.get("fault", "?")), _int(s.get("time")), None, s.get("detail"))
        for s in open_
    )
    out.sort(key=lambda p: (p.start, p.kind))
    return out


def role_spans(events: Sequence[dict[str, Any]], node: str, end: int) -> list[RoleSpan]:
    """A node's role changes as spans, repeats merged; the last lasts until ``end``."""
    changes: list[tuple[int, str, int | None]] = []
    for ev in sorted(events, key=lambda e: _int(e.get("time"))):
        term = ev.get("term")
        change = (
            _int(ev.get("time")),
            str(ev.get("role", "?")),
            term if isinstance(term, int) else None,
        )
        if not changes or changes[-1][1:] != change[1:]:
            changes.append(change)
    stops = [t for t, _, _ in changes[1:]] + [max(end, changes[-1][0])] if changes else []
    return [
        RoleSpan(node, role, term, start, stop)
        for (start, role, term), stop in zip(changes, stops, strict=True)
    ]


def _read_json(path: Path, notes: list[str]) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        notes.append(f"{path.name}: unreadable ({exc})")
        return {}
    return data if isinstance(data, dict) else {}


def _read_config(path: Path, notes: list[str]) -> tuple[dict[str, Any], str | None]:
    if not path.is_file():
        return {}, None
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as exc:
        notes.append(f"config.toml: not valid TOML ({exc})")
        return {}, text


def load_run(run_dir: Path, history: Path | None = None) -> Run:
    """Read a run directory (or, with ``history``, a bare history file and whatever lies
    beside it); raise :class:`ReportError` when it cannot be reported on."""
    if history is None:
        if not run_dir.is_dir():
            raise ReportError(f"run directory {run_dir} does not exist")
        history = run_dir / "history.jsonl"
        if not history.is_file():
            raise ReportError(f"{run_dir} has no history.jsonl")
    elif not history.is_file():
        raise ReportError(f"{history} does not exist")
    notes: list[str] = []
    ops = read_ops(history, notes)
    fault_events = read_fault_events(run_dir / "faults.jsonl", notes)
    bare = history.name != "history.jsonl"
    results = {} if bare else _read_json(run_dir / "results.json", notes)
    config, config_text = _read_config(run_dir / "config.toml", notes)
    role_events = {
        p.parent.name: _read_jsonl(p, notes) for p in sorted(run_dir.glob("nodes/*/roles.jsonl"))
    }
    end = _run_end(ops, fault_events, role_events, results)
    roles = [s for node, evs in role_events.items() for s in role_spans(evs, node, end)]
    return Run(
        run_dir,
        ops,
        fault_periods(fault_events),
        roles,
        results,
        config,
        config_text,
        end,
        notes,
        history,
    )


def _run_end(
    ops: Sequence[OpRecord],
    faults: Sequence[dict[str, Any]],
    roles: dict[str, list[dict[str, Any]]],
    results: dict[str, Any],
) -> int:
    times = [op.complete_time or op.invoke_time for op in ops]
    times += [_int(e.get("time")) for e in faults]
    times += [_int(e.get("time")) for evs in roles.values() for e in evs]
    duration = results.get("duration_s")
    if isinstance(duration, int | float) and not isinstance(duration, bool):
        times.append(int(duration * 1e9))
    return max(times, default=0) or 1
