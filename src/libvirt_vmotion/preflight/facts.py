"""The facts the pre-flight checks look at.

Pure: no I/O, no clock, no logging. Plain frozen dataclasses, gathered at the
edge by ``libvirt_vmotion.preflight.gather`` from libvirt's remote API and from our agent
on the destination; ``PreflightFacts`` holds them all.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import TYPE_CHECKING, Final

from libvirt_vmotion.model import QEMU_OVERHEAD_BYTES
from libvirt_vmotion.preflight.result import CheckResult

if TYPE_CHECKING:
    from libvirt_vmotion.preflight.tls import TlsInputs
    from libvirt_vmotion.storage.plan import StorageFacts


@dataclass(frozen=True, slots=True)
class HostFacts:
    """What libvirt's remote API tells about one host.

    Versions use libvirt's encoding: major * 1,000,000 + minor * 1,000 + micro.
    """

    uri: str
    hostname: str
    host_uuid: str
    libvirt_version: int
    qemu_version: int
    arch: str = "x86_64"
    cpus: int = 1
    free_memory_bytes: int = 0
    machines: tuple[str, ...] = ()
    """Machine types the host's QEMU offers for ``arch`` (capabilities XML)."""
    emulators: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class NicFacts:
    """One guest NIC: how it attaches to the host (``domxml.nic_facts`` parses it)."""

    mac: str
    """As the XML writes it ("" if the NIC has no ``<mac>``)."""
    kind: str
    """libvirt interface type: bridge, network, direct, hostdev, user, ..."""
    source: str
    """Bridge or network name (empty for other kinds)."""
    model: str = ""
    mtu: int | None = None
    bridge: str = ""
    """The host bridge it is plugged into (``<source bridge=...>``; a running guest's
    ``network`` NIC names it too); "" when the XML does not say."""
    network: str = ""
    """The libvirt network of a ``network`` NIC (``<source network=...>``)."""
    tap: str = ""
    """The tap device on the host it runs on (``<target dev=...>``; "" if unknown)."""
    filter_ips: tuple[str, ...] = ()
    """``IP`` parameters of the NIC's nwfilter reference: addresses the host lets it use."""

    @property
    def is_bridged(self) -> bool:
        """True if the NIC sits on a named Linux bridge (what the bridge checks judge)."""
        return self.kind in {"bridge", "network"} and bool(self.bridge) and bool(self.mac)


@dataclass(frozen=True, slots=True)
class DiskFacts:
    """One guest disk."""

    target: str
    device: str = "disk"
    kind: str = "file"
    """libvirt disk type: file, block, network, volume ..."""
    source: str = ""
    """Path (file/block) or protocol/name (network); empty for an empty CD-ROM."""
    bus: str = ""
    readonly: bool = False


@dataclass(frozen=True, slots=True)
class GuestFacts:
    """What libvirt tells about the guest on the source."""

    name: str
    state: str
    job_active: bool
    memory_bytes: int
    vcpus: int
    virt_type: str = "kvm"
    arch: str = "x86_64"
    machine: str = ""
    emulator: str = ""
    cpu_mode: str = ""
    cpu_model: str = ""
    hugepages: bool = False
    nics: tuple[NicFacts, ...] = ()
    disks: tuple[DiskFacts, ...] = ()
    passthrough: tuple[str, ...] = ()
    """Devices bound to the source host (hostdev, mdev, ...), described for users."""
    video_models: tuple[str, ...] = ()


class CpuCompat(StrEnum):
    """Result of ``compareHypervisorCPU`` on the destination."""

    IDENTICAL = "identical"
    SUPERSET = "superset"
    INCOMPATIBLE = "incompatible"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class CpuFacts:
    """The guest CPU against the destination's hypervisor CPU."""

    result: CpuCompat
    detail: str = ""
    """libvirt's explanation (names the missing features) or why it is unknown."""


@dataclass(frozen=True, slots=True)
class DomainCapsFacts:
    """Device models the destination's QEMU offers (domain capabilities)."""

    disk_buses: tuple[str, ...] = ()
    video_models: tuple[str, ...] = ()
    available: bool = True
    detail: str = ""


class StpState(IntEnum):
    """Bridge port STP state (``IFLA_BRPORT_STATE``, ``BR_STATE_*``)."""

    DISABLED = 0
    LISTENING = 1
    LEARNING = 2
    FORWARDING = 3
    BLOCKING = 4


class PortRole(StrEnum):
    """What a bridge port is for."""

    UPLINK = "uplink"
    """Physical NIC, bond, VLAN, veth, VXLAN: the way out of the host."""
    GUEST = "guest"
    """A tap: some guest's NIC."""


TAP_KINDS: Final = frozenset({"tun", "tap"})
"""Link kinds of a guest's tap (what netlink reports for it)."""
TAP_NAME_PREFIXES: Final = ("vnet", "tap", "macvtap", "vif")
"""Names hypervisors give guest taps: the rule only where the link kind is not known."""


def role_of(kind: str | None, name: str = "") -> PortRole:
    """The one tap rule: a port's role from its link kind, else from its name.

    Args:
        kind: the port's link kind as the host reports it (``""`` for a physical
            NIC); None where only its name is known (libvirt's interface XML).
        name: the port's name, used only when ``kind`` is None.

    Returns:
        GUEST for a tap, UPLINK for anything else.

    """
    if kind is None:
        return PortRole.GUEST if name.startswith(TAP_NAME_PREFIXES) else PortRole.UPLINK
    return PortRole.GUEST if kind in TAP_KINDS else PortRole.UPLINK


