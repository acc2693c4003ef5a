"""ClockFault carries a skew and a rate through the environment; SkewedClock applies them."""

from __future__ import annotations

import pytest

from chaos.clock import RATE_ENV, SKEW_ENV, ClockFault, SkewedClock


class FakeBase:
    """A settable base clock, so the arithmetic is checked exactly."""

    def __init__(self, start: float) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t


def test_env_round_trips() -> None:
    fault = ClockFault(skew_ms=-250, rate=1.5)
    assert fault.env() == {SKEW_ENV: "-250", RATE_ENV: "1.5"}
    assert ClockFault.from_env(fault.env()) == fault
    assert ClockFault.from_env({}) == ClockFault()


def test_bad_values_are_rejected() -> None:
    with pytest.raises(ValueError, match="rate"):
        ClockFault(rate=0.0)
    with pytest.raises(ValueError, match=SKEW_ENV):
        ClockFault.from_env({SKEW_ENV: "soon"})


def test_skewed_clock_applies_offset_and_rate() -> None:
    base = FakeBase(100.0)
    clock = SkewedClock(ClockFault(skew_ms=500, rate=2.0), base)
    assert clock.now() == pytest.approx(100.5)
    base.t = 103.0
    assert clock.now() == pytest.approx(106.5)  # 3 s of real time read as 6 s


def test_no_fault_is_the_base_clock() -> None:
    base = FakeBase(7.0)
    clock = SkewedClock(ClockFault(), base)
    base.t = 9.25
    assert clock.now() == 9.25
