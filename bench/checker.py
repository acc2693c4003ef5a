"""Benchmark of the linearizability checker against issue 15's targets; prints one JSON document.

Generated cases (seeded, linearizable by construction: every op takes effect at one random
instant of its window in a simulated register; ``-planted`` ones get a stale read appended):

* ``cas``: one key, 5,000 ops, 20 processes, unique values, 10 % cas, 3 % info, 2 % fail
  (valid, and planted): each within 10 s;
* ``unique-20k``: one key, 20,000 ops, 30 processes, unique values, 1 % info: within 10 s;
* ``small-10k`` / ``small-100k``: one key, 10,000 / 100,000 ops, values 0..4, 1 % info: within
  1 s / 10 s; ``small-100k-planted`` (not an issue target): the same with a stale read of a
  value written once appended, within 10 s;
* ``big-unique`` / ``big-small``: 1,000,000 ops over 200 keys, 30 processes, 2 % info, unique
  values / values 0..4: within 30 s, under 2 GB in all processes together (this process's peak
  plus ``jobs`` times the largest worker's: an upper bound);
* ``startup``: ``orbital check`` on a 10-op file, wall time of the whole command (median of 7
  runs): within 0.15 s;
* ``porcupine``: the Jepsen etcd histories Porcupine ships in ``test_data/jepsen`` (converted to
  our format in a cache directory, never committed), checked by ONE ``orbital check`` process
  and by Porcupine (a Go driver built against its module) in the same run: every verdict must
  agree, with Porcupine and with the verdicts its own tests expect, and our checking time must
  be within Porcupine's. Its ``test_data/kv`` files use an append/put/get model that a
  read/write/cas register history cannot express, so they are left out.

Each generated case runs as ``orbital check`` would (:class:`harness.checker.run.Checker`,
all cores) in a child process of its own, so that its memory is its own; ``seconds`` is reading
+ validating + checking the file (wall clock: what the targets are about), ``cpu_seconds`` the
CPU time that took in this process and its worker processes together (what a loaded machine
does not inflate), with the load average before and after.

Porcupine's source comes from ``--porcupine-src`` (a checkout, or a bare git directory such as
a mirror), else from the Go module cache (``go mod download``); it is copied into
``--cache`` (default ``~/.cache/orbital-bench``). Without Go or the source the Porcupine part
says why and the rest still runs.

Usage: ``python bench/checker.py [--cases a,b] [--porcupine-src DIR] [--no-porcupine]
[--porcupine-cases small-10k,small-100k]`` (the last: Porcupine on the generated files too).
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import os
import random
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BASE = {"keys": 1, "processes": 20, "info": 0.0, "values": None, "cas": 0.2, "fail": 0.0}
CASES: dict[str, dict[str, Any]] = {
    "cas": BASE | {"ops": 5_000, "cas": 0.1, "info": 0.03, "fail": 0.02, "target_s": 10},
    "cas-planted": BASE
    | {"ops": 5_000, "cas": 0.1, "info": 0.03, "fail": 0.02, "plant": True, "target_s": 10},
    "unique-20k": BASE | {"ops": 20_000, "processes": 30, "info": 0.01, "target_s": 10},
    "small-10k": BASE | {"ops": 10_000, "values": 5, "info": 0.01, "target_s": 1},
    "small-100k": BASE | {"ops": 100_000, "values": 5, "info": 0.01, "target_s": 10},
    "small-100k-planted": BASE
    | {"ops": 100_000, "values": 5, "info": 0.01, "plant": True, "target_s": 10},
    "big-unique": BASE
    | {"ops": 1_000_000, "keys": 200, "processes": 30, "info": 0.02, "target_s": 30},
    "big-small": BASE
    | {"ops": 1_000_000, "keys": 200, "processes": 30, "info": 0.02, "values": 5, "target_s": 30},
}
MEMORY_TARGET_MB = 2048
STARTUP_TARGET_S = 0.15


class Register:
    """The simulated store: each op takes effect at one instant (its linearization point)."""

    def __init__(self, keys: int, values: int | None, rng: random.Random) -> None:
        self.state: dict[str, int | None] = {f"k{i}": None for i in range(keys)}
        self.keys = list(self.state)
        self.values = values
        self.rng = rng
        self.counter = itertools.count(1)

    def new_value(self) -> int:
        return next(self.counter) if self.values is None else self.rng.randrange(self.values)

    def new_op(self, cas: float) -> tuple[str, str, Any]:
        key = self.rng.choice(self.keys)
        r = self.rng.random()
        if r < cas:
            return self.new_cas(key)
        if r < cas + (1 - cas) * 0.55:
            return "read", key, None
        return "write", key, self.new_value()

    def new_cas(self, key: str) -> tuple[str, str, Any]:
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
            f, key, value = reg.new_op(spec["cas"])
            events.append(_event(events, now, p, "invoke", f, key, value))
            lost = rng.random() < spec["info"]
            failed = not lost and rng.random() < spec["fail"]
            current[slot] = {"f": f, "key": key, "value": value, "lost": lost, "failed": failed}
            if failed or (lost and rng.random() < 0.5):  # never takes effect
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
    elif op["failed"]:
        event = _event(events, now, p, "fail", f, key, None if f == "read" else op["value"])
        events.append(event | {"error": "unavailable"})
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


def write_case(name: str, directory: Path, seed: int) -> tuple[Path, int, int]:
    """Generate a case's history file (cached by name and seed); (path, ops, info ops)."""
    spec = CASES[name]
    path = directory / f"{name}-{seed}.jsonl"
    meta = directory / f"{name}-{seed}.json"
    if path.is_file() and meta.is_file():
        m = json.loads(meta.read_text())
        return path, m["ops"], m["info"]
    events = generate(spec, seed)
    if spec.get("plant"):
        plant_stale_read(events)
    with path.open("w") as fh:
        fh.writelines(json.dumps(e, separators=(",", ":")) + "\n" for e in events)
    ops = sum(1 for e in events if e["type"] == "invoke")
    info = sum(1 for e in events if e["type"] == "info") + _pending(events)
    meta.write_text(json.dumps({"ops": ops, "info": info}))
    return path, ops, info


