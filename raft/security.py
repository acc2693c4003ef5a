"""CURVE authentication and encryption on every ZeroMQ socket: keys, who may connect, refusals.

Theory of operation
-------------------
Every node, every client and every admin has a CURVE key pair (Curve25519, ZeroMQ's
``zmq_curve``): the secret key stays in a file on its owner's machine (a ZeroMQ certificate
file, mode 0600, in a 0700 directory; :func:`create_key_pair`, :func:`load_key_pair`); the
public keys are listed in the cluster file. A connection is encrypted and both ends are
authenticated: a client must know the server's public key (the node's, from the cluster
file), and the server asks its ZAP handler (:class:`Gatekeeper`, pyzmq's ``zmq.auth``)
whether the client's public key may connect, and under which name:

* on a node's **Raft port** (ZAP domain ``raft/<id>``): node keys only; the name is the
  node id the key belongs to. The transport drops a message whose ``src`` is not that name,
  so a member cannot speak as another member.
* on a node's **client port** (``client/<id>``): client keys (name ``client``: read, write,
  status) and admin keys (name ``admin``: also membership changes and leadership transfer).

A peer whose key is not listed is refused during the handshake, before any frame of it
reaches the node: the ZAP handler logs the refusal once per (port, peer address, key). A peer
that does not speak CURVE, or does not know this node's public key, fails the handshake
before ZAP is asked; a :class:`HandshakeWatch` on the socket's monitor logs that once per
peer address. That address is best effort: the monitor tells the connection's file
descriptor when it is accepted and the address is read from it then, but a handshake that
fails at once (a peer without CURVE: within a millisecond on loopback) has usually closed it
by then; such refusals are logged once as from "an address gone before it could be read",
and all are counted.

Secret keys are never logged: :class:`KeyPair`'s ``repr`` shows the public key only, and no
log line of this module carries anything but public keys and addresses.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85
from zmq.utils.monitor import recv_monitor_message

__all__ = [
    "ADMIN",
    "CLIENT",
    "ClientKeys",
    "Gatekeeper",
    "HandshakeWatch",
    "KeyFileError",
    "KeyPair",
    "NodeKeys",
    "ServerCurve",
    "create_key_pair",
    "load_key_pair",
    "parse_public_key",
]

logger = logging.getLogger(__name__)

#: the names a client port gives its two kinds of keys
CLIENT = "client"
ADMIN = "admin"
#: distinct (peer, key) refusals remembered for the log-once rule; beyond, counted only
_SEEN_LIMIT = 4096
SECRET_SUFFIX = ".key_secret"
PUBLIC_SUFFIX = ".key"


class KeyFileError(ValueError):
    """A key or key file is missing, malformed or too widely readable."""


@dataclass(frozen=True, slots=True)
class KeyPair:
    """A CURVE key pair, both halves Z85-encoded (40 characters); ``repr`` hides the secret."""

    public: bytes
    secret: bytes = field(repr=False)

    def __repr__(self) -> str:
        return f"KeyPair(public={self.public.decode()!r})"


def parse_public_key(text: str) -> bytes:
    """A Z85 public key as the cluster file writes it (40 characters, 32 bytes decoded)."""
    raw = text.encode("ascii", "replace")
    if len(raw) != 40:
        raise KeyFileError(f"a public key is 40 Z85 characters, got {len(raw)}")
    try:
        decoded = z85.decode(raw)
    except (ValueError, KeyError, IndexError):
        raise KeyFileError("not a Z85-encoded key") from None
    if len(decoded) != 32:
        raise KeyFileError("not a Z85-encoded key")
    return raw


def create_key_pair(directory: Path, name: str) -> KeyPair:
    """Write ``name.key`` (public) and ``name.key_secret`` (mode 0600) into ``directory``
    (created with mode 0700 if missing) with ZeroMQ's certificate writer. An existing key of
    that name is never overwritten."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    secret_path = directory / f"{name}{SECRET_SUFFIX}"
    public_path = directory / f"{name}{PUBLIC_SUFFIX}"
    for p in (secret_path, public_path):
        if p.exists():
            raise KeyFileError(f"{p} exists already: not overwriting a key")
    old = os.umask(0o077)  # the secret file is never readable by others, not even briefly
    try:
        zmq.auth.create_certificates(directory, name)
    finally:
        os.umask(old)
    secret_path.chmod(0o600)
    public_path.chmod(0o644)
    return load_key_pair(secret_path)


