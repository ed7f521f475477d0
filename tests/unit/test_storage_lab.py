"""Pure parts of the disk handover's lab and host side: guest XML, configs, fs lookup."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from libvirt_vmotion.lab import hostconf
from libvirt_vmotion.lab.constants import HOST_A
from libvirt_vmotion.lab.guestdef import CacheMode, LabDiskSpec, LabGuestSpec, build_domain_xml
from libvirt_vmotion.lab.storage import StoragePaths, build_server_script
from libvirt_vmotion.storage.host import _fs_type
from libvirt_vmotion.storage.plan import parse_lock_manager

MOUNTINFO = """\
22 1 254:0 / / rw,relatime - ext4 /dev/vda rw
40 22 0:50 / /var/lib/vmotion-lab/shared rw,relatime - fuse.glusterfs 10.77.0.10:/vmoshared rw
41 22 0:51 / /var/lib/vmotion-lab/shared-not rw - tmpfs tmpfs rw
"""


def test_guest_disk_is_raw_virtio_with_the_chosen_cache() -> None:
    spec = LabGuestSpec(
        kernel=Path("/k"), initrd=Path("/i"), cmdline="c", disk=LabDiskSpec(path="/s/vmo.raw")
    )
    disk = ET.fromstring(build_domain_xml(spec)).find("devices/disk")
    assert disk is not None
    assert disk.get("type") == "file"
    driver, source, target = disk.find("driver"), disk.find("source"), disk.find("target")
    assert driver is not None
    assert source is not None
    assert target is not None
    assert (driver.get("type"), driver.get("cache")) == ("raw", "none")
    assert source.get("file") == "/s/vmo.raw"
    assert (target.get("dev"), target.get("bus")) == ("vda", "virtio")
    no_disk = LabGuestSpec(kernel=Path("/k"), initrd=Path("/i"), cmdline="c")
    assert ET.fromstring(build_domain_xml(no_disk)).find("devices/disk") is None


def test_guest_disk_path_must_be_absolute() -> None:
    with pytest.raises(ValueError, match="absolute"):
        LabDiskSpec(path="disk.raw", cache=CacheMode.NONE)


def test_lab_hosts_run_virtlockd_with_direct_disk_leases() -> None:
    assert parse_lock_manager(hostconf.build_qemu_conf(HOST_A)) == "lockd"
    lockd = hostconf.build_qemu_lockd_conf()
    assert "auto_disk_leases = 1" in lockd
    assert "file_lockspace_dir" not in lockd
    script = hostconf.build_holder_script(HOST_A, hostconf.host_paths(HOST_A))
    assert script.index("virtlockd -d") < script.index("libvirtd -d -l")


def test_storage_server_script_binds_its_state_and_starts_the_volume() -> None:
    paths = StoragePaths(root=Path("/state/storage"))
    script = build_server_script(paths)
    assert "mount -n --bind /state/storage/glusterd /var/lib/glusterd" in script
    assert "volume create vmoshared 10.77.0.10:/state/storage/brick force" in script
    assert script.index("volume start") < script.index("echo ready")
    assert script.rstrip().endswith("exec sleep infinity")


@pytest.mark.parametrize(
    ("path", "fs"),
    [
        ("/var/lib/vmotion-lab/shared/images/vmo.raw", "fuse.glusterfs"),
        ("/var/lib/vmotion-lab/shared", "fuse.glusterfs"),
        ("/var/lib/vmotion-lab/shared-not/x", "tmpfs"),
        ("/var/lib/libvirt/images/x", "ext4"),
    ],
)
def test_fs_type_is_the_longest_mount_prefix(path: str, fs: str) -> None:
    assert _fs_type(Path(path), MOUNTINFO) == fs
