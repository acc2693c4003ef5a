"""Issue 10, a hostile network: keys, authentication, strangers, forged messages, real addresses.

* Keys and the cluster file, without processes: secret key files are private and never
  overwritten nor printed; the file's rules (keys for all nodes or none; no non-loopback
  address without keys unless ``insecure = true``; IPv6).
* Real node processes with CURVE (``LocalCluster``): strangers (a node, a client, an admin
  without the cluster's keys, and a peer without CURVE) are refused before any frame reaches
  the core, each refusal logged once with the peer's address; a member cannot speak as
  another; admin operations need the admin key.
* A seeded, time-bounded fuzz of forged, well-formed messages sent with a member's valid keys.
* The teeth: the same attacks against nodes without keys, or with a bug planted through
  ``tests/planted/sitecustomize.py`` (the guard off, the sender binding off), do harm.

Only processes started here are signalled, by PID (``LocalCluster``), and always stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import stat
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import tomli_w
import zmq

from harness.cli import main as orbital
from harness.cluster import ClusterSpec, LocalCluster, StatusPoller
from harness.replay import replay_cluster
from raft.client import KVClient, KVError
from raft.core.messages import (
    AppendEntries,
    AppendEntriesResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    InstallSnapshotResponse,
    Message,
    RequestVote,
    TimeoutNow,
)
from raft.core.types import ConfState, EntryKind, LogEntry, NodeId, SnapshotMeta
from raft.security import (
    ADMIN,
    ClientKeys,
    KeyFileError,
    create_key_pair,
    load_key_pair,
)
from raft.server import ConfigError, load_config
from raft.transport import encode_frame

T = TypeVar("T")

PLANTED = Path(__file__).parent / "planted"
#: seeds each node's election-timeout RNG (uncontested first election, as in test_cluster)
SEED = 6
SETTLE_S = 15.0
#: elections the tests allow during an attack (load on 2 cores can cause a few); a forged
#: higher term that were adopted moves the term by JUMP at least
TERM_SLACK = 20
JUMP = 1000


def run(scenario: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(scenario())


# ==== keys and the cluster file ===============================================================
def test_key_files_are_private_and_never_overwritten(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    pair = create_key_pair(keys, "n1")
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    assert stat.S_IMODE((keys / "n1.key_secret").stat().st_mode) == 0o600
    assert stat.S_IMODE((keys / "n1.key").stat().st_mode) == 0o644
    assert load_key_pair(keys / "n1.key_secret") == pair
    with pytest.raises(KeyFileError, match="not overwriting"):
        create_key_pair(keys, "n1")
    assert load_key_pair(keys / "n1.key_secret") == pair
    with pytest.raises(KeyFileError, match="readable by others"):
        load_key_pair(keys / "n1.key")  # the public file is 0644: refused for that first
    (keys / "n1.key").chmod(0o600)
    with pytest.raises(KeyFileError, match="holds no secret key"):
        load_key_pair(keys / "n1.key")


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_a_secret_key_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    create_key_pair(tmp_path, "n1")
    path = tmp_path / "n1.key_secret"
    path.chmod(mode)
    with pytest.raises(KeyFileError, match=r"readable by others.*chmod 600"):
        load_key_pair(path)
    path.chmod(0o600)
    load_key_pair(path)


def test_a_key_pair_never_shows_its_secret(tmp_path: Path) -> None:
    pair = create_key_pair(tmp_path, "n1")
    for text in (repr(pair), str(pair), f"{pair}"):
        assert pair.public.decode() in text
        assert pair.secret.decode() not in text


def _cluster_file(tmp_path: Path, nodes: dict[str, dict[str, Any]], **top: Any) -> Path:
    path = tmp_path / "cluster.toml"
    path.write_bytes(tomli_w.dumps({"cluster_id": "t", **top, "nodes": nodes}).encode())
    return path


def _pub(tmp_path: Path, name: str) -> str:
    return create_key_pair(tmp_path / "keys", name).public.decode()


@pytest.mark.parametrize(
    ("case", "error"),
    [
        ("v4 beyond loopback, no keys", "nodes.n1.raft: 10.0.0.1:7001 is not loopback"),
        ("v6 beyond loopback, no keys", r"nodes.n1.raft: \[fd00::1\]:7001 is not loopback"),
        ("listen everywhere, no keys", "nodes.n1.listen: 0.0.0.0:7001 is not loopback"),
        ("peer beyond loopback, no keys", "nodes.n1.peers.n2: 10.0.0.2:9000 is not loopback"),
        ("keys on one node only", r"every node needs a public_key.*\['n2'\]"),
        ("a key listed twice", "a public key is listed twice"),
        ("insecure with keys", "a cluster with keys is not insecure"),
        ("client keys without node keys", "no node has a public_key"),
        ("a bad public key", "40 Z85 characters"),
        ("a host name to bind", "an IP address is needed"),
        ("v6 without brackets", "needs brackets"),
    ],
)
def test_cluster_file_rules(tmp_path: Path, case: str, error: str) -> None:
    local = {"raft": "127.0.0.1:7001", "client": "127.0.0.1:8001"}
    other = {"raft": "127.0.0.1:7002", "client": "127.0.0.1:8002"}
    top: dict[str, Any] = {}
    n1: dict[str, Any] = dict(local)
    n2: dict[str, Any] = dict(other)
    if case == "v4 beyond loopback, no keys":
        n1["raft"] = "10.0.0.1:7001"
    elif case == "v6 beyond loopback, no keys":
        n1["raft"] = "[fd00::1]:7001"
    elif case == "listen everywhere, no keys":
        n1["listen"] = "0.0.0.0"
    elif case == "peer beyond loopback, no keys":
        n1["peers"] = {"n2": "10.0.0.2:9000"}
    elif case == "keys on one node only":
        n1["public_key"] = _pub(tmp_path, "n1")
    elif case == "a key listed twice":
        n1["public_key"] = n2["public_key"] = _pub(tmp_path, "n1")
    elif case == "insecure with keys":
        n1["public_key"], n2["public_key"] = _pub(tmp_path, "n1"), _pub(tmp_path, "n2")
        top["security"] = {"insecure": True}
    elif case == "client keys without node keys":
        top["security"] = {"client_keys": [_pub(tmp_path, "c")]}
    elif case == "a bad public key":
        n1["public_key"] = "tooshort"
    elif case == "a host name to bind":
        n1["raft"] = "node1.example:7001"
    else:
        n1["raft"] = "fd00::1:7001"
    path = _cluster_file(tmp_path, {"n1": n1, "n2": n2}, **top)
    with pytest.raises(ConfigError, match=error):
        load_config(path)


def test_cluster_file_accepts_real_addresses_with_keys_or_insecure(tmp_path: Path) -> None:
    """With keys any address goes (IPv4, IPv6, every interface); without, only when the file
    says ``insecure = true``; peers may be host names."""
    nodes: dict[str, dict[str, Any]] = {
        "n1": {"raft": "10.0.0.1:7001", "client": "10.0.0.1:8001", "listen": "0.0.0.0"},
        "n2": {"raft": "[fd00::2]:7001", "client": "[fd00::2]:8001", "listen": "::"},
        "n3": {"raft": "10.0.0.3:7001", "client": "10.0.0.3:8001"},
    }
    nodes["n3"]["peers"] = {"n1": "node1.example:7001"}
    for n in nodes:
        nodes[n]["public_key"] = _pub(tmp_path, n)
    cfg, _ = load_config(_cluster_file(tmp_path, nodes))
    assert cfg.secure
    assert cfg.nodes["n1"].bind_address("10.0.0.1:7001") == "0.0.0.0:7001"
    assert cfg.nodes["n2"].bind_address("[fd00::2]:8001") == "[::]:8001"
    for n in nodes:
        del nodes[n]["public_key"]
    with pytest.raises(ConfigError, match="not loopback"):
        load_config(_cluster_file(tmp_path, nodes))
    cfg, _ = load_config(_cluster_file(tmp_path, nodes, security={"insecure": True}))
    assert not cfg.secure


def test_orbital_keys_init_writes_keys_and_a_cluster_file_and_prints_no_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "deploy"
    hosts = "10.0.0.1,10.0.0.2,fd00::3,10.0.0.4,10.0.0.5"
    args = ["keys", "init", "--dir", str(out), "--nodes", "5", "--hosts", hosts, "--listen-all"]
    assert orbital(args) == 0
    printed = capsys.readouterr().out
    cfg, base = load_config(out / "cluster.toml")
    assert cfg.secure
    assert sorted(cfg.nodes) == ["n1", "n2", "n3", "n4", "n5"]
    assert cfg.nodes["n3"].raft == "[fd00::3]:7001"
    assert cfg.nodes["n3"].listen == "::"
    assert cfg.nodes["n1"].client == "10.0.0.1:8001"
    keys = out / "keys"
    secrets = []
    for name in ["n1", "n2", "n3", "n4", "n5", "client", "admin"]:
        path = keys / f"{name}.key_secret"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        secrets.append(load_key_pair(path).secret.decode())
    for n in cfg.nodes:
        node_keys = cfg.node_keys(n, base)
        assert node_keys is not None
    text = (out / "cluster.toml").read_text()
    for secret in secrets:
        assert secret not in printed
        assert secret not in text
    assert "n3 on fd00::3: copy cluster.toml and keys/n3.key_secret" in printed
    assert orbital(args) == 2  # never overwrites
    assert "exists already" in capsys.readouterr().err
    assert orbital(["keys", "new", "ops2", "--dir", str(keys)]) == 0
    public = capsys.readouterr().out.splitlines()[0]
    assert load_key_pair(keys / "ops2.key_secret").public.decode() == public


def test_a_node_with_a_bad_key_file_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert orbital(["keys", "init", "--dir", str(tmp_path), "--nodes", "3"]) == 0
    capsys.readouterr()
    config = str(tmp_path / "cluster.toml")
    (tmp_path / "keys" / "n1.key_secret").chmod(0o644)
    assert orbital(["node", "--config", config, "--id", "n1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "readable by others" in err[0]
    (tmp_path / "keys" / "n1.key_secret").chmod(0o600)
    (tmp_path / "keys" / "n1.key_secret").rename(tmp_path / "keys" / "n1.moved")
    (tmp_path / "keys" / "n2.key_secret").rename(tmp_path / "keys" / "n1.key_secret")
    assert orbital(["node", "--config", config, "--id", "n1"]) == 2
    assert "is not the key pair of n1's public_key" in capsys.readouterr().err


# ==== real processes ==========================================================================
def stable_leader(sts: dict[str, dict[str, Any] | None]) -> tuple[str, int] | None:
    live = {n: s for n, s in sts.items() if s is not None}
    if len(live) != len(sts):
        return None
    leaders = [n for n, s in live.items() if s["role"] == "leader"]
    if len(leaders) != 1:
        return None
    leader, term = leaders[0], int(live[leaders[0]]["term"])
    agreed = all(s["term"] == term and s["leader"] == leader for s in live.values())
    return (leader, term) if agreed else None


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator[Callable[..., LocalCluster]]:
    made: list[LocalCluster] = []

    def make(*, curve: bool = True, plant: str = "") -> LocalCluster:
        env = {"PYTHONPATH": str(PLANTED), "ORBITAL_PLANT": plant} if plant else {}
        spec = ClusterSpec(
            nodes=("n1", "n2", "n3"), toxiproxy=False, seed=SEED, curve=curve, env=env
        )
        c = LocalCluster(spec, tmp_path / f"cluster{len(made)}")
        made.append(c)
        return c

    yield make
    for c in made:
        c.stop()


def node_log(cluster: LocalCluster, node: str) -> str:
    return (cluster.node_dir(node) / "node.log").read_text(errors="replace")


class Sender:
    """Raw DEALERs to nodes' Raft ports, with CURVE keys (a stranger's or a member's), or
    none: sends whatever frames it is given."""

    def __init__(self, cluster: LocalCluster, keys: ClientKeys | None) -> None:
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.socks: dict[str, zmq.Socket[bytes]] = {}
        for node, addr in cluster.raft_addr.items():
            s = self.ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.SNDHWM, 100_000)
            if keys is not None:
                keys.apply(s, node)
            s.connect(f"tcp://{addr}")
            self.socks[node] = s

    def send(self, node: str, frame: bytes) -> None:
        # no connection (refused) or a full queue: dropped, as any lost message
        with contextlib.suppress(zmq.Again):
            self.socks[node].send(frame, zmq.NOBLOCK)

    def close(self) -> None:
        self.ctx.destroy(linger=0)


def stranger_keys(cluster: LocalCluster, name: str) -> ClientKeys:
    """A key pair the cluster never listed, knowing every node's public key (they are
    public): what a stranger on the network can have at best."""
    pair = create_key_pair(cluster.workdir / "strangers", name)
    return ClientKeys(pair, dict(cluster.public_keys))


def member_keys(cluster: LocalCluster, node: str) -> ClientKeys:
    pair = load_key_pair(cluster.keys_dir / f"{node}.key_secret")
    return ClientKeys(pair, dict(cluster.public_keys))


async def attack_as_strangers(cluster: LocalCluster, leader: str, term: int) -> None:
    """A client and an admin stranger try a write, a transfer and a membership change; then
    for 1.5 s forged heartbeats (term + JUMP, claiming to come from a follower) from a node
    stranger with its own keys and from a peer without CURVE."""
    curve = cluster.spec.curve
    others = [n for n in cluster.spec.nodes if n != leader]
    for role in ("client", ADMIN):
        keys = stranger_keys(cluster, f"stranger-{role}") if curve else None
        async with KVClient(dict(cluster.client_addr), keys=keys, timeout=0.6) as c:
            for op in (
                c.put("stranger", 1),
                c.membership("add_learner", "evil"),
                c.transfer(others[0]),
            ):
                with contextlib.suppress(KVError):
                    await op
    senders = [Sender(cluster, stranger_keys(cluster, "stranger-node") if curve else None)]
    if curve:
        senders.append(Sender(cluster, None))  # no CURVE at all
    try:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            for node in cluster.spec.nodes:
                src = NodeId(others[0] if node != others[0] else others[1])
                frame = encode_frame(Heartbeat(src, NodeId(node), term + JUMP, 0), "orbital")
                for s in senders:
                    s.send(node, frame)
            await asyncio.sleep(0.05)
    finally:
        for s in senders:
            s.close()


async def damage(cluster: LocalCluster, term: int) -> list[str]:
    """What an attack achieved: the term moved past what natural elections explain, a node
    gone, the stranger's value written, a member added or removed."""
    problems = []
    with StatusPoller(cluster, timeout=1.0) as poller:
        sts = await poller.poll()
    for node, st in sts.items():
        if st is None:
            problems.append(f"{node} does not answer")
            continue
        if st["term"] > term + TERM_SLACK:
            problems.append(f"{node}: the term jumped from {term} to {st['term']}")
        if st["voters"] != ["n1", "n2", "n3"] or st["learners"]:
            problems.append(f"{node}: membership {st['voters']} {st['learners']}")
    async with cluster.kv_client(timeout=SETTLE_S) as c:
        if await c.get("stranger") is not None:
            problems.append("the stranger's write took effect")
    return problems


