"""Snapshots: compaction, InstallSnapshot to a new or lagging follower, crashes around an
install, bounded log retention, and restart from snapshot plus log suffix.

The simulated tests run the real core in :class:`~harness.sim.lab.LabCluster` (simulated time,
every invariant checked after every step, ``snapshot_chunk_bytes`` is 64). The last tests
drive the core and :class:`~raft.storage.FileStorage` directly.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from harness.sim.lab import LabCluster
from harness.sim.world import SimNode
from raft.core.messages import AppendEntries, AppendEntriesResponse, InstallSnapshot, Message
from raft.core.messages import InstallSnapshotResponse as ISResp
from raft.core.raft import RaftConfig, RaftCore, Ready, Role
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
    encode_conf_entry,
)
from raft.storage import FileStorage, MemoryStorage, Storage

THRESHOLD = 10  #: snapshot_entries in the simulated tests


# ---- helpers ------------------------------------------------------------------------------
def core_of(node: SimNode) -> RaftCore:
    assert node.core is not None, f"{node.name} is down"
    return node.core


def leader_node(lab: LabCluster) -> SimNode:
    return lab.node(lab.check_one_leader())


def commit_many(lab: LabCluster, count: int, expected: int, prefix: str = "c") -> list[int]:
    return [lab.one(f"{prefix}{i}".encode(), expected=expected) for i in range(count)]


def add_voter(lab: LabCluster, leader: SimNode, name: str) -> None:
    """Start a spare node with empty storage and propose it as a voter (as the nemesis does)."""
    lab.restart(name)  # a spare that never ran: starts on its fresh, empty disk
    core_of(leader).propose_conf_change(ConfChange(ConfChangeType.ADD_VOTER, NodeId(name)))
    lab.world._pump(leader)


def assert_exact_suffix(node: SimNode, leader: SimNode) -> None:
    """The node's log holds exactly the entries after its snapshot point: contiguous, equal to
    the leader's at the same indexes, and what its disk holds (no stale remnants)."""
    log = core_of(node).log
    lead_log = core_of(leader).log
    indexes = [e.index for e in log.entries]
    assert indexes == list(range(log.snap_index + 1, log.last_index() + 1)), (
        node.name,
        log.snap_index,
        indexes,
    )
    for e in log.entries:
        if lead_log.snap_index < e.index <= lead_log.last_index():
            assert lead_log.entry(e.index) == e, (node.name, e, lead_log.entry(e.index))
    disk_snap = node.disk.load_snapshot()
    assert disk_snap is not None, f"{node.name} has no snapshot on disk"
    assert disk_snap.meta.index == log.snap_index
    assert disk_snap.meta.term == log.snap_term
    durable = [e for e in log.entries if e.index <= log.stable_index()]
    assert node.disk.load_log() == durable, f"{node.name}: disk log differs from memory"


def caught_up(node: SimNode, leader: SimNode) -> bool:
    if node.core is None or leader.core is None:
        return False
    lead = leader.core.log
    return node.core.log.applied == lead.applied == lead.committed == lead.last_index()


def install_events(lines: list[str], name: str) -> list[int]:
    """Indexes of the snapshots ``name`` installed, from the trace."""
    tag = f"] {name}: installing snapshot at index "
    return [int(line.split(tag)[1].split()[0]) for line in lines if tag in line]


