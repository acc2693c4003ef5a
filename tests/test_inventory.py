"""Inventory files and the command line of ``placement = "ssh"``: every mistake is one line
naming the file and the field, exit 2, before anything starts (no SSH, no root needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.cli import main as orbital
from harness.inventory import InventoryError, load_inventory


def _write(tmp_path: Path, text: str) -> Path:
    key = tmp_path / "id"
    key.write_text("not really a key\n")
    path = tmp_path / "hosts.toml"
    path.write_text(text.replace("KEY", str(key)))
    return path


GOOD = """
[defaults]
key = "KEY"
python = "/usr/bin/python3"

[hosts.a]
address = "10.0.0.1"
dir = "/var/tmp/orbital"

[hosts.b]
address = "fd00::2"
dir = "/srv/orbital"
user = "ops"
port = 2222
install = "none"
"""


def test_hosts_come_in_file_order_with_defaults_laid_under_each(tmp_path: Path) -> None:
    a, b = load_inventory(_write(tmp_path, GOOD))
    assert (a.name, a.address, a.user, a.port, a.install) == ("a", "10.0.0.1", "root", 22, "code")
    assert (b.name, b.address, b.user, b.port, b.install) == ("b", "fd00::2", "ops", 2222, "none")
    assert a.python == b.python == "/usr/bin/python3"
    assert str(a) == "host a (root@10.0.0.1:22)"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (GOOD.replace('address = "10.0.0.1"\n', ""), r"hosts\.a\.address: Field required"),
        (GOOD.replace("port = 2222", "port = 0"), r"hosts\.b\.port: Input should be greater"),
        (GOOD.replace('install = "none"', 'install = "pip"'), r"hosts\.b\.install"),
        (GOOD.replace('dir = "/srv/orbital"', 'dir = "relative"'), r"hosts\.b\.dir"),
        (GOOD + "colour = 1\n", r"hosts\.b\.colour: Extra inputs"),
        (GOOD.replace('key = "KEY"', 'key = "/nonexistent/id"'), r"hosts\.a\.key: .* not found"),
        ("[defaults]\nuser = 'x'\n", r"no \[hosts\.NAME\] table"),
        (GOOD + "[groups]\n", r"unknown section 'groups'"),
        ("hosts = [", r"not TOML"),
    ],
)
def test_a_bad_inventory_names_the_field(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(InventoryError, match=message):
        load_inventory(_write(tmp_path, text))


def test_the_command_refuses_a_bad_placement_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "store"
    run = ["chaos", "run", "kill-leader", "--store", str(store), "--placement", "ssh"]
    assert orbital(run) == 2
    assert "needs an inventory" in capsys.readouterr().err
    assert orbital([*run, "--inventory", str(tmp_path / "missing.toml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "missing.toml" in err[0]
    assert "No such file" in err[0]
    assert not store.exists(), "a run directory was made for a run that could not start"
