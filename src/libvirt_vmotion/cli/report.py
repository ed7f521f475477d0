"""The migration report.

Pure: no I/O, no clock. The CLI prints what these functions return.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from typing import Final

from libvirt_vmotion.cli.report_text import cutover_lines, decision_lines, forecast_lines
from libvirt_vmotion.model import (
    MIB,
    DirtyRateSource,
    JobSample,
    MigrationOutcome,
    MigrationRequest,
    shown_dirty_rate,
)

REPORT_VERSION: Final = 2
"""Version of every JSON document the CLI prints (schemas/*.schema.json describe them).

2: every line has ``event`` and ``ts``; decisions' actions are objects;
``bytes_per_round`` is a list; a failure report carries ``exit_code`` and
``blockers`` as objects.
"""


def json_line(document: Mapping[str, object], *, now_s: float) -> str:
    """One line of the CLI's JSON output: ``document`` with ``ts`` and ``report_version``.

    Args:
        document: the object to print; it names its ``event``.
        now_s: wall-clock time (Unix seconds) the line is stamped with.

    Returns:
        Compact JSON, keys sorted, ``ts`` as ISO 8601 UTC with milliseconds.

    """
    ts = dt.datetime.fromtimestamp(now_s, tz=dt.UTC).isoformat(timespec="milliseconds")
    stamped = {"report_version": REPORT_VERSION, **document, "ts": ts.replace("+00:00", "Z")}
    return json.dumps(stamped, sort_keys=True)


def build_report(
    request: MigrationRequest,
    outcome: MigrationOutcome,
    sections: Mapping[str, Mapping[str, object]],
    *,
    preflight_dirty_mib_s: float | None = None,
) -> dict[str, object]:
    """Assemble the JSON-serializable report of a completed migration.

    Args:
        request: what was asked.
        outcome: what libvirt/QEMU and our clock measured.
        sections: observers' results by name (e.g. ``network``, ``workload``).
        preflight_dirty_mib_s: the dirty rate pre-flight measured, if it did.
            ``peak_dirty_rate_mib_s`` is QEMU's peak; when QEMU never reported
            a rate (a migration shorter than one full round) it is this
            measurement instead, and ``peak_dirty_rate_source`` says which.

    Returns:
        A dict with stable keys; units are in the key names.

    """
    final = outcome.final
    qemu_peak = max((s.dirty_rate_mib_s for s in outcome.samples), default=0.0)
    dirty_peak, dirty_source = shown_dirty_rate(
        qemu_peak, qemu_has_reported=qemu_peak > 0, preflight_mib_s=preflight_dirty_mib_s
    )
    report: dict[str, object] = {
        "event": "report",
        "report_version": REPORT_VERSION,
        "result": "completed",
        "domain": outcome.domain,
        "source": {"uri": request.source_uri, "host": outcome.source_host},
        "destination": {"uri": request.dest_uri, "host": outcome.dest_host},
        "settings": _settings(request, outcome.controller),
        "total_time_s": round(outcome.wall_time_s, 3),
        "qemu_elapsed_ms": final.elapsed_ms if final else None,
        "downtime_ms": final.downtime_ms if final else None,
        "setup_time_ms": final.setup_time_ms if final else None,
        "iterations": outcome.iterations,
        "data_transferred_bytes": final.data_processed_bytes if final else None,
        "memory_total_bytes": final.memory_total_bytes if final else None,
        "avg_transfer_mib_s": _average_rate(final),
        "peak_dirty_rate_mib_s": round(dirty_peak, 1),
        "peak_dirty_rate_source": dirty_source.value,
        "preflight_dirty_rate_mib_s": (
            None if preflight_dirty_mib_s is None else round(preflight_dirty_mib_s, 1)
        ),
        "samples": len(outcome.samples),
    }
    report["encryption"] = encryption_section(request)
    if request.copy_disks or (final is not None and final.disk_total_bytes):
        report["storage"] = _storage_section(request, outcome)
    if outcome.controller is not None:
        report["convergence"] = dict(outcome.controller)
    for name, section in sections.items():
        report[name] = dict(section)
    return report


def _settings(
    request: MigrationRequest, controller: Mapping[str, object] | None
) -> dict[str, object]:
    """The effective budget: the controller's policy when it ran, else the request's.

    Never null for a default: the controller's policy holds the value used.
    """
    policy = controller.get("policy") if controller is not None else None
    if not isinstance(policy, Mapping):
        return {
            "bandwidth_mib_s": request.bandwidth_mib_s,
            "max_downtime_ms": request.max_downtime_ms,
            "timeout_s": request.timeout_s,
        }
    ladder = policy.get("downtime_schedule")
    return {
        "bandwidth_mib_s": policy.get("bandwidth_mib_s"),
        "max_downtime_ms": ladder[-1] if isinstance(ladder, list) and ladder else None,
        "timeout_s": policy.get("max_duration_s"),
        "max_throttle_percent": policy.get("max_throttle_percent"),
        "allow_postcopy": policy.get("allow_postcopy"),
        "compression": policy.get("compression"),  # zstd: post-copy was not possible
    }


def control_transport(uri: str) -> str:
    """How a libvirt URI's connection travels: ``tls``, ``tcp``, ``ssh``, ``unix`` ...

    libvirt's rule: the part after ``+`` names the transport; a remote URI without
    one (``qemu://host/system``) is TLS, a local one a UNIX socket.

    >>> [control_transport(u) for u in ("qemu+tcp://b/system", "qemu://b/system",
    ...  "qemu+libssh2://b/system", "qemu:///system")]
    ['tcp', 'tls', 'ssh', 'unix']
    """
    scheme, _, rest = uri.partition("://")
    transport = scheme.partition("+")[2]
    if transport in {"libssh", "libssh2"}:
        return "ssh"
    if transport:
        return transport
    host = rest.partition("/")[0]
    return "tls" if host else "unix"


def encryption_section(request: MigrationRequest) -> dict[str, object]:
    """What crossed the network encrypted (the report's ``encryption``).

    ``memory``: QEMU's migration stream (libvirt's TLS flag); ``disk``: the NBD copy
    (the same flag covers it), null when no disk was copied; ``control``: the
    peer-to-peer connection from the source's libvirtd to the destination's, which
    is ``--to``'s transport.
    """
    return {
        "memory": request.tls,
        "disk": request.tls if request.copy_disks else None,
        "control": control_transport(request.dest_uri),
    }


def _encryption_line(section: object) -> list[str]:
    if not isinstance(section, Mapping):
        return []
    memory = "TLS" if section.get("memory") else "UNENCRYPTED"
    disk = section.get("disk")
    disks = "" if disk is None else f", disk copy {'TLS' if disk else 'UNENCRYPTED'}"
    return [f"  encryption        memory {memory}{disks}, control {section.get('control')}"]


def _storage_section(request: MigrationRequest, outcome: MigrationOutcome) -> dict[str, object]:
    """Disk part of the migration: what was copied and how many bytes it took."""
    final = outcome.final
    peak_disk = max((s.disk_total_bytes for s in outcome.samples), default=0)
    disk_sent = max(
        [s.disk_processed_bytes for s in outcome.samples]
        + [final.disk_processed_bytes if final else 0]
    )
    total = final.data_processed_bytes if final else 0
    return {
        "mode": "copied" if request.copy_disks else "shared",
        "copied_disks": list(request.copy_disks),
        "disk_total_bytes": max(peak_disk, final.disk_total_bytes if final else 0),
        "disk_transferred_bytes": disk_sent,
        "memory_transferred_bytes": max(0, total - disk_sent) if total else None,
    }


def build_failure_report(  # noqa: PLR0913  the failure's facts, keyword-only
    request: MigrationRequest,
    *,
    result: str,
    error: str,
    hint: str,
    exit_code: int,
    blockers: Sequence[Mapping[str, object]] = (),
    reservation: Mapping[str, object] | None = None,
) -> dict[str, object]:
    """The report's last line when the migration did not complete.

    Args:
        request: what was asked.
        result: ``aborted`` (the guest still runs on the source) or ``failed``.
        error: the error's message, as printed after ``error:``.
        hint: what to do, as printed after ``hint:``.
        exit_code: the process's exit code.
        blockers: the pre-flight checks that blocked, as objects (empty otherwise).
        reservation: the destination reservation the failure left behind (who
            frees it, by when), if it could not be released; absent otherwise.

    """
    report: dict[str, object] = {
        "event": "report",
        "report_version": REPORT_VERSION,
        "result": result,
        "domain": request.domain,
        "source": {"uri": request.source_uri},
        "destination": {"uri": request.dest_uri},
        "error": error,
        "hint": hint,
        "exit_code": exit_code,
        "blockers": [dict(b) for b in blockers],
    }
    if reservation is not None:
        report["reservation"] = dict(reservation)
    return report


def _average_rate(final: JobSample | None) -> float | None:
    if final is None or final.elapsed_ms <= 0:
        return None
    return round(final.data_processed_bytes / MIB / (final.elapsed_ms / 1000), 1)


def _fmt(value: object, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.1f}{unit}"
    return f"{value}{unit}"


def timeline_section(  # noqa: PLR0913  one figure per phase, all keyword-only
    *,
    startup_s: float,
    gate_done_s: float,
    gate_s: float,
    migrate_done_s: float,
    migration_s: float,
    released_s: float,
) -> dict[str, float]:
    """Where the command's time went, phase by phase (the ``timeline_s`` section).

    Args:
        startup_s: process start to the command's first step (interpreter, imports).
        gate_done_s: first step to pre-flight and reservation done.
        gate_s: pre-flight and reservation themselves (the rest of ``gate_done_s``
            is connecting to both hosts).
        migrate_done_s: first step to the migration call's return.
        migration_s: the migration job itself (``total_time_s``); the rest of the
            call is starting the observers, the network cutover and the landing check.
        released_s: first step to the reservation committed and the hosts closed.

    Returns:
        Seconds per phase, and ``total_s`` (their sum: process start to release).

    """
    phases = {
        "startup_s": startup_s,
        "connect_s": gate_done_s - gate_s,
        "preflight_and_reserve_s": gate_s,
        "migration_s": migration_s,
        "cutover_and_checks_s": migrate_done_s - gate_done_s - migration_s,
        "release_s": released_s - migrate_done_s,
    }
    out = {k: round(max(0.0, v), 2) for k, v in phases.items()}
    out["total_s"] = round(startup_s + released_s, 2)
    return out


_TIMELINE_LABELS: Final = (
    ("startup_s", "start-up"),
    ("connect_s", "connect"),
    ("preflight_and_reserve_s", "pre-flight+reserve"),
    ("migration_s", "migration"),
    ("cutover_and_checks_s", "cutover+checks"),
    ("release_s", "release"),
)


def _timeline_line(timeline: object) -> list[str]:
    if not isinstance(timeline, Mapping):
        return []
    parts = [f"{label} {timeline[key]:.1f} s" for key, label in _TIMELINE_LABELS if key in timeline]
    return [f"  time went to      {', '.join(parts)} (all {timeline.get('total_s', 0):.1f} s)"]


def render_text(report: Mapping[str, object]) -> str:
    """Human-readable report, one figure per line.

    After the figures: forecast vs outcome, the controller's decisions (one line
    each) and the network cutover, from the report's ``forecast``,
    ``convergence`` and ``network_cutover`` sections (``report_text``).
    """
    src = report.get("source")
    dst = report.get("destination")
    src_host = src.get("host", "") if isinstance(src, Mapping) else ""
    dst_host = dst.get("host", "") if isinstance(dst, Mapping) else ""
    transferred = report.get("data_transferred_bytes")
    mib = f"{transferred / MIB:.1f} MiB" if isinstance(transferred, int) else "n/a"
    peak_dirty = _fmt(report.get("peak_dirty_rate_mib_s"), " MiB/s")
    if report.get("peak_dirty_rate_source") == DirtyRateSource.PREFLIGHT:
        peak_dirty += " (pre-flight measurement; QEMU reported no rate)"
    lines = [
        f"Migration of {report.get('domain')}: {report.get('result')} ({src_host} -> {dst_host})",
        (
            f"  total time        {_fmt(report.get('total_time_s'), ' s')}"
            f"   (QEMU {_fmt(report.get('qemu_elapsed_ms'), ' ms')})"
        ),
        *(
            [f"  pre-flight before {_fmt(report.get('preflight_s'), ' s')}"]
            if report.get("preflight_s") is not None
            else []
        ),
        *_timeline_line(report.get("timeline_s")),
        f"  downtime (QEMU)   {_fmt(report.get('downtime_ms'), ' ms')}",
        f"  setup time        {_fmt(report.get('setup_time_ms'), ' ms')}",
        f"  iterations        {_fmt(report.get('iterations'))}",
        f"  data transferred  {mib} at {_fmt(report.get('avg_transfer_mib_s'), ' MiB/s')}",
        f"  peak dirty rate   {peak_dirty}",
        *forecast_lines(report.get("forecast")),
        *decision_lines(report.get("convergence")),
        *cutover_lines(report.get("network_cutover")),
        *_encryption_line(report.get("encryption")),
    ]
    for name in ("network", "workload"):
        section = report.get(name)
        if isinstance(section, Mapping):
            lines.append(f"  {name}:")
            lines.extend(f"    {key:<22} {_fmt(value)}" for key, value in section.items())
    return "\n".join(lines)
