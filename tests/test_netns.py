"""A 3-node cluster on real addresses, each node in its own network namespace, CURVE on.

The test builds its own small network: a namespace holding a bridge, one namespace per node
and one for the clients, each joined to the bridge by a veth pair created from inside the
bridge's namespace. Addresses (10.213.0.0/24 and fd0d:213::/64) exist inside those
namespaces only; the machine's own network is never touched. n1 binds every interface
(``listen = "0.0.0.0"``), n2 its IPv4 address, n3 an IPv6 address. The cluster file and keys
come from ``orbital keys init --hosts``, as a deployment's would.

The cluster elects a leader, serves a write and a read from the client namespace, and
refuses a stranger's key, logging the stranger's real address (the client namespace's).
Every process started here is stopped by its PID, and every namespace is deleted, whatever
the outcome. Skipped, saying why, where namespaces cannot be made (not root, no ``ip``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from harness.cli import main as orbital

pytestmark = pytest.mark.integration

V4 = "10.213.0"
V6 = "fd0d:213::"
HOSTS = {"n1": f"{V4}.1", "n2": f"{V4}.2", "n3": f"{V6}3"}
CLIENT_V4, CLIENT_V6 = f"{V4}.10", f"{V6}10"
SETTLE_S = 30.0


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=False)


class Network:
    """The namespaces, the bridge and the addresses (see the module docstring)."""

    def __init__(self) -> None:
        tag = f"orb{os.getpid() % 100000}"
        self.bridge = f"{tag}br"
        self.ns = {n: f"{tag}{n}" for n in (*HOSTS, "c")}
        self.made: list[str] = []

    def create(self) -> None:
        for name in (self.bridge, *self.ns.values()):
            r = _ip("netns", "add", name)
            if r.returncode != 0:
                raise OSError(f"ip netns add {name}: {r.stderr.strip()}")
            self.made.append(name)
            self._must("-n", name, "link", "set", "lo", "up")
        self._must("-n", self.bridge, "link", "add", "br0", "type", "bridge")
        self._must("-n", self.bridge, "link", "set", "br0", "up")
        v4 = {**{n: h for n, h in HOSTS.items() if "." in h}, "c": CLIENT_V4}
        v6 = {"n3": HOSTS["n3"], "c": CLIENT_V6}
        for k, (who, ns) in enumerate(self.ns.items()):
            veth = f"v{k}"
            self._must("-n", self.bridge, "link", "add", veth, "type", "veth", "peer", "name",
                       "eth0", "netns", ns)  # fmt: skip
            self._must("-n", self.bridge, "link", "set", veth, "master", "br0")
            self._must("-n", self.bridge, "link", "set", veth, "up")
            self._must("-n", ns, "link", "set", "eth0", "up")
            # every namespace gets both families, so every node reaches n3 on IPv6
            self._must("-n", ns, "addr", "add", f"{v4.get(who, f'{V4}.{20 + k}')}/24",
                       "dev", "eth0")  # fmt: skip
            self._must("-n", ns, "-6", "addr", "add", f"{v6.get(who, f'{V6}{20 + k}')}/64",
                       "dev", "eth0", "nodad")  # fmt: skip

    def _must(self, *args: str) -> None:
        r = _ip(*args)
        if r.returncode != 0:
            raise OSError(f"ip {' '.join(args)}: {r.stderr.strip()}")

    def exec(self, who: str, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns[who], *argv]

    def destroy(self) -> None:
        for name in reversed(self.made):
            _ip("netns", "del", name)
        self.made.clear()


@pytest.fixture
def network() -> Iterator[Network]:
    if sys.platform != "linux":
        pytest.skip("network namespaces are Linux only")
    if shutil.which("ip") is None:
        pytest.skip("'ip' (iproute2) is not installed: ./scripts/setup.sh --tests installs it")
    if os.geteuid() != 0:
        pytest.skip("creating network namespaces needs root")
    net = Network()
    try:
        try:
            net.create()
        except OSError as exc:
            pytest.skip(f"cannot create network namespaces here: {exc}")
        yield net
    finally:
        net.destroy()
        left = _ip("netns", "list").stdout
        assert not any(name in left for name in (net.bridge, *net.ns.values()))


def orbital_in(net: Network, who: str, *args: str, timeout: float = 20.0) -> tuple[int, str]:
    argv = net.exec(who, [sys.executable, "-m", "harness.cli", *args])
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    return r.returncode, r.stdout + r.stderr


def test_cluster_across_namespaces_elects_serves_and_refuses_a_stranger(
    network: Network, tmp_path: Path
) -> None:
    hosts = ",".join(HOSTS.values())
    assert orbital(["keys", "init", "--dir", str(tmp_path), "--nodes", "3", "--hosts", hosts]) == 0
    config = tmp_path / "cluster.toml"
    doc: dict[str, Any] = tomllib.loads(config.read_text())
    doc["nodes"]["n1"]["listen"] = "0.0.0.0"  # every interface of n1's namespace
    config.write_bytes(tomli_w.dumps(doc).encode())
    assert orbital(["keys", "new", "stranger", "--dir", str(tmp_path / "strangers")]) == 0
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for node in HOSTS:
            log = (tmp_path / f"{node}.log").open("wb")
            argv = [sys.executable, "-m", "harness.cli", "node", "--config", str(config)]
            argv += ["--id", node, "--seed", str(7 + len(procs))]
            procs[node] = subprocess.Popen(
                network.exec(node, argv), stdout=log, stderr=subprocess.STDOUT
            )
            log.close()
        leader = _wait_for_leader(network, config, procs)
        code, out = orbital_in(network, "c", "kv", "--config", str(config), "put", "x", "42")
        assert code == 0, out
        code, out = orbital_in(network, "c", "kv", "--config", str(config), "--json", "get", "x")
        assert code == 0, out
        assert json.loads(out)["value"] == 42
        stranger = str(tmp_path / "strangers" / "stranger.key_secret")
        kv = ["kv", "--config", str(config), "--key", stranger, "--timeout", "1.5"]
        code, out = orbital_in(network, "c", *kv, "put", "y", "1")
        assert code == 1, out
        assert "unavailable" in out
        code, out = orbital_in(network, "c", "kv", "--config", str(config), "--json", "get", "y")
        assert code == 0, out
        assert json.loads(out)["value"] is None
        assert all(p.poll() is None for p in procs.values()), "a node exited"
    finally:
        for p in procs.values():  # only the processes started here, by PID
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    logs = {n: (tmp_path / f"{n}.log").read_text(errors="replace") for n in HOSTS}
    refused = [line for text in logs.values() for line in text.splitlines() if "refused a" in line]
    assert refused, logs
    assert all(CLIENT_V4 in line or CLIENT_V6 in line for line in refused), refused
    print(f"leader {leader}; refusals: {refused}")


def _wait_for_leader(net: Network, config: Path, procs: dict[str, subprocess.Popen[bytes]]) -> str:
    deadline = time.monotonic() + SETTLE_S
    last = ""
    while time.monotonic() < deadline:
        for node, p in procs.items():
            assert p.poll() is None, f"{node} exited with {p.returncode}"
        code, out = orbital_in(
            net, "c", "kv", "--config", str(config), "--timeout", "1", "--json", "status"
        )
        last = out
        if code == 0:
            sts = [s for s in json.loads(out) if "role" in s]
            leaders = {s["leader"] for s in sts}
            if len(sts) == len(HOSTS) and len(leaders) == 1 and None not in leaders:
                return str(leaders.pop())
        time.sleep(0.3)
    raise AssertionError(f"no leader across the namespaces within {SETTLE_S}s: {last}")
