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

Install with ``vmotion hooks install`` (see ``install``; the shim is ``build_shim``).
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TextIO

from libvirt_vmotion.errors import ReservationError, VmotionError
from libvirt_vmotion.model import QEMU_OVERHEAD_BYTES
from libvirt_vmotion.reserve.store import (
    HOOK_OWNER,
    STORE_PATH,
    ReservationRequest,
    ReservationStore,
    StoreBusy,
    load_capacity,
)

HOOK_NAME: Final = "50-libvirt-vmotion"
AUDIT_LOG: Final = Path("/var/log/libvirt/vmotion-hook.log")
"""One line per decision the hook takes (libvirt itself logs only failures)."""
HOOK_BUSY_TIMEOUT_S: Final = 2.0
"""Longest wait for the reservation store's lock inside libvirt's synchronous hook.

libvirtd waits for the hook (the caller's migration with it), so a store another
process keeps locked costs at most this long: each hook call is one transaction."""


def hook_store(path: Path = STORE_PATH) -> ReservationStore:
    """The reservation store as the hook opens it (short busy timeout)."""
    return ReservationStore(path, host=socket.gethostname(), busy_timeout_s=HOOK_BUSY_TIMEOUT_S)


_MODULE: Final = __name__
"""The module the shim imports (``run``); follows the package layout."""
_REINSTALL: Final = "reinstall: vmotion hooks install"
_BOOTSTRAP: Final = """import sys, time
try:
    from {module} import run
except ImportError as exc:
    try:
        with open({log}, "a") as fh:
            fh.write(time.strftime("%Y-%m-%dT%H:%M:%S") + " hook skipped ("
                     + " ".join(sys.argv[1:4]) + "): " + sys.executable
                     + " cannot import {module}: " + str(exc) + "; {reinstall}\\n")
    except OSError:
        pass
    sys.exit(0)
sys.exit(run(sys.argv[1:]))
"""
"""The interpreter's first lines: an interpreter without the package lets libvirt go on."""


HANDLED: Final = (
    ("migrate", "begin"),
    ("started", "begin"),
    ("stopped", "end"),
    ("release", "end"),
)
"""The (operation, sub-operation) pairs ``main`` acts on; the shim passes only these to Python."""
HANDLED_PATTERN: Final = "|".join(f'"{op} {sub}"' for op, sub in HANDLED)


def build_shim(python: str, *, log: Path = AUDIT_LOG) -> str:
    """Text of the hook script: run ``python`` isolated on our hook module, failing open.

    libvirt runs hooks with an almost empty environment, so the interpreter is
    written in as an absolute path at install time (quoted: any path works). It
    runs isolated (``-I``) in ``/``, like every child Python of ours
    (``agent.ISOLATED``). A hook exiting non-zero stops libvirt from starting
    the guest, so the shim fails open: when that interpreter is gone, or no
    longer imports the package (uninstalled, upgraded away), it appends one line
    to ``log`` and exits 0, for every operation it handles (``HANDLED``); only
    the hook's own decision (a veto at ``migrate begin``) exits non-zero. Every
    other operation exits 0 at once, without Python: libvirt runs the hook
    synchronously at each step of a guest's start, an incoming migration's too.
    """
    bootstrap = _BOOTSTRAP.format(module=_MODULE, log=json.dumps(str(log)), reinstall=_REINSTALL)
    return (
        "#!/bin/sh\n"
        "# libvirt qemu hook of libvirt-vmotion: enforces reservations on a migration\n"
        "# destination; never calls back into libvirt. Written by `vmotion hooks install`;\n"
        "# fails open: without its interpreter or package it logs one line and exits 0.\n"
        f"PYTHON={shlex.quote(python)}\n"
        f"LOG={shlex.quote(str(log))}\n"
        "cd / || exit 0\n"
        "# Only these operations concern reservations; libvirt waits for every hook run,\n"
        "# so the others (prepare, start, reconnect ...) do not start an interpreter.\n"
        'case "$2 $3" in\n'
        f"    {HANDLED_PATTERN}) ;;\n"
        "    *) exit 0 ;;\n"
        "esac\n"
        'if [ ! -x "$PYTHON" ]; then\n'
        f"    printf '%s hook skipped (%s %s %s): interpreter %s is missing; {_REINSTALL}\\n' \\\n"
        '        "$(date +%Y-%m-%dT%H:%M:%S)" "$1" "$2" "$3" "$PYTHON" >>"$LOG" 2>/dev/null\n'
        "    exit 0\n"
        "fi\n"
        f'exec "$PYTHON" -I -c {shlex.quote(bootstrap)} "$@"\n'
    )


