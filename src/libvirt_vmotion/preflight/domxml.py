"""Read what pre-flight and the hook need from libvirt XML documents.

Pure: no I/O, no clock, no logging. Parses domain XML (guest RAM, vCPUs, NICs,
disks, host-bound devices), capabilities XML (machine types, emulators) and
domain capabilities XML (device models). The hook uses ``guest_facts`` too, so
this module imports nothing heavy.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Final

from libvirt_vmotion.errors import VmotionError
from libvirt_vmotion.preflight.facts import DiskFacts, DomainCapsFacts, GuestFacts, NicFacts

_UNIT_BYTES: Final[dict[str, int]] = {
    "b": 1,
    "bytes": 1,
    **{p: 1000**n for n, p in enumerate(("kb", "mb", "gb", "tb", "pb", "eb"), 1)},
    **{p: 1024**n for n, p in enumerate(("k", "m", "g", "t", "p", "e"), 1)},
    **{p: 1024**n for n, p in enumerate(("kib", "mib", "gib", "tib", "pib", "eib"), 1)},
}
"""libvirt's memory units (``virScaleInteger``), lower-cased: KB is 1000, K and KiB 1024."""


IFNAMSIZ: Final = 16
"""The kernel's interface name buffer, NUL included: names are at most 15 bytes."""