# ---- a new follower receives InstallSnapshot ------------------------------------------------
def test_new_follower_receives_installs_and_catches_up() -> None:
    lines: list[str] = []
    lab = LabCluster(3, seed=1, spare_nodes=1, snapshot_entries=THRESHOLD, trace=lines.append)
    leader = leader_node(lab)
    commit_many(lab, 60, expected=3)
    snap_at = core_of(leader).log.snap_index
    assert snap_at >= 50, "the leader compacted its log"
    for name in ("n1", "n2", "n3"):
        assert core_of(lab.node(name)).log.snap_index > 0, f"{name} never compacted"

    n4 = lab.node("n4")
    add_voter(lab, leader, "n4")
    assert lab.run_until(
        lambda: caught_up(n4, leader) and "n4" in core_of(leader).conf.voters, timeout=3.0
    ), "n4 did not catch up and get promoted"

    installed = install_events(lines, "n4")
    assert installed, "n4 never installed a snapshot"
    assert installed[0] >= snap_at
    # It received the prefix as a snapshot, never as entries: it applied nothing below it.
    assert n4.applied_log is not None
    assert min(n4.applied_log) == installed[0] + 1
    assert core_of(n4).log.snap_index > 0
    assert n4.disk.load_snapshot() is not None
    assert n4.sm_hash == leader.sm_hash
    assert_exact_suffix(n4, leader)

    # It takes part from now on: a 4-voter cluster commits on all four, n4 included.
    commit_many(lab, 25, expected=4, prefix="after")
    assert lab.run_until(lambda: caught_up(n4, leader), timeout=1.0)
    assert n4.sm_hash == leader.sm_hash
    assert_exact_suffix(n4, leader)
    assert core_of(n4).conf == core_of(leader).conf


@pytest.mark.parametrize("new_commands", [30, 60])
def test_stale_uncommitted_suffix_is_discarded_by_snapshot(new_commands: int) -> None:
    """An old leader holding uncommitted entries of its term gets the new leader's snapshot on
    healing and keeps none of them (the classic remnant bug). With 30 new commands the
    snapshot point falls inside its stale entries, with 60 past their end."""
    lines: list[str] = []
    lab = LabCluster(3, seed=5, snapshot_entries=THRESHOLD, trace=lines.append)
    old = leader_node(lab)
    commit_many(lab, 5, expected=3)
    lab.disconnect(old.name)
    stale = [f"stale{i}".encode() for i in range(40)]
    for cmd in stale:
        assert lab.submit(old.name, cmd) is not None
    old_log = core_of(old).log
    stale_from, stale_to = old_log.committed + 1, old_log.last_index()

    new = leader_node(lab)
    assert new is not old
    commit_many(lab, new_commands, expected=2, prefix="new")
    new_log = core_of(new).log
    assert new_log.snap_index > stale_from
    assert (new_log.snap_index < stale_to) == (new_commands == 30)
    assert old_log.term(new_log.snap_index) != new_log.snap_term

    lab.connect(old.name)
    assert lab.run_until(lambda: caught_up(old, new), timeout=3.0)
    assert install_events(lines, old.name), "the old leader was not sent a snapshot"
    assert_exact_suffix(old, new)
    assert old.sm_hash == new.sm_hash
    kept = {e.command for e in core_of(old).log.entries} | {e.command for e in old.disk.load_log()}
    assert not kept & set(stale), "stale entries survived the snapshot"
    assert old.applied_log is not None
    assert not set(old.applied_log.values()) & set(stale)


# ---- crashes in the middle of an install ----------------------------------------------------
def big_compaction(lab: LabCluster, leader: SimNode, size: int) -> Snapshot:
    """Have the leader compact now with a large image (the simulator's format
    ``applied:sm_hash`` followed by padding), so it travels in many 64-byte chunks."""
    core = core_of(leader)
    i = 0
    while core.log.applied <= core.log.snap_index:
        lab.one(b"pad%d" % i, expected=3)
        i += 1
    applied = core.log.applied
    core.compact(applied, f"{applied}:{leader.sm_hash}:".encode() + b"." * size)
    lab.world._pump(leader)
    snap = core.snapshot
    assert snap is not None
    assert snap.meta.index == applied
    assert lab.run_until(lambda: leader.disk.load_snapshot() == snap, timeout=0.1)
    return snap


