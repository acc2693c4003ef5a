"""Clock faults with libfaketime (chaos/clock.py): the setting file, then a real process and a
real ``orbital node`` whose clocks really move."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from chaos.clock import ClockFaultError, FakeClock, libfaketime, read_clock_setting
from chaos.toxiproxy import free_port
from raft.client import KVClient, KVError


def test_the_setting_file_holds_offset_and_rate(tmp_path: Path) -> None:
    clock = FakeClock(tmp_path / "c" / "clock.rc")
    assert read_clock_setting(clock.path) == (0.0, 1.0)
    clock.jump(-2.5)
    assert read_clock_setting(clock.path) == (-2.5, 1.0)
    clock.skew(1.5)  # no process started: nothing to keep continuous
    assert read_clock_setting(clock.path) == (-2.5, 1.5)
    assert clock.detail() == {"offset_s": -2.5, "rate": 1.5}
    clock.reset()
    assert read_clock_setting(clock.path) == (0.0, 1.0)
    with pytest.raises(ClockFaultError, match="rate"):
        clock.skew(0)
    with pytest.raises(ClockFaultError, match="period"):
        clock.strobe(1.0, 0, 1.0)


def test_a_rate_change_keeps_the_clock_continuous(tmp_path: Path) -> None:
    clock = FakeClock(tmp_path / "clock.rc")
    clock.process_started()
    clock._started = time.monotonic() - 10  # the process has run for 10 s
    clock.skew(2.0)
    offset, rate = read_clock_setting(clock.path)
    assert rate == 2.0
    assert offset == pytest.approx(-10.0, abs=0.1)  # start + off + 10 * 2 == start + 10


needs_faketime = pytest.mark.skipif(
    not any(Path("/usr/lib").glob("*/faketime/libfaketimeMT.so.1")),
    reason="needs Debian's libfaketime (scripts/setup.sh installs it)",
)


class Reader:
    """A child process on a FakeClock that prints its time.monotonic() when asked."""

    def __init__(self, clock: FakeClock) -> None:
        code = "import sys, time\nfor _ in sys.stdin: print(time.monotonic(), flush=True)"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, **clock.env()},
            text=True,
        )
        clock.process_started()

    def now(self) -> float:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        return float(self.proc.stdout.readline())

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def reader(tmp_path: Path) -> Iterator[tuple[FakeClock, Reader]]:
    clock = FakeClock(tmp_path / "clock.rc")
    r = Reader(clock)
    try:
        yield clock, r
    finally:
        clock.stop_strobe()
        r.close()


@pytest.mark.integration
@needs_faketime
def test_jumps_move_a_running_process_clock(reader: tuple[FakeClock, Reader]) -> None:
    clock, r = reader
    before = r.now()
    clock.jump(30)
    assert r.now() - before >= 30  # forward, at once
    clock.jump(-60)
    assert r.now() - before < -29  # and back: a monotonic clock that goes backwards


@pytest.mark.integration
@needs_faketime
def test_skew_changes_how_fast_a_running_process_clock_runs(
    reader: tuple[FakeClock, Reader],
) -> None:
    clock, r = reader
    clock.skew(4.0)
    a, t = r.now(), time.monotonic()
    time.sleep(0.3)
    fake, real = r.now() - a, time.monotonic() - t
    assert fake > 2.5 * real  # 4x, with room for a loaded machine
    clock.skew(0.25)
    a, t = r.now(), time.monotonic()
    time.sleep(0.3)
    fake, real = r.now() - a, time.monotonic() - t
    assert fake < 0.5 * real


@pytest.mark.integration
@needs_faketime
def test_strobe_flips_a_running_process_clock_then_stops(
    reader: tuple[FakeClock, Reader],
) -> None:
    clock, r = reader
    base = r.now()
    clock.strobe(100.0, 0.05, 60.0)
    seen = set()
    deadline = time.monotonic() + 20
    while len(seen) < 2 and time.monotonic() < deadline:  # both sides of the strobe
        seen.add(r.now() - base > 50)
        time.sleep(0.01)
    assert seen == {True, False}
    clock.stop_strobe()
    assert abs(r.now() - base) < 50  # back where it was


def test_libfaketime_is_found_or_the_error_says_how(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORBITAL_LIBFAKETIME", "/nonexistent/libfaketime.so")
    with pytest.raises(ClockFaultError, match="install Debian's libfaketime"):
        libfaketime()


@pytest.mark.integration
@needs_faketime
def test_a_node_clock_really_moves(tmp_path: Path) -> None:
    """An ``orbital node`` on a FakeClock: the clock it reads (its status's ``clock_s``)
    jumps with the fault, while the harness's own clock does not."""
    clock = FakeClock(tmp_path / "clock.rc")
    client_addr = f"127.0.0.1:{free_port()}"
    config = tmp_path / "cluster.toml"
    config.write_text(
        f'cluster_id = "clock"\ndata_dir = "{tmp_path / "data"}"\n[nodes.n1]\n'
        f'raft = "127.0.0.1:{free_port()}"\nclient = "{client_addr}"\n'
    )
    argv = [sys.executable, "-m", "harness.cli", "node", "--config", str(config), "--id", "n1"]
    with (tmp_path / "n1.log").open("ab") as log:
        proc = subprocess.Popen(
            [*argv, "--quiet"], stdout=log, stderr=log, env={**os.environ, **clock.env()}
        )
    clock.process_started()

    async def node_clock() -> float:
        async with KVClient({"n1": client_addr}, timeout=2.0) as c, asyncio.timeout(30):
            while True:
                try:
                    return float((await c.status("n1"))["clock_s"])
                except KVError:
                    await asyncio.sleep(0.05)

    try:
        before, real = asyncio.run(node_clock()), time.monotonic()
        clock.jump(3600)
        after = asyncio.run(node_clock())
        assert after - before >= 3600
        assert time.monotonic() - real < 600
    finally:
        proc.kill()
        proc.wait(10)
