"""The linearizability checker against hand-made classics, simulated histories and a brute force."""

from __future__ import annotations

import itertools
import json
import random
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.checker.linearizable import (
    check_history,
    check_operations,
    prepare,
    values_unique,
)
from harness.history import Op, Operation, pair_operations

INF = float("inf")

# --------------------------------------------------------------------------- building histories


class H:
    """Write a history event by event: ``h.inv(p, "write", 3)`` then ``h.ok(p)``."""

    def __init__(self) -> None:
        self.events: list[Op] = []
        self.pending: dict[int, Op] = {}

    def _add(self, **fields: Any) -> None:
        n = len(self.events)
        self.events.append(Op.model_validate({"index": n, "time": n * 10, **fields}))

    def inv(self, p: int, f: str, value: Any = None, key: str = "x") -> H:
        self._add(process=p, type="invoke", f=f, key=key, value=value)
        self.pending[p] = self.events[-1]
        return self

    def done(self, p: int, type_: str, value: Any = None, error: str | None = None) -> H:
        op = self.pending.pop(p)
        if op.f != "read":
            value = op.value
        self._add(process=p, type=type_, f=op.f, key=op.key, value=value, error=error)
        return self

    def ok(self, p: int, value: Any = None) -> H:
        return self.done(p, "ok", value)

    def info(self, p: int) -> H:
        return self.done(p, "info")

    def fail(self, p: int, error: str | None = None) -> H:
        return self.done(p, "fail", error=error)

    def valid(self) -> bool | str:
        return check_history(self.events).valid


# --------------------------------------------------------------------------- brute force


@dataclass(frozen=True)
class _B:
    f: str
    value: Any  # read: result; write: value; cas: (expected, new)
    inv: int
    ret: float
    required: bool
    mismatch: bool


def _brute_ops(operations: list[Operation]) -> list[_B]:
    out = []
    for o in operations:
        done, outcome = o.completion, o.outcome
        ret: float = done.index if done is not None and outcome != "info" else INF
        if outcome == "fail":
            if o.invoke.f == "cas" and done is not None and done.error == "mismatch":
                out.append(_B("cas", o.invoke.value, o.invoke.index, ret, True, True))
            continue
        value = done.value if o.invoke.f == "read" and done is not None else o.invoke.value
        if o.invoke.f == "read" and outcome != "ok":
            value = "any"
        out.append(_B(o.invoke.f, value, o.invoke.index, ret, outcome == "ok", False))
    return out


def _apply(op: _B, state: Any) -> tuple[bool, Any]:
    if op.f == "read":
        return op.value == "any" or op.value == state, state
    if op.f == "write":
        return True, op.value
    expected, new = op.value
    if op.mismatch:
        return state != expected, state
    return state == expected, (new if state == expected else state)


def brute_force(operations: list[Operation]) -> bool:
    """Try every subset of optional ops in every real-time-respecting order."""
    ops = _brute_ops(operations)
    keys = {o.invoke.key for o in operations}
    assert len(keys) <= 1
    required = [o for o in ops if o.required]
    optional = [o for o in ops if not o.required]
    for r in range(len(optional) + 1):
        for chosen in itertools.combinations(optional, r):
            for order in itertools.permutations(required + list(chosen)):
                if _order_ok(order):
                    return True
    return False


def _order_ok(order: tuple[_B, ...]) -> bool:
    for i, a in enumerate(order):
        if any(b.ret < a.inv for b in order[i + 1 :]):
            return False
    state: Any = None
    for op in order:
        ok, state = _apply(op, state)
        if not ok:
            return False
    return True


# --------------------------------------------------------------------------- simulation


