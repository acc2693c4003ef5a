"""Unit tests of the core's mechanisms, one claim each, driven by hand (no simulator).

Election restriction (Raft §5.4.1), fast back-up (§5.3), Progress and quorum arithmetic
(§5.3, etcd's tracker), batching and pipelining (dissertation §10.2), back-pressure,
NotLeader hints, ReadIndex (dissertation §6.4) and leadership transfer (dissertation §3.10).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import pytest

from raft.core.errors import NotLeader, ProposalDropped, RaftUsageError
from raft.core.log import RaftLog
from raft.core.messages import (
    AppendEntries,
    AppendEntriesResponse,
    Heartbeat,
    HeartbeatResponse,
    Message,
    RequestVote,
    RequestVoteResponse,
    TimeoutNow,
)
from raft.core.progress import (
    Progress,
    ProgressState,
    has_quorum,
    quorum_index,
    quorum_match,
)
from raft.core.raft import RaftCore, ReadState, Role
from raft.core.types import HardState, LogEntry, NodeId
from tests.test_core_contract import (
    A,
    B,
    C,
    elect,
    flush,
    make,
    of_type,
    role,
    settle,
    tick_until_campaign,
)


def entries_of(terms: list[int], start: int = 1) -> tuple[LogEntry, ...]:
    return tuple(LogEntry(start + k, t, b"e%d" % (start + k)) for k, t in enumerate(terms))


def deliver(cores: list[RaftCore], msgs: Sequence[Message]) -> list[Message]:
    """Step ``msgs`` into their destinations; return what those cores then send."""
    by_id = {c.id: c for c in cores}
    touched: list[RaftCore] = []
    for m in msgs:
        core = by_id[m.dst]
        core.step(m)
        if core not in touched:
            touched.append(core)
    out: list[Message] = []
    for core in touched:
        out.extend(flush(core))
    return out


# ---- election restriction ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("last_index", "last_term", "expected"),
    [
        (3, 2, True),  # identical
        (4, 2, True),  # same last term, longer
        (2, 2, False),  # same last term, shorter
        (1, 3, True),  # higher last term wins however short
        (100, 1, False),  # lower last term loses however long
        (0, 0, False),
    ],
)
def test_is_up_to_date(last_index: int, last_term: int, expected: bool) -> None:
    """Raft §5.4.1: compare last terms first; with equal last terms the longer log wins."""
    log = RaftLog()
    log.append(entries_of([1, 1, 2]))
    assert log.is_up_to_date(last_index, last_term) is expected


def test_vote_refused_to_longer_log_with_stale_last_term() -> None:
    """Raft §5.4.1: a voter denies its vote to a candidate whose log is less up to date."""
    b = make(B, entries=entries_of([1, 2]), hard_state=HardState(2, None))
    b.step(RequestVote(C, B, 3, 50, 1))
    votes = of_type(flush(b), RequestVoteResponse)
    assert votes == [RequestVoteResponse(B, C, 3, False)]
    assert b.vote is None
    b.step(RequestVote(A, B, 3, 2, 2))
    votes = of_type(flush(b), RequestVoteResponse)
    assert votes == [RequestVoteResponse(B, A, 3, True)]
    assert b.vote == A


def test_one_vote_per_term() -> None:
    """Raft §5.2: at most one vote per term, first come first served."""
    b = make(B)
    b.step(RequestVote(A, B, 1, 0, 0))
    flush(b)
    b.step(RequestVote(C, B, 1, 0, 0))
    assert of_type(flush(b), RequestVoteResponse) == [RequestVoteResponse(B, C, 1, False)]
    b.step(RequestVote(A, B, 1, 0, 0))  # a retransmission is granted again
    assert of_type(flush(b), RequestVoteResponse) == [RequestVoteResponse(B, A, 1, True)]


# ---- fast back-up --------------------------------------------------------------------------


def test_rejection_hint_names_the_first_index_of_the_conflicting_term() -> None:
    """Raft §5.3 (the optimization after Figure 7): the follower reports the conflicting term
    and the first index it stores for that term."""
    b = make(B, entries=entries_of([1, 1, 1] + [2] * 50), hard_state=HardState(3, None))
    b.step(AppendEntries(A, B, 3, 40, 3, (), 0))
    (rej,) = of_type(flush(b), AppendEntriesResponse)
    assert not rej.success
    assert (rej.reject_index, rej.hint_index, rej.hint_term) == (40, 4, 2)
    b.step(AppendEntries(A, B, 3, 80, 3, (), 0))
    (rej,) = of_type(flush(b), AppendEntriesResponse)
    assert (rej.reject_index, rej.hint_index, rej.hint_term) == (80, 54, 0)  # too short


def test_fast_backup_skips_a_whole_conflicting_term() -> None:
    """Raft §5.3: with the hint the leader needs one rejection per conflicting term, not one
    per entry: 50 divergent entries of term 2 cost a single extra round trip."""
    common = [1, 1, 1]
    a = make(A, entries=entries_of(common + [3] * 7), hard_state=HardState(3, None))
    b = make(B, entries=entries_of(common + [2] * 50), hard_state=HardState(3, None))
    c = make(C, entries=entries_of(common + [3] * 7), hard_state=HardState(3, None))
    elect(a, [c])  # b is cut off while a wins
    assert role(a) is Role.LEADER
    rejections = 0
    a.tick()  # a heartbeat reaches b; its answer makes a probe b's log
    msgs = [m for m in flush(a) if m.dst == B]
    assert msgs
    for _ in range(20):
        if not msgs:
            break
        replies = deliver([b], [m for m in msgs if m.dst == B])
        rejections += sum(
            1 for m in of_type(replies, AppendEntriesResponse) if not m.success and m.hint_index
        )
        msgs = [m for m in deliver([a], replies) if m.dst == B]
    assert rejections == 1
    assert [e.term for e in b.log.entries] == [e.term for e in a.log.entries]
    assert a.prs[B].match == a.log.last_index()


# ---- Progress and quorum -------------------------------------------------------------------


def test_progress_probe_sends_one_at_a_time() -> None:
    """etcd's tracker: in PROBE a leader sends one AppendEntries and waits for its answer."""
    pr = Progress(5, max_inflight=4)
    assert pr.state is ProgressState.PROBE
    assert not pr.is_paused()
    pr.sent(4)
    assert pr.is_paused()
    assert not pr.maybe_decr_to(2, 1), "a rejection of another probe is stale"
    assert pr.maybe_decr_to(4, 2)
    assert (pr.next, pr.is_paused()) == (2, False)
    pr.sent(3)
    assert pr.maybe_update(3)
    assert (pr.match, pr.next, pr.is_paused()) == (3, 4, False)


