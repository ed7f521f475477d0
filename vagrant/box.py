"""Build the Vagrant lab's box locally: Debian 12 with libvirt and QEMU 10, no download of a box.

Run as root on the machine that runs Vagrant (``./run vagrant box`` does)::

    python3 vagrant/box.py            # build if needed, add to Vagrant, print the box name
    python3 vagrant/box.py --hash     # print the recipe hash only

No box can be downloaded on the machines this lab has to run on, and the VMs
have no network beyond the lab's namespaces, so everything provisioning needs
is in the box: Debian 12 from ``mmdebstrap`` (systemd, openssh-server with
Vagrant's public insecure key for the first login, rsync for the synced
folder), and libvirt 11.3 + QEMU 10 from bookworm-backports with seabios 1.16.3
from trixie (LAB-NOTES: QEMU 7.2 loses dirty pages under TCG, seabios 1.16.2
hangs with QEMU 10). The disk is one ext4 file system without a partition
table or boot loader: vagrant-libvirt boots the box's own kernel and initrd
directly (``kernel``/``initrd``/``cmd_line`` in the box's Vagrantfile).

The result is cached under ``CACHE_DIR/<recipe hash>/`` like the lab's guest
image, and added to Vagrant as ``vmotion-bookworm-<hash>``: a changed recipe
is a new box name, so vagrant-libvirt never reuses a stale base volume.

Pure: the recipe, its hash and the text of every file the box gets. I/O:
``build`` (mmdebstrap, mkfs.ext4, qemu-img, tar) and ``add_to_vagrant``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

CACHE_DIR = Path("/var/cache/libvirt-vmotion/vagrant-box")
INSECURE_KEY = Path("/usr/share/rubygems-integration/all/gems/vagrant-2.3.4/keys/vagrant.pub")
MIRROR = "http://deb.debian.org/debian"
SECURITY_MIRROR = "http://deb.debian.org/debian-security"
BOX_PREFIX = "vmotion-bookworm-"
KERNEL_CMDLINE = "root=/dev/vda rw console=ttyS0,115200 net.ifnames=0 quiet"
HASH_LEN = 12
MARKER = "/etc/libvirt-vmotion-box"


class BoxError(Exception):
    """A box cannot be built; ``hint`` says what to do."""

    def __init__(self, message: str, *, hint: str) -> None:
        super().__init__(message)
        self.hint = hint


@dataclass(frozen=True, slots=True)
class BoxRecipe:
    """Everything that decides the box's content (and so its hash).

    Attributes:
        suite: the Debian release the box is.
        packages: from ``suite`` (and its updates and security suites).
        backports: installed with ``-t <suite>-backports`` (QEMU 10, libvirt 11.3).
        trixie: pinned to trixie by name (seabios 1.16.3), nothing else from there.
        insecure_key: Vagrant's public insecure key, for the first ``vagrant ssh``.
        disk_gib: virtual size of the box's disk.

    """

    suite: str
    packages: tuple[str, ...]
    backports: tuple[str, ...]
    trixie: tuple[str, ...]
    insecure_key: str
    disk_gib: int = 8


BASE_PACKAGES = (
    "systemd-sysv",
    "udev",
    "dbus",
    "kmod",
    "procps",
    "psmisc",
    "iproute2",
    "iputils-ping",
    "netbase",
    "e2fsprogs",
    "openssh-server",
    "openssh-client",
    "sudo",
    "rsync",
    "less",
    "linux-image-cloud-amd64",
    "initramfs-tools",
    "zstd",
    "python3",
    "python3-venv",
    "tcpdump",
    "ca-certificates",
)
VIRT_PACKAGES = (
    "qemu-system-x86",
    "qemu-utils",
    "libvirt-daemon-system",
    "libvirt-daemon-driver-qemu",
    "libvirt-clients",
    "libvirt-daemon-driver-interface",
    "libvirt-daemon-driver-nodedev",
    "libvirt-daemon-driver-storage",
)


def default_recipe(insecure_key: str) -> BoxRecipe:
    """The lab's box: what ``scripts/install-system.sh`` installs for libvirt, plus a system."""
    return BoxRecipe(
        suite="bookworm",
        packages=BASE_PACKAGES,
        backports=VIRT_PACKAGES,
        trixie=("seabios",),
        insecure_key=insecure_key.strip(),
    )