def load_key_pair(path: Path) -> KeyPair:
    """The key pair in a secret key file; refused if group or others may read it."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read the secret key: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"{path}: a secret key readable by others (mode {stat.S_IMODE(mode):04o});"
            f" run: chmod 600 {path}"
        )
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"{path}: not a ZeroMQ certificate: {exc}") from None
    if not secret:
        raise KeyFileError(f"{path}: holds no secret key (is it the public .key file?)")
    return KeyPair(parse_public_key(public.decode()), secret)


@dataclass(frozen=True, slots=True)
class ClientKeys:
    """What a client (or a node, dialing its peers) needs: its own key pair and the public
    key of every server it talks to, by node id."""

    pair: KeyPair
    servers: Mapping[str, bytes]

    def apply(self, sock: zmq.Socket[Any], server: str) -> None:
        """Make ``sock`` a CURVE client of node ``server`` (before it connects)."""
        key = self.servers.get(server)
        if key is None:
            raise KeyFileError(f"no public key for node {server!r}")
        sock.curve_secretkey = self.pair.secret
        sock.curve_publickey = self.pair.public
        sock.curve_serverkey = key


@dataclass(frozen=True, slots=True)
class NodeKeys:
    """A node's keys: its own pair, and every node's public key (its own included), by id."""

    pair: KeyPair
    nodes: Mapping[str, bytes]

    def server(self) -> ServerCurve:
        """Its Raft port: only node keys connect, each named by its node id."""
        return ServerCurve(self.pair, {key: node for node, key in self.nodes.items()})

    def client(self) -> ClientKeys:
        """Its connections to its peers' Raft ports."""
        return ClientKeys(self.pair, self.nodes)


@dataclass(frozen=True, slots=True)
class ServerCurve:
    """A server socket's side: its key pair and who may connect, by public key, under which
    name (a node id on a Raft port, ``client`` or ``admin`` on a client port)."""

    pair: KeyPair
    allowed: Mapping[bytes, str]


# ==== the ZAP handler =========================================================================
class Gatekeeper(ThreadAuthenticator):
    """The ZAP handler of one ZeroMQ context (ZAP is per context): answers for every socket
    of that context by the policy of the socket's ZAP domain, in its own thread. Use
    :func:`guard_server` (it shares one gatekeeper per context)."""

    def __init__(self, context: zmq.Context[Any]) -> None:
        super().__init__(context, log=logging.getLogger("raft.security.zap"))
        self._policies: dict[str, Mapping[bytes, str]] = {}
        self._labels: dict[str, str] = {}
        self._peer = ""
        self._user = ""
        self._seen: set[tuple[str, str, bytes]] = set()
        self.users = 0
        #: refused handshakes, per ZAP domain
        self.refused: dict[str, int] = {}

    def set_policy(self, domain: str, allowed: Mapping[bytes, str], label: str) -> None:
        """Keys that may connect to sockets of ``domain`` (``label`` names them in logs)."""
        self._policies[domain] = dict(allowed)
        self._labels[domain] = label
        self.configure_curve_callback(domain, self)

    def drop_policy(self, domain: str) -> None:
        self._policies.pop(domain, None)
        self.credentials_providers.pop(domain, None)

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        # the peer's address is in the request, not passed to the callback: keep it for it
        self._peer = _peer(msg[3].decode("utf-8", "replace")) if len(msg) > 3 else "?"
        await super().handle_zap_message(msg)

    def callback(self, domain: str, key: bytes) -> bool | Awaitable[bool]:
        """pyzmq's credentials callback: may ``key`` connect to ``domain``?"""
        user = self._policies.get(domain, {}).get(key)
        if user is None:
            self._refuse(domain, key)
            return False
        self._user = user
        return True

    def curve_user_id(self, client_public_key: bytes) -> str:
        """The name of the key just accepted (the ZAP ``User-Id`` of its messages)."""
        return self._user

    def _refuse(self, domain: str, key: bytes) -> None:
        self.refused[domain] = self.refused.get(domain, 0) + 1
        seen = (domain, self._peer, key)
        if seen in self._seen or len(self._seen) >= _SEEN_LIMIT:
            return
        self._seen.add(seen)
        logger.warning(
            "%s: refused a connection from %s: its key %s is not in the cluster file",
            self._labels.get(domain, domain),
            self._peer,
            key.decode("ascii", "replace"),
        )


_GATEKEEPERS: dict[int, Gatekeeper] = {}
_GATE_LOCK = threading.Lock()


def _gatekeeper(ctx: zmq.Context[Any]) -> Gatekeeper:
    with _GATE_LOCK:
        key = ctx.underlying
        gk = _GATEKEEPERS.get(key)
        if gk is None:
            gk = _GATEKEEPERS[key] = Gatekeeper(ctx)
            gk.start()
        gk.users += 1
        return gk


def _release(ctx: zmq.Context[Any], gk: Gatekeeper) -> None:
    with _GATE_LOCK:
        gk.users -= 1
        if gk.users == 0:
            _GATEKEEPERS.pop(ctx.underlying, None)
            gk.stop()


