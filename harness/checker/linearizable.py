"""Linearizability of a key-value history: one register per key (read, write, cas).

Theory of operation
-------------------
*Compositionality.* A history is linearizable iff its restriction to each key is (Herlihy &
Wing's locality), so every key is checked alone and the verdicts are combined: any ``False``
makes the history ``False``; otherwise any ``"unknown"`` makes it ``"unknown"``. One budget
covers the whole history: one wall-clock deadline for every key (and every worker process, see
:mod:`harness.checker.run`), and once a key is found not linearizable the others stop.

*Preparation* (:func:`prepare`). Each operation becomes a :class:`KOp` with a window
``[inv, ret]`` in event positions. An ``ok`` read, write or cas is *required*. A ``fail`` write,
read or cas took no effect and is dropped, except a cas failing with ``"mismatch"``: it becomes
a required *observation* that the register differed from ``expected`` at some instant of its
window. ``info`` and unfinished operations get ``ret = INF`` and are *optional*: applied once,
anywhere after their invoke, or never. An ``info`` read constrains nothing and is dropped. An
optional write whose value nobody observes is dropped when the key has no mismatch
observations (it could only ever be overwritten blindly); with mismatch observations it becomes
a write of one shared unobservable value, so that such writes are interchangeable.

*Choice of method* (:func:`check_prepared`), per key:

1. ``unique-values`` (:mod:`harness.checker.unique`): when the writes that matter write distinct
   values, Gibbons & Korach's polynomial check, extended with cas chains and info writes. With
   mismatch observations it is a relaxation: a ``False`` is final, a ``True`` goes on to 2.
   With repeated values the same check runs on a relaxation with distinct values
   (:func:`~harness.checker.unique.once_written`): a ``False`` is final (a stale read of a
   value written once, a read of a value nobody writes), anything else goes on to 2.
2. ``search`` (:mod:`harness.checker.search`): depth-first just-in-time linearization with
   Porcupine's cache and pruning that makes repeated values and info operations cheap.

A key that is not linearizable is explained in plain words (:mod:`harness.checker.explain`):
the kind of anomaly, the operations (the first one that cannot be placed first), the longest
linearizable prefix found and the values the register could hold just before the culprit.

JSON shape (``CheckResult.to_json()``, stored under ``"linearizability"`` in results.json)::

    {
      "valid": true | false | "unknown",
      "ops": 1234,                       # operations in the history (all keys)
      "seconds": 0.12,
      "reason": null | "why unknown (e.g. the history has no operations)",
      "keys": {"x": {"valid": ..., "ops": 57, "method": "unique-values" | "search" | "empty"
                     | "not checked", "seconds": 0.01, "reason": null | "why unknown"}},
      "anomaly": null | ANOMALY,          # the first non-linearizable key's, by key order
      "anomalies": [ANOMALY, ...],        # one per non-linearizable key
      "unknown_keys": ["y", ...]
    }
    ANOMALY = {"key": "x", "kind": "stale read", "explanation": "one paragraph",
               "window": [first_event_index, last_event_index],
               "ops": [OP, ...],              # the culprit first, at most MAX_ANOMALY_OPS
               "culprit": OP,                 # the first operation that cannot be placed
               "prefix": null | {"ops": 118, "through_event": 240, "last": [OP + "after"]},
               "possible_states": [3, null]}  # what the register could hold before it
    OP = {"index": 12, "completion_index": 15 | null, "process": 3, "key": "x",
          "f": "read" | "write" | "cas", "type": "ok" | "fail" | "info", "value": ...,
          "error": null | str, "node": null | str, "client": null | str, "group": null | str,
          "invoke_time": ns, "complete_time": ns | null}
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

from harness.checker.events import OpRecord, records_from_events
from harness.checker.explain import explain_failure, pinning_observer
from harness.checker.frontier import frontier
from harness.checker.model import (
    CAS,
    DEFAULT_MAX_CONFIGS,
    GARBAGE,
    INF,
    MISMATCH,
    READ,
    WRITE,
    Budget,
    BudgetExceeded,
    KOp,
    RawResult,
    State,
    Verdict,
    show,
)
from harness.checker.search import Overrun, Search, search
from harness.checker.unique import check_unique, forced_only, once_written, values_unique

__all__ = [
    "CAS",
    "DEFAULT_MAX_CONFIGS",
    "INF",
    "MISMATCH",
    "READ",
    "WRITE",
    "Anomaly",
    "Budget",
    "BudgetExceeded",
    "CheckResult",
    "KOp",
    "KeyResult",
    "Method",
    "RawResult",
    "Verdict",
    "by_key",
    "check_history",
    "check_key",
    "check_operations",
    "check_prepared",
    "check_records",
    "check_unique",
    "combine",
    "forced_only",
    "key_result",
    "operation_json",
    "prepare",
    "prepare_rows",
    "search",
    "show",
    "values_unique",
]

Method: TypeAlias = Literal["auto", "unique-values", "search"]
MAX_ANOMALY_OPS = 12  #: operations listed with an anomaly (the culprit first)
PREFIX_TAIL = 8  #: operations of the linearizable prefix listed (its last ones)
EXPLAIN_SECONDS = 2.0  #: at most this long to find the culprit of a unique-values violation
NOT_CHECKED = "not checked"
DFS_WORK_PER_OP = 8  #: the depth-first search's work cap, per op of the key ...
DFS_WORK_MIN = 20_000  #: ... plus this
FRONTIER_MAX = 20_000  #: the breadth-first frontier's size cap before the uncapped search


# --------------------------------------------------------------------------- preparation


def as_records(operations: Iterable[Any]) -> list[OpRecord]:
    """Operations as :class:`OpRecord` s: records pass through, ``harness.history.Operation``
    pairs (an invoke ``Op`` and its completion) are converted."""
    out: list[OpRecord] = []
    for o in operations:
        if isinstance(o, OpRecord):
            out.append(o)
            continue
        inv, done = o.invoke, o.completion
        out.append(
            OpRecord(
                inv.index,
                inv.process,
                inv.f,
                inv.key,
                inv.value,
                o.outcome,
                inv.time,
                None if done is None else done.time,
                None if done is None else done.value,
                None if done is None else done.error,
                (done.node if done is not None else None) or inv.node,
                None if done is None else done.index,
                inv.client or (done.client if done is not None else None),
                inv.group or (done.group if done is not None else None),
            )
        )
    return out


Row: TypeAlias = tuple[int, int, str, Any, str, int | None, Any, str | None]
"""An operation as a plain tuple, cheap to send to a worker process: ``(index, process, f,
value, type, end, result, error)`` (the :class:`OpRecord` fields the checker needs)."""


def as_row(o: OpRecord) -> Row:
    """The :data:`Row` of an operation."""
    return (o.index, o.process, o.f, o.value, o.type, o.end, o.result, o.error)


def _kop(
    src: int,
    index: int,
    p: int,
    f: str,
    value: Any,
    outcome: str,
    end: int | None,
    result: Any,
    error: str | None,
) -> KOp | None:
    ret = end if end is not None and outcome != "info" else INF
    if f == "read":
        if outcome != "ok":
            return None
        return KOp(src, READ, result, None, index, ret, True, p)
    if f == "write":
        if outcome == "fail":
            return None
        return KOp(src, WRITE, value, None, index, ret, outcome == "ok", p)
    expected, new = value
    if outcome == "info" and expected == new:
        return None  # may or may not have happened, and changes nothing either way
    if outcome == "fail":
        if error != "mismatch":
            return None
        return KOp(src, MISMATCH, expected, new, index, ret, True, p)
    return KOp(src, CAS, expected, new, index, ret, outcome == "ok", p)


def prepare(operations: Sequence[Any]) -> list[KOp]:
    """One key's operations as :class:`KOp` s, those that constrain nothing removed or made
    interchangeable (see the module docstring)."""
    rows = [as_row(o) for o in as_records(operations)]
    return prepare_rows(rows)


def prepare_rows(rows: Sequence[Row]) -> list[KOp]:
    """:func:`prepare` for operations given as :data:`Row` s."""
    kops = [k for i, row in enumerate(rows) if (k := _kop(i, *row)) is not None]
    if not any(k.kind == MISMATCH for k in kops):
        return _drop_unobserved(kops)
    observed = {k.arg for k in kops if k.kind != WRITE}
    return [
        KOp(k.src, WRITE, GARBAGE, None, k.inv, k.ret, False, k.process)
        if not k.required and k.kind == WRITE and k.arg not in observed
        else k
        for k in kops
    ]


def _drop_unobserved(kops: list[KOp]) -> list[KOp]:
    """Drop optional writers whose value nobody observes (no mismatch observations)."""
    while True:
        observed = {k.arg for k in kops if k.kind == READ or k.kind == CAS}
        kept = [k for k in kops if k.required or k.produced in observed]
        if len(kept) == len(kops):
            return kops
        kops = kept


# --------------------------------------------------------------------------- one key


def check_prepared(
    kops: list[KOp],
    *,
    time_limit: float | None = None,
    method: Method = "auto",
    max_configs: int = DEFAULT_MAX_CONFIGS,
    budget: Budget | None = None,
) -> RawResult:
    """Check one key's prepared ops; ``unknown`` when the budget runs out.

    ``budget`` (shared deadline, stop flag) wins over ``time_limit``/``max_configs``.
    """
    started = time.monotonic()
    if budget is None:
        deadline = started + time_limit if time_limit is not None else float("inf")
        budget = Budget(deadline, max_configs)
    try:
        result = _check(kops, method, budget)
    except BudgetExceeded as exc:
        result = RawResult("unknown", "search", reason=str(exc))
    result.seconds = time.monotonic() - started
    return result


def _check(kops: list[KOp], method: Method, budget: Budget) -> RawResult:
    if not kops:
        return RawResult(True, "empty")
    budget.check()
    mismatches = any(k.kind == MISMATCH for k in kops)
    relaxed = [k for k in kops if k.kind != MISMATCH] if mismatches else kops
    relaxed = forced_only([k for k in relaxed if k.arg is not GARBAGE])
    fits = values_unique(relaxed)
    if method == "unique-values" and (not fits or mismatches):
        raise ValueError("the unique-values method needs distinct written values, no mismatch")
    if method != "search" and fits:
        result = check_unique(relaxed)
        if result.valid is False:
            return _refine(kops, result, budget)
        if not mismatches:
            return result
    elif method != "search":
        # repeated values: first the relaxation that finds the obvious anomalies in O(n log n)
        result = check_unique(once_written([k for k in kops if k.arg is not GARBAGE]))
        if result.valid is False:
            return _refine(kops, result, budget)
    return _search(kops, budget)


def _search(kops: list[KOp], budget: Budget) -> RawResult:
    """Depth first with a work cap (fast on linearizable histories, however ambiguous), then
    breadth first (fast to refute: each configuration once) if the cap is hit."""
    s = Search(kops, budget, cap=DFS_WORK_PER_OP * len(kops) + DFS_WORK_MIN)
    try:
        result = s.run()
    except Overrun:
        result = _frontier_then_search(kops, budget)
    else:
        if result.valid is False:
            _note_failure(kops, s, result)
    if result.valid is False:
        return _natural(kops, budget, result)
    return result


def _frontier_then_search(kops: list[KOp], budget: Budget) -> RawResult:
    """The breadth-first frontier with a size cap (it refutes quickly, but explodes on an
    ambiguous history that is linearizable), then the depth-first search without a cap."""
    capped = Budget(budget.deadline, min(budget.max_configs, FRONTIER_MAX), budget.stop)
    try:
        return frontier(kops, capped)
    except BudgetExceeded:
        if time.monotonic() > budget.deadline or (budget.stop is not None and budget.stop()):
            raise
    s = Search(kops, budget)
    result = s.run()
    if result.valid is False:
        _note_failure(kops, s, result)
    return result


def _note_failure(kops: list[KOp], s: Search, result: RawResult) -> None:
    result.states = sorted(s.best_states, key=show)
    culprit = kops[s.best_target]
    pinned = pinning_observer(kops, culprit, s.best_states) if s.pin else None
    if pinned is not None:
        result.pinned_by = pinned.src


def _natural(kops: list[KOp], budget: Budget, found: RawResult) -> RawResult:
    """The failure as a person would find it: searched again without the values-written-once
    rule (which fails early, at an op that only *later* turns out impossible), within a short
    budget, for the longest prefix and the op that really cannot be placed after it."""
    short = Budget(min(budget.deadline, time.monotonic() + EXPLAIN_SECONDS), budget.max_configs)
    short.stop = budget.stop
    s = Search(kops, short, cap=DFS_WORK_PER_OP * len(kops) + DFS_WORK_MIN, pin=False)
    try:
        result = s.run()
    except (Overrun, BudgetExceeded):
        return found
    if result.valid is not False:  # cannot happen: the rule only prunes
        return found
    _note_failure(kops, s, result)
    result.method = found.method
    return result


def _refine(kops: list[KOp], unique: RawResult, budget: Budget) -> RawResult:
    """Locate the first op that cannot be placed (and the longest prefix) for a violation the
    unique-values check found, within a short budget; else keep its own explanation."""
    short = Budget(min(budget.deadline, time.monotonic() + EXPLAIN_SECONDS), budget.max_configs)
    short.stop = budget.stop
    try:
        found = _search(kops, short)
    except BudgetExceeded:
        return unique
    if found.valid is not False:  # cannot happen: the unique check is exact or a relaxation
        return unique
    found.method = "unique-values"
    return found


# --------------------------------------------------------------------------- results


@dataclass(slots=True)
class Anomaly:
    """Why a key is not linearizable, in plain words, with its operations (culprit first)."""

    key: str
    kind: str
    explanation: str
    ops: list[OpRecord]
    culprit: OpRecord | None = None
    prefix: list[tuple[OpRecord, State]] | None = None  # the prefix's last ops, state after
    prefix_ops: int = 0
    prefix_end: int | None = None
    states: list[State] | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (see the module docstring)."""
        indices = [o.index for o in self.ops] + [o.end for o in self.ops if o.end is not None]
        prefix = None
        if self.prefix is not None:
            prefix = {
                "ops": self.prefix_ops,
                "through_event": self.prefix_end,
                "last": [operation_json(o) | {"after": _json_state(s)} for o, s in self.prefix],
            }
        return {
            "key": self.key,
            "kind": self.kind,
            "explanation": self.explanation,
            "window": [min(indices), max(indices)] if indices else [],
            "ops": [operation_json(o) for o in self.ops],
            "culprit": None if self.culprit is None else operation_json(self.culprit),
            "prefix": prefix,
            "possible_states": None
            if self.states is None
            else [_json_state(s) for s in self.states],
        }