def simulate(
    rng: random.Random,
    *,
    n_ops: int,
    processes: int,
    keys: list[str],
    values: int | None = None,
    info_rate: float = 0.0,
    lost_rate: float = 0.5,
) -> list[Op]:
    """A linearizable history by construction: each op takes effect at one random instant
    between its invoke and its completion. ``values=None`` writes unique values; otherwise
    values come from ``0..values-1``. An ``info`` op took effect with probability 1-lost_rate."""
    reg: dict[str, int | None] = dict.fromkeys(keys)
    events: list[Op] = []
    active = list(range(processes))
    next_proc = processes
    outstanding: dict[int, dict[str, Any]] = {}
    counter = itertools.count(1)
    invoked = 0

    def emit(**fields: Any) -> None:
        events.append(
            Op.model_validate({"index": len(events), "time": len(events) * 100, **fields})
        )

    while invoked < n_ops or outstanding:
        slot = rng.randrange(len(active))
        p = active[slot]
        st_ = outstanding.get(p)
        if st_ is None:
            if invoked >= n_ops:
                continue
            invoked += 1
            key = rng.choice(keys)
            f = rng.choice(["read", "write", "cas"])
            new = next(counter) if values is None else rng.randrange(values)
            if f == "read":
                value: Any = None
            elif f == "write":
                value = new
            else:
                exp = reg[key] if rng.random() < 0.6 else rng.choice([None, *range(values or 5)])
                value = [exp, new]
            emit(process=p, type="invoke", f=f, key=key, value=value)
            outstanding[p] = {"f": f, "key": key, "value": value, "applied": False}
        elif not st_["applied"] and rng.random() < 0.5:
            _sim_apply(st_, reg)
        else:
            if not st_["applied"] and rng.random() < info_rate and rng.random() < lost_rate:
                st_["result"], st_["outcome"] = None, "lost"
            elif not st_["applied"]:
                _sim_apply(st_, reg)
            _sim_complete(p, st_, emit, rng, info_rate)
            del outstanding[p]
            if events[-1].type == "info":
                active[slot] = next_proc
                next_proc += 1
    return events


def _sim_apply(st_: dict[str, Any], reg: dict[str, int | None]) -> None:
    key, f, value = st_["key"], st_["f"], st_["value"]
    st_["applied"] = True
    if f == "read":
        st_["result"] = reg[key]
    elif f == "write":
        reg[key] = value
    elif reg[key] == value[0]:
        reg[key] = value[1]
        st_["outcome"] = "ok"
    else:
        st_["outcome"] = "mismatch"


def _sim_complete(
    p: int, st_: dict[str, Any], emit: Any, rng: random.Random, info_rate: float
) -> None:
    f, key, value = st_["f"], st_["key"], st_["value"]
    outcome = st_.get("outcome", "ok")
    if outcome == "lost" or rng.random() < info_rate:
        emit(process=p, type="info", f=f, key=key, value=value if f != "read" else None)
    elif outcome == "mismatch":
        emit(process=p, type="fail", f=f, key=key, value=value, error="mismatch")
    else:
        result = st_.get("result") if f == "read" else value
        emit(process=p, type="ok", f=f, key=key, value=result)


def plant_stale_read(events: list[Op], key: str) -> list[Op]:
    """Append a write of a fresh value and then a read that returns something else.

    The read starts after the write completed, and returns a value no info op wrote, so no
    order can explain it."""
    out = list(events)
    busy = {e.process for e in events}
    p, q = max(busy) + 1, max(busy) + 2
    info_values = {e.value for e in events if e.type == "invoke" and e.f == "write"}
    stale = 10**9 if 10**9 not in info_values else 10**9 + 1

    def add(**fields: Any) -> None:
        out.append(
            Op.model_validate({"index": len(out), "time": len(out) * 100, "key": key, **fields})
        )

    add(process=p, type="invoke", f="write", value=stale)
    add(process=p, type="ok", f="write", value=stale)
    add(process=p, type="invoke", f="write", value=stale + 7)
    add(process=p, type="ok", f="write", value=stale + 7)
    add(process=q, type="invoke", f="read", value=None)
    add(process=q, type="ok", f="read", value=stale)
    return out


# --------------------------------------------------------------------------- classic cases


def test_empty_history_is_unknown_not_linearizable() -> None:
    result = check_history([])
    assert result.valid == "unknown"
    assert result.reason == "the history has no operations"
    assert result.to_json()["anomaly"] is None


def test_sequential_write_then_read() -> None:
    assert H().inv(0, "write", 1).ok(0).inv(1, "read").ok(1, 1).valid() is True


def test_stale_read_is_found_and_explained() -> None:
    h = H().inv(0, "write", 1).ok(0).inv(0, "write", 2).ok(0).inv(1, "read").ok(1, 1)
    result = check_history(h.events)
    assert result.valid is False
    anomaly = result.to_json()["anomaly"]
    assert anomaly["key"] == "x"
    assert {o["index"] for o in anomaly["ops"]} == {0, 2, 4}  # both writes and the stale read
    assert anomaly["kind"] == "lost write"  # nobody ever read 2
    assert anomaly["culprit"]["index"] == 4  # the first op that cannot be placed ...
    assert anomaly["ops"][0] == anomaly["culprit"]  # ... is listed first
    assert "p1's read (events 4-5) returned 1, written by p0's write 1" in anomaly["explanation"]
    assert "p0's write 2 began after that write completed" in anomaly["explanation"]
    assert anomaly["prefix"]["ops"] == 2
    assert [o["after"] for o in anomaly["prefix"]["last"]] == [1, 2]


