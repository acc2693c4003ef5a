"""Hosts reached over SSH: their agents, files, processes and Toxiproxy servers.

Theory of operation
-------------------
:class:`RemoteHosts` holds one SSH connection per host (asyncssh, key-based authentication,
host keys checked against a ``known_hosts`` file) on an event loop of its own, in a daemon
thread, so the synchronous callers of a cluster (the nemesis's worker threads, the runner)
can use it from any thread: every method blocks until the host has answered.

On each host it starts the agent (:mod:`chaos.agent`) in one SSH session, and every process
of that host (the nodes, the host's Toxiproxy server) is started, signalled and stopped by
that agent on the control node's request. A :class:`RemoteProcess` is the control node's
handle on one of them, with the interface of :class:`chaos.process.ManagedProcess`; its state
(running, paused, how it ended) is kept on the control node from the agent's replies and its
exit reports, so asking whether a node runs costs no round trip.

Times: every event a :class:`RemoteProcess` reports (start, kill, pause, resume, restart,
stop) carries ``time.monotonic_ns()`` of the *control node*, taken before the request is
sent, as a local process's are. A host's own clock is used for nothing in a history or a
fault record; :meth:`RemoteHost.clock_offset` measures how far the host's
``CLOCK_MONOTONIC`` is from ours (the smallest-round-trip sample of several; error at most
half that round trip) so that what nodes record in their own clock can be mapped onto ours.

Every error names the host: ``host h3 (root@10.77.0.13:22): ...``. Closing the hosts (also
after an error) stops every process each agent started, waits for the agent to end, and
closes the connection; an agent whose session breaks stops its processes by itself.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import json
import shlex
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal, TypeVar

import asyncssh

from chaos.process import EventSink, ProcessEvent

_T = TypeVar("_T")
REPO_ROOT = Path(__file__).resolve().parents[1]
#: the packages a host needs to run a node and the agent (``install = "code"``)
CODE_PACKAGES = ("raft", "chaos", "harness")
REQUEST_TIMEOUT_S = 30.0
CLOCK_SAMPLES = 7


class RemoteError(RuntimeError):
    """A host could not be reached, refused us, or failed a request; the message names it."""


@dataclass(frozen=True, slots=True)
class HostSpec:
    """One host of an inventory: where it is, how to log in, where to work."""

    name: str
    address: str
    user: str
    key: Path
    dir: str  #: the host's working directory (runs go to ``dir/runs/<run>``)
    port: int = 22
    known_hosts: Path | None = None  #: None: asyncssh's default (~/.ssh/known_hosts)
    python: str = "python3"
    #: ``code``: upload this checkout's packages to ``dir/code`` and run them with ``python``;
    #: ``none``: ``python`` already has orbital-raft installed
    install: Literal["code", "none"] = "code"
    toxiproxy: str = "toxiproxy-server"  #: the host's Toxiproxy binary
    connect_timeout: float = 5.0

    def __str__(self) -> str:
        return f"host {self.name} ({self.user}@{self.address}:{self.port})"


class _Loop:
    """An event loop in a daemon thread; :meth:`run` blocks the caller until a coroutine ends."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name="orbital-ssh", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, _T], timeout: float | None = None) -> _T:
        if threading.current_thread() is self._thread:
            raise RuntimeError("a blocking remote call from the SSH loop itself")
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10.0)
        if not self._thread.is_alive():
            self.loop.close()


ExitSink = Callable[[dict[str, Any]], None]