def interface_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a Linux interface name, or None when it can.

    The kernel's rules (``dev_valid_name``): 1 to ``IFNAMSIZ - 1`` bytes, not
    ``.`` or ``..``, no ``/``, ``:`` or white space. A name from a domain XML is
    also a path component under ``/sys/class/net``: ``../`` must not reach it.
    """
    if not name:
        return "an interface name is empty"
    if name in {".", ".."} or any(c in "/:" or c.isspace() for c in name):
        return f"{name!r} is not an interface name ('.', '..', '/', ':' or white space)"
    if len(name.encode()) >= IFNAMSIZ:
        return f"interface name {name!r} is longer than {IFNAMSIZ - 1} bytes"
    return None


def _parse(xml: str) -> ET.Element:
    # Our own libvirtd's output or the XML libvirt hands its hook: trusted input.
    return ET.fromstring(xml)  # noqa: S314


def memory_bytes(dom: ET.Element) -> int:
    """Guest RAM from ``<memory unit=...>`` (libvirt's default unit is KiB).

    Raises:
        VmotionError: the unit is not one of libvirt's.

    """
    node = dom.find("memory")
    if node is None or not (node.text or "").strip():
        return 0
    unit = node.get("unit", "KiB")
    scale = _UNIT_BYTES.get(unit.lower())
    if scale is None:
        # Counting it as KiB would reserve (and admit) a guest at the wrong size.
        msg = f"the guest's <memory unit='{unit}'> is not a unit libvirt knows"
        raise VmotionError(
            msg, hint="Use b, KB, KiB, MB, MiB, GB, GiB, TB, TiB ... (see virsh dumpxml)."
        )
    return int(node.text or "0") * scale


def _passthrough(devices: ET.Element | None) -> tuple[str, ...]:
    if devices is None:
        return ()
    found = []
    for hd in devices.findall("hostdev"):
        addr = hd.find("source/address")
        where = ""
        if addr is not None:
            where = " " + ":".join(
                v for k in ("domain", "bus", "slot", "function") if (v := addr.get(k))
            )
        found.append(f"{hd.get('type', 'hostdev')} hostdev{where}".strip())
    for nic in devices.findall("interface[@type='hostdev']"):
        mac = nic.find("mac")
        found.append(f"hostdev NIC {mac.get('address', '?') if mac is not None else '?'}")
    for fs in devices.findall("filesystem"):
        driver = fs.find("driver")
        target = fs.find("target")
        if driver is not None and driver.get("type") == "virtiofs":
            where = target.get("dir", "?") if target is not None else "?"
            found.append(f"virtiofs filesystem {where}")
    return tuple(found)


def guest_facts(xml: str, *, state: str = "running", job_active: bool = False) -> GuestFacts:
    """Build ``GuestFacts`` from a domain XML document.

    Args:
        xml: the live domain XML.
        state: the guest's run state, as a word.
        job_active: whether a job (migration, save ...) runs.

    Returns:
        The facts the checks read.

    """
    dom = _parse(xml)
    devices = dom.find("devices")
    os_type = dom.find("os/type")
    cpu = dom.find("cpu")
    vcpu = dom.find("vcpu")
    return GuestFacts(
        name=dom.findtext("name", default=""),
        state=state,
        job_active=job_active,
        memory_bytes=memory_bytes(dom),
        vcpus=int((vcpu.text or "1") if vcpu is not None else "1"),
        virt_type=dom.get("type", "kvm"),
        arch=os_type.get("arch", "x86_64") if os_type is not None else "x86_64",
        machine=os_type.get("machine", "") if os_type is not None else "",
        emulator=dom.findtext("devices/emulator", default=""),
        cpu_mode=cpu.get("mode", "") if cpu is not None else "",
        cpu_model=dom.findtext("cpu/model", default=""),
        hugepages=dom.find("memoryBacking/hugepages") is not None,
        nics=_nics(devices),
        disks=_disks(devices),
        passthrough=_passthrough(devices),
        video_models=_video_models(devices),
    )


def nic_facts(xml: str) -> tuple[NicFacts, ...]:
    """The guest's NICs from its domain XML: the one NIC parser (checks, netcheck, cutover)."""
    return _nics(_parse(xml).find("devices"))


def _nics(devices: ET.Element | None) -> tuple[NicFacts, ...]:
    if devices is None:
        return ()
    return tuple(_nic(iface) for iface in devices.findall("interface"))


def _nic(iface: ET.Element) -> NicFacts:
    """One ``<interface>``: its attachment, model, MTU, tap and nwfilter addresses."""
    source = iface.find("source")
    src = bridge = network = ""
    if source is not None:
        src = source.get("bridge") or source.get("network") or source.get("dev") or ""
        bridge, network = source.get("bridge", ""), source.get("network", "")
    mac = iface.find("mac")
    model = iface.find("model")
    mtu = iface.find("mtu")
    target = iface.find("target")
    return NicFacts(
        mac=mac.get("address", "") if mac is not None else "",
        kind=iface.get("type", ""),
        source=src,
        model=model.get("type", "") if model is not None else "",
        mtu=int(mtu.get("size", "0")) or None if mtu is not None else None,
        bridge=bridge,
        network=network,
        tap=target.get("dev", "") if target is not None else "",
        filter_ips=tuple(
            value
            for param in iface.iterfind("filterref/parameter")
            if param.get("name") == "IP" and (value := param.get("value", ""))
        ),
    )


def _disks(devices: ET.Element | None) -> tuple[DiskFacts, ...]:
    if devices is None:
        return ()
    disks = []
    for disk in devices.findall("disk"):
        source = disk.find("source")
        target = disk.find("target")
        src = ""
        if source is not None:
            src = source.get("file") or source.get("dev") or source.get("name") or ""
            if disk.get("type") == "volume":
                src = f"{source.get('pool', '')}/{source.get('volume', '')}"
        disks.append(
            DiskFacts(
                target=target.get("dev", "") if target is not None else "",
                device=disk.get("device", "disk"),
                kind=disk.get("type", "file"),
                source=src,
                bus=target.get("bus", "") if target is not None else "",
                readonly=disk.find("readonly") is not None,
            )
        )
    return tuple(disks)


def _video_models(devices: ET.Element | None) -> tuple[str, ...]:
    if devices is None:
        return ()
    models = (m.get("type", "") for m in devices.findall("video/model"))
    return tuple(m for m in models if m != "none")


def cpu_xml(xml: str) -> str:
    """The guest's ``<cpu>`` element as text (what ``compareHypervisorCPU`` takes)."""
    cpu = _parse(xml).find("cpu")
    return "" if cpu is None else ET.tostring(cpu, encoding="unicode")


def capabilities_machines(
    caps_xml: str, *, arch: str, virt_type: str
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Machine types (names and canonical names) and emulators for ``arch``/``virt_type``."""
    caps = _parse(caps_xml)
    machines: set[str] = set()
    emulators: set[str] = set()
    for guest in caps.findall("guest"):
        arch_el = guest.find("arch")
        if arch_el is None or arch_el.get("name") != arch:
            continue
        domains = [d for d in arch_el.findall("domain") if d.get("type") == virt_type]
        if not domains:
            continue
        emu = arch_el.findtext("emulator")
        if emu:
            emulators.add(emu)
        for m in [*arch_el.findall("machine"), *(m for d in domains for m in d.findall("machine"))]:
            if m.text:
                machines.add(m.text)
            if m.get("canonical"):
                machines.add(m.get("canonical", ""))
    return tuple(sorted(machines)), tuple(sorted(emulators))


def domain_caps(domcaps_xml: str) -> DomainCapsFacts:
    """Disk buses and video models from domain capabilities."""
    caps = _parse(domcaps_xml)
    buses = tuple(v.text or "" for v in caps.findall("devices/disk/enum[@name='bus']/value"))
    videos = tuple(
        v.text or "" for v in caps.findall("devices/video/enum[@name='modelType']/value")
    )
    return DomainCapsFacts(disk_buses=buses, video_models=videos)
