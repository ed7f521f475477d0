"""Tell the network where a guest is now: RARP, gratuitous ARP, unsolicited NA.

Pure: no I/O, no clock, no logging. Frame builders tested against golden bytes,
the checksum, the announcement schedule. The sender that writes them to a raw
``AF_PACKET`` socket on the guest's bridge is ``cutover.send``.

Why each frame:

- **RARP** (ethertype 0x8035, what QEMU's self-announce and vSphere's "Notify
  Switches" send): carries only the MAC. Switches learn the MAC's new port from
  the source address; no host's ARP cache changes.
- **Gratuitous ARP** (an ARP request for the guest's own IPv4 address, RFC 5227
  "ARP announcement"): switches learn the port, and hosts that already have the
  address in their ARP cache refresh it (gateways, routers with stale entries).
- **Unsolicited neighbour advertisement** (RFC 4861 7.2.6, to ff02::1, override
  flag set) does the same for IPv6 neighbour caches.

All three are broadcast or all-nodes multicast and idempotent, so repeating
them is safe.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

ETH_P_ARP: Final = 0x0806
ETH_P_RARP: Final = 0x8035
ETH_P_IPV6: Final = 0x86DD
ETH_MIN_FRAME: Final = 60
"""Shortest Ethernet frame without FCS; shorter frames are padded with zeros."""
BROADCAST_MAC: Final = b"\xff" * 6
IPV6_ALL_NODES: Final = ipaddress.IPv6Address("ff02::1")
IPV6_ALL_NODES_MAC: Final = b"\x33\x33\x00\x00\x00\x01"
_ARP: Final = struct.Struct("!HHBBH6s4s6s4s")
_ARP_OP_REQUEST: Final = 1
_RARP_OP_REQUEST_REVERSE: Final = 3
_ICMPV6_NEIGHBOR_ADVERT: Final = 136
_ICMPV6_NEXT_HEADER: Final = 58
_NA_FLAG_OVERRIDE: Final = 0x20000000
_ND_OPT_TARGET_LLADDR: Final = 2


class FrameKind(StrEnum):
    """Kinds of announcement frame, as the report names them."""

    RARP = "rarp"
    GARP = "garp"
    NA = "ipv6-na"


# ---- pure ---------------------------------------------------------------------------


def parse_mac(mac: str) -> bytes:
    """Return the six bytes of a MAC address written ``52:54:00:12:34:56``.

    Raises:
        ValueError: not six colon-separated hex octets.

    """
    parts = mac.split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        msg = f"not a MAC address: {mac!r} (expected six hex octets like 52:54:00:12:34:56)"
        raise ValueError(msg)
    try:
        return bytes(int(p, 16) for p in parts)
    except ValueError:
        msg = f"not a MAC address: {mac!r} (expected six hex octets like 52:54:00:12:34:56)"
        raise ValueError(msg) from None


def internet_checksum(data: bytes) -> int:
    """Return the RFC 1071 ones'-complement checksum of ``data``."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _ipv4(text: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(text)
    except ValueError:
        msg = f"not an IPv4 address: {text!r}"
        raise ValueError(msg) from None


def _ipv6(text: str) -> ipaddress.IPv6Address:
    try:
        return ipaddress.IPv6Address(text)
    except ValueError:
        msg = f"not an IPv6 address: {text!r}"
        raise ValueError(msg) from None


def _ethernet(dst: bytes, src: bytes, ethertype: int, payload: bytes) -> bytes:
    frame = dst + src + struct.pack("!H", ethertype) + payload
    return frame.ljust(ETH_MIN_FRAME, b"\0")


def build_rarp(mac: str) -> bytes:
    """Reverse ARP "request reverse" for ``mac``, as QEMU's announce-self sends it.

    Broadcast, sender and target hardware address both ``mac``, protocol
    addresses 0.0.0.0, padded to 60 bytes.
    """
    hw = parse_mac(mac)
    zero_ip = b"\0" * 4
    arp = _ARP.pack(1, 0x0800, 6, 4, _RARP_OP_REQUEST_REVERSE, hw, zero_ip, hw, zero_ip)
    return _ethernet(BROADCAST_MAC, hw, ETH_P_RARP, arp)


