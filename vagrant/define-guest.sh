#!/usr/bin/env bash
# Define and start the lab's test guest on this host (kvm1), as root, after
# provision-host.sh; run by `vagrant up` / `vagrant provision` for the host the
# Vagrantfile names as GUEST_HOST.
#
# The guest is the namespace lab's own (README "The test guest"): the image of
# src/libvirt_vmotion/lab/image.py and the domain XML of lab/guestdef.py, with the
# same workload defaults as `vmotion lab guest start`. Two things differ: it runs
# under KVM (<domain type='kvm'>, these hosts have nested virtualisation), and it
# sits on this lab's network. `vmotion lab guest start` itself only knows the
# namespace lab's hosts, so this script calls the same two modules directly.
#
# Safe to re-run: a guest that already exists is left as it is (started if it is
# shut off), and none is defined here while another lab host has it (after a
# migration to kvm2, re-provisioning kvm1 must not make a second copy).
#
# Input (environment, from the Vagrantfile): VMOTION_REPO, VMOTION_HOST,
# VMOTION_HOSTS, VMOTION_GUEST_ADDR, VMOTION_PREFIX_LEN.
set -euo pipefail

repo=${VMOTION_REPO:?set by the Vagrantfile}
host=${VMOTION_HOST:?set by the Vagrantfile}
guest_addr=${VMOTION_GUEST_ADDR:?set by the Vagrantfile}
prefix=${VMOTION_PREFIX_LEN:?set by the Vagrantfile}
# shellcheck source=vagrant/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
read_hosts
py=$repo/.venv/bin/python
[ -x "$py" ] || die "$py is missing." "Run provision-host.sh first: vagrant provision $host"
name=$("$py" -c 'from libvirt_vmotion.lab.constants import GUEST_NAME; print(GUEST_NAME)')

# Where is it now? Ask every other lab host's libvirtd (the same URIs vmotion uses).
for peer in "${HOST_NAMES[@]}"; do
  [ "$peer" = "$host" ] && continue
  uri=qemu+tcp://$peer/system
  if ! virsh -c "$uri" hostname >/dev/null 2>&1; then
    # Normal on the first `vagrant up`: kvm2 does not exist yet.
    log "$peer is not reachable at $uri: assuming $name is not there"
  elif state=$(virsh -c "$uri" domstate "$name" 2>/dev/null); then
    log "$name is on $peer ($state): not defining it on $host as well"
    exit 0
  fi
done

if virsh dominfo "$name" >/dev/null 2>&1; then
  log "$name is already defined on $host"
else
  log "defining $name on $host: ${VMOTION_VIRT_TYPE:-kvm}, ${VMOTION_GUEST_MEMORY_MIB:-512} MiB, $guest_addr/$prefix on br0"
  xml=$(mktemp --suffix=.xml)
  # Same settings as `vmotion lab guest start` (guestctl.start_guest's defaults:
  # 512 MiB, 1 vCPU, 64 MiB working set rewritten at 20 MiB/s, paced), except the
  # virtualisation type. The image comes from the cache provision-host.sh filled.
  "$py" - "$guest_addr/$prefix" > "$xml" <<'PY'
import os
import sys
from pathlib import Path

from libvirt_vmotion.lab.guestdef import LabGuestSpec, VirtType, build_domain_xml
from libvirt_vmotion.lab.image import ensure_guest_image, kernel_cmdline

synced = os.environ.get("VMOTION_GUEST_IMAGE_DIR")
if synced:
    kernel, initrd = Path(synced) / "vmlinuz", Path(synced) / "initrd.gz"
else:
    image = ensure_guest_image()
    kernel, initrd = image.kernel, image.initrd
cmdline = kernel_cmdline(
    addr_cidr=sys.argv[1],
    wss_mib=int(os.environ.get("VMOTION_GUEST_WSS_MIB", "64")),
    rate_mib_s=int(os.environ.get("VMOTION_GUEST_RATE_MIB_S", "20")),
    mode="paced",
)
extra = os.environ.get("VMOTION_GUEST_EXTRA_CMDLINE", "").strip()
if extra:
    cmdline = f"{cmdline} {extra}"
spec = LabGuestSpec(
    kernel=kernel,
    initrd=initrd,
    cmdline=cmdline,
    memory_mib=int(os.environ.get("VMOTION_GUEST_MEMORY_MIB", "512")),
    virt_type=VirtType(os.environ.get("VMOTION_VIRT_TYPE", "kvm")),
)
sys.stdout.write(build_domain_xml(spec) + "\n")
PY
  virsh define "$xml"
  rm -f "$xml"
fi

state=$(virsh domstate "$name")
if [ "$state" != running ]; then
  virsh start "$name"
fi
# The workload answers on TCP 7000 once the guest has booted, configured its
# address and built its working set; this host reaches it over br0.
# Under TCG inside TCG the guest's kernel takes minutes to boot.
ready_s=120
[ "${VMOTION_VIRT_TYPE:-kvm}" = kvm ] || ready_s=1200
"$py" - "$guest_addr" "$name" "$ready_s" <<'PY'
import sys

from libvirt_vmotion.observe.workload import WorkloadError, wait_until_ready

addr, name = sys.argv[1], sys.argv[2]
try:
    st = wait_until_ready(addr, timeout_s=float(sys.argv[3]))
except WorkloadError as exc:
    print(f"error: {exc}", file=sys.stderr)
    print(f"hint: look at /var/log/libvirt/qemu/{name}-serial.log", file=sys.stderr)
    raise SystemExit(1) from None
print(
    f"    workload at {addr}: {st.wss_mib} MiB working set at {st.rate_mib_s} MiB/s "
    f"({st.mode}), {st.pages_verified} pages verified, {st.mismatches} mismatches"
)
PY
log "$name runs on $host at $guest_addr (console log: /var/log/libvirt/qemu/$name-serial.log)"
