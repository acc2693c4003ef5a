"""Exactly-once from the replayed log: the committed log through an independent KV model.

Theory of operation
-------------------
The nodes' final logs (read from disk by :mod:`harness.replay`) give the committed log: for
every index up to the committed index, the entry a majority of nodes hold. This module replays
it through its own small model of the KV store, written from the store's documented semantics
(``raft/kv.py``'s docstring), never with the node's code: a command carries ``client`` and
``seq``; the first time a ``(client, seq)`` appears it takes effect (a write sets its key, a
cas sets it if the key holds ``expected``, ``null`` meaning absent); a later copy of the same
``(client, seq)`` (a retry that was appended again) and a lower ``seq`` take no effect. So in
the model each ``(client, seq)`` takes effect at most once, at a known log index.

The history is then held against the model. A history operation is tied to its log entries by
its client session: the workload's process ``p`` is client ``w<seed>-p<p>`` and numbers its
writes and cas operations 1, 2, ... (:func:`harness.workload.client_id`). Anomalies:

* ``ok_not_in_log`` — a write or cas acknowledged ``ok`` is not in the committed log;
* ``ok_without_effect`` — a cas acknowledged ``ok`` mismatched at its index in the model;
* ``fail_took_effect`` — an operation answered ``fail`` (a cas ``mismatch`` included) took
  effect in the model: e.g. a retried cas appended twice, applied twice by a broken session
  table, whose client was told "mismatch" by the second application;
* ``mismatch_not_in_log`` — a cas answered ``mismatch`` has no committed entry (a mismatch is
  the result of applying it, so it must have been committed);
* ``read_unwritten`` — a read returned a value no operation in the committed log set;
* ``stale_read`` — a read returned a value that the log had already replaced at or before
  the index of an operation acknowledged before the read began (a duplicate applied again
  shows as such a read).

Each anomaly names the operation (history index, process, client, seq), the log indexes and
the nodes whose final logs hold them. ``info`` operations constrain nothing. When every
node's log starts after a snapshot, the model starts from the newest such snapshot's image
(sessions included) and operations it may hide are not judged; so it does when no node holds
any entry at all (everything compacted). A log whose commands carry no
session of this run's clients (another system, another workload) is not applicable; an
empty log under acknowledged writes is judged (they were all lost).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from harness.history import Op, Operation, pair_operations
from harness.replay import NodeStorage, ReplayResult
from harness.workload import client_id
from raft.core.types import EntryKind, LogEntry
from raft.storage import SNAPSHOT_NAME, read_snapshot

MAX_ANOMALIES = 20


@dataclass(slots=True)
class Effect:
    """Where a ``(client, seq)`` first appears in the committed log, and what it did there."""

    index: int
    f: str
    key: str
    applied: bool  #: a write, or a cas whose expected value matched
    found: int | None  #: a cas: the register's value at its index
    new: int | None  #: the value it set (if applied) or would have set
    duplicates: list[int] = field(default_factory=list)  #: later copies (no effect)


@dataclass(slots=True)
class Model:
    """The independent KV model, replayed over the committed log."""

    state: dict[str, int] = field(default_factory=dict)
    sessions: dict[str, int] = field(default_factory=dict)  #: client -> last seq applied
    effects: dict[tuple[str, int], Effect] = field(default_factory=dict)
    #: per key, (index, value) for every effective change, in log order
    changes: dict[str, list[tuple[int, int]]] = field(default_factory=lambda: defaultdict(list))
    stale: list[int] = field(default_factory=list)  #: indexes of commands with a lower seq
    start: int = 1  #: the first index replayed (after a snapshot, if the prefix is gone)

    def apply(self, index: int, command: bytes) -> None:
        try:
            cmd = json.loads(command)
        except ValueError:
            return
        if not isinstance(cmd, dict) or cmd.get("op") not in ("write", "cas"):
            return
        key, client, seq = cmd.get("key"), cmd.get("client"), cmd.get("seq")
        if not isinstance(key, str):
            return
        if isinstance(client, str) and isinstance(seq, int):
            last = self.sessions.get(client, 0)
            if seq < last:
                self.stale.append(index)
                return
            if seq == last:
                found = self.effects.get((client, seq))
                if found is not None:
                    found.duplicates.append(index)
                return
            self.sessions[client] = seq
        effect = self._execute(index, cmd, key)
        if isinstance(client, str) and isinstance(seq, int) and effect is not None:
            self.effects[(client, seq)] = effect

    def _execute(self, index: int, cmd: dict[str, Any], key: str) -> Effect | None:
        current = self.state.get(key)
        if cmd["op"] == "write":
            value = cmd.get("value")
            if not isinstance(value, int):
                return None
            self._set(index, key, value)
            return Effect(index, "write", key, True, current, value)
        new, expected = cmd.get("new"), cmd.get("expected")
        if not isinstance(new, int):
            return None
        matched = current == expected
        if matched:
            self._set(index, key, new)
        return Effect(index, "cas", key, matched, current, new)

    def _set(self, index: int, key: str, value: int) -> None:
        self.state[key] = value
        self.changes[key].append((index, value))


def committed_log(replay: ReplayResult) -> tuple[list[LogEntry], NodeStorage | None]:
    """The committed entries every judgement uses: for each index up to the committed index,
    the entry most nodes hold; from index 1, or after the newest snapshot if no node holds
    the prefix (that snapshot's node is returned too)."""
    nodes = list(replay.nodes.values())
    top = replay.committed_index
    for s in nodes:
        for m in s.commits:
            top = max(top, m.index)
    out: list[LogEntry] = []
    base: NodeStorage | None = None
    for index in range(1, top + 1):
        held = [e for s in nodes if (e := s.entry(index)) is not None]
        if not held:
            if out:
                break  # a gap after entries: stop at what is known
            continue
        if not out and index > 1:
            base = max((s for s in nodes if s.snapshot_index >= index - 1),
                       key=lambda s: s.snapshot_index, default=None)  # fmt: skip
            if base is None:
                break
        counts = Counter((e.term, e.command, e.kind) for e in held)
        term, command, kind = counts.most_common(1)[0][0]
        out.append(LogEntry(index, term, command, kind))
    if not out:  # every committed entry is compacted away: the newest snapshot holds them
        base = max((s for s in nodes if s.snapshot_index > 0),
                   key=lambda s: s.snapshot_index, default=None)  # fmt: skip
    return out, base


def _seed_model(base: NodeStorage | None) -> Model | None:
    """An empty model, or one holding ``base``'s snapshot image (None: unreadable)."""
    model = Model()
    if base is None or base.snapshot is None:
        return model
    try:
        snap = read_snapshot(base.directory / SNAPSHOT_NAME)
        if snap is None:
            return None
        image = json.loads(snap[1])
        model.state = {str(k): int(v) for k, v in image["data"].items()}
        model.sessions = {str(c): int(seq) for c, seq, *_ in image["sessions"]}
    except (ValueError, KeyError, TypeError):
        return None
    model.start = base.snapshot_index + 1
    return model


def sessions_of(operations: Sequence[Operation], seed: int) -> dict[tuple[str, int], Operation]:
    """(client, seq) -> the write or cas operation of the history that used it."""
    out: dict[tuple[str, int], Operation] = {}
    counts: Counter[int] = Counter()
    for op in operations:
        if op.invoke.f in ("write", "cas"):
            counts[op.invoke.process] += 1
            out[(client_id(seed, op.invoke.process), counts[op.invoke.process])] = op
    return out


class _Judge:
    def __init__(self, model: Model, replay: ReplayResult, entries: list[LogEntry]) -> None:
        self.model = model
        self.replay = replay
        self.terms = {e.index: e.term for e in entries}
        self.anomalies: list[dict[str, Any]] = []
        self.unjudged = 0

    def holders(self, index: int) -> list[str]:
        term = self.terms.get(index)
        return sorted(
            n for n, s in self.replay.nodes.items()
            if (e := s.entry(index)) is not None and e.term == term
        )  # fmt: skip

    def flag(
        self, kind: str, op: Operation, text: str, indexes: Sequence[int], **more: Any
    ) -> None:
        done = op.completion
        self.anomalies.append({
            "kind": kind, "detail": text, "op_index": op.invoke.index,
            "process": op.invoke.process, "f": op.invoke.f, "key": op.invoke.key,
            "value": op.invoke.value if done is None or done.type != "ok" else done.value,
            "outcome": op.outcome, "answered_by": None if done is None else done.node,
            "log_indexes": list(indexes),
            "nodes": {str(i): self.holders(i) for i in indexes}, **more,
        })  # fmt: skip

    def judge_update(self, session: tuple[str, int], op: Operation) -> None:
        eff = self.model.effects.get(session)
        what = f"{op.invoke.f} {op.invoke.key} {op.invoke.value}"
        who = f"{what} (client {session[0]} seq {session[1]})"
        outcome = op.outcome
        if eff is None:
            if self.model.start > 1 and self.model.sessions.get(session[0], 0) >= session[1]:
                self.unjudged += 1  # it may sit in the snapshot's prefix
            elif outcome == "ok":
                self.flag("ok_not_in_log", op, f"{who} was acknowledged but is not in the "
                          "committed log", [], client=session[0], seq=session[1])  # fmt: skip
            elif outcome == "fail" and self._error(op) == "mismatch":
                self.flag("mismatch_not_in_log", op, f"{who} was answered 'mismatch' but has "
                          "no committed entry", [], client=session[0], seq=session[1])  # fmt: skip
            return
        where = [eff.index, *eff.duplicates]
        copies = f" (copies at {eff.duplicates})" if eff.duplicates else ""
        if outcome == "ok" and not eff.applied:
            self.flag("ok_without_effect", op, f"{who} was acknowledged, but at index "
                      f"{eff.index} the register held {eff.found}{copies}", where,
                      client=session[0], seq=session[1])  # fmt: skip
        elif outcome == "fail" and eff.applied:
            self.flag("fail_took_effect", op, f"{who} was answered "
                      f"'{self._error(op) or 'fail'}' but took effect at index {eff.index}"
                      f"{copies}", where, client=session[0], seq=session[1])  # fmt: skip

    @staticmethod
    def _error(op: Operation) -> str | None:
        return None if op.completion is None else op.completion.error

    def judge_read(self, op: Operation, known: dict[str, list[tuple[int, int]]]) -> None:
        done = op.completion
        assert done is not None
        key, value = op.invoke.key, done.value
        changes = self.model.changes.get(key, [])
        if value is None:
            born, end = 0, changes[0][0] if changes else None
        else:
            at = next((k for k, (_, v) in enumerate(changes) if v == value), None)
            if at is None:
                if self.model.start > 1:
                    self.unjudged += 1
                    return
                self.flag("read_unwritten", op, f"read {key} returned {value}, which no "
                          "operation of the committed log wrote", [])  # fmt: skip
                return
            born = changes[at][0]
            end = changes[at + 1][0] if at + 1 < len(changes) else None
        before = [i for t, i in known.get(key, []) if t < op.invoke.time]
        newest = max(before, default=0)
        if end is not None and end <= newest:
            self.flag("stale_read", op, f"read {key} returned {value} (set at index {born}, "
                      f"replaced at {end}), but index {newest} was acknowledged before the "
                      "read began", [i for i in (born, end, newest) if i])  # fmt: skip


def check_exactly_once(replay: ReplayResult, history: Sequence[Op], *, seed: int) -> dict[str, Any]:
    """The ``exactly_once`` row of :mod:`harness.raft_checks` (see the module docstring)."""
    name = "exactly_once"
    entries, base = committed_log(replay)
    model = _seed_model(base)
    if model is None:
        return _row(name, None, "the snapshot under the committed log could not be read")
    normal = [e for e in entries if e.kind is EntryKind.NORMAL]
    for e in normal:
        model.apply(e.index, e.command)
    operations = pair_operations(history)
    sessions = sessions_of(operations, seed)
    acked = any(op.outcome == "ok" for op in sessions.values())
    if not any(s in sessions for s in model.effects) and (normal or not acked):
        # commands in another form, or nothing to hold against them: no data for this check
        return _row(name, None, f"no command of this run's clients in {len(entries)} committed "
                    "entries (no sessions to check)")  # fmt: skip
    judge = _Judge(model, replay, entries)
    for session, op in sessions.items():
        judge.judge_update(session, op)
    known: dict[str, list[tuple[int, int]]] = defaultdict(list)  # key -> (ok time, index)
    for session, op in sessions.items():
        eff = model.effects.get(session)
        if op.outcome == "ok" and eff is not None and eff.applied and op.completion is not None:
            known[eff.key].append((op.completion.time, eff.index))
    for op in operations:
        if op.invoke.f == "read" and op.outcome == "ok":
            judge.judge_read(op, known)
    dups = sum(len(e.duplicates) for e in model.effects.values())
    saw = (
        f"{len(entries)} committed entries from index {model.start}: {len(model.effects)} "
        f"sessions' commands, {dups} duplicate(s) and {len(model.stale)} stale one(s) without "
        f"effect; {len(sessions)} writes/cas and "
        f"{sum(op.invoke.f == 'read' for op in operations)} reads held against them"
    )
    if judge.unjudged:
        saw += f" ({judge.unjudged} not judged: before the snapshot)"
    if judge.anomalies:
        saw = f"{judge.anomalies[0]['kind']}: {judge.anomalies[0]['detail']}; {saw}"
    return _row(name, not judge.anomalies, saw, judge.anomalies)


def _row(
    name: str, ok: bool | None, saw: str, anomalies: Sequence[dict[str, Any]] = ()
) -> dict[str, Any]:
    return {
        "name": name,
        "ok": ok,
        "saw": saw,
        "violations": list(anomalies[:MAX_ANOMALIES]),
        "violation_count": len(anomalies),
    }
