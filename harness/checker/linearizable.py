"""Linearizability of a key-value history: one register per key (read, write, cas).

Theory of operation
-------------------
*Compositionality.* A history is linearizable iff its restriction to each key is (Herlihy &
Wing's locality), so every key is checked alone and the verdicts are combined: any ``False``
makes the history ``False``; otherwise any ``"unknown"`` makes it ``"unknown"``.

*Preparation* (:func:`prepare`). Each operation becomes a :class:`KOp` with a window
``[inv, ret]`` measured in event positions (file order is real-time order). An ``ok`` read,
write or cas is *required*. A ``fail`` write, read or cas took no effect and is dropped, except a
cas failing with ``"mismatch"``: it becomes a required *observation* that the register differed
from ``expected`` at some instant of its window (no effect). ``info`` and unfinished operations
get ``ret = ∞`` and are *optional*: applied once, anywhere after their invoke, or never. An
``info`` read constrains nothing and is dropped. An optional write or cas whose new value nobody
observes (no ok read of it, no cas expecting it) is dropped as well when the key has no
mismatch observations: applying it is only ever followed by a blind overwrite, so leaving it
out changes no verdict.

*Fast path: unique values* (:func:`check_unique`). When every remaining write and cas writes a
value no other op writes, each value ``v`` has one producer ``P(v)`` (``null`` has a virtual
one at time -1), and in any linearization the ops that see ``v`` — ``P(v)``, the reads of
``v``, and the single cas that consumes ``v`` — form one contiguous *cluster*; a cas consuming
``v`` and producing ``w`` glues cluster ``v`` to cluster ``w`` (a *chain*, whose order is
fixed). Let a chain's zone be ``(a, b)`` = (earliest completion, latest invoke) of its ops.
Chain X must precede chain Y iff ``a_X < b_Y``; any cycle of this relation contains a 2-cycle
(take the chain with the largest ``b``), so the history is linearizable iff every chain is
internally consistent and no two chains X, Y have ``a_X < b_Y`` and ``a_Y < b_X`` (Gibbons &
Korach's zones, extended with cas chains and info ops). This is ``O(n log n)`` and exact; a
violation is explained by the two conflicting chains (or one broken chain).

*General path: just-in-time search* (:func:`search`). Otherwise (repeated values, mismatch
observations) events are scanned in order keeping the set of *configurations*
``(mask, state)``: ``mask`` holds the open (invoked, not yet completed) ops already linearized,
``state`` the register after the linearized prefix. Ops are linearized lazily: at the
completion of an op not yet in ``mask`` a depth-first search over the open writers (memoized on
``(mask, state)``, as in Wing & Gong / Lowe's WGL) finds every way to linearize it. Reads and
mismatch observations commute with everything and are *absorbed* greedily the moment the state
allows them (moving a no-effect op earlier to an instant its result holds cannot break a valid
order), so only writers branch. The configuration set collapses to plain states at quiescent
points, which is the cut-point decomposition for free. A budget of time and configurations
turns an explosion into ``"unknown"``, never a hang. A violation is explained by the
operations between the last *clean* point (no open op linearized, so the past is summarized by
the set of possible states) and the completion that no order could reach.

JSON shape (``CheckResult.to_json()``, stored under ``"linearizability"`` in results.json)::

    {
      "valid": true | false | "unknown",
      "ops": 1234,                       # operations in the history (all keys)
      "seconds": 0.12,
      "keys": {"x": {"valid": ..., "ops": 57, "method": "unique-values" | "search" | "empty",
                     "seconds": 0.01, "reason": null | "why unknown"}},
      "anomaly": null | ANOMALY,          # the first non-linearizable key's, by key order
      "anomalies": [ANOMALY, ...],        # one per non-linearizable key
      "unknown_keys": ["y", ...]
    }
    ANOMALY = {"key": "x", "explanation": "human text",
               "window": [first_event_index, last_event_index],
               "ops": [{"index": 12, "completion_index": 15 | null, "process": 3,
                        "f": "read" | "write" | "cas", "type": "ok" | "fail" | "info",
                        "value": ..., "error": null | str, "node": null | str,
                        "invoke_time": ns, "complete_time": ns | null}, ...]}
"""

