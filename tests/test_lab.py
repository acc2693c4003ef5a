"""Classic-lab scenarios on a simulated cluster (:class:`harness.sim.lab.LabCluster`).

Every scenario runs in simulated time on a fixed seed. Besides what each test asserts, the
world checks Raft's safety invariants (election safety, log matching, leader completeness,
state machine safety, durability, no double vote) after every step; ``run_for`` raises
``InvariantViolated`` at the first breach, so every scenario is also a safety test.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest

from harness.sim.lab import LabCluster
from raft.core.messages import AppendEntriesResponse, Message


def terms(lab: LabCluster, names: list[str] | None = None) -> set[int]:
    return {lab.get_state(n)[0] for n in (names or lab.names) if lab.node(n).up}


def others(lab: LabCluster, *names: str) -> list[str]:
    return [n for n in lab.names if n not in names]


def committed_at(lab: LabCluster, index: int) -> int:
    return lab.n_committed(index)[0]


# ---- elections -----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_initial_election(seed: int) -> None:
    """Raft §5.2: a leader is elected; all nodes agree on its term; with no failures the
    leader and term stay put (heartbeats suppress new elections)."""
    lab = LabCluster(3, seed=seed)
    leader = lab.check_one_leader(within=2 * lab.election_timeout_s)
    lab.run_for(2 * lab.election_timeout_s)
    t = terms(lab)
    assert len(t) == 1
    term = t.pop()
    assert term >= 1
    lab.run_for(2.0)
    assert lab.check_one_leader() == leader
    assert terms(lab) == {term}, "an election happened without a failure"


def test_reelection_and_old_leader_steps_down() -> None:
    """Raft §5.2: when the leader is cut off the others elect a new one in a higher term;
    §5.1: the old leader, on seeing the higher term, becomes a follower."""
    lab = LabCluster(3, seed=4)
    leader1 = lab.check_one_leader()
    term1 = lab.get_state(leader1)[0]
    lab.disconnect(leader1)
    leader2 = lab.check_one_leader()
    assert leader2 != leader1
    assert lab.get_state(leader2)[0] > term1
    lab.connect(leader1)
    lab.run_for(1.0)
    assert lab.check_one_leader() == leader2
    term2 = lab.get_state(leader2)[0]
    assert lab.get_state(leader1) == (term2, False)


def test_no_leader_without_a_majority() -> None:
    """Raft §5.2: a candidate needs votes from a majority; a lone node never leads. With
    pre-vote (dissertation §9.6) it does not even raise its term."""
    lab = LabCluster(3, seed=5)
    leader1 = lab.check_one_leader()
    f1, f2 = others(lab, leader1)
    lab.disconnect(leader1)
    lab.disconnect(f1)
    term = lab.get_state(f2)[0]
    cut_at = lab.now
    for _ in range(20):
        lab.run_for(0.1)
        assert not lab.get_state(f2)[1]
        if lab.now - cut_at > 2 * lab.election_timeout_s:
            assert not lab.get_state(leader1)[1], "isolated leader did not step down"
    assert lab.get_state(f2)[0] == term
    lab.connect(f1)
    assert lab.check_one_leader() in (f1, f2)


def test_split_vote_is_resolved_in_a_later_round() -> None:
    """Raft §5.2: "each candidate will time out and start a new election by incrementing its
    term"; randomized timeouts end the split. Forced here without pre-vote: the leader
    crashes and the two survivors cannot reach each other, so each campaigns alone and gets
    only its own vote, term after term; once they can talk, one of them wins."""
    lab = LabCluster(3, seed=6, pre_vote=False)
    leader1 = lab.check_one_leader()
    term1 = lab.get_state(leader1)[0]
    b, c = others(lab, leader1)
    lab.crash(leader1)
    lab.disconnect(b)  # b and c cannot reach each other (leader1 is down anyway)
    lab.run_for(1.0)
    assert not lab.get_state(b)[1]
    assert not lab.get_state(c)[1]
    assert lab.get_state(b)[0] > term1 + 1
    assert lab.get_state(c)[0] > term1 + 1
    lab.connect(b)
    leader2 = lab.check_one_leader()
    assert leader2 in (b, c)
    assert lab.get_state(leader2)[0] > term1 + 1
    lab.run_for(1.0)
    assert len(terms(lab, [b, c])) == 1
    lab.restart(leader1)
    lab.one(b"after split", 3)


# ---- agreement -----------------------------------------------------------------------------


def test_basic_agreement() -> None:
    """Raft §5.3: a command submitted to the leader is applied by every node, at consecutive
    indexes, and nothing is applied before it is submitted."""
    lab = LabCluster(3, seed=7)
    lab.check_one_leader()
    prev = None
    for k in range(1, 6):
        cmd = b"cmd%d" % k
        index = lab.one(cmd, 3)
        assert lab.n_committed(index) == (3, cmd)
        if prev is not None:
            assert index == prev + 1
        prev = index
    assert prev is not None
    assert committed_at(lab, prev + 1) == 0


def test_follower_failure() -> None:
    """Raft §5.3: the leader commits with a majority while a follower is down; with no
    follower reachable nothing commits."""
    lab = LabCluster(3, seed=8)
    lab.one(b"101", 3)
    leader1 = lab.check_one_leader()
    f1, f2 = others(lab, leader1)
    lab.disconnect(f1)
    lab.one(b"102", 2)
    lab.run_for(2 * lab.election_timeout_s)
    lab.one(b"103", 2)
    lab.disconnect(f2)
    placed = lab.submit(leader1, b"104")
    assert placed is not None
    lab.run_for(2 * lab.election_timeout_s)
    assert committed_at(lab, placed[0]) == 0


def test_leader_failure() -> None:
    """Raft §5.2-5.3: the survivors elect a new leader and keep committing; a lone survivor
    commits nothing."""
    lab = LabCluster(3, seed=9)
    lab.one(b"101", 3)
    leader1 = lab.check_one_leader()
    lab.disconnect(leader1)
    lab.one(b"102", 2)
    lab.run_for(2 * lab.election_timeout_s)
    lab.one(b"103", 2)
    leader2 = lab.check_one_leader()
    lab.disconnect(leader2)
    placed = [lab.submit(n, b"104") for n in lab.names]
    lab.run_for(2 * lab.election_timeout_s)
    for p in placed:
        if p is not None:
            assert committed_at(lab, p[0]) == 0


def test_no_agreement_without_a_majority() -> None:
    """Raft §5.3: an entry commits only once stored on a majority. The leader cut off from
    three of five followers accepts a command, but it is never committed while cut off;
    after reconnecting, the cluster agrees again."""
    lab = LabCluster(5, seed=10)
    lab.one(b"10", 5)
    leader = lab.check_one_leader()
    cut = others(lab, leader)[:3]
    for n in cut:
        lab.disconnect(n)
    placed = lab.submit(leader, b"20")
    assert placed is not None
    index = placed[0]
    for _ in range(40):
        lab.run_for(0.05)
        assert lab.n_committed(index) == (0, None)
    for n in cut:
        lab.connect(n)
    lab.check_one_leader()
    final = lab.one(b"1000", 5)
    assert lab.n_committed(final) == (5, b"1000")


def test_rejoin_of_partitioned_leader() -> None:
    """Raft §5.3-5.4: a deposed leader holding uncommitted entries rejoins; its entries are
    overwritten by the new leader's, and everyone agrees at every index."""
    lab = LabCluster(3, seed=11)
    lab.one(b"101", 3)
    leader1 = lab.check_one_leader()
    lab.disconnect(leader1)
    stale = [lab.submit(leader1, c) for c in (b"102", b"103", b"104")]
    assert all(p is not None for p in stale)
    lab.one(b"103", 2)
    leader2 = lab.check_one_leader()
    lab.disconnect(leader2)
    lab.connect(leader1)
    lab.one(b"104", 2)
    lab.connect(leader2)
    last = lab.one(b"105", 3)
    for i in range(1, last + 1):
        count, cmd = lab.n_committed(i)
        assert count == 3, f"index {i} applied by {count}"
        assert cmd != b"102"


