"""Polynomial check of a key whose writes all write distinct values (Gibbons & Korach).

Theory of operation
-------------------
When every write and cas writes a value no other op writes, each value ``v`` has one producer
``P(v)`` (``null`` has a virtual one before everything), and in any linearization the ops that
see ``v`` (``P(v)``, the reads of ``v``, and the single cas that consumes ``v``) form one
contiguous *cluster*; a cas consuming ``v`` and producing ``w`` glues cluster ``v`` to cluster
``w`` into a *chain*, whose order is fixed. Let a chain's zone be ``(a, b)`` = (earliest
completion, latest invoke) of its ops. Chain X must precede chain Y iff ``a_X < b_Y``; any cycle
of this relation contains a 2-cycle (take the chain with the largest ``b``), so the key is
linearizable iff every chain is internally consistent and no two chains X, Y have ``a_X < b_Y``
and ``a_Y < b_X`` (Gibbons & Korach's zones, extended with cas chains). ``O(n log n)``.

Info writes: ``prepare``/:func:`forced_only` keep only those that must have applied (their value
was seen), which is exact without mismatch observations. With mismatch observations (failed
cas) this check is a *relaxation* (they are left out): a ``False`` is final, a ``True`` is not.

A violation names its kind in plain words and the operations involved, the one that is wrong
first.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass

from harness.checker.model import CAS, INF, READ, WRITE, KOp, RawResult, State, show

_VIRTUAL = KOp(-1, 1, None, None, -1, -1, True, -1)  # the write of the initial null


class Violation(Exception):
    """Why the key is not linearizable: a kind, a paragraph, and the ops (culprit first)."""

    def __init__(self, kind: str, text: str, ops: Iterable[KOp]) -> None:
        super().__init__(text)
        self.kind = kind
        self.text = text
        seen: list[KOp] = []
        for k in ops:
            if k.src >= 0 and k not in seen:
                seen.append(k)
        self.ops = seen


@dataclass(slots=True)
class _Chain:
    """Clusters glued by cas: layers in their fixed order, and the chain's zone."""

    layers: list[list[KOp]]
    a: int = INF  # earliest completion
    a_op: KOp = _VIRTUAL
    b: int = -1  # latest invoke
    b_op: KOp = _VIRTUAL

    def writers(self) -> list[KOp]:
        return [k for layer in self.layers for k in layer if k.writes]


def when(k: KOp) -> str:
    """``events 12-15`` / ``invoked at event 12, never completed``."""
    if k.ret >= INF:
        return f"invoked at event {k.inv}, outcome unknown"
    return f"events {k.inv}-{k.ret}"


def what(k: KOp) -> str:
    """``p3's write 5`` / ``p3's cas 4->5`` / ``p3's read of 4``."""
    if k.src < 0:
        return "the initial value null"
    if k.kind == READ:
        return f"p{k.process}'s read"
    if k.kind == CAS:
        return f"p{k.process}'s cas {show(k.arg)}->{show(k.new)}"
    if k.writes:
        return f"p{k.process}'s write {show(k.arg)}"
    return f"p{k.process}'s cas {show(k.arg)}->{show(k.new)} (failed: mismatch)"


def _index(
    kops: list[KOp],
) -> tuple[dict[State, KOp], dict[State, list[KOp]], dict[State, KOp]]:
    producer: dict[State, KOp] = {None: _VIRTUAL}
    readers: dict[State, list[KOp]] = {}
    consumer: dict[State, KOp] = {}
    for k in kops:
        if k.writes:
            producer[k.produced] = k
    for k in kops:
        if k.kind == READ or (k.kind == CAS and not k.writes):  # a cas a->a reads a
            if k.arg not in producer:
                raise Violation(
                    "read of a value never written",
                    f"{what(k)} ({when(k)}) returned {show(k.arg)}, a value no operation on this "
                    "key wrote (or could have written).",
                    [k],
                )
            readers.setdefault(k.arg, []).append(k)
        elif k.kind == CAS:
            if k.arg not in producer:
                raise Violation(
                    "cas succeeded on a value never written",
                    f"{what(k)} ({when(k)}) succeeded, so the key held {show(k.arg)} when it "
                    "took effect, but no operation on this key wrote that value.",
                    [k],
                )
            other = consumer.get(k.arg)
            if other is not None:
                raise Violation(
                    "cas succeeded on a wrong value",
                    f"{what(other)} ({when(other)}) and {what(k)} ({when(k)}) both succeeded on "
                    f"{show(k.arg)}, but {show(k.arg)} was written only once, by "
                    f"{what(producer[k.arg])}: after one cas replaced it, the other found a "
                    "different value.",
                    [k, other, producer[k.arg]],
                )
            consumer[k.arg] = k
    return producer, readers, consumer