def _json_state(s: State) -> Any:
    return s if s is None or isinstance(s, int) else str(s)


def operation_json(o: Any) -> dict[str, Any]:
    """One operation as the report shows it (an :class:`OpRecord` or an ``Operation``)."""
    record = o if isinstance(o, OpRecord) else as_records([o])[0]
    return record.to_json()


@dataclass(slots=True)
class KeyResult:
    """The verdict for one key."""

    key: str
    valid: Verdict
    ops: int
    method: str
    seconds: float
    reason: str | None = None
    anomaly: Anomaly | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form, without the anomaly (listed separately)."""
        return {
            "valid": self.valid,
            "ops": self.ops,
            "method": self.method,
            "seconds": round(self.seconds, 6),
            "reason": self.reason,
        }


@dataclass(slots=True)
class CheckResult:
    """The verdict for a whole history: the per-key results combined."""

    valid: Verdict
    keys: dict[str, KeyResult]
    seconds: float = 0.0
    reason: str | None = None

    @property
    def anomalies(self) -> list[Anomaly]:
        """The anomaly of every non-linearizable key, by key order."""
        return [r.anomaly for _, r in sorted(self.keys.items()) if r.anomaly is not None]

    @property
    def anomaly(self) -> Anomaly | None:
        """The first anomaly by key order, or ``None``."""
        found = self.anomalies
        return found[0] if found else None

    @property
    def ops(self) -> int:
        """Operations in the history, all keys."""
        return sum(r.ops for r in self.keys.values())

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (see the module docstring)."""
        first = self.anomaly
        return {
            "valid": self.valid,
            "ops": self.ops,
            "seconds": round(self.seconds, 6),
            "reason": self.reason,
            "keys": {k: self.keys[k].to_json() for k in sorted(self.keys)},
            "anomaly": None if first is None else first.to_json(),
            "anomalies": [a.to_json() for a in self.anomalies],
            "unknown_keys": sorted(k for k, r in self.keys.items() if r.valid == "unknown"),
        }