# ---- fast back-up --------------------------------------------------------------------------


def test_backup_over_fifty_divergent_entries() -> None:
    """Raft §5.3 (fast back-up): a leader on the minority side of a partition accepts 50
    entries that never commit; the majority elects a new leader and commits 50 others. After
    healing, every node converges to the majority's entries quickly: the new leader needs one
    rejection per conflicting term, not one per entry."""
    lab = LabCluster(5, seed=12)
    lab.one(b"start", 5)
    old = lab.check_one_leader()
    buddy = others(lab, old)[0]
    majority = others(lab, old, buddy)
    lab.partition([old, buddy], majority)
    minority_cmds = [b"minority%d" % k for k in range(50)]
    minority_at = []
    for cmd in minority_cmds:
        placed = lab.submit(old, cmd)
        assert placed is not None
        minority_at.append(placed[0])
    lab.run_for(0.5)
    new = lab.check_one_leader()
    assert new in majority
    majority_cmds = [b"majority%d" % k for k in range(50)]
    for cmd in majority_cmds:
        assert lab.submit(new, cmd) is not None
    assert lab.run_until(lambda: all(lab.n_committed(i)[0] == 3 for i in minority_at), timeout=2.0)
    for i in minority_at:
        assert lab.n_committed(i)[1] not in minority_cmds
    # A leader elected now starts probing the cut-off nodes at the end of its long log (the
    # first one started where the logs diverged, and would need no back-up at all).
    lab.crash(new)
    lab.run_for(0.05)
    lab.restart(new)
    lab.run_for(1.0)
    new = lab.check_one_leader()
    assert new in majority
    last = lab.node(new).core.log.last_index()  # type: ignore[union-attr]

    rejections: Counter[str] = Counter()
    send = lab.world._send

    def counting_send(m: Message) -> None:
        if isinstance(m, AppendEntriesResponse) and not m.success and m.hint_index:
            rejections[m.src] += 1
        send(m)

    lab.world._send = counting_send  # type: ignore[method-assign]
    healed_at = lab.now
    lab.heal()
    assert lab.run_until(lambda: committed_at(lab, last) == 5, timeout=1.0), "no convergence"
    assert lab.now - healed_at < 0.2
    assert rejections[old] <= 2
    assert rejections[buddy] <= 2
    for i in range(1, last + 1):
        count, got = lab.n_committed(i)
        assert count == 5
        assert got not in minority_cmds
    assert lab.check_one_leader() == new