from __future__ import annotations

import bisect
import time
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

from harness.history import Op, Operation, pair_operations

Verdict: TypeAlias = bool | Literal["unknown"]
Method: TypeAlias = Literal["auto", "unique-values", "search"]
State: TypeAlias = int | None
Config: TypeAlias = tuple[int, State]
_Move: TypeAlias = tuple[int, bool, State, State]  # (bit, is cas, expected, value after)

INF = 1 << 62  #: the window end of an op that never completed
READ, WRITE, CAS, MISMATCH = range(4)
_KIND_NAME = {READ: "read", WRITE: "write", CAS: "cas", MISMATCH: "cas (failed: mismatch)"}
DEFAULT_MAX_CONFIGS = 1_000_000


@dataclass(frozen=True, slots=True)
class KOp:
    """One operation of one key, prepared for checking.

    ``arg`` is the value read, the value written, or a cas's expected value; ``new`` a cas's new
    value. ``inv``/``ret`` are event positions (``ret == INF`` when it never completed).
    ``src`` indexes the key's operation list.
    """

    src: int
    kind: int
    arg: State
    new: State
    inv: int
    ret: int
    required: bool
    process: int

    @property
    def writes(self) -> bool:
        """Whether this op changes the register when applied."""
        return self.kind in (WRITE, CAS)

    @property
    def produced(self) -> State:
        """The value this op leaves in the register (writers only)."""
        return self.new if self.kind == CAS else self.arg

    def describe(self) -> str:
        """A short human description: ``p3 write 5 [ev 12..15]``."""
        end = "never completed" if self.ret >= INF else str(self.ret)
        if self.kind in (CAS, MISMATCH):
            what = f"cas {self.arg}->{self.new}" + ("" if self.kind == CAS else " failed: mismatch")
        else:
            what = f"{_KIND_NAME[self.kind]} {self.arg}"
        info = "" if self.required else " (info)"
        return f"p{self.process} {what}{info} [events {self.inv}..{end}]"


class BudgetExceeded(Exception):
    """The search ran out of time or memory: the verdict is ``unknown``."""


@dataclass(slots=True)
class Budget:
    """Limits of one key's check: an absolute ``time.monotonic()`` deadline and a size cap."""

    deadline: float = float("inf")
    max_configs: int = DEFAULT_MAX_CONFIGS

    def check(self, size: int) -> None:
        """Raise :class:`BudgetExceeded` when past the deadline or over the size cap."""
        if size > self.max_configs:
            raise BudgetExceeded(f"more than {self.max_configs} search configurations")
        if time.monotonic() > self.deadline:
            raise BudgetExceeded("time limit reached")


@dataclass(slots=True)
class RawResult:
    """A key's verdict in terms of :class:`KOp` (cheap to pass between processes)."""

    valid: Verdict
    method: str
    reason: str | None = None
    explanation: str = ""
    witness: list[int] = field(default_factory=list)  # src indices
    seconds: float = 0.0


# --------------------------------------------------------------------------- preparation


def _kop(src: int, operation: Operation) -> KOp | None:
    inv, done, outcome = operation.invoke, operation.completion, operation.outcome
    ret = done.index if done is not None and outcome != "info" else INF
    required = outcome == "ok"
    p = inv.process
    if inv.f == "read":
        if outcome != "ok" or done is None:
            return None
        return KOp(src, READ, _as_state(done.value), None, inv.index, ret, True, p)
    if inv.f == "write":
        if outcome == "fail":
            return None
        return KOp(src, WRITE, _as_state(inv.value), None, inv.index, ret, required, p)
    expected, new = inv.value if isinstance(inv.value, tuple) else (None, None)
    if outcome == "fail":
        if done is None or done.error != "mismatch":
            return None
        return KOp(src, MISMATCH, expected, new, inv.index, ret, True, p)
    return KOp(src, CAS, expected, new, inv.index, ret, required, p)


