#!/usr/bin/env bash
# The Vagrant lab on this machine, by `./run vagrant ...` (see vagrant/README.md):
#
#   smoke [--keep]   box, both VMs, provisioning, guest on kvm1, vmotion check, migrate
#                    kvm1 -> kvm2 and back, verify, phase times; destroys the VMs unless --keep
#   up               box, libvirtd namespace, `vagrant up` (both VMs, provisioned)
#   status           the namespace's libvirtd and `vagrant status`
#   ssh HOST [-c CMD]  `vagrant ssh` into kvm1 or kvm2
#   destroy          `vagrant destroy -f`, then the namespace and its libvirtd
#   vagrant ARGS...  any vagrant command, run where the VMs are reachable
#
# Every network the VMs use lives in one network namespace this script makes
# (${VMOTION_LAB_ID:-vag}-vagrant): the libvirtd that Vagrant talks to runs there
# (its own /run, /etc/libvirt, /var/lib/libvirt through bind mounts, as the
# namespace lab's hosts do), so vagrant-libvirt's management network, the lab
# network and their dnsmasq are created inside it and reach nothing outside.
# Vagrant itself runs in the namespace too: it ssh's to the VMs' management
# addresses. libvirtd runs under `nice -n 19` and its QEMUs inherit that.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
id=${VMOTION_LAB_ID:-vag}
ns=$id-vagrant
state=/var/lib/libvirt-vmotion/vagrant/$id
sock=$state/run/libvirt/libvirt-sock
uri="qemu+unix:///system?socket=$sock"
py=$repo/.venv/bin/python
wheelhouse=$here/.wheelhouse
guest_name=vmo-guest
guest_addr=10.77.10.50

log() { printf '==> %s\n' "$*"; }
die() {
  printf 'error: %s\n' "$1" >&2
  [ -z "${2:-}" ] || printf 'hint: %s\n' "$2" >&2
  exit 1
}

# ---- the namespace and its libvirtd ------------------------------------------------
holder_pid() {
  local pid
  pid=$(cat "$state/holder.pid" 2>/dev/null) || return 1
  [ -d "/proc/$pid" ] && [ "$(readlink "/proc/$pid/ns/net")" = "$(ip netns exec "$ns" readlink /proc/self/ns/net 2>/dev/null)" ] \
    && printf '%s\n' "$pid"
}

libvirt_answers() { virsh -c "$uri" hostname >/dev/null 2>&1; }

