"""The KV state machine against a deliberately simple dict model (hypothesis), plus sessions."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from raft.kv import Cas, KVStore, Read, Write, decode_result, encode_command

KEYS = st.sampled_from(["a", "b", "c"])
VALUES = st.integers(min_value=-3, max_value=3)
OPS = st.one_of(
    st.builds(Read, key=KEYS),
    st.builds(Write, key=KEYS, value=VALUES),
    st.builds(Cas, key=KEYS, expected=st.none() | VALUES, new=VALUES),
)


def model_apply(model: dict[str, int], op: Read | Write | Cas) -> dict[str, object]:
    """The reference: what a plain dict says the result must be."""
    if isinstance(op, Read):
        return {"ok": True, "value": model.get(op.key)}
    if isinstance(op, Write):
        model[op.key] = op.value
        return {"ok": True, "value": None}
    if model.get(op.key) != op.expected:
        return {"ok": False, "value": model.get(op.key), "error": "mismatch"}
    model[op.key] = op.new
    return {"ok": True, "value": None}


def result_dict(data: bytes) -> dict[str, object]:
    r = decode_result(data)
    out: dict[str, object] = {"ok": r.ok, "value": r.value}
    if r.error is not None:
        out["error"] = r.error
    return out


@given(st.lists(OPS, max_size=60))
def test_matches_dict_model(ops: list[Read | Write | Cas]) -> None:
    kv, model = KVStore(), {}
    for op in ops:
        assert result_dict(kv.apply(encode_command(op))) == model_apply(model, op)
    assert kv.data == model


@given(st.lists(OPS, max_size=40), st.integers(min_value=0, max_value=40), st.data())
def test_snapshot_restore_is_transparent(
    ops: list[Read | Write | Cas], cut: int, data: st.DataObject
) -> None:
    """Snapshotting at any point and continuing on a restored copy changes nothing."""
    kv = KVStore(session_ttl=5)
    clients = data.draw(st.lists(st.sampled_from(["p", "q", None]), min_size=len(ops)))
    commands = [
        encode_command(op, c, i + 1) if c else encode_command(op)
        for i, (op, c) in enumerate(zip(ops, clients, strict=False))
    ]
    cut = min(cut, len(commands))
    for c in commands[:cut]:
        kv.apply(c)
    copy = KVStore(session_ttl=5)
    copy.restore(kv.snapshot())
    for c in commands[cut:]:
        assert copy.apply(c) == kv.apply(c)
    assert copy.snapshot() == kv.snapshot()


@settings(max_examples=50)
@given(st.lists(OPS, min_size=1, max_size=30), st.lists(st.booleans(), min_size=30, max_size=30))
def test_retries_apply_once(ops: list[Read | Write | Cas], retry: list[bool]) -> None:
    """A client that retries any command gets the first result, and the state is as if once."""
    kv, model = KVStore(), {}
    for seq, (op, again) in enumerate(zip(ops, retry, strict=False), start=1):
        expected = model_apply(model, op)
        first = kv.apply(encode_command(op, "client-1", seq))
        assert result_dict(first) == expected
        if again:
            assert kv.apply(encode_command(op, "client-1", seq)) == first
    assert kv.data == model


def test_stale_sequence_is_refused() -> None:
    kv = KVStore()
    kv.apply(encode_command(Write(key="x", value=1), "c", 1))
    kv.apply(encode_command(Write(key="x", value=2), "c", 2))
    r = decode_result(kv.apply(encode_command(Write(key="x", value=9), "c", 1)))
    assert (r.ok, r.error) == (False, "stale")
    assert kv.get("x") == 2


def test_sessions_expire_by_position_not_time() -> None:
    kv = KVStore(session_ttl=3)
    kv.apply(encode_command(Write(key="x", value=1), "old", 1))
    for i in range(3):
        kv.apply(encode_command(Write(key="y", value=i), "busy", i + 1))
    assert "old" in kv.sessions  # idle for exactly ttl commands: kept
    kv.apply(encode_command(Read(key="y"), "busy", 4))
    assert "old" not in kv.sessions
    assert list(kv.sessions) == ["busy"]


def test_bad_commands_are_results_not_crashes() -> None:
    kv = KVStore()
    for raw in [
        b"",
        b"[]",
        b"{}",
        b'{"op":"nope","key":"x"}',
        b'{"op":"write","key":"x"}',
        b'{"op":"write","key":"x","value":"1"}',
        b'{"op":"write","key":"x","value":true}',
        b"\xff",
    ]:
        r = decode_result(kv.apply(raw))
        assert not r.ok
        assert r.error is not None
        assert r.error.startswith("bad command")
    assert kv.data == {}
    assert kv.position == 8


def test_command_encoding_is_compact() -> None:
    raw = encode_command(Cas(key="k", expected=None, new=2), "c1", 7)
    assert b" " not in raw
    assert json.loads(raw) == {
        "op": "cas",
        "key": "k",
        "expected": None,
        "new": 2,
        "client": "c1",
        "seq": 7,
    }