class GuardedServer:
    """CURVE on one server socket (see :func:`guard_server`). Close the socket first, then
    this: a CURVE socket whose context has no ZAP handler admits any key."""

    def __init__(
        self, ctx: zmq.Context[Any], sock: zmq.Socket[Any], curve: ServerCurve, domain: str
    ) -> None:
        self.domain = domain
        self._ctx = ctx
        self._gk = _gatekeeper(ctx)
        self._gk.set_policy(domain, curve.allowed, domain)
        sock.curve_server = True
        sock.curve_secretkey = curve.pair.secret
        sock.curve_publickey = curve.pair.public
        sock.zap_domain = domain.encode()
        self.watch = HandshakeWatch(sock, domain)
        self._closed = False

    @property
    def refused(self) -> int:
        """Connections refused so far: unknown keys, and failed handshakes."""
        return self._gk.refused.get(self.domain, 0) + self.watch.refused

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.watch.close()
        self._gk.drop_policy(self.domain)
        _release(self._ctx, self._gk)


def guard_server(
    ctx: zmq.Context[Any], sock: zmq.Socket[Any], curve: ServerCurve, domain: str
) -> GuardedServer:
    """Make ``sock`` (not yet bound) a CURVE server that admits ``curve.allowed`` only, the
    messages of each connection tagged with its key's name (``User-Id``)."""
    return GuardedServer(ctx, sock, curve, domain)


# ==== failed handshakes ==========================================================================
_WATCHED = (
    zmq.EVENT_ACCEPTED
    | zmq.EVENT_DISCONNECTED
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
)
_FAILED = zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL


class HandshakeWatch:
    """Logs, once per peer address, the connections to ``sock`` whose CURVE handshake failed
    before the ZAP handler was asked (no CURVE, or not this node's public key)."""

    def __init__(
        self,
        sock: zmq.Socket[Any],
        label: str,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.label = label
        self.refused = 0
        self._log = log or logger.warning
        self._sock = sock
        self._mon = sock.get_monitor_socket(_WATCHED)
        ctx = sock.context
        self._stop_addr = f"inproc://orbital-watch-{id(self)}"
        self._stop_rx = ctx.socket(zmq.PAIR)
        self._stop_rx.bind(self._stop_addr)
        self._stop_tx = ctx.socket(zmq.PAIR)
        self._stop_tx.connect(self._stop_addr)
        self._peers: dict[int, str] = {}
        self._seen: set[str] = set()
        self._failed = False
        self._thread = threading.Thread(target=self._run, name=f"watch-{label}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._mon, zmq.POLLIN)
        poller.register(self._stop_rx, zmq.POLLIN)
        while True:
            ready = dict(poller.poll())
            if self._stop_rx in ready:
                return
            if self._mon in ready:
                try:
                    event = recv_monitor_message(self._mon, zmq.NOBLOCK)
                except zmq.ZMQError:
                    continue
                self._on_event(int(event["event"]), int(event["value"]))

    def _on_event(self, kind: int, value: int) -> None:
        if kind == zmq.EVENT_ACCEPTED:  # value: the connection's file descriptor
            self._peers[value] = _peer_of_fd(value)
            self._failed = False
        elif kind & _FAILED:
            self._failed = True  # the DISCONNECTED that follows names the connection
        elif kind == zmq.EVENT_DISCONNECTED:
            peer = self._peers.pop(value, _GONE)
            if self._failed:
                self._failed = False
                self.refused += 1
                if peer not in self._seen and len(self._seen) < _SEEN_LIMIT:
                    self._seen.add(peer)
                    self._log(
                        f"{self.label}: refused a connection from {peer}: its CURVE handshake"
                        " failed (no CURVE, or not this node's public key)"
                    )

    def close(self) -> None:
        """Stop watching (the socket may be closed already: its monitor then ends)."""
        if not self._thread.is_alive():
            return
        with contextlib.suppress(zmq.ZMQError):
            self._stop_tx.send(b"")
        self._thread.join()
        if not self._sock.closed:
            with contextlib.suppress(zmq.ZMQError):
                self._sock.disable_monitor()
        for s in (self._mon, self._stop_rx, self._stop_tx):
            s.close(linger=0)


_GONE = "an address gone before it could be read"


def _peer_of_fd(fd: int) -> str:
    try:
        dup = os.dup(fd)
    except OSError:
        return _GONE
    try:
        with socket.socket(fileno=dup) as s:
            host = s.getpeername()[0]
    except OSError:
        return _GONE
    return _peer(str(host))


def _peer(address: str) -> str:
    """An address as a log line shows it (IPv4-mapped IPv6 as plain IPv4)."""
    return address.removeprefix("::ffff:")
