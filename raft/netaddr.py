"""Network addresses of nodes: ``HOST:PORT``, IPv4 or IPv6, and which ones are loopback.

An address is ``HOST:PORT`` where HOST is an IPv4 address (``10.0.0.1``), an IPv6 address in
brackets (``[fd00::1]``) or, only where this node *connects* (a peer, a client's view of a
node), a DNS name. A node *binds* its own addresses, so those must be IP addresses (or the
wildcards ``0.0.0.0`` and ``[::]``, "every interface"). Port 0 asks the OS for a free port
(tests).

Without CURVE keys a node refuses any address that is not loopback (``127.0.0.0/8``,
``[::1]``): the traffic would be readable and forgeable by anyone on the network
(``raft.security``).
"""

from __future__ import annotations

import ipaddress

__all__ = [
    "AddressError",
    "endpoint",
    "from_endpoint",
    "is_ipv6",
    "is_loopback",
    "split",
    "validate",
]


class AddressError(ValueError):
    """A malformed address (the message says what is wrong)."""


def split(address: str) -> tuple[str, int]:
    """``(host, port)`` of ``HOST:PORT`` (the host without brackets)."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise AddressError(f"must be HOST:PORT, got {address!r}")
    if host.startswith("["):
        if not host.endswith("]"):
            raise AddressError(f"unbalanced brackets in {address!r}")
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise AddressError(f"not an IPv6 address in brackets: {address!r}") from None
    elif ":" in host:
        raise AddressError(f"an IPv6 address needs brackets ([::1]:PORT), got {address!r}")
    return host, int(port)


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def validate(address: str, *, bind: bool) -> str:
    """``address`` if well formed; a bound address must be an IP address."""
    host, port = split(address)
    if bind and _ip(host) is None:
        raise AddressError(f"a node binds its own address: an IP address is needed, got {host!r}")
    if not bind and port == 0:
        raise AddressError(f"port 0 cannot be connected to: {address!r}")
    return address


def is_loopback(address: str) -> bool:
    """Whether ``address`` stays on this machine (127.0.0.0/8 or ::1; ``localhost``)."""
    host, _ = split(address)
    ip = _ip(host)
    return host == "localhost" if ip is None else ip.is_loopback


def is_ipv6(address: str) -> bool:
    host, _ = split(address)
    return ":" in host


def endpoint(address: str) -> str:
    """The ZeroMQ endpoint of ``address`` (``tcp://[::1]:7001``; port 0 becomes ``*``)."""
    host, port = split(address)
    if ":" in host:
        host = f"[{host}]"
    return f"tcp://{host}:{'*' if port == 0 else port}"


def from_endpoint(ep: str) -> str:
    """``HOST:PORT`` of a ZeroMQ ``tcp://`` endpoint (a bound socket's ``LAST_ENDPOINT``)."""
    return ep.removeprefix("tcp://")
