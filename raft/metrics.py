"""Prometheus metrics of a :class:`~raft.node.RaftNode`, served over HTTP by prometheus_client.

Theory of operation
-------------------
Metrics are off unless the node is given ``metrics_address`` (``orbital node`` turns them on).
Then the node keeps a :class:`NodeMetrics`: plain integer counters it bumps on its own event
loop thread (elections, leader changes, snapshots, proposals, messages sent and dropped by
kind) and two histograms (proposal latency: proposed on this node until applied here; fsync
latency: one persist of a Ready, i.e. one group commit). Everything else (term, role, commit
and applied index, per-peer match index and lag, inbox depth) is read from the node at scrape
time, so it costs the node nothing between scrapes. prometheus_client serves them (its HTTP
server, its registry, a custom collector); the histograms are :class:`Buckets`, counted here
and exported as prometheus_client histogram families, because its own ``Histogram.observe``
takes a lock and walks the buckets in Python: 0.7-1.5 µs per call against 0.2 µs for a
``bisect`` into a list, on a path taken once per command (``bench/metrics.py`` measures the
whole cost).

A scrape arrives on prometheus_client's HTTP server thread. It must not read the core while
the event loop changes it (a dict resized mid-iteration), so :class:`_Collector` hands the
read to the node's loop (``call_soon_threadsafe``) and waits for it at most
``SCRAPE_TIMEOUT_S``; a node whose loop does not answer in time (paused, overloaded) is
scraped as ``orbital_raft_up 0`` alone.

Exported (every name starts ``orbital_raft_``; ``node`` is a label on each):

========================================  =========  =========================================
``up``                                    gauge      1 when the loop answered the scrape
``term``, ``commit_index``,               gauge      the node's current values
``applied_index``, ``last_index``,
``snapshot_index``
``role``                                  gauge      1 for the node's role (label ``role``)
``is_leader``                             gauge      1 on the leader
``leader_changes_total``                  counter    times this node learned of a new leader
``elections_started_total``               counter    campaigns (terms it stood as candidate)
``elections_won_total``                   counter    terms it became leader
``proposals_total``                       counter    proposals accepted into the leader's log
``proposal_seconds``                      histogram  proposal until applied (leader side)
``fsync_seconds``                         histogram  one durable persist (group commit)
``snapshots_taken_total``                 counter    compactions of the log into a snapshot
``snapshots_installed_total``             counter    snapshots received and restored
``peer_match_index``, ``peer_lag``        gauge      leader only, per peer (label ``peer``):
                                                     highest index known replicated, and
                                                     ``last_index - match``
``messages_sent_total``                   counter    per message kind (label ``kind``)
``messages_dropped_total``                counter    per kind and reason: ``inbox_full``,
                                                     ``refused`` (the core rejected it)
``transport_dropped_total``               counter    the transport's own drops (``direction``)
``inbox_depth``                           gauge      queued items (label ``inbox``)
========================================  =========  =========================================
"""

from __future__ import annotations

import asyncio
import bisect
import concurrent.futures
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from raft.node import RaftNode

__all__ = ["Buckets", "MetricsServer", "NodeMetrics", "parse_address"]

