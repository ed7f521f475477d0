# Helpers shared by the Vagrant lab's provisioning scripts (sourced, not run).
#
# Every change goes through put_file, put_block or set_conf: each writes only
# when the content differs and then adds 1 to CHANGES, so a caller can compare
# CHANGES before and after a group of writes and restart a daemon only when
# something it reads really changed. That is what makes `vagrant provision`
# safe to re-run: a second run writes nothing and restarts nothing.
# shellcheck shell=bash

CHANGES=0
BLOCK_BEGIN="# BEGIN libvirt-vmotion vagrant lab (managed by vagrant/provision-host.sh)"
BLOCK_END="# END libvirt-vmotion vagrant lab"

log() { printf '==> %s\n' "$*"; }

# die MESSAGE [HINT]: the project's error style (error: / hint:), then exit 1.
die() {
  printf 'error: %s\n' "$1" >&2
  if [ -n "${2:-}" ]; then printf 'hint: %s\n' "$2" >&2; fi
  exit 1
}

# _install_if_changed MODE PATH TMP: move TMP to PATH unless PATH already has that
# content (then only its mode is fixed). Keeps the inode of an existing file (cat >),
# so files other tools hold open or own (/etc/hosts) stay the same file.
_install_if_changed() {
  local mode=$1 path=$2 tmp=$3
  if [ -f "$path" ] && cmp -s "$tmp" "$path"; then
    chmod "$mode" "$path"
    rm -f "$tmp"
    return 0
  fi
  mkdir -p "$(dirname "$path")"
  if [ -f "$path" ]; then
    cat "$tmp" > "$path"
  else
    install -m "$mode" "$tmp" "$path"
  fi
  chmod "$mode" "$path"
  rm -f "$tmp"
  CHANGES=$((CHANGES + 1))
  printf '    wrote %s\n' "$path"
}

# put_file MODE PATH < CONTENT: PATH holds exactly CONTENT (the whole file is ours).
put_file() {
  local mode=$1 path=$2 tmp
  tmp=$(mktemp)
  cat > "$tmp"
  _install_if_changed "$mode" "$path" "$tmp"
}

# put_block MODE PATH < CONTENT: PATH ends with CONTENT between our BEGIN/END
# markers; lines outside the markers are left alone (for files that other tools
# or the box also write: /etc/hosts, authorized_keys, ssh_known_hosts).
put_block() {
  local mode=$1 path=$2 tmp
  tmp=$(mktemp)
  if [ -f "$path" ]; then
    awk -v b="$BLOCK_BEGIN" -v e="$BLOCK_END" \
      '$0 == b {skip = 1; next} $0 == e {skip = 0; next} !skip' "$path" > "$tmp"
  fi
  { printf '%s\n' "$BLOCK_BEGIN"; cat; printf '%s\n' "$BLOCK_END"; } >> "$tmp"
  _install_if_changed "$mode" "$path" "$tmp"
}

# set_conf FILE KEY VALUE: exactly one active "KEY = VALUE" line in a libvirt
# config file (libvirtd.conf, qemu.conf). These are package conffiles with every
# setting commented out and no drop-in directory, so we replace our key's active
# lines and append ours; the commented defaults stay for reference.
set_conf() {
  local file=$1 key=$2 value=$3 tmp
  tmp=$(mktemp)
  awk -v k="$key" '
    { line = $0; sub(/^[ \t]+/, "", line) }
    index(line, k) == 1 && substr(line, length(k) + 1) ~ /^[ \t]*=/ { next }
    { print }
  ' "$file" > "$tmp"
  printf '%s = %s\n' "$key" "$value" >> "$tmp"
  # Unchanged when the only difference would be moving our line to the end.
  if [ "$(grep -c -E "^[[:space:]]*${key}[[:space:]]*=" "$file")" = 1 ] \
     && grep -q -x -F "$key = $value" "$file"; then
    rm -f "$tmp"
    return 0
  fi
  _install_if_changed "$(stat -c %a "$file")" "$file" "$tmp"
}

# read_hosts: fill the arrays HOST_NAMES and HOST_ADDRS from VMOTION_HOSTS
# ("kvm1=10.77.10.11 kvm2=10.77.10.12", from the Vagrantfile's HOSTS table).
read_hosts() {
  local entry entries
  HOST_NAMES=()
  HOST_ADDRS=()
  read -r -a entries <<< "${VMOTION_HOSTS:?set by the Vagrantfile}"
  for entry in "${entries[@]}"; do
    HOST_NAMES+=("${entry%%=*}")
    HOST_ADDRS+=("${entry#*=}")
  done
}
