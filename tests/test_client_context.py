"""The process's shared client context holds sockets for many clients (a bench or a chaos run
with hundreds of workers): ZeroMQ's default of 1023 sockets per context is lifted."""

from __future__ import annotations

import pytest
import zmq

import raft.client as client_mod


def _open(n: int) -> None:
    """Open ``n`` sockets in a fresh shared context, set up as the client does; close all."""
    ctx = client_mod._shared_context()
    socks: list[zmq.Socket[bytes]] = []
    try:
        for _ in range(n):
            socks.append(ctx.socket(zmq.DEALER))
    finally:
        for s in socks:
            s.close(linger=0)
        ctx.term()


def test_more_than_zeromqs_default_socket_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_mod, "_CONTEXT", None)  # a fresh context, set up as the client does
    _open(1500)


def test_without_the_setting_the_default_limit_bites(monkeypatch: pytest.MonkeyPatch) -> None:
    """Teeth: with ZeroMQ's default the 1024th socket fails, as it did for 256 bench clients."""
    monkeypatch.setattr(client_mod, "_CONTEXT", None)
    monkeypatch.setattr(client_mod, "MAX_SOCKETS", 1023)
    with pytest.raises(zmq.ZMQError, match="Too many open files"):
        _open(1500)
