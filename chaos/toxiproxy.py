"""Toxiproxy: the server's lifecycle and a proxy per directed link between nodes.

`ToxiproxyServer` starts the `toxiproxy-server` binary on 127.0.0.1 at a free port, waits until
its REST API answers, and stops it (SIGTERM, then SIGKILL, only the PID it started).

`ProxyNetwork` puts one proxy on every directed link `i -> j` between nodes (node `i` dials
`address(i, j)` to reach `j`; the proxy forwards to `j`'s real listen address) and one proxy
per `client -> j`. All proxies live on one local server, or, for nodes on several hosts,
wherever the network's `place` says (`i -> j` on `i`'s host): the links and faults are the
same model either way. Faults are toxics on those proxies:

- a **cut** of link `i -> j` is a `timeout` toxic with `timeout=0` and `toxicity=1` on *both*
  streams of proxy `(i, j)`: every byte `i` sends on its connections to `j`, and every byte
  that comes back on them, is silently dropped, while the TCP connections stay open. The
  reverse link `j -> i` is its own proxy and is untouched, so `cut(i, j)` is one-way.
- a **partition** is the set of cuts between groups; `isolate(n)` is `partition([{n}])`.
- **latency** is a `latency` toxic on the upstream stream (data from `src` to `dst`) only.
- **reset** disables then re-enables the proxy: it closes every connection through it once.
- **heal** removes every toxic this network added.

Server habits (v2.12.0; observed with an echo server behind a proxy, and read in its source):

1. Disabling a proxy closes its listener and every connection through it (the peer reads EOF),
   and new connects are refused (ECONNREFUSED) until it is enabled again, on the same port.
2. A `timeout` toxic with `timeout=0` drops data without closing: the sender's writes succeed,
   nothing arrives. New connections are still accepted, and the proxy still dials upstream.
3. Removing a `timeout` toxic closes every connection that passed through it (its Cleanup
   closes the stream): healing a cut costs those connections. Removing `latency` does not.
4. Toxicity is drawn once per connection and per toxic (and again when a toxic chain is
   re-plumbed), never per message: `toxicity < 1` makes some connections faulty, not some
   messages. We use `toxicity=1` for every fault, so faults are deterministic.
5. When the upstream refuses (its node is down), the proxy accepts the client, fails to dial,
   and closes the client at once: a dialer sees connect-then-EOF, not ECONNREFUSED.
6. Latency is `latency +/- jitter` per chunk read, so the delay can be below `latency` when
   `jitter > 0`.
7. `POST /proxies/{name}` (used by toxiproxy-python to enable/disable) is deprecated in favour
   of `PATCH` and logs a warning, but works.
8. SIGTERM starts a graceful shutdown of the API (up to 30 s for requests in flight; in
   practice milliseconds); proxied connections die with the process. `LOG_LEVEL` picks the
   log level (we default it to `info`: the default level logs every toxic operation).

Why a cut is a blackhole and not a disabled proxy: our transport is ZeroMQ, which reconnects
by itself after a close and keeps messages queued for a disconnected peer, re-sending them on
reconnect. A disabled proxy would turn a partition into "delay everything until the heal, then
deliver a burst of stale messages", a weaker test than message loss; it would also signal the
failure (FIN, refused connects) where a real partition is silent. The blackhole loses messages
silently like a real partition, and ZeroMQ's handshake on any new connection cannot complete,
so no queued message crosses a cut. At heal the blackholed connections are closed (habit 3)
and ZeroMQ reconnects.

toxiproxy-python 0.1.1 habits: it keeps the server's host and port in class attributes
(`APIConsumer`), so one Python process talks to one server at a time (enforced here); it sets
no HTTP timeout; it raises on 400/404/409 but ignores every other error status (a failed
proxy create surfaces as `KeyError: 'name'`). So `ProxyNetwork` makes its REST calls itself
(a handful of endpoints: create and delete a proxy, add and remove a toxic, enable and
disable), each on the server that holds the link's proxy: with a remote placement
(:mod:`chaos.remote`) each host has its own server. `ToxiproxyServer` still points
toxiproxy-python at itself for callers that use the library.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final, Protocol, Self

# requests is toxiproxy-python's own dependency and ships its own type hints (py.typed).
import requests
from toxiproxy import Toxiproxy

from chaos.process import spawn

LOOPBACK: Final = "127.0.0.1"
CLIENT: Final = "client"
BINARY_NAME: Final = "toxiproxy-server"
REPO_ROOT: Final = Path(__file__).resolve().parents[1]
RELEASE_HINT: Final = (
    "download a v2.12.0 release from https://github.com/Shopify/toxiproxy/releases and put it "
    "on PATH as toxiproxy-server, or set TOXIPROXY_SERVER=/path/to/it"
)
#: a source checkout has the setup script; an installed wheel does not
INSTALL_HINT: Final = (
    "run ./scripts/setup.sh (builds .venv/bin/toxiproxy-server with Go), or " + RELEASE_HINT
    if (REPO_ROOT / "scripts" / "setup.sh").is_file()
    else RELEASE_HINT
)
HTTP_TIMEOUT_S: Final = 10.0
_NODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_CUT_TOXICS: Final = ("orbital_cut_downstream", "orbital_cut_upstream")
_LATENCY_TOXIC: Final = "orbital_latency"


class ToxiproxyError(RuntimeError):
    """The Toxiproxy server could not be started or refused a request."""


class ToxiproxyNotFound(ToxiproxyError):
    """No toxiproxy-server binary was found; the message says how to install one."""


#: ports handed out by :func:`free_port` in this process (not handed out twice)
_handed_out: set[int] = set()
_port_rng = random.Random()  # seeded from the OS: ports are not part of a run's seed


def ephemeral_port_range() -> tuple[int, int]:
    """The kernel's range for ephemeral ports (outgoing connections and binds to port 0)."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default
    return low, high


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now, for a listener started later.

    Chosen outside the kernel's ephemeral range: a port from that range (what a bind to port
    0 gives) can be taken, before our process binds it, by any outgoing connection or by a
    Toxiproxy proxy listening on port 0, and a node then dies with "Address already in use".
    Outside that range only a listener asking for that very port can take it.
    """
    low, high = ephemeral_port_range()
    spans = [(s, e) for s, e in ((10000, low - 1), (high + 1, 65535)) if e - s >= 1000]
    for _ in range(200 if spans else 0):
        start, end = _port_rng.choice(spans)
        port = _port_rng.randint(start, end)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((LOOPBACK, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # no such span: any port
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def find_server_binary() -> Path:
    """$TOXIPROXY_SERVER if set, else the venv's toxiproxy-server, else one on PATH."""
    explicit = os.environ.get("TOXIPROXY_SERVER")
    if explicit:
        path = Path(explicit)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise ToxiproxyNotFound(f"TOXIPROXY_SERVER={explicit} is not an executable file")
        return path
    for candidate in (
        Path(sys.prefix) / "bin" / BINARY_NAME,
        REPO_ROOT / ".venv/bin" / BINARY_NAME,
    ):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    on_path = shutil.which(BINARY_NAME)
    if on_path:
        return Path(on_path)
    raise ToxiproxyNotFound(f"{BINARY_NAME} not found: {INSTALL_HINT}")


