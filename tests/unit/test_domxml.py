# ruff: noqa: E501  the domain XML fixture reads best one device per line
"""Parsing libvirt XML into pre-flight facts."""

from __future__ import annotations

from libvirt_vmotion.preflight import domxml

DOMAIN = """<domain type='kvm'>
  <name>web01</name><memory unit='KiB'>1048576</memory><vcpu>2</vcpu>
  <os><type arch='x86_64' machine='pc-q35-9.2'>hvm</type></os>
  <cpu mode='custom' match='exact'><model>Skylake-Client</model></cpu>
  <memoryBacking><hugepages/></memoryBacking>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'><source file='/srv/web01.qcow2'/><target dev='vda' bus='virtio'/></disk>
    <disk type='network' device='disk'><source protocol='rbd' name='pool/img'/><target dev='vdb' bus='virtio'/></disk>
    <disk type='file' device='cdrom'><target dev='sda' bus='sata'/><readonly/></disk>
    <interface type='bridge'><mac address='52:54:00:00:00:01'/><source bridge='br0'/><model type='virtio'/><mtu size='9000'/></interface>
    <interface type='network'><mac address='52:54:00:00:00:02'/><source network='default'/></interface>
    <hostdev mode='subsystem' type='pci'><source><address domain='0x0000' bus='0x3b' slot='0x00' function='0x0'/></source></hostdev>
    <video><model type='virtio'/></video>
  </devices>
</domain>"""


def test_guest_facts() -> None:
    g = domxml.guest_facts(DOMAIN, state="running")
    assert g.name == "web01"
    assert g.memory_bytes == 1024**3
    assert g.vcpus == 2
    assert g.virt_type == "kvm"
    assert g.machine == "pc-q35-9.2"
    assert g.cpu_model == "Skylake-Client"
    assert g.hugepages
    assert [(n.kind, n.source, n.mtu) for n in g.nics] == [
        ("bridge", "br0", 9000),
        ("network", "default", None),
    ]
    assert [(d.target, d.kind, d.source, d.bus) for d in g.disks] == [
        ("vda", "file", "/srv/web01.qcow2", "virtio"),
        ("vdb", "network", "pool/img", "virtio"),
        ("sda", "file", "", "sata"),
    ]
    assert g.passthrough == ("pci hostdev 0x0000:0x3b:0x00:0x0",)
    assert g.video_models == ("virtio",)
    assert "Skylake-Client" in domxml.cpu_xml(DOMAIN)


def test_capabilities_and_domain_caps() -> None:
    caps = """<capabilities><guest><os_type>hvm</os_type><arch name='x86_64'>
      <emulator>/usr/bin/qemu-system-x86_64</emulator>
      <machine canonical='pc-i440fx-10.0'>pc</machine><machine>pc-q35-9.2</machine>
      <domain type='qemu'/></arch></guest></capabilities>"""
    machines, emulators = domxml.capabilities_machines(caps, arch="x86_64", virt_type="qemu")
    assert set(machines) == {"pc", "pc-i440fx-10.0", "pc-q35-9.2"}
    assert emulators == ("/usr/bin/qemu-system-x86_64",)
    assert domxml.capabilities_machines(caps, arch="x86_64", virt_type="kvm") == ((), ())
    dc = domxml.domain_caps(
        "<domainCapabilities><devices><disk><enum name='bus'><value>virtio</value></enum></disk>"
        "<video><enum name='modelType'><value>vga</value></enum></video></devices>"
        "</domainCapabilities>"
    )
    assert dc.disk_buses == ("virtio",)
    assert dc.video_models == ("vga",)
