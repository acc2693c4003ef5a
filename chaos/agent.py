"""The host agent: ``python -m chaos.agent``, run over SSH on each host of a remote placement.

Theory of operation
-------------------
The control node (:mod:`chaos.remote`) starts one agent per host as an SSH session and speaks
to it in JSON lines on the session's stdin and stdout: one request per line
(``{"id": 7, "op": "kill", "name": "n1"}``), one reply per request (``{"id": 7, "ok": true,
"pid": 4242, "code": -9}``, or ``"ok": false`` with ``"error"``), in order. The agent starts
every process of its host (nodes, the host's Toxiproxy server) as a
:class:`~chaos.process.ManagedProcess` of its own, so a process fault is the same code on
every host as on one machine: signals go to the PID the agent started and its descendants,
never to anything else.

Besides the replies the agent sends one unasked line per process that ends
(``{"event": "exit", "name": ..., "pid": ..., "code": ..., "by_us": false}``), so the control
node knows a node crashed or failed to start without asking.

The agent lives exactly as long as its session: at EOF on stdin (the control node closed the
session, or the SSH connection broke) it stops every process it started (SIGCONT, SIGTERM,
SIGKILL) and exits; if the agent itself is killed, the kernel kills its children
(``PR_SET_PDEATHSIG``, :func:`chaos.process.spawn`). Nothing started through it outlives the
run.

The agent keeps no clock of its own for the run: every time in a history or ``faults.jsonl``
is taken on the control node. ``time`` answers the host's ``CLOCK_MONOTONIC`` only so the
control node can map what the nodes record (role changes) onto its own clock.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from chaos.clock import libfaketime, write_atomically
from chaos.diskfs import DiskFSError, DiskMount
from chaos.process import ManagedProcess, ProcessManager

Handler = Callable[[dict[str, Any]], dict[str, Any]]
WATCH_INTERVAL_S = 0.02


class Agent:
    """One host's processes, driven by requests (module docstring)."""

    def __init__(self, out: IO[str]) -> None:
        self._out = out
        self._lock = threading.Lock()
        self.procs = ProcessManager()
        self._reported: set[tuple[str, int]] = set()
        #: each node's fault-injecting file system, mounted in this agent's mount namespace
        #: (the one its nodes run in)
        self.disks: dict[str, DiskMount] = {}
        self._stop = threading.Event()
        self._handlers: dict[str, Handler] = {
            "hello": self._hello,
            "time": lambda _: {"monotonic_ns": time.monotonic_ns()},
            "ports": self._ports,
            "mkdir": self._mkdir,
            "start": self._start,
            "kill": lambda r: self._signal(r, "kill"),
            "pause": lambda r: self._signal(r, "pause"),
            "resume": lambda r: self._signal(r, "resume"),
            "restart": self._restart,
            "stop": self._stop_one,
            "stop_all": self._stop_all,
            "tail": self._tail,
            "describe": lambda r: {"text": self._proc(r).describe()},
            "dump_stacks": lambda r: {"sent": self._proc(r).dump_stacks()},
            "write_file": self._write_file,
            "disk_start": self._disk_start,
            "disk_call": self._disk_call,
            "disk_stop": self._disk_stop,
            "libfaketime": lambda _: {"path": str(libfaketime())},
        }

    # ---- the loop ---------------------------------------------------------------------------
    def serve(self, lines: IO[str]) -> None:
        """Answer requests until EOF, then stop every process."""
        watcher = threading.Thread(target=self._watch, name="orbital-agent-watch", daemon=True)
        watcher.start()
        self.send({"event": "ready", "pid": os.getpid()})
        try:
            for line in lines:
                if line.strip():
                    self.send(self.answer(line))
        finally:
            self._stop.set()
            self.procs.stop_all(timeout=2.0)
            for disk in self.disks.values():  # after the nodes: a busy mount unmounts lazily
                disk.settle()
            self.disks.clear()

    def answer(self, line: str) -> dict[str, Any]:
        """The reply to one request line."""
        try:
            request = json.loads(line)
            ident = request.get("id")
            handler = self._handlers.get(str(request.get("op")))
        except (ValueError, AttributeError) as exc:
            return {"id": None, "ok": False, "error": f"bad request: {exc}"}
        if handler is None:
            return {"id": ident, "ok": False, "error": f"unknown op {request.get('op')!r}"}
        try:
            return {"id": ident, "ok": True, **handler(request)}
        except Exception as exc:  # the control node gets the reason; the agent goes on
            return {"id": ident, "ok": False, "error": f"{type(exc).__name__}: {exc}"}

    def send(self, message: dict[str, Any]) -> None:
        with self._lock:
            self._out.write(json.dumps(message, separators=(",", ":")) + "\n")
            self._out.flush()

    def _watch(self) -> None:
        """Report every process that ends (once per PID)."""
        while not self._stop.wait(WATCH_INTERVAL_S):
            for proc in self.procs.processes():
                pid = proc.pid
                if pid is None or (proc.name, pid) in self._reported or proc.alive():
                    continue
                self._reported.add((proc.name, pid))
                event = {"event": "exit", "name": proc.name, "pid": pid, "code": proc.returncode}
                self.send({**event, "by_us": not proc.exited_on_its_own})

    # ---- requests ---------------------------------------------------------------------------
    def _proc(self, request: dict[str, Any]) -> ManagedProcess:
        name = str(request["name"])
        if name not in self.procs:
            raise KeyError(f"no process named {name!r} on this host")
        return self.procs[name]

    def _hello(self, _: dict[str, Any]) -> dict[str, Any]:
        import chaos

        return {
            "pid": os.getpid(),
            "python": sys.executable,
            "chaos": str(Path(chaos.__file__).parent),
            "monotonic_ns": time.monotonic_ns(),
        }

    def _ports(self, request: dict[str, Any]) -> dict[str, Any]:
        return {"ports": [free_port(str(request["address"])) for _ in range(int(request["count"]))]}

    def _mkdir(self, request: dict[str, Any]) -> dict[str, Any]:
        for path in request["paths"]:
            Path(path).mkdir(parents=True, exist_ok=True)
        return {}

    def _write_file(self, request: dict[str, Any]) -> dict[str, Any]:
        """Replace a file atomically (a clock's timestamp file: libfaketime re-reads it)."""
        path = Path(request["path"])
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, str(request["text"]))
        return {}

    def _disk_start(self, request: dict[str, Any]) -> dict[str, Any]:
        name = str(request["name"])
        if name in self.disks:
            raise ValueError(f"{name} already has a disk")
        disk = DiskMount(
            Path(request["backing"]),
            Path(request["mountpoint"]),
            Path(request["state_dir"]),
            mmap_paths=tuple(request.get("mmap", ())),
            allow_other=bool(request.get("allow_other", False)),
        )
        self.disks[name] = disk.start()
        return {"pid": disk.pid}

    def _disk_call(self, request: dict[str, Any]) -> dict[str, Any]:
        disk = self.disks[str(request["name"])]
        try:
            return {"result": disk.call(str(request["cmd"]), **request.get("args", {}))}
        except DiskFSError as exc:  # the fault's own refusal, for the caller to handle
            return {"disk_error": str(exc)}

    def _disk_stop(self, request: dict[str, Any]) -> dict[str, Any]:
        disk = self.disks.pop(str(request["name"]), None)
        if disk is not None:
            disk.settle()
        return {}

    def _start(self, request: dict[str, Any]) -> dict[str, Any]:
        env = {**os.environ, **request.get("env", {})}
        cwd = request.get("cwd")
        proc = self.procs.start(
            str(request["name"]),
            [str(a) for a in request["argv"]],
            Path(request["log"]),
            env=env,
            cwd=Path(cwd) if cwd else None,
        )
        return {"pid": proc.pid}

    def _signal(self, request: dict[str, Any], action: str) -> dict[str, Any]:
        proc = self._proc(request)
        pid = proc.pid
        getattr(proc, action)()
        return {"pid": pid, "code": proc.returncode}

    def _restart(self, request: dict[str, Any]) -> dict[str, Any]:
        proc = self._proc(request)
        previous, was_running = proc.pid, proc.alive()
        pid = proc.restart(request.get("env") or None)
        died = [list(d) for d in proc.deaths()]  # crashes the watcher may not have reported
        return {"pid": pid, "previous_pid": previous, "killed": was_running, "died": died}

    def _stop_one(self, request: dict[str, Any]) -> dict[str, Any]:
        proc = self._proc(request)
        return {"pid": proc.pid, "code": proc.stop(float(request.get("timeout", 5.0)))}

    def _stop_all(self, request: dict[str, Any]) -> dict[str, Any]:
        self.procs.stop_all(float(request.get("timeout", 5.0)))
        return {}

    def _tail(self, request: dict[str, Any]) -> dict[str, Any]:
        return {"lines": self._proc(request).log_tail(int(request.get("lines", 10)))}


_handed_out: set[int] = set()
_rng = random.Random()


def free_port(address: str) -> int:
    """A TCP port free on ``address`` now, outside the kernel's ephemeral range (the reason is
    :func:`chaos.toxiproxy.free_port`'s)."""
    from chaos.toxiproxy import ephemeral_port_range

    low, high = ephemeral_port_range()
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    for _ in range(200):
        port = _rng.randint(10000, low - 1) if low > 11000 else _rng.randint(high + 1, 65535)
        if port in _handed_out:
            continue
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((address, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise OSError(f"no free port on {address}")


def main() -> int:
    # the control node's Ctrl-C is not ours; SIGTERM/SIGHUP end the loop and its cleanup
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda s, f: sys.exit(128 + s))
    Agent(sys.stdout).serve(sys.stdin)
    return 0


if __name__ == "__main__":
    sys.exit(main())
