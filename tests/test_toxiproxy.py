"""ProxyNetwork against the real toxiproxy-server, with TCP echo servers standing in for nodes.

Each "node" echoes what it receives prefixed by its id, so a reply says who answered. Passing
traffic is awaited with a deadline; blocked traffic is checked over a short window (a cut is
a blackhole, so it never delivers late and the check cannot fail spuriously). Timing asserts
are lower bounds only. Without the binary the integration tests skip, except in CI (CI set),
where they fail.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from chaos.toxiproxy import (
    CLIENT,
    LOOPBACK,
    Link,
    ProxyNetwork,
    ToxiproxyError,
    ToxiproxyNotFound,
    ToxiproxyServer,
    find_server_binary,
    partition_links,
)

PASS_S = 5.0  # deadline for traffic that must get through
BLOCK_S = 0.3  # window in which blocked traffic must not arrive
NODES = ("a", "b", "c")


class EchoNode:
    """A threaded TCP server on 127.0.0.1 that answers `<id>:<data>`."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self._listener = socket.create_server((LOOPBACK, 0))
        self.address = f"{LOOPBACK}:{self._listener.getsockname()[1]}"
        self._conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self._conns.append(conn)
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def _echo(self, conn: socket.socket) -> None:
        try:
            while data := conn.recv(4096):
                conn.sendall(self.node_id.encode() + b":" + data)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        if self._listener.fileno() < 0:
            return
        self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() on Linux
        self._listener.close()
        for conn in self._conns:
            conn.close()
        self._thread.join(PASS_S)


def connect(address: str) -> socket.socket:
    host, port = address.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=PASS_S)


def exchange(sock: socket.socket, payload: bytes, expected: int, timeout: float) -> bytes | None:
    """Send `payload`, read `expected` bytes; None on timeout, short bytes on EOF."""
    sock.settimeout(timeout)
    sock.sendall(payload)
    got = b""
    try:
        while len(got) < expected:
            chunk = sock.recv(expected - len(got))
            if not chunk:
                break
            got += chunk
    except TimeoutError:
        return None
    return got


def roundtrip(address: str, payload: bytes = b"ping", timeout: float = PASS_S) -> bytes | None:
    """One request on a fresh connection: the reply, or None if none came in time."""
    with connect(address) as sock:
        return exchange(sock, payload, len(payload) + 2, timeout)


def passes(network: ProxyNetwork, src: str, dst: str) -> bool:
    return roundtrip(network.address(src, dst)) == f"{dst}:ping".encode()


def blocked(network: ProxyNetwork, src: str, dst: str) -> bool:
    return roundtrip(network.address(src, dst), timeout=BLOCK_S) is None


