# Shared by scripts/install-*.sh (sourced): root check, and no daemon starts.
# shellcheck shell=bash

# need_root WHAT: exit 2 with error:/hint: unless running as root.
need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "error: installing $1 needs root." >&2
    echo "hint: run this as root (sudo $0)." >&2
    exit 2
  fi
}

# no_daemon_starts: package scripts must not start daemons while we install (the
# labs start their own, per namespace); undone when the calling script exits.
no_daemon_starts() {
  export DEBIAN_FRONTEND=noninteractive
  policy=/usr/sbin/policy-rc.d
  policy_added=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; policy_added=1
  fi
  trap '[ "$policy_added" = 1 ] && rm -f "$policy"' EXIT
}
