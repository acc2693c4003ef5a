"""Node processes: start, SIGKILL, SIGSTOP/SIGCONT, restart, and a cleanup that leaves no orphan.

A `ManagedProcess` is one command (a node) started by us in its own session and process group,
stdout and stderr appended to a log file (with a marker line before every start, so restarts
are visible in the log). Signals go to the PID we started and to its descendants as psutil
sees them at that moment; nothing else is ever signalled. The `subprocess.Popen` is kept until
the process is reaped, so its PID cannot be reused while we may still signal it.

`ProcessManager` owns several, records an event per start/kill/pause/resume/restart/stop with
`time.monotonic_ns()` (the clock of history.jsonl), and `stop_all()` stops everything: SIGCONT
(a stopped process cannot handle SIGTERM), SIGTERM, wait, SIGKILL.

Orphans: children run in their own process group, so a Ctrl-C at the terminal reaches only us;
`KeyboardInterrupt` unwinds the `with` blocks, and every live manager is also stopped at
interpreter exit (atexit). SIGTERM/SIGHUP skip atexit by default: the `orbital` command turns
them into a `KeyboardInterrupt` (`harness.signals`), and `install_signal_cleanup()` into
`SystemExit`, so the same cleanup runs.

A SIGKILL of the harness runs no cleanup at all, so every child we start (`spawn`: nodes and
the Toxiproxy server) is also told by the kernel to die with us: `prctl(PR_SET_PDEATHSIG,
SIGKILL)`, set in the child between fork and exec (`preexec_fn`; the setting survives exec).
The kernel sends that signal when the *thread* that forked the child exits, not the process,
and chaos runs start processes from worker threads (`asyncio.to_thread`) that come and go. So
every fork happens on one daemon thread of ours (`_Spawner`) that lives until the process
exits. SIGKILL, not SIGTERM: a node we paused (SIGSTOP) cannot act on SIGTERM. The child
checks `getppid()` after the prctl, in case we died before it took effect.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import ctypes
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Self

import psutil

EventSink = Callable[["ProcessEvent"], None]

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_prctl: Any = None
if sys.platform == "linux":  # resolved once here: the child between fork and exec only calls it
    _prctl = ctypes.CDLL(None, use_errno=True).prctl


def _die_with(parent: int) -> Callable[[], None]:
    """The ``preexec_fn`` of a child that must not outlive ``parent`` (module docstring)."""

    def preexec() -> None:
        if _prctl is not None:
            _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the prctl took effect
            os._exit(137)

    return preexec


class _Spawner:
    """Forks every child on one daemon thread that lives as long as the process."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[
            tuple[Callable[[], subprocess.Popen[bytes]], concurrent.futures.Future[Any]]
        ] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        def start() -> subprocess.Popen[bytes]:
            return subprocess.Popen(argv, preexec_fn=_die_with(os.getpid()), **kwargs)

        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._serve, name="orbital-spawner", daemon=True
                )
                self._thread.start()
        fut: concurrent.futures.Future[subprocess.Popen[bytes]] = concurrent.futures.Future()
        self._jobs.put((start, fut))
        return fut.result()

    def _serve(self) -> None:
        while True:
            start, fut = self._jobs.get()
            try:
                fut.set_result(start())
            except BaseException as exc:
                fut.set_exception(exc)


_spawner = _Spawner()


