"""SIGTERM and SIGHUP handled like Ctrl-C by every ``orbital`` command.

Theory of operation
-------------------
CI timeouts, ``timeout(1)``, systemd and container stops send SIGTERM; closing a terminal
sends SIGHUP. Python's default for both is to die at once, skipping every ``finally`` and
``atexit``: a chaos run would leave its nodes and Toxiproxy running and its partitions in
place, and write no results. :func:`install` makes both raise :class:`Terminated`, a
``KeyboardInterrupt``, so exactly the Ctrl-C path runs: every process is stopped, the network
healed, what was recorded kept and judged. The exit code is ``128 + signal``: 130 for
SIGINT, 143 for SIGTERM, 129 for SIGHUP (:func:`exit_code`).

Only the first signal interrupts; later SIGTERM/SIGHUP are recorded and ignored, so a
supervisor that repeats its SIGTERM does not cut the cleanup short (SIGKILL still ends
everything; the children then die with us through ``PR_SET_PDEATHSIG``, see
:mod:`chaos.process`). Inside :func:`deferred` (storing and judging a run) the first signal
too is only recorded: the run finishes writing what it has, then exits with its code.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType

__all__ = ["Terminated", "deferred", "exit_code", "install", "received"]

HANDLED = (signal.SIGTERM, signal.SIGHUP)


class Terminated(KeyboardInterrupt):
    """Raised in the main thread by SIGTERM or SIGHUP."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"received {signal.Signals(signum).name}")
        self.signum = signum


_received: int | None = None
_deferring = 0
_owner = 0  #: the process that installed the handlers (forked children inherit them)


def install() -> None:
    """Handle SIGTERM and SIGHUP as described above (idempotent; a no-op off the main thread,
    where Python cannot install handlers)."""
    global _owner
    if threading.current_thread() is not threading.main_thread():
        return
    _owner = os.getpid()
    for sig in HANDLED:
        signal.signal(sig, _handler)


def _handler(signum: int, frame: FrameType | None) -> None:
    global _received
    if os.getpid() != _owner:  # a forked worker (multiprocessing): die as by default
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    if _received is not None:
        return  # already stopping
    _received = signum
    if _deferring == 0:
        raise Terminated(signum)


def received() -> int | None:
    """The first SIGTERM/SIGHUP received, if any."""
    return _received


def exit_code() -> int:
    """``128 + signal`` of the signal that stopped us (130 for Ctrl-C)."""
    return 128 + (_received if _received is not None else signal.SIGINT)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Record, but do not raise, a SIGTERM/SIGHUP arriving inside the block."""
    global _deferring
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1


def reset() -> None:
    """Forget a received signal (tests run several commands in one process)."""
    global _received
    _received = None
