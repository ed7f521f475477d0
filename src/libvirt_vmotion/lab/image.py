"""Build and cache the lab's test guest: a Debian cloud kernel and a tiny initramfs.

I/O: runs apt-cache, apt-get, dpkg-deb and gcc, and writes the image cache. The
pieces that decide things (parsing apt output, the recipe hash, the cpio
archive, the kernel command line) are pure functions, tested on their own.

The guest is direct-kernel-booted: ``vmlinuz`` from the ``linux-image-*-cloud-amd64``
package that ``linux-image-cloud-amd64`` currently depends on, and ``initrd.gz``
holding busybox-static (with applet symlinks), the ``init`` script, the static
``workload`` and the virtio network modules. Images live in
``IMAGE_CACHE_DIR/<recipe-hash>/`` and are rebuilt only when the recipe changes
(workload.c, init, :data:`RECIPE_VERSION` or the kernel package); a build goes into
a temporary directory that is renamed into place, so readers never see half an image.

Errors (all :class:`RuntimeError`)::

    GuestImageError              .hint: what to do
    ├── MissingToolError         gcc, busybox-static, apt or dpkg-deb absent
    ├── KernelPackageError       kernel package not resolvable / downloadable / unusable
    └── GuestBuildError          compiling the workload or assembling the initramfs failed
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import logging
import lzma
import re
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from libvirt_vmotion.lab.constants import IMAGE_CACHE_DIR

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

logger = logging.getLogger(__name__)

RECIPE_VERSION: Final = "guest-image-v1"
"""Bump when this module changes what goes into the image."""
KERNEL_METAPACKAGE: Final = "linux-image-cloud-amd64"
VIRTIO_NET_MODULES: Final = (
    "virtio_ring",
    "virtio",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "failover",
    "net_failover",
    "virtio_net",
    "virtio_blk",
)
"""Load order of the virtio network (and disk) modules (the package ships no modules.dep)."""
GUEST_SOURCE_DIR: Final = Path(__file__).parent / "guest"
BUSYBOX_PATH: Final = Path("/bin/busybox")
INSTALL_HINT: Final = "run scripts/install-system.sh (as root)"
WORKLOAD_MODES: Final = ("paced", "busy")

_ELF_MAGIC: Final = b"\x7fELF"
_PT_INTERP: Final = 3
_CPIO_TRAILER: Final = "TRAILER!!!"


class GuestImageError(RuntimeError):
    """Building the guest image failed; ``hint`` says what to do."""

    def __init__(self, message: str, *, hint: str) -> None:
        """Keep the message and the hint (both shown to the user)."""
        super().__init__(f"{message} (hint: {hint})")
        self.hint = hint


class MissingToolError(GuestImageError):
    """A host tool the build needs is not installed."""


class KernelPackageError(GuestImageError):
    """The guest kernel package could not be resolved, downloaded or used."""


class GuestBuildError(GuestImageError):
    """Compiling the workload or assembling the initramfs failed."""


@dataclass(frozen=True, slots=True)
class GuestImage:
    """A built guest image, ready for direct kernel boot."""

    kernel: Path
    initrd: Path
    recipe_hash: str


@dataclass(frozen=True, slots=True)
class CpioEntry:
    """One member of a newc cpio archive.

    ``mode`` holds the file type bits too (``stat.S_IFREG | 0o755``). ``data`` is the
    file content, or the link target for a symlink. ``rdev_major``/``rdev_minor``
    apply to device nodes.
    """

    name: str
    mode: int
    data: bytes = b""
    rdev_major: int = 0
    rdev_minor: int = 0


# ---- pure helpers -----------------------------------------------------------------


def kernel_cmdline(*, addr_cidr: str, wss_mib: int, rate_mib_s: int, mode: str) -> str:
    """Build the guest kernel command line that configures network and workload.

    Args:
        addr_cidr: guest address with prefix length, e.g. ``10.77.0.50/24``.
        wss_mib: working set size in MiB (>= 1).
        rate_mib_s: rewrite rate in MiB/s (>= 0; 0 in busy mode means unlimited).
        mode: ``paced`` or ``busy``.

    Returns:
        The command line, serial console first.

    Raises:
        ValueError: a value the guest would reject.

    """
    if "/" not in addr_cidr or " " in addr_cidr:
        msg = f"addr_cidr must look like 10.77.0.50/24, got {addr_cidr!r}"
        raise ValueError(msg)
    if wss_mib < 1:
        msg = f"wss_mib must be >= 1, got {wss_mib}"
        raise ValueError(msg)
    if rate_mib_s < 0:
        msg = f"rate_mib_s must be >= 0, got {rate_mib_s}"
        raise ValueError(msg)
    if mode not in WORKLOAD_MODES:
        msg = f"mode must be one of {', '.join(WORKLOAD_MODES)}, got {mode!r}"
        raise ValueError(msg)
    # panic=5: a guest kernel panic reboots (new boot_id) instead of hanging silently.
    return (
        f"console=ttyS0 panic=5 vmotion.ip={addr_cidr} vmotion.wss_mib={wss_mib} "
        f"vmotion.rate_mib_s={rate_mib_s} vmotion.mode={mode}"
    )


def parse_depends(apt_cache_output: str, *, prefix: str = "linux-image-") -> str:
    """Return the kernel package a metapackage depends on, from ``apt-cache depends``.

    Raises:
        ValueError: no ``Depends: linux-image-…`` line.

    """
    for line in apt_cache_output.splitlines():
        match = re.match(r"\s*\|?Depends:\s+(\S+)", line)
        if match and match.group(1).startswith(prefix):
            return match.group(1)
    msg = f"no 'Depends: {prefix}...' line in apt-cache output"
    raise ValueError(msg)


def parse_print_uris(apt_output: str) -> str:
    """Return the .deb file name from ``apt-get download --print-uris`` output.

    Raises:
        ValueError: no line of the form ``'URI' FILENAME SIZE HASH``.

    """
    for line in apt_output.splitlines():
        match = re.match(r"'[^']+'\s+(\S+\.deb)\s", line)
        if match:
            return match.group(1)
    msg = "no package URI line in apt-get --print-uris output"
    raise ValueError(msg)


def recipe_hash(*, workload_c: bytes, init: bytes, kernel_deb: str) -> str:
    """Hash everything that decides the image's content (16 hex digits)."""
    digest = hashlib.sha256()
    for part in (RECIPE_VERSION.encode(), workload_c, init, kernel_deb.encode()):
        digest.update(struct.pack("<Q", len(part)))
        digest.update(part)
    return digest.hexdigest()[:16]


