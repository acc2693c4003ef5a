"""Scenario files: every shipped config validates; a bad one is an error naming the field."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from harness.scenario import ScenarioError, load_scenario, parse_scenario

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.toml"))
BASE: dict[str, Any] = {"name": "t", "nodes": ["n1", "n2", "n3"]}


def test_configs_exist() -> None:
    names = {p.stem for p in CONFIGS}
    assert {"antarctic-split-brain", "kill-leader", "partition-halves", "pause", "mixed"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_configs_validate(path: Path) -> None:
    scenario, text = load_scenario(path)
    assert scenario.name == path.stem
    assert 20 <= scenario.duration <= 40, "keep CI runs modest"
    assert tomllib.loads(text)["name"] == scenario.name


def test_antarctic_config_places_clients_on_both_sides() -> None:
    scenario, _ = load_scenario(CONFIGS[0].parent / "antarctic-split-brain.toml")
    assert scenario.client_sources() == {"client-north": 3, "client-antarctic": 3}
    assert scenario.source_group("client-antarctic") == "antarctic"
    assert scenario.setup.leader_in == "antarctic"


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"workload": {"rate": 0}}, "x.toml: workload.rate: Input should be greater than 0"),
        ({"workload": {"speed": 3}}, "x.toml: workload.speed: Extra inputs are not permitted"),
        ({"timing": {"tick_ms": -1}}, "x.toml: timing.tick_ms: Input should be greater than 0"),
        ({"nemesis": [{"kind": "flood", "at": 1}]}, "x.toml: nemesis.0.kind: Input should be"),
        ({"nemesis": [{"kind": "kill"}]}, "x.toml: nemesis.0: give exactly one of 'at'"),
        ({"groups": {"a": ["n9"]}}, "x.toml: groups.a: unknown node 'n9'"),
        ({"workload": {"placement": {"south": 4}}}, "workload.placement: unknown group 'south'"),
    ],
)
def test_bad_config_names_the_field(patch: dict[str, Any], message: str) -> None:
    with pytest.raises(ScenarioError) as info:
        parse_scenario({**BASE, **patch}, "x.toml")
    assert message in str(info.value)


def test_bad_toml_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("name = \n", encoding="utf-8")
    with pytest.raises(ScenarioError, match=r"broken\.toml: not valid TOML"):
        load_scenario(path)


def test_cli_bad_config_exits_2_naming_the_field(tmp_path: Path) -> None:
    path = tmp_path / "x.toml"
    path.write_text('name = "x"\nnodes = ["n1"]\n[workload]\nrate = 0\n', encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", "chaos", "run", str(path), "--store",
         str(tmp_path / "store"), "--no-progress"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert f"{path}: workload.rate: Input should be greater than 0" in proc.stderr
    assert not (tmp_path / "store").exists()


def test_cli_without_toxiproxy_exits_2(tmp_path: Path) -> None:
    config = CONFIGS[0].parent / "kill-leader.toml"
    env = {**os.environ, "TOXIPROXY_SERVER": str(tmp_path / "missing")}
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", "chaos", "run", str(config), "--store",
         str(tmp_path / "store"), "--no-progress"],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "TOXIPROXY_SERVER" in proc.stderr
