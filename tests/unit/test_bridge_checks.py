"""Network pre-flight verdicts over plain bridge facts (no host needed)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from libvirt_vmotion.preflight.netcheck import (
    CHECK_NAMES,
    BridgeFacts,
    GuestNic,
    NetCheckResult,
    PortFacts,
    PortRole,
    Severity,
    StpState,
    check_bridge_mac,
    check_dest_bridge,
    check_networks,
    role_of,
    worst,
)


def make_port(name: str = "uplink0", **changes: Any) -> PortFacts:
    port = PortFacts(
        name=name, kind="veth", up=True, stp_state=StpState.FORWARDING, learning=True,
        unicast_flood=True, mcast_flood=True, bcast_flood=True, mtu=1500,
    )  # fmt: skip
    return dataclasses.replace(port, **changes)


def make_bridge(
    host: str = "hostb", ports: tuple[PortFacts, ...] | None = None, **changes: object
) -> BridgeFacts:
    bridge = BridgeFacts(
        host=host, name="br0", exists=True, up=True, mtu=1500,
        ports=(make_port(),) if ports is None else ports,
    )  # fmt: skip
    return dataclasses.replace(bridge, **changes)  # type: ignore[arg-type]


def by_name(results: tuple[NetCheckResult, ...], name: str) -> list[NetCheckResult]:
    return [r for r in results if r.name == name]


def not_ok(results: tuple[NetCheckResult, ...]) -> list[tuple[str, Severity]]:
    return [(r.name, r.severity) for r in results if r.severity is not Severity.OK]


def test_a_healthy_bridge_passes_every_check() -> None:
    results = check_dest_bridge(make_bridge(), make_bridge(host="hosta"))
    assert not_ok(results) == []
    assert {r.name for r in results} >= {
        "bridge-exists", "bridge-up", "bridge-uplink", "uplink-forwarding", "uplink-flooding",
        "uplink-learning", "bridge-stp-delay", "bridge-mtu", "bridge-vlan-filtering",
    }  # fmt: skip


def test_missing_bridge_is_a_blocker_and_stops_there() -> None:
    results = check_dest_bridge(BridgeFacts(host="hostb", name="br0", exists=False), None)
    assert not_ok(results) == [("bridge-exists", Severity.BLOCKER)]
    assert "ip link add br0 type bridge" in results[0].hint


def test_bridge_without_uplink_is_a_blocker_with_a_hint() -> None:
    tap = make_port("vnet3", kind="tun")
    results = check_dest_bridge(make_bridge(ports=(tap,)), make_bridge(host="hosta"))
    (finding,) = by_name(results, "bridge-uplink")
    assert finding.severity is Severity.BLOCKER
    assert "no uplink" in finding.message
    assert "vnet3" in finding.message
    assert "master br0" in finding.hint


def test_learning_off_on_the_uplink_is_reported_with_a_hint() -> None:
    results = check_dest_bridge(make_bridge(ports=(make_port(learning=False),)), None)
    assert not_ok(results) == [("uplink-learning", Severity.WARNING)]
    (finding,) = by_name(results, "uplink-learning")
    assert finding.subject == "br0/uplink0"
    assert finding.hint == "bridge link set dev uplink0 learning on"


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"up": False}, ("uplink-forwarding", Severity.BLOCKER)),
        ({"stp_state": StpState.BLOCKING}, ("uplink-forwarding", Severity.BLOCKER)),
        ({"stp_state": StpState.LEARNING}, ("uplink-forwarding", Severity.WARNING)),
        ({"bcast_flood": False}, ("uplink-flooding", Severity.BLOCKER)),
        ({"unicast_flood": False}, ("uplink-flooding", Severity.WARNING)),
        ({"mcast_flood": False}, ("uplink-flooding", Severity.WARNING)),
    ],
)
def test_uplink_port_states(changes: dict[str, Any], expected: tuple[str, Severity]) -> None:
    results = check_dest_bridge(make_bridge(ports=(make_port(**changes),)), None)
    assert not_ok(results) == [expected]
    assert all(r.hint for r in results if r.severity is not Severity.OK)


def test_stp_forward_delay_is_a_blackout_blocker() -> None:
    results = check_dest_bridge(make_bridge(stp_enabled=True, forward_delay_cs=1500), None)
    (finding,) = by_name(results, "bridge-stp-delay")
    assert finding.severity is Severity.BLOCKER
    assert "30 s blackout" in finding.message
    # STP on with forward delay 0 is fine: new ports forward at once.
    fast = check_dest_bridge(make_bridge(stp_enabled=True, forward_delay_cs=0), None)
    assert not_ok(fast) == []


def test_smaller_mtu_and_different_vlan_filtering_than_the_source_block() -> None:
    source = make_bridge(host="hosta", mtu=9000, vlan_filtering=True)
    results = check_dest_bridge(make_bridge(), source)
    assert not_ok(results) == [
        ("bridge-mtu", Severity.BLOCKER), ("bridge-vlan-filtering", Severity.BLOCKER),
    ]  # fmt: skip
    assert "9000" in by_name(results, "bridge-mtu")[0].hint
    # A larger MTU on the destination is fine.
    assert not_ok(check_dest_bridge(make_bridge(mtu=9000), make_bridge(host="hosta"))) == []


def test_learning_off_on_the_guest_tap_at_the_source_warns() -> None:
    source = make_bridge(
        host="hosta", ports=(make_port(), make_port("vnet0", kind="tun", learning=False))
    )
    results = check_dest_bridge(make_bridge(), source, source_guest_ports=["vnet0"])
    assert not_ok(results) == [("guest-port-learning", Severity.WARNING)]


def test_ageing_zero_warns() -> None:
    assert not_ok(check_dest_bridge(make_bridge(ageing_time_cs=0), None)) == [
        ("bridge-ageing", Severity.WARNING)
    ]


def test_notify_off_per_network_warns_with_the_consequence() -> None:
    nics = [GuestNic("52:54:00:00:00:01", "br0", "vnet0"), GuestNic("52:54:00:00:00:02", "br1")]
    dest = {"br0": make_bridge(), "br1": dataclasses.replace(make_bridge(), name="br1")}
    source = {"br0": make_bridge(host="hosta")}
    results = check_networks(
        nics, dest=dest, source=source, notify_off=frozenset({"br1"}), dest_host="hostb"
    )
    notify = by_name(results, "notify-switches")
    assert [(r.subject, r.severity) for r in notify] == [
        ("br0", Severity.OK), ("br1", Severity.WARNING),
    ]  # fmt: skip
    assert "300 s" in notify[1].message
    assert worst(results) is Severity.WARNING
    everything_off = check_networks(
        nics, dest=dest, source=source, notify_off=frozenset({"*"}), dest_host="hostb"
    )
    assert [r.severity for r in by_name(everything_off, "notify-switches")] == [
        Severity.WARNING
    ] * 2


def test_bridge_missing_from_dest_facts_counts_as_absent() -> None:
    results = check_networks(
        [GuestNic("52:54:00:00:00:01", "br9")], dest={}, source={}, dest_host="hostb"
    )
    assert ("bridge-exists", Severity.BLOCKER) in not_ok(results)
    assert worst(results) is Severity.BLOCKER


def test_facts_survive_the_json_round_trip() -> None:
    bridge = make_bridge(
        ports=(make_port(), make_port("vnet0", kind="tun", stp_state=StpState.LEARNING)),
        mac="02:77:00:00:00:0b",
        addr_assign_type=3,
    )
    assert BridgeFacts.from_dict(bridge.as_dict()) == bridge
    assert BridgeFacts.from_dict(make_bridge().as_dict()).addr_assign_type is None


@pytest.mark.parametrize(
    ("assign", "expected"),
    [(3, Severity.OK), (1, Severity.WARNING), (2, Severity.WARNING), (None, None)],
)
def test_bridge_without_a_fixed_mac_warns_on_either_host(
    assign: int | None, expected: Severity | None
) -> None:
    dest = make_bridge(mac="fe:54:00:77:00:50", addr_assign_type=assign)
    source = make_bridge(host="hosta", mac="02:77:00:00:00:0a", addr_assign_type=3)
    verdict = check_bridge_mac(dest)
    assert (verdict.severity if verdict else None) is expected
    results = check_networks(
        [GuestNic("52:54:00:77:00:50", "br0", "vnet0")],
        dest={"br0": dest}, source={"br0": source}, dest_host="hostb",
    )  # fmt: skip
    pinned = by_name(results, "bridge-mac-pinned")
    hosts = [(r.host, r.severity) for r in pinned]
    assert hosts == [*([("hostb", expected)] if expected else []), ("hosta", Severity.OK)]
    if expected is Severity.WARNING:
        assert "fe:54:00:77:00:50" in pinned[0].message
        assert pinned[0].hint.startswith("Give br0 a fixed MAC on hostb: ip link set br0 address")
    assert "bridge-mac-pinned" in CHECK_NAMES


def test_a_missing_bridge_has_no_mac_verdict() -> None:
    assert check_bridge_mac(BridgeFacts(host="hostb", name="br0", exists=False)) is None


@pytest.mark.parametrize(
    ("kind", "role"),
    [
        ("tun", PortRole.GUEST),
        ("veth", PortRole.UPLINK),
        ("", PortRole.UPLINK),
        ("bond", PortRole.UPLINK),
    ],
)
def test_port_role_from_link_kind(kind: str, role: PortRole) -> None:
    assert role_of(kind) is role