def is_static_elf(data: bytes) -> bool:
    """Tell whether ``data`` is a 64-bit little-endian ELF without a program interpreter.

    A dynamically linked executable has a ``PT_INTERP`` program header (the loader);
    the initramfs has no libc, so everything in it must be static.
    """
    if len(data) < 64 or data[:4] != _ELF_MAGIC or data[4] != 2 or data[5] != 1:
        return False
    (phoff,) = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    for index in range(phnum):
        offset = phoff + index * phentsize
        if offset + 4 > len(data):
            return False
        (p_type,) = struct.unpack_from("<I", data, offset)
        if p_type == _PT_INTERP:
            return False
    return True


def build_cpio_newc(entries: Iterable[CpioEntry]) -> bytes:
    """Serialize ``entries`` as a cpio archive in the ``newc`` format the kernel reads.

    Timestamps and owners are zero so the archive is reproducible.
    """
    out = bytearray()
    entries = [*entries, CpioEntry(name=_CPIO_TRAILER, mode=0)]
    for ino, entry in enumerate(entries, start=1):
        name = entry.name.encode() + b"\0"
        fields = (
            ino if entry.name != _CPIO_TRAILER else 0,
            entry.mode,
            0,  # uid
            0,  # gid
            2 if stat.S_ISDIR(entry.mode) else 1,  # nlink
            0,  # mtime
            len(entry.data),
            0,  # devmajor
            0,  # devminor
            entry.rdev_major,
            entry.rdev_minor,
            len(name),
            0,  # check
        )
        out += b"070701" + "".join(f"{field:08x}" for field in fields).encode()
        out += name
        out += b"\0" * (-len(out) % 4)
        out += entry.data
        out += b"\0" * (-len(out) % 4)
    return bytes(out)


def initramfs_entries(
    *,
    busybox: bytes,
    applets: Sequence[str],
    init: bytes,
    workload: bytes,
    modules: dict[str, bytes],
) -> list[CpioEntry]:
    """List the initramfs members: directories, busybox and its links, init, workload, modules.

    Args:
        busybox: the static busybox binary.
        applets: applet paths as printed by ``busybox --list-full`` (``usr/bin/env``).
        init: the init script.
        workload: the static workload binary.
        modules: module name (``virtio_net``) -> uncompressed ``.ko`` content.

    """
    dirs = {"bin", "sbin", "usr", "usr/bin", "usr/sbin", "proc", "sys", "dev", "lib"}
    dirs |= {"lib/modules", "tmp", "run", "etc", "root"}
    for applet in applets:
        parent = Path(applet).parent
        while str(parent) not in {".", ""}:
            dirs.add(str(parent))
            parent = parent.parent
    entries = [CpioEntry(name=d, mode=stat.S_IFDIR | 0o755) for d in sorted(dirs)]
    entries.append(CpioEntry(name="bin/busybox", mode=stat.S_IFREG | 0o755, data=busybox))
    entries.extend(
        CpioEntry(name=applet, mode=stat.S_IFLNK | 0o777, data=b"/bin/busybox")
        for applet in sorted(set(applets))
        if applet.strip("/") not in {"bin/busybox", "init"}
    )
    entries.append(CpioEntry(name="init", mode=stat.S_IFREG | 0o755, data=init))
    entries.append(CpioEntry(name="bin/workload", mode=stat.S_IFREG | 0o755, data=workload))
    entries.extend(
        CpioEntry(name=f"lib/modules/{name}.ko", mode=stat.S_IFREG | 0o644, data=content)
        for name, content in modules.items()
    )
    # The kernel opens /dev/console before running init, before devtmpfs is mounted.
    entries.append(
        CpioEntry(name="dev/console", mode=stat.S_IFCHR | 0o600, rdev_major=5, rdev_minor=1)
    )
    return entries


