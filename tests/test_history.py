"""The history model: JSONL round trips, per-event and per-stream validation, pairing."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from harness.history import (
    FaultWriter,
    HistoryError,
    HistoryWriter,
    Op,
    pair_operations,
    parse_history,
    read_faults,
    read_history,
)

EXAMPLE = """\
{"index":0,"time":1200,"process":0,"type":"invoke","f":"write","key":"x","value":3}
{"index":1,"time":1500,"process":1,"type":"invoke","f":"read","key":"x","value":null}
{"index":2,"time":9100,"process":0,"type":"ok","f":"write","key":"x","value":3}
{"index":3,"time":9800,"process":1,"type":"ok","f":"read","key":"x","value":3}
"""


def _line(**fields: object) -> str:
    base: dict[str, object] = {"index": 0, "time": 1, "process": 0, "type": "invoke"}
    base |= {"f": "write", "key": "x", "value": 1}
    base |= fields
    return json.dumps(base)


def test_reads_the_documented_example(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    path.write_text(EXAMPLE)
    events = read_history(path)
    assert [e.type for e in events] == ["invoke", "invoke", "ok", "ok"]
    assert events[3].value == 3
    ops = pair_operations(events)
    assert [(o.invoke.index, o.completion.index if o.completion else None) for o in ops] == [
        (0, 2),
        (1, 3),
    ]


def test_round_trip_through_json_line() -> None:
    events = parse_history(EXAMPLE.splitlines())
    again = parse_history([e.to_json_line() for e in events])
    assert again == events
    assert json.loads(events[1].to_json_line())["value"] is None  # null kept, not dropped


def test_cas_value_is_a_pair_and_round_trips() -> None:
    op = parse_history([_line(f="cas", value=[None, 4])])[0]
    assert op.value == (None, 4)
    assert json.loads(op.to_json_line())["value"] == [None, 4]


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"value": "a"}, "value", "write carries an integer"),
        ({"value": True}, "value", "write carries an integer"),
        ({"f": "cas", "value": [1]}, "value", "[expected, new]"),
        ({"f": "read", "value": 3}, "value", "read invoke carries null"),
        ({"type": "done"}, "type", ""),
        ({"f": "delete"}, "f", ""),
        ({"time": -5}, "time", ""),
        ({"process": "p1"}, "process", ""),
        ({"colour": "red"}, "colour", ""),
        ({"index": 4}, "index", "expected 1, got 4"),
    ],
)
def test_bad_line_names_file_line_and_field(
    fields: dict[str, object], field: str, words: str
) -> None:
    good = _line(process=9, key="y")
    with pytest.raises(HistoryError) as exc:
        parse_history([good, "", _line(**{"index": 1, **fields})], "h.jsonl")
    assert exc.value.line == 3
    assert exc.value.field == field
    assert str(exc.value).startswith(f"h.jsonl:3: field '{field}'")
    assert words in str(exc.value)
    assert isinstance(exc.value, ValueError)


def test_invalid_json_names_the_line() -> None:
    with pytest.raises(HistoryError, match=r"h.jsonl:1: not valid JSON"):
        parse_history(["{nope"], "h.jsonl")


@pytest.mark.parametrize(
    ("lines", "field", "words"),
    [
        ([_line(), _line(index=1, value=2)], "process", "outstanding"),
        ([_line(type="ok")], "process", "no invoke outstanding"),
        ([_line(), _line(index=1, type="ok", key="z")], "key", "does not match"),
        ([_line(), _line(index=1, type="ok", f="cas", value=[1, 2])], "f", "does not match"),
        ([_line(), _line(index=1, type="ok", value=2)], "value", "differs"),
        ([_line(time=9), _line(index=1, type="ok", time=3)], "time", "precedes"),
        (
            [_line(), _line(index=1, type="info"), _line(index=2, time=5)],
            "process",
            "got info",
        ),
    ],
)
def test_stream_rules(lines: list[str], field: str, words: str) -> None:
    with pytest.raises(HistoryError) as exc:
        parse_history(lines, "h.jsonl")
    assert exc.value.field == field
    assert exc.value.line == len(lines)
    assert words in exc.value.message


def test_a_process_may_invoke_again_after_ok_and_fail() -> None:
    lines = [
        _line(),
        _line(index=1, type="ok"),
        _line(index=2, f="cas", value=[1, 2]),
        _line(index=3, type="fail", f="cas", value=[1, 2], error="mismatch"),
        _line(index=4, f="read", value=None),
    ]
    events = parse_history(lines)
    ops = pair_operations(events)
    assert [o.outcome for o in ops] == ["ok", "fail", "info"]  # the last never completed
    assert ops[1].completion is not None
    assert ops[1].completion.error == "mismatch"


def test_missing_file_is_a_history_error(tmp_path: Path) -> None:
    with pytest.raises(HistoryError, match="cannot read"):
        read_history(tmp_path / "absent.jsonl")


def test_writer_assigns_index_time_and_fills_completions(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    with HistoryWriter(path) as w:
        w.invoke(0, "write", "x", 3)
        w.invoke(1, "cas", "x", [3, 4])
        w.complete(0, "ok")
        w.complete(1, "fail", error="mismatch")
        w.invoke(2, "read", "x")
        assert path.read_text().count("\n") == 5  # flushed as it goes
        w.complete(2, "ok", 3, node="n1")
    events = read_history(path)
    assert [e.index for e in events] == list(range(6))
    assert [e.time for e in events] == sorted(e.time for e in events)
    assert events[2].value == 3
    assert events[3].value == (3, 4)
    assert events[5].node == "n1"


def test_writer_refuses_what_the_format_forbids(tmp_path: Path) -> None:
    with HistoryWriter(tmp_path / "h.jsonl") as w:
        w.invoke(0, "write", "x", 1)
        with pytest.raises(HistoryError, match="outstanding"):
            w.invoke(0, "read", "x")
        with pytest.raises(HistoryError, match="no outstanding"):
            w.complete(5, "ok")
        with pytest.raises(HistoryError) as exc:
            w.invoke(1, "write", "x", "seven")  # type: ignore[arg-type]
        assert exc.value.field == "value"
        w.complete(0, "info")
        with pytest.raises(HistoryError, match="got info"):
            w.invoke(0, "write", "x", 2)
    assert len(read_history(tmp_path / "h.jsonl")) == 2  # refused events were not written


def test_writer_is_safe_across_threads(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    with HistoryWriter(path) as w:

        def client(p: int) -> None:
            for i in range(50):
                w.invoke(p, "write", "k", p * 1000 + i)
                w.complete(p, "ok")

        threads = [threading.Thread(target=client, args=(p,)) for p in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    events = read_history(path)
    assert len(events) == 400
    assert all(o.outcome == "ok" for o in pair_operations(events))


def test_faults_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "faults.jsonl"
    with FaultWriter(path) as w:
        w.record("partition", "start", {"groups": [["n1"], ["n2", "n3"]]}, time=10)
        w.record("partition", "stop", time=20)
    faults = read_faults(path)
    assert [(f.index, f.action, f.time) for f in faults] == [(0, "start", 10), (1, "stop", 20)]
    assert faults[0].detail == {"groups": [["n1"], ["n2", "n3"]]}


def test_bad_fault_line_names_field(tmp_path: Path) -> None:
    path = tmp_path / "faults.jsonl"
    path.write_text('{"index":0,"time":1,"fault":"kill","action":"begin","detail":{}}\n')
    with pytest.raises(HistoryError) as exc:
        read_faults(path)
    assert (exc.value.line, exc.value.field) == (1, "action")


def test_op_model_is_frozen() -> None:
    op = Op(index=0, time=0, process=0, type="invoke", f="read", key="x")
    with pytest.raises(ValueError, match="frozen"):
        op.key = "y"  # type: ignore[misc]


def test_client_and_group_are_optional_and_reach_the_records(tmp_path: Path) -> None:
    from harness.checker.events import read_records

    path = tmp_path / "h.jsonl"
    with HistoryWriter(path) as w:
        w.invoke(0, "write", "x", 1, client="c0", group="north")
        w.complete(0, "ok", node="n1")
        w.invoke(1, "read", "x")  # an event without them, as every history before them
        w.complete(1, "ok", 1, node="n2")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0]["client"] == "c0"
    assert lines[0]["group"] == "north"
    assert "client" not in lines[1]
    assert "client" not in lines[2]
    first, second = read_records(path)
    assert (first.client, first.group, first.node) == ("c0", "north", "n1")
    assert (second.client, second.group) == (None, None)
    assert first.to_json()["client"] == "c0"
    assert [op.client for op in read_history(path)] == ["c0", None, None, None]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(path.read_text().replace('"group":"north"', '"group":7'))
    with pytest.raises(HistoryError, match=r"bad.jsonl:1: field 'group': a string or null"):
        read_records(bad)
