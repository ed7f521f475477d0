"""Numbers on the command line: one parser, messages that say what was expected."""

from __future__ import annotations

import argparse
import math
import re

import pytest

from libvirt_vmotion.argtypes import parse_number, positive_number
from libvirt_vmotion.cli.app import main


@pytest.mark.parametrize(
    ("text", "kind", "positive", "value"),
    [
        ("3", int, True, 3),
        (" 42 ", int, False, 42),
        ("0", int, False, 0),
        ("-2", int, False, -2),
        ("2.5", float, True, 2.5),
        ("1e3", float, True, 1000.0),
        ("0", float, False, 0.0),
    ],
)
def test_parses_numbers(text: str, kind: type, positive: bool, value: float) -> None:
    assert parse_number(text, kind, positive=positive) == value


@pytest.mark.parametrize(
    ("text", "kind", "positive", "message"),
    [
        ("abc", int, False, "expected a whole number, got 'abc'"),
        ("2.5", int, False, "expected a whole number, got '2.5'"),
        ("0", int, True, "expected a whole number greater than 0, got '0'"),
        ("-1", int, True, "expected a whole number greater than 0, got '-1'"),
        ("", float, False, "expected a number, got ''"),
        ("nan", float, False, "expected a number, got 'nan'"),
        ("inf", float, True, "expected a number greater than 0, got 'inf'"),
        ("-0.5", float, True, "expected a number greater than 0, got '-0.5'"),
    ],
)
def test_refuses_with_what_was_expected_and_given(
    text: str, kind: type, positive: bool, message: str
) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        parse_number(text, kind, positive=positive)


def test_what_names_the_expected_value() -> None:
    with pytest.raises(ValueError, match="expected a number of seconds greater than 0, got '0'"):
        parse_number("0", float, what="a number of seconds", positive=True)


def test_positive_number_is_an_argparse_type() -> None:
    parse = positive_number(float, what="a number of seconds")
    assert math.isclose(parse("0.25"), 0.25)
    with pytest.raises(argparse.ArgumentTypeError, match="a number of seconds greater than 0"):
        parse("0")


@pytest.mark.parametrize(
    ("option", "text", "message"),
    [
        (
            "--bandwidth",
            "0",
            "argument --bandwidth: expected a whole number of MiB/s greater than 0, got '0'",
        ),
        ("--timeout", "soon", "argument --timeout: expected a number of seconds greater than 0"),
        ("--timeout", "nan", "argument --timeout: expected a number of seconds greater than 0"),
    ],
)
def test_migrate_options_exit_2_with_error_and_hint(
    option: str, text: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["migrate", "web01", "--to", "test:///default", option, text])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}")
    assert "hint: see 'vmotion migrate --help'" in err


def test_bench_numbers_are_refused_with_the_option_and_an_example(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["bench", "--quick", "--budget-s", "inf"]) == 2
    err = capsys.readouterr().err
    assert "error: --budget-s: expected a number, got 'inf'." in err
    assert "hint: e.g. --budget-s 60" in err
