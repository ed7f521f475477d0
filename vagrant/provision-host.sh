#!/usr/bin/env bash
# Provision one host of the Vagrant lab; run as root by `vagrant up` and
# `vagrant provision` (see vagrant/README.md).
#
# It turns a Debian 12 VM into the kind of host libvirt-vmotion expects in
# production: KVM, a system libvirtd reachable at qemu+tcp://<name>/system, a
# bridge br0 with the same name on every host, root ssh between the hosts (our
# agent runs over it), this package installed with its libvirt hook, and the
# project's test guest image. Every step looks before it writes (vagrant/lib.sh),
# so re-running it changes and restarts only what drifted.
#
# Input, from the Vagrantfile's HOSTS table (environment):
#   VMOTION_REPO        where the repository is synced in the VM (/opt/libvirt-vmotion)
#   VMOTION_HOST        this host's name (kvm1)
#   VMOTION_ADDR        its address on the lab network, which br0 carries
#   VMOTION_PREFIX_LEN  prefix length of the lab network
#   VMOTION_UPLINK_MAC  MAC of the VM's NIC on the lab network (becomes br0's port)
#   VMOTION_BRIDGE_MAC  MAC pinned on br0
#   VMOTION_HOSTS       every lab host, "name=addr name=addr"
set -euo pipefail

repo=${VMOTION_REPO:?set by the Vagrantfile}
host=${VMOTION_HOST:?set by the Vagrantfile}
addr=${VMOTION_ADDR:?set by the Vagrantfile}
prefix=${VMOTION_PREFIX_LEN:?set by the Vagrantfile}
uplink_mac=${VMOTION_UPLINK_MAC:?set by the Vagrantfile}
bridge_mac=${VMOTION_BRIDGE_MAC:?set by the Vagrantfile}
# shellcheck source=vagrant/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
read_hosts

venv=$repo/.venv
keys=$repo/vagrant/.lab-ssh
ssh_opts=(-o BatchMode=yes -o ConnectTimeout=5)

# ---- 1. KVM inside this VM --------------------------------------------------------
# First, because everything after it takes minutes. With VMOTION_VIRT_TYPE=qemu
# (the Vagrantfile's choice when the physical host has no nested KVM) the VMs are
# emulated and the guest inside them runs under TCG too: then /dev/kvm is not needed.
virt_type=${VMOTION_VIRT_TYPE:-kvm}
log "virtualisation for guests: $virt_type"
if [ "$virt_type" = kvm ]; then
  if [ ! -e /dev/kvm ]; then
    # Debian loads kvm_intel/kvm_amd through udev when the CPU shows vmx/svm; try
    # once by hand in case this boot raced it. The check below decides.
    modprobe kvm_intel 2>/dev/null || modprobe kvm_amd 2>/dev/null || true
  fi
  if [ ! -e /dev/kvm ]; then
    die "$host has no /dev/kvm: the physical host does not pass hardware virtualisation through to its VMs." \
        "Enable nested KVM on the physical host (cat /sys/module/kvm_intel/parameters/nested, or kvm_amd, must say Y or 1; see vagrant/README.md), then: vagrant reload --provision; or run the lab under TCG: VMOTION_VAGRANT_DRIVER=qemu"
  fi
fi

# ---- 2. Name and addresses ----------------------------------------------------------
# The Vagrantfile sets no config.vm.hostname (and allow_hosts_modification = false):
# Vagrant would map the name to 127.0.1.1, but "kvm1" must resolve to the lab
# address on every host. libvirtd's TCP socket and the migration streams listen
# there, and the agent's ssh and libvirt's peer-to-peer connection go to it by name.
log "hostname $host and /etc/hosts"
if [ "$(cat /etc/hostname 2>/dev/null)" != "$host" ]; then
  printf '%s\n' "$host" > /etc/hostname
fi
if [ "$(hostname)" != "$host" ]; then
  hostname "$host"
fi
# Debian writes "127.0.1.1 <name>" for a machine without a fixed address; this one has
# one, and Debian's reference says to use it instead (a box may ship the line).
if grep -q '^127\.0\.1\.1[[:space:]]' /etc/hosts; then
  sed -i '/^127\.0\.1\.1[[:space:]]/d' /etc/hosts
  CHANGES=$((CHANGES + 1))
