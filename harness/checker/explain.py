"""Anomalies in plain words: what kind, which operations, in one paragraph.

Theory of operation
-------------------
The search (:mod:`harness.checker.search`) reports the first operation that no order can place
(the *culprit*), the states the register could hold just before it, and the longest prefix it
could linearize. This module turns that into the kind of anomaly a person recognizes, from the
culprit and the writes around it:

* a read of a value nobody wrote — *read of a value never written*, or *read of a failed write*
  when only a write that reported failure wrote it;
* a read of a value written only after the read completed — *read of a value not yet written*;
* a read of ``null`` after a write completed, or of a value overwritten before the read began —
  *stale read*; when no read ever returned the newer value — *lost write*;
* a cas that succeeded though the key could not hold its expected value — *cas succeeded on a
  wrong value* (or *on a value never written*); a cas that failed with ``mismatch`` though the
  key held its expected value throughout — *cas failed on the right value*;
* otherwise *no valid order*, naming the values the key could hold.

The witness lists the culprit first, then the few operations the paragraph names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from harness.checker.events import OpRecord
from harness.checker.model import CAS, MISMATCH, READ, KOp, State, show
from harness.checker.unique import what, when


def _held(states: Iterable[State]) -> str:
    shown = sorted({show(s) for s in states})
    if not shown:
        return "no value at all"
    if len(shown) == 1:
        return shown[0]
    return "one of " + ", ".join(shown)


def explain_failure(
    kops: Sequence[KOp],
    records: Sequence[OpRecord],
    culprit: KOp,
    states: Iterable[State],
    pinned_by: KOp | None = None,
) -> tuple[str, str, list[KOp]]:
    """``(kind, paragraph, ops culprit first)`` for a culprit no order can place."""
    states = set(states)
    if culprit.writes and pinned_by is not None:
        return _write(kops, culprit, states, pinned_by)
    if culprit.kind == READ:
        return _read(kops, records, culprit, states)
    if culprit.kind == CAS:
        producers = [k for k in kops if k.writes and k.produced == culprit.arg]
        if culprit.arg is not None and not producers:
            return (
                "cas succeeded on a value never written",
                f"{what(culprit)} ({when(culprit)}) succeeded, so the key held "
                f"{show(culprit.arg)} when it took effect, but no operation wrote that value.",
                [culprit],
            )
        if culprit.arg is None:
            w = _earliest_done_before(kops, culprit.inv, lambda k: True)
            if w is not None:
                return (
                    "cas succeeded on a wrong value",
                    f"{what(culprit)} ({when(culprit)}) succeeded on null, the key's initial "
                    f"value, but {what(w)} had completed at event {w.ret}, before the cas "
                    "began; no operation writes null, so the key can never hold null again.",
                    [culprit, w],
                )
        makers = _makers(kops, states, culprit.ret)
        return (
            "cas succeeded on a wrong value",
            f"{what(culprit)} ({when(culprit)}) succeeded, but the key cannot have held "
            f"{show(culprit.arg)} at any instant of its window: just before it completed, every "
            f"order of the earlier operations leaves {_held(states)}.",
            [culprit, *makers, *producers[:1]],
        )
    if culprit.kind == MISMATCH:
        return (
            "cas failed on the right value",
            f"{what(culprit)} ({when(culprit)}) reported a mismatch, yet the key held "
            f"{show(culprit.arg)} throughout that window in every order of the operations "
            "around it: the cas should have succeeded.",
            [culprit],
        )
    return _write(kops, culprit, states, pinned_by)


def _read(
    kops: Sequence[KOp], records: Sequence[OpRecord], r: KOp, states: set[State]
) -> tuple[str, str, list[KOp]]:
    v = r.arg
    producers = [k for k in kops if k.writes and k.produced == v]
    if v is None:
        w = _earliest_done_before(kops, r.inv, lambda k: True)
        if w is not None:
            return (
                "stale read",
                f"{what(r)} ({when(r)}) returned null, the key's initial value, but "
                f"{what(w)} had completed at event {w.ret}, before the read began; no operation "
                "writes null, so the key can never hold null again.",
                [r, w],
            )
    elif not producers:
        failed = [o for o in records if o.f == "write" and o.type == "fail" and o.value == v]
        if failed:
            f = failed[0]
            return (
                "read of a failed write",
                f"{what(r)} ({when(r)}) returned {show(v)}, which only p{f.process}'s write at "
                f"events {f.index}-{f.end} wrote, and that write reported failure (it must not "
                "have taken effect).",
                [r],
            )
        return (
            "read of a value never written",
            f"{what(r)} ({when(r)}) returned {show(v)}, a value no operation on this key wrote.",
            [r],
        )
    elif all(p.inv > r.ret for p in producers):
        p = producers[0]
        return (
            "read of a value not yet written",
            f"{what(r)} completed at event {r.ret}, but {show(v)} is written only later, by "
            f"{what(p)} ({when(p)}): the read saw a write from its future.",
            [r, p],
        )
    else:
        before = [p for p in producers if p.inv < r.ret]
        last_producer_end = max(p.ret for p in before)
        w = _earliest_done_before(
            kops,
            r.inv,
            lambda k: k.produced != v and k.inv > last_producer_end,
        )
        if w is not None:
            p = max(before, key=lambda k: k.inv)
            seen = any(k.kind in (READ, CAS, MISMATCH) and k.arg == w.produced for k in kops)
            kind = "stale read" if seen or w.kind == CAS else "lost write"
            tail = (
                ""
                if seen
                else f" No operation ever observed {show(w.produced)}: the acknowledged "
                "write was lost, or this read is stale."
            )
            return (
                kind,
                f"{what(r)} ({when(r)}) returned {show(v)}, written by {what(p)} ({when(p)}); "
                f"but {what(w)} began after that write completed and itself completed at "
                f"event {w.ret}, before the read began, so {show(v)} had been overwritten." + tail,
                [r, w, p],
            )
    return (
        "no valid order",
        f"{what(r)} ({when(r)}) returned {show(v)}, but in every order of the operations "
        f"before it the key held {_held(states)} when the read could take effect.",
        [r, *_makers(kops, states, r.ret), *producers[:2]],
    )


def _write(
    kops: Sequence[KOp], w: KOp, states: set[State], pinned_by: KOp | None
) -> tuple[str, str, list[KOp]]:
    if pinned_by is not None:
        makers = [k for k in kops if k.writes and k.produced == pinned_by.arg and k.inv < w.ret]
        seen = any(k.kind in (READ, CAS, MISMATCH) and k.arg == w.produced for k in kops)
        kind = "stale read" if seen else "lost write"
        old = show(pinned_by.arg)
        tail = (
            f" No operation ever observed {show(w.produced)}: the acknowledged write was lost, "
            "or that read is stale."
            if not seen
            else ""
        )
        return (
            kind,
            f"{what(w)} completed at event {w.ret}, yet {what(pinned_by)} "
            f"({when(pinned_by)}), invoked after it, still needed {old}, which is written only "
            f"once and cannot come back once replaced." + tail,
            [*([pinned_by, w] if seen else [w, pinned_by]), *makers[-1:]],
        )
    return (
        "no valid order",
        f"{what(w)} ({when(w)}) cannot be placed: in every order of the operations before its "
        f"completion the key held {_held(states)}, and no way of putting it in keeps the "
        "operations that follow possible.",
        [w, *_makers(kops, states, w.ret)],
    )


def _makers(kops: Sequence[KOp], states: set[State], before: int) -> list[KOp]:
    """For each possible state, the last op that wrote it before event ``before``."""
    out: list[KOp] = []
    for s in sorted(states, key=show):
        found = [k for k in kops if k.writes and k.produced == s and k.inv < before]
        if found:
            out.append(max(found, key=lambda k: k.inv))
    return out[:3]


def _earliest_done_before(
    kops: Sequence[KOp], at: int, accept: Callable[[KOp], bool]
) -> KOp | None:
    """The required writer that completed earliest before event ``at`` among those accepted."""
    found: KOp | None = None
    for k in kops:
        done = k.writes and k.required and k.ret < at and accept(k)
        if done and (found is None or k.ret < found.ret):
            found = k
    return found


def pinning_observer(kops: Sequence[KOp], culprit: KOp, states: set[State]) -> KOp | None:
    """A required op invoked after ``culprit`` completed that still needs a value the register
    held just before it and that is written at most once (why a write could not be placed)."""
    counts: dict[State, int] = {}
    for k in kops:
        if k.writes:
            counts[k.produced] = counts.get(k.produced, 0) + 1
    once = {s for s in states if counts.get(s, 0) <= 1}
    for k in kops:
        if k.required and k.kind in (READ, CAS) and k.inv > culprit.ret and k.arg in once:
            return k
    return None
