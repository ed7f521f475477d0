"""The facts the pre-flight checks look at.

Pure: no I/O, no clock, no logging. Plain frozen dataclasses, gathered at the
edge by ``libvirt_vmotion.preflight.gather`` from libvirt's remote API and from our agent
on the destination; ``PreflightFacts`` holds them all.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from libvirt_vmotion.model import QEMU_OVERHEAD_BYTES
from libvirt_vmotion.preflight import netcheck

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
    """One guest NIC: how it attaches to the host."""

    mac: str
    kind: str
    """libvirt interface type: bridge, network, direct, hostdev, user, ..."""
    source: str
    """Bridge or network name (empty for other kinds)."""
    model: str = ""
    mtu: int | None = None


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


@dataclass(frozen=True, slots=True)
class BridgeFacts:
    """A host bridge on the destination, as libvirt's interface driver sees it."""

    name: str
    exists: bool
    active: bool = False
    uplinks: tuple[str, ...] = ()
    """Member ports that are not guest taps (``vnet*``, ``tap*``)."""
    mtu: int | None = None


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
class PortFlags:
    """One bridge port's forwarding flags (from the agent, via netlink)."""

    port: str
    state: str
    """disabled, listening, learning, forwarding, blocking."""
    learning: bool
    flooding: bool


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


@dataclass(frozen=True, slots=True)
class AgentFacts:
    """What our agent on the destination reports (absent: ``available`` False)."""

    available: bool
    error: str = ""
    mem_available_bytes: int | None = None
    hugepages_free_bytes: int | None = None
    bridge_ports: Mapping[str, tuple[PortFlags, ...]] = field(default_factory=dict)
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
    bridge_checks: tuple[netcheck.NetCheckResult, ...] = ()
    """Verdicts of ``netcheck`` on both hosts' bridges (from the agents' bridge facts)."""
    tls: TlsInputs | None = None
    """``--tls`` and both hosts' migration TLS facts (``preflight.tls``); None when not
    gathered (no TLS checks then)."""
