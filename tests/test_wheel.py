"""The wheel as a user gets it: built, installed into a fresh venv outside the repository.

First the library alone (``pip install orbital-raft``): none of the framework's packages come
along, the example program runs, ``orbital --version`` answers and ``orbital chaos`` says which
extra it needs. Then ``orbital-raft[chaos]``: the bundled scenario runs by its name,
``orbital chaos run antarctic-split-brain``, with ``TOXIPROXY_SERVER`` set, from a directory
that is not the repository, and keeps each node's last metrics scrape.

Offline when ``./scripts/setup.sh --tests`` has filled ``.venv/wheelhouse`` (``pip
--no-index``); otherwise pip fetches from the package index.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from chaos.toxiproxy import ToxiproxyNotFound, find_server_binary

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
WHEELHOUSE = ROOT / ".venv" / "wheelhouse"
# tomli-w is a base dependency: `orbital keys init` writes a deployment's cluster file
FRAMEWORK = {"psutil", "matplotlib", "numpy", "rich", "requests", "toxiproxy-python"}


def sh(argv: list[str | Path], cwd: Path, env: dict[str, str], timeout: float = 300) -> str:
    out = subprocess.run(
        [str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=timeout, check=False,
    )  # fmt: skip
    assert out.returncode == 0, f"{argv}: exit {out.returncode}\n{out.stdout}\n{out.stderr}"
    return out.stdout


def test_the_wheel_in_a_fresh_venv(tmp_path: Path) -> None:
    try:
        toxiproxy = find_server_binary()
    except ToxiproxyNotFound:
        if os.environ.get("CI"):
            raise
        pytest.skip("toxiproxy-server not installed")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    index = ["--no-index", "--find-links", WHEELHOUSE] if (WHEELHOUSE / ".stamp").exists() else []
    work = tmp_path / "user"  # outside the repository
    work.mkdir()
    dist = tmp_path / "dist"
    sh([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", dist, *index, ROOT],
       cwd=work, env=env)  # fmt: skip
    (wheel,) = dist.glob("orbital_raft-*.whl")
    venv = tmp_path / "venv"
    sh([sys.executable, "-m", "venv", venv], cwd=work, env=env)
    py, pip, orbital = (
        venv / "bin" / "python",
        [venv / "bin" / "python", "-m", "pip"],
        venv / "bin" / "orbital",
    )

    # the library alone
    sh([*pip, "install", "-q", *index, wheel], cwd=work, env=env)
    installed = {
        line.split("==")[0].lower().replace("_", "-")
        for line in sh([*pip, "freeze"], cwd=work, env=env).splitlines()
    }
    assert not installed & FRAMEWORK, installed & FRAMEWORK
    shutil.copy(ROOT / "examples" / "counter.py", work / "counter.py")
    out = sh([py, "counter.py", "--dir", work / "data"], cwd=work, env=env, timeout=120)
    assert "after a restart: counter = 15" in out
    assert sh([orbital, "--version"], cwd=work, env=env).startswith("orbital 0.")
    chaos = subprocess.run([orbital, "chaos", "list"], cwd=work, env=env, capture_output=True,
                           text=True, timeout=60, check=False)  # fmt: skip
    assert chaos.returncode == 2
    assert "pip install 'orbital-raft[chaos]'" in chaos.stderr

    # the framework
    sh([*pip, "install", "-q", *index, f"{wheel}[chaos]"], cwd=work, env=env)
    assert "antarctic-split-brain" in sh([orbital, "chaos", "list"], cwd=work, env=env)
    env["TOXIPROXY_SERVER"] = str(toxiproxy)
    store = work / "store"
    out = sh([orbital, "chaos", "run", "antarctic-split-brain", "--store", store, "--no-progress",
              "--json"], cwd=work, env=env, timeout=400)  # fmt: skip
    results = json.loads(out)
    assert results["valid"] is True, results
    assert results["exit_code"] == 0
    run_dir = Path(results["run_dir"])
    assert (run_dir / "report.html").is_file()
    scraped = sorted(p.parent.name for p in run_dir.glob("nodes/*/metrics.prom"))
    assert scraped == ["n1", "n2", "n3", "n4", "n5"], results["metrics"]
    text = (run_dir / "nodes" / "n1" / "metrics.prom").read_text()
    assert "orbital_raft_term" in text