fi
put_block 0644 /etc/hosts < <(
  for i in "${!HOST_NAMES[@]}"; do printf '%s %s\n' "${HOST_ADDRS[$i]}" "${HOST_NAMES[$i]}"; done
)

# ---- 3. System packages ---------------------------------------------------------------
# The project's own installer: QEMU >= 10 and libvirt 11.3 from bookworm-backports,
# gcc/busybox for the guest image, python3-venv/libvirt-dev for the package. It
# leaves a stamp and returns at once when everything is there. It keeps daemons
# from starting while it installs (the namespace lab starts its own); this script
# starts the system ones itself below.
# The box vagrant/box.py builds has all of it (and no network to fetch more):
# its marker file says so, and this step then installs nothing.
if [ -f /etc/libvirt-vmotion-box ]; then
  log "system packages: in the box ($(cat /etc/libvirt-vmotion-box))"
else
  log "system packages (scripts/install-system.sh)"
  bash "$repo/scripts/install-system.sh"
  # rsync: step 8 copies the guest image between hosts. Vagrant's rsync folder sync
  # usually installs it already; nothing else here is beyond install-system.sh.
  if [ "$(dpkg-query -W -f='${Status}' rsync 2>/dev/null || true)" != "install ok installed" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends rsync
  fi
fi
# install-system.sh brings glusterfs-server for the namespace lab's shared storage;
# this lab has none (see README), so do not leave glusterd listening on every address.
if systemctl cat glusterd.service >/dev/null 2>&1 && systemctl is-enabled -q glusterd.service; then
  systemctl disable --now glusterd.service
fi

# ---- 4. br0 -----------------------------------------------------------------------------
# The guest's NIC is <interface type='bridge'><source bridge='br0'/>: a migration
# needs a bridge of that name on the destination too. br0 carries the lab address
# and has the VM's lab NIC (found by the MAC the Vagrantfile gives it) as its
# uplink, so guests on br0 share the network both hosts are on.
#
# systemd-networkd, because it creates the bridge with its MAC in the same netlink
# request: the kernel then records the address as set by the user
# (addr_assign_type 3), which is what `vmotion check`'s bridge-mac-pinned looks
# for. An unpinned bridge takes the lowest MAC among its ports, so a joining guest
# tap (fe:54:...) can hand it the MAC the same guest's tap has on the other host,
# and each host then drops the other's frames mid-migration (README "Network
# cutover", seen in the namespace lab). The Vagrantfile marks this NIC
# auto_config: false, so Vagrant writes no ifupdown stanza for it that would fight
# networkd; the management NIC stays with whatever the box configures it with (no
# file here matches it).
log "bridge br0 ($addr/$prefix, MAC $bridge_mac) with the lab NIC as its uplink"
uplink=""
for dev in /sys/class/net/*; do
  if [ "$(cat "$dev/address" 2>/dev/null)" = "$uplink_mac" ] && [ ! -e "$dev/bridge" ]; then
    uplink=${dev##*/}
  fi
done
[ -n "$uplink" ] || die "$host has no NIC with MAC $uplink_mac (the lab network's)." \
  "Compare 'ip -br link' in the VM with the private_network mac in vagrant/Vagrantfile; after changing it: vagrant reload --provision"
before=$CHANGES
put_file 0644 /etc/systemd/network/40-vmotion-br0.netdev <<EOF
# libvirt-vmotion vagrant lab (vagrant/provision-host.sh): the guests' bridge.
[NetDev]
Name=br0
Kind=bridge
# Pinned: see "bridge-mac-pinned" in the top-level README.
MACAddress=$bridge_mac

[Bridge]
# No STP: a new guest tap must forward at once (vmotion check: bridge-stp-delay).
STP=no
EOF
put_file 0644 /etc/systemd/network/40-vmotion-br0.network <<EOF
# libvirt-vmotion vagrant lab: br0 carries the host's lab address.
[Match]
Name=br0