def _as_int(value: object) -> int:
    return int(value) if isinstance(value, int | float | str) and str(value).isdigit() else 0


@dataclass(frozen=True, slots=True)
class PortFacts:
    """One bridge port.

    Read by the agent through netlink, every field is the kernel's. A port known
    only by name (libvirt's interface XML) has ``kind`` None and the kernel's
    defaults for a new port; the checks that judge port flags run only on the
    agent's facts.
    """

    name: str
    kind: str | None = None
    """Link kind (``veth``, ``tun``, ``bond``, ``""`` for physical; None: not known)."""
    up: bool = True
    stp_state: StpState = StpState.FORWARDING
    learning: bool = True
    unicast_flood: bool = True
    mcast_flood: bool = True
    bcast_flood: bool = True
    mtu: int = 0

    @property
    def role(self) -> PortRole:
        """Uplink or guest tap (``role_of``)."""
        return role_of(self.kind, self.name)

    def as_dict(self) -> dict[str, object]:
        """JSON form (agent replies)."""
        return {
            "name": self.name,
            "kind": self.kind or "",
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


@dataclass(frozen=True, slots=True)
class BridgeFacts:
    """One host bridge on one host: the one bridge model of ``check``, ``netcheck`` and the gate.

    Filled from libvirt's interface driver (``gather``: name, up, member ports by
    name, MTU) or, in full, by the agent over netlink (``cutover.bridge.read_bridge``:
    port kinds and flags, STP, ageing, VLAN filtering, the bridge's MAC).
    ``exists=False`` carries only host and name.
    """

    name: str
    exists: bool
    up: bool = False
    ports: tuple[PortFacts, ...] = ()
    mtu: int | None = None
    """None: not known (libvirt's XML had no ``<mtu>``)."""
    host: str = ""
    stp_enabled: bool = False
    forward_delay_cs: int = 0
    ageing_time_cs: int = 30000
    vlan_filtering: bool = False
    mac: str = ""
    addr_assign_type: int | None = None
    """How the bridge got its MAC (sysfs ``addr_assign_type``); None: not known."""

    def uplinks(self) -> tuple[PortFacts, ...]:
        """The ports that lead out of the host (``role_of``)."""
        return tuple(p for p in self.ports if p.role is PortRole.UPLINK)

    def uplink_names(self) -> tuple[str, ...]:
        """The uplinks' names."""
        return tuple(p.name for p in self.uplinks())

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
        mtu = data.get("mtu")
        return cls(
            host=str(data.get("host", "")),
            name=str(data["name"]),
            exists=bool(data.get("exists")),
            up=bool(data.get("up")),
            mtu=None if mtu is None else _as_int(mtu),
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
class NetworkFacts:
    """A libvirt virtual network on the destination."""

    name: str
    exists: bool
    active: bool = False
    bridge: str = ""


@dataclass(frozen=True, slots=True)
class DiskView:
    """Whether the destination sees a disk's source at the same path."""

    source: str
    visible: bool | None
    """True/False when known; None when neither libvirt nor the agent could tell."""
    how: str = ""
    """How we know (``storage pool X``, ``agent``) or why we do not."""


@dataclass(frozen=True, slots=True)
class ReservationView:
    """What the destination's reservation store holds and allows."""

    reserved_memory_bytes: int = 0
    reserved_vcpus: int = 0
    inbound_active: int = 0
    inbound_limit: int = 2
    memory_limit_bytes: int | None = None
    """Configured cap on memory for incoming guests (``capacity.toml``)."""
    vcpu_limit: int | None = None
    maintenance_since: str = ""
    """When the host entered maintenance (UTC), empty when it is not in maintenance."""
    maintenance_by: str = ""


@dataclass(frozen=True, slots=True)
class AgentFacts:
    """What our agent on the destination reports (absent: ``available`` False)."""

    available: bool
    error: str = ""
    mem_available_bytes: int | None = None
    hugepages_free_bytes: int | None = None
    bridge_ports: Mapping[str, tuple[PortFacts, ...]] = field(default_factory=dict)
    """Each bridge's ports with their STP state, learning and unicast flooding (netlink);
    the agent does not report link kinds here (``kind`` None)."""
    reservation: ReservationView | None = None
    paths_exist: Mapping[str, bool] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PreflightFacts:
    """Everything the checks look at."""

    source: HostFacts
    dest: HostFacts
    guest: GuestFacts
    cpu: CpuFacts
    dest_caps: DomainCapsFacts
    bridges: Mapping[str, BridgeFacts] = field(default_factory=dict)
    networks: Mapping[str, NetworkFacts] = field(default_factory=dict)
    disks: Mapping[str, DiskView] = field(default_factory=dict)
    agent: AgentFacts = field(default_factory=lambda: AgentFacts(available=False))
    qemu_overhead_bytes: int = QEMU_OVERHEAD_BYTES
    """Memory QEMU needs beyond guest RAM (page tables, device state, TCG cache)."""
    storage: StorageFacts | None = None
    """Disk handover facts (cache modes, lock managers, destination paths and space,
    the copy plan); None when not gathered. Checked by ``storage``'s checks."""
    bridge_checks: tuple[CheckResult, ...] = ()
    """Verdicts of ``netcheck`` on both hosts' bridges (from the agents' bridge facts)."""
    tls: TlsInputs | None = None
    """``--tls`` and both hosts' migration TLS facts (``preflight.tls``); None when not
    gathered (no TLS checks then)."""
