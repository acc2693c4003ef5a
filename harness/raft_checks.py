"""Raft's own rules, judged from what the nodes wrote: roles, votes and commit decisions.

Theory of operation
-------------------
Linearizability judges what clients saw; these checks judge the protocol itself, from the
records every node leaves on disk, so a broken rule is caught even when no client happened to
observe it (issue 17). Each check is a *row*: ``{"name", "ok", "saw", "violations"}`` where
``ok`` is ``True`` (held), ``False`` (broken: ``violations`` say where) or ``None`` (not
applicable: the run left no data for it, e.g. a system without a vote log; never "met").

* ``election_safety`` — at most one leader per term (Raft §5.2), over every node's
  ``roles.jsonl`` (the runner adds ``down`` at kills and pauses; a restarted node appends to
  the same file, so one file covers every incarnation of a node).
* ``votes_one_per_term`` — no node granted its vote to two different candidates in one term,
  across restarts: the vote log (``DATA/votes``, written in the same persist as the vote)
  survives restarts, so a vote forgotten by a restart and granted again shows here.
* ``leader_votes_durable`` — every leader of the record has a majority of *durable* votes for
  it in its term (its own included). A vote is on the log before its reply may leave, so a
  leader elected with a vote that was replied before it was durable (and then lost by a
  crash), or with a vote that was never persisted, shows here.
* ``commit_current_term`` — every commit decision a leader recorded (the WAL's ``COMMIT``
  records) is of an entry of the leader's own term: Raft §5.4.2, a leader never commits an
  earlier term's entry by counting its replicas.
* ``committed_entries_agree`` — every index a leader recorded as committed is held, with that
  term, by a majority of the final logs and differently by none (a node whose snapshot covers
  the index counts as holding it).
* ``leader_completeness`` — no node ever wrote an entry at or below an index a leader
  committed with a term greater than the committed entry's (Raft §5.4, Leader Completeness:
  every leader holds every entry committed before it, and a leader only appends after its
  log, so a later term at or below a committed index means a leader without that entry).
  Judged from every node's whole WAL history (:mod:`harness.wal_history`), so an entry that
  overwrote a committed one is caught even when a later repair left no trace in the final
  logs.
* ``snapshot_continuation`` — the log a node writes right after emptying it for a snapshot
  continues that snapshot: its first entry has no term below one committed at or before the
  snapshot point (Raft §7: a follower keeps the entries after a snapshot only if its log holds
  the snapshot's last entry; log terms never decrease). Also from the WAL histories, so a
  conflicting suffix kept by an InstallSnapshot and overwritten later is still seen.
* ``one_config_change_at_a_time`` — a leader appends a configuration entry only once the one
  before it in its log is committed (dissertation §4.1: single-server changes are safe only
  one at a time). Judged from each leader's WAL: when it wrote a configuration entry of its
  own term (``roles.jsonl`` says it led that term), its ``COMMIT`` records so far must reach
  the configuration entry before it.
* ``exactly_once`` — :mod:`harness.exactly_once`.

:func:`judge_record` runs them all; the runner stores the result as ``results.json``'s
``raft`` (``{"valid", "checks"}``) and the report shows a row per check.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from harness.exactly_once import check_exactly_once
from harness.history import Op
from harness.replay import NodeStorage, ReplayResult
from harness.wal_history import config_appends, fresh_starts, written_terms
from raft.wal import StorageError

#: violations kept per check in results.json (the count is always complete)
MAX_VIOLATIONS = 20

Roles = Mapping[str, Sequence[Mapping[str, Any]]]


def row(
    name: str, ok: bool | None, saw: str, violations: Sequence[dict[str, Any]] = ()
) -> dict[str, Any]:
    """One check's outcome as results.json stores it."""
    return {
        "name": name,
        "ok": ok,
        "saw": saw,
        "violations": list(violations[:MAX_VIOLATIONS]),
        "violation_count": len(violations),
    }


def leaders_by_term(roles: Roles) -> dict[int, dict[str, int]]:
    """term -> {node: time (ns since the run start) it first recorded leading that term}."""
    out: dict[int, dict[str, int]] = defaultdict(dict)
    for node, entries in roles.items():
        for e in entries:
            if e.get("role") == "leader":
                out[int(e["term"])].setdefault(node, int(e["time"]))
    return dict(out)