@pytest.mark.integration
@pytest.mark.parametrize("curve", [True, False], ids=["curve", "no-keys-teeth"])
def test_strangers_are_refused_before_the_core_and_logged_once(
    cluster_factory: Callable[..., LocalCluster], curve: bool
) -> None:
    """With keys: a node, a client and an admin without the cluster's keys, and a peer
    without CURVE, change nothing (same leader and term, no write, no member), every node
    counts refused connections, and its log names each refused key and the peer's address
    once, however often the strangers reconnected. Teeth: the same attack on a cluster
    without keys moves the term and adds the member."""
    cluster = cluster_factory(curve=curve)

    async def scenario() -> list[str]:
        with cluster:
            await cluster.wait_ready(SETTLE_S)
            with StatusPoller(cluster) as poller:
                (leader, term), _ = await poller.until(stable_leader, SETTLE_S)
            await attack_as_strangers(cluster, leader, term)
            await asyncio.sleep(0.5)
            problems = await damage(cluster, term)
            if curve:
                with StatusPoller(cluster) as poller:
                    sts = await poller.poll()
                for node, st in sts.items():
                    assert st is not None
                    assert st["refused_connections"]["raft"] > 0, node
                    assert st["refused_connections"]["client"] > 0, node
                    assert not st["refused"], f"a frame reached {node}'s core: {st['refused']}"
            return problems

    problems = run(scenario)
    if not curve:
        assert any("term" in p for p in problems), problems
        assert any("membership" in p for p in problems), problems
        return
    assert problems == []
    strangers = cluster.workdir / "strangers"
    keys = {n: load_key_pair(strangers / f"{n}.key_secret").public.decode() for n in STRANGERS}
    seen: dict[str, int] = dict.fromkeys(STRANGERS, 0)
    for node in cluster.spec.nodes:
        lines = node_log(cluster, node).splitlines()
        for name, key in keys.items():
            mine = [x for x in lines if key in x]
            assert len(mine) <= 1, (node, name, mine)  # once, however many reconnections
            port = "raft" if name == "stranger-node" else "client"
            for x in mine:
                assert f"{port}/{node}: refused a connection from 127.0.0.1: its key" in x
            seen[name] += len(mine)
        # no CURVE: refused at the handshake, logged once per address (best effort, see
        # raft.security: the address is often gone before it can be read)
        failed = [x for x in lines if "CURVE handshake failed" in x]
        assert 1 <= len(failed) <= 2, failed
        for x in failed:
            assert re.search(
                r"raft/n\d: refused a connection from (127\.0\.0\.1|an address gone)", x
            )
    assert seen["stranger-node"] == 3  # it dialed every node's Raft port
    assert seen["stranger-client"] >= 1
    assert seen["stranger-admin"] >= 1
    assert_no_secret_logged(cluster)