PREFIX = "orbital_raft_"
SCRAPE_TIMEOUT_S = 1.0
#: seconds: from 0.25 ms (an fsync on a fast disk) to 10 s (a proposal across an election)
BUCKETS = (
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
ROLES = ("follower", "precandidate", "candidate", "leader")


def parse_address(address: str) -> tuple[str, int]:
    """``"host:port"`` -> ``(host, port)``; raises ``ValueError`` naming the problem."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"metrics address must be HOST:PORT, got {address!r}")
    return host, int(port)


class Buckets:
    """A histogram's counts: ``observe`` is one ``bisect`` and two additions. Observed by one
    thread at a time (the node's loop, or its persist thread while the loop waits for it)."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...] = BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  #: per bucket (not cumulative); last: +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def family(self, name: str, text: str, node: str) -> HistogramMetricFamily:
        cumulative, running = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            cumulative.append((_le(bound), float(running)))
        h = HistogramMetricFamily(name, text, labels=["node"])
        h.add_metric([node], cumulative, self.total)
        return h

    def copy(self) -> Buckets:
        b = Buckets(self.bounds)
        b.counts, b.total = list(self.counts), self.total
        return b


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


class NodeMetrics:
    """The counters a node bumps, and its registry (one per node: several nodes may share a
    process). Only the node's event-loop thread changes the plain counters."""

    def __init__(self, node: RaftNode[Any]) -> None:
        self.node = node
        self.registry = CollectorRegistry(auto_describe=True)
        self.leader_changes = 0
        self.elections_started = 0
        self.elections_won = 0
        self.proposals = 0
        self.snapshots_taken = 0
        self.snapshots_installed = 0
        #: message class -> count (the class, not its name: no string work per message)
        self.sent: dict[type, int] = {}
        self.dropped: dict[tuple[type, str], int] = {}
        self.proposal_seconds = Buckets()
        self.fsync_seconds = Buckets()
        self.collector = _Collector(self)
        self.registry.register(self.collector)

    # -- bumped by the node (its own thread) ----------------------------------------------
    def count_sent(self, messages: list[Any]) -> None:
        sent = self.sent
        for m in messages:
            t = type(m)
            sent[t] = sent.get(t, 0) + 1

    def count_dropped(self, message: object, reason: str) -> None:
        key = (type(message), reason)
        self.dropped[key] = self.dropped.get(key, 0) + 1

    def role_entered(self, role: str) -> None:
        if role == "candidate":
            self.elections_started += 1
        elif role == "leader":
            self.elections_won += 1

    # -- read on the node's loop at scrape time ----------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Every scrape-time value, read in one go on the node's loop."""
        node = self.node
        core, log = node.core, node.core.log
        last = log.last_index()
        peers: dict[str, int] = {}
        if core.is_leader():
            peers = {str(p): pr.match for p, pr in core.prs.items() if p != node.id}
        transport = node.transport
        return {
            "term": core.term,
            "role": core.role.value,
            "commit_index": log.committed,
            "applied_index": log.applied,
            "last_index": last,
            "snapshot_index": log.snap_index,
            "peers": peers,
            "counters": {
                "leader_changes": self.leader_changes,
                "elections_started": self.elections_started,
                "elections_won": self.elections_won,
                "proposals": self.proposals,
                "snapshots_taken": self.snapshots_taken,
                "snapshots_installed": self.snapshots_installed,
            },
            "sent": {t.__name__: n for t, n in self.sent.items()},
            "dropped": {(t.__name__, r): n for (t, r), n in self.dropped.items()},
            "transport_dropped": {
                "send": int(getattr(transport, "dropped_sends", 0)),
                "receive": int(getattr(transport, "dropped_frames", 0)),
            },
            "inbox": {"raft": len(node._raft_inbox), "client": len(node._client_inbox)},
            "proposal_seconds": self.proposal_seconds.copy(),
            "fsync_seconds": self.fsync_seconds.copy(),
        }


_HELP = {
    "leader_changes": "Times this node learned of a new leader",
    "elections_started": "Campaigns: terms this node stood as candidate",
    "elections_won": "Terms this node became leader",
    "proposals": "Proposals accepted into this node's log as leader",
    "snapshots_taken": "Log compactions into a snapshot",
    "snapshots_installed": "Snapshots received from a leader and restored",
}


class _Collector(Collector):
    """Turns :meth:`NodeMetrics.snapshot` into metric families at scrape time."""

    def __init__(self, metrics: NodeMetrics) -> None:
        self.metrics = metrics
        self.loop: asyncio.AbstractEventLoop | None = None

    def describe(self) -> list[Metric]:
        return []  # families vary with the node's state (peers, kinds)

    def _read(self) -> dict[str, Any] | None:
        loop = self.loop
        if loop is None or loop.is_closed():
            return None
        fut: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()

        def read() -> None:
            try:
                fut.set_result(self.metrics.snapshot())
            except Exception as exc:  # the scrape reports it; the node goes on
                fut.set_exception(exc)

        try:
            loop.call_soon_threadsafe(read)
            return fut.result(SCRAPE_TIMEOUT_S)
        except (RuntimeError, concurrent.futures.TimeoutError):
            return None

    def collect(self) -> Iterator[Metric]:
        node = str(self.metrics.node.id)
        snap = self._read()
        up = GaugeMetricFamily(PREFIX + "up", "1 when the node's loop answered", labels=["node"])
        up.add_metric([node], 0 if snap is None else 1)
        yield up
        if snap is None:
            return
        yield snap["proposal_seconds"].family(
            PREFIX + "proposal_seconds", "Proposal on this node (leader) until applied here", node
        )
        yield snap["fsync_seconds"].family(
            PREFIX + "fsync_seconds",
            "One durable persist of a Ready (hard state, snapshot, entries: one group commit)",
            node,
        )
        yield from _gauges(node, snap)
        for name, value in snap["counters"].items():
            c = CounterMetricFamily(PREFIX + name, _HELP[name], labels=["node"])
            c.add_metric([node], value)
            yield c
        sent = CounterMetricFamily(
            PREFIX + "messages_sent",
            "Raft messages handed to the transport",
            labels=["node", "kind"],
        )
        for kind, n in sorted(snap["sent"].items()):
            sent.add_metric([node, kind], n)
        yield sent
        dropped = CounterMetricFamily(
            PREFIX + "messages_dropped",
            "Received Raft messages dropped by the node",
            labels=["node", "kind", "reason"],
        )
        for (kind, reason), n in sorted(snap["dropped"].items()):
            dropped.add_metric([node, kind, reason], n)
        yield dropped
        tdrop = CounterMetricFamily(
            PREFIX + "transport_dropped",
            "Frames the transport dropped",
            labels=["node", "direction"],
        )
        for direction, n in snap["transport_dropped"].items():
            tdrop.add_metric([node, direction], n)
        yield tdrop


def _gauges(node: str, snap: dict[str, Any]) -> Iterator[Metric]:
    for name, text in (
        ("term", "Current term"),
        ("commit_index", "Highest log index known committed"),
        ("applied_index", "Highest log index applied to the state machine"),
        ("last_index", "Index of the last log entry"),
        ("snapshot_index", "Index covered by the latest snapshot"),
    ):
        g = GaugeMetricFamily(PREFIX + name, text, labels=["node"])
        g.add_metric([node], snap[name])
        yield g
    role = GaugeMetricFamily(
        PREFIX + "role", "1 for the node's current role", labels=["node", "role"]
    )
    for r in ROLES:
        role.add_metric([node, r], 1 if snap["role"] == r else 0)
    yield role
    leader = GaugeMetricFamily(PREFIX + "is_leader", "1 on the leader", labels=["node"])
    leader.add_metric([node], 1 if snap["role"] == "leader" else 0)
    yield leader
    match = GaugeMetricFamily(
        PREFIX + "peer_match_index", "Leader only: index known replicated on the peer",
        labels=["node", "peer"],
    )  # fmt: skip
    lag = GaugeMetricFamily(
        PREFIX + "peer_lag", "Leader only: entries the peer lacks (last_index - match)",
        labels=["node", "peer"],
    )  # fmt: skip
    for peer, m in sorted(snap["peers"].items()):
        match.add_metric([node, peer], m)
        lag.add_metric([node, peer], max(0, snap["last_index"] - m))
    yield match
    yield lag
    inbox = GaugeMetricFamily(PREFIX + "inbox_depth", "Queued items", labels=["node", "inbox"])
    for name, n in snap["inbox"].items():
        inbox.add_metric([node, name], n)
    yield inbox


class MetricsServer:
    """prometheus_client's HTTP server for one node's registry, stopped by :meth:`close`."""

    def __init__(self, httpd: WSGIServer, metrics: NodeMetrics) -> None:
        self._httpd = httpd
        self.metrics = metrics
        host, port = httpd.server_address[:2]
        host = host.decode() if isinstance(host, bytes) else host
        self.address = f"{host}:{port}"
        self.url = f"http://{self.address}/metrics"

    @classmethod
    def start(cls, metrics: NodeMetrics, address: str) -> MetricsServer:
        """Serve ``metrics`` on ``address`` (port 0: any free port); call on the node's loop."""
        host, port = parse_address(address)
        metrics.collector.loop = asyncio.get_running_loop()
        httpd, _thread = start_http_server(port, host, registry=metrics.registry)
        return cls(httpd, metrics)

    def close(self) -> None:
        """Stop serving and free the port."""
        self._httpd.shutdown()
        self._httpd.server_close()
