"""Domain XML of the lab's test guest.

Pure: no I/O. The guest boots the project's kernel + initramfs directly, has
an optional raw virtio disk (``vda``, the workload's disk log), one virtio NIC
on the host bridge ``br0`` (same name on both lab hosts, as migration requires)
and a serial console logged by virtlogd.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from libvirt_vmotion.lab.constants import GUEST_MAC, GUEST_NAME, HOST_BRIDGE


class VirtType(StrEnum):
    """How QEMU runs the guest: TCG emulation (the lab default) or KVM."""

    QEMU = "qemu"
    """TCG. The default here: this machine kind's /dev/kvm is PVM, where a stock
    guest kernel crawls (LAB-NOTES)."""
    KVM = "kvm"
    """Hardware virtualization, for real hosts."""


class DiskMode(StrEnum):
    """Where the lab guest's disk lives."""

    SHARED = "shared"
    """On the lab's shared storage (GlusterFS), the same path on both hosts."""
    LOCAL = "local"
    """In the host's own ``/var/lib/libvirt/images``: a migration copies it."""


class CacheMode(StrEnum):
    """libvirt disk cache modes (``<driver cache=...>``)."""

    NONE = "none"
    DIRECTSYNC = "directsync"
    WRITETHROUGH = "writethrough"
    WRITEBACK = "writeback"
    UNSAFE = "unsafe"


@dataclass(frozen=True, slots=True)
class LabDiskSpec:
    """The lab guest's optional disk.

    Attributes:
        path: image path on the host (raw file).
        cache: QEMU cache mode; ``none`` (O_DIRECT on the host) is what a
            migration over shared storage needs: no host page cache may hold
            data the other host does not see.
        target: guest device name.

    """

    path: str
    cache: CacheMode = CacheMode.NONE
    target: str = "vda"

    def __post_init__(self) -> None:
        """Validate the path."""
        if not self.path.startswith("/"):
            msg = f"disk path={self.path!r}: must be absolute"
            raise ValueError(msg)


@dataclass(frozen=True, slots=True)
class LabGuestSpec:
    """Everything that shapes the lab guest's definition.

    Attributes:
        kernel: path of vmlinuz, readable at the same path on both hosts.
        initrd: path of the initramfs, likewise.
        cmdline: kernel command line (address and workload settings).
        memory_mib: guest RAM.
        vcpus: virtual CPUs.
        virt_type: TCG (``qemu``) or ``kvm``.
        cpu_model: a named model; ``host-passthrough`` fails on PVM hosts.

    """

    kernel: Path
    initrd: Path
    cmdline: str
    memory_mib: int = 512
    vcpus: int = 1
    virt_type: VirtType = VirtType.QEMU
    cpu_model: str = "qemu64"
    name: str = GUEST_NAME
    mac: str = GUEST_MAC
    bridge: str = HOST_BRIDGE
    disk: LabDiskSpec | None = None

    def __post_init__(self) -> None:
        """Validate sizes."""
        if self.memory_mib < 128:
            msg = f"memory_mib={self.memory_mib}: the lab guest needs at least 128 MiB"
            raise ValueError(msg)
        if self.vcpus < 1:
            msg = f"vcpus={self.vcpus}: need at least one vCPU"
            raise ValueError(msg)


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    node = ET.SubElement(parent, tag, attrs)
    if text is not None:
        node.text = text
    return node


def build_domain_xml(spec: LabGuestSpec) -> str:
    """Return the libvirt domain XML for ``spec``."""
    dom = ET.Element("domain", type=spec.virt_type.value)
    _sub(dom, "name", spec.name)
    _sub(dom, "memory", str(spec.memory_mib), unit="MiB")
    _sub(dom, "vcpu", str(spec.vcpus))
    os_el = _sub(dom, "os")
    _sub(os_el, "type", "hvm", arch="x86_64", machine="pc")
    _sub(os_el, "kernel", str(spec.kernel))
    _sub(os_el, "initrd", str(spec.initrd))
    _sub(os_el, "cmdline", spec.cmdline)
    features = _sub(dom, "features")
    _sub(features, "acpi")
    cpu = _sub(dom, "cpu", mode="custom", match="exact", check="none")
    _sub(cpu, "model", spec.cpu_model, fallback="allow")
    _sub(dom, "on_poweroff", "destroy")
    _sub(dom, "on_reboot", "restart")
    _sub(dom, "on_crash", "destroy")
    devices = _sub(dom, "devices")
    if spec.disk is not None:
        disk = _sub(devices, "disk", type="file", device="disk")
        _sub(disk, "driver", name="qemu", type="raw", cache=spec.disk.cache.value)
        _sub(disk, "source", file=spec.disk.path)
        _sub(disk, "target", dev=spec.disk.target, bus="virtio")
    nic = _sub(devices, "interface", type="bridge")
    _sub(nic, "mac", address=spec.mac)
    _sub(nic, "source", bridge=spec.bridge)
    _sub(nic, "model", type="virtio")
    serial = _sub(devices, "serial", type="pty")
    _sub(serial, "log", file=f"/var/log/libvirt/qemu/{spec.name}-serial.log", append="on")
    _sub(serial, "target", port="0")
    console = _sub(devices, "console", type="pty")
    _sub(console, "target", type="serial", port="0")
    _sub(devices, "memballoon", model="none")
    ET.indent(dom)
    return ET.tostring(dom, encoding="unicode")
