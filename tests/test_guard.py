"""The guard (``raft/core/guard.py``): every rule refuses what it must, in simulated time,
and each one has teeth: with the rule taken out, the same message does harm (a crash, an
absurd term adopted and persisted, a vote or an election it should not cause, an entry
injected, a leader misled).

Each case builds a small cluster by message passing (a leads b and c; a few entries
committed), sends one hostile message, and checks: refused under its rule, counted, and
nothing changed (term, vote, leader, role, log, commit, configuration, and no hard state to
persist). Then the same again without the rule, and the harm is shown.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from harness.sim.params import FAULTS
from harness.sim.world import SimConfig, World
from raft.core import guard
from raft.core.guard import MAX, RULES
from raft.core.messages import (
    AppendEntries,
    AppendEntriesResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    InstallSnapshotResponse,
    Message,
    RequestVote,
    TimeoutNow,
)
from raft.core.raft import RaftCore, Role
from raft.core.types import (
    ConfState,
    EntryKind,
    HardState,
    LogEntry,
    NodeId,
    SnapshotMeta,
)
from raft.storage import FileStorage
from tests.test_core_contract import A, B, C, elect, flush, make, of_type, role, settle

EVIL = NodeId("evil")
ROSTER = frozenset({A, B, C})


@dataclass
class Cluster:
    a: RaftCore
    b: RaftCore
    c: RaftCore

    @property
    def cores(self) -> list[RaftCore]:
        return [self.a, self.b, self.c]


def cluster(entries: int = 3) -> Cluster:
    """a leads b and c in term 1 (no pre-vote, so the term is 1); ``entries`` committed on
    all three after the leader's no-op; every core has the roster."""
    a, b, c = (make(n, pre_vote=False) for n in (A, B, C))
    for core in (a, b, c):
        core.guard.roster = ROSTER
    elect(a, [b, c])
    for k in range(entries):
        a.propose(b"cmd%d" % k)
    settle([a, b, c])
    for _ in range(2 * a.cfg.heartbeat_ticks):  # heartbeats carry the commit index
        a.tick()
        settle([a, b, c])
    assert a.log.committed == b.log.committed == 1 + entries
    assert b.lead == A
    assert b.term == 1
    return Cluster(a, b, c)


def state(core: RaftCore) -> tuple[Any, ...]:
    log = core.log
    return (
        core.term,
        core.vote,
        core.lead,
        core.role,
        log.committed,
        log.snap_index,
        list(log.entries),
        core.conf,
        core.snapshot,
        {n: (p.match, p.next, p.state) for n, p in core.prs.items()},
    )


def disable(monkeypatch: pytest.MonkeyPatch, rule: str) -> None:
    """Take ``rule`` out of the guard (the "without the rule" half of a teeth test)."""
    monkeypatch.setattr(guard, "_COMMON", tuple(r for r in guard._COMMON if r[0] != rule))
    for table in (guard._SHAPE, guard._STATE):
        for kind, rules in list(table.items()):
            monkeypatch.setitem(table, kind, tuple(r for r in rules if r[0] != rule))


# ---- the cases ------------------------------------------------------------------------------
# Each: (the receiving core, the hostile message) from a fresh cluster, and what harm the
# message does when the rule is taken out (an exception it raises, or a predicate on the core
# that must hold afterwards).


@dataclass
class Case:
    rule: str
    build: Callable[[], tuple[RaftCore, Message]]
    harm: Callable[[RaftCore], bool] | None = None  #: must be true without the rule
    raises: type[BaseException] | None = None  #: or: stepping it crashes the core
    note: str = ""


def _b_with(m: Callable[[Cluster], Message]) -> Callable[[], tuple[RaftCore, Message]]:
    def build() -> tuple[RaftCore, Message]:
        cl = cluster()
        return cl.b, m(cl)

    return build


