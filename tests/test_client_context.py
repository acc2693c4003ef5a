"""The process's shared client context holds sockets for many clients (a bench or a chaos run
with hundreds of workers): ZeroMQ's default of 1023 sockets per context is lifted. Clients of
one process share one connection per node, each reply going to the request with its id."""

from __future__ import annotations

import asyncio
import json

import pytest
import zmq
import zmq.asyncio

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


# ---- clients of one process share a connection per node --------------------------------------
async def _three_gets_answered_in_reverse() -> tuple[list[int | None], set[bytes], int]:
    """Three clients each get a key from one fake node that answers the three requests in
    reverse order; what each got, the connection identities the node saw, and how many
    shared connections were open meanwhile."""
    ctx = zmq.asyncio.Context()
    router = ctx.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    clients = [client_mod.KVClient({"n1": f"127.0.0.1:{port}"}, timeout=5.0) for _ in range(3)]
    seen: set[bytes] = set()

    async def node() -> None:
        requests = []
        while len(requests) < 3:
            ident, frame = await router.recv_multipart()
            seen.add(ident)
            requests.append((ident, json.loads(frame)))
        for ident, req in reversed(requests):
            reply = {"ok": True, "id": req["id"], "value": int(req["key"][1:])}
            await router.send_multipart([ident, json.dumps(reply).encode()])

    try:
        serving = asyncio.create_task(node())
        got = await asyncio.wait_for(
            asyncio.gather(*(c.get(f"k{i}") for i, c in enumerate(clients, start=1))), 10
        )
        await serving
        shared = len(client_mod._Connection._SHARED)
    finally:
        for c in clients:
            c.close()
        router.close(linger=0)
        ctx.term()
    return list(got), seen, shared


def test_clients_share_one_connection_and_each_gets_its_own_reply() -> None:
    got, seen, shared = asyncio.run(_three_gets_answered_in_reverse())
    assert got == [1, 2, 3]  # each client its own reply, though they came back reversed
    assert len(seen) == 1  # one connection for the three
    assert shared == 1
    assert client_mod._Connection._SHARED == {}  # the last client closed it


def test_a_reply_matched_to_the_wrong_request_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Teeth: a connection that hands each reply to the oldest waiting request (ignoring its
    id, as a connection of one client's could) gives clients each other's answers."""

    def oldest_first(self: client_mod._Connection, parts: list[bytes]) -> None:
        reply = json.loads(parts[0])
        if self.waiting:
            rid = next(iter(self.waiting))
            self.waiting.pop(rid).set_result(reply | {"id": rid})

    monkeypatch.setattr(client_mod._Connection, "_received", oldest_first)
    got, _, _ = asyncio.run(_three_gets_answered_in_reverse())
    assert got != [1, 2, 3]