[Network]
Address=$addr/$prefix
# The address must be there before any port has carrier: libvirtd and sshd bind to it.
ConfigureWithoutCarrier=yes
IPv6AcceptRA=no
EOF
put_file 0644 /etc/systemd/network/40-vmotion-uplink.network <<EOF
# libvirt-vmotion vagrant lab: the VM's NIC on the lab network is br0's uplink.
[Match]
MACAddress=$uplink_mac

[Network]
Bridge=br0
EOF
if [ "$CHANGES" != "$before" ] || [ ! -e /sys/class/net/br0 ] \
   || ! systemctl is-active -q systemd-networkd.service; then
  systemctl enable --now systemd-networkd.service
  networkctl reload
fi
# networkd sets a netdev's MAC only when it creates it; a br0 made before (or by
# hand) is pinned here. `ip link set address` also marks it as set by the user.
for _ in $(seq 1 20); do [ -e /sys/class/net/br0 ] && break; sleep 0.5; done
[ -e /sys/class/net/br0 ] || die "systemd-networkd did not create br0." \
  "Look at: networkctl status br0; journalctl -u systemd-networkd"
if [ "$(cat /sys/class/net/br0/address)" != "$bridge_mac" ] \
   || [ "$(cat /sys/class/net/br0/addr_assign_type)" != 3 ]; then
  ip link set dev br0 address "$bridge_mac"
fi
for _ in $(seq 1 30); do
  addrs=$(ip -4 -o addr show dev br0 2>/dev/null || true)
  master=$(readlink "/sys/class/net/$uplink/master" 2>/dev/null || true)
  if [[ $addrs == *" $addr/$prefix "* ]] && [ "${master##*/}" = br0 ]; then
    break
  fi
  sleep 1
done
[[ $addrs == *" $addr/$prefix "* ]] || die "br0 did not get $addr/$prefix within 30 s." \
  "Look at: networkctl status br0; journalctl -u systemd-networkd"
[ "${master##*/}" = br0 ] || die "$uplink did not join br0 within 30 s." \
  "Look at: networkctl status $uplink; journalctl -u systemd-networkd"

# ---- 5. Root ssh between the hosts ----------------------------------------------------
# The agent (src/libvirt_vmotion/agent.py) reaches every host named in a libvirt
# URI as `ssh root@<host>`, the source's host included, and tools such as a
# qemu+ssh:// peer-to-peer migration log in host to host as root too. The keys
# come from the machine running vagrant (the Vagrantfile makes them once in
# vagrant/.lab-ssh): one root key for the lab, and a host key per VM. Because each
# VM's host key is known before any VM boots, every host can trust every other
# from its first provisioning on, in any order, without trust-on-first-use.
log "root ssh: lab key, host key, known hosts"
for key in root "host-$host" "${HOST_NAMES[@]/#/host-}"; do
  if [ ! -r "$keys/$key" ] || [ ! -r "$keys/$key.pub" ]; then
    die "the lab's ssh key $key is missing in $keys." \
      "The Vagrantfile makes the keys on the machine running vagrant; sync them in: vagrant rsync $host && vagrant provision $host"
  fi
done
install -d -m 0700 /root/.ssh
put_file 0600 /root/.ssh/id_ed25519 < "$keys/root"
put_file 0644 /root/.ssh/id_ed25519.pub < "$keys/root.pub"
put_block 0600 /root/.ssh/authorized_keys < "$keys/root.pub"
put_block 0644 /etc/ssh/ssh_known_hosts < <(
  for i in "${!HOST_NAMES[@]}"; do
    read -r key_type key _ < "$keys/host-${HOST_NAMES[$i]}.pub"
    printf '%s,%s %s %s\n' "${HOST_NAMES[$i]}" "${HOST_ADDRS[$i]}" "$key_type" "$key"
  done
)
before=$CHANGES
put_file 0600 /etc/ssh/ssh_host_ed25519_key < "$keys/host-$host"
put_file 0644 /etc/ssh/ssh_host_ed25519_key.pub < "$keys/host-$host.pub"
# Debian's default already is prohibit-password; a box may say otherwise, and the
# first value sshd reads wins, hence the 00- drop-in.
put_file 0644 /etc/ssh/sshd_config.d/00-libvirt-vmotion.conf <<'EOF'
# libvirt-vmotion vagrant lab: root logs in host to host with the lab's key only.
PermitRootLogin prohibit-password
EOF
if [ "$CHANGES" != "$before" ]; then
  sshd -t
  systemctl reload ssh.service