@dataclass
class RemoteHost:
    """One host: its SSH connection and agent session (used on the SSH loop only)."""

    spec: HostSpec
    stderr_log: Path | None = None
    conn: asyncssh.SSHClientConnection | None = None
    on_exit: ExitSink | None = None
    #: host CLOCK_MONOTONIC minus ours (ns), and the error bound (half the best round trip)
    offset_ns: int = 0
    offset_error_ns: int = 0
    _agent: asyncssh.SSHClientProcess[str] | None = None
    _pending: dict[int, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    _ids: Iterable[int] = field(default_factory=itertools.count)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _lost: str | None = None
    _forwards: list[asyncssh.SSHListener] = field(default_factory=list)

    @property
    def code_dir(self) -> str:
        return str(PurePosixPath(self.spec.dir) / "code")

    def fail(self, what: str) -> RemoteError:
        return RemoteError(f"{self.spec}: {what}")

    async def connect(self) -> None:
        s = self.spec
        known: Any = str(s.known_hosts) if s.known_hosts is not None else ()
        try:
            self.conn = await asyncssh.connect(
                s.address, s.port, username=s.user, client_keys=[str(s.key)],
                known_hosts=known, connect_timeout=s.connect_timeout,
                agent_path=None, config=None, password=None, kbdint_auth=False,
            )  # fmt: skip
        except asyncssh.PermissionDenied:
            raise self.fail(f"login refused with key {s.key} (wrong key or user)") from None
        except asyncssh.HostKeyNotVerifiable as exc:
            raise self.fail(f"host key not verified against {s.known_hosts}: {exc}") from None
        except (TimeoutError, asyncssh.TimeoutError):
            raise self.fail(f"unreachable: no SSH answer within {s.connect_timeout:g}s") from None
        except (OSError, asyncssh.Error) as exc:
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise self.fail(f"unreachable: {reason}") from None

    async def install(self, root: Path = REPO_ROOT) -> None:
        """Upload this checkout's packages to ``dir/code`` (``install = "code"``)."""
        if self.spec.install != "code":
            return
        files = [
            p
            for pkg in CODE_PACKAGES
            for p in sorted((root / pkg).rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts
        ]
        await self.upload({p: PurePosixPath(self.code_dir) / p.relative_to(root) for p in files})

    async def upload(self, files: Mapping[Path, PurePosixPath | str]) -> None:
        """Copy local files to the host (SFTP), making their directories."""
        assert self.conn is not None
        try:
            async with self.conn.start_sftp_client() as sftp:
                for d in sorted({str(PurePosixPath(r).parent) for r in files.values()}):
                    await sftp.makedirs(d, exist_ok=True)
                await asyncio.gather(*(sftp.put(str(a), str(b)) for a, b in files.items()))
        except (OSError, asyncssh.Error) as exc:
            raise self.fail(f"upload failed: {exc}") from None

    async def write_files(self, files: Mapping[str, tuple[bytes, int]]) -> None:
        """Write ``path -> (content, mode)`` on the host (SFTP), making the directories."""
        assert self.conn is not None
        try:
            async with self.conn.start_sftp_client() as sftp:
                for d in sorted({str(PurePosixPath(p).parent) for p in files}):
                    await sftp.makedirs(d, exist_ok=True)
                for path, (data, mode) in files.items():
                    async with sftp.open(path, "wb", asyncssh.SFTPAttrs(permissions=mode)) as f:
                        await f.write(data)
                    await sftp.chmod(path, mode)
        except (OSError, asyncssh.Error) as exc:
            raise self.fail(f"upload failed: {exc}") from None

    async def fetch_file(self, remote: str, local: Path) -> None:
        """Copy one file of the host to ``local``."""
        assert self.conn is not None
        local.parent.mkdir(parents=True, exist_ok=True)
        try:
            async with self.conn.start_sftp_client() as sftp:
                await sftp.get(remote, str(local))
        except (OSError, asyncssh.Error) as exc:
            raise self.fail(f"download of {remote} failed: {exc}") from None

    async def download(self, remote: str, local: Path) -> bool:
        """Copy the host's directory ``remote`` (recursively) to ``local``; False if it does
        not exist."""
        assert self.conn is not None
        try:
            async with self.conn.start_sftp_client() as sftp:
                if not await sftp.isdir(remote):
                    return False
                local.mkdir(parents=True, exist_ok=True)
                names = [n for n in await sftp.listdir(remote) if n not in (".", "..")]
                paths = [str(PurePosixPath(remote) / n) for n in names]
                if paths:
                    await sftp.get(paths, str(local), recurse=True, preserve=True)
        except (OSError, asyncssh.Error) as exc:
            raise self.fail(f"download of {remote} failed: {exc}") from None
        return True

    async def start_agent(self) -> None:
        """Start :mod:`chaos.agent` in an SSH session and wait for its ``ready``."""
        assert self.conn is not None
        s = self.spec
        path = f"PYTHONPATH={shlex.quote(self.code_dir)} " if s.install == "code" else ""
        cmd = f"mkdir -p {shlex.quote(s.dir)} && cd {shlex.quote(s.dir)} && "
        cmd += f"{path}exec {shlex.quote(s.python)} -m chaos.agent"
        try:
            self._agent = await self.conn.create_process(cmd, encoding="utf-8")
        except (OSError, asyncssh.Error) as exc:
            raise self.fail(f"cannot open a session: {exc}") from None
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[dict[str, Any]] = loop.create_future()
        self._tasks.append(loop.create_task(self._read_replies(ready)))
        self._tasks.append(loop.create_task(self._read_stderr()))
        try:
            await asyncio.wait_for(ready, 30.0)
        except (TimeoutError, RemoteError) as exc:
            await asyncio.sleep(0.2)  # let the stderr reader catch the reason
            raise self.fail(f"the agent did not start ({s.python} -m chaos.agent): "
                            f"{exc or 'no answer'}{self._stderr_hint()}") from None  # fmt: skip

    def _stderr_hint(self) -> str:
        if self.stderr_log is None or not self.stderr_log.exists():
            return ""
        lines = self.stderr_log.read_text(errors="replace").strip().splitlines()
        return f"; its last words: {lines[-1]}" if lines else ""

    async def _read_replies(self, ready: asyncio.Future[dict[str, Any]]) -> None:
        assert self._agent is not None
        try:
            async for line in self._agent.stdout:
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                if msg.get("event") == "ready" and not ready.done():
                    ready.set_result(msg)
                elif msg.get("event") == "exit" and self.on_exit is not None:
                    self.on_exit(msg)
                elif (fut := self._pending.pop(msg.get("id", -1), None)) and not fut.done():
                    fut.set_result(msg)
        except (OSError, asyncssh.Error):
            pass
        self._lost = "the agent's session ended"
        error = self.fail(self._lost)
        if not ready.done():
            ready.set_exception(error)
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(error)
        self._pending.clear()

    async def _read_stderr(self) -> None:
        assert self._agent is not None
        with contextlib.suppress(OSError, asyncssh.Error):
            async for line in self._agent.stderr:
                if self.stderr_log is not None:
                    self.stderr_log.parent.mkdir(parents=True, exist_ok=True)
                    with self.stderr_log.open("a", encoding="utf-8") as out:
                        out.write(line)

    async def request(self, op: str, **args: Any) -> dict[str, Any]:
        """One request to the agent; its reply (raises :class:`RemoteError` on ``ok: false``)."""
        if self._agent is None or self._lost is not None:
            raise self.fail(self._lost or "no agent running")
        ident = next(iter(self._ids))
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[ident] = fut
        self._agent.stdin.write(json.dumps({"id": ident, "op": op, **args}) + "\n")
        try:
            reply = await asyncio.wait_for(fut, REQUEST_TIMEOUT_S)
        except TimeoutError:
            self._pending.pop(ident, None)
            raise self.fail(f"no answer to {op} within {REQUEST_TIMEOUT_S:g}s") from None
        if not reply.get("ok"):
            raise self.fail(f"{op} failed: {reply.get('error')}")
        return reply

    async def measure_clock(self) -> None:
        """Estimate the host clock's offset from ours (module docstring)."""
        best: tuple[int, int] | None = None
        for _ in range(CLOCK_SAMPLES):
            t0 = time.monotonic_ns()
            remote = int((await self.request("time"))["monotonic_ns"])
            t1 = time.monotonic_ns()
            if best is None or t1 - t0 < best[1]:
                best = (remote - (t0 + t1) // 2, t1 - t0)
        assert best is not None
        self.offset_ns, self.offset_error_ns = best[0], best[1] // 2 + 1

    async def forward(self, remote_port: int) -> int:
        """A local port forwarded to the host's ``127.0.0.1:remote_port`` (over SSH)."""
        assert self.conn is not None
        listener = await self.conn.forward_local_port("127.0.0.1", 0, "127.0.0.1", remote_port)
        self._forwards.append(listener)
        return int(listener.get_port())

    async def close(self) -> None:
        """Stop the agent's processes, end its session, close the connection."""
        if self._agent is not None and self._lost is None:
            with contextlib.suppress(RemoteError, OSError, asyncssh.Error):
                await self.request("stop_all", timeout=3.0)
            with contextlib.suppress(OSError, asyncssh.Error):
                self._agent.stdin.write_eof()
            with contextlib.suppress(TimeoutError, OSError, asyncssh.Error):
                await asyncio.wait_for(self._agent.wait_closed(), 10.0)
        for listener in self._forwards:
            listener.close()
        self._forwards.clear()
        for task in self._tasks:
            task.cancel()
        if self.conn is not None:
            self.conn.close()
            with contextlib.suppress(TimeoutError, OSError, asyncssh.Error):
                await asyncio.wait_for(self.conn.wait_closed(), 5.0)
            self.conn = None


class RemoteHosts:
    """Every host of a placement, usable from any thread (module docstring)."""

    def __init__(self, specs: Sequence[HostSpec], log_dir: Path | None = None) -> None:
        self._loop = _Loop()
        self.hosts: dict[str, RemoteHost] = {
            s.name: RemoteHost(s, None if log_dir is None else log_dir / f"{s.name}.agent.log")
            for s in specs
        }
        self._procs: dict[tuple[str, str], RemoteProcess] = {}
        for host in self.hosts.values():
            host.on_exit = self._exit_event(host.spec.name)

    def run(self, coro: Coroutine[Any, Any, _T], timeout: float | None = None) -> _T:
        return self._loop.run(coro, timeout)

    def each(self, make: Callable[[RemoteHost], Awaitable[None]]) -> None:
        """Run ``make(host)`` on every host at once; raise the first error (by host order)."""

        async def all_hosts() -> list[BaseException | None]:
            return await asyncio.gather(
                *(make(h) for h in self.hosts.values()), return_exceptions=True
            )

        for error in self.run(all_hosts()):
            if isinstance(error, BaseException):
                raise error

    def open(self, *, install: bool = True) -> None:
        """Connect to every host, upload the code, start the agents, measure the clocks."""

        async def one(host: RemoteHost) -> None:
            await host.connect()
            if install:
                await host.install()
            await host.start_agent()
            await host.measure_clock()

        self.each(one)

    def request(self, host: str, op: str, **args: Any) -> dict[str, Any]:
        return self.run(self.hosts[host].request(op, **args))

    def close(self) -> None:
        """Close every host (stopping everything its agent started), then the loop."""
        try:
            self.each(lambda h: h.close())
        finally:
            self._loop.close()

    def process(
        self,
        host: str,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        remote_log: str,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        on_event: EventSink | None = None,
    ) -> RemoteProcess:
        """A handle on a process to run on ``host`` (not started yet)."""
        proc = RemoteProcess(self, host, name, argv, log_path, remote_log, env, cwd, on_event)
        self._procs[(host, name)] = proc
        return proc

    def _exit_event(self, host: str) -> ExitSink:
        def sink(msg: dict[str, Any]) -> None:
            proc = self._procs.get((host, str(msg.get("name"))))
            if proc is not None:
                proc._ended(int(msg["pid"]), msg.get("code"), bool(msg.get("by_us")))

        return sink


class RemoteProcess:
    """A process on a host, run by its agent: :class:`chaos.process.ManagedProcess`'s
    interface (module docstring). ``log_path`` is where the log is once read back."""

    def __init__(
        self,
        hosts: RemoteHosts,
        host: str,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        remote_log: str,
        env: Mapping[str, str] | None,
        cwd: str | None,
        on_event: EventSink | None,
    ) -> None:
        self._hosts = hosts
        self.host = host
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.remote_log = remote_log
        self.env = dict(env or {})
        self.cwd = cwd
        self._on_event = on_event
        self._lock = threading.Lock()
        self.pid: int | None = None
        self.returncode: int | None = None
        self._running = False
        self._paused = False
        self._ended_by_us = False
        self._died: list[tuple[int, int | None]] = []

    # ---- state, from the agent's replies and exit reports --------------------------------
    def alive(self) -> bool:
        return self._running

    @property
    def paused(self) -> bool:
        return self._paused and self._running

    @property
    def exited_on_its_own(self) -> bool:
        return self.pid is not None and not self._running and not self._ended_by_us

    def deaths(self) -> list[tuple[int, int | None]]:
        out = list(self._died)
        if self.exited_on_its_own:
            assert self.pid is not None
            out.append((self.pid, self.returncode))
        return out

    def _ended(self, pid: int, code: int | None, by_us: bool) -> None:
        """The agent reports that ``pid`` ended (on the SSH loop)."""
        with self._lock:
            if pid != self.pid:
                if not by_us and (pid, code) not in self._died:
                    self._died.append((pid, code))
                return
            self._running = False
            self.returncode = code
            self._ended_by_us = self._ended_by_us or by_us

    def describe(self) -> str:
        if self.pid is None:
            return "not started"
        where = f"on host {self.host}"
        if not self._running:
            code = self.returncode
            if code is None:
                return f"exited {where}"
            return f"exited with code {code} {where}" if code >= 0 else (
                f"killed by signal {-code} {where}")  # fmt: skip
        try:
            return f"{self._request('describe')['text']} {where}"
        except RemoteError:
            return f"running {where}"

    def log_tail(self, lines: int) -> list[str]:
        """The last lines of the log: the copy read back if there is one, else the host's."""
        if self.log_path.exists():
            with contextlib.suppress(OSError):
                return self.log_path.read_text(errors="replace").splitlines()[-lines:]
        try:
            return [str(x) for x in self._request("tail", lines=lines)["lines"]]
        except RemoteError as exc:
            return [str(exc)]

    def dump_stacks(self) -> bool:
        """SIGUSR1 on the host (a node prints its threads' stacks to its log)."""
        if not self._running or self._paused:
            return False
        try:
            return bool(self._request("dump_stacks")["sent"])
        except RemoteError:
            return False

    # ---- operations -----------------------------------------------------------------------
    def _request(self, op: str, **args: Any) -> dict[str, Any]:
        return self._hosts.request(self.host, op, name=self.name, **args)

    def start(self) -> int:
        reply = self._request(
            "start", argv=self.argv, log=self.remote_log, env=self.env, cwd=self.cwd
        )
        with self._lock:
            self.pid, self._running, self._paused = int(reply["pid"]), True, False
            self._ended_by_us, self.returncode = False, None
        self._emit("start", argv=self.argv)
        return self.pid

    def kill(self) -> None:
        """SIGKILL on the host; returns once the agent has reaped it (and stamps the kill
        then, as a local kill does: every line the process wrote is before the stamp)."""
        self._require("kill")
        self._ended_by_us = True
        reply = self._request("kill")
        with self._lock:
            self._running, self._paused, self.returncode = False, False, reply.get("code")
        self._emit("kill")

    def pause(self) -> None:
        self._require("pause")
        self._emit("pause")
        self._request("pause")
        self._paused = True

    def resume(self) -> None:
        self._require("resume")
        self._emit("resume")
        self._request("resume")
        self._paused = False

    def restart(self, env: Mapping[str, str] | None = None) -> int:
        old = self.pid
        with self._lock:
            if self.exited_on_its_own and old is not None:
                self._died.append((old, self.returncode))
            self._ended_by_us = True  # the old incarnation, if running, is killed by us
        reply = self._request("restart", env=dict(env or {}))
        with self._lock:
            for pid, code in reply.get("died", []):  # the host's account of earlier crashes
                if (pid, code) not in self._died:
                    self._died.append((pid, code))
            self.pid, self._running, self._paused = int(reply["pid"]), True, False
            self._ended_by_us, self.returncode = False, None
        self._emit("restart", previous_pid=old, killed=bool(reply.get("killed")))
        return self.pid

    def stop(self, timeout: float = 5.0) -> int | None:
        if self.pid is None:
            return None
        if self._running:
            self._emit("stop")
        self._ended_by_us = True
        reply = self._request("stop", timeout=timeout)
        with self._lock:
            self._running, self._paused = False, False
            self.returncode = reply.get("code")
        return self.returncode

    def _require(self, action: str) -> None:
        if not self._running:
            from chaos.process import ProcessError

            raise ProcessError(f"cannot {action} {self.name}: it is not running on {self.host}")

    def _emit(self, action: str, **detail: Any) -> None:
        if self._on_event is None or self.pid is None:
            return
        event = ProcessEvent(self.name, action, self.pid, time.monotonic_ns(), detail)
        self._on_event(event)


class RemoteDisk:
    """A node's fault-injecting disk (:class:`chaos.diskfs.DiskMount`) on its host, mounted
    and driven by the host's agent in the mount namespace the node runs in
    (:class:`chaos.diskfs.Disk`)."""

    def __init__(
        self,
        hosts: RemoteHosts,
        host: str,
        name: str,
        backing: str,
        mountpoint: str,
        state_dir: str,
        *,
        mmap_paths: tuple[str, ...] = (),
    ) -> None:
        self._hosts = hosts
        self.host = host
        self.name = name
        self.backing = backing  #: on the host
        self.mountpoint = mountpoint
        self.state_dir = state_dir
        self.mmap_paths = mmap_paths
        self.pid: int | None = None

    def start(self) -> RemoteDisk:
        reply = self._hosts.request(
            self.host, "disk_start", name=self.name, backing=self.backing,
            mountpoint=self.mountpoint, state_dir=self.state_dir, mmap=list(self.mmap_paths),
        )  # fmt: skip
        self.pid = int(reply["pid"])
        return self

    def call(self, cmd: str, **args: Any) -> dict[str, Any]:
        from chaos.diskfs import DiskFSError

        reply = self._hosts.request(self.host, "disk_call", name=self.name, cmd=cmd, args=args)
        if "disk_error" in reply:
            raise DiskFSError(f"{reply['disk_error']} (on host {self.host})")
        result: dict[str, Any] = reply["result"]
        return result

    def settle(self) -> None:
        self._hosts.request(self.host, "disk_stop", name=self.name)

    def fetch_durable(self, local: Path) -> Path:
        """A copy of what is durable now (the backing directory) in ``local``."""
        self._hosts.run(self._hosts.hosts[self.host].download(self.backing, local))
        return local
