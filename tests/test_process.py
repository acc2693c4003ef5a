"""ManagedProcess/ProcessManager with real `python -c` processes.

Every wait polls with a deadline; no sleep is an assertion. Every process is started by the
test (directly or through the manager under test) and stopped in a finalizer.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from chaos.process import ManagedProcess, ProcessError, ProcessEvent, ProcessManager

pytestmark = pytest.mark.integration

DEADLINE_S = 10.0
LOOP = "import time\nprint('up', flush=True)\nwhile True: time.sleep(0.05)\n"
CHATTY = (
    "import os, sys, time\n"
    "print('out', os.getpid(), flush=True)\n"
    "print('err', os.getpid(), file=sys.stderr, flush=True)\n"
    "while True: time.sleep(0.05)\n"
)
STUBBORN_WITH_CHILD = (
    "import signal, subprocess, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "child = subprocess.Popen([sys.executable, '-c', "
    "'import signal, time\\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\\n"
    "while True: time.sleep(0.05)'])\n"
    "print('child', child.pid, flush=True)\n"
    "while True: time.sleep(0.05)\n"
)


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


def gone(pid: int) -> bool:
    """No such process, or only a zombie left for someone else to reap."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def log_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def logged(path: Path, prefix: str) -> str | None:
    return next((line for line in log_lines(path) if line.startswith(prefix)), None)


@pytest.fixture
def manager() -> Iterator[ProcessManager]:
    with ProcessManager() as mgr:
        yield mgr


def py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_output_and_errors_are_appended_to_the_log(manager: ProcessManager, tmp_path: Path) -> None:
    log = tmp_path / "n1.log"
    log.write_text("earlier run\n")
    proc = manager.start("n1", py(CHATTY), log)
    wait_until(lambda: logged(log, "err") is not None, "stderr in the log")
    assert log_lines(log)[0] == "earlier run"
    assert f"out {proc.pid}" in log_lines(log)
    assert f"err {proc.pid}" in log_lines(log)


def test_process_runs_in_its_own_process_group(manager: ProcessManager, tmp_path: Path) -> None:
    proc = manager.start("n1", py(LOOP), tmp_path / "n1.log")
    assert proc.pid is not None
    assert os.getpgid(proc.pid) == proc.pid
    assert os.getpgid(proc.pid) != os.getpgid(0)


def test_pause_and_resume_are_seen_by_psutil(manager: ProcessManager, tmp_path: Path) -> None:
    proc = manager.start("n1", py(LOOP), tmp_path / "n1.log")
    proc.pause()
    wait_until(lambda: proc.status() == psutil.STATUS_STOPPED, "SIGSTOP to take effect")
    assert proc.paused
    assert proc.alive()
    proc.resume()
    wait_until(lambda: proc.status() != psutil.STATUS_STOPPED, "SIGCONT to take effect")
    assert not proc.paused


def test_kill_is_sigkill(manager: ProcessManager, tmp_path: Path) -> None:
    proc = manager.start("n1", py(LOOP), tmp_path / "n1.log")
    pid = proc.pid
    assert pid is not None
    proc.kill()
    assert not proc.alive()
    assert proc.returncode == -signal.SIGKILL
    assert gone(pid)
    with pytest.raises(ProcessError, match="not running"):
        proc.pause()


def test_restart_reuses_the_arguments_under_a_new_pid(
    manager: ProcessManager, tmp_path: Path
) -> None:
    log = tmp_path / "n1.log"
    proc = manager.start("n1", py(CHATTY), log)
    first = proc.pid
    wait_until(lambda: logged(log, "out") is not None, "first incarnation's output")
    proc.kill()
    second = proc.restart({"EXTRA": "1"})
    assert second != first
    assert proc.alive()
    assert proc.env["EXTRA"] == "1"
    wait_until(lambda: f"out {second}" in log_lines(log), "second incarnation's output")
    assert f"out {first}" in log_lines(log)  # appended, not overwritten
    assert sum(line.startswith("# orbital: start n1") for line in log_lines(log)) == 2


def test_restart_of_a_running_process_kills_it_first(
    manager: ProcessManager, tmp_path: Path
) -> None:
    proc = manager.start("n1", py(LOOP), tmp_path / "n1.log")
    first = proc.pid
    assert first is not None
    proc.restart()
    assert gone(first)
    assert manager.events[-1].detail == {"previous_pid": first, "killed": True}


