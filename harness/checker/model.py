"""The checker's model of one key: prepared operations, the budget, a key's raw verdict.

A register holds ``null`` or an integer. Each operation of a key becomes a :class:`KOp`: a
read (its result), a write, a cas (``expected -> new``), or a *mismatch* (a cas that failed with
``"mismatch"``: it took no effect, and the register was not ``expected`` at some instant of its
window). Windows ``[inv, ret]`` are event positions in the file (file order is real-time
order); an operation that may or may not have taken effect (``info``, or never completed) has
``ret = INF`` and ``required = False``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

Verdict: TypeAlias = bool | Literal["unknown"]
State: TypeAlias = object  # None, an int, or GARBAGE

INF = 1 << 62  #: the window end of an op that never completed
READ, WRITE, CAS, MISMATCH = range(4)
KIND_NAME = {READ: "read", WRITE: "write", CAS: "cas", MISMATCH: "cas"}
DEFAULT_MAX_CONFIGS = 2_000_000


class _Garbage:
    """The value of info writes nobody can observe (see ``linearizable.prepare``)."""

    def __repr__(self) -> str:
        return "unobserved"


GARBAGE: State = _Garbage()


@dataclass(slots=True, eq=False)
class KOp:
    """One operation of one key, prepared for checking.

    ``arg`` is the value read, the value written, or a cas's expected value; ``new`` a cas's new
    value. ``inv``/``ret`` are event positions (``ret == INF`` when it never completed).
    ``src`` indexes the key's operation list. Not frozen (a million of them are built for a big
    history, and a frozen dataclass is several times slower to build); never modified.
    """

    src: int
    kind: int
    arg: State
    new: State
    inv: int
    ret: int
    required: bool
    process: int

    @property
    def writes(self) -> bool:
        """Whether this op changes the register when applied (a cas ``a->a`` does not: it
        takes place exactly where a read of ``a`` could, and is checked as one)."""
        return self.kind == WRITE or (self.kind == CAS and self.arg != self.new)

    @property
    def produced(self) -> State:
        """The value this op leaves in the register (writers only)."""
        return self.new if self.kind == CAS else self.arg

    def matches(self, state: State) -> bool:
        """Whether a no-effect op (read, mismatch, cas ``a->a``) may take place in ``state``."""
        return state != self.arg if self.kind == MISMATCH else state == self.arg

    def describe(self) -> str:
        """A short description in the history's terms: ``p3 write 5 (events 12-15)``."""
        end = "never completed" if self.ret >= INF else str(self.ret)
        if self.kind == CAS:
            what = f"cas {show(self.arg)}->{show(self.new)}"
        elif self.kind == MISMATCH:
            what = f"cas {show(self.arg)}->{show(self.new)} failed (mismatch)"
        else:
            what = f"{KIND_NAME[self.kind]} {show(self.arg)}"
        info = "" if self.required else " (info: may or may not have happened)"
        return f"p{self.process} {what}{info} (events {self.inv}-{end})"


def show(value: object) -> str:
    """A register value the way JSON spells it: ``null``, ``3``."""
    if value is None:
        return "null"
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, tuple | list):
        return "[" + ", ".join(show(v) for v in value) + "]"
    return str(value)


class BudgetExceeded(Exception):
    """The check ran out of time or memory, or was stopped: the verdict is ``unknown``."""


@dataclass(slots=True)
class Budget:
    """Limits shared by every key of a file: an absolute ``time.monotonic()`` deadline, a size
    cap per key, and ``stop`` (a callable, e.g. a shared event's ``is_set``) that ends the
    check early when another key was found not linearizable."""

    deadline: float = float("inf")
    max_configs: int = DEFAULT_MAX_CONFIGS
    stop: Callable[[], bool] | None = None

    def check(self, size: int = 0) -> None:
        """Raise :class:`BudgetExceeded` when past the deadline, over the cap, or stopped."""
        if size > self.max_configs:
            raise BudgetExceeded(f"more than {self.max_configs} search configurations")
        if time.monotonic() > self.deadline:
            raise BudgetExceeded("time limit reached")
        if self.stop is not None and self.stop():
            raise BudgetExceeded("stopped: another key is not linearizable")


@dataclass(slots=True)
class RawResult:
    """A key's verdict in terms of :class:`KOp` (cheap to pass between processes).

    For a non-linearizable key: ``kind`` names the anomaly, ``explanation`` says it in a
    paragraph, ``witness`` lists the ops to show (``src`` indices, the culprit first),
    ``culprit`` is the first op that cannot be placed, ``prefix`` the longest linearizable
    prefix found (``src`` indices in linearization order) and ``prefix_end`` the event position
    up to which that prefix accounts for every completed op.
    """

    valid: Verdict
    method: str
    reason: str | None = None
    explanation: str = ""
    witness: list[int] = field(default_factory=list)
    seconds: float = 0.0
    kind: str = ""
    culprit: int | None = None
    prefix: list[int] = field(default_factory=list)
    prefix_end: int | None = None
    states: list[State] | None = None
    pinned_by: int | None = None
