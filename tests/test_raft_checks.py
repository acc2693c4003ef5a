"""Raft's rules judged from the record (harness/raft_checks.py, harness/exactly_once.py), on
data directories written here: every anomaly kind is seen failing, and the clean record holds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.exactly_once import check_exactly_once
from harness.history import Op
from harness.raft_checks import (
    check_commits,
    check_config_changes,
    check_election_safety,
    check_leader_completeness,
    check_snapshot_continuation,
    check_votes,
    judge_record,
)
from harness.replay import ReplayResult, replay_cluster
from harness.workload import client_id
from raft.core.types import (
    ConfState,
    EntryKind,
    HardState,
    LogEntry,
    NodeId,
    Snapshot,
    SnapshotMeta,
)
from raft.kv import KVStore
from raft.storage import FileStorage

SEED = 9
NODES = ["n1", "n2", "n3"]


def cmd(f: str, key: str, value: Any, process: int | None, seq: int) -> bytes:
    body: dict[str, Any] = {"op": f, "key": key}
    if f == "write":
        body["value"] = value
    else:
        body["expected"], body["new"] = value
    if process is not None:
        body["client"], body["seq"] = client_id(SEED, process), seq
    return json.dumps(body).encode()


def write_dirs(tmp: Path, commands: list[bytes], *, term: int = 1, **per_node: Any) -> ReplayResult:
    """Every node holds the same log (a no-op, then ``commands``); ``per_node`` overrides."""
    for n in NODES:
        entries = [LogEntry(1, term, b"", EntryKind.NOOP)]
        entries += [LogEntry(i + 2, term, c) for i, c in enumerate(commands)]
        with FileStorage(tmp / n) as s:
            s.append_log(per_node.get(n, entries))
    return replay_cluster({n: tmp / n for n in NODES})


class History:
    def __init__(self) -> None:
        self.ops: list[Op] = []
        self.t = 0

    def op(self, process: int, f: str, key: str, value: Any, outcome: str, **done: Any) -> None:
        for type_, extra in (("invoke", {}), (outcome, done)):
            self.t += 1000
            v = value
            if f == "read":
                v = None if type_ == "invoke" else extra.pop("read", None)
            self.ops.append(Op.model_validate({
                "index": len(self.ops), "time": self.t, "process": process, "type": type_,
                "f": f, "key": key, "value": list(v) if isinstance(v, tuple) else v, **extra,
            }))  # fmt: skip


def exactly_once(replay: ReplayResult, h: History) -> dict[str, Any]:
    return check_exactly_once(replay, h.ops, seed=SEED)


def kinds(row: dict[str, Any]) -> list[str]:
    return [v["kind"] for v in row["violations"]]


def test_a_clean_record_holds_with_duplicates_taking_no_effect(tmp_path: Path) -> None:
    log = [cmd("write", "k", 1, 0, 1), cmd("cas", "k", (1, 2), 0, 2), cmd("cas", "k", (1, 2), 0, 2)]
    h = History()
    h.op(0, "write", "k", 1, "ok", node="n1")
    h.op(0, "cas", "k", (1, 2), "ok", node="n1")  # its copy at index 4 mismatches: no effect
    h.op(1, "read", "k", None, "ok", read=2, node="n2")
    row = exactly_once(write_dirs(tmp_path, log), h)
    assert row["ok"] is True, row
    assert "1 duplicate(s)" in row["saw"]


def test_a_cas_applied_twice_and_answered_mismatch_is_flagged(tmp_path: Path) -> None:
    """Issue 17's mixed run: the cas sat at two indexes and its client was told 'mismatch'."""
    log = [cmd("write", "k", 1, 0, 1), cmd("cas", "k", (1, 2), 0, 2), cmd("cas", "k", (1, 2), 0, 2)]
    h = History()
    h.op(0, "write", "k", 1, "ok")
    h.op(0, "cas", "k", (1, 2), "fail", error="mismatch", node="n1")
    row = exactly_once(write_dirs(tmp_path, log), h)
    assert row["ok"] is False
    (a,) = row["violations"]
    assert a["kind"] == "fail_took_effect"
    assert a["log_indexes"] == [3, 4]
    assert a["nodes"] == {"3": NODES, "4": NODES}
    assert a["client"] == client_id(SEED, 0)
    assert a["seq"] == 2


