"""Numbers on the command line: one parser, messages that say what was expected."""

from __future__ import annotations

import argparse
import math
import re

import pytest

from libvirt_vmotion.argtypes import (
    HINT_SEPARATOR,
    domain_name,
    host_problem,
    parse_number,
    ping_address,
    positive_number,
)
from libvirt_vmotion.cli.app import main
from libvirt_vmotion.errors import UsageError
from libvirt_vmotion.policy import POLICY_KEYS, load_policy_toml


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


@pytest.mark.parametrize(
    ("text", "value"), [("10.77.0.50", "10.77.0.50"), (" 192.0.2.1 ", "192.0.2.1")]
)
def test_ping_takes_an_ipv4_unicast_address(text: str, value: str) -> None:
    assert ping_address(text) == value


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("guest01", "is not an IP address (names are not resolved)"),
        ("10.0.0.256", "is not an IP address (names are not resolved)"),
        ("", "is not an IP address (names are not resolved)"),
        ("2001:db8::1", "is an IPv6 address; the ping probe sends ICMPv4 only"),
        ("0.0.0.0", "is not a unicast address"),  # noqa: S104  an address refused, not bound
        ("239.1.1.1", "is not a unicast address"),
        ("255.255.255.255", "is not a unicast address"),
    ],
)
def test_ping_refuses_what_the_probe_cannot_ping(text: str, why: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError) as info:
        ping_address(text)
    message, _, hint = str(info.value).partition(HINT_SEPARATOR)
    assert message == f"{text!r} {why}"
    assert "--ping 192.0.2.10" in hint


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("10.77.0.50", ""),
        ("fe80::1", ""),
        ("guest.lab", ""),
        ("guest.lab.", ""),
        ("vmo-guest", ""),
        ("10.77.0.50:7000", "'10.77.0.50:7000' has a port; give the address only"),
        ("guest.lab:7000", "'guest.lab:7000' has a port; give the address only"),
        ("10.0.0.300", "'10.0.0.300' is neither an IP address nor a host name"),
        ("bad_host!", "'bad_host!' is neither an IP address nor a host name"),
        ("-guest", "'-guest' is neither an IP address nor a host name"),
        ("a..b", "'a..b' is neither an IP address nor a host name"),
        ("", "'' is neither an IP address nor a host name"),
        ("x" * 64, f"'{'x' * 64}' is neither an IP address nor a host name"),
    ],
)
def test_host_problem_names_what_is_wrong(text: str, problem: str) -> None:
    assert host_problem(text) == problem


@pytest.mark.parametrize("text", ["", " ", "\t"])
def test_an_empty_domain_is_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="the guest name is empty"):
        domain_name(text)


@pytest.mark.parametrize("text", ["web01", "0", "4dea22b3-1d52-d8f3-2516-782e98ab3fa0"])
def test_a_domain_name_uuid_or_id_is_taken_as_is(text: str) -> None:
    assert domain_name(text) == text


MS_BOUND = "expected a whole number of ms greater than 0, at most 60000 (1 minute)"
S_BOUND = "expected a number of seconds greater than 0, at most 604800 (7 days)"


@pytest.mark.parametrize(
    ("key", "text", "message"),
    [
        ("max-downtime", "60000", ""),
        ("max-downtime", "60001", f"{MS_BOUND}, got '60001'"),
        ("max-downtime", "0", "expected a whole number of ms greater than 0, got '0'"),
        ("initial-downtime", "1e9", "expected a whole number of ms greater than 0, got '1e9'"),
        ("timeout", "604800", ""),
        ("timeout", "604800.5", f"{S_BOUND}, got '604800.5'"),
        ("timeout", "inf", f"{S_BOUND}, got 'inf'"),
        ("timeout", "-inf", "expected a number of seconds greater than 0, got '-inf'"),
        ("timeout", "nan", "expected a number of seconds greater than 0, got 'nan'"),
    ],
)  # fmt: skip
def test_downtime_and_timeout_have_an_upper_bound(key: str, text: str, message: str) -> None:
    policy_key = next(k for k in POLICY_KEYS if k.key == key)
    if not message:
        policy_key.parse(text)
        return
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        policy_key.parse(text)


def test_the_bounds_hold_in_a_policy_file_too() -> None:
    with pytest.raises(UsageError, match=re.escape(f"timeout: {S_BOUND}")):
        load_policy_toml("timeout = 1e12\n")
