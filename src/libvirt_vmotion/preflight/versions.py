"""Pre-flight checks on libvirt and QEMU versions, the table of features we use, and quirks.

Pure: no I/O, no clock, no logging. Checks ``libvirt-version``, ``qemu-version``,
``tcg-dirty-tracking`` and one ``feature-NAME`` per row of ``FEATURES``: the single
place that says which version of each host a feature needs. ``KNOWN_BUGS`` lists the
releases the migration loop must work around, with the reason; the loop asks the
functions below (plain version numbers in, a verdict out), never compares versions
itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from libvirt_vmotion.preflight.facts import PreflightFacts
from libvirt_vmotion.preflight.result import CheckResult, Quantity, Unit, Verdict, bad, ok


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
        quantity = Quantity(Unit.VERSION, observed=host.libvirt_version, required=MIN_LIBVIRT)
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
                    quantity=quantity,
                )
            )
        else:
            results.append(
                ok(
                    "libvirt-version",
                    f"{role} libvirt {observed}",
                    observed=observed,
                    subject=role,
                    quantity=quantity,
                )
            )
    return tuple(results)


def check_qemu_version(f: PreflightFacts) -> tuple[CheckResult, ...]:
    """An older QEMU on the destination may not load a newer source's machine state."""
    src, dst = format_version(f.source.qemu_version), format_version(f.dest.qemu_version)
    observed = f"source {src}, destination {dst}"
    # As numbers: the destination's QEMU against the source's, the least it should run.
    quantity = Quantity(Unit.VERSION, observed=f.dest.qemu_version, required=f.source.qemu_version)
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
                quantity=quantity,
            ),
        )
    return (ok("qemu-version", observed, observed=observed, quantity=quantity),)


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
            quantity=Quantity(
                Unit.VERSION,
                observed=min(h.qemu_version for h in old),
                required=TCG_DIRTY_FIX,
            ),
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
"""The single table of features we use with the versions each needs (both hosts).

``avail-switchover-bandwidth``: libvirt's ``bandwidth.avail.switchover`` migration
parameter came in 11.1, QEMU's ``avail-switchover-bandwidth`` in 8.2; both are
needed on the source, whose QEMU decides when to switch over
(``switchover_hint_mib_s``)."""


def feature_since(name: str) -> tuple[int, int]:
    """The libvirt and QEMU version numbers ``FEATURES`` says feature ``name`` needs."""
    feat = next(f for f in FEATURES if f.name == name)
    return version_number(feat.libvirt), version_number(feat.qemu)


def has_feature(name: str, *, libvirt_version: int, qemu_version: int) -> bool:
    """True if a host with these versions has feature ``name`` of ``FEATURES``."""
    libvirt_since, qemu_since = feature_since(name)
    return libvirt_version >= libvirt_since and qemu_version >= qemu_since


def switchover_hint_mib_s(
    rate_mib_s: float | None, *, libvirt_version: int | None, qemu_version: int | None
) -> int | None:
    """The switchover rate to give the source's QEMU (``avail-switchover-bandwidth``), or None.

    Given when the rate of the final, unthrottled round is known and the source's
    libvirt and QEMU can pass it on (``FEATURES``): QEMU then decides when to switch
    over by the pause the guest will really see. Unknown versions (the source did
    not say) pass nothing.

    ==========  =======  ==========  ======
    rate        libvirt  QEMU        hint
    ==========  =======  ==========  ======
    455.7       11.3.0   10.0.2      455
    455.7       11.0.0   10.0.2      None
    455.7       11.3.0   8.1.0       None
    None        11.3.0   10.0.2      None
    ==========  =======  ==========  ======
    """
    if not rate_mib_s or libvirt_version is None or qemu_version is None:
        return None
    if not has_feature(
        "avail-switchover-bandwidth", libvirt_version=libvirt_version, qemu_version=qemu_version
    ):
        return None
    return max(1, int(rate_mib_s))


@dataclass(frozen=True, slots=True)
class KnownBug:
    """A libvirt or QEMU release that breaks something we do, and what we do instead."""

    name: str
    component: str
    """``libvirt`` or ``qemu``: whose version number ``versions`` holds."""
    host: str
    """Where the bug bites: ``source`` or ``destination``."""
    versions: frozenset[int]
    reason: str
    workaround: str


KNOWN_BUGS: Final[tuple[KnownBug, ...]] = (
    KnownBug(
        name="postcopy-resume-crash",
        component="libvirt",
        host="destination",
        versions=frozenset({version_number("11.3.0")}),
        reason="the destination's libvirtd segfaults on VIR_MIGRATE_POSTCOPY_RESUME "
        "(Prepare3Params -> qemuMigrationDstPrepareDirect -> NULL dereference), every "
        "time, in our lab (2026-11-25), with or without a migration URI (Debian "
        "bookworm-backports and trixie ship 11.3.0). The restarted daemon keeps the "
        "guest's monitor locked, so the guest cannot be recovered at all.",
        workaround="never resume a paused post-copy into it: wait for the link instead, "
        "and say where the guest's state is",
    ),
)
"""Releases the migration loop works around, one row per bug, with the reason."""


def _bug(name: str) -> KnownBug:
    return next(b for b in KNOWN_BUGS if b.name == name)


def postcopy_resume_crashes(dest_libvirt_version: int | None) -> bool:
    """True if the destination's libvirt crashes on POSTCOPY_RESUME (``KNOWN_BUGS``).

    An unknown version (the destination did not say) is taken as safe: the resume
    is then tried, as on every other release.
    """
    return dest_libvirt_version in _bug("postcopy-resume-crash").versions


def postcopy_resume_crash_versions() -> str:
    """The libvirt releases that crash on POSTCOPY_RESUME, as text (``11.3.0``)."""
    return ", ".join(format_version(v) for v in sorted(_bug("postcopy-resume-crash").versions))


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
