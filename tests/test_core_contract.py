"""The Ready contract of :class:`RaftCore`, checked directly on the core (no simulator).

Raft §5 / Figure 2: "Updated on stable storage before responding to RPCs". The core enforces
it by holding every reply and vote request that depends on not-yet-durable state until the
Ready that asks for the persist has been ``advance``d. Only a leader's replication messages may
leave with the entries they carry (dissertation §10.2.1), and then the leader must not count
its own entry toward a commit until it is durable.
"""

from __future__ import annotations

import random
from typing import TypeVar

import pytest

from raft.core.errors import RaftUsageError
from raft.core.messages import (
    AppendEntries,
    AppendEntriesResponse,
    Heartbeat,
    HeartbeatResponse,
    Message,
    RequestVote,
    RequestVoteResponse,
)
from raft.core.raft import RaftConfig, RaftCore, Ready, Role
from raft.core.types import ConfState, EntryKind, HardState, LogEntry, NodeId
from raft.storage import MemoryStorage

T = TypeVar("T")

A, B, C = NodeId("a"), NodeId("b"), NodeId("c")


def make(
    node: NodeId,
    voters: tuple[NodeId, ...] = (A, B, C),
    *,
    seed: int = 1,
    hard_state: HardState | None = None,
    entries: tuple[LogEntry, ...] = (),
    **cfg: int | bool,
) -> RaftCore:
    config = RaftConfig(**cfg)  # type: ignore[arg-type]
    return RaftCore(
        node,
        ConfState(frozenset(voters)),
        rng=random.Random(seed),
        config=config,
        hard_state=hard_state,
        entries=entries,
    )


def role(core: RaftCore) -> Role:
    """The core's role (a call, so a type checker does not narrow it across steps)."""
    return core.role


def flush(core: RaftCore) -> list[Message]:
    """Follow the contract until the core has nothing more to do; return what it sent."""
    out: list[Message] = []
    while core.has_ready():
        rd = core.ready()
        out.extend(rd.messages)
        core.advance(rd)
    return out


def tick_until_campaign(core: RaftCore) -> None:
    for _ in range(10 * core.cfg.election_ticks):
        core.tick()
        if core.role is not Role.FOLLOWER:
            return
    raise AssertionError(f"{core.id} never campaigned")


def elect(leader: RaftCore, others: list[RaftCore]) -> None:
    """Make ``leader`` win an election by message passing, and settle the network."""
    tick_until_campaign(leader)
    settle([leader, *others])
    assert role(leader) is Role.LEADER


def settle(cores: list[RaftCore], limit: int = 1000) -> None:
    """Deliver every message (reliably, in order) until the cores are quiet."""
    by_id = {c.id: c for c in cores}
    queue: list[Message] = []
    for _ in range(limit):
        for c in cores:
            queue.extend(flush(c))
        if not queue:
            return
        batch, queue = queue, []
        for m in batch:
            if m.dst in by_id:
                by_id[m.dst].step(m)
    raise AssertionError("the cores never went quiet")


def of_type(msgs: list[Message], kind: type[T]) -> list[T]:
    return [m for m in msgs if isinstance(m, kind)]


# ---- a follower's vote -------------------------------------------------------------------


def test_vote_grant_is_held_until_the_vote_is_persisted() -> None:
    """Raft §5.2 / Figure 2: a vote is durable before the candidate hears of it; otherwise a
    crash after the reply lets the voter vote twice in one term."""
    b = make(B)
    b.step(RequestVote(A, B, 1, 0, 0))
    rd = b.ready()
    assert rd.hard_state == HardState(1, A)
    assert not of_type(rd.messages, RequestVoteResponse), "vote sent before it was persisted"
    b.advance(rd)
    rd2 = b.ready()
    assert rd2.hard_state is None
    votes = of_type(rd2.messages, RequestVoteResponse)
    assert votes == [RequestVoteResponse(B, A, 1, True)]
    b.advance(rd2)
    assert not b.has_ready()


def test_vote_in_a_term_persisted_without_a_vote_is_held_until_persisted() -> None:
    """Raft §5.2 / Figure 2, the double vote found by seeds 3787 and 6057: the voter already
    holds the candidate's term on disk with no vote, so granting changes only ``voted_for``.
    The grant must still wait for that persist; if it left at once, a crash before the persist
    would let the voter come back without the vote and grant a second one in this term."""
    b = make(B, hard_state=HardState(1, None))
    b.step(RequestVote(A, B, 1, 0, 0))
    rd = b.ready()
    assert rd.hard_state == HardState(1, A)
    assert not of_type(rd.messages, RequestVoteResponse), "vote sent before it was persisted"
    b.advance(rd)
    rd2 = b.ready()
    assert rd2.hard_state is None
    assert of_type(rd2.messages, RequestVoteResponse) == [RequestVoteResponse(B, A, 1, True)]
    b.advance(rd2)