def sources(recipe: BoxRecipe) -> tuple[str, ...]:
    """The apt sources mmdebstrap builds from (one-line format)."""
    s = recipe.suite
    return (
        f"deb {MIRROR} {s} main",
        f"deb {MIRROR} {s}-updates main",
        f"deb {SECURITY_MIRROR} {s}-security main",
        f"deb {MIRROR} {s}-backports main",
        f"deb {MIRROR} trixie main",
    )


def apt_preferences(recipe: BoxRecipe) -> str:
    """Pins: trixie only for the packages named in ``recipe.trixie``."""
    named = " ".join(recipe.trixie)
    return (
        "Package: *\nPin: release n=trixie\nPin-Priority: 100\n\n"
        f"Package: {named}\nPin: release n=trixie\nPin-Priority: 990\n"
    )


def box_files(recipe: BoxRecipe) -> dict[str, tuple[int, str]]:
    """Files written into the box's root: path -> (mode, content)."""
    return {
        "/etc/fstab": (0o644, "/dev/vda / ext4 defaults,errors=remount-ro 0 1\n"),
        "/etc/hostname": (0o644, "vmotion-box\n"),
        "/etc/hosts": (0o644, "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n"),
        # DHCP on every NIC, for vagrant-libvirt's management network. A host's lab
        # NIC gets a lower-numbered file from provision-host.sh, which wins.
        "/etc/systemd/network/90-vagrant-dhcp.network": (
            0o644,
            (
                "[Match]\nName=eth* en*\n\n[Network]\nDHCP=ipv4\nIPv6AcceptRA=no\n"
                "LinkLocalAddressing=no\n"
            ),
        ),
        "/etc/sudoers.d/vagrant": (
            0o440,
            "vagrant ALL=(ALL) NOPASSWD: ALL\nDefaults:vagrant !requiretty\n",
        ),
        "/home/vagrant/.ssh/authorized_keys": (0o600, recipe.insecure_key + "\n"),
        # Both VMs come from one image: each makes its own host keys at first boot.
        "/etc/systemd/system/ssh.service.d/10-hostkeys.conf": (
            0o644,
            (
                "[Service]\nExecStartPre=\nExecStartPre=/usr/bin/ssh-keygen -A\n"
                "ExecStartPre=/usr/sbin/sshd -t\n"
            ),
        ),
        # No DNS server is reachable: sshd must not wait for reverse lookups. Vagrant's
        # insecure key is RSA; OpenSSH 9.2 accepts it only with this.
        "/etc/ssh/sshd_config.d/10-vmotion-box.conf": (
            0o644,
            "UseDNS no\nPubkeyAcceptedAlgorithms +ssh-rsa\n",
        ),
        "/etc/apt/preferences.d/vmotion-pins": (0o644, apt_preferences(recipe)),
    }


def customize_script(recipe: BoxRecipe) -> str:
    """Shell run by mmdebstrap's customize hook with the root as ``$1`` (network still there)."""
    backports = " ".join(recipe.backports)
    trixie = " ".join(f"{p}/trixie" for p in recipe.trixie)
    return f"""set -eu
root=$1
export DEBIAN_FRONTEND=noninteractive
chroot "$root" apt-get install -y -q --no-install-recommends -t {recipe.suite}-backports {backports}
chroot "$root" apt-get install -y -q --no-install-recommends {trixie}
chroot "$root" useradd --create-home --shell /bin/bash vagrant
chroot "$root" systemctl enable systemd-networkd.service ssh.service
chroot "$root" systemctl mask systemd-networkd-wait-online.service
rm -f "$root"/etc/ssh/ssh_host_*
chroot "$root" apt-get clean
rm -rf "$root"/var/lib/apt/lists/*
"""


