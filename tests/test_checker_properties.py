"""The checker's search, its cache and its pruning against an exhaustive search, on small random
histories; wrong rules planted in the search are caught by the same comparison. Also: the fast
reader (msgspec) and the Python checks agree on every line, good or bad."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.checker.events import HistoryError, OpRecord, parse_records, read_records
from harness.checker.frontier import frontier
from harness.checker.linearizable import check_records, prepare
from harness.checker.model import Budget
from harness.checker.search import Search

# ----------------------------------------------------------------------- exhaustive search

INF = float("inf")


_Op = tuple[str, Any, int, float, bool]  # (kind, argument, invoke, return, must happen)


def history_ops(records: list[OpRecord]) -> list[_Op]:
    """The operations as the history's rules read them: an ``ok`` op must take effect, a
    ``fail`` one must not (a failed cas with ``"mismatch"`` saw another value), an ``info`` or
    unfinished one may or may not (and a read that did not succeed says nothing)."""
    ops: list[_Op] = []
    for o in records:
        ret: float = o.end if o.end is not None and o.type != "info" else INF
        if o.type == "fail":
            if o.f == "cas" and o.error == "mismatch":
                ops.append(("mismatch", o.value[0], o.index, ret, True))
            continue
        if o.f == "read":
            if o.type == "ok":
                ops.append(("read", o.result, o.index, ret, True))
            continue
        ops.append((o.f, o.value, o.index, ret, o.type == "ok"))
    return ops


def completable(ops: list[_Op], done: int = 0, state: Any = None) -> bool:
    """Whether the ops not in ``done`` (a bit mask) can follow, starting from ``state``, in
    some legal order: a search over every (set of ops linearized, register value), sharing
    nothing with the checker. An op completed before another began precedes it."""
    must = sum(1 << i for i, op in enumerate(ops) if op[4])
    before = [sum(1 << j for j, b in enumerate(ops) if b[3] < a[2]) for a in ops]
    seen: set[tuple[int, Any]] = set()
    todo: list[tuple[int, Any]] = [(done, state)]
    while todo:
        done, state = todo.pop()
        if (done, state) in seen:
            continue
        seen.add((done, state))
        if done & must == must:
            return True
        for i, (kind, arg, _, _, _) in enumerate(ops):
            if done >> i & 1 or before[i] & ~done:
                continue
            if kind == "read":
                fits, after = state == arg, state
            elif kind == "write":
                fits, after = True, arg
            elif kind == "mismatch":
                fits, after = state != arg, state
            else:
                fits, after = state == arg[0], arg[1]
            if fits:
                todo.append((done | 1 << i, after))
    return False


def exhaustive(records: list[OpRecord]) -> bool:
    """Whether the history is linearizable, by :func:`completable` from the start."""
    return completable(history_ops(records))


# ----------------------------------------------------------------------- random histories


def random_history(
    rng: random.Random,
    *,
    n_ops: int | None = None,
    processes: int | None = None,
    values: int | None = None,
    info: float | None = None,
    lie: float | None = None,
) -> list[dict[str, Any]]:
    """A small history on one key: a simulated register in which each op takes effect at one
    instant of its window, or (``info``/unfinished) maybe never; then some reads and cas
    outcomes are falsified, so that about one in six is not linearizable. Each parameter left
    out is drawn at random."""
    n_ops = rng.randint(3, 12) if n_ops is None else n_ops
    processes = rng.randint(2, 5) if processes is None else processes
    values = rng.randint(1, 3) if values is None else values
    info = rng.choice([0.0, 0.1, 0.3, 0.5]) if info is None else info
    lie = rng.choice([0.0, 0.05, 0.2, 0.5]) if lie is None else lie
    late = rng.random() < 0.5  # lie only in the last ops: a long search before it fails
    register: int | None = None
    events: list[dict[str, Any]] = []
    open_: dict[int, dict[str, Any]] = {}
    slots = list(range(processes))
    fresh = processes
    started = 0

    def emit(**fields: Any) -> None:
        events.append({"index": len(events), "time": len(events), "key": "k", **fields})

    def apply(op: dict[str, Any]) -> None:
        nonlocal register
        op["applied"] = True
        f, v = op["f"], op["value"]
        if f == "read":
            op["result"] = register
        elif f == "write":
            register = v
        else:
            op["ok"] = register == v[0]
            if op["ok"]:
                register = v[1]

    while started < n_ops or open_:
        slot = rng.randrange(processes)
        p = slots[slot]
        op = open_.get(p)
        if op is None:
            if started >= n_ops:
                continue
            started += 1
            r = rng.random()
            if r < 0.3:
                expected = register if rng.random() < 0.7 else rng.choice([None, *range(values)])
                f, value = "cas", [expected, rng.randrange(values)]
            elif r < 0.65:
                f, value = "read", None
            else:
                f, value = "write", rng.randrange(values)
            emit(process=p, type="invoke", f=f, value=value)
            open_[p] = {"f": f, "value": value, "applied": False}
        elif not op["applied"] and rng.random() < 0.5:
            apply(op)
        else:
            del open_[p]
            f, value = op["f"], op["value"]
            if not op["applied"] and rng.random() < info:  # never took effect
                if rng.random() < 0.5:
                    emit(process=p, type="info", f=f, value=None if f == "read" else value)
                slots[slot], fresh = fresh, fresh + 1  # an unfinished op: its process ends
                continue
            if not op["applied"]:
                apply(op)
            if rng.random() < info / 2:  # took effect, but the client never learnt it
                emit(process=p, type="info", f=f, value=None if f == "read" else value)
                slots[slot], fresh = fresh, fresh + 1
            elif f == "read":
                result = op["result"]
                if rng.random() < lie and (not late or started >= n_ops - 1):
                    result = rng.choice([None, *range(values)])
                emit(process=p, type="ok", f=f, value=result)
            elif f == "write" or op["ok"] != (
                rng.random() < lie and (not late or started >= n_ops - 1)
            ):
                emit(process=p, type="ok", f=f, value=value)
            else:
                emit(process=p, type="fail", f=f, value=value, error="mismatch")
    return events


def _records(events: list[dict[str, Any]]) -> list[OpRecord]:
    return parse_records([json.dumps(e) for e in events])


def disagreement(seed: int) -> str | None:
    """What disagrees with the exhaustive search on the history of ``seed`` (None: nothing):
    the whole checker, the depth-first search, the breadth-first frontier."""
    records = _records(random_history(random.Random(seed)))
    expected = exhaustive(records)
    found = check_records(records).valid
    if found is not expected:
        return f"check_records says {found}, the exhaustive search {expected}"
    kops = prepare(records)
    if not kops:
        return None
    found = Search(kops, Budget()).run().valid
    if found is not expected:
        return f"the search says {found}, the exhaustive search {expected}"
    found = frontier(kops, Budget()).valid
    if found is not expected:
        return f"the frontier says {found}, the exhaustive search {expected}"
    return None


@settings(derandomize=True, max_examples=1500, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_checker_agrees_with_an_exhaustive_search(seed: int) -> None:
    assert disagreement(seed) is None


def test_the_random_histories_are_both_linearizable_and_not() -> None:
    verdicts = [exhaustive(_records(random_history(random.Random(s)))) for s in range(300)]
    assert 30 <= verdicts.count(False) <= 150


def cache_rule_violation(seed: int) -> str | None:
    """The search's cache, checked where it acts: at the completion of some op of a random
    history, two configurations V (met before, failed) and C (met now), drawn at random with
    the same writers linearized and the same register value. Whenever ``Search.covered`` says
    V covers C, C must have no continuation unless V has one: a continuation of C is one of
    V. Both are judged by :func:`completable`."""
    rng = random.Random(seed)
    ops = history_ops(_records(random_history(rng)))
    targets = [op for op in ops if op[3] < INF]
    if not targets:
        return None
    now = rng.choice(targets)[3]
    closed = sum(1 << i for i, op in enumerate(ops) if op[3] < now)
    open_ = [i for i, op in enumerate(ops) if op[2] < now and op[3] > now]
    writers = [i for i in open_ if ops[i][4] and ops[i][0] in ("write", "cas")]
    absorbers = [i for i in open_ if ops[i][0] in ("read", "mismatch")]
    info = [i for i in open_ if not ops[i][4]]

    def some(ids: list[int]) -> int:
        return sum(1 << i for i in ids if rng.random() < 0.5)

    state = rng.choice([None, 0, 1, 2])
    linearized = closed | some(writers)
    for _ in range(8):
        a_v, a_c, i_v, i_c = some(absorbers), some(absorbers), some(info), some(info)
        if rng.random() < 0.5:  # often a pair in the dominance relation
            a_v, i_v = a_v | a_c, i_v & i_c
        if not Search.covered([(i_v, a_v)], i_c, a_c):
            continue
        if completable(ops, linearized | a_c | i_c, state) and not completable(
            ops, linearized | a_v | i_v, state
        ):
            return (
                f"covered, yet only C has a continuation: now={now}, state={state}, "
                f"V absorbed {a_v:b} info {i_v:b}, C absorbed {a_c:b} info {i_c:b}"
            )
    return None


@settings(derandomize=True, max_examples=1500, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_cache_covers_only_configurations_that_can_do_less(seed: int) -> None:
    assert cache_rule_violation(seed) is None


# ----------------------------------------------------------------------- planted wrong rules

# Each is a plausible mistake in the search's cache key or pruning (see the rules in
# harness/checker/search.py); the comparison above must catch it.
WRONG: dict[str, tuple[str, Callable[..., bool]]] = {
    # the cache forgets which info ops the failed configuration had applied: one that applied
    # more of them (and so had fewer choices left) is taken to cover this one
    "cache key without the info ops": (
        "covered",
        lambda parts, info, absorbed: any(a & absorbed == absorbed for _, a in parts),
    ),
    # the cache forgets which reads the failed configuration had already absorbed
    "cache key without the reads absorbed": (
        "covered",
        lambda parts, info, absorbed: any(i & info == i for i, _ in parts),
    ),
    # dominance the wrong way round: more info ops applied and fewer reads absorbed cover
    "cache dominance reversed": (
        "covered",
        lambda parts, info, absorbed: any(info & i == info and absorbed & a == a for i, a in parts),
    ),
    # the pointless-info-write rule applied to every write: a write that must happen may not
    # be overwritten before anyone sees it (it sometimes must be)
    "pruning forbids hiding any write": ("restricts", lambda k, absorbed: not absorbed),
}


@pytest.mark.parametrize("name", sorted(WRONG))
def test_a_planted_wrong_rule_is_caught(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    attribute, wrong = WRONG[name]
    monkeypatch.setattr(Search, attribute, staticmethod(wrong))
    check = cache_rule_violation if attribute == "covered" else disagreement
    found = next((s for s in range(3000) if check(s) is not None), None)
    assert found is not None, f"{name}: no history tells it apart"


def test_a_relaxation_that_keeps_reads_of_cas_values_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Planted in ``once_written`` (the relaxation tried first on keys whose values repeat): a
    read of a value that only a cas produces is kept, though the cas is left out; the
    comparison with the exhaustive search catches the false violations."""
    from harness.checker import linearizable, unique
    from harness.checker.model import CAS, READ, WRITE, KOp

    def wrong(kops: list[KOp]) -> list[KOp]:
        producers: dict[Any, list[KOp]] = {}
        for k in kops:
            if k.writes:
                producers.setdefault(k.produced, []).append(k)
        out = []
        for k in kops:
            if k.kind == WRITE:
                if len(producers[k.arg]) == 1:
                    out.append(k)
                elif k.required:
                    renamed = unique._Renamed(k.arg)
                    out.append(KOp(k.src, WRITE, renamed, None, k.inv, k.ret, True, k.process))
            elif (
                k.required
                and (k.kind == READ or (k.kind == CAS and not k.writes))
                and len(producers.get(k.arg, ())) <= 1  # the bug: a cas may be that producer
            ):
                out.append(k)
        return unique.forced_only(out)

    monkeypatch.setattr(linearizable, "once_written", wrong)
    assert next((s for s in range(3000) if disagreement(s) is not None), None) is not None