def test_vote_reply_held_across_a_crash_is_never_sent() -> None:
    """The same voter crashes after ``ready()`` but before the persist: the grant was never
    handed out, and after the restart (term 1, no vote) it may vote once, for anyone."""
    disk = MemoryStorage()
    disk.save_state(HardState(1, None))
    b = restart_from(B, disk)
    b.step(RequestVote(A, B, 1, 0, 0))
    rd = b.ready()
    assert not of_type(rd.messages, RequestVoteResponse)
    # crash: rd is dropped, nothing persisted
    b = restart_from(B, disk)
    b.step(RequestVote(C, B, 1, 0, 0))
    replies = of_type(run_with_disk(b, disk), RequestVoteResponse)
    assert replies == [RequestVoteResponse(B, C, 1, True)]
    assert disk.load_state() == HardState(1, C)


def test_reply_created_before_a_later_step_dirties_state_is_still_held() -> None:
    """The hold is decided at ``ready()`` for everything stepped since the last Ready, not at
    the moment a reply is built: a heartbeat reply built while nothing was undurable, followed
    in the same batch by a step that changes the hard state, leaves only after the persist."""
    b = make(B, hard_state=HardState(1, A))
    b.step(Heartbeat(A, B, 1, 0, 7))
    b.step(RequestVote(C, B, 2, 0, 0, transfer=True))  # a new term: term and vote change
    rd = b.ready()
    assert rd.hard_state == HardState(2, C)
    assert rd.messages == []
    b.advance(rd)
    sent = flush(b)
    assert of_type(sent, HeartbeatResponse) == [HeartbeatResponse(B, A, 1, 7)]
    assert of_type(sent, RequestVoteResponse) == [RequestVoteResponse(B, C, 2, True)]


def test_released_replies_are_not_held_again_by_the_next_batch() -> None:
    """Replies released by ``advance`` leave with the next Ready even when new undurable state
    arrived in between (a follower under steady load would otherwise delay them forever)."""
    b = make(B, hard_state=HardState(1, A))
    b.step(AppendEntries(A, B, 1, 0, 0, (LogEntry(1, 1, b"x"),), 0))
    rd = b.ready()
    assert not rd.messages
    b.advance(rd)
    b.step(AppendEntries(A, B, 1, 1, 1, (LogEntry(2, 1, b"y"),), 0))
    rd = b.ready()
    assert [e.index for e in rd.entries] == [2]
    acks = of_type(rd.messages, AppendEntriesResponse)
    assert [m.match_index for m in acks] == [1], "the released ack for 1 must go now"
    b.advance(rd)
    assert [m.match_index for m in of_type(flush(b), AppendEntriesResponse)] == [2]


def test_vote_rejection_in_a_new_term_waits_for_the_term() -> None:
    """Raft §5.1: the higher term the rejection carries must be durable before it is sent."""
    b = make(B, entries=(LogEntry(1, 1, b"x"),), hard_state=HardState(1, None))
    b.step(RequestVote(A, B, 2, 0, 0))  # a's log is behind: rejected (§5.4.1)
    rd = b.ready()
    assert rd.hard_state == HardState(2, None)
    assert not rd.messages
    b.advance(rd)
    assert of_type(flush(b), RequestVoteResponse) == [RequestVoteResponse(B, A, 2, False)]


def test_append_success_is_held_until_the_entries_are_persisted() -> None:
    """Raft §5.3 / Figure 2: a follower acknowledges entries only once they are durable; the
    leader counts that acknowledgement toward a commit."""
    b = make(B, hard_state=HardState(1, A))
    entries = (LogEntry(1, 1, b"x"), LogEntry(2, 1, b"y"))
    b.step(AppendEntries(A, B, 1, 0, 0, entries, 0))
    rd = b.ready()
    assert [e.index for e in rd.entries] == [1, 2]
    assert not of_type(rd.messages, AppendEntriesResponse), "ack sent before persist"
    b.advance(rd)
    acks = of_type(flush(b), AppendEntriesResponse)
    assert len(acks) == 1
    assert acks[0].success
    assert acks[0].match_index == 2