STRANGERS = ("stranger-node", "stranger-client", "stranger-admin")


def assert_no_secret_logged(cluster: LocalCluster) -> None:
    """No secret key of the run appears in any node's log nor in the cluster file."""
    secrets = [load_key_pair(p).secret.decode() for p in cluster.keys_dir.glob("*.key_secret")]
    assert secrets
    texts = [node_log(cluster, n) for n in cluster.spec.nodes]
    texts.append(cluster.config_path.read_text())
    for secret in secrets:
        assert all(secret not in t for t in texts)


@pytest.mark.integration
@pytest.mark.parametrize("plant", ["", "no_sender_binding"], ids=["bound", "unbound-teeth"])
def test_a_member_cannot_speak_as_another(
    cluster_factory: Callable[..., LocalCluster], plant: str
) -> None:
    """A follower's valid keys sending heartbeats of a higher term that claim to come from
    the other follower: dropped by every node (the key names its node), nothing changes.
    Teeth: with the sender binding planted off, the term moves."""
    cluster = cluster_factory(plant=plant)

    async def scenario() -> tuple[list[str], str]:
        with cluster:
            await cluster.wait_ready(SETTLE_S)
            with StatusPoller(cluster) as poller:
                (leader, term), _ = await poller.until(stable_leader, SETTLE_S)
            me, other = sorted(n for n in cluster.spec.nodes if n != leader)
            sender = Sender(cluster, member_keys(cluster, me))
            try:
                for _ in range(20):
                    for node in (leader, other):
                        src = NodeId(other if node == leader else leader)
                        hb = Heartbeat(src, NodeId(node), term + JUMP, 0)
                        sender.send(node, encode_frame(hb, "orbital"))
                    await asyncio.sleep(0.05)
            finally:
                sender.close()
            await asyncio.sleep(0.3)
            return await damage(cluster, term), me

    problems, me = run(scenario)
    if plant:
        assert any("term" in p for p in problems), problems
        return
    assert problems == []
    texts = " ".join(node_log(cluster, n) for n in cluster.spec.nodes)
    assert f"on a connection authenticated as '{me}'" in texts


