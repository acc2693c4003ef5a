"""Where a node's process runs: this machine (:class:`LocalPlacement`) or hosts over SSH
(:class:`SshPlacement`).

Theory of operation
-------------------
:class:`harness.local.Cluster` keeps the one model of a cluster: its nodes, their addresses,
the links and their faults, the processes and what was done to them. A placement answers the
questions whose answer depends on where the processes run:

- which address each port of each node listens on (:meth:`Placement.addresses`);
- where the Toxiproxy proxy of each link lives (:meth:`Placement.network`: one
  :class:`~chaos.toxiproxy.ProxyNetwork` either way, so partitions, cuts and latency are the
  same code);
- how the files a system wrote in ``prepare`` reach the node (:meth:`Placement.share`);
- how a node's process is started, and so signalled (:meth:`Placement.start`, returning a
  handle with :class:`~chaos.process.ManagedProcess`'s interface);
- how the nodes' logs and data come back to the run directory for the replay and the report
  (:meth:`Placement.collect`).

**Local**: loopback ports, one Toxiproxy server on 127.0.0.1, processes of this machine; the
nodes write straight into the run directory.

**SSH** (``placement = "ssh"`` and an inventory, :mod:`harness.inventory`): nodes are spread
round robin over the inventory's hosts. On each host an agent (:mod:`chaos.agent`, started over
SSH) runs the host's processes, and a Toxiproxy server (its API on the host's 127.0.0.1,
reached through an SSH port forward: the API has no authentication) holds the proxies of the
host's *outgoing* links: ``i -> j`` lives on ``i``'s host, listening on that host's
127.0.0.1, its upstream ``j``'s real address, so a cut stops real traffic between two hosts.
A client link ``client -> j`` lives on ``j``'s host, listening on its address (the control
node dials it). Each host works in ``DIR/runs/<run>/``, a mirror of the run directory: the
files ``prepare`` wrote (the cluster file, keys) are uploaded there by SFTP with every path
under the run directory rewritten to the host's; commands and their environment are
rewritten the same way (and this machine's Python becomes the host's). After the run each
node's directory (log, data, role record) is read back into ``nodes/<id>/``.

**Times**: every time in ``history.jsonl`` and ``faults.jsonl`` is the control node's
``time.monotonic_ns()``, taken when the control node sends the operation or the fault. The
only times taken on a host are the ones a node writes itself (Orbital's ``roles.jsonl``, raw
``CLOCK_MONOTONIC``); on reading them back they are moved onto the control node's clock by the
host's measured offset, whose error bound (half the best round trip) is kept in
``hosts.json``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

import requests

from chaos.clock import ClockFaultError, FakeClock
from chaos.diskfs import Disk, DiskMount
from chaos.process import EventSink, ManagedProcess, ProcessManager
from chaos.remote import (
    HostSpec,
    RemoteDisk,
    RemoteError,
    RemoteHost,
    RemoteHosts,
    RemoteProcess,
)
from chaos.toxiproxy import (
    LOOPBACK,
    Link,
    ProxyNetwork,
    ProxyServer,
    ToxiproxyError,
    ToxiproxyServer,
    free_port,
)
from harness.system import NodeCommand

NodeProcess = ManagedProcess | RemoteProcess


class Processes(Protocol):
    """The processes of a run by name (:class:`~chaos.process.ProcessManager`'s interface)."""

    def __getitem__(self, name: str) -> NodeProcess: ...
    def __contains__(self, name: object) -> bool: ...
    def processes(self) -> Sequence[NodeProcess]: ...
    def stop_all(self, timeout: float = 5.0) -> None: ...


class Placement(Protocol):
    """Where a cluster's processes run (module docstring)."""

    name: str

    @property
    def procs(self) -> Processes:
        """The node processes started so far."""

    def bind(self, on_event: EventSink) -> None:
        """Report every process event (start, kill, pause, ...) to ``on_event``."""

    def open(self, workdir: Path, nodes: Sequence[str]) -> None:
        """Get ready (connect to hosts); ``nodes``: every node the run may start."""

    def addresses(self, node: str, ports: Sequence[str]) -> dict[str, str]:
        """``host:port`` for each of ``node``'s ports."""

    def network(
        self,
        peers: Mapping[str, str],
        client_upstreams: Mapping[str, str],
        client_sources: Iterable[str],
    ) -> ProxyNetwork:
        """Start the Toxiproxy server(s) and the proxy of every link."""

    def share(self, files: Iterable[Path]) -> None:
        """Make the files the system's ``prepare`` wrote available to the nodes."""

    def start(
        self, node: str, cmd: NodeCommand, env: Mapping[str, str], log_path: Path, group: int | None
    ) -> NodeProcess:
        """Start ``node``'s process (``env``: added to the place's own environment)."""

    def clock(self, node: str, path: Path) -> FakeClock:
        """The libfaketime clock of ``node`` (``path``: its timestamp file in the run
        directory; a remote placement keeps it at the mirror of that path on the host)."""

    def disk(
        self,
        node: str,
        backing: Path,
        mountpoint: Path,
        state_dir: Path,
        *,
        mmap_paths: tuple[str, ...],
        allow_other: bool,
    ) -> Disk:
        """``node``'s fault-injecting file system (:mod:`chaos.diskfs`), mounted where the
        node runs (started)."""

    def collect(self) -> None:
        """Bring the nodes' directories back into the run directory (after they stopped)."""

    def close(self) -> None:
        """Stop everything the placement started (Toxiproxy servers, connections)."""

    def describe(self) -> dict[str, Any]:
        """Where each node ran, for ``hosts.json`` and the results."""


class PlacementError(RuntimeError):
    """A placement cannot run what was asked (the message says why)."""


# ==== on this machine ==========================================================================
class LocalPlacement:
    """Every node a process of this machine on loopback ports; one local Toxiproxy server."""

    name = "local"

    def __init__(self) -> None:
        self.procs: ProcessManager = ProcessManager()
        self.server: ToxiproxyServer | None = None

    def bind(self, on_event: EventSink) -> None:
        self.procs = ProcessManager(on_event=on_event)

    def open(self, workdir: Path, nodes: Sequence[str]) -> None:
        pass

    def addresses(self, node: str, ports: Sequence[str]) -> dict[str, str]:
        return {p: f"{LOOPBACK}:{free_port()}" for p in ports}

    def network(
        self,
        peers: Mapping[str, str],
        client_upstreams: Mapping[str, str],
        client_sources: Iterable[str],
    ) -> ProxyNetwork:
        self.server = ToxiproxyServer().start()
        return ProxyNetwork.create(
            self.server, peers, client_upstreams=client_upstreams, client_sources=client_sources
        )

    def share(self, files: Iterable[Path]) -> None:
        pass  # the nodes read the run directory itself

    def start(
        self, node: str, cmd: NodeCommand, env: Mapping[str, str], log_path: Path, group: int | None
    ) -> ManagedProcess:
        full = {**os.environ, **env}
        return self.procs.start(node, list(cmd.argv), log_path, env=full, cwd=cmd.cwd, group=group)

    def clock(self, node: str, path: Path) -> FakeClock:
        return FakeClock(path)

    def disk(
        self,
        node: str,
        backing: Path,
        mountpoint: Path,
        state_dir: Path,
        *,
        mmap_paths: tuple[str, ...],
        allow_other: bool,
    ) -> DiskMount:
        disk = DiskMount(
            backing, mountpoint, state_dir, mmap_paths=mmap_paths, allow_other=allow_other
        )
        return disk.start()

    def collect(self) -> None:
        pass  # written in place

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def describe(self) -> dict[str, Any]:
        return {"placement": "local"}


# ==== on hosts over SSH ========================================================================
class RemoteProcesses:
    """The remote processes of a run by name (:class:`Processes`)."""

    def __init__(self) -> None:
        self._procs: dict[str, RemoteProcess] = {}
        self.errors: list[str] = []

    def add(self, proc: RemoteProcess) -> None:
        self._procs[proc.name] = proc

    def __getitem__(self, name: str) -> RemoteProcess:
        return self._procs[name]

    def __contains__(self, name: object) -> bool:
        return name in self._procs

    def processes(self) -> list[RemoteProcess]:
        return list(self._procs.values())

    def stop_all(self, timeout: float = 5.0) -> None:
        """Stop every node (SIGCONT, SIGTERM, SIGKILL after ``timeout``, by each host's
        agent); a host that fails does not keep the others from stopping (what it still
        runs is stopped when its agent's session closes)."""
        for proc in self._procs.values():
            if proc.alive():
                try:
                    proc.stop(timeout)
                except RemoteError as exc:
                    self.errors.append(str(exc))


class _HostProxies:
    """A host's Toxiproxy server, its API reached through an SSH port forward."""

    def __init__(self, url: str, alive: Callable[[], bool]) -> None:
        self._url = url
        self._alive = alive

    @property
    def url(self) -> str:
        return self._url

    def running(self) -> bool:
        return self._alive()


class SshPlacement:
    """Nodes on the hosts of an inventory, driven over SSH (module docstring)."""

    name = "ssh"

    def __init__(self, hosts: Sequence[HostSpec]) -> None:
        if not hosts:
            raise PlacementError("an SSH placement needs at least one host")
        self.specs = list(hosts)
        self.procs: RemoteProcesses = RemoteProcesses()
        self.hosts: RemoteHosts | None = None
        self.host_of: dict[str, str] = {}
        self._workdir = Path()
        self._on_event: EventSink | None = None
        self._servers: dict[str, ProxyServer] = {}
        self._toxiproxies: dict[str, RemoteProcess] = {}
        self._libfaketime: dict[str, str] = {}
        self.collect_errors: list[str] = []

    # ---- paths ------------------------------------------------------------------------------
    def run_dir(self, host: str) -> str:
        """The host's mirror of the run directory."""
        spec = next(s for s in self.specs if s.name == host)
        run = f"{self._workdir.parent.name}-{self._workdir.name}"
        return str(PurePosixPath(spec.dir) / "runs" / run)

    def translate(self, host: str, text: str) -> str:
        """``text`` with every path under the run directory moved to ``host``'s mirror."""
        return text.replace(str(self._workdir), self.run_dir(host))

    def _host(self, host: str) -> RemoteHost:
        assert self.hosts is not None
        return self.hosts.hosts[host]

    # ---- the Placement protocol -------------------------------------------------------------
    def bind(self, on_event: EventSink) -> None:
        self._on_event = on_event

    def open(self, workdir: Path, nodes: Sequence[str]) -> None:
        self._workdir = workdir
        self.host_of = {n: self.specs[i % len(self.specs)].name for i, n in enumerate(nodes)}
        self.hosts = RemoteHosts(self.specs, log_dir=workdir / "hosts")
        self.hosts.open()
        for spec in self.specs:
            mine = [n for n, h in self.host_of.items() if h == spec.name]
            dirs = [self.translate(spec.name, str(workdir / "nodes" / n)) for n in mine]
            self.hosts.request(spec.name, "mkdir", paths=[self.run_dir(spec.name), *dirs])

    def addresses(self, node: str, ports: Sequence[str]) -> dict[str, str]:
        assert self.hosts is not None
        host = self.host_of[node]
        address = self._host(host).spec.address
        found = self.hosts.request(host, "ports", address=address, count=len(ports))["ports"]
        shown = f"[{address}]" if ":" in address else address
        return {p: f"{shown}:{port}" for p, port in zip(ports, found, strict=True)}

    def network(
        self,
        peers: Mapping[str, str],
        client_upstreams: Mapping[str, str],
        client_sources: Iterable[str],
    ) -> ProxyNetwork:
        assert self.hosts is not None
        used = sorted(set(self.host_of.values()))
        for host in used:
            self._servers[host] = self.start_toxiproxy(host)
        sources = list(client_sources)

        def place(link: Link) -> tuple[ProxyServer, str]:
            if link.src in sources:  # the control node dials it: on the node's host
                host = self.host_of[link.dst]
                return self._servers[host], self._host(host).spec.address
            return self._servers[self.host_of[link.src]], LOOPBACK

        return ProxyNetwork.create(
            self._servers[used[0]], peers, client_upstreams=client_upstreams,
            client_sources=sources, place=place,
        )  # fmt: skip

    def start_toxiproxy(self, host: str) -> ProxyServer:
        """Start the Toxiproxy server of ``host`` (by its agent) and forward its API."""
        assert self.hosts is not None
        remote = self._host(host)
        port = int(self.hosts.request(host, "ports", address=LOOPBACK, count=1)["ports"][0])
        argv = [remote.spec.toxiproxy, "-host", LOOPBACK, "-port", str(port)]
        log = str(PurePosixPath(self.run_dir(host)) / "toxiproxy.log")
        local_log = self._workdir / "hosts" / f"{host}.toxiproxy.log"
        proc = self.hosts.process(
            host, "toxiproxy", argv, local_log, log, env={"LOG_LEVEL": "info"}
        )
        proc.start()
        self._toxiproxies[host] = proc
        local = self.hosts.run(remote.forward(port))
        url = f"http://127.0.0.1:{local}"
        server = _HostProxies(url, proc.alive)
        for _ in range(200):
            if not proc.alive():
                tail = " ".join(proc.log_tail(3))
                raise RemoteError(f"{remote.spec}: Toxiproxy ({argv[0]}) exited: {tail}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{url}/version", timeout=1.0).status_code == 200:
                    return server
            time.sleep(0.05)
        raise ToxiproxyError(f"{remote.spec}: Toxiproxy's API did not answer within 10s")

    def share(self, files: Iterable[Path]) -> None:
        """Upload what ``prepare`` wrote to every host, paths rewritten for that host."""
        assert self.hosts is not None
        chosen = sorted(files)

        async def one(host: RemoteHost) -> None:
            name = host.spec.name
            out: dict[str, tuple[bytes, int]] = {}
            for path in chosen:
                data = path.read_bytes()
                with contextlib.suppress(UnicodeDecodeError):
                    data = self.translate(name, data.decode("utf-8")).encode("utf-8")
                out[self.translate(name, str(path))] = (data, path.stat().st_mode & 0o777)
            await host.write_files(out)

        self.hosts.each(one)

    def start(
        self, node: str, cmd: NodeCommand, env: Mapping[str, str], log_path: Path, group: int | None
    ) -> RemoteProcess:
        assert self.hosts is not None
        if group is not None:
            raise PlacementError("placement ssh: per-source routing (shared peer addressing)")
        host = self.host_of[node]
        spec = self._host(host).spec
        argv = [self.translate(host, str(a)) for a in cmd.argv]
        if argv and argv[0] == sys.executable:
            argv[0] = spec.python  # this machine's Python is the host's
        renv = {k: self.translate(host, v) for k, v in env.items()}
        if spec.install == "code":
            renv["PYTHONPATH"] = self._host(host).code_dir
        cwd = None if cmd.cwd is None else self.translate(host, str(cmd.cwd))
        remote_log = self.translate(host, str(log_path))
        if node in self.procs:
            raise PlacementError(f"{node} is already started")
        proc = self.hosts.process(
            host, node, argv, log_path, remote_log, env=renv, cwd=cwd, on_event=self._on_event
        )
        self.procs.add(proc)
        proc.start()
        return proc

    def clock(self, node: str, path: Path) -> FakeClock:
        """A clock whose timestamp file is written on ``node``'s host, by its agent."""
        assert self.hosts is not None
        hosts, host = self.hosts, self.host_of[node]
        if host not in self._libfaketime:
            try:
                found = hosts.request(host, "libfaketime")["path"]
            except RemoteError as exc:
                raise ClockFaultError(str(exc)) from None
            self._libfaketime[host] = str(found)

        def write(where: Path, text: str) -> None:
            hosts.request(host, "write_file", path=str(where), text=text)

        remote = Path(self.translate(host, str(path)))
        return FakeClock(remote, write=write, library=self._libfaketime[host])

    def disk(
        self,
        node: str,
        backing: Path,
        mountpoint: Path,
        state_dir: Path,
        *,
        mmap_paths: tuple[str, ...],
        allow_other: bool,
    ) -> RemoteDisk:
        """The file system is mounted by the host's agent, so in the mount namespace the
        node runs in (on the test bed each sshd has its own: a mount made from the control
        node would not be seen by the node)."""
        assert self.hosts is not None
        host = self.host_of[node]
        paths = [self.translate(host, str(p)) for p in (backing, mountpoint, state_dir)]
        return RemoteDisk(self.hosts, host, node, *paths, mmap_paths=mmap_paths).start()

    def collect(self) -> None:
        """Each node's directory back into ``nodes/<id>/``; role records onto our clock."""
        if self.hosts is None:
            return
        for node, host in self.host_of.items():
            if node not in self.procs:
                continue
            local = self._workdir / "nodes" / node
            try:
                self.hosts.run(self._host(host).download(self.translate(host, str(local)), local))
            except RemoteError as exc:
                self.collect_errors.append(str(exc))
                continue
            remote = self._host(host)
            shift_roles(local / "roles.jsonl", remote.offset_ns)
        for host, proc in self._toxiproxies.items():
            with contextlib.suppress(RemoteError, OSError):
                self.hosts.run(self._host(host).fetch_file(proc.remote_log, proc.log_path))
        (self._workdir / "hosts.json").write_text(
            json.dumps(self.describe(), indent=2) + "\n", encoding="utf-8"
        )

    def close(self) -> None:
        hosts, self.hosts = self.hosts, None
        if hosts is not None:
            hosts.close()

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"placement": "ssh", "nodes": dict(self.host_of), "hosts": {}}
        for spec in self.specs:
            entry: dict[str, Any] = {"address": spec.address, "dir": self.run_dir(spec.name)}
            if self.hosts is not None:
                remote = self.hosts.hosts[spec.name]
                entry["clock_offset_ns"] = remote.offset_ns
                entry["clock_offset_error_ns"] = remote.offset_error_ns
            out["hosts"][spec.name] = entry
        if self.collect_errors:
            out["collect_errors"] = self.collect_errors
        return out


def shift_roles(path: Path, offset_ns: int) -> None:
    """Move a node's role record (its own ``CLOCK_MONOTONIC``) onto the control node's clock."""
    if offset_ns == 0 or not path.is_file():
        return
    lines = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(raw)
            entry["time"] = int(entry["time"]) - offset_ns
            lines.append(json.dumps(entry, separators=(",", ":")))
        except (ValueError, KeyError, TypeError):
            lines.append(raw)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