def _bypass_http_proxy_for_loopback() -> None:
    """requests honours HTTP_PROXY even for 127.0.0.1 unless NO_PROXY names it."""
    if not any(os.environ.get(v) for v in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")):
        return
    for var in ("NO_PROXY", "no_proxy"):
        entries = [e for e in os.environ.get(var, "").split(",") if e]
        if LOOPBACK not in entries:
            os.environ[var] = ",".join([*entries, LOOPBACK])


_api_owner: ToxiproxyServer | None = None


class ToxiproxyServer:
    """One toxiproxy-server process that we started, bound to 127.0.0.1."""

    def __init__(
        self,
        binary: Path | None = None,
        *,
        log_path: Path | None = None,
        seed: int | None = None,
        start_timeout: float = 10.0,
    ) -> None:
        self.binary = binary
        self.log_path = log_path
        self.seed = seed
        self.start_timeout = start_timeout
        self.port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The REST API's base URL."""
        if self.port is None:
            raise ToxiproxyError("the Toxiproxy server is not started")
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The server's PID while we run it."""
        return None if self._proc is None else self._proc.pid

    def running(self) -> bool:
        """Whether the process we started is still alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> Self:
        """Start the server at a free port and wait for its API; retry if the port was taken.

        If HTTP_PROXY/ALL_PROXY is set, 127.0.0.1 is added to NO_PROXY in os.environ, since
        requests would otherwise send our API calls to that proxy.
        """
        global _api_owner
        if self._proc is not None:
            raise ToxiproxyError("the Toxiproxy server is already started")
        if _api_owner is not None:
            raise ToxiproxyError(
                "another ToxiproxyServer is running in this process: toxiproxy-python keeps "
                "the server address in class attributes, so only one can be in use at a time"
            )
        binary = self.binary or find_server_binary()
        _bypass_http_proxy_for_loopback()
        last_error = ""
        for _attempt in range(3):
            self.port = free_port()
            self._proc = self._spawn(binary, self.port)
            last_error = self._wait_ready()
            if not last_error:
                _api_owner = self
                Toxiproxy().update_api_consumer(LOOPBACK, self.port)
                atexit.register(self.stop)
                return self
            self._reap()
        raise ToxiproxyError(f"{binary} did not start: {last_error}")

    def _spawn(self, binary: Path, port: int) -> subprocess.Popen[bytes]:
        argv = [str(binary), "-host", LOOPBACK, "-port", str(port)]
        if self.seed is not None:
            argv += ["-seed", str(self.seed)]
        env = {**os.environ, "LOG_LEVEL": os.environ.get("LOG_LEVEL", "info")}
        out: IO[bytes] | int = subprocess.DEVNULL
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            out = self.log_path.open("ab")
        try:
            return spawn(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=env, start_new_session=True,
            )  # fmt: skip
        finally:
            if not isinstance(out, int):
                out.close()

    def _wait_ready(self) -> str:
        """Poll GET /version until it answers; '' when ready, else why not."""
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return f"exited with status {self._proc.returncode}"
            try:
                if requests.get(f"{self.url}/version", timeout=1.0).status_code == 200:
                    return ""
            except requests.RequestException:
                pass
            time.sleep(0.02)
        return f"API did not answer within {self.start_timeout}s"

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM the server we started, SIGKILL it after `timeout`; idempotent."""
        global _api_owner
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout)
        self._reap()
        if _api_owner is self:
            _api_owner = None
        atexit.unregister(self.stop)

    def _reap(self) -> None:
        assert self._proc is not None
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        self._proc = None

    def create_proxy(self, name: str, upstream: str, listen_host: str = LOOPBACK) -> str:
        """Create a proxy listening on a free port of ``listen_host``; its listen address."""
        return create_proxy(self.url, name, upstream, listen_host)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def create_proxy(url: str, name: str, upstream: str, listen_host: str = LOOPBACK) -> str:
    """Create a proxy on the server whose API is at ``url``, listening on a free port of
    ``listen_host``; return its listen address.

    A direct REST call: toxiproxy-python's `create` ignores a 500 (e.g. port in use) and
    then fails with `KeyError: 'name'`, which hides the server's error message.
    """
    host = f"[{listen_host}]" if ":" in listen_host else listen_host
    body: dict[str, str | bool] = {
        "name": name,
        "upstream": upstream,
        "listen": f"{host}:0",
        "enabled": True,
    }
    response = requests.post(f"{url}/proxies", json=body, timeout=HTTP_TIMEOUT_S)
    if response.status_code != 201:
        raise ToxiproxyError(f"creating proxy {name}: {response.status_code} {response.text}")
    listen = response.json()["listen"]
    assert isinstance(listen, str), listen
    assert listen.rpartition(":")[0].strip("[]") == listen_host, (listen, listen_host)
    return listen


