"""Value objects shared by the migration code.

Pure: no I/O, no clock, no logging. Job statistics are normalized here, at the
edge, so the rest of the code never sees libvirt's raw dictionaries.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

MIB: Final = 1024 * 1024
QEMU_OVERHEAD_BYTES: Final = 256 * MIB
"""Memory a QEMU process needs beyond guest RAM (page tables, device state, TCG cache).

The one figure the destination's memory check, the reservation and the qemu hook
all count; 256 MiB covered every guest we ran in the lab."""


class JobType(StrEnum):
    """libvirt's ``virDomainJobType``, as a word (``JobSample.job_type``)."""

    NONE = "none"
    BOUNDED = "bounded"
    UNBOUNDED = "unbounded"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"
    """A number this libvirt binding does not know."""


# libvirt's virDomainJobType values (libvirt-domain.h); kept here so this module
# stays free of ``import libvirt``.
_JOB_TYPES: Final = {
    0: JobType.NONE,
    1: JobType.BOUNDED,
    2: JobType.UNBOUNDED,
    3: JobType.COMPLETED,
    4: JobType.FAILED,
    5: JobType.CANCELLED,
}


class Phase(StrEnum):
    """Phase of a live migration as the user sees it."""

    SETUP = "setup"
    BULK_COPY = "bulk-copy"
    CONVERGING = "converging"
    SWITCHOVER = "switchover"
    DONE = "done"


class Compression(StrEnum):
    """Whether the memory stream is compressed (``--compression``, ``compression`` in a policy).

    ``auto``: zstd over multifd streams when the forecast says the link, not the
    sender, is the limit and pre-copy converges (QEMU 10.0 cannot combine multifd
    with post-copy, so a guest that may need post-copy is not compressed).
    ``zstd``: always (and no post-copy). ``none``: never.
    """

    AUTO = "auto"
    ZSTD = "zstd"
    NONE = "none"


class TlsMode(StrEnum):
    """Whether the migration streams are encrypted (``--tls``, ``tls`` in a policy file).

    ``auto``: encrypt when both hosts are configured for migration TLS, else migrate
    in plaintext and say so (the ``migrate-tls`` warning). ``require``: a host
    without it is a blocker. ``off``: plaintext, by request.
    """

    AUTO = "auto"
    REQUIRE = "require"
    OFF = "off"


class DirtyRateSource(StrEnum):
    """Where a dirty rate we show comes from (the progress line and the report say it)."""

    QEMU = "qemu"
    """libvirt's ``memory_dirty_rate`` job statistic, measured by QEMU during the migration."""
    PREFLIGHT = "pre-flight"
    """Pre-flight's measurement with libvirt's dirty-rate API, just before the migration."""


def shown_dirty_rate(
    qemu_mib_s: float, *, qemu_has_reported: bool, preflight_mib_s: float | None
) -> tuple[float, DirtyRateSource]:
    """The dirty rate to show, and its source: QEMU's once it has reported one.

    QEMU reports ``memory_dirty_rate`` as 0 until it has completed a full round,
    so a short migration may never see a figure from it; showing 0 would claim
    an idle guest. Until then pre-flight's measurement of the same guest, taken
    seconds earlier, is the best figure we have, labelled as such.

    ===============  =================  ===============  ===================
    qemu_mib_s       qemu_has_reported  preflight_mib_s  shown
    ===============  =================  ===============  ===================
    0.0              False              18.0             18.0, pre-flight
    0.0              False              None             0.0, qemu
    25.0             True               18.0             25.0, qemu
    0.0              True               18.0             0.0, qemu (idle now)
    ===============  =================  ===============  ===================

    Args:
        qemu_mib_s: QEMU's current (or peak) dirty rate.
        qemu_has_reported: QEMU has reported a non-zero rate earlier in this migration.
        preflight_mib_s: pre-flight's measurement, None if it did not measure.

    Returns:
        The rate in MiB/s and where it comes from.

    """
    if qemu_has_reported or qemu_mib_s > 0 or preflight_mib_s is None:
        return qemu_mib_s, DirtyRateSource.QEMU
    return preflight_mib_s, DirtyRateSource.PREFLIGHT


def _int(stats: Mapping[str, object], key: str) -> int:
    value = stats.get(key, 0)
    return int(value) if isinstance(value, int | float) else 0


