"""The import graph shows the design (README, "Which package may import which"):

- ``raft/`` (the library) imports nothing from ``chaos/`` or ``harness/``;
- ``chaos/`` (fault primitives) imports nothing from ``harness/``;
- ``harness/`` may import both; its module-level imports have no cycle (the runner and the
  expectations share ``harness.run_state`` instead of importing each other).

Every import counts, also one inside a function or under ``TYPE_CHECKING``: each is read from
the source with :mod:`ast`, nothing is imported. Each rule is also shown failing on a
planted file.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("raft", "chaos", "harness")
#: package -> the packages of ours it must not import
FORBIDDEN = {"raft": ("chaos", "harness"), "chaos": ("harness",)}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path, root: Path, *, top_level_only: bool = False) -> Iterator[tuple[int, str]]:
    """(line, imported module) for every import in the file (relative ones resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = module_name(path, root).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    nodes = tree.body if top_level_only else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            yield node.lineno, base
            for alias in node.names:  # ``from harness import cluster`` imports harness.cluster
                yield node.lineno, f"{base}.{alias.name}"


def violations(root: Path) -> list[str]:
    """Every import that breaks :data:`FORBIDDEN`, as ``file:line: a imports b``."""
    out = []
    for package, banned in FORBIDDEN.items():
        for path in sorted((root / package).rglob("*.py")):
            for line, name in imports(path, root):
                if name.split(".")[0] in banned:
                    rel = path.relative_to(root)
                    out.append(f"{rel}:{line}: {package} imports {name}")
    return sorted(set(out))


def cycles(root: Path, package: str) -> list[list[str]]:
    """Cycles of module-level imports between the modules of ``package``."""
    files = {module_name(p, root): p for p in (root / package).rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        for _, name in imports(path, root, top_level_only=True):
            if name in files and name != mod and files[name].name != "__init__.py":
                graph[mod].add(name)
    found: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                found.append([*stack[stack.index(n) :], n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    return found


def test_raft_and_chaos_keep_to_their_imports() -> None:
    assert violations(ROOT) == []


def test_no_import_cycle_in_harness() -> None:
    assert cycles(ROOT, "harness") == []
    assert cycles(ROOT, "chaos") == []


def test_runner_and_expectations_do_not_import_each_other() -> None:
    def names(mod: str) -> set[str]:
        return {n for _, n in imports(ROOT / "harness" / f"{mod}.py", ROOT)}

    assert not any(n.startswith("harness.runner") for n in names("expectations"))
    assert not any(n.startswith("harness.expectations") for n in names("run_state"))


def test_the_rules_have_teeth(tmp_path: Path) -> None:
    """A planted import of each forbidden kind is found, with its file and line; so is a
    planted cycle."""
    for package in PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "raft" / "bad.py").write_text("import os\nfrom chaos.nat import Route\n")
    (tmp_path / "chaos" / "bad.py").write_text(
        "def f():\n    from harness import cluster\n    return cluster\n"
    )
    (tmp_path / "chaos" / "ok.py").write_text("from raft import wal\nfrom . import bad\n")
    assert violations(tmp_path) == [
        "chaos/bad.py:2: chaos imports harness",
        "chaos/bad.py:2: chaos imports harness.cluster",
        "raft/bad.py:2: raft imports chaos.nat",
        "raft/bad.py:2: raft imports chaos.nat.Route",
    ]
    (tmp_path / "harness" / "a.py").write_text("from harness.b import x\n")
    (tmp_path / "harness" / "b.py").write_text("from harness import a\nx = 1\n")
    assert cycles(tmp_path, "harness") == [["harness.a", "harness.b", "harness.a"]]
