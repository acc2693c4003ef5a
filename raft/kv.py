"""The replicated key-value state machine, with client sessions for exactly-once commands.

Theory of operation
-------------------
A :class:`KVStore` is a deterministic function of the sequence of commands applied to it: every
replica that applies the same log ends in the same state and returns the same results. So
nothing here reads a clock, a random source, or iterates a set/dict whose order could differ.

Commands and results are compact JSON (msgspec structs, decoded strictly)::

    {"op":"read","key":"x"}                      -> {"ok":true,"value":3}
    {"op":"write","key":"x","value":3}           -> {"ok":true}
    {"op":"cas","key":"x","expected":3,"new":4}  -> {"ok":true}
                                                 or {"ok":false,"error":"mismatch","value":5}

with ``"client"`` and ``"seq"`` added for a session. ``expected: null`` matches an absent key.

Client sessions (Raft dissertation §6.3): a client names itself (``client``) and numbers its
commands (``seq``, from 1, one outstanding at a time). The store keeps, per client, the last
``seq`` applied and its result. A command whose ``seq`` equals the session's is a retry of one
that was already applied: the cached result is returned and the command is *not* applied again.
A lower ``seq`` is answered with the error ``"stale"`` (its result is gone). A command without
a client applies unconditionally.

Sessions expire deterministically: the store counts the commands it applies (its *position*:
the same on every replica, since NOOP and configuration entries never reach it) and drops a
session idle for more than ``session_ttl`` commands, oldest first. A retry arriving after its
session expired would apply twice; ``session_ttl`` trades memory for that window. Sessions,
data and position are all in the snapshot, so expiry agrees across snapshot installs too.

A malformed command never raises: it yields ``{"ok":false,"error":"bad command: ..."}``
(deterministically), since every replica must apply the same log without crashing.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Protocol

import msgspec

__all__ = [
    "Cas",
    "CasCommand",
    "Command",
    "KVStore",
    "Read",
    "ReadCommand",
    "Result",
    "StateMachine",
    "Write",
    "WriteCommand",
    "decode_command",
    "decode_result",
    "encode_command",
]

#: commands a session may stay idle before it is forgotten (deterministic: counted in commands)
DEFAULT_SESSION_TTL = 100_000


class StateMachine(Protocol):
    """What the Raft node applies committed commands to (DESIGN.md, "Library API")."""

    def apply(self, command: bytes) -> bytes: ...
    def snapshot(self) -> bytes: ...
    def restore(self, snapshot: bytes) -> None: ...


class _Op(msgspec.Struct, frozen=True, kw_only=True, tag_field="op", forbid_unknown_fields=True):
    key: str


class Read(_Op, frozen=True, tag="read"):
    pass


class Write(_Op, frozen=True, tag="write"):
    value: int


class Cas(_Op, frozen=True, tag="cas"):
    expected: int | None
    new: int


_Seq = Annotated[int, msgspec.Meta(ge=0)]


class ReadCommand(Read, frozen=True, tag="read", omit_defaults=True):
    """A proposed read: the operation's fields and the session's, flat as on the wire."""

    client: str | None = None
    seq: _Seq = 0


class WriteCommand(Write, frozen=True, tag="write", omit_defaults=True):
    """A proposed write (see :class:`ReadCommand`)."""

    client: str | None = None
    seq: _Seq = 0


class CasCommand(Cas, frozen=True, tag="cas", omit_defaults=True):
    """A proposed compare-and-set (see :class:`ReadCommand`)."""

    client: str | None = None
    seq: _Seq = 0


#: one state machine command: an operation (a :class:`Read`, :class:`Write` or :class:`Cas`
#: itself), optionally inside a client session (``client``, ``seq``)
Command = ReadCommand | WriteCommand | CasCommand
_COMMAND: msgspec.json.Decoder[Command] = msgspec.json.Decoder(Command)
_IN_SESSION: dict[type, type[Command]] = {Read: ReadCommand, Write: WriteCommand, Cas: CasCommand}
_encode = msgspec.json.Encoder().encode


class Result(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A command's outcome; ``value`` is the value read, or the current value on a mismatch."""

    ok: bool
    value: int | None = None
    error: str | None = None


_RESULT = msgspec.json.Decoder(Result)

#: the most common outcome, and its encoding (no encoder run for it)
OK = Result(ok=True)
OK_BYTES = b'{"ok":true}'


def encode_command(op: Read | Write | Cas, client: str | None = None, seq: int = 0) -> bytes:
    """The compact JSON a client proposes for ``op``: ``{"op":...,<its fields>}``, then
    ``"client"`` and ``"seq"`` for a session."""
    if client is None:
        return _encode(op)
    fields = {f: getattr(op, f) for f in op.__struct_fields__}
    return _encode(_IN_SESSION[type(op)](**fields, client=client, seq=seq))


