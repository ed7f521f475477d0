"""Pre-flight check that each disk is reachable on the destination, or will be copied.

Pure: no I/O, no clock, no logging. Check ``storage``; the disk handover's own
checks (``disk-cache``, ``lock-manager``, ``dest-disk-space``) and the copy plan
this one consults live in ``libvirt_vmotion.storage``.
"""

from __future__ import annotations

from libvirt_vmotion import storage
from libvirt_vmotion.checks.facts import PreflightFacts
from libvirt_vmotion.checks.result import CheckResult, Verdict, bad, ok


def check_storage(f: PreflightFacts) -> tuple[CheckResult, ...]:
    """Each disk is on storage the destination sees at the same path, or is network storage."""
    results = []
    for disk in f.guest.disks:
        subject = f"disk {disk.target}"
        if not disk.source:
            results.append(ok("storage", "no medium", subject=subject))
            continue
        if disk.kind == "network":
            results.append(ok("storage", f"network storage {disk.source}", subject=subject))
            continue
        view = f.disks.get(disk.source)
        if storage.will_copy(f, disk.source):
            results.append(
                ok("storage", f"{disk.source} is copied to {f.dest.hostname}", subject=subject)
            )
        elif view is not None and view.visible:
            results.append(ok("storage", f"{disk.source} shared ({view.how})", subject=subject))
        elif view is not None and view.visible is False:
            results.append(
                bad(
                    "storage",
                    Verdict.BLOCKER,
                    f"{subject} ({disk.source}) is not reachable on {f.dest.hostname} "
                    f"({view.how})"
                    + (
                        " and copying was turned off (--no-copy-storage)."
                        if f.storage is not None
                        else "; it would have to be copied (--copy-storage)."
                    ),
                    observed="not present on the destination",
                    required="same path on shared storage, or a copy",
                    hint="Put the disk on storage both hosts share (same path), or let it be "
                    "copied (drop --no-copy-storage, or pass --copy-storage).",
                    subject=subject,
                )
            )
        else:
            why = view.how if view is not None else "no storage pool covers it"
            results.append(
                bad(
                    "storage",
                    Verdict.WARNING,
                    f"Could not tell whether {disk.source} is shared with "
                    f"{f.dest.hostname}: {why}.",
                    observed="unknown",
                    required="same path on shared storage",
                    hint="Define a storage pool over it on the destination, or install "
                    "libvirt-vmotion there so it can check.",
                    subject=subject,
                )
            )
    return tuple(results)