fi
# sshd re-executes on reload; under TCG it refuses connections for a few seconds
# (second real run: "Connection refused" right after the reload). Retry a while.
for _ in $(seq 1 30); do
  ssh "${ssh_opts[@]}" "root@$host" true 2>/dev/null && break
  sleep 2
done
ssh "${ssh_opts[@]}" "root@$host" true || die "root cannot ssh to $host itself by name." \
  "Check /etc/ssh/ssh_known_hosts, /root/.ssh/authorized_keys and: ssh -v root@$host"

# ---- 6. This package ------------------------------------------------------------------
# The same venv as ./run makes (.venv in the repository, same extras, same stamp),
# so ./run works in the VM as it does anywhere. The rsync folder sync excludes
# .venv (see the Vagrantfile), so a later `vagrant rsync` neither copies the
# physical host's venv in nor deletes this one.
log "libvirt-vmotion in $venv"
# Offline when the machine running Vagrant built a wheelhouse (./run vagrant does:
# vagrant/.wheelhouse, synced with the repository): the VMs reach no package index.
wheelhouse=$repo/vagrant/.wheelhouse
if [ ! -x "$venv/bin/python" ] || [ "$repo/pyproject.toml" -nt "$venv/.installed" ]; then
  python3 -m venv "$venv"
  if [ -d "$wheelhouse" ]; then
    "$venv/bin/pip" install -q --no-index --find-links "$wheelhouse" -e "$repo"
  else
    "$venv/bin/pip" install -q --upgrade pip
    "$venv/bin/pip" install -q -e "${repo}[test,bench]"
  fi
  touch "$venv/.installed"
fi
ln -sfn "$venv/bin/vmotion" /usr/local/bin/vmotion
# The agent runs on each host as "$VMOTION_AGENT_PYTHON -m libvirt_vmotion agent OP"
# (default python3, which has no libvirt_vmotion here). The CLI reads this on the
# host it runs on and uses it for every remote host, which works because the venv
# is at the same path on all of them. Login shells read it: use `sudo -i`.
put_file 0644 /etc/profile.d/libvirt-vmotion.sh <<EOF
# libvirt-vmotion vagrant lab: the interpreter our agent runs with on every lab host
# (see src/libvirt_vmotion/agent.py).
export VMOTION_AGENT_PYTHON=$venv/bin/python
EOF

# ---- 7. System libvirtd on TCP, migration address, our hook -------------------------------
# qemu+tcp://, unauthenticated, bound to the lab address only: the URIs are the
# ones the README and the namespace lab use, and the source's libvirtd can open the
# peer-to-peer connection to the destination without credentials of its own. That
# is acceptable only on a network nobody else is on (the lab network is an
# isolated libvirt network on the physical host); see vagrant/README.md.
#
# Debian's libvirt 11.3 runs the monolithic libvirtd, socket-activated: with
# sockets, listen_tcp/listen_addr in libvirtd.conf are ignored and
# libvirtd-tcp.socket decides where it listens. FreeBind lets the socket bind
# the lab address at boot, before networkd has put it on br0.
log "libvirtd: qemu+tcp://$host/system on $addr, migrations on $addr, our hook"
before=$CHANGES
set_conf /etc/libvirt/libvirtd.conf auth_tcp '"none"'
# Incoming migration streams: listen on the lab address (migration_address) and
# tell the source to connect there (migration_host); by default the destination
# would hand out its hostname, resolved on the source.
set_conf /etc/libvirt/qemu.conf migration_address "\"$addr\""
set_conf /etc/libvirt/qemu.conf migration_host "\"$addr\""
put_file 0644 /etc/systemd/system/libvirtd-tcp.socket.d/50-libvirt-vmotion.conf <<EOF
# libvirt-vmotion vagrant lab: libvirtd over TCP on the lab address only.
[Socket]
ListenStream=
ListenStream=$addr:16509
FreeBind=yes
EOF
# `vmotion hooks install` writes the shim with this venv's interpreter; libvirtd
# reads hooks when it starts, so a changed hook counts as a reason to restart it.
hook=$("$venv/bin/python" -c \
  'from pathlib import Path; from libvirt_vmotion.reserve.hook import installed_path; print(installed_path(Path("/etc/libvirt")))')