# ---- I/O --------------------------------------------------------------------------


def _run(argv: Sequence[str], *, cwd: Path | None = None) -> str:
    """Run a command, returning stdout; raise CalledProcessError with stderr kept."""
    logger.debug("running %s", " ".join(argv))
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise subprocess.CalledProcessError(done.returncode, argv, done.stdout, done.stderr)
    return done.stdout


def _require_tools() -> None:
    for tool in ("gcc", "apt-cache", "apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            msg = f"{tool} is not installed; building the guest image needs it"
            raise MissingToolError(msg, hint=f"install gcc and libc6-dev: {INSTALL_HINT}")
    if not BUSYBOX_PATH.is_file() or not is_static_elf(BUSYBOX_PATH.read_bytes()):
        msg = f"{BUSYBOX_PATH} is missing or not statically linked; the guest has no libc"
        raise MissingToolError(msg, hint=f"install busybox-static: {INSTALL_HINT}")


@functools.cache
def resolve_kernel_package() -> tuple[str, str]:
    """Return (package name, .deb file name) of the current cloud kernel.

    Remembered for the life of the process: each apt call takes ~2 s on machines
    whose apt keeps no package cache (Docker-style ``Dir::Cache::pkgcache ""``).

    Raises:
        KernelPackageError: apt does not know the metapackage or its kernel.

    """
    hint = "run apt-get update, and check that the Debian main archive is in sources.list"
    try:
        package = parse_depends(_run(["apt-cache", "depends", KERNEL_METAPACKAGE]))
        deb = parse_print_uris(_run(["apt-get", "download", "--print-uris", package]))
    except (subprocess.CalledProcessError, ValueError) as exc:
        detail = exc.stderr.strip() if isinstance(exc, subprocess.CalledProcessError) else exc
        msg = f"cannot resolve the kernel package behind {KERNEL_METAPACKAGE}: {detail}"
        raise KernelPackageError(msg, hint=hint) from exc
    return package, deb


def _read_module(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(data)
    if path.name.endswith(".ko.gz"):
        return gzip.decompress(data)
    if path.name.endswith(".ko.zst"):
        return _run_bytes(["zstd", "-dc", str(path)])
    return data


def _run_bytes(argv: Sequence[str]) -> bytes:
    try:
        return subprocess.run(argv, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        msg = f"{' '.join(argv)} failed: {exc}"
        raise KernelPackageError(msg, hint="install zstd (apt-get install zstd)") from exc


def _extract_kernel(package: str, work: Path) -> tuple[Path, dict[str, bytes]]:
    """Download and unpack ``package``; return vmlinuz and the virtio net modules found."""
    download = work / "download"
    download.mkdir()
    download.chmod(0o755)  # lets apt's _apt user write there (no "unsandboxed" warning)
    try:
        _run(["apt-get", "download", package], cwd=download)
        debs = sorted(download.glob("*.deb"))
        if not debs:
            msg = "apt-get download produced no .deb"
            raise KernelPackageError(msg, hint="check apt's network access")
        root = work / "kernel"
        _run(["dpkg-deb", "-x", str(debs[0]), str(root)])
    except subprocess.CalledProcessError as exc:
        msg = f"cannot download or unpack {package}: {exc.stderr.strip()}"
        raise KernelPackageError(msg, hint="run apt-get update and retry") from exc
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    if not kernels:
        msg = f"{package} contains no boot/vmlinuz-*"
        raise KernelPackageError(msg, hint=f"check what {KERNEL_METAPACKAGE} depends on")
    found: dict[str, Path] = {}
    for path in (root / "lib" / "modules").glob("*/kernel/**/*.ko*"):
        name = path.name.split(".ko")[0]
        if name in VIRTIO_NET_MODULES:
            found[name] = path
    modules: dict[str, bytes] = {
        name: _read_module(found[name]) for name in VIRTIO_NET_MODULES if name in found
    }
    missing = [name for name in VIRTIO_NET_MODULES if name not in found]
    if missing:
        logger.info("modules not in %s (built in or absent): %s", package, ", ".join(missing))
    if "virtio_net" not in modules:
        config = "".join(p.read_text() for p in (root / "boot").glob("config-*"))
        if "CONFIG_VIRTIO_NET=y" not in config:
            msg = f"{package} has neither a virtio_net module nor a built-in virtio_net"
            raise KernelPackageError(msg, hint="use a kernel with virtio networking")
    return kernels[0], modules


def _compile_workload(source: Path, out: Path) -> bytes:
    argv = ["gcc", "-O2", "-static", "-s", "-Wall", "-Wextra", "-o", str(out), str(source)]
    try:
        _run(argv)
    except subprocess.CalledProcessError as exc:
        msg = f"compiling {source.name} failed: {exc.stderr.strip()[-2000:]}"
        hint = f"a static build needs libc6-dev (libc.a): {INSTALL_HINT}"
        raise GuestBuildError(msg, hint=hint) from exc
    return out.read_bytes()


def _busybox_applets() -> list[str]:
    try:
        listing = _run([str(BUSYBOX_PATH), "--list-full"])
    except (OSError, subprocess.CalledProcessError) as exc:
        msg = f"{BUSYBOX_PATH} --list-full failed: {exc}"
        raise MissingToolError(msg, hint=f"install busybox-static: {INSTALL_HINT}") from exc
    return [line.strip().lstrip("/") for line in listing.splitlines() if line.strip()]


def _build_into(staging: Path, *, package: str, workload_c: Path, init: bytes) -> None:
    work = staging / "work"
    work.mkdir()
    vmlinuz, modules = _extract_kernel(package, work)
    workload = _compile_workload(workload_c, work / "workload")
    entries = initramfs_entries(
        busybox=BUSYBOX_PATH.read_bytes(),
        applets=_busybox_applets(),
        init=init,
        workload=workload,
        modules=modules,
    )
    archive = gzip.compress(build_cpio_newc(entries), compresslevel=9, mtime=0)
    (staging / "initrd.gz").write_bytes(archive)
    shutil.copyfile(vmlinuz, staging / "vmlinuz")
    shutil.rmtree(work)


def ensure_guest_image(
    cache_dir: Path = IMAGE_CACHE_DIR, *, log: Callable[[str], None] | None = None
) -> GuestImage:
    """Return the guest image for the current recipe, building it if it is not cached.

    Args:
        cache_dir: where images live, one subdirectory per recipe hash.
        log: optional progress callback (one line per step), besides logging.

    Returns:
        Paths of ``vmlinuz`` and ``initrd.gz`` and the recipe hash.

    Raises:
        MissingToolError: gcc, busybox-static, apt or dpkg-deb is missing.
        KernelPackageError: the kernel package cannot be resolved or used.
        GuestBuildError: the workload does not compile.

    """

    def say(message: str) -> None:
        logger.info("%s", message)
        if log is not None:
            log(message)

    _require_tools()
    workload_c = GUEST_SOURCE_DIR / "workload.c"
    init = (GUEST_SOURCE_DIR / "init").read_bytes()
    package, deb = resolve_kernel_package()
    digest = recipe_hash(workload_c=workload_c.read_bytes(), init=init, kernel_deb=deb)
    final = cache_dir / digest
    image = GuestImage(kernel=final / "vmlinuz", initrd=final / "initrd.gz", recipe_hash=digest)
    if image.kernel.is_file() and image.initrd.is_file():
        say(f"guest image {digest} is cached in {final}")
        return image
    say(f"building guest image {digest} ({deb}) in {final}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".build-{digest}-", dir=cache_dir))
    try:
        _build_into(staging, package=package, workload_c=workload_c, init=init)
        staging.chmod(0o755)
        try:
            staging.rename(final)
        except OSError:
            if not (image.kernel.is_file() and image.initrd.is_file()):
                raise
            say(f"guest image {digest} was built concurrently; using that one")
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    say(
        f"built guest image {digest}: vmlinuz {image.kernel.stat().st_size} B, "
        f"initrd.gz {image.initrd.stat().st_size} B"
    )
    return image


def main() -> int:
    """Build (or find) the guest image and print its paths."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        image = ensure_guest_image()
    except GuestImageError as exc:
        print(f"error: {exc}", file=sys.stderr)  # noqa: T201 - CLI entry point
        return 1
    print(f"kernel={image.kernel}")  # noqa: T201 - CLI entry point
    print(f"initrd={image.initrd}")  # noqa: T201 - CLI entry point
    print(f"recipe_hash={image.recipe_hash}")  # noqa: T201 - CLI entry point
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