def check_election_safety(roles: Roles) -> dict[str, Any]:
    """At most one leader per term, over every node's roles.jsonl."""
    if not any(roles.values()):
        return row("election_safety", None, "no roles.jsonl: roles were not recorded")
    leaders = leaders_by_term(roles)
    bad: list[dict[str, Any]] = [
        {"term": term, "leaders": sorted(who), "since_ns": who}
        for term, who in sorted(leaders.items())
        if len(who) > 1
    ]
    per_node: dict[str, int] = defaultdict(int)
    for who in leaders.values():
        for n in who:
            per_node[n] += 1
    spread = ", ".join(f"{n}: {k}" for n, k in sorted(per_node.items()))
    saw = f"{len(leaders)} terms with a leader ({spread or 'none'})"
    if bad:
        first = bad[0]
        saw = f"term {first['term']} had {len(first['leaders'])} leaders {first['leaders']}; {saw}"
    return row("election_safety", not bad, saw, bad)


def check_votes(
    nodes: Mapping[str, NodeStorage],
    roles: Roles,
    cluster: Sequence[str],
    majority: int | None = None,
) -> list[dict[str, Any]]:
    """``votes_one_per_term`` and ``leader_votes_durable`` (see the module docstring)."""
    logs = {n: s.votes for n, s in nodes.items() if s.votes is not None}
    if not logs:
        missing = "no vote log in any data directory (not recorded by this system)"
        return [
            row("votes_one_per_term", None, missing),
            row("leader_votes_durable", None, missing),
        ]
    double: list[dict[str, Any]] = []
    total = 0
    for node, votes in sorted(logs.items()):
        total += len(votes)
        granted: dict[int, dict[str, int]] = defaultdict(dict)
        for v in votes:
            granted[v.term].setdefault(v.candidate, v.time_ns)
        for term, who in sorted(granted.items()):
            if len(who) > 1:
                double.append({"node": node, "term": term, "candidates": sorted(who),
                               "times_ns": who})  # fmt: skip
    saw = f"{total} votes on the logs of {len(logs)} of {len(cluster)} nodes"
    if double:
        d = double[0]
        saw = f"{d['node']} voted for {' and '.join(d['candidates'])} in term {d['term']}; {saw}"
    first = row("votes_one_per_term", not double, saw, double)
    return [first, _leader_votes(logs, roles, cluster, majority or len(cluster) // 2 + 1)]


def _leader_votes(
    logs: Mapping[str, Sequence[Any]], roles: Roles, cluster: Sequence[str], majority: int
) -> dict[str, Any]:
    unlogged = [n for n in cluster if n not in logs]
    voted: dict[tuple[int, str], set[str]] = defaultdict(set)
    for node, votes in logs.items():
        for v in votes:
            voted[(v.term, v.candidate)].add(node)
    bad, judged, unjudged = [], 0, 0
    for term, who in sorted(leaders_by_term(roles).items()):
        for leader in sorted(who):
            voters = voted.get((term, leader), set())
            if len(voters) >= majority:
                judged += 1
            elif len(voters) + len(unlogged) >= majority:
                unjudged += 1  # the nodes without a log may hold the missing votes
            else:
                judged += 1
                bad.append({"term": term, "leader": leader, "durable_votes": sorted(voters),
                            "majority": majority})  # fmt: skip
    if judged == 0:
        return row("leader_votes_durable", None,
                   f"no leader could be judged ({unjudged} without enough vote logs)")  # fmt: skip
    saw = f"{judged} leader(s) judged, {judged - len(bad)} with a majority of durable votes"
    if unjudged:
        saw += f", {unjudged} not judged (nodes without a vote log)"
    if bad:
        b = bad[0]
        saw = (
            f"{b['leader']} led term {b['term']} with durable votes from "
            f"{b['durable_votes'] or 'nobody'} (a majority is {majority}); {saw}"
        )
    return row("leader_votes_durable", not bad, saw, bad)


def check_commits(
    nodes: Mapping[str, NodeStorage], cluster: Sequence[str], majority: int | None = None
) -> list[dict[str, Any]]:
    """``commit_current_term`` and ``committed_entries_agree`` (see the module docstring)."""
    marks = [(n, m) for n, s in sorted(nodes.items()) for m in s.commits]
    if not marks:
        missing = "no commit records in any WAL (not recorded by this system, or no leader)"
        return [
            row("commit_current_term", None, missing),
            row("committed_entries_agree", None, missing),
        ]
    earlier = [
        {"node": n, "index": m.index, "entry_term": m.term, "leader_term": m.leader_term,
         "time_ns": m.time_ns}
        for n, m in marks
        if m.term != m.leader_term
    ]  # fmt: skip
    leaders = sorted({n for n, _ in marks})
    terms = sorted({m.leader_term for _, m in marks})
    saw = (
        f"{len(marks)} commit decisions by {', '.join(leaders)} in {len(terms)} term(s), "
        f"highest index {max(m.index for _, m in marks)}"
    )
    first = row("commit_current_term", not earlier, saw, earlier)
    if earlier:
        e = earlier[0]
        first["saw"] = (
            f"{e['node']} (leader of term {e['leader_term']}) committed index {e['index']} "
            f"of term {e['entry_term']} by counting; {saw}"
        )
    return [first, _committed_agree(nodes, marks, majority or len(cluster) // 2 + 1)]


def _committed_agree(
    nodes: Mapping[str, NodeStorage], marks: Sequence[tuple[str, Any]], majority: int
) -> dict[str, Any]:
    bad: list[dict[str, Any]] = []
    seen: set[tuple[int, int]] = set()
    for leader, m in marks:
        if (m.index, m.term) in seen:
            continue
        seen.add((m.index, m.term))
        holders, differ = [], {}
        for n, s in sorted(nodes.items()):
            if s.snapshot is not None and s.snapshot.index > m.index:
                holders.append(n)  # compacted into a snapshot: applied, so committed there
                continue
            found = _term_at(s, m.index)
            if found is None:
                continue
            if found == m.term:
                holders.append(n)
            else:
                differ[n] = found
        if differ or len(holders) < majority:
            bad.append({"index": m.index, "term": m.term, "committed_by": leader,
                        "leader_term": m.leader_term, "held_by": holders,
                        "differs_on": differ})  # fmt: skip
    saw = f"{len(seen)} committed (index, term) pairs checked against {len(nodes)} final logs"
    if bad:
        b = bad[0]
        how = (
            f"term {sorted(set(b['differs_on'].values()))} on {sorted(b['differs_on'])}"
            if b["differs_on"]
            else f"held by {len(b['held_by'])} nodes only"
        )
        saw = (
            f"index {b['index']} committed by {b['committed_by']} in term {b['term']}: {how}; {saw}"
        )
    return row("committed_entries_agree", not bad, saw, bad)


def check_leader_completeness(nodes: Mapping[str, NodeStorage]) -> dict[str, Any]:
    """``leader_completeness`` (see the module docstring)."""
    name = "leader_completeness"
    marks = sorted(
        (m.index, m.term, n, m.leader_term)
        for n, s in nodes.items()
        for m in s.commits
        if m.term >= 0  # -1: the entry was compacted when the decision was noted
    )
    if not marks:
        return row(name, None, "no commit records in any WAL (not recorded by this system)")
    # the lowest term committed at or above each mark's index: an entry written at index j
    # may not carry a term above that of any entry committed at an index >= j
    lowest = [m[1] for m in marks]
    for k in range(len(lowest) - 2, -1, -1):
        lowest[k] = min(lowest[k], lowest[k + 1])
    indexes = [m[0] for m in marks]
    bad: list[dict[str, Any]] = []
    pairs, unread = 0, []
    for node, s in sorted(nodes.items()):
        try:
            written = written_terms(s.directory)
        except (OSError, StorageError):
            unread.append(node)
            continue
        pairs += len(written)
        for index, term in sorted(written.items()):
            k = bisect.bisect_left(indexes, index)
            if k < len(marks) and term > lowest[k]:
                over = next(m for m in marks[k:] if m[1] == lowest[k])
                bad.append({"node": node, "index": index, "term": term,
                            "committed_index": over[0], "committed_term": over[1],
                            "committed_by": over[2], "leader_term": over[3]})  # fmt: skip
    saw = (
        f"{len(marks)} commit decisions held against {pairs} (index, term) pairs the nodes "
        "ever wrote"
    )
    if unread:
        saw += f" ({', '.join(unread)}: WAL history unreadable)"
    if bad:
        b = bad[0]
        saw = (
            f"{b['node']} wrote term {b['term']} at index {b['index']}, at or below index "
            f"{b['committed_index']} that {b['committed_by']} committed with term "
            f"{b['committed_term']}; {saw}"
        )
    return row(name, not bad, saw, bad)


def check_snapshot_continuation(nodes: Mapping[str, NodeStorage]) -> dict[str, Any]:
    """``snapshot_continuation`` (see the module docstring)."""
    name = "snapshot_continuation"
    marks = sorted((m.index, m.term, n) for n, s in nodes.items() for m in s.commits if m.term >= 0)
    if not marks:
        return row(name, None, "no commit records in any WAL (not recorded by this system)")
    highest = [m[1] for m in marks]  # the highest term committed at or below each mark
    for k in range(1, len(highest)):
        highest[k] = max(highest[k], highest[k - 1])
    indexes = [m[0] for m in marks]
    bad: list[dict[str, Any]] = []
    starts, unread = 0, []
    for node, s in sorted(nodes.items()):
        try:
            found = fresh_starts(s.directory)
        except (OSError, StorageError):
            unread.append(node)
            continue
        for index, term in found:
            starts += 1
            k = bisect.bisect_right(indexes, index - 1) - 1
            if index > 1 and k >= 0 and term < highest[k]:
                below = next(m for m in marks[: k + 1] if m[1] == highest[k])
                bad.append({"node": node, "index": index, "term": term,
                            "committed_index": below[0], "committed_term": below[1],
                            "committed_by": below[2]})  # fmt: skip
    if starts == 0:
        why = "no node started its log afresh after a snapshot point"
        return row(name, None, why + (f" ({', '.join(unread)}: unreadable)" if unread else ""))
    saw = (
        f"{starts} log(s) started afresh after a snapshot point, held against {len(marks)} "
        "commit decisions"
    )
    if unread:
        saw += f" ({', '.join(unread)}: WAL history unreadable)"
    if bad:
        b = bad[0]
        saw = (
            f"{b['node']} started its log at index {b['index']} with term {b['term']}, after "
            f"index {b['committed_index']} was committed with term {b['committed_term']} by "
            f"{b['committed_by']}; {saw}"
        )
    return row(name, not bad, saw, bad)


def check_config_changes(nodes: Mapping[str, NodeStorage], roles: Roles) -> dict[str, Any]:
    """``one_config_change_at_a_time`` (see the module docstring)."""
    name = "one_config_change_at_a_time"
    led = {(n, int(e["term"])) for n, es in roles.items() for e in es if e.get("role") == "leader"}
    bad: list[dict[str, Any]] = []
    judged, unread = 0, []
    for node, s in sorted(nodes.items()):
        try:
            appends = config_appends(s.directory)
        except (OSError, StorageError):
            unread.append(node)
            continue
        for a in appends:
            if (node, a.term) not in led or a.previous is None:
                continue
            judged += 1
            if a.previous > a.committed:
                bad.append({"node": node, "term": a.term, "index": a.index,
                            "previous": a.previous, "committed": a.committed})  # fmt: skip
    if judged == 0:
        why = "no leader appended a configuration change after another one"
        return row(name, None, why + (f" ({', '.join(unread)}: unreadable)" if unread else ""))
    saw = f"{judged} configuration change(s) appended by leaders after an earlier one"
    if bad:
        b = bad[0]
        saw = (
            f"{b['node']} (leader of term {b['term']}) appended a configuration change at "
            f"{b['index']} while the one at {b['previous']} was not committed (its commit "
            f"index was {b['committed']}); {saw}"
        )
    return row(name, not bad, saw, bad)


def _term_at(s: NodeStorage, index: int) -> int | None:
    """The term a node's final state gives ``index``: its log entry's, or its snapshot's if
    the snapshot ends there (None: the node does not hold it)."""
    entry = s.entry(index)
    if entry is not None:
        return entry.term
    if s.snapshot is not None and s.snapshot.index == index:
        return s.snapshot.term
    return None


def judge_record(
    replay: ReplayResult | None,
    roles: Roles,
    cluster: Sequence[str],
    history: Sequence[Op],
    *,
    seed: int,
    majority: int | None = None,
) -> dict[str, Any]:
    """Every check of this module, as results.json's ``raft``. ``majority``: of the smallest
    configuration the run had (default: a majority of ``cluster``)."""
    checks = [check_election_safety(roles)]
    if replay is None:
        gone = "the nodes' storage could not be read"
        names = ("votes_one_per_term", "leader_votes_durable", "commit_current_term",
                 "committed_entries_agree", "leader_completeness", "snapshot_continuation",
                 "one_config_change_at_a_time", "exactly_once")  # fmt: skip
        checks += [row(n, None, gone) for n in names]
    else:
        checks += check_votes(replay.nodes, roles, cluster, majority)
        checks += check_commits(replay.nodes, cluster, majority)
        checks.append(check_leader_completeness(replay.nodes))
        checks.append(check_snapshot_continuation(replay.nodes))
        checks.append(check_config_changes(replay.nodes, roles))
        checks.append(check_exactly_once(replay, history, seed=seed))
    return {"valid": all(c["ok"] is not False for c in checks), "checks": checks}