@pytest.mark.parametrize(
    ("log", "ops", "kind"),
    [
        ([], [(0, "write", "k", 5, "ok", {})], "ok_not_in_log"),
        (
            [cmd("write", "k", 1, 0, 1), cmd("cas", "k", (7, 8), 1, 1)],
            [(0, "write", "k", 1, "ok", {}), (1, "cas", "k", (7, 8), "ok", {})],
            "ok_without_effect",
        ),
        (
            [cmd("write", "k", 1, 0, 1)],
            [(0, "write", "k", 1, "ok", {}),
             (1, "cas", "k", (7, 8), "fail", {"error": "mismatch"})],
            "mismatch_not_in_log",
        ),
        (
            [cmd("write", "k", 1, 0, 1)],
            [(0, "write", "k", 1, "ok", {}), (1, "read", "k", None, "ok", {"read": 99})],
            "read_unwritten",
        ),
        (
            [cmd("write", "k", 1, 0, 1), cmd("write", "k", 2, 1, 1)],
            [(0, "write", "k", 1, "ok", {}), (1, "write", "k", 2, "ok", {}),
             (2, "read", "k", None, "ok", {"read": 1})],
            "stale_read",
        ),
        (
            [cmd("write", "k", 1, 0, 1)],
            [(0, "write", "k", 1, "fail", {"error": "not_leader"})],
            "fail_took_effect",
        ),
    ],
)  # fmt: skip
def test_each_anomaly_is_flagged(
    tmp_path: Path, log: list[bytes], ops: list[tuple[Any, ...]], kind: str
) -> None:
    h = History()
    for process, f, key, value, outcome, done in ops:
        h.op(process, f, key, value, outcome, **done)
    row = exactly_once(write_dirs(tmp_path, log), h)
    assert row["ok"] is False, row
    assert kinds(row) == [kind], row


def test_a_log_without_this_runs_sessions_is_not_applicable(tmp_path: Path) -> None:
    log = [cmd("write", "k", 1, None, 0)]
    h = History()
    h.op(0, "write", "k", 1, "ok")
    row = exactly_once(write_dirs(tmp_path, log), h)
    assert row["ok"] is None
    assert "no command of this run's clients" in row["saw"]


def compacted_dirs(tmp: Path, commands: list[bytes]) -> ReplayResult:
    """Every node has applied ``commands`` and compacted them all into its snapshot."""
    kv = KVStore()
    for c in commands:
        kv.apply(c)
    meta = SnapshotMeta(len(commands), 1, ConfState(frozenset(NODES)))
    for n in NODES:
        with FileStorage(tmp / n) as s:
            s.append_log([LogEntry(i + 1, 1, c) for i, c in enumerate(commands)])
            s.save_snapshot(Snapshot(meta, kv.snapshot()))
    return replay_cluster({n: tmp / n for n in NODES})


def test_everything_compacted_is_judged_from_the_snapshot(tmp_path: Path) -> None:
    """No node holds an entry (snapshot_entries = 1): the acknowledged write sits in the
    snapshot's sessions, so it is not 'acknowledged but not in the log'; a write that is in
    no session is."""
    replay = compacted_dirs(tmp_path, [cmd("write", "k", 1, 0, 1)])
    assert all(not s.log for s in replay.nodes.values())
    h = History()
    h.op(0, "write", "k", 1, "ok")
    row = exactly_once(replay, h)
    assert row["ok"] is True, row
    assert "not judged: before the snapshot" in row["saw"]
    h.op(1, "write", "k", 2, "ok")  # acknowledged, but in no snapshot and no log: lost
    row = exactly_once(replay, h)
    assert row["ok"] is False
    assert kinds(row) == ["ok_not_in_log"]