class ProxyServer(Protocol):
    """A Toxiproxy server that proxies can live on: this machine's
    (:class:`ToxiproxyServer`) or a host's, reached over SSH (:mod:`chaos.remote`)."""

    @property
    def url(self) -> str:
        """The REST API's base URL, as this process reaches it."""

    def running(self) -> bool:
        """Whether the server still runs."""


#: where the proxy of a link lives: its server and the address it listens on
ProxyPlace = Callable[["Link"], tuple[ProxyServer, str]]


@dataclass(frozen=True, slots=True, order=True)
class Link:
    """A directed link: `src` (a node id or CLIENT) sends to `dst` through one proxy."""

    src: str
    dst: str

    def __str__(self) -> str:
        return f"{self.src}->{self.dst}"

    @property
    def proxy_name(self) -> str:
        """The proxy's name on the server ("~" cannot occur in a node id)."""
        return f"{self.src}~{self.dst}"


def partition_links(nodes: Iterable[str], groups: Iterable[Iterable[str]]) -> set[Link]:
    """The node links a partition cuts: every link whose ends lie in different groups.

    Every node not named in any group belongs to one more group, "the rest": so
    `[{"n1"}]` separates n1 from all others, and `[{"n1"}, {"n2"}]` makes three sides.
    Groups must be disjoint and name known nodes.
    """
    known = list(nodes)
    sides = [list(group) for group in groups]
    side: dict[str, int] = {}
    for number, group in enumerate(sides):
        for node in group:
            if node not in known:
                raise ValueError(f"unknown node {node!r} in partition")
            if node in side:
                raise ValueError(f"node {node!r} is in two partition groups")
            side[node] = number
    rest = len(sides)
    return {
        Link(a, b)
        for a in known
        for b in known
        if a != b and side.get(a, rest) != side.get(b, rest)
    }


