"""The clients (:class:`RaftClient`, :class:`KVClient`) and the ``orbital kv`` command.

Theory of operation
-------------------
A :class:`RaftClient` is one logical client in the history sense: it runs one operation at a
time (a lock enforces it), under one session id, numbering its writes. ``submit(bytes)``
replicates a command for any state machine (``orbital node --state-machine``, wrapped in
:class:`~raft.sessions.Sessions` by the server) and returns its result; ``query(bytes)`` is a
linearizable read (ReadIndex on the leader, then the state machine's ``query``). A
:class:`KVClient` adds ``get``/``put``/``cas`` for the built-in KV store. It talks to the nodes'
client ROUTERs (``raft.server``) with one DEALER per node and guesses the leader: it starts
with any node, follows ``not_leader`` hints, and moves on when a node does not answer.

Every write keeps its ``(client, seq)`` across retries, so however often it is resent, to
whichever node, the state machine applies it at most once and answers every retry with the
first result (``raft.kv``). That is what makes retrying safe, and lets an answer received after
retries be definite. The outcome of an operation is one of:

* a value (success);
* :class:`Rejected` — it certainly did not take effect (``mismatch`` for a cas whose expected
  value did not match: :class:`CasMismatch`, itself an observation; or no leader reachable
  and no request possibly delivered) — a history ``fail``;
* :class:`Unknown` — the deadline passed after a request may have reached a node: it may take
  effect later, or never — a history ``info``.

With :class:`~raft.security.ClientKeys` every connection speaks CURVE: the client proves its
key (a client key, or an admin key for ``transfer`` and membership changes) and checks each
node's public key. ``orbital kv --key FILE`` names the secret key file (default: the
``ORBITAL_KEY`` environment variable, else ``keys/admin.key_secret`` next to the cluster file
for admin operations and ``keys/client.key_secret`` for the others).

All clients of a process share one ZeroMQ context (one I/O thread), so a process running many
clients (a benchmark, a chaos run's workers) does not run two threads per client. Replies are
read by a :class:`~raft.transport.ZmqReader` (a descriptor callback, NOBLOCK receives) and
handed to the one request waiting on that socket: no per-receive pyzmq futures.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Self

import msgspec
import zmq

from raft import netaddr
from raft.security import ClientKeys, KeyFileError, load_key_pair
from raft.transport import ZmqReader

__all__ = [
    "CasMismatch",
    "ClientError",
    "KVClient",
    "KVError",
    "RaftClient",
    "Rejected",
    "Unknown",
    "configure",
    "run",
]

#: how long one node gets to answer before the client tries another
ATTEMPT_TIMEOUT_S = 1.0
#: pause before retrying after "busy" or when no leader is known
BACKOFF_S = 0.05
#: how long a request waits for a (re)connection before trying the next node
CONNECT_GRACE_S = 0.1
NOT_CONNECTED_PAUSE_S = 0.005
#: sockets the process's shared client context may hold (ZeroMQ's default: 1023)
MAX_SOCKETS = 65_536
_encode_json = msgspec.json.Encoder().encode
_decode_json = msgspec.json.Decoder().decode
#: errors after which the same request is simply sent again (sessions make that safe)
_RETRY = {"not_leader", "busy", "lost", "read_failed", "unknown"}


class ClientError(Exception):
    """Base of the client's errors; ``error`` is the server's code."""

    def __init__(self, error: str, message: str = "") -> None:
        super().__init__(f"{error}: {message}" if message else error)
        self.error = error


#: the former name of :class:`ClientError`
KVError = ClientError


class Rejected(ClientError):
    """The operation certainly did not take effect."""


class CasMismatch(Rejected):
    """A cas found ``current`` instead of the expected value."""

    def __init__(self, current: int | None) -> None:
        super().__init__("mismatch", f"current value {current}")
        self.current = current


class Unknown(ClientError):
    """The operation may or may not take effect (a timeout after a possible delivery)."""


class _NotSent(Exception):
    """A request could not even be queued: no live connection to that node."""


class RaftClient:
    """A client of a replicated state machine; ``nodes`` maps node ids to client addresses.

    ``timeout`` bounds each operation (retries included); ``attempt_timeout`` how long one
    node gets before the client tries another."""

    def __init__(
        self,
        nodes: dict[str, str],
        *,
        client_id: str | None = None,
        timeout: float = 5.0,
        attempt_timeout: float = ATTEMPT_TIMEOUT_S,
        keys: ClientKeys | None = None,
    ) -> None:
        if not nodes:
            raise ValueError("no nodes to talk to")
        self.keys = keys
        self.nodes = dict(sorted(nodes.items()))
        self.client_id = client_id or uuid.uuid4().hex[:12]
        self.timeout = timeout
        self.attempt_timeout = attempt_timeout
        self.leader: str | None = None
        self.last_node: str | None = None  #: the node that gave the last answer
        self._ctx = _shared_context()
        #: per node: the DEALER (NOBLOCK sends raise ``zmq.Again`` at once) and its reader
        self._socks: dict[str, _Connection] = {}
        self._seq = 0
        self._ids = itertools.count(1)
        self._rotation = itertools.cycle(self.nodes)
        self._lock = asyncio.Lock()

    # -- operations -----------------------------------------------------------------------------
    async def submit(self, command: bytes) -> bytes:
        """Replicate ``command`` and return the state machine's result. Retried across
        leaders under this client's session, it is applied at most once. Raises
        :class:`Rejected` (certainly not applied) or :class:`Unknown`."""
        body = {"op": "submit", "command": base64.b64encode(command).decode()}
        return _result(await self.request(body, write=True))

    async def query(self, request: bytes) -> bytes:
        """A linearizable read: the state machine's ``query(request)`` on the leader once it
        has applied everything committed before the call (ReadIndex)."""
        body = {"op": "query", "query": base64.b64encode(request).decode()}
        return _result(await self.request(body, write=False))

    async def transfer(self, to: str) -> None:
        await self.request({"op": "transfer", "to": to}, write=False)

    async def membership(self, action: str, node: str) -> dict[str, Any]:
        reply = await self.request({"op": "membership", "action": action, "node": node}, True)
        return dict(reply.get("value") or {})

    async def status(self, node: str) -> dict[str, Any]:
        """One node's own status (not redirected to the leader)."""
        async with self._lock:
            try:
                reply = await self._attempt(node, {"op": "status"}, self.attempt_timeout)
            except _NotSent:
                reply = None
        if reply is None:
            raise Rejected("unreachable", f"{node} did not answer")
        return dict(reply.get("value") or {})

    # -- the retry loop ---------------------------------------------------------------------------
    async def request(self, body: dict[str, Any], write: bool) -> dict[str, Any]:
        """Send ``body`` to the leader, following hints and retrying until ``timeout``."""
        async with self._lock:
            if write:
                self._seq += 1
                body = {**body, "client": self.client_id, "seq": self._seq}
            return await self._until_answered(body, write)

    async def _until_answered(self, body: dict[str, Any], write: bool) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        maybe_delivered = False
        last = "no node answered"
        while (left := deadline - time.monotonic()) > 0:
            node = self.leader or next(self._rotation)
            try:
                reply = await self._attempt(node, body, min(left, self.attempt_timeout))
            except _NotSent:  # no live connection to it: certainly not delivered
                self.leader = None
                last = f"{node} is not connected"
                await asyncio.sleep(NOT_CONNECTED_PAUSE_S)
                continue
            if reply is None:
                maybe_delivered = True
                self.leader = None
                last = f"{node} did not answer"
                continue
            self.last_node = node
            if reply.get("ok"):
                self.leader = node
                return reply
            error = str(reply.get("error"))
            last = f"{node}: {error} {reply.get('message') or ''}".strip()
            if error not in _RETRY:
                raise _rejection(error, reply)
            maybe_delivered |= error == "unknown"
            await self._follow(error, reply)
        if write and maybe_delivered:
            raise Unknown("timeout", last)
        raise Rejected("unavailable", last)

    async def _follow(self, error: str, reply: dict[str, Any]) -> None:
        hint = reply.get("leader")
        if error == "not_leader" and isinstance(hint, str) and hint in self.nodes:
            self.leader = hint
            return
        self.leader = None if error == "not_leader" else self.leader
        await asyncio.sleep(BACKOFF_S)

    async def _attempt(
        self, node: str, body: dict[str, Any], timeout: float
    ) -> dict[str, Any] | None:
        """One request to one node; ``None`` if it does not answer within ``timeout``.

        Raises :class:`_NotSent` when there is no live connection to the node within
        ``CONNECT_GRACE_S`` (``IMMEDIATE``: ZeroMQ refuses to queue), so a dead node costs
        that grace, not a whole attempt timeout.
        """
        conn = self._socket(node)
        rid = next(self._ids)
        frame = _encode_json({**body, "id": rid})
        give_up = time.monotonic() + min(timeout, CONNECT_GRACE_S)
        while True:
            try:
                conn.send(frame)
                break
            except zmq.Again:
                if time.monotonic() >= give_up:
                    raise _NotSent from None
                await asyncio.sleep(NOT_CONNECTED_PAUSE_S)
        fut = conn.expect(rid)
        try:
            async with asyncio.timeout(timeout):
                return await fut
        except TimeoutError:
            return None
        finally:
            conn.waiting = None

    def _socket(self, node: str) -> _Connection:
        conn = self._socks.get(node)
        if conn is None:
            conn = self._socks[node] = _Connection(self._ctx, self.nodes[node], node, self.keys)
        conn.reader.start()
        return conn

    def close(self) -> None:
        for conn in self._socks.values():
            conn.close()
        self._socks.clear()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class KVClient(RaftClient):
    """A client of the built-in replicated KV store (:class:`~raft.kv.KVStore`)."""

    async def get(self, key: str) -> int | None:
        reply = await self.request({"op": "get", "key": key}, write=False)
        value = reply.get("value")
        return value if isinstance(value, int) else None

    async def put(self, key: str, value: int) -> None:
        await self.request({"op": "put", "key": key, "value": value}, write=True)

    async def cas(self, key: str, expected: int | None, new: int) -> None:
        """Raises :class:`CasMismatch` if ``key`` did not hold ``expected``."""
        await self.request({"op": "cas", "key": key, "expected": expected, "new": new}, write=True)


