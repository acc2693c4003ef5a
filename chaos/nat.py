"""Per-source routing: each node's connections to a peer go through that link's own proxy.

Theory of operation
-------------------
Orbital's cluster file gives every node its own address for each peer, so node ``i`` dials the
proxy of link ``i -> j`` by configuration. Other systems (etcd) advertise *one* peer address
per node: every member dials ``j`` at the same address (etcd even derives member ids from
it), so no configuration can give each dialer its own proxy. The kernel can: each node
process runs under its own group id (:attr:`chaos.process.ManagedProcess.group`), and one NAT
rule per directed link sends the connections that ``i``'s process opens to ``j``'s advertised
address to the proxy of ``i -> j``::

    meta skgid <gid of i> ip daddr 127.0.0.1 tcp dport <j's port> dnat ip to <proxy i->j>

The proxy itself (Toxiproxy, group 0) dials ``j``'s real address and matches no rule. This is
what Jepsen does with one host per node and iptables rules by source address, on one machine.

The rules live in one nftables table per :class:`SourceRouting` (``orbital_<pid>_<n>``, chain
``output`` at the NAT hook of locally generated packets), created by :meth:`start` and
deleted by :meth:`close`; a table left behind by a process that died (SIGKILL) is deleted by
the next :meth:`start` on the machine. It needs root and Debian's ``nftables``
(``scripts/setup.sh`` installs it); :func:`unavailable` says why it cannot be used.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Final, Self

import psutil

#: group ids of node processes start here (an unused range: no name needs to exist for them)
GID_BASE: Final = 0x6F720000
_TABLE_PREFIX: Final = "orbital_"
_TABLE_RE: Final = re.compile(r"^table ip (orbital_(\d+)_\d+)$")
_counter = itertools.count()


class NatError(RuntimeError):
    """The routing rules could not be installed or removed."""


@dataclass(frozen=True, slots=True)
class Route:
    """Connections of processes in ``gid`` to ``dst`` (host:port) go to ``to`` instead."""

    gid: int
    dst: str
    to: str

    def rule(self) -> str:
        host, port = _split(self.dst)
        return f"meta skgid {self.gid} ip daddr {host} tcp dport {port} dnat ip to {self.to}"


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise NatError(f"not a host:port address: {address!r}")
    return host, int(port)


def unavailable() -> str | None:
    """Why per-source routing cannot be used here, or None if it can."""
    if os.geteuid() != 0:
        return "per-source routing needs root (nftables NAT rules)"
    if shutil.which("nft") is None:
        return "per-source routing needs Debian's nftables (the nft command): run scripts/setup.sh"
    return None


def _nft(script: str) -> None:
    done = subprocess.run(
        ["nft", "-f", "-"], input=script.encode(), capture_output=True, timeout=10, check=False
    )
    if done.returncode != 0:
        raise NatError(f"nft failed: {done.stderr.decode(errors='replace').strip()}")


def remove_stale_tables() -> list[str]:
    """Delete the tables of processes that no longer exist; their names."""
    listed = subprocess.run(
        ["nft", "list", "tables"], capture_output=True, text=True, timeout=10, check=False
    )
    stale = []
    for line in listed.stdout.splitlines():
        m = _TABLE_RE.match(line.strip())
        if m and not psutil.pid_exists(int(m.group(2))):
            stale.append(m.group(1))
    for table in stale:
        subprocess.run(["nft", "delete", "table", "ip", table], capture_output=True, check=False)
    return stale


class SourceRouting:
    """One nftables table of :class:`Route` rules (module docstring)."""

    def __init__(self) -> None:
        self.table = f"{_TABLE_PREFIX}{os.getpid()}_{next(_counter)}"
        self.routes: list[Route] = []
        self._created = False

    def start(self, routes: Iterable[Route] = ()) -> Self:
        reason = unavailable()
        if reason is not None:
            raise NatError(reason)
        remove_stale_tables()
        _nft(
            f"table ip {self.table} {{\n"
            "  chain output { type nat hook output priority -100; policy accept; }\n"
            "}\n"
        )
        self._created = True
        self.add(routes)
        return self

    def add(self, routes: Iterable[Route]) -> None:
        """Install more routes (a node that joins later)."""
        new = [r for r in routes if r not in self.routes]
        if not new:
            return
        _nft("".join(f"add rule ip {self.table} output {r.rule()}\n" for r in new))
        self.routes += new

    def close(self) -> None:
        """Delete the table (safe to call more than once)."""
        if self._created:
            self._created = False
            subprocess.run(
                ["nft", "delete", "table", "ip", self.table], capture_output=True, check=False
            )

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