@dataclass(frozen=True, slots=True)
class JobSample:
    """One normalized reading of a migration job's statistics.

    ``memory_dirty_rate_pages_s`` is libvirt's ``memory_dirty_rate``: pages per
    second, reported as 0 during the first iteration (QEMU only knows it after
    one full pass).
    """

    now_s: float
    job_type: JobType
    elapsed_ms: int
    data_total_bytes: int
    data_processed_bytes: int
    data_remaining_bytes: int
    memory_total_bytes: int
    memory_remaining_bytes: int
    memory_bps: int
    memory_dirty_rate_pages_s: int
    memory_page_size: int
    iteration: int
    setup_time_ms: int
    downtime_ms: int
    downtime_net_ms: int = 0
    postcopy_requests: int = 0
    disk_total_bytes: int = 0
    """Disk data to copy (non-shared storage migration; 0 when disks are shared)."""
    disk_processed_bytes: int = 0
    disk_remaining_bytes: int = 0
    disk_bps: int = 0

    @classmethod
    def from_job_stats(cls, stats: Mapping[str, object], *, now_s: float) -> JobSample:
        """Build a sample from ``virDomain.jobStats()`` output.

        Args:
            stats: the dictionary libvirt returned; missing keys read as 0.
            now_s: monotonic time the stats were read at.

        Returns:
            The normalized sample.

        """
        return cls(
            now_s=now_s,
            job_type=_JOB_TYPES.get(_int(stats, "type"), JobType.UNKNOWN),
            elapsed_ms=_int(stats, "time_elapsed"),
            data_total_bytes=_int(stats, "data_total"),
            data_processed_bytes=_int(stats, "data_processed"),
            data_remaining_bytes=_int(stats, "data_remaining"),
            memory_total_bytes=_int(stats, "memory_total"),
            memory_remaining_bytes=_int(stats, "memory_remaining"),
            memory_bps=_int(stats, "memory_bps"),
            memory_dirty_rate_pages_s=_int(stats, "memory_dirty_rate"),
            memory_page_size=_int(stats, "memory_page_size") or 4096,
            iteration=_int(stats, "memory_iteration"),
            setup_time_ms=_int(stats, "setup_time"),
            downtime_ms=_int(stats, "downtime"),
            downtime_net_ms=_int(stats, "downtime_net"),
            postcopy_requests=_int(stats, "memory_postcopy_requests"),
            disk_total_bytes=_int(stats, "disk_total"),
            disk_processed_bytes=_int(stats, "disk_processed"),
            disk_remaining_bytes=_int(stats, "disk_remaining"),
            disk_bps=_int(stats, "disk_bps"),
        )

    @property
    def is_active(self) -> bool:
        """True while libvirt reports a running job."""
        return self.job_type in {JobType.BOUNDED, JobType.UNBOUNDED}

    @property
    def dirty_rate_mib_s(self) -> float:
        """Guest dirty rate in MiB/s (0 until QEMU has finished one iteration)."""
        return self.memory_dirty_rate_pages_s * self.memory_page_size / MIB

    @property
    def transfer_rate_mib_s(self) -> float:
        """Current memory transfer rate in MiB/s."""
        return self.memory_bps / MIB

    @property
    def phase(self) -> Phase:
        """Phase inferred from the counters (QEMU's iteration counter starts at 1)."""
        if not self.is_active:
            return Phase.DONE
        if self.memory_total_bytes == 0 and self.data_processed_bytes == 0:
            return Phase.SETUP
        if self.iteration <= 1:
            return Phase.BULK_COPY
        return Phase.CONVERGING


@dataclass(frozen=True, slots=True)
class MigrationRequest:
    """What the user asked for: one live migration of one guest.

    Attributes:
        domain: name, UUID or ID of the guest on the source.
        source_uri: libvirt URI of the source host, as this process reaches it.
        dest_uri: libvirt URI of the destination. Used by this process and, for
            the peer-to-peer migration, by the source's libvirtd: it must mean
            the same host from both places.
        bandwidth_mib_s: migration bandwidth cap, or None for libvirt's default
            (unlimited since libvirt lifts QEMU's 128 MiB/s default).
        max_downtime_ms: the longest pause the guest may see at switchover, or
            None for QEMU's default (300 ms).
        timeout_s: abort (guest stays on the source) if not done by then; None
            waits forever.
        copy_disks: disks to copy over NBD (``--copy-storage`` or automatic).
        tls: encrypt the migration stream and the disk copy (VIR_MIGRATE_TLS);
            decided by pre-flight from ``--tls`` and both hosts' certificates.

    """

    domain: str
    source_uri: str
    dest_uri: str
    bandwidth_mib_s: int | None = None
    max_downtime_ms: int | None = None
    timeout_s: float | None = None
    copy_disks: tuple[str, ...] = ()
    """Disk targets to copy to the destination (non-shared storage), from pre-flight."""
    tls: bool = False