def roles(*leaders: tuple[str, int]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {n: [{"time": 0, "role": "follower", "term": 0}]
                                            for n in NODES}  # fmt: skip
    for k, (node, term) in enumerate(leaders):
        out[node].append({"time": k + 1, "role": "leader", "term": term})
    return out


def test_election_safety() -> None:
    assert check_election_safety(roles(("n1", 1), ("n2", 2)))["ok"] is True
    broken = check_election_safety(roles(("n1", 1), ("n2", 2), ("n3", 2)))
    assert broken["ok"] is False
    assert broken["violations"][0]["leaders"] == ["n2", "n3"]
    assert check_election_safety({n: [] for n in NODES})["ok"] is None


def vote_dirs(tmp: Path, votes: dict[str, list[tuple[int, str]]]) -> ReplayResult:
    for n in NODES:
        with FileStorage(tmp / n) as s:
            s.save_state(HardState(1, None))  # every node has been in term 1
            for term, cand in votes.get(n, []):
                s.save_state(HardState(term, NodeId(cand)))
    return replay_cluster({n: tmp / n for n in NODES})


def test_votes_one_per_term_across_restarts(tmp_path: Path) -> None:
    replay = vote_dirs(tmp_path, {"n1": [(1, "n1")], "n2": [(1, "n1")], "n3": [(1, "n1")]})
    with FileStorage(tmp_path / "n3") as s:  # a restart that forgot its vote, voting again
        s._state = HardState(1, None)
        s.save_state(HardState(1, NodeId("n2")))
    replay = replay_cluster({n: tmp_path / n for n in NODES})
    one, durable = check_votes(replay.nodes, roles(("n1", 1)), NODES)
    assert one["ok"] is False
    assert one["violations"][0] == {"node": "n3", "term": 1, "candidates": ["n1", "n2"],
                                    "times_ns": one["violations"][0]["times_ns"]}  # fmt: skip
    assert durable["ok"] is True


def test_a_leader_needs_a_durable_majority(tmp_path: Path) -> None:
    replay = vote_dirs(tmp_path, {"n1": [(1, "n1")], "n2": [(1, "n3")]})
    _, durable = check_votes(replay.nodes, roles(("n1", 1)), NODES)
    assert durable["ok"] is False
    assert durable["violations"][0]["durable_votes"] == ["n1"]


def test_without_vote_logs_the_vote_checks_are_not_applicable(tmp_path: Path) -> None:
    replay = vote_dirs(tmp_path, {})
    for n in NODES:
        (tmp_path / n / "votes").unlink()
    replay = replay_cluster({n: tmp_path / n for n in NODES})
    rows = check_votes(replay.nodes, roles(("n1", 1)), NODES)
    assert [r["ok"] for r in rows] == [None, None]


def commit_dirs(tmp: Path, marks: list[tuple[int, int, int]], n3_log: list[int]) -> ReplayResult:
    """n1 (the leader) and n2 hold terms [1, 1, 2, 2]; n3 holds ``n3_log``'s terms."""
    for n in NODES:
        terms = n3_log if n == "n3" else [1, 1, 2, 2]
        with FileStorage(tmp / n) as s:
            s.append_log([LogEntry(i + 1, t, b"x") for i, t in enumerate(terms)])
            if n == "n1":
                for m in marks:
                    s.note_commit(*m)
    return replay_cluster({n: tmp / n for n in NODES})


def test_commits_of_the_leaders_own_term_held_by_the_final_logs(tmp_path: Path) -> None:
    current, agree = check_commits(commit_dirs(tmp_path, [(4, 2, 2)], [1, 1, 2, 2]).nodes, NODES)
    assert current["ok"] is True
    assert agree["ok"] is True


def test_a_commit_of_an_earlier_terms_entry_is_flagged(tmp_path: Path) -> None:
    current, _ = check_commits(commit_dirs(tmp_path, [(2, 1, 2)], [1, 1, 2, 2]).nodes, NODES)
    assert current["ok"] is False
    assert current["violations"][0]["index"] == 2
    assert "committed index 2 of term 1 by counting" in current["saw"]


def test_a_committed_entry_changed_on_a_final_log_is_flagged(tmp_path: Path) -> None:
    _, agree = check_commits(commit_dirs(tmp_path, [(4, 2, 2)], [1, 1, 3, 3]).nodes, NODES)
    assert agree["ok"] is False
    assert agree["violations"][0]["differs_on"] == {"n3": 3}


def history_dirs(tmp: Path, writes: dict[str, list[list[tuple[int, int]]]]) -> ReplayResult:
    """Each node writes its appends in order (each a list of (index, term)); n1, the leader,
    notes that index 4 of term 2 is committed, with its first append."""
    for n in NODES:
        appends = writes.get(n, [[(1, 1), (2, 1), (3, 2), (4, 2)]])
        with FileStorage(tmp / n) as s:
            s.save_state(HardState(max(t for a in appends for _, t in a), None))
            if n == "n1":
                s.note_commit(4, 2, 2)
            for append in appends:
                s.append_log([LogEntry(i, t, b"x") for i, t in append])
    return replay_cluster({n: tmp / n for n in NODES})


def test_leader_completeness_holds_when_later_terms_come_after_committed_entries(
    tmp_path: Path,
) -> None:
    stale = [[(1, 1), (2, 1), (3, 1)], [(3, 2), (4, 2), (5, 3)]]  # a stale entry overwritten
    row = check_leader_completeness(history_dirs(tmp_path, {"n3": stale}).nodes)
    assert row["ok"] is True, row
    assert "1 commit decisions" in row["saw"]


def test_a_committed_entry_overwritten_by_a_later_term_is_flagged_from_the_wal(
    tmp_path: Path,
) -> None:
    """n3 led term 3 without index 4 (committed in term 2): it wrote its own entry at 3 and was
    repaired later; its final log shows nothing, its WAL does."""
    overwritten = [[(1, 1), (2, 1)], [(3, 3)], [(3, 2), (4, 2)]]
    replay = history_dirs(tmp_path, {"n3": overwritten})
    assert replay.valid, "the final logs agree"
    row = check_leader_completeness(replay.nodes)
    assert row["ok"] is False, row
    (v,) = row["violations"]
    assert (v["node"], v["index"], v["term"]) == ("n3", 3, 3)
    assert (v["committed_index"], v["committed_term"], v["committed_by"]) == (4, 2, "n1")
    assert "n3 wrote term 3 at index 3" in row["saw"]


def install_dirs(tmp: Path, after_term: int) -> ReplayResult:
    """n1 led term 2 and committed index 3 (term 2); n3 held a conflicting suffix of term 1,
    installed n1's snapshot at 3, then wrote index 4 with ``after_term``."""
    kv = KVStore()
    meta = SnapshotMeta(3, 2, ConfState(frozenset(NODES)))
    for n in NODES:
        with FileStorage(tmp / n) as s:
            s.save_state(HardState(2, None))
            if n == "n1":
                s.note_commit(3, 2, 2)
            if n != "n3":
                s.append_log([LogEntry(i, t, b"x") for i, t in [(1, 1), (2, 1), (3, 2)]])
                continue
            s.append_log([LogEntry(i, 1, b"x") for i in range(1, 6)])
            s.save_snapshot(Snapshot(meta, kv.snapshot()))  # does not continue: log emptied
            s.append_log([LogEntry(4, after_term, b"x")])
    return replay_cluster({n: tmp / n for n in NODES})


def test_a_log_that_continues_its_snapshot_holds(tmp_path: Path) -> None:
    row = check_snapshot_continuation(install_dirs(tmp_path, after_term=2).nodes)
    assert row["ok"] is True, row
    assert "1 log(s) started afresh" in row["saw"]


def test_a_conflicting_suffix_kept_after_a_snapshot_is_flagged(tmp_path: Path) -> None:
    """The classic InstallSnapshot bug: n3 kept (4, term 1) after installing (3, term 2)."""
    row = check_snapshot_continuation(install_dirs(tmp_path, after_term=1).nodes)
    assert row["ok"] is False, row
    (v,) = row["violations"]
    assert (v["node"], v["index"], v["term"]) == ("n3", 4, 1)
    assert (v["committed_index"], v["committed_term"], v["committed_by"]) == (3, 2, "n1")


def config_dirs(tmp: Path, appends: list[tuple[list[tuple[int, EntryKind]], int]]) -> ReplayResult:
    """n1, leader of term 1, writes each append (index, kind) after noting the commit index
    given with it (0: none); the followers hold nothing."""
    for n in NODES:
        with FileStorage(tmp / n) as s:
            s.save_state(HardState(1, "n1"))
            if n != "n1":
                continue
            for entries, committed in appends:
                if committed:
                    s.note_commit(committed, 1, 1)
                s.append_log([LogEntry(i, 1, b"x", kind) for i, kind in entries])
    return replay_cluster({n: tmp / n for n in NODES})


NOOP, NORMAL, CONFIG = EntryKind.NOOP, EntryKind.NORMAL, EntryKind.CONFIG


def test_a_configuration_change_after_the_last_one_committed_holds(tmp_path: Path) -> None:
    replay = config_dirs(tmp_path, [([(1, NOOP), (2, CONFIG)], 0), ([(3, NORMAL), (4, CONFIG)], 2)])
    row = check_config_changes(replay.nodes, roles(("n1", 1)))
    assert row["ok"] is True, row
    assert row["saw"].startswith("1 configuration change(s)")
    assert check_config_changes(replay.nodes, roles())["ok"] is None, "nobody led term 1"


def test_two_configuration_changes_in_flight_are_flagged(tmp_path: Path) -> None:
    replay = config_dirs(tmp_path, [([(1, NOOP), (2, CONFIG)], 1), ([(3, CONFIG)], 1)])
    row = check_config_changes(replay.nodes, roles(("n1", 1)))
    assert row["ok"] is False, row
    (v,) = row["violations"]
    assert (v["node"], v["index"], v["previous"], v["committed"]) == ("n1", 3, 2, 1)


def test_no_commit_records_is_not_applicable_and_the_verdict_ignores_it(tmp_path: Path) -> None:
    replay = commit_dirs(tmp_path, [], [1, 1, 2, 2])
    assert [r["ok"] for r in check_commits(replay.nodes, NODES)] == [None, None]
    judged = judge_record(replay, roles(), NODES, [], seed=SEED)
    assert judged["valid"] is True
    assert {c["name"] for c in judged["checks"]} == {
        "election_safety", "votes_one_per_term", "leader_votes_durable", "commit_current_term",
        "committed_entries_agree", "leader_completeness", "snapshot_continuation",
        "one_config_change_at_a_time", "exactly_once",
    }  # fmt: skip


def test_the_report_has_a_row_per_check_and_never_calls_no_data_held() -> None:
    from harness.report_data import Run
    from harness.report_raft import section_raft

    raft = {"valid": False, "checks": [
        {"name": "election_safety", "ok": True, "saw": "3 terms with a leader",
         "violations": []},
        {"name": "exactly_once", "ok": False, "saw": "fail_took_effect: cas k1",
         "violations": [{"kind": "fail_took_effect", "log_indexes": [852, 854]}],
         "violation_count": 1},
        {"name": "votes_one_per_term", "ok": None, "saw": "no vote log", "violations": []},
    ]}  # fmt: skip
    run = Run(Path("/x"), [], [], [], {"raft": raft}, {}, None, 0)
    html = section_raft(run)
    assert html.index("exactly_once") < html.index("election_safety"), "broken rows first"
    assert "BROKEN" in html
    assert "not applicable" in html
    assert html.count("held") == 1
    assert "852" in html
    assert "No Raft checks" in section_raft(Run(Path("/x"), [], [], [], {}, {}, None, 0))
