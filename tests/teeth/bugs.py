"""A catalogue of classic Raft bugs, each planted by patching the library for the time of a test.

The library never contains these bugs: a :class:`Bug` replaces a few attributes of ``raft.*``
classes with buggy versions and puts them back when done. The same catalogue serves the
simulator's teeth tests (in-process, ``with bug.planted(): ...``) and real chaos runs (a node
process applies the bugs named in ``ORBITAL_PLANT`` at start-up, see ``tests/teeth/plant``).

Each buggy function is the library's code with the one mistake a real implementation makes;
the comment on each says which rule it breaks. ``expected`` names the simulator's violation
kinds the bug may surface as (the first violation of a run is compared with it). ``real``
names the check that flags the bug in a short real chaos run and the test that shows it
(``tests/teeth/test_real_*.py``, planted in every node process); some of those runs add an
*amplifier* from ``tests/teeth/plant/real_bugs.py`` (a setting or a slow disk or network that
correct code passes with) to open the window the bug needs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from raft.core.log import RaftLog
from raft.core.messages import (
    LEADER_MESSAGES,
    AppendEntries,
    Heartbeat,
    Message,
    RequestVoteResponse,
)
from raft.core.progress import Progress, ProgressState, quorum_match
from raft.core.raft import RaftCore, ReadState
from raft.core.types import ConfChange
from raft.kv import KVStore, encode_result

#: what a run that is not linearizable reports (the simulator's clients, a chaos run's history)
NOT_LINEARIZABLE = "linearizability"


@dataclass(frozen=True, slots=True)
class Bug:
    name: str
    summary: str
    #: (owner, attribute, buggy replacement)
    patches: tuple[tuple[Any, str, Any], ...]
    #: violation kinds of the simulator that count as "found"
    expected: frozenset[str]
    #: the simulator finds it within this many seeds of ``sweep_config()`` (tests/teeth)
    sim_bound: int = 60
    #: the check of a real chaos run that flags it, and its test (tests/teeth/test_real_*.py)
    real: str = ""

    def apply(self) -> Callable[[], None]:
        """Plant the bug; returns the function that removes it."""
        saved = [(owner, attr, owner.__dict__[attr]) for owner, attr, _ in self.patches]
        for owner, attr, fn in self.patches:
            setattr(owner, attr, fn)

        def undo() -> None:
            for owner, attr, original in saved:
                setattr(owner, attr, original)

        return undo

    @contextmanager
    def planted(self) -> Iterator[None]:
        undo = self.apply()
        try:
            yield
        finally:
            undo()


# ---- elections ---------------------------------------------------------------------------------


def _up_to_date_always(self: RaftLog, last_index: int, last_term: int) -> bool:
    return True  # §5.4.1 forgotten: any candidate gets the vote, however short its log


_real_hold = RaftCore._hold


def _hold_except_votes(self: RaftCore, msgs: list[Message], leader_ok: bool) -> list[Message]:
    # §5.2 / Figure 2: the vote reply leaves before the vote is durable
    out = [m for m in msgs if type(m) is RequestVoteResponse]
    rest = [m for m in msgs if type(m) is not RequestVoteResponse]
    return out + _real_hold(self, rest, leader_ok)


def _send_decided_at_creation(self: RaftCore, m: Message) -> None:
    # The shipped bug of issue 9: whether a reply may leave before the persist was decided
    # when the reply was built; handle_vote_request built the grant before recording the vote.
    if isinstance(m, LEADER_MESSAGES):
        self.msgs.append(m)
        return
    log, p = self.log, self._persisted_hs
    if (
        self.term != p.term
        or self.vote != p.voted_for
        or log.unstable_from <= log.last_index()
        or self._pending_snapshot is not None
    ):
        self._held.append(m)
    else:
        self.msgs.append(m)


def _vote_ignoring_earlier_vote(self: RaftCore, m: Any) -> None:
    # §5.2: "at most one candidate per term" forgotten when the vote was for someone else
    real_vote = self.vote
    self.vote = None
    _real_handle_vote_request(self, m)
    if self.vote is None:
        self.vote = real_vote


_real_handle_vote_request = RaftCore.handle_vote_request


def _quorum_always_active(self: RaftCore) -> bool:
    return True  # check-quorum never fires: a leader cut off with a minority stays leader


# ---- replication and commit ---------------------------------------------------------------------


def _commit_by_counting_any_term(self: RaftCore) -> bool:
    # Figure 8: an entry of an earlier term committed by counting its replicas
    mci = quorum_match(self.conf.voters, self.prs)
    if mci > self.log.committed:
        self.log.commit_to(mci)
        self._on_commit()
        return True
    return False


def _hold_all_but_entries(self: RaftCore, msgs: list[Message], leader_ok: bool) -> list[Message]:
    # Figure 2: a follower acknowledges entries before they are on its disk (only a change of
    # term or vote is waited for)
    if leader_ok:  # only entries are undurable: everything leaves, acknowledgements included
        return msgs
    return _real_hold(self, msgs, leader_ok)


def _decr_off_by_one(self: Progress, rejected: int, hint_next: int) -> bool:
    # the fast back-up lands one entry too far: it probes the first index of the conflicting
    # term itself, which is rejected with the same hint, forever
    if self.state is ProgressState.REPLICATE:
        if rejected <= self.match:
            return False
        self.become_probe()
        self.next = max(self.match + 1, min(hint_next, rejected) + 1)
        return True
    if self.next - 1 != rejected:
        return False
    self.next = max(self.match + 1, min(hint_next, rejected) + 1)
    self.paused = False
    return True


def _append_after_keeping_conflicts(self: RaftLog, prev_index: int, entries: Any) -> int:
    # §5.3: a conflicting entry is kept instead of truncated; only new indexes are appended
    last_new = prev_index + len(entries)
    for k, e in enumerate(entries):
        if e.index > self.last_index():
            self.entries.extend(entries[k:])
            break
    return last_new


def _heartbeat_commit_unbounded(self: RaftCore, context: int) -> None:
    # the commit index sent to a follower is the leader's, not min(match, committed): the
    # follower commits whatever entry it holds at that index, even one the leader overwrote
    for n, pr in self.prs.items():
        if n == self.id:
            continue
        if pr.recent_append and not context and pr.state is ProgressState.REPLICATE:
            pr.recent_append = False
            continue
        pr.recent_append = False
        self.send(Heartbeat(self.id, n, self.term, self.log.committed, context))


_real_handle_append_entries = RaftCore.handle_append_entries


def _append_entries_committing_on_receipt(self: RaftCore, m: AppendEntries) -> None:
    # a follower commits (and so applies) what it receives, not what the leader committed
    _real_handle_append_entries(self, replace(m, commit=m.prev_log_index + len(m.entries)))


# ---- snapshots ----------------------------------------------------------------------------------


def _restore_keeping_suffix(self: RaftLog, index: int, term: int) -> None:
    # Raft §7: "if an existing log entry has the same index and term as the snapshot's last
    # included entry, retain log entries following it" -- here retained whatever their term
    if index < self.last_index():
        del self.entries[: index - self.snap_index]
    else:
        self.entries = []
    self.snap_index, self.snap_term = index, term
    self.committed = max(self.committed, index)
    self.applied = index
    self.unstable_from = index + 1


# ---- membership ---------------------------------------------------------------------------------

_real_propose_conf_change = RaftCore.propose_conf_change


def _propose_conf_change_unguarded(self: RaftCore, change: ConfChange) -> tuple[int, int]:
    # dissertation §4.1: a second change is appended while the first is uncommitted
    self.pending_conf_index = 0
    return _real_propose_conf_change(self, change)


# ---- reads --------------------------------------------------------------------------------------


def _read_without_heartbeat_round(self: RaftCore, request: int) -> None:
    # §6.4: the leader answers from its commit index without confirming it is still leader
    self._read_states.append(ReadState(request, self.log.committed))


# ---- the state machine --------------------------------------------------------------------------


def _session_forgetting_retries(self: KVStore, cmd: Any, client: str) -> bytes:
    # dissertation §6.3: the session table records results but never checks for a retry
    return encode_result(self._execute(cmd))


#: how a real run flags a follower that keeps entries the majority replaced
_DIVERGED = "`committed_entries_agree`, replay `committed_divergence` (test_real_divergence.py)"

BUGS: dict[str, Bug] = {
    b.name: b
    for b in [
        Bug(
            "no_election_restriction",
            "votes for a candidate whose log is less up to date (§5.4.1)",
            ((RaftLog, "is_up_to_date", _up_to_date_always),),
            frozenset(
                {"leader_completeness", "state_machine_safety", "durability", "log_matching"}
            ),
            real="`leader_completeness`, from the WALs' history (test_real_stale_candidate.py)",
        ),
        Bug(
            "vote_not_durable_before_reply",
            "the vote reply leaves before the vote is persisted (Figure 2)",
            ((RaftCore, "_hold", _hold_except_votes),),
            frozenset({"vote_not_durable", "double_vote", "election_safety"}),
            real="`leader_votes_durable` (test_real_vote_crash.py)",
        ),
        Bug(
            "hold_decided_at_creation",
            "issue 9's bug: hold-or-release decided when a reply is built, before the vote is set",
            (
                (RaftCore, "send", _send_decided_at_creation),
                (RaftCore, "_hold", lambda self, msgs, leader_ok: msgs),
            ),
            frozenset({"vote_not_durable", "double_vote", "election_safety"}),
            real="`leader_votes_durable` (test_real_vote_crash.py)",
        ),
        Bug(
            "votes_twice_in_a_term",
            "grants a vote although it voted for another candidate in this term (§5.2)",
            ((RaftCore, "handle_vote_request", _vote_ignoring_earlier_vote),),
            frozenset({"vote_not_durable", "double_vote", "election_safety"}),
            real="`election_safety`, `votes_one_per_term` (test_real_elections.py)",
        ),
        Bug(
            "no_check_quorum",
            "a leader cut off from a majority never steps down (dissertation §6.2)",
            ((RaftCore, "_quorum_active", _quorum_always_active),),
            frozenset({"leader_without_quorum"}),
            real="`minority_leader_steps_down_within` (test_real_check_quorum.py)",
        ),
        Bug(
            "commit_earlier_term_by_counting",
            "commits an entry of an earlier term by counting replicas (§5.4.2, Figure 8)",
            ((RaftCore, "maybe_commit", _commit_by_counting_any_term),),
            frozenset(
                {"leader_commit_term", "leader_completeness", "state_machine_safety", "durability"}
            ),
            real="`commit_current_term`, from the leaders' commit audit (test_real_commits.py)",
        ),
        Bug(
            "ack_before_fsync",
            "a follower acknowledges entries before they are durable (Figure 2)",
            ((RaftCore, "_hold", _hold_all_but_entries),),
            frozenset(
                {
                    "commit_not_durable",
                    "durability",
                    "leader_completeness",
                    "state_machine_safety",
                    "log_matching",
                }
            ),
            real="`converge_after_heal` after a lost write (test_real_lost_acks.py)",
        ),
        Bug(
            "backup_off_by_one",
            "the fast conflict back-up probes one index too far and never converges (§5.3)",
            ((Progress, "maybe_decr_to", _decr_off_by_one),),
            frozenset({"liveness", "stuck"}),
            real="`converge_after_heal` (test_real_lost_acks.py)",
        ),
        Bug(
            "no_truncate_on_conflict",
            "a follower keeps a conflicting entry instead of truncating its log (§5.3)",
            ((RaftLog, "append_after", _append_after_keeping_conflicts),),
            frozenset(
                {
                    "commit_not_durable",
                    "log_matching",
                    "state_machine_safety",
                    "durability",
                    NOT_LINEARIZABLE,
                }
            ),
            real=_DIVERGED,
        ),
        Bug(
            "heartbeat_commit_beyond_match",
            "heartbeats carry the leader's commit index, not min(match, commit)",
            ((RaftCore, "bcast_heartbeat", _heartbeat_commit_unbounded),),
            frozenset({"state_machine_safety", "durability", NOT_LINEARIZABLE}),
            real=_DIVERGED,
        ),
        Bug(
            "apply_before_commit",
            "a follower applies entries when it receives them, before they are committed",
            ((RaftCore, "handle_append_entries", _append_entries_committing_on_receipt),),
            frozenset(
                {
                    "leader_completeness",
                    "read_index_stale",
                    "state_machine_safety",
                    "durability",
                    NOT_LINEARIZABLE,
                }
            ),
            real=_DIVERGED,
        ),
        Bug(
            "snapshot_keeps_conflicting_suffix",
            "InstallSnapshot keeps log entries after the snapshot that conflict with it (§7)",
            ((RaftLog, "restore", _restore_keeping_suffix),),
            frozenset({"log_matching", "state_machine_safety", "durability", NOT_LINEARIZABLE}),
            sim_bound=150,
            real="`snapshot_continuation`, from the WALs' history (test_real_snapshot_suffix.py)",
        ),
        Bug(
            "concurrent_conf_changes",
            "a second membership change is appended while one is uncommitted (§4.1)",
            ((RaftCore, "propose_conf_change", _propose_conf_change_unguarded),),
            frozenset({"config_overlap", "election_safety", "state_machine_safety"}),
            real="`one_config_change_at_a_time` (test_real_conf_changes.py)",
        ),
        Bug(
            "read_without_leadership_check",
            "a leader serves ReadIndex reads without a heartbeat round (§6.4)",
            ((RaftCore, "_start_read", _read_without_heartbeat_round),),
            frozenset({"read_index_stale", NOT_LINEARIZABLE}),
            real="linearizability, `exactly_once`, `minority_silent` (test_real_deposed_reads.py)",
        ),
        Bug(
            "session_applies_retry_twice",
            "the session table does not recognise a retried command (§6.3)",
            ((KVStore, "_apply_in_session", _session_forgetting_retries),),
            frozenset({"exactly_once", NOT_LINEARIZABLE}),
            real="`exactly_once` of the replayed logs (test_real_exactly_once.py)",
        ),
    ]
}

__all__ = ["BUGS", "NOT_LINEARIZABLE", "Bug"]
