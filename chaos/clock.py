"""Clock faults on a node process, at the OS level, with libfaketime.

A node that may suffer clock faults is started with libfaketime preloaded
(``LD_PRELOAD=libfaketimeMT.so.1``, Debian's ``libfaketime``) and pointed at its own
*timestamp file* (``FAKETIME_TIMESTAMP_FILE``), which the library re-reads at every clock read
(``FAKETIME_NO_CACHE=1``). Every clock the process reads through libc is then faked:
``CLOCK_MONOTONIC`` (Python's ``time.monotonic``, asyncio's loop time, the node's ticks) as well
as ``CLOCK_REALTIME``, and sleeps and poll timeouts are scaled to the faked rate. The node
itself knows nothing about it: it reads the OS clock. Changing the file moves a running
node's clock:

- ``skew(rate)``: the clock runs ``rate`` times as fast as real time from now on (1.5: 50 %
  fast; 0.5: half speed), without a jump. libfaketime computes ``start + offset + (now -
  start) * rate`` from the process's start, so a new rate comes with the offset that keeps the
  clock where it is (``process_started()`` tells the clock when its process started).
- ``jump(seconds)``: the clock jumps by ``seconds`` (negative: back) and runs on from there.
- ``strobe(delta, period, duration)``: the clock flips between its offset and ``delta`` more
  than that every ``period`` seconds for ``duration`` seconds (Jepsen's strobe), then returns.
- ``reset()``: real time again.

A real ``CLOCK_MONOTONIC`` never jumps; jumps and strobes model a broken clock source (or a
VM that was paused or migrated), rates model drift beyond what NTP corrects. Raft's safety
does not depend on clocks; its liveness does, and so does a lease read (dissertation
§6.4.1), which is what these faults are for. ``read_clock_setting`` tells, from the
timestamp file, what a process's clock is set to; tests check that a node's clock really moved
by asking the node for its own ``time.monotonic()`` (``clock_s`` in its status).

The file is replaced atomically (write, rename), so the library never reads half a setting.
"""

from __future__ import annotations

import glob
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

#: where Debian's libfaketime puts the preload library (the multithreaded variant: a node
#: runs threads, and so does ZeroMQ)
LIBFAKETIME_GLOB: Final = "/usr/lib/*/faketime/libfaketimeMT.so.1"
LIBFAKETIME_ENV: Final = "ORBITAL_LIBFAKETIME"


class ClockFaultError(RuntimeError):
    """libfaketime is missing, or a clock setting is out of range."""


def libfaketime() -> Path:
    """The libfaketime preload library (``$ORBITAL_LIBFAKETIME``, else Debian's)."""
    explicit = os.environ.get(LIBFAKETIME_ENV)
    found = [explicit] if explicit else sorted(glob.glob(LIBFAKETIME_GLOB))
    if not found or not os.path.exists(found[0]):
        raise ClockFaultError(
            "libfaketime not found: install Debian's libfaketime (scripts/setup.sh does) or set "
            f"{LIBFAKETIME_ENV}"
        )
    return Path(found[0])


def _spec(offset_s: float, rate: float) -> str:
    """libfaketime's setting: a relative offset in seconds, and a rate."""
    return f"{offset_s:+.6f} x{rate:.6f}"


class FakeClock:
    """The clock of one process: its timestamp file, and the faults that move it.

    ``env()`` gives the environment a process needs to run on this clock. All methods are
    safe to call from any thread; a strobe runs in its own daemon thread.
    """

    def __init__(
        self,
        path: Path,
        *,
        write: Callable[[Path, str], None] | None = None,
        library: str | None = None,
    ) -> None:
        """``path``: the timestamp file, where the process reads it. ``write(path, text)``
        replaces it atomically (default: on this machine; a remote placement writes it on
        the node's host, :mod:`chaos.remote`); ``library``: libfaketime's path where the
        process runs (default: :func:`libfaketime` here)."""
        self.path = path
        self._writer = write
        self._library = library
        self.offset_s = 0.0
        self.rate = 1.0
        self._lock = threading.Lock()
        self._strobe: threading.Thread | None = None
        self._stop_strobe = threading.Event()
        self._started: float | None = None
        if write is None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self._write()

    def process_started(self) -> None:
        """The process on this clock was just started (libfaketime's rates count from then)."""
        self._started = time.monotonic()

    def env(self) -> dict[str, str]:
        """The variables that put a process on this clock."""
        return {
            "LD_PRELOAD": self._library or str(libfaketime()),
            "FAKETIME_TIMESTAMP_FILE": str(self.path),
            "FAKETIME_NO_CACHE": "1",
        }

    def _write(self) -> None:
        text = _spec(self.offset_s, self.rate) + "\n"
        if self._writer is not None:
            self._writer(self.path, text)
        else:
            write_atomically(self.path, text)

    def skew(self, rate: float) -> dict[str, Any]:
        """Run the clock at ``rate`` times real time (0.01 .. 100)."""
        if not 0.01 <= rate <= 100:
            raise ClockFaultError(f"clock rate must be in 0.01..100, got {rate}")
        with self._lock:
            if self._started is not None:  # keep the clock continuous across the change
                self.offset_s += (time.monotonic() - self._started) * (self.rate - rate)
            self.rate = rate
            self._write()
            return self.detail()

    def jump(self, seconds: float) -> dict[str, Any]:
        """Move the clock by ``seconds`` (negative: backwards)."""
        with self._lock:
            self.offset_s += seconds
            self._write()
            return {**self.detail(), "jump_s": seconds}

    def strobe(self, delta_s: float, period_s: float, duration_s: float) -> dict[str, Any]:
        """Flip the clock to ``delta_s`` more than its offset at once, back after
        ``period_s``, and so on for ``duration_s`` (in a background thread); returns at once."""
        if period_s <= 0 or duration_s < 0:
            raise ClockFaultError("strobe period must be > 0 and duration >= 0")
        self.stop_strobe()
        self._stop_strobe = threading.Event()
        stop = self._stop_strobe
        base = self.offset_s

        def run() -> None:
            end = time.monotonic() + duration_s
            high = True
            while True:
                with self._lock:
                    self.offset_s = base + (delta_s if high else 0.0)
                    self._write()
                if stop.wait(period_s) or time.monotonic() >= end:
                    break
                high = not high
            with self._lock:
                self.offset_s = base
                self._write()

        self._strobe = threading.Thread(target=run, name=f"strobe {self.path}", daemon=True)
        self._strobe.start()
        return {"delta_s": delta_s, "period_s": period_s, "duration_s": duration_s}

    def stop_strobe(self) -> None:
        """End a strobe in progress (the clock goes back to its offset before it)."""
        t = self._strobe
        if t is not None:
            self._stop_strobe.set()
            t.join()
            self._strobe = None

    def reset(self) -> dict[str, Any]:
        """Real time again (no offset, rate 1)."""
        self.stop_strobe()
        with self._lock:
            self.offset_s, self.rate = 0.0, 1.0
            self._write()
            return self.detail()

    def detail(self) -> dict[str, Any]:
        """The clock's setting, for a faults.jsonl ``detail``."""
        return {"offset_s": round(self.offset_s, 6), "rate": self.rate}


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` (write a temporary file, rename): a reader sees the old
    or the new content, never half of it."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def read_clock_setting(path: Path) -> tuple[float, float]:
    """The (offset seconds, rate) a timestamp file written by :class:`FakeClock` holds."""
    offset, rate = path.read_text().split()
    return float(offset), float(rate.removeprefix("x"))
