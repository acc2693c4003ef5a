"""Reading history files fast: validation and pairing in plain Python (no pydantic).

Theory of operation
-------------------
The format is ``../shared/HISTORY.md`` (restated in ``docs/checking.md``). This module is its
single validator: :mod:`harness.history` (the pydantic models, the writers) uses it too. It is
kept free of heavy imports so that ``orbital check`` on a small file starts in a few tens of
milliseconds, and it keeps no per-event objects, so that a history of a million operations
fits in a few hundred megabytes: events are checked one at a time by :class:`EventReader` and
paired into :class:`OpRecord` s (an invoke and its completion) as they arrive.

Rules, each violation a :class:`HistoryError` naming the file, the line and the field:

* per event: the fields and their JSON types (``index``, ``time``, ``process`` non-negative
  integers; ``type`` and ``f`` from their sets; ``key`` a string; ``node`` and ``error`` strings
  or absent), no other field, and the shape of ``value`` for ``f`` and ``type``;
* per stream: ``index`` counts events from 0; ``time`` never goes backwards (the file is in the
  order things happened, on one clock); a completion follows an invoke of the same process,
  for the same ``f`` and ``key`` (and, for write and cas, the same value); a process with an
  operation outstanding may not invoke again, and a process that got ``info`` never does.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TYPES = frozenset(("invoke", "ok", "fail", "info"))
FUNCTIONS = frozenset(("read", "write", "cas"))
FIELDS = frozenset(("index", "time", "process", "type", "f", "key", "value", "node", "error"))
REQUIRED = ("index", "time", "process", "type", "f", "key")


class HistoryError(ValueError):
    """A history or fault file that breaks the format: names the file, line and field."""

    def __init__(
        self, message: str, *, path: str = "<history>", line: int = 0, field: str = ""
    ) -> None:
        self.path = path
        self.line = line
        self.field = field
        self.message = message
        where = f"{path}:{line}" if line else path
        what = f"field '{field}': " if field else ""
        super().__init__(f"{where}: {what}{message}")


@dataclass(slots=True)
class OpRecord:
    """One operation: an invoke and its completion (``end is None``: it never completed).

    ``value`` is the invoke's (a cas's ``(expected, new)`` as a tuple), ``result`` the
    completion's (the value a read returned). ``type`` is ``ok``, ``fail`` or ``info`` (an
    operation that never completed counts as ``info``).
    """

    index: int
    process: int
    f: str
    key: str
    value: Any
    type: str
    invoke_time: int
    complete_time: int | None
    result: Any = None
    error: str | None = None
    node: str | None = None
    end: int | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (the shape the report and ``results.json`` use)."""
        value = self.result if self.f == "read" else self.value
        return {
            "index": self.index,
            "completion_index": self.end,
            "process": self.process,
            "f": self.f,
            "key": self.key,
            "type": self.type,
            "value": list(value) if isinstance(value, tuple) else value,
            "error": self.error,
            "node": self.node,
            "invoke_time": self.invoke_time,
            "complete_time": self.complete_time,
        }


def _is_int(x: object) -> bool:
    return type(x) is int


def value_problem(f: str, type_: str, value: object) -> str | None:
    """Why ``value`` has the wrong shape for ``f``/``type_``, or ``None`` when it is fine."""
    if f == "read":
        if value is None or _is_int(value):
            if type_ == "invoke" and value is not None:
                return f"a read invoke carries null, got {_show(value)}"
            return None
        if type_ == "invoke":
            return f"a read invoke carries null, got {_show(value)}"
        return f"a read carries an integer or null, got {_show(value)}"
    if f == "write":
        return None if _is_int(value) else f"a write carries an integer, got {_show(value)}"
    ok_pair = (
        isinstance(value, list | tuple)
        and len(value) == 2
        and (value[0] is None or _is_int(value[0]))
        and _is_int(value[1])
    )
    return None if ok_pair else f"a cas carries [expected, new] (integers), got {_show(value)}"


def _show(value: object) -> str:
    """A value as JSON (``null``, ``true``, ``[1, 2]``), the way the file spells it."""
    try:
        return json.dumps(list(value) if isinstance(value, tuple) else value)
    except (TypeError, ValueError):
        return repr(value)