def test_stale_read_found_by_search_too() -> None:
    h = H().inv(0, "write", 1).ok(0).inv(0, "write", 2).ok(0).inv(1, "read").ok(1, 1)
    result = check_operations(pair_operations(h.events), method="search")
    assert result.valid is False
    assert result.keys["x"].method == "search"


def test_read_of_never_written_key_is_null() -> None:
    assert H().inv(0, "read").ok(0, None).valid() is True
    assert H().inv(0, "read").ok(0, 5).valid() is False


def test_read_of_null_after_write_completed_is_stale() -> None:
    assert H().inv(0, "write", 1).ok(0).inv(1, "read").ok(1, None).valid() is False


def test_concurrent_writes_either_order() -> None:
    h = H().inv(0, "write", 1).inv(1, "write", 2).ok(0).ok(1)
    for seen in (1, 2):
        hh = H()
        hh.events = list(h.events)
        hh.inv(2, "read").ok(2, seen)
        assert hh.valid() is True
    h.inv(2, "read").ok(2, 1).inv(3, "read").ok(3, 2)  # flips back: impossible
    assert h.valid() is False


def test_lost_write() -> None:
    h = H().inv(0, "write", 1).ok(0).inv(1, "write", 2).ok(1).inv(2, "read").ok(2, 1)
    assert h.valid() is False


def test_info_write_may_apply_or_not() -> None:
    base = H().inv(0, "write", 1).ok(0).inv(1, "write", 2).info(1)
    for seen in (1, 2):
        h = H()
        h.events = list(base.events)
        h.inv(2, "read").ok(2, seen)
        assert h.valid() is True
    late = H().inv(0, "write", 1).ok(0).inv(1, "write", 2).info(1).inv(2, "read").ok(2, 2)
    late.inv(2, "read").ok(2, 1)  # once applied, 2 cannot be undone
    assert late.valid() is False


def test_unfinished_invoke_counts_as_info() -> None:
    h = H().inv(0, "write", 1).inv(1, "read").ok(1, 1)
    assert h.valid() is True
    h2 = H().inv(1, "read").ok(1, 1).inv(0, "write", 1)  # read before the write began
    assert h2.valid() is False


def test_info_write_can_take_effect_long_after() -> None:
    h = H().inv(0, "write", 1).info(0).inv(1, "write", 2).ok(1).inv(2, "read").ok(2, 1)
    assert h.valid() is True


def test_cas_chain() -> None:
    h = H().inv(0, "write", 1).ok(0).inv(1, "cas", [1, 2]).ok(1).inv(2, "cas", [2, 3]).ok(2)
    h.inv(3, "read").ok(3, 3)
    assert h.valid() is True
    bad = H().inv(0, "write", 1).ok(0).inv(1, "cas", [1, 2]).ok(1).inv(2, "cas", [1, 3]).ok(2)
    assert bad.valid() is False  # both replaced 1


def test_cas_on_wrong_value_is_not_linearizable() -> None:
    assert H().inv(0, "write", 1).ok(0).inv(1, "cas", [7, 2]).ok(1).valid() is False


def test_cas_mismatch_is_an_observation() -> None:
    ok = H().inv(0, "write", 1).ok(0).inv(1, "cas", [5, 2]).fail(1, "mismatch")
    assert ok.valid() is True
    wrong = H().inv(0, "write", 1).ok(0).inv(1, "cas", [1, 2]).fail(1, "mismatch")
    assert wrong.valid() is False  # the register certainly held 1
    concurrent = H().inv(0, "write", 1).inv(1, "cas", [1, 2]).fail(1, "mismatch").ok(0)
    assert concurrent.valid() is True  # may have run before the write


def test_other_failures_carry_no_information() -> None:
    h = H().inv(0, "write", 1).ok(0).inv(1, "cas", [1, 2]).fail(1, "timeout")
    h.inv(2, "write", 9).fail(2).inv(3, "read").ok(3, 1)
    assert h.valid() is True
    h.inv(3, "read").ok(3, 9)  # a failed write took no effect
    assert h.valid() is False


