"""Read every node's durable storage from disk and check Raft's invariants across the nodes.

Each data directory is read with :func:`raft.storage.read_data_dir`: the same reader as
``FileStorage``, read-only, without the write lock (a torn tail is reported, not cut). A node
sees what it would load on restart: its hard state, its snapshot point and the log after it.

Invariants checked, each violation returned as data (:class:`Violation`), never raised:

* ``terms_monotonic`` — along each log, terms never decrease (Raft §5.3: a leader appends
  entries of its own term after entries it received).
* ``hard_state_term`` — the hard-state term is at least the last log term and the snapshot
  term (a node persists a term before it accepts entries of that term).
* ``log_matching`` — if two nodes hold an entry with the same index and term, their logs are
  identical up to that index (Raft §5.3, Log Matching), over the indexes both still hold.
* ``snapshot_conflict`` — a node's snapshot point (index, term) is committed: any node that
  holds an entry at that index holds it with that term (State Machine Safety, §5.4.3).
* ``committed_divergence`` — no two nodes hold different entries at an index at or below the
  committed index. The caller passes ``committed_index``, or it is inferred as the highest
  index at which a majority of all nodes hold the same entry (or have snapshotted past it).
* ``corrupted`` / ``unreadable`` — a directory failed its checksums, or could not be read.

Comparison is linear in the total log size: each log gets a polynomial prefix hash over its
entries, so any range of two logs is compared in O(1) and the first differing index is found
by binary search.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import struct
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from raft.core.types import HardState, LogEntry, SnapshotMeta
from raft.storage import (
    CommitMark,
    StorageCorrupted,
    StorageError,
    TornTail,
    VoteRecord,
    read_data_dir,
    read_votes,
)

_MOD = (1 << 61) - 1
_BASE = 1_000_003
_HEAD = struct.Struct("<QQB")


def _entry_value(entry: LogEntry) -> int:
    head = _HEAD.pack(entry.index, entry.term, entry.kind)
    digest = hashlib.blake2b(head + entry.command, digest_size=8).digest()
    return int.from_bytes(digest, "little") % _MOD


@dataclass(frozen=True, slots=True)
class NodeStorage:
    """One node's durable state as it would load it on restart."""

    node_id: str
    directory: Path
    hard_state: HardState
    snapshot: SnapshotMeta | None
    log: list[LogEntry]  #: entries after the snapshot point, as ``load_log`` returns them
    torn_tail: TornTail | None
    _prefix: list[int] = field(default_factory=list, repr=False, compare=False)
    _values: list[int] = field(default_factory=list, repr=False, compare=False)
    #: the leader's commit decisions in its WAL (``COMMIT`` records), oldest first
    commits: list[CommitMark] = field(default_factory=list, repr=False, compare=False)
    #: the vote log (``None``: the directory has none)
    votes: list[VoteRecord] | None = field(default=None, repr=False, compare=False)

    @property
    def first_index(self) -> int:
        """Index of the first log entry (one past the snapshot point if the log is empty)."""
        return self.log[0].index if self.log else self.snapshot_index + 1

    @property
    def last_index(self) -> int:
        return self.log[-1].index if self.log else self.snapshot_index

    @property
    def snapshot_index(self) -> int:
        return self.snapshot.index if self.snapshot else 0

    @property
    def last_term(self) -> int:
        if self.log:
            return self.log[-1].term
        return self.snapshot.term if self.snapshot else 0

    def entry(self, index: int) -> LogEntry | None:
        if self.log and self.first_index <= index <= self.last_index:
            return self.log[index - self.first_index]
        return None

    def value(self, index: int) -> int:
        """The hash of the entry at ``index`` (which the log must hold)."""
        return self._values[index - self.first_index]

    def range_hash(self, lo: int, hi: int) -> int:
        """Hash of the entries ``lo..hi`` (inclusive; both must be in the log)."""
        a, b = lo - self.first_index, hi - self.first_index + 1
        return (self._prefix[b] - self._prefix[a] * pow(_BASE, b - a, _MOD)) % _MOD


def read_node(node_id: str, directory: Path) -> NodeStorage:
    """Read one data directory (raises ``StorageCorrupted`` / ``StorageError``)."""
    view = read_data_dir(directory)
    values = [_entry_value(e) for e in view.log]
    prefix = [0]
    for v in values:
        prefix.append((prefix[-1] * _BASE + v) % _MOD)
    return NodeStorage(
        node_id,
        Path(directory),
        view.hard_state,
        view.snapshot_meta,
        view.log,
        view.torn,
        prefix,
        values,
        view.commits,
        read_votes(directory),
    )


