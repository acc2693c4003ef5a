"""Partition shapes drawn from the seed (chaos/shapes.py): each has the property its name
promises."""

from __future__ import annotations

import random

import pytest

from chaos.shapes import LINK_SHAPES, cut_links, reachable

FIVE = ["n1", "n2", "n3", "n4", "n5"]


def sees(nodes: list[str], shape: str, seed: int, target: str | None = None) -> dict[str, set[str]]:
    """Who each node talks with both ways, itself included."""
    cuts = cut_links(shape, nodes, random.Random(seed), target)
    out = reachable(nodes, cuts)
    return {a: {a} | {b for b in out[a] if a in out[b]} for a in nodes}


@pytest.mark.parametrize("seed", range(20))
def test_ring_each_node_reaches_only_its_two_neighbours(seed: int) -> None:
    view = sees(FIVE, "ring", seed)
    assert all(len(v) == 3 for v in view.values())
    a = FIVE[0]  # walking neighbours visits every node: one cycle
    seen, prev, cur = [a], None, a
    while True:
        nxt = sorted(view[cur] - {cur, prev} if prev else view[cur] - {cur})[0]
        if nxt == a:
            break
        seen.append(nxt)
        prev, cur = cur, nxt
    assert sorted(seen) == FIVE


@pytest.mark.parametrize("seed", range(20))
def test_bridge_two_halves_share_one_node(seed: int) -> None:
    view = sees(FIVE, "bridge", seed)
    (bridge,) = [n for n, v in view.items() if len(v) == 5]
    others = [n for n in FIVE if n != bridge]
    halves = {frozenset(view[n] - {bridge}) for n in others}
    assert len(halves) == 2
    left, right = halves
    assert not left & right
    assert len(left) == len(right) == 2
    for n in left:
        assert view[n] == set(left) | {bridge}


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("nodes", [FIVE, [f"n{i}" for i in range(1, 8)]])
def test_majorities_ring_every_node_sees_a_different_majority(seed: int, nodes: list[str]) -> None:
    view = sees(nodes, "majorities-ring", seed)
    assert all(len(v) > len(nodes) // 2 for v in view.values())
    assert len({frozenset(v) for v in view.values()}) == len(nodes)


def test_isolate_node_and_one_way_cut_exactly_one_node() -> None:
    cuts = cut_links("isolate-node", FIVE, random.Random(1), "n3")
    assert sorted(cuts) == sorted(
        [("n3", n) for n in FIVE if n != "n3"] + [(n, "n3") for n in FIVE if n != "n3"]
    )
    one_way = reachable(FIVE, cut_links("one-way", FIVE, random.Random(1), "n2"))
    assert one_way["n2"] == []
    assert all("n2" in one_way[n] for n in FIVE if n != "n2")
    drawn = {
        next(
            n
            for n, r in reachable(FIVE, cut_links("isolate-node", FIVE, random.Random(s))).items()
            if not r
        )
        for s in range(40)
    }
    assert len(drawn) > 1  # the node is drawn from the seed


@pytest.mark.parametrize("shape", LINK_SHAPES)
def test_the_same_seed_gives_the_same_shape(shape: str) -> None:
    a = cut_links(shape, FIVE, random.Random(9))
    assert a == cut_links(shape, FIVE, random.Random(9))
    assert len({tuple(cut_links(shape, FIVE, random.Random(s))) for s in range(30)}) > 1


def test_unknown_shapes_and_nodes_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown link shape"):
        cut_links("star", FIVE, random.Random(1))
    with pytest.raises(ValueError, match="unknown node"):
        cut_links("one-way", FIVE, random.Random(1), "n9")