def _a_with(m: Callable[[Cluster], Message]) -> Callable[[], tuple[RaftCore, Message]]:
    def build() -> tuple[RaftCore, Message]:
        cl = cluster()
        return cl.a, m(cl)

    return build


def _snapshotting_a(m: Message) -> Callable[[], tuple[RaftCore, Message]]:
    def build() -> tuple[RaftCore, Message]:
        cl = cluster()
        cl.a.prs[B].become_snapshot(0)  # as if b were being sent a snapshot
        return cl.a, m

    return build


def _fresh_b(m: Message) -> Callable[[], tuple[RaftCore, Message]]:
    def build() -> tuple[RaftCore, Message]:
        b = make(B, pre_vote=False)
        b.guard.roster = ROSTER
        return b, m

    return build


def _last(cl: Cluster) -> int:
    return cl.b.log.last_index()


def _conf_entry(command: bytes) -> LogEntry:
    return LogEntry(5, 1, command, EntryKind.CONFIG)


CASES = [
    Case(
        "range",
        _b_with(lambda cl: AppendEntries(A, B, (1 << 64) - 1, _last(cl), 1, (), 0)),
        harm=lambda b: b.term == (1 << 64) - 1,
        note="term 2^64-1 adopted (and persisted)",
    ),
    Case(
        "range",
        _b_with(lambda cl: AppendEntries(C, B, 2, _last(cl), 1, (), 1 << 64)),
        harm=lambda b: b.term == 2 and b.lead == C,
        note="the term of a frame with an index beyond 2^63-1 is adopted",
    ),
    Case(
        "self",
        _b_with(lambda cl: Heartbeat(B, B, 2, 0, 0)),
        harm=lambda b: b.term == 2 and b.lead == B and b.role is Role.FOLLOWER,
        note="b follows itself, as a follower, in a new term",
    ),
    Case(
        "vote_log_term",
        _fresh_b(RequestVote(C, B, 1, 1, 9)),
        harm=lambda b: b.vote == C,
        note="a vote granted to a candidate that claims a log of a future term",
    ),
    Case(
        "prev_term",
        _b_with(lambda cl: AppendEntries(C, B, 2, _last(cl) + 5, 7, (), 0)),
        harm=lambda b: b.term == 2 and b.lead == C,
        note="the term of a message no leader sends is adopted",
    ),
    Case(
        "not_contiguous",
        _b_with(lambda cl: AppendEntries(A, B, 1, _last(cl), 1, (LogEntry(9, 1, b"x"),), 0)),
        harm=lambda b: b.log.entries[-1].index != b.log.last_index(),
        note="an entry stored at the wrong position: the log no longer knows its indexes",
    ),
    Case(
        "entry_term",
        _b_with(lambda cl: AppendEntries(A, B, 1, _last(cl), 1, (LogEntry(5, 9, b"x"),), 0)),
        harm=lambda b: b.log.last_term() == 9 and b.term == 1,
        note="an entry of a future term in the log wins b every later election",
    ),
    Case(
        "bad_config",
        _b_with(lambda cl: AppendEntries(A, B, 1, _last(cl), 1, (_conf_entry(b"{}"),), 0)),
        raises=KeyError,
        note="a configuration entry that does not decode crashes the node",
    ),
    Case(
        "snapshot_meta",
        _b_with(
            lambda cl: InstallSnapshot(
                A, B, 1, SnapshotMeta(50, 1, ConfState(frozenset())), 0, b"{}", True
            )
        ),
        harm=lambda b: not b.conf.voters,
        note="b installs an empty configuration and can never campaign again",
    ),
    Case(
        "snapshot_meta",
        _b_with(
            lambda cl: InstallSnapshot(
                A, B, 1, SnapshotMeta(50, 7, ConfState(ROSTER)), 0, b"{}", True
            )
        ),
        harm=lambda b: b.log.last_term() == 7 and b.term == 1,
        note="a snapshot of a future term",
    ),
    Case(
        "second_leader",
        _b_with(lambda cl: AppendEntries(C, B, 1, _last(cl), 1, (LogEntry(5, 1, b"evil"),), 0)),
        harm=lambda b: b.log.last_index() == 5 and b.log.entry(5).command == b"evil",
        note="the issue's forged AppendEntries of the current term from a made-up leader",
    ),
    Case(
        "timeout_now",
        _b_with(lambda cl: TimeoutNow(C, B, 1)),
        harm=lambda b: b.role is Role.CANDIDATE and b.term == 2,
        note="TimeoutNow from a follower starts an election",
    ),
    Case(
        "timeout_now",
        _b_with(lambda cl: TimeoutNow(A, B, 1_000_000_000_000_000_000)),
        harm=lambda b: b.term > 1_000_000_000_000_000_000,
        note="TimeoutNow of a term 10^18 makes b adopt it and campaign",
    ),
    Case(
        "committed_conflict",
        _b_with(lambda cl: AppendEntries(C, B, 2, 0, 0, (LogEntry(1, 2, b"evil"),), 0)),
        harm=lambda b: b.term == 2 and b.lead == C,
        note="a 'leader' whose log contradicts a committed entry is followed",
    ),
    Case(
        "committed_conflict",
        _b_with(lambda cl: AppendEntries(C, B, 2, 2, 2, (), 0)),
        harm=lambda b: b.term == 2 and b.lead == C,
        note="prev_log_term contradicting a committed entry",
    ),
    Case(
        "beyond_log",
        _a_with(lambda cl: AppendEntriesResponse(B, A, 1, True, match_index=10**6)),
        raises=AssertionError,
        note="the leader probes past its log and trips 'entries compacted without a snapshot'",
    ),
    Case(
        "beyond_log",
        _snapshotting_a(InstallSnapshotResponse(B, A, 1, 0, 0, match_index=10**6)),
        raises=AssertionError,
        note="a snapshot 'installed' beyond the log: the leader probes past its log",
    ),
]