def build_gratuitous_arp(mac: str, ip: str) -> bytes:
    """Gratuitous ARP (RFC 5227 announcement) for IPv4 ``ip`` at ``mac``.

    An ARP request, broadcast, with sender and target protocol address both
    ``ip`` and target hardware address zero; padded to 60 bytes.

    Raises:
        ValueError: ``mac`` or ``ip`` is malformed (or ``ip`` is not IPv4).

    """
    hw = parse_mac(mac)
    addr = _ipv4(ip).packed
    arp = _ARP.pack(1, 0x0800, 6, 4, _ARP_OP_REQUEST, hw, addr, b"\0" * 6, addr)
    return _ethernet(BROADCAST_MAC, hw, ETH_P_ARP, arp)


def build_unsolicited_na(mac: str, ip: str) -> bytes:
    """Unsolicited IPv6 neighbour advertisement for ``ip`` at ``mac``.

    From ``ip`` to all-nodes ``ff02::1`` (Ethernet 33:33:00:00:00:01), hop
    limit 255, override flag set, solicited flag clear, with a target
    link-layer address option; ICMPv6 checksum over the IPv6 pseudo-header.

    Raises:
        ValueError: ``mac`` or ``ip`` is malformed (or ``ip`` is not IPv6).

    """
    hw = parse_mac(mac)
    src = _ipv6(ip)
    body = struct.pack("!I", _NA_FLAG_OVERRIDE) + src.packed
    body += struct.pack("!BB", _ND_OPT_TARGET_LLADDR, 1) + hw
    icmp_len = 4 + len(body)
    pseudo = src.packed + IPV6_ALL_NODES.packed
    pseudo += struct.pack("!I3xB", icmp_len, _ICMPV6_NEXT_HEADER)
    unsummed = struct.pack("!BBH", _ICMPV6_NEIGHBOR_ADVERT, 0, 0) + body
    checksum = internet_checksum(pseudo + unsummed)
    icmp = struct.pack("!BBH", _ICMPV6_NEIGHBOR_ADVERT, 0, checksum) + body
    ipv6 = struct.pack("!IHBB", 6 << 28, icmp_len, _ICMPV6_NEXT_HEADER, 255)
    ipv6 += src.packed + IPV6_ALL_NODES.packed
    return _ethernet(IPV6_ALL_NODES_MAC, hw, ETH_P_IPV6, ipv6 + icmp)


@dataclass(frozen=True, slots=True)
class Announcement:
    """One frame to send for one guest NIC.

    Attributes:
        kind: RARP, gratuitous ARP or IPv6 NA.
        mac: the guest NIC's MAC.
        ip: the address announced ("" for RARP).
        frame: the bytes on the wire.

    """

    kind: FrameKind
    mac: str
    ip: str
    frame: bytes


def build_announcements(mac: str, ips: Sequence[str]) -> tuple[Announcement, ...]:
    """Frames announcing ``mac``: one RARP, then one GARP or NA per address.

    Raises:
        ValueError: a malformed MAC or address.

    """
    found = [Announcement(FrameKind.RARP, mac, "", build_rarp(mac))]
    for ip in ips:
        addr = ipaddress.ip_address(ip)
        if isinstance(addr, ipaddress.IPv4Address):
            found.append(Announcement(FrameKind.GARP, mac, ip, build_gratuitous_arp(mac, ip)))
        else:
            found.append(Announcement(FrameKind.NA, mac, ip, build_unsolicited_na(mac, ip)))
    return tuple(found)