write_configs() {
  mkdir -p "$state"/{run,etc,lib,log,cache,console}
  if [ ! -e "$state/etc/.copied" ]; then
    cp -a /etc/libvirt/. "$state/etc/"
    rm -f "$state"/etc/qemu/networks/autostart/*.xml
    touch "$state/etc/.copied"
  fi
  local uuid
  [ -s "$state/host-uuid" ] || cat /proc/sys/kernel/random/uuid > "$state/host-uuid"
  uuid=$(cat "$state/host-uuid")
  cat > "$state/etc/libvirtd.conf" <<EOF
# libvirt-vmotion vagrant lab (vagrant/vlab.sh): local socket only, in namespace $ns.
listen_tcp = 0
listen_tls = 0
auth_unix_rw = "none"
auth_unix_ro = "none"
host_uuid = "$uuid"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
EOF
  # QEMU as root, no relabelling: it boots the box's kernel and disk from files
  # that live on this machine's file system (~/.vagrant.d, this state directory).
  cat > "$state/etc/qemu.conf" <<'EOF'
# libvirt-vmotion vagrant lab (vagrant/vlab.sh).
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
EOF
}

# The controller side: `vmotion` runs in the namespace, on this machine's venv, and
# reaches the hosts as a management host would: qemu+tcp://kvm1/system by name
# (ip netns exec bind-mounts /etc/netns/$ns/hosts over /etc/hosts), the agents
# over root ssh with the lab's key (vagrant/.lab-ssh, made by the Vagrantfile).
write_controller_files() {
  mkdir -p "/etc/netns/$ns" "$state"
  printf '127.0.0.1 localhost\n10.77.10.1 %s\n10.77.10.11 kvm1\n10.77.10.12 kvm2\n' "$ns" \
    > "/etc/netns/$ns/hosts"
  local keys=$here/.lab-ssh h key_type key
  : > "$state/known_hosts"
  for h in kvm1:10.77.10.11 kvm2:10.77.10.12; do
    [ -r "$keys/host-${h%%:*}.pub" ] || continue
    read -r key_type key _ < "$keys/host-${h%%:*}.pub"
    printf '%s,%s %s %s\n' "${h%%:*}" "${h#*:}" "$key_type" "$key" >> "$state/known_hosts"
  done
  cat > "$state/ssh_config" <<EOF
# libvirt-vmotion vagrant lab (vagrant/vlab.sh): the controller's ssh to the lab hosts.
Host kvm1 kvm2 10.77.10.11 10.77.10.12
  User root
  IdentityFile $keys/root
  IdentitiesOnly yes
  UserKnownHostsFile $state/known_hosts
  StrictHostKeyChecking yes
  BatchMode yes
  ConnectTimeout 10
  # Under TCG one ssh login to a VM takes 10-40 s (key exchange and PAM, emulated);
  # the agent logs in several times per check and migration: reuse one connection.
  ControlMaster auto
  ControlPath $state/ssh-%C
  ControlPersist 900
EOF
}

# Run a command as the controller: in the namespace, with the agent's settings.
# The files are written each time: on a clean checkout the lab's keys appear
# only when the Vagrantfile first runs (fourth run: "No ED25519 host key is known").
ctl() {
  write_controller_files
  ip netns exec "$ns" env \
    VMOTION_AGENT_SSH="ssh -F $state/ssh_config" \
    VMOTION_AGENT_PYTHON=/opt/libvirt-vmotion/.venv/bin/python \
    VMOTION_HISTORY="$state/history.db" \
    "$@"
}

ns_up() {
  write_controller_files
  if libvirt_answers; then return 0; fi
  [ "$(id -u)" = 0 ] || die "the Vagrant lab needs root (network namespace, libvirtd)." "run it as root"
  log "namespace $ns with its own libvirtd (nice 19), state in $state"
  ip netns list | grep -qx "$ns\( .*\)\?" || ip netns add "$ns"
  write_configs
  local script
  script="set -e
mount --bind '$state/run' /run
mount --bind '$state/etc' /etc/libvirt
mount --bind '$state/lib' /var/lib/libvirt
mount --bind '$state/log' /var/log/libvirt
mount --bind '$state/cache' /var/cache/libvirt
hostname '$ns'
ip link set lo up
virtlogd -d
libvirtd -d
echo \$\$ > '$state/holder.pid'
exec sleep infinity"
  setsid nice -n 19 ip netns exec "$ns" unshare --mount --uts --propagation private -- \
    sh -c "$script" > "$state/holder.log" 2>&1 < /dev/null &
  for _ in $(seq 1 60); do
    libvirt_answers && return 0
    sleep 0.5
  done
  die "libvirtd in $ns did not answer at $uri within 30 s." \
    "look at $state/holder.log and $state/log/libvirtd.log"
}

ns_down() {
  if ip netns list | grep -q "^$ns\b"; then
    log "namespace $ns: stopping its processes, removing it"
    local pids
    pids=$(ip netns pids "$ns" || true)
    # shellcheck disable=SC2086 # one PID per word
    [ -z "$pids" ] || kill $pids 2>/dev/null || true
    for _ in $(seq 1 20); do
      [ -z "$(ip netns pids "$ns" 2>/dev/null)" ] && break
      sleep 0.5
    done
    pids=$(ip netns pids "$ns" || true)
    # shellcheck disable=SC2086
    [ -z "$pids" ] || kill -9 $pids 2>/dev/null || true
    ip netns del "$ns"
  fi
  rm -rf "/etc/netns/$ns"
  rm -f "$state/holder.pid"
}

# ---- what the VMs get from this machine ---------------------------------------------
box_up() {
  log "box (vagrant/box.py; cached by recipe hash)"
  VMOTION_VAGRANT_BOX=$(nice -n 19 python3 "$here/box.py" | tail -1)
  export VMOTION_VAGRANT_BOX
}

# The package's dependencies as wheels, for the VMs' offline `pip install`
# (provision-host.sh): built here, where PyPI (or its mirror) is reachable.
wheelhouse_up() {
  local stamp=$wheelhouse/.pyproject
  if [ -f "$stamp" ] && cmp -s "$stamp" "$repo/pyproject.toml"; then return 0; fi
  log "wheelhouse for the VMs in $wheelhouse"
  rm -rf "$wheelhouse"
  mkdir -p "$wheelhouse"
  # (grep: this machine's pip config names mirror directories that may not exist)
  "$py" -m pip wheel -q -w "$wheelhouse" "$repo" hatchling editables 2>&1 \
    | { grep -v "^WARNING: Location .* is ignored" || true; }
  rm -f "$wheelhouse"/libvirt_vmotion-*.whl
  cp "$repo/pyproject.toml" "$stamp"
}

guest_image_up() {
  local hash
  hash=$("$py" -m libvirt_vmotion lab image | sed -n 's/^recipe //p')
  [ -n "$hash" ] || die "vmotion lab image printed no recipe hash." "run: ./run lab image"
  export VMOTION_GUEST_IMAGE_DIR=/var/cache/libvirt-vmotion/guest/$hash
}

export_env() {
  export VAGRANT_CWD=$here VMOTION_VAGRANT_SOCKET=$sock VMOTION_VAGRANT_CONSOLE_DIR=$state/console
  : "${VMOTION_VAGRANT_BOX:=vmotion-bookworm-$(python3 "$here/box.py" --hash)}"
  export VMOTION_VAGRANT_BOX
  [ -n "${VMOTION_GUEST_IMAGE_DIR:-}" ] || guest_image_up
}

vg() { nice -n 19 ip netns exec "$ns" vagrant "$@"; }
# vagrant up for a log: its box upload progress is one \r-line per percent.
# Each line gets the time of day, so a log shows where the minutes went.
vg_logged() {
  local line
  vg "$@" 2>&1 | stdbuf -oL tr -s '\r' '\n' | grep --line-buffered -v 'Progress: ' \
    | while IFS= read -r line; do printf '%(%T)T %s\n' -1 "$line"; done
}

# ---- smoke ----------------------------------------------------------------------------
PHASES=()
phase_start=0
smoke_start=0
begin() { phase_name=$1; phase_start=$(date +%s); log "[$(date +%T)] $1"; }
end() {
  local took=$(($(date +%s) - phase_start))
  PHASES+=("$(printf '%-28s %5d s' "$phase_name" "$took")")
}
summary() {
  printf '\n==== vagrant smoke summary (%s, commit %s, driver %s) ====\n' \
    "$(date -u +%FT%TZ)" "$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo '?')" \
    "${VMOTION_VAGRANT_DRIVER:-auto}"
  printf '  %s\n' "${PHASES[@]}"
  printf '  %-28s %5d s\n' total "$(($(date +%s) - smoke_start))"
  [ -z "${REPORT_LINES:-}" ] || printf '%s\n' "$REPORT_LINES"
}
REPORT_LINES=""
report() { REPORT_LINES+="  $*"$'\n'; printf '    %s\n' "$*"; }

where_is_guest() {
  local h found=()
  for h in kvm1 kvm2; do
    # (the list whole first: grep -q would end the pipe early, and pipefail fail it)
    if ctl virsh -c "qemu+tcp://$h/system" list --name 2>/dev/null \
       | grep -x "$guest_name" >/dev/null; then
      found+=("$h")
    fi
  done
  printf '%s\n' "${found[*]:-none}"
}

# Each host reaches the other's libvirtd (a peer-to-peer migration needs it), the
# controller reaches both over ssh (the agent's way in), and the hook is installed.
cross_checks() {
  local h peer got
  for h in kvm1 kvm2; do
    peer=kvm1; [ "$h" = kvm2 ] || peer=kvm2
    got=$(ctl ssh -F "$state/ssh_config" "$h" virsh -c "qemu+tcp://$peer/system" hostname) \
      || die "$h does not reach qemu+tcp://$peer/system" \
             "./run vagrant ssh $h, then: sudo virsh -c qemu+tcp://$peer/system hostname"
    report "$h reaches qemu+tcp://$peer/system (answers: $got)"
    got=$(ctl ssh -F "$state/ssh_config" "$h" /opt/libvirt-vmotion/.venv/bin/vmotion hooks status 2>&1 \
          | head -1)
    report "$h hook: $got"
  done
}

# The workload's own verdict, read before and after each move (boot id, page
# mismatches). Under TCG inside TCG the guest answers slowly for a while after
# it resumes (its new QEMU translates its code afresh), longer than the 2 s that
# `migrate --workload` waits: so the smoke asks itself, with patience.
workload_status() {
  ctl "$py" - "$guest_addr" <<'PY'
import sys
import time

from libvirt_vmotion.observe.workload import WorkloadError, query_status

deadline = time.monotonic() + 300
while True:
    try:
        st = query_status(sys.argv[1], timeout_s=30)
        break
    except WorkloadError as exc:
        if time.monotonic() > deadline:
            sys.exit(f"error: the guest's workload does not answer: {exc}")
        time.sleep(5)
print(st.boot_id, st.mismatches, st.pages_verified)
PY
}

migrate_once() {
  local from=$1 to=$2 json=$state/$1-to-$2.json line at before after observers=()
  begin "migrate $from -> $to"
  rm -f "$json"
  read -r -a before <<< "$(workload_status)"
  # A 10 ms ping and the workload's TCP stream are more than a guest emulated
  # inside an emulated host can answer (it lost most pings and the stream): KVM only.
  [ "${VMOTION_VAGRANT_DRIVER:-}" != kvm ] || observers=(--ping "$guest_addr" --workload "$guest_addr")
  ctl "$py" -m libvirt_vmotion migrate "$guest_name" \
    --from "qemu+tcp://$from/system" --to "qemu+tcp://$to/system" \
    "${observers[@]}" --timeout 1500 --report-file "$json" \
    | tee "$state/migrate-$from-$to.log" || true
  end
  [ -s "$json" ] || die "vmotion migrate $from -> $to wrote no report" "see $state/migrate-$from-$to.log"
  read -r -a after <<< "$(workload_status)"
  line=$(python3 - "$json" "$from -> $to" "${before[@]}" "${after[@]}" <<'PY'
import json
import sys

r = json.load(open(sys.argv[1]))
boot0, bad0, _, boot1, bad1, verified = sys.argv[3:9]
new_bad = int(bad1) - int(bad0)
print(
    f"{sys.argv[2]}: {r.get('result', '?')}, total {r.get('total_time_s', '?')} s "
    f"(QEMU {r.get('qemu_elapsed_ms', '?')} ms), downtime {r.get('downtime_ms', '?')} ms, "
    f"{r.get('iterations', '?')} iterations, {r.get('data_transferred_bytes', 0) / 2**20:.1f} MiB; "
    f"workload: new page mismatches {new_bad}, same boot {boot0 == boot1}, "
    f"{verified} pages verified"
)
sys.exit(0 if new_bad == 0 and boot0 == boot1 else 1)
PY
  ) || { report "$line"; die "the guest says the move was not clean: $line" "see $state/migrate-$from-$to.log"; }
  report "$line"
  at=$(where_is_guest)
  [ "$at" = "$to" ] || die "after migrating to $to the guest runs on: $at" "./run vagrant ssh kvm1"
  report "guest after $from -> $to runs on: $at (exactly one host)"
}

smoke() {
  local keep=0 rc
  [ "${1:-}" != --keep ] || keep=1
  smoke_start=$(date +%s)
  trap summary EXIT
  begin "box"; box_up; end
  begin "wheelhouse + guest image"; wheelhouse_up; guest_image_up; end
  export_env
  begin "libvirtd namespace"; ns_up; remove_leftovers; end
  # Both at once (the Vagrantfile makes one `vagrant up` do one host at a time):
  # kvm2 boots and provisions while kvm1's guest boots. kvm2 starts once kvm1's
  # domain exists, so only one of them creates the networks and the base volume.
  begin "up + provision kvm1 and kvm2"
  vg_logged up kvm1 > "$state/up-kvm1.log" &
  local up1=$!
  for _ in $(seq 1 900); do
    virsh -c "$uri" domstate vmotion-kvm1 >/dev/null 2>&1 && break
    kill -0 "$up1" 2>/dev/null || break
    sleep 2
  done
  vg_logged up kvm2 | sed -u 's/^/[kvm2] /'
  log "kvm2 is up; kvm1 (its guest boots under TCG inside TCG: minutes):"
  wait "$up1" || { sed 's/^/[kvm1] /' "$state/up-kvm1.log"; die "vagrant up kvm1 failed" "see $state/up-kvm1.log"; }
  sed 's/^/[kvm1] /' "$state/up-kvm1.log"
  end
  begin "cross checks"; cross_checks; end
  begin "vmotion check kvm1 -> kvm2"
  set +e
  ctl "$py" -m libvirt_vmotion check "$guest_name" \
    --from qemu+tcp://kvm1/system --to qemu+tcp://kvm2/system | tee "$state/check.log"
  rc=${PIPESTATUS[0]}
  set -e
  end
  report "vmotion check kvm1 -> kvm2: exit $rc"
  [ "$rc" = 0 ] || die "vmotion check found a blocker (exit $rc)" "see $state/check.log"
  migrate_once kvm1 kvm2
  migrate_once kvm2 kvm1
  if [ "$keep" = 1 ]; then
    log "--keep: VMs left up (./run vagrant ssh kvm1; ./run vagrant destroy)"
  else
    begin "destroy"; destroy; end
  fi
}

# Domains of this lab that Vagrant no longer knows (its .vagrant state is per
# checkout: a deleted clone leaves them behind, and `vagrant up` then refuses the
# name), with their disks. Found by the Vagrantfile's prefix, in our libvirtd only.
remove_leftovers() {
  local dom
  for dom in $(virsh -c "$uri" list --all --name | grep '^vmotion-kvm[0-9]*$' || true); do
    log "removing leftover domain $dom and its disk"
    virsh -c "$uri" destroy "$dom" >/dev/null 2>&1 || true
    virsh -c "$uri" undefine "$dom" --remove-all-storage >/dev/null
  done
}

destroy() {
  if libvirt_answers; then
    export_env
    vg destroy -f || true
    remove_leftovers
  fi
  ns_down
}

cmd=${1:-}
[ $# = 0 ] || shift
case "$cmd" in
  smoke) smoke "$@" ;;
  up)
    box_up; wheelhouse_up; guest_image_up; export_env; ns_up
    vg up "$@" ;;
  status)
    if libvirt_answers; then
      log "libvirtd in $ns answers at $uri (holder pid $(holder_pid || echo '?'))"
      export_env; vg status
    else
      log "libvirtd in $ns is not running (./run vagrant up starts it)"
    fi ;;
  ssh)
    libvirt_answers || die "the Vagrant lab is not up." "./run vagrant up"
    export_env; vg ssh "$@" ;;
  destroy) destroy ;;
  vagrant)
    libvirt_answers || die "the Vagrant lab is not up." "./run vagrant up"
    export_env; vg "$@" ;;
  *)
    sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
    [ -z "$cmd" ] || exit 2 ;;
esac