def combine(verdicts: Iterable[Verdict]) -> Verdict:
    """``False`` if any is, else ``"unknown"`` if any is, else ``True``."""
    seen = list(verdicts)
    if False in seen:
        return False
    return "unknown" if "unknown" in seen else True


def by_key(operations: Iterable[Any]) -> dict[str, list[Any]]:
    """Operations grouped by key, each group in invoke order."""
    groups: dict[str, list[Any]] = {}
    for o in operations:
        key = o.key if isinstance(o, OpRecord) else o.invoke.key
        groups.setdefault(key, []).append(o)
    return groups


def key_result(
    key: str, operations: Sequence[Any], raw: RawResult, kops: list[KOp] | None = None
) -> KeyResult:
    """Attach the key's operations to a :class:`RawResult`, explaining an anomaly."""
    anomaly = None
    if raw.valid is False:
        records = as_records(operations)
        anomaly = _anomaly(key, records, kops if kops is not None else prepare(records), raw)
    return KeyResult(key, raw.valid, len(operations), raw.method, raw.seconds, raw.reason, anomaly)


def _anomaly(key: str, records: list[OpRecord], kops: list[KOp], raw: RawResult) -> Anomaly:
    by_src = {k.src: k for k in kops}
    kind, text, witness = raw.kind, raw.explanation, list(raw.witness)
    culprit = by_src.get(raw.culprit) if raw.culprit is not None else None
    if not kind and culprit is not None:
        pinned = by_src.get(raw.pinned_by) if raw.pinned_by is not None else None
        kind, text, ops = explain_failure(kops, records, culprit, raw.states or [], pinned)
        witness = [k.src for k in ops]
    if raw.culprit is not None and raw.culprit not in witness:
        witness.insert(0, raw.culprit)
    if raw.prefix:
        text += (
            f" The longest linearizable prefix has {len(raw.prefix)} "
            f"operation{'' if len(raw.prefix) == 1 else 's'} (all that "
            f"completed before event {raw.prefix_end} fit in one order); "
            f"{what_record(records[raw.culprit]) if raw.culprit is not None else 'the next'} "
            "is the first that cannot be placed after it."
        )
    prefix = None
    if raw.prefix:
        state: State = None
        after: list[tuple[OpRecord, State]] = []
        for src in raw.prefix:
            k = by_src[src]
            if k.writes:
                state = k.produced
            after.append((records[src], state))
        prefix = after[-PREFIX_TAIL:]
    return Anomaly(
        key,
        kind or "no valid order",
        text,
        [records[i] for i in witness[:MAX_ANOMALY_OPS]],
        records[raw.culprit] if raw.culprit is not None else None,
        prefix,
        len(raw.prefix),
        raw.prefix_end,
        raw.states,
    )


