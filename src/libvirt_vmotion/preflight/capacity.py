"""Pre-flight checks on the destination's room for the guest.

Pure: no I/O, no clock, no logging. Checks ``dest-memory``, ``dest-vcpus``,
``dest-hugepages`` and ``inbound-slots``, net of what the destination's
reservation store already holds for other migrations.
"""

from __future__ import annotations

from libvirt_vmotion.preflight.facts import PreflightFacts
from libvirt_vmotion.preflight.result import (
    CheckResult,
    Quantity,
    Unit,
    Verdict,
    bad,
    format_bytes,
    ok,
)


def check_dest_memory(f: PreflightFacts) -> tuple[CheckResult, ...]:
    """Destination free memory >= guest RAM + QEMU overhead, minus other reservations."""
    need = f.guest.memory_bytes + f.qemu_overhead_bytes
    free = f.dest.free_memory_bytes
    if f.agent.mem_available_bytes is not None:
        free = f.agent.mem_available_bytes  # MemAvailable counts reclaimable cache too
    reserved = 0
    limit_note = ""
    view = f.agent.reservation
    if view is not None:
        reserved = view.reserved_memory_bytes
        if view.memory_limit_bytes is not None and view.memory_limit_bytes < free:
            free = view.memory_limit_bytes
            limit_note = " (configured limit for incoming guests)"
    available = free - reserved
    observed = f"{format_bytes(available)} available{limit_note}" + (
        f" after {format_bytes(reserved)} reserved by other migrations" if reserved else ""
    )
    required = (
        f"{format_bytes(need)} ({format_bytes(f.guest.memory_bytes)} RAM + "
        f"{format_bytes(f.qemu_overhead_bytes)} QEMU overhead)"
    )
    quantity = Quantity(Unit.BYTES, observed=available, required=need)
    if available >= need:
        return (
            ok("dest-memory", observed, observed=observed, required=required, quantity=quantity),
        )
    return (
        bad(
            "dest-memory",
            Verdict.BLOCKER,
            f"Destination {f.dest.hostname} has {observed}; '{f.guest.name}' needs {required}.",
            observed=observed,
            required=required,
            hint=f"Free memory on {f.dest.hostname} or choose another host.",
            quantity=quantity,
        ),
    )


def check_dest_vcpus(f: PreflightFacts) -> tuple[CheckResult, ...]:
    """Guest vCPUs must not exceed host CPUs (or the configured vCPU budget)."""
    cpus = f.dest.cpus
    view = f.agent.reservation
    budget = None
    if view is not None and view.vcpu_limit is not None:
        budget = view.vcpu_limit - view.reserved_vcpus
    observed = f"{cpus} host CPUs" + (
        f", {budget} vCPUs left in budget" if budget is not None else ""
    )
    required = f"{f.guest.vcpus} vCPUs"
    room = cpus if budget is None else min(cpus, budget)
    quantity = Quantity(Unit.VCPUS, observed=room, required=f.guest.vcpus)
    if f.guest.vcpus > room:
        return (
            bad(
                "dest-vcpus",
                Verdict.BLOCKER,
                f"Destination {f.dest.hostname} has {observed}; '{f.guest.name}' has {required}.",
                observed=observed,
                required=required,
                hint="Choose a destination with more CPUs, or reduce the guest's vCPUs.",
                quantity=quantity,
            ),
        )
    return (ok("dest-vcpus", observed, observed=observed, required=required, quantity=quantity),)


def check_hugepages(f: PreflightFacts) -> tuple[CheckResult, ...]:
    """A guest backed by hugepages needs that many free hugepages on the destination."""
    if not f.guest.hugepages:
        return (ok("dest-hugepages", "guest does not use hugepages"),)
    required = format_bytes(f.guest.memory_bytes)
    if f.agent.hugepages_free_bytes is None:
        return (
            bad(
                "dest-hugepages",
                Verdict.WARNING,
                f"Could not read free hugepages on {f.dest.hostname} (agent: "
                f"{f.agent.error or 'no data'}).",
                required=required,
                hint="Install libvirt-vmotion on the destination so it can check.",
                quantity=Quantity(Unit.BYTES, required=f.guest.memory_bytes),
            ),
        )
    observed = f"{format_bytes(f.agent.hugepages_free_bytes)} of hugepages free"
    quantity = Quantity(
        Unit.BYTES, observed=f.agent.hugepages_free_bytes, required=f.guest.memory_bytes
    )
    if f.agent.hugepages_free_bytes < f.guest.memory_bytes:
        return (
            bad(
                "dest-hugepages",
                Verdict.BLOCKER,
                f"Destination {f.dest.hostname} has {observed}; the guest needs {required}.",
                observed=observed,
                required=required,
                hint="Allocate more hugepages there (vm.nr_hugepages).",
                quantity=quantity,
            ),
        )
    return (
        ok("dest-hugepages", observed, observed=observed, required=required, quantity=quantity),
    )


def check_inbound_slots(f: PreflightFacts) -> tuple[CheckResult, ...]:
    """The destination limits concurrent incoming migrations."""
    view = f.agent.reservation
    if view is None:
        return (
            bad(
                "inbound-slots",
                Verdict.WARNING,
                f"Could not read the reservation store on {f.dest.hostname}: {f.agent.error}",
                hint="Install libvirt-vmotion on the destination (and its hook) so "
                "incoming migrations are counted and reserved.",
            ),
        )
    observed = f"{view.inbound_active} of {view.inbound_limit} inbound slots in use"
    # As numbers: the free slots against the one this migration takes.
    quantity = Quantity(
        Unit.SLOTS, observed=max(view.inbound_limit - view.inbound_active, 0), required=1
    )
    if view.inbound_active >= view.inbound_limit:
        return (
            bad(
                "inbound-slots",
                Verdict.BLOCKER,
                f"Destination {f.dest.hostname}: {observed}.",
                observed=observed,
                required="one free slot",
                hint="Wait for the running migrations to finish, or raise inbound_slots in "
                "/etc/libvirt-vmotion/capacity.toml there.",
                quantity=quantity,
            ),
        )
    return (ok("inbound-slots", observed, observed=observed, quantity=quantity),)
