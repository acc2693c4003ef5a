"""The ``orbital`` tool as a product: bad input, version, completion, bundled scenarios, and
the packaging facts (every imported package declared, the library's minimal dependencies)."""

from __future__ import annotations

import ast
import importlib
import json
import os
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

from harness.cli import main as orbital
from harness.scenario import ScenarioError, bundled_scenarios, load_scenario, resolve_scenario

ROOT = Path(__file__).resolve().parents[1]


def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str], *words: str) -> str:
    """Run ``orbital argv``; it must exit 2 with exactly one stderr line naming the problem."""
    code = orbital(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


# ---- bad input: one line, exit 2 --------------------------------------------------------------
def test_a_non_utf8_scenario_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "latin1.toml"
    bad.write_bytes('name = "caf\xe9"\nnodes = ["n1"]\n'.encode("latin-1"))
    one_line_error(capsys, ["chaos", "run", str(bad)], str(bad), "not UTF-8", "0xe9")


def test_a_negative_seed_on_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    config = str(ROOT / "configs" / "kill-leader.toml")
    one_line_error(capsys, ["chaos", "run", config, "--seed", "-1"], "--seed", "0")
    one_line_error(capsys, ["chaos", "run", config, "--time-limit", "0"], "--time-limit")


def test_the_override_check_has_teeth() -> None:
    """Unvalidated overrides (model_copy) accepted -1: the validated path refuses it."""
    scenario, _ = load_scenario(ROOT / "configs" / "kill-leader.toml")
    assert scenario.model_copy(update={"seed": -1}).seed == -1  # what the old code did
    with pytest.raises(ScenarioError, match="--seed"):
        scenario.with_overrides(seed=-1)
    assert scenario.with_overrides(seed=5).seed == 5


def test_a_simulation_too_short_for_its_liveness_check(capsys: pytest.CaptureFixture[str]) -> None:
    one_line_error(capsys, ["sim", "--time", "1ms"], "--time", "too short", "0.9s")


def test_inspect_of_a_file_or_a_foreign_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    passwd = tmp_path / "passwd"
    passwd.write_text("root:x:0:0:root:/root:/bin/bash\n")
    one_line_error(capsys, ["inspect", str(passwd)], str(passwd), "a file, not a node's data")
    one_line_error(capsys, ["inspect", str(tmp_path)], "not a node's data directory")
    one_line_error(capsys, ["inspect", str(tmp_path / "nope")], "no such directory")


def test_an_empty_history(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "history.jsonl"
    empty.write_text("")
    code = orbital(["check", str(empty)])
    out = capsys.readouterr().out
    assert code == 2, out  # neither linearizable nor not: there is nothing to judge
    assert out.strip().splitlines() == [
        f"{empty}: unknown (0 ops, 0 keys, 0.00 s): the history has no operations"
    ]


def test_an_unknown_scenario_name(capsys: pytest.CaptureFixture[str]) -> None:
    one_line_error(capsys, ["chaos", "run", "no-such-one"], "no-such-one", "antarctic-split-brain")


def test_node_with_a_bad_state_machine(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "cluster.toml"
    cfg.write_text('cluster_id = "t"\n[nodes.n1]\nraft = "127.0.0.1:1"\nclient = "127.0.0.1:2"\n')
    base = ["node", "--config", str(cfg), "--id", "n1", "--state-machine"]
    one_line_error(capsys, [*base, "nomodule_xyz:C"], "cannot import 'nomodule_xyz'")
    one_line_error(capsys, [*base, "json:Nope"], "no attribute 'Nope'")
    one_line_error(capsys, [*base, "noclass"], "MODULE:CLASS")
    one_line_error(capsys, [*base, "collections:OrderedDict"], "lacks apply, snapshot, restore")


def test_kv_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    one_line_error(capsys, ["kv", "get", "x"], "--config")
    cfg = tmp_path / "cluster.toml"
    cfg.write_text('cluster_id = "t"\n[nodes.n1]\nraft = "127.0.0.1:1"\nclient = "127.0.0.1:2"\n')
    one_line_error(capsys, ["kv", "--config", str(cfg), "transfer"], "transfer NODE")
    one_line_error(capsys, ["kv", "status", "n9", "--config", str(cfg)], "no node 'n9'")
    one_line_error(capsys, ["kv", "--config", str(cfg), "cas", "x", "one", "2"], "EXPECTED")


# ---- the tool ----------------------------------------------------------------------------------
def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        orbital(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("orbital 0.")


def test_completion_script_and_live_completion(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert orbital(["completion", "bash"]) == 0
    assert "orbital" in capsys.readouterr().out
    out = tmp_path / "completions"
    for line, expected in (
        ("orbital ch", {"chaos", "check"}),
        ("orbital chaos ", {"run", "list"}),
        ("orbital node --log-", {"--log-level", "--log-format"}),
    ):
        env = {
            **os.environ,
            "_ARGCOMPLETE": "1",
            "_ARGCOMPLETE_IFS": "\n",
            "COMP_LINE": line,
            "COMP_POINT": str(len(line)),
            "_ARGCOMPLETE_STDOUT_FILENAME": str(out),
        }
        subprocess.run(
            [sys.executable, "-m", "harness.cli"], env=env, cwd=ROOT, check=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60,
        )  # fmt: skip
        offered = {w.strip() for w in out.read_text().splitlines()}
        assert expected <= offered, (line, offered)


def test_bundled_scenarios_are_listed_and_named(capsys: pytest.CaptureFixture[str]) -> None:
    names = bundled_scenarios()
    assert "antarctic-split-brain" in names
    assert resolve_scenario("antarctic-split-brain") == names["antarctic-split-brain"]
    assert orbital(["chaos", "list", "--json"]) == 0
    listed = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert set(listed) == {p.stem for p in (ROOT / "configs").glob("*.toml")}
    assert "antarctic" in listed["antarctic-split-brain"]["description"]
    assert orbital(["chaos", "list"]) == 0
    assert "antarctic-split-brain" in capsys.readouterr().out


def test_a_command_that_needs_the_chaos_extra_says_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = importlib.import_module

    def without_psutil(name: str, package: str | None = None) -> object:
        if name == "harness.runner":
            raise ModuleNotFoundError("No module named 'psutil'", name="psutil")
        return real(name, package)

    monkeypatch.setattr(importlib, "import_module", without_psutil)
    one_line_error(capsys, ["chaos", "list"], "pip install 'orbital-raft[chaos]'", "psutil")


# ---- packaging facts ----------------------------------------------------------------------------
def _imports(package: str) -> set[str]:
    """Top-level names of the third-party modules imported anywhere in ``package``."""
    found: set[str] = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {a.name.partition(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.partition(".")[0])
    own = {"raft", "chaos", "harness"}
    return {m for m in found if m not in sys.stdlib_module_names and m not in own}


def _declared() -> tuple[set[str], set[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def names(reqs: list[str]) -> set[str]:
        out = set()
        for r in reqs:
            name = r.split(";")[0].split("[")[0]
            for sep in "<>=!~ ":
                name = name.split(sep)[0]
            out.add(name.strip().lower().replace("_", "-"))
        return out

    return names(project["dependencies"]), names(project["optional-dependencies"]["chaos"])


def _distributions(modules: set[str]) -> dict[str, set[str]]:
    dists = packages_distributions()
    return {m: {d.lower().replace("_", "-") for d in dists.get(m, [m])} for m in modules}


def test_every_imported_package_is_declared() -> None:
    base, chaos = _declared()
    for module, dists in _distributions(_imports("raft")).items():
        assert dists & base, f"raft/ imports {module} ({dists}), not a base dependency"
    for package in ("chaos", "harness"):
        for module, dists in _distributions(_imports(package)).items():
            assert dists & (base | chaos), f"{package}/ imports {module} ({dists}): undeclared"
    assert "numpy" in chaos


def test_the_declaration_check_has_teeth() -> None:
    """numpy was imported (harness/report_plots.py) but not declared: the check sees it."""
    base, chaos = _declared()
    undeclared = {
        m
        for m, d in _distributions(_imports("harness")).items()
        if not d & (base | chaos - {"numpy"})
    }
    assert undeclared == {"numpy"}


def test_the_library_alone_needs_no_framework_package() -> None:
    base, _ = _declared()
    # tomli-w: ``orbital keys init`` writes a deployment's cluster file; msgspec: the wire
    # format, KV commands and client protocol; uvloop: the node's event loop
    assert base == {
        "pydantic", "pyzmq", "google-crc32c", "prometheus-client", "tomli-w", "msgspec", "uvloop",
    }  # fmt: skip
    assert not _imports("raft") & {"psutil", "rich", "matplotlib", "requests", "toxiproxy"}
