"""Inventory files: the hosts of a remote placement (``placement = "ssh"``).

An inventory is a TOML file (``scripts/testbed.sh up`` writes one for its namespace hosts)::

    [defaults]                      # any host setting, for every host that does not set it
    user = "root"
    key = "/home/me/.ssh/id_ed25519"          # the private key to log in with (no password)
    known_hosts = "/home/me/.ssh/known_hosts" # host keys are always checked (default:
                                              # ~/.ssh/known_hosts)
    port = 22
    python = "/usr/bin/python3"     # the hosts' Python: needs orbital-raft's dependencies
    install = "code"                # "code": upload raft/, chaos/, harness/ to DIR/code;
                                    # "none": python already has orbital-raft installed
    toxiproxy = "toxiproxy-server"  # the hosts' Toxiproxy server binary
    connect_timeout = 5.0           # seconds

    [hosts.h1]
    address = "10.77.0.11"          # where the control node reaches it; nodes listen here
    dir = "/var/tmp/orbital"        # its working directory (code, runs/<run>/...)

Nodes are placed on the hosts in the file's order, round robin (``n1`` on the first host,
``n2`` on the second, ...). :func:`load_inventory` raises :class:`InventoryError` naming the
file and the field for anything wrong, before anything starts.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from chaos.remote import HostSpec


class InventoryError(ValueError):
    """An inventory file is missing or invalid; the message names the file and the field."""


class _Host(BaseModel):
    model_config = ConfigDict(extra="forbid")

    address: str = Field(min_length=1)
    dir: str = Field(min_length=2, pattern=r"^/")
    user: str = Field(default="root", min_length=1)
    key: Path
    known_hosts: Path | None = None
    port: int = Field(default=22, ge=1, le=65535)
    python: str = "python3"
    install: Literal["code", "none"] = "code"
    toxiproxy: str = "toxiproxy-server"
    connect_timeout: float = Field(default=5.0, gt=0, le=120)


def load_inventory(path: Path) -> list[HostSpec]:
    """The hosts of the inventory at ``path``, in file order."""
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InventoryError(f"inventory {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise InventoryError(f"inventory {path}: not TOML: {exc}") from None
    unknown = set(doc) - {"defaults", "hosts"}
    if unknown:
        raise InventoryError(f"inventory {path}: unknown section {sorted(unknown)[0]!r}")
    defaults: dict[str, Any] = doc.get("defaults", {})
    hosts: dict[str, Any] = doc.get("hosts", {})
    if not hosts:
        raise InventoryError(f"inventory {path}: no [hosts.NAME] table")
    out = []
    for name, table in hosts.items():
        try:
            host = _Host.model_validate({**defaults, **table})
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first.get("loc", ()))
            msg = str(first.get("msg", "invalid")).removeprefix("Value error, ")
            raise InventoryError(f"inventory {path}: hosts.{name}.{field}: {msg}") from None
        for label, file in (("key", host.key), ("known_hosts", host.known_hosts)):
            if file is not None and not file.is_file():
                raise InventoryError(f"inventory {path}: hosts.{name}.{label}: {file} not found")
        out.append(HostSpec(name=name, **host.model_dump()))
    return out