@dataclass(frozen=True, slots=True)
class Violation:
    """An invariant that does not hold: which, between which nodes, where, and how."""

    kind: str
    nodes: tuple[str, ...]
    index: int | None
    detail: str

    def to_dict(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "nodes": list(self.nodes),
            "index": self.index,
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """The nodes as read from disk and every violation found."""

    nodes: dict[str, NodeStorage]
    committed_index: int
    committed_inferred: bool
    violations: list[Violation]

    @property
    def valid(self) -> bool:
        return not self.violations

    def to_dict(self) -> dict[str, object]:
        return {
            "valid": self.valid,
            "committed_index": self.committed_index,
            "committed_index_inferred": self.committed_inferred,
            "nodes": {nid: _node_summary(n) for nid, n in sorted(self.nodes.items())},
            "violations": [v.to_dict() for v in self.violations],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def _node_summary(node: NodeStorage) -> dict[str, object]:
    snap = node.snapshot
    return {
        "directory": str(node.directory),
        "term": node.hard_state.term,
        "voted_for": node.hard_state.voted_for,
        "snapshot": None if snap is None else {"index": snap.index, "term": snap.term},
        "first_index": node.first_index,
        "last_index": node.last_index,
        "last_term": node.last_term,
        "entries": len(node.log),
        "torn_tail": None if node.torn_tail is None else str(node.torn_tail),
    }


# ----------------------------------------------------------------------------- the checks


def check_node(node: NodeStorage) -> list[Violation]:
    """The per-node invariants: monotonic terms, hard-state term."""
    found = []
    nid = (node.node_id,)
    prev_term = node.snapshot.term if node.snapshot else 0
    for e in node.log:
        if e.term < prev_term:
            detail = f"term {e.term} at index {e.index} after term {prev_term}"
            found.append(Violation("terms_monotonic", nid, e.index, detail))
            break
        prev_term = e.term
    if node.hard_state.term < node.last_term:
        detail = f"hard-state term {node.hard_state.term} < last log term {node.last_term}"
        found.append(Violation("hard_state_term", nid, node.last_index, detail))
    return found


def _first_difference(a: NodeStorage, b: NodeStorage, lo: int, hi: int) -> int | None:
    """The first index in ``lo..hi`` where the logs differ, or ``None``."""
    if a.range_hash(lo, hi) == b.range_hash(lo, hi):
        return None
    left, right = lo, hi  # invariant: the ranges differ by ``right``
    while left < right:
        mid = (left + right) // 2
        if a.range_hash(lo, mid) == b.range_hash(lo, mid):
            left = mid + 1
        else:
            right = mid
    return left


def _describe(a: NodeStorage, b: NodeStorage, index: int) -> str:
    ea, eb = a.entry(index), b.entry(index)
    assert ea is not None
    assert eb is not None
    return (
        f"{a.node_id} has (term {ea.term}, {ea.command[:24]!r}), "
        f"{b.node_id} has (term {eb.term}, {eb.command[:24]!r})"
    )


def check_pair(a: NodeStorage, b: NodeStorage, committed: int) -> list[Violation]:
    """Log matching, snapshot points and committed agreement between two nodes."""
    found = _snapshot_conflicts(a, b) + _snapshot_conflicts(b, a)
    lo, hi = max(a.first_index, b.first_index), min(a.last_index, b.last_index)
    if not a.log or not b.log or lo > hi:
        return found
    pair = (a.node_id, b.node_id)
    top = next((i for i in range(hi, lo - 1, -1) if _term(a, i) == _term(b, i)), None)
    diff = None if top is None else _first_difference(a, b, lo, top)
    if top is not None and diff is not None:
        detail = f"same entry at {top} but logs differ at {diff}: {_describe(a, b, diff)}"
        found.append(Violation("log_matching", pair, diff, detail))
    upto = min(hi, committed)
    diff = None if upto < lo else _first_difference(a, b, lo, upto)
    if diff is not None:
        detail = f"differ at {diff} <= committed {committed}: {_describe(a, b, diff)}"
        found.append(Violation("committed_divergence", pair, diff, detail))
    return found


def _term(node: NodeStorage, index: int) -> int:
    entry = node.entry(index)
    assert entry is not None, (node.node_id, index)
    return entry.term


def _snapshot_conflicts(a: NodeStorage, b: NodeStorage) -> list[Violation]:
    if a.snapshot is None:
        return []
    at = b.entry(a.snapshot.index)
    if at is None or at.term == a.snapshot.term:
        return []
    detail = (
        f"{a.node_id} snapshotted index {a.snapshot.index} at term {a.snapshot.term}, "
        f"{b.node_id} holds it with term {at.term}"
    )
    return [Violation("snapshot_conflict", (a.node_id, b.node_id), a.snapshot.index, detail)]


def infer_committed_index(nodes: Mapping[str, NodeStorage], cluster_size: int) -> int:
    """The highest index at which a majority of ``cluster_size`` nodes hold the same entry
    (a node whose snapshot covers the index counts with every group)."""
    majority = cluster_size // 2 + 1
    top = max((n.last_index for n in nodes.values()), default=0)
    for index in range(top, 0, -1):
        covered = sum(1 for n in nodes.values() if n.snapshot_index >= index)
        groups = Counter(
            n.value(index)
            for n in nodes.values()
            if n.snapshot_index < index and n.entry(index) is not None
        )
        best = max(groups.values(), default=0)
        if covered + best >= majority:
            return index
    return 0


def replay_cluster(dirs: Mapping[str, Path], committed_index: int | None = None) -> ReplayResult:
    """Read every node's directory and check the invariants across them."""
    nodes: dict[str, NodeStorage] = {}
    violations: list[Violation] = []
    for node_id, directory in sorted(dirs.items()):
        try:
            nodes[node_id] = read_node(node_id, Path(directory))
        except StorageCorrupted as exc:
            violations.append(Violation("corrupted", (node_id,), exc.offset, str(exc)))
        except StorageError as exc:
            violations.append(Violation("unreadable", (node_id,), None, str(exc)))
    inferred = committed_index is None
    committed = committed_index
    if committed is None:
        committed = infer_committed_index(nodes, len(dirs))
    for node in nodes.values():
        violations.extend(check_node(node))
    for a, b in itertools.combinations(sorted(nodes.values(), key=lambda n: n.node_id), 2):
        violations.extend(check_pair(a, b, committed))
    return ReplayResult(nodes, committed, inferred, violations)
