"""The network pre-flight's bridge verdicts, folded into ``vmotion check``'s report."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from libvirt_vmotion.preflight import registry as pf
from libvirt_vmotion.preflight.facts import BridgeFacts, PortFacts, StpState
from libvirt_vmotion.preflight.netcheck import GuestNic, check_networks
from libvirt_vmotion.preflight.result import Verdict

_spec = importlib.util.spec_from_file_location(
    "preflight_tests", Path(__file__).with_name("test_preflight.py")
)
assert _spec is not None
assert _spec.loader is not None
_preflight_tests = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_preflight_tests)
make_facts = _preflight_tests.make_facts


def bridge(host: str, *, assign: int, stp_delay_cs: int = 0) -> BridgeFacts:
    uplink = PortFacts(
        name="eth0", kind="", up=True, stp_state=StpState.FORWARDING, learning=True,
        unicast_flood=True, mcast_flood=True, bcast_flood=True, mtu=1500,
    )  # fmt: skip
    return BridgeFacts(
        host=host, name="br0", exists=True, up=True, mtu=1500, ports=(uplink,),
        stp_enabled=stp_delay_cs > 0, forward_delay_cs=stp_delay_cs,
        mac="fe:54:00:00:00:01" if assign != 3 else "02:00:00:00:00:01", addr_assign_type=assign,
    )  # fmt: skip


def test_bridge_checks_show_up_in_the_preflight_report_by_name_with_hints() -> None:
    results = check_networks(
        [GuestNic("52:54:00:00:00:01", "br0", "vnet0")],
        dest={"br0": bridge("kvm2", assign=1, stp_delay_cs=1500)},
        source={"br0": bridge("kvm1", assign=3)},
        dest_host="kvm2",
    )
    facts = make_facts(bridge_checks=results)
    report = pf.run_checks(facts, skip=["bridge-mac-pinned"])
    by_name = {(r.name, r.observed): r for r in report}
    stp = by_name["bridge-stp-delay", "kvm2"]
    assert stp.verdict is pf.Verdict.BLOCKER
    assert stp.hint.endswith("(skip: --skip-check bridge-stp-delay)")
    mac = by_name["bridge-mac-pinned", "kvm2"]
    assert mac.verdict is pf.Verdict.WARNING
    assert mac.skipped
    assert "ip link set br0 address" in mac.hint
    assert by_name["bridge-mac-pinned", "kvm1"].verdict is pf.Verdict.OK
    assert by_name["notify-switches", "kvm2"].verdict is pf.Verdict.OK
    # What 'network' and 'bridge-ports' already report is not repeated.
    assert not {n for n, _ in by_name} & pf.NETCHECK_COVERED
    assert [r.name for r in pf.blockers(report)] == ["bridge-stp-delay"]
    assert {"bridge-mac-pinned", "bridge-stp-delay", "notify-switches"} <= set(pf.check_names())
    assert not pf.unknown_skips(["bridge-mac-pinned", "network-facts"])
    assert Verdict.BLOCKER in {r.verdict for r in results}
