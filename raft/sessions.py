"""Client sessions for any state machine: a retried command is applied once.

Theory of operation
-------------------
A client that retries a command after a timeout cannot know whether the first attempt was
applied. Raft dissertation §6.3: the client names itself and numbers its commands; the state
machine remembers, per client, the last number applied and its result, and answers a repeat
with that result instead of applying it again. :class:`Sessions` does this around any
:class:`~raft.kv.StateMachine`, so the user's machine sees each command once and never knows
about sessions (``orbital node --state-machine`` wraps the user's class in it; the KV store
has the same logic built in).

Log entries are envelopes (:func:`encode_command`)::

    b"OS1" | u16 len(client) | client (UTF-8) | u64 seq | the user's command

``client`` empty means no session (applied unconditionally). Results are envelopes too: one
status byte then the payload: ``0`` the inner machine's result, ``1`` an error message
(``stale``: a number below the session's, its result is gone; ``bad envelope``).
:func:`decode_result` turns them back into the result or :class:`SessionError`.

Determinism: every replica applies the same log, so expiry counts applied commands (the
*position*), never time; a session idle for more than ``session_ttl`` commands is dropped,
oldest first. A malformed envelope never raises (every replica must survive the same log):
it yields an error result. Snapshots hold the sessions and the inner machine's snapshot::

    u32 len(header) | header JSON {"position", "sessions": [[client, seq, result b64, last]]}
    | the inner snapshot
"""

from __future__ import annotations

import base64
import json
import struct
from typing import Generic, TypeVar

from raft.kv import DEFAULT_SESSION_TTL, SessionTable, StaleCommand, StateMachine

__all__ = ["SessionError", "Sessions", "decode_result", "encode_command"]

MAGIC = b"OS1"
_HEAD = struct.Struct("<H")
_SEQ = struct.Struct("<Q")
_SNAP = struct.Struct("<I")
_OK = b"\x00"
_ERR = b"\x01"
MAX_CLIENT_BYTES = 256

SM = TypeVar("SM", bound=StateMachine)


class SessionError(Exception):
    """The command was not applied: ``stale`` (an old number) or a malformed envelope."""


def encode_command(command: bytes, client: str | None = None, seq: int = 0) -> bytes:
    """The log entry for ``command`` in ``client``'s session (``None``: no session)."""
    name = (client or "").encode()
    if len(name) > MAX_CLIENT_BYTES:
        raise ValueError(f"client id longer than {MAX_CLIENT_BYTES} bytes")
    if not 0 <= seq < 1 << 64:
        raise ValueError(f"seq out of range: {seq}")
    return MAGIC + _HEAD.pack(len(name)) + name + _SEQ.pack(seq) + command


def decode_result(result: bytes) -> bytes:
    """The inner machine's result, or raise :class:`SessionError`."""
    if result[:1] == _OK:
        return result[1:]
    raise SessionError(result[1:].decode("utf-8", errors="replace") or "bad result")


def _decode(entry: bytes) -> tuple[str, int, bytes]:
    if not entry.startswith(MAGIC):
        raise ValueError("not a session envelope")
    pos = len(MAGIC)
    if len(entry) < pos + _HEAD.size:
        raise ValueError("truncated envelope")
    (n,) = _HEAD.unpack_from(entry, pos)
    pos += _HEAD.size
    if n > MAX_CLIENT_BYTES or len(entry) < pos + n + _SEQ.size:
        raise ValueError("truncated envelope")
    client = entry[pos : pos + n].decode()
    pos += n
    (seq,) = _SEQ.unpack_from(entry, pos)
    return client, seq, entry[pos + _SEQ.size :]


class Sessions(Generic[SM]):
    """Wraps ``inner`` so that each ``(client, seq)`` is applied once (module docstring)."""

    def __init__(self, inner: SM, session_ttl: int = DEFAULT_SESSION_TTL) -> None:
        if session_ttl < 1:
            raise ValueError("session_ttl must be >= 1")
        self.inner = inner
        self.session_ttl = session_ttl
        self.sessions = SessionTable()
        self.position = 0

    def apply(self, command: bytes) -> bytes:
        self.position += 1
        self.sessions.expire(self.position, self.session_ttl)
        try:
            client, seq, payload = _decode(command)
        except (ValueError, UnicodeDecodeError) as exc:
            return _ERR + f"bad envelope: {exc}".encode()
        if not client:
            return _OK + self.inner.apply(payload)
        try:
            done = self.sessions.lookup(client, seq, self.position)
        except StaleCommand:
            return _ERR + b"stale"
        if done is not None:
            return done
        result = _OK + self.inner.apply(payload)
        self.sessions.record(client, seq, result, self.position)
        return result

    def snapshot(self) -> bytes:
        header = {
            "position": self.position,
            "sessions": [
                [c, s.seq, base64.b64encode(s.result).decode(), s.last_active]
                for c, s in self.sessions.items()
            ],
        }
        raw = json.dumps(header, separators=(",", ":")).encode()
        return _SNAP.pack(len(raw)) + raw + self.inner.snapshot()

    def restore(self, snapshot: bytes) -> None:
        (n,) = _SNAP.unpack_from(snapshot, 0)
        header = json.loads(snapshot[_SNAP.size : _SNAP.size + n])
        self.position = int(header["position"])
        self.sessions = SessionTable.of(
            (str(c), int(seq), base64.b64decode(res), int(last))
            for c, seq, res, last in header["sessions"]
        )
        self.inner.restore(snapshot[_SNAP.size + n :])
