"""Network pre-flight: can the destination's virtual switch learn that the guest moved.

Pure: no I/O, no clock, no logging. Facts about each host's bridges come in as
``facts.BridgeFacts`` (read on the host by ``cutover.bridge`` through the agent);
the guest's NICs come from ``domxml.nic_facts``; verdicts come out as the
pre-flight's ``CheckResult`` (stable kebab-case names, a verdict, the host, a
message with where and what, and a hint), which ``vmotion netcheck`` prints and
``vmotion check`` folds into its report (``network.check_bridge_setup``).

What the checks stand for, on the destination host, for each bridge a guest NIC
uses (the source's bridge is the reference for consistency):

==========================  ========  ==================================================
name                        severity  why it matters after switchover
==========================  ========  ==================================================
bridge-exists               blocker   libvirt cannot plug the NIC in: the migration fails
bridge-up                   blocker   a down bridge forwards nothing
bridge-uplink               blocker   without an uplink the guest is cut off from the net
uplink-forwarding           blocker   STP blocking / link down: no traffic leaves the host
uplink-flooding             blocker   broadcast off: ARP and announcements never leave;
                            warning   unicast/multicast flood off: unknown peers, IPv6 NA
uplink-learning             warning   the bridge floods every frame to every guest
bridge-stp-delay            blocker   a new tap port listens+learns 2 x forward_delay
bridge-ageing               warning   ageing 0 makes the bridge a hub
guest-port-learning         warning   the source's tap does not learn: if the same
                                      setting applies on the destination, its FDB
                                      will not show the guest
bridge-mtu                  blocker   smaller MTU than the source drops the guest's frames
bridge-vlan-filtering       blocker   VLAN filtering differs from the source
notify-switches             warning   notify off: switches learn only when the guest talks
bridge-mac-pinned           warning   (both hosts) a bridge without a fixed MAC takes the
                                      lowest MAC of its ports: a guest tap joining
                                      (``fe:54:...``) can give it the address the other
                                      host's guest tap has, and the two hosts then drop
                                      each other's frames as their own, mid-migration
==========================  ========  ==================================================
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from libvirt_vmotion.preflight import domxml
from libvirt_vmotion.preflight.facts import BridgeFacts, NicFacts, PortFacts, StpState
from libvirt_vmotion.preflight.result import CheckResult, Verdict

USER_HZ: Final = 100
"""Bridge timers (forward delay, ageing) come from the kernel in centiseconds."""

NET_ADDR_SET: Final = 3
"""``addr_assign_type`` of an address set by the user (sysfs); 0 permanent, 1 random,
2 stolen (a bridge's default, following its ports)."""
CHECK_NAMES: Final = (
    "bridge-exists", "bridge-up", "bridge-uplink", "uplink-forwarding", "uplink-flooding",
    "uplink-learning", "bridge-stp-delay", "bridge-ageing", "guest-port-learning", "bridge-mtu",
    "bridge-vlan-filtering", "notify-switches", "bridge-mac-pinned", "network-facts",
)  # fmt: skip
"""Every result name these checks produce (for ``--skip-check``)."""


def bridge_verdict(  # noqa: PLR0913, PLR0917  a verdict's fields, in the order the table reads
    name: str, verdict: Verdict, host: str, subject: str, message: str, hint: str = ""
) -> CheckResult:
    """One bridge verdict about ``host`` (the hint as written: no ``--skip-check`` suffix)."""
    return CheckResult(
        name=name, verdict=verdict, message=message, hint=hint, subject=subject, host=host
    )


def as_netcheck_dict(r: CheckResult) -> dict[str, object]:
    """One result as ``vmotion netcheck --json`` prints it (``netcheck.schema.json``)."""
    return {
        "name": r.name,
        "verdict": r.verdict.value,
        "host": r.host,
        "subject": r.subject,
        "message": r.message,
        "hint": r.hint,
    }


@dataclass(frozen=True, slots=True)
class GuestNic:
    """A guest NIC on a bridge: what the checks and the cutover work on."""

    mac: str
    bridge: str
    tap: str = ""
    """The tap device on the host it currently runs on ("" if unknown)."""
    filter_ips: tuple[str, ...] = ()
    """``IP`` parameters of the NIC's nwfilter reference: addresses the host lets it use."""


def bridged_nics(nics: Iterable[NicFacts]) -> tuple[GuestNic, ...]:
    """The NICs that sit on a named host bridge, as the checks and the cutover use them.

    ``<interface type='bridge'>`` names the bridge; ``type='network'`` NICs name
    it in the live XML's ``<source bridge=...>`` too. Other NIC types (macvtap,
    user, vhost-user) are not on a Linux bridge and are left out.
    """
    return tuple(
        GuestNic(mac=n.mac.lower(), bridge=n.bridge, tap=n.tap, filter_ips=n.filter_ips)
        for n in nics
        if n.is_bridged
    )


def guest_nics_from_xml(domain_xml: str) -> tuple[GuestNic, ...]:
    """The guest's NICs on a host bridge, from its domain XML (``domxml.nic_facts``)."""
    return bridged_nics(domxml.nic_facts(domain_xml))


def unchecked_nics(domain_xml: str, *, host: str) -> tuple[CheckResult, ...]:
    """A ``network-facts`` warning per NIC the bridge checks cannot judge, saying why.

    ``bridged_nics`` keeps only NICs on a named Linux bridge; a NIC left out was
    not checked, and a pre-flight that says nothing about it would read as "ok".
    A guest with no NIC at all gets one warning saying so.
    """
    nics = domxml.nic_facts(domain_xml)
    if not nics:
        return (
            bridge_verdict(
                "network-facts", Verdict.WARNING, host, "",
                "the guest has no network interface: there is no bridge to check",
                "Nothing to do if the guest needs no network.",
            ),
        )  # fmt: skip
    out: list[CheckResult] = []
    for nic in nics:
        if nic.is_bridged:
            continue
        mac = nic.mac.lower() or "?"
        if nic.kind == "network":
            why = (
                f"NIC {mac} is on libvirt network {nic.network or '?'!r}, whose bridge the "
                "guest's XML does not name (not running, or not a bridged network): not checked"
            )
            hint = "The 'network' check of vmotion check judges the network on the destination."
        else:
            why = f"NIC {mac} is of type {nic.kind!r}, not on a Linux bridge: not checked"
            hint = "Check by hand that the destination offers the same network for it."
        out.append(bridge_verdict("network-facts", Verdict.WARNING, host, mac, why, hint))
    return tuple(out)


def checked_something(results: Iterable[CheckResult]) -> bool:
    """True if any result is a verdict on a bridge, not only a check that could not run."""
    return any(r.name != "network-facts" for r in results)


def _ok(name: str, bridge: BridgeFacts, message: str) -> CheckResult:
    return bridge_verdict(name, Verdict.OK, bridge.host, bridge.name, message)


def check_dest_bridge(
    dest: BridgeFacts, source: BridgeFacts | None, *, source_guest_ports: Sequence[str] = ()
) -> tuple[CheckResult, ...]:
    """Judge one destination bridge a guest NIC will be plugged into.

    Args:
        dest: the bridge on the destination host.
        source: the same bridge on the source host (consistency reference).
        source_guest_ports: the guest's tap ports on the source bridge.

    Returns:
        One result per check (ok ones included, so the report shows what passed).

    """
    host, br = dest.host, dest.name
    if not dest.exists:
        return (
            bridge_verdict(
                "bridge-exists", Verdict.BLOCKER, host, br,
                f"Bridge {br} does not exist on {host}; the guest's NIC cannot be plugged in "
                "there.",
                f"Create it on {host} (ip link add {br} type bridge) with the uplink the source "
                "uses, or migrate to a host that has it.",
            ),
        )  # fmt: skip
    out = [_ok("bridge-exists", dest, f"{br} exists on {host}"), _check_up(dest)]
    out.extend(_check_uplinks(dest))
    out.extend(_check_timers(dest))
    if source is not None and source.exists:
        out.extend(_check_consistency(dest, source))
        out.extend(_check_guest_ports(dest, source, source_guest_ports))
    return tuple(out)


def _check_up(dest: BridgeFacts) -> CheckResult:
    if dest.up:
        return _ok("bridge-up", dest, f"{dest.name} is up")
    return bridge_verdict(
        "bridge-up", Verdict.BLOCKER, dest.host, dest.name,
        f"Bridge {dest.name} on {dest.host} is down.",
        f"Bring it up on {dest.host}: ip link set {dest.name} up",
    )  # fmt: skip


def _check_uplinks(dest: BridgeFacts) -> Iterable[CheckResult]:
    """The bridge has a way out of the host, and every uplink forwards, floods and learns."""
    host, br = dest.host, dest.name
    uplinks = dest.uplinks()
    if not uplinks:
        yield bridge_verdict(
            "bridge-uplink", Verdict.BLOCKER, host, br,
            f"Bridge {br} on {host} has no uplink port (only "
            f"{', '.join(p.name for p in dest.ports) or 'no ports'}): after the move the "
            "guest could reach nothing outside that host.",
            f"Enslave the host's physical NIC (or bond/VLAN) to {br} on {host}: "
            f"ip link set NIC master {br}",
        )  # fmt: skip
    else:
        yield _ok("bridge-uplink", dest, "uplink " + ", ".join(p.name for p in uplinks))
    for port in uplinks:
        yield from _check_uplink(dest, port)


def _check_timers(dest: BridgeFacts) -> Iterable[CheckResult]:
    """STP's forward delay (a blackout for the new tap) and ageing 0 (a hub)."""
    host, br = dest.host, dest.name
    if dest.stp_enabled and dest.forward_delay_cs > 0:
        delay_s = 2 * dest.forward_delay_cs / USER_HZ
        yield bridge_verdict(
            "bridge-stp-delay", Verdict.BLOCKER, host, br,
            f"STP is on for {br} on {host} with forward_delay "
            f"{dest.forward_delay_cs / USER_HZ:g} s: the guest's new tap port listens and "
            f"learns for {delay_s:g} s before it forwards, a {delay_s:g} s blackout after "
            "switchover.",
            f"Turn STP off on the host bridge (ip link set {br} type bridge stp_state 0) or "
            f"set forward_delay 0 (ip link set {br} type bridge forward_delay 0).",
        )  # fmt: skip
    else:
        yield _ok("bridge-stp-delay", dest, "new ports forward at once")
    if dest.ageing_time_cs == 0:
        yield bridge_verdict(
            "bridge-ageing", Verdict.WARNING, host, br,
            f"Bridge {br} on {host} has ageing_time 0: it learns nothing and floods "
            "every frame to every port, like a hub.",
            f"ip link set {br} type bridge ageing_time 30000",
        )  # fmt: skip


def _check_guest_ports(
    dest: BridgeFacts, source: BridgeFacts, source_guest_ports: Sequence[str]
) -> Iterable[CheckResult]:
    """The guest's taps on the source learn (a policy turning it off may follow it)."""
    host, br = dest.host, dest.name
    for port in source.ports:
        if port.name in source_guest_ports and not port.learning:
            yield bridge_verdict(
                "guest-port-learning", Verdict.WARNING, host, f"{source.name}/{port.name}",
                f"The guest's port {port.name} on {source.host} has learning off; if "
                f"the same policy applies on {host}, {br} there will not learn the "
                "guest's MAC (frames to it are flooded or dropped).",
                f"Find what turns learning off (bridge link show dev {port.name}) and "
                "keep it off the destination, or check it after the move.",
            )  # fmt: skip


def _check_uplink(dest: BridgeFacts, port: PortFacts) -> Iterable[CheckResult]:
    host, subject = dest.host, f"{dest.name}/{port.name}"
    if not port.up:
        yield bridge_verdict(
            "uplink-forwarding", Verdict.BLOCKER, host, subject,
            f"Uplink {port.name} of {dest.name} on {host} is down (no carrier or admin down).",
            f"Check the cable/switch port, then: ip link set {port.name} up",
        )  # fmt: skip
    elif port.stp_state is not StpState.FORWARDING:
        transient = port.stp_state in {StpState.LISTENING, StpState.LEARNING}
        yield bridge_verdict(
            "uplink-forwarding", Verdict.WARNING if transient else Verdict.BLOCKER, host,
            subject,
            f"Uplink {port.name} of {dest.name} on {host} is in STP state "
            f"{port.stp_state.name.lower()}, not forwarding.",
            "Wait for STP to converge and check again"
            if transient
            else "STP blocks this port (a loop or a root-bridge choice); fix the topology "
            f"or the port cost: bridge link show dev {port.name}",
        )  # fmt: skip
    else:
        yield bridge_verdict(
            "uplink-forwarding", Verdict.OK, host, subject, f"{port.name} up, forwarding"
        )
    if not port.bcast_flood:
        yield bridge_verdict(
            "uplink-flooding", Verdict.BLOCKER, host, subject,
            f"Broadcast flooding is off on uplink {port.name} of {dest.name} on {host}: ARP, "
            "RARP and gratuitous ARP never leave the host.",
            f"bridge link set dev {port.name} bcast_flood on",
        )  # fmt: skip
    missing = [
        what
        for what, on in (("unicast", port.unicast_flood), ("multicast", port.mcast_flood))
        if not on
    ]
    if missing:
        yield bridge_verdict(
            "uplink-flooding", Verdict.WARNING, host, subject,
            f"{' and '.join(missing).capitalize()} flooding is off on uplink {port.name} of "
            f"{dest.name} on {host}: the guest's frames to peers the bridge has not learned "
            "yet (unicast) or IPv6 neighbour advertisements (multicast) are dropped.",
            f"bridge link set dev {port.name} flood on mcast_flood on",
        )  # fmt: skip
    elif port.bcast_flood:
        yield bridge_verdict(
            "uplink-flooding", Verdict.OK, host, subject, "broadcast, unicast, multicast flood"
        )
    if port.learning:
        yield bridge_verdict("uplink-learning", Verdict.OK, host, subject, "learning on")
    else:
        yield bridge_verdict(
            "uplink-learning", Verdict.WARNING, host, subject,
            f"Learning is off on uplink {port.name} of {dest.name} on {host}: the bridge "
            "never learns where outside hosts are and floods their traffic to every guest "
            "on it, including this one after the move.",
            f"bridge link set dev {port.name} learning on",
        )  # fmt: skip


def _check_consistency(dest: BridgeFacts, source: BridgeFacts) -> Iterable[CheckResult]:
    host, br = dest.host, dest.name
    if (dest.mtu or 0) < (source.mtu or 0):
        yield bridge_verdict(
            "bridge-mtu", Verdict.BLOCKER, host, br,
            f"{br} has MTU {dest.mtu} on {host} but {source.mtu} on {source.host}: the "
            f"guest's frames larger than {dest.mtu} bytes would be dropped after the move.",
            f"Raise the MTU of {br} and its uplink on {host} to {source.mtu}.",
        )  # fmt: skip
    else:
        yield bridge_verdict(
            "bridge-mtu", Verdict.OK, host, br, f"MTU {dest.mtu} (source {source.mtu})"
        )
    if dest.vlan_filtering != source.vlan_filtering:
        state = {True: "on", False: "off"}
        yield bridge_verdict(
            "bridge-vlan-filtering", Verdict.BLOCKER, host, br,
            f"VLAN filtering on {br} is {state[dest.vlan_filtering]} on {host} but "
            f"{state[source.vlan_filtering]} on {source.host}: the guest's traffic would be "
            "tagged or filtered differently after the move.",
            f"Make them match (ip link set {br} type bridge vlan_filtering "
            f"{int(source.vlan_filtering)} on {host}).",
        )  # fmt: skip
    else:
        yield bridge_verdict(
            "bridge-vlan-filtering", Verdict.OK, host, br, "same VLAN filtering as the source"
        )


def check_bridge_mac(bridge: BridgeFacts) -> CheckResult | None:
    """Warn when ``bridge`` has no fixed MAC (None when it does not exist or is unknown).

    A Linux bridge without an assigned address takes the lowest MAC among its
    ports and changes it as ports come and go. libvirt gives every guest tap
    ``fe:54:...`` (the guest's MAC with the first octet ``fe``); when that is
    below the uplink's MAC, plugging the incoming guest's tap in gives the
    destination's bridge the same address as the source's tap for the same
    guest, and each host then discards the other's frames as "its own address
    as source" (seen in our lab: the migration link died mid-copy).
    """
    if not bridge.exists or bridge.addr_assign_type is None:
        return None
    if bridge.addr_assign_type == NET_ADDR_SET:
        return bridge_verdict(
            "bridge-mac-pinned", Verdict.OK, bridge.host, bridge.name,
            f"{bridge.name} has a fixed MAC {bridge.mac}",
        )  # fmt: skip
    return bridge_verdict(
        "bridge-mac-pinned", Verdict.WARNING, bridge.host, bridge.name,
        f"Bridge {bridge.name} on {bridge.host} has no fixed MAC (now {bridge.mac or '?'}, "
        "taken from its ports): when a guest's tap (fe:54:...) joins, it may take that "
        "address, which the same guest's tap has on the other host; the two hosts then "
        "drop each other's frames as their own and can lose each other mid-migration.",
        f"Give {bridge.name} a fixed MAC on {bridge.host}: ip link set {bridge.name} address "
        "<its current MAC or a locally administered one like 02:...> (and in the host's "
        "network config, e.g. MACAddress= in systemd-networkd, hwaddress in ifupdown).",
    )  # fmt: skip


def check_notify_switches(bridge: str, *, notify: bool, host: str) -> CheckResult:
    """The per-network "notify switches" setting, as a finding.

    Off is a warning that spells out the consequence, as vSphere documents it.
    """
    if notify:
        return bridge_verdict(
            "notify-switches", Verdict.OK, host, bridge,
            "after switchover we send RARP, gratuitous ARP and IPv6 NA from the destination",
        )  # fmt: skip
    return bridge_verdict(
        "notify-switches", Verdict.WARNING, host, bridge,
        f"Notify switches is off for {bridge}: after the move, physical switches and the "
        "ARP caches of routers and clients keep pointing at the source host until the guest "
        "itself sends a frame (or QEMU's own announcement gets through); a quiet guest can "
        "be unreachable until the switch's MAC table ages out (often 300 s).",
        "Leave notify on for this network unless the network re-learns by other means "
        "(e.g. an SDN controller moves the port).",
    )  # fmt: skip


def check_networks(
    nics: Sequence[GuestNic],
    *,
    dest: Mapping[str, BridgeFacts],
    source: Mapping[str, BridgeFacts],
    notify_off: frozenset[str] = frozenset(),
    dest_host: str,
) -> tuple[CheckResult, ...]:
    """All network verdicts for a guest moving to ``dest``.

    Args:
        nics: the guest's NICs on bridges.
        dest: destination bridge facts by bridge name.
        source: source bridge facts by bridge name.
        notify_off: bridges with notify switches turned off (``"*"``: all).
        dest_host: destination host name (for facts that are missing).

    Returns:
        The results, bridge by bridge, in the order of the guest's NICs.

    """
    out: list[CheckResult] = []
    done: set[str] = set()
    for nic in nics:
        if nic.bridge in done:
            continue
        done.add(nic.bridge)
        facts = dest.get(nic.bridge) or BridgeFacts(host=dest_host, name=nic.bridge, exists=False)
        taps = [n.tap for n in nics if n.bridge == nic.bridge and n.tap]
        out.extend(check_dest_bridge(facts, source.get(nic.bridge), source_guest_ports=taps))
        for side in (facts, source.get(nic.bridge)):
            pinned = check_bridge_mac(side) if side is not None else None
            if pinned is not None:
                out.append(pinned)
        notify = not ({"*", nic.bridge} & notify_off)
        out.append(check_notify_switches(nic.bridge, notify=notify, host=dest_host))
    return tuple(out)


def worst(results: Iterable[CheckResult]) -> Verdict:
    """The most severe verdict among ``results`` (ok when empty)."""
    order = [Verdict.OK, Verdict.WARNING, Verdict.BLOCKER]
    return max((r.verdict for r in results), key=order.index, default=Verdict.OK)
