"""Signal handlers a node or a sweep leaves behind.

A node run in-process (``raft.server``) stops on SIGTERM/SIGINT/SIGHUP through its loop; uvloop
leaves its own handler installed when its loop closes, so a process that went on (the test
suite, an application) swallowed every later SIGTERM, and a multiprocessing pool forked
afterwards could never terminate its workers: ``orbital sim``'s sweep hung in
``Pool.terminate`` inside the test suite. Both ends are fixed and tested here.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import Callable
from types import FrameType

import pytest

import harness.sim.sweep as sweep_module
from harness.sim.sweep import worker_pool
from raft.server import STOP_SIGNALS, stop_on_signals

uvloop = pytest.importorskip("uvloop")

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "uvloop": uvloop.new_event_loop,
    "asyncio": asyncio.new_event_loop,
}


def _mine(signum: int, frame: FrameType | None) -> None:
    pass


@pytest.fixture
def own_handlers() -> object:
    saved = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    for sig in STOP_SIGNALS:
        signal.signal(sig, _mine)
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def _run(loop_name: str, body: Callable[[asyncio.AbstractEventLoop], None]) -> None:
    async def main() -> None:
        body(asyncio.get_running_loop())

    with asyncio.Runner(loop_factory=LOOPS[loop_name]) as runner:
        runner.run(main())


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
@pytest.mark.usefixtures("own_handlers")
def test_a_node_gives_back_the_handlers_it_found(loop_name: str) -> None:
    stopped: list[int] = []

    def body(loop: asyncio.AbstractEventLoop) -> None:
        with stop_on_signals(loop, lambda: stopped.append(1)):
            assert signal.getsignal(signal.SIGTERM) is not _mine  # the loop's, while inside
        assert {sig: signal.getsignal(sig) for sig in STOP_SIGNALS} == dict.fromkeys(
            STOP_SIGNALS, _mine
        )

    _run(loop_name, body)
    assert {sig: signal.getsignal(sig) for sig in STOP_SIGNALS} == dict.fromkeys(
        STOP_SIGNALS, _mine
    )


@pytest.mark.usefixtures("own_handlers")
def test_the_check_sees_a_handler_left_behind() -> None:
    """Teeth: the bare ``add_signal_handler`` of before, on uvloop, leaves the closed loop's
    handler where ours was, and the same comparison fails."""

    def body(loop: asyncio.AbstractEventLoop) -> None:
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, lambda: None)

    _run("uvloop", body)
    assert signal.getsignal(signal.SIGTERM) is not _mine


def _sigterm_is_default(_: int) -> bool:
    return signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


@pytest.fixture
def sigterm_swallowed() -> object:
    """A parent whose SIGTERM handler does not exit (as uvloop's left behind did)."""
    saved = signal.signal(signal.SIGTERM, _mine)
    yield
    signal.signal(signal.SIGTERM, saved)


def _in_workers(fn: Callable[[int], bool]) -> list[bool]:
    """``fn`` over four tasks in the sweep's pool, ended gracefully (``close``: the workers
    leave on the pool's sentinel): ``terminate`` would SIGTERM workers that, with the reset
    planted away, swallow it, and wait for them for ever."""
    pool = worker_pool(2)
    try:
        return pool.map(fn, range(4))
    finally:
        pool.close()
        pool.join()


@pytest.mark.usefixtures("sigterm_swallowed")
def test_sweep_workers_die_of_sigterm_whatever_the_parent_does() -> None:
    """``Pool.terminate`` ends the workers with SIGTERM and waits for them: a worker that
    inherited a handler that does not exit is waited for for ever (the suite's hang)."""
    assert _in_workers(_sigterm_is_default) == [True] * 4


@pytest.mark.usefixtures("sigterm_swallowed")
def test_the_worker_check_sees_an_inherited_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    """Teeth: without the workers' reset they keep the parent's handler."""
    monkeypatch.setattr(sweep_module, "_default_signals", lambda: None)
    assert _in_workers(_sigterm_is_default) == [False] * 4


def test_a_sweep_in_a_process_that_swallows_sigterm_ends() -> None:
    script = (
        "import signal\n"
        "from harness.sim.sweep import sweep\n"
        "from harness.sim.world import SimConfig\n"
        "signal.signal(signal.SIGTERM, lambda signum, frame: None)\n"
        "print(sweep(SimConfig(duration_us=1_000_000), 0, 4, jobs=2).runs)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["4"]