@pytest.mark.integration
@pytest.mark.parametrize("curve", [True, False], ids=["curve", "no-keys-teeth"])
def test_admin_operations_need_the_admin_key(
    cluster_factory: Callable[..., LocalCluster], curve: bool
) -> None:
    """Issue 10: ``add_learner evil`` and ``remove`` on the client port were accepted from
    anyone. With keys a client key gets ``forbidden`` for add_learner, remove and transfer
    (nothing changes); the admin key transfers the leadership. Teeth: without keys the same
    client adds ``evil``."""
    cluster = cluster_factory(curve=curve)

    async def scenario() -> tuple[list[str], list[str]]:
        with cluster:
            await cluster.wait_ready(SETTLE_S)
            with StatusPoller(cluster) as poller:
                (leader, term), _ = await poller.until(stable_leader, SETTLE_S)
            other = sorted(n for n in cluster.spec.nodes if n != leader)[0]
            errors = []
            async with cluster.kv_client(timeout=3.0) as c:
                for op in (
                    c.membership("add_learner", "evil"),
                    c.membership("remove", other),
                    c.transfer(other),
                ):
                    try:
                        await op
                    except KVError as exc:
                        errors.append(exc.error)
            problems = await damage(cluster, term)
            if curve:
                async with cluster.kv_client(role=ADMIN, timeout=5.0) as admin:
                    await admin.transfer(other)
                with StatusPoller(cluster) as poller:
                    await poller.until(lambda sts: _led_by(sts, other), SETTLE_S)
            return errors, problems

    errors, problems = run(scenario)
    if not curve:
        assert any("membership" in p for p in problems), problems
        return
    assert errors == ["forbidden"] * 3
    assert problems == []