def test_progress_replicate_bounds_inflight() -> None:
    """Pipelining: in REPLICATE ``next`` runs ahead, at most ``max_inflight`` messages."""
    pr = Progress(1, max_inflight=3)
    pr.maybe_update(2)
    pr.become_replicate()
    assert pr.next == 3
    for last in (4, 6, 8):
        assert not pr.is_paused()
        pr.sent(last)
    assert pr.is_paused()
    assert pr.next == 9
    assert list(pr.inflight) == [4, 6, 8]
    assert not pr.maybe_update(1)  # stale
    assert pr.maybe_update(5)  # frees the message ending at 4 only
    assert list(pr.inflight) == [6, 8]
    assert not pr.is_paused()


def test_progress_replicate_rejection_falls_back_to_probe() -> None:
    """Raft §5.3: "after a rejection, the leader decrements nextIndex and retries"; stale
    rejections at or below ``match`` are ignored."""
    pr = Progress(1, max_inflight=8)
    pr.maybe_update(5)
    pr.become_replicate()
    pr.sent(9)
    assert not pr.maybe_decr_to(4, 1)
    assert pr.state is ProgressState.REPLICATE
    assert pr.maybe_decr_to(9, 3)
    assert str(pr.state) == str(ProgressState.PROBE)  # str(): mypy narrowed the attribute
    assert pr.next == 6, "next never goes below match + 1"
    assert not pr.inflight


@pytest.mark.parametrize(
    ("voters", "match", "expected"),
    [
        ("abc", {"a": 5, "b": 3, "c": 1}, 3),
        ("abc", {"a": 5}, 0),
        ("abc", {"a": 5, "b": 5}, 5),
        ("abcde", {"a": 9, "b": 7, "c": 5, "d": 2, "e": 1}, 5),
        ("abcd", {"a": 4, "b": 3, "c": 2, "d": 1}, 2),  # 3 of 4 needed
        ("a", {"a": 7}, 7),
        ("", {"a": 7}, 0),
        ("ab", {"a": 7, "b": 3, "z": 100}, 3),  # non-voters do not count
    ],
)
def test_quorum_index(voters: str, match: dict[str, int], expected: int) -> None:
    """Raft §5.3: the commit candidate is the highest index a majority of voters hold."""
    assert quorum_index(list(voters), match) == expected
    prs = {}
    for n, m in match.items():
        prs[n] = Progress(m + 1, 8)
        prs[n].match = m
    assert quorum_match(list(voters), prs) == expected