def shim_python(text: str) -> str | None:
    """The interpreter a shim ``build_shim`` wrote points at (None: not one of ours)."""
    for line in text.splitlines():
        if line.startswith("PYTHON="):
            words = shlex.split(line.removeprefix("PYTHON="))
            return words[0] if len(words) == 1 else None
    return None


def installed_path(etc: Path) -> Path:
    """Where ``install`` puts the hook under ``etc`` (``/etc/libvirt``)."""
    return etc / "hooks" / "qemu.d" / HOOK_NAME


def _cannot(*, action: str, path: Path, exc: OSError) -> VmotionError:
    msg = f"cannot {action} the hook at {path}: {exc.strerror or exc}"
    return VmotionError(
        msg,
        hint="Run it as root on the host that receives guests (sudo vmotion hooks "
        f"{action}), or give a directory you can write with --etc DIR.",
    )


def install(*, etc: Path, python: str) -> Path:
    """Install the hook (idempotent); return its path.

    Raises:
        VmotionError: the directory cannot be written (not root, read-only ...).

    """
    path = installed_path(etc)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(build_shim(python))
        tmp.chmod(0o755)
        tmp.replace(path)
    except OSError as exc:
        raise _cannot(action="install", path=path, exc=exc) from exc
    return path


def uninstall(*, etc: Path) -> Path | None:
    """Remove the hook; return the path removed, or None if it was not there.

    Raises:
        VmotionError: it cannot be removed (not root ...).

    """
    path = installed_path(etc)
    if not path.exists():
        return None
    try:
        path.unlink()
    except OSError as exc:
        raise _cannot(action="uninstall", path=path, exc=exc) from exc
    return path


@dataclass(frozen=True, slots=True)
class HookStatus:
    """What ``hooks status`` says: one line, and whether the hook would run."""

    line: str
    healthy: bool


def status(*, etc: Path) -> HookStatus:
    """Whether the hook is installed, where its shim points, and whether that imports us."""
    path = installed_path(etc)
    if not path.exists():
        return HookStatus(
            f"not installed ({path} missing); install: vmotion hooks install", healthy=False
        )
    python = shim_python(path.read_text())
    if python is None:
        return HookStatus(
            f"installed: {path}, but not a shim this version wrote; {_REINSTALL}", healthy=False
        )
    broken = f"installed: {path} -> {python}, which"
    unchecked = f"the hook lets every guest through unchecked (it fails open); {_REINSTALL}"
    if not os.access(python, os.X_OK):
        return HookStatus(f"{broken} is missing: {unchecked}", healthy=False)
    try:
        probe = subprocess.run(
            [
                python,
                "-I",
                "-c",
                f"import {_MODULE}, libvirt_vmotion; print(libvirt_vmotion.__version__)",
            ],
            capture_output=True,
            text=True,
            cwd="/",
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return HookStatus(f"{broken} cannot run ({exc}): {unchecked}", healthy=False)
    version = probe.stdout.strip()
    if probe.returncode != 0 or not version:
        why = (probe.stderr.strip().splitlines() or [f"exit {probe.returncode}, no version"])[-1]
        return HookStatus(f"{broken} cannot import {_MODULE} ({why}): {unchecked}", healthy=False)
    return HookStatus(
        f"installed: {path} -> {python} -I (imports {_MODULE}, {version})", healthy=True
    )


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
    from libvirt_vmotion.preflight.domxml import (  # noqa: PLC0415  only at migrate begin
        guest_facts,
        interface_name_problem,
    )

    facts = guest_facts(xml)
    for nic in facts.nics:
        bad_name = interface_name_problem(nic.source) if nic.kind == "bridge" else None
        if bad_name is not None:
            return f"NIC {nic.mac}: {bad_name}.", "fix the guest's <source bridge=...>."
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
                (
                    "put it on storage both hosts share, or migrate with "
                    "vmotion migrate --copy-storage (copies the disk)."
                ),
            )
    return None