def _as_state(value: object) -> State:
    assert value is None or isinstance(value, int), value
    return value


def _drop_unobserved(kops: list[KOp]) -> list[KOp]:
    """Drop optional writers whose value nobody observes (see the module docstring)."""
    if any(k.kind == MISMATCH for k in kops):
        return kops
    while True:
        observed = {k.arg for k in kops if k.kind in (READ, CAS)}
        kept = [k for k in kops if k.required or k.produced in observed]
        if len(kept) == len(kops):
            return kops
        kops = kept


def prepare(operations: Sequence[Operation]) -> list[KOp]:
    """The key's operations as :class:`KOp` s, with those that constrain nothing removed."""
    kops = [k for i, op in enumerate(operations) if (k := _kop(i, op)) is not None]
    return _drop_unobserved(kops)


def forced_only(kops: list[KOp]) -> list[KOp]:
    """Required ops plus the optional writers that *must* have applied (their value is seen by
    a required op, or consumed by a cas that must have applied); the rest dropped.

    Exact when the key has no mismatch observations: an optional writer that is not forced is
    only ever followed by a blind write or by another unforced one, so removing them all from
    a valid order leaves a valid order.
    """
    forced = {k.arg for k in kops if k.required and k.kind in (READ, CAS)}
    chosen = {id(k) for k in kops if k.required}
    grew = True
    while grew:
        grew = False
        for k in kops:
            if id(k) not in chosen and k.writes and k.produced in forced:
                chosen.add(id(k))
                grew = True
                if k.kind == CAS:
                    forced.add(k.arg)
    return [k for k in kops if id(k) in chosen]


def values_unique(kops: Iterable[KOp]) -> bool:
    """Whether no two writers write the same value."""
    seen: set[State] = set()
    for k in kops:
        if k.writes:
            if k.produced in seen:
                return False
            seen.add(k.produced)
    return True


# --------------------------------------------------------------------------- unique values

_VIRTUAL = KOp(-1, WRITE, None, None, -1, -1, True, -1)  # produces the initial null


class _Violation(Exception):
    def __init__(self, explanation: str, witness: Iterable[KOp]) -> None:
        super().__init__(explanation)
        self.explanation = explanation
        self.witness = sorted({k for k in witness if k.src >= 0}, key=lambda k: k.inv)


@dataclass(slots=True)
class _Chain:
    """Clusters glued by cas: layers in their fixed order, and the chain's zone."""

    layers: list[list[KOp]]
    a: int = INF  # earliest completion
    a_op: KOp = _VIRTUAL
    b: int = -1  # latest invoke
    b_op: KOp = _VIRTUAL

    def ops(self) -> list[KOp]:
        return [k for layer in self.layers for k in layer]

    def writers(self) -> list[KOp]:
        return [k for layer in self.layers for k in layer if k.writes]


def _index_unique(
    kops: list[KOp],
) -> tuple[dict[State, KOp], dict[State, list[KOp]], dict[State, KOp]]:
    producer: dict[State, KOp] = {None: _VIRTUAL}
    readers: dict[State, list[KOp]] = {}
    consumer: dict[State, KOp] = {}
    for k in kops:
        if k.writes:
            producer[k.produced] = k
    for k in kops:
        if k.kind == READ:
            if k.arg not in producer:
                raise _Violation(f"{k.describe()} read a value no write could have produced", [k])
            readers.setdefault(k.arg, []).append(k)
        elif k.kind == CAS:
            if k.arg not in producer:
                why = "succeeded" if k.required else "must have applied (its value was seen)"
                text = f"{k.describe()} {why}, but no write produced {k.arg}"
                raise _Violation(text, _forcing(kops, k))
            other = consumer.get(k.arg)
            if other is not None:
                raise _Violation(
                    f"{other.describe()} and {k.describe()} both replaced {k.arg}, "
                    f"which was written only once",
                    [other, k, producer[k.arg]],
                )
            consumer[k.arg] = k
    return producer, readers, consumer