def run_case(name: str, directory: Path, seed: int) -> dict[str, Any]:
    """Check one case's file in this process, as ``orbital check`` does; measure it."""
    sys.path.insert(0, str(ROOT))
    from harness.checker.run import Checker

    spec = CASES[name]
    path, ops, info = write_case(name, directory, seed)
    load_before = os.getloadavg()
    cpu_self, cpu_children = _cpu(resource.RUSAGE_SELF), _cpu(resource.RUSAGE_CHILDREN)
    with Checker(time_limit=120.0, jobs=0) as checker:
        t0 = time.perf_counter()
        result = checker.check_file(str(path))
        seconds = time.perf_counter() - t0
        jobs = checker.jobs
    cpu_self = _cpu(resource.RUSAGE_SELF) - cpu_self
    cpu_workers = _cpu(resource.RUSAGE_CHILDREN) - cpu_children  # the pool is joined by now
    this = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    worker = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    bound = this + (jobs * worker if worker else 0)
    expected = not spec.get("plant")
    anomaly = result.anomaly
    out: dict[str, Any] = {
        "case": name,
        "ops": ops,
        "keys": spec["keys"],
        "processes": spec["processes"],
        "info_ops": info,
        "verdict": result.valid,
        "expected_verdict": expected,
        "methods": sorted({r.method for r in result.keys.values()}),
        "seconds": round(seconds, 3),
        "target_seconds": spec["target_s"],
        "cpu_seconds": round(cpu_self + cpu_workers, 3),
        "cpu_seconds_workers": round(cpu_workers, 3),
        "jobs": jobs,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "peak_rss_mb_this_process": round(this, 1),
        "peak_rss_mb_largest_worker": round(worker, 1),
        "peak_rss_mb_all_processes_bound": round(bound, 1),
        "met": result.valid == expected and seconds <= spec["target_s"],
    }
    if spec["ops"] >= 1_000_000:
        out["met"] = out["met"] and bound <= MEMORY_TARGET_MB
    if anomaly is not None:
        out["anomaly"] = {"key": anomaly.key, "kind": anomaly.kind}
    return out


def _cpu(who: int) -> float:
    """User + system CPU seconds of this process or of its waited-for children."""
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def _pending(events: list[dict[str, Any]]) -> int:
    open_: set[int] = set()
    for e in events:
        (open_.add if e["type"] == "invoke" else open_.discard)(e["process"])
    return len(open_)