def on_migrate_begin(domain: str, xml: str, *, store: ReservationStore, now_s: float) -> int:
    """Verify or take the reservation for an incoming migration; 1 vetoes it."""
    problem = _local_problems(xml)
    if problem is not None:
        return _veto(domain, *problem)
    from libvirt_vmotion.preflight.domxml import guest_facts  # noqa: PLC0415  only at migrate begin
    from libvirt_vmotion.reserve.hostops import mem_available_bytes  # noqa: PLC0415

    capacity = load_capacity()
    facts = guest_facts(xml)
    request = ReservationRequest(
        reservation_id=f"hook-{uuid.uuid4()}",
        domain=domain,
        owner=HOOK_OWNER,
        memory_bytes=facts.memory_bytes + QEMU_OVERHEAD_BYTES,
        vcpus=facts.vcpus,
    )
    try:
        mine = store.take_incoming(
            request, capacity=capacity, mem_available_bytes=mem_available_bytes(), now_s=now_s
        )
    except ReservationError as exc:  # StoreBusy too: the veto says the store was locked
        return _veto(domain, exc.message, exc.hint)
    _audit(f"incoming migrate {domain}: reservation {mine.reservation_id} ({mine.owner})")
    return 0


def on_started(domain: str, *, store: ReservationStore, now_s: float) -> None:
    """The guest runs here: commit (and release what nobody else will)."""
    done = store.commit_started(domain, commit_grace_s=load_capacity().commit_grace_s, now_s=now_s)
    if done is None:
        return
    mine, released = done
    if released:
        _audit(f"started {domain}: committed and released {mine.reservation_id}")
    else:
        _audit(f"started {domain}: committed {mine.reservation_id} for its owner to release")


def on_stopped(domain: str, *, store: ReservationStore, now_s: float) -> None:
    """The guest stopped here (a failed incoming migration, or shut down): release.

    A locked store does not hold libvirt up and does not leak the reservation:
    the release is deferred to the store's next transaction.
    """
    try:
        released = store.release(now_s=now_s, domain=domain)
    except StoreBusy as exc:
        marker = store.defer_release(domain=domain, now_s=now_s)
        _audit(f"gave up releasing {domain} now ({exc.message}); deferred as {marker}")
        sys.stderr.write(
            f"libvirt-vmotion hook: {exc.message}; the release of '{domain}' is deferred to "
            "the store's next use\n"
        )
        return
    if released:
        _audit(f"stopped {domain}: released its reservation")


def main(argv: list[str], stdin: TextIO, *, store: ReservationStore | None = None) -> int:
    """Hook entry: ``GUEST OP SUBOP EXTRA`` with the domain XML on stdin."""
    if len(argv) < 3:  # libvirt always passes four arguments
        return 0
    domain, op, subop = argv[0], argv[1], argv[2]
    if (op, subop) not in HANDLED:
        return 0
    store = store or hook_store()
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
        _audit(f"gave up on {op} {subop} for {domain}: {detail}")
        # Veto only at the veto point; elsewhere never block libvirt on our own failure.
        return 1 if op == "migrate" else 0
    return 0


def run(argv: list[str]) -> int:
    """Entry of the shim (``build_shim``): ``main`` on stdin, files private to root."""
    os.umask(0o077)
    return main(argv, sys.stdin)


if __name__ == "__main__":
    raise SystemExit(run(sys.argv[1:]))
