"""Benchmark of the linearizability checker; prints one JSON document.

Cases (seeded, linearizable by construction: every op takes effect at one random instant of its
window in a simulated register):

* ``a``: 100,000 ops, 50 keys, 30 processes, 1% info, unique written values;
* ``b``: 5,000 ops, one key, 20 processes, unique written values;
* ``c``: 5,000 ops, one key, 10 processes, values drawn from 0..4;
* ``b-planted`` / ``c-planted``: the same with a stale read appended (must be found).

Each case runs in its own child process so that its peak RSS (``ru_maxrss``) is its own. The
histories are written to a temporary directory; ``seconds`` is reading + validating + checking
the file (what ``orbital check`` does), ``check_seconds`` the check alone. When ``go`` is on the
PATH, the same files are checked by Porcupine (github.com/anishathalye/porcupine) through a
throwaway Go driver built in a temporary directory, and the time ratio is printed.

Usage: ``python bench/checker.py [--cases a,b,c] [--no-porcupine] [--keep DIR]``
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CASES: dict[str, dict[str, Any]] = {
    "a": {"ops": 100_000, "keys": 50, "processes": 30, "info": 0.01, "values": None},
    "b": {"ops": 5_000, "keys": 1, "processes": 20, "info": 0.0, "values": None},
    "c": {"ops": 5_000, "keys": 1, "processes": 10, "info": 0.0, "values": 5},
    "b-planted": {
        "ops": 5_000,
        "keys": 1,
        "processes": 20,
        "info": 0.0,
        "values": None,
        "plant": True,
    },
    "c-planted": {
        "ops": 5_000,
        "keys": 1,
        "processes": 10,
        "info": 0.0,
        "values": 5,
        "plant": True,
    },
}


class Register:
    """The simulated store: each op takes effect at one instant (its linearization point)."""

    def __init__(self, keys: int, values: int | None, rng: random.Random) -> None:
        self.state: dict[str, int | None] = {f"k{i}": None for i in range(keys)}
        self.values = values
        self.rng = rng
        self.counter = itertools.count(1)

    def new_value(self) -> int:
        return next(self.counter) if self.values is None else self.rng.randrange(self.values)

    def new_op(self) -> tuple[str, str, Any]:
        key = self.rng.choice(list(self.state))
        r = self.rng.random()
        if r < 0.5:
            return "read", key, None
        if r < 0.8:
            return "write", key, self.new_value()
        current = self.state[key]
        expected = current if self.rng.random() < 0.7 else self.new_value()
        return "cas", key, [expected, self.new_value()]

    def apply(self, f: str, key: str, value: Any) -> tuple[str, Any]:
        """Apply at this instant; return (type, completion value, error)."""
        if f == "read":
            return "ok", self.state[key]
        if f == "write":
            self.state[key] = value
            return "ok", value
        if self.state[key] == value[0]:
            self.state[key] = value[1]
            return "ok", value
        return "mismatch", value


def generate(spec: dict[str, Any], seed: int) -> list[dict[str, Any]]:
    """A linearizable history as a list of JSON-ready events."""
    rng = random.Random(seed)
    reg = Register(spec["keys"], spec["values"], rng)
    events: list[dict[str, Any]] = []
    heap: list[tuple[int, int, str, int]] = []  # (time, seq, what, slot)
    seq = itertools.count()
    procs = list(range(spec["processes"]))
    next_proc = itertools.count(spec["processes"])
    current: dict[int, dict[str, Any]] = {}
    started = 0
    for slot in range(len(procs)):
        heapq.heappush(heap, (rng.randrange(1000), next(seq), "invoke", slot))
    while heap:
        now, _, what, slot = heapq.heappop(heap)
        p = procs[slot]
        if what == "invoke":
            if started >= spec["ops"]:
                continue
            started += 1
            f, key, value = reg.new_op()
            events.append(_event(events, now, p, "invoke", f, key, value))
            lost = rng.random() < spec["info"]
            current[slot] = {"f": f, "key": key, "value": value, "lost": lost}
            if lost and rng.random() < 0.5:  # an info op that never takes effect
                heapq.heappush(heap, (now + rng.randrange(100, 5000), next(seq), "complete", slot))
            else:
                heapq.heappush(heap, (now + rng.randrange(10, 2000), next(seq), "apply", slot))
        elif what == "apply":
            op = current[slot]
            op["type"], op["result"] = reg.apply(op["f"], op["key"], op["value"])
            heapq.heappush(heap, (now + rng.randrange(10, 2000), next(seq), "complete", slot))
        else:
            op = current.pop(slot)
            _complete(events, now, p, op)
            if op["lost"]:
                procs[slot] = next(next_proc)
            heapq.heappush(heap, (now + rng.randrange(0, 500), next(seq), "invoke", slot))
    return events


def _event(
    events: list[dict[str, Any]], now: int, p: int, type_: str, f: str, key: str, value: Any
) -> dict[str, Any]:
    return {
        "index": len(events),
        "time": now,
        "process": p,
        "type": type_,
        "f": f,
        "key": key,
        "value": value,
    }


def _complete(events: list[dict[str, Any]], now: int, p: int, op: dict[str, Any]) -> None:
    f, key = op["f"], op["key"]
    if op["lost"]:
        events.append(_event(events, now, p, "info", f, key, None if f == "read" else op["value"]))
    elif op["type"] == "mismatch":
        event = _event(events, now, p, "fail", f, key, op["value"])
        events.append(event | {"error": "mismatch"})
    else:
        events.append(_event(events, now, p, "ok", f, key, op["result"]))


def plant_stale_read(events: list[dict[str, Any]]) -> None:
    """Append a write of a fresh value, then a read (after it) returning an older value."""
    key = events[-1]["key"]
    p = max(e["process"] for e in events) + 1
    t = events[-1]["time"]
    for f, type_, value in [
        ("write", "invoke", 10**9),
        ("write", "ok", 10**9),
        ("write", "invoke", 10**9 + 1),
        ("write", "ok", 10**9 + 1),
        ("read", "invoke", None),
        ("read", "ok", 10**9),
    ]:
        t += 10
        events.append(_event(events, t, p, type_, f, key, value))


def run_case(name: str, directory: Path, seed: int) -> dict[str, Any]:
    """Generate, write and check one case in this process; return its measurements."""
    sys.path.insert(0, str(ROOT))
    from harness.checker.cli import check_file
    from harness.checker.linearizable import check_history
    from harness.history import read_history

    spec = CASES[name]
    events = generate(spec, seed)
    if spec.get("plant"):
        plant_stale_read(events)
    path = directory / f"{name}.jsonl"
    path.write_text("".join(json.dumps(e, separators=(",", ":")) + "\n" for e in events))
    ops = sum(1 for e in events if e["type"] == "invoke")
    t0 = time.perf_counter()
    result = check_file(str(path), 60.0, os.cpu_count() or 1)
    seconds = time.perf_counter() - t0
    history = read_history(path)
    t1 = time.perf_counter()
    in_process = check_history(history, time_limit=60.0)
    check_seconds = time.perf_counter() - t1
    assert in_process.valid == result.valid, (in_process.valid, result.valid)
    methods = sorted({r.method for r in result.keys.values()})
    return {
        "case": name,
        "ops": ops,
        "keys": spec["keys"],
        "processes": spec["processes"],
        "info_ops": sum(1 for e in events if e["type"] == "info") + _pending(events),
        "verdict": result.valid,
        "methods": methods,
        "seconds": round(seconds, 3),
        "ops_per_second": round(ops / seconds),
        "check_seconds": round(check_seconds, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "file": str(path),
    }


def _pending(events: list[dict[str, Any]]) -> int:
    open_: set[int] = set()
    for e in events:
        (open_.add if e["type"] == "invoke" else open_.discard)(e["process"])
    return len(open_)


GO_DRIVER = r"""
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/anishathalye/porcupine"
)

