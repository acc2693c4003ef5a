"""Nodes on five "hosts" over SSH: the test bed (scripts/testbed.sh) and ``placement = "ssh"``.

Each test brings up its own test bed (network namespaces with an sshd each, a control
namespace; addresses 10.78.0.0/24 inside them only) and runs the control node inside the
control namespace, as a user would (``scripts/testbed.sh exec``). After every test, passed or
failed, a finalizer checks that each host namespace holds nothing but its sshd (no node, agent
or Toxiproxy server left running), takes the test bed down, and checks that no namespace and
no sshd of it remain. Skipped, saying why, where namespaces cannot be made or sshd is missing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tomli_w

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
TESTBED = ROOT / "scripts" / "testbed.sh"
NET = "10.78.0"


@dataclass
class Bed:
    """One test bed: its name, directory, inventory and environment."""

    name: str
    dir: Path
    env: dict[str, str]

    @property
    def inventory(self) -> Path:
        return self.dir / "inventory.toml"

    def namespaces(self) -> list[str]:
        out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        names = [line.split()[0] for line in out.splitlines() if line.strip()]
        return [n for n in names if re.fullmatch(rf"{self.name}-(br|ctl|h\d+)", n)]

    def processes_in(self, ns: str) -> list[str]:
        """``pid comm`` of every live process in namespace ``ns``."""
        out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
        found = []
        for pid in out.split():
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            comm, state = (
                stat[stat.index("(") + 1 : stat.rindex(")")],
                stat.rsplit(")")[1].split()[0],
            )
            if state != "Z":
                found.append(f"{pid} {comm}")
        return found

    def leftovers(self, wait: float = 10.0) -> dict[str, list[str]]:
        """Every host namespace's processes other than its sshd (polled for up to ``wait``
        seconds: the agents end as their sessions close)."""
        deadline = time.monotonic() + wait
        while True:
            extra = {
                ns: [p for p in self.processes_in(ns) if not p.endswith(" sshd")]
                for ns in self.namespaces()
                if "-h" in ns
            }
            extra = {ns: ps for ns, ps in extra.items() if ps}
            if not extra or time.monotonic() > deadline:
                return extra
            time.sleep(0.1)

    def control(self, *argv: str, timeout: float = 240.0) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in the control namespace (the control node)."""
        return subprocess.run(
            [str(TESTBED), "exec", *argv], capture_output=True, text=True, env=self.env,
            cwd=ROOT, timeout=timeout,
        )  # fmt: skip

    def chaos(self, *args: str, timeout: float = 240.0) -> subprocess.CompletedProcess[str]:
        return self.control(sys.executable, "-m", "harness.cli", "chaos", "run", *args,
                            timeout=timeout)  # fmt: skip


def _sshds_of(directory: Path) -> list[str]:
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (proc / "stat").read_text().rsplit(")")[1].split()[0]
        except OSError:
            continue
        if str(directory) in cmd and state != "Z":
            out.append(f"{proc.name} {cmd}")
    return out


@pytest.fixture
def bed(tmp_path: Path) -> Iterator[Bed]:
    if sys.platform != "linux":
        pytest.skip("network namespaces are Linux only")
    if os.geteuid() != 0:
        pytest.skip("the SSH test bed needs root (network namespaces)")
    if shutil.which("ip") is None:
        pytest.skip("'ip' (iproute2) is not installed: ./scripts/setup.sh --tests installs it")
    if not Path("/usr/sbin/sshd").is_file():
        pytest.skip("sshd is not installed: ./scripts/setup.sh --tests installs openssh-server")
    name = f"ot{os.getpid() % 100000}"
    env = {
        **os.environ,
        "ORBITAL_TESTBED_DIR": str(tmp_path / "bed"),
        "ORBITAL_TESTBED_NAME": name,
        "ORBITAL_TESTBED_NET": NET,
        "ORBITAL_TESTBED_PYTHON": sys.executable,
    }
    b = Bed(name, tmp_path / "bed", env)
    up = subprocess.run([str(TESTBED), "up", "5"], capture_output=True, text=True, env=env)
    try:
        if up.returncode != 0:
            if "netns" in up.stderr or "Operation not permitted" in up.stderr:
                pytest.skip(f"cannot create network namespaces here: {up.stderr.strip()}")
            raise AssertionError(f"testbed up failed: {up.stderr}")
        yield b
        left = b.leftovers()  # the run is over: each host holds its sshd only
        assert not left, f"left running on the hosts: {left}"
    finally:
        down = subprocess.run([str(TESTBED), "down"], capture_output=True, text=True, env=env)
        assert down.returncode == 0, down.stderr
        assert not b.namespaces(), b.namespaces()
        deadline = time.monotonic() + 5.0
        while _sshds_of(b.dir) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _sshds_of(b.dir), _sshds_of(b.dir)