def test_classic_backup() -> None:
    """Raft §5.3: the lab's "backup" test, leaders repeatedly cut off with dozens of
    uncommitted entries; the final leader's log wins everywhere."""
    lab = LabCluster(5, seed=13)
    rng = random.Random(13)
    lab.one(b"first", 5)
    leader1 = lab.check_one_leader()
    rest = others(lab, leader1)
    lab.partition([leader1, rest[0]], rest[1:])
    for k in range(50):
        lab.submit(leader1, b"lost-a%d" % k)
    lab.run_for(lab.election_timeout_s / 2)
    lab.partition(rest[1:], [leader1, rest[0]])
    for _ in range(50):
        lab.one(b"kept-a%d" % rng.randrange(1 << 30), 3)
    leader2 = lab.check_one_leader()
    assert leader2 in rest[1:]
    other = next(n for n in rest[1:] if n != leader2)
    lab.partition([leader2], [n for n in rest[1:] if n != leader2], [leader1, rest[0]])
    for k in range(50):
        lab.submit(leader2, b"lost-b%d" % k)
    lab.run_for(lab.election_timeout_s / 2)
    lab.partition([leader1, rest[0], other], [leader2, *[n for n in rest[1:] if n != other]])
    for _ in range(50):
        lab.one(b"kept-b%d" % rng.randrange(1 << 30), 3)
    lab.heal()
    last = lab.one(b"last", 5)
    for i in range(1, last + 1):
        count, cmd = lab.n_committed(i)
        assert count == 5
        assert cmd is not None
        assert not cmd.startswith(b"lost")


# ---- concurrency and churn ---------------------------------------------------------------


def test_concurrent_submissions() -> None:
    """Raft §5.3: many commands submitted at one instant get distinct, consecutive indexes
    and are all committed there."""
    lab = LabCluster(3, seed=14)
    lab.one(b"warmup", 3)
    leader = lab.check_one_leader()
    cmds = [b"c%d" % k for k in range(100)]
    placed = [lab.submit(leader, c) for c in cmds]
    assert all(p is not None for p in placed)
    indexes = [p[0] for p in placed if p is not None]
    assert len(set(indexes)) == len(cmds)
    assert indexes == list(range(indexes[0], indexes[0] + len(cmds)))
    assert lab.run_until(lambda: all(committed_at(lab, i) == 3 for i in indexes), timeout=2.0)
    for i, c in zip(indexes, cmds, strict=True):
        assert lab.n_committed(i) == (3, c)


ITERATIONS = 1000


