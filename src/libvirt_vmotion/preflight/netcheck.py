"""Network pre-flight: can the destination's virtual switch learn that the guest moved.

Pure: no I/O, no clock, no logging. Facts about each host's bridges come in as
plain frozen dataclasses (gathered on the host by ``bridge.py`` through the
agent); verdicts come out as ``NetCheckResult`` values, a neutral form the
pre-flight report can fold into its own (stable kebab-case names, a severity,
a message with where and what, and a hint).

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

import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Final

USER_HZ: Final = 100
"""Bridge timers (forward delay, ageing) come from the kernel in centiseconds."""


class Severity(StrEnum):
    """How bad a finding is; the pre-flight report decides what blocks."""

    OK = "ok"
    WARNING = "warning"
    BLOCKER = "blocker"


class StpState(IntEnum):
    """Bridge port STP state (``IFLA_BRPORT_STATE``, ``BR_STATE_*``)."""

    DISABLED = 0
    LISTENING = 1
    LEARNING = 2
    FORWARDING = 3
    BLOCKING = 4


class PortRole(StrEnum):
    """What a bridge port is for, from its link kind."""

    UPLINK = "uplink"
    """Physical NIC, bond, VLAN, veth, VXLAN: the way out of the host."""
    GUEST = "guest"
    """A tap (``tun`` kind): some guest's NIC."""


TAP_KINDS: Final = frozenset({"tun", "tap"})
NET_ADDR_SET: Final = 3
"""``addr_assign_type`` of an address set by the user (sysfs); 0 permanent, 1 random,
2 stolen (a bridge's default, following its ports)."""
CHECK_NAMES: Final = (
    "bridge-exists", "bridge-up", "bridge-uplink", "uplink-forwarding", "uplink-flooding",
    "uplink-learning", "bridge-stp-delay", "bridge-ageing", "guest-port-learning", "bridge-mtu",
    "bridge-vlan-filtering", "notify-switches", "bridge-mac-pinned", "network-facts",
)  # fmt: skip
"""Every result name these checks produce (for ``--skip-check``)."""


def role_of(link_kind: str) -> PortRole:
    """Port role from the port's link kind (``""`` for a physical NIC)."""
    return PortRole.GUEST if link_kind in TAP_KINDS else PortRole.UPLINK


