"""Bugs (and amplifiers) that only real runs need, in the shape of ``tests/teeth/bugs.py``.

* ``vote_not_persisted`` — the classic "persisted the term but not the vote" (Figure 2): the
  vote reply still waits for the persist, but the persist drops the vote. A restarted node
  can vote again in the term; every leader is elected by votes that are nowhere durable.
* ``tiny_append_batches`` — *not a bug*: an amplifier. Every AppendEntries carries one entry
  (``max_msg_bytes`` = 1), so a follower catching up acknowledges an older leader's entries
  one by one, before the new leader's own no-op: the window in which a leader that commits
  by counting replicas of an earlier term's entry (``commit_earlier_term_by_counting``) does
  so. Correct code passes with it (the test runs it both ways).

:func:`catalogue` is the shared catalogue with these added (the shared one wins a name).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from raft.core.raft import RaftConfig
from raft.core.types import HardState
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
    ]
}


def catalogue() -> dict[str, Any]:
    """Every plantable name: the shared catalogue, then these."""
    return {**REAL_BUGS, **BUGS}