def startup(directory: Path) -> dict[str, Any]:
    """Wall time of ``orbital check`` on a 10-op file, the whole command (median of 7)."""
    path = directory / "ten-ops.jsonl"
    events: list[dict[str, Any]] = []
    for n in range(5):
        for type_ in ("invoke", "ok"):
            events.append(_event(events, len(events) * 10, n % 2, type_, "write", "x", n + 1))
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    orbital = ROOT / ".venv" / "bin" / "orbital"
    command = [str(orbital)] if orbital.exists() else [sys.executable, "-m", "harness.cli"]
    walls = []
    for _ in range(7):
        t0 = time.perf_counter()
        done = subprocess.run([*command, "check", str(path)], capture_output=True, check=False)
        walls.append(time.perf_counter() - t0)
        assert done.returncode == 0, done.stderr
    median = statistics.median(walls)
    return {
        "case": "startup",
        "command": "orbital check ten-ops.jsonl",
        "median_seconds": round(median, 3),
        "all_seconds": [round(w, 3) for w in walls],
        "target_seconds": STARTUP_TARGET_S,
        "met": median <= STARTUP_TARGET_S,
    }


# ----------------------------------------------------------------------------- Porcupine

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
	total := 0.0
	for _, name := range os.Args[1:] {
		verdict, secs := checkFile(name)
		total += secs
		fmt.Printf("{\"file\": %q, \"verdict\": %s, \"seconds\": %.6f}\n", name, verdict, secs)
	}
	fmt.Printf("{\"total_seconds\": %.6f}\n", total)
}

