"""Destination image creation (agent ``disk-precreate``) in a temp dir: only where allowed.

The agent runs as root on the destination and used to create any path the
domain XML named (``mkdir -p``, ``qemu-img create`` following a dangling
symlink). These run the real agent functions and ``qemu-img`` on files here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from libvirt_vmotion.errors import UsageError, VmotionError
from libvirt_vmotion.storage.host import (
    DEFAULT_IMAGE_DIR,
    allowed_image_dirs,
    op_disk_precreate,
    op_disk_remove,
    pool_dirs,
    precreate,
)
from needs import needs_tool

needs_qemu_img = needs_tool("qemu-img", installed_by="scripts/install-system.sh, qemu-utils")


def disk(path: Path | str, fmt: str = "raw") -> dict[str, object]:
    return {"path": str(path), "format": fmt, "capacity_bytes": 1 << 20}


def test_an_image_outside_the_allowed_directories_is_refused(tmp_path: Path) -> None:
    # A path from the domain XML in no storage pool: before, created as root anyway.
    target = tmp_path / "cron.d" / "web01.raw"
    target.parent.mkdir()
    with pytest.raises(UsageError, match="not in an allowed image directory") as caught:
        op_disk_precreate({"disks": [disk(target)]})
    assert "image_dirs" in caught.value.hint
    assert not target.exists()


def test_a_missing_directory_is_not_made(tmp_path: Path) -> None:
    target = tmp_path / "images" / "sub" / "web01.raw"
    with pytest.raises(UsageError, match="does not exist"):
        precreate([disk(target)], allowed=[str(tmp_path)])
    assert not (tmp_path / "images").exists()


def test_a_path_escaping_with_dot_dot_is_refused(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    with pytest.raises(UsageError, match="normalized"):
        precreate([disk(f"{tmp_path}/images/../web01.raw")], allowed=[str(tmp_path / "images")])


def test_a_directory_symlinked_out_of_the_allowed_one_is_refused(tmp_path: Path) -> None:
    images, elsewhere = tmp_path / "images", tmp_path / "elsewhere"
    images.mkdir()
    elsewhere.mkdir()
    (images / "link").symlink_to(elsewhere)
    with pytest.raises(UsageError, match="not in an allowed image directory"):
        precreate([disk(images / "link" / "web01.raw")], allowed=[str(images)])
    assert list(elsewhere.iterdir()) == []


@needs_qemu_img
def test_a_dangling_symlink_is_not_followed(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    outside = tmp_path / "outside.raw"
    (images / "web01.raw").symlink_to(outside)
    with pytest.raises(VmotionError, match="not a regular file"):
        precreate([disk(images / "web01.raw")], allowed=[str(images)])
    assert not outside.exists()


@needs_qemu_img
def test_an_allowed_missing_image_is_created_and_an_existing_one_left_alone(
    tmp_path: Path,
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    existing = images / "db01.raw"
    existing.write_bytes(b"someone's disk")
    created = precreate(
        [disk(images / "web01.qcow2", "qcow2"), disk(existing)], allowed=[str(images)]
    )
    assert created == [str(images / "web01.qcow2")]
    assert (images / "web01.qcow2").read_bytes()[:4] == b"QFI\xfb"
    assert existing.read_bytes() == b"someone's disk"


def test_remove_never_follows_a_symlink(tmp_path: Path) -> None:
    kept = tmp_path / "kept.raw"
    kept.write_bytes(b"x")
    link = tmp_path / "link.raw"
    link.symlink_to(kept)
    assert op_disk_remove({"paths": [str(link)]}) == {"removed": []}
    assert kept.exists()


def test_allowed_dirs_default_to_the_image_dir_and_file_pools(tmp_path: Path) -> None:
    pools = tmp_path / "storage"
    pools.mkdir()
    (pools / "big.xml").write_text(
        "<pool type='dir'><name>big</name><target><path>/srv/big</path></target></pool>"
    )
    (pools / "iscsi.xml").write_text(
        "<pool type='iscsi'><name>san</name><target><path>/dev/disk/by-path</path></target></pool>"
    )
    (pools / "broken.xml").write_text("<pool")
    assert allowed_image_dirs(tmp_path / "none.toml", [pools]) == (DEFAULT_IMAGE_DIR, "/srv/big")
    conf = tmp_path / "storage.toml"
    conf.write_text('image_dirs = ["/srv/only"]\n')
    assert allowed_image_dirs(conf, [pools]) == ("/srv/only",)
    conf.write_text('image_dirs = "relative"\n')
    with pytest.raises(UsageError, match="list of absolute paths"):
        allowed_image_dirs(conf, [pools])


def test_pool_dirs_reads_only_file_backed_pools() -> None:
    netfs = "<pool type='netfs'><target><path>/mnt/nfs</path></target></pool>"
    logical = "<pool type='logical'><target><path>/dev/vg0</path></target></pool>"
    assert pool_dirs([netfs, logical]) == ("/mnt/nfs",)