def _forcing(kops: list[KOp], k: KOp) -> list[KOp]:
    """``k`` and the ops that force it to have applied (those that saw its value, and so on)."""
    out = [k]
    todo = [k]
    while todo:
        w = todo.pop()
        if w.required:
            continue
        seen = [o for o in kops if o.kind in (READ, CAS) and o.arg == w.produced and o not in out]
        out += seen
        todo += [o for o in seen if o.kind == CAS]
    return out


def _build_chains(kops: list[KOp]) -> list[_Chain]:
    producer, readers, consumer = _index_unique(kops)
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
        raise _Violation("these cas operations form a cycle that no write ever starts", stuck)
    return chains


def _check_chain(chain: _Chain) -> None:
    """Within a chain the layer order is fixed: no op may complete before an earlier one starts."""
    latest_inv, latest_op = -1, _VIRTUAL
    for layer in chain.layers:
        for k in layer:
            if k.ret < latest_inv:
                raise _Violation(
                    f"{k.describe()} completed before {latest_op.describe()} started, but must "
                    f"come after it (the value it sees is written after the one that op sees)",
                    [k, latest_op, *(w for w in chain.writers() if w.inv <= latest_op.ret)],
                )
        for k in layer:
            if k.ret < chain.a:
                chain.a, chain.a_op = k.ret, k
            if k.inv > chain.b:
                chain.b, chain.b_op = k.inv, k
            if k.inv > latest_inv:
                latest_inv, latest_op = k.inv, k


def _conflict(x: _Chain, y: _Chain) -> _Violation:
    vx, vy = x.layers[0][0].produced, y.layers[0][0].produced
    text = (
        f"{x.a_op.describe()} completed before {y.b_op.describe()} started, and "
        f"{y.a_op.describe()} completed before {x.b_op.describe()} started: the span of value "
        f"{vx} (its write and the ops that saw it) would have to come both before and after "
        f"the span of value {vy}"
    )
    witness = [x.a_op, x.b_op, y.a_op, y.b_op, *x.writers(), *y.writers()]
    return _Violation(text, witness)


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
        chains = _build_chains(kops)
        for chain in chains:
            _check_chain(chain)
        _check_zones(chains)
    except _Violation as v:
        witness = {w.src for k in v.witness for w in _forcing(kops, k) if w.src >= 0}
        return RawResult(False, "unique-values", explanation=v.explanation, witness=sorted(witness))
    return RawResult(True, "unique-values")


# --------------------------------------------------------------------------- general search


