"""RaftCore: the whole Raft protocol as a pure, deterministic state machine.

Theory of operation
-------------------
The core does no I/O. Time arrives as ``tick()``, messages as ``step(msg)``, client commands
as ``propose(...)``; randomness comes only from the ``random.Random`` handed in. (A driver may
hand over a run of ticks that only advance the election clock in one ``skip_ticks(n)``;
``quiet_ticks()`` says how many are.) Everything the outside world must do is collected into
a :class:`Ready` batch. The calling contract (the
one place it is written down; every driver follows it):

1. ``rd = core.ready()`` — only when ``core.has_ready()``.
2. Send ``rd.messages``. This may happen before or while step 3 runs: no message in a Ready
   depends on that Ready's state (see below).
3. Persist ``rd.hard_state``, then ``rd.snapshot`` and ``rd.compacted``, then ``rd.entries``
   (replacing any stored suffix from their first index); *durably* (fsync).
4. If ``rd.snapshot`` is set, restore the state machine from it; then apply
   ``rd.committed_entries`` in order; serve ``rd.read_states`` once applied up to their index.
5. ``core.advance(rd)``.

No ``tick``/``step``/``propose`` between 1 and 5 (``RaftUsageError``). Persist-before-send
(Raft §5, Figure 2: "respond to RPCs only after updating stable storage") is enforced here,
not trusted to drivers, and decided in one place, ``ready()``, never where a message is
created: the messages produced since the last Ready are *held* when the Ready that is being
built carries state to persist, and released into a later Ready once ``advance`` confirms the
persist. So no handler's order of statements matters (a reply built a line before the vote it
grants is recorded is still held), and every message a Ready carries is safe to send at once.
Only a leader's replication messages are not held for its own unpersisted *entries*
(dissertation §10.2.1): they depend on nothing else undurable, and a leader counts its own log
toward a commit only once it is durable, so its fsync runs in parallel with its followers'.
They are held, like everything else, while the hard state (term, vote) is not durable.

Roles follow etcd's ``raft.go``: ``become_*`` switch the role; ``step_leader``,
``step_candidate`` and ``step_follower`` handle what a role receives; ``tick_election`` and
``tick_heartbeat`` are the two clocks. Raft sections are cited where rules are implemented.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from raft.core.errors import ConfChangeError, NotLeader, ProposalDropped, RaftUsageError
from raft.core.guard import Guard
from raft.core.log import RaftLog
from raft.core.messages import (
    LEADER_MESSAGES,
    AppendEntries,
    AppendEntriesResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    InstallSnapshotResponse,
    Message,
    RequestVote,
    RequestVoteResponse,
    TimeoutNow,
)
from raft.core.progress import Progress, ProgressState, has_quorum, quorum_match
from raft.core.types import (
    ConfChange,
    ConfChangeType,
    ConfState,
    EntryKind,
    HardState,
    LogEntry,
    NodeId,
    Snapshot,
    SnapshotMeta,
    decode_conf_entry,
    encode_conf_entry,
)


class Role(enum.Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "precandidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


# Enum members are looked up through the class on every access (~0.1 µs each in CPython
# 3.11); the hot paths compare against these module-level aliases instead.
_FOLLOWER = Role.FOLLOWER
_PRE_CANDIDATE = Role.PRE_CANDIDATE
_CANDIDATE = Role.CANDIDATE
_LEADER = Role.LEADER
_PROBE = ProgressState.PROBE
_REPLICATE = ProgressState.REPLICATE
_SNAPSHOT = ProgressState.SNAPSHOT
_NOOP = EntryKind.NOOP
_CONFIG = EntryKind.CONFIG
#: messages only a leader sends (``isinstance`` with a tuple; a ``X | Y`` union would be
#: built anew at every call)
_FROM_LEADER = (AppendEntries, Heartbeat, InstallSnapshot)


@dataclass(frozen=True, slots=True)
class RaftConfig:
    """Tunables; times are in ticks (the driver decides how long a tick is)."""

    election_ticks: int = 10  #: election timeout is drawn from [election, 2*election)
    heartbeat_ticks: int = 1
    pre_vote: bool = True  #: dissertation §9.6
    check_quorum: bool = True  #: leader steps down without a majority; followers keep a lease
    max_msg_bytes: int = 1 << 20  #: batching: bytes of entries per AppendEntries
    max_inflight: int = 256  #: pipelining: unacknowledged AppendEntries per follower
    max_apply_bytes: int = 8 << 20  #: bytes of committed entries per Ready
    max_uncommitted: int = 20_000  #: back-pressure: proposals refused beyond this many
    snapshot_chunk_bytes: int = 1 << 20
    snapshot_entries: int = 0  #: compact after this many applied entries (0: never)
    snapshot_bytes: int = 0  #: ... or after this many applied bytes (0: never)
    #: serve reads on a leader lease, without a heartbeat round (dissertation §6.4.1): safe
    #: only while no server's clock runs slower than another's by more than ``lease_drift``
    lease_read: bool = False
    #: the assumed bound on clock-rate differences (0.1: 10 %); see ``RaftCore.lease_ticks``
    lease_drift: float = 0.1

    def __post_init__(self) -> None:
        if self.heartbeat_ticks < 1 or self.election_ticks <= self.heartbeat_ticks:
            raise ValueError("need 1 <= heartbeat_ticks < election_ticks")
        if not 0 <= self.lease_drift < 1:
            raise ValueError("need 0 <= lease_drift < 1")
        if self.lease_read and not self.check_quorum:
            raise ValueError("lease_read needs check_quorum (followers keep the lease)")
        if self.max_inflight < 1 or self.max_msg_bytes < 1:
            raise ValueError("max_inflight and max_msg_bytes must be positive")


@dataclass(frozen=True, slots=True)
class ReadState:
    """A ReadIndex request resolved: serve it once applied >= ``index`` (None: failed)."""

    request: int
    index: int | None


@dataclass(slots=True)
class Ready:
    """One batch of work for the driver; see the module docstring for the contract."""

    # no defaults: only the core builds a Ready, and a plain __init__ is cheaper
    hard_state: HardState | None
    entries: list[LogEntry]
    snapshot: Snapshot | None  #: from the leader: persist, then restore the SM from it
    compacted: Snapshot | None  #: our own compaction: persist only
    messages: list[Message]
    committed_entries: list[LogEntry]
    read_states: list[ReadState]


@dataclass(slots=True)
class _IncomingSnapshot:
    meta: SnapshotMeta
    term: int
    data: bytearray


@dataclass(slots=True)
class _PendingRead:
    request: int
    index: int
    acks: set[NodeId]


class RaftCore:
    """One Raft node's protocol state. See the module docstring."""

    def __init__(
        self,
        node_id: NodeId,
        conf: ConfState,
        *,
        rng: random.Random,
        config: RaftConfig | None = None,
        hard_state: HardState | None = None,
        snapshot: Snapshot | None = None,
        entries: Sequence[LogEntry] = (),
        log: Callable[[str], None] | None = None,
    ) -> None:
        """Start (or restart from durable state) a node.

        ``conf`` is the initial configuration, used when neither ``snapshot`` nor ``entries``
        carry one. ``hard_state``, ``snapshot`` and ``entries`` are what storage loaded.
        """
        self.id = node_id
        self.cfg = config or RaftConfig()
        self.rng = rng
        self._log_fn = log
        hs = hard_state or HardState()
        self.term = hs.term
        self.vote: NodeId | None = hs.voted_for
        self._persisted_hs = hs
        self.log = RaftLog()
        self.snapshot: Snapshot | None = None
        if snapshot is not None:
            self.log = RaftLog(snapshot.meta.index, snapshot.meta.term)
            self.snapshot = snapshot
            conf = snapshot.meta.conf
        self.log.append(list(entries))
        self.log.stable_to(self.log.last_index())
        #: configurations in the log: (index, term, conf); the first is the base
        self._confs: list[tuple[int, int, ConfState]] = [
            (self.log.snap_index, self.log.snap_term, conf)
        ]
        self._record_confs(entries)
        self.role = _FOLLOWER
        self.lead: NodeId | None = None
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_timeout = 0
        self.votes: dict[NodeId, bool] = {}
        self.prs: dict[NodeId, Progress] = {}
        self.msgs: list[Message] = []
        #: ``msgs[:_msgs_cleared]`` were released by ``advance`` (or created by it, with
        #: nothing undurable): ``ready()`` never holds them again
        self._msgs_cleared = 0
        self._held: list[Message] = []
        self._in_ready = False
        self._needs_bcast = False
        self._pending_snapshot: Snapshot | None = None
        self._pending_compacted: Snapshot | None = None
        self._incoming: _IncomingSnapshot | None = None
        self._read_states: list[ReadState] = []
        self._reads: list[_PendingRead] = []
        self._reads_waiting_commit: list[int] = []
        self._next_read = 0
        #: lease reads: the tick count, each lease probe's send tick, each voter's last ack
        self._ticks = 0
        self._probes: dict[int, int] = {}
        self._acked: dict[NodeId, int] = {}
        self._lease_off = False
        self.pending_conf_index = 0
        self.transferee: NodeId | None = None
        self._transfer_elapsed = 0
        self._applied_since_snapshot = 0
        self._applied_bytes_since_snapshot = 0
        #: checks every message before step acts on it (raft.core.guard); the driver may
        #: set ``guard.roster``
        self.guard = Guard()
        self._reset_randomized_timeout()
        self._event(f"follower, term={self.term}")

    # ==== public API ======================================================================
    @property
    def conf(self) -> ConfState:
        return self._confs[-1][2]

    def is_leader(self) -> bool:
        return self.role is _LEADER

    def hard_state(self) -> HardState:
        return HardState(self.term, self.vote)

    def tick(self) -> None:
        if self._in_ready:
            self._check_outside_ready()
        self._ticks += 1
        if self.role is _LEADER:
            self.tick_heartbeat()
        else:
            self.tick_election()

    def quiet_ticks(self) -> int | None:
        """How many of the next ``tick()`` calls will do nothing but advance the election clock,
        if nothing else reaches the core in between (``None``: every one of them).

        0 for a leader (its ticks send heartbeats and check its quorum). A follower or candidate
        only counts until its election timeout fires, and never fires while not promotable. A
        driver with nothing else to do for a node may batch such ticks (``skip_ticks``) and be
        back for the first tick that acts: the simulator does.
        """
        if self.role is _LEADER:
            return 0
        if not self.promotable():
            return None
        return max(0, self.randomized_timeout - self.election_elapsed - 1)

    def skip_ticks(self, n: int) -> None:
        """Exactly ``n`` calls of ``tick()``, each of them quiet (see ``quiet_ticks``); a tick
        that would act cannot be skipped (``RaftUsageError``)."""
        if self._in_ready:
            self._check_outside_ready()
        # n > quiet_ticks(), spelled out so that the usual case costs no calls
        if n < 0 or (
            n > 0
            and (
                self.role is _LEADER
                or (n > self.randomized_timeout - self.election_elapsed - 1 and self.promotable())
            )
        ):
            raise RaftUsageError(f"{n} ticks are not quiet ({self.quiet_ticks()} are)")
        self.election_elapsed += n
        self._ticks += n

    def step(self, m: Message) -> None:
        """Receive a message (Raft §5.1: a higher term makes anyone a follower)."""
        if self._in_ready:
            self._check_outside_ready()
        if m.dst != self.id:
            raise RaftUsageError(f"{self.id} got a message for {m.dst}")
        refused = self.guard.check(self, m)  # peer input is hostile (raft.core.guard)
        if refused is not None:
            self.guard.refuse(self, m, refused)
            return
        if m.term > self.term:
            if not self._accept_higher_term(m):
                return
        elif m.term < self.term:
            self._step_stale(m)
            return
        if isinstance(m, RequestVote):
            self.handle_vote_request(m)
        elif self.role is _LEADER:
            self.step_leader(m)
        elif self.role is _FOLLOWER:
            self.step_follower(m)
        else:
            self.step_candidate(m)

    def propose(self, command: bytes, kind: EntryKind = EntryKind.NORMAL) -> tuple[int, int]:
        """Append a command on the leader; returns its ``(index, term)``.

        The entry is committed once it is applied with the same term at that index; any other
        entry showing up there means it was lost (a new leader overwrote it).
        """
        self._check_outside_ready()
        self._check_can_propose()
        if kind is _CONFIG:
            raise RaftUsageError("use propose_conf_change for configuration entries")
        return self._append_entry(kind, command)

    def propose_conf_change(self, change: ConfChange) -> tuple[int, int]:
        """Propose a single-server membership change (dissertation §4.1).

        ``ADD_VOTER`` appends the node as a learner marked for promotion; the leader proposes
        the promotion itself once the learner has caught up (§4.2.1). One change at a time.
        """
        self._check_outside_ready()
        self._check_can_propose()
        if self.pending_conf_index > self.log.committed:
            raise ConfChangeError(
                f"a membership change is still pending (index {self.pending_conf_index})"
            )
        entry = self._validate_conf_change(change)
        return self._append_conf(entry)

    def read_index(self) -> int:
        """Start a linearizable read (ReadIndex, dissertation §6.4); returns a request id.

        The answer arrives as a :class:`ReadState` in a later Ready.
        """
        self._check_outside_ready()
        if self.role is not _LEADER:
            raise NotLeader(self.lead)
        self._next_read += 1
        request = self._next_read
        if self.log.term(self.log.committed) != self.term:
            # A new leader learns the commit index only once it commits in its term (§6.4).
            self._reads_waiting_commit.append(request)
        else:
            self._start_read(request)
        return request

    def transfer_leader(self, target: NodeId) -> None:
        """Hand leadership to ``target`` (dissertation §3.10)."""
        self._check_outside_ready()
        if self.role is not _LEADER:
            raise NotLeader(self.lead)
        if target == self.id:
            return
        if target not in self.conf.voters:
            raise ConfChangeError(f"{target} is not a voter of {sorted(self.conf.voters)}")
        self.transferee = target
        self._transfer_elapsed = 0
        self._event(f"transferring leadership to {target}")
        if self.prs[target].match == self.log.last_index():
            self._send_timeout_now(target)
        else:
            self.send_append(target)

    def should_compact(self) -> bool:
        """Has the snapshot policy's threshold been crossed since the last snapshot?"""
        c = self.cfg
        if c.snapshot_entries and self._applied_since_snapshot >= c.snapshot_entries:
            return True
        return bool(c.snapshot_bytes and self._applied_bytes_since_snapshot >= c.snapshot_bytes)

    def compact(self, index: int, data: bytes) -> None:
        """The state machine's image ``data`` covers everything up to ``index`` (applied)."""
        self._check_outside_ready()
        if index <= self.log.snap_index:
            return
        term = self.log.term(index)
        assert term is not None
        meta = SnapshotMeta(index, term, self._conf_at(index))
        self.log.compact(index)
        self.snapshot = Snapshot(meta, data)
        self._pending_compacted = self.snapshot
        self._confs = [c for c in self._confs if c[0] > index]
        self._confs.insert(0, (index, term, meta.conf))
        self._applied_since_snapshot = 0
        self._applied_bytes_since_snapshot = 0

    # ==== Ready / advance =================================================================
    def has_ready(self) -> bool:
        if self.msgs or (self._needs_bcast and self.role is _LEADER):
            return True
        log = self.log
        p = self._persisted_hs
        return bool(
            self.term != p.term
            or self.vote != p.voted_for
            or log.unstable_from <= log.snap_index + len(log.entries)
            or log.committed > log.applied
            or self._pending_snapshot is not None
            or self._pending_compacted is not None
            or self._read_states
        )

    def _hs_dirty(self) -> bool:
        p = self._persisted_hs
        return self.term != p.term or self.vote != p.voted_for

    def ready(self) -> Ready:
        if self._in_ready:
            self._check_outside_ready()
        if self._needs_bcast:
            if self.role is _LEADER:
                self.bcast_append(send_if_empty=False)
            self._needs_bcast = False
        log = self.log
        p = self._persisted_hs
        term, vote = self.term, self.vote
        hs = HardState(term, vote) if term != p.term or vote != p.voted_for else None
        unstable = log.unstable_from <= log.snap_index + len(log.entries)
        msgs = self.msgs
        if len(msgs) > self._msgs_cleared and (
            hs is not None or unstable or self._pending_snapshot is not None
        ):
            msgs = self._hold(msgs, leader_ok=hs is None and self._pending_snapshot is None)
        rd = Ready(
            hs,
            log.unstable() if unstable else [],
            self._pending_snapshot,
            self._pending_compacted,
            msgs,
            log.next_committed(self.cfg.max_apply_bytes) if log.committed > log.applied else [],
            self._read_states,
        )
        self.msgs = []
        self._msgs_cleared = 0
        self._read_states = []
        self._in_ready = True
        return rd

    def _hold(self, msgs: list[Message], leader_ok: bool) -> list[Message]:
        """Persist-before-send, the one place it is decided: of ``msgs``, those produced since
        the last Ready wait in ``_held`` for the ``advance`` of the Ready being built (which
        persists everything they may depend on); returns what may leave now. ``leader_ok``:
        only entries are undurable, so a leader's replication messages may go (§10.2.1)."""
        cleared = self._msgs_cleared
        out = msgs[:cleared]
        held = self._held
        for m in msgs[cleared:]:
            if leader_ok and isinstance(m, LEADER_MESSAGES):
                out.append(m)
            else:
                held.append(m)
        return out

    def advance(self, rd: Ready) -> None:
        """The driver has done everything ``rd`` asked (persisted, sent, applied)."""
        if not self._in_ready:
            raise RaftUsageError("advance() without ready()")
        self._in_ready = False
        if rd.hard_state is not None:
            self._persisted_hs = rd.hard_state
        if rd.entries:
            self.log.stable_to(rd.entries[-1].index)
        if rd.snapshot is not None and rd.snapshot is self._pending_snapshot:
            self._pending_snapshot = None
        if rd.compacted is not None and rd.compacted is self._pending_compacted:
            self._pending_compacted = None
        if rd.committed_entries:
            self._applied(rd.committed_entries)
        # Everything the held messages may depend on was in ``rd`` (nothing can be stepped
        # between ready() and advance()), and is durable now.
        if self._held:
            self.msgs.extend(self._held)
            self._held = []
        if self.role is _LEADER:
            me = self.prs.get(self.id)
            if me is not None and me.maybe_update(self.log.unstable_from - 1):
                self.maybe_commit()
        self._msgs_cleared = len(self.msgs)

    # ==== roles ===========================================================================
    def become_follower(self, term: int, lead: NodeId | None) -> None:
        was_leader = self.role is _LEADER
        if term != self.term:
            self.term = term
            self.vote = None
            self._incoming = None
        self.role = _FOLLOWER
        self.lead = lead
        self._reset()
        if was_leader:
            self._fail_reads()
        self._event(f"follower, term={term}" + (f", leader={lead}" if lead else ""))

    def become_pre_candidate(self) -> None:
        assert self.role is not _LEADER
        self.role = _PRE_CANDIDATE
        self.lead = None
        self.votes = {}
        self.election_elapsed = 0
        self._reset_randomized_timeout()

    def become_candidate(self) -> None:
        assert self.role is not _LEADER
        self.term += 1
        self.vote = self.id
        self.role = _CANDIDATE
        self.lead = None
        self._reset()

    def become_leader(self) -> None:
        assert self.role is _CANDIDATE
        self.role = _LEADER
        self.lead = self.id
        self._reset()
        last = self.log.last_index()
        # sorted: iteration order decides message order, which must not depend on hashing
        members = sorted(self.conf.members())
        self.prs = {n: Progress(last + 1, self.cfg.max_inflight) for n in members}
        if self.id in self.prs:
            self.prs[self.id].match = self.log.stable_index()
            self.prs[self.id].become_replicate()
        # Conservatively assume an uncommitted configuration entry may be in our log.
        self.pending_conf_index = last
        self._event(f"received majority votes, becoming leader (term={self.term})")
        # Raft §8: a no-op entry of our term lets us commit (and learn) earlier entries.
        self._append_entry(_NOOP, b"")

    def _reset(self) -> None:
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self._reset_randomized_timeout()
        self.votes = {}
        self.prs = {}
        self.transferee = None
        self._needs_bcast = False
        self._probes = {}
        self._acked = {}
        self._lease_off = False

    def _reset_randomized_timeout(self) -> None:
        e = self.cfg.election_ticks
        self.randomized_timeout = self.rng.randrange(e, 2 * e)

    def promotable(self) -> bool:
        """May this node campaign? Only voters, and not while installing a snapshot."""
        return self.id in self.conf.voters and self._pending_snapshot is None

    # ==== clocks ==========================================================================
    def tick_election(self) -> None:
        self.election_elapsed += 1
        if self.election_elapsed >= self.randomized_timeout and self.promotable():
            self.election_elapsed = 0
            self.campaign(pre_vote=self.cfg.pre_vote, transfer=False, reason="election timeout")

    def tick_heartbeat(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.cfg.election_ticks:
            self.election_elapsed = 0
            if self.cfg.check_quorum and not self._quorum_active():
                self._event(f"lost contact with a majority, stepping down (term={self.term})")
                self.become_follower(self.term, None)
                return
            if self.transferee is not None:
                self._event(f"leadership transfer to {self.transferee} timed out")
                self.transferee = None
        if self.heartbeat_elapsed >= self.cfg.heartbeat_ticks:
            self.heartbeat_elapsed = 0
            if self.cfg.lease_read:  # every round renews the lease
                self.bcast_heartbeat(self._lease_probe())
            else:
                self.bcast_heartbeat(self._reads[-1].request if self._reads else 0)

    def _quorum_active(self) -> bool:
        active = [n for n, pr in self.prs.items() if pr.recent_active or n == self.id]
        for n, pr in self.prs.items():
            if n != self.id:
                pr.recent_active = False
        return has_quorum(self.conf.voters, active)

    # ==== elections =======================================================================
    def campaign(self, *, pre_vote: bool, transfer: bool, reason: str) -> None:
        if not self.guard.may_campaign(self):
            return
        if pre_vote:
            self.become_pre_candidate()
            vote_term = self.term + 1
            self._event(f"{reason}, becoming pre-candidate (term={self.term})")
        else:
            self.become_candidate()
            vote_term = self.term
            self._event(f"{reason}, becoming candidate (term={self.term})")
        self.votes[self.id] = True
        if self._tally():
            return
        peers = sorted(self.conf.voters - {self.id})
        kind = "pre-votes" if pre_vote else "votes"
        self._event(f"requested {kind} from {{{','.join(peers)}}}")
        for p in peers:
            self.send(
                RequestVote(
                    self.id,
                    p,
                    vote_term,
                    self.log.last_index(),
                    self.log.last_term(),
                    pre_vote=pre_vote,
                    transfer=transfer,
                )
            )

    def _tally(self) -> bool:
        """Count votes; act on a decision. Returns whether the election ended."""
        voters = self.conf.voters
        granted = [n for n, v in self.votes.items() if v]
        rejected = [n for n, v in self.votes.items() if not v]
        if has_quorum(voters, granted):
            if self.role is _PRE_CANDIDATE:
                self.campaign(pre_vote=False, transfer=False, reason="pre-vote won")
            else:
                self.become_leader()
            return True
        if has_quorum(voters, rejected):
            self._event(f"lost the election (term={self.term})")
            self.become_follower(self.term, None)
            return True
        return False

    def _in_lease(self) -> bool:
        """Have we heard from a live leader within the election timeout? (§6 of the
        dissertation: servers ignore RequestVote while they believe a leader exists.) With
        lease reads, also for the first election timeout after a (re)start: before a crash
        this server may have acknowledged a leader whose lease still runs."""
        return (
            self.cfg.check_quorum
            and self.lead is not None
            and self.election_elapsed < self.cfg.election_ticks
        ) or (self.cfg.lease_read and self._ticks < self.cfg.election_ticks)

    def _accept_higher_term(self, m: Message) -> bool:
        """A message from a higher term; returns whether to go on processing it."""
        if isinstance(m, RequestVote):
            if not m.transfer and self._in_lease():
                return False  # a disruptive candidate: ignore (dissertation §4.2.3)
            if m.pre_vote:
                return True  # a pre-vote never changes our term
        if isinstance(m, RequestVoteResponse) and m.pre_vote and m.granted:
            return True  # granted pre-votes carry the future term
        lead = m.src if isinstance(m, _FROM_LEADER) else None
        self.become_follower(m.term, lead)
        return True

    def _step_stale(self, m: Message) -> None:
        """A message from an older term."""
        cfg = self.cfg
        if isinstance(m, (AppendEntries, Heartbeat)) and (cfg.check_quorum or cfg.pre_vote):
            # Tell the stale leader our term, or a node that raised its term while cut off
            # could be ignored by it forever.
            self.send(AppendEntriesResponse(self.id, m.src, self.term, success=False))
        elif isinstance(m, RequestVote) and m.pre_vote:
            self.send(RequestVoteResponse(self.id, m.src, self.term, False, pre_vote=True))

    def handle_vote_request(self, m: RequestVote) -> None:
        """Raft §5.2 (one vote per term) and §5.4.1 (the election restriction)."""
        can_vote = (
            self.vote == m.src
            or (self.vote is None and self.lead is None)
            or (m.pre_vote and m.term > self.term)
        )
        if can_vote and self.log.is_up_to_date(m.last_log_index, m.last_log_term):
            self.send(RequestVoteResponse(self.id, m.src, m.term, True, m.pre_vote))
            if not m.pre_vote:
                self.vote = m.src
                self.election_elapsed = 0
                self._event(f"vote granted to {m.src} (term={m.term})")
            elif self.role is _PRE_CANDIDATE and self._yields_to(m):
                self._event(f"yielding to pre-candidate {m.src} (term={self.term})")
                self.become_follower(self.term, None)
            else:
                # Give the node we just encouraged a head start before we campaign ourselves
                # (a short postponement, not a reset: a node that keeps pre-voting cannot
                # silence us for more than this grace per election timeout of its own).
                # The timeout moves, not election_elapsed: that one also measures the lease.
                grace = max(2, self.cfg.election_ticks // 5)
                self.randomized_timeout = max(
                    self.randomized_timeout, self.election_elapsed + grace
                )
        else:
            self.send(RequestVoteResponse(self.id, m.src, self.term, False, m.pre_vote))

    def _yields_to(self, m: RequestVote) -> bool:
        """Split-vote breaker (ours, not in the paper): of two pre-candidates that hear each
        other, the one with the weaker claim (less up-to-date log, then lower id) steps back,
        so only one of them goes on to a real election (and a follower that grants a pre-vote
        postpones its own timeout a little). When exactly a majority is reachable
        (3 of 5 behind a partition), two candidates in one term can never win, and each such
        split costs another election timeout. Pre-votes change no durable state, so this
        cannot affect safety."""
        mine = (self.log.last_term(), self.log.last_index(), self.id)
        return (m.last_log_term, m.last_log_index, m.src) > mine

    # ==== per-role message handling ========================================================
    def step_follower(self, m: Message) -> None:
        if isinstance(m, _FROM_LEADER):
            self.election_elapsed = 0
            self.lead = m.src
            if isinstance(m, AppendEntries):
                self.handle_append_entries(m)
            elif isinstance(m, Heartbeat):
                self.handle_heartbeat(m)
            else:
                self.handle_snapshot(m)
        elif isinstance(m, TimeoutNow) and self.promotable():
            self.campaign(pre_vote=False, transfer=True, reason=f"timeout-now from {m.src}")

    def step_candidate(self, m: Message) -> None:
        if isinstance(m, _FROM_LEADER):
            self.become_follower(m.term, m.src)  # a leader exists in our term (§5.2)
            self.step_follower(m)
        elif isinstance(m, RequestVoteResponse):
            if m.pre_vote != (self.role is _PRE_CANDIDATE):
                return
            expected = self.term + 1 if m.pre_vote else self.term
            if m.term != expected and m.granted:
                return  # from an earlier round
            self.votes.setdefault(m.src, m.granted)
            self._tally()

    def step_leader(self, m: Message) -> None:
        pr = self.prs.get(m.src)
        if pr is None:
            return  # not (or no longer) a member
        if isinstance(m, AppendEntriesResponse):
            pr.recent_active = True
            self.handle_append_response(m, pr)
        elif isinstance(m, HeartbeatResponse):
            pr.recent_active = True
            self.handle_heartbeat_response(m, pr)
        elif isinstance(m, InstallSnapshotResponse):
            pr.recent_active = True
            self.handle_snapshot_response(m, pr)

    # ==== follower side of replication ======================================================
    def handle_append_entries(self, m: AppendEntries) -> None:
        """Raft §5.3: the consistency check, then append, then commit."""
        log = self.log
        if m.prev_log_index < log.committed:
            self.send(AppendEntriesResponse(self.id, m.src, self.term, True, log.committed))
            return
        if log.matches(m.prev_log_index, m.prev_log_term):
            last_new = log.append_after(m.prev_log_index, m.entries)
            if m.entries:
                self._sync_confs(m.entries)
            log.commit_to(min(m.commit, last_new))
            self.send(AppendEntriesResponse(self.id, m.src, self.term, True, last_new))
            return
        if m.prev_log_index > log.last_index():
            hint_index, hint_term = log.last_index() + 1, 0
        else:
            t = log.term(m.prev_log_index)
            assert t is not None
            hint_index, hint_term = log.first_index_of_term(m.prev_log_index), t
        self.send(
            AppendEntriesResponse(
                self.id,
                m.src,
                self.term,
                False,
                reject_index=m.prev_log_index,
                hint_index=hint_index,
                hint_term=hint_term,
            )
        )

    def handle_heartbeat(self, m: Heartbeat) -> None:
        self.log.commit_to(min(m.commit, self.log.last_index()))
        self.send(HeartbeatResponse(self.id, m.src, self.term, m.context))

    def handle_snapshot(self, m: InstallSnapshot) -> None:
        """Raft §7, receiver side, with chunks reassembled in order."""
        meta = m.meta
        if meta.index <= self.log.committed:
            self._reply_snapshot(m, m.offset + len(m.data), self.log.committed)
            return
        # Chunks may be lost, duplicated or late: restart only for another snapshot, accept only
        # the next expected byte, and always tell the leader how many bytes we hold.
        inc = self._incoming
        if inc is None or inc.meta != meta or inc.term != m.term:
            if m.offset != 0:
                self._reply_snapshot(m, 0, 0)
                return
            inc = self._incoming = _IncomingSnapshot(meta, m.term, bytearray())
        if m.offset != len(inc.data):
            self._reply_snapshot(m, len(inc.data), 0)
            return
        inc.data += m.data
        if not m.done:
            self._reply_snapshot(m, len(inc.data), 0)
            return
        self._incoming = None
        self._install(Snapshot(meta, bytes(inc.data)))
        self._reply_snapshot(m, len(inc.data), meta.index)

    def _install(self, snap: Snapshot) -> None:
        meta = snap.meta
        if self.log.matches(meta.index, meta.term):
            # We hold the snapshot's last entry: keep the log, just commit (Raft §7).
            self.log.commit_to(meta.index)
            return
        self._event(f"installing snapshot at index {meta.index} (term={meta.term})")
        self.log.restore(meta.index, meta.term)
        self.snapshot = snap
        self._pending_snapshot = snap
        self._pending_compacted = None
        self._confs = [(meta.index, meta.term, meta.conf)]
        self._applied_since_snapshot = 0
        self._applied_bytes_since_snapshot = 0

    def _reply_snapshot(self, m: InstallSnapshot, next_offset: int, match: int) -> None:
        self.send(
            InstallSnapshotResponse(self.id, m.src, self.term, m.meta.index, next_offset, match)
        )

    # ==== leader side of replication ========================================================
    def send(self, m: Message) -> None:
        """Queue ``m`` for the next Ready; whether it may leave then is ``ready()``'s decision
        (``_hold``), whatever this node does after this call."""
        self.msgs.append(m)

    def send_append(self, to: NodeId, send_if_empty: bool = True) -> bool:
        """Send ``to`` what it lacks (or a snapshot); returns whether anything was sent."""
        pr = self.prs[to]
        if pr.is_paused():
            return False
        log = self.log
        nxt = pr.next
        prev = nxt - 1
        prev_term = log.term(prev)
        if prev_term is None:
            return self._send_snapshot(to, pr)
        if nxt <= log.snap_index + len(log.entries):
            entries = log.slice(nxt, log.snap_index + len(log.entries), self.cfg.max_msg_bytes)
        elif send_if_empty:
            entries = []
        else:
            return False
        self.send(
            AppendEntries(self.id, to, self.term, prev, prev_term, tuple(entries), log.committed)
        )
        pr.sent(entries[-1].index if entries else prev)
        pr.recent_append = True
        return True

    def _send_snapshot(self, to: NodeId, pr: Progress) -> bool:
        snap = self.snapshot
        assert snap is not None, "entries compacted without a snapshot"
        if pr.state is not _SNAPSHOT or pr.pending_snapshot != snap.meta.index:
            pr.become_snapshot(snap.meta.index)
        self._send_snapshot_chunk(to, pr)
        return True

    def _send_snapshot_chunk(self, to: NodeId, pr: Progress) -> None:
        snap = self.snapshot
        assert snap is not None
        if pr.pending_snapshot != snap.meta.index:
            pr.become_snapshot(snap.meta.index)  # we compacted again: send the newer one
        off = pr.snapshot_offset
        chunk = snap.data[off : off + self.cfg.snapshot_chunk_bytes]
        done = off + len(chunk) >= len(snap.data)
        self.send(InstallSnapshot(self.id, to, self.term, snap.meta, off, chunk, done))

    def bcast_append(self, send_if_empty: bool) -> None:
        for n in self.prs:
            if n != self.id:
                self.send_append(n, send_if_empty)

    def bcast_heartbeat(self, context: int) -> None:
        """Heartbeats (Raft §5.2), except to a replicating follower that got an AppendEntries
        since the last one: that already reset its election timer and carried the commit index,
        and its response counts for check-quorum. A probing follower always gets one (it is
        how a lost probe is retried), and a ReadIndex round (``context``) asks everyone."""
        for n, pr in self.prs.items():
            if n == self.id:
                continue
            if pr.recent_append and not context and pr.state is _REPLICATE:
                pr.recent_append = False
                continue
            pr.recent_append = False
            commit = min(pr.match, self.log.committed)
            self.send(Heartbeat(self.id, n, self.term, commit, context))

    def handle_append_response(self, m: AppendEntriesResponse, pr: Progress) -> None:
        if not m.success:
            if m.reject_index == 0 and m.hint_index == 0:
                return  # a stale-term notice; the term check already handled it
            hint_next = m.hint_index
            if m.hint_term:
                j = self.log.last_index_of_term(m.hint_term)
                if j:
                    hint_next = j + 1
            if pr.maybe_decr_to(m.reject_index, hint_next):
                self.send_append(m.src)
            return
        was_paused = pr.is_paused()
        if not pr.maybe_update(m.match_index):
            return
        if pr.state is _PROBE:
            pr.become_replicate()
        elif pr.state is _SNAPSHOT and pr.match >= pr.pending_snapshot:
            pr.become_probe()
            pr.become_replicate()
        # A new commit index reaches followers with the next append or heartbeat; an extra
        # broadcast just for it would double the messages per command.
        if self.maybe_commit() and self.role is not _LEADER:
            return  # our own removal committed
        if was_paused:
            self.send_append(m.src)
        while self.send_append(m.src, send_if_empty=False):
            pass
        self._maybe_promote(m.src, pr)
        if m.src == self.transferee and pr.match == self.log.last_index():
            self._send_timeout_now(m.src)

    def handle_heartbeat_response(self, m: HeartbeatResponse, pr: Progress) -> None:
        if pr.state is _SNAPSHOT:
            self._send_snapshot_chunk(m.src, pr)  # resend a possibly lost chunk
        else:
            pr.paused = False
            if pr.state is _REPLICATE and pr.is_paused():
                pr.inflight.popleft()  # free a slot: messages in flight may have been lost
            if pr.match < self.log.last_index():
                self.send_append(m.src)
        if m.context:
            self._ack_read(m.src, m.context)

    def handle_snapshot_response(self, m: InstallSnapshotResponse, pr: Progress) -> None:
        if pr.state is not _SNAPSHOT or m.snapshot_index != pr.pending_snapshot:
            return
        if m.match_index:
            pr.maybe_update(m.match_index)
            pr.become_probe()
            self.send_append(m.src)
            return
        # Resume from what the receiver says it holds; a stale report costs a resend only.
        pr.snapshot_offset = m.next_offset
        self._send_snapshot_chunk(m.src, pr)

    def maybe_commit(self) -> bool:
        """Raft §5.3 and §5.4.2: commit the majority's index, but only by counting entries of the
        current term (Figure 8)."""
        mci = quorum_match(self.conf.voters, self.prs)
        if mci > self.log.committed and self.log.term(mci) == self.term:
            self.log.commit_to(mci)
            self._on_commit()
            return True
        return False

    def _on_commit(self) -> None:
        if self._reads_waiting_commit and self.log.term(self.log.committed) == self.term:
            waiting, self._reads_waiting_commit = self._reads_waiting_commit, []
            for r in waiting:
                self._start_read(r)
        if self.id not in self.conf.voters and self._conf_committed():
            # A removed leader steps down once its removal is committed (dissertation §4.2.2).
            self._event(f"removed from the configuration, stepping down (term={self.term})")
            self.become_follower(self.term, None)

    def _send_timeout_now(self, to: NodeId) -> None:
        self._event(f"sending timeout-now to {to}")
        self._lease_off = True  # the target's campaign overrides the followers' lease
        self.send(TimeoutNow(self.id, to, self.term))

    # ==== proposals and membership ==========================================================
    def _check_can_propose(self) -> None:
        if self.role is not _LEADER:
            raise NotLeader(self.lead)
        if self.transferee is not None:
            raise ProposalDropped(f"leadership transfer to {self.transferee} in progress")
        if self.log.last_index() - self.log.committed >= self.cfg.max_uncommitted:
            raise ProposalDropped(
                f"back-pressure: {self.cfg.max_uncommitted} proposals await commit; retry later"
            )

    def _append_entry(self, kind: EntryKind, command: bytes) -> tuple[int, int]:
        e = LogEntry(self.log.last_index() + 1, self.term, command, kind)
        self.log.append([e])
        if kind is _CONFIG:
            self.pending_conf_index = e.index
            self._sync_confs([e])
        self._needs_bcast = True
        return e.index, e.term

    def _validate_conf_change(self, change: ConfChange) -> ConfChange:
        conf, node = self.conf, change.node
        t = change.type
        if t is ConfChangeType.ADD_VOTER or t is ConfChangeType.ADD_LEARNER:
            if node in conf.members():
                raise ConfChangeError(f"{node} is already a member")
            return ConfChange(ConfChangeType.ADD_LEARNER, node, t is ConfChangeType.ADD_VOTER)
        if t is ConfChangeType.PROMOTE:
            if node not in conf.learners:
                raise ConfChangeError(f"{node} is not a learner")
            return change
        if node not in conf.members():
            raise ConfChangeError(f"{node} is not a member")
        if conf.voters == {node}:
            raise ConfChangeError(f"cannot remove {node}, the last voter")
        return change

    def _maybe_promote(self, node: NodeId, pr: Progress) -> None:
        """Promote a learner added as a voter once it has caught up (dissertation §4.2.1)."""
        conf = self.conf
        if node not in conf.promoting or node not in conf.learners:
            return
        if self.pending_conf_index > self.log.committed or pr.match < self.log.committed:
            return
        if self.transferee is not None:
            return
        self._event(f"{node} caught up (match={pr.match}), promoting it to voter")
        self._append_conf(ConfChange(ConfChangeType.PROMOTE, node))

    def _append_conf(self, change: ConfChange) -> tuple[int, int]:
        return self._append_entry(_CONFIG, encode_conf_entry(change, self.conf.apply(change)))

    def _conf_committed(self) -> bool:
        return self._confs[-1][0] <= self.log.committed

    def _conf_at(self, index: int) -> ConfState:
        conf = self._confs[0][2]
        for i, _, c in self._confs:
            if i <= index:
                conf = c
        return conf

    def _record_confs(self, entries: Sequence[LogEntry]) -> None:
        for e in entries:
            if e.kind is _CONFIG and e.index > self._confs[-1][0]:
                _, conf = decode_conf_entry(e.command)
                self._confs.append((e.index, e.term, conf))

    def _sync_confs(self, entries: Sequence[LogEntry]) -> None:
        """A configuration takes effect when appended, and is undone if truncated away."""
        confs = self._confs
        before = confs[-1][2]
        while len(confs) > 1 and self.log.term(confs[-1][0]) != confs[-1][1]:
            confs.pop()
        self._record_confs(entries)
        after = confs[-1][2]
        if after is not before and after != before:
            self._on_conf_change(before)

    def _on_conf_change(self, before: ConfState) -> None:
        conf = self.conf
        self._event(
            f"configuration: voters={{{','.join(sorted(conf.voters))}}}"
            + (f" learners={{{','.join(sorted(conf.learners))}}}" if conf.learners else "")
        )
        if self.role is not _LEADER:
            return
        for n in sorted(conf.members() - self.prs.keys()):
            self.prs[n] = Progress(self.log.last_index() + 1, self.cfg.max_inflight)
        for n in sorted(self.prs.keys() - conf.members() - {self.id}):
            del self.prs[n]
        if self.transferee is not None and self.transferee not in conf.voters:
            self.transferee = None

    # ==== ReadIndex =========================================================================
    def _start_read(self, request: int) -> None:
        read = _PendingRead(request, self.log.committed, {self.id})
        if has_quorum(self.conf.voters, read.acks) or self._lease_valid():
            self._read_states.append(ReadState(request, read.index))
            return
        self._reads.append(read)
        if self.cfg.lease_read:
            self._probes[request] = self._ticks
        self.bcast_heartbeat(request)

    # ---- lease reads (dissertation §6.4.1) --------------------------------------------------
    # Every heartbeat round of a leader with lease reads carries a fresh context (a "probe",
    # numbered with the read requests) whose send tick it records. A follower that answers a
    # probe reset its election timer when the probe arrived, so it refuses other candidates
    # for ``election_ticks`` of its own ticks from then (``_in_lease``). Once a majority has
    # answered probe p (or a later one), no other leader can be elected before
    # ``election_ticks`` of the slowest of those clocks pass from p's send: the leader serves
    # reads at its commit index, without a round, for ``lease_ticks`` of its own ticks after
    # p's send. That holds only while its ticks are not slower than a follower's by more than
    # ``lease_drift``; not after it sent TimeoutNow (the target's campaign overrides the
    # lease); and a restarted server keeps the lease it may have promised (``_in_lease``).
    @property
    def lease_ticks(self) -> int:
        """How long a lease lasts, in this leader's ticks, from the send of the probe a
        majority answered: ``(election_ticks - 1) * (1 - lease_drift)``, rounded down (one tick
        less: a follower's first tick may come right after the probe)."""
        return int((self.cfg.election_ticks - 1) * (1 - self.cfg.lease_drift))

    def _lease_probe(self) -> int:
        self._next_read += 1
        self._probes[self._next_read] = self._ticks
        horizon = self._ticks - self.lease_ticks
        for old in [c for c, sent in self._probes.items() if sent < horizon]:
            del self._probes[old]
        return self._next_read

    def _lease_valid(self) -> bool:
        if not self.cfg.lease_read or self._lease_off or self.role is not _LEADER:
            return False
        acked = sorted(
            (self._next_read if n == self.id else self._acked.get(n, 0) for n in self.conf.voters),
            reverse=True,
        )
        probe = acked[len(acked) // 2] if acked else 0  # the latest probe a majority answered
        sent = self._probes.get(probe)
        return sent is not None and self._ticks - sent < self.lease_ticks

    def _ack_read(self, node: NodeId, context: int) -> None:
        if self.cfg.lease_read and context > self._acked.get(node, 0):
            self._acked[node] = context
        done = 0
        for k, read in enumerate(self._reads):
            if read.request <= context:
                read.acks.add(node)
                if has_quorum(self.conf.voters, read.acks):
                    done = k + 1
        for read in self._reads[:done]:
            self._read_states.append(ReadState(read.request, read.index))
        del self._reads[:done]

    def _fail_reads(self) -> None:
        for read in self._reads:
            self._read_states.append(ReadState(read.request, None))
        for r in self._reads_waiting_commit:
            self._read_states.append(ReadState(r, None))
        self._reads = []
        self._reads_waiting_commit = []

    # ==== misc ==============================================================================
    def _applied(self, entries: Sequence[LogEntry]) -> None:
        self.log.applied_to(entries[-1].index)
        self._applied_since_snapshot += len(entries)
        self._applied_bytes_since_snapshot += sum(len(e.command) for e in entries)

    def _check_outside_ready(self) -> None:
        if self._in_ready:
            raise RaftUsageError("the core was called between ready() and advance()")

    def _event(self, text: str) -> None:
        if self._log_fn is not None:
            self._log_fn(text)
