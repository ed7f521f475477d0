"""Pre-flight checks: may this guest move to that host, now.

Pure: no I/O, no clock, no logging. The facts come in as plain frozen
dataclasses (``checks.facts``, gathered at the edge by ``facts.py`` from
libvirt's remote API and from our agent on the destination); every check is a
function ``PreflightFacts -> tuple[CheckResult, ...]`` registered by a stable
kebab-case name in ``CHECKS``. The checks live with their family in
``checks/`` (hosts, guest, versions, hardware, capacity, network, disks) and in
``storage`` (the disk handover's). ``run_checks`` runs them all in ``CHECKS``
order, and marks the ones the user skipped (``--skip-check NAME``): a skipped
blocker is still reported, it just does not stop the migration.

Verdicts: ``ok``; ``warning`` (it may work, or we could not tell: says why);
``blocker`` (it cannot work; nothing is started). Every result says what was
observed and what is required, with units, and what to do.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Final

from libvirt_vmotion.preflight import disks, netcheck, tls
from libvirt_vmotion.preflight.capacity import (
    check_dest_maintenance,
    check_dest_memory,
    check_dest_vcpus,
    check_hugepages,
    check_inbound_slots,
)
from libvirt_vmotion.preflight.disks import check_storage
from libvirt_vmotion.preflight.facts import (
    AgentFacts,
    BridgeFacts,
    CpuCompat,
    CpuFacts,
    DiskFacts,
    DiskView,
    DomainCapsFacts,
    GuestFacts,
    HostFacts,
    NetworkFacts,
    NicFacts,
    PortFacts,
    PreflightFacts,
    ReservationView,
    StpState,
)
from libvirt_vmotion.preflight.guest import check_guest_running, check_no_job
from libvirt_vmotion.preflight.hardware import (
    check_cpu,
    check_device_models,
    check_machine_type,
    check_passthrough,
)
from libvirt_vmotion.preflight.hosts import check_agent, check_same_host
from libvirt_vmotion.preflight.network import (
    NETCHECK_COVERED,
    check_bridge_ports,
    check_bridge_setup,
    check_networks,
)
from libvirt_vmotion.preflight.result import (
    CheckResult,
    Verdict,
    format_bytes,
)
from libvirt_vmotion.preflight.versions import (
    FEATURES,
    check_features,
    check_libvirt_version,
    check_qemu_version,
    check_tcg_dirty_bug,
    format_version,
    version_number,
)

__all__ = [
    "CHECKS",
    "FEATURES",
    "NETCHECK_COVERED",
    "AgentFacts",
    "BridgeFacts",
    "CheckResult",
    "CpuCompat",
    "CpuFacts",
    "DiskFacts",
    "DiskView",
    "DomainCapsFacts",
    "GuestFacts",
    "HostFacts",
    "NetworkFacts",
    "NicFacts",
    "PortFacts",
    "PreflightFacts",
    "ReservationView",
    "StpState",
    "Verdict",
    "blockers",
    "check_names",
    "format_bytes",
    "format_version",
    "may_proceed",
    "run_checks",
    "unknown_skips",
    "version_number",
]
"""The runner, and (re-exported from ``checks/``) the types and helpers its callers use."""


CHECKS: Final[Mapping[str, Callable[[PreflightFacts], tuple[CheckResult, ...]]]] = {
    "guest-running": check_guest_running,
    "no-job-running": check_no_job,
    "same-host": check_same_host,
    "libvirt-version": check_libvirt_version,
    "qemu-version": check_qemu_version,
    "tcg-dirty-tracking": check_tcg_dirty_bug,
    "features": check_features,
    "cpu-compat": check_cpu,
    "dest-memory": check_dest_memory,
    "dest-vcpus": check_dest_vcpus,
    "dest-hugepages": check_hugepages,
    "inbound-slots": check_inbound_slots,
    "dest-maintenance": check_dest_maintenance,
    "machine-type": check_machine_type,
    "device-models": check_device_models,
    "passthrough-devices": check_passthrough,
    "network": check_networks,
    "bridge-ports": check_bridge_ports,
    "bridge-setup": check_bridge_setup,
    "storage": check_storage,
    "disk-cache": disks.preflight_disk_cache,
    "lock-manager": disks.preflight_lock_manager,
    "dest-disk-space": disks.preflight_dest_disk_space,
    "dest-agent": check_agent,
    "tls": lambda f: tls.check_tls(f.tls),
}
"""Check functions by group name; result names are listed by ``check_names``."""


def check_names() -> tuple[str, ...]:
    """Every name ``--skip-check`` accepts (result names, incl. ``feature-*``)."""
    names = [n for n in CHECKS if n not in {"features", "machine-type", "bridge-setup", "tls"}]
    names += list(tls.CHECK_NAMES)
    names += [n for n in netcheck.CHECK_NAMES if n not in NETCHECK_COVERED]
    names += ["machine-type", "emulator"]
    names += [f"feature-{feat.name}" for feat in FEATURES]
    return tuple(sorted(names))


def unknown_skips(skip: Iterable[str]) -> tuple[str, ...]:
    """Names in ``skip`` that are not checks (a typo must not silently skip nothing)."""
    known = set(check_names())
    return tuple(s for s in skip if s not in known)


def run_checks(facts: PreflightFacts, *, skip: Iterable[str] = ()) -> tuple[CheckResult, ...]:
    """Run every check; results the user skipped are marked and never block."""
    skipped = set(skip)
    results: list[CheckResult] = []
    for check in CHECKS.values():
        results.extend(replace(r, skipped=True) if r.name in skipped else r for r in check(facts))
    return tuple(results)


def blockers(results: Iterable[CheckResult]) -> tuple[CheckResult, ...]:
    """The results that stop the migration."""
    return tuple(r for r in results if r.blocks)


def may_proceed(results: Iterable[CheckResult]) -> bool:
    """True if no result blocks."""
    return not blockers(results)
