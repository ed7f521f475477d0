"""Ask the lab guest's own workload, not our report, whether it lost anything.

The report's ``workload`` section is our reading of the guest, taken the moment
the migration ended: a page that arrived stale is only found when the guest's
verifier next reads it. These helpers ask the guest itself (``vmotion lab guest
status`` in the lab's client namespace, where the guest's address is reachable)
and first wait for whole verification passes that started after the call, so
every page (and every acknowledged disk-log record) was re-read where the guest
now runs.
"""

from __future__ import annotations

import subprocess
import time

from libvirt_vmotion.lab import guestctl
from libvirt_vmotion.observe.workload import WorkloadStatus

VERIFY_WAIT_S = 120.0
"""Longest wait for the guest's verifier to finish a pass that started after the move."""


def guest_status() -> WorkloadStatus:
    """The workload's status as the guest reports it now."""
    done = subprocess.run(
        guestctl.client_command(guestctl.self_command("lab", "guest", "status")),
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return WorkloadStatus.from_json(done.stdout[done.stdout.index("{") :])


def verified_guest_status(timeout_s: float = VERIFY_WAIT_S) -> WorkloadStatus:
    """The guest's status once it re-read its whole working set (and disk log) after now.

    Two more completed passes guarantee that one of them started after this call.
    """
    first = status = guest_status()
    deadline_s = time.monotonic() + timeout_s

    def verified(s: WorkloadStatus) -> bool:
        memory = s.verify_passes >= first.verify_passes + 2
        disk = not s.disk or s.disk_verify_passes >= first.disk_verify_passes + 2
        return memory and disk

    while not verified(status):
        assert time.monotonic() < deadline_s, f"the guest verified no whole pass: {status}"
        time.sleep(0.5)
        status = guest_status()
    return status


def guest_mismatches() -> int:
    """Pages the guest found stale since its workload started, after a full re-read."""
    return verified_guest_status().mismatches
