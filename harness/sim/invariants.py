"""Raft's safety properties, checked incrementally after every simulator step.

Each check costs O(1) per event it looks at, so it can run after every step of thousands of
seeded runs:

* election safety — at most one leader per term (Raft §5.2), and its cause: no node grants
  votes to two candidates in one term, also across a crash;
* log matching — if two logs hold an entry with the same index and term, the logs are identical
  up to it (§5.3). Every entry a node persists gets a chained hash ``H(chain(i-1), term,
  command)``; the first chain seen for ``(index, term)`` is remembered and any other is a
  violation;
* leader completeness — a new leader holds every committed entry (§5.4). By log matching it
  suffices that it holds the highest committed entry with its term;
* state machine safety — no two nodes apply different entries at one index (§5.4.3);
* current-term commit — a leader moves its commit index only onto an entry of its own term
  (§5.4.2; counting replicas of an older entry is what Figure 8 shows to be unsafe);
* commit index monotonic — within a node's life, ``committed`` never goes back;
* durability — every acknowledged command stays at its index (also across crashes);
* guard — no node's guard (``raft.core.guard``) refuses a message: every simulated node is
  correct, so a refusal is a rule that would cost a real cluster a correct message (checked
  by the world, which sees the core's events).

The world (:mod:`harness.sim.world`) adds checks that need what it alone can see:

* vote_not_durable — when a node crashes, every vote it granted and sent is on its disk;
* commit_not_durable — a leader commits an entry only once a majority's *disks* hold it;
* leader_without_quorum — with check-quorum, a leader no majority answered for two election
  timeouts has stepped down;
* config_overlap — a leader appends a membership change only once the previous one committed;
* read_index_stale — a ReadIndex read is at least the highest index committed anywhere when
  the read arrived;
* exactly_once — the KV store agrees with an independent model that applies each client
  command once; linearizability — the clients' history, checked at the end of the run;
* liveness — after the faults end, a leader and every member caught up; stuck — a run over its
  budget of events or wall time.

A violation is recorded as data (kind, time, detail); the world stops at the first.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Violation:
    kind: str
    time_us: int
    detail: str

    def describe(self) -> str:
        return f"[t={self.time_us / 1e6:.6f}s] {self.kind}: {self.detail}"


KINDS = (
    "election_safety",
    "double_vote",
    "log_matching",
    "leader_completeness",
    "state_machine_safety",
    "commit_monotonic",
    "leader_commit_term",
    "durability",
    "vote_not_durable",
    "commit_not_durable",
    "leader_without_quorum",
    "config_overlap",
    "read_index_stale",
    "exactly_once",
    "linearizability",
    "liveness",
    "stuck",
    "exception",
)


class Invariants:
    def __init__(self) -> None:
        self.violations: list[Violation] = []
        self.now_us = 0
        self._leaders: dict[int, str] = {}
        self._chain_at: dict[tuple[int, int], int] = {}
        self._applied: dict[int, tuple[int, bytes]] = {}
        self.max_committed = 0
        self.committed_term: dict[int, int] = {}
        self._acked: dict[int, bytes] = {}
        self._votes: dict[tuple[str, int], str] = {}

    def fail(self, kind: str, detail: str) -> None:
        self.violations.append(Violation(kind, self.now_us, detail))

    def became_leader(self, node: str, term: int, term_at: dict[int, int | None]) -> None:
        """``term_at`` maps the highest committed index to the new leader's term there."""
        other = self._leaders.setdefault(term, node)
        if other != node:
            self.fail("election_safety", f"{other} and {node} both leader in term {term}")
        mc = self.max_committed
        if mc and term_at.get(mc) != self.committed_term[mc]:
            self.fail(
                "leader_completeness",
                f"{node} elected in term {term} lacks committed entry {mc} "
                f"(term {self.committed_term[mc]}; it has {term_at.get(mc)})",
            )

    def vote_granted(self, voter: str, term: int, candidate: str) -> None:
        first = self._votes.setdefault((voter, term), candidate)
        if first != candidate:
            self.fail("double_vote", f"{voter} voted for {first} and {candidate} in term {term}")

    def persisted(self, node: str, index: int, term: int, chain: int) -> None:
        seen = self._chain_at.setdefault((index, term), chain)
        if seen != chain:
            self.fail(
                "log_matching",
                f"{node} holds entry {index} of term {term} with a different log before it",
            )

    def committed(self, node: str, index: int, term: int) -> None:
        t = self.committed_term.setdefault(index, term)
        if t != term:
            self.fail(
                "state_machine_safety",
                f"{node} committed index {index} in term {term}, another node in term {t}",
            )
        if index > self.max_committed:
            self.max_committed = index

    def applied(self, node: str, index: int, term: int, command: bytes) -> None:
        prev = self._applied.setdefault(index, (term, command))
        if prev != (term, command):
            self.fail(
                "state_machine_safety",
                f"{node} applied {command!r} (term {term}) at {index}; another node applied "
                f"{prev[1]!r} (term {prev[0]})",
            )
        acked = self._acked.get(index)
        if acked is not None and acked != command:
            self.fail(
                "durability", f"{node} applied {command!r} at {index}, acknowledged was {acked!r}"
            )

    def acknowledged(self, index: int, command: bytes) -> None:
        self._acked[index] = command

    def acked_items(self) -> list[tuple[int, bytes]]:
        return sorted(self._acked.items())

    def commit_regressed(self, node: str, before: int, after: int) -> None:
        self.fail("commit_monotonic", f"{node} commit index went from {before} to {after}")
