"""Errors the core raises to its caller (the driver, or a client through it)."""

from __future__ import annotations

from raft.core.types import NodeId


class RaftError(Exception):
    """Base of every error the Raft library raises on purpose."""


class NotLeader(RaftError):
    """This node is not the leader; ``leader_hint`` is the leader it knows of, if any."""

    def __init__(self, leader_hint: NodeId | None) -> None:
        super().__init__(f"not the leader (leader: {leader_hint or 'unknown'})")
        self.leader_hint = leader_hint


class ProposalDropped(RaftError):
    """The leader refused a proposal; nothing was appended (back-pressure, transfer...)."""


class ConfChangeError(RaftError):
    """A membership change was refused (another is pending, or it makes no sense)."""


class RaftUsageError(RaftError):
    """The driver broke the core's calling contract (e.g. stepped between ready and advance)."""
