"""Disk handover, at the edge: agent operations on a host, and gathering the facts.

I/O. Host side (run by the agent, registered in ``adapters.ops.REGISTRY``):

- ``storage-facts``  {paths: [...]} -> per path: exists, file system type, free
                     bytes where it is (or would be created); the host's
                     ``lock_manager`` from qemu.conf
- ``disk-precreate`` {disks: [{path, format, capacity_bytes}]} -> {created: [...]}:
                     an empty image of the source's format and size, only where
                     none exists (libvirt's NBD copy needs a target to write to),
                     only in an allowed image directory (``allowed_image_dirs``),
                     created exclusively and never through a symlink
- ``disk-remove``    {paths: [...]} -> {removed: [...]}: undo a pre-create after a
                     failed copy (only called with paths ``disk-precreate`` made)
- ``share-probe``    {paths: [...], token, remove: bool} -> {placed: {path: probe}}:
                     put (or take away) an empty marker file next to each disk;
                     ``storage-facts`` with ``probes`` then tells whether the
                     other host sees the marker, i.e. really shares the directory
                     (a same-path local file, e.g. a stale earlier copy, is not
                     shared storage and must not be treated as such)

Client side: ``gather`` builds ``storage.StorageFacts`` from libvirt (the
domain XML, block sizes) and both hosts' agents. The decisions are in ``storage``.
"""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import tomllib
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

from libvirt_vmotion.adapters import ops
from libvirt_vmotion.errors import UsageError, VmotionError
from libvirt_vmotion.storage.plan import (
    CopyMode,
    DiskSpec,
    PathInfo,
    StorageFacts,
    disk_specs,
    parse_lock_manager,
)

if TYPE_CHECKING:
    from libvirt_vmotion.adapters.agent import RemoteHost
    from libvirt_vmotion.adapters.virt import Guest

log = logging.getLogger(__name__)

QEMU_CONF: Final = Path("/etc/libvirt/qemu.conf")
_FORMATS: Final = frozenset({"raw", "qcow2"})
QEMU_IMG_TIMEOUT_S: Final = 60.0
"""Creating an empty image takes milliseconds; storage that hangs must not hang the agent."""
STORAGE_CONF: Final = Path("/etc/libvirt-vmotion/storage.toml")
"""``image_dirs = ["/srv/images", ...]``: where ``disk-precreate`` may create images."""
DEFAULT_IMAGE_DIR: Final = "/var/lib/libvirt/images"
POOL_XML_DIRS: Final = (Path("/etc/libvirt/storage"), Path("/run/libvirt/storage"))
"""libvirt's persistent and running storage pool definitions on this host."""
_FILE_POOL_TYPES: Final = frozenset({"dir", "fs", "netfs"})


def _strings(args: Mapping[str, object], key: str) -> list[str]:
    value = args.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        msg = f"agent argument {key!r} must be a list of strings"
        raise UsageError(msg)
    return [str(v) for v in value]


def _fs_type(path: Path, mountinfo: str) -> str:
    """File system type of the mount holding ``path`` (longest mount-point prefix)."""
    best, fs = "", ""
    target = str(path)
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5:
            continue
        mount = fields[4]
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, fs = mount, (right.split() or [""])[0]
    return fs


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def probe_path(disk: str, token: str) -> Path:
    """The marker file for ``disk`` (same directory, so it lives on the same storage)."""
    return Path(disk).parent / f".vmotion-share-probe-{token}"


def op_share_probe(args: Mapping[str, object]) -> dict[str, object]:
    """Place (or remove) share markers next to disks; report where one could be placed."""
    token = str(args.get("token", ""))
    if not token.isalnum():
        msg = "agent share-probe needs an alphanumeric 'token'"
        raise UsageError(msg)
    placed: dict[str, str] = {}
    for raw in _strings(args, "paths"):
        marker = probe_path(raw, token)
        try:
            if args.get("remove"):
                marker.unlink(missing_ok=True)
            else:
                marker.touch(exist_ok=True)
                placed[raw] = str(marker)
        except OSError:
            continue  # read-only or not a directory we may write: no probe
    return {"placed": placed}


def op_storage_facts(args: Mapping[str, object]) -> dict[str, object]:
    """What this host knows about disk paths, and its lock manager."""
    mountinfo = Path("/proc/self/mountinfo").read_text()
    token = str(args.get("token", ""))
    probed = set(_strings(args, "probed"))
    paths: dict[str, dict[str, object]] = {}
    for raw in _strings(args, "paths"):
        path = Path(raw)
        where = _existing_ancestor(path if path.exists() else path.parent)
        st = os.statvfs(where)
        paths[raw] = {
            "exists": path.exists(),
            "fs_type": _fs_type(where, mountinfo),
            "free_bytes": st.f_bavail * st.f_frsize,
            "shared": probe_path(raw, token).exists() if raw in probed and token else None,
        }
    try:
        lock_manager = parse_lock_manager(QEMU_CONF.read_text())
    except OSError:
        lock_manager = ""
    return {"paths": paths, "lock_manager": lock_manager}