def _ids(c: Case) -> str:
    return f"{c.rule}: {c.note}" if c.note else c.rule


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_rule_refuses_and_changes_nothing(case: Case) -> None:
    core, m = case.build()
    flush(core)
    before = state(core)
    core.step(m)
    assert core.guard.refused == {case.rule: 1}
    assert state(core) == before
    rd = core.ready() if core.has_ready() else None
    assert rd is None or (rd.hard_state is None and not rd.entries), "a refusal persisted"


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_without_the_rule_the_message_does_harm(
    case: Case, monkeypatch: pytest.MonkeyPatch
) -> None:
    core, m = case.build()
    flush(core)
    disable(monkeypatch, case.rule)

    def deliver() -> None:
        core.step(m)
        flush(core)

    if case.raises is not None:
        with pytest.raises(case.raises):
            deliver()
        return
    deliver()
    assert case.harm is not None
    assert case.harm(core), case.note
    assert not core.guard.refused


def test_every_rule_has_a_case() -> None:
    covered = {c.rule for c in CASES} | {"stranger", "unknown_read", "beyond_snapshot"}
    assert covered == set(RULES)


# ---- rules that need more setting up ---------------------------------------------------------


def test_stranger_refused_with_a_roster_and_followed_without() -> None:
    """A sender in no configuration this node knows and not in the roster: refused. With no
    roster (the rule off) b follows the stranger into a new term."""
    cl = cluster()
    hb = Heartbeat(EVIL, B, 5, 0, 0)
    before = state(cl.b)
    cl.b.step(hb)
    assert cl.b.guard.refused == {"stranger": 1}
    assert state(cl.b) == before
    cl.b.guard.roster = None
    cl.b.step(hb)
    assert cl.b.term == 5
    assert cl.b.lead == EVIL


