"""One network pre-flight: ``vmotion netcheck`` and the gate run the same ``bridge_checks``.

In process against libvirt's test driver (the guest's XML) with fake agents (the
hosts' bridge facts), so what both commands show comes from one gathering, one
NIC parser, one bridge model and one result type.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from fakeagent import FakeAgent
from libvirt_vmotion.adapters.virt import Hypervisor
from libvirt_vmotion.preflight.facts import (
    BridgeFacts,
    CpuCompat,
    CpuFacts,
    DomainCapsFacts,
    GuestFacts,
    HostFacts,
    PortFacts,
    PreflightFacts,
)
from libvirt_vmotion.preflight.gather import bridge_checks
from libvirt_vmotion.preflight.netcheck import as_netcheck_dict, worst
from libvirt_vmotion.preflight.network import NETCHECK_COVERED, check_bridge_setup
from libvirt_vmotion.preflight.result import CheckResult, Verdict

SOURCE_URI, DEST_URI = "qemu+tcp://hosta/system", "qemu+tcp://hostb/system"
DRIVER = """<node>
  <domain type="test">
    <name>br01</name>
    <memory unit="MiB">512</memory>
    <vcpu>1</vcpu>
    <os><type arch="x86_64">hvm</type></os>
    <devices>
      <interface type="bridge">
        <mac address="52:54:00:AA:00:01"/>
        <source bridge="br0"/>
        <target dev="vnet0"/>
      </interface>
    </devices>
  </domain>
</node>
"""


def bridge(host: str, *ports: PortFacts) -> BridgeFacts:
    return BridgeFacts("br0", exists=True, up=True, ports=ports, mtu=1500, host=host)


UPLINK, TAP = PortFacts("eth0", kind=""), PortFacts("vnet0", kind="tun")


@pytest.fixture
def source(tmp_path: Path) -> Iterator[Hypervisor]:
    driver = tmp_path / "driver.xml"
    driver.write_text(DRIVER)
    with Hypervisor.open(f"test://{driver}") as hv:
        yield hv


def agents(dest: BridgeFacts, source: BridgeFacts) -> dict[str, FakeAgent]:
    return {
        DEST_URI: FakeAgent({"host": "hostb", "bridges": [dest.as_dict()]}, label="fake"),
        SOURCE_URI: FakeAgent({"host": "hosta", "bridges": [source.as_dict()]}, label="fake"),
    }


def test_netcheck_and_the_gate_judge_the_same_bridge_facts(source: Hypervisor) -> None:
    fakes = agents(dest=bridge("hostb", TAP), source=bridge("hosta", UPLINK, TAP))
    results = bridge_checks(
        source=source, domain="br01", source_uri=SOURCE_URI, dest_uri=DEST_URI,
        agent_for=fakes.__getitem__,
    )  # fmt: skip
    # Both hosts were asked for the one bridge the guest's one NIC is on.
    assert [f.sent for f in fakes.values()] == [[("bridge_facts", {"bridges": ["br0"]})]] * 2
    # netcheck: a tap is no uplink (its link kind says so), on the destination.
    uplink = [r for r in results if r.name == "bridge-uplink"]
    assert [(r.verdict, r.host) for r in uplink] == [(Verdict.BLOCKER, "hostb")]
    assert worst(results) is Verdict.BLOCKER
    assert as_netcheck_dict(uplink[0])["verdict"] == "blocker"
    # The gate folds the same results in, without what 'network' answers already.
    from_gate = check_bridge_setup(_facts_with(results))
    assert {r.name for r in from_gate} & NETCHECK_COVERED == set()
    assert {r.name for r in from_gate} >= {"bridge-stp-delay", "notify-switches"}
    assert all(r.observed == r.host for r in from_gate)


def test_an_agent_reply_that_does_not_fit_is_a_network_facts_warning(source: Hypervisor) -> None:
    fakes = agents(dest=bridge("hostb", UPLINK), source=bridge("hosta", UPLINK))
    fakes[DEST_URI].reply = {"host": "hostb", "bridges": "br0"}
    results = bridge_checks(
        source=source, domain="br01", source_uri=SOURCE_URI, dest_uri=DEST_URI,
        agent_for=fakes.__getitem__,
    )  # fmt: skip
    (warning,) = results
    assert (warning.name, warning.verdict, warning.host) == (
        "network-facts",
        Verdict.WARNING,
        "hostb",
    )
    assert "'bridges' must be an array" in warning.message


def _facts_with(results: tuple[CheckResult, ...]) -> PreflightFacts:
    """Pre-flight facts that carry only these bridge verdicts (all the fold reads)."""
    host = HostFacts(SOURCE_URI, "hosta", "uuid-a", libvirt_version=0, qemu_version=0)
    return PreflightFacts(
        source=host,
        dest=replace(host, uri=DEST_URI, hostname="hostb", host_uuid="uuid-b"),
        guest=GuestFacts("br01", "running", job_active=False, memory_bytes=0, vcpus=1),
        cpu=CpuFacts(CpuCompat.UNKNOWN),
        dest_caps=DomainCapsFacts(),
        bridge_checks=results,
    )
