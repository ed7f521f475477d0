"""Pre-flight checks: may this guest move to that host, now.

Pure: no I/O, no clock, no logging. The facts come in as plain frozen
dataclasses (gathered at the edge by ``facts.py`` from libvirt's remote API and
from our agent on the destination); every check is a function
``PreflightFacts -> tuple[CheckResult, ...]`` registered by a stable kebab-case
name in ``CHECKS``. ``run_checks`` runs them all, and marks the ones the user
skipped (``--skip-check NAME``): a skipped blocker is still reported, it just
does not stop the migration.

Verdicts: ``ok``; ``warning`` (it may work, or we could not tell: says why);
``blocker`` (it cannot work; nothing is started). Every result says what was
observed and what is required, with units, and what to do.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Final

from libvirt_vmotion import netcheck, storage
from libvirt_vmotion.checks.capacity import (
    check_dest_memory,
    check_dest_vcpus,
    check_hugepages,
    check_inbound_slots,
)
from libvirt_vmotion.checks.facts import (
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
    PortFlags,
    PreflightFacts,
    ReservationView,
)
from libvirt_vmotion.checks.guest import check_guest_running, check_no_job
from libvirt_vmotion.checks.hardware import (
    check_cpu,
    check_device_models,
    check_machine_type,
    check_passthrough,
)
from libvirt_vmotion.checks.hosts import check_agent, check_same_host
from libvirt_vmotion.checks.result import (
    CheckResult,
    Verdict,
    bad,
    format_bytes,
    ok,
    skip_hint,
)
from libvirt_vmotion.checks.versions import (
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
    "PortFlags",
    "PreflightFacts",
    "ReservationView",
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
"""What callers import from here: the runner, and (re-exported) the facts and result types."""


# --------------------------------------------------------------------------- checks


def _nic_bridge(f: PreflightFacts, nic: NicFacts) -> tuple[str, CheckResult | None]:
    """Resolve the bridge a NIC lands on at the destination, or a result saying why not."""
    subject = f"NIC {nic.mac}"
    if nic.kind == "network":
        net = f.networks.get(nic.source)
        if net is None or not net.exists:
            return "", bad(
                "network",
                Verdict.BLOCKER,
                f"libvirt network '{nic.source}' does not exist on {f.dest.hostname}.",
                observed="missing",
                required=f"network {nic.source}, active",
                hint=f"Define and start it there (virsh -c {f.dest.uri} net-define/net-start).",
                subject=subject,
            )
        if not net.active:
            return "", bad(
                "network",
                Verdict.BLOCKER,
                f"libvirt network '{nic.source}' on {f.dest.hostname} is not active.",
                observed="inactive",
                required="active",
                hint=f"virsh -c {f.dest.uri} net-start {nic.source}",
                subject=subject,
            )
        return net.bridge, None
    return nic.source, None


def check_networks(f: PreflightFacts) -> tuple[CheckResult, ...]:
    """Every NIC's bridge/network exists on the destination, is up, has an uplink and MTU."""
    results: list[CheckResult] = []
    for nic in f.guest.nics:
        subject = f"NIC {nic.mac}"
        if nic.kind not in {"bridge", "network"}:
            results.append(
                bad(
                    "network",
                    Verdict.WARNING,
                    f"NIC {nic.mac} is of type '{nic.kind}'; we cannot verify its attachment "
                    f"on {f.dest.hostname}.",
                    observed=nic.kind,
                    required="bridge or network",
                    hint="Make sure the destination has the same attachment.",
                    subject=subject,
                )
            )
            continue
        bridge_name, problem = _nic_bridge(f, nic)
        if problem is not None:
            results.append(problem)
            continue
        br = f.bridges.get(bridge_name)
        where = f"bridge {bridge_name} on {f.dest.hostname}"
        if br is None:
            results.append(
                bad(
                    "network",
                    Verdict.WARNING,
                    f"Could not inspect {where} (libvirt's interface driver did not answer).",
                    hint="Check by hand that the bridge exists there.",
                    subject=subject,
                )
            )
            continue
        fault = ""
        if not br.exists:
            fault, hint = "does not exist", "Create the bridge there with the same name."
        elif not br.active:
            fault, hint = "is down", f"Bring it up: ip link set {bridge_name} up."
        elif not br.uplinks:
            fault = "has no uplink port (guests there could not reach the network)"
            hint = "Attach the host's uplink NIC to the bridge."
        elif br.mtu is not None and br.mtu < (nic.mtu or 1500):
            fault = f"has MTU {br.mtu}, below the guest NIC's {nic.mtu or 1500}"
            hint = "Raise the bridge MTU there, or lower the guest's."
        if fault:
            results.append(
                bad(
                    "network",
                    Verdict.BLOCKER,
                    f"Destination {where} {fault}; '{f.guest.name}' {subject} uses it.",
                    observed=fault,
                    required=f"bridge {bridge_name} up with an uplink, MTU >= {nic.mtu or 1500}",
                    hint=hint,
                    subject=subject,
                )
            )
        else:
            results.append(
                ok(
                    "network",
                    f"{where}: up, uplinks {', '.join(br.uplinks)}, MTU {br.mtu}",
                    subject=subject,
                )
            )
    return tuple(results)