def spawn(argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """``subprocess.Popen(argv, **kwargs)`` for a child that dies with this process, even by
    SIGKILL (module docstring)."""
    return _spawner.popen(argv, **kwargs)


@dataclass(frozen=True, slots=True)
class ProcessEvent:
    """Something we did to a process: action is start/kill/pause/resume/restart/stop."""

    name: str
    action: str
    pid: int
    time_ns: int
    detail: dict[str, Any] = field(default_factory=dict)

    def as_detail(self) -> dict[str, Any]:
        """The event as a faults.jsonl `detail` object."""
        return {"node": self.name, "action": self.action, "pid": self.pid, **self.detail}


class ProcessError(RuntimeError):
    """A process was used in a state that does not allow the operation."""


class ManagedProcess:
    """One command we start, signal and stop; only ever its own PID and descendants."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        group: int | None = None,
        on_event: EventSink | None = None,
    ) -> None:
        self.name = name
        #: run under this group id (and no supplementary groups): ``chaos.nat`` routes a
        #: process's connections by it
        self.group = group
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(os.environ if env is None else env)
        self.cwd = cwd
        self._on_event = on_event
        self._popen: subprocess.Popen[bytes] | None = None
        self._paused = False
        self._ended_by_us = False  # we sent the current incarnation SIGKILL or SIGTERM
        #: (pid, exit code) of every earlier incarnation that ended on its own
        self._died: list[tuple[int, int | None]] = []
        self._stopping: list[psutil.Process] = []  # the tree we sent SIGTERM to

    @property
    def pid(self) -> int | None:
        """The PID of the current (or last, until restarted) incarnation."""
        return None if self._popen is None else self._popen.pid

    @property
    def returncode(self) -> int | None:
        """The exit status once reaped (negative: killed by that signal)."""
        return None if self._popen is None else self._popen.poll()

    @property
    def paused(self) -> bool:
        """Whether we stopped it with SIGSTOP and have not resumed it."""
        return self._paused and self.alive()

    def alive(self) -> bool:
        """Whether it is started and not yet exited (a stopped process is alive)."""
        return self._popen is not None and self._popen.poll() is None

    def status(self) -> str:
        """psutil's status of the process ("running", "sleeping", "stopped", ...)."""
        if not self.alive():
            return "exited"
        assert self.pid is not None
        try:
            return str(psutil.Process(self.pid).status())
        except psutil.NoSuchProcess:
            return "exited"

    def describe(self) -> str:
        """A short account of the process for a report: its state, CPU seconds used, or how
        it exited (the exit code, or the signal that killed it)."""
        code = self.returncode if self._popen is not None else None
        if self._popen is None:
            return "not started"
        if code is not None:
            return f"exited with code {code}" if code >= 0 else f"killed by signal {-code}"
        assert self.pid is not None
        try:
            proc = psutil.Process(self.pid)
            cpu = proc.cpu_times()
            return f"{proc.status()}, {cpu.user + cpu.system:.1f} CPU s used"
        except psutil.NoSuchProcess:
            return "exited"

    def log_tail(self, lines: int) -> list[str]:
        """The last ``lines`` lines of the process's log (empty if it cannot be read)."""
        try:
            return self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return []

    @property
    def exited_on_its_own(self) -> bool:
        """Whether the current incarnation ended without a kill or stop from us: a crash, or
        a start that failed (a port taken, a bad config)."""
        return self._popen is not None and not self.alive() and not self._ended_by_us

    def dump_stacks(self) -> bool:
        """Ask the process (SIGUSR1; ``orbital node`` registers :mod:`faulthandler` for it) to
        print every thread's stack to its log. False if it is not running or is paused."""
        if not self.alive() or self._paused:
            return False
        assert self.pid is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGUSR1)
            return True
        return False

    def start(self) -> int:
        """Start the command; its output is appended to `log_path`. Returns the PID."""
        if self.alive():
            raise ProcessError(f"{self.name} is already running (pid {self.pid})")
        self._spawn()
        assert self.pid is not None
        self._emit("start", argv=self.argv)
        return self.pid

    def deaths(self) -> list[tuple[int, int | None]]:
        """(pid, exit code) of every incarnation that ended on its own (a crash, a failed
        start), the current one included: what no kill or stop of ours explains."""
        out = list(self._died)
        if self.exited_on_its_own:
            assert self._popen is not None
            out.append((self._popen.pid, self._popen.poll()))
        return out

    def _spawn(self) -> None:
        if self._popen is not None and self.exited_on_its_own:
            self._died.append((self._popen.pid, self._popen.poll()))
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(
                f"# orbital: start {self.name} at monotonic_ns={time.monotonic_ns()}\n".encode()
            )
            log.flush()
            self._ended_by_us = False
            # the group is set before the preexec_fn (its PR_SET_PDEATHSIG survives it)
            ids: dict[str, Any] = {}
            if self.group is not None:
                ids = {"group": self.group, "extra_groups": []}
            self._popen = spawn(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=self.env, cwd=self.cwd, start_new_session=True, **ids,
            )  # fmt: skip
        self._paused = False

    def kill(self) -> None:
        """SIGKILL the process and its descendants (a crash); it is reaped before returning.

        The ``kill`` event is stamped once the process is gone, so every line it wrote (a
        node's role record, timed by the same clock) is before the stamp."""
        self._require_alive("kill")
        self._ended_by_us = True
        self._signal_tree(signal.SIGKILL)
        self.wait_exit(10.0)
        self._paused = False
        self._emit("kill")

    def pause(self) -> None:
        """SIGSTOP the process and its descendants."""
        self._require_alive("pause")
        self._emit("pause")
        self._signal_tree(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """SIGCONT the process and its descendants."""
        self._require_alive("resume")
        self._emit("resume")
        self._signal_tree(signal.SIGCONT)
        self._paused = False

    def restart(self, env: Mapping[str, str] | None = None) -> int:
        """Start again with the same argv (same data dir); SIGKILL first if still running.

        `env`, if given, is laid over the environment (e.g. a clock skew for this incarnation).
        """
        old, was_running = self.pid, self.alive()
        if was_running:
            self._ended_by_us = True
            self._signal_tree(signal.SIGKILL)
            self.wait_exit(10.0)
        if env:
            self.env.update(env)
        self._spawn()
        assert self.pid is not None
        self._emit("restart", previous_pid=old, killed=was_running)
        return self.pid

    def wait_exit(self, timeout: float) -> int:
        """Wait for the process to exit and reap it; its return code.

        Raises `subprocess.TimeoutExpired` if it is still running after `timeout` seconds.
        """
        if self._popen is None:
            raise ProcessError(f"{self.name} was never started")
        return self._popen.wait(timeout)

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGCONT (a stopped process cannot act on SIGTERM), SIGTERM, wait, SIGKILL.

        Returns the exit status (None if never started).
        """
        if self.alive():
            self._terminate()
        return self._reap(time.monotonic() + timeout)

    def _terminate(self) -> None:
        self._emit("stop")
        self._ended_by_us = True
        self._signal_tree(signal.SIGCONT)
        self._stopping = self._signal_tree(signal.SIGTERM)

    def _reap(self, deadline: float) -> int | None:
        """Wait until `deadline` for the exit, then SIGKILL; the exit status."""
        if self._popen is None:
            return None
        try:
            code = self._popen.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self._signal_tree(signal.SIGKILL)
            code = self._popen.wait(10.0)
        self._paused = False
        self._reap_descendants(deadline)
        return code

    def _reap_descendants(self, deadline: float) -> None:
        """SIGKILL the descendants we sent SIGTERM to that outlived the deadline.

        Once our child has exited, its children are re-parented and no longer found by
        `children()`; the psutil handles kept from SIGTERM time still name exactly them
        (psutil checks the creation time, so a reused PID is never signalled).
        """
        rest = [proc for proc in self._stopping if proc.pid != self.pid]
        self._stopping = []
        _, alive = psutil.wait_procs(rest, timeout=max(0.0, deadline - time.monotonic()))
        for proc in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        psutil.wait_procs(alive, timeout=10.0)

    def _signal_tree(self, sig: signal.Signals) -> list[psutil.Process]:
        """Signal our PID and its current descendants, never any other process; return them."""
        assert self._popen is not None
        try:
            root = psutil.Process(self._popen.pid)
            family = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []
        for proc in family:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.send_signal(sig)
        return family

    def _require_alive(self, action: str) -> None:
        if not self.alive():
            raise ProcessError(f"cannot {action} {self.name}: it is not running")

    def _emit(self, action: str, **detail: Any) -> None:
        if self._on_event is None:
            return
        assert self.pid is not None
        self._on_event(ProcessEvent(self.name, action, self.pid, time.monotonic_ns(), detail))


_live_managers: weakref.WeakSet[ProcessManager] = weakref.WeakSet()


class ProcessManager:
    """The processes of one run, by name; stops them all on exit, even at interpreter exit."""

    def __init__(self, on_event: EventSink | None = None) -> None:
        self.events: list[ProcessEvent] = []
        self._on_event = on_event
        self._procs: dict[str, ManagedProcess] = {}
        _live_managers.add(self)

    def start(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        group: int | None = None,
    ) -> ManagedProcess:
        """Start a new named process (see `ManagedProcess`)."""
        if name in self._procs:
            raise ProcessError(f"a process named {name!r} already exists; restart it instead")
        proc = ManagedProcess(
            name, argv, log_path, env=env, cwd=cwd, group=group, on_event=self._record
        )
        self._procs[name] = proc
        proc.start()
        return proc

    def __getitem__(self, name: str) -> ManagedProcess:
        return self._procs[name]

    def __contains__(self, name: object) -> bool:
        return name in self._procs

    def processes(self) -> list[ManagedProcess]:
        """All processes, started or exited, in start order."""
        return list(self._procs.values())

    def stop_all(self, timeout: float = 5.0) -> None:
        """Stop every live process: SIGCONT, SIGTERM, then SIGKILL after `timeout`."""
        live = [proc for proc in self._procs.values() if proc.alive()]
        for proc in live:  # signal all first, so they share one timeout
            proc._terminate()
        deadline = time.monotonic() + timeout
        for proc in live:
            proc._reap(deadline)

    def _record(self, event: ProcessEvent) -> None:
        self.events.append(event)
        if self._on_event is not None:
            self._on_event(event)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()


@atexit.register
def _stop_live_managers() -> None:
    for manager in list(_live_managers):
        manager.stop_all(timeout=2.0)


def install_signal_cleanup() -> None:
    """Make SIGTERM and SIGHUP raise SystemExit (main thread only), so cleanup runs.

    Leaves alone any handler someone else installed; call it once from a command's main().
    """
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is signal.SIG_DFL:
            signal.signal(sig, _exit_on_signal)


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)