def wait_eof(sock: socket.socket, timeout: float = PASS_S) -> bool:
    """Whether the peer closes `sock` within `timeout` (data read meanwhile is discarded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            if not sock.recv(4096):
                return True
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
    return False


def server_binary() -> Path:
    try:
        return find_server_binary()
    except ToxiproxyNotFound as exc:
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail(f"CI requires toxiproxy-server: {exc}")
        pytest.skip(str(exc))


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ToxiproxyServer]:
    with ToxiproxyServer(server_binary(), log_path=tmp_path / "toxiproxy.log") as srv:
        yield srv


@pytest.fixture
def echo_nodes() -> Iterator[dict[str, EchoNode]]:
    nodes = {node: EchoNode(node) for node in NODES}
    yield nodes
    for node in nodes.values():
        node.close()


@pytest.fixture
def network(server: ToxiproxyServer, echo_nodes: dict[str, EchoNode]) -> Iterator[ProxyNetwork]:
    addresses = {node_id: node.address for node_id, node in echo_nodes.items()}
    with ProxyNetwork.create(server, addresses) as net:
        yield net


# --- pure parts, no server -------------------------------------------------------------------


def test_partition_puts_unlisted_nodes_in_one_more_group() -> None:
    cut = partition_links(["a", "b", "c", "d"], [{"a"}])
    assert cut == {Link("a", x) for x in "bcd"} | {Link(x, "a") for x in "bcd"}


def test_partition_with_two_named_groups_makes_three_sides() -> None:
    cut = partition_links(["a", "b", "c"], [{"a"}, {"b"}])
    assert cut == {Link(x, y) for x in "abc" for y in "abc" if x != y}


def test_partition_rejects_unknown_and_overlapping_nodes() -> None:
    with pytest.raises(ValueError, match="unknown node 'z'"):
        partition_links(["a", "b"], [{"z"}])
    with pytest.raises(ValueError, match="two partition groups"):
        partition_links(["a", "b"], [{"a"}, {"a", "b"}])


def test_node_ids_and_addresses_are_validated() -> None:
    srv = ToxiproxyServer(Path("/nonexistent"))
    with pytest.raises(ValueError, match="bad node id"):
        ProxyNetwork(srv, {CLIENT: f"{LOOPBACK}:1"})
    with pytest.raises(ValueError, match=r"must be a dialable <host>:<port>"):
        ProxyNetwork(srv, {"a": "0.0.0.0:1"})
    with pytest.raises(ValueError, match=r"must be a dialable <host>:<port>"):
        ProxyNetwork(srv, {"a": "10.0.0.1"})


def test_a_bad_toxiproxy_server_variable_is_an_error_naming_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TOXIPROXY_SERVER", str(tmp_path / "missing"))
    with pytest.raises(ToxiproxyNotFound, match="TOXIPROXY_SERVER="):
        find_server_binary()


# --- against the real server -----------------------------------------------------------------


@pytest.mark.integration
def test_traffic_passes_on_every_link(network: ProxyNetwork) -> None:
    for link in network.links():
        assert passes(network, link.src, link.dst), link
    for node in NODES:
        assert roundtrip(network.client_address(node)) == f"{node}:ping".encode()
    ports = {network.address(link.src, link.dst) for link in network.links(include_clients=True)}
    assert len(ports) == len(NODES) * len(NODES)


@pytest.mark.integration
def test_partition_blocks_across_groups_and_not_within(network: ProxyNetwork) -> None:
    network.partition([{"a"}])
    for other in ("b", "c"):
        assert blocked(network, "a", other)
        assert blocked(network, other, "a")
    assert passes(network, "b", "c")
    assert passes(network, "c", "b")
    assert roundtrip(network.client_address("a")) == b"a:ping"  # clients are not partitioned
    assert network.state()["cuts"] == [["a", "b"], ["a", "c"], ["b", "a"], ["c", "a"]]


@pytest.mark.integration
def test_one_way_cut_blocks_only_that_direction(network: ProxyNetwork) -> None:
    network.cut("a", "b")
    assert blocked(network, "a", "b")
    assert passes(network, "b", "a")
    assert network.state() == {"cuts": [["a", "b"]], "latency": []}


@pytest.mark.integration
def test_a_cut_is_silent_and_heal_closes_the_connections_it_held(network: ProxyNetwork) -> None:
    with connect(network.address("a", "b")) as sock:
        assert exchange(sock, b"1", 3, PASS_S) == b"b:1"
        network.cut("a", "b")
        assert exchange(sock, b"2", 3, BLOCK_S) is None  # dropped, and the socket stays open
        network.heal()
        assert wait_eof(sock)
    assert passes(network, "a", "b")


@pytest.mark.integration
def test_heal_restores_every_link(network: ProxyNetwork) -> None:
    network.partition([{"a"}, {"b"}])
    network.latency(50)
    assert blocked(network, "b", "c")
    network.heal()
    assert network.state() == {"cuts": [], "latency": []}
    for link in network.links():
        assert passes(network, link.src, link.dst), link


@pytest.mark.integration
def test_latency_delays_by_at_least_the_configured_time(network: ProxyNetwork) -> None:
    network.latency(200, links=[Link("a", "b")])
    with connect(network.address("a", "b")) as sock:
        start = time.monotonic()
        assert exchange(sock, b"x", 3, PASS_S) == b"b:x"
        assert time.monotonic() - start >= 0.2
    network.latency(300, links=[Link("a", "b")])  # replaces, does not add a second toxic
    assert network.state()["latency"] == [{"link": ["a", "b"], "ms": 300, "jitter_ms": 0}]


@pytest.mark.integration
def test_reset_closes_open_connections_and_accepts_new_ones(network: ProxyNetwork) -> None:
    with connect(network.address("a", "b")) as sock:
        assert exchange(sock, b"1", 3, PASS_S) == b"b:1"
        network.reset([Link("a", "b")])
        assert wait_eof(sock)
    assert passes(network, "a", "b")


@pytest.mark.integration
def test_a_down_upstream_gives_connect_then_eof(
    network: ProxyNetwork, echo_nodes: dict[str, EchoNode]
) -> None:
    echo_nodes["c"].close()
    with connect(network.address("a", "c")) as sock:  # the proxy accepts...
        assert wait_eof(sock)  # ...then closes when it cannot dial c


@pytest.mark.integration
def test_stop_leaves_no_server_process(tmp_path: Path) -> None:
    srv = ToxiproxyServer(server_binary(), log_path=tmp_path / "toxiproxy.log").start()
    pid = srv.pid
    assert pid is not None
    assert psutil.Process(pid).name().startswith("toxiproxy")
    srv.stop()
    assert not srv.running()
    assert not psutil.pid_exists(pid)
    srv.stop()  # idempotent


@pytest.mark.integration
def test_one_server_at_a_time_per_process(server: ToxiproxyServer) -> None:
    with pytest.raises(ToxiproxyError, match="another ToxiproxyServer"):
        ToxiproxyServer(server.binary).start()


def zmq_receive_until(router: zmq.Socket[bytes], last: bytes) -> list[bytes]:
    """Every message the ROUTER receives up to and including `last` (deadline PASS_S)."""
    got: list[bytes] = []
    deadline = time.monotonic() + PASS_S
    while last not in got:
        remaining_ms = int((deadline - time.monotonic()) * 1000)
        if remaining_ms <= 0:
            pytest.fail(f"{last!r} not received, got {got}")
        if router.poll(remaining_ms):
            got.append(router.recv_multipart()[-1])
    return got


def zmq_wait_disconnected(monitor: zmq.Socket[bytes]) -> None:
    """Wait until ZeroMQ has seen its connection close, so the next send is queued."""
    if not monitor.poll(int(PASS_S * 1000)):
        pytest.fail("ZeroMQ did not see the connection close")
    assert recv_monitor_message(monitor)["event"] == zmq.EVENT_DISCONNECTED


@pytest.mark.integration
def test_zeromq_loses_messages_across_a_cut_but_replays_them_across_a_disable(
    server: ToxiproxyServer,
) -> None:
    """Why a cut is a blackhole: a disabled proxy lets ZeroMQ queue and re-send later."""
    with zmq.Context() as ctx, ctx.socket(zmq.ROUTER) as router, ctx.socket(zmq.DEALER) as dealer:
        router.setsockopt(zmq.LINGER, 0)
        dealer.setsockopt(zmq.LINGER, 0)
        port = router.bind_to_random_port(f"tcp://{LOOPBACK}")
        nodes = {"a": f"{LOOPBACK}:1", "b": f"{LOOPBACK}:{port}"}
        with ProxyNetwork.create(server, nodes) as net:
            monitor = dealer.get_monitor_socket(zmq.EVENT_DISCONNECTED)
            dealer.connect(f"tcp://{net.address('a', 'b')}")
            dealer.send(b"before")
            assert zmq_receive_until(router, b"before") == [b"before"]

            net.cut("a", "b")
            for n in range(3):
                dealer.send(b"cut%d" % n)
            net.heal()  # closes the blackholed connection; ZeroMQ reconnects
            zmq_wait_disconnected(monitor)
            dealer.send(b"healed")
            assert zmq_receive_until(router, b"healed") == [b"healed"]

            net._proxy_call(Link("a", "b"), "disable")
            zmq_wait_disconnected(monitor)
            for n in range(3):
                dealer.send(b"queued%d" % n)
            net._proxy_call(Link("a", "b"), "enable")
            assert zmq_receive_until(router, b"queued2") == [b"queued0", b"queued1", b"queued2"]
            dealer.disable_monitor()
            monitor.close()
