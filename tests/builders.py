"""Builders shared by the test tiers (tenacity's ``make_retry_state`` idea).

On the import path through pytest's ``pythonpath = ["tests"]`` (pyproject), so a
test module says ``from builders import make_sample``.
"""

from __future__ import annotations

from collections.abc import Mapping

from libvirt_vmotion.model import MIB, JobSample

PAGE_SIZE = 4096


def make_sample(
    *,
    now_s: float = 1.0,
    iteration: int = 2,
    remaining_mib: float = 40.0,
    bw_mib_s: float = 30.0,
    dirty_mib_s: float = 0.0,
    processed_mib: float = 0.0,
    memory_mib: float = 512.0,
    active: bool = True,
    stats: Mapping[str, object] | None = None,
) -> JobSample:
    """A job sample as ``virDomain.jobStats()`` would give it, in MiB and MiB/s.

    Args:
        now_s: when it was read (also QEMU's elapsed time).
        iteration: QEMU's memory iteration (1: the bulk pass).
        remaining_mib: data still to send.
        bw_mib_s: transfer rate.
        dirty_mib_s: the guest's dirty rate as QEMU reports it (0 until round 2).
        processed_mib: data sent so far.
        memory_mib: guest RAM (data and memory totals).
        active: a running job (libvirt type 2) or a completed one (3).
        stats: raw libvirt keys laid over the ones built from the figures (for
            tests of the normalization itself).

    """
    raw: dict[str, object] = {
        "type": 2 if active else 3,
        "time_elapsed": int(now_s * 1000),
        "data_total": int(memory_mib * MIB),
        "data_processed": int(processed_mib * MIB),
        "data_remaining": int(remaining_mib * MIB),
        "memory_total": int(memory_mib * MIB),
        "memory_remaining": int(remaining_mib * MIB),
        "memory_bps": int(bw_mib_s * MIB),
        "memory_dirty_rate": int(dirty_mib_s * MIB / PAGE_SIZE),
        "memory_iteration": iteration,
        "memory_page_size": PAGE_SIZE,
        **(stats or {}),
    }
    return JobSample.from_job_stats(raw, now_s=now_s)