def test_append_reply_after_a_truncation_is_held_until_persisted() -> None:
    """Raft §5.3: a follower whose durable log conflicts with the leader's truncates it and
    appends; its acknowledgement (the leader counts it toward a commit) must wait until the
    rewritten suffix is durable, or a crash would bring back the old entry it replaced."""
    stored = (LogEntry(1, 1, b"x"), LogEntry(2, 1, b"old"))
    b = make(B, hard_state=HardState(2, A), entries=stored)
    b.step(AppendEntries(A, B, 2, 1, 1, (LogEntry(2, 2, b"new"),), 1))
    rd = b.ready()
    assert [(e.index, e.term) for e in rd.entries] == [(2, 2)]
    assert not of_type(rd.messages, AppendEntriesResponse), "ack sent before the rewrite persisted"
    b.advance(rd)
    acks = of_type(flush(b), AppendEntriesResponse)
    assert [(m.success, m.match_index) for m in acks] == [(True, 2)]


def test_heartbeat_response_without_new_state_goes_at_once() -> None:
    """A reply that depends on nothing undurable is not held (the hold is not a blanket
    delay: Raft §5 only requires state to be durable before replying about it)."""
    b = make(B, hard_state=HardState(1, A))
    b.step(Heartbeat(A, B, 1, 0, 7))
    rd = b.ready()
    assert rd.hard_state is None
    assert of_type(rd.messages, HeartbeatResponse) == [HeartbeatResponse(B, A, 1, 7)]


# ---- a candidate's vote request ----------------------------------------------------------


def test_candidate_request_vote_is_held_until_term_and_vote_persisted() -> None:
    """Raft §5.2: a candidate increments its term and votes for itself; the RequestVote
    carries that term, so it leaves only once term and self-vote are durable."""
    a = make(A, pre_vote=False)
    tick_until_campaign(a)
    assert role(a) is Role.CANDIDATE
    rd = a.ready()
    assert rd.hard_state == HardState(1, A)
    assert not of_type(rd.messages, RequestVote), "RequestVote sent before the term persisted"
    a.advance(rd)
    requests = of_type(flush(a), RequestVote)
    assert sorted(m.dst for m in requests) == [B, C]
    assert all(m.term == 1 and not m.pre_vote for m in requests)


def test_pre_vote_requests_go_at_once_but_the_real_vote_waits() -> None:
    """Dissertation §9.6: a pre-vote changes no durable state, so it is not held; the real
    campaign that follows (§5.2) is."""
    a = make(A)
    tick_until_campaign(a)
    assert role(a) is Role.PRE_CANDIDATE
    rd = a.ready()
    assert rd.hard_state is None
    pre = of_type(rd.messages, RequestVote)
    assert sorted(m.dst for m in pre) == [B, C]
    assert all(m.pre_vote and m.term == 1 for m in pre)
    a.advance(rd)
    a.step(RequestVoteResponse(B, A, 1, True, pre_vote=True))
    assert role(a) is Role.CANDIDATE
    rd = a.ready()
    assert rd.hard_state == HardState(1, A)
    assert not of_type(rd.messages, RequestVote)
    a.advance(rd)
    real = of_type(flush(a), RequestVote)
    assert sorted(m.dst for m in real) == [B, C]
    assert all(not m.pre_vote for m in real)


# ---- the leader ----------------------------------------------------------------------------


def test_leader_append_entries_leave_with_the_unpersisted_entries() -> None:
    """Dissertation §10.2.1: the leader may send its entries to followers in parallel with
    writing them to its own disk."""
    a, b, c = make(A), make(B), make(C)
    elect(a, [b, c])
    index, _ = a.propose(b"x")
    rd = a.ready()
    assert [e.index for e in rd.entries] == [index]
    sent = of_type(rd.messages, AppendEntries)
    assert sorted(m.dst for m in sent) == [B, C]
    assert all(m.entries[-1].index == index for m in sent)
    a.advance(rd)


def test_single_node_leader_commits_only_after_its_own_persist() -> None:
    """Raft §5.3: an entry is committed once stored on a majority; alone, the leader is the
    majority, so nothing commits before its own write is durable."""
    a = make(A, voters=(A,))
    tick_until_campaign(a)
    assert role(a) is Role.LEADER
    rd = a.ready()
    assert [e.kind for e in rd.entries] == [EntryKind.NOOP]
    assert rd.committed_entries == []
    assert a.log.committed == 0
    a.advance(rd)
    assert a.log.committed == 1
    flush(a)
    index, _ = a.propose(b"x")
    assert a.log.committed == index - 1
    rd = a.ready()
    assert [e.index for e in rd.entries] == [index]
    assert rd.committed_entries == []
    assert a.log.committed == index - 1, "committed an entry not yet on the leader's disk"
    a.advance(rd)
    assert a.log.committed == index
    rd = a.ready()
    assert [e.command for e in rd.committed_entries] == [b"x"]
    a.advance(rd)


