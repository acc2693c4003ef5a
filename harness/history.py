"""Client histories and fault logs: the model, and JSON Lines reading and writing.

Theory of operation
-------------------
The format is ``shared/HISTORY.md``; this module is its single implementation. A history is a
sequence of *events* (:class:`Op`), one JSON object per line, in the order they happened: an
``invoke`` by a logical single-threaded ``process``, later followed by that process's completion
(``ok``, ``fail`` or ``info``). Two layers of validation apply:

* per event (pydantic): field types, and the shape of ``value`` for the event's ``f`` and
  ``type`` — a read carries ``null`` at invoke and any integer or ``null`` at ``ok``; a write
  carries an integer; a cas carries ``[expected, new]``;
* per stream (:class:`HistoryValidator`): ``index`` counts lines from 0; a completion follows an
  invoke by the same process, for the same ``f`` and ``key`` (and, for write and cas, the same
  value); a process with an outstanding operation may not invoke again; a process that got
  ``info`` never invokes again.

Any violation raises :class:`HistoryError` (a ``ValueError``) naming the file, the line and the
field. The rules themselves live in :mod:`harness.checker.events` (plain Python, no pydantic),
which ``orbital check`` uses directly; this module adds the pydantic models and the writers.
Time never goes backwards: every event's ``time`` is at least the previous event's.
:func:`pair_operations` turns events into :class:`Operation` objects (an invoke and its
completion, or ``None`` when the history ended first — which counts as ``info``); the checker
and the report work on those. :class:`HistoryWriter` is what workload clients use: it assigns
``index`` and ``time``, validates each event as it is appended and flushes every line, so a
crash loses at most the event being written. Faults go to ``faults.jsonl`` (:class:`Fault`).
"""

from __future__ import annotations

import json
import threading
import time as _time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeAlias, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from harness.checker.events import EventReader, HistoryError, decode_lines, value_problem

__all__ = [
    "Fault",
    "FaultWriter",
    "HistoryError",
    "HistoryValidator",
    "HistoryWriter",
    "Op",
    "OpF",
    "OpType",
    "Operation",
    "Value",
    "pair_operations",
    "parse_history",
    "read_faults",
    "read_history",
]

OpType: TypeAlias = Literal["invoke", "ok", "fail", "info"]
OpF: TypeAlias = Literal["read", "write", "cas"]
#: ``null``/int for reads, int for writes, ``(expected, new)`` for cas.
Value: TypeAlias = int | tuple[int | None, int] | None


class Op(BaseModel):
    """One event of a client history (one line of ``history.jsonl``)."""

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")

    index: int = Field(ge=0)
    time: int = Field(ge=0)
    process: int = Field(ge=0)
    type: OpType
    f: OpF
    key: str
    value: Value = None
    node: str | None = None
    error: str | None = None
    client: str | None = None
    group: str | None = None

    @field_validator("value", mode="before")
    @classmethod
    def _check_value_shape(cls, value: object, info: ValidationInfo) -> object:
        f, type_ = info.data.get("f"), info.data.get("type")
        if f is None or type_ is None:
            return value  # their own errors are reported
        problem = value_problem(f, type_, value)
        if problem:
            raise ValueError(problem)
        return tuple(value) if isinstance(value, list) else value

    def to_json_line(self) -> str:
        """The event as one JSON line (no newline), optional fields left out when unset."""
        data = self.model_dump(exclude_none=True)
        if "value" not in data:
            data["value"] = None
        elif isinstance(self.value, tuple):
            data["value"] = list(self.value)
        return json.dumps(data, separators=(",", ":"))


