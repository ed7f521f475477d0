"""Disk handover decisions and storage pre-flight checks (pure)."""

from __future__ import annotations

import pytest

from libvirt_vmotion.preflight.disks import (
    check_dest_disk_space,
    check_disk_cache,
    check_lock_manager,
)
from libvirt_vmotion.preflight.registry import (
    CpuCompat,
    CpuFacts,
    DiskFacts,
    DiskView,
    DomainCapsFacts,
    GuestFacts,
    HostFacts,
    PreflightFacts,
    Verdict,
    run_checks,
)
from libvirt_vmotion.storage.plan import (
    CopyMode,
    DiskSpec,
    PathInfo,
    StorageFacts,
    copied_disks,
    copy_bytes_needed,
    disk_specs,
    needs_precreate,
    parse_lock_manager,
    same_path_conflict,
)

GIB = 1024**3
PATH = "/var/lib/libvirt/images/web01.raw"

XML = f"""<domain type='qemu'><name>web01</name><devices>
  <disk type='file' device='disk'>
    <driver name='qemu' type='raw' cache='none'/>
    <source file='{PATH}'/><target dev='vda' bus='virtio'/>
  </disk>
  <disk type='file' device='cdrom'><target dev='hdc' bus='ide'/><readonly/></disk>
  <disk type='network' device='disk'>
    <driver name='qemu' type='raw'/>
    <source protocol='rbd' name='pool/img'/><target dev='vdb' bus='virtio'/>
  </disk>
  <disk type='file' device='disk'>
    <source file='/srv/shared/data.qcow2'/><target dev='vdc' bus='virtio'/>
    <driver name='qemu' type='qcow2'/><shareable/>
  </disk>
</devices></domain>"""


def make_disk(**kw: object) -> DiskSpec:
    values: dict[str, object] = {
        "target": "vda",
        "source": PATH,
        "cache": "none",
        "capacity_bytes": 10 * GIB,
        "allocation_bytes": 2 * GIB,
    }
    values.update(kw)
    return DiskSpec(**values)  # type: ignore[arg-type]  # test builder


def make_facts(
    *,
    disk: DiskSpec | None = None,
    copy: CopyMode = CopyMode.AUTO,
    dest_exists: bool = True,
    dest_free: int | None = 100 * GIB,
    fs: str = "ext4",
    locks: tuple[str, str] = ("lockd", "lockd"),
) -> StorageFacts:
    d = disk or make_disk()
    return StorageFacts(
        disks=(d,),
        copy=copy,
        source_paths={d.source: PathInfo(exists=True, fs_type=fs)},
        dest_paths={
            # A destination file at the same path that sees the source's share marker.
            d.source: PathInfo(
                exists=dest_exists, fs_type=fs, free_bytes=dest_free, shared=dest_exists or None
            )
        },
        source_lock_manager=locks[0],
        dest_lock_manager=locks[1],
        dest_known=True,
    )


def verdicts(results: tuple[object, ...]) -> list[Verdict]:
    return [r.verdict for r in results]  # type: ignore[attr-defined]  # CheckResult


def test_disk_specs_reads_disks_not_cdroms() -> None:
    disks = disk_specs(XML)
    assert [d.target for d in disks] == ["vda", "vdb", "vdc"]
    vda, vdb, vdc = disks
    assert (vda.source, vda.format, vda.cache, vda.is_local_kind) == (PATH, "raw", "none", True)
    assert (vdb.kind, vdb.source, vdb.cache, vdb.is_local_kind) == (
        "network",
        "pool/img",
        "default",
        False,
    )
    assert (vdc.format, vdc.shareable) == ("qcow2", True)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "nop"),
        ('#lock_manager = "lockd"\n', "nop"),
        ('lock_manager = "lockd"\n', "lockd"),
        ("user = 'root'\nlock_manager='sanlock'  # leases\n", "sanlock"),
    ],
)
def test_parse_lock_manager(text: str, expected: str) -> None:
    assert parse_lock_manager(text) == expected