def _led_by(sts: dict[str, dict[str, Any] | None], node: str) -> bool | None:
    found = stable_leader(sts)
    return True if found is not None and found[0] == node else None


# ==== the fuzz ================================================================================
#: how long the fuzz runs, and its pace (frames per 10 ms round)
FUZZ_S = 6.0
FUZZ_PER_ROUND = 8
#: beyond what a node may persist (0..2**63-1); the wire (MessagePack) carries integers from
#: -2**63 to 2**64-1 only, so larger ones cannot even be sent
EXTREME = [2**63, 2**64 - 1, 2**63 + 7, -(2**63), -1]


class Fuzzer:
    """Forged, well-formed messages in the name of ``me`` (whose valid keys send them),
    every one something the guard or the transport must refuse. Seeded: the n-th message is
    the same in every run."""

    def __init__(self, seed: int, me: str, leader: str, other: str, term: int, commit: int):
        self.rng = random.Random(seed)
        self.me, self.leader, self.other = NodeId(me), NodeId(leader), NodeId(other)
        self.term, self.commit = term, commit
        self.kinds: dict[str, int] = {}

    def higher(self) -> int:
        return self.term + self.rng.choice([JUMP, 10**6, 10**18 - self.term, 2**63 - 1 - self.term])

    def any_term(self) -> int:
        r = self.rng.random()
        if r < 0.15:
            return self.rng.choice(EXTREME)
        return self.higher() if r < 0.6 else self.term

    def index(self) -> int:
        return self.rng.choice([0, 1, self.commit, self.commit + 3, 2**62, 2**63, 2**64 - 1, -1])

    def _pick(self, msgs: list[Message]) -> Message:
        return msgs[self.rng.randrange(len(msgs))]

    def next(self) -> tuple[str, Message]:
        """(destination node, message)."""
        kind = self.rng.choice(
            [
                "ae_not_contiguous",
                "ae_entry_term",
                "ae_committed_conflict",
                "ae_bad_config",
                "ae_second_leader",
                "heartbeat_second_leader",
                "snapshot_second_leader",
                "snapshot_bad_meta",
                "timeout_now",
                "vote_log_term",
                "response_beyond_log",
                "response_unknown_read",
                "wrong_sender",
                "extreme",
            ]
        )
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        rng = self.rng
        dst = rng.choice([self.leader, self.other])
        me, t, c = self.me, self.term, self.commit
        m: Message
        if kind == "ae_not_contiguous":
            entries = tuple(LogEntry(c + 2 * k + 2, t, b"x") for k in range(rng.randint(1, 4)))
            m = AppendEntries(me, dst, self.higher(), c, 1, entries, c + 10)
        elif kind == "ae_entry_term":
            term = self.higher()
            m = AppendEntries(me, dst, term, c, 1, (LogEntry(c + 1, term + 9, b"x"),), c + 1)
        elif kind == "ae_committed_conflict":
            term = self.higher()
            m = AppendEntries(me, dst, term, 1, term, (LogEntry(2, term, b"evil"),), 2)
        elif kind == "ae_bad_config":
            term = self.higher()
            bad = LogEntry(c + 1, term, rng.choice([b"{}", b"garbage", b"[]"]), EntryKind.CONFIG)
            m = AppendEntries(me, dst, term, c, 1, (bad,), c + 1)
        elif kind == "ae_second_leader":
            m = AppendEntries(me, dst, t, c, t, (LogEntry(c + 1, t, b"evil"),), c + 1)
        elif kind == "heartbeat_second_leader":
            m = Heartbeat(me, dst, t, self.index(), rng.randint(0, 10))
        elif kind == "snapshot_second_leader":
            meta = SnapshotMeta(c + 50, t, ConfState(frozenset({me})))
            m = InstallSnapshot(me, dst, t, meta, rng.choice([0, 5, 2**40]), b"{}", True)
        elif kind == "snapshot_bad_meta":
            term = self.higher()
            meta = rng.choice(
                [
                    SnapshotMeta(c + 50, term + 1, ConfState(frozenset({me}))),
                    SnapshotMeta(c + 50, term, ConfState(frozenset())),
                    SnapshotMeta(0, term, ConfState(frozenset({me}))),
                ]
            )
            m = InstallSnapshot(me, dst, term, meta, rng.choice([0, 7, 2**63]), b"{}", True)
        elif kind == "timeout_now":
            m = TimeoutNow(me, dst, rng.choice([t, self.higher()]))
        elif kind == "vote_log_term":
            term = self.higher()
            m = RequestVote(me, dst, term, c + 100, term + 1, pre_vote=rng.random() < 0.5)
        elif kind == "response_beyond_log":
            dst = self.leader
            m = self._pick(
                [
                    AppendEntriesResponse(me, dst, t, True, match_index=c + 10**6),
                    AppendEntriesResponse(me, dst, t, False, reject_index=c + 10**6),
                    InstallSnapshotResponse(me, dst, t, c + 10**6, 0, c + 10**6),
                ]
            )
        elif kind == "response_unknown_read":
            m = HeartbeatResponse(me, self.leader, t, 10**9)
            dst = self.leader
        elif kind == "wrong_sender":
            src = rng.choice([self.leader, self.other, NodeId("evil"), dst])
            m = self._pick(
                [
                    Heartbeat(src, dst, t + 1, c),
                    TimeoutNow(src, dst, t),
                    AppendEntries(src, dst, t + 1, c, t, (), c),
                ]
            )
        else:  # extreme terms and indexes on otherwise plausible messages
            m = self._pick(
                [
                    Heartbeat(me, dst, rng.choice(EXTREME), self.index()),
                    AppendEntries(me, dst, rng.choice(EXTREME), self.index(), 1, (), self.index()),
                    RequestVote(me, dst, rng.choice(EXTREME), self.index(), 1),
                    AppendEntriesResponse(me, self.leader, t, True, match_index=self.index()),
                ]
            )
        return m.dst, m


