"""The workload's history names each operation's client and group (for the report's lanes)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from harness.history import HistoryWriter
from harness.systems.orbital import OrbitalClient
from harness.workload import OpSpec, perform
from raft.client import CasMismatch


class FakeClient:
    """Answers like a KVClient that reached node n2."""

    last_node: str | None = None

    async def get(self, key: str) -> int | None:
        self.last_node = "n2"
        return 5

    async def put(self, key: str, value: int) -> None:
        self.last_node = "n2"

    async def cas(self, key: str, expected: int | None, new: int) -> None:
        self.last_node = "n2"
        raise CasMismatch(7)


def test_invokes_name_the_client_and_the_group_of_a_placed_source(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    client: Any = OrbitalClient(FakeClient())  # type: ignore[arg-type]
    with HistoryWriter(path) as history:

        async def run() -> None:
            await perform(history, 0, client, OpSpec("write", "k0", 1), "c0", "client-north")
            await perform(history, 0, client, OpSpec("cas", "k0", (1, 2)), "c0", "client-north")
            await perform(history, 1, client, OpSpec("read", "k0", None), "c1", "client")

        asyncio.run(run())
    events = [json.loads(line) for line in path.read_text().splitlines()]
    invokes = [e for e in events if e["type"] == "invoke"]
    assert [(e.get("client"), e.get("group")) for e in invokes] == [
        ("c0", "north"),
        ("c0", "north"),
        ("c1", None),  # unplaced clients: no group
    ]
    assert [e.get("node") for e in events if e["type"] != "invoke"] == ["n2", "n2", "n2"]
