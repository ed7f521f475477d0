import stat
import struct

import pytest

from libvirt_vmotion.lab.image import (
    CpioEntry,
    build_cpio_newc,
    initramfs_entries,
    is_static_elf,
    kernel_cmdline,
    parse_depends,
    parse_print_uris,
    recipe_hash,
)


def test_kernel_cmdline() -> None:
    line = kernel_cmdline(addr_cidr="10.77.0.50/24", wss_mib=64, rate_mib_s=20, mode="paced")
    assert line.split()[0] == "console=ttyS0"
    for token in ("vmotion.ip=10.77.0.50/24", "vmotion.wss_mib=64", "vmotion.rate_mib_s=20"):
        assert token in line.split()
    assert "vmotion.mode=paced" in line.split()


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"addr_cidr": "10.77.0.50"}, "addr_cidr"),
        ({"wss_mib": 0}, "wss_mib"),
        ({"rate_mib_s": -1}, "rate_mib_s"),
        ({"mode": "lazy"}, "mode"),
    ],
)
def test_kernel_cmdline_rejects(kwargs: dict[str, object], fragment: str) -> None:
    args: dict[str, object] = {
        "addr_cidr": "10.77.0.50/24",
        "wss_mib": 64,
        "rate_mib_s": 20,
        "mode": "busy",
    }
    with pytest.raises(ValueError, match=fragment):
        kernel_cmdline(**{**args, **kwargs})  # type: ignore[arg-type]


def test_parse_depends() -> None:
    output = "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-56-cloud-amd64\n"
    assert parse_depends(output) == "linux-image-6.1.0-56-cloud-amd64"
    with pytest.raises(ValueError, match="Depends"):
        parse_depends("linux-image-cloud-amd64\n  Recommends: foo\n")


def test_parse_print_uris() -> None:
    output = (
        "'http://deb.debian.org/debian-security/pool/updates/main/l/linux-signed-amd64/"
        "linux-image-6.1.0-56-cloud-amd64_6.1.192-2_amd64.deb' "
        "linux-image-6.1.0-56-cloud-amd64_6.1.192-2_amd64.deb 26713492 SHA256:e7d0\n"
    )
    assert parse_print_uris(output) == "linux-image-6.1.0-56-cloud-amd64_6.1.192-2_amd64.deb"
    with pytest.raises(ValueError, match="URI"):
        parse_print_uris("")


def test_recipe_hash_covers_every_input() -> None:
    base = {"workload_c": b"int main;", "init": b"#!/bin/sh", "kernel_deb": "k_1.deb"}
    digest = recipe_hash(**base)  # type: ignore[arg-type]
    assert len(digest) == 16
    assert digest == recipe_hash(**base)  # type: ignore[arg-type]
    for key, value in (
        ("workload_c", b"int main;;"),
        ("init", b"#!/bin/ash"),
        ("kernel_deb", "k_2.deb"),
    ):
        assert recipe_hash(**{**base, key: value}) != digest  # type: ignore[arg-type]
    # Length-prefixed parts: moving bytes between inputs changes the hash.
    assert recipe_hash(workload_c=b"ab", init=b"c", kernel_deb="d") != recipe_hash(
        workload_c=b"a", init=b"bc", kernel_deb="d"
    )


def _elf(program_types: list[int]) -> bytes:
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", header, 0x20, 64)  # e_phoff
    struct.pack_into("<HH", header, 0x36, 56, len(program_types))  # e_phentsize, e_phnum
    table = b"".join(struct.pack("<I", t) + bytes(52) for t in program_types)
    return bytes(header) + table


def test_is_static_elf() -> None:
    assert is_static_elf(_elf([1, 1, 4]))
    assert not is_static_elf(_elf([6, 3, 1]))  # PT_INTERP present: dynamic
    assert not is_static_elf(b"#!/bin/sh\n" + bytes(64))
    assert not is_static_elf(_elf([1])[:40])


def _parse_newc(archive: bytes) -> list[tuple[str, int, bytes, int, int]]:
    members: list[tuple[str, int, bytes, int, int]] = []
    offset = 0
    while True:
        assert archive[offset : offset + 6] == b"070701"
        fields = [int(archive[offset + 6 + 8 * i : offset + 14 + 8 * i], 16) for i in range(13)]
        name_size, file_size = fields[11], fields[6]
        name_start = offset + 110
        name = archive[name_start : name_start + name_size - 1].decode()
        data_start = (name_start + name_size + 3) & ~3
        data = archive[data_start : data_start + file_size]
        offset = (data_start + file_size + 3) & ~3
        if name == "TRAILER!!!":
            assert offset == len(archive)
            return members
        members.append((name, fields[1], data, fields[9], fields[10]))


def test_cpio_newc_round_trip() -> None:
    entries = [
        CpioEntry(name="bin", mode=stat.S_IFDIR | 0o755),
        CpioEntry(name="bin/hello", mode=stat.S_IFREG | 0o755, data=b"hello\n"),
        CpioEntry(name="bin/sh", mode=stat.S_IFLNK | 0o777, data=b"/bin/busybox"),
        CpioEntry(name="dev/console", mode=stat.S_IFCHR | 0o600, rdev_major=5, rdev_minor=1),
    ]
    archive = build_cpio_newc(entries)
    assert len(archive) % 4 == 0
    assert _parse_newc(archive) == [
        ("bin", stat.S_IFDIR | 0o755, b"", 0, 0),
        ("bin/hello", stat.S_IFREG | 0o755, b"hello\n", 0, 0),
        ("bin/sh", stat.S_IFLNK | 0o777, b"/bin/busybox", 0, 0),
        ("dev/console", stat.S_IFCHR | 0o600, b"", 5, 1),
    ]
    assert build_cpio_newc(entries) == archive  # reproducible


def test_initramfs_entries() -> None:
    entries = initramfs_entries(
        busybox=b"BB",
        applets=["bin/sh", "sbin/insmod", "usr/bin/env", "bin/busybox", "usr/libexec/x/y"],
        init=b"#!/bin/busybox sh\n",
        workload=b"WL",
        modules={"virtio_ring": b"R", "virtio_net": b"N"},
    )
    by_name = {entry.name: entry for entry in entries}
    assert by_name["init"].mode == stat.S_IFREG | 0o755
    assert by_name["bin/workload"].data == b"WL"
    assert by_name["bin/busybox"].data == b"BB"
    assert by_name["bin/sh"].data == b"/bin/busybox"
    assert stat.S_ISLNK(by_name["usr/bin/env"].mode)
    assert stat.S_ISDIR(by_name["usr/libexec/x"].mode)
    assert by_name["lib/modules/virtio_net.ko"].data == b"N"
    console = by_name["dev/console"]
    assert (stat.S_ISCHR(console.mode), console.rdev_major, console.rdev_minor) == (True, 5, 1)
    names = [entry.name for entry in entries]
    assert len(names) == len(set(names))
    # Parents come before children, as the kernel's unpacker needs.
    for index, name in enumerate(names):
        parent = name.rpartition("/")[0]
        if parent:
            assert parent in names[:index], name
