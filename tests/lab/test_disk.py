"""Disk handover in the namespace lab: shared (GlusterFS + virtlockd) and copied (NBD).

The guest's workload appends checksummed, fdatasync'd records to its virtio
disk and re-reads every acknowledged one continuously; ``--workload`` waits for
a whole re-read pass after switchover. Shared: the lock follows the guest and a
second start elsewhere is refused. Copied: the destination copy is what the
guest verifies after the move; the source copy is checked from outside.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from collections.abc import Iterator
from functools import partial
from typing import Any

import pytest

from guestcheck import verified_guest_status
from labcli import vmotion_in_client
from libvirt_vmotion.lab import guestctl, storage, topology
from libvirt_vmotion.lab.constants import GUEST_ADDR, GUEST_NAME, HOST_A, HOST_B, LabHost
from libvirt_vmotion.lab.disklog import check_log
from libvirt_vmotion.lab.guestdef import CacheMode, DiskMode
from libvirt_vmotion.lab.image import GuestImage

pytestmark = pytest.mark.lab

vmotion = partial(vmotion_in_client, timeout_s=240)

DISK_MIB = 64
DISK_KIB_S = 256


def workload_status() -> dict[str, object]:
    result = vmotion("lab", "guest", "status")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    data = json.loads(text[text.index("{") :])
    assert isinstance(data, dict)
    return data


def migrate(src: LabHost, dst: LabHost, *extra: str) -> dict[str, Any]:
    result = vmotion(
        "migrate", GUEST_NAME, "--from", src.uri, "--to", dst.uri,
        "--workload", GUEST_ADDR, "--json", *extra,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert isinstance(report, dict)
    assert guestctl.find_guest() == [(dst, "running")]
    work = report["workload"]
    # Every acknowledged record re-read on the storage the guest now uses, all intact.
    assert work["disk_verified_after_move"] is True, work
    assert work["new_disk_mismatches"] == 0, work
    assert work["disk_mismatches"] == 0, work
    assert work["disk_io_errors"] == 0, work
    assert work["disk_acked_during"] > 0, work  # it kept writing while it moved
    assert work["new_mismatches"] == 0
    assert work["rebooted"] is False
    # The guest itself, after re-reading its memory and its disk log where it now runs.
    guest = verified_guest_status()
    assert (guest.mismatches, guest.disk_mismatches, guest.disk_io_errors) == (0, 0, 0), guest
    return report


def lock_owners(path: str) -> list[str]:
    seen = storage.lock_owner(path)
    owners = seen["owners"]
    assert isinstance(owners, list)
    return owners


def start(image: GuestImage, mode: DiskMode, cache: CacheMode = CacheMode.NONE) -> None:
    guestctl.start_guest(
        HOST_A,
        image,
        wss_mib=32,
        rate_mib_s=10,
        disk=mode,
        disk_mib=DISK_MIB,
        disk_kib_s=DISK_KIB_S,
        disk_cache=cache,
    )
    guestctl.wait_for_workload()
    deadline = time.monotonic() + 30
    while int(workload_status()["disk_acked"]) < 20:  # type: ignore[call-overload]
        assert time.monotonic() < deadline, workload_status()
        time.sleep(0.5)


@pytest.fixture
def shared_guest(lab: None, guest_image: GuestImage) -> Iterator[str]:
    start(guest_image, DiskMode.SHARED)
    yield guestctl.disk_path(DiskMode.SHARED)
    guestctl.remove_guest()


@pytest.fixture
def local_guest(lab: None, guest_image: GuestImage) -> Iterator[str]:
    start(guest_image, DiskMode.LOCAL)
    yield guestctl.disk_path(DiskMode.LOCAL)
    guestctl.remove_guest()
    for host in (HOST_A, HOST_B):
        topology.run_on_host(host, ["rm", "-f", guestctl.disk_path(DiskMode.LOCAL)])


def test_shared_disk_there_and_back_lock_follows_the_guest(shared_guest: str) -> None:
    path = shared_guest
    assert lock_owners(path) == [HOST_A.name]
    # A second start of the same disk elsewhere is refused by the lock manager.
    xml = topology.run_on_host(HOST_A, ["virsh", "dumpxml", GUEST_NAME]).stdout
    second = topology.run_on_host(
        HOST_B, ["sh", "-c", "virsh define /dev/stdin && virsh start vmo-guest"],
        check=False, input=xml,
    )  # fmt: skip
    assert second.returncode != 0
    assert "lock" in second.stderr.lower(), second.stderr
    assert guestctl.find_guest() == [(HOST_A, "running"), (HOST_B, "shut off")]
    topology.run_on_host(HOST_B, ["virsh", "undefine", GUEST_NAME])
    assert lock_owners(path) == [HOST_A.name]

    there = migrate(HOST_A, HOST_B)
    assert lock_owners(path) == [HOST_B.name]
    assert "storage" not in there  # nothing copied: the disk stayed where it was
    back = migrate(HOST_B, HOST_A)
    assert lock_owners(path) == [HOST_A.name]
    assert "storage" not in back
    assert int(workload_status()["disk_mismatches"]) == 0  # type: ignore[call-overload]


def _image_bytes(host: LabHost, path: str, records: int) -> bytes:
    out = subprocess.run(
        topology.host_argv(
            host, ["dd", f"if={path}", "bs=4096", f"count={records}", "status=none"]
        ),
        capture_output=True,
        check=True,
    )
    return out.stdout


def assert_storage_blockers_start_nothing(disk: str) -> None:
    """Copying off, then no space for the copy: each a named blocker; nothing changes."""

    def check(*extra: str) -> dict[str, Any]:
        result = vmotion(
            "check", GUEST_NAME, "--from", HOST_A.uri, "--to", HOST_B.uri, "--json", *extra
        )
        assert result.returncode == 3, result.stdout + result.stderr
        data = json.loads(result.stdout.strip().splitlines()[-1])
        assert isinstance(data, dict)
        return data

    # Disk not on the destination and copying off.
    data = check("--no-copy-storage")
    assert data["blockers"] == ["storage"], data["blockers"]
    # Not enough space on the destination for the copy: a small file system over
    # hostb's image directory (in hostb's own mount namespace only).
    images = "/var/lib/libvirt/images"
    topology.run_on_host(HOST_B, ["mount", "-n", "-t", "tmpfs", "-o", "size=32m", "tmpfs", images])
    try:
        data = check()
        assert data["blockers"] == ["dest-disk-space"], data["blockers"]
        (finding,) = [c for c in data["checks"] if c["verdict"] == "blocker"]
        assert "free for the copy of disk vda" in finding["message"]
        assert "--skip-check dest-disk-space" in finding["hint"]
        migrate_result = vmotion("migrate", GUEST_NAME, "--from", HOST_A.uri, "--to", HOST_B.uri)
        assert migrate_result.returncode == 3, migrate_result.stderr
        assert "dest-disk-space" in migrate_result.stderr
        assert "hint:" in migrate_result.stderr
        assert "Traceback" not in migrate_result.stderr
        listing = topology.run_on_host(HOST_B, ["ls", "-A", images]).stdout.split()
        assert listing == []  # nothing pre-created on the destination
    finally:
        topology.run_on_host(HOST_B, ["umount", "-n", images])
    assert guestctl.find_guest() == [(HOST_A, "running")]
    exists = topology.run_on_host(HOST_B, ["test", "-e", disk], check=False)
    assert exists.returncode != 0  # nothing pre-created on the destination


def test_local_disk_is_copied_source_copy_left_intact(local_guest: str) -> None:
    path = local_guest
    assert lock_owners(path) == [HOST_A.name]
    assert_storage_blockers_start_nothing(path)
    before = workload_status()
    report = migrate(HOST_A, HOST_B)  # automatic copy: hostb has no such disk
    section = report["storage"]
    assert section["mode"] == "copied"
    assert section["copied_disks"] == ["vda"]
    assert section["disk_transferred_bytes"] > 0
    assert lock_owners(path) == [HOST_B.name]  # each host locks its own copy
    # The source copy: left in place, no longer written, every record acknowledged
    # before the move intact and in sequence.
    acked = int(before["disk_acked"])  # type: ignore[call-overload]
    run_id = int(str(before["disk_run_id"]), 16)
    # Every slot the source could have written lies below the final acknowledged count.
    written = int(report["workload"]["disk_records"])
    first = hashlib.sha256(_image_bytes(HOST_A, path, written)).hexdigest()
    result = check_log(_image_bytes(HOST_A, path, acked), run_id=run_id, acked=acked)
    assert result.bad_count == 0, result.bad
    time.sleep(1)
    assert hashlib.sha256(_image_bytes(HOST_A, path, written)).hexdigest() == first
    # Back again: hosta's same-path file is a stale copy, not shared storage. The
    # automatic mode neither writes over it nor uses it: a named blocker ...
    refused = vmotion("migrate", GUEST_NAME, "--from", HOST_B.uri, "--to", HOST_A.uri)
    assert refused.returncode == 3, refused.stderr
    assert "[storage]" in refused.stderr
    assert "a different file" in refused.stderr
    assert guestctl.find_guest() == [(HOST_B, "running")]
    # ... and --copy-storage, asked for, writes the copy over it.
    back = migrate(HOST_B, HOST_A, "--copy-storage")
    assert back["storage"]["mode"] == "copied"
    assert lock_owners(path) == [HOST_A.name]


def test_writeback_cache_on_shared_storage_is_a_named_blocker(
    lab: None, guest_image: GuestImage
) -> None:
    start(guest_image, DiskMode.SHARED, CacheMode.WRITEBACK)
    try:
        result = vmotion("migrate", GUEST_NAME, "--from", HOST_A.uri, "--to", HOST_B.uri)
        assert result.returncode == 3, result.stderr
        assert "[disk-cache]" in result.stderr
        assert "cache=writeback" in result.stderr
        assert "hint:" in result.stderr
        assert "Traceback" not in result.stderr
        assert guestctl.find_guest() == [(HOST_A, "running")]
    finally:
        guestctl.remove_guest()
