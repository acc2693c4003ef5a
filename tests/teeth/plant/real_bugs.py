"""Bugs (and amplifiers) that only real runs need, in the shape of ``tests/teeth/bugs.py``.

* ``vote_not_persisted`` — the classic "persisted the term but not the vote" (Figure 2): the
  vote reply still waits for the persist, but the persist drops the vote. A restarted node
  can vote again in the term; every leader is elected by votes that are nowhere durable.
* ``tiny_append_batches`` — *not a bug*: an amplifier. Every AppendEntries carries one entry
  (``max_msg_bytes`` = 1), so a follower catching up acknowledges an older leader's entries
  one by one, before the new leader's own no-op: the window in which a leader that commits
  by counting replicas of an earlier term's entry (``commit_earlier_term_by_counting``) does
  so. Correct code passes with it (the test runs it both ways).
* ``check_quorum_off`` — *not a bug*: ``RaftConfig(check_quorum=False)``, a supported setting
  (ReadIndex reads and elections stay safe without it). A leader cut off keeps leading, and
  followers keep no lease (they hear out a candidate while a leader is alive): the room in
  which a leader serving reads without a heartbeat round, a voter ignoring the election
  restriction, or an InstallSnapshot keeping a conflicting suffix show themselves.
* ``slow_transfer_vote`` — *not a bug*: persisting a vote for a candidate that campaigns on
  TimeoutNow takes 3 s (a disk slow at the worst moment), so a voter can be killed while its
  vote is not yet on disk, as a crash inside that fsync would; a correct voter's reply waits.
* ``late_vote_requests`` — *not a bug*: the network delivers every RequestVote (pre-votes
  excepted) 0.4 s late, so a voter can learn the new term from another message first and
  grant in a term it already persisted without a vote (the case issue 9's bug leaked).
* ``follower_dies_on_an_assertion`` — a follower (``n2``) fails one of its own assertions
  once it has applied 30 entries and its process exits; the cluster lives on without it (the
  no_election_restriction plant once did this to a node, and every check passed).
* ``slow_follower_config`` — *not a bug*: a follower takes 0.2 s to persist a configuration
  entry, so a membership change stays uncommitted long enough for a second one, asked for at
  the same moment, to meet it (the leader must refuse it).

:func:`catalogue` is the shared catalogue with these added (the shared one wins a name).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

from raft.core.messages import Message, RequestVote
from raft.core.raft import RaftConfig, RaftCore, Ready, Role
from raft.core.types import EntryKind, HardState
from raft.node import RaftNode
from raft.server import ClusterConfig
from raft.storage import FileStorage
from tests.teeth.bugs import BUGS, Bug

_real_save_state = FileStorage.save_state
_real_raft_config = ClusterConfig.raft_config


def _save_state_without_vote(self: FileStorage, state: HardState) -> None:
    # Figure 2: currentTerm is persisted, votedFor is not
    _real_save_state(self, HardState(state.term, None))


def _raft_config_one_entry_per_message(self: ClusterConfig) -> RaftConfig:
    return dataclasses.replace(_real_raft_config(self), max_msg_bytes=1)


def _raft_config_without_check_quorum(self: ClusterConfig) -> RaftConfig:
    return dataclasses.replace(_real_raft_config(self), check_quorum=False)


#: how long ``slow_transfer_vote`` makes the persist of a vote for a transfer candidate take
SLOW_VOTE_S = 3.0
#: how late ``late_vote_requests`` steps a RequestVote
LATE_VOTE_S = 0.4

_real_write = RaftNode._write
_real_received = RaftNode._received
_real_handle_vote_request = RaftCore.handle_vote_request
#: (voter, term, candidate) of every vote request of a candidate that campaigns on TimeoutNow
_transfer_requests: set[tuple[str, int, str]] = set()


def _note_transfer_request(self: RaftCore, m: RequestVote) -> None:
    if m.transfer and not m.pre_vote:
        _transfer_requests.add((self.id, m.term, m.src))
    _real_handle_vote_request(self, m)


def _write_transfer_votes_slowly(self: RaftNode[Any], rd: Ready) -> None:
    # the disk is slow exactly when a vote for a transfer candidate is persisted: a voter
    # killed in this window never had the vote on disk (as a crash inside its fsync)
    hs = rd.hard_state
    if hs is not None and (self.id, hs.term, hs.voted_for) in _transfer_requests:
        time.sleep(SLOW_VOTE_S)
    _real_write(self, rd)


#: how long ``slow_follower_config`` makes a follower's persist of a configuration entry take
SLOW_CONFIG_S = 0.2


def _write_config_slowly_on_followers(self: RaftNode[Any], rd: Ready) -> None:
    # a follower's disk is slow when it persists a configuration entry: the change stays
    # uncommitted for that long, so a second change asked for meanwhile is concurrent with it
    if self.core.role is not Role.LEADER and any(e.kind is EntryKind.CONFIG for e in rd.entries):
        time.sleep(SLOW_CONFIG_S)
    _real_write(self, rd)


def _receive_votes_late(self: RaftNode[Any], msg: Message) -> None:
    # the network delays vote requests (never pre-votes) by LATE_VOTE_S
    if type(msg) is not RequestVote or msg.pre_vote:
        _real_received(self, msg)
        return

    def deliver() -> None:
        _real_received(self, msg)
        self._wake()

    asyncio.get_running_loop().call_later(LATE_VOTE_S, deliver)


_real_advance = RaftCore.advance


def _advance_failing_an_assertion(self: RaftCore, rd: Ready) -> None:
    _real_advance(self, rd)
    if self.id == "n2" and self.log.applied >= 30:
        raise AssertionError(f"planted: n2 gave up at applied index {self.log.applied}")


REAL_BUGS: dict[str, Bug] = {
    b.name: b
    for b in [
        Bug(
            "vote_not_persisted",
            "the term is persisted, the vote is not (Figure 2)",
            ((FileStorage, "save_state", _save_state_without_vote),),
            frozenset({"double_vote", "election_safety"}),
        ),
        Bug(
            "tiny_append_batches",
            "an amplifier, not a bug: one entry per AppendEntries",
            ((ClusterConfig, "raft_config", _raft_config_one_entry_per_message),),
            frozenset(),
        ),
        Bug(
            "check_quorum_off",
            "an amplifier, not a bug: RaftConfig(check_quorum=False), a supported setting",
            ((ClusterConfig, "raft_config", _raft_config_without_check_quorum),),
            frozenset(),
        ),
        Bug(
            "slow_transfer_vote",
            "an amplifier, not a bug: persisting a vote for a transfer candidate takes 3 s",
            (
                (RaftCore, "handle_vote_request", _note_transfer_request),
                (RaftNode, "_write", _write_transfer_votes_slowly),
            ),
            frozenset(),
        ),
        Bug(
            "late_vote_requests",
            "an amplifier, not a bug: every RequestVote (not pre-votes) arrives 0.4 s late",
            ((RaftNode, "_received", _receive_votes_late),),
            frozenset(),
        ),
        Bug(
            "follower_dies_on_an_assertion",
            "n2 fails an assertion of its own after applying 30 entries, and exits",
            ((RaftCore, "advance", _advance_failing_an_assertion),),
            frozenset(),
        ),
        Bug(
            "slow_follower_config",
            "an amplifier, not a bug: a follower persists a configuration entry in 0.2 s",
            ((RaftNode, "_write", _write_config_slowly_on_followers),),
            frozenset(),
        ),
    ]
}


def catalogue() -> dict[str, Any]:
    """Every plantable name: the shared catalogue, then these."""
    return {**REAL_BUGS, **BUGS}