def files_script(recipe: BoxRecipe) -> str:
    """Shell that writes ``box_files`` and the marker (after the packages: they write some too).

    The marker ``MARKER`` holds the recipe hash: provision-host.sh reads it instead
    of running scripts/install-system.sh, which needs the network the VMs do not have.
    """
    files = {**box_files(recipe), MARKER: (0o644, f"recipe={recipe_hash(recipe)}\n")}
    lines = ["set -eu", "root=$1"]
    for path, (mode, content) in sorted(files.items()):
        lines.append(f'mkdir -p "$root{Path(path).parent}"')
        lines.append(f"cat > \"$root{path}\" <<'VMOTION_EOF'\n{content}VMOTION_EOF")
        lines.append(f'chmod {mode:o} "$root{path}"')
    lines.append('chroot "$root" chown -R vagrant:vagrant /home/vagrant')
    lines.append('chmod 700 "$root/home/vagrant/.ssh"')
    return "\n".join(lines) + "\n"


def box_vagrantfile(cmdline: str = KERNEL_CMDLINE) -> str:
    """The box's own Vagrantfile: direct kernel boot from files shipped in the box."""
    head = (
        "# libvirt-vmotion lab box (vagrant/box.py): no boot loader,"
        " the box's kernel boots directly.\n"
    )
    return (
        head
        + f"""Vagrant.configure("2") do |config|
  config.vm.provider :libvirt do |lv|
    lv.kernel = File.expand_path("vmlinuz", __dir__)
    lv.initrd = File.expand_path("initrd.img", __dir__)
    lv.cmd_line = "{cmdline}"
  end
end
"""
    )


def box_metadata(recipe: BoxRecipe) -> dict[str, object]:
    """vagrant-libvirt's metadata.json."""
    return {"provider": "libvirt", "format": "qcow2", "virtual_size": recipe.disk_gib}


def recipe_hash(recipe: BoxRecipe) -> str:
    """Hash of everything the box is made of (the box's own marker file excluded)."""
    digest = hashlib.sha256()
    parts = [
        recipe.suite,
        *recipe.packages,
        "|",
        *recipe.backports,
        "|",
        *recipe.trixie,
        recipe.insecure_key,
        str(recipe.disk_gib),
        *sources(recipe),
        apt_preferences(recipe),
        customize_script(recipe),
        box_vagrantfile(),
        KERNEL_CMDLINE,
    ]
    for path, (mode, content) in sorted(box_files(recipe).items()):
        parts += [path, oct(mode), content]
    for part in parts:
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:HASH_LEN]


def box_name(digest: str) -> str:
    """The Vagrant box name of a recipe."""
    return BOX_PREFIX + digest


# ---- I/O ------------------------------------------------------------------------------


def _run(argv: list[str], *, log: Path | None = None) -> None:
    if log is None:
        done = subprocess.run(argv, check=False)
    else:
        with log.open("ab") as out:
            done = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        where = f" (output in {log})" if log else ""
        msg = f"{argv[0]} failed with exit {done.returncode}{where}"
        raise BoxError(msg, hint="read the output above; re-run to retry (nothing is cached)")