def _figure8(seed: int, unreliable: bool) -> None:
    """The classic lab's Figure 8 loop. Reliable: the leader crashes (and restarts later);
    unreliable: the leader is disconnected (and reconnected later) over a lossy network."""
    lab = LabCluster(5, seed=seed)
    rng = random.Random(seed)
    if unreliable:
        lab.set_unreliable(drop=0.1, duplicate=0.05, delay_ms=10)
    lab.one(b"f8-start", 1)
    out: set[str] = set()  # crashed or disconnected
    for it in range(ITERATIONS):
        leader = None
        for name in lab.names:
            cmd = b"f8-%d-%d" % (it, rng.randrange(1 << 30))
            if name not in out and lab.submit(name, cmd) is not None:
                leader = name
        if rng.randrange(1000) < 100:
            lab.run_for(rng.randrange(0, int(lab.election_timeout_s * 1000) // 2) / 1000)
        else:
            lab.run_for(rng.randrange(0, 13) / 1000)
        if leader is not None and rng.random() < 0.5:
            if unreliable:
                lab.disconnect(leader)
            else:
                lab.crash(leader)
            out.add(leader)
        if len(out) > 2:
            back = rng.choice(sorted(out))
            out.discard(back)
            if unreliable:
                lab.connect(back)
            else:
                lab.restart(back)
    for name in lab.names:
        lab.restart(name)
        lab.connect(name)
    lab.set_reliable()
    last = lab.one(b"f8-end", 5, timeout=20.0)
    assert lab.world.stats["elections"] >= 10, "the scenario hardly changed leaders"
    for i in range(1, last + 1):
        assert committed_at(lab, i) == 5


@pytest.mark.parametrize("seed", [15, 16, 17])
def test_figure8(seed: int) -> None:
    """Raft §5.4.2 / Figure 8: leaders crash shortly after taking a command, nodes restart
    with a majority up; a leader must never commit an earlier term's entry by counting
    replicas (the world checks that, and state machine safety, at every step); in the end
    everyone agrees."""
    _figure8(seed, unreliable=False)


@pytest.mark.parametrize("seed", [16, 17, 18])
def test_figure8_unreliable(seed: int) -> None:
    """Raft §5.4.2 / Figure 8 over a lossy, duplicating, reordering network with leaders cut
    off and reconnected."""
    _figure8(seed, unreliable=True)


def _churn(seed: int, unreliable: bool) -> None:
    lab = LabCluster(5, seed=seed)
    rng = random.Random(seed)
    if unreliable:
        lab.set_unreliable()
    submitted: dict[int, list[bytes]] = {}
    seen_committed: dict[int, bytes] = {}
    for it in range(ITERATIONS):
        for client in range(3):
            cmd = b"churn-%d-%d" % (it, client)
            for name in rng.sample(lab.names, len(lab.names)):  # look for a leader
                placed = lab.submit(name, cmd) if lab.node(name).up else None
                if placed is not None:
                    submitted.setdefault(placed[0], []).append(cmd)
                    break
        r = rng.random()
        victim = rng.choice(lab.names)
        if r < 0.2:
            lab.disconnect(victim)
        elif r < 0.5:
            lab.connect(victim)
        elif r < 0.6:
            lab.crash(victim)
        elif r < 0.9:
            lab.restart(victim)
        lab.run_for(rng.randrange(10, 70) / 1000)
        for index in submitted.keys() - seen_committed.keys():
            count, got = lab.n_committed(index)
            if count and got is not None and got in submitted[index]:
                seen_committed[index] = got
    for name in lab.names:
        lab.restart(name)
        lab.connect(name)
    lab.set_reliable()
    last = lab.one(b"churn-end", 5, timeout=20.0)
    assert len(seen_committed) >= 100, "churn committed almost nothing"
    assert lab.world.stats["elections"] >= 10, "the scenario hardly changed leaders"
    for index, cmd in seen_committed.items():
        assert lab.n_committed(index) == (5, cmd)
    for i in range(1, last + 1):
        assert committed_at(lab, i) == 5


def test_churn_reliable() -> None:
    """Raft §5: under random crashes, restarts and disconnections, whatever was ever seen
    committed stays committed at its index, and the cluster converges once healed."""
    _churn(seed=17, unreliable=False)


def test_churn_unreliable() -> None:
    """Raft §5 with a lossy, duplicating network as well."""
    _churn(seed=18, unreliable=True)