def announcements_for(
    mac: str, ips: Sequence[str]
) -> tuple[tuple[Announcement, ...], tuple[str, ...]]:
    """Frames announcing ``mac`` like ``build_announcements``, skipping what is malformed.

    Returns:
        The frames (RARP first), and one problem per MAC or address that could
        not be announced (a malformed MAC gives no frames at all).

    """
    try:
        frames = [Announcement(FrameKind.RARP, mac, "", build_rarp(mac))]
    except ValueError as exc:
        return (), (str(exc),)
    problems: list[str] = []
    for ip in ips:
        try:
            frames.extend(build_announcements(mac, [ip])[1:])
        except ValueError as exc:
            problems.append(f"{ip!r} for {mac} not announced: {exc}")
    return tuple(frames), tuple(problems)


class AddressSource(StrEnum):
    """Where a guest address came from; only the host's own word is announced."""

    GUEST_IP = "guest-ip"
    """Declared by the operator (``--guest-ip``)."""
    NWFILTER = "nwfilter"
    """The ``IP`` parameter of the NIC's nwfilter (what the host lets the guest use)."""
    LEASE = "lease"
    """A DHCP lease the host's libvirt network handed out."""
    AGENT = "agent"
    """The guest agent: the guest says so (never announced)."""
    ARP = "arp"
    """The host's ARP/neighbour cache, learned from the guest's own frames (never announced)."""


HOST_VOUCHED: Final = frozenset(
    {AddressSource.GUEST_IP, AddressSource.NWFILTER, AddressSource.LEASE}
)
"""Sources whose addresses the destination announces. A GARP/NA for an address the
guest picked would let it take over the gateway's or a neighbour's traffic."""
MAX_ANNOUNCED_PER_NIC: Final = 8
"""At most this many addresses per NIC are announced (each costs a frame per round)."""


@dataclass(frozen=True, slots=True)
class GuestAddress:
    """One address found for a guest NIC, and whether it is announced.

    Attributes:
        mac: the NIC's MAC.
        ip: the address as found.
        source: where it came from.
        announced: the destination announces it (GARP or NA).
        why_not: why it is not announced ("" if it is).

    """

    mac: str
    ip: str
    source: AddressSource
    announced: bool = False
    why_not: str = ""

    def as_dict(self) -> dict[str, object]:
        """JSON form for the report."""
        found: dict[str, object] = {
            "mac": self.mac, "ip": self.ip, "source": self.source.value,
            "announced": self.announced,
        }  # fmt: skip
        if self.why_not:
            found["why_not"] = self.why_not
        return found


def _unicast_problem(ip: str) -> str:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return "not an IP address"
    if addr.is_multicast or addr.is_unspecified or addr.is_loopback:
        return "not a unicast address"
    if isinstance(addr, ipaddress.IPv4Address) and addr == ipaddress.IPv4Address("255.255.255.255"):
        return "not a unicast address"
    return ""


def choose_announced(
    found: Sequence[GuestAddress], *, limit: int = MAX_ANNOUNCED_PER_NIC
) -> tuple[GuestAddress, ...]:
    """Decide which found addresses the destination announces, and say why not for the rest.

    An address found by several sources counts once, under its most trusted one
    (the order of ``AddressSource``). Announced: host-vouched (``HOST_VOUCHED``),
    well-formed unicast addresses, at most ``limit`` per NIC in the order found.
    """
    rank = {source: i for i, source in enumerate(AddressSource)}
    best: dict[tuple[str, str], GuestAddress] = {}
    for item in found:
        key = (item.mac.lower(), item.ip)
        if key not in best or rank[item.source] < rank[best[key].source]:
            best[key] = item
    per_nic: dict[str, int] = {}
    out: list[GuestAddress] = []
    for (mac, ip), item in best.items():
        if item.source not in HOST_VOUCHED:
            why = "guest-reported"
        elif problem := _unicast_problem(ip):
            why = problem
        elif per_nic.get(mac, 0) >= limit:
            why = f"over the cap of {limit} announced addresses per NIC"
        else:
            per_nic[mac] = per_nic.get(mac, 0) + 1
            out.append(GuestAddress(mac, ip, item.source, announced=True))
            continue
        out.append(GuestAddress(mac, ip, item.source, announced=False, why_not=why))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class AnnounceSchedule:
    """When to send the announcement rounds, relative to the guest's resume.

    Round ``i`` (from 0) goes out at ``i * interval_ms``: the first at once,
    the rest after the network had a chance to drop or reorder the first.

    Attributes:
        count: number of rounds (1-20).
        interval_ms: time between rounds (1-5000 ms).

    """

    count: int = 3
    interval_ms: int = 50

    def __post_init__(self) -> None:
        """Validate the bounds.

        Raises:
            ValueError: a bound is violated; the message names the field.

        """
        if not 1 <= self.count <= 20:
            msg = f"announce count={self.count}: use 1 to 20 rounds"
            raise ValueError(msg)
        if not 1 <= self.interval_ms <= 5000:
            msg = f"announce interval_ms={self.interval_ms}: use 1 to 5000 ms"
            raise ValueError(msg)

    def offsets_ms(self) -> tuple[int, ...]:
        """Send time of each round, in ms after the start."""
        return tuple(i * self.interval_ms for i in range(self.count))