def test_keys_are_independent_and_named() -> None:
    h = H().inv(0, "write", 1, key="a").ok(0).inv(1, "read", key="b").ok(1, None)
    h.inv(2, "read", key="c").ok(2, 4)
    result = check_history(h.events)
    assert result.valid is False
    doc = result.to_json()
    assert doc["keys"]["a"]["valid"] is True
    assert doc["keys"]["c"]["valid"] is False
    assert doc["anomaly"]["key"] == "c"
    json.dumps(doc)  # serializable


def test_repeated_values_use_search() -> None:
    h = H().inv(0, "write", 1).ok(0).inv(0, "write", 2).ok(0).inv(0, "write", 1).ok(0)
    h.inv(1, "read").ok(1, 1)
    result = check_history(h.events)
    assert result.valid is True
    assert result.keys["x"].method == "search"


def test_budget_gives_unknown_not_a_hang() -> None:
    rng = random.Random(3)
    events = simulate(
        rng, n_ops=2000, processes=12, keys=["x"], values=3, info_rate=0.3, lost_rate=0.0
    )
    result = check_operations(pair_operations(events), max_configs=10)
    assert result.valid == "unknown"
    assert result.to_json()["unknown_keys"] == ["x"]
    assert result.keys["x"].reason == "more than 10 search configurations"
    late = check_operations(pair_operations(events), time_limit=0.0)
    assert late.valid == "unknown"
    assert late.keys["x"].reason == "the time limit ran out before this key was checked"


# --------------------------------------------------------------------------- simulated histories


@pytest.mark.parametrize("seed", range(6))
def test_simulated_unique_histories_are_linearizable(seed: int) -> None:
    rng = random.Random(seed)
    events = simulate(rng, n_ops=600, processes=8, keys=["a", "b"], info_rate=0.05)
    ops = pair_operations(events)
    assert check_operations(ops).valid is True
    assert check_operations(ops, method="search").valid is True
    planted = plant_stale_read(events, "b")
    result = check_history(planted)
    assert result.valid is False
    assert result.to_json()["anomaly"]["key"] == "b"
    assert check_operations(pair_operations(planted), method="search").valid is False


@pytest.mark.parametrize("seed", range(6))
def test_simulated_small_domain_histories_are_linearizable(seed: int) -> None:
    rng = random.Random(100 + seed)
    events = simulate(rng, n_ops=500, processes=6, keys=["a"], values=4, info_rate=0.02)
    assert check_history(events).valid is True
    planted = plant_stale_read(events, "a")
    assert check_history(planted).valid is False


def test_unique_values_are_detected() -> None:
    rng = random.Random(7)
    events = simulate(rng, n_ops=200, processes=4, keys=["a"])
    assert values_unique(prepare(pair_operations(events)))
    events = simulate(rng, n_ops=200, processes=4, keys=["a"], values=2)
    assert not values_unique(prepare(pair_operations(events)))


# --------------------------------------------------------------------------- against brute force


@st.composite
def small_histories(draw: st.DrawFn, unique: bool) -> list[Op]:
    """Arbitrary (mostly non-linearizable) histories of up to 6 ops on one key."""
    n = draw(st.integers(1, 6))
    events: list[Op] = []
    open_: dict[int, Op] = {}
    procs = itertools.count()
    fresh = itertools.count(1)
    started = 0
    while started < n or open_:
        if started < n and (not open_ or draw(st.booleans())):
            started += 1
            p = next(procs)
            f = draw(st.sampled_from(["read", "write", "cas"]))
            val = lambda: next(fresh) if unique else draw(st.integers(0, 2))  # noqa: E731
            value: Any = None if f == "read" else val() if f == "write" else None
            if f == "cas":
                value = [draw(st.sampled_from([None, 0, 1, 2, 3])), val()]
            op = Op(
                index=len(events),
                time=len(events),
                process=p,
                type="invoke",
                f=f,
                key="k",
                value=value,
            )
            events.append(op)
            open_[p] = op
            continue
        p = draw(st.sampled_from(sorted(open_)))
        inv = open_.pop(p)
        type_ = draw(st.sampled_from(["ok", "ok", "ok", "fail", "info", "pending"]))
        if type_ == "pending":
            continue
        value = (
            draw(st.sampled_from([None, 0, 1, 2, 3]))
            if inv.f == "read" and type_ == "ok"
            else inv.value
        )
        if inv.f == "read" and type_ != "ok":
            value = None
        error = draw(st.sampled_from(["mismatch", "timeout"])) if type_ == "fail" else None
        events.append(
            Op(
                index=len(events),
                time=len(events),
                process=p,
                type=type_,
                f=inv.f,
                key="k",
                value=value,
                error=error,
            )
        )
    return events


