"""The libvirt qemu hook: enforce reservations on a destination host.

I/O: reads argv and the domain XML on stdin, /proc/meminfo, /sys/class/net and
the host's reservation store; writes nothing to stdout (libvirt then keeps the
XML unchanged). It never imports or calls libvirt: libvirt runs hooks
synchronously and a hook calling back into it can deadlock.

libvirt calls ``/etc/libvirt/hooks/qemu.d/*`` with ``GUEST OP SUBOP EXTRA``:

- ``migrate begin`` (destination, before the incoming QEMU starts): run the
  destination-local checks (bridges exist, disk paths exist) and take the
  reservation, or verify the one ``vmotion migrate`` took; exit 1 with the
  reason on stderr to veto (libvirt passes the message back to the caller).
- ``started begin`` (the guest runs here): commit; a reservation nobody else
  owns (a plain ``virsh migrate``) is released at once, one a controller owns
  is kept for ``commit_grace_s`` for the controller to release.
- ``stopped end`` / ``release end``: the guest stopped here (an incoming
  migration failed, or it was shut down): release its reservation.

Install with ``python -m libvirt_vmotion hooks install`` (see ``install``).
"""

from __future__ import annotations

import os
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Final, TextIO

from libvirt_vmotion.errors import ReservationError, VmotionError
from libvirt_vmotion.model import QEMU_OVERHEAD_BYTES
from libvirt_vmotion.reserve.store import (
    HOOK_OWNER,
    ReservationRequest,
    ReservationStore,
    State,
    load_capacity,
)

HOOK_NAME: Final = "50-libvirt-vmotion"
AUDIT_LOG: Final = Path("/var/log/libvirt/vmotion-hook.log")
"""One line per decision the hook takes (libvirt itself logs only failures)."""


def build_shim(python: str) -> str:
    """Text of the hook script: exec ``python -m libvirt_vmotion.reserve.hook`` with the arguments.

    libvirt runs hooks with an almost empty environment, so the interpreter is
    written in as an absolute path at install time.
    """
    return (
        "#!/bin/sh\n"
        "# libvirt qemu hook of libvirt-vmotion: enforces pre-flight and reservations on a\n"
        "# migration destination. Never calls back into libvirt. Installed by\n"
        "# `python -m libvirt_vmotion hooks install`.\n"
        f'exec {python} -m libvirt_vmotion.reserve.hook "$@"\n'
    )


def installed_path(etc: Path) -> Path:
    """Where ``install`` puts the hook under ``etc`` (``/etc/libvirt``)."""
    return etc / "hooks" / "qemu.d" / HOOK_NAME


def install(*, etc: Path, python: str) -> Path:
    """Install the hook (idempotent); return its path."""
    path = installed_path(etc)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(build_shim(python))
    tmp.chmod(0o755)
    tmp.replace(path)
    return path


def uninstall(*, etc: Path) -> Path | None:
    """Remove the hook; return the path removed, or None if it was not there."""
    path = installed_path(etc)
    if not path.exists():
        return None
    path.unlink()
    return path


def status(*, etc: Path) -> str:
    """One line saying whether the hook is installed and what it runs."""
    path = installed_path(etc)
    if not path.exists():
        return f"not installed ({path} missing); install: python -m libvirt_vmotion hooks install"
    runs = next((line for line in path.read_text().splitlines() if line.startswith("exec ")), "")
    return f"installed: {path} ({runs})"


# --------------------------------------------------------------------------- hook actions


def _audit(line: str) -> None:
    try:
        with AUDIT_LOG.open("a") as fh:
            fh.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {line}\n")
    except OSError:
        pass  # auditing must never decide a migration


def _veto(domain: str, message: str, hint: str) -> int:
    _audit(f"veto migrate {domain}: {message}")
    sys.stderr.write(
        f"libvirt-vmotion on {socket.gethostname()} refused the migration of '{domain}': "
        f"{message} Hint: {hint}\n"
    )
    return 1