class EventReader:
    """Validate history events one at a time and pair them into :class:`OpRecord` s.

    Feed JSON objects in file order with :meth:`feed`; :meth:`finish` returns the operations
    in invoke order. ``outstanding`` maps a process to the invoke it is waiting on.
    """

    def __init__(self, path: str = "<history>") -> None:
        self.path = path
        self.count = 0  # events accepted so far (the next index)
        self.last_time = 0
        self.last_time_line = 0
        self.outstanding: dict[int, tuple[int, dict[str, Any]]] = {}  # process -> (slot, invoke)
        self.crashed: set[int] = set()
        self.ops: list[OpRecord | None] = []

    def error(self, line: int, field: str, message: str) -> HistoryError:
        return HistoryError(message, path=self.path, line=line, field=field)

    def feed(self, event: Any, line: int) -> None:
        """Check one event (a decoded JSON object) read from ``line``; pair it."""
        if type(event) is not dict:
            raise self.error(line, "", f"an event is a JSON object, got {_show(event)}")
        self._check_fields(event, line)
        if event["index"] != self.count:
            raise self.error(line, "index", f"expected {self.count}, got {event['index']}")
        if event["type"] == "invoke":
            self._invoke(event, line)
        else:
            self._complete(event, line)
        time = event["time"]
        if time < self.last_time:
            raise self.error(
                line,
                "time",
                f"time goes backwards: {time} after {self.last_time} (line "
                f"{self.last_time_line}); events must be in the order they happened",
            )
        self.last_time, self.last_time_line = time, line
        self.count += 1

    def _check_fields(self, event: dict[str, Any], line: int) -> None:
        # the common case in one expression; any doubt goes to the detailed checks
        try:
            index, time, process = event["index"], event["time"], event["process"]
            f, type_, key = event["f"], event["type"], event["key"]
            value = event.get("value")
            fine = (
                type(index) is int
                and type(time) is int
                and type(process) is int
                and index >= 0
                and time >= 0
                and process >= 0
                and type(key) is str
                and (len(event) <= 7 or _optional_fine(event))
                and FIELDS.issuperset(event)
                and (
                    (f == "write" and type(value) is int and type_ in TYPES)
                    or (
                        f == "read"
                        and type_ != "invoke"
                        and type_ in TYPES
                        and (value is None or type(value) is int)
                    )
                    or (f == "read" and type_ == "invoke" and value is None)
                )
            )
        except KeyError:
            fine = False
        if not fine:
            self._slow_check(event, line)

    def _slow_check(self, event: dict[str, Any], line: int) -> None:
        if len(event) > len(FIELDS) or not FIELDS.issuperset(event):
            extra = sorted(set(event) - FIELDS)[0]
            raise self.error(line, extra, "unknown field (extra fields are not allowed)")
        for name in REQUIRED:
            if name not in event:
                raise self.error(line, name, "missing")
        for name in ("index", "time", "process"):
            x = event[name]
            if type(x) is not int or x < 0:
                raise self.error(line, name, f"a non-negative integer, got {_show(x)}")
        if event["type"] not in TYPES:
            raise self.error(
                line, "type", f"one of invoke, ok, fail, info; got {_show(event['type'])}"
            )
        if event["f"] not in FUNCTIONS:
            raise self.error(line, "f", f"one of read, write, cas; got {_show(event['f'])}")
        if type(event["key"]) is not str:
            raise self.error(line, "key", f"a string, got {_show(event['key'])}")
        for name in ("node", "error"):
            x = event.get(name)
            if x is not None and type(x) is not str:
                raise self.error(line, name, f"a string or null, got {_show(x)}")
        problem = value_problem(event["f"], event["type"], event.get("value"))
        if problem:
            raise self.error(line, "value", problem)

    def _invoke(self, event: dict[str, Any], line: int) -> None:
        p = event["process"]
        if p in self.crashed:
            raise self.error(line, "process", f"process {p} got info and may not invoke again")
        previous = self.outstanding.get(p)
        if previous is not None:
            raise self.error(
                line,
                "process",
                f"process {p} invoked while its operation at index "
                f"{previous[1]['index']} is outstanding",
            )
        self.outstanding[p] = (len(self.ops), event)
        self.ops.append(None)

    def _complete(self, event: dict[str, Any], line: int) -> None:
        p = event["process"]
        found = self.outstanding.pop(p, None)
        if found is None:
            raise self.error(line, "process", f"process {p} completes with no invoke outstanding")
        slot, inv = found
        for name in ("f", "key"):
            if event[name] != inv[name]:
                raise self.error(
                    line, name, f"completion does not match its invoke at index {inv['index']}"
                )
        value = event.get("value")
        if inv["f"] != "read" and value != inv.get("value"):
            raise self.error(
                line,
                "value",
                f"{_show(value)} differs from {_show(inv.get('value'))} of its invoke at index "
                f"{inv['index']}",
            )
        if event["time"] < inv["time"]:
            raise self.error(
                line, "time", f"completion at {event['time']} precedes its invoke at {inv['time']}"
            )
        type_ = event["type"]
        if type_ == "info":
            self.crashed.add(p)
        self.ops[slot] = _record(inv, event)

    def finish(self) -> list[OpRecord]:
        """The operations in invoke order; invokes never completed count as ``info``."""
        for slot, inv in self.outstanding.values():
            self.ops[slot] = _record(inv, None)
        self.outstanding.clear()
        return [op for op in self.ops if op is not None]