class _Search:
    """Just-in-time linearization over the events of one key (see the module docstring)."""

    def __init__(self, kops: list[KOp], budget: Budget) -> None:
        self.kops = kops
        self.budget = budget
        self.bit: dict[int, int] = {}
        self.free: list[int] = []
        self.next_slot = 0
        self.writers: list[int] = []  # open writer ids
        self.absorbers: list[int] = []  # open read / mismatch ids
        self.configs: set[Config] = {(0, None)}
        self.optional = 0  # bits of open optional ops (they never close)
        self.visited = 0  # configurations expanded for the current completion
        self.clean_pos = -1
        self.clean_states: set[State] = {None}
        self.before: set[Config] = set()  # configurations before the last completion
        # Values at most one op writes (and null): once the register leaves one, it never
        # returns, so it may only leave after every op that must see it has been linearized.
        producers = Counter(k.produced for k in kops if k.writes)
        self.final = {v for v in [None, *producers] if producers[v] <= 1}
        self.obligations = Counter(k.arg for k in kops if k.required and k.kind in (READ, CAS))
        self.invoked_obligations: Counter[State] = Counter()
        self.open_cas: dict[State, list[int]] = {}  # open required cas ids by expected value

    def events(self) -> list[tuple[int, int]]:
        out = [(k.inv, i) for i, k in enumerate(self.kops)]
        out += [(k.ret, i) for i, k in enumerate(self.kops) if k.ret < INF]
        out.sort()
        return out

    def run(self) -> RawResult:
        for n, (pos, i) in enumerate(self.events()):
            k = self.kops[i]
            if pos == k.inv:
                self.invoke(i)
            elif not self.complete(i):
                return self.failure(i)
            if n & 63 == 0:
                self.budget.check(len(self.configs))
            self.note_clean(pos)
        return RawResult(True, "search")

    def matches(self, i: int, state: State) -> bool:
        k = self.kops[i]
        return state == k.arg if k.kind == READ else state != k.arg

    def invoke(self, i: int) -> None:
        slot = self.free.pop() if self.free else self.next_slot
        self.next_slot = max(self.next_slot, slot + 1)
        b = self.bit[i] = 1 << slot
        k = self.kops[i]
        if not k.required:
            self.optional |= b
        elif k.kind in (READ, CAS):
            self.invoked_obligations[k.arg] += 1
            if k.kind == CAS:
                self.open_cas.setdefault(k.arg, []).append(i)
        if self.kops[i].writes:
            self.writers.append(i)
            return
        self.absorbers.append(i)
        self.configs = {(m | b, s) if self.matches(i, s) else (m, s) for m, s in self.configs}

    def complete(self, i: int) -> bool:
        b = self.bit[i]
        new: set[Config] = set()
        seen: dict[Config, list[int]] = {}
        self.visited = 0
        for m, s in self.configs:
            if m & b:
                new.add((m & ~b, s))
            elif self.remember(seen, m, s):
                self.expand(m, s, b, seen, new)
        k = self.kops[i]
        (self.writers if k.writes else self.absorbers).remove(i)
        if k.required and k.kind == CAS:
            self.open_cas[k.arg].remove(i)
        del self.bit[i]
        self.free.append(b.bit_length() - 1)
        self.before = self.configs
        self.configs = self.prune(new) if self.optional else new
        return bool(new)

    def prune(self, configs: set[Config]) -> set[Config]:
        """Drop dominated configurations: with the same state and the same other ops, having
        applied a superset of optional ops only removes choices (they may stay unapplied)."""
        opt = self.optional
        groups: dict[Config, list[int]] = {}
        for m, s in configs:
            groups.setdefault((m & ~opt, s), []).append(m & opt)
        if len(groups) == len(configs):
            return configs
        kept: set[Config] = set()
        for (rest, s), parts in groups.items():
            minimal: list[int] = []
            for part in sorted(parts, key=int.bit_count):
                if not any(p & part == p for p in minimal):
                    minimal.append(part)
                    kept.add((rest | part, s))
        return kept

    def absorb(self, m: int, s: State) -> int:
        for a in self.absorbers:
            b = self.bit[a]
            if not m & b and self.matches(a, s):
                m |= b
        return m

    def expand(
        self, m: int, s: State, target: int, seen: dict[Config, list[int]], out: set[Config]
    ) -> None:
        """Add to ``out`` every configuration reached by linearizing open writers until
        ``target`` is in. Breadth first, so that configurations with fewer optional ops come
        first; ``seen`` memoizes what was expanded for this target, up to dominance."""
        moves = []
        for w in self.writers:
            k = self.kops[w]
            moves.append((self.bit[w], k.kind == CAS, k.arg, k.produced))
        queue = deque([(m, s)])
        while queue:
            m, s = queue.popleft()
            for bw, is_cas, need, s2 in self.allowed(moves, m, s):
                if m & bw or (is_cas and s != need):
                    continue
                m2 = self.absorb(m | bw, s2)
                if m2 & target:
                    out.add((m2 & ~target, s2))
                elif self.remember(seen, m2, s2):
                    queue.append((m2, s2))
            self.visited += 1
            if self.visited & 1023 == 0:
                self.budget.check(self.visited + len(self.configs))

    def allowed(self, moves: list[_Move], m: int, s: State) -> list[_Move]:
        """The moves worth trying from ``(m, s)``: none while a value written at most once
        still owes an observer, only the owed cas when one is open (see ``final``)."""
        if s not in self.final:
            return moves
        if self.invoked_obligations[s] < self.obligations[s]:
            return []
        owed = [self.bit[c] for c in self.open_cas.get(s, ()) if not m & self.bit[c]]
        return [mv for mv in moves if mv[0] in owed] if owed else moves

    def remember(self, seen: dict[Config, list[int]], m: int, s: State) -> bool:
        """Record ``(m, s)`` unless a recorded configuration dominates it (same state, same
        other ops, a subset of the optional ones); return whether it was recorded."""
        opt = self.optional
        part = m & opt
        parts = seen.setdefault((m & ~opt, s), [])
        if any(p & part == p for p in parts):
            return False
        parts.append(part)
        return True

    def note_clean(self, pos: int) -> None:
        if len(self.configs) <= 64 and all(m == 0 for m, _ in self.configs):
            self.clean_pos = pos
            self.clean_states = {s for _, s in self.configs}

    def failure(self, i: int) -> RawResult:
        target = self.kops[i]
        window = [k for k in self.kops if k.inv <= target.ret and k.ret > self.clean_pos]
        states = ", ".join(sorted(map(str, self.clean_states)))
        start = "the start" if self.clean_pos < 0 else f"event {self.clean_pos}"
        text = (
            f"no order of the {len(window)} operations between {start} (register then one of: "
            f"{states}) and event {target.ret} lets {target.describe()} take effect"
        )
        owed = self.owed_later(target)
        if owed:
            text += (
                "; the register could not move on, because operations invoked later must "
                "still see a value written only once: " + "; ".join(k.describe() for k in owed)
            )
        return RawResult(False, "search", explanation=text, witness=[k.src for k in window + owed])

    def owed_later(self, target: KOp) -> list[KOp]:
        """Up to three later-invoked ops that pinned the register to a value written once."""
        pinned = {s for _, s in self.before if s in self.final}
        later = [
            k
            for k in self.kops
            if k.required and k.kind in (READ, CAS) and k.inv > target.ret and k.arg in pinned
        ]
        return later[:3]


