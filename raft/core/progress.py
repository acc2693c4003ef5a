"""The leader's view of each follower, and quorum arithmetic.

Theory of operation (after etcd's ``tracker`` package)
------------------------------------------------------
A leader keeps one :class:`Progress` per peer:

* ``match`` — the highest index known to be on the peer's disk; only grows while this node is
  leader (responses carry it; stale or duplicated responses are ignored).
* ``next`` — the next index to send; ``match < next`` always.
* ``state``:
    - PROBE: we do not know where the peer's log matches ours. Send one AppendEntries at a
      time and wait (``paused``) for its answer or the next heartbeat response.
    - REPLICATE: the peer is in step; send optimistically (pipelining), advancing ``next`` as
      we send, bounded by ``max_inflight`` unacknowledged messages.
    - SNAPSHOT: the entries the peer needs are compacted away; an InstallSnapshot is in
      flight and nothing else is sent until it completes.
* ``recent_active`` — heard from in the current check-quorum window (Raft §6.2, "a leader
  steps down if an election timeout elapses without a successful round of heartbeats to a
  majority of its cluster").

Quorum: a value is committed when the voters holding it form a majority (Raft §5.3).
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable, Mapping
from typing import TypeVar

_K = TypeVar("_K", bound=str)


class ProgressState(enum.Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


# aliases: an enum member looked up through its class costs ~0.1 µs in CPython 3.11
_PROBE = ProgressState.PROBE
_REPLICATE = ProgressState.REPLICATE
_SNAPSHOT = ProgressState.SNAPSHOT


class Progress:
    __slots__ = (
        "inflight",
        "match",
        "max_inflight",
        "next",
        "paused",
        "pending_snapshot",
        "recent_active",
        "recent_append",
        "snapshot_offset",
        "state",
    )

    def __init__(self, next_index: int, max_inflight: int) -> None:
        self.match = 0
        self.next = next_index
        self.state = _PROBE
        self.paused = False
        self.inflight: deque[int] = deque()  #: last index of each unacknowledged message
        self.max_inflight = max_inflight
        self.pending_snapshot = 0
        self.snapshot_offset = 0
        self.recent_active = False
        #: an AppendEntries went out since the last heartbeat tick (the heartbeat is redundant)
        self.recent_append = False

    def __repr__(self) -> str:
        return (
            f"Progress({self.state.value} match={self.match} next={self.next}"
            f" inflight={len(self.inflight)} paused={self.paused})"
        )

    def become_probe(self) -> None:
        if self.state is _SNAPSHOT:
            self.next = max(self.match + 1, self.pending_snapshot + 1)
        else:
            self.next = self.match + 1
        self.state = _PROBE
        self.paused = False
        self.inflight.clear()
        self.pending_snapshot = 0

    def become_replicate(self) -> None:
        self.state = _REPLICATE
        self.next = self.match + 1
        self.paused = False
        self.inflight.clear()

    def become_snapshot(self, index: int) -> None:
        self.state = _SNAPSHOT
        self.pending_snapshot = index
        self.snapshot_offset = 0
        self.inflight.clear()

    def is_paused(self) -> bool:
        if self.state is _PROBE:
            return self.paused
        if self.state is _REPLICATE:
            return len(self.inflight) >= self.max_inflight
        return True

    def sent(self, last_index: int) -> None:
        """An AppendEntries ending at ``last_index`` (or a probe) went out."""
        if self.state is _REPLICATE:
            if last_index >= self.next:
                self.next = last_index + 1
                self.inflight.append(last_index)
        elif self.state is _PROBE:
            self.paused = True

    def maybe_update(self, index: int) -> bool:
        """A success response for ``index``; returns whether ``match`` advanced."""
        updated = index > self.match
        if updated:
            self.match = index
            self.paused = False
        self.next = max(self.next, index + 1)
        while self.inflight and self.inflight[0] <= index:
            self.inflight.popleft()
        return updated

    def maybe_decr_to(self, rejected: int, hint_next: int) -> bool:
        """A rejection of the probe at ``rejected``; returns False if it is stale."""
        if self.state is _REPLICATE:
            if rejected <= self.match:
                return False
            self.become_probe()
            self.next = max(self.match + 1, min(hint_next, rejected))
            return True
        if self.next - 1 != rejected:
            return False  # not an answer to the probe we have outstanding
        self.next = max(self.match + 1, min(hint_next, rejected))
        self.paused = False
        return True


def quorum_index(voters: Iterable[str], match: dict[str, int]) -> int:
    """The highest index held by a majority of ``voters`` (0 if there are none)."""
    values = sorted([match.get(v, 0) for v in voters], reverse=True)
    if not values:
        return 0
    return values[len(values) // 2]


def quorum_match(voters: Iterable[_K], prs: Mapping[_K, Progress]) -> int:
    """``quorum_index`` of the ``match`` of each voter's progress (0 for one without)."""
    values = sorted([prs[v].match if v in prs else 0 for v in voters], reverse=True)
    if not values:
        return 0
    return values[len(values) // 2]


def has_quorum(voters: Iterable[str], yes: Iterable[str]) -> bool:
    """Do the ``yes`` votes form a majority of ``voters``?"""
    vs = set(voters)
    return len(vs & set(yes)) > len(vs) // 2