def _record(inv: dict[str, Any], done: dict[str, Any] | None) -> OpRecord:
    value = inv.get("value")
    if type(value) is list:
        value = (value[0], value[1])
    if done is None:
        return OpRecord(
            inv["index"], inv["process"], inv["f"], inv["key"], value, "info", inv["time"],
            None, None, None, inv.get("node"), None,
        )  # fmt: skip
    return OpRecord(
        inv["index"], inv["process"], inv["f"], inv["key"], value, done["type"], inv["time"],
        done["time"], done.get("value"), done.get("error"), done.get("node") or inv.get("node"),
        done["index"],
    )  # fmt: skip


_DECODE = json.JSONDecoder().raw_decode


def decode_lines(lines: Iterable[str], path: str) -> Iterator[tuple[int, Any]]:
    """``(line number, decoded JSON)`` for each non-blank line."""
    decode = _DECODE
    for line_no, raw in enumerate(lines, start=1):
        try:
            obj, end = decode(raw)
        except ValueError:
            if not raw or raw.isspace():
                continue
            obj, end = None, -1
        if end < 0 or (end < len(raw) and not raw[end:].isspace()):
            raise HistoryError(f"not valid JSON: {raw.strip()[:60]!r}", path=path, line=line_no)
        yield line_no, obj


def parse_records(lines: Iterable[str], path: str = "<history>") -> list[OpRecord]:
    """Validate history lines and pair them into operations (blank lines are skipped)."""
    reader = EventReader(path)
    for line_no, event in decode_lines(lines, path):
        reader.feed(event, line_no)
    return reader.finish()


def records_from_events(events: Iterable[Any], path: str = "<history>") -> list[OpRecord]:
    """Validate and pair events given as dicts (HISTORY.md fields) or objects with those
    attributes (such as :class:`harness.history.Op`); the n-th event counts as line n."""
    reader = EventReader(path)
    for n, event in enumerate(events, start=1):
        reader.feed(event if type(event) is dict else _as_dict(event), n)
    return reader.finish()


def _as_dict(event: Any) -> dict[str, Any]:
    out = {name: getattr(event, name) for name in REQUIRED}
    value = getattr(event, "value", None)
    out["value"] = list(value) if isinstance(value, tuple) else value
    for name in ("node", "error"):
        x = getattr(event, name, None)
        if x is not None:
            out[name] = x
    return out


def read_records(path: str | Path) -> list[OpRecord]:
    """Read, validate and pair a ``history.jsonl`` file."""
    name = str(path)
    try:
        with open(path, encoding="utf-8") as fh:
            return parse_records(fh, name)
    except OSError as exc:
        raise HistoryError(f"cannot read: {exc.strerror}", path=name) from None
    except UnicodeDecodeError:
        raise HistoryError("not UTF-8 text", path=name) from None


def _optional_fine(event: dict[str, Any]) -> bool:
    node, error = event.get("node"), event.get("error")
    return (node is None or type(node) is str) and (error is None or type(error) is str)
