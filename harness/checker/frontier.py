"""The breadth-first linearizability search for one key: every configuration at once.

Theory of operation
-------------------
Events are scanned in order keeping the *set* of configurations ``(mask, state)`` reachable so
far (``mask``: the open ops already linearized; ``state``: the register). Reads and mismatch
observations are absorbed greedily; at the completion of an op not yet linearized every way to
linearize it (open writers first, in any order) is expanded at once, with memoization shared by
all configurations and dominance pruning (a configuration that applied a superset of the info
operations of another, with the same state and the same other ops, only has fewer choices). The
set collapses to plain states at quiescent points. This is the exact complement of the
depth-first search (:mod:`harness.checker.search`): on a history that is *not* linearizable the
depth-first search must exhaust every configuration one path at a time, while the frontier
meets each configuration once and stops at the first completion no configuration can place.
The search runs first with a work cap; this takes over when the cap is hit.
"""

from __future__ import annotations

from collections import Counter, deque

from harness.checker.model import CAS, INF, READ, Budget, KOp, RawResult, State, show

Config = tuple[int, State]
_Move = tuple[int, bool, State, State]  # (bit, is cas, expected, value after)


class Frontier:
    """Breadth-first JIT linearization of one key's ops (see the module docstring)."""

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
        return self.kops[i].matches(state)

    def invoke(self, i: int) -> None:
        slot = self.free.pop() if self.free else self.next_slot
        self.next_slot = max(self.next_slot, slot + 1)
        b = self.bit[i] = 1 << slot
        k = self.kops[i]
        if not k.required:
            self.optional |= b
        elif k.kind in (READ, CAS):
            self.invoked_obligations[k.arg] += 1
            if k.kind == CAS and k.writes:
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
        if k.required and k.kind == CAS and k.writes:
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
        states = {s for _, s in self.before}
        result = RawResult(False, "search", culprit=target.src, witness=[target.src])
        result.prefix_end = target.ret
        result.states = sorted(states, key=show)
        owed = self.owed_later(target)
        if owed:
            result.pinned_by = owed[0].src
        return result

    def owed_later(self, target: KOp) -> list[KOp]:
        """Up to three later-invoked ops that pinned the register to a value written once."""
        pinned = {s for _, s in self.before if s in self.final}
        later = [
            k
            for k in self.kops
            if k.required and k.kind in (READ, CAS) and k.inv > target.ret and k.arg in pinned
        ]
        return later[:3]


def frontier(kops: list[KOp], budget: Budget) -> RawResult:
    """Check one key breadth first (exact; see the module docstring)."""
    return Frontier(kops, budget).run()