def build(recipe: BoxRecipe, cache_dir: Path = CACHE_DIR) -> Path:
    """Build the box file for ``recipe`` unless cached; return the ``box.tar`` path."""
    digest = recipe_hash(recipe)
    final = cache_dir / digest
    box = final / "box.tar"
    if box.is_file():
        return box
    for tool in ("mmdebstrap", "mkfs.ext4", "qemu-img"):
        if shutil.which(tool) is None:
            msg = f"{tool} is missing"
            raise BoxError(msg, hint="install the Vagrant lab's tools: scripts/install-vagrant.sh")
    staging = cache_dir / f".build-{digest}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    log = staging / "build.log"
    rootfs = staging / "rootfs"
    (staging / "customize.sh").write_text(customize_script(recipe))
    (staging / "pref").write_text(apt_preferences(recipe))
    (staging / "files.sh").write_text(files_script(recipe))
    print(f"==> box {digest}: mmdebstrap (log: {log})", flush=True)
    _run(
        [
            "mmdebstrap",
            "--variant=apt",
            "--mode=root",
            "--format=directory",
            "--include=" + ",".join(recipe.packages),
            (
                f'--setup-hook=mkdir -p "$1/etc/apt/preferences.d" && '
                f'cp {staging}/pref "$1/etc/apt/preferences.d/vmotion-pins"'
            ),
            f'--customize-hook=sh {staging}/customize.sh "$1"',
            f'--customize-hook=sh {staging}/files.sh "$1"',
            recipe.suite,
            str(rootfs),
            *sources(recipe),
        ],
        log=log,
    )
    boot = rootfs / "boot"
    kernels = sorted(boot.glob("vmlinuz-*"))
    initrds = sorted(boot.glob("initrd.img-*"))
    if not kernels or not initrds:
        msg = f"no kernel or initrd in {boot}"
        raise BoxError(msg, hint=f"look at {log}: the kernel package did not install")
    out = staging / "out"
    out.mkdir()
    shutil.copy2(kernels[-1], out / "vmlinuz")
    shutil.copy2(initrds[-1], out / "initrd.img")
    print(f"==> box {digest}: ext4 image and qcow2", flush=True)
    raw = staging / "root.raw"
    _run(
        [
            "mkfs.ext4",
            "-q",
            "-F",
            "-L",
            "vmotion-root",
            "-d",
            str(rootfs),
            str(raw),
            f"{recipe.disk_gib}G",
        ],
        log=log,
    )
    _run(
        ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(out / "box.img")], log=log
    )
    raw.unlink()
    (out / "metadata.json").write_text(json.dumps(box_metadata(recipe)) + "\n")
    (out / "Vagrantfile").write_text(box_vagrantfile())
    with tarfile.open(out / "box.tar", "w") as tar:
        for name in ("metadata.json", "Vagrantfile", "vmlinuz", "initrd.img", "box.img"):
            tar.add(out / name, arcname=name)
    (out / "box.img").unlink()  # in the tar; vagrant box add unpacks its own copy
    shutil.move(str(log), out / "build.log")
    shutil.rmtree(final, ignore_errors=True)
    out.rename(final)
    shutil.rmtree(staging)
    return final / "box.tar"


def add_to_vagrant(box: Path, name: str) -> None:
    """``vagrant box add`` unless Vagrant has the box already."""
    listed = subprocess.run(
        ["vagrant", "box", "list", "--machine-readable"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    if any(line.split(",")[3:4] == [name] for line in listed.splitlines()):
        return
    _run(["vagrant", "box", "add", "--name", name, str(box)])


def main(argv: list[str] | None = None) -> int:
    """CLI: build and add the box, print its name (``--hash``: the recipe hash only)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hash", action="store_true", help="print the recipe hash and exit")
    parser.add_argument("--cache-dir", type=Path, default=CACHE_DIR)
    args = parser.parse_args(argv)
    try:
        key = Path(os.environ.get("VMOTION_VAGRANT_INSECURE_KEY", INSECURE_KEY)).read_text()
    except OSError as exc:
        print(f"error: Vagrant's insecure public key is unreadable: {exc}", file=sys.stderr)
        print("hint: install Vagrant: scripts/install-vagrant.sh", file=sys.stderr)
        return 2
    recipe = default_recipe(key)
    digest = recipe_hash(recipe)
    if args.hash:
        print(digest)
        return 0
    try:
        box = build(recipe, args.cache_dir)
        add_to_vagrant(box, box_name(digest))
    except BoxError as exc:
        print(f"error: {exc}\nhint: {exc.hint}", file=sys.stderr)
        return 1
    print(box_name(digest))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
