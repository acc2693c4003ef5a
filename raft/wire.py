"""The wire format of Raft messages between nodes: one JSON frame per message.

Theory of operation
-------------------
Wire format: one ZeroMQ frame holding a JSON :class:`Envelope` (pydantic): protocol version,
cluster id, and the message as a discriminated union mirroring :mod:`raft.core.messages`,
bytes fields in (URL-safe) base64. Outgoing frames are written by a hand-made encoder
(:func:`encode_frame`), not by building pydantic models: it emits exactly the JSON the
:class:`Envelope` model would (a test checks it against the model), at a fraction of the cost,
and the entries of an AppendEntries are encoded once per
:meth:`~raft.transport.ZmqTransport.send_batch` when the same run goes to several followers.
Incoming frames are still validated by the pydantic model (:func:`decode_frame`): a frame that
is malformed, oversized, of another version or from another cluster raises :class:`WireError`,
and the transport logs it (rate-limited) and drops it; it never reaches the core and never
stops the receive loop.
"""

from __future__ import annotations

import base64
import functools
import json
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from raft.core.messages import (
    AppendEntries,
    AppendEntriesResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    InstallSnapshotResponse,
    Message,
    RequestVote,
    RequestVoteResponse,
    TimeoutNow,
)
from raft.core.types import ConfState, EntryKind, LogEntry, NodeId, SnapshotMeta

__all__ = [
    "MAX_FRAME_BYTES",
    "PROTOCOL_VERSION",
    "Envelope",
    "WireError",
    "WireMessage",
    "decode_frame",
    "encode_frame",
]

PROTOCOL_VERSION = 1
MAX_FRAME_BYTES = 16 << 20


class _Wire(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, ser_json_bytes="base64", val_json_bytes="base64"
    )


class WireEntry(_Wire):
    index: int = Field(ge=1)
    term: int = Field(ge=0)
    kind: EntryKind
    command: bytes


class WireConf(_Wire):
    voters: list[str]
    learners: list[str] = []
    promoting: list[str] = []


class WireMeta(_Wire):
    index: int = Field(ge=0)
    term: int = Field(ge=0)
    conf: WireConf


#: longest node id a frame may carry (a node id is a short name; a megabyte of one is not)
MAX_NODE_ID = 256


class _WireMsg(_Wire):
    src: str = Field(max_length=MAX_NODE_ID)
    dst: str = Field(max_length=MAX_NODE_ID)
    term: int = Field(ge=0)


class WireRequestVote(_WireMsg):
    type: Literal["request_vote"] = "request_vote"
    last_log_index: int
    last_log_term: int
    pre_vote: bool = False
    transfer: bool = False


class WireRequestVoteResponse(_WireMsg):
    type: Literal["request_vote_response"] = "request_vote_response"
    granted: bool
    pre_vote: bool = False


class WireAppendEntries(_WireMsg):
    type: Literal["append_entries"] = "append_entries"
    prev_log_index: int
    prev_log_term: int
    entries: list[WireEntry]
    commit: int


class WireAppendEntriesResponse(_WireMsg):
    type: Literal["append_entries_response"] = "append_entries_response"
    success: bool
    match_index: int = 0
    reject_index: int = 0
    hint_index: int = 0
    hint_term: int = 0


class WireHeartbeat(_WireMsg):
    type: Literal["heartbeat"] = "heartbeat"
    commit: int
    context: int = 0


class WireHeartbeatResponse(_WireMsg):
    type: Literal["heartbeat_response"] = "heartbeat_response"
    context: int = 0


class WireInstallSnapshot(_WireMsg):
    type: Literal["install_snapshot"] = "install_snapshot"
    meta: WireMeta
    offset: int = Field(ge=0)
    data: bytes
    done: bool


class WireInstallSnapshotResponse(_WireMsg):
    type: Literal["install_snapshot_response"] = "install_snapshot_response"
    snapshot_index: int
    next_offset: int
    match_index: int = 0


class WireTimeoutNow(_WireMsg):
    type: Literal["timeout_now"] = "timeout_now"


