"""Pre-flight checks on the guest's virtual hardware against the destination's QEMU.

Pure: no I/O, no clock, no logging. Checks ``cpu-compat``, ``machine-type`` and
``emulator``, ``device-models`` and ``passthrough-devices``.
"""

from __future__ import annotations

from libvirt_vmotion.preflight.facts import CpuCompat, PreflightFacts
from libvirt_vmotion.preflight.result import CheckResult, Verdict, bad, ok


def check_cpu(f: PreflightFacts) -> tuple[CheckResult, ...]:
    """The guest CPU must be runnable on the destination (``compareHypervisorCPU``)."""
    model = f.guest.cpu_model or f.guest.cpu_mode or "default"
    if f.cpu.result in {CpuCompat.IDENTICAL, CpuCompat.SUPERSET}:
        return (ok("cpu-compat", f"guest CPU {model}: {f.cpu.result.value} on destination"),)
    if f.cpu.result is CpuCompat.UNKNOWN:
        return (
            bad(
                "cpu-compat",
                Verdict.WARNING,
                f"Could not compare the guest CPU ({model}) with {f.dest.hostname}: {f.cpu.detail}",
                observed="unknown",
                required="compatible",
                hint="Check the guest's <cpu> against the destination by hand "
                "(virsh hypervisor-cpu-compare).",
            ),
        )
    return (
        bad(
            "cpu-compat",
            Verdict.BLOCKER,
            f"The guest CPU ({model}) cannot run on {f.dest.hostname}: {f.cpu.detail}",
            observed="incompatible",
            required="identical or superset",
            hint="Use a CPU model both hosts support (a baseline: virsh hypervisor-cpu-baseline), "
            "or choose a destination with those CPU features.",
        ),
    )


def check_machine_type(f: PreflightFacts) -> tuple[CheckResult, ...]:
    """The guest's machine type and emulator must exist on the destination."""
    results = []
    machine = f.guest.machine
    if machine and f.dest.machines and machine not in f.dest.machines:
        results.append(
            bad(
                "machine-type",
                Verdict.BLOCKER,
                f"Machine type {machine} is not offered by QEMU on {f.dest.hostname}.",
                observed="offered: " + ", ".join(sorted(f.dest.machines)[-4:]) + " ...",
                required=machine,
                hint="Upgrade QEMU on the destination, or choose a host with that machine type.",
            )
        )
    else:
        results.append(ok("machine-type", f"{machine or 'default'} available"))
    emu = f.guest.emulator
    if emu and f.dest.emulators and emu not in f.dest.emulators:
        results.append(
            bad(
                "emulator",
                Verdict.BLOCKER,
                f"Emulator {emu} does not exist on {f.dest.hostname}.",
                observed=", ".join(f.dest.emulators),
                required=emu,
                hint="Install QEMU at the same path on the destination.",
            )
        )
    else:
        results.append(ok("emulator", f"{emu or 'default'} present"))
    return tuple(results)


def check_device_models(f: PreflightFacts) -> tuple[CheckResult, ...]:
    """Disk buses and video models the guest uses exist on the destination."""
    if not f.dest_caps.available:
        return (
            bad(
                "device-models",
                Verdict.WARNING,
                f"Could not read domain capabilities of {f.dest.hostname}: {f.dest_caps.detail}",
                hint="Check the guest's devices against the destination by hand "
                "(virsh domcapabilities).",
            ),
        )
    missing = [
        f"disk bus {d.bus} ({d.target})"
        for d in f.guest.disks
        if d.bus and f.dest_caps.disk_buses and d.bus not in f.dest_caps.disk_buses
    ] + [
        f"video {m}"
        for m in f.guest.video_models
        if f.dest_caps.video_models and m not in f.dest_caps.video_models
    ]
    if missing:
        return (
            bad(
                "device-models",
                Verdict.BLOCKER,
                f"{f.dest.hostname} lacks device models the guest uses: {', '.join(missing)}.",
                observed=", ".join(missing) + " missing",
                required="every device model the guest uses",
                hint="Change those devices, or choose a destination whose QEMU has them.",
            ),
        )
    return (ok("device-models", "all device models available"),)


def check_passthrough(f: PreflightFacts) -> tuple[CheckResult, ...]:
    """Host-bound devices (PCI/USB/mdev passthrough) cannot migrate."""
    if not f.guest.passthrough:
        return (ok("passthrough-devices", "no host-bound devices"),)
    return (
        bad(
            "passthrough-devices",
            Verdict.BLOCKER,
            f"'{f.guest.name}' uses devices bound to the source host: "
            f"{', '.join(f.guest.passthrough)}; QEMU cannot migrate their state.",
            observed=", ".join(f.guest.passthrough),
            required="no host-bound devices",
            hint="Hot-unplug them before migrating (virsh detach-device) and re-attach "
            "equivalents on the destination.",
        ),
    )