def _long_history(seed: int, plant: str) -> list[dict[str, Any]]:
    """400 ops on values 0..2, 8 processes, info ops (linearizable by construction), then
    ``plant``: ``stale`` appends a write of 100, a write of 101 and a read of 100 after both;
    ``unwritten`` makes a read in the middle return 999."""
    events = random_history(
        random.Random(seed), n_ops=400, processes=8, values=3, info=0.1, lie=0.0
    )
    if plant == "unwritten":
        middle = [e for e in events[len(events) // 2 :] if e["f"] == "read" and e["type"] == "ok"]
        middle[0]["value"] = 999
    elif plant == "stale":
        p = 1 + max(e["process"] for e in events)
        for type_, f, value in [("invoke", "write", 100), ("ok", "write", 100),
                                ("invoke", "write", 101), ("ok", "write", 101),
                                ("invoke", "read", None), ("ok", "read", 100)]:  # fmt: skip
            n = len(events)
            events.append({"index": n, "time": n, "key": "k", "process": p, "type": type_,
                           "f": f, "value": value})  # fmt: skip
    return events


@pytest.mark.parametrize("seed", range(3))
def test_obvious_anomalies_in_a_long_key_with_repeated_values_are_found(
    monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    """Found by the relaxation (``once_written``) first, where the search alone has to exhaust
    the orders of everything before the anomaly: without it, the stale read is not found
    within the same configuration cap."""
    from harness.checker import linearizable

    assert check_records(_records(_long_history(seed, "none"))).valid is True
    unwritten = check_records(_records(_long_history(seed, "unwritten")), max_configs=20_000)
    assert unwritten.valid is False
    assert unwritten.anomaly is not None
    assert unwritten.anomaly.kind == "read of a value never written"
    stale = _records(_long_history(seed, "stale"))
    assert check_records(stale, max_configs=20_000).valid is False
    monkeypatch.setattr(linearizable, "once_written", lambda kops: [])
    assert check_records(stale, max_configs=20_000).valid == "unknown"


# ----------------------------------------------------------------------- the two readers


def _mutations(rng: random.Random, line: str) -> str:
    """A valid event line, perhaps broken in one of the ways a file can be."""
    event = json.loads(line)
    what = rng.randrange(14)
    if what == 0:
        event[rng.choice(list(event))] = rng.choice([None, -1, 1.5, "x", True, [1], {}, 2**70])
    elif what == 1:
        event.pop(rng.choice(list(event)))
    elif what == 2:
        event[rng.choice(["extra", "node", "error", "client", "group"])] = rng.choice(
            ["n1", None, 3, ["a"]]
        )
    elif what == 3:
        event["value"] = rng.choice([None, 3, [1, 2], [None, 2], [1], [1, None], "3", 2**70])
    elif what == 4:
        return line[: rng.randrange(1, len(line))]
    elif what == 5:
        return json.dumps([event])
    elif what == 6:
        return line + " x"
    elif what == 7:
        event["time"] = max(0, event["time"] - rng.randrange(3))
    elif what == 8:
        event["process"] = rng.randrange(4)
    elif what == 9:
        event["type"] = rng.choice(["invoke", "ok", "fail", "info", "OK"])
    return json.dumps(event)


def _outcome(read: Callable[[], list[OpRecord]]) -> tuple[str, Any]:
    try:
        return "records", read()
    except HistoryError as exc:
        return "error", str(exc)


def reader_disagreement(seed: int, directory: Path) -> str | None:
    """A history of ``seed`` with one line perhaps broken, read by both readers: what differs
    (None: the same records, or the same one-line error)."""
    rng = random.Random(seed)
    events = random_history(rng)
    for e in events:
        if rng.random() < 0.3:
            e[rng.choice(["node", "client", "group"])] = rng.choice(["n1", "c2", "g"])
    lines = [json.dumps(e) for e in events]
    k = rng.randrange(len(lines))
    lines[k] = _mutations(rng, lines[k])
    if rng.random() < 0.2:
        lines.insert(rng.randrange(len(lines) + 1), rng.choice(["", "  ", "\t"]))
    path = directory / f"h{seed}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    slow = _outcome(lambda: parse_records(path.read_text().splitlines(keepends=True), str(path)))
    fast = _outcome(lambda: read_records(path, fast=True))
    return None if fast == slow else f"read_records: {fast}; the Python checks: {slow}"


@settings(derandomize=True, max_examples=500, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_fast_reader_and_python_checks_agree(tmp_path_factory: Any, seed: int) -> None:
    assert reader_disagreement(seed, tmp_path_factory.mktemp("h")) is None


def test_big_files_take_the_fast_reader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.checker import events as module

    path = tmp_path / "h.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in random_history(random.Random(1))))
    used: list[bool] = []
    original = module.EventReader.feed_line

    def spy(self: Any, raw: bytes, line: int, fast: Any = None) -> None:
        used.append(fast is not None)
        original(self, raw, line, fast)

    monkeypatch.setattr(module.EventReader, "feed_line", spy)
    small = read_records(path)
    assert used
    assert not any(used)
    used.clear()
    monkeypatch.setattr(module, "FAST_MIN_BYTES", 10)
    assert read_records(path) == small
    assert used
    assert all(used)


def test_a_fast_reader_that_trusts_msgspec_is_caught(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Planted: the fast path takes msgspec's field types as enough, without the shape of
    ``value`` for ``f`` and ``type`` (a write of a pair, a read invoke with a value)."""
    from harness.checker import events as module

    original = module.EventReader.feed_line

    def trusting(self: Any, raw: bytes, line: int, fast: Any = None) -> None:
        try:
            ev = fast[0](raw)
        except (msgspec.ValidationError, msgspec.DecodeError):
            original(self, raw, line, fast)
            return
        self._accept(ev, line)

    monkeypatch.setattr(module.EventReader, "feed_line", trusting)
    found = next((s for s in range(2000) if reader_disagreement(s, tmp_path)), None)
    assert found is not None