def test_quiet_ticks_count_the_ticks_before_the_election_timeout() -> None:
    """``quiet_ticks`` is exactly how many ticks pass before the one that campaigns, and
    ``skip_ticks`` is that many ``tick()`` calls; a tick that acts cannot be skipped."""
    ticked, skipped = make(A, seed=5), make(A, seed=5)
    quiet = ticked.quiet_ticks()
    assert quiet is not None
    assert quiet == ticked.randomized_timeout - 1
    for _ in range(quiet):
        ticked.tick()
        assert role(ticked) is Role.FOLLOWER
        assert not ticked.has_ready()
    skipped.skip_ticks(quiet)
    assert skipped.election_elapsed == ticked.election_elapsed
    assert skipped.quiet_ticks() == ticked.quiet_ticks() == 0
    with pytest.raises(RaftUsageError):
        skipped.skip_ticks(1)
    ticked.tick()
    skipped.tick()
    assert role(ticked) is role(skipped) is Role.PRE_CANDIDATE
    assert flush(ticked) == flush(skipped)


def test_quiet_ticks_of_a_leader_and_of_a_non_voter() -> None:
    a, b, _c = leader_of_three()
    assert a.quiet_ticks() == 0  # every tick of a leader may send heartbeats
    with pytest.raises(RaftUsageError):
        a.skip_ticks(1)
    learner = make(NodeId("d"), voters=(A, B, C))
    assert learner.quiet_ticks() is None  # never campaigns, however long it waits
    learner.skip_ticks(1000)
    assert learner.election_elapsed == 1000
    assert not learner.has_ready()
    assert b.quiet_ticks() == max(0, b.randomized_timeout - b.election_elapsed - 1)


def test_skip_ticks_refuses_exactly_the_ticks_that_are_not_quiet() -> None:
    a, b, c = leader_of_three()
    b.election_elapsed = 7
    learner = make(NodeId("d"), voters=(A, B, C))
    pre = make(A, seed=9)
    tick_until_campaign(pre)
    for core in (a, b, c, learner, pre):
        quiet = core.quiet_ticks()
        for n in range(40):
            clone_elapsed = core.election_elapsed
            if quiet is not None and n > quiet:
                with pytest.raises(RaftUsageError):
                    core.skip_ticks(n)
                assert core.election_elapsed == clone_elapsed
            else:
                core.skip_ticks(n)
                assert core.election_elapsed == clone_elapsed + n
                core.election_elapsed = clone_elapsed
    with pytest.raises(RaftUsageError):
        b.skip_ticks(-1)


def test_has_quorum() -> None:
    """A majority is strictly more than half of the voters (Raft §5.2)."""
    assert has_quorum("abc", "ab")
    assert not has_quorum("abc", "a")
    assert not has_quorum("abcd", "ab")
    assert has_quorum("abcd", "abc")
    assert not has_quorum("abc", "axyz")


# ---- batching, pipelining, back-pressure -----------------------------------------------------


def leader_of_three(**cfg: Any) -> tuple[RaftCore, RaftCore, RaftCore]:
    a, b, c = make(A, **cfg), make(B, **cfg), make(C, **cfg)
    elect(a, [b, c])
    assert a.prs[B].state is ProgressState.REPLICATE
    return a, b, c


def test_batching_bounds_entries_per_append() -> None:
    """Dissertation §10.2.1 (batching): one AppendEntries carries at most ``max_msg_bytes`` of
    entries (one entry always fits), and the batches together carry every entry in order."""
    a, b, _ = leader_of_three(max_msg_bytes=100)
    first = a.log.last_index() + 1
    for k in range(10):
        a.propose(b"%026d" % k)  # 26 + 24 = 50 bytes each: two per message
    # the first batch leaves with the Ready; the rest follow as b acknowledges (pipelining)
    sent: list[AppendEntries] = []
    msgs = flush(a)
    for _ in range(20):
        to_b = [m for m in msgs if m.dst == B]
        if not to_b:
            break
        sent += [m for m in of_type(to_b, AppendEntries) if m.entries]  # not commit notices
        msgs = deliver([a], deliver([b], to_b))
    assert len(sent) == 5
    assert all(len(m.entries) == 2 for m in sent)
    assert all(sum(e.size() for e in m.entries) <= 100 for m in sent)
    indexes = [e.index for m in sent for e in m.entries]
    assert indexes == list(range(first, first + 10))
    for m, nxt in itertools.pairwise(sent):
        assert nxt.prev_log_index == m.entries[-1].index