async def fuzz_cluster(cluster: LocalCluster) -> tuple[list[str], dict[str, int]]:
    """Run the fuzz against a started cluster while a client writes; what went wrong, and
    how many frames of each kind were sent."""
    await cluster.wait_ready(SETTLE_S)
    with StatusPoller(cluster) as poller:
        (leader, term), _ = await poller.until(stable_leader, SETTLE_S)
    acked: dict[str, int] = {}
    stop = asyncio.Event()

    async def writer() -> None:
        async with cluster.kv_client(client_id="fuzz-writer", timeout=2.0) as c:
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    await c.put(f"k{i}", i)
                except KVError:
                    continue  # not acknowledged: not counted
                acked[f"k{i}"] = i

    writing = asyncio.create_task(writer())
    while len(acked) < 5:
        await asyncio.sleep(0.01)
    with StatusPoller(cluster) as poller:
        sts = await poller.poll()
    commit = min(int(s["commit"]) for s in sts.values() if s is not None)
    me, other = sorted(n for n in cluster.spec.nodes if n != leader)
    fuzzer = Fuzzer(SEED, me, leader, other, term, commit)
    sender = Sender(cluster, member_keys(cluster, me))
    sent = 0
    try:
        deadline = time.monotonic() + FUZZ_S
        while time.monotonic() < deadline and all(cluster.alive(n) for n in cluster.spec.nodes):
            for _ in range(FUZZ_PER_ROUND):
                dst, msg = fuzzer.next()
                sender.send(dst, encode_frame(msg, "orbital"))
                sent += 1
            await asyncio.sleep(0.01)
    finally:
        sender.close()
        await asyncio.sleep(1.0)  # let the last frames arrive; writes go on
        stop.set()
        await writing
    problems = [f"{n} exited" for n in cluster.spec.nodes if not cluster.alive(n)]
    with StatusPoller(cluster, timeout=1.0) as poller:
        try:
            (_, now), _ = await poller.until(stable_leader, SETTLE_S)
        except Exception:  # no stable leader: reported below
            now = -1
            problems.append(f"no stable leader after the fuzz: {await poller.poll()}")
        sts = await poller.poll()
    if now > term + TERM_SLACK:
        problems.append(f"the term jumped from {term} to {now}")
    refusals = sum(sum(st["refused"].values()) for st in sts.values() if st is not None)
    if not problems:
        assert refusals > 0, "no forged frame reached a node's guard: the fuzz tested nothing"
        async with cluster.kv_client(timeout=SETTLE_S) as c:
            for key, value in acked.items():
                got = await c.get(key)
                if got != value:
                    problems.append(f"acknowledged {key}={value} reads {got}")
    assert len(acked) >= 5
    fuzzer.kinds["sent"] = sent
    return problems, fuzzer.kinds