def _results(run: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    start = run.stdout.find("{")
    assert start >= 0, run.stdout + run.stderr
    results: dict[str, Any] = json.loads(run.stdout[start:])
    return results


def _failed_checks(results: dict[str, Any]) -> list[dict[str, Any]]:
    checks = results["expectations"]["checks"] + results["raft"]["checks"]
    return [c for c in checks if c["ok"] is False]


def _assert_on_five_hosts(results: dict[str, Any]) -> None:
    placed = results["placement"]
    assert placed["placement"] == "ssh"
    assert sorted(placed["nodes"].values()) == ["h1", "h2", "h3", "h4", "h5"]
    run_dir = Path(results["run_dir"])
    for node, host in placed["nodes"].items():
        log = (run_dir / "nodes" / node / "node.log").read_text()
        assert f"{NET}.{10 + int(host[1:])}" in log, f"{node} did not listen on {host}'s address"
        assert (run_dir / "nodes" / node / "data").is_dir(), f"{node}'s data was not read back"


@pytest.mark.slow
def test_antarctic_split_brain_across_five_hosts(bed: Bed, tmp_path: Path) -> None:
    """The Antarctic scenario, each node on its own host, partitions cut on the hosts."""
    run = bed.chaos("antarctic-split-brain", "--placement", "ssh", "--inventory",
                    str(bed.inventory), "--store", str(tmp_path / "store"), "--json")  # fmt: skip
    results = _results(run)
    assert run.returncode == 0, (run.stderr[-3000:], _failed_checks(results))
    assert results["valid"] is True
    _assert_on_five_hosts(results)
    met = {c["name"].split("[")[0] for c in results["expectations"]["checks"] if c["ok"] is True}
    wanted = {"minority_silent", "majority_serves", "converge_after_heal", "leader_placed",
              "leader_elected"}  # fmt: skip
    assert wanted <= met, met
    # met, or not applicable when a loaded machine moved the leadership north before the cut
    (down,) = [c for c in results["expectations"]["checks"] if "steps_down" in c["name"]]
    assert down["ok"] is True or "no minority node led" in str(down["observed"]), down


@pytest.mark.slow
def test_kill_leader_across_five_hosts(bed: Bed, tmp_path: Path) -> None:
    run = bed.chaos("kill-leader", "--placement", "ssh", "--inventory", str(bed.inventory),
                    "--store", str(tmp_path / "store"), "--json", "--time-limit", "12")  # fmt: skip
    results = _results(run)
    assert run.returncode == 0, (run.stderr[-3000:], _failed_checks(results))
    _assert_on_five_hosts(results)
    kills = [f for f in results["faults_applied"] if f["kind"] == "kill"]
    assert len(kills) >= 2, kills
    assert any(
        c["name"].startswith("leader_elected[kill") for c in results["expectations"]["checks"]
    )


def _landed(seen: dict[str, Any]) -> None:
    """Every process fault landed on the host that runs the node (seen in /proc there)."""
    assert seen["hosts"] == {n: f"{seen['bed']}-{h}" for n, h in seen["placed"].items()}
    assert seen["kill"]["after"] == "gone", f"the kill did not land: {seen['kill']}"
    assert seen["pause"]["after"] == "T", f"the pause did not land: {seen['pause']}"
    assert seen["resume"]["after"] not in ("T", "t", "gone"), f"the resume did not land: {seen}"
    assert seen["restart"]["ns"] == f"{seen['bed']}-{seen['placed'][seen['kill']['node']]}"
    assert seen["restart"]["after"] != "gone"
    assert all(state == "gone" for state in seen["after_stop"].values()), seen["after_stop"]
    assert {"data", "node.log", "roles.jsonl"} <= set(seen["read_back"])
    clock = seen["clock"]  # a 100 s jump of a node's libfaketime clock, made on its host
    assert clock["file"].startswith(str(seen["host_dirs"])), clock
    assert 99.0 < clock["moved_s"] - clock["elapsed_s"] < 101.0, f"the clock did not move: {clock}"


def _probe(bed: Bed, workdir: Path, *plant: str) -> dict[str, Any]:
    run = bed.control(sys.executable, "-m", "tests.remote_probe", str(bed.inventory),
                      str(workdir), *plant, timeout=180)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    seen: dict[str, Any] = json.loads(run.stdout.strip().splitlines()[-1])
    return {**seen, "bed": bed.name, "host_dirs": bed.dir / "hosts"}


def test_process_faults_land_on_the_host_and_an_undelivered_kill_is_caught(
    bed: Bed, tmp_path: Path
) -> None:
    """SIGKILL, SIGSTOP/SIGCONT and restart through the cluster reach the PID on its host,
    and a clock jump moves the node's libfaketime clock on its host; a planted remote kill
    that never reaches the host, and a planted clock written on the control node, are caught
    by the same check."""
    _landed(_probe(bed, tmp_path / "good"))
    planted = _probe(bed, tmp_path / "planted", "--plant", "undelivered-kill")
    with pytest.raises(AssertionError, match="the kill did not land"):
        _landed(planted)
    planted = _probe(bed, tmp_path / "clock-here", "--plant", "clock-here")
    with pytest.raises(AssertionError, match="startswith"):
        _landed(planted)
    planted["clock"]["file"] = str(bed.dir / "hosts")  # past the first check: the second
    with pytest.raises(AssertionError, match="the clock did not move"):
        _landed(planted)


def _inventory_with(bed: Bed, path: Path, host: str, **changes: Any) -> Path:
    """The test bed's inventory with ``host``'s table changed (or added)."""
    doc = tomllib.loads(bed.inventory.read_text())
    doc["hosts"].setdefault(host, {}).update(changes)
    path.write_bytes(tomli_w.dumps(doc).encode())
    return path


def _one_line_error(run: subprocess.CompletedProcess[str], pattern: str) -> None:
    assert run.returncode == 2, run.stdout[-2000:] + run.stderr[-2000:]
    lines = [ln for ln in run.stderr.splitlines() if ln.startswith("orbital chaos: could not run")]
    assert len(lines) == 1, run.stderr
    assert re.search(pattern, lines[0]), lines[0]


def test_an_unreachable_host_is_named_and_nothing_is_left_running(bed: Bed, tmp_path: Path) -> None:
    inv = _inventory_with(bed, tmp_path / "inv.toml", "h6", address=f"{NET}.99",
                          dir=str(bed.dir / "hosts" / "h6"), connect_timeout=2.0)  # fmt: skip
    run = bed.chaos("kill-leader", "--placement", "ssh", "--inventory", str(inv),
                    "--store", str(tmp_path / "store"), "--no-progress")  # fmt: skip
    _one_line_error(run, rf"host h6 \(root@{NET}\.99:22\): unreachable")


def test_a_wrong_key_is_named_and_nothing_is_left_running(bed: Bed, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)],
                   check=True)  # fmt: skip
    inv = _inventory_with(bed, tmp_path / "inv.toml", "h3", key=str(stranger))
    run = bed.chaos("kill-leader", "--placement", "ssh", "--inventory", str(inv),
                    "--store", str(tmp_path / "store"), "--no-progress")  # fmt: skip
    _one_line_error(run, rf"host h3 \(root@{NET}\.13:22\): login refused with key {stranger}")


