"""Status polling during a chaos run: who leads, and whether the nodes have converged.

Theory of operation
-------------------
A :class:`StatusMonitor` polls every node's status on its direct client port (never through
the proxies, so a partition does not hide a node from the monitor) about every
``POLL_INTERVAL_S``, through the system's :class:`~harness.system.Leadership` capability; a
system without it gives no samples (expectations that need them are "not applicable").
Each answer becomes a :class:`Sample` stamped with the monotonic time it
arrived; samples of leaders are kept, so elections can be timed against the faults afterwards
(:mod:`harness.expectations`), and every node's changes of role are kept
(:attr:`StatusMonitor.role_changes`: the role record of a system whose nodes keep none). A
paused, dead or silent node gives ``None``. The cluster has
*converged* when every node answers with one (commit, applied, last index).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from harness.local import Cluster

POLL_INTERVAL_S = 0.02


@dataclass(frozen=True, slots=True)
class Sample:
    """One node's status as seen at ``time_ns`` (monotonic, when its answer arrived)."""

    time_ns: int
    node: str
    role: str
    term: int
    commit: int
    applied: int
    last_index: int


class StatusMonitor:
    """Polls every running node's status on its direct port; keeps the leader samples."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.leader_samples: list[Sample] = []
        #: node -> every change of (role, term) it reported: (monotonic ns, role, term); the
        #: role record of a system whose nodes keep none of their own
        self.role_changes: dict[str, list[tuple[int, str, int]]] = {}
        self.latest: dict[str, Sample | None] = {}
        self.leader: tuple[str, int] | None = None

    async def poll(self) -> dict[str, Sample | None]:
        """One concurrent round over the nodes; a paused, dead or silent node gives ``None``."""
        nodes = self.cluster.members
        found = await asyncio.gather(*(self._poll_node(n) for n in nodes))
        out = dict(zip(nodes, found, strict=True))
        self.latest = out
        for s in out.values():
            if s is None:
                continue
            seen = self.role_changes.setdefault(s.node, [])
            if not seen or seen[-1][1:] != (s.role, s.term):
                seen.append((s.time_ns, s.role, s.term))
        leaders = [s for s in out.values() if s is not None and s.role == "leader"]
        self.leader_samples.extend(leaders)
        best = max(leaders, key=lambda s: s.term, default=None)
        self.leader = None if best is None else (best.node, best.term)
        return out

    async def _poll_node(self, node: str) -> Sample | None:
        st = await self.cluster.status(node, 0.3)
        if st is None:
            return None
        return Sample(
            time.monotonic_ns(), node, st.role, st.term, st.commit, st.applied, st.last_index
        )

    async def run(self) -> None:
        """Poll until cancelled."""
        while True:
            await self.poll()
            await asyncio.sleep(POLL_INTERVAL_S)

    async def wait_converged(self, timeout: float) -> tuple[bool, dict[str, Sample | None]]:
        """Poll until every node reports the same commit, applied and last index."""
        deadline = time.monotonic() + timeout
        while True:
            found = await self.poll()
            if converged(found) or time.monotonic() > deadline:
                return converged(found), found
            await asyncio.sleep(0.1)

    def close(self) -> None:
        """Nothing of its own to release (the system's connections: ``cluster.disconnect``)."""


def converged(found: dict[str, Sample | None]) -> bool:
    """Every node answered and all report one (commit, applied, last_index)."""
    if any(s is None for s in found.values()):
        return False
    marks = {(s.commit, s.applied, s.last_index) for s in found.values() if s is not None}
    return len(marks) == 1


def sample_json(s: Sample | None) -> dict[str, Any] | None:
    """A sample as results.json stores it."""
    if s is None:
        return None
    return {"role": s.role, "term": s.term, "commit": s.commit, "applied": s.applied,
            "last_index": s.last_index}  # fmt: skip