@pytest.mark.integration
def test_fuzz_forged_messages_with_a_members_keys(
    cluster_factory: Callable[..., LocalCluster],
) -> None:
    """For FUZZ_S seconds a follower's valid keys send seeded forged messages (extreme terms
    and indexes, wrong senders, non-contiguous and conflicting entries, entries of future
    terms, bad configuration entries, a second leader in the current term, TimeoutNow from
    a follower, snapshots with bad offsets and metadata, responses beyond the leader's log)
    while a client writes. Afterwards: no node exited, one leader serves, the term moved by
    at most TERM_SLACK (a forged term that were adopted moves it by JUMP at least), every
    acknowledged write reads back, and the logs on disk agree (storage replay)."""
    cluster = cluster_factory()
    with cluster:
        problems, kinds = run(lambda: fuzz_cluster(cluster))
    assert problems == [], problems
    assert kinds["sent"] > 1000
    result = replay_cluster({n: cluster.data_dir(n) for n in cluster.spec.nodes})
    assert result.valid, result.violations
    assert_no_secret_logged(cluster)
    print(f"fuzz: {kinds}")


@pytest.mark.integration
@pytest.mark.slow
def test_fuzz_has_teeth_without_the_guard(cluster_factory: Callable[..., LocalCluster]) -> None:
    """The same fuzz against nodes with the guard planted off: something breaks (a node
    exits, the term jumps, a write is lost)."""
    cluster = cluster_factory(plant="no_guard")
    with cluster:
        problems, _ = run(lambda: fuzz_cluster(cluster))
    assert problems, "the fuzz found nothing wrong with an unguarded cluster"
    print(f"unguarded: {problems}")