def decode_command(data: bytes) -> Command:
    """Parse a proposed command (raises ``ValueError`` on a malformed one): one pass of
    msgspec's JSON decoder over the flat object, strict (no ``"1"`` for ``1``, no ``true``
    for an integer, no unknown field)."""
    try:
        return _COMMAND.decode(data)
    except msgspec.DecodeError as exc:
        raise ValueError(str(exc)) from None


def encode_result(result: Result) -> bytes:
    if result is OK:
        return OK_BYTES
    return _encode(result)


def decode_result(data: bytes) -> Result:
    if data == OK_BYTES:
        return OK
    try:
        return _RESULT.decode(data)
    except msgspec.DecodeError as exc:
        raise ValueError(str(exc)) from None


@dataclass(slots=True)
class _Session:
    seq: int
    result: bytes
    last_active: int  #: the store position of its last command


class StaleCommand(Exception):
    """A command numbered below its session's last one: its result is gone."""


class SessionTable(OrderedDict[str, _Session]):
    """Client sessions (dissertation §6.3), ordered by last activity, oldest first: per
    client, the number of its last applied command and that command's encoded result. Shared
    by :class:`KVStore` and :class:`raft.sessions.Sessions`; positions count applied commands
    (never time), so every replica expires the same sessions."""

    @classmethod
    def of(cls, rows: Iterable[tuple[str, int, bytes, int]]) -> SessionTable:
        """A table from ``(client, seq, result, last_active)`` rows, oldest first."""
        return cls((c, _Session(seq, result, last)) for c, seq, result, last in rows)

    def lookup(self, client: str, seq: int, position: int) -> bytes | None:
        """The recorded result when ``seq`` is ``client``'s last applied command (a retry: the
        session is marked active at ``position``), ``None`` for a new command; raises
        :class:`StaleCommand` for a number below the session's."""
        session = self.get(client)
        if session is None or seq > session.seq:
            return None
        if seq < session.seq:
            raise StaleCommand(client)
        session.last_active = position
        self.move_to_end(client)
        return session.result

    def record(self, client: str, seq: int, result: bytes, position: int) -> None:
        """``client``'s command ``seq`` was applied at ``position`` with ``result``."""
        self[client] = _Session(seq, result, position)
        self.move_to_end(client)

    def expire(self, position: int, ttl: int) -> None:
        """Forget the sessions idle for more than ``ttl`` commands, oldest first."""
        horizon = position - ttl
        while self:
            client, oldest = next(iter(self.items()))
            if oldest.last_active >= horizon:
                return
            del self[client]


class KVStore:
    """String keys, integer values; see the module docstring."""

    def __init__(self, session_ttl: int = DEFAULT_SESSION_TTL) -> None:
        if session_ttl < 1:
            raise ValueError("session_ttl must be >= 1")
        self.session_ttl = session_ttl
        self.data: dict[str, int] = {}
        #: ordered by last activity, oldest first (so expiry pops from the front)
        self.sessions = SessionTable()
        self.position = 0  #: commands applied so far

    # -- the StateMachine protocol --------------------------------------------------------
    def apply(self, command: bytes) -> bytes:
        self.position += 1
        self.sessions.expire(self.position, self.session_ttl)
        try:
            cmd = decode_command(command)
        except ValueError as exc:
            return encode_result(Result(ok=False, error=f"bad command: {_brief(exc)}"))
        if cmd.client is None:
            return encode_result(self._execute(cmd))
        return self._apply_in_session(cmd, cmd.client)

    def snapshot(self) -> bytes:
        image = {
            "position": self.position,
            "data": self.data,
            "sessions": [
                [c, s.seq, s.result.decode(), s.last_active] for c, s in self.sessions.items()
            ],
        }
        return json.dumps(image, separators=(",", ":"), sort_keys=True).encode()

    def restore(self, snapshot: bytes) -> None:
        image = json.loads(snapshot)
        self.position = int(image["position"])
        self.data = {str(k): int(v) for k, v in image["data"].items()}
        self.sessions = SessionTable.of(
            (str(c), int(seq), str(res).encode(), int(last))
            for c, seq, res, last in image["sessions"]
        )

    # -- local reads (after ReadIndex) -----------------------------------------------------
    def get(self, key: str) -> int | None:
        """The value of ``key`` as applied here (linearizable only after a ReadIndex wait)."""
        return self.data.get(key)

    # -- internals --------------------------------------------------------------------------
    def _apply_in_session(self, cmd: Command, client: str) -> bytes:
        try:
            done = self.sessions.lookup(client, cmd.seq, self.position)
        except StaleCommand:
            return encode_result(Result(ok=False, error="stale"))
        if done is not None:
            return done
        result = encode_result(self._execute(cmd))
        self.sessions.record(client, cmd.seq, result, self.position)
        return result

    def _execute(self, op: Read | Write | Cas) -> Result:
        if isinstance(op, Read):
            return Result(ok=True, value=self.data.get(op.key))
        if isinstance(op, Write):
            self.data[op.key] = op.value
            return OK
        current = self.data.get(op.key)
        if current != op.expected:
            return Result(ok=False, error="mismatch", value=current)
        self.data[op.key] = op.new
        return OK


def _brief(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
