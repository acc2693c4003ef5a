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
  integers; ``type`` and ``f`` from their sets; ``key`` a string; ``node``, ``error``,
  ``client`` and ``group`` strings or absent), no other field, and the shape of ``value`` for
  ``f`` and ``type``;
* per stream: ``index`` counts events from 0; ``time`` never goes backwards (the file is in the
  order things happened, on one clock); a completion follows an invoke of the same process,
  for the same ``f`` and ``key`` (and, for write and cas, the same value); a process with an
  operation outstanding may not invoke again, and a process that got ``info`` never does.

Big files are read by :func:`read_records` with msgspec, which decodes a line and checks its
field types in C, several times faster than ``json`` plus the checks in Python; a line it
refuses (or one it cannot represent, such as an integer beyond 64 bits) goes through the
Python checks, which accept it or name the field. Both feed the same stream checks, so a file
gets the same verdict and the same message either way (``tests/test_checker_properties.py``
compares them on broken lines). Small files skip msgspec, whose import costs more than it
saves there.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TYPES = frozenset(("invoke", "ok", "fail", "info"))
FUNCTIONS = frozenset(("read", "write", "cas"))
OPTIONAL = ("node", "error", "client", "group")  #: optional string fields
FIELDS = frozenset(("index", "time", "process", "type", "f", "key", "value", *OPTIONAL))
REQUIRED = ("index", "time", "process", "type", "f", "key")

FAST_MIN_BYTES = 1 << 20  #: files at least this big are read with msgspec (import: ~20 ms)


class Event:
    """One event whose fields have their JSON types (a cas's ``value`` a tuple). msgspec
    decodes into a twin of this class (:func:`fast_decoder`), with the same attributes."""

    __slots__ = (
        "client", "error", "f", "group", "index", "key", "node", "process", "time", "type",
        "value",
    )  # fmt: skip

    def __init__(
        self,
        index: int,
        time: int,
        process: int,
        type: str,
        f: str,
        key: str,
        value: Any = None,
        node: str | None = None,
        error: str | None = None,
        client: str | None = None,
        group: str | None = None,
    ) -> None:
        self.index, self.time, self.process, self.type, self.f = index, time, process, type, f
        self.key, self.value, self.node, self.error = key, value, node, error
        self.client, self.group = client, group


_fast: Any = None


def fast_decoder() -> Any:
    """A msgspec decoder of one event line (imported on first use): field types and ranges
    are checked in C; the shape of ``value`` for ``f`` and ``type`` is checked afterwards."""
    global _fast
    if _fast is None:
        from typing import Annotated, Literal

        import msgspec

        count = Annotated[int, msgspec.Meta(ge=0)]
        fast_event = msgspec.defstruct(
            "FastEvent",
            [
                ("index", count),
                ("time", count),
                ("process", count),
                ("type", Literal["invoke", "ok", "fail", "info"]),
                ("f", Literal["read", "write", "cas"]),
                ("key", str),
                ("value", int | tuple[int | None, int] | None, None),
                *((name, str | None, None) for name in OPTIONAL),
            ],
            forbid_unknown_fields=True,
            gc=False,
        )
        _fast = (
            msgspec.json.Decoder(fast_event).decode,
            (msgspec.ValidationError, msgspec.DecodeError),
        )
    return _fast