def pool_dirs(pool_xmls: Iterable[str]) -> tuple[str, ...]:
    """Target directories of file-backed storage pools (``dir``, ``fs``, ``netfs``)."""
    found: list[str] = []
    for text in pool_xmls:
        try:
            root = ET.fromstring(text)  # noqa: S314  libvirt's own pool XML, root-owned
        except ET.ParseError:
            continue
        target = root.findtext("target/path", default="").strip()
        if root.get("type") in _FILE_POOL_TYPES and target.startswith("/"):
            found.append(target)
    return tuple(dict.fromkeys(found))


def allowed_image_dirs(
    conf: Path = STORAGE_CONF, pool_xml_dirs: Sequence[Path] = POOL_XML_DIRS
) -> tuple[str, ...]:
    """Where this host lets ``disk-precreate`` create images.

    ``image_dirs`` in ``conf`` when set; else ``/var/lib/libvirt/images`` and the
    directories of this host's file-backed libvirt storage pools.

    Raises:
        UsageError: ``conf`` is not valid TOML or ``image_dirs`` is not a list of
            absolute paths.

    """
    try:
        text = conf.read_text()
    except FileNotFoundError:
        text = ""
    if text:
        try:
            dirs = tomllib.loads(text).get("image_dirs")
        except tomllib.TOMLDecodeError as exc:
            msg = f"{conf}: {exc}"
            raise UsageError(msg, hint='Write image_dirs = ["/srv/images"].') from exc
        if dirs is not None:
            if not isinstance(dirs, list) or not all(
                isinstance(d, str) and d.startswith("/") for d in dirs
            ):
                msg = f"{conf}: image_dirs={dirs!r} must be a list of absolute paths"
                raise UsageError(msg, hint='Write image_dirs = ["/srv/images"].')
            return tuple(dirs)
    xmls = []
    for folder in pool_xml_dirs:
        for path in sorted(folder.glob("*.xml")) if folder.is_dir() else ():
            try:
                xmls.append(path.read_text())
            except OSError:
                continue
    return tuple(dict.fromkeys((DEFAULT_IMAGE_DIR, *pool_dirs(xmls))))


def image_path_problem(path: str, allowed: Sequence[str]) -> str:
    """Why an image may not be created at ``path`` ("" if it may).

    Its directory must exist and, with any symlinks in it resolved, lie in (or
    under) one of the ``allowed`` directories (resolved the same way). The file
    itself is never reached through a symlink (``_create_image``).
    """
    if not path.startswith("/") or os.path.normpath(path) != path:
        return "not an absolute, normalized path"
    parent = Path(path).parent
    if not parent.is_dir():
        return f"its directory {parent} does not exist"
    real = parent.resolve()
    for root in allowed:
        if real.is_relative_to(Path(root).resolve()):
            return ""
    return f"{real} is not in an allowed image directory ({', '.join(allowed)})"