def _result(reply: dict[str, Any]) -> bytes:
    raw = reply.get("result")
    if not isinstance(raw, str):
        raise Rejected("bad_reply", "no result in the reply")
    return base64.b64decode(raw)


class _Connection:
    """One DEALER to one node; the reply to the request in flight resolves its future."""

    def __init__(
        self,
        ctx: zmq.Context[zmq.Socket[bytes]],
        address: str,
        node: str,
        keys: ClientKeys | None,
    ) -> None:
        sock = self.sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.RECONNECT_IVL, 10)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 100)
        if netaddr.is_ipv6(address):
            sock.setsockopt(zmq.IPV6, 1)
        if keys is not None:
            keys.apply(sock, node)
        sock.connect(netaddr.endpoint(address))
        self.reader = ZmqReader(sock, self._received, burst=16)
        #: the request awaiting its reply: (id, future)
        self.waiting: tuple[int, asyncio.Future[dict[str, Any]]] | None = None

    def send(self, frame: bytes) -> None:
        """Queue ``frame``; ``zmq.Again`` if there is no live connection (``IMMEDIATE``)."""
        self.sock.send(frame, zmq.NOBLOCK)
        self.reader.recheck()  # the send may have consumed the descriptor's edge

    def expect(self, rid: int) -> asyncio.Future[dict[str, Any]]:
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiting = (rid, fut)
        return fut

    def _received(self, parts: list[bytes]) -> None:
        waiting = self.waiting
        if waiting is None or len(parts) != 1:
            return  # a late reply to a request given up on, or garbage
        try:
            reply = _decode_json(parts[0])
        except msgspec.DecodeError:
            return
        rid, fut = waiting
        if isinstance(reply, dict) and reply.get("id") == rid and not fut.done():
            fut.set_result(reply)

    def close(self) -> None:
        self.reader.stop()
        self.sock.close(linger=0)