def test_events_are_recorded_in_order_with_monotonic_time(tmp_path: Path) -> None:
    seen: list[ProcessEvent] = []
    with ProcessManager(on_event=seen.append) as mgr:
        proc = mgr.start("n1", py(LOOP), tmp_path / "n1.log")
        proc.pause()
        proc.resume()
        proc.kill()
        proc.restart()
    actions = [event.action for event in mgr.events]
    assert actions == ["start", "pause", "resume", "kill", "restart", "stop"]
    assert seen == mgr.events
    times = [event.time_ns for event in mgr.events]
    assert times == sorted(times)
    assert times[-1] <= time.monotonic_ns()
    assert mgr.events[0].as_detail()["node"] == "n1"


def test_stop_all_leaves_nothing_behind(tmp_path: Path) -> None:
    with ProcessManager() as mgr:
        paused = mgr.start("paused", py(LOOP), tmp_path / "paused.log")
        stubborn_log = tmp_path / "stubborn.log"
        stubborn = mgr.start("stubborn", py(STUBBORN_WITH_CHILD), stubborn_log)
        wait_until(lambda: logged(stubborn_log, "child") is not None, "the grandchild")
        line = logged(stubborn_log, "child")
        assert line is not None
        grandchild = int(line.split()[1])
        paused.pause()
        wait_until(lambda: paused.status() == psutil.STATUS_STOPPED, "SIGSTOP")
        pids = [paused.pid, stubborn.pid, grandchild]
        mgr.stop_all(timeout=0.5)
    assert paused.returncode == -signal.SIGTERM  # resumed, then terminated
    assert stubborn.returncode == -signal.SIGKILL  # ignored SIGTERM
    for pid in pids:
        assert pid is not None
        assert gone(pid), pid


def test_starting_a_name_twice_is_an_error(manager: ProcessManager, tmp_path: Path) -> None:
    manager.start("n1", py(LOOP), tmp_path / "n1.log")
    with pytest.raises(ProcessError, match="already exists"):
        manager.start("n1", py(LOOP), tmp_path / "n1.log")


def test_wait_exit_returns_the_status(tmp_path: Path) -> None:
    proc = ManagedProcess("once", py("raise SystemExit(3)"), tmp_path / "once.log")
    proc.start()
    assert proc.wait_exit(DEADLINE_S) == 3
    assert proc.stop() == 3


DRIVER = (
    "import signal, sys, time\n"
    # a shell's background job starts with SIGINT ignored, and Python then installs no
    # KeyboardInterrupt handler: restore it so the test does not depend on how pytest runs
    "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
    "from pathlib import Path\n"
    "from chaos.process import ProcessManager, install_signal_cleanup\n"
    "install_signal_cleanup()\n"
    "mgr = ProcessManager()\n"
    "proc = mgr.start('n1', [sys.executable, '-c', 'import time\\nwhile True: time.sleep(0.05)'],"
    " Path(sys.argv[1]))\n"
    "print(proc.pid, flush=True)\n"
    "while True: time.sleep(0.05)\n"
)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signalled_harness_leaves_no_orphan(tmp_path: Path, sig: signal.Signals) -> None:
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(tmp_path / "n1.log")],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert driver.stdout is not None
        child = int(driver.stdout.readline())
        assert not gone(child)
        driver.send_signal(sig)
        driver.wait(DEADLINE_S)
        wait_until(lambda: gone(child), f"the node to be stopped after {sig.name}")
    finally:
        if driver.poll() is None:
            driver.kill()
        driver.wait()
        if driver.stdout is not None:
            driver.stdout.close()


DUMPABLE = (
    "import faulthandler, signal, time\n"
    "faulthandler.register(signal.SIGUSR1, all_threads=True)\n"
    "def stuck_here():\n"
    "    print('up', flush=True)\n"
    "    while True: time.sleep(0.05)\n"
    "stuck_here()\n"
)


def test_describe_and_dump_stacks_explain_a_silent_process(
    manager: ProcessManager, tmp_path: Path
) -> None:
    """What the chaos runner reports for a node that stopped answering: its state and CPU, a
    stack dump in its log (only when it is running), and how it ended."""
    log = tmp_path / "n1.log"
    proc = manager.start("n1", py(DUMPABLE), log)
    wait_until(lambda: logged(log, "up") is not None, "the child to start")
    assert "CPU s used" in proc.describe()
    proc.pause()
    assert not proc.dump_stacks(), "a paused process cannot write its stacks"
    proc.resume()
    assert proc.dump_stacks()
    wait_until(
        lambda: any("stuck_here" in line for line in proc.log_tail(20)), "the stack dump in the log"
    )
    proc.kill()
    assert proc.describe() == f"killed by signal {int(signal.SIGKILL)}"
    assert not proc.exited_on_its_own, "we killed it"
    assert not proc.dump_stacks()
    done = manager.start("n2", py("raise SystemExit(3)"), tmp_path / "n2.log")
    done.wait_exit(DEADLINE_S)
    assert done.describe() == "exited with code 3"
    assert done.exited_on_its_own
