"""Pre-flight checks on libvirt and QEMU versions, and the table of features we use.

Pure: no I/O, no clock, no logging. Checks ``libvirt-version``, ``qemu-version``,
``tcg-dirty-tracking`` and one ``feature-NAME`` per row of ``FEATURES``: the single
place that says which version of each host a feature needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from libvirt_vmotion.preflight.facts import PreflightFacts
from libvirt_vmotion.preflight.result import CheckResult, Verdict, bad, ok


def format_version(version: int) -> str:
    """``10000002`` -> ``"10.0.2"`` (libvirt's version encoding)."""
    return f"{version // 1_000_000}.{version // 1000 % 1000}.{version % 1000}"


def version_number(text: str) -> int:
    """``"10.0.2"`` -> ``10000002``."""
    parts = [int(p) for p in text.split(".")] + [0, 0]
    return parts[0] * 1_000_000 + parts[1] * 1000 + parts[2]


MIN_LIBVIRT: Final = version_number("8.0.0")
"""Oldest libvirt we drive (migrateToURI3 with typed parameters, jobStats keys)."""


def check_libvirt_version(f: PreflightFacts) -> tuple[CheckResult, ...]:
    """Both libvirts must be new enough for what we drive."""
    results = []
    for role, host in (("source", f.source), ("destination", f.dest)):
        observed = format_version(host.libvirt_version)
        if host.libvirt_version < MIN_LIBVIRT:
            results.append(
                bad(
                    "libvirt-version",
                    Verdict.BLOCKER,
                    f"libvirt {observed} on the {role} {host.hostname} is too old.",
                    observed=observed,
                    required=f">= {format_version(MIN_LIBVIRT)}",
                    hint=f"Upgrade libvirt on {host.hostname}.",
                    subject=role,
                )
            )
        else:
            results.append(
                ok("libvirt-version", f"{role} libvirt {observed}", observed=observed, subject=role)
            )
    return tuple(results)


def check_qemu_version(f: PreflightFacts) -> tuple[CheckResult, ...]:
    """An older QEMU on the destination may not load a newer source's machine state."""
    src, dst = format_version(f.source.qemu_version), format_version(f.dest.qemu_version)
    observed = f"source {src}, destination {dst}"
    if f.dest.qemu_version < f.source.qemu_version:
        return (
            bad(
                "qemu-version",
                Verdict.WARNING,
                f"The destination runs an older QEMU ({dst}) than the source ({src}); "
                "QEMU supports migrating to older versions only for machine types both know.",
                observed=observed,
                required="destination QEMU >= source QEMU",
                hint="Upgrade QEMU on the destination, or check the guest's machine type there.",
            ),
        )
    return (ok("qemu-version", observed, observed=observed),)


TCG_DIRTY_FIX: Final = version_number("9.2.0")
"""First QEMU release with "system/physmem: Fix migration dirty bitmap coherency with
TCG memory access" (2024). Older QEMUs lose dirty pages when migrating TCG guests:
Debian 12's 7.2 lost 9,200-29,996 pages per migration in our lab (LAB-NOTES)."""


def check_tcg_dirty_bug(f: PreflightFacts) -> tuple[CheckResult, ...]:
    """Refuse TCG guests on QEMUs that silently lose dirty pages while migrating."""
    if f.guest.virt_type != "qemu":
        return (ok("tcg-dirty-tracking", "guest uses KVM; TCG dirty-tracking bug irrelevant"),)
    old = [h for h in (f.source, f.dest) if h.qemu_version and h.qemu_version < TCG_DIRTY_FIX]
    if not old:
        return (ok("tcg-dirty-tracking", "QEMU has the TCG dirty-bitmap fix on both hosts"),)
    names = ", ".join(f"{h.hostname} {format_version(h.qemu_version)}" for h in old)
    return (
        bad(
            "tcg-dirty-tracking",
            Verdict.BLOCKER,
            f"QEMU on {names} loses dirty pages when migrating TCG (emulated) guests: the "
            "guest's memory would arrive corrupted.",
            observed=names,
            required=f"QEMU >= {format_version(TCG_DIRTY_FIX)} for TCG guests",
            hint="Upgrade QEMU (Debian 12: bookworm-backports has 10.0), or run the guest "
            "under KVM.",
        ),
    )


@dataclass(frozen=True, slots=True)
class Feature:
    """One libvirt/QEMU feature we use, and the versions it needs."""

    name: str
    description: str
    libvirt: str
    qemu: str
    required: bool = False


FEATURES: Final[tuple[Feature, ...]] = (
    Feature("p2p-live", "peer-to-peer live migration with typed parameters",
            "1.1.0", "2.0.0", required=True),
    Feature("dirty-rate", "dirty-rate measurement before migrating (forecast)", "7.2.0", "5.2.0"),
    Feature("post-copy", "post-copy switchover for guests that do not converge",
            "1.3.3", "2.5.0"),
    Feature("post-copy-resume", "resuming a post-copy migration after a network blip",
            "8.5.0", "3.0.0"),
    Feature("multifd", "parallel migration streams", "6.0.0", "4.0.0"),
    Feature("tls", "encrypted migration stream", "3.2.0", "2.9.0"),
    Feature("avail-switchover-bandwidth",
            "telling QEMU the unthrottled switchover rate, so it switches over by the real pause",
            "11.1.0", "8.2.0"),
)  # fmt: skip
"""The single table of features we use with the versions each needs (both hosts)."""


def feature_since(name: str) -> tuple[int, int]:
    """The libvirt and QEMU version numbers ``FEATURES`` says feature ``name`` needs."""
    feat = next(f for f in FEATURES if f.name == name)
    return version_number(feat.libvirt), version_number(feat.qemu)


def check_features(f: PreflightFacts) -> tuple[CheckResult, ...]:
    """Report each feature of ``FEATURES``: available on both hosts or not."""
    results = []
    for feat in FEATURES:
        name = f"feature-{feat.name}"
        need_lv, need_q = version_number(feat.libvirt), version_number(feat.qemu)
        short = [
            f"{h.hostname} (libvirt {format_version(h.libvirt_version)}, "
            f"QEMU {format_version(h.qemu_version)})"
            for h in (f.source, f.dest)
            if h.libvirt_version < need_lv or h.qemu_version < need_q
        ]
        required = f"libvirt >= {feat.libvirt}, QEMU >= {feat.qemu}"
        if not short:
            results.append(ok(name, f"{feat.description}: available", required=required))
            continue
        verdict = Verdict.BLOCKER if feat.required else Verdict.WARNING
        results.append(
            bad(
                name,
                verdict,
                f"{feat.description}: not available on {', '.join(short)}"
                + ("" if feat.required else "; migrate works without it"),
                observed=", ".join(short),
                required=required,
                hint="Upgrade libvirt/QEMU on the host(s) named.",
            )
        )
    return tuple(results)