def what_record(o: OpRecord) -> str:
    """``p3's write 5 (event 12)``."""
    if o.f == "read":
        return f"p{o.process}'s read returning {show(o.result)} (invoked at event {o.index})"
    return f"p{o.process}'s {o.f} {show(o.value)} (invoked at event {o.index})"


# --------------------------------------------------------------------------- many keys


def check_records(
    records: Sequence[OpRecord],
    *,
    time_limit: float | None = None,
    method: Method = "auto",
    max_configs: int = DEFAULT_MAX_CONFIGS,
    budget: Budget | None = None,
    started: float | None = None,
) -> CheckResult:
    """Check paired operations key by key in this process, under one budget; stop at the first
    key that is not linearizable (the keys left are reported as not checked)."""
    started = time.monotonic() if started is None else started
    if budget is None:
        deadline = started + time_limit if time_limit is not None else float("inf")
        budget = Budget(deadline, max_configs)
    groups = by_key(records)
    results: dict[str, KeyResult] = {}
    failed: str | None = None
    for key in sorted(groups):
        ops = groups[key]
        if failed is not None:
            why = f"stopped after key {failed!r} was found not linearizable"
            results[key] = KeyResult(key, "unknown", len(ops), NOT_CHECKED, 0.0, why)
            continue
        if time.monotonic() > budget.deadline:
            why = "the time limit ran out before this key was checked"
            results[key] = KeyResult(key, "unknown", len(ops), NOT_CHECKED, 0.0, why)
            continue
        kops = prepare(ops)
        raw = check_prepared(kops, method=method, budget=budget)
        results[key] = key_result(key, ops, raw, kops)
        if raw.valid is False:
            failed = key
    return finish(results, started)