hook_before=$(cat "$hook" 2>/dev/null || true)
"$venv/bin/vmotion" hooks install
if [ "$(cat "$hook")" != "$hook_before" ]; then
  CHANGES=$((CHANGES + 1))
fi
units=()
# virtlockd.socket only where libvirt-daemon-lock is installed (install-system.sh
# brings it for the namespace lab; the box has no lock manager, see README).
for unit in virtlogd.socket virtlockd.socket libvirtd.socket libvirtd-ro.socket \
            libvirtd-admin.socket libvirtd-tcp.socket; do
  if systemctl cat "$unit" >/dev/null 2>&1; then units+=("$unit"); fi
done
systemctl daemon-reload
systemctl enable -q "${units[@]}" libvirtd.service
if [ "$CHANGES" != "$before" ]; then
  # Stopping libvirtd leaves running guests alone (KillMode=process: QEMU is not
  # killed with it); it reattaches to them when it starts again. The TCP socket is
  # restarted so that a changed ListenStream is bound anew.
  systemctl stop libvirtd.service
  systemctl restart libvirtd-tcp.socket
fi
systemctl start "${units[@]}" libvirtd.service
got=$(virsh -c "qemu+tcp://$host/system" hostname 2>&1) \
  || die "libvirtd does not answer at qemu+tcp://$host/system: $got" \
         "Look at: systemctl status libvirtd-tcp.socket libvirtd.service; ss -ltnp | grep 16509"
[ "$got" = "$host" ] || die "qemu+tcp://$host/system answers as '$got', not $host." \
  "libvirtd may have started before the hostname was set: systemctl restart libvirtd.service"
"$venv/bin/vmotion" hooks status

# ---- 8. The test guest's image ------------------------------------------------------------
# The project's own image (src/libvirt_vmotion/lab/image.py): a Debian cloud kernel
# and a busybox initramfs with the self-verifying workload, cached per recipe hash
# under /var/cache/libvirt-vmotion/guest/<hash>/. The guest's definition points
# at those files, so the destination of a migration needs the same ones at the same
# path. Each host builds its own (normally the same hash: the same packages on the
# same day), then copies in whatever image the other hosts have and it lacks, so a
# guest defined on one host can always start on the other.
log "guest image"
cache=/var/cache/libvirt-vmotion/guest
if [ -n "${VMOTION_GUEST_IMAGE_DIR:-}" ]; then
  # Synced in by the Vagrantfile from the machine running Vagrant (which built it):
  # the same files at the same path on both hosts, nothing to build or copy here.
  [ -f "$VMOTION_GUEST_IMAGE_DIR/vmlinuz" ] && [ -f "$VMOTION_GUEST_IMAGE_DIR/initrd.gz" ] \
    || die "the guest image is not in $VMOTION_GUEST_IMAGE_DIR." \
           "It is synced from the machine running Vagrant: vagrant rsync $host && vagrant provision $host"
  printf '    synced: %s\n' "$VMOTION_GUEST_IMAGE_DIR"
else
  "$venv/bin/vmotion" lab image
  for i in "${!HOST_NAMES[@]}"; do
    peer=${HOST_NAMES[$i]}
    [ "$peer" = "$host" ] && continue
    if ssh "${ssh_opts[@]}" "root@$peer" test -d "$cache" 2>/dev/null; then
      rsync -a --ignore-existing --exclude='.build-*' -e "ssh ${ssh_opts[*]}" \
        "root@$peer:$cache/" "$cache/"
      printf '    images from %s: in %s\n' "$peer" "$cache"
    else
      # Normal on the first `vagrant up` for the host that comes up first: the
      # other host copies from this one when it is provisioned.
      printf '    %s is not reachable (or has no images yet): nothing copied from it\n' "$peer"
    fi
  done
fi

log "$host is ready: qemu+tcp://$host/system, br0 $addr/$prefix, agent: $venv/bin/python"
