"""A destination's prepare step that never returns, and how it is ended.

libvirt's prepare step starts the incoming QEMU on the destination: libvirtd
forks, the child writes the domain's pidfile, runs the lock manager's hook and
then execs QEMU. Seen in the lab (libvirt 11.3, ``lock_manager = "lockd"``, two
incoming guests at once): the child deadlocked in that gap, on a lock another
thread of libvirtd held when it forked. The prepare step then never returns,
and neither ``abortJob`` on the source nor ``virsh destroy`` on the destination
can end it (both wait for it). Killing that child ends it: libvirt sees its
QEMU die, the prepare step fails, and the source's migration fails with it.

The controller asks for this (``converge.machine.FreeStuckPrepare``) only while
nothing has been sent, so the guest's only state is on the source; it aborts
nothing itself (a QEMU slow to start still gets there). The host
side kills the pidfile's process only if it is not a QEMU (a QEMU that is slow
to start, e.g. preallocating memory, is left alone) and started within the
wait, so it belongs to this migration.

I/O: the destination's ``/proc`` and libvirt's run directory (host side);
our agent (client side).
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from libvirt_vmotion.adapters import ops

if TYPE_CHECKING:
    from libvirt_vmotion.adapters.agent import RemoteHost

QEMU_RUN_DIR: Final = Path("/run/libvirt/qemu")
"""Where the system libvirtd (or virtqemud) keeps each running domain's pidfile."""
_CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")


def is_qemu(exe_name: str) -> bool:
    """Whether a process's executable is a QEMU (then it is starting, not stuck in libvirt).

    >>> is_qemu("qemu-system-x86_64"), is_qemu("qemu-kvm"), is_qemu("libvirtd")
    (True, True, False)
    >>> is_qemu("libvirtd (deleted)"), is_qemu("sleep")
    (False, False)
    """
    return exe_name.startswith(("qemu-system-", "qemu-kvm"))


def why_left(exe_name: str, *, age_s: float, younger_than_s: float) -> str:
    """Why the pidfile's process is not this migration's stuck fork ("": it is; kill it).

    >>> why_left("libvirtd", age_s=3.0, younger_than_s=125.0)
    ''
    >>> why_left("qemu-system-x86_64", age_s=3.0, younger_than_s=125.0)
    'is QEMU, still starting'
    >>> why_left("sleep", age_s=300.0, younger_than_s=125.0)
    '(sleep) is 300 s old, older than this migration'
    """
    if is_qemu(exe_name):
        return "is QEMU, still starting"
    if age_s > younger_than_s:
        return f"({exe_name}) is {age_s:.0f} s old, older than this migration"
    return ""


def _age_s(pid: int) -> float:
    """Seconds since ``pid`` started (from /proc: its start time and the boot time)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    started_ticks = int(fields[19])  # field 22 of stat(5), counted after the name
    uptime_s = float(Path("/proc/uptime").read_text().split()[0])
    return uptime_s - started_ticks / _CLOCK_TICKS


def op_free_stuck_prepare(args: Mapping[str, object]) -> dict[str, object]:
    """Agent op ``free-stuck-prepare``: kill the incoming guest's process if it is not QEMU."""
    domain = str(args.get("domain", ""))
    younger_than_s = float(args.get("younger_than_s", 0))  # type: ignore[arg-type]
    if not domain or "/" in domain or domain.startswith("."):
        return {"killed_pid": 0, "exe": "", "note": f"not a guest name: {domain!r}"}
    pidfile = QEMU_RUN_DIR / f"{domain}.pid"
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return {
            "killed_pid": 0,
            "exe": "",
            "note": f"no pidfile {pidfile}: libvirt started no process",
        }
    try:
        exe = Path(f"/proc/{pid}/exe").readlink().name
        age_s = _age_s(pid)
    except (OSError, ValueError, IndexError):
        return {"killed_pid": 0, "exe": "", "note": f"process {pid} ({pidfile}) is gone"}
    left = why_left(exe, age_s=age_s, younger_than_s=younger_than_s)
    if left:
        return {"killed_pid": 0, "exe": exe, "note": f"process {pid} {left}: left"}
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    note = f"killed process {pid} ({exe}), started for the incoming guest but not a QEMU"
    return {"killed_pid": pid, "exe": exe, "note": note}


@dataclass(frozen=True, slots=True)
class AgentPrepareRescue:
    """The controller's ``PrepareRescue`` port: the destination's agent ends a stuck prepare."""

    agent: RemoteHost

    def free_stuck_prepare(self, domain: str, *, waited_s: float) -> tuple[bool, str]:
        """Whether a process was killed there, and what was done, in words for the error."""
        reply = ops.FREE_STUCK_PREPARE.call(
            self.agent,
            ops.FreePrepareRequest(domain=domain, younger_than_s=waited_s + 5.0),
            timeout_s=15.0,
        )
        return reply.killed_pid > 0, f"{self.agent.label}: {reply.note}"
