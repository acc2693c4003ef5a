"""Clock faults as a knob the node reads, since a real process clock cannot be skewed.

Changing the clock a process sees needs privileges (CAP_SYS_TIME for the system clock, which
would also skew every other process) or an LD_PRELOAD shim such as libfaketime (not available
here, and it does not reach CLOCK_MONOTONIC reads made through vDSO reliably). So a clock fault
is an environment setting, read by the node at start-up, that its timer source applies:

    ORBITAL_CLOCK_SKEW_MS   offset in milliseconds added to every reading (may be negative)
    ORBITAL_CLOCK_RATE      how fast the node's clock runs: 1.0 is real time, 1.5 is 50% fast

`ClockFault(...).env()` gives the variables for `ManagedProcess.restart(env=...)`; the node
builds `SkewedClock(ClockFault.from_env(os.environ))` and uses its `now` as the time source
for its election and heartbeat timers (and lease reads). Limitations, honestly:

- only time read through `SkewedClock` is affected; asyncio's own loop clock, the kernel's
  socket timeouts and ZeroMQ's reconnect timers still run in real time;
- a fault takes effect at the next (re)start of the node and lasts for that incarnation;
- an offset alone changes nothing in Raft (only durations count, and nodes never compare
  readings); the rate is what matters: a fast clock fires election timeouts early, a slow
  clock lets a leader hold a lease too long, which is the case lease reads must survive.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

SKEW_ENV: Final = "ORBITAL_CLOCK_SKEW_MS"
RATE_ENV: Final = "ORBITAL_CLOCK_RATE"


@dataclass(frozen=True, slots=True)
class ClockFault:
    """An offset (ms) and a rate for one node's clock; the default is no fault."""

    skew_ms: int = 0
    rate: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.rate) and self.rate > 0):
            raise ValueError(f"clock rate must be finite and > 0, got {self.rate}")

    def env(self) -> dict[str, str]:
        """The environment variables that carry this fault to a node process."""
        return {SKEW_ENV: str(self.skew_ms), RATE_ENV: repr(self.rate)}

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ClockFault:
        """Read the fault from an environment; missing variables mean no fault."""
        try:
            return cls(int(env.get(SKEW_ENV, "0")), float(env.get(RATE_ENV, "1.0")))
        except ValueError as exc:
            raise ValueError(f"bad {SKEW_ENV}/{RATE_ENV}: {exc}") from exc

    def as_detail(self) -> dict[str, Any]:
        """The fault as a faults.jsonl `detail` object."""
        return {"skew_ms": self.skew_ms, "rate": self.rate}


class SkewedClock:
    """A time source in seconds: `start + (base() - start) * rate + skew`.

    Monotonic as long as `base` is; readings are comparable only within one process.
    """

    def __init__(self, fault: ClockFault, base: Callable[[], float] = time.monotonic) -> None:
        self.fault = fault
        self._base = base
        self._start = base()

    def now(self) -> float:
        """The skewed reading, in seconds."""
        elapsed = self._base() - self._start
        return self._start + elapsed * self.fault.rate + self.fault.skew_ms / 1000.0