def search(kops: list[KOp], budget: Budget) -> RawResult:
    """The general just-in-time linearization search (any values, mismatch observations)."""
    return _Search(kops, budget).run()


# --------------------------------------------------------------------------- per key


def check_prepared(
    kops: list[KOp],
    *,
    time_limit: float | None = None,
    method: Method = "auto",
    max_configs: int = DEFAULT_MAX_CONFIGS,
) -> RawResult:
    """Check one key's prepared ops; ``unknown`` on budget exhaustion or an internal error."""
    started = time.monotonic()
    deadline = started + time_limit if time_limit is not None else float("inf")
    budget = Budget(deadline, max_configs)
    reduced = [] if any(k.kind == MISMATCH for k in kops) else forced_only(kops)
    fits = bool(reduced) and values_unique(reduced)
    if method == "unique-values" and not fits:
        raise ValueError("the unique-values method needs distinct written values, no mismatch")
    use_unique = method == "unique-values" or (method == "auto" and fits)
    if not kops:
        result = RawResult(True, "empty")
    elif use_unique:
        result = check_unique(reduced)
    else:
        try:
            result = search(kops, budget)
        except BudgetExceeded as exc:
            result = RawResult("unknown", "search", reason=str(exc))
    result.seconds = time.monotonic() - started
    return result