def test_crash_after_some_chunks_restarts_clean_and_catches_up() -> None:
    lab = LabCluster(3, seed=2, spare_nodes=1, snapshot_entries=THRESHOLD)
    leader = leader_node(lab)
    commit_many(lab, 23, expected=3)
    snap = big_compaction(lab, leader, 2000)
    chunks = -(-len(snap.data) // 64)
    assert chunks > 30

    n4 = lab.node("n4")
    add_voter(lab, leader, "n4")

    def mid_install() -> bool:
        inc = core_of(n4)._incoming
        return inc is not None and len(inc.data) >= 10 * 64

    assert lab.run_until(mid_install, timeout=1.0, step=0.0002)
    lab.crash("n4")
    # Nothing of the half-received snapshot reached the disk.
    assert n4.disk.load_snapshot() is None
    assert n4.disk.load_log() == []
    lab.run_for(0.1)
    lab.restart("n4")
    core = core_of(n4)
    assert core.log.snap_index == 0
    assert core.log.entries == []
    assert n4.sm_hash == 0

    assert lab.run_until(
        lambda: caught_up(n4, leader) and "n4" in core_of(leader).conf.voters, timeout=5.0
    )
    got = n4.disk.load_snapshot()
    assert got is not None
    assert got.meta == snap.meta
    assert got.data == snap.data, "chunks reassembled wrongly"
    assert n4.sm_hash == leader.sm_hash
    assert_exact_suffix(n4, leader)


def test_crash_between_receipt_and_persist() -> None:
    """The last chunk arrived, the snapshot is being written: crash. The receiver must not have
    acknowledged it (persist before reply), and restarts from whatever prefix of the write
    survived (the snapshot or nothing), consistent, then catches up. Seeds 0-7 see both."""
    outcomes = set()
    for seed in range(8):
        outcomes.add(crash_while_writing_snapshot(seed))
    assert outcomes == {True, False}, "both a kept and a lost snapshot write were exercised"


def crash_while_writing_snapshot(seed: int) -> bool:
    lab = LabCluster(3, seed=seed, spare_nodes=1, snapshot_entries=THRESHOLD)
    # LabCluster pins fsync_us to 0 (passing it is a TypeError); give writes a duration here.
    for node in lab.world.nodes:
        node.fsync_us = 2_000
    leader = leader_node(lab)
    commit_many(lab, 25, expected=3)
    snap = big_compaction(lab, leader, 300)

    n4 = lab.node("n4")
    add_voter(lab, leader, "n4")

    def writing_snapshot() -> bool:
        return n4.busy is not None and n4.busy.snapshot is not None

    assert lab.run_until(writing_snapshot, timeout=2.0, step=0.0001), seed
    pr = core_of(leader).prs[NodeId("n4")]
    assert pr.match < snap.meta.index, "the leader learned of a snapshot not yet durable"
    lab.crash("n4")
    on_disk = n4.disk.load_snapshot()
    assert on_disk is None or on_disk == snap  # atomic: all or nothing
    lab.run_for(0.05)
    lab.restart("n4")
    log = core_of(n4).log
    assert log.snap_index == (0 if on_disk is None else snap.meta.index)
    assert [e.index for e in log.entries] == list(range(log.snap_index + 1, log.last_index() + 1))

    assert lab.run_until(
        lambda: caught_up(n4, leader) and "n4" in core_of(leader).conf.voters, timeout=5.0
    ), seed
    assert n4.sm_hash == leader.sm_hash
    assert_exact_suffix(n4, leader)
    return on_disk is not None


def test_late_duplicate_first_chunk_does_not_stall_install() -> None:
    """The leader re-sends the current chunk on every heartbeat response while a snapshot is
    in flight, so a second copy of chunk 0 is routine; the network may deliver it late.

    Regression (found by this test): any ``offset == 0`` chunk used to start a new
    reassembly, so the receiver fell back to 64 bytes and answers ``next_offset=64``. Leader
    (``handle_snapshot_response``): ``next_offset < pr.snapshot_offset and next_offset != 0``
    is dropped as "a stale duplicate", so it keeps sending the chunk at its higher offset,
    which the receiver refuses with ``next_offset=64`` again, forever (until a new leader).
    Found with seed 13 (and 26) of the crash-between-receipt-and-persist scenario
    (fsync 2 ms), where the heartbeat-response copy of chunk 0 overtook nothing but arrived
    after chunk 64 had been accepted.
    """
    lab = LabCluster(3, seed=2, spare_nodes=1, snapshot_entries=THRESHOLD)
    leader = leader_node(lab)
    commit_many(lab, 23, expected=3)
    snap = big_compaction(lab, leader, 600)
    world = lab.world
    send = world._send
    copies: list[InstallSnapshot] = []

    def late_copy_of_first_chunk(m: Message) -> None:
        send(m)
        if isinstance(m, InstallSnapshot) and m.dst == "n4" and m.offset == 0 and not copies:
            copies.append(m)  # a second copy of chunk 0, delivered 8 ms later
            world.at(world.now + 8_000, lambda: world._deliver(m))

    world._send = late_copy_of_first_chunk  # type: ignore[method-assign]
    n4 = lab.node("n4")
    add_voter(lab, leader, "n4")
    done = lab.run_until(lambda: caught_up(n4, leader), timeout=3.0)
    assert copies
    inc = core_of(n4)._incoming
    assert done, (
        f"n4 holds {len(inc.data) if inc is not None else 0} bytes, "
        f"the leader sends from offset {core_of(leader).prs[NodeId('n4')].snapshot_offset} "
        f"of {len(snap.data)}"
    )


def test_leader_compacting_during_a_transfer_does_not_stall_it() -> None:
    """Regression (found by this test). The leader compacts again (a new snapshot S2) while
    sending S1 in chunks. Its progress
    for the receiver stays SNAPSHOT with ``pending_snapshot = S1.index`` and the S1 offset;
    ``_send_snapshot_chunk`` then sends S2's meta with S2's data at that offset. The receiver
    (reassembling S1) refuses it with ``next_offset=0`` and ``snapshot_index = S2.index``,
    which ``handle_snapshot_response`` ignores (``m.snapshot_index != pr.pending_snapshot``).
    SNAPSHOT progress is always paused, so nothing else restarts the transfer: the heartbeat
    path re-sends the same refused chunk forever (until another node leads)."""
    lab = LabCluster(3, seed=2, spare_nodes=1, snapshot_entries=THRESHOLD)
    leader = leader_node(lab)
    commit_many(lab, 23, expected=3)
    s1 = big_compaction(lab, leader, 600)
    n4 = lab.node("n4")
    add_voter(lab, leader, "n4")

    def mid_install() -> bool:
        inc = core_of(n4)._incoming
        return inc is not None and len(inc.data) >= 2 * 64

    assert lab.run_until(mid_install, timeout=1.0, step=0.0001)
    core = core_of(leader)
    for i in range(3):
        assert lab.submit(leader.name, b"more%d" % i) is not None
    assert lab.run_until(lambda: core.log.applied > s1.meta.index, timeout=0.1, step=0.0001)
    core.compact(core.log.applied, f"{core.log.applied}:{leader.sm_hash}".encode())
    lab.world._pump(leader)
    done = lab.run_until(lambda: caught_up(n4, leader), timeout=3.0)
    pr = core.prs[NodeId("n4")]
    assert done, (
        f"n4 stuck at snap_index {core_of(n4).log.snap_index}; leader progress {pr} "
        f"pending_snapshot={pr.pending_snapshot} offset={pr.snapshot_offset}, "
        f"its snapshot is at {core.log.snap_index}"
    )


# ---- long run: the retained log stays bounded --------------------------------------------
def test_retained_log_stays_bounded_over_2000_commands() -> None:
    """Sampled after every simulator step on every node: the applied part of the retained log
    stays under the threshold, and the whole of it under the threshold plus what is in
    flight (appended, not yet known committed)."""
    lab = LabCluster(3, seed=9, snapshot_entries=THRESHOLD)
    world = lab.world
    worst_applied: dict[str, int] = dict.fromkeys(lab.names, 0)
    worst_total: dict[str, int] = dict.fromkeys(lab.names, 0)
    worst_inflight = 0
    original = world._after_step

    def after_step(node: SimNode) -> None:
        nonlocal worst_inflight
        original(node)
        for n in world.nodes:
            if n.core is not None:
                log = n.core.log
                worst_applied[n.name] = max(worst_applied[n.name], log.applied - log.snap_index)
                worst_total[n.name] = max(worst_total[n.name], len(log.entries))
                worst_inflight = max(worst_inflight, log.last_index() - log.applied)

    world._after_step = after_step  # type: ignore[method-assign]
    leader = leader_node(lab)
    sent = 0
    while sent < 2000:
        if lab.submit(leader.name, b"x%d" % sent) is not None:
            sent += 1
        lab.run_for(0.001)
    assert lab.run_until(
        lambda: all(caught_up(lab.node(n), leader) for n in lab.names), timeout=2.0
    )
    assert core_of(leader).log.committed >= 2001
    # A command every 1 ms; a follower learns a commit index with the next append, at the
    # latest with the next heartbeat (3 ticks = 30 ms): at most 30 commands in flight.
    inflight_margin = 30
    assert worst_inflight <= inflight_margin, worst_inflight
    for name in lab.names:
        assert worst_applied[name] < THRESHOLD, (name, worst_applied)
        assert worst_total[name] < THRESHOLD + inflight_margin, (name, worst_total)
        log = core_of(lab.node(name)).log
        assert log.snap_index >= 2001 - THRESHOLD
        assert len(log.entries) < THRESHOLD
        assert lab.node(name).sm_hash == leader.sm_hash


# ---- restart from snapshot plus log suffix ---------------------------------------------------
def test_restart_from_snapshot_plus_suffix() -> None:
    lab = LabCluster(3, seed=4, snapshot_entries=THRESHOLD)
    leader = leader_node(lab)
    indexes = commit_many(lab, 35, expected=3)
    follower = next(lab.node(n) for n in lab.names if lab.node(n) is not leader)
    assert lab.run_until(lambda: caught_up(follower, leader), timeout=1.0)

    def state(node: SimNode) -> tuple[int, int, list[LogEntry], int, int]:
        log = core_of(node).log
        return log.snap_index, log.snap_term, list(log.entries), log.applied, node.sm_hash

    before = state(follower)
    snap_index, _, entries, applied, sm_hash = before
    assert snap_index > 0, "precondition: a snapshot"
    assert entries, "precondition: a non-empty suffix"

    lab.crash(follower.name)
    lab.restart(follower.name)
    log = core_of(follower).log
    assert (log.snap_index, log.snap_term, log.entries) == before[:3]
    assert log.applied == snap_index  # the state machine restarts from the snapshot image
    assert lab.run_until(lambda: caught_up(follower, leader), timeout=1.0)
    assert state(follower) == before  # re-applied the suffix to the same state

    # Now every node at once: the cluster recovers; nothing committed is lost.
    committed = {i: lab.get_committed(leader.name, i) for i in indexes}
    sm_before = {n: lab.node(n).sm_hash for n in lab.names}
    for name in lab.names:
        lab.crash(name)
    for name in lab.names:
        lab.restart(name)
        log = core_of(lab.node(name)).log
        assert log.snap_index > 0
        assert log.entries
    leader = leader_node(lab)
    assert lab.run_until(
        lambda: all(caught_up(lab.node(n), leader) for n in lab.names), timeout=2.0
    )
    for name in lab.names:
        node = lab.node(name)
        # only a no-op was added since the crash: the state machine is the same
        assert node.sm_hash == sm_before[name] == sm_hash
        assert core_of(node).log.applied > applied
        assert_exact_suffix(node, leader)
    lead_log = core_of(leader).log
    for i, cmd in committed.items():
        if i > lead_log.snap_index:
            assert lead_log.entry(i).command == cmd
    final = lab.one(b"after-restart", expected=3)
    assert final > max(indexes)


# ---- FileStorage ------------------------------------------------------------------------
CONF3 = ConfState(frozenset({NodeId("n1"), NodeId("n2"), NodeId("n3")}))


def test_file_storage_restart_from_snapshot_plus_suffix(tmp_path: Path) -> None:
    learner_conf = ConfState(CONF3.voters, frozenset({NodeId("n4")}))
    change = ConfChange(ConfChangeType.ADD_LEARNER, NodeId("n4"))
    log = [LogEntry(i, 1 if i <= 12 else 2, b"cmd%d" % i) for i in range(1, 31)]
    log[24] = LogEntry(25, 2, encode_conf_entry(change, learner_conf), EntryKind.CONFIG)
    snap = Snapshot(SnapshotMeta(20, 2, CONF3), b"image-at-20")
    with FileStorage(tmp_path, segment_size=512) as fs:
        fs.save_state(HardState(2, NodeId("n1")))
        fs.append_log(log[:22])
        fs.save_snapshot(snap)
        fs.append_log(log[22:])
    with FileStorage(tmp_path, segment_size=512) as fs:
        hs, got_snap, suffix = fs.load_state(), fs.load_snapshot(), fs.load_log()
    assert hs == HardState(2, NodeId("n1"))
    assert got_snap == snap
    assert suffix == log[20:]
    core = RaftCore(
        NodeId("n2"),
        CONF3,
        rng=random.Random(0),
        hard_state=hs,
        snapshot=got_snap,
        entries=suffix,
    )
    assert (core.log.snap_index, core.log.snap_term) == (20, 2)
    assert core.log.entries == log[20:]
    assert core.log.last_index() == 30
    assert core.log.committed == core.log.applied == 20
    assert core.conf == learner_conf  # the config entry in the suffix is in force
    assert (core.term, core.vote) == (2, "n1")


class _Driver:
    """A single-node cluster on FileStorage following the Ready contract, with a list of
    commands as its state machine (its image: the list as JSON)."""

    def __init__(self, directory: Path) -> None:
        self.store = FileStorage(directory, segment_size=1024)
        snap = self.store.load_snapshot()
        self.sm: list[str] = json.loads(snap.data) if snap is not None else []
        self.core = RaftCore(
            NodeId("n1"),
            ConfState(frozenset({NodeId("n1")})),
            rng=random.Random(7),
            config=RaftConfig(snapshot_entries=THRESHOLD),
            hard_state=self.store.load_state(),
            snapshot=snap,
            entries=self.store.load_log(),
        )

    def handle(self) -> None:
        core = self.core
        while core.has_ready():
            rd = core.ready()
            persist(self.store, rd)
            if rd.snapshot is not None:
                self.sm = json.loads(rd.snapshot.data)
            for e in rd.committed_entries:
                if e.kind is EntryKind.NORMAL:
                    self.sm.append(e.command.decode())
            core.advance(rd)
            if core.should_compact():
                core.compact(core.log.applied, json.dumps(self.sm).encode())

    def elect(self) -> None:
        for _ in range(100):
            if self.core.role is Role.LEADER:
                return
            self.core.tick()
            self.handle()
        raise AssertionError("a single node did not elect itself")


def persist(store: Storage, rd: Ready) -> None:
    if rd.hard_state is not None:
        store.save_state(rd.hard_state)
    for snap in (rd.snapshot, rd.compacted):
        if snap is not None:
            store.save_snapshot(snap)
    store.append_log(rd.entries)


def test_file_storage_single_node_compacts_and_restarts(tmp_path: Path) -> None:
    d = _Driver(tmp_path)
    d.elect()
    for i in range(35):
        d.core.propose(b"v%d" % i)
        d.handle()
    old = d.core.log
    assert old.applied == old.committed == old.last_index() == 36  # 35 commands and a no-op
    assert 0 < old.snap_index < 36
    assert old.entries
    assert d.sm == [f"v{i}" for i in range(35)]
    snap_index, entries, sm = old.snap_index, list(old.entries), list(d.sm)
    d.store.close()

    d = _Driver(tmp_path)
    log = d.core.log
    assert log.snap_index == snap_index
    assert log.entries == entries
    d.elect()  # commits the suffix again (with a new no-op) and re-applies it
    assert d.core.log.applied == 37
    assert d.sm == sm
    d.store.close()


@pytest.mark.parametrize("kind", ["memory", "file"])
def test_storage_snapshot_receiver_rule(kind: str, tmp_path: Path) -> None:
    """Raft §7 on storage: keep the log only if it continues the snapshot."""

    def store() -> Storage:
        return MemoryStorage() if kind == "memory" else FileStorage(tmp_path / "s")

    log = [LogEntry(i, 1, b"e%d" % i) for i in range(1, 11)]
    cases = [
        # (snapshot index, term, what remains)
        (8, 1, log[8:]),  # the log holds the snapshot's last entry: keep what follows
        (8, 2, []),  # it holds a different entry there: all of it is stale
        (12, 2, []),  # the snapshot is past the log's end
    ]
    for index, term, remains in cases:
        if kind == "file":
            for p in sorted((tmp_path / "s").rglob("*"), reverse=True):
                p.rmdir() if p.is_dir() else p.unlink()
        s = store()
        s.append_log(log)
        s.save_snapshot(Snapshot(SnapshotMeta(index, term, CONF3), b"img"))
        assert s.load_log() == remains, (index, term)
        if kind == "file":
            s.close()
            s = store()  # the same after a restart
            assert s.load_log() == remains, (index, term)
        nxt = LogEntry(max(index, 10) + 1 if remains else index + 1, 3, b"next")
        s.append_log([nxt])
        assert s.load_log() == [*remains, nxt]
        s.close()


def drive(core: RaftCore, store: Storage) -> list[Message]:
    """Run the Ready contract until nothing is left; the messages sent, in order."""
    sent: list[Message] = []
    while core.has_ready():
        rd = core.ready()
        persist(store, rd)
        sent += rd.messages
        core.advance(rd)
    return sent


def test_core_install_on_file_storage_discards_conflicting_log(tmp_path: Path) -> None:
    """A follower whose log runs past the snapshot point but disagrees with it at that point:
    after the install and a restart its log is exactly what the leader sends after it."""
    stale = [LogEntry(i, 1, b"old%d" % i) for i in range(1, 11)]
    with FileStorage(tmp_path) as fs:
        fs.save_state(HardState(1, None))
        fs.append_log(stale)
    fs = FileStorage(tmp_path)
    core = RaftCore(
        NodeId("n2"),
        CONF3,
        rng=random.Random(1),
        hard_state=fs.load_state(),
        entries=fs.load_log(),
    )
    meta = SnapshotMeta(8, 2, CONF3)
    data = b"x" * 150
    replies: list[Message] = []
    for off in range(0, len(data), 64):
        chunk = data[off : off + 64]
        done = off + len(chunk) >= len(data)
        core.step(InstallSnapshot(NodeId("n1"), NodeId("n2"), 3, meta, off, chunk, done))
        replies += drive(core, fs)
    assert [(m.next_offset, m.match_index) for m in replies if isinstance(m, ISResp)] == [
        (64, 0),
        (128, 0),
        (150, 8),
    ]
    assert core.log.snap_index == 8
    assert core.log.entries == []
    assert core.snapshot is not None
    assert core.snapshot.data == data
    new = [LogEntry(9, 3, b"new9"), LogEntry(10, 3, b"new10")]
    core.step(AppendEntries(NodeId("n1"), NodeId("n2"), 3, 8, 2, tuple(new), 10))
    acks = [m for m in drive(core, fs) if isinstance(m, AppendEntriesResponse)]
    assert [(a.success, a.match_index) for a in acks] == [(True, 10)]
    fs.close()

    with FileStorage(tmp_path) as fs:
        snap = fs.load_snapshot()
        assert snap is not None
        assert snap.meta == meta
        assert snap.data == data
        assert fs.load_log() == new
        restarted = RaftCore(
            NodeId("n2"),
            CONF3,
            rng=random.Random(2),
            hard_state=fs.load_state(),
            snapshot=snap,
            entries=fs.load_log(),
        )
    assert restarted.log.snap_index == 8
    assert restarted.log.entries == new
    assert restarted.term == 3
