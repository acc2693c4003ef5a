"""What the Prometheus metrics cost a node: CPU per committed command, metrics on vs off.

Prints one JSON object. Three ``RaftNode``s in this process over ``MemoryNetwork`` and
``MemoryStorage`` (no sockets, no fsync: the node's own Python work is all there is to
measure), ``--clients`` concurrent submitters on the leader, ``--commands`` in all. Each
round runs a fresh cluster with metrics off, then one with metrics on (``metrics_address``:
counters, both histograms, the HTTP server idle in its thread), alternating which goes first;
the figure is process CPU time (``time.process_time``) per committed command, which a busy
machine disturbs far less than wall-clock throughput. The median over ``--rounds`` of each,
and their ratio.

Usage: ``python -m bench.metrics [--commands 20000] [--clients 64] [--rounds 5]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from typing import Any

from raft import MemoryNetwork, MemoryStorage, NodeId, NotLeader, ProposalDropped, RaftNode
from raft.kv import KVStore, Write, encode_command


async def one_run(commands: int, clients: int, metrics: bool) -> dict[str, float]:
    net = MemoryNetwork()
    ids = ["a", "b", "c"]
    address = "127.0.0.1:0" if metrics else None
    nodes = {
        i: RaftNode(i, ids, net.join(NodeId(i)), MemoryStorage(), KVStore(), seed=3,
                    metrics_address=address)
        for i in ids
    }  # fmt: skip
    for n in nodes.values():
        await n.__aenter__()
    try:
        leader = nodes[await nodes["a"].wait_leader()]
        per_client = commands // clients
        done = 0

        async def client(c: int) -> None:
            nonlocal done
            for k in range(per_client):
                cmd = encode_command(Write(key=f"k{c}", value=k), f"c{c}", k + 1)
                while True:
                    try:
                        await leader.submit(cmd)
                        break
                    except (NotLeader, ProposalDropped):
                        await asyncio.sleep(0.001)
                done += 1

        cpu0, wall0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(client(c) for c in range(clients)))
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    finally:
        for n in nodes.values():
            await n.__aexit__(None, None, None)
    return {"cpu_us_per_command": 1e6 * cpu / done, "commands_per_s": done / wall}


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.metrics", description=__doc__)
    p.add_argument("--commands", type=int, default=20_000)
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    runs: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
    for r in range(args.rounds):
        for mode in ("off", "on") if r % 2 == 0 else ("on", "off"):
            runs[mode].append(asyncio.run(one_run(args.commands, args.clients, mode == "on")))
    out: dict[str, Any] = {
        "setup": {"nodes": 3, "transport": "MemoryNetwork", "storage": "MemoryStorage",
                  "commands": args.commands, "clients": args.clients, "rounds": args.rounds,
                  "cpus": os.cpu_count(), "loadavg": [round(x, 2) for x in os.getloadavg()]},
    }  # fmt: skip
    for mode, rs in runs.items():
        out[mode] = {
            "cpu_us_per_command_median": round(
                statistics.median(r["cpu_us_per_command"] for r in rs), 2
            ),
            "cpu_us_per_command": [round(r["cpu_us_per_command"], 2) for r in rs],
            "commands_per_s": [round(r["commands_per_s"]) for r in rs],
        }
    out["cpu_ratio_on_over_off"] = round(
        out["on"]["cpu_us_per_command_median"] / out["off"]["cpu_us_per_command_median"], 3
    )
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