func checkFile(name string) (string, float64) {
	f, _ := os.Open(name)
	defer f.Close()
	start := time.Now()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	type pend struct {
		e    ev
		call int64
	}
	open := map[int]pend{}
	var unknown []pend
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
			unknown = append(unknown, p)
		}
	}
	for _, p := range open {
		unknown = append(unknown, p)
	}
	for _, p := range unknown {
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
	res := porcupine.CheckOperationsTimeout(model, ops, 60*time.Second)
	secs := time.Since(start).Seconds()
	verdict := map[porcupine.CheckResult]string{
		porcupine.Ok: "true", porcupine.Illegal: "false", porcupine.Unknown: "\"unknown\""}[res]
	return verdict, secs
}
"""


MODULE = "github.com/anishathalye/porcupine"


def porcupine_source(cache: Path, given: Path | None) -> tuple[Path | None, str]:
    """A directory with Porcupine's source and test data, copied into the cache."""
    target = cache / "porcupine-src"
    if (target / "go.mod").is_file():
        return target, ""
    if given is not None:
        target.mkdir(parents=True, exist_ok=True)
        if (given / "go.mod").is_file():
            shutil.copytree(given, target, dirs_exist_ok=True)
            return target, ""
        archive = subprocess.run(
            ["git", f"--git-dir={given}", "archive", "HEAD"], capture_output=True, check=False
        )
        if archive.returncode == 0:
            subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
            return target, ""
        return None, f"{given} is neither a checkout nor a git directory of Porcupine"
    go = shutil.which("go")
    if go is None:
        return None, "go is not on the PATH and no --porcupine-src was given"
    done = subprocess.run(
        [go, "mod", "download", "-json", f"{MODULE}@latest"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=os.environ | {"GOFLAGS": "-mod=mod"},
    )
    if done.returncode != 0:
        return None, f"go mod download failed: {done.stderr.strip()[-300:]}"
    shutil.copytree(json.loads(done.stdout)["Dir"], target, dirs_exist_ok=True)
    subprocess.run(["chmod", "-R", "u+w", str(target)], check=False)
    return target, ""


def build_driver(cache: Path, source: Path) -> tuple[Path | None, str]:
    """Build the Go driver against the Porcupine source (no network: a replace directive)."""
    go = shutil.which("go")
    if go is None:
        return None, "go is not on the PATH"
    src = cache / "porcupine-driver"
    src.mkdir(parents=True, exist_ok=True)
    (src / "main.go").write_text(GO_DRIVER)
    (src / "go.mod").write_text(
        f"module driver\n\ngo 1.21\n\nrequire {MODULE} v0.0.0\n\nreplace {MODULE} => {source}\n"
    )
    env = os.environ | {"GOFLAGS": "-mod=mod", "GOPROXY": "off"}
    done = subprocess.run(
        [go, "build", "-o", "driver", "."],
        cwd=src,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        return None, f"go build failed: {done.stderr.strip()[-400:]}"
    return src / "driver", ""


_LINE = re.compile(r"^INFO\s+jepsen\.util\s+-\s+(\d+)\s+:(\w+)\s+:(\w+)\s+(.*)$")


def convert_etcd_log(text: str) -> list[dict[str, Any]]:
    """A Jepsen etcd log (Porcupine's ``test_data/jepsen``) as our history events."""
    events: list[dict[str, Any]] = []
    open_: dict[int, dict[str, Any]] = {}
    for line in text.splitlines():
        m = _LINE.match(line.strip())
        if m is None:
            continue
        p, type_, f, rest = int(m[1]), m[2], m[3], m[4].strip()
        if type_ == "invoke":
            value: Any = None
            if f == "write":
                value = int(rest)
            elif f == "cas":
                a, b = rest.strip("[]").split()
                value = [int(a), int(b)]
            ev = {"process": p, "type": "invoke", "f": f, "key": "r", "value": value}
            open_[p] = ev
            events.append(ev)
            continue
        inv = open_.pop(p, None)
        if inv is None:
            continue
        done: dict[str, Any] = {"process": p, "f": f, "key": "r", "value": inv["value"]}
        if type_ == "ok":
            done["type"] = "ok"
            if f == "read":
                done["value"] = None if rest == "nil" else int(rest)
        elif type_ == "fail" and f == "cas":
            done |= {"type": "fail", "error": "mismatch"}
        elif type_ == "fail":
            done |= {"type": "fail", "error": rest.lstrip(":")}  # a read that timed out
        else:
            done |= {"type": "info", "error": rest.lstrip(":")}
        events.append(done)
    return [{"index": i, "time": i, **e} for i, e in enumerate(events)]


_EXPECTED = re.compile(r"checkJepsen\(t,\s*(\d+),\s*(true|false)\)")


def porcupine_part(cache: Path, given: Path | None) -> dict[str, Any]:
    """Every Jepsen etcd history: our verdicts and time against Porcupine's."""
    source, why = porcupine_source(cache, given)
    if source is None:
        return {"available": False, "why": why}
    logs = sorted((source / "test_data" / "jepsen").glob("etcd_*.log"))
    if not logs:
        return {"available": False, "why": f"no test_data/jepsen/etcd_*.log under {source}"}
    expected = {
        int(n): v == "true"
        for n, v in _EXPECTED.findall((source / "porcupine_test.go").read_text())
    }
    histories = cache / "etcd-histories"
    histories.mkdir(parents=True, exist_ok=True)
    files = []
    for log in logs:
        out = histories / (log.stem + ".jsonl")
        if not out.is_file():
            events = convert_etcd_log(log.read_text())
            out.write_text("".join(json.dumps(e) + "\n" for e in events))
        files.append(out)
    ours = _orbital_many(files)
    report: dict[str, Any] = {"available": True, "files": len(files), "orbital": ours}
    agree_expected = [
        ours["verdicts"][f.stem] == expected.get(int(f.stem.split("_")[1]))
        for f in files
        if int(f.stem.split("_")[1]) in expected
    ]
    report["agrees_with_porcupine_tests"] = f"{sum(agree_expected)}/{len(agree_expected)}"
    binary, why = build_driver(cache, source)
    if binary is None:
        report["porcupine"] = {"available": False, "why": why}
        report["met"] = all(agree_expected)
        return report
    t0 = time.perf_counter()
    done = subprocess.run(
        [str(binary), *map(str, files)], capture_output=True, text=True, timeout=900, check=False
    )
    wall = time.perf_counter() - t0
    lines = [json.loads(x) for x in done.stdout.splitlines() if x.strip()]
    theirs = {Path(x["file"]).stem: x["verdict"] for x in lines if "file" in x}
    total = next((x["total_seconds"] for x in lines if "total_seconds" in x), None)
    empty = [f.stem for f in files if f.stat().st_size == 0]
    disagree = [k for k, v in ours["verdicts"].items() if theirs.get(k) != v and k not in empty]
    report["empty_histories"] = {
        k: {"orbital": ours["verdicts"][k], "porcupine": theirs.get(k)} for k in empty
    }  # no operations: Porcupine says Ok, orbital says unknown (issue 15: never "valid")
    report["porcupine"] = {
        "check_seconds": total,
        "process_wall_seconds": round(wall, 3),
        "verdicts_valid": sum(v is True for v in theirs.values()),
        "verdicts_invalid": sum(v is False for v in theirs.values()),
    }
    report["disagreements"] = disagree
    report["check_seconds_ratio_orbital_over_porcupine"] = (
        round(ours["check_seconds"] / total, 2) if total else None
    )
    report["met"] = (
        not disagree
        and all(agree_expected)
        and (total is not None and ours["check_seconds"] <= total)
    )
    return report


def porcupine_cases(
    cache: Path, given: Path | None, names: list[str], directory: Path, seed: int
) -> dict[str, Any]:
    """Porcupine on the generated cases' own files (its driver gives up after 60 s)."""
    source, why = porcupine_source(cache, given)
    binary = None
    if source is not None:
        binary, why = build_driver(cache, source)
    if binary is None:
        return {"available": False, "why": why}
    out: dict[str, Any] = {"available": True}
    for name in names:
        path, _, _ = write_case(name, directory, seed)
        t0 = time.perf_counter()
        done = subprocess.run(
            [str(binary), str(path)], capture_output=True, text=True, timeout=300, check=False
        )
        first = next((json.loads(x) for x in done.stdout.splitlines() if '"file"' in x), {})
        out[name] = {
            "verdict": first.get("verdict"),
            "seconds": first.get("seconds"),
            "process_wall_seconds": round(time.perf_counter() - t0, 3),
        }
    return out


def _orbital_many(files: list[Path]) -> dict[str, Any]:
    """Check every file in ONE process, as ``orbital check FILE...`` does."""
    code = (
        "import json, sys, time\n"
        "from harness.checker.run import Checker\n"
        "t0 = time.perf_counter(); out = {}; spent = 0.0\n"
        "with Checker(time_limit=60.0, jobs=1) as c:\n"
        "    for p in sys.argv[1:]:\n"
        "        r = c.check_file(p); spent += r.seconds\n"
        "        out[p] = r.valid\n"
        "print(json.dumps({'verdicts': out, 'check_seconds': spent,"
        " 'in_process_seconds': time.perf_counter() - t0}))\n"
    )
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", code, *map(str, files)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=900,
        check=False,
    )
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        return {"error": done.stderr[-800:]}
    doc = json.loads(done.stdout)
    return {
        "verdicts": {Path(k).stem: v for k, v in doc["verdicts"].items()},
        "check_seconds": round(doc["check_seconds"], 4),
        "read_and_check_seconds": round(doc["in_process_seconds"], 4),
        "process_wall_seconds": round(wall, 3),
        "verdicts_valid": sum(v is True for v in doc["verdicts"].values()),
        "verdicts_invalid": sum(v is False for v in doc["verdicts"].values()),
        "verdicts_unknown": sum(v == "unknown" for v in doc["verdicts"].values()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join([*CASES, "startup"]))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-porcupine", action="store_true")
    parser.add_argument("--porcupine-src", type=Path, default=None)
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "orbital-bench")
    parser.add_argument(
        "--porcupine-cases",
        default="",
        help="also check these generated cases (comma-separated) with Porcupine, 60 s each",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_case(args.child, args.dir, args.seed)))
        return 0
    args.cache.mkdir(parents=True, exist_ok=True)
    directory = args.cache / "histories"
    directory.mkdir(parents=True, exist_ok=True)
    results = []
    for name in args.cases.split(","):
        if name == "startup":
            results.append(startup(Path(tempfile.mkdtemp(prefix="orbital-bench-"))))
        else:
            results.append(_child(name, directory, args.seed))
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    report: dict[str, Any] = {
        "benchmark": "linearizability checker (issue 15 targets)",
        "seed": args.seed,
        "cpus": os.cpu_count(),
        "cases": results,
    }
    if not args.no_porcupine:
        report["porcupine_etcd"] = porcupine_part(args.cache, args.porcupine_src)
    if args.porcupine_cases:
        names = args.porcupine_cases.split(",")
        report["porcupine_cases"] = porcupine_cases(
            args.cache, args.porcupine_src, names, directory, args.seed
        )
    print(json.dumps(report, indent=2))
    return 0


def _child(name: str, directory: Path, seed: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", name, "--dir", str(directory), "--seed", str(seed)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT)
    if done.returncode != 0:
        return {"case": name, "error": done.stderr.strip()[-800:]}
    result: dict[str, Any] = json.loads(done.stdout)
    return result


if __name__ == "__main__":
    sys.exit(main())