_CONTEXT: zmq.Context[zmq.Socket[bytes]] | None = None


def _shared_context() -> zmq.Context[zmq.Socket[bytes]]:
    """The process's ZeroMQ context for clients (sockets close with linger 0: never term'ed)."""
    global _CONTEXT
    if _CONTEXT is None or _CONTEXT.closed:
        _CONTEXT = zmq.Context()
        # ZeroMQ's default of 1023 sockets per context is reached by a few hundred clients
        # (a socket per node each talks to): then every new socket fails "Too many open files"
        _CONTEXT.set(zmq.MAX_SOCKETS, MAX_SOCKETS)
    return _CONTEXT


def _rejection(error: str, reply: dict[str, Any]) -> Rejected:
    if error == "mismatch":
        value = reply.get("value")
        return CasMismatch(value if isinstance(value, int) else None)
    return Rejected(error, str(reply.get("message") or ""))


# ==== orbital kv ==============================================================================
def _common(parser: argparse.ArgumentParser, default: Any) -> None:
    """Options accepted before or after the action (``orbital kv get x --json``)."""
    parser.add_argument("--config", default=default, help="the cluster file (TOML)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=default if default is argparse.SUPPRESS else 5.0,
        metavar="S",
        help="seconds per operation (default 5)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=default if default is argparse.SUPPRESS else False,
        help="print the result as JSON",
    )
    parser.add_argument(
        "--key",
        dest="key_file",
        type=Path,
        default=default,
        metavar="FILE",
        help="secret key file, for a cluster with keys (default: $ORBITAL_KEY, else"
        " keys/admin.key_secret next to the cluster file for transfer/add/remove and"
        " keys/client.key_secret for the others)",
    )