type ev struct {
	Index   int64            `json:"index"`
	Process int              `json:"process"`
	Type    string           `json:"type"`
	F       string           `json:"f"`
	Key     string           `json:"key"`
	Value   *json.RawMessage `json:"value"`
	Error   string           `json:"error"`
}

type in struct {
	f, key        string
	arg, exp, new *int64
}
type out struct {
	ok      bool
	val     *int64
	unknown bool
}

func eq(a, b *int64) bool { return (a == nil && b == nil) || (a != nil && b != nil && *a == *b) }

func parseVal(raw *json.RawMessage) (*int64, *int64) {
	if raw == nil || string(*raw) == "null" {
		return nil, nil
	}
	var pair []*int64
	if json.Unmarshal(*raw, &pair) == nil {
		return pair[0], pair[1]
	}
	var v int64
	json.Unmarshal(*raw, &v)
	return &v, nil
}

func main() {
	f, _ := os.Open(os.Args[1])
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	type pend struct {
		e    ev
		call int64
	}
	open := map[int]pend{}
	var ops []porcupine.Operation
	var last int64
	add := func(p pend, ret int64, o out) {
		a, b := parseVal(p.e.Value)
		i := in{f: p.e.F, key: p.e.Key}
		if p.e.F == "cas" {
			i.exp, i.new = a, b
		} else {
			i.arg = a
		}
		ops = append(ops, porcupine.Operation{
			ClientId: p.e.Process, Input: i, Call: p.call, Output: o, Return: ret})
	}
	for sc.Scan() {
		var e ev
		json.Unmarshal(sc.Bytes(), &e)
		last = e.Index
		if e.Type == "invoke" {
			open[e.Process] = pend{e, e.Index}
			continue
		}
		p := open[e.Process]
		delete(open, e.Process)
		switch {
		case e.Type == "ok" && e.F == "read":
			v, _ := parseVal(e.Value)
			add(p, e.Index, out{ok: true, val: v})
		case e.Type == "ok":
			add(p, e.Index, out{ok: true})
		case e.Type == "fail" && e.F == "cas" && e.Error == "mismatch":
			add(p, e.Index, out{ok: false})
		case e.Type == "info" && e.F != "read":
			open[-1-len(ops)] = p
		}
	}
	for _, p := range open {
		if p.e.F != "read" {
			add(p, last+1, out{unknown: true})
		}
	}
	model := porcupine.Model{
		Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
			m := map[string][]porcupine.Operation{}
			var keys []string
			for _, op := range history {
				k := op.Input.(in).key
				if _, ok := m[k]; !ok {
					keys = append(keys, k)
				}
				m[k] = append(m[k], op)
			}
			var res [][]porcupine.Operation
			for _, k := range keys {
				res = append(res, m[k])
			}
			return res
		},
		Init: func() interface{} { return (*int64)(nil) },
		Step: func(state, input, output interface{}) (bool, interface{}) {
			st := state.(*int64)
			i, o := input.(in), output.(out)
			switch i.f {
			case "read":
				return eq(st, o.val), st
			case "write":
				return true, i.arg
			}
			match := eq(st, i.exp)
			if o.unknown {
				if match {
					return true, i.new
				}
				return true, st
			}
			if o.ok {
				if match {
					return true, i.new
				}
				return false, st
			}
			return !match, st
		},
		Equal: func(a, b interface{}) bool { return eq(a.(*int64), b.(*int64)) },
	}
	start := time.Now()
	res := porcupine.CheckOperationsTimeout(model, ops, 60*time.Second)
	secs := time.Since(start).Seconds()
	verdict := map[porcupine.CheckResult]string{
		porcupine.Ok: "true", porcupine.Illegal: "false", porcupine.Unknown: "\"unknown\""}[res]
	fmt.Printf("{\"verdict\": %s, \"seconds\": %.3f}\n", verdict, secs)
}
"""


def build_porcupine(workdir: Path) -> tuple[Path | None, str]:
    """Build the Go driver; return (binary, "") or (None, why not)."""
    go = shutil.which("go")
    if go is None:
        return None, "go is not on the PATH"
    src = workdir / "porcupine-driver"
    src.mkdir()
    (src / "main.go").write_text(GO_DRIVER)
    env = os.environ | {"GOFLAGS": "-mod=mod", "GOPATH": str(workdir / "gopath")}
    steps = [
        [go, "mod", "init", "driver"],
        [go, "get", "github.com/anishathalye/porcupine@latest"],
        [go, "build", "-o", "driver", "."],
    ]
    for cmd in steps:
        done = subprocess.run(
            cmd, cwd=src, env=env, capture_output=True, text=True, timeout=300, check=False
        )
        if done.returncode != 0:
            return None, f"{' '.join(cmd[1:])} failed: {done.stderr.strip()[-400:]}"
    return src / "driver", ""


def run_porcupine(binary: Path, path: str) -> dict[str, Any]:
    """Time Porcupine (including its JSON parsing) on one history file."""
    t0 = time.perf_counter()
    done = subprocess.run(
        [str(binary), path], capture_output=True, text=True, timeout=300, check=False
    )
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        return {"error": done.stderr.strip()[-400:]}
    result: dict[str, Any] = json.loads(done.stdout)
    result["wall_seconds"] = round(wall, 3)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-porcupine", action="store_true")
    parser.add_argument("--keep", type=Path, help="write the histories here instead of a temp dir")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_case(args.child, args.keep, args.seed)))
        return 0
    workdir = Path(tempfile.mkdtemp(prefix="orbital-bench-"))
    directory = args.keep or workdir
    directory.mkdir(parents=True, exist_ok=True)
    results = [_child(name, directory, args.seed) for name in args.cases.split(",")]
    report: dict[str, Any] = {
        "benchmark": "linearizability checker",
        "seed": args.seed,
        "cases": results,
    }
    if not args.no_porcupine:
        report["porcupine"] = _porcupine(workdir, results)
    print(json.dumps(report, indent=2))
    return 0


def _child(name: str, directory: Path, seed: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", name, "--keep", str(directory), "--seed", str(seed)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"case": name, "error": done.stderr.strip()[-800:]}
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _porcupine(workdir: Path, results: list[dict[str, Any]]) -> dict[str, Any]:
    try:
        binary, why = build_porcupine(workdir)
    except (OSError, subprocess.TimeoutExpired) as exc:
        binary, why = None, str(exc)
    if binary is None:
        return {"available": False, "why": why}
    out: dict[str, Any] = {"available": True, "cases": {}}
    for r in results:
        if "file" not in r:
            continue
        p = run_porcupine(binary, r["file"])
        if "wall_seconds" in p:
            p["ratio_orbital_over_porcupine"] = round(
                r["seconds"] / max(p["wall_seconds"], 1e-3), 2
            )
        out["cases"][r["case"]] = p
    return out


if __name__ == "__main__":
    sys.exit(main())