def _create_image(path: str, fmt: str, size: int) -> bool:
    """Create an empty image at ``path`` unless a regular file is there; True if created.

    Raises:
        VmotionError: something that is not a regular file is there (a symlink,
            dangling or not), or ``qemu-img`` failed.

    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        st = os.lstat(path)
        if stat.S_ISREG(st.st_mode):
            return False  # not ours: the copy writes into it, nobody removes it
        msg = f"refusing to create {path}: something that is not a regular file is there"
        raise VmotionError(msg, hint="Remove it (a symlink is never followed).") from None
    os.close(fd)
    try:
        proc = subprocess.run(
            ["qemu-img", "create", "-q", "-f", fmt, "--", path, str(size)],
            capture_output=True,
            text=True,
            check=False,
            timeout=QEMU_IMG_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as exc:
        Path(path).unlink(missing_ok=True)
        msg = f"qemu-img did not create {path} within {QEMU_IMG_TIMEOUT_S:g} s"
        raise VmotionError(msg, hint="Check the storage there (a hung mount?).") from exc
    if proc.returncode != 0:
        Path(path).unlink(missing_ok=True)
        msg = f"could not create {path}: {proc.stderr.strip()}"
        raise VmotionError(msg, hint="Check free space and permissions there.")
    return True


def precreate(disks: object, *, allowed: Sequence[str]) -> list[str]:
    """Create the empty target images ``disks`` lists, in ``allowed`` directories only.

    Returns:
        The paths created (a regular file already there is left alone, not listed).

    Raises:
        UsageError: a malformed item, or a path outside the allowed directories.
        VmotionError: an image could not be created.

    """
    if not isinstance(disks, list):
        msg = "agent argument 'disks' must be a list"
        raise UsageError(msg)
    created: list[str] = []
    for disk in disks:
        if not isinstance(disk, dict):
            continue
        path, fmt, size = disk.get("path"), disk.get("format"), disk.get("capacity_bytes")
        if not isinstance(path, str) or fmt not in _FORMATS or not isinstance(size, int):
            msg = f"bad disk to pre-create: {disk!r}"
            raise UsageError(msg, hint="path, format (raw|qcow2) and capacity_bytes")
        problem = image_path_problem(path, allowed)
        if problem:
            msg = f"refusing to create the copy's image {path} on {os.uname().nodename}: {problem}"
            hint = (
                f"Create images only in a storage pool's directory, or list the directory "
                f"in image_dirs in {STORAGE_CONF} on that host."
            )
            raise UsageError(msg, hint=hint)
        if _create_image(path, str(fmt), size):
            created.append(path)
    return created


def op_disk_precreate(args: Mapping[str, object]) -> dict[str, object]:
    """Create empty target images for a copy where none exist (allowed directories only)."""
    return {"created": precreate(args.get("disks", []), allowed=allowed_image_dirs())}


def op_disk_remove(args: Mapping[str, object]) -> dict[str, object]:
    """Remove images a failed copy left behind (regular files only, never through a symlink)."""
    removed = []
    for raw in _strings(args, "paths"):
        path = Path(raw)
        try:
            regular = stat.S_ISREG(path.lstat().st_mode)
        except FileNotFoundError:
            continue
        if regular:
            path.unlink()
            removed.append(raw)
    return {"removed": removed}


# --------------------------------------------------------------------------- client side


def _path_infos(reply: ops.StorageFactsReply) -> dict[str, PathInfo]:
    return {
        path: PathInfo(
            exists=info.exists, fs_type=info.fs_type, free_bytes=info.free_bytes, shared=info.shared
        )
        for path, info in reply.paths.items()
    }


_Probe = tuple[str, tuple[str, ...]]
"""A share probe placed on the source: its token and the paths it was placed next to."""


def _ask(
    agent: RemoteHost | None, paths: list[str], probe: _Probe | None = None
) -> tuple[dict[str, PathInfo], str, bool]:
    if agent is None:
        return {}, "", False
    token, probed = probe or ("", ())
    request = ops.StorageFactsRequest(paths=tuple(paths), token=token, probed=probed)
    try:
        reply = ops.STORAGE_FACTS.call(agent, request)
    except VmotionError as exc:
        log.debug("storage facts from %s: %s", agent.label, exc.message)
        return {}, "", False
    return _path_infos(reply), reply.lock_manager, True


_NO: Final = PathInfo(exists=False)


def _place_probes(agent: RemoteHost | None, paths: list[str]) -> _Probe | None:
    """Marker files next to the source's disks: (token, the paths probed), or None."""
    if agent is None or not paths:
        return None
    token = uuid.uuid4().hex
    try:
        placed = ops.SHARE_PROBE.call(
            agent, ops.ShareProbeRequest(token=token, paths=tuple(paths))
        ).placed
    except VmotionError as exc:
        log.debug("share probe on %s: %s", agent.label, exc.message)
        return None
    probed = tuple(placed)
    return (token, probed) if probed else None


def gather(
    guest: Guest,
    *,
    source_agent: RemoteHost | None,
    dest_agent: RemoteHost | None,
    copy: CopyMode,
) -> StorageFacts:
    """Build the storage facts of ``guest`` (sizes from libvirt, the rest from the agents)."""
    disks = []
    for disk in disk_specs(guest.xml()):
        if disk.is_local_kind:
            try:
                capacity, allocation = guest.block_size(disk.target)
            except VmotionError as exc:
                log.debug("block info of %s: %s", disk.target, exc.message)
                capacity, allocation = 0, 0
            disk = DiskSpec(  # noqa: PLW2901  the same disk with its sizes
                target=disk.target,
                source=disk.source,
                kind=disk.kind,
                format=disk.format,
                cache=disk.cache,
                readonly=disk.readonly,
                shareable=disk.shareable,
                capacity_bytes=capacity,
                allocation_bytes=allocation,
            )
        disks.append(disk)
    paths = [d.source for d in disks if d.is_local_kind]
    src_paths, src_lock, _ = _ask(source_agent, paths)
    probe = _place_probes(source_agent, [p for p in paths if src_paths.get(p, _NO).exists])
    try:
        dst_paths, dst_lock, dst_known = _ask(dest_agent, paths, probe)
    finally:
        if probe and source_agent is not None:
            token, probed = probe
            remove = ops.ShareProbeRequest(token=token, paths=probed, remove=True)
            try:
                ops.SHARE_PROBE.call(source_agent, remove)
            except VmotionError as exc:
                log.warning("could not remove share probes: %s", exc.message)
    return StorageFacts(
        disks=tuple(disks),
        copy=copy,
        source_paths=src_paths,
        dest_paths=dst_paths,
        source_lock_manager=src_lock,
        dest_lock_manager=dst_lock,
        dest_known=dst_known,
    )