def test_a_node_that_fails_to_start_names_its_host_and_nothing_is_left_running(
    bed: Bed, tmp_path: Path
) -> None:
    scenario = tmp_path / "fails.toml"
    scenario.write_text(
        (ROOT / "configs" / "kill-leader.toml").read_text()
        + '\n[system]\nkind = "tests.remote_probe:FailsOnThirdNode"\n'
    )
    run = bed.chaos(str(scenario), "--placement", "ssh", "--inventory", str(bed.inventory),
                    "--store", str(tmp_path / "store"), "--no-progress")  # fmt: skip
    _one_line_error(run, r"n3 exited with code 1 on host h3")


def test_a_killed_control_node_leaves_nothing_running_on_the_hosts(
    bed: Bed, tmp_path: Path
) -> None:
    """SIGKILL of the control node runs no clean-up of ours: the SSH sessions end, and each
    host's agent stops what it started (the fixture checks the hosts hold only their sshd)."""
    argv = [str(TESTBED), "exec", sys.executable, "-m", "harness.cli", "chaos", "run",
            "kill-leader", "--placement", "ssh", "--inventory", str(bed.inventory),
            "--store", str(tmp_path / "store"), "--no-progress", "--time-limit", "60"]  # fmt: skip
    control = subprocess.Popen(argv, env=bed.env, cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # every host runs its Toxiproxy and a node
            running = [bed.processes_in(f"{bed.name}-h{k}") for k in range(1, 6)]
            if all(sum(p.endswith(" python") for p in ps) >= 2 for ps in running) and all(
                any("toxiproxy" in p for p in ps) for ps in running
            ):
                break
            assert control.poll() is None, "the run ended before it was killed"
            time.sleep(0.2)
        else:
            raise AssertionError(f"the nodes did not start: {running}")
    finally:
        control.kill()  # the control node we started (testbed.sh exec execs into it)
        control.wait(10)


def test_the_leftover_check_sees_a_process_left_on_a_host(bed: Bed) -> None:
    """The clean-up check has teeth: a process left in a host's namespace is reported."""
    ns = f"{bed.name}-h2"
    stray = subprocess.Popen(["ip", "netns", "exec", ns, "sleep", "30"])
    try:
        deadline = time.monotonic() + 5
        while not any(p.endswith(" sleep") for p in bed.processes_in(ns)):
            assert time.monotonic() < deadline, "the stray process did not start"
            time.sleep(0.05)
        left = bed.leftovers(wait=0.2)
        assert left == {ns: [f"{stray.pid} sleep"]}, left
    finally:
        stray.kill()  # by the PID we started
        stray.wait(10)


def _disks_on_hosts(seen: dict[str, Any]) -> None:
    """Each node's data directory is a FUSE mount in the node's own mount namespace (made
    on its host), answering control commands, invisible to the control node."""
    for node in ("n1", "n2", "n3"):
        mine = seen[node]
        assert mine["data_dir"] in mine["node_sees"], f"{node}'s disk is not under it: {mine}"
        assert mine["data_dir"] not in seen["control_sees"], mine
        assert "unsynced" in mine["status"], mine
    assert "wal" in seen["read_back"], seen["read_back"]


def test_disks_are_mounted_where_the_nodes_run(bed: Bed, tmp_path: Path) -> None:
    """The disk-fault file system runs on each node's host, under its data directory in its
    mount namespace, and answers through the host's agent; a planted mount on the control
    node is caught."""
    _disks_on_hosts(_probe(bed, tmp_path / "good", "--disks"))
    planted = _probe(bed, tmp_path / "here", "--disks", "--plant", "disk-here")
    with pytest.raises(AssertionError, match="disk is not under it"):
        _disks_on_hosts(planted)