@dataclass(frozen=True, slots=True)
class PortFacts:
    """One bridge port, as the host's kernel reports it."""

    name: str
    kind: str
    """Link kind (``veth``, ``tun``, ``bond``, ``""`` for physical)."""
    up: bool
    stp_state: StpState
    learning: bool
    unicast_flood: bool
    mcast_flood: bool
    bcast_flood: bool
    mtu: int

    @property
    def role(self) -> PortRole:
        """Uplink or guest tap."""
        return role_of(self.kind)

    def as_dict(self) -> dict[str, object]:
        """JSON form (agent replies)."""
        return {
            "name": self.name,
            "kind": self.kind,
            "up": self.up,
            "stp_state": self.stp_state.name.lower(),
            "learning": self.learning,
            "unicast_flood": self.unicast_flood,
            "mcast_flood": self.mcast_flood,
            "bcast_flood": self.bcast_flood,
            "mtu": self.mtu,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> PortFacts:
        """Inverse of :meth:`as_dict`."""
        return cls(
            name=str(data["name"]),
            kind=str(data.get("kind", "")),
            up=bool(data.get("up")),
            stp_state=StpState[str(data.get("stp_state", "disabled")).upper()],
            learning=bool(data.get("learning")),
            unicast_flood=bool(data.get("unicast_flood")),
            mcast_flood=bool(data.get("mcast_flood")),
            bcast_flood=bool(data.get("bcast_flood", True)),
            mtu=_as_int(data.get("mtu")),
        )


def _as_int(value: object) -> int:
    return int(value) if isinstance(value, int | float | str) and str(value).isdigit() else 0


@dataclass(frozen=True, slots=True)
class BridgeFacts:
    """One bridge on one host. ``exists=False`` carries only host and name."""

    host: str
    name: str
    exists: bool
    up: bool = False
    mtu: int = 0
    stp_enabled: bool = False
    forward_delay_cs: int = 0
    ageing_time_cs: int = 30000
    vlan_filtering: bool = False
    ports: tuple[PortFacts, ...] = field(default=())
    mac: str = ""
    addr_assign_type: int | None = None
    """How the bridge got its MAC (sysfs ``addr_assign_type``); None: not known."""

    def uplinks(self) -> tuple[PortFacts, ...]:
        """The ports that lead out of the host."""
        return tuple(p for p in self.ports if p.role is PortRole.UPLINK)

    def as_dict(self) -> dict[str, object]:
        """JSON form (agent replies)."""
        return {
            "host": self.host,
            "name": self.name,
            "exists": self.exists,
            "up": self.up,
            "mtu": self.mtu,
            "stp_enabled": self.stp_enabled,
            "forward_delay_cs": self.forward_delay_cs,
            "ageing_time_cs": self.ageing_time_cs,
            "vlan_filtering": self.vlan_filtering,
            "ports": [p.as_dict() for p in self.ports],
            "mac": self.mac,
            "addr_assign_type": self.addr_assign_type,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> BridgeFacts:
        """Inverse of :meth:`as_dict`."""
        ports = data.get("ports")
        return cls(
            host=str(data.get("host", "")),
            name=str(data["name"]),
            exists=bool(data.get("exists")),
            up=bool(data.get("up")),
            mtu=_as_int(data.get("mtu")),
            stp_enabled=bool(data.get("stp_enabled")),
            forward_delay_cs=_as_int(data.get("forward_delay_cs")),
            ageing_time_cs=_as_int(data.get("ageing_time_cs", 30000)),
            vlan_filtering=bool(data.get("vlan_filtering")),
            ports=tuple(PortFacts.from_dict(p) for p in (ports if isinstance(ports, list) else ())),
            mac=str(data.get("mac") or ""),
            addr_assign_type=(
                int(assign) if isinstance(assign := data.get("addr_assign_type"), int) else None
            ),
        )


@dataclass(frozen=True, slots=True)
class GuestNic:
    """A guest NIC on a bridge: what the checks and the cutover work on."""

    mac: str
    bridge: str
    tap: str = ""
    """The tap device on the host it currently runs on ("" if unknown)."""
    filter_ips: tuple[str, ...] = ()
    """``IP`` parameters of the NIC's nwfilter reference: addresses the host lets it use."""


def guest_nics_from_xml(domain_xml: str) -> tuple[GuestNic, ...]:
    """The guest's NICs that sit on a host bridge, from its domain XML.

    ``<interface type='bridge'>`` names the bridge; ``type='network'`` NICs
    name it in the live XML's ``<source bridge=...>`` too. Other NIC types
    (macvtap, user, vhost-user) are not on a Linux bridge and are left out.
    """
    root = ET.fromstring(domain_xml)  # noqa: S314  libvirt's own XML
    nics = []
    for iface in root.iterfind("devices/interface"):
        if iface.get("type") not in {"bridge", "network"}:
            continue
        mac = iface.find("mac")
        source = iface.find("source")
        bridge = source.get("bridge", "") if source is not None else ""
        if mac is None or not bridge:
            continue
        target = iface.find("target")
        filter_ips = tuple(
            value
            for param in iface.iterfind("filterref/parameter")
            if param.get("name") == "IP" and (value := param.get("value", ""))
        )
        nics.append(
            GuestNic(
                mac=mac.get("address", "").lower(),
                bridge=bridge,
                tap=target.get("dev", "") if target is not None else "",
                filter_ips=filter_ips,
            )
        )
    return tuple(nics)


def unchecked_nics(domain_xml: str, *, host: str) -> tuple[NetCheckResult, ...]:
    """A ``network-facts`` warning per NIC the bridge checks cannot judge, saying why.

    ``guest_nics_from_xml`` keeps only NICs on a named Linux bridge; a NIC left
    out was not checked, and a pre-flight that says nothing about it would read
    as "ok". A guest with no NIC at all gets one warning saying so.
    """
    root = ET.fromstring(domain_xml)  # noqa: S314  libvirt's own XML
    interfaces = list(root.iterfind("devices/interface"))
    if not interfaces:
        return (
            NetCheckResult(
                "network-facts", Severity.WARNING, host, "",
                "the guest has no network interface: there is no bridge to check",
                "Nothing to do if the guest needs no network.",
            ),
        )  # fmt: skip
    out: list[NetCheckResult] = []
    for iface in interfaces:
        kind = iface.get("type", "")
        mac_el = iface.find("mac")
        mac = mac_el.get("address", "").lower() if mac_el is not None else "?"
        source = iface.find("source")
        bridge = source.get("bridge", "") if source is not None else ""
        if kind in {"bridge", "network"} and bridge and mac_el is not None:
            continue
        if kind == "network":
            name = source.get("network", "?") if source is not None else "?"
            why = (
                f"NIC {mac} is on libvirt network {name!r}, whose bridge the guest's XML "
                "does not name (not running, or not a bridged network): not checked"
            )
            hint = "The 'network' check of vmotion check judges the network on the destination."
        else:
            why = f"NIC {mac} is of type {kind!r}, not on a Linux bridge: not checked"
            hint = "Check by hand that the destination offers the same network for it."
        out.append(NetCheckResult("network-facts", Severity.WARNING, host, mac, why, hint))
    return tuple(out)


def checked_something(results: Iterable[NetCheckResult]) -> bool:
    """True if any result is a verdict on a bridge, not only a check that could not run."""
    return any(r.name != "network-facts" for r in results)


@dataclass(frozen=True, slots=True)
class NetCheckResult:
    """One verdict, in the neutral form the pre-flight report takes.

    Attributes:
        name: stable kebab-case check name (for ``--skip-check``).
        severity: ok, warning or blocker.
        host: which host it is about.
        subject: the bridge (or bridge/port) it is about.
        message: what was observed vs what is needed.
        hint: what to do (empty when ok).

    """

    name: str
    severity: Severity
    host: str
    subject: str
    message: str
    hint: str = ""

    def as_dict(self) -> dict[str, object]:
        """JSON form for reports."""
        return {
            "name": self.name,
            "verdict": self.severity.value,
            "host": self.host,
            "subject": self.subject,
            "message": self.message,
            "hint": self.hint,
        }


def _ok(name: str, bridge: BridgeFacts, message: str) -> NetCheckResult:
    return NetCheckResult(name, Severity.OK, bridge.host, bridge.name, message)


def check_dest_bridge(  # noqa: C901  one table of checks, read top to bottom
    dest: BridgeFacts, source: BridgeFacts | None, *, source_guest_ports: Sequence[str] = ()
) -> tuple[NetCheckResult, ...]:
    """Judge one destination bridge a guest NIC will be plugged into.

    Args:
        dest: the bridge on the destination host.
        source: the same bridge on the source host (consistency reference).
        source_guest_ports: the guest's tap ports on the source bridge.

    Returns:
        One result per check (ok ones included, so the report shows what passed).

    """
    out: list[NetCheckResult] = []
    host, br = dest.host, dest.name

    def bad(name: str, severity: Severity, subject: str, message: str, hint: str) -> None:
        out.append(NetCheckResult(name, severity, host, subject, message, hint))

    if not dest.exists:
        bad(
            "bridge-exists", Severity.BLOCKER, br,
            f"Bridge {br} does not exist on {host}; the guest's NIC cannot be plugged in there.",
            f"Create it on {host} (ip link add {br} type bridge) with the uplink the source "
            "uses, or migrate to a host that has it.",
        )  # fmt: skip
        return tuple(out)
    out.append(_ok("bridge-exists", dest, f"{br} exists on {host}"))
    if dest.up:
        out.append(_ok("bridge-up", dest, f"{br} is up"))
    else:
        bad(
            "bridge-up", Severity.BLOCKER, br, f"Bridge {br} on {host} is down.",
            f"Bring it up on {host}: ip link set {br} up",
        )  # fmt: skip
    uplinks = dest.uplinks()
    if not uplinks:
        bad(
            "bridge-uplink", Severity.BLOCKER, br,
            f"Bridge {br} on {host} has no uplink port (only "
            f"{', '.join(p.name for p in dest.ports) or 'no ports'}): after the move the "
            "guest could reach nothing outside that host.",
            f"Enslave the host's physical NIC (or bond/VLAN) to {br} on {host}: "
            f"ip link set NIC master {br}",
        )  # fmt: skip
    else:
        out.append(_ok("bridge-uplink", dest, "uplink " + ", ".join(p.name for p in uplinks)))
    for port in uplinks:
        out.extend(_check_uplink(dest, port))
    if dest.stp_enabled and dest.forward_delay_cs > 0:
        delay_s = 2 * dest.forward_delay_cs / USER_HZ
        bad(
            "bridge-stp-delay", Severity.BLOCKER, br,
            f"STP is on for {br} on {host} with forward_delay "
            f"{dest.forward_delay_cs / USER_HZ:g} s: the guest's new tap port listens and "
            f"learns for {delay_s:g} s before it forwards, a {delay_s:g} s blackout after "
            "switchover.",
            f"Turn STP off on the host bridge (ip link set {br} type bridge stp_state 0) or "
            f"set forward_delay 0 (ip link set {br} type bridge forward_delay 0).",
        )  # fmt: skip
    else:
        out.append(_ok("bridge-stp-delay", dest, "new ports forward at once"))
    if dest.ageing_time_cs == 0:
        bad(
            "bridge-ageing", Severity.WARNING, br,
            f"Bridge {br} on {host} has ageing_time 0: it learns nothing and floods "
            "every frame to every port, like a hub.",
            f"ip link set {br} type bridge ageing_time 30000",
        )  # fmt: skip
    if source is not None and source.exists:
        out.extend(_check_consistency(dest, source))
        for port in source.ports:
            if port.name in source_guest_ports and not port.learning:
                bad(
                    "guest-port-learning", Severity.WARNING, f"{source.name}/{port.name}",
                    f"The guest's port {port.name} on {source.host} has learning off; if "
                    f"the same policy applies on {host}, {br} there will not learn the "
                    "guest's MAC (frames to it are flooded or dropped).",
                    f"Find what turns learning off (bridge link show dev {port.name}) and "
                    "keep it off the destination, or check it after the move.",
                )  # fmt: skip
    return tuple(out)


def _check_uplink(dest: BridgeFacts, port: PortFacts) -> Iterable[NetCheckResult]:
    host, subject = dest.host, f"{dest.name}/{port.name}"
    if not port.up:
        yield NetCheckResult(
            "uplink-forwarding", Severity.BLOCKER, host, subject,
            f"Uplink {port.name} of {dest.name} on {host} is down (no carrier or admin down).",
            f"Check the cable/switch port, then: ip link set {port.name} up",
        )  # fmt: skip
    elif port.stp_state is not StpState.FORWARDING:
        transient = port.stp_state in {StpState.LISTENING, StpState.LEARNING}
        yield NetCheckResult(
            "uplink-forwarding", Severity.WARNING if transient else Severity.BLOCKER, host,
            subject,
            f"Uplink {port.name} of {dest.name} on {host} is in STP state "
            f"{port.stp_state.name.lower()}, not forwarding.",
            "Wait for STP to converge and check again"
            if transient
            else "STP blocks this port (a loop or a root-bridge choice); fix the topology "
            f"or the port cost: bridge link show dev {port.name}",
        )  # fmt: skip
    else:
        yield NetCheckResult(
            "uplink-forwarding", Severity.OK, host, subject, f"{port.name} up, forwarding"
        )
    if not port.bcast_flood:
        yield NetCheckResult(
            "uplink-flooding", Severity.BLOCKER, host, subject,
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
        yield NetCheckResult(
            "uplink-flooding", Severity.WARNING, host, subject,
            f"{' and '.join(missing).capitalize()} flooding is off on uplink {port.name} of "
            f"{dest.name} on {host}: the guest's frames to peers the bridge has not learned "
            "yet (unicast) or IPv6 neighbour advertisements (multicast) are dropped.",
            f"bridge link set dev {port.name} flood on mcast_flood on",
        )  # fmt: skip
    elif port.bcast_flood:
        yield NetCheckResult(
            "uplink-flooding", Severity.OK, host, subject, "broadcast, unicast, multicast flood"
        )
    if port.learning:
        yield NetCheckResult("uplink-learning", Severity.OK, host, subject, "learning on")
    else:
        yield NetCheckResult(
            "uplink-learning", Severity.WARNING, host, subject,
            f"Learning is off on uplink {port.name} of {dest.name} on {host}: the bridge "
            "never learns where outside hosts are and floods their traffic to every guest "
            "on it, including this one after the move.",
            f"bridge link set dev {port.name} learning on",
        )  # fmt: skip


def _check_consistency(dest: BridgeFacts, source: BridgeFacts) -> Iterable[NetCheckResult]:
    host, br = dest.host, dest.name
    if dest.mtu < source.mtu:
        yield NetCheckResult(
            "bridge-mtu", Severity.BLOCKER, host, br,
            f"{br} has MTU {dest.mtu} on {host} but {source.mtu} on {source.host}: the "
            f"guest's frames larger than {dest.mtu} bytes would be dropped after the move.",
            f"Raise the MTU of {br} and its uplink on {host} to {source.mtu}.",
        )  # fmt: skip
    else:
        yield NetCheckResult(
            "bridge-mtu", Severity.OK, host, br, f"MTU {dest.mtu} (source {source.mtu})"
        )
    if dest.vlan_filtering != source.vlan_filtering:
        state = {True: "on", False: "off"}
        yield NetCheckResult(
            "bridge-vlan-filtering", Severity.BLOCKER, host, br,
            f"VLAN filtering on {br} is {state[dest.vlan_filtering]} on {host} but "
            f"{state[source.vlan_filtering]} on {source.host}: the guest's traffic would be "
            "tagged or filtered differently after the move.",
            f"Make them match (ip link set {br} type bridge vlan_filtering "
            f"{int(source.vlan_filtering)} on {host}).",
        )  # fmt: skip
    else:
        yield NetCheckResult(
            "bridge-vlan-filtering", Severity.OK, host, br, "same VLAN filtering as the source"
        )


def check_bridge_mac(bridge: BridgeFacts) -> NetCheckResult | None:
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
        return NetCheckResult(
            "bridge-mac-pinned", Severity.OK, bridge.host, bridge.name,
            f"{bridge.name} has a fixed MAC {bridge.mac}",
        )  # fmt: skip
    return NetCheckResult(
        "bridge-mac-pinned", Severity.WARNING, bridge.host, bridge.name,
        f"Bridge {bridge.name} on {bridge.host} has no fixed MAC (now {bridge.mac or '?'}, "
        "taken from its ports): when a guest's tap (fe:54:...) joins, it may take that "
        "address, which the same guest's tap has on the other host; the two hosts then "
        "drop each other's frames as their own and can lose each other mid-migration.",
        f"Give {bridge.name} a fixed MAC on {bridge.host}: ip link set {bridge.name} address "
        "<its current MAC or a locally administered one like 02:...> (and in the host's "
        "network config, e.g. MACAddress= in systemd-networkd, hwaddress in ifupdown).",
    )  # fmt: skip


def check_notify_switches(bridge: str, *, notify: bool, host: str) -> NetCheckResult:
    """The per-network "notify switches" setting, as a finding.

    Off is a warning that spells out the consequence, as vSphere documents it.
    """
    if notify:
        return NetCheckResult(
            "notify-switches", Severity.OK, host, bridge,
            "after switchover we send RARP, gratuitous ARP and IPv6 NA from the destination",
        )  # fmt: skip
    return NetCheckResult(
        "notify-switches", Severity.WARNING, host, bridge,
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
) -> tuple[NetCheckResult, ...]:
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
    out: list[NetCheckResult] = []
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


def worst(results: Iterable[NetCheckResult]) -> Severity:
    """The most severe verdict among ``results`` (ok when empty)."""
    order = [Severity.OK, Severity.WARNING, Severity.BLOCKER]
    return max((r.severity for r in results), key=order.index, default=Severity.OK)
