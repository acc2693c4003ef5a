"""Membership faults survive a lost answer: the client's retry of a change that took effect
is refused as already done, and the fault counts that as done (it failed the run before)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from chaos import node_faults
from chaos.node_faults import FaultError
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
    monkeypatch.setattr(node_faults, "KVClient", lambda *a, **k: _Client(error))
    cluster = SimpleNamespace(
        client_addr={"n1": "tcp://127.0.0.1:1", "n7": "tcp://127.0.0.1:2"},
        members=["n1", "n7"],
        keys=lambda role: None,
    )
    return asyncio.run(node_faults._client_call(cluster, action, "n7"))  # type: ignore[arg-type]


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
    with pytest.raises(FaultError, match=error):
        _call(monkeypatch, action, error)
