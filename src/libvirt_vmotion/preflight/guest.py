"""Pre-flight checks on the guest's state: running, and no other job on it.

Pure: no I/O, no clock, no logging. Checks ``guest-running`` and ``no-job-running``.
"""

from __future__ import annotations

from libvirt_vmotion.preflight.facts import PreflightFacts
from libvirt_vmotion.preflight.result import CheckResult, Verdict, bad, ok


def check_guest_running(f: PreflightFacts) -> tuple[CheckResult, ...]:
    """Live migration needs a running (or paused) guest."""
    if f.guest.state in {"running", "paused"}:
        return (ok("guest-running", f"'{f.guest.name}' is {f.guest.state}"),)
    return (
        bad(
            "guest-running",
            Verdict.BLOCKER,
            f"Guest '{f.guest.name}' is {f.guest.state}; live migration needs it running.",
            observed=f.guest.state,
            required="running",
            hint=f"Start it first (virsh -c {f.source.uri} start {f.guest.name}).",
        ),
    )


def check_no_job(f: PreflightFacts) -> tuple[CheckResult, ...]:
    """Only one job per guest: a running migration, dump or save must finish first."""
    if not f.guest.job_active:
        return (ok("no-job-running", "no job in progress"),)
    return (
        bad(
            "no-job-running",
            Verdict.BLOCKER,
            f"Guest '{f.guest.name}' already has a job in progress (migration, save or dump).",
            observed="job active",
            required="no job",
            hint=f"Wait for it, or abort it: virsh -c {f.source.uri} domjobabort {f.guest.name}.",
        ),
    )
