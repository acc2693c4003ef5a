"""The general linearizability search for one key: depth-first, just in time, with a cache.

Theory of operation
-------------------
The key's events (invokes and completions of its :class:`~harness.checker.model.KOp` s) are
scanned in file order, keeping one *configuration*: ``lin``, the set of open operations (invoked,
not yet completed) already linearized, as a bit mask, and ``state``, the register after the
linearized prefix. Operations are linearized *just in time* (Lowe's JIT linearization):

* a read or a failed cas (``mismatch``) takes no effect, so it is linearized the moment the
  state allows it (at its invoke, or right after a write makes it possible): moving a no-effect
  operation earlier, to an instant inside its window where its result holds, never breaks a
  valid order;
* a write or cas is linearized only when it must be: at its completion, or earlier as a step
  towards placing another operation that completes. The ways to do that (which other open
  writers go first, in which order) are the *children* of that completion, generated lazily in
  breadth-first order, fewest operations first.

The search is depth first (as Wing & Gong, Lowe and Porcupine): it follows the first child and
backtracks only when a later completion cannot be placed. A cache of the configurations
``(position, lin, state)`` already explored at each completion (Porcupine's cache) keeps every
configuration from being explored twice, and more: a configuration is *covered* (it fails too)
by one explored before with the same writers linearized and the same state that had applied at
most its info operations and absorbed at least its reads (applying an info op only removes
choices; an absorbed read is one obligation fewer). This bounds the work on a history that is
not linearizable; on one that is, the first child is almost always right and the search runs
in about linear time. The children of one completion are searched with the same dominance.

Pruning, each an exchange argument that keeps at least one valid order if any exists:

* *values written once*: once the register leaves a value that only one operation writes (or
  the initial ``null``), it never returns; so it may not leave while an operation that must see
  that value is still to be invoked, and while a successful cas expecting it is open, only
  such a cas may move it on;
* *identical operations*: of two open, not yet linearized operations with the same effect, the
  one that must complete first is linearized first;
* *info operations* (``ret = INF``) never complete: a write that may or may not have happened is
  linearized only if that helps (otherwise it is left to "after everything"); a cas that may or
  may not have happened applies only where it matches. Info writes whose value nobody can
  observe were turned into writes of one shared unobservable value by ``prepare``, so they are
  interchangeable and only the first unused one of each effect is ever tried;
* *pointless info writes*: an info write applied where nothing observes it (it absorbs no read
  and the next move is a write, which overwrites it unseen) does nothing but use itself up:
  leaving it unapplied is the same order with one info op fewer, so after an info op that
  absorbed nothing only a cas expecting its value may follow. Long histories pile up hundreds
  of open info writes; without this rule the search applied nearly all of them, each usage a
  new configuration the cache could not match.

A budget (one deadline for the whole file, a cap on cached configurations, a stop flag set when
another key fails) turns an explosion into ``unknown``, never a hang.

On failure the search reports the furthest completion it could not place (the *culprit*: the
first operation that cannot be placed, as in Porcupine), the states the register could be in
just before it, and the linearization that got that far (the longest linearizable prefix).
"""

from __future__ import annotations

import bisect
import heapq
from collections import deque
from collections.abc import Iterator

from harness.checker.model import CAS, INF, READ, Budget, KOp, RawResult, State

_Path = tuple[int, "_Path"] | None  # a linearization, newest first (a cons list)
_Child = tuple[int, State, _Path]


class Overrun(Exception):
    """The search did more work than its cap allowed (the caller switches method)."""