def _chains(kops: list[KOp]) -> list[_Chain]:
    producer, readers, consumer = _index(kops)
    chains: list[_Chain] = []
    reached: set[State] = set()
    for value, head in producer.items():
        if head.kind == CAS:
            continue
        layers: list[list[KOp]] = [[head]]
        v: State = value
        while True:
            reached.add(v)
            layers.append(readers.get(v, []))
            nxt = consumer.get(v)
            if nxt is None:
                break
            layers.append([nxt])
            v = nxt.produced
        chains.append(_Chain(layers))
    stuck = [k for v, k in producer.items() if v not in reached]
    if stuck:
        raise Violation(
            "cas succeeded on a value never written",
            "these cas operations each expect the value another one writes, in a cycle that "
            "no write ever starts: " + "; ".join(f"{what(k)} ({when(k)})" for k in stuck),
            stuck,
        )
    return chains


def _check_chain(chain: _Chain) -> None:
    """Within a chain the layer order is fixed: no op may complete before an earlier one starts."""
    latest_inv, latest_op = -1, _VIRTUAL
    for layer in chain.layers:
        for k in layer:
            if k.ret < latest_inv:
                raise _order_violation(k, latest_op)
        for k in layer:
            if k.ret < chain.a:
                chain.a, chain.a_op = k.ret, k
            if k.inv > chain.b:
                chain.b, chain.b_op = k.inv, k
            if k.inv > latest_inv:
                latest_inv, latest_op = k.inv, k


def _order_violation(k: KOp, later: KOp) -> Violation:
    """``k`` completed before ``later`` began, yet must follow it."""
    if k.kind == READ and later.writes and later.produced == k.arg:
        return Violation(
            "read of a value not yet written",
            f"{what(k)} completed at event {k.ret}, before {what(later)} began (event "
            f"{later.inv}), the only operation that writes {show(k.arg)}: the read saw a write "
            "from its future.",
            [k, later],
        )
    return Violation(
        "operations out of order",
        f"{what(k)} ({when(k)}) completed before {what(later)} began (event {later.inv}), yet "
        f"it must come after it: it sees a value that is written only after the one "
        f"{what(later)} sees or replaces.",
        [k, later],
    )


def _conflict(x: _Chain, y: _Chain) -> Violation:
    """Chains X and Y each have an op that completed before an op of the other began."""
    for stale, own, newer in ((x.b_op, x, y), (y.b_op, y, x)):
        if stale.kind == READ:
            return _stale(stale, own, newer)
    head_x, head_y = x.layers[0][0], y.layers[0][0]
    return Violation(
        "operations out of order",
        f"{what(x.a_op)} completed (event {x.a_op.ret}) before {what(y.b_op)} began (event "
        f"{y.b_op.inv}), and {what(y.a_op)} completed (event {y.a_op.ret}) before "
        f"{what(x.b_op)} began (event {x.b_op.inv}): the value {show(head_x.produced)} would "
        f"have to be in the key both before and after {show(head_y.produced)}.",
        [x.b_op, y.b_op, x.a_op, y.a_op, head_x, head_y],
    )


def _stale(read: KOp, own: _Chain, newer: _Chain) -> Violation:
    writer = next((w for w in own.writers() if w.produced == read.arg), own.layers[0][0])
    done = newer.a_op  # an op of the newer chain that completed before the read began
    newer_writer = newer.layers[0][0]
    observed = any(k.kind == READ for layer in newer.layers for k in layer)
    lost = newer_writer.src >= 0 and newer_writer.kind != CAS and not observed
    kind = "lost write" if lost else "stale read"
    if writer.src < 0:
        start = f"{what(read)} ({when(read)}) returned null, the key's initial value"
    else:
        start = (
            f"{what(read)} ({when(read)}) returned {show(read.arg)}, written by {what(writer)} "
            f"({when(writer)})"
        )
    newer_text = (
        f"{what(done)} completed at event {done.ret}, before the read began"
        if done is newer_writer
        else f"{what(done)} completed at event {done.ret}, before the read began, and it sees "
        f"{what(newer_writer)} ({when(newer_writer)})"
    )
    after = "" if writer.src < 0 else f", and that write can only come after {what(writer)}"
    tail = (
        " No read ever returned the newer value: the acknowledged write was lost, or this read "
        "is stale."
        if kind == "lost write"
        else ""
    )
    return Violation(
        kind,
        f"{start}; but {newer_text}{after}. So the read saw an older value than one already "
        f"in place when it began.{tail}",
        [read, newer_writer, done, writer],
    )


