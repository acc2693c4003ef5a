"""The cost of remote control: kill and cut, on this machine and over SSH.

Prints one JSON object. Two measurements, each ``--faults`` times (default 50) per placement:

* ``kill``: a ``sleep`` process is started through the placement, then killed through it:
  the time from the call (``ManagedProcess.kill`` locally, ``RemoteProcess.kill`` over SSH:
  one request to the host's agent) until the process is gone, seen in ``/proc`` by this
  process (the test bed's hosts share the machine's PID space), polled every 50 µs.
* ``cut``: a TCP stream through one Toxiproxy proxy, 8-byte messages every 0.5 ms from a
  sender thread to a receiver thread of this process. The time from the call of
  ``ProxyNetwork.cut`` until the last message arrives (nothing sent after it arrives:
  checked for 300 ms). Locally the proxy is on a Toxiproxy server on 127.0.0.1; over SSH on
  a host's server (started by its agent, its API through an SSH port forward), listening on
  the host's address, its upstream the receiver on the control node's address: the bytes
  cross from the control node to the host and back, and the cut is two REST calls through
  the forward. Resolution: the 0.5 ms sending interval.

Median and p99 (nearest rank) of each, in milliseconds. Usage, with the test bed up::

    scripts/testbed.sh up 1
    scripts/testbed.sh exec .venv/bin/python -m bench.remote \\
        --inventory /tmp/orbital-testbed/inventory.toml
    scripts/testbed.sh down

Without ``--inventory`` only the local half runs. Every process and proxy it starts is
stopped before it exits.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import statistics
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from chaos.process import ProcessManager
from chaos.toxiproxy import LOOPBACK, ProxyNetwork, ToxiproxyServer
from harness.inventory import load_inventory
from harness.placement import SshPlacement

SEND_EVERY_S = 0.0005
QUIET_S = 0.3


def summary(samples_s: list[float]) -> dict[str, Any]:
    ms = sorted(s * 1000 for s in samples_s)
    p99 = ms[max(0, math.ceil(0.99 * len(ms)) - 1)]
    return {
        "n": len(ms),
        "median_ms": round(statistics.median(ms), 3),
        "p99_ms": round(p99, 3),
        "max_ms": round(ms[-1], 3),
    }


def gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


def time_kill(start: Callable[[], Any], count: int) -> list[float]:
    out = []
    for _ in range(count):
        proc = start()
        pid = int(proc.pid)
        t0 = time.perf_counter()
        proc.kill()
        while not gone(pid):
            time.sleep(0.00005)
        out.append(time.perf_counter() - t0)
    return out


class Stream:
    """A receiver listening on ``address`` and a sender through ``dial``: 8-byte stamps."""

    def __init__(self, bind: str) -> None:
        self.listener = socket.create_server((bind, 0))
        self.address = f"{bind}:{self.listener.getsockname()[1]}"
        self.last_arrival = 0.0
        self.arrived = 0
        self._stop = threading.Event()

    def run(self, dial: str) -> tuple[threading.Thread, threading.Thread, socket.socket]:
        self._stop.clear()
        host, _, port = dial.rpartition(":")
        out = socket.create_connection((host, int(port)), timeout=5)
        out.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn, _ = self.listener.accept()

        def send() -> None:
            seq = 0
            while not self._stop.is_set():
                try:
                    out.sendall(struct.pack("!Q", seq))
                except OSError:
                    return
                seq += 1
                time.sleep(SEND_EVERY_S)

        def receive() -> None:
            conn.settimeout(0.05)
            while not self._stop.is_set():
                try:
                    data = conn.recv(4096)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not data:
                    return
                self.arrived += len(data)
                self.last_arrival = time.perf_counter()
            conn.close()

        threads = (threading.Thread(target=send), threading.Thread(target=receive))
        for t in threads:
            t.start()
        return threads[0], threads[1], out

    def stop(self, threads: tuple[threading.Thread, threading.Thread, socket.socket]) -> None:
        self._stop.set()
        for t in threads[:2]:
            assert isinstance(t, threading.Thread)
            t.join(2)
        threads[2].close()


def time_cut(net: ProxyNetwork, stream: Stream, count: int) -> list[float]:
    out = []
    for _ in range(count):
        running = stream.run(net.address("a", "b"))
        start = stream.arrived
        deadline = time.monotonic() + 5
        while stream.arrived < start + 800 and time.monotonic() < deadline:  # 100 messages
            time.sleep(0.005)
        if stream.arrived < start + 800:
            raise RuntimeError("no traffic through the proxy before the cut")
        t0 = time.perf_counter()
        net.cut("a", "b")
        time.sleep(QUIET_S)
        out.append(max(0.0, stream.last_arrival - t0))
        net.heal()  # closes the blackholed connection
        stream.stop(running)
    return out


def local(count: int, work: Path) -> dict[str, Any]:
    procs = ProcessManager()
    n = iter(range(10**6))
    try:
        kills = time_kill(
            lambda: procs.start(f"s{next(n)}", ["sleep", "3600"], work / "sleep.log"), count
        )
    finally:
        procs.stop_all()
    stream = Stream(LOOPBACK)
    with ToxiproxyServer() as server:
        net = ProxyNetwork.create(server, {"a": stream.address, "b": stream.address})
        try:
            cuts = time_cut(net, stream, count)
        finally:
            net.close()
    return {"kill": summary(kills), "cut": summary(cuts)}


def remote(count: int, inventory: Path, work: Path, bind: str) -> dict[str, Any]:
    spec = load_inventory(inventory)[0]
    placement = SshPlacement([spec])
    placement.open(work, ["x"])
    try:
        assert placement.hosts is not None
        hosts = placement.hosts
        n = iter(range(10**6))

        def start() -> Any:
            name = f"s{next(n)}"
            remote_log = str(Path(placement.run_dir(spec.name)) / f"{name}.log")
            proc = hosts.process(spec.name, name, ["sleep", "3600"], work / "x.log", remote_log)
            proc.start()
            return proc

        kills = time_kill(start, count)
        server = placement.start_toxiproxy(spec.name)
        stream = Stream(bind)
        place = lambda link: (server, spec.address)  # noqa: E731
        nodes = {"a": stream.address, "b": stream.address}
        net = ProxyNetwork.create(server, nodes, place=place)
        try:
            cuts = time_cut(net, stream, count)
        finally:
            net.close()
        return {"host": spec.name, "address": spec.address, "kill": summary(kills),
                "cut": summary(cuts)}  # fmt: skip
    finally:
        placement.close()


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench.remote", description=__doc__.split("\n")[0])
    parser.add_argument("--faults", type=int, default=50, help="kills and cuts per placement")
    parser.add_argument("--inventory", type=Path, help="hosts for the SSH half (its first one)")
    parser.add_argument(
        "--bind", default="10.77.0.1", help="the control node's address the host reaches"
    )
    args = parser.parse_args()
    out: dict[str, Any] = {"faults": args.faults, "load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="orbital-bench-remote-") as tmp:
        out["local"] = local(args.faults, Path(tmp))
        if args.inventory is not None:
            out["ssh"] = remote(args.faults, args.inventory, Path(tmp), args.bind)
    out["load_after"] = os.getloadavg()
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