class ProxyNetwork:
    """One proxy per directed node link and per client->node link, and the faults on them.

    Faults accumulate (a cut stays until `heal`); the network remembers what it added, and
    `state()` describes it for faults.jsonl. Calls are not atomic across links: a partition is
    applied link by link, within milliseconds.
    """

    def __init__(
        self,
        server: ProxyServer,
        nodes: Mapping[str, str],
        *,
        client_upstreams: Mapping[str, str] | None = None,
        client_sources: Iterable[str] = (CLIENT,),
        place: ProxyPlace | None = None,
    ) -> None:
        """``nodes`` maps node ids to the address their peers dial. Client proxies lead to
        ``client_upstreams[node]`` (a node's separate client port) when given, else to the same
        address. Each name in ``client_sources`` gets its own proxy to every node, so clients
        can stand on different sides of a partition (``partition(..., clients=...)``).
        ``place(link)`` says which server holds a link's proxy and the address it listens
        on (default: ``server``, 127.0.0.1): a remote placement puts ``i -> j`` on ``i``'s
        host. The faults do not depend on where a proxy lives."""
        for node, address in nodes.items():
            _check_node(node, address)
        self.server = server
        self.nodes: dict[str, str] = dict(nodes)
        self.client_upstreams: dict[str, str] = dict(client_upstreams or nodes)
        self.client_sources: list[str] = list(client_sources)
        if not self.client_sources:
            raise ValueError("need at least one client source")
        for source in self.client_sources:
            if source in self.nodes or not source.startswith(CLIENT):
                raise ValueError(f"client source {source!r} must start with {CLIENT!r}")
        self._place: ProxyPlace = place or (lambda link: (server, LOOPBACK))
        self._listen: dict[Link, str] = {}
        self._server_of: dict[Link, ProxyServer] = {}
        self._cuts: set[Link] = set()
        self._latency: dict[Link, tuple[int, int]] = {}

    @classmethod
    def create(
        cls,
        server: ProxyServer,
        nodes: Mapping[str, str],
        *,
        client_upstreams: Mapping[str, str] | None = None,
        client_sources: Iterable[str] = (CLIENT,),
        place: ProxyPlace | None = None,
    ) -> ProxyNetwork:
        """Build the network and create all its proxies (on `server`, or where `place` says)."""
        network = cls(
            server, nodes, client_upstreams=client_upstreams, client_sources=client_sources,
            place=place,
        )  # fmt: skip
        try:
            for link in network.links(include_clients=True):
                is_client = link.src in network.client_sources
                upstream = (network.client_upstreams if is_client else network.nodes)[link.dst]
                where, host = network._place(link)
                network._server_of[link] = where
                network._listen[link] = create_proxy(where.url, link.proxy_name, upstream, host)
        except BaseException:
            network.close()
            raise
        return network

    def links(self, *, include_clients: bool = False) -> list[Link]:
        """Every node link i->j (i != j), then, if asked, every client->node link."""
        ids = sorted(self.nodes)
        links = [Link(a, b) for a in ids for b in ids if a != b]
        if include_clients:
            links += [Link(c, b) for c in self.client_sources for b in ids]
        return links

    def address(self, src: str, dst: str) -> str:
        """Where `src` dials to reach `dst`: the proxy of link src->dst."""
        return self._listen[self._link(src, dst)]

    def client_address(self, node: str, source: str = CLIENT) -> str:
        """Where clients of ``source`` dial to reach `node`."""
        return self._listen[self._link(source, node)]

    def partition(
        self, groups: Iterable[Iterable[str]], clients: Mapping[str, int] | None = None
    ) -> None:
        """Cut every link between different groups, both ways (see `partition_links`).

        ``clients`` places client sources on a side: source -> index into ``groups``; such a
        source loses its links to every node outside its group. Unplaced sources reach all.
        """
        groups = [list(g) for g in groups]
        for link in sorted(partition_links(self.nodes, groups)):
            self._cut(link)
        for source, side in (clients or {}).items():
            if source not in self.client_sources:
                raise KeyError(f"unknown client source {source!r}")
            if not 0 <= side < len(groups):
                raise ValueError(f"client source {source!r}: no group {side}")
            for node in sorted(set(self.nodes) - set(groups[side])):
                self._cut(Link(source, node))

    def isolate(self, node: str) -> None:
        """Cut every link from and to `node` (client links are left alone)."""
        self.partition([{node}])

    def cut(self, src: str, dst: str) -> None:
        """Drop everything `src` sends to `dst` (one way); `src` may be CLIENT."""
        self._cut(self._link(src, dst))

    def heal(self) -> None:
        """Remove every cut and every latency this network added."""
        for link in sorted(self._cuts):
            self._uncut(link)
        for link in sorted(self._latency):
            self._proxy_call(link, "destroy_toxic", _LATENCY_TOXIC)
            del self._latency[link]

    def latency(self, ms: int, jitter_ms: int = 0, links: Iterable[Link] | None = None) -> None:
        """Delay data from src to dst by `ms` +/- `jitter_ms` on `links` (default: node links)."""
        if ms < 0 or not 0 <= jitter_ms <= ms:
            raise ValueError(f"latency needs 0 <= jitter_ms <= ms, got {ms}, {jitter_ms}")
        for link in self._select(links):
            if link in self._latency:
                self._proxy_call(link, "destroy_toxic", _LATENCY_TOXIC)
                del self._latency[link]
            attributes = {"latency": ms, "jitter": jitter_ms}
            self._add_toxic(link, _LATENCY_TOXIC, "latency", "upstream", attributes)
            self._latency[link] = (ms, jitter_ms)

    def reset(self, links: Iterable[Link] | None = None) -> None:
        """Close every connection on `links` (default: node links) once, by disable+enable."""
        for link in self._select(links):
            try:
                self._proxy_call(link, "disable")
            finally:
                self._proxy_call(link, "enable")

    def state(self) -> dict[str, Any]:
        """The current faults, JSON-ready, for a faults.jsonl `detail`."""
        return {
            "cuts": [[link.src, link.dst] for link in sorted(self._cuts)],
            "latency": [
                {"link": [link.src, link.dst], "ms": ms, "jitter_ms": jitter}
                for link, (ms, jitter) in sorted(self._latency.items())
            ],
        }

    def close(self) -> None:
        """Delete this network's proxies from the server (if it still runs)."""
        for link in self._listen:  # direct, with a timeout: this also runs on error paths
            where = self._server_of[link]
            if where.running():
                with contextlib.suppress(requests.RequestException):
                    requests.delete(f"{where.url}/proxies/{link.proxy_name}", timeout=5.0)
        self._listen.clear()
        self._server_of.clear()
        self._cuts.clear()
        self._latency.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _link(self, src: str, dst: str) -> Link:
        link = Link(src, dst)
        if link not in self._listen:
            raise KeyError(f"no proxy for link {link}")
        return link

    def _select(self, links: Iterable[Link] | None) -> list[Link]:
        chosen = self.links() if links is None else list(links)
        for link in chosen:
            self._link(link.src, link.dst)
        return chosen

    def _cut(self, link: Link) -> None:
        if link in self._cuts:
            return
        for name in _CUT_TOXICS:
            stream = name.rsplit("_", 1)[1]
            self._add_toxic(link, name, "timeout", stream, {"timeout": 0})
        self._cuts.add(link)

    def _uncut(self, link: Link) -> None:
        for name in _CUT_TOXICS:
            self._proxy_call(link, "destroy_toxic", name)
        self._cuts.discard(link)

    def _add_toxic(
        self, link: Link, name: str, kind: str, stream: str, attributes: dict[str, int]
    ) -> None:
        self._proxy_call(
            link, "add_toxic",
            name=name, type=kind, stream=stream, toxicity=1.0, attributes=attributes,
        )  # fmt: skip

    def _proxy_call(self, link: Link, method: str, *args: Any, **kwargs: Any) -> None:
        """``add_toxic``, ``destroy_toxic``, ``disable`` or ``enable`` on the proxy of
        ``link``, on the server that holds it (REST: toxiproxy-python keeps one server per
        process in class attributes, and a remote placement has one per host)."""
        url = f"{self._server_of[link].url}/proxies/{link.proxy_name}"
        if method == "add_toxic":
            response = requests.post(f"{url}/toxics", json=kwargs, timeout=HTTP_TIMEOUT_S)
        elif method == "destroy_toxic":
            response = requests.delete(f"{url}/toxics/{args[0]}", timeout=HTTP_TIMEOUT_S)
        elif method in ("disable", "enable"):
            body = {"enabled": method == "enable"}
            response = requests.post(url, json=body, timeout=HTTP_TIMEOUT_S)
        else:
            raise ValueError(f"unknown proxy call {method!r}")
        if response.status_code >= 300:
            raise ToxiproxyError(
                f"{method} on proxy {link}: {response.status_code} {response.text.strip()}"
            )


def _check_node(node: str, address: str) -> None:
    if node == CLIENT or not _NODE_ID.fullmatch(node):
        raise ValueError(f"bad node id {node!r}: use letters, digits, '_', '.', '-'")
    host, _, port = address.rpartition(":")
    if host.strip("[]") in ("", "0.0.0.0", "::") or not port.isdigit():
        raise ValueError(f"node {node} address {address!r} must be a dialable <host>:<port>")
