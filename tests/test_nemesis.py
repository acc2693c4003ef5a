"""The nemesis schedule (pure, seeded) and executor (against a fake cluster); workload ops."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from chaos.nemesis import AppliedFault, NemesisExecutor, make_schedule, schedule_json
from harness.scenario import Scenario, ScenarioError, load_scenario, parse_scenario
from harness.workload import op_stream

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def scenario(*nemesis: dict[str, Any], **extra: Any) -> Scenario:
    doc = {"name": "t", "nodes": ["n1", "n2", "n3", "n4", "n5"], "nemesis": list(nemesis)}
    return parse_scenario({**doc, **extra})


RECURRING = {"kind": "partition", "shape": "halves", "interval": 4.0, "jitter": 0.5,
             "duration": 2.0}  # fmt: skip


def test_same_seed_same_schedule() -> None:
    sc = scenario(RECURRING, {"kind": "kill", "target": "random", "interval": 3, "jitter": 1})
    a, b = make_schedule(sc, 42, 60.0), make_schedule(sc, 42, 60.0)
    assert schedule_json(a) == schedule_json(b)
    assert schedule_json(a) != schedule_json(make_schedule(sc, 43, 60.0))


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.toml")), ids=lambda p: p.stem)
def test_shipped_schedules_are_well_formed(path: Path) -> None:
    sc, _ = load_scenario(path)
    ops = make_schedule(sc, sc.seed, sc.duration)
    assert ops, "every shipped scenario injects faults"
    assert [op.at for op in ops] == sorted(op.at for op in ops)
    spans: dict[int, list[float]] = {}
    for op in ops:
        spans.setdefault(op.id, []).append(op.at)
        assert 0 <= op.at <= sc.duration
    intervals = sorted((s[0], s[1]) for s in spans.values())
    assert all(len(s) == 2 and s[0] < s[1] for s in spans.values())
    for (_, end), (start, _) in itertools.pairwise(intervals):
        assert end <= start, "faults never overlap"


def test_scheduled_fault_takes_priority_and_recurring_ones_skip_it() -> None:
    sc = scenario({"kind": "pause", "interval": 1.0, "duration": 0.5, "start": 0.0},
                  {"kind": "kill", "at": 2.2, "duration": 3.0, "target": "n2"})  # fmt: skip
    ops = make_schedule(sc, 1, 10.0)
    kill = [op for op in ops if op.kind == "kill"]
    assert [(op.at, op.action) for op in kill] == [(2.2, "start"), (5.2, "stop")]
    assert kill[0].params["fallback"] == "n2"
    pauses = [op.at for op in ops if op.kind == "pause" and op.action == "start"]
    assert all(not 1.7 < t < 5.2 for t in pauses)


def test_stops_are_clipped_to_the_duration() -> None:
    sc = scenario({"kind": "kill", "at": 9.0, "duration": 5.0})
    assert [op.at for op in make_schedule(sc, 1, 10.0)] == [9.0, 10.0]
    assert make_schedule(sc, 1, 8.0) == []


def test_halves_and_groups_are_drawn_at_schedule_time() -> None:
    sc = scenario(
        RECURRING,
        {"kind": "partition", "shape": "groups", "groups": ["a", "b"], "at": 0.5,
         "duration": 1.0},
        groups={"a": ["n1", "n2"], "b": ["n3", "n4", "n5"]},
    )  # fmt: skip
    ops = [op for op in make_schedule(sc, 5, 30.0) if op.action == "start"]
    assert ops[0].params["groups"] == [["n1", "n2"], ["n3", "n4", "n5"]]
    for op in ops[1:]:
        sides = op.params["groups"]
        assert sorted(len(g) for g in sides) == [2, 3]
        assert sorted(sides[0] + sides[1]) == ["n1", "n2", "n3", "n4", "n5"]


def test_workload_ops_are_seeded_and_values_unique() -> None:
    sc, _ = load_scenario(CONFIGS / "antarctic-split-brain.toml")
    w = sc.workload

    def first(seed: int, slot: int) -> list[Any]:
        return [op.to_json() for op in itertools.islice(op_stream(w, seed, slot), 300)]

    assert first(7, 0) == first(7, 0)
    assert first(7, 0) != first(8, 0)
    written = [
        op.value if op.f == "write" else op.value[1]  # type: ignore[index]
        for slot in range(w.clients)
        for op in itertools.islice(op_stream(w, 7, slot), 300)
        if op.f != "read"
    ]
    assert len(written) == len(set(written)), "written values are unique in the run"
    kinds = {op.f for op in itertools.islice(op_stream(w, 7, 0), 300)}
    assert kinds == {"read", "write", "cas"}


# ---- the executor against a fake cluster ---------------------------------------------------
class FakeProc:
    def __init__(self) -> None:
        self.paused = False
        self.running = True

    def alive(self) -> bool:
        return self.running

    def stop(self) -> None:
        self.running = False


class FakeSpec:
    nodes = ("n1", "n2", "n3", "n4", "n5")


class FakeCluster:
    def __init__(self, leader: str | None) -> None:
        self.spec = FakeSpec()
        self.client_addr = {n: f"127.0.0.1:{9000 + k}" for k, n in enumerate(self.spec.nodes)}
        self.procs = {n: FakeProc() for n in self.spec.nodes}
        self.network = object()
        self.calls: list[tuple[Any, ...]] = []
        self._leader = leader
        self.clocks: dict[str, Any] = {}
        self.disks: dict[str, Any] = {}
        self.retired: set[str] = set()

    @property
    def members(self) -> list[str]:
        return [n for n in self.spec.nodes if n not in self.retired]

    async def leader(self) -> tuple[str, int] | None:
        return None if self._leader is None else (self._leader, 3)

    def alive(self, node: str) -> bool:
        return self.procs[node].running

    def paused(self, node: str) -> bool:
        return self.procs[node].paused

    def kill(self, node: str) -> None:
        self.calls.append(("kill", node))
        self.procs[node].running = False

    def restart(self, node: str) -> None:
        self.calls.append(("restart", node))
        self.procs[node].running = True

    def pause(self, node: str) -> None:
        self.calls.append(("pause", node))
        self.procs[node].paused = True

    def resume(self, node: str) -> None:
        self.calls.append(("resume", node))
        self.procs[node].paused = False

    def partition(self, groups: list[list[str]], clients: dict[str, int]) -> None:
        self.calls.append(("partition", groups, clients))

    def heal(self) -> None:
        self.calls.append(("heal",))

    def keys(self, role: str = "client") -> None:
        return None  # no CURVE keys


def run_executor(cluster: FakeCluster, sc: Scenario, duration: float, **kw: Any) -> NemesisExecutor:
    ex = NemesisExecutor(cluster, make_schedule(sc, 1, duration), **kw)  # type: ignore[arg-type]
    asyncio.run(ex.run(time.monotonic()))
    return ex


def test_executor_resolves_the_leader_at_run_time_and_stops_the_same_node() -> None:
    cluster = FakeCluster(leader="n3")
    sc = scenario({"kind": "kill", "target": "leader", "at": 0.0, "duration": 0.05})
    ex = run_executor(cluster, sc, 1.0)
    assert cluster.calls == [("kill", "n3"), ("restart", "n3")]
    assert ex.applied[0].leader_before == ("n3", 3)
    assert not ex.active


def test_executor_falls_back_to_the_drawn_node_without_a_leader() -> None:
    cluster = FakeCluster(leader=None)
    sc = scenario({"kind": "pause", "target": "leader", "at": 0.0, "duration": 0.05})
    fallback = make_schedule(sc, 1, 1.0)[0].params["fallback"]
    run_executor(cluster, sc, 1.0)
    assert cluster.calls == [("pause", fallback), ("resume", fallback)]


def test_executor_places_clients_with_their_group() -> None:
    cluster = FakeCluster(leader="n4")
    sc = scenario(
        {"kind": "partition", "shape": "groups", "groups": ["north", "south"], "at": 0.0,
         "duration": 0.05},
        groups={"north": ["n1", "n2", "n3"], "south": ["n4", "n5"]},
    )  # fmt: skip
    groups = {"client-north": "north", "client-south": "south"}
    run_executor(cluster, sc, 1.0, client_groups=groups)
    assert cluster.calls[0] == (
        "partition", [["n1", "n2", "n3"], ["n4", "n5"]], {"client-north": 0, "client-south": 1}
    )  # fmt: skip
    assert cluster.calls[1] == ("heal",)


def test_heal_all_ends_everything_even_mid_fault() -> None:
    cluster = FakeCluster(leader="n1")
    sc = scenario({"kind": "kill", "target": "leader", "at": 0.0, "duration": 5.0})
    ex = NemesisExecutor(cluster, make_schedule(sc, 1, 10.0))  # type: ignore[arg-type]

    async def cut_short() -> None:
        task = asyncio.create_task(ex.run(time.monotonic()))
        await asyncio.sleep(0.05)
        task.cancel()

    asyncio.run(cut_short())
    cluster.procs["n2"].paused = True
    ex.heal_all()
    assert ("restart", "n1") in cluster.calls
    assert ("resume", "n2") in cluster.calls
    assert ("heal",) in cluster.calls
    assert all(p.running and not p.paused for p in cluster.procs.values())


class SlowRestartCluster(FakeCluster):
    """A restart that takes a while in its thread (a process spawning under load): the node
    counts as down until the spawn returns, as a real process does. The spawn ends once
    somebody else has looked at the node meanwhile (or after 0.5 s): no race on the clock."""

    def __init__(self, leader: str | None) -> None:
        super().__init__(leader)
        self.restarting = threading.Event()
        self.looked = threading.Event()

    def alive(self, node: str) -> bool:
        up = super().alive(node)
        if self.restarting.is_set():
            self.looked.set()
        return up

    def restart(self, node: str) -> None:
        self.restarting.set()
        self.looked.wait(0.5)
        super().restart(node)


def cancel_mid_restart(ex: NemesisExecutor, cluster: SlowRestartCluster, settle: bool) -> None:
    """The run's end: the nemesis is cancelled while its restart of n1 is under way in a
    thread; the heal follows (after :meth:`NemesisExecutor.settle` when ``settle``)."""

    async def end_of_run() -> None:
        task = asyncio.create_task(ex.run(time.monotonic()))
        while not cluster.restarting.is_set():
            await asyncio.sleep(0.005)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        if settle:
            await ex.settle()
        await asyncio.to_thread(ex.heal_all)
        await ex.settle()  # the test's own cleanup: no thread outlives the loop

    asyncio.run(end_of_run())


@pytest.mark.parametrize("settle", [True, False])
def test_the_heal_waits_for_a_restart_still_under_way(settle: bool) -> None:
    """A heal that looked while a cancelled restart was still spawning saw the node down and
    started it a second time (two processes on one data directory); ``settle`` first, as the
    runner does, and it is started once. Without ``settle`` the double start shows."""
    cluster = SlowRestartCluster(leader="n1")
    sc = scenario({"kind": "kill", "target": "leader", "at": 0.0, "duration": 0.05})
    ex = NemesisExecutor(cluster, make_schedule(sc, 1, 10.0))  # type: ignore[arg-type]
    cancel_mid_restart(ex, cluster, settle)
    restarts = cluster.calls.count(("restart", "n1"))
    assert restarts == (1 if settle else 2), cluster.calls


@pytest.mark.parametrize(("target", "count"), [("minority", 2), ("majority", 3), ("all", 5)])
def test_group_targets_are_drawn_at_schedule_time_and_all_restart(target: str, count: int) -> None:
    cluster = FakeCluster(leader="n1")
    sc = scenario({"kind": "kill", "target": target, "at": 0.0, "duration": 0.05})
    drawn = make_schedule(sc, 1, 1.0)[0].params["nodes"]
    assert len(drawn) == count == len(set(drawn))
    ex = run_executor(cluster, sc, 1.0)
    assert cluster.calls == [("kill", n) for n in drawn] + [("restart", n) for n in drawn]
    assert ex.applied[0].nodes == drawn
    assert all(p.running for p in cluster.procs.values())


def test_follower_target_never_picks_the_leader() -> None:
    for seed in range(20):
        cluster = FakeCluster(leader="n2")
        sc = scenario({"kind": "kill", "target": "follower", "at": 0.0, "duration": 0.01})
        ex = NemesisExecutor(cluster, make_schedule(sc, seed, 1.0))  # type: ignore[arg-type]
        asyncio.run(ex.run(time.monotonic()))
        (killed,) = ex.applied[0].nodes
        assert killed != "n2"
        assert cluster.calls == [("kill", killed), ("restart", killed)]


def test_a_target_that_is_down_is_left_out() -> None:
    cluster = FakeCluster(leader="n1")
    sc = scenario({"kind": "kill", "target": "all", "at": 0.0, "duration": 0.05})
    cluster.procs["n3"].running = False
    ex = run_executor(cluster, sc, 1.0)
    assert ex.applied[0].nodes == ["n1", "n2", "n4", "n5"]
    assert ("kill", "n3") not in cluster.calls


def test_kill_storm_is_many_short_kills() -> None:
    sc = scenario({"kind": "kill", "target": "random", "interval": 0.5, "duration": 0.25,
                   "jitter": 0.2, "start": 0.5, "stop": 5.0})  # fmt: skip
    starts = [op for op in make_schedule(sc, 3, 6.0) if op.action == "start"]
    assert len(starts) >= 8
    assert len({op.params["fallback"] for op in starts}) > 1, "random nodes, not one"


def test_group_targets_are_for_process_faults_and_removals_only() -> None:
    only = "applies to kill, pause, transfer and membership remove only"
    with pytest.raises(ScenarioError, match=only):
        scenario({"kind": "partition", "target": "majority", "at": 1.0})
    with pytest.raises(ScenarioError, match=only):
        scenario({"kind": "membership", "membership": "add", "target": "all", "at": 1.0},
                 spares=["n6"])  # fmt: skip
    scenario({"kind": "membership", "membership": "remove", "target": "minority", "at": 1.0})


def test_removals_at_once_ask_the_leader_together_and_stop_what_it_removed() -> None:
    """Two operators remove a node each at the same moment: the leader takes one change and
    refuses the other while it is uncommitted; only the removed node is stopped."""
    cluster = FakeCluster(leader="n2")
    sc = scenario({"kind": "membership", "membership": "remove", "target": "minority",
                   "at": 0.0, "duration": 0.05})  # fmt: skip
    asked: list[str] = []

    async def remove_member(node: str) -> dict[str, Any]:  # the system's membership change
        asked.append(node)
        await asyncio.sleep(0)  # both requests are in flight before either is answered
        if len(asked) < 2:
            raise AssertionError("not at once")
        if node == min(asked):
            return {"removed": node}
        raise RuntimeError("refused: a membership change is still pending")

    cluster.remove_member = remove_member  # type: ignore[attr-defined]
    cluster.stop_node = lambda node: cluster.kill(node)  # type: ignore[attr-defined]
    events: list[tuple[str, str, dict[str, Any]]] = []
    ex = run_executor(cluster, sc, 1.0, on_fault=lambda *e: events.append(e))
    f = ex.applied[0]
    assert len(f.nodes) == 2
    assert sorted(asked) == sorted(f.nodes)
    first, second = sorted(f.nodes)
    assert f.params["applied"] == {
        "membership": "remove", "removed": [first],
        "refused": {second: "refused: a membership change is still pending"},
    }  # fmt: skip
    assert cluster.retired == {first}
    assert not cluster.procs[first].running
    assert cluster.procs[second].running
    assert [(k, a) for k, a, _ in events] == [("membership", "start")]


def test_transfer_asks_the_leader_for_every_target_at_once() -> None:
    cluster = FakeCluster(leader="n2")
    sc = scenario({"kind": "transfer", "target": "all", "at": 0.0, "duration": 0.05})
    asked: list[tuple[str, str]] = []

    async def transfer_leader(leader: str, target: str) -> None:  # the system's capability
        asked.append((leader, target))

    cluster.transfer_leader = transfer_leader  # type: ignore[attr-defined]
    events: list[tuple[str, str, dict[str, Any]]] = []
    ex = run_executor(cluster, sc, 1.0, on_fault=lambda *e: events.append(e))
    assert sorted(asked) == [("n2", "n1"), ("n2", "n3"), ("n2", "n4"), ("n2", "n5")]
    assert ex.applied[0].nodes == ["n1", "n3", "n4", "n5"]
    assert [(k, a) for k, a, _ in events] == [("transfer", "start"), ("transfer", "stop")]


def test_a_fault_still_going_at_the_end_has_no_applied_time() -> None:
    """A membership add that never completed was written with ``applied`` = minus the run's
    start (its unset time, 0, made relative): a time that never happened."""
    going = AppliedFault(id=0, kind="membership", params={}, started_ns=5_000)
    assert going.to_json(run_start_ns=1_000)["applied"] is None
    assert going.to_json(run_start_ns=1_000)["start"] == 4_000
    going.applied_ns = 7_000
    assert going.to_json(run_start_ns=1_000)["applied"] == 6_000


def test_settle_is_bounded_and_says_so() -> None:
    """A fault call that outlives ``settle``'s bound: settle says False rather than hang the
    run's end, and True once nothing is running."""
    ex = NemesisExecutor(FakeCluster(leader=None), [])  # type: ignore[arg-type]
    release = threading.Event()

    async def main() -> tuple[bool, bool]:
        job = asyncio.create_task(ex._thread(release.wait, 5.0))
        await asyncio.sleep(0)
        early = await ex.settle(timeout=0.05)
        release.set()
        await job
        return early, await ex.settle(timeout=5.0)

    assert asyncio.run(main()) == (False, True)