def _event(data: dict[str, Any]) -> Event:
    """An :class:`Event` from a dict whose fields were checked."""
    value = data.get("value")
    get = data.get
    return Event(
        data["index"], data["time"], data["process"], data["type"], data["f"], data["key"],
        (value[0], value[1]) if type(value) is list else value,
        get("node"), get("error"), get("client"), get("group"),
    )  # fmt: skip


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
    operation that never completed counts as ``info``). ``node`` is the completion's (else the
    invoke's), ``client`` and ``group`` the invoke's (else the completion's).
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
    client: str | None = None
    group: str | None = None

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
            "client": self.client,
            "group": self.group,
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

    Feed decoded JSON objects in file order with :meth:`feed` (or raw lines with
    :meth:`feed_line`); :meth:`finish` returns the operations in invoke order.
    ``outstanding`` maps a process to the invoke it is waiting on.
    """

    def __init__(self, path: str = "<history>") -> None:
        self.path = path
        self.count = 0  # events accepted so far (the next index)
        self.last_time = 0
        self.last_time_line = 0
        self.outstanding: dict[int, tuple[int, Event]] = {}  # process -> (slot, invoke)
        self.crashed: set[int] = set()
        self.ops: list[OpRecord | None] = []

    def error(self, line: int, field: str, message: str) -> HistoryError:
        return HistoryError(message, path=self.path, line=line, field=field)

    def feed(self, event: Any, line: int) -> None:
        """Check one event (a decoded JSON object) read from ``line``; pair it."""
        if type(event) is not dict:
            raise self.error(line, "", f"an event is a JSON object, got {_show(event)}")
        self._check_fields(event, line)
        self._accept(_event(event), line)

    def feed_line(self, raw: bytes, line: int, fast: Any = None) -> None:
        """Check one raw line (not blank): with ``fast`` (:func:`fast_decoder`) by msgspec
        first; a line it refuses, or any line without it, takes the Python checks, which name
        the problem."""
        ev = None
        if fast is not None:
            try:
                ev = fast[0](raw)
            except fast[1]:
                pass
        if ev is not None:
            f, value = ev.f, ev.value
            if f == "write":
                fine = type(value) is int
            elif f == "read":
                fine = value is None if ev.type == "invoke" else type(value) is not tuple
            else:
                fine = type(value) is tuple
            if fine:
                self._accept(ev, line)
                return
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise HistoryError("not UTF-8 text", path=self.path, line=line) from None
        for _, obj in decode_lines([text], self.path, first=line):
            self.feed(obj, line)

    def _accept(self, ev: Event, line: int) -> None:
        """The stream rules, for an event whose fields are fine."""
        if ev.index != self.count:
            raise self.error(line, "index", f"expected {self.count}, got {ev.index}")
        if ev.type == "invoke":
            self._invoke(ev, line)
        else:
            self._complete(ev, line)
        time = ev.time
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
        except (KeyError, TypeError):  # a field missing, or one unhashable (an object)
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
        if type(event["type"]) is not str or event["type"] not in TYPES:
            raise self.error(
                line, "type", f"one of invoke, ok, fail, info; got {_show(event['type'])}"
            )
        if type(event["f"]) is not str or event["f"] not in FUNCTIONS:
            raise self.error(line, "f", f"one of read, write, cas; got {_show(event['f'])}")
        if type(event["key"]) is not str:
            raise self.error(line, "key", f"a string, got {_show(event['key'])}")
        for name in OPTIONAL:
            x = event.get(name)
            if x is not None and type(x) is not str:
                raise self.error(line, name, f"a string or null, got {_show(x)}")
        problem = value_problem(event["f"], event["type"], event.get("value"))
        if problem:
            raise self.error(line, "value", problem)

    def _invoke(self, ev: Event, line: int) -> None:
        p = ev.process
        if p in self.crashed:
            raise self.error(line, "process", f"process {p} got info and may not invoke again")
        previous = self.outstanding.get(p)
        if previous is not None:
            raise self.error(
                line,
                "process",
                f"process {p} invoked while its operation at index "
                f"{previous[1].index} is outstanding",
            )
        self.outstanding[p] = (len(self.ops), ev)
        self.ops.append(None)

    def _complete(self, ev: Event, line: int) -> None:
        p = ev.process
        found = self.outstanding.pop(p, None)
        if found is None:
            raise self.error(line, "process", f"process {p} completes with no invoke outstanding")
        slot, inv = found
        if ev.f != inv.f:
            raise self.error(
                line, "f", f"completion does not match its invoke at index {inv.index}"
            )
        if ev.key != inv.key:
            raise self.error(
                line, "key", f"completion does not match its invoke at index {inv.index}"
            )
        if inv.f != "read" and ev.value != inv.value:
            raise self.error(
                line,
                "value",
                f"{_show(ev.value)} differs from {_show(inv.value)} of its invoke at index "
                f"{inv.index}",
            )
        if ev.time < inv.time:
            raise self.error(
                line, "time", f"completion at {ev.time} precedes its invoke at {inv.time}"
            )
        if ev.type == "info":
            self.crashed.add(p)
        self.ops[slot] = _record(inv, ev)

    def finish(self) -> list[OpRecord]:
        """The operations in invoke order; invokes never completed count as ``info``."""
        for slot, inv in self.outstanding.values():
            self.ops[slot] = _record(inv, None)
        self.outstanding.clear()
        return [op for op in self.ops if op is not None]


def _record(inv: Event, done: Event | None) -> OpRecord:
    if done is None:
        return OpRecord(
            inv.index, inv.process, inv.f, inv.key, inv.value, "info", inv.time, None, None,
            None, inv.node, None, inv.client, inv.group,
        )  # fmt: skip
    return OpRecord(
        inv.index, inv.process, inv.f, inv.key, inv.value, done.type, inv.time, done.time,
        done.value, done.error, done.node or inv.node, done.index, inv.client or done.client,
        inv.group or done.group,
    )  # fmt: skip


_DECODE = json.JSONDecoder().raw_decode


def decode_lines(lines: Iterable[str], path: str, first: int = 1) -> Iterator[tuple[int, Any]]:
    """``(line number, decoded JSON)`` for each non-blank line (numbered from ``first``)."""
    decode = _DECODE
    for line_no, raw in enumerate(lines, start=first):
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
    for name in OPTIONAL:
        x = getattr(event, name, None)
        if x is not None:
            out[name] = x
    return out


def read_records(path: str | Path, fast: bool | None = None) -> list[OpRecord]:
    """Read, validate and pair a ``history.jsonl`` file; with msgspec when ``fast`` (default:
    for files of :data:`FAST_MIN_BYTES` or more; smaller ones start sooner without it)."""
    name = str(path)
    reader = EventReader(name)
    feed = reader.feed_line
    try:
        with open(path, "rb") as fh:
            if fast is None:
                fast = os.fstat(fh.fileno()).st_size >= FAST_MIN_BYTES
            decoder = fast_decoder() if fast else None
            for line_no, raw in enumerate(fh, start=1):
                if raw.isspace() or not raw:
                    continue
                feed(raw, line_no, decoder)
    except OSError as exc:
        raise HistoryError(f"cannot read: {exc.strerror}", path=name) from None
    return reader.finish()


def _optional_fine(event: dict[str, Any]) -> bool:
    for name in OPTIONAL:
        x = event.get(name)
        if x is not None and type(x) is not str:
            return False
    return True