def test_batching_never_splits_an_oversized_entry() -> None:
    """An entry larger than ``max_msg_bytes`` still travels, alone in its message."""
    a, _, _ = leader_of_three(max_msg_bytes=100)
    a.propose(b"z" * 500)
    a.propose(b"small")
    (first,) = [m for m in of_type(flush(a), AppendEntries) if m.dst == B]
    assert [e.command for e in first.entries] == [b"z" * 500]


def test_pipelining_at_most_max_inflight_unacked() -> None:
    """Dissertation §10.2.2 (pipelining): the leader keeps sending without waiting for acks,
    but at most ``max_inflight`` AppendEntries per follower are unacknowledged."""
    a, b, _ = leader_of_three(max_inflight=3)
    to_b: list[AppendEntries] = []
    for k in range(8):
        a.propose(b"p%d" % k)
        to_b += [m for m in of_type(flush(a), AppendEntries) if m.dst == B]
    assert len(to_b) == 3
    assert a.prs[B].is_paused()
    # acknowledging the first message frees exactly one slot: the next message carries the
    # whole backlog
    b_replies = deliver([b], [to_b[0]])
    more = [m for m in of_type(deliver([a], b_replies), AppendEntries) if m.dst == B]
    assert len(more) == 1
    assert more[0].entries[-1].index == a.log.last_index()
    assert len(a.prs[B].inflight) == 3


def test_back_pressure_drops_proposals_beyond_max_uncommitted() -> None:
    """Back-pressure: with ``max_uncommitted`` entries awaiting commit the leader refuses more
    (nothing appended) until commits catch up."""
    a, b, c = leader_of_three(max_uncommitted=5)
    committed = a.log.committed
    last = a.log.last_index()
    assert committed == last
    for k in range(5):
        a.propose(b"x%d" % k)
    with pytest.raises(ProposalDropped):
        a.propose(b"dropped")
    assert a.log.last_index() == last + 5
    settle([a, b, c])
    assert a.log.committed == last + 5
    a.propose(b"accepted")


def test_not_leader_carries_the_known_leader() -> None:
    """Raft §5.1/§8: a follower redirects clients to the leader it knows, if any."""
    _, b, _ = leader_of_three()
    with pytest.raises(NotLeader) as exc:
        b.propose(b"x")
    assert exc.value.leader_hint == A
    fresh = make(C)
    with pytest.raises(NotLeader) as exc:
        fresh.propose(b"x")
    assert exc.value.leader_hint is None
    with pytest.raises(NotLeader):
        b.read_index()


# ---- ReadIndex -----------------------------------------------------------------------------


def read_states(core: RaftCore) -> list[ReadState]:
    """Drive the core's Readies; return the read states they carried."""
    out: list[ReadState] = []
    while core.has_ready():
        rd = core.ready()
        out.extend(rd.read_states)
        core.advance(rd)
    return out


def test_read_index_resolves_after_a_majority_acks_a_heartbeat_round() -> None:
    """Dissertation §6.4: record the commit index, confirm leadership with a heartbeat round
    acknowledged by a majority, then serve the read at that index."""
    a, b, _ = leader_of_three()
    committed = a.log.committed
    req = a.read_index()
    rd = a.ready()
    assert rd.read_states == []
    hbs = [m for m in of_type(rd.messages, Heartbeat) if m.context == req]
    assert sorted(m.dst for m in hbs) == [B, C]
    a.advance(rd)
    a.step(HeartbeatResponse(C, A, a.term, 0))  # an ordinary heartbeat's ack: not this round
    assert read_states(a) == []
    b.step(next(m for m in hbs if m.dst == B))
    replies = flush(b)
    assert replies == [HeartbeatResponse(B, A, a.term, req)]
    a.step(replies[0])
    assert read_states(a) == [ReadState(req, committed)]