@dataclass(slots=True)
class Anomaly:
    """Why a key is not linearizable: the operations of the smallest failing window."""

    key: str
    explanation: str
    ops: list[Operation]

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (see the module docstring)."""
        indices = [o.invoke.index for o in self.ops] + [
            o.completion.index for o in self.ops if o.completion is not None
        ]
        window = [min(indices), max(indices)] if indices else []
        return {
            "key": self.key,
            "explanation": self.explanation,
            "window": window,
            "ops": [operation_json(o) for o in self.ops],
        }


def operation_json(o: Operation) -> dict[str, Any]:
    """One operation as the report shows it."""
    done = o.completion
    value = done.value if o.invoke.f == "read" and done is not None else o.invoke.value
    return {
        "index": o.invoke.index,
        "completion_index": None if done is None else done.index,
        "process": o.invoke.process,
        "f": o.invoke.f,
        "type": o.outcome,
        "value": list(value) if isinstance(value, tuple) else value,
        "error": None if done is None else done.error,
        "node": None if done is None else done.node,
        "invoke_time": o.invoke.time,
        "complete_time": None if done is None else done.time,
    }


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

    @property
    def anomalies(self) -> list[Anomaly]:
        """The anomaly of every non-linearizable key, by key order."""
        return [r.anomaly for _, r in sorted(self.keys.items()) if r.anomaly is not None]

    @property
    def anomaly(self) -> Anomaly | None:
        """The first anomaly by key order, or ``None``."""
        found = self.anomalies
        return found[0] if found else None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (see the module docstring)."""
        first = self.anomaly
        return {
            "valid": self.valid,
            "ops": sum(r.ops for r in self.keys.values()),
            "seconds": round(self.seconds, 6),
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


def by_key(operations: Iterable[Operation]) -> dict[str, list[Operation]]:
    """Operations grouped by key, each group in invoke order."""
    groups: dict[str, list[Operation]] = {}
    for o in operations:
        groups.setdefault(o.invoke.key, []).append(o)
    return groups


def key_result(key: str, operations: Sequence[Operation], raw: RawResult) -> KeyResult:
    """Attach the key's operations to a :class:`RawResult`."""
    anomaly = None
    if raw.valid is False:
        anomaly = Anomaly(key, raw.explanation, [operations[i] for i in sorted(raw.witness)])
    return KeyResult(key, raw.valid, len(operations), raw.method, raw.seconds, raw.reason, anomaly)


def check_key(
    key: str,
    operations: Sequence[Operation],
    *,
    time_limit: float | None = None,
    method: Method = "auto",
    max_configs: int = DEFAULT_MAX_CONFIGS,
) -> KeyResult:
    """Check one key's operations (all must be on ``key``)."""
    raw = check_prepared(
        prepare(operations), time_limit=time_limit, method=method, max_configs=max_configs
    )
    return key_result(key, operations, raw)


def check_operations(
    operations: Iterable[Operation],
    *,
    time_limit: float | None = None,
    method: Method = "auto",
    max_configs: int = DEFAULT_MAX_CONFIGS,
) -> CheckResult:
    """Check paired operations, key by key, in this process."""
    started = time.monotonic()
    deadline = started + time_limit if time_limit is not None else None
    results: dict[str, KeyResult] = {}
    for key, ops in by_key(operations).items():
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        results[key] = check_key(key, ops, time_limit=left, method=method, max_configs=max_configs)
    verdict = combine(r.valid for r in results.values())
    return CheckResult(verdict, results, time.monotonic() - started)


def check_history(
    events: Iterable[Op],
    *,
    time_limit: float | None = None,
    method: Method = "auto",
    max_configs: int = DEFAULT_MAX_CONFIGS,
) -> CheckResult:
    """Check a validated history (events, as :func:`harness.history.read_history` gives)."""
    return check_operations(
        pair_operations(events), time_limit=time_limit, method=method, max_configs=max_configs
    )
