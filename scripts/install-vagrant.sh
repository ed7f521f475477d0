#!/usr/bin/env bash
# Install what the Vagrant lab (vagrant/, ./run vagrant ...) needs on the machine
# running Vagrant, on Debian 12 or 13: Vagrant and vagrant-libvirt from Debian
# (no plugin download), mmdebstrap to build the box locally (vagrant/box.py;
# qemu-img comes with scripts/install-system.sh's QEMU), rsync for the synced
# folder. Daemons are not started: the
# lab runs its own libvirtd in a network namespace (vagrant/vlab.sh).
set -euo pipefail

stamp=/var/lib/libvirt-vmotion/vagrant-packages.v1
if [ -f "$stamp" ] && command -v vagrant >/dev/null && command -v mmdebstrap >/dev/null \
   && getent passwd libvirt-dnsmasq >/dev/null; then
  exit 0
fi
. "$(dirname "${BASH_SOURCE[0]}")/apt-lib.sh"
need_root "the Vagrant lab's packages"
no_daemon_starts
apt-get install -y -q --no-install-recommends vagrant vagrant-libvirt mmdebstrap \
  rsync e2fsprogs openssh-client dnsmasq-base iptables
# The namespaced libvirtd runs dnsmasq for the VMs' networks as this user, which
# only libvirt-daemon-system (not installed here: no system libvirtd) would create.
if ! getent passwd libvirt-dnsmasq >/dev/null; then
  adduser --quiet --system --group --no-create-home --home /var/lib/libvirt/dnsmasq \
    --gecos "Libvirt Dnsmasq" libvirt-dnsmasq
fi
mkdir -p "$(dirname "$stamp")"
touch "$stamp"