def configure(parser: argparse.ArgumentParser) -> None:
    _common(parser, None)
    common = argparse.ArgumentParser(add_help=False)
    _common(common, argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, description=text, parents=[common])

    action("get", "read a key (linearizable)").add_argument("key")
    p = action("put", "write a key")
    p.add_argument("key")
    p.add_argument("value", type=int)
    p = action("cas", "compare-and-set (EXPECTED may be 'null')")
    p.add_argument("key")
    p.add_argument("expected")
    p.add_argument("new", type=int)
    p = action("status", "every node's status, with each peer's lag on the leader")
    p.add_argument("node", nargs="?", help="only this node")
    p.add_argument("--node", dest="node_opt", help=argparse.SUPPRESS)  # the former spelling
    p = action("transfer", "hand leadership over to NODE")
    p.add_argument("node", nargs="?", help="the new leader")
    p.add_argument("--to", dest="node_opt", help=argparse.SUPPRESS)  # the former spelling
    for name in ("add", "remove"):
        action(name, f"{name} NODE (membership change)").add_argument("node")
    p = action("submit", "submit TEXT as a command (nodes run with --state-machine)")
    p.add_argument("command", metavar="TEXT", help="the command, UTF-8")
    p = action("query", "linearizable query (nodes run with --state-machine)")
    p.add_argument("query", metavar="TEXT", nargs="?", default="", help="the query, UTF-8")


def run(args: argparse.Namespace) -> int:
    """Exit codes: 0 done, 1 rejected (certainly no effect), 2 usage, 3 outcome unknown."""
    from raft.server import ConfigError, load_config

    node = getattr(args, "node", None) or getattr(args, "node_opt", None)
    args.node = node
    if args.config is None:
        print("orbital kv: --config CLUSTER.toml is required", file=sys.stderr)
        return 2
    if args.action == "transfer" and node is None:
        print(
            "orbital kv transfer: name the new leader (orbital kv transfer NODE)", file=sys.stderr
        )
        return 2
    if args.timeout <= 0:
        print("orbital kv: --timeout must be greater than 0", file=sys.stderr)
        return 2
    if args.action == "cas" and args.expected != "null":
        try:
            int(args.expected)
        except ValueError:
            print(f"orbital kv cas: EXPECTED must be an integer or null, got {args.expected!r}",
                  file=sys.stderr)  # fmt: skip
            return 2
    try:
        cfg, base = load_config(args.config)
        keys = None
        if cfg.secure:
            keys = cfg.client_keys(load_key_pair(_key_path(args, base)))
    except (ConfigError, KeyFileError) as exc:
        print(f"orbital kv: {exc}", file=sys.stderr)
        return 2
    if node is not None and args.action != "transfer" and node not in cfg.nodes:
        print(f"orbital kv: no node {node!r} in {args.config}", file=sys.stderr)
        return 2
    nodes = {n: c.client for n, c in cfg.nodes.items()}
    try:
        out = asyncio.run(_run_action(args, nodes, keys))
    except Unknown as exc:
        _fail(args, "unknown", exc)
        return 3
    except ClientError as exc:
        _fail(args, "rejected", exc)
        return 1
    print(
        json.dumps(out, indent=2 if args.action == "status" else None)
        if args.json
        else _text(args, out)
    )
    return 0


