"""Membership faults survive a lost answer: the client's retry of a change that took effect
is refused as already done, and the change counts as done (it failed the run before). The
change is Orbital's membership capability (``OrbitalSystem._change``); a refusal of anything
else still fails the fault (``chaos.node_faults`` turns it into a ``FaultError``)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from chaos import node_faults
from chaos.node_faults import FaultError
from harness.systems.orbital import OrbitalSystem
from raft.client import KVError


class _Client:
    def __init__(self, error: str) -> None:
        self.error = error

    async def __aenter__(self) -> _Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def membership(self, action: str, node: str) -> dict[str, Any]:
        raise KVError(self.error)


def _call(monkeypatch: pytest.MonkeyPatch, action: str, error: str) -> dict[str, Any]:
    system = OrbitalSystem()
    monkeypatch.setattr(system, "kv_client", lambda *a, **k: _Client(error))
    cluster = SimpleNamespace(
        members=["n1", "n7"], listen=lambda node, port: f"127.0.0.1:{len(node)}"
    )
    return asyncio.run(system._change(action, "n7", cluster))  # type: ignore[arg-type]


def test_a_retried_add_that_took_effect_is_done(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _call(monkeypatch, "add_voter", "n7 is already a member")["already"] is True


def test_a_retried_remove_that_took_effect_is_done(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _call(monkeypatch, "remove", "n7 is not a member")["already"] is True


@pytest.mark.parametrize(
    ("action", "error"),
    [("add_voter", "a membership change is still pending"), ("remove", "forbidden")],
)
def test_any_other_refusal_still_fails_the_fault(
    monkeypatch: pytest.MonkeyPatch, action: str, error: str
) -> None:
    with pytest.raises(RuntimeError, match=error):
        _call(monkeypatch, action, error)

    class _Cluster:  # the fault sees the refusal as a FaultError naming it
        retired: set[str] = set()

        async def remove_member(self, node: str) -> dict[str, Any]:
            raise RuntimeError(f"membership remove {node} refused: {error}")

    with pytest.raises(FaultError, match=error):
        asyncio.run(node_faults.remove_node(_Cluster(), "n7"))  # type: ignore[arg-type]