def test_read_index_in_five_nodes_needs_two_acks() -> None:
    """Dissertation §6.4: the leader plus one follower is not a majority of five; the read
    resolves on the second acknowledgement, not the first."""
    ids = tuple(NodeId(n) for n in "abcde")
    cores = [make(n, voters=ids) for n in ids]
    a = cores[0]
    elect(a, cores[1:])
    req = a.read_index()
    hbs = [m for m in of_type(flush(a), Heartbeat) if m.context == req]
    assert len(hbs) == 4
    acks = deliver(cores[1:3], hbs[:2])
    assert len(acks) == 2
    a.step(acks[0])
    assert read_states(a) == []
    a.step(acks[1])
    assert read_states(a) == [ReadState(req, a.log.committed)]


def test_new_leader_serves_reads_only_after_its_first_commit() -> None:
    """Dissertation §6.4: a new leader does not know the commit index until it commits an
    entry of its own term (its no-op, Raft §8); reads wait for that."""
    b, c = make(B, pre_vote=False), make(C, pre_vote=False)
    b.step(AppendEntries(C, B, 1, 0, 0, entries_of([1, 1]), 2))  # b holds committed entries
    flush(b)
    a = make(A, pre_vote=False, entries=entries_of([1, 1]), hard_state=HardState(1, None))
    tick_until_campaign(a)
    flush(a)
    a.step(RequestVoteResponse(B, A, 2, True))
    assert role(a) is Role.LEADER
    assert a.log.committed == 0
    req = a.read_index()
    rd = a.ready()
    assert not [m for m in of_type(rd.messages, Heartbeat) if m.context == req]
    assert rd.read_states == []
    a.advance(rd)
    noop = a.log.last_index()
    acks = deliver([b, c], [m for m in rd.messages + flush(a) if m.dst in (B, C)])
    # the acks commit the no-op; only then does the read's heartbeat round start
    out = deliver([a], acks)
    assert a.log.committed == noop
    hbs = [m for m in of_type(out, Heartbeat) if m.context == req]
    assert hbs, "the read never started after the first commit"
    assert read_states(a) == []
    answers = deliver([b, c], hbs)
    for m in answers:
        a.step(m)
    assert read_states(a) == [ReadState(req, noop)]


def test_pending_reads_fail_when_the_leader_steps_down() -> None:
    """Dissertation §6.4: a deposed leader cannot confirm a read; it must not hang."""
    a, _, _ = leader_of_three()
    req = a.read_index()
    flush(a)
    a.step(Heartbeat(B, A, a.term + 1, 0))
    assert ReadState(req, None) in read_states(a)


# ---- leadership transfer -------------------------------------------------------------------


def test_transfer_to_an_up_to_date_target_sends_timeout_now() -> None:
    """Dissertation §3.10: the leader sends TimeoutNow to a caught-up target, which campaigns
    at once (overriding the other voters' leader lease) and wins the next term; proposals
    are refused while the transfer is in progress."""
    a, b, c = leader_of_three()
    term = a.term
    a.transfer_leader(B)
    with pytest.raises(ProposalDropped):
        a.propose(b"during transfer")
    msgs = flush(a)
    assert of_type(msgs, TimeoutNow) == [TimeoutNow(A, B, term)]
    b.step(TimeoutNow(A, B, term))
    assert role(b) is Role.CANDIDATE
    settle([a, b, c])
    assert role(b) is Role.LEADER
    assert b.term == term + 1
    assert role(a) is Role.FOLLOWER
    assert a.lead == B


def test_transfer_to_a_lagging_target_catches_it_up_first() -> None:
    """Dissertation §3.10: the target first receives the entries it lacks; TimeoutNow is sent
    only once its log matches the leader's."""
    a, b, c = leader_of_three()
    for k in range(3):
        a.propose(b"k%d" % k)
    deliver([b], [m for m in flush(a) if m.dst == B])  # c never hears of them
    settle([a, b])
    last = a.log.last_index()
    assert c.log.last_index() < last
    a.transfer_leader(C)
    msgs = flush(a)
    assert not of_type(msgs, TimeoutNow)
    seen_timeout = False
    for _ in range(20):
        to_c = [m for m in msgs if m.dst == C]
        if not to_c:
            break
        if of_type(to_c, TimeoutNow):
            seen_timeout = True
            assert c.log.last_index() == last
            break
        msgs = deliver([a], deliver([c], to_c))
    assert seen_timeout
