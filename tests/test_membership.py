"""Single-server membership changes in the simulated cluster (simulated time, every invariant
checked after every step): the brief's scenario (3 nodes, add a 4th, remove the first) with a
client that must keep committing throughout, one change at a time, learners promoted only
once caught up, and a removed leader stepping down only once its removal is committed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from harness.sim.lab import LabCluster
from harness.sim.world import SimNode
from raft.core.errors import ConfChangeError, NotLeader
from raft.core.raft import RaftCore, Role
from raft.core.types import ConfChange, ConfChangeType, ConfState, NodeId

ADD_VOTER, ADD_LEARNER = ConfChangeType.ADD_VOTER, ConfChangeType.ADD_LEARNER
PROMOTE, REMOVE = ConfChangeType.PROMOTE, ConfChangeType.REMOVE


def nid(name: str) -> NodeId:
    return NodeId(name)


def core_of(node: SimNode) -> RaftCore:
    assert node.core is not None, f"{node.name} is down"
    return node.core


def role_of(core: RaftCore) -> Role:
    """(A call, so that mypy does not carry a narrowed role across simulated time.)"""
    return core.role


def current_leader(lab: LabCluster) -> SimNode | None:
    """The leader of the newest term among live nodes, if any."""
    leaders = [lab.node(n) for n in lab.leaders()]
    return max(leaders, key=lambda n: core_of(n).term, default=None)


def propose_change(lab: LabCluster, leader: SimNode, kind: ConfChangeType, name: str) -> int:
    index, _ = core_of(leader).propose_conf_change(ConfChange(kind, nid(name)))
    lab.world._pump(leader)
    return index


def ensure_leader(lab: LabCluster, name: str) -> SimNode:
    """Make ``name`` the leader (by leadership transfer if another node leads)."""
    leader = lab.node(lab.check_one_leader())
    if leader.name != name:
        core_of(leader).transfer_leader(nid(name))
        lab.world._pump(leader)
        assert lab.run_until(lambda: lab.leaders() == [name], timeout=2.0)
    return lab.node(name)


@dataclass
class Client:
    """Submits one command every ``every`` seconds (simulated) to whoever leads, resubmitting
    it if it was lost; records how long each took from its first submission to being applied.
    """

    lab: LabCluster
    every: float = 0.05
    waiting: dict[bytes, float] = field(default_factory=dict)  #: command -> first submitted
    placed: dict[bytes, tuple[str, int, int]] = field(default_factory=dict)
    latencies: dict[bytes, float] = field(default_factory=dict)
    next_at: float = 0.0
    count: int = 0

    def poll(self) -> None:
        lab = self.lab
        now = lab.now
        if now >= self.next_at:
            self.count += 1
            self.waiting[b"cmd%d" % self.count] = now
            self.next_at = now + self.every
        for cmd in list(self.waiting):
            where = self.placed.get(cmd)
            if where is not None:
                name, index, term = where
                applied = self._applied_anywhere(index)
                if applied == cmd:
                    self.latencies[cmd] = now - self.waiting.pop(cmd)
                    del self.placed[cmd]
                    continue
                node = lab.node(name)
                lost = applied is not None or node.core is None or core_of(node).term != term
                if not lost:
                    continue
                del self.placed[cmd]  # it may have been overwritten: submit it again
            leader = current_leader(lab)
            if leader is not None:
                at = lab.submit(leader.name, cmd)
                if at is not None:
                    self.placed[cmd] = (leader.name, *at)

    def _applied_anywhere(self, index: int) -> bytes | None:
        for name in self.lab.names:
            cmd = self.lab.get_committed(name, index)
            if cmd is not None:
                return cmd
        return None

    def run_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        end = self.lab.now + timeout
        while self.lab.now < end:
            self.poll()
            if predicate():
                return True
            self.lab.run_for(0.005)
        return predicate()

    def run_for(self, seconds: float) -> None:
        self.run_until(lambda: False, seconds)

    def worst(self) -> float:
        pending = [self.lab.now - t for t in self.waiting.values()]
        return max([*self.latencies.values(), *pending], default=0.0)


# ---- the brief's scenario -------------------------------------------------------------------
def test_add_fourth_then_remove_first_stays_available() -> None:
    events: list[str] = []
    lab = LabCluster(3, seed=1, spare_nodes=1, snapshot_entries=20, trace=events.append)
    promotions: list[tuple[int, int]] = []  # (learner's match, leader's commit) when promoted
    step_downs: list[tuple[int, int]] = []  # (n1's commit, position in the trace)

    def watch(line: str) -> None:
        events.append(line)
        if "promoting it to voter" in line:
            leader = current_leader(lab)
            assert leader is not None
            core = core_of(leader)
            promotions.append((core.prs[nid("n4")].match, core.log.committed))
        if "] n1: removed from the configuration, stepping down" in line:
            step_downs.append((core_of(lab.node("n1")).log.committed, len(events)))

    lab.world.trace_fn = watch
    n1 = ensure_leader(lab, "n1")
    client = Client(lab)
    client.run_for(2.0)  # enough commands that n4 needs a snapshot
    assert core_of(n1).log.snap_index > 0

    # Add n4: as a learner first, promoted once it has caught up.
    lab.restart("n4")  # a spare that never ran: it starts on an empty disk
    propose_change(lab, n1, ADD_VOTER, "n4")
    assert "n4" in core_of(n1).conf.learners
    assert "n4" not in core_of(n1).conf.voters
    with pytest.raises(ConfChangeError, match="pending"):
        core_of(n1).propose_conf_change(ConfChange(REMOVE, nid("n1")))
    assert client.run_until(lambda: "n4" in core_of(n1).conf.voters, timeout=3.0)
    assert len(promotions) == 1
    match, commit = promotions[0]
    assert match >= commit, f"n4 promoted at match {match} < commit {commit}"
    assert client.run_until(lambda: core_of(n1)._conf_committed(), timeout=1.0)

    # Remove n1, the leader: it keeps leading until its removal commits, then steps down.
    client.run_for(0.5)
    remove_at = propose_change(lab, n1, REMOVE, "n1")
    assert core_of(n1).role is Role.LEADER
    assert client.run_until(
        lambda: (leader := current_leader(lab)) is not None and leader.name != "n1", timeout=3.0
    )
    assert len(step_downs) == 1
    assert step_downs[0][0] >= remove_at, "n1 stepped down before its removal committed"
    client.run_for(2.0)

    final = ConfState(frozenset({nid("n2"), nid("n3"), nid("n4")}))
    for name in lab.names:
        assert core_of(lab.node(name)).conf == final, name
    assert core_of(lab.node("n1")).role is Role.FOLLOWER
    new_leader = current_leader(lab)
    assert new_leader is not None
    assert new_leader.name in {"n2", "n3", "n4"}
    # Stays configured across a restart (from its snapshot and log).
    lab.crash("n3")
    lab.restart("n3")
    assert core_of(lab.node("n3")).conf == final
    client.run_for(1.0)

    # Available throughout: every command committed within a bound (one election after the
    # leader left, plus the lease the followers keep), and the client never stalled.
    assert client.count >= 100
    bound = 2 * 2 * lab.election_timeout_s  # two of the longest election timeouts
    assert client.worst() < bound, f"a command took {client.worst():.3f}s to commit"
    quick = sum(1 for t in client.latencies.values() if t < 0.05)
    assert quick >= 0.9 * len(client.latencies)
    # The removed server never disrupted the new configuration by campaigning.
    after = events[step_downs[0][1] :]
    assert not [e for e in after if "] n1: " in e and "candidate" in e]


# ---- one change at a time, and refusals --------------------------------------------------
def test_second_change_while_one_is_pending_is_refused() -> None:
    lab = LabCluster(3, seed=2, spare_nodes=2)
    leader = lab.node(lab.check_one_leader())
    core = core_of(leader)
    lab.restart("n4")
    propose_change(lab, leader, ADD_VOTER, "n4")
    for change in (
        ConfChange(ADD_LEARNER, nid("n5")),
        ConfChange(REMOVE, nid("n2")),
        ConfChange(PROMOTE, nid("n4")),
    ):
        with pytest.raises(ConfChangeError, match="pending"):
            core.propose_conf_change(change)
    assert lab.run_until(lambda: "n4" in core.conf.voters and core._conf_committed(), 3.0)
    # Now the next one is accepted.
    lab.restart("n5")
    propose_change(lab, leader, ADD_LEARNER, "n5")
    assert lab.run_until(core._conf_committed, 2.0)
    assert core.conf.learners == {"n5"}


def test_invalid_changes_are_refused() -> None:
    lab = LabCluster(3, seed=3, spare_nodes=1)
    leader = lab.node(lab.check_one_leader())
    core = core_of(leader)
    lab.run_for(0.2)
    for change, why in [
        (ConfChange(ADD_VOTER, nid("n2")), "already a member"),
        (ConfChange(ADD_LEARNER, nid("n3")), "already a member"),
        (ConfChange(REMOVE, nid("n4")), "not a member"),
        (ConfChange(PROMOTE, nid("n2")), "not a learner"),
    ]:
        with pytest.raises(ConfChangeError, match=why):
            core.propose_conf_change(change)
    follower = next(lab.node(n) for n in ("n1", "n2", "n3") if n != leader.name)
    with pytest.raises(NotLeader):
        core_of(follower).propose_conf_change(ConfChange(ADD_VOTER, nid("n4")))
    # Nothing was appended by the refusals.
    assert core.conf == ConfState(frozenset({nid("n1"), nid("n2"), nid("n3")}))


def test_cannot_remove_the_last_voter() -> None:
    lab = LabCluster(2, seed=4)
    leader = lab.node(lab.check_one_leader())
    other = "n2" if leader.name == "n1" else "n1"
    propose_change(lab, leader, REMOVE, other)
    core = core_of(leader)
    assert lab.run_until(core._conf_committed, 2.0)
    assert core.conf.voters == {leader.name}
    with pytest.raises(ConfChangeError, match="last voter"):
        core.propose_conf_change(ConfChange(REMOVE, leader.name))


# ---- learners -----------------------------------------------------------------------------
def test_learner_is_promoted_only_after_catching_up() -> None:
    """n4 is added as a voter while cut off: it stays a learner (the 3 voters keep committing
    without it) until it is reachable and has caught up; only then is it promoted."""
    lab = LabCluster(3, seed=5, spare_nodes=1, snapshot_entries=15)
    leader = lab.node(lab.check_one_leader())
    core = core_of(leader)
    for i in range(40):
        lab.one(b"a%d" % i, expected=3)
    lab.restart("n4")
    lab.disconnect("n4")
    propose_change(lab, leader, ADD_VOTER, "n4")
    for i in range(30):
        lab.one(b"b%d" % i, expected=3)  # committed by the 3 voters alone
    lab.run_for(2.0)
    assert core._conf_committed()
    assert core.conf.learners == {"n4"}
    assert core.conf.promoting == {"n4"}
    assert "n4" not in core.conf.voters
    assert core.prs[nid("n4")].match == 0

    promoted_at: list[tuple[int, int, int]] = []
    original = core._maybe_promote

    def spy(node: NodeId, pr: object) -> None:
        before = core.log.last_index()
        original(node, pr)  # type: ignore[arg-type]
        if core.log.last_index() > before:
            promoted_at.append((core.prs[node].match, core.log.committed, before + 1))

    core._maybe_promote = spy  # type: ignore[method-assign]
    lab.connect("n4")
    n4 = lab.node("n4")
    assert lab.run_until(lambda: "n4" in core.conf.voters and core._conf_committed(), 3.0)
    assert len(promoted_at) == 1
    match, commit, promote_index = promoted_at[0]
    assert match >= commit, f"promoted at match {match} < commit {commit}"
    assert core_of(n4).log.snap_index > 0, "n4 caught up through a snapshot"
    assert core.conf == ConfState(frozenset({nid("n1"), nid("n2"), nid("n3"), nid("n4")}))
    # A 4-voter cluster needs 3 acknowledgements: with n4 in, losing two others stalls it.
    assert lab.one(b"four", expected=4) > promote_index


def test_plain_learner_receives_the_log_but_never_votes() -> None:
    lab = LabCluster(3, seed=6, spare_nodes=1)
    leader = lab.node(lab.check_one_leader())
    core = core_of(leader)
    lab.restart("n4")
    propose_change(lab, leader, ADD_LEARNER, "n4")
    index = lab.one(b"x", expected=4)  # the learner applies it too
    lab.run_for(1.0)
    assert core.conf.learners == {"n4"}
    assert "n4" not in core.conf.voters
    assert core.conf.promoting == frozenset()
    assert lab.get_committed("n4", index) == b"x"
    # Cut off from the leader, a learner does not campaign.
    term = core_of(lab.node("n4")).term
    lab.disconnect(leader.name)
    lab.run_for(2.0)
    assert core_of(lab.node("n4")).role is Role.FOLLOWER
    assert core_of(lab.node("n4")).votes == {}
    lab.connect(leader.name)
    new_leader = lab.node(lab.check_one_leader())
    assert core_of(lab.node("n4")).term >= term
    # Promoted by hand, it becomes a voter.
    propose_change(lab, new_leader, PROMOTE, "n4")
    assert lab.run_until(lambda: "n4" in core_of(new_leader).conf.voters, 2.0)
    lab.one(b"y", expected=4)


# ---- removal ------------------------------------------------------------------------------
def test_removed_leader_leads_until_its_removal_commits() -> None:
    """Watched in 0.1 ms steps on a slow network: the leader that proposed its own removal
    leads until the removal is committed, steps down at that point, and never campaigns."""
    lab = LabCluster(3, seed=7)
    leader = ensure_leader(lab, "n1")
    core = core_of(leader)
    lab.one(b"before", expected=3)
    lab.set_unreliable(drop=0.0, duplicate=0.0, delay_ms=20)
    remove_at = propose_change(lab, leader, REMOVE, "n1")
    assert core.conf.voters == {"n2", "n3"}  # in force from the moment it is appended
    steps = 0
    while core.role is Role.LEADER:
        assert core.log.committed < remove_at, "still leading after its removal committed"
        lab.run_for(0.0001)
        steps += 1
        assert steps < 20_000
    assert core.log.committed >= remove_at, "stepped down before its removal committed"
    assert steps > 100  # the removal took a while to commit: the leader led meanwhile
    lab.set_reliable()
    term = core.term
    leader2 = lab.node(lab.check_one_leader())
    assert leader2.name in {"n2", "n3"}
    lab.run_for(2.0)
    assert core.role is Role.FOLLOWER
    assert core.term == term, "the removed node campaigned"
    for name in ("n2", "n3"):
        assert core_of(lab.node(name)).conf.voters == {"n2", "n3"}
    assert lab.one(b"after", expected=2) > remove_at


def test_uncommitted_self_removal_does_not_depose_the_leader() -> None:
    """Cut off right after proposing its removal, the leader keeps leading (only check-quorum
    deposes it, an election timeout later); the others never saw the entry, so it is
    overwritten on healing and every node ends with the old configuration."""
    lab = LabCluster(3, seed=7)
    leader = ensure_leader(lab, "n1")
    core = core_of(leader)
    lab.one(b"before", expected=3)
    lab.disconnect("n1")
    remove_at = propose_change(lab, leader, REMOVE, "n1")
    lab.run_for(0.05)
    assert core.role is Role.LEADER
    assert core.log.committed < remove_at
    lab.run_for(1.0)
    assert role_of(core) is Role.FOLLOWER  # check-quorum
    lab.connect("n1")
    lab.one(b"after", expected=3)
    lab.run_for(0.5)
    everyone = ConfState(frozenset({nid("n1"), nid("n2"), nid("n3")}))
    for name in lab.names:
        assert core_of(lab.node(name)).conf == everyone, name