WireMessage = Annotated[
    WireRequestVote
    | WireRequestVoteResponse
    | WireAppendEntries
    | WireAppendEntriesResponse
    | WireHeartbeat
    | WireHeartbeatResponse
    | WireInstallSnapshot
    | WireInstallSnapshotResponse
    | WireTimeoutNow,
    Field(discriminator="type"),
]

#: core message class -> its wire model; flat messages convert field by field
_WIRE: dict[type, type[_WireMsg]] = {
    RequestVote: WireRequestVote,
    RequestVoteResponse: WireRequestVoteResponse,
    AppendEntries: WireAppendEntries,
    AppendEntriesResponse: WireAppendEntriesResponse,
    Heartbeat: WireHeartbeat,
    HeartbeatResponse: WireHeartbeatResponse,
    InstallSnapshot: WireInstallSnapshot,
    InstallSnapshotResponse: WireInstallSnapshotResponse,
    TimeoutNow: WireTimeoutNow,
}
_CORE: dict[type[_WireMsg], type] = {w: c for c, w in _WIRE.items()}


class Envelope(_Wire):
    """One frame on the wire."""

    v: int
    cluster: str
    msg: WireMessage


class WireError(ValueError):
    """A received frame was not a valid message for this node (it is dropped)."""


def _conf_to_core(w: WireConf) -> ConfState:
    return ConfState(
        frozenset(NodeId(n) for n in w.voters),
        frozenset(NodeId(n) for n in w.learners),
        frozenset(NodeId(n) for n in w.promoting),
    )


def _to_wire(msg: Message) -> _WireMsg:
    model = _WIRE[type(msg)]
    if isinstance(msg, AppendEntries):
        entries = [
            WireEntry(index=e.index, term=e.term, kind=e.kind, command=e.command)
            for e in msg.entries
        ]
        return WireAppendEntries(
            src=msg.src,
            dst=msg.dst,
            term=msg.term,
            prev_log_index=msg.prev_log_index,
            prev_log_term=msg.prev_log_term,
            entries=entries,
            commit=msg.commit,
        )
    return model.model_validate(msg, from_attributes=True)


#: wire model -> the names of its fields the core message takes
_FIELDS: dict[type[_WireMsg], tuple[str, ...]] = {
    w: tuple(n for n in w.model_fields if n not in ("type", "src", "dst")) for w in _CORE
}


def _to_core(w: _WireMsg) -> Message:
    fields = {name: getattr(w, name) for name in _FIELDS[type(w)]}
    fields["src"], fields["dst"] = NodeId(w.src), NodeId(w.dst)
    if isinstance(w, WireAppendEntries):
        fields["entries"] = tuple(LogEntry(e.index, e.term, e.command, e.kind) for e in w.entries)
    elif isinstance(w, WireInstallSnapshot):
        m = w.meta
        fields["meta"] = SnapshotMeta(m.index, m.term, _conf_to_core(m.conf))
    msg: Message = _CORE[type(w)](**fields)
    return msg


def _model_frame(msg: Message, cluster: str) -> bytes:
    """The frame as the pydantic model writes it: the reference :func:`encode_frame` matches."""
    env = Envelope(v=PROTOCOL_VERSION, cluster=cluster, msg=_to_wire(msg))
    return env.model_dump_json().encode()


def _b(v: bool) -> str:
    return "true" if v else "false"


@functools.lru_cache(maxsize=1024)
def _str(v: str) -> str:
    """A JSON string (node ids and cluster names repeat: cached)."""
    return json.dumps(v, ensure_ascii=False)


def _bytes(v: bytes) -> str:
    return '"' + base64.urlsafe_b64encode(v).decode("ascii") + '"'


def _entries_json(entries: tuple[LogEntry, ...]) -> str:
    parts = [
        f'{{"index":{e.index},"term":{e.term},"kind":{int(e.kind)},"command":{_bytes(e.command)}}}'
        for e in entries
    ]
    return "[" + ",".join(parts) + "]"


def _names(nodes: frozenset[NodeId]) -> str:
    return "[" + ",".join(_str(n) for n in sorted(nodes)) + "]"


