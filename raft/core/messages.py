"""The messages Raft nodes exchange (Raft §5, Figure 2; dissertation §3.10, §4.2.3, §6.4, §9.6).

One frozen, slotted dataclass per message kind (built by :func:`~raft.core.types.fast_init`).
Every message carries ``src``, ``dst`` and the sender's ``term``. Heartbeats are their own kind
(as in etcd) rather than empty AppendEntries: they carry ``commit = min(match, committed)`` so a
follower never learns a commit index beyond what it is known to hold, and the ReadIndex context.

Wire encoding is the transport's business (``raft.wire``, used by ``raft.transport``); the core only
sees these.
"""

from __future__ import annotations

from dataclasses import dataclass

from raft.core.types import LogEntry, NodeId, SnapshotMeta, fast_init


@fast_init
@dataclass(frozen=True, slots=True)
class RequestVote:
    """A candidate asks for a vote; ``pre_vote`` asks whether one *would* be granted (§9.6)."""

    src: NodeId
    dst: NodeId
    term: int  #: the term the candidate is (or, for a pre-vote, would be) campaigning in
    last_log_index: int
    last_log_term: int
    pre_vote: bool = False
    transfer: bool = False  #: campaign started by TimeoutNow: overrides the leader lease


@fast_init
@dataclass(frozen=True, slots=True)
class RequestVoteResponse:
    src: NodeId
    dst: NodeId
    term: int
    granted: bool
    pre_vote: bool = False


@fast_init
@dataclass(frozen=True, slots=True)
class AppendEntries:
    src: NodeId
    dst: NodeId
    term: int
    prev_log_index: int
    prev_log_term: int
    entries: tuple[LogEntry, ...]
    commit: int


@fast_init
@dataclass(frozen=True, slots=True)
class AppendEntriesResponse:
    """Success carries the index the follower now matches; a rejection carries a hint.

    Fast back-up (§5.3, "the leader can ... bypass all of the conflicting entries in that
    term"): on a rejection ``reject_index`` echoes the ``prev_log_index`` that failed, and
    ``hint_index``/``hint_term`` say where the follower's log could next match: its last index
    when it is too short (``hint_term`` 0), else the first index of the conflicting term.
    """

    src: NodeId
    dst: NodeId
    term: int
    success: bool
    match_index: int = 0
    reject_index: int = 0
    hint_index: int = 0
    hint_term: int = 0


@fast_init
@dataclass(frozen=True, slots=True)
class Heartbeat:
    src: NodeId
    dst: NodeId
    term: int
    commit: int
    context: int = 0  #: ReadIndex round being confirmed (0: none)


@fast_init
@dataclass(frozen=True, slots=True)
class HeartbeatResponse:
    src: NodeId
    dst: NodeId
    term: int
    context: int = 0


@fast_init
@dataclass(frozen=True, slots=True)
class InstallSnapshot:
    """One chunk of a snapshot (Raft §7): ``offset`` into its data, ``done`` on the last."""

    src: NodeId
    dst: NodeId
    term: int
    meta: SnapshotMeta
    offset: int
    data: bytes
    done: bool


@fast_init
@dataclass(frozen=True, slots=True)
class InstallSnapshotResponse:
    """``next_offset`` is the byte the receiver expects next; after ``done``, ``match_index``."""

    src: NodeId
    dst: NodeId
    term: int
    snapshot_index: int
    next_offset: int
    match_index: int = 0


@fast_init
@dataclass(frozen=True, slots=True)
class TimeoutNow:
    """Leadership transfer: the receiver campaigns at once (dissertation §3.10)."""

    src: NodeId
    dst: NodeId
    term: int


Message = (
    RequestVote
    | RequestVoteResponse
    | AppendEntries
    | AppendEntriesResponse
    | Heartbeat
    | HeartbeatResponse
    | InstallSnapshot
    | InstallSnapshotResponse
    | TimeoutNow
)

#: Messages a leader sends to replicate; they depend on nothing the leader has not persisted
#: already (its term and vote were made durable when it campaigned), so they may leave before
#: the current batch's entries are on disk (dissertation §10.2.1). Every other message is a
#: reply or a vote request and waits for the persist.
LEADER_MESSAGES = (AppendEntries, Heartbeat, InstallSnapshot, TimeoutNow)
