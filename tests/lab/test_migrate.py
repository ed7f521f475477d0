"""The first real live migrations, through our CLI, in the namespace lab."""

from __future__ import annotations

import subprocess

import pytest

from guestcheck import verified_guest_status
from labcli import checked_last_json, vmotion_in_client
from libvirt_vmotion.lab import guestctl, topology
from libvirt_vmotion.lab.constants import GUEST_ADDR, GUEST_NAME, HOST_A, HOST_B, LabHost

pytestmark = pytest.mark.lab


def migrate(src: LabHost, dst: LabHost, *extra: str) -> dict[str, object]:
    result = vmotion_in_client(
        "migrate", GUEST_NAME, "--from", src.uri, "--to", dst.uri,
        "--ping", GUEST_ADDR, "--workload", GUEST_ADDR, "--json", *extra,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return checked_last_json(result)


def assert_landed(report: dict[str, object], src: LabHost, dst: LabHost) -> None:
    # The guest runs on exactly one host, the destination, and is gone from the source.
    assert guestctl.find_guest() == [(dst, "running")]
    assert report["result"] == "completed"
    assert report["source"] == {"uri": src.uri, "host": src.name}
    assert report["destination"] == {"uri": dst.uri, "host": dst.name}
    # No page lost: asked of the guest itself, after it re-read its whole working set
    # on the destination; and our report agrees with it.
    guest = verified_guest_status()
    assert guest.mismatches == 0
    workload = report["workload"]
    assert isinstance(workload, dict)
    assert workload["new_mismatches"] == 0
    assert workload["mismatches"] == guest.mismatches
    assert workload["rebooted"] is False
    assert workload["tcp_reset"] is False
    assert workload["tcp_stream_lines"] > 0
    # Figures are present and plausible for a 512 MiB guest dirtying 20 MiB/s.
    assert isinstance(report["downtime_ms"], int)
    assert 0 < report["downtime_ms"] < 5000
    assert isinstance(report["iterations"], int)
    assert report["iterations"] >= 1
    assert isinstance(report["data_transferred_bytes"], int)
    assert report["data_transferred_bytes"] > 64 * 1024 * 1024
    assert isinstance(report["total_time_s"], float)
    assert 0 < report["total_time_s"] < 120
    assert isinstance(report["setup_time_ms"], int)
    # Bridges keep their fixed MACs while guest taps come and go (a bridge that
    # takes a tap's fe:54:.. MAC cuts the hosts off from each other).
    for host in (src, dst):
        mac = topology.run_on_host(host, ["cat", "/sys/class/net/br0/address"]).stdout.strip()
        assert mac == host.bridge_mac
    network = report["network"]
    assert isinstance(network, dict)
    assert network["ping_sent"] > 0
    assert 0 <= network["ping_lost"] < network["ping_sent"]
    assert network["ping_longest_gap_ms"] > 0


@pytest.mark.usefixtures("guest_on_a")
def test_live_migration_there_and_back_loses_nothing() -> None:
    there = migrate(HOST_A, HOST_B, "--max-downtime", "300")
    assert_landed(there, HOST_A, HOST_B)
    back = migrate(HOST_B, HOST_A, "--bandwidth", "200")
    assert_landed(back, HOST_B, HOST_A)
    # The effective values, defaults included (issue 16: never null for a default).
    # Compressed (the forecast's choice under a cap, unless the sender was the limit):
    # QEMU cannot combine multifd with post-copy, so this move had none.
    conv = back["convergence"]
    assert isinstance(conv, dict)
    compressed = conv["measured"]["compressed"]
    assert back["settings"] == {
        "bandwidth_mib_s": 200,
        "max_downtime_ms": 500,
        "timeout_s": 300.0,
        "allow_postcopy": not compressed,
        "max_throttle_percent": 80,
        "compression": "zstd" if compressed else "none",
    }
    print("there:", there)
    print("back:", back)


@pytest.mark.usefixtures("guest_on_a")
def test_destination_refusal_keeps_the_guest_running_on_the_source() -> None:
    # Host B holds a different guest of the same name (another UUID): libvirt
    # there refuses the incoming migration.
    xml = (
        f"<domain type='qemu'><name>{GUEST_NAME}</name><memory unit='MiB'>128</memory>"
        "<os><type arch='x86_64'>hvm</type></os></domain>"
    )
    subprocess.run(
        ["virsh", "-c", guestctl.local_uri(HOST_B), "define", "/dev/stdin"],
        input=xml, text=True, check=True, capture_output=True,
    )  # fmt: skip
    result = vmotion_in_client(
        "migrate", GUEST_NAME, "--from", HOST_A.uri, "--to", HOST_B.uri,
        "--workload", GUEST_ADDR, "--json",
    )  # fmt: skip
    assert result.returncode == 5, result.stderr
    assert "Traceback" not in result.stderr
    assert "hint:" in result.stderr
    assert checked_last_json(result)["result"] == "aborted"
    placement = dict(guestctl.find_guest())
    assert placement[HOST_A] == "running"
    assert placement[HOST_B] == "shut off"


@pytest.mark.usefixtures("guest_on_a")
def test_user_mistakes_in_the_lab_get_hints_not_tracebacks() -> None:
    unknown = vmotion_in_client("migrate", "nosuch", "--from", HOST_A.uri, "--to", HOST_B.uri)
    assert unknown.returncode == 8
    assert "hint:" in unknown.stderr
    assert "Traceback" not in unknown.stderr
    down = vmotion_in_client(
        "migrate", GUEST_NAME, "--from", HOST_A.uri, "--to", "qemu+tcp://10.77.0.2:1/system"
    )
    assert down.returncode == 7
    assert "Traceback" not in down.stderr
    assert guestctl.find_guest() == [(HOST_A, "running")]
    bad_rate = subprocess.run(
        guestctl.self_command("lab", "guest", "set", "rate", "fast"),
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert bad_rate.returncode == 2
    assert "hint:" in bad_rate.stderr
    assert "Traceback" not in bad_rate.stderr
