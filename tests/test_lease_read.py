"""Lease reads (dissertation §6.4.1), off by default: the leader serves a read at its commit
index without a heartbeat round while a majority's answer to a recent probe holds the other
voters back, for ``lease_ticks`` of its own ticks."""

from __future__ import annotations

from typing import Any

import pytest

from raft.core.messages import Heartbeat, HeartbeatResponse, RequestVote, RequestVoteResponse
from raft.core.raft import RaftConfig, RaftCore, ReadState
from tests.test_core_contract import A, B, C, elect, flush, make, of_type
from tests.test_core_unit import read_states


def lease_leader(**cfg: Any) -> tuple[RaftCore, RaftCore, RaftCore]:
    a, b, c = (make(n, lease_read=True, **cfg) for n in (A, B, C))
    for core in (b, c):  # a started cluster: its servers have ticked past the restart guard
        for _ in range(core.cfg.election_ticks):
            core.tick()
    elect(a, [b, c])
    return a, b, c


def heartbeat_round(a: RaftCore, followers: list[RaftCore]) -> int:
    """Tick ``a`` to its next heartbeat round; deliver it to ``followers`` and their answers
    back; return the round's probe."""
    for _ in range(a.cfg.heartbeat_ticks):
        a.tick()
    hbs = of_type(flush(a), Heartbeat)
    probe = hbs[0].context
    assert probe > 0
    assert {m.context for m in hbs} == {probe}
    for f in followers:
        f.step(next(m for m in hbs if m.dst == f.id))
        for reply in flush(f):
            a.step(reply)
    return probe


def test_lease_reads_are_off_by_default_and_need_check_quorum() -> None:
    assert RaftConfig().lease_read is False
    with pytest.raises(ValueError, match="check_quorum"):
        RaftConfig(lease_read=True, check_quorum=False)
    with pytest.raises(ValueError, match="lease_drift"):
        RaftConfig(lease_read=True, lease_drift=1.0)


def test_a_leader_holding_a_lease_reads_without_a_round() -> None:
    a, b, _ = lease_leader()
    heartbeat_round(a, [b])  # b's answer and a itself: a majority of three
    req = a.read_index()
    rd = a.ready()
    assert rd.read_states == [ReadState(req, a.log.committed)]
    assert not of_type(rd.messages, Heartbeat)  # no round trip
    a.advance(rd)


def test_without_lease_reads_the_same_read_needs_a_round() -> None:
    a, b, c = (make(n) for n in (A, B, C))
    elect(a, [b, c])
    req = a.read_index()
    rd = a.ready()
    assert rd.read_states == []
    assert [m.context for m in of_type(rd.messages, Heartbeat)] == [req, req]
    a.advance(rd)


def test_the_lease_lasts_lease_ticks_from_the_probe_a_majority_answered() -> None:
    a, b, _ = lease_leader(election_ticks=20, heartbeat_ticks=2, lease_drift=0.2)
    assert a.lease_ticks == int(19 * 0.8) == 15
    heartbeat_round(a, [b])  # sent on the tick just done: the lease runs from there
    for k in range(1, a.lease_ticks):  # more rounds go out, nobody answers them
        a.tick()
        flush(a)
        req = a.read_index()
        assert read_states(a) == [ReadState(req, a.log.committed)], k
    a.tick()
    flush(a)
    req = a.read_index()
    rd = a.ready()
    assert rd.read_states == []  # expired: a ReadIndex round instead
    assert {m.context for m in of_type(rd.messages, Heartbeat)} == {req}
    a.advance(rd)


def test_after_sending_timeout_now_the_leader_gives_up_its_lease() -> None:
    a, b, _ = lease_leader()
    heartbeat_round(a, [b])
    a.transfer_leader(B)
    flush(a)
    req = a.read_index()
    assert read_states(a) == []  # a round, which the transfer will fail
    assert a.transferee == B
    del req


def test_a_restarted_server_keeps_the_lease_it_may_have_promised() -> None:
    """Before a crash this server may have answered a leader's probe; for one election
    timeout after the restart it ignores other candidates, as the lease it gave still runs."""
    vote = RequestVote(C, B, 5, 0, 0)
    b = make(B, lease_read=True)
    b.step(vote)
    assert flush(b) == []  # ignored
    assert b.term == 0
    for _ in range(b.cfg.election_ticks - 1):
        b.step(vote)
        assert flush(b) == []
        b.tick()
        if b.role.value != "follower":  # pragma: no cover - randomized timeout >= election
            pytest.fail("campaigned within one election timeout")
    b.tick()
    b.step(vote)
    assert RequestVoteResponse(B, C, 5, True, False) in flush(b)
    plain = make(B)
    plain.step(vote)
    assert RequestVoteResponse(B, C, 5, True, False) in flush(plain)


def test_an_answer_to_an_old_probe_does_not_renew_the_lease() -> None:
    a, _, _ = lease_leader()
    for _ in range(a.cfg.heartbeat_ticks):
        a.tick()
    old = of_type(flush(a), Heartbeat)[0].context
    for _ in range(a.lease_ticks):  # rounds go out, unanswered
        a.tick()
        flush(a)
    a.step(HeartbeatResponse(B, A, a.term, old))  # a late answer to an expired probe
    req = a.read_index()
    assert read_states(a) == []
    del req
