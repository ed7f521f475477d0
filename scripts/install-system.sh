#!/usr/bin/env bash
# Install the system packages the lab needs, on Debian 12 (bookworm) or 13 (trixie).
#
# Why the backports dance on Debian 12: its QEMU 7.2 silently loses dirty pages
# when migrating TCG guests (fixed upstream in 2024, "system/physmem: Fix
# migration dirty bitmap coherency with TCG memory access"). The lab therefore
# needs QEMU >= 10.0: bookworm-backports has 10.0.x and libvirt 11.3; the
# bookworm seabios 1.16.2 hangs under QEMU 10, so seabios (architecture-
# independent firmware) comes from trixie, pinned so nothing else does.
# Debian 13 ships all of it natively.
# openssh: the lab runs a real sshd per host, the way the agent reaches real
# hosts. The interface, nodedev and storage drivers let pre-flight ask a
# destination's libvirt about bridges, NICs and volumes.
# gnutls-bin: certtool makes the lab's CA and host certificates (migration TLS and
# libvirtd's TLS listener), as libvirt's TLS guide does; tcpdump: the lab test that
# looks for guest memory on the wire.
set -euo pipefail

stamp=/var/lib/libvirt-vmotion/system-packages.v4
if [ -f "$stamp" ] && command -v qemu-system-x86_64 >/dev/null && command -v libvirtd >/dev/null \
   && command -v sshd >/dev/null && command -v virtlockd >/dev/null \
   && command -v glusterd >/dev/null && command -v certtool >/dev/null \
   && command -v tcpdump >/dev/null; then
  exit 0
fi
. "$(dirname "${BASH_SOURCE[0]}")/apt-lib.sh"
need_root "system packages"

. /etc/os-release

no_daemon_starts

common=(iproute2 iputils-ping tcpdump cpio gzip busybox-static gcc libc6-dev gnutls-bin
        pkg-config python3-venv python3-dev kmod procps psmisc dnsmasq-base
        openssh-server openssh-client
        glusterfs-server glusterfs-client)
# GlusterFS: the lab's shared storage (a userspace server in a namespace, FUSE
# clients on the hosts). The kernel NFS server/client need nfsd/nfs modules the
# lab machine's kernel does not have; GlusterFS needs only FUSE, and forwards
# POSIX locks between clients, which the lock manager (virtlockd) relies on.
virt=(qemu-system-x86 qemu-utils libvirt-daemon libvirt-daemon-driver-qemu
      libvirt-clients libvirt-dev libvirt-daemon-config-network
      libvirt-daemon-driver-interface libvirt-daemon-driver-nodedev
      libvirt-daemon-driver-storage libvirt-daemon-lock libvirt-daemon-plugin-lockd)

case "${VERSION_CODENAME:-}" in
  bookworm)
    cat > /etc/apt/sources.list.d/vmotion-backports.sources <<SRC
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    cat > /etc/apt/preferences.d/vmotion-pins <<PIN
Package: *
Pin: release n=trixie
Pin-Priority: 100

Package: seabios
Pin: release n=trixie
Pin-Priority: 990
PIN
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${common[@]}"
    apt-get install -y -q --no-install-recommends -t bookworm-backports "${virt[@]}"
    apt-get install -y -q --no-install-recommends seabios/trixie
    ;;
  trixie|forky|sid)
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${common[@]}" "${virt[@]}" seabios
    ;;
  *)
    echo "error: unsupported system '${PRETTY_NAME:-unknown}'." >&2
    echo "hint: the lab set-up supports Debian 12 (bookworm) and 13 (trixie)." >&2
    exit 2
    ;;
esac

mkdir -p "$(dirname "$stamp")"
touch "$stamp"