def test_three_node_leader_does_not_count_its_unpersisted_entry() -> None:
    """Raft §5.3: with one follower's ack the entry is on a majority only if the leader's own
    copy is durable; before the leader persists, one ack out of three must not commit."""
    a, b, c = make(A), make(B), make(C)
    elect(a, [b, c])
    base = a.log.committed
    index, _ = a.propose(b"x")
    # b's heartbeat response makes a send x to b before a wrote x: a legal ordering.
    b.step(Heartbeat(A, B, a.term, base, 0))
    for m in flush(b):
        a.step(m)
    to_b = of_type(a.msgs, AppendEntries)
    assert to_b, "expected a to send x to b on the heartbeat response"
    for m in to_b:
        b.step(m)
    acks = of_type(flush(b), AppendEntriesResponse)
    assert any(m.success and m.match_index == index for m in acks)
    for m in acks:
        a.step(m)
    assert a.prs[B].match == index
    assert a.log.committed == base, "committed with only b's copy durable"
    rd = a.ready()
    assert rd.committed_entries == []
    a.advance(rd)
    assert a.log.committed == index
    flush(a)


# ---- restart from what was persisted ----------------------------------------------------------


def run_with_disk(core: RaftCore, disk: MemoryStorage) -> list[Message]:
    """Follow the contract with a store: persist, then send, then advance."""
    out: list[Message] = []
    while core.has_ready():
        rd = core.ready()
        if rd.hard_state is not None:
            disk.save_state(rd.hard_state)
        disk.append_log(rd.entries)
        out.extend(rd.messages)
        core.advance(rd)
    return out


def restart_from(node: NodeId, disk: MemoryStorage) -> RaftCore:
    """A crash: memory is gone; a new core is built from the store alone."""
    return make(node, hard_state=disk.load_state(), entries=tuple(disk.load_log()))


def test_vote_survives_a_crash_no_double_vote() -> None:
    """Raft §5.2 and Figure 2 (votedFor is persistent): a voter that crashes right after
    granting its vote, and restarts from its disk, refuses a second candidate of that term."""
    disk = MemoryStorage()
    b = make(B)
    b.step(RequestVote(A, B, 1, 0, 0))
    granted = of_type(run_with_disk(b, disk), RequestVoteResponse)
    assert granted == [RequestVoteResponse(B, A, 1, True)]
    b = restart_from(B, disk)
    assert b.hard_state() == HardState(1, A)
    b.step(RequestVote(C, B, 1, 0, 0))
    assert of_type(run_with_disk(b, disk), RequestVoteResponse) == [
        RequestVoteResponse(B, C, 1, False)
    ]


def test_acknowledged_entries_survive_a_crash() -> None:
    """Raft §5.3-5.4: what a follower acknowledged is on its disk; after a restart it still
    holds it, so it denies its vote to a candidate lacking it (§5.4.1)."""
    disk = MemoryStorage()
    b = make(B, hard_state=HardState(1, A))
    b.step(AppendEntries(A, B, 1, 0, 0, (LogEntry(1, 1, b"x"), LogEntry(2, 1, b"y")), 0))
    acks = of_type(run_with_disk(b, disk), AppendEntriesResponse)
    assert [m.match_index for m in acks if m.success] == [2]
    b = restart_from(B, disk)
    assert b.log.last_index() == 2
    b.step(RequestVote(C, B, 2, 1, 1))
    assert of_type(run_with_disk(b, disk), RequestVoteResponse) == [
        RequestVoteResponse(B, C, 2, False)
    ]


# ---- calling contract ------------------------------------------------------------------------


def test_calls_between_ready_and_advance_raise() -> None:
    """The Ready contract: nothing may change the core while a Ready is being handled."""
    a = make(A, voters=(A,))
    tick_until_campaign(a)
    flush(a)
    rd: Ready = a.ready()
    with pytest.raises(RaftUsageError):
        a.step(Heartbeat(B, A, 5, 0))
    with pytest.raises(RaftUsageError):
        a.tick()
    with pytest.raises(RaftUsageError):
        a.propose(b"x")
    with pytest.raises(RaftUsageError):
        a.ready()
    with pytest.raises(RaftUsageError):
        a.read_index()
    a.advance(rd)
    with pytest.raises(RaftUsageError):
        a.advance(rd)
    a.propose(b"x")  # usable again
    assert a.log.last_index() == 2
