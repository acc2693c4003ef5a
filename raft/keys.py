"""``orbital keys``: CURVE keys and a cluster file for a deployment.

``orbital keys init --dir DIR --nodes 3 [--hosts IP,IP,IP]`` writes, into DIR:

* ``keys/`` (mode 0700): a key pair per node (``n1.key`` public, ``n1.key_secret`` secret,
  mode 0600), one for a client (``client``) and one for an admin (``admin``), as ZeroMQ
  certificate files;
* ``cluster.toml``: every node's addresses and public key, the client and admin public keys.

With ``--hosts`` each node gets its own machine (the same ports on each); without, all run on
127.0.0.1 with consecutive ports. Each machine needs ``cluster.toml`` and only its own node's
secret key, at the same relative path (``keys/n1.key_secret`` on n1's machine); an operator's
machine needs ``cluster.toml`` and the client or admin secret key. The README says how.

``orbital keys new NAME --dir KEYS_DIR`` writes one more key pair and prints its public key
(a new client or admin: add it to ``[security]``; a new node: to its ``[nodes.X]``).

No secret key is ever printed. Nothing is overwritten: an existing file is an error (exit 2).
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from pathlib import Path
from typing import Any

import tomli_w

from raft.security import KeyFileError, create_key_pair

__all__ = ["configure", "init_cluster", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    init = sub.add_parser("init", help="keys for every node, a client and an admin; cluster.toml")
    init.add_argument("--dir", type=Path, required=True, help="where to write (created)")
    init.add_argument("--nodes", type=int, default=3, help="number of nodes (default 3)")
    init.add_argument(
        "--hosts",
        help="comma-separated IP addresses, one per node (default: all on 127.0.0.1)",
    )
    init.add_argument("--cluster-id", default="orbital", help="the cluster's name")
    init.add_argument("--raft-port", type=int, default=7001, help="first Raft port (7001)")
    init.add_argument("--client-port", type=int, default=8001, help="first client port (8001)")
    init.add_argument(
        "--listen-all",
        action="store_true",
        help="nodes bind every interface (0.0.0.0, or :: for IPv6 hosts)",
    )
    new = sub.add_parser("new", help="one more key pair; prints its public key")
    new.add_argument("name", help="file name: NAME.key and NAME.key_secret")
    new.add_argument("--dir", type=Path, required=True, help="the keys directory")


def run(args: argparse.Namespace) -> int:
    try:
        if args.action == "new":
            pair = create_key_pair(args.dir, args.name)
            print(pair.public.decode())
            print(f"wrote {args.dir / args.name}.key and {args.name}.key_secret (mode 0600)")
            return 0
        hosts = _hosts(args.hosts, args.nodes)
        path = init_cluster(
            args.dir,
            args.nodes,
            hosts=hosts,
            cluster_id=args.cluster_id,
            raft_port=args.raft_port,
            client_port=args.client_port,
            listen_all=args.listen_all,
        )
    except (KeyFileError, ValueError, OSError) as exc:
        print(f"orbital keys: {exc}", file=sys.stderr)
        return 2
    keys = args.dir / "keys"
    print(f"wrote {path} and the keys in {keys}/ (secret keys mode 0600)")
    if hosts is not None:
        for i, host in enumerate(hosts):
            node = f"n{i + 1}"
            print(f"  {node} on {host}: copy cluster.toml and keys/{node}.key_secret")
    print("operators: cluster.toml with keys/client.key_secret (or keys/admin.key_secret)")
    return 0


def _hosts(text: str | None, nodes: int) -> list[str] | None:
    if nodes < 1 or nodes > 99:
        raise ValueError("--nodes must be between 1 and 99")
    if text is None:
        return None
    hosts = [h.strip().strip("[]") for h in text.split(",") if h.strip()]
    if len(hosts) != nodes:
        raise ValueError(f"--hosts names {len(hosts)} hosts for {nodes} nodes")
    for h in hosts:
        try:
            ipaddress.ip_address(h)
        except ValueError:
            raise ValueError(f"--hosts: {h!r} is not an IP address") from None
    return hosts


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def init_cluster(
    directory: Path,
    nodes: int,
    *,
    hosts: list[str] | None = None,
    cluster_id: str = "orbital",
    raft_port: int = 7001,
    client_port: int = 8001,
    listen_all: bool = False,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the keys and ``cluster.toml`` into ``directory``; returns the file's path.
    ``extra``: more top-level settings (timing) for the file."""
    path = directory / "cluster.toml"
    if path.exists():
        raise ValueError(f"{path} exists already: not overwriting it")
    keys = directory / "keys"
    ids = [f"n{i + 1}" for i in range(nodes)]
    table: dict[str, Any] = {}
    for i, node in enumerate(ids):
        pair = create_key_pair(keys, node)
        host = hosts[i] if hosts is not None else "127.0.0.1"
        step = 0 if hosts is not None else i
        entry: dict[str, Any] = {
            "raft": _address(host, raft_port + step),
            "client": _address(host, client_port + step),
            "public_key": pair.public.decode(),
            "secret_key_file": f"keys/{node}.key_secret",
        }
        if listen_all:
            entry["listen"] = "::" if ":" in host else "0.0.0.0"
        table[node] = entry
    client = create_key_pair(keys, "client")
    admin = create_key_pair(keys, "admin")
    doc: dict[str, Any] = {"cluster_id": cluster_id, **(extra or {})}
    doc["security"] = {
        "client_keys": [client.public.decode()],
        "admin_keys": [admin.public.decode()],
    }
    doc["nodes"] = table
    path.write_bytes(tomli_w.dumps(doc).encode())
    return path
