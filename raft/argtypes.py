"""Argument types for the command lines: whole numbers in a range, with a one-line error.

``argparse`` turns an :class:`argparse.ArgumentTypeError` into ``usage: ... error: ...`` and
exit status 2, which is what every ``orbital`` subcommand promises for bad input.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable


def whole_number(low: int, high: int | None = None, *, note: str = "") -> Callable[[str], int]:
    """A parser of a whole number from ``low`` to ``high`` (inclusive; no upper bound when
    ``None``); ``note`` explains what the bound means (``"0: all cores"``)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f"from {low} to {high}" if high is not None else f"{low} or more"
            extra = f" ({note})" if note else ""
            raise argparse.ArgumentTypeError(f"must be {bound}{extra}, got {text!r}")
        return value

    return parse
