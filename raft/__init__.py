"""Orbital Raft: a Raft consensus library (see docs/library.md).

Everything a user of the library needs is importable from here::

    from raft import FileStorage, RaftNode, StateMachine, ZmqTransport

Names are loaded on first use (PEP 562), so ``import raft.core.types`` (the simulator, the
checkers) does not pay for importing ZeroMQ and pydantic.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from raft.client import CasMismatch, ClientError, KVClient, RaftClient, Rejected, Unknown
    from raft.core.errors import ConfChangeError, NotLeader, ProposalDropped, RaftError
    from raft.core.raft import RaftConfig
    from raft.core.types import ConfChange, ConfChangeType, LogEntry, NodeId, Snapshot
    from raft.kv import KVStore, StateMachine
    from raft.node import NodeStopped, OutcomeUnknown, ProposalLost, RaftNode, ReadFailed
    from raft.security import ClientKeys, KeyFileError, KeyPair, NodeKeys, load_key_pair
    from raft.sessions import Sessions
    from raft.storage import FileStorage, MemoryStorage, Storage, StorageCorrupted, StorageError
    from raft.transport import MemoryNetwork, MemoryTransport, Transport, ZmqTransport

#: public name -> the module that defines it
_WHERE = {
    # the node and what it runs
    "RaftNode": "raft.node",
    "RaftConfig": "raft.core.raft",
    "StateMachine": "raft.kv",
    "KVStore": "raft.kv",
    "Sessions": "raft.sessions",
    # storage
    "Storage": "raft.storage",
    "FileStorage": "raft.storage",
    "MemoryStorage": "raft.storage",
    # transports
    "Transport": "raft.transport",
    "ZmqTransport": "raft.transport",
    "MemoryNetwork": "raft.transport",
    "MemoryTransport": "raft.transport",
    # types
    "ConfChange": "raft.core.types",
    "ConfChangeType": "raft.core.types",
    "LogEntry": "raft.core.types",
    "NodeId": "raft.core.types",
    "Snapshot": "raft.core.types",
    # errors
    "RaftError": "raft.core.errors",
    "NotLeader": "raft.core.errors",
    "ProposalDropped": "raft.core.errors",
    "ConfChangeError": "raft.core.errors",
    "NodeStopped": "raft.node",
    "ProposalLost": "raft.node",
    "OutcomeUnknown": "raft.node",
    "ReadFailed": "raft.node",
    "StorageError": "raft.storage",
    "StorageCorrupted": "raft.storage",
    # clients
    "RaftClient": "raft.client",
    "KVClient": "raft.client",
    "ClientError": "raft.client",
    "Rejected": "raft.client",
    "CasMismatch": "raft.client",
    "Unknown": "raft.client",
    # CURVE keys (docs/library.md, section 4)
    "KeyPair": "raft.security",
    "NodeKeys": "raft.security",
    "ClientKeys": "raft.security",
    "KeyFileError": "raft.security",
    "load_key_pair": "raft.security",
}

__all__ = [
    "CasMismatch",
    "ClientError",
    "ClientKeys",
    "ConfChange",
    "ConfChangeError",
    "ConfChangeType",
    "FileStorage",
    "KVClient",
    "KVStore",
    "KeyFileError",
    "KeyPair",
    "LogEntry",
    "MemoryNetwork",
    "MemoryStorage",
    "MemoryTransport",
    "NodeId",
    "NodeKeys",
    "NodeStopped",
    "NotLeader",
    "OutcomeUnknown",
    "ProposalDropped",
    "ProposalLost",
    "RaftClient",
    "RaftConfig",
    "RaftError",
    "RaftNode",
    "ReadFailed",
    "Rejected",
    "Sessions",
    "Snapshot",
    "StateMachine",
    "Storage",
    "StorageCorrupted",
    "StorageError",
    "Transport",
    "Unknown",
    "ZmqTransport",
    "__version__",
    "load_key_pair",
]


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("orbital-raft")
        except PackageNotFoundError:  # running from a source tree that is not installed
            return "0+unknown"
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'raft' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
