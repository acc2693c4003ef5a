"""The command lines' whole-number argument type: range, message, exit status 2."""

from __future__ import annotations

import argparse

import pytest

from raft.argtypes import whole_number


def test_in_range_values_parse() -> None:
    parse = whole_number(0, 64)
    assert [parse("0"), parse("64"), parse(" 7 ")] == [0, 64, 7]
    assert whole_number(1)("1000000") == 1_000_000


@pytest.mark.parametrize(
    ("low", "high", "text", "message"),
    [
        (1, None, "0", "must be 1 or more, got '0'"),
        (0, 64, "65", "must be from 0 to 64, got '65'"),
        (0, 64, "-1", "must be from 0 to 64, got '-1'"),
        (0, None, "1.5", "not a whole number: '1.5'"),
        (0, None, "", "not a whole number: ''"),
    ],
)
def test_out_of_range_or_not_a_number_is_refused(
    low: int, high: int | None, text: str, message: str
) -> None:
    with pytest.raises(argparse.ArgumentTypeError) as err:
        whole_number(low, high)(text)
    assert str(err.value) == message


def test_argparse_exits_2_with_the_message(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="orbital x")
    parser.add_argument("--jobs", type=whole_number(0, note="0: all cores"))
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["--jobs", "-2"])
    assert exit_.value.code == 2
    assert "must be 0 or more (0: all cores), got '-2'" in capsys.readouterr().err