def test_a_fresh_learner_with_no_configuration_accepts_its_leader() -> None:
    """A node started empty (no configuration at all, as a spare joins) knows no member: the
    roster lets it accept its first leader, and the stranger is still refused."""
    d = NodeId("d")
    fresh = RaftCore(d, ConfState(frozenset()), rng=random.Random(1))
    fresh.guard.roster = ROSTER | {d}
    fresh.step(Heartbeat(EVIL, d, 3, 0, 0))
    assert fresh.guard.refused == {"stranger": 1}
    assert fresh.term == 0
    fresh.step(AppendEntries(A, d, 3, 0, 0, (LogEntry(1, 3, b"x"),), 1))
    assert fresh.lead == A
    assert fresh.term == 3
    assert fresh.log.last_index() == 1


def test_unknown_read_context_refused() -> None:
    """A HeartbeatResponse naming a ReadIndex round the leader never started cannot confirm
    the rounds it has: without the rule, a round of 2 (a plus one ack) completes on it."""
    for without in (False, True):
        cl = cluster()
        a = cl.a
        with pytest.MonkeyPatch.context() as mp:
            if without:
                disable(mp, "unknown_read")
            req = a.read_index()
            flush(a)  # the heartbeat round goes out; nobody answers it
            a.step(HeartbeatResponse(C, A, 1, context=req + 1000))
            resolved = [rs for rs in a.ready().read_states if rs.request == req]
        if without:
            assert resolved, "without the rule the forged ack confirmed the read"
        else:
            assert not resolved
            assert a.guard.refused == {"unknown_read": 1}


def test_snapshot_offset_beyond_the_snapshot_refused() -> None:
    """A follower being sent a snapshot reports an offset past its end: refused; without the
    rule the leader sends a chunk that starts beyond its snapshot."""
    for without in (False, True):
        a, b, c = (make(n, pre_vote=False) for n in (A, B, C))
        a.guard.roster = ROSTER
        elect(a, [b, c])
        a.propose(b"x")
        settle([a, b, c])
        a.compact(a.log.applied, b"image")
        flush(a)
        pr = a.prs[C]
        pr.become_snapshot(a.log.snap_index)
        with pytest.MonkeyPatch.context() as mp:
            if without:
                disable(mp, "beyond_snapshot")
            a.step(InstallSnapshotResponse(C, A, 1, a.log.snap_index, next_offset=10**6))
            sent = of_type(flush(a), InstallSnapshot)
        if without:
            assert any(m.offset > len(b"image") for m in sent)
        else:
            assert a.guard.refused == {"beyond_snapshot": 1}
            assert not sent


def test_a_node_at_the_last_term_does_not_campaign() -> None:
    """A node whose term is 2^63-1 (a member said so, within the range) cannot start a term
    beyond the range; without the check its term leaves the range its peers accept."""
    for without in (False, True):
        b = make(B, voters=(B,), hard_state=HardState(MAX, None), pre_vote=False)
        with pytest.MonkeyPatch.context() as mp:
            if without:
                mp.setattr(guard.Guard, "may_campaign", lambda self, core: True)
            for _ in range(10 * b.cfg.election_ticks):
                b.tick()
                flush(b)
        assert (b.term > MAX) is without
        assert role(b) is (Role.LEADER if without else Role.FOLLOWER)


def test_refusals_are_logged_at_powers_of_two() -> None:
    """Rate limiting without a clock: the 1st, 2nd, 4th, 8th... refusal under a rule."""
    lines: list[str] = []
    b = RaftCore(B, ConfState(ROSTER), rng=random.Random(1), log=lines.append)
    b.guard.roster = ROSTER
    for _ in range(100):
        b.step(Heartbeat(EVIL, B, 1, 0, 0))
    refusals = [x for x in lines if x.startswith("refused")]
    assert len(refusals) == 7  # 1, 2, 4, 8, 16, 32, 64
    assert "'evil'" in refusals[0]
    assert "[refusal 64 of this kind]" in refusals[-1]
    assert b.guard.refused == {"stranger": 100}