@dataclass(frozen=True, slots=True)
class MigrationOutcome:
    """What happened: figures from QEMU/libvirt and from our own clock.

    Attributes:
        wall_time_s: from our migrate call to its return.
        final: the completed job's statistics (downtime, totals), if libvirt
            kept them; else the last live sample.
        samples: every live sample taken while the job ran.
        iterations: highest memory iteration seen.
        source_host: hostname of the source.
        dest_host: hostname of the destination.
        controller: the convergence controller's section of the report
            (decisions, rounds, budget), if it ran.

    """

    domain: str
    source_host: str
    dest_host: str
    wall_time_s: float
    final: JobSample | None
    iterations: int
    samples: tuple[JobSample, ...] = field(default=(), repr=False)
    controller: Mapping[str, object] | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class MeasuredContext:
    """What was measured or learned about this migration: facts, never the user's choices.

    The controller's rules (``converge.machine.step``) read it beside the user's
    ``MigrationPolicy``; a policy file cannot declare any of it. Built once per
    migration by ``converge.machine.build_context`` (``qemu_knows_switchover_rate``
    is set by ``converge.loop.migrate``, which knows the source's versions).

    Attributes:
        switchover_mib_s: rate of the final, unthrottled stop-and-copy round, None
            when unknown: the user's ``--switchover-bandwidth`` if given, else what
            earlier migrations between the same hosts showed. QEMU lifts the
            bandwidth cap for that round, so under a cap the real pause is shorter
            than the capped rate suggests; when this is faster than the measured
            transfer rate the controller judges the downtime budget against the
            real pause (see ``converge.machine.plan_switchover``).
        qemu_knows_switchover_rate: QEMU was given ``switchover_mib_s`` as its
            ``avail-switchover-bandwidth`` (the source has libvirt >= 11.1 and QEMU
            >= 8.2, ``preflight.versions``). Its switchover threshold then uses that
            rate, so its downtime limit reads as the real pause (less the fixed
            overhead) instead of a figure at the capped rate.
        preflight_dirty_mib_s: the guest's dirty rate as pre-flight measured it,
            None if it did not. The wait rule and the progress view read it until
            QEMU reports a rate of its own (QEMU has none before its first full
            pass, and a short migration may never report one).
        postcopy_after_first_pass: the forecast's verdict that pre-copy rounds
            cannot shrink (dirty rate at or above the bandwidth): go to post-copy
            (if the policy allows it) as soon as the first pass is done, unless the
            dirty set already fits the budget (virsh's --postcopy-after-precopy).

    """

    switchover_mib_s: float | None = None
    qemu_knows_switchover_rate: bool = False
    preflight_dirty_mib_s: float | None = None
    postcopy_after_first_pass: bool = False
    compress: bool = False
    """zstd over multifd streams for this migration (``preflight.forecast.choose_compression``)."""
    compression_reason: str = ""
    """Why (or why not), in words for the report."""

    def __post_init__(self) -> None:
        """Refuse a rate no measurement can give (it would divide the budget by it)."""
        rate = self.switchover_mib_s
        if rate is not None and not (math.isfinite(rate) and rate > 0):
            msg = f"switchover_mib_s must be a finite number > 0, got {rate}"
            raise ValueError(msg)

    def to_dict(self) -> dict[str, object]:
        """JSON-serializable form (the report's ``convergence.measured``)."""
        return {
            "switchover_mib_s": self.switchover_mib_s,
            "qemu_knows_switchover_rate": self.qemu_knows_switchover_rate,
            "preflight_dirty_mib_s": self.preflight_dirty_mib_s,
            "postcopy_after_first_pass": self.postcopy_after_first_pass,
            "compressed": self.compress,
            "compression_reason": self.compression_reason,
        }


@dataclass(frozen=True, slots=True)
class PastRun:
    """What one earlier migration between the same hosts achieved.

    Attributes:
        achieved_mib_s: memory data sent / time spent sending it.
        cap_mib_s: the bandwidth cap it ran under (None: no cap).

    """

    achieved_mib_s: float
    cap_mib_s: float | None
    switchover_mib_s: float | None = None
    """Its last dirty set / its downtime (the final round is sent unthrottled)."""