def _check_zones(chains: list[_Chain]) -> None:
    forward = sorted((c for c in chains if c.a < c.b), key=lambda c: c.a)
    widest: _Chain | None = None
    for c in forward:
        if widest is not None and c.a < widest.b:
            raise _conflict(widest, c)
        if widest is None or c.b > widest.b:
            widest = c
    starts = [c.a for c in forward]
    for c in chains:
        if c.a < c.b:
            continue
        i = bisect.bisect_left(starts, c.b) - 1
        if i >= 0 and c.a < forward[i].b:
            raise _conflict(forward[i], c)


def check_unique(kops: list[KOp]) -> RawResult:
    """Exact check of a key whose writers all write distinct values (no mismatch ops)."""
    try:
        chains = _chains(kops)
        for chain in chains:
            _check_chain(chain)
        _check_zones(chains)
    except Violation as v:
        return RawResult(
            False,
            "unique-values",
            kind=v.kind,
            explanation=v.text,
            witness=[k.src for k in v.ops],
            culprit=v.ops[0].src if v.ops else None,
        )
    return RawResult(True, "unique-values")


def forced_only(kops: list[KOp]) -> list[KOp]:
    """Required ops plus the optional writers that *must* have applied (their value is seen by
    a required op, or consumed by a cas that must have applied); the rest dropped.

    Exact when the key has no mismatch observations: an optional writer that is not forced is
    only ever followed by a blind write or by another unforced one, so removing them all from
    a valid order leaves a valid order.
    """
    optional: dict[State, list[KOp]] = {}
    for k in kops:
        if not k.required and k.writes:
            optional.setdefault(k.produced, []).append(k)
    todo = [k.arg for k in kops if k.required and (k.kind == READ or k.kind == CAS)]
    chosen: set[int] = {id(k) for k in kops if k.required}
    done: set[State] = set()
    while todo:
        v = todo.pop()
        if v in done:
            continue
        done.add(v)
        for k in optional.get(v, ()):
            chosen.add(id(k))
            if k.kind == CAS:
                todo.append(k.arg)
    return [k for k in kops if id(k) in chosen]


class _Renamed:
    """A value written more than once, as one of its writes in :func:`once_written`: equal only
    to itself (so the writes are told apart), printed as the value."""

    __slots__ = ("value",)

    def __init__(self, value: State) -> None:
        self.value = value

    def __str__(self) -> str:
        return show(self.value)

    __repr__ = __str__


def once_written(kops: list[KOp]) -> list[KOp]:
    """A relaxation, with distinct written values, of a key whose values repeat: what makes
    obvious anomalies cheap to find there (a stale read of a value written once, a read of a
    value nobody writes), where the search would have to exhaust every order before failing.

    Kept: every successful write, those of a value written more than once each renamed to a
    value of its own (nobody reads it here); an info write of a value written once; the reads
    (and cas ``a->a``) of ``null``, of a value that one write and nothing else produces, or of
    a value nothing produces. Left out: other reads, every cas that changes the value, failed
    cas observations, other info ops. If the key is linearizable, so is this: in a valid order
    of the key, a kept read of ``v`` follows the only write of ``v`` with nothing in between
    that changes the value, and leaving ops out keeps that so. So its violation is final.
    """
    producers: dict[State, list[KOp]] = {}
    for k in kops:
        if k.writes:
            producers.setdefault(k.produced, []).append(k)
    out: list[KOp] = []
    for k in kops:
        if k.kind == WRITE:
            if len(producers[k.arg]) == 1:
                out.append(k)
            elif k.required:
                out.append(KOp(k.src, WRITE, _Renamed(k.arg), None, k.inv, k.ret, True, k.process))
        elif k.required and (k.kind == READ or (k.kind == CAS and not k.writes)):
            found = producers.get(k.arg, ())
            if not found or (len(found) == 1 and found[0].kind == WRITE):
                out.append(k)
    return forced_only(out)


def values_unique(kops: Iterable[KOp]) -> bool:
    """Whether no two writers write the same value."""
    seen: set[State] = set()
    for k in kops:
        if k.writes:
            if k.produced in seen:
                return False
            seen.add(k.produced)
    return True
