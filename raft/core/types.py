"""Plain value types shared by the core, the drivers and storage.

Everything here is immutable (frozen, slotted dataclasses) so a value handed from the core to
a driver can never be changed behind the core's back.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from dataclasses import dataclass, field
from typing import NewType, TypeVar

NodeId = NewType("NodeId", str)

_T = TypeVar("_T")


def fast_init(cls: type[_T]) -> type[_T]:
    """Give a frozen, slotted dataclass a faster ``__init__`` (same signature and defaults).

    The generated one sets each field with ``object.__setattr__`` (to get past the frozen
    ``__setattr__``), which makes creating a frozen instance ~4x slower than a plain one; this
    one calls each slot's descriptor directly. Instances stay frozen, compare, hash and print
    exactly as before. Only for classes whose fields are all plain ``__init__`` parameters.
    """
    params: list[str] = []
    setters: dict[str, object] = {}
    for k, f in enumerate(dataclasses.fields(cls)):  # type: ignore[arg-type]
        if not f.init or f.default_factory is not dataclasses.MISSING:
            raise TypeError(f"fast_init: {cls.__name__}.{f.name} is not a plain field")
        setters[f"_s{k}"] = getattr(cls, f.name).__set__
        if f.default is dataclasses.MISSING:
            params.append(f.name)
        else:
            setters[f"_d{k}"] = f.default
            params.append(f"{f.name}=_d{k}")
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    body = "".join(f"        _s{k}(self, {n})\n" for k, n in enumerate(names)) or "        pass\n"
    src = (
        f"def _make({', '.join(setters)}):\n"
        f"    def __init__(self, {', '.join(params)}):\n{body}"
        "    return __init__\n"
    )
    namespace: dict[str, object] = {}
    exec(src, namespace)  # the source is built above from the dataclass's own field names
    init = namespace["_make"](**setters)  # type: ignore[operator]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    init.__doc__ = cls.__init__.__doc__
    cls.__init__ = init  # type: ignore[method-assign]
    return cls


class EntryKind(enum.IntEnum):
    """What a log entry carries."""

    NORMAL = 0  #: a client command for the state machine
    NOOP = 1  #: appended by a new leader to commit earlier-term entries (Raft §8)
    CONFIG = 2  #: a membership change; ``command`` is an encoded :class:`ConfChange`


@fast_init
@dataclass(frozen=True, slots=True)
class LogEntry:
    """One entry of the replicated log; indexes start at 1."""

    index: int
    term: int
    command: bytes
    kind: EntryKind = EntryKind.NORMAL

    def size(self) -> int:
        """Approximate bytes this entry takes in a message (for batching limits; ``RaftLog.slice``
        has it inlined)."""
        return len(self.command) + 24


@fast_init
@dataclass(frozen=True, slots=True)
class HardState:
    """The state Raft §5 requires to be durable before any reply: term and vote.

    The commit index is deliberately not part of it: it is relearned from the leader, and
    persisting it would add an fsync to every heartbeat.
    """

    term: int = 0
    voted_for: NodeId | None = None


class ConfChangeType(enum.Enum):
    #: a request only (never in the log): add as a learner, promote once it has caught up
    ADD_VOTER = "add_voter"
    ADD_LEARNER = "add_learner"  #: a new, non-voting member that receives the log
    PROMOTE = "promote"  #: a caught-up learner becomes a voter
    REMOVE = "remove"  #: a voter or learner leaves the cluster


@dataclass(frozen=True, slots=True)
class ConfChange:
    """A single-server membership change (Raft dissertation §4.1)."""

    type: ConfChangeType
    node: NodeId
    #: with ADD_LEARNER: any leader promotes the learner once it has caught up
    promote: bool = False

    def encode(self) -> bytes:
        return json.dumps(
            {"type": self.type.value, "node": self.node, "promote": self.promote}
        ).encode()

    @staticmethod
    def decode(data: bytes) -> ConfChange:
        obj = json.loads(data)
        return ConfChange(
            ConfChangeType(obj["type"]), NodeId(obj["node"]), bool(obj.get("promote", False))
        )


@dataclass(frozen=True, slots=True)
class ConfState:
    """A cluster configuration: who votes and who only receives the log."""

    voters: frozenset[NodeId]
    learners: frozenset[NodeId] = field(default_factory=frozenset)
    #: learners to be promoted to voters once caught up (added through ADD_VOTER)
    promoting: frozenset[NodeId] = field(default_factory=frozenset)

    def members(self) -> frozenset[NodeId]:
        return self.voters | self.learners

    def apply(self, change: ConfChange) -> ConfState:
        """The configuration after ``change`` (validity is checked by the proposer)."""
        node = change.node
        t = change.type
        assert t is not ConfChangeType.ADD_VOTER, "ADD_VOTER is a request, never a log entry"
        if t is ConfChangeType.ADD_LEARNER:
            promoting = self.promoting | {node} if change.promote else self.promoting
            return ConfState(self.voters - {node}, self.learners | {node}, promoting)
        if t is ConfChangeType.PROMOTE:
            return ConfState(self.voters | {node}, self.learners - {node}, self.promoting - {node})
        return ConfState(self.voters - {node}, self.learners - {node}, self.promoting - {node})

    def encode(self) -> bytes:
        return json.dumps(
            {
                "voters": sorted(self.voters),
                "learners": sorted(self.learners),
                "promoting": sorted(self.promoting),
            }
        ).encode()

    @staticmethod
    def decode(data: bytes) -> ConfState:
        obj = json.loads(data)
        return ConfState(
            frozenset(NodeId(n) for n in obj["voters"]),
            frozenset(NodeId(n) for n in obj.get("learners", [])),
            frozenset(NodeId(n) for n in obj.get("promoting", [])),
        )


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """Where a snapshot sits in the log, and the configuration in force at that point."""

    index: int
    term: int
    conf: ConfState


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A state machine image covering every entry up to and including ``meta.index``."""

    meta: SnapshotMeta
    data: bytes


def encode_conf_entry(change: ConfChange, conf: ConfState) -> bytes:
    """The command of a CONFIG log entry: the change and the whole configuration after it.

    Carrying the whole configuration lets a server that joins with no configuration of its
    own (it was not among the initial members) learn the cluster from the first config entry
    it receives, instead of replaying changes onto a base it never had.
    """
    return json.dumps(
        {"change": json.loads(change.encode()), "conf": json.loads(conf.encode())}
    ).encode()


def decode_conf_entry(data: bytes) -> tuple[ConfChange, ConfState]:
    obj = json.loads(data)
    return (
        ConfChange.decode(json.dumps(obj["change"]).encode()),
        ConfState.decode(json.dumps(obj["conf"]).encode()),
    )
