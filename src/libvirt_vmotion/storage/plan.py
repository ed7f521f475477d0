"""Disk handover: which disks move how.

Pure: no I/O, no clock, no logging. The facts come from ``storage.host`` (libvirt
on the source, our agent on both hosts); the pre-flight checks over them
(``storage``, ``disk-cache``, ``lock-manager``, ``dest-disk-space``) are in
``preflight.disks``.

Two ways a disk goes with its guest:

- **shared**: the destination sees the same file at the same path (NFS,
  GlusterFS, a cluster file system, a SAN LUN). Nothing is copied; at
  switchover the source's QEMU flushes and closes the image and the
  destination's opens it. Safe only when no host page cache can hold data the
  other host does not see: cache ``none`` or ``directsync`` (O_DIRECT on the
  host), unless the file system itself is coherent across hosts (a cluster FS).
  The lock manager (virtlockd or sanlock) makes sure only one host writes.
- **copied** (``--copy-storage``, or automatic when a disk is not on the
  destination): libvirt mirrors the disk to the destination over NBD while the
  memory is migrated (VIR_MIGRATE_NON_SHARED_DISK). With synchronous writes the
  guest's disk writes complete only once mirrored, so a guest that writes faster
  than the link cannot keep the mirror from converging. The destination image
  must exist first (we pre-create it with the source's format and size), and
  the destination needs the space.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

SAFE_SHARED_CACHE: Final = frozenset({"none", "directsync"})
"""Cache modes that bypass the host page cache (O_DIRECT): safe on any shared storage."""
CLUSTER_FS_TYPES: Final = frozenset({"gfs2", "ocfs2"})
"""Cluster file systems whose page caches stay coherent across hosts (a lock manager
invalidates other nodes' caches). Network file systems (NFS, GlusterFS's FUSE
client, CephFS) are not on this list: a host may keep stale cached pages of a
file another host wrote, e.g. from before the guest last left it."""
COPY_SPACE_MARGIN: Final = 1.05
"""Destination space needed for a copy: the source's allocation plus 5%."""
DEFAULT_LOCK_MANAGER: Final = "nop"
"""What libvirt uses when ``lock_manager`` is not set in qemu.conf."""


class CopyMode(StrEnum):
    """What the user asked for with ``--copy-storage`` / ``--no-copy-storage``."""

    AUTO = "auto"
    """Copy the disks the destination does not see (the default)."""
    ALWAYS = "always"
    """Copy every writable file/block disk."""
    NEVER = "never"
    """Copy nothing (a disk missing on the destination then blocks)."""


@dataclass(frozen=True, slots=True)
class DiskSpec:
    """One guest disk as the storage checks need it (from the domain XML + libvirt)."""

    target: str
    source: str
    kind: str = "file"
    format: str = "raw"
    cache: str = "default"
    """libvirt cache mode; ``default`` means QEMU's default (writeback)."""
    readonly: bool = False
    shareable: bool = False
    capacity_bytes: int = 0
    """Virtual size (what the guest sees)."""
    allocation_bytes: int = 0
    """Bytes the image really uses on the source (what a copy writes)."""

    @property
    def is_local_kind(self) -> bool:
        """A file or block device: storage a host reaches through its own paths."""
        return self.kind in {"file", "block"} and bool(self.source)


@dataclass(frozen=True, slots=True)
class PathInfo:
    """What one host knows about a disk path (from our agent there)."""

    exists: bool
    fs_type: str = ""
    """File system of the path (or of its nearest existing parent)."""
    free_bytes: int | None = None
    """Free space where the file is or would be created."""
    shared: bool | None = None
    """Whether this host sees a marker the source placed next to the disk (the same
    storage, not just the same path); None when not probed."""

    @property
    def is_same_storage(self) -> bool:
        """The destination has this path *on the source's storage*, shown by the marker.

        A marker that could not be placed (or read) proves nothing: unknown is not yes.
        """
        return self.exists and self.shared is True


@dataclass(frozen=True, slots=True)
class StorageFacts:
    """Everything the storage checks look at.

    Attributes:
        disks: the guest's disks.
        copy: the copy mode the user asked for.
        source_paths: path -> what the source host says (fs type).
        dest_paths: path -> what the destination says (exists, fs, free space).
        source_lock_manager / dest_lock_manager: ``lock_manager`` from each host's
            qemu.conf (``nop`` when unset), empty when unknown.
        dest_known: the destination agent answered (paths and space are known).

    """

    disks: tuple[DiskSpec, ...] = ()
    copy: CopyMode = CopyMode.AUTO
    source_paths: Mapping[str, PathInfo] = field(default_factory=dict)
    dest_paths: Mapping[str, PathInfo] = field(default_factory=dict)
    source_lock_manager: str = ""
    dest_lock_manager: str = ""
    dest_known: bool = False