@pytest.mark.parametrize(
    ("copy", "dest_exists", "copied"),
    [
        (CopyMode.AUTO, True, []),
        (CopyMode.AUTO, False, ["vda"]),
        (CopyMode.ALWAYS, True, ["vda"]),
        (CopyMode.NEVER, False, []),
    ],
)
def test_copy_plan(copy: CopyMode, dest_exists: bool, copied: list[str]) -> None:
    facts = make_facts(copy=copy, dest_exists=dest_exists)
    assert [d.target for d in copied_disks(facts)] == copied


@pytest.mark.parametrize(
    ("copy", "shared", "copied", "conflict"),
    [
        (CopyMode.AUTO, False, [], "a different file"),  # before: copied over it
        (CopyMode.AUTO, None, [], "no share marker could be placed"),  # before: "shared"
        (CopyMode.AUTO, True, [], ""),
        (CopyMode.ALWAYS, False, ["vda"], ""),  # the user asked to write over it
        (CopyMode.NEVER, None, [], ""),  # the user says it is shared
    ],
)
def test_a_same_path_file_not_shown_shared_is_neither_overwritten_nor_trusted(
    copy: CopyMode, shared: bool | None, copied: list[str], conflict: str
) -> None:
    facts = make_facts(copy=copy)
    stale = StorageFacts(
        disks=facts.disks,
        copy=copy,
        dest_paths={PATH: PathInfo(exists=True, shared=shared, free_bytes=100 * GIB)},
    )
    assert [d.target for d in copied_disks(stale)] == copied
    found = same_path_conflict(stale, PATH)
    assert (conflict in found) if conflict else found == ""
    assert stale.dest_paths[PATH].is_same_storage is (shared is True)


def test_readonly_and_shareable_disks_are_never_copied() -> None:
    for disk in (make_disk(readonly=True), make_disk(shareable=True)):
        assert copied_disks(make_facts(disk=disk, copy=CopyMode.ALWAYS)) == ()


def test_precreate_only_files_missing_on_the_destination() -> None:
    assert needs_precreate(make_disk(), PathInfo(exists=False))
    assert needs_precreate(make_disk(), None)
    assert not needs_precreate(make_disk(), PathInfo(exists=True))
    assert not needs_precreate(make_disk(kind="block", source="/dev/sdb"), PathInfo(exists=False))


def test_copy_space_raw_needs_capacity_qcow2_its_allocation() -> None:
    assert copy_bytes_needed(make_disk()) == int(10 * GIB * 1.05)
    assert copy_bytes_needed(make_disk(format="qcow2")) == int(2 * GIB * 1.05)
    assert copy_bytes_needed(make_disk(format="qcow2", allocation_bytes=0)) == int(10 * GIB * 1.05)


@pytest.mark.parametrize(
    ("cache", "fs", "verdict"),
    [
        ("none", "ext4", Verdict.OK),
        ("directsync", "fuse.glusterfs", Verdict.OK),
        ("writeback", "ocfs2", Verdict.OK),  # coherent cluster file system
        ("writeback", "fuse.glusterfs", Verdict.BLOCKER),
        ("writeback", "nfs4", Verdict.BLOCKER),
        ("default", "nfs4", Verdict.BLOCKER),
        ("unsafe", "ext4", Verdict.BLOCKER),
    ],
)
def test_disk_cache_on_shared_storage(cache: str, fs: str, verdict: Verdict) -> None:
    results = check_disk_cache(make_facts(disk=make_disk(cache=cache), fs=fs), dest_host="kvm2")
    assert verdicts(results) == [verdict]
    if verdict is Verdict.BLOCKER:
        (r,) = results
        assert r.name == "disk-cache"
        assert f"cache={cache}" in r.message
        assert "kvm2" in r.message
        assert "cache='none'" in r.hint
        assert "--skip-check disk-cache" in r.hint