@pytest.mark.integration
def test_an_authenticated_transport_names_senders_and_drops_extra_parts(tmp_path: Path) -> None:
    """In process, two transports with keys: a member's two-part message is dropped (our
    peers send one part), its one-part message arrives, named; a message claiming another
    sender is dropped. (The receive path reads each message's User-Id from its frame.)"""
    from raft.security import NodeKeys
    from raft.transport import ZmqTransport

    pairs = {n: create_key_pair(tmp_path, n) for n in ("a", "b", "c")}
    publics = {n: p.public for n, p in pairs.items()}
    a = ZmqTransport(NodeId("a"), "t", "127.0.0.1:0", {}, keys=NodeKeys(pairs["a"], publics))
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    raw = ctx.socket(zmq.DEALER)
    ClientKeys(pairs["b"], publics).apply(raw, "a")
    raw.connect(f"tcp://{a.address}")

    async def scenario() -> list[Message]:
        got: list[Message] = []
        a.set_receiver(got.append)
        good = encode_frame(Heartbeat(NodeId("b"), NodeId("a"), 1, 0), "t")
        forged = encode_frame(Heartbeat(NodeId("c"), NodeId("a"), 1, 0), "t")
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            raw.send_multipart([good, good])
            raw.send(forged)
            raw.send(good)
            await asyncio.sleep(0.05)
        return got

    try:
        got = run(scenario)
    finally:
        raw.close(linger=0)
        ctx.term()
        a.close()
    assert got
    assert all(m.src == "b" for m in got)
    assert a.dropped_frames >= 2  # the two-part message and the forged sender