class Search:
    """Depth-first JIT linearization of one key's ops (see the module docstring)."""

    def __init__(
        self, kops: list[KOp], budget: Budget, cap: int | None = None, pin: bool = True
    ) -> None:
        self.kops = kops
        self.pin = pin  # apply the values-written-once rule (off: to explain a failure)
        self.budget = budget
        self.cap = cap  # at most this much work (configurations), else ``Overrun``
        events = [(k.inv, i) for i, k in enumerate(kops)]
        events += [(k.ret, i) for i, k in enumerate(kops) if k.ret < INF]
        events.sort()
        self.ev_op = [i for _, i in events]
        self.ev_ret = [pos == kops[i].ret for pos, i in events]
        self.ev_pos = [pos for pos, _ in events]
        self.bit = self._slots()
        self.sig = [(k.kind, k.arg, k.new) for k in kops]
        self.opt_mask = 0  # the slots of info ops (never freed)
        for i, k in enumerate(kops):
            if not k.required:
                self.opt_mask |= self.bit[i]
        producers: dict[State, int] = {}
        for k in kops:
            if k.writes:
                producers[k.produced] = producers.get(k.produced, 0) + 1
        self.final = {v for v, n in producers.items() if n <= 1} | {None}
        self.inv_at = [0] * len(kops)  # the position of each op's invoke in the event list
        for n, (i, is_ret) in enumerate(zip(self.ev_op, self.ev_ret, strict=True)):
            if not is_ret:
                self.inv_at[i] = n
        self.ret_at = [INF] * len(kops)  # ... and of its completion (INF: never)
        for n, (i, is_ret) in enumerate(zip(self.ev_op, self.ev_ret, strict=True)):
            if is_ret:
                self.ret_at[i] = n
        # Per value: where its writers are invoked, and its required observers by invoke
        # with the earliest completion among those invoked from there on (a suffix minimum).
        self.producer_inv: dict[State, list[int]] = {}
        for i, k in enumerate(kops):
            if k.writes:
                self.producer_inv.setdefault(k.produced, []).append(self.inv_at[i])
        for lst in self.producer_inv.values():
            lst.sort()
        observers: dict[State, list[tuple[int, int]]] = {}
        for i, k in enumerate(kops):
            if k.required and (k.kind == READ or k.kind == CAS):
                observers.setdefault(k.arg, []).append((self.inv_at[i], self.ret_at[i]))
        self.observer_inv: dict[State, list[int]] = {}
        self.observer_min_ret: dict[State, list[int]] = {}
        for v, obs in observers.items():
            obs.sort()
            mins = [0] * len(obs)
            low = INF
            for n in range(len(obs) - 1, -1, -1):
                low = min(low, obs[n][1])
                mins[n] = low
            self.observer_inv[v] = [a for a, _ in obs]
            self.observer_min_ret[v] = mins
        # info writers by effect, in invoke order; the ones linearized are always a prefix
        # of their group (only the first unused one is ever tried), counted by a mask
        self.optional: dict[tuple[int, State, State], list[int]] = {}
        self.optional_mask: dict[tuple[int, State, State], int] = {}
        self.built = -1  # the furthest event whose invoke was added to ``optional``
        self.work = 0
        # the furthest completion that could not be placed
        self.best_pos = -1
        self.best_target = -1
        self.best_states: set[State] = set()
        self.best_path: _Path = None

    def _slots(self) -> list[int]:
        """A bit per op. A required op takes the lowest slot free at its invoke (freed at its
        completion); an info op, which never completes, a slot of its own above all those."""
        kops = self.kops
        bit = [0] * len(kops)
        free: list[int] = []
        top = 0
        for i, is_ret in zip(self.ev_op, self.ev_ret, strict=True):
            if not kops[i].required:
                continue
            if is_ret:
                heapq.heappush(free, bit[i].bit_length() - 1)
                continue
            if free:
                slot = heapq.heappop(free)
            else:
                slot, top = top, top + 1
            bit[i] = 1 << slot
        for i, is_ret in zip(self.ev_op, self.ev_ret, strict=True):
            if not kops[i].required and not is_ret:
                bit[i] = 1 << top
                top += 1
        return bit

    # ------------------------------------------------------------------------------ search

    def run(self) -> RawResult:
        kops, bit, ev_op, ev_ret = self.kops, self.bit, self.ev_op, self.ev_ret
        n_events = len(ev_op)
        budget = self.budget
        pos, lin, state = 0, 0, None
        path: _Path = None
        writers: list[int] = []  # open required writers
        absorbers: list[int] = []  # open reads and mismatches
        stack: list[tuple[int, Iterator[_Child], tuple[int, ...], tuple[int, ...]]] = []
        visited: dict[tuple[int, int, State], list[tuple[int, int]]] = {}
        opt = self.opt_mask
        stored = 0
        steps = 0
        while True:
            while pos < n_events:
                steps += 1
                if steps & 1023 == 0:
                    budget.check(stored + self.work)
                    if self.cap is not None and stored + self.work > self.cap:
                        raise Overrun
                i = ev_op[pos]
                k = kops[i]
                if not ev_ret[pos]:
                    if not k.required:
                        if pos > self.built:  # info writers never complete: kept by effect
                            self.optional.setdefault(self.sig[i], []).append(i)
                            sig = self.sig[i]
                            self.optional_mask[sig] = self.optional_mask.get(sig, 0) | bit[i]
                            self.built = pos
                    elif k.writes:
                        writers.append(i)
                    else:
                        absorbers.append(i)
                        if k.matches(state):
                            lin |= bit[i]
                            path = (i, path)
                    pos += 1
                    continue
                b = bit[i]
                if k.writes:
                    writers.remove(i)
                else:
                    absorbers.remove(i)
                if lin & b:
                    lin ^= b
                    pos += 1
                    continue
                # explored before with the same writers linearized, at most these info ops
                # applied and at least these reads absorbed: it failed then (it was better)
                part = lin & opt
                seen = 0
                for r in absorbers:
                    seen |= bit[r]
                seen &= lin
                parts = visited.setdefault((pos, lin ^ part ^ seen, state), [])
                if self.covered(parts, part, seen):
                    break
                parts.append((part, seen))
                stored += 1
                children = self.children(i, pos, lin, state, path, writers, absorbers)
                first = next(children, None)
                if first is None:
                    self.note_failure(pos, i, state, path)
                    break
                stack.append((pos, children, tuple(writers), tuple(absorbers)))
                lin, state, path = first
                pos += 1
            else:
                return RawResult(True, "search")
            while stack:
                at, children, w, a = stack[-1]
                nxt = next(children, None)
                if nxt is None:
                    stack.pop()
                    continue
                pos, (lin, state, path) = at + 1, nxt
                writers, absorbers = list(w), list(a)
                break
            else:
                return self.failure()

    def note_failure(self, pos: int, target: int, state: State, path: _Path) -> None:
        if pos > self.best_pos:
            self.best_pos, self.best_target, self.best_path = pos, target, path
            self.best_states = set()
        if pos == self.best_pos:
            self.best_states.add(state)

    def failure(self) -> RawResult:
        prefix: list[int] = []
        node = self.best_path
        while node is not None:
            prefix.append(self.kops[node[0]].src)
            node = node[1]
        prefix.reverse()
        culprit = self.kops[self.best_target]
        return RawResult(
            False,
            "search",
            culprit=culprit.src,
            prefix=prefix,
            prefix_end=self.ev_pos[self.best_pos],
            witness=[culprit.src],
        )

    # ---------------------------------------------------------------------------- children

    def children(
        self,
        target: int,
        pos: int,
        lin: int,
        state: State,
        path: _Path,
        writers: list[int],
        absorbers: list[int],
    ) -> Iterator[_Child]:
        """Every configuration in which ``target`` is linearized by its completion at ``pos``,
        fewest extra operations first (lazily: the search usually needs only the first)."""
        kops, bit = self.kops, self.bit
        kt = kops[target]
        bt = bit[target]
        movers = [*writers, target] if kt.writes else list(writers)
        soakers = list(absorbers) if kt.writes else [*absorbers, target]
        needs = (kt.kind == READ or kt.kind == CAS) and state != kt.arg
        if needs and not self.reachable(kt.arg, movers, lin, pos):
            return  # nothing open could produce the value it needs
        fast = False
        if kt.writes and (kt.kind != CAS or kt.arg == state):
            # The first child, cheaply: the completing writer alone. It completes first, so no
            # identical op goes before it; only the values-written-once rule may forbid it.
            owed = self.pinned(movers, lin, state, pos) if self.pin else None
            if owed is None or target in owed:
                fast = True
                s2 = kt.produced
                m2 = lin | bt
                p2: _Path = (target, path)
                for a in absorbers:
                    ba = bit[a]
                    if not m2 & ba and kops[a].matches(s2):
                        m2 |= ba
                        p2 = (a, p2)
                yield m2 ^ bt, s2, p2
        opt = self.opt_mask
        amask = 0  # the open no-effect ops
        for a in soakers:
            amask |= bit[a]
        # Configurations met, by (writers linearized, state): a configuration is skipped when
        # one met before absorbed a superset of the reads with a subset of the info ops (and
        # is not restricted where this one is not); it can do everything this one can.
        seen: dict[tuple[int, State], list[tuple[int, int, bool]]] = {
            (lin & ~(amask | opt), state): [(lin & amask, lin & opt, False)]
        }
        queue: deque[tuple[int, State, _Path, bool]] = deque([(lin, state, path, False)])
        while queue:
            m, s, p, restricted = queue.popleft()
            for w in self.candidates(movers, m, s, pos):
                kw = kops[w]
                if restricted and kw.kind != CAS:
                    continue  # it would hide the info write just applied
                if fast and w == target and m == lin:
                    continue  # yielded above
                s2 = kw.new if kw.kind == CAS else kw.arg
                m1 = m2 = m | bit[w]
                p2 = (w, p)
                for a in soakers:
                    ba = bit[a]
                    if not m2 & ba and kops[a].matches(s2):
                        m2 |= ba
                        p2 = (a, p2)
                if m2 & bt:
                    yield m2 ^ bt, s2, p2
                    continue
                hides = self.restricts(kw, m2 != m1)
                a2, i2 = m2 & amask, m2 & opt
                group = seen.setdefault((m2 ^ a2 ^ i2, s2), [])
                if self.met(group, a2, i2, hides):
                    continue
                group.append((a2, i2, hides))
                queue.append((m2, s2, p2, hides))
                self.work += 1
                if self.work & 1023 == 0:
                    self.budget.check(self.work)

    # The three rules below are the cache key's and the pruning's; each is checked against an
    # exhaustive search by tests/test_checker_properties.py, which also plants a wrong one.

    @staticmethod
    def covered(parts: list[tuple[int, int]], info: int, absorbed: int) -> bool:
        """Whether a configuration met before at this completion, with the same writers
        linearized and the same state, applied a subset of these ``info`` ops and absorbed a
        superset of these reads: it could do all this one can, and it failed."""
        return any(i & info == i and a & absorbed == absorbed for i, a in parts)

    @staticmethod
    def met(group: list[tuple[int, int, bool]], absorbed: int, info: int, restricted: bool) -> bool:
        """Whether a configuration of this children search (same writers linearized, same
        state) absorbed a superset of the reads with a subset of the info ops and is restricted
        only if this one is: everything this one leads to, it leads to as well."""
        return any(
            a & absorbed == absorbed and i & info == i and (restricted or not r)
            for a, i, r in group
        )

    @staticmethod
    def restricts(k: KOp, absorbed: bool) -> bool:
        """Whether only a cas may follow ``k`` just applied: an info write nobody observes is
        pointless (leaving it unapplied does the same with one info op fewer), so unless it
        absorbed a read, the next move must be a cas that expects its value."""
        return not absorbed and not k.required

    def reachable(self, value: State, movers: list[int], lin: int, pos: int) -> bool:
        """Whether some open writer not yet linearized could produce ``value``."""
        kops, bit = self.kops, self.bit
        for w in movers:
            if not lin & bit[w] and kops[w].produced == value:
                return True
        for key, group in self.optional.items():
            if (key[2] if key[0] == CAS else key[1]) == value:
                w = self.first_unused(key, group, lin, pos)
                if w >= 0:
                    return True
        return False

    def first_unused(
        self, key: tuple[int, State, State], group: list[int], m: int, pos: int
    ) -> int:
        """The first info writer of ``group`` not linearized in ``m`` and invoked by ``pos``
        (-1: none)."""
        used = (m & self.optional_mask[key]).bit_count()
        if used < len(group) and self.inv_at[group[used]] <= pos:
            return group[used]
        return -1

    def pinned(self, movers: list[int], m: int, s: State, pos: int) -> list[int] | None:
        """The moves allowed when leaving ``s`` now would be fatal, else ``None``.

        If no open writer can produce ``s`` again and the next writer of ``s`` is invoked
        only after some op that must still see ``s`` has to complete, then ``s`` may not be
        left (no move at all) if that op is yet to be invoked, and only by such an open cas
        if it is open. For a value written once this is the classic rule (it never returns).
        """
        kops, bit = self.kops, self.bit
        for w in movers:
            if not m & bit[w] and kops[w].produced == s:
                return None  # s can come back
        for key, group in self.optional.items():
            if (key[2] if key[0] == CAS else key[1]) == s and self.first_unused(
                key, group, m, pos
            ) >= 0:
                return None
        prods = self.producer_inv.get(s)
        nxt = INF
        if prods:
            k = bisect.bisect_right(prods, pos)
            if k < len(prods):
                nxt = prods[k]
        obs = self.observer_inv.get(s)
        if obs:
            k = bisect.bisect_right(obs, pos)
            if k < len(obs) and self.observer_min_ret[s][k] < nxt:
                return []  # an op invoked later must see s, which cannot come back in time
        owed = [
            c
            for c in movers
            if kops[c].kind == CAS and kops[c].arg == s and not m & bit[c] and self.ret_at[c] < nxt
        ]
        return owed or None

    def candidates(self, movers: list[int], m: int, s: State, pos: int) -> list[int]:
        """The writers worth linearizing next from ``(m, s)`` (see the pruning rules)."""
        kops, bit, sig = self.kops, self.bit, self.sig
        if self.pin:
            owed = self.pinned(movers, m, s, pos)
            if owed is not None:
                return owed
        best: dict[tuple[int, State, State], int] = {}
        for w in movers:
            if m & bit[w]:
                continue
            kw = kops[w]
            if kw.kind == CAS and kw.arg != s:
                continue
            other = best.get(sig[w])
            if other is None or kops[other].ret > kw.ret:
                best[sig[w]] = w
        for key, group in self.optional.items():
            if key in best or (key[0] == CAS and key[1] != s):
                continue
            w = self.first_unused(key, group, m, pos)
            if w >= 0:
                best[key] = w
        return list(best.values())


def search(kops: list[KOp], budget: Budget) -> RawResult:
    """The general depth-first JIT linearization search (any values, mismatch observations)."""
    return Search(kops, budget).run()