@settings(derandomize=True, max_examples=400, deadline=None)
@given(small_histories(unique=False))
def test_agrees_with_brute_force_on_small_domains(events: list[Op]) -> None:
    ops = pair_operations(events)
    assert check_operations(ops).valid is brute_force(ops)


@settings(derandomize=True, max_examples=400, deadline=None)
@given(small_histories(unique=True))
def test_agrees_with_brute_force_on_unique_values(events: list[Op]) -> None:
    ops = pair_operations(events)
    expected = brute_force(ops)
    assert check_operations(ops).valid is expected
    assert check_operations(ops, method="search").valid is expected


@settings(derandomize=True, max_examples=150, deadline=None)
@given(st.integers(0, 10**6))
def test_simulated_histories_agree_with_brute_force(seed: int) -> None:
    rng = random.Random(seed)
    events = simulate(
        rng, n_ops=5, processes=3, keys=["k"], values=rng.choice([None, 2]), info_rate=0.3
    )
    ops = pair_operations(events)
    assert brute_force(ops) is True
    assert check_operations(ops).valid is True


@settings(derandomize=True, max_examples=150, deadline=None)
@given(small_histories(unique=True))
def test_witness_is_itself_not_linearizable(events: list[Op]) -> None:
    result = check_operations(pair_operations(events))
    if result.valid is not False:
        return
    anomaly = result.anomaly
    assert anomaly is not None
    ops = pair_operations(events)
    witness = [o for o in ops if o.invoke.index in {w.index for w in anomaly.ops}]
    assert brute_force(witness) is False


# --------------------------------------------------------------------------- the CLI


def _write(path: Path, events: list[Op]) -> Path:
    path.write_text("".join(e.to_json_line() + "\n" for e in events))
    return path


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    code = "import sys; from harness.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, "check", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_exit_codes_and_json(tmp_path: Path) -> None:
    good = _write(
        tmp_path / "good.jsonl", H().inv(0, "write", 1).ok(0).inv(1, "read").ok(1, 1).events
    )
    bad = _write(
        tmp_path / "bad.jsonl", H().inv(0, "write", 1).ok(0).inv(1, "read").ok(1, 2).events
    )
    assert _cli(str(good)).returncode == 0
    both = _cli(str(good), str(bad))
    assert both.returncode == 1
    assert len(both.stdout.strip().splitlines()) >= 2
    out = _cli("--json", str(bad))
    assert out.returncode == 1
    doc = json.loads(out.stdout)
    assert doc["files"][0]["linearizability"]["valid"] is False


def test_cli_bad_input_exits_2_without_traceback(tmp_path: Path) -> None:
    path = tmp_path / "broken.jsonl"
    path.write_text(
        '{"index":0,"time":1,"process":0,"type":"invoke","f":"write","key":"x","value":"a"}\n'
    )
    out = _cli(str(path))
    assert out.returncode == 2
    assert "broken.jsonl:1" in out.stderr
    assert "value" in out.stderr
    assert "Traceback" not in out.stderr
    missing = _cli(str(tmp_path / "nope.jsonl"))
    assert missing.returncode == 2
    assert "Traceback" not in missing.stderr


def test_search_explanation_names_the_later_read_that_pins_the_value() -> None:
    h = H().inv(0, "write", 1).ok(0).inv(0, "write", 2).ok(0).inv(1, "read").ok(1, 1)
    h.inv(2, "cas", [5, 6]).fail(2, "mismatch")  # the unique-values check is a relaxation now
    for method in ("auto", "search"):
        result = check_operations(pair_operations(h.events), method=method)  # type: ignore[arg-type]
        assert result.keys["x"].method == ("unique-values" if method == "auto" else "search")
        anomaly = result.anomaly
        assert anomaly is not None
        assert 4 in {o.index for o in anomaly.ops}  # the stale read is in the witness
        assert "p1's read (events 4-5) returned 1" in anomaly.explanation