def test_stale_messages_are_answered_not_refused() -> None:
    """A message of an older term that contradicts our committed entries is what a deposed
    leader sends: the core answers it as stale (so that leader learns the term), it is not
    refused as a lie."""
    cl = cluster()
    cl.b.step(Heartbeat(C, B, 3, 0, 0))  # c leads term 3 (as far as b can tell)
    flush(cl.b)
    cl.b.step(AppendEntries(A, B, 1, 0, 0, (LogEntry(1, 1, b"other"),), 0))
    assert not cl.b.guard.refused
    replies = of_type(flush(cl.b), AppendEntriesResponse)
    assert replies == [AppendEntriesResponse(B, A, 3, False)]


# ---- the issue's reproductions, in simulated time --------------------------------------------


def _drive(core: RaftCore, storage: FileStorage) -> None:
    """The Ready contract against real storage (what RaftNode does, without the loop)."""
    while core.has_ready():
        rd = core.ready()
        if rd.hard_state is not None:
            storage.save_state(rd.hard_state)
        if rd.entries:
            storage.append_log(rd.entries)
        core.advance(rd)


@pytest.mark.parametrize("without", [False, True], ids=["guarded", "unguarded"])
def test_issue_term_2_64_minus_1_neither_crashes_the_wal_nor_persists(
    tmp_path: Path, without: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 10: an AppendEntries of term 2^64-1 made every node exit in ``raft/wal.py`` (the
    next election's term, 2^64, does not fit its u64), again on every restart. Guarded:
    refused, nothing persisted, the node goes on leading its cluster. Unguarded (no range
    rule, no campaign limit): the term is persisted and the WAL write of the next term's
    no-op fails."""
    if without:
        disable(monkeypatch, "range")
        monkeypatch.setattr(guard.Guard, "may_campaign", lambda self, core: True)
    storage = FileStorage(tmp_path / "b")
    try:
        b = make(B, voters=(B,), pre_vote=False)
        b.guard.roster = frozenset({A, B})
        b.step(AppendEntries(A, B, (1 << 64) - 1, 0, 0, (), 0))

        def run() -> None:
            _drive(b, storage)
            for _ in range(10 * b.cfg.election_ticks):
                b.tick()
                _drive(b, storage)

        if without:
            with pytest.raises((OverflowError, struct.error)):
                run()
            assert storage.load_state().term >= (1 << 64) - 1
            return
        run()
        assert b.is_leader()
        assert storage.load_state().term == b.term == 1
    finally:
        storage.close()


@pytest.mark.parametrize("without", [False, True], ids=["guarded", "unguarded"])
def test_issue_conflict_at_a_committed_index_is_refused_not_an_assertion(
    without: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 10: a forged AppendEntries conflicting at a committed index ended the node with
    ``AssertionError: conflict at committed index 1``. Guarded: refused (its term 2 is not
    adopted either). Unguarded (no contiguity nor committed-entry rule): the assertion."""
    cl = cluster()
    forged = AppendEntries(C, B, 2, _last(cl), 1, (LogEntry(1, 2, b"evil"),), 0)
    if without:
        disable(monkeypatch, "not_contiguous")
        disable(monkeypatch, "committed_conflict")
        with pytest.raises(AssertionError, match="conflict at committed index 1"):
            cl.b.step(forged)
        return
    before = state(cl.b)
    cl.b.step(forged)
    cl.b.step(AppendEntries(C, B, 2, 0, 0, (LogEntry(1, 2, b"evil"),), 0))  # contiguous
    assert cl.b.guard.refused == {"not_contiguous": 1, "committed_conflict": 1}
    assert state(cl.b) == before


@pytest.mark.parametrize("without", [False, True], ids=["guarded", "unguarded"])
def test_issue_made_up_leader_of_the_current_term_cannot_lose_an_acknowledged_write(
    without: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 10: a forged AppendEntries of the current term from a made-up leader injected an
    entry at a follower, which committed it; the logs diverged, and after a leadership
    transfer to that follower an acknowledged write was gone. Guarded: refused, and after
    the same transfer every node holds the acknowledged write."""
    if without:
        disable(monkeypatch, "second_leader")
    cl = cluster()
    a, b, _c = cl.a, cl.b, cl.c
    index = _last(cl) + 1
    b.step(AppendEntries(C, B, 1, index - 1, 1, (LogEntry(index, 1, b"evil"),), index))
    settle(cl.cores)
    got, _term = a.propose(b"acknowledged")
    assert got == index
    settle(cl.cores)
    assert a.log.committed >= index
    assert a.log.entry(index).command == b"acknowledged"
    a.transfer_leader(B)
    settle(cl.cores)
    for _ in range(4 * a.cfg.election_ticks):
        for core in cl.cores:
            core.tick()
        settle(cl.cores)
    assert b.is_leader()
    held = {core.id: core.log.entry(index).command for core in cl.cores}
    if without:
        assert held[B] == b"evil", "the made-up leader's entry survives on the new leader"
        return
    assert held == {A: b"acknowledged", B: b"acknowledged", C: b"acknowledged"}
    assert b.guard.refused == {"second_leader": 1}


def test_issue_term_10_to_the_18_from_a_stranger_is_not_persisted() -> None:
    """Issue 10: a forged AppendEntries with term 10^18 made the term jump, persisted. From a
    sender outside the roster it is refused; without the roster (rule off), persisted."""
    for roster in (ROSTER, None):
        b = make(B)
        b.guard.roster = roster
        b.step(AppendEntries(EVIL, B, 10**18, 0, 0, (), 0))
        rd = b.ready() if b.has_ready() else None
        persisted = rd is not None and rd.hard_state is not None
        assert persisted is (roster is None)
        assert (b.term == 10**18) is (roster is None)


def test_issue_timeout_now_from_an_unknown_id_starts_no_election(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 10: a forged TimeoutNow from an unknown id started an election each time. It is
    refused twice over: a stranger, and not the leader of the current term. With neither rule
    (no roster, no TimeoutNow rule) the election starts."""
    cl = cluster()
    cl.b.step(TimeoutNow(EVIL, B, 1))
    cl.b.guard.roster = None
    cl.b.step(TimeoutNow(EVIL, B, 1))
    assert cl.b.guard.refused == {"stranger": 1, "timeout_now": 1}
    assert cl.b.role is Role.FOLLOWER
    assert cl.b.term == 1
    disable(monkeypatch, "timeout_now")
    cl.b.step(TimeoutNow(EVIL, B, 1))
    assert role(cl.b) is Role.CANDIDATE
    assert cl.b.term == 2


def test_the_simulator_reports_a_rule_that_refuses_correct_messages(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every simulated node is correct, so the simulator fails a run in which a guard refuses
    anything (``guard_refused``). Planted: the first version of the ``beyond_snapshot`` rule,
    which compared every snapshot response's offset with the leader's current snapshot; a
    response about an earlier snapshot (the leader compacted since) is correct and may name a
    larger offset. The simulator caught it at the first seed of a snapshot-heavy run."""
    config = SimConfig(
        nodes=5,
        duration_us=10_000_000,
        faults=frozenset(FAULTS),
        settle_us=2_000_000,
        snapshot_entries=25,
        spare_nodes=2,
        seed=0,
    )
    assert World(config).run() == []

    def first_version(core: RaftCore, m: InstallSnapshotResponse) -> bool:
        snap = core.snapshot
        return guard._leading(core, m) and snap is not None and m.next_offset > len(snap.data)

    rules = guard._STATE[InstallSnapshotResponse]
    planted = tuple((n, first_version if n == "beyond_snapshot" else f) for n, f in rules)
    monkeypatch.setitem(guard._STATE, InstallSnapshotResponse, planted)
    violations = World(config).run()
    assert [v.kind for v in violations] == ["guard_refused"]
    assert "a snapshot offset beyond the snapshot" in violations[0].detail
