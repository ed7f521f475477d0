"""Network cutover in the namespace lab: announce from the destination, verify, measure."""

from __future__ import annotations

import json
import subprocess

import pytest

from guestcheck import guest_mismatches
from labcli import last_json
from labcli import vmotion_in_client as vmotion
from libvirt_vmotion.lab import guestctl
from libvirt_vmotion.lab.constants import (
    CLIENT_NETNS,
    GUEST_ADDR,
    GUEST_NAME,
    HOST_A,
    HOST_B,
    HOST_BRIDGE,
    HOST_UPLINK,
    PREFIX_LEN,
    SWITCH_BRIDGE,
    SWITCH_NETNS,
)

pytestmark = pytest.mark.lab


def on_host(host_netns: str, *argv: str) -> None:
    subprocess.run(["ip", "netns", "exec", host_netns, *argv], check=True, capture_output=True)


@pytest.mark.usefixtures("guest_on_a")
def test_cutover_announces_from_destination_and_the_switch_follows() -> None:
    result = vmotion(
        "migrate", GUEST_NAME, "--from", HOST_A.uri, "--to", HOST_B.uri,
        "--ping", GUEST_ADDR, "--workload", GUEST_ADDR, "--guest-ip", GUEST_ADDR,
        "--watch-switch", f"{SWITCH_NETNS}/{SWITCH_BRIDGE}", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = last_json(result)
    print(json.dumps(report.get("network_cutover"), indent=1))
    cut = report["network_cutover"]
    assert isinstance(cut, dict)
    assert cut["result"] == "ok", cut["errors"]
    assert cut["address_source"] == "guest-ip"
    announced = [a for a in cut["addresses"] if a["announced"]]
    assert announced == [
        {"mac": announced[0]["mac"], "ip": GUEST_ADDR, "source": "guest-ip", "announced": True}
    ]
    assert cut["resumed_seen"] is True
    # RARP and gratuitous ARP, three rounds each, the first within a poll of the resume.
    assert cut["announcements_sent"] == {"rarp": 3, "garp": 3}
    assert 0 <= cut["first_announcement_after_resume_ms"] < 100
    # The destination bridge has the guest's MAC on its tap ...
    (fdb,) = cut["dest_fdb"]
    assert fdb["verified"] is True
    assert fdb["port"] == fdb["tap"]
    assert fdb["tap"].startswith("vnet")
    # ... and the switch has it on the destination host's port.
    switch = cut["switch"]
    assert switch["learned"] is True
    assert (switch["port_before"], switch["port_after"]) == (HOST_A.switch_port, HOST_B.switch_port)
    assert isinstance(switch["learned_after_resume_ms"], float)
    assert isinstance(cut["source_fdb_removed"], list)
    # What the client felt: nothing lost beyond the switchover pause (10 ms pings),
    # and the TCP stream survived.
    network, workload = report["network"], report["workload"]
    assert isinstance(network, dict)
    assert isinstance(workload, dict)
    downtime_ms = report["downtime_ms"]
    assert isinstance(downtime_ms, int)
    blackout_ms = network["ping_lost"] * network["ping_interval_ms"]
    print(
        f"downtime {downtime_ms} ms, lost {network['ping_lost']} pings ({blackout_ms} ms), "
        f"longest reply gap {network['ping_longest_gap_ms']} ms, TCP gap "
        f"{workload['tcp_stream_longest_gap_ms']} ms, switch learned "
        f"{switch['learned_after_resume_ms']} ms after resume"
    )
    assert blackout_ms <= downtime_ms + 50
    assert workload["tcp_reset"] is False
    assert workload["new_mismatches"] == 0
    assert guest_mismatches() == 0  # the guest itself re-read every page after the move
    # The switch moved, so the guest answers at once from its new host.
    ping = subprocess.run(
        guestctl.client_command(["ping", "-c", "3", "-i", "0.2", "-W", "1", GUEST_ADDR]),
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert " 0% packet loss" in ping.stdout, ping.stdout
    # And back, so the switch points at hosta again for whatever runs next.
    back = vmotion(
        "migrate", GUEST_NAME, "--from", HOST_B.uri, "--to", HOST_A.uri,
        "--guest-ip", GUEST_ADDR, "--watch-switch", f"{SWITCH_NETNS}/{SWITCH_BRIDGE}", "--json",
    )  # fmt: skip
    assert back.returncode == 0, back.stderr
    back_cut = last_json(back)["network_cutover"]
    assert isinstance(back_cut, dict)
    assert back_cut["result"] == "ok", back_cut["errors"]
    assert back_cut["switch"]["port_after"] == HOST_A.switch_port


@pytest.mark.usefixtures("guest_on_a")
def test_netcheck_reports_learning_off_and_missing_uplink_on_the_destination() -> None:
    args = ("netcheck", GUEST_NAME, "--from", HOST_A.uri, "--to", HOST_B.uri, "--json")
    healthy = vmotion(*args)
    assert healthy.returncode == 0, healthy.stderr
    assert last_json(healthy)["verdict"] == "ok"
    # The same bridge verdicts, by name, in the pre-flight report of 'vmotion check'.
    check = vmotion("check", GUEST_NAME, "--from", HOST_A.uri, "--to", HOST_B.uri, "--json")
    assert check.returncode == 0, check.stderr
    checks = last_json(check)["checks"]
    assert isinstance(checks, list)
    pinned = [(c["observed"], c["verdict"]) for c in checks if c["name"] == "bridge-mac-pinned"]
    assert sorted(pinned) == [(HOST_A.name, "ok"), (HOST_B.name, "ok")]
    assert {"bridge-stp-delay", "uplink-flooding", "notify-switches"} <= {c["name"] for c in checks}
    addr = f"{HOST_B.addr}/{PREFIX_LEN}"
    try:
        on_host(HOST_B.netns, "bridge", "link", "set", "dev", HOST_UPLINK, "learning", "off")
        learning_off = vmotion(*args)
        assert learning_off.returncode == 0, learning_off.stderr  # a warning, not a blocker
        found = last_json(learning_off)
        assert found["verdict"] == "warning"
        bad = [r for r in found["results"] if r["verdict"] != "ok"]  # type: ignore[attr-defined]
        assert [(r["name"], r["host"], r["subject"]) for r in bad] == [
            ("uplink-learning", HOST_B.name, f"{HOST_BRIDGE}/{HOST_UPLINK}")
        ]
        assert bad[0]["hint"] == f"bridge link set dev {HOST_UPLINK} learning on"

        # No uplink on br0. hostb's management address lives on br0; move it onto the
        # NIC, as on a host managed over its own interface, so ssh still reaches the
        # agent (the production path) while the guest's bridge is cut off.
        on_host(HOST_B.netns, "ip", "addr", "del", addr, "dev", HOST_BRIDGE)
        on_host(HOST_B.netns, "ip", "link", "set", "dev", HOST_UPLINK, "nomaster")
        on_host(HOST_B.netns, "ip", "addr", "add", addr, "dev", HOST_UPLINK)
        on_host(CLIENT_NETNS, "ip", "neigh", "flush", "to", HOST_B.addr)  # it has a new MAC
        no_uplink = vmotion(*args)
        assert no_uplink.returncode == 3
        found = last_json(no_uplink)
        assert found["verdict"] == "blocker"
        (blocker,) = [r for r in found["results"] if r["verdict"] == "blocker"]  # type: ignore[attr-defined]
        assert blocker["name"] == "bridge-uplink"
        assert f"master {HOST_BRIDGE}" in blocker["hint"]
        text = vmotion(*args[:-1])
        assert "hint: Enslave the host's physical NIC" in text.stdout
        assert "Traceback" not in text.stderr
    finally:
        on_host(HOST_B.netns, "ip", "addr", "flush", "dev", HOST_UPLINK, "scope", "global")
        on_host(HOST_B.netns, "ip", "link", "set", "dev", HOST_UPLINK, "master", HOST_BRIDGE)
        on_host(
            HOST_B.netns, "ip", "addr", "replace", f"{HOST_B.addr}/{PREFIX_LEN}", "dev", HOST_BRIDGE
        )
        on_host(CLIENT_NETNS, "ip", "neigh", "flush", "to", HOST_B.addr)
        on_host(HOST_B.netns, "bridge", "link", "set", "dev", HOST_UPLINK, "learning", "on")
    assert guestctl.find_guest() == [(HOST_A, "running")]
