"""Network pre-flight verdicts over plain bridge facts (no host needed)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from libvirt_vmotion.preflight import domxml
from libvirt_vmotion.preflight.facts import BridgeFacts, PortFacts, PortRole, StpState, role_of
from libvirt_vmotion.preflight.netcheck import (
    CHECK_NAMES,
    GuestNic,
    check_bridge_mac,
    check_dest_bridge,
    check_networks,
    guest_nics_from_xml,
    worst,
)
from libvirt_vmotion.preflight.result import CheckResult, Verdict


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


def by_name(results: tuple[CheckResult, ...], name: str) -> list[CheckResult]:
    return [r for r in results if r.name == name]


def not_ok(results: tuple[CheckResult, ...]) -> list[tuple[str, Verdict]]:
    return [(r.name, r.verdict) for r in results if r.verdict is not Verdict.OK]


def test_a_healthy_bridge_passes_every_check() -> None:
    results = check_dest_bridge(make_bridge(), make_bridge(host="hosta"))
    assert not_ok(results) == []
    assert {r.name for r in results} >= {
        "bridge-exists", "bridge-up", "bridge-uplink", "uplink-forwarding", "uplink-flooding",
        "uplink-learning", "bridge-stp-delay", "bridge-mtu", "bridge-vlan-filtering",
    }  # fmt: skip


def test_missing_bridge_is_a_blocker_and_stops_there() -> None:
    results = check_dest_bridge(BridgeFacts(host="hostb", name="br0", exists=False), None)
    assert not_ok(results) == [("bridge-exists", Verdict.BLOCKER)]
    assert "ip link add br0 type bridge" in results[0].hint


def test_bridge_without_uplink_is_a_blocker_with_a_hint() -> None:
    tap = make_port("vnet3", kind="tun")
    results = check_dest_bridge(make_bridge(ports=(tap,)), make_bridge(host="hosta"))
    (finding,) = by_name(results, "bridge-uplink")
    assert finding.verdict is Verdict.BLOCKER
    assert "no uplink" in finding.message
    assert "vnet3" in finding.message
    assert "master br0" in finding.hint


def test_learning_off_on_the_uplink_is_reported_with_a_hint() -> None:
    results = check_dest_bridge(make_bridge(ports=(make_port(learning=False),)), None)
    assert not_ok(results) == [("uplink-learning", Verdict.WARNING)]
    (finding,) = by_name(results, "uplink-learning")
    assert finding.subject == "br0/uplink0"
    assert finding.hint == "bridge link set dev uplink0 learning on"


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"up": False}, ("uplink-forwarding", Verdict.BLOCKER)),
        ({"stp_state": StpState.BLOCKING}, ("uplink-forwarding", Verdict.BLOCKER)),
        ({"stp_state": StpState.LEARNING}, ("uplink-forwarding", Verdict.WARNING)),
        ({"bcast_flood": False}, ("uplink-flooding", Verdict.BLOCKER)),
        ({"unicast_flood": False}, ("uplink-flooding", Verdict.WARNING)),
        ({"mcast_flood": False}, ("uplink-flooding", Verdict.WARNING)),
    ],
)
def test_uplink_port_states(changes: dict[str, Any], expected: tuple[str, Verdict]) -> None:
    results = check_dest_bridge(make_bridge(ports=(make_port(**changes),)), None)
    assert not_ok(results) == [expected]
    assert all(r.hint for r in results if r.verdict is not Verdict.OK)


def test_stp_forward_delay_is_a_blackout_blocker() -> None:
    results = check_dest_bridge(make_bridge(stp_enabled=True, forward_delay_cs=1500), None)
    (finding,) = by_name(results, "bridge-stp-delay")
    assert finding.verdict is Verdict.BLOCKER
    assert "30 s blackout" in finding.message
    # STP on with forward delay 0 is fine: new ports forward at once.
    fast = check_dest_bridge(make_bridge(stp_enabled=True, forward_delay_cs=0), None)
    assert not_ok(fast) == []


def test_smaller_mtu_and_different_vlan_filtering_than_the_source_block() -> None:
    source = make_bridge(host="hosta", mtu=9000, vlan_filtering=True)
    results = check_dest_bridge(make_bridge(), source)
    assert not_ok(results) == [
        ("bridge-mtu", Verdict.BLOCKER), ("bridge-vlan-filtering", Verdict.BLOCKER),
    ]  # fmt: skip
    assert "9000" in by_name(results, "bridge-mtu")[0].hint
    # A larger MTU on the destination is fine.
    assert not_ok(check_dest_bridge(make_bridge(mtu=9000), make_bridge(host="hosta"))) == []


def test_learning_off_on_the_guest_tap_at_the_source_warns() -> None:
    source = make_bridge(
        host="hosta", ports=(make_port(), make_port("vnet0", kind="tun", learning=False))
    )
    results = check_dest_bridge(make_bridge(), source, source_guest_ports=["vnet0"])
    assert not_ok(results) == [("guest-port-learning", Verdict.WARNING)]


def test_ageing_zero_warns() -> None:
    assert not_ok(check_dest_bridge(make_bridge(ageing_time_cs=0), None)) == [
        ("bridge-ageing", Verdict.WARNING)
    ]


def test_notify_off_per_network_warns_with_the_consequence() -> None:
    nics = [GuestNic("52:54:00:00:00:01", "br0", "vnet0"), GuestNic("52:54:00:00:00:02", "br1")]
    dest = {"br0": make_bridge(), "br1": dataclasses.replace(make_bridge(), name="br1")}
    source = {"br0": make_bridge(host="hosta")}
    results = check_networks(
        nics, dest=dest, source=source, notify_off=frozenset({"br1"}), dest_host="hostb"
    )
    notify = by_name(results, "notify-switches")
    assert [(r.subject, r.verdict) for r in notify] == [
        ("br0", Verdict.OK), ("br1", Verdict.WARNING),
    ]  # fmt: skip
    assert "300 s" in notify[1].message
    assert worst(results) is Verdict.WARNING
    everything_off = check_networks(
        nics, dest=dest, source=source, notify_off=frozenset({"*"}), dest_host="hostb"
    )
    assert [r.verdict for r in by_name(everything_off, "notify-switches")] == [Verdict.WARNING] * 2


def test_bridge_missing_from_dest_facts_counts_as_absent() -> None:
    results = check_networks(
        [GuestNic("52:54:00:00:00:01", "br9")], dest={}, source={}, dest_host="hostb"
    )
    assert ("bridge-exists", Verdict.BLOCKER) in not_ok(results)
    assert worst(results) is Verdict.BLOCKER


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
    [(3, Verdict.OK), (1, Verdict.WARNING), (2, Verdict.WARNING), (None, None)],
)
def test_bridge_without_a_fixed_mac_warns_on_either_host(
    assign: int | None, expected: Verdict | None
) -> None:
    dest = make_bridge(mac="fe:54:00:77:00:50", addr_assign_type=assign)
    source = make_bridge(host="hosta", mac="02:77:00:00:00:0a", addr_assign_type=3)
    verdict = check_bridge_mac(dest)
    assert (verdict.verdict if verdict else None) is expected
    results = check_networks(
        [GuestNic("52:54:00:77:00:50", "br0", "vnet0")],
        dest={"br0": dest}, source={"br0": source}, dest_host="hostb",
    )  # fmt: skip
    pinned = by_name(results, "bridge-mac-pinned")
    hosts = [(r.host, r.verdict) for r in pinned]
    assert hosts == [*([("hostb", expected)] if expected else []), ("hosta", Verdict.OK)]
    if expected is Verdict.WARNING:
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


@pytest.mark.parametrize(
    ("kind", "name", "role"),
    [
        (None, "vnet3", PortRole.GUEST),  # libvirt's interface XML: names only
        (None, "macvtap0", PortRole.GUEST),
        (None, "eth0", PortRole.UPLINK),
        ("", "vnet3", PortRole.UPLINK),  # a known link kind wins over the name
        ("tun", "eth9", PortRole.GUEST),
    ],
)
def test_the_tap_rule_prefers_the_link_kind_and_falls_back_to_the_name(
    kind: str | None, name: str, role: PortRole
) -> None:
    assert role_of(kind, name) is role
    assert PortFacts(name=name, kind=kind).role is role


def test_the_bridge_model_from_libvirt_names_and_from_the_agent_agree_on_uplinks() -> None:
    from_libvirt = BridgeFacts(
        "br0", exists=True, up=True, ports=(PortFacts("eth0"), PortFacts("vnet0"))
    )
    from_agent = make_bridge(ports=(make_port("eth0", kind=""), make_port("vnet0", kind="tun")))
    assert from_libvirt.uplink_names() == from_agent.uplink_names() == ("eth0",)


def test_one_nic_parser_feeds_the_checks_and_the_cutover() -> None:
    xml = (
        "<domain><name>g</name><devices>"
        "<interface type='network'><mac address='52:54:00:AA:00:01'/>"
        "<source network='lan' bridge='br0'/><target dev='vnet7'/><mtu size='9000'/>"
        "<filterref filter='clean-traffic'><parameter name='IP' value='10.0.0.5'/></filterref>"
        "</interface>"
        "<interface type='user'><mac address='52:54:00:aa:00:02'/></interface>"
        "</devices></domain>"
    )
    nics = domxml.guest_facts(xml).nics
    assert [(n.kind, n.bridge, n.network, n.tap, n.mtu, n.filter_ips) for n in nics] == [
        ("network", "br0", "lan", "vnet7", 9000, ("10.0.0.5",)),
        ("user", "", "", "", None, ()),
    ]
    assert guest_nics_from_xml(xml) == (
        GuestNic("52:54:00:aa:00:01", "br0", "vnet7", filter_ips=("10.0.0.5",)),
    )