@dataclass(frozen=True, slots=True)
class NotifyConfig:
    """Our "notify switches" setting, per network (bridge), like vSphere's vSwitch property.

    Attributes:
        enabled: announce at all (``--no-notify`` turns it off everywhere).
        off_bridges: bridges (networks) where we do not announce.
        schedule: rounds and spacing of the announcements.
        guest_ips: addresses declared by the user, ``ADDR`` (the guest's first
            NIC) or ``MAC=ADDR``; announced with the host-vouched ones libvirt knows.
        address_sources: libvirt sources to ask (lease, agent, arp); only
            ``HOST_VOUCHED`` ones are announced, the others are reported.
        verify_timeout_ms: how long to wait for the destination bridge to show
            the guest's MAC on its tap.
        flush_source_fdb: remove stale entries for the guest's MACs on the source.

    """

    enabled: bool = True
    off_bridges: frozenset[str] = frozenset()
    schedule: AnnounceSchedule = AnnounceSchedule()
    guest_ips: tuple[str, ...] = ()
    address_sources: tuple[str, ...] = ("lease", "agent", "arp")
    verify_timeout_ms: int = 2000
    flush_source_fdb: bool = True

    def __post_init__(self) -> None:
        """Validate declared addresses.

        Raises:
            ValueError: a malformed ``--guest-ip`` value (named in the message).

        """
        for item in self.guest_ips:
            mac, _, ip = item.rpartition("=")
            try:
                if mac:
                    parse_mac(mac)
                ipaddress.ip_address(ip)
            except ValueError:
                msg = f"guest ip {item!r}: write ADDR or MAC=ADDR (e.g. 52:54:00:12:34:56=10.0.0.5)"
                raise ValueError(msg) from None

    def notify_on(self, bridge: str) -> bool:
        """True if we announce for NICs on ``bridge``."""
        return self.enabled and bridge not in self.off_bridges

    def declared_for(self, mac: str, *, first_nic: bool) -> tuple[str, ...]:
        """Declared addresses that belong to the NIC ``mac``."""
        found = []
        for item in self.guest_ips:
            owner, _, ip = item.rpartition("=")
            if (owner and owner.lower() == mac.lower()) or (not owner and first_nic):
                found.append(ip)
        return tuple(found)


@dataclass(frozen=True, slots=True)
class SentFrame:
    """One frame that went out (or failed to)."""

    kind: FrameKind
    mac: str
    ip: str
    round: int
    at_ms: float
    """Time after the start of sending."""
    error: str = ""

    def as_dict(self) -> dict[str, object]:
        """JSON form for the report."""
        found: dict[str, object] = {
            "kind": self.kind.value,
            "mac": self.mac,
            "round": self.round,
            "at_ms": round(self.at_ms, 1),
        }
        if self.ip:
            found["ip"] = self.ip
        if self.error:
            found["error"] = self.error
        return found