def _body(msg: Message, entries: str | None = None) -> str:
    """The message's fields after ``term``, as the wire model orders them."""
    m = msg
    if isinstance(m, AppendEntries):
        run = _entries_json(m.entries) if entries is None else entries
        return (
            f',"type":"append_entries","prev_log_index":{m.prev_log_index},'
            f'"prev_log_term":{m.prev_log_term},"entries":{run},"commit":{m.commit}}}'
        )
    if isinstance(m, AppendEntriesResponse):
        return (
            f',"type":"append_entries_response","success":{_b(m.success)},'
            f'"match_index":{m.match_index},"reject_index":{m.reject_index},'
            f'"hint_index":{m.hint_index},"hint_term":{m.hint_term}}}'
        )
    if isinstance(m, Heartbeat):
        return f',"type":"heartbeat","commit":{m.commit},"context":{m.context}}}'
    if isinstance(m, HeartbeatResponse):
        return f',"type":"heartbeat_response","context":{m.context}}}'
    if isinstance(m, RequestVote):
        return (
            f',"type":"request_vote","last_log_index":{m.last_log_index},'
            f'"last_log_term":{m.last_log_term},"pre_vote":{_b(m.pre_vote)},'
            f'"transfer":{_b(m.transfer)}}}'
        )
    if isinstance(m, RequestVoteResponse):
        return (
            f',"type":"request_vote_response","granted":{_b(m.granted)},'
            f'"pre_vote":{_b(m.pre_vote)}}}'
        )
    if isinstance(m, InstallSnapshot):
        meta, c = m.meta, m.meta.conf
        conf = (
            f'{{"voters":{_names(c.voters)},"learners":{_names(c.learners)},'
            f'"promoting":{_names(c.promoting)}}}'
        )
        return (
            f',"type":"install_snapshot","meta":{{"index":{meta.index},"term":{meta.term},'
            f'"conf":{conf}}},"offset":{m.offset},"data":{_bytes(m.data)},"done":{_b(m.done)}}}'
        )
    if isinstance(m, InstallSnapshotResponse):
        return (
            f',"type":"install_snapshot_response","snapshot_index":{m.snapshot_index},'
            f'"next_offset":{m.next_offset},"match_index":{m.match_index}}}'
        )
    if isinstance(m, TimeoutNow):
        return ',"type":"timeout_now"}'
    raise TypeError(f"not a Raft message: {type(msg).__name__}")


def _head(cluster: str) -> str:
    return f'{{"v":{PROTOCOL_VERSION},"cluster":{_str(cluster)},"msg":{{"src":'


def _frame(head: str, msg: Message, entries: str | None = None) -> bytes:
    body = _body(msg, entries)
    return f'{head}{_str(msg.src)},"dst":{_str(msg.dst)},"term":{msg.term}{body}}}'.encode()


def encode_frame(msg: Message, cluster: str) -> bytes:
    """The wire frame carrying ``msg`` for ``cluster`` (the :class:`Envelope` JSON)."""
    return _frame(_head(cluster), msg)


def decode_frame(frame: bytes, cluster: str, max_bytes: int = MAX_FRAME_BYTES) -> Message:
    """The message in ``frame``; ``WireError`` if it is not one for ``cluster``."""
    if len(frame) > max_bytes:
        raise WireError(f"frame of {len(frame)} bytes exceeds the {max_bytes}-byte limit")
    try:
        env = Envelope.model_validate_json(frame)
    except ValidationError as exc:
        raise WireError(f"malformed frame: {_first_error(exc)}") from None
    if env.v != PROTOCOL_VERSION:
        raise WireError(f"protocol version {env.v}, expected {PROTOCOL_VERSION}")
    if env.cluster != cluster:
        raise WireError(f"frame from cluster {env.cluster!r}, this is {cluster!r}")
    try:
        return _to_core(env.msg)
    except (TypeError, ValueError) as exc:
        raise WireError(f"invalid message: {exc}") from None


def _first_error(exc: ValidationError) -> str:
    err = exc.errors(include_url=False, include_input=False)[0]
    loc = ".".join(str(p) for p in err["loc"])
    return f"{loc}: {err['msg']}" if loc else str(err["msg"])
