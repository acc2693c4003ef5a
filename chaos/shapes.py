"""Network partition shapes as sets of cut links, drawn from a seeded RNG (pure).

A shape says which directed links ``src -> dst`` between nodes are cut; every other link is
left alone. All of them are drawn from the ``random.Random`` handed in, so the same seed gives
the same shape:

- ``ring``: the nodes in a random cyclic order; each reaches only its two neighbours.
- ``bridge``: two halves that share one node (the bridge): each half talks within itself
  and to the bridge, never to the other half (Jepsen's bridge).
- ``majorities-ring``: every node sees a majority (itself and its nearest neighbours on a
  random ring), and no two nodes see the same majority (Jepsen's majorities-ring; with 5
  nodes each sees itself and its two neighbours).
- ``isolate-node``: one node (drawn, or given) can neither send nor receive.
- ``one-way``: one node (drawn, or given) can receive but not send.

:func:`cut_links` returns the cut links, sorted; :func:`reachable` is its complement (what
each node still reaches), for the report and the tests.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Final

#: the shapes this module draws (halves, groups and isolate-leader are partitions into
#: groups, done by the nemesis itself)
LINK_SHAPES: Final = ("ring", "bridge", "majorities-ring", "isolate-node", "one-way")

Link = tuple[str, str]


def _all_links(nodes: Sequence[str]) -> set[Link]:
    return {(a, b) for a in nodes for b in nodes if a != b}


def _ring_neighbours(order: Sequence[str], reach: int) -> dict[str, set[str]]:
    """Each node of a cyclic ``order`` with the ``reach`` nodes on each side of it."""
    n = len(order)
    return {
        node: {order[(i + d) % n] for d in range(-reach, reach + 1) if d != 0}
        for i, node in enumerate(order)
    }


def _keep(nodes: Sequence[str], sees: dict[str, set[str]]) -> list[Link]:
    """The links to cut so that each node talks (both ways) only with what it sees."""
    allowed = {(a, b) for a, bs in sees.items() for b in bs}
    allowed |= {(b, a) for a, b in allowed}
    return sorted(_all_links(nodes) - allowed)


def cut_links(
    shape: str, nodes: Sequence[str], rng: random.Random, target: str | None = None
) -> list[Link]:
    """The links ``shape`` cuts among ``nodes`` (``target``: the node of isolate-node and
    one-way; drawn when ``None``)."""
    nodes = sorted(nodes)
    if len(nodes) < 2:
        return []
    if shape in ("isolate-node", "one-way"):
        node = target if target is not None else rng.choice(nodes)
        if node not in nodes:
            raise ValueError(f"{shape}: unknown node {node!r}")
        out = [(node, o) for o in nodes if o != node]
        if shape == "isolate-node":
            out += [(o, node) for o in nodes if o != node]
        return sorted(out)
    order = rng.sample(nodes, len(nodes))
    if shape == "ring":
        return _keep(nodes, _ring_neighbours(order, 1))
    if shape == "majorities-ring":  # itself and ``reach`` on each side: at least a majority
        majority = len(nodes) // 2 + 1
        return _keep(nodes, _ring_neighbours(order, majority // 2))
    if shape == "bridge":
        half = len(order) // 2
        bridge, left, right = order[half], order[:half], order[half + 1 :]
        sees = {n: set(left) | {bridge} for n in left}
        sees.update({n: set(right) | {bridge} for n in right})
        sees[bridge] = set(nodes) - {bridge}
        return _keep(nodes, {k: v - {k} for k, v in sees.items()})
    raise ValueError(f"unknown link shape {shape!r}: {LINK_SHAPES}")


def reachable(nodes: Sequence[str], cuts: Sequence[Link]) -> dict[str, list[str]]:
    """For each node, the nodes it can still send to."""
    cut = set(cuts)
    return {a: [b for b in sorted(nodes) if b != a and (a, b) not in cut] for a in sorted(nodes)}
