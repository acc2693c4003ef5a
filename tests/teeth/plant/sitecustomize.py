"""Plants the bugs named in ``ORBITAL_PLANT`` into an ``orbital node`` process at start-up.

A teeth test puts this directory (and the repository root) on ``PYTHONPATH`` and names the
bugs, e.g. ``ORBITAL_PLANT=no_check_quorum``; Python imports ``sitecustomize`` before the
program runs, and this applies each bug (``.apply()``: a monkeypatch of ``raft.*``) in node
processes only (``python -m harness.cli node ...``), never in the runner or a client. The
bugs come from the shared catalogue ``tests/teeth/bugs.py``, and from ``real_bugs.py`` here
for the few that only real runs need. An unknown name stops the node at once (exit 2). The
library itself never contains a planted bug.
"""

from __future__ import annotations

import os
import sys


def _is_node() -> bool:
    argv = list(getattr(sys, "orig_argv", []))
    return "harness.cli" in argv and argv[argv.index("harness.cli") + 1 :][:1] == ["node"]


def _plant(names: list[str]) -> None:
    from tests.teeth.plant.real_bugs import catalogue

    bugs = catalogue()
    for name in names:
        if name not in bugs:
            print(f"orbital plant: unknown bug {name!r} (known: {sorted(bugs)})", file=sys.stderr)
            raise SystemExit(2)
        bugs[name].apply()
        print(f"orbital plant: planted {name}", file=sys.stderr, flush=True)


_names = [n for n in os.environ.get("ORBITAL_PLANT", "").split(",") if n.strip()]
if _names and _is_node():
    _plant([n.strip() for n in _names])
