# ruff: noqa: E501  the table reads one row per line
"""A new operator's bad inputs: each refused with ``error:``/``hint:``, the right exit code, no traceback.

Against libvirt's test driver (a host that is up) and a dead loopback port (a
host that is down). Every argument mistake exits 2 before any host is touched:
the rows for them use the dead port as the destination, so a row that got as
far as connecting would exit 7 instead. ``BAD_INPUTS`` is also the table of the
issue's closing note (``python tests/testdriver/test_bad_inputs.py`` prints it).
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest

from libvirt_vmotion.cli.app import main as vmotion_main

DRIVER = Path(__file__).parent / "data" / "driver.xml"
UP = f"test://{DRIVER}"
DEAD = "qemu+tcp://127.0.0.1:1/system"  # nothing listens on port 1
TO_DEAD = ("--from", UP, "--to", DEAD)
Vmotion = Callable[..., subprocess.CompletedProcess[str]]


class Bad(NamedTuple):
    args: tuple[str, ...]
    code: int
    first_line: str  # the start of stderr's first line, after "error: "
    files: dict[str, str] = {}  # noqa: RUF012  files the args name, written to tmp_path


def mig(*extra: str) -> tuple[str, ...]:
    return ("migrate", "web01", *TO_DEAD, *extra)


def chk(*extra: str) -> tuple[str, ...]:
    return ("check", "web01", *TO_DEAD, *extra)


BAD_INPUTS: tuple[Bad, ...] = (
    # URIs: the scheme and transport are named before anything connects
    Bad(("migrate", "web01", "--to", "not-a-uri"), 2, "argument --to: 'not-a-uri' is not a libvirt URI"),
    Bad(("migrate", "web01", "--to", "foo://bar/system"), 2, "argument --to: 'foo://bar/system': unknown driver 'foo'"),
    Bad(("migrate", "web01", "--to", "qemu+tcpp://kvm2/system"), 2, "argument --to: 'qemu+tcpp://kvm2/system': unknown transport 'tcpp'"),
    Bad(("migrate", "web01", "--to", "qemu+ssh:///system"), 2, "argument --to: 'qemu+ssh:///system' names no host"),
    Bad(("migrate", "web01", "--to", "qemu+tcp://kvm2:abc/system"), 2, "argument --to: 'qemu+tcp://kvm2:abc/system': the port"),
    Bad(("migrate", "web01", "--to", "qemu+tcp://kvm2/"), 2, "argument --to: 'qemu+tcp://kvm2/': the path is '/'"),
    Bad(("migrate", "web01", "--to", DEAD, "--from", "xen:///system"), 2, "argument --from: 'xen:///system': unknown driver 'xen'"),
    Bad(("migrate", "web01", "--from", UP, "--to", UP), 2, "--from and --to are the same URI"),
    # missing pieces
    Bad(("migrate", "web01"), 2, "the following arguments are required: --to"),
    Bad(("migrate", "--to", DEAD), 2, "the following arguments are required: DOMAIN"),
    Bad(("hooks",), 2, "the following arguments are required: {install,uninstall,status}"),
    Bad(("lab",), 2, "the following arguments are required: {up,status,down,"),
    Bad(("policy",), 2, "the following arguments are required: {show}"),
    Bad(("migrat", "web01"), 2, "argument COMMAND: invalid choice: 'migrat'"),
    # numbers
    Bad(mig("--bandwidth", "0"), 2, "argument --bandwidth: expected a whole number of MiB/s greater than 0, got '0'"),
    Bad(mig("--bandwidth", "-5"), 2, "argument --bandwidth: expected a whole number of MiB/s greater than 0, got '-5'"),
    Bad(mig("--bandwidth", "1.5"), 2, "argument --bandwidth: expected a whole number of MiB/s"),
    Bad(mig("--max-downtime", "abc"), 2, "argument --max-downtime: expected a whole number of ms greater than 0"),
    Bad(mig("--max-downtime", "0"), 2, "argument --max-downtime: expected a whole number of ms greater than 0"),
    Bad(mig("--timeout", "0"), 2, "argument --timeout: expected a number of seconds greater than 0"),
    Bad(mig("--timeout", "nan"), 2, "argument --timeout: expected a number of seconds greater than 0"),
    Bad(mig("--max-throttle", "150"), 2, "argument --max-throttle: expected a whole number from 0 to 99, got '150'"),
    Bad(mig("--max-throttle", "-1"), 2, "argument --max-throttle: expected a whole number from 0 to 99"),
    Bad(mig("--downtime-steps", "0"), 2, "argument --downtime-steps: expected a whole number from 1 to 20"),
    Bad(mig("--stall-rounds", "0"), 2, "argument --stall-rounds: expected a whole number greater than 0"),
    Bad(mig("--parallel", "100"), 2, "argument --parallel: expected a whole number from 0 to 64"),
    Bad(mig("--switchover-bandwidth", "inf"), 2, "argument --switchover-bandwidth: expected a number of MiB/s"),
    Bad(mig("--postcopy-resume-wait", "-1"), 2, "argument --postcopy-resume-wait: expected a number of seconds >= 0"),
    Bad(mig("--initial-downtime", "600", "--max-downtime", "300"), 2, "downtime ladder needs 0 < initial (600) <= max (300)"),
    Bad(mig("--max-downtime", "60001"), 2, "argument --max-downtime: expected a whole number of ms greater than 0, at most 60000 (1 minute), got '60001'"),
    Bad(mig("--initial-downtime", "100000"), 2, "argument --initial-downtime: expected a whole number of ms greater than 0, at most 60000"),
    Bad(mig("--timeout", "inf"), 2, "argument --timeout: expected a number of seconds greater than 0, at most 604800 (7 days), got 'inf'"),
    Bad(mig("--timeout", "604801"), 2, "argument --timeout: expected a number of seconds greater than 0, at most 604800 (7 days)"),
    Bad(chk("--timeout", "1e9"), 2, "argument --timeout: expected a number of seconds greater than 0, at most 604800"),
    Bad(mig("--policy", "{long.toml}"), 2, "{long.toml}: max-downtime: expected a whole number of ms greater than 0, at most 60000", {"long.toml": "max-downtime = 90000\n"}),
    Bad(mig("--announce-count", "0"), 2, "argument --announce-count: expected a whole number greater than 0"),
    Bad(mig("--announce-interval-ms", "x"), 2, "argument --announce-interval-ms: expected a whole number"),
    Bad(mig("--dirty-rate-window", "0"), 2, "argument --dirty-rate-window: expected a whole number of seconds"),
    Bad(chk("--dirty-rate-window", "1.5"), 2, "argument --dirty-rate-window: expected a whole number of seconds greater than 0, got '1.5'"),
    Bad(chk("--dirty-rate-window", "-3"), 2, "argument --dirty-rate-window: expected a whole number of seconds"),
    Bad(chk("--bandwidth", "-5"), 2, "argument --bandwidth: expected a whole number of MiB/s greater than 0"),
    Bad(chk("--bandwidth", "0"), 2, "argument --bandwidth: expected a whole number of MiB/s greater than 0"),
    # abbreviations are off everywhere
    Bad(mig("--max-downtim", "300"), 2, "unrecognized arguments: --max-downtim 300"),
    Bad(mig("--bandwith", "100"), 2, "unrecognized arguments: --bandwith 100"),
    Bad(chk("--skip", "cpu-compat"), 2, "unrecognized arguments: --skip cpu-compat"),
    # names and addresses
    Bad(mig("--skip-check", "cpu-compt"), 2, "argument --skip-check: unknown pre-flight check 'cpu-compt'"),
    Bad(mig("--guest-ip", "junk"), 2, "argument --guest-ip: guest ip 'junk': write ADDR or MAC=ADDR"),
    Bad(mig("--guest-ip", "zz:zz=10.0.0.1"), 2, "argument --guest-ip: guest ip 'zz:zz=10.0.0.1'"),
    Bad(mig("--watch-switch", "junk"), 2, "argument --watch-switch: switch 'junk': write NETNS/BRIDGE"),
    Bad(("migrate", "", *TO_DEAD), 2, "argument DOMAIN: the guest name is empty ('')"),
    Bad(("check", " ", *TO_DEAD), 2, "argument DOMAIN: the guest name is empty (' ')"),
    Bad(("netcheck", "", *TO_DEAD), 2, "argument DOMAIN: the guest name is empty"),
    Bad(("status", "", "--from", DEAD), 2, "argument DOMAIN: the guest name is empty"),
    Bad(mig("--ping", "guest01"), 2, "argument --ping: 'guest01' is not an IP address"),
    Bad(mig("--ping", "10.0.0.256"), 2, "argument --ping: '10.0.0.256' is not an IP address"),
    Bad(mig("--ping", "fe80::1"), 2, "argument --ping: 'fe80::1' is an IPv6 address; the ping probe sends ICMPv4 only"),
    Bad(mig("--ping", "224.0.0.1"), 2, "argument --ping: '224.0.0.1' is not a unicast address"),
    Bad(mig("--workload", "10.77.0.50:7000"), 2, "argument --workload: '10.77.0.50:7000' has a port; give the address only"),
    Bad(mig("--workload", "bad_host!"), 2, "argument --workload: 'bad_host!' is neither an IP address nor a host name"),
    Bad(mig("--workload", ""), 2, "argument --workload: '' is neither an IP address nor a host name"),
    Bad(mig("--no-notify-on", "br0 br1"), 2, "argument --no-notify-on: 'br0 br1' is not an interface name"),
    Bad(mig("--no-notify-on", "br0:1"), 2, "argument --no-notify-on: 'br0:1' is not an interface name"),
    Bad(mig("--no-notify-on", "a-bridge-name-too-long"), 2, "argument --no-notify-on: interface name 'a-bridge-name-too-long' is longer than 15 bytes"),
    Bad(("netcheck", "web01", *TO_DEAD, "--no-notify-on", ""), 2, "argument --no-notify-on: an interface name is empty"),
    Bad(mig("--copy-storage", "--no-copy-storage"), 2, "argument --no-copy-storage: not allowed with argument --copy-storage"),
    Bad(("lab", "guest", "start", "--host", "hostc"), 2, "argument --host: invalid choice: 'hostc'"),
    # files
    Bad(mig("--report-file", "/etc"), 2, "argument --report-file: /etc is a directory"),
    Bad(mig("--report-file", "/etc/hostname/r.json"), 2, "argument --report-file: cannot create /etc/hostname/r.json"),
    Bad(mig("--policy", "/nonexistent/policy.toml"), 2, "Cannot read the policy file /nonexistent/policy.toml"),
    Bad(mig("--policy", "{bad.toml}"), 2, "{bad.toml} is not valid TOML", {"bad.toml": "[[\n"}),
    Bad(mig("--policy", "{old.toml}"), 2, "{old.toml}: unknown setting 'max_throttle_percent'", {"old.toml": "max_throttle_percent = 50\n"}),
    Bad(mig("--policy", "{range.toml}"), 2, "{range.toml}: max-throttle: expected a whole number from 0 to 99, got 150", {"range.toml": "max-throttle = 150\n"}),
    Bad(("policy", "show", "--policy", "{type.toml}"), 2, "{type.toml}: timeout: expected a number of seconds greater than 0, got 'soon'", {"type.toml": "timeout = 'soon'\n"}),
    # hosts: these need a host, and say which
    Bad(("migrate", "nosuch", "--from", UP, "--to", "test:///default"), 8, "No guest named 'nosuch'"),
    Bad(("migrate", "stopped01", "--from", UP, "--to", "test:///default"), 3, "Pre-flight found 3 blocker(s) (guest-running, same-host"),
    Bad(("migrate", "web01", *TO_DEAD), 7, f"Cannot reach libvirt at {DEAD}"),
    Bad(("check", "web01", *TO_DEAD), 7, f"Cannot reach libvirt at {DEAD}"),
    Bad(("status", "web01", "--from", UP), 1, f"The libvirt driver at {UP} reports no migration jobs"),
    Bad(("cancel", "web01", "--from", UP), 1, f"The libvirt driver at {UP} reports no migration jobs"),
    Bad(("status", "web01", "--from", DEAD), 7, f"Cannot reach libvirt at {DEAD}"),
    Bad(("agent", "check", DEAD), 7, "No agent on 127.0.0.1: missing ssh as"),
    Bad(("agent", "check", "foo://kvm2/system"), 2, "argument URI: 'foo://kvm2/system': unknown driver 'foo'"),
    Bad(("history", "--since", "yesterday"), 2, "argument --since: expected a time ago like 90m, 12h, 7d"),
    Bad(("history", "--sinc", "1h"), 2, "unrecognized arguments: --sinc 1h"),
    Bad(mig("--metrics-file", "/etc"), 2, "argument --metrics-file: /etc is a directory"),
)  # fmt: skip


def _materialize(bad: Bad, folder: Path) -> tuple[tuple[str, ...], str]:
    args, first = bad.args, bad.first_line
    for name, text in bad.files.items():
        path = folder / name
        path.write_text(text)
        args = tuple(a.replace(f"{{{name}}}", str(path)) for a in args)
        first = first.replace(f"{{{name}}}", str(path))
    return args, first


def test_the_table_is_long_enough() -> None:
    assert len(BAD_INPUTS) >= 40
    assert len({b.args for b in BAD_INPUTS}) == len(BAD_INPUTS)


def run_in_process(
    args: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    """``main(args)`` as the console script runs it: exit code, stdout, stderr.

    In-process (a subprocess per row costs a second of imports each); an
    exception other than SystemExit escapes and fails the test, as a
    traceback would.
    """
    try:
        code = vmotion_main(list(args))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("bad", BAD_INPUTS, ids=lambda b: " ".join(b.args)[:60])
def test_bad_input_is_refused_cleanly(
    bad: Bad, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args, first = _materialize(bad, tmp_path)
    code, out, err = run_in_process(args, capsys)
    assert "Traceback" not in err
    assert code == bad.code, err
    lines = err.splitlines()
    assert lines, "nothing on stderr"
    assert lines[0].startswith(f"error: {first}"), lines[0]
    assert any(line.startswith("hint: ") for line in lines[1:]), err
    assert out == ""


def test_a_bad_input_is_clean_in_a_real_process_too(vmotion: Vmotion) -> None:
    result = vmotion(*mig("--max-throttle", "150"))
    assert result.returncode == 2
    assert result.stderr.startswith("error: argument --max-throttle: expected a whole number")
    assert "Traceback" not in result.stderr


def test_verbose_and_debug_work_after_the_subcommand(vmotion: Vmotion) -> None:
    result = vmotion("migrate", "nosuch", "--from", UP, "--to", "test:///default", "-v")
    assert result.returncode == 8
    assert "INFO " in result.stderr or "error: No guest" in result.stderr
    result = vmotion("check", "nosuch", "--from", UP, "--to", "test:///default", "--debug")
    assert result.returncode == 8
    assert "DEBUG " in result.stderr


def test_log_file_gets_the_error_with_a_timestamp(tmp_path: Path, vmotion: Vmotion) -> None:
    log = tmp_path / "vmotion.log"
    result = vmotion(
        "migrate", "nosuch", "--from", UP, "--to", "test:///default", "--log-file", str(log)
    )
    assert result.returncode == 8
    (line,) = log.read_text().splitlines()
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3} ERROR .*No guest named 'nosuch'", line)
    assert result.stderr.count("No guest named") == 1


def test_agent_check_is_the_cli_not_the_machine_interface(vmotion: Vmotion) -> None:
    result = vmotion("agent", "check", DEAD)
    assert result.returncode == 7, result.stderr
    assert result.stderr.startswith("error: No agent on 127.0.0.1: missing ssh as")


def test_version_has_a_short_flag(vmotion: Vmotion) -> None:
    result = vmotion("-V")
    assert result.returncode == 0
    assert result.stdout.startswith("vmotion ")


def print_table() -> None:
    """Print the table (input, exit code, first line of the message) as Markdown."""
    import tempfile  # noqa: PLC0415

    print("| # | input | exit | first line |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for n, bad in enumerate(BAD_INPUTS, 1):
            args, _ = _materialize(bad, Path(tmp))
            result = subprocess.run(
                [sys.executable, "-m", "libvirt_vmotion", *args],
                capture_output=True, text=True, check=False, timeout=60,
            )  # fmt: skip
            first = result.stderr.splitlines()[0] if result.stderr else ""
            shown = " ".join(args).replace(str(DRIVER), "driver.xml").replace(tmp, "$TMP")
            first = first.replace(str(DRIVER), "driver.xml").replace(tmp, "$TMP")
            print(f"| {n} | `vmotion {shown}` | {result.returncode} | {first} |")


if __name__ == "__main__":
    print_table()