def _fail(args: argparse.Namespace, outcome: str, exc: ClientError) -> None:
    if args.json:
        print(json.dumps({"ok": False, "outcome": outcome, "error": str(exc)}))
    else:
        print(f"orbital kv {args.action}: {outcome}: {exc}", file=sys.stderr)


def _text(args: argparse.Namespace, out: Any) -> str:
    """The human form of a result."""
    a = args.action
    if a == "get":
        return "null" if out["value"] is None else str(out["value"])
    if a in ("submit", "query"):
        return str(out["result"])
    if a == "status":
        return status_table(out)
    if a in ("add", "remove"):
        return f"ok: voters {', '.join(out.get('voters', []))}"
    return f"ok ({out.get('node')})"


def status_table(statuses: list[dict[str, Any]]) -> str:
    """One line per node; the leader's line lists each peer's lag (entries it lacks)."""
    head = ("node", "role", "term", "leader", "commit", "applied", "last", "peer lag", "metrics")
    rows: list[tuple[str, ...]] = [head]
    for st in statuses:
        if "error" in st:
            rows.append((str(st.get("id")), "unreachable", "", "", "", "", "", "", ""))
            continue
        peers = st.get("peers") or {}
        lag = " ".join(f"{p}:{v['lag']}" for p, v in sorted(peers.items())) or "-"
        rows.append(
            tuple(
                str(x)
                for x in (
                    st.get("id"), st.get("role"), st.get("term"), st.get("leader") or "-",
                    st.get("commit"), st.get("applied"), st.get("last_index"), lag,
                    st.get("metrics") or "-",
                )
            )
        )  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def _key_path(args: argparse.Namespace, base: Path) -> Path:
    if args.key_file is not None:
        return Path(args.key_file)
    env = os.environ.get("ORBITAL_KEY")
    if env:
        return Path(env)
    admin = base / "keys" / "admin.key_secret"
    if args.action in ("transfer", "add", "remove") and admin.exists():
        return admin
    return base / "keys" / "client.key_secret"


async def _run_action(
    args: argparse.Namespace, nodes: dict[str, str], keys: ClientKeys | None
) -> Any:
    async with KVClient(nodes, timeout=args.timeout, keys=keys) as c:
        a = args.action
        if a == "get":
            return {
                "ok": True,
                "key": args.key,
                "value": await c.get(args.key),
                "node": c.last_node,
            }
        if a == "put":
            await c.put(args.key, args.value)
        elif a == "cas":
            expected = None if args.expected == "null" else int(args.expected)
            await c.cas(args.key, expected, args.new)
        elif a == "transfer":
            await c.transfer(args.node)
        elif a in ("add", "remove"):
            return await c.membership("add_voter" if a == "add" else "remove", args.node)
        elif a in ("submit", "query"):
            text = args.command if a == "submit" else args.query
            raw = await (c.submit if a == "submit" else c.query)(text.encode())
            shown = raw.decode("utf-8", errors="backslashreplace")
            return {"ok": True, "result": shown, "node": c.last_node}
        else:
            return await _statuses(c, [args.node] if args.node else list(nodes))
        return {"ok": True, "node": c.last_node}


async def _statuses(c: KVClient, nodes: list[str]) -> list[dict[str, Any]]:
    out = []
    for n in nodes:
        try:
            out.append(await c.status(n))
        except ClientError as exc:
            out.append({"id": n, "error": str(exc)})
    return out