def finish(results: dict[str, KeyResult], started: float) -> CheckResult:
    """Combine per-key results; a history without operations is ``unknown``, not valid."""
    seconds = time.monotonic() - started
    if not any(r.ops for r in results.values()):
        return CheckResult("unknown", results, seconds, "the history has no operations")
    return CheckResult(combine(r.valid for r in results.values()), results, seconds)


def check_key(
    key: str,
    operations: Sequence[Any],
    *,
    time_limit: float | None = None,
    method: Method = "auto",
    max_configs: int = DEFAULT_MAX_CONFIGS,
) -> KeyResult:
    """Check one key's operations (all must be on ``key``)."""
    kops = prepare(operations)
    raw = check_prepared(kops, time_limit=time_limit, method=method, max_configs=max_configs)
    return key_result(key, operations, raw, kops)


def check_operations(
    operations: Iterable[Any],
    *,
    time_limit: float | None = None,
    method: Method = "auto",
    max_configs: int = DEFAULT_MAX_CONFIGS,
) -> CheckResult:
    """Check paired operations (``OpRecord`` s or ``harness.history.Operation`` s) in this
    process, key by key, under one budget."""
    return check_records(
        as_records(operations), time_limit=time_limit, method=method, max_configs=max_configs
    )


def check_history(
    events: Iterable[Any],
    *,
    time_limit: float | None = None,
    method: Method = "auto",
    max_configs: int = DEFAULT_MAX_CONFIGS,
) -> CheckResult:
    """Check a history given as its events, in this process: the cheap entry point.

    ``events`` are ``harness.history.Op`` objects or plain dicts with the HISTORY.md fields
    (``index``, ``time``, ``process``, ``type``, ``f``, ``key``, ``value``, optional ``node``
    and ``error``), in file order. They are validated (a bad one raises
    ``harness.history.HistoryError``), paired and checked key by key under one wall-clock
    ``time_limit`` (seconds, ``None``: no limit). The result's ``valid`` is ``True``,
    ``False`` or ``"unknown"``; ``to_json()`` gives the results.json form.
    """
    started = time.monotonic()
    return check_records(
        records_from_events(events),
        time_limit=time_limit,
        method=method,
        max_configs=max_configs,
        started=started,
    )