def check_bridge_ports(f: PreflightFacts) -> tuple[CheckResult, ...]:
    """Uplink ports must forward, learn and flood (bridge port flags, from the agent)."""
    bridges = sorted(
        {b.name for b in f.bridges.values() if b.exists}
        & ({n.source for n in f.guest.nics if n.kind == "bridge"}
           | {f.networks[n.source].bridge for n in f.guest.nics
              if n.kind == "network" and n.source in f.networks})
    )  # fmt: skip
    if not bridges:
        return ()
    if not f.agent.available:
        return (
            bad(
                "bridge-ports",
                Verdict.WARNING,
                f"Could not check port forwarding/learning/flooding of {', '.join(bridges)} on "
                f"{f.dest.hostname}: {f.agent.error}",
                hint="Install libvirt-vmotion on the destination so it can check.",
            ),
        )
    results = []
    for name in bridges:
        uplinks = set(f.bridges[name].uplinks)
        for port in f.agent.bridge_ports.get(name, ()):
            if port.port not in uplinks:
                continue
            faults = []
            if port.state != "forwarding":
                faults.append(f"state {port.state}")
            if not port.learning:
                faults.append("learning off")
            if not port.flooding:
                faults.append("unicast flooding off")
            subject = f"{name}/{port.port}"
            if not faults:
                results.append(
                    ok(
                        "bridge-ports",
                        f"{subject}: forwarding, learning, flooding",
                        subject=subject,
                    )
                )
                continue
            verdict = Verdict.BLOCKER if port.state != "forwarding" else Verdict.WARNING
            results.append(
                bad(
                    "bridge-ports",
                    verdict,
                    f"Uplink {subject} on {f.dest.hostname}: {', '.join(faults)}.",
                    observed=", ".join(faults),
                    required="forwarding, learning on, unicast flooding on",
                    hint=f"Fix the port: bridge link set dev {port.port} learning on flood on "
                    "(state follows STP).",
                    subject=subject,
                )
            )
    return tuple(results)


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


NETCHECK_COVERED: Final = frozenset(
    {"bridge-exists", "bridge-up", "bridge-uplink", "bridge-mtu", "uplink-learning"}
)
"""``netcheck`` results that ``network`` and ``bridge-ports`` already report."""
_SEVERITY: Final = {
    netcheck.Severity.OK: Verdict.OK,
    netcheck.Severity.WARNING: Verdict.WARNING,
    netcheck.Severity.BLOCKER: Verdict.BLOCKER,
}


def check_bridge_setup(f: PreflightFacts) -> tuple[CheckResult, ...]:
    """The network pre-flight's bridge verdicts (``netcheck``), each under its own name.

    Can the destination's switch learn the move (STP delay, flooding of
    broadcasts, ageing), is the bridge consistent with the source (VLAN
    filtering), is the bridge's MAC pinned on both hosts, will we notify the
    switches. Those ``network``/``bridge-ports`` already cover are left out.
    """
    return tuple(
        CheckResult(
            name=r.name,
            verdict=_SEVERITY[r.severity],
            message=r.message if r.hint else f"{r.host}: {r.message}",
            observed=r.host,
            hint=f"{r.hint} {skip_hint(r.name)}" if r.hint else "",
            subject=r.subject,
        )
        for r in f.bridge_checks
        if r.name not in NETCHECK_COVERED
    )


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
    "machine-type": check_machine_type,
    "device-models": check_device_models,
    "passthrough-devices": check_passthrough,
    "network": check_networks,
    "bridge-ports": check_bridge_ports,
    "bridge-setup": check_bridge_setup,
    "storage": check_storage,
    "disk-cache": storage.preflight_disk_cache,
    "lock-manager": storage.preflight_lock_manager,
    "dest-disk-space": storage.preflight_dest_disk_space,
    "dest-agent": check_agent,
}
"""Check functions by group name; result names are listed by ``check_names``."""


def check_names() -> tuple[str, ...]:
    """Every name ``--skip-check`` accepts (result names, incl. ``feature-*``)."""
    names = [n for n in CHECKS if n not in {"features", "machine-type", "bridge-setup"}]
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