def _local_problems(xml: str) -> tuple[str, str] | None:
    """Destination-local checks: bridges and disk paths the guest needs exist here."""
    from libvirt_vmotion.preflight.domxml import guest_facts  # noqa: PLC0415  only at migrate begin

    facts = guest_facts(xml)
    for nic in facts.nics:
        if nic.kind == "bridge" and not Path(f"/sys/class/net/{nic.source}/bridge").exists():
            hint = (
                f"create bridge {nic.source} on {socket.gethostname()} or choose another host "
                "(vmotion check names every blocker)."
            )
            return f"bridge {nic.source} (NIC {nic.mac}) does not exist here.", hint
    for disk in facts.disks:
        if disk.source and disk.kind in {"file", "block"} and not Path(disk.source).exists():
            return (
                f"disk {disk.target} ({disk.source}) is not reachable here.",
                "put it on storage both hosts share, or copy it (--copy-storage-all).",
            )
    return None


def on_migrate_begin(domain: str, xml: str, *, store: ReservationStore, now_s: float) -> int:
    """Verify or take the reservation for an incoming migration; 1 vetoes it."""
    problem = _local_problems(xml)
    if problem is not None:
        return _veto(domain, *problem)
    capacity = load_capacity()
    mine = store.for_domain(domain, now_s=now_s)
    if mine is None:
        from libvirt_vmotion.preflight.domxml import guest_facts  # noqa: PLC0415
        from libvirt_vmotion.reserve.hostops import mem_available_bytes  # noqa: PLC0415

        facts = guest_facts(xml)
        request = ReservationRequest(
            reservation_id=f"hook-{uuid.uuid4()}",
            domain=domain,
            owner=HOOK_OWNER,
            memory_bytes=facts.memory_bytes + QEMU_OVERHEAD_BYTES,
            vcpus=facts.vcpus,
        )
        try:
            mine = store.reserve(
                request,
                capacity=capacity,
                mem_available_bytes=mem_available_bytes(),
                now_s=now_s,
            )
        except ReservationError as exc:
            return _veto(domain, exc.message, exc.hint)
    store.set_state(
        mine.reservation_id, State.INCOMING, lease_s=capacity.incoming_lease_s, now_s=now_s
    )
    _audit(f"incoming migrate {domain}: reservation {mine.reservation_id} ({mine.owner})")
    return 0


def on_started(domain: str, *, store: ReservationStore, now_s: float) -> None:
    """The guest runs here: commit (and release what nobody else will)."""
    mine = store.for_domain(domain, now_s=now_s)
    if mine is None or mine.state is not State.INCOMING:
        return
    if mine.owner == HOOK_OWNER:
        store.release(now_s=now_s, reservation_id=mine.reservation_id)
        _audit(f"started {domain}: committed and released {mine.reservation_id}")
        return
    capacity = load_capacity()
    store.set_state(
        mine.reservation_id, State.COMMITTED, lease_s=capacity.commit_grace_s, now_s=now_s
    )
    _audit(f"started {domain}: committed {mine.reservation_id} for its owner to release")


def on_stopped(domain: str, *, store: ReservationStore, now_s: float) -> None:
    """The guest stopped here (a failed incoming migration, or shut down): release."""
    if store.release(now_s=now_s, domain=domain):
        _audit(f"stopped {domain}: released its reservation")


def main(argv: list[str], stdin: TextIO) -> int:
    """Hook entry: ``GUEST OP SUBOP EXTRA`` with the domain XML on stdin."""
    if len(argv) < 3:  # libvirt always passes four arguments
        return 0
    domain, op, subop = argv[0], argv[1], argv[2]
    store = ReservationStore(host=socket.gethostname())
    now_s = time.time()
    try:
        if op == "migrate" and subop == "begin":
            return on_migrate_begin(domain, stdin.read(), store=store, now_s=now_s)
        if op == "started" and subop == "begin":
            on_started(domain, store=store, now_s=now_s)
        elif op in {"stopped", "release"} and subop == "end":
            on_stopped(domain, store=store, now_s=now_s)
    except Exception as exc:  # noqa: BLE001  a hook must report, never crash with a traceback
        detail = exc.message if isinstance(exc, VmotionError) else f"{type(exc).__name__}: {exc}"
        sys.stderr.write(f"libvirt-vmotion hook {op} {subop} for '{domain}': {detail}\n")
        # Veto only at the veto point; elsewhere never block libvirt on our own failure.
        return 1 if op == "migrate" else 0
    return 0


if __name__ == "__main__":
    os.umask(0o077)
    raise SystemExit(main(sys.argv[1:], sys.stdin))