# --------------------------------------------------------------------------- parsing


def disk_specs(xml: str) -> tuple[DiskSpec, ...]:
    """Parse the ``<disk device='disk'>`` elements of a domain XML (sizes left at 0)."""
    root = ET.fromstring(xml)  # noqa: S314  our own libvirtd's XML
    found = []
    for disk in root.findall("devices/disk"):
        if disk.get("device", "disk") != "disk":
            continue
        source = disk.find("source")
        target = disk.find("target")
        driver = disk.find("driver")
        path = ""
        if source is not None:
            path = source.get("file") or source.get("dev") or source.get("name") or ""
        found.append(
            DiskSpec(
                target=target.get("dev", "") if target is not None else "",
                source=path,
                kind=disk.get("type", "file"),
                format=(driver.get("type") if driver is not None else None) or "raw",
                cache=(driver.get("cache") if driver is not None else None) or "default",
                readonly=disk.find("readonly") is not None,
                shareable=disk.find("shareable") is not None,
            )
        )
    return tuple(found)


def parse_lock_manager(qemu_conf: str) -> str:
    """The ``lock_manager`` of a qemu.conf text (``nop`` when not set)."""
    value = DEFAULT_LOCK_MANAGER
    for raw in qemu_conf.splitlines():
        line = raw.split("#", 1)[0].strip()
        key, sep, rest = line.partition("=")
        if sep and key.strip() == "lock_manager":
            value = rest.strip().strip("\"'") or DEFAULT_LOCK_MANAGER
    return value


# --------------------------------------------------------------------------- planning


def _movable(facts: StorageFacts) -> list[DiskSpec]:
    return [d for d in facts.disks if d.is_local_kind and not d.readonly and not d.shareable]


def copied_disks(facts: StorageFacts) -> tuple[DiskSpec, ...]:
    """The disks a migration copies under ``facts.copy``.

    AUTO copies the writable file/block disks the destination does not have at
    the same path; a same-path file there is never written over automatically
    (``same_path_conflict`` blocks when it is not shown to be the source's
    storage). ALWAYS copies every writable file/block disk; NEVER none.
    Read-only and shareable disks are never copied (they must be shared).
    """
    if facts.copy is CopyMode.NEVER:
        return ()
    movable = _movable(facts)
    if facts.copy is CopyMode.ALWAYS:
        return tuple(movable)
    return tuple(
        d
        for d in movable
        if (info := facts.dest_paths.get(d.source)) is not None and not info.exists
    )


def same_path_conflict(facts: StorageFacts, source: str) -> str:
    """Why the automatic copy mode cannot decide for the disk at ``source`` ("" if it can).

    The destination has a file at the same path, but the source's share marker
    did not show it to be the same storage: either it is a different file (a
    stopped guest's disk, a stale copy), which a copy would overwrite, or no
    one could tell (the marker could not be placed), and using it as shared
    could run the guest on another disk.
    """
    if facts.copy is not CopyMode.AUTO:
        return ""
    info = facts.dest_paths.get(source)
    if info is None or not info.exists or info.shared is True:
        return ""
    if not any(d.source == source for d in _movable(facts)):
        return ""
    if info.shared is False:
        return "a different file (it does not see the source's share marker)"
    return "a file nobody could show to be the same storage (no share marker could be placed)"


def needs_precreate(disk: DiskSpec, dest: PathInfo | None) -> bool:
    """True if the destination image must be created before a copy (libvirt needs a target)."""
    return disk.kind == "file" and (dest is None or not dest.exists)


def copy_bytes_needed(disk: DiskSpec) -> int:
    """Destination space a copy of ``disk`` needs, plus margin.

    A raw target ends up fully allocated (the NBD mirror writes the holes as
    zeroes: seen in the lab, a 256 MiB sparse image using 17 MiB arrived using
    257 MiB), so raw needs its capacity; qcow2 only what it allocates.
    """
    size = disk.capacity_bytes if disk.format == "raw" else disk.allocation_bytes
    return int((size or disk.capacity_bytes) * COPY_SPACE_MARGIN)


# --------------------------------------------------------------------------- checks