class Fault(BaseModel):
    """One fault event (one line of ``faults.jsonl``)."""

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")

    index: int = Field(ge=0)
    time: int = Field(ge=0)
    fault: str
    action: Literal["start", "stop"]
    detail: dict[str, Any] = Field(default_factory=dict)

    def to_json_line(self) -> str:
        """The event as one JSON line (no newline)."""
        return json.dumps(self.model_dump(), separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class Operation:
    """An invoke and its completion; ``completion is None`` means it never completed (info)."""

    invoke: Op
    completion: Op | None

    @property
    def outcome(self) -> Literal["ok", "fail", "info"]:
        """``ok``, ``fail`` or ``info`` (an operation that never completed is ``info``)."""
        if self.completion is None or self.completion.type == "invoke":
            return "info"
        return self.completion.type


class HistoryValidator:
    """Stream rules of a history: feed events in order with :meth:`check` (the rules are
    :class:`harness.checker.events.EventReader`'s)."""

    def __init__(self, path: str = "<history>") -> None:
        self.path = path
        self.reader = EventReader(path)
        self.outstanding: dict[int, Op] = {}

    @property
    def expected_index(self) -> int:
        return self.reader.count

    def check(self, op: Op, line: int | None = None) -> None:
        """Raise :class:`HistoryError` if ``op`` cannot follow the events seen so far."""
        self.reader.feed(_op_dict(op), self.reader.count + 1 if line is None else line)
        if op.type == "invoke":
            self.outstanding[op.process] = op
        else:
            self.outstanding.pop(op.process, None)


def _op_dict(op: Op) -> dict[str, Any]:
    data = {
        "index": op.index,
        "time": op.time,
        "process": op.process,
        "type": op.type,
        "f": op.f,
        "key": op.key,
        "value": list(op.value) if isinstance(op.value, tuple) else op.value,
    }
    for name in ("node", "error", "client", "group"):
        x = getattr(op, name)
        if x is not None:
            data[name] = x
    return data


def _validation_error(exc: ValidationError, path: str, line: int) -> HistoryError:
    first = exc.errors()[0]
    loc = first.get("loc", ())
    field = str(loc[0]) if loc else ""
    message = str(first.get("msg", "invalid"))
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    return HistoryError(message, path=path, line=line, field=field)


_M = TypeVar("_M", Op, Fault)


def _parse_lines(model: type[_M], lines: Iterable[str], path: str) -> Iterator[tuple[int, _M]]:
    for line_no, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            yield line_no, model.model_validate_json(raw)
        except ValidationError as exc:
            if exc.errors()[0].get("type") == "json_invalid":
                raise HistoryError(
                    f"not valid JSON: {raw.strip()[:60]!r}", path=path, line=line_no
                ) from None
            raise _validation_error(exc, path, line_no) from None


def parse_history(lines: Iterable[str], path: str = "<history>") -> list[Op]:
    """Parse and validate history lines (blank lines are skipped)."""
    reader = EventReader(path)
    events: list[Op] = []
    for line_no, data in decode_lines(lines, path):
        reader.feed(data, line_no)
        value = data.get("value")
        fields = data | {"value": tuple(value) if isinstance(value, list) else value}
        events.append(Op.model_construct(**fields))
    return events


def read_history(path: str | Path) -> list[Op]:
    """Read and validate a ``history.jsonl`` file."""
    try:
        with open(path, encoding="utf-8") as fh:
            return parse_history(fh, str(path))
    except OSError as exc:
        raise HistoryError(f"cannot read: {exc.strerror}", path=str(path)) from None
    except UnicodeDecodeError:
        raise HistoryError("not UTF-8 text", path=str(path)) from None


def read_faults(path: str | Path) -> list[Fault]:
    """Read and validate a ``faults.jsonl`` file (``index`` must count lines from 0)."""
    try:
        with open(path, encoding="utf-8") as fh:
            faults: list[Fault] = []
            for line_no, fault in _parse_lines(Fault, fh, str(path)):
                if fault.index != len(faults):
                    raise HistoryError(
                        f"expected {len(faults)}, got {fault.index}",
                        path=str(path),
                        line=line_no,
                        field="index",
                    )
                faults.append(fault)
            return faults
    except OSError as exc:
        raise HistoryError(f"cannot read: {exc.strerror}", path=str(path)) from None


def pair_operations(events: Iterable[Op]) -> list[Operation]:
    """Pair each invoke with its completion, in invoke order; unfinished ones get ``None``."""
    operations: list[Operation] = []
    open_slots: dict[int, int] = {}
    for op in events:
        if op.type == "invoke":
            open_slots[op.process] = len(operations)
            operations.append(Operation(op, None))
        else:
            slot = open_slots.pop(op.process)
            operations[slot] = Operation(operations[slot].invoke, op)
    return operations


class HistoryWriter:
    """Append history events to a JSONL file, one at a time, validated and flushed.

    Safe to share between threads. ``time`` defaults to nanoseconds since ``start_ns`` (a
    ``time.monotonic_ns()`` reading; default: when the writer was created); pass the same
    ``start_ns`` to the :class:`FaultWriter` of the run. ``index`` is always assigned here.
    """

    def __init__(self, path: str | Path, *, start_ns: int | None = None) -> None:
        self.path = Path(path)
        self._fh = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 - closed by close()
        self._lock = threading.Lock()
        self._start = _time.monotonic_ns() if start_ns is None else start_ns
        self._validator = HistoryValidator(str(self.path))
        self._index = 0

    def append(
        self,
        *,
        process: int,
        type: OpType,
        f: OpF,
        key: str,
        value: Value = None,
        node: str | None = None,
        error: str | None = None,
        time: int | None = None,
        client: str | None = None,
        group: str | None = None,
    ) -> Op:
        """Validate, write and flush one event; return it with its index and time."""
        with self._lock:
            stamp = _time.monotonic_ns() - self._start if time is None else time
            fields: dict[str, object] = {
                "index": self._index,
                "time": stamp,
                "process": process,
                "type": type,
                "f": f,
            }
            fields |= {"key": key, "value": value, "node": node, "error": error}
            fields |= {"client": client, "group": group}
            try:
                op = Op.model_validate(fields)
            except ValidationError as exc:
                raise _validation_error(exc, str(self.path), self._index + 1) from None
            self._validator.check(op)
            self._fh.write(op.to_json_line() + "\n")
            self._fh.flush()
            self._index += 1
            return op

    def invoke(
        self,
        process: int,
        f: OpF,
        key: str,
        value: Value = None,
        *,
        client: str | None = None,
        group: str | None = None,
    ) -> Op:
        """Record that ``process`` starts an operation; ``client`` names the client (worker)
        that runs the process and ``group`` where it stands (both optional, for people)."""
        return self.append(
            process=process, type="invoke", f=f, key=key, value=value, client=client, group=group
        )

    def complete(
        self,
        process: int,
        type: Literal["ok", "fail", "info"],
        value: Value = None,
        *,
        node: str | None = None,
        error: str | None = None,
    ) -> Op:
        """Record the completion of ``process``'s outstanding operation.

        ``f`` and ``key`` come from the invoke; for write and cas so does ``value``.
        """
        invoke = self._validator.outstanding.get(process)
        if invoke is None:
            raise HistoryError(
                f"process {process} has no outstanding operation",
                path=str(self.path),
                field="process",
            )
        if invoke.f != "read":
            value = invoke.value
        return self.append(
            process=process,
            type=type,
            f=invoke.f,
            key=invoke.key,
            value=value,
            node=node,
            error=error,
        )

    def close(self) -> None:
        """Close the file (outstanding operations stay unfinished: they count as info)."""
        with self._lock:
            self._fh.close()

    def __enter__(self) -> HistoryWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class FaultWriter:
    """Append fault events to ``faults.jsonl``; same clock convention as :class:`HistoryWriter`."""

    def __init__(self, path: str | Path, *, start_ns: int | None = None) -> None:
        self.path = Path(path)
        self._fh = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 - closed by close()
        self._lock = threading.Lock()
        self._start = _time.monotonic_ns() if start_ns is None else start_ns
        self._index = 0

    def record(
        self,
        fault: str,
        action: Literal["start", "stop"],
        detail: dict[str, Any] | None = None,
        *,
        time: int | None = None,
    ) -> Fault:
        """Write and flush one fault event."""
        with self._lock:
            stamp = _time.monotonic_ns() - self._start if time is None else time
            event = Fault(
                index=self._index, time=stamp, fault=fault, action=action, detail=detail or {}
            )
            self._fh.write(event.to_json_line() + "\n")
            self._fh.flush()
            self._index += 1
            return event

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            self._fh.close()

    def __enter__(self) -> FaultWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
