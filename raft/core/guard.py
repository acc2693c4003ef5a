"""The guard: what a peer says is checked before the core acts on it.

Theory of operation
-------------------
Peer input is hostile. ``RaftCore.step`` hands every message to :meth:`Guard.check` before
anything else; a message the guard refuses is dropped whole. No field of a refused message
changes any state: in particular its term is never adopted, so it is never persisted. The
rules are things no correct node sends, whatever the timing, so a refusal never costs
liveness (the simulator checks that: every run of every fault keeps its liveness check).

Rules, in the order they are checked (the first that fails names the refusal):

1. **Ranges.** Every term, index, offset, commit index and context is in ``0..MAX``
   (``2**63 - 1``): storage writes them as unsigned 64-bit integers, and a node must be able
   to count one further.
2. **Shape**, whatever our state: not from ourselves; a candidate's last log term is not
   above its term; an AppendEntries's entries follow ``prev_log_index`` one by one, with
   terms from 1 up to the message's term that never decrease (Raft §5.3: terms never
   decrease along a log) and start at or above ``prev_log_term``, and its configuration
   entries decode; an InstallSnapshot's meta has an index and a term (at most the message's),
   a configuration with a voter, and its chunk ends within range.
3. **Sender**: a member (voter or learner) of a configuration this node knows (any
   configuration in its log or snapshot, the bootstrap one) or of the ``roster``: every node
   that may ever be a member (the cluster file's nodes, each of which holds a key). The
   roster is what makes the rule safe for liveness: a follower whose log ends before the
   configuration entry that added today's leader must still accept that leader (the
   simulator found exactly that case when the rule used the log's configurations alone: a
   lagging follower refused the new leader for good). A node that knows no member at all (a
   fresh learner, started empty) accepts its leader because the leader is in the roster.
   Without a roster (``None``, the default of a bare core) the rule is off, and the
   transport's authentication is the only gate.
4. **Current state**, only for messages of our term or a later one (a stale message is
   answered as stale by the core, whatever else it says):

   * a leader's message (AppendEntries, Heartbeat, InstallSnapshot) of our current term
     comes from the leader we know for it, and never while we lead it: two leaders in one
     term are impossible (Raft §5.2, Election Safety);
   * TimeoutNow comes only from the leader of our current term (dissertation §3.10);
   * an AppendEntries never changes a committed entry: a leader's log holds every committed
     entry (Raft §5.4, Leader Completeness), so a conflict there is a lie;
   * a response to our leadership never names an index beyond our log, a ReadIndex round we
     never started, or a snapshot offset beyond our snapshot.

Refusals are counted per rule (:attr:`Guard.refused`) and logged through the core's event
callback, rate limited without a clock: the 1st, 2nd, 4th, 8th... refusal under each rule.

What the guard cannot catch is a member that lies within the rules (a well-formed message
of a higher term, say): Byzantine faults are out of scope. Authentication (``raft.security``)
makes sure the member is who it says it is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

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
from raft.core.types import EntryKind, decode_conf_entry

if TYPE_CHECKING:
    from raft.core.raft import RaftCore
    from raft.core.types import NodeId

__all__ = ["MAX", "RULES", "Guard"]

#: the largest term or index a node accepts (and reaches: it does not campaign beyond it)
MAX = (1 << 63) - 1
_CONFIG = EntryKind.CONFIG
#: longest node id quoted in a log line
_QUOTE = 64

#: a rule: is ``message`` broken, given the core's state?
Rule = Callable[["RaftCore", Any], bool]


class Guard:
    """Checks every message before ``RaftCore.step`` acts on it (see the module docstring)."""

    __slots__ = ("refused", "roster")

    def __init__(self, roster: frozenset[NodeId] | None = None) -> None:
        #: every node that may ever be a member (the driver sets it; None: the rule is off)
        self.roster = roster
        #: refusals so far, per rule
        self.refused: dict[str, int] = {}

    def check(self, core: RaftCore, m: Message) -> str | None:
        """The name of the first rule ``m`` breaks, or None if the core may act on it."""
        for name, broken in _COMMON:
            if broken(core, m):
                return name
        for name, broken in _SHAPE.get(type(m), ()):
            if broken(core, m):
                return name
        roster = self.roster
        if roster is not None and m.src not in roster and not _in_known_conf(core, m.src):
            return "stranger"
        if m.term < core.term:
            return None  # stale: the core answers it as such, whatever else it says
        for name, broken in _STATE.get(type(m), ()):
            if broken(core, m):
                return name
        return None

    def refuse(self, core: RaftCore, m: Message, rule: str) -> None:
        """Count a refusal, and log it if it is the 1st, 2nd, 4th, 8th... under ``rule``."""
        n = self.refused.get(rule, 0) + 1
        self.refused[rule] = n
        if n & (n - 1) == 0:
            src = m.src if len(m.src) <= _QUOTE else m.src[:_QUOTE] + "..."
            core._event(
                f"refused {type(m).__name__} from {src!r} (term {_num(m.term)}):"
                f" {RULES.get(rule, rule)} [refusal {n} of this kind]"
            )

    def may_campaign(self, core: RaftCore) -> bool:
        """A node at the last term cannot start another one (it would leave the range)."""
        return core.term < MAX


def _in_known_conf(core: RaftCore, src: NodeId) -> bool:
    return any(src in conf.voters or src in conf.learners for _, _, conf in core._confs)


# ==== rules 1 and 2: ranges and shape (whatever our state) ===================================
def _out(*values: int) -> bool:
    return min(values) < 0 or max(values) > MAX


def _decodes(command: bytes) -> bool:
    try:
        _, conf = decode_conf_entry(command)
    except (ValueError, KeyError, TypeError, AttributeError):
        return False
    return bool(conf.voters) and not conf.voters & conf.learners


def _append_not_contiguous(core: RaftCore, m: AppendEntries) -> bool:
    index = m.prev_log_index
    for e in m.entries:
        index += 1
        if e.index != index:
            return True
    return index > MAX


def _append_entry_terms(core: RaftCore, m: AppendEntries) -> bool:
    last, term = max(m.prev_log_term, 1), m.term
    for e in m.entries:
        t = e.term
        if t < last or t > term:
            return True
        last = t
    return False


def _snapshot_meta(core: RaftCore, m: InstallSnapshot) -> bool:
    meta, conf = m.meta, m.meta.conf
    return (
        meta.index < 1
        or not 1 <= meta.term <= m.term
        or not conf.voters
        or bool(conf.voters & conf.learners)
        or not conf.promoting <= conf.learners
    )


def _from_self(core: RaftCore, m: Message) -> bool:
    return m.src == core.id


_COMMON: tuple[tuple[str, Rule], ...] = (
    ("range", lambda core, m: not 0 <= m.term <= MAX),
    ("self", _from_self),
)
_SHAPE: dict[type, tuple[tuple[str, Rule], ...]] = {
    RequestVote: (
        ("range", lambda core, m: _out(m.last_log_index, m.last_log_term)),
        ("vote_log_term", lambda core, m: m.last_log_term > m.term),
    ),
    AppendEntries: (
        ("range", lambda core, m: _out(m.prev_log_index, m.prev_log_term, m.commit)),
        ("prev_term", lambda core, m: m.prev_log_term > m.term),
        ("not_contiguous", _append_not_contiguous),
        ("entry_term", _append_entry_terms),
        (
            "bad_config",
            lambda core, m: any(e.kind is _CONFIG and not _decodes(e.command) for e in m.entries),
        ),
    ),
    InstallSnapshot: (
        (
            "range",
            lambda core, m: _out(m.meta.index, m.meta.term, m.offset, m.offset + len(m.data)),
        ),
        ("snapshot_meta", _snapshot_meta),
    ),
    AppendEntriesResponse: (
        ("range", lambda core, m: _out(m.match_index, m.reject_index, m.hint_index, m.hint_term)),
    ),
    Heartbeat: (("range", lambda core, m: _out(m.commit, m.context)),),
    HeartbeatResponse: (("range", lambda core, m: _out(m.context)),),
    InstallSnapshotResponse: (
        ("range", lambda core, m: _out(m.snapshot_index, m.next_offset, m.match_index)),
    ),
}


# ==== rule 4: against our state (messages of our term or a later one) =======================
def _second_leader(core: RaftCore, m: Message) -> bool:
    # a leader's ``lead`` is itself: this also refuses a second leader while we lead
    return m.term == core.term and core.lead is not None and core.lead != m.src


def _committed_conflict(core: RaftCore, m: AppendEntries) -> bool:
    log = core.log
    committed, snap = log.committed, log.snap_index
    if snap < m.prev_log_index <= committed and log.term(m.prev_log_index) != m.prev_log_term:
        return True
    for e in m.entries:
        if e.index > committed:
            break
        if e.index > snap and log.term(e.index) != e.term:
            return True
    return False


def _leading(core: RaftCore, m: Message) -> bool:
    """A response to this node's leadership of the message's term."""
    return m.term == core.term and core.is_leader()


def _append_response_beyond(core: RaftCore, m: AppendEntriesResponse) -> bool:
    if not _leading(core, m):
        return False
    last = core.log.last_index()
    return m.match_index > last or m.reject_index > last or m.hint_index > last + 1


def _snapshot_response_beyond(core: RaftCore, m: InstallSnapshotResponse) -> bool:
    if not _leading(core, m):
        return False
    last = core.log.last_index()
    return m.match_index > last or m.snapshot_index > last


def _snapshot_offset_beyond(core: RaftCore, m: InstallSnapshotResponse) -> bool:
    # only about the snapshot we hold: a response about an earlier one (we compacted since)
    # may name an offset beyond the new one, and the core ignores it
    snap = core.snapshot
    return (
        _leading(core, m)
        and snap is not None
        and m.snapshot_index == snap.meta.index
        and m.next_offset > len(snap.data)
    )


def _timeout_now(core: RaftCore, m: TimeoutNow) -> bool:
    """Only the leader of our current term may tell us to campaign (dissertation §3.10)."""
    return m.term != core.term or core.lead != m.src or core.is_leader()


def _unknown_read(core: RaftCore, m: HeartbeatResponse) -> bool:
    return _leading(core, m) and m.context > core._next_read


_STATE: dict[type, tuple[tuple[str, Rule], ...]] = {
    AppendEntries: (
        ("second_leader", _second_leader),
        ("committed_conflict", _committed_conflict),
    ),
    Heartbeat: (("second_leader", _second_leader),),
    InstallSnapshot: (("second_leader", _second_leader),),
    TimeoutNow: (("timeout_now", _timeout_now),),
    AppendEntriesResponse: (("beyond_log", _append_response_beyond),),
    HeartbeatResponse: (("unknown_read", _unknown_read),),
    InstallSnapshotResponse: (
        ("beyond_log", _snapshot_response_beyond),
        ("beyond_snapshot", _snapshot_offset_beyond),
    ),
}


def _num(v: int) -> str:
    """An integer for a log line (a huge one is shortened)."""
    s = str(v)
    return s if len(s) <= 24 else f"{s[:8]}...({len(s)} digits)"


#: every rule's name and what a refusal under it means
RULES = {
    "range": f"a term, index or offset outside 0..{MAX}",
    "self": "a message claiming to come from this node",
    "vote_log_term": "a candidate whose last log term is above its term",
    "prev_term": "prev_log_term above the message's term",
    "not_contiguous": "entries that do not follow prev_log_index one by one",
    "entry_term": "entry terms that decrease, are 0, or exceed the message's term",
    "bad_config": "a configuration entry that does not decode",
    "snapshot_meta": "a snapshot whose index, term or configuration is impossible",
    "stranger": "the sender is not a member of any configuration this node knows",
    "second_leader": "a second leader in the current term",
    "timeout_now": "TimeoutNow not from the leader of the current term",
    "committed_conflict": "it would change a committed entry",
    "beyond_log": "a response naming an index beyond this leader's log",
    "unknown_read": "a response to a ReadIndex round never started",
    "beyond_snapshot": "a snapshot offset beyond the snapshot",
}
