"""A deliberately broken key-value server, and the two classes that let Orbital test it.

The server keeps its registers in memory and writes them to ``DATA/state.json`` once a second
in the background, but answers ``OK`` to a write at once: it acknowledges writes before they
are durable. A crash (SIGKILL) loses the writes of the last second that it already
acknowledged. With ``durable = true`` in the scenario's ``[system] options`` it saves (and
fsyncs) before it answers, and nothing is lost.

Protocol, one line each way: ``GET k`` -> ``VALUE v`` (``VALUE -``: never written); ``PUT k v``
-> ``OK``; ``CAS k old new`` (``old`` is ``-`` for never written) -> ``OK`` or ``MISMATCH``.

    python examples/brokenkv.py serve --port 7000 --data /tmp/kv [--durable]

docs/testing-your-system.md walks through this file; ``orbital chaos run
examples/brokenkv.toml`` finds the bug (exit 1, the lost write in report.html).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from harness.system import ClusterView, Completion, NodeCommand, Operation, tcp_answers


# ==== the server ================================================================================
class Store:
    """The registers, and how they reach the disk."""

    def __init__(self, data: Path, durable: bool) -> None:
        self.path, self.durable = data / "state.json", durable
        data.mkdir(parents=True, exist_ok=True)
        self.regs: dict[str, int] = json.loads(self.path.read_text()) if self.path.exists() else {}

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump(self.regs, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def handle(self, line: str) -> str:
        cmd, key, *args = line.split()
        if cmd == "GET":
            return f"VALUE {self.regs.get(key, '-')}"
        if cmd == "CAS" and str(self.regs.get(key, "-")) != args[0]:
            return "MISMATCH"
        self.regs[key] = int(args[-1])  # PUT k v, or CAS k old new
        if self.durable:
            self.save()
        return "OK"  # the bug: without durable, this write is only in memory for up to 1 s


async def serve(port: int, data: Path, durable: bool) -> None:
    store = Store(data, durable)

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            writer.write((store.handle(line.decode()) + "\n").encode())
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(client, "127.0.0.1", port)
    async with server:
        while True:
            await asyncio.sleep(1.0)
            store.save()  # the background flush


# ==== the two classes Orbital needs =============================================================
class BrokenKVClient:
    """A :class:`harness.system.Client`: one connection, one line per operation."""

    def __init__(self, address: str, timeout: float) -> None:
        self.address, self.timeout = address, timeout
        self.conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def invoke(self, op: Operation) -> Completion:
        if op.f == "read":
            line = f"GET {op.key}"
        elif op.f == "write":
            line = f"PUT {op.key} {op.value}"
        else:
            assert isinstance(op.value, tuple)
            old, new = op.value
            line = f"CAS {op.key} {'-' if old is None else old} {new}"
        try:
            if self.conn is None:
                host, _, port = self.address.rpartition(":")
                self.conn = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 1)
        except (OSError, TimeoutError) as exc:
            return Completion("fail", error=f"connect: {exc}")  # nothing was sent
        reader, writer = self.conn
        try:
            writer.write(f"{line}\n".encode())
            reply = (await asyncio.wait_for(reader.readline(), self.timeout)).decode().split()
            if not reply:
                raise ConnectionResetError("connection closed")
        except (OSError, TimeoutError) as exc:
            await self.close()
            # sent, no answer: a write may have happened; a read changed nothing
            return Completion("fail" if op.f == "read" else "info", node="n1", error=repr(exc))
        if reply[0] == "MISMATCH":
            return Completion("fail", node="n1", error="mismatch")
        if reply[0] == "VALUE":
            return Completion("ok", None if reply[1] == "-" else int(reply[1]), node="n1")
        return Completion("ok", node="n1")

    async def close(self) -> None:
        if self.conn is not None:
            self.conn[1].close()
            self.conn = None


class BrokenKV:
    """A :class:`harness.system.System`: how to run one node of it."""

    name = "brokenkv"
    ports: tuple[str, ...] = ("client",)  # clients reach it through a Toxiproxy proxy
    peer_addressing = "none"  # a single node: no peers

    def __init__(self, durable: bool = False) -> None:
        self.durable = durable

    def prepare(self, cluster: ClusterView) -> None:
        pass  # no configuration file to write

    def command(self, node: str, cluster: ClusterView) -> NodeCommand:
        port = cluster.listen(node, "client").rpartition(":")[2]
        argv = [sys.executable, __file__, "serve", "--port", port]
        argv += ["--data", str(cluster.data_dir(node))] + (["--durable"] if self.durable else [])
        return NodeCommand(argv)

    async def is_up(self, node: str, cluster: ClusterView) -> bool:
        return await tcp_answers(cluster.listen(node, "client"))

    def open_client(
        self, addresses: Mapping[str, str], cluster: ClusterView, *, process: int, timeout: float
    ) -> BrokenKVClient:
        return BrokenKVClient(addresses["n1"], timeout)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="a key-value server that loses writes")
    parser.add_argument("action", choices=["serve"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--durable", action="store_true", help="save before answering")
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.data, args.durable))