def test_disk_cache_ignores_copied_and_unshared_disks() -> None:
    unsafe = make_disk(cache="writeback")
    assert check_disk_cache(make_facts(disk=unsafe, copy=CopyMode.ALWAYS, fs="nfs4")) == ()
    assert check_disk_cache(make_facts(disk=unsafe, dest_exists=False, fs="nfs4")) == ()


@pytest.mark.parametrize(
    ("locks", "verdict"),
    [
        (("lockd", "lockd"), Verdict.OK),
        (("sanlock", "sanlock"), Verdict.OK),
        (("lockd", "nop"), Verdict.BLOCKER),
        (("nop", "lockd"), Verdict.BLOCKER),
        (("nop", "nop"), Verdict.WARNING),
        (("", "lockd"), Verdict.WARNING),
    ],
)
def test_lock_manager_consistency(locks: tuple[str, str], verdict: Verdict) -> None:
    results = check_lock_manager(make_facts(locks=locks), dest_host="kvm2")
    assert verdicts(results) == [verdict]
    if verdict is Verdict.BLOCKER:
        (r,) = results
        assert locks[0] in r.message
        assert locks[1] in r.message
        assert "qemu.conf" in r.hint
        assert "--skip-check lock-manager" in r.hint


def test_dest_space_blocks_a_copy_that_does_not_fit() -> None:
    facts = make_facts(dest_exists=False, dest_free=1 * GIB)
    (r,) = check_dest_disk_space(facts, dest_host="kvm2")
    assert r.verdict is Verdict.BLOCKER
    assert "kvm2 has 1.0 GiB free" in r.message
    assert "10.5 GiB" in r.message
    assert "--skip-check dest-disk-space" in r.hint
    d = r.to_dict()
    need = copy_bytes_needed(make_disk())
    assert (d["observed_value"], d["required_value"], d["unit"]) == (GIB, need, "bytes")


def test_dest_space_ok_unknown_and_not_copied() -> None:
    assert verdicts(check_dest_disk_space(make_facts(dest_exists=False))) == [Verdict.OK]
    unknown = make_facts(dest_exists=False, dest_free=None)
    assert verdicts(check_dest_disk_space(unknown)) == [Verdict.WARNING]
    assert check_dest_disk_space(make_facts(dest_exists=True, dest_free=0)) == ()


def _preflight(storage: StorageFacts | None, *, visible: bool) -> PreflightFacts:
    host = HostFacts(
        uri="qemu:///x",
        hostname="a",
        host_uuid="1",
        libvirt_version=11003000,
        qemu_version=10000002,
    )
    dest = HostFacts(
        uri="qemu:///y",
        hostname="b",
        host_uuid="2",
        libvirt_version=11003000,
        qemu_version=10000002,
    )
    guest = GuestFacts(
        name="web01",
        state="running",
        job_active=False,
        memory_bytes=GIB,
        vcpus=1,
        disks=(DiskFacts(target="vda", source=PATH),),
    )
    return PreflightFacts(
        source=host,
        dest=dest,
        guest=guest,
        cpu=CpuFacts(CpuCompat.IDENTICAL),
        dest_caps=DomainCapsFacts(),
        disks={PATH: DiskView(PATH, visible=visible, how="agent")},
        storage=storage,
    )


def test_storage_check_passes_a_disk_that_is_copied_and_blocks_when_copying_is_off() -> None:
    copied = run_checks(_preflight(make_facts(dest_exists=False), visible=False))
    (storage,) = [r for r in copied if r.name == "storage"]
    assert storage.verdict is Verdict.OK
    assert "copied" in storage.message
    off = run_checks(_preflight(make_facts(dest_exists=False, copy=CopyMode.NEVER), visible=False))
    (storage,) = [r for r in off if r.name == "storage"]
    assert storage.verdict is Verdict.BLOCKER
    assert "--no-copy-storage" in storage.message


def test_without_storage_facts_the_new_checks_say_nothing() -> None:
    results = run_checks(_preflight(None, visible=True))
    assert not [r for r in results if r.name in {"disk-cache", "lock-manager", "dest-disk-space"}]
