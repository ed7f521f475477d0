"""Pre-flight checks on the guest's disks: reachable on the destination, or copied safely.

Pure: no I/O, no clock, no logging. Checks ``storage`` (each disk reachable at the
same path, or network storage, or copied), and the disk handover's own checks
``disk-cache``, ``lock-manager`` and ``dest-disk-space``; the copy plan they consult
is ``libvirt_vmotion.storage.plan``.
"""

from __future__ import annotations

from libvirt_vmotion.preflight.facts import DiskFacts, PreflightFacts
from libvirt_vmotion.preflight.result import (
    CheckResult,
    Quantity,
    Unit,
    Verdict,
    bad,
    format_bytes,
    ok,
)
from libvirt_vmotion.storage.plan import (
    CLUSTER_FS_TYPES,
    DEFAULT_LOCK_MANAGER,
    SAFE_SHARED_CACHE,
    PathInfo,
    StorageFacts,
    copied_disks,
    copy_bytes_needed,
    same_path_conflict,
)


def check_storage(f: PreflightFacts) -> tuple[CheckResult, ...]:
    """Each disk is on storage the destination sees at the same path, or is network storage."""
    return tuple(_disk_storage(f, disk) for disk in f.guest.disks)


def _disk_storage(f: PreflightFacts, disk: DiskFacts) -> CheckResult:  # noqa: PLR0911  one return per case, in order
    """One disk's ``storage`` result."""
    subject = f"disk {disk.target}"
    if not disk.source:
        return ok("storage", "no medium", subject=subject)
    if disk.kind == "network":
        return ok("storage", f"network storage {disk.source}", subject=subject)
    view = f.disks.get(disk.source)
    conflict = same_path_conflict(f.storage, disk.source) if f.storage else ""
    if conflict:
        return bad(
            "storage",
            Verdict.BLOCKER,
            f"{subject} ({disk.source}): {f.dest.hostname} has {conflict} at that path; "
            "the automatic copy neither writes over it nor uses it.",
            observed=f"same-path file on {f.dest.hostname}, not shown to be shared",
            required="no file at that path, or the source's own storage",
            hint=f"If it is stale, remove it on {f.dest.hostname} (or pass "
            "--copy-storage to write the copy over it); if it is storage both hosts "
            "share but the source cannot write next to it, pass --no-copy-storage.",
            subject=subject,
        )
    if will_copy(f, disk.source):
        return ok("storage", f"{disk.source} is copied to {f.dest.hostname}", subject=subject)
    if view is not None and view.visible:
        return ok("storage", f"{disk.source} shared ({view.how})", subject=subject)
    if view is not None and view.visible is False:
        return bad(
            "storage",
            Verdict.BLOCKER,
            f"{subject} ({disk.source}) is not reachable on {f.dest.hostname} ({view.how})"
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
    why = view.how if view is not None else "no storage pool covers it"
    return bad(
        "storage",
        Verdict.WARNING,
        f"Could not tell whether {disk.source} is shared with {f.dest.hostname}: {why}.",
        observed="unknown",
        required="same path on shared storage",
        hint="Define a storage pool over it on the destination, or install "
        "libvirt-vmotion there so it can check.",
        subject=subject,
    )


def _skip(name: str) -> str:
    return f"(skip: --skip-check {name})"


def _result(  # noqa: PLR0913  a result's fields, keyword-only
    name: str,
    verdict: Verdict,
    message: str,
    *,
    hint: str = "",
    observed: str = "",
    required: str = "",
    subject: str = "",
    quantity: Quantity | None = None,
) -> CheckResult:
    full_hint = f"{hint} {_skip(name)}".strip() if verdict is not Verdict.OK else ""
    return CheckResult(
        name=name,
        verdict=verdict,
        message=message,
        observed=observed,
        required=required,
        hint=full_hint,
        subject=subject,
        quantity=quantity,
    )


def check_disk_cache(
    facts: StorageFacts, *, dest_host: str = "destination"
) -> tuple[CheckResult, ...]:
    """Disks that stay on shared storage must not be cached in a host's page cache.

    Applies to disks the destination sees at the same path and that are not copied.

    With cache=writeback (QEMU's default) or writethrough/unsafe, the source host's
    page cache may hold reads (and, for writeback/unsafe, writes) the destination
    does not see, so after switchover the guest could read stale data. A cluster
    file system keeps page caches coherent, so any mode is safe there.
    """
    name = "disk-cache"
    copied = {d.target for d in copied_disks(facts)}
    results = []
    for disk in facts.disks:
        subject = f"disk {disk.target}"
        if not disk.is_local_kind or disk.target in copied or disk.readonly:
            continue
        dest = facts.dest_paths.get(disk.source)
        if dest is None or not dest.is_same_storage:
            continue  # not on shared storage: the ``storage`` check speaks for it
        fs = facts.source_paths.get(disk.source, PathInfo(exists=True)).fs_type
        if disk.cache in SAFE_SHARED_CACHE:
            results.append(
                _result(
                    name,
                    Verdict.OK,
                    f"cache={disk.cache} bypasses the host page cache",
                    subject=subject,
                )
            )
        elif fs in CLUSTER_FS_TYPES:
            results.append(
                _result(
                    name,
                    Verdict.OK,
                    f"cache={disk.cache} on {fs}, coherent across hosts",
                    subject=subject,
                )
            )
        else:
            results.append(
                _result(
                    name,
                    Verdict.BLOCKER,
                    f"{subject} ({disk.source}) uses cache={disk.cache} on shared storage "
                    f"({fs or 'unknown file system'}): the source's page cache may hold data "
                    f"{dest_host} would not see after switchover.",
                    observed=f"cache={disk.cache}",
                    required="cache=none or directsync (or a cluster file system)",
                    hint=f"Set <driver cache='none'/> on {disk.target} (virsh edit; takes effect "
                    "at the next start), or copy the disk instead (--copy-storage).",
                    subject=subject,
                )
            )
    return tuple(results)


def check_lock_manager(
    facts: StorageFacts, *, dest_host: str = "destination"
) -> tuple[CheckResult, ...]:
    """Both hosts must run the same lock manager, or libvirt refuses the handover.

    A guest started under virtlockd holds leases the destination must take over;
    a destination with another (or no) lock manager either refuses the incoming
    guest or runs it unprotected, so a second start elsewhere would not be stopped.
    """
    name = "lock-manager"
    if not any(d.is_local_kind for d in facts.disks):
        return ()
    src, dst = facts.source_lock_manager, facts.dest_lock_manager
    if not src or not dst:
        return (
            _result(
                name,
                Verdict.WARNING,
                "Could not read the lock manager of "
                + (
                    "both hosts"
                    if not src and not dst
                    else ("the source" if not src else dest_host)
                )
                + " (qemu.conf).",
                observed="unknown",
                required="the same lock_manager on both hosts",
                hint="Install libvirt-vmotion on both hosts so pre-flight can read qemu.conf.",
            ),
        )
    if src != dst:
        return (
            _result(
                name,
                Verdict.BLOCKER,
                f"Lock managers differ: source uses {src!r}, {dest_host} uses {dst!r}; the "
                "disk leases cannot be handed over.",
                observed=f"source {src}, destination {dst}",
                required="the same lock_manager in both hosts' qemu.conf",
                hint=f'Set lock_manager = "{src}" in {dest_host}\'s /etc/libvirt/qemu.conf (and '
                "start virtlockd/sanlock there), then restart its libvirtd.",
            ),
        )
    if src == DEFAULT_LOCK_MANAGER and any(
        d.is_local_kind and d.target not in {c.target for c in copied_disks(facts)}
        for d in facts.disks
    ):
        return (
            _result(
                name,
                Verdict.WARNING,
                "No lock manager on either host: nothing stops a second start of this guest's "
                "shared disk elsewhere.",
                observed="lock_manager nop",
                required='lock_manager = "lockd" (virtlockd) or "sanlock"',
                hint='Set lock_manager = "lockd" in qemu.conf on every host sharing the storage.',
            ),
        )
    return (_result(name, Verdict.OK, f"both hosts use lock manager {src!r}"),)


def check_dest_disk_space(
    facts: StorageFacts, *, dest_host: str = "destination"
) -> tuple[CheckResult, ...]:
    """A copied disk needs its allocation (plus 5%) free on the destination file system."""
    name = "dest-disk-space"
    results = []
    need_by_fs: dict[tuple[str, int], int] = {}
    for disk in copied_disks(facts):
        info = facts.dest_paths.get(disk.source)
        if info is None or info.free_bytes is None:
            results.append(
                _result(
                    name,
                    Verdict.WARNING,
                    f"Free space for the copy of disk {disk.target} on {dest_host} is unknown.",
                    observed="unknown",
                    required=format_bytes(copy_bytes_needed(disk)),
                    hint="Install libvirt-vmotion on the destination so pre-flight can check.",
                    subject=f"disk {disk.target}",
                    quantity=Quantity(Unit.BYTES, required=copy_bytes_needed(disk)),
                )
            )
            continue
        key = (info.fs_type, info.free_bytes)  # disks on one file system share its space
        need_by_fs[key] = need_by_fs.get(key, 0) + copy_bytes_needed(disk)
        need = need_by_fs[key]
        subject = f"disk {disk.target}"
        quantity = Quantity(Unit.BYTES, observed=info.free_bytes, required=need)
        if need > info.free_bytes:
            results.append(
                _result(
                    name,
                    Verdict.BLOCKER,
                    f"{dest_host} has {format_bytes(info.free_bytes)} free for the copy of "
                    f"{subject} ({disk.source}); it needs {format_bytes(need)}.",
                    observed=f"{format_bytes(info.free_bytes)} free",
                    required=format_bytes(need),
                    hint=f"Free space under {disk.source.rsplit('/', 1)[0] or '/'} on {dest_host}, "
                    "or put the disk on shared storage.",
                    subject=subject,
                    quantity=quantity,
                )
            )
        else:
            results.append(
                _result(
                    name,
                    Verdict.OK,
                    f"{format_bytes(info.free_bytes)} free for the copy ({format_bytes(need)})",
                    observed=f"{format_bytes(info.free_bytes)} free",
                    required=format_bytes(need),
                    subject=subject,
                    quantity=quantity,
                )
            )
    return tuple(results)


# Entry points for preflight.CHECKS: no storage facts (e.g. the test driver) -> no results.


def preflight_disk_cache(f: PreflightFacts) -> tuple[CheckResult, ...]:
    """``disk-cache`` over the pre-flight facts."""
    return check_disk_cache(f.storage, dest_host=f.dest.hostname) if f.storage else ()


def preflight_lock_manager(f: PreflightFacts) -> tuple[CheckResult, ...]:
    """``lock-manager`` over the pre-flight facts."""
    return check_lock_manager(f.storage, dest_host=f.dest.hostname) if f.storage else ()


def preflight_dest_disk_space(f: PreflightFacts) -> tuple[CheckResult, ...]:
    """``dest-disk-space`` over the pre-flight facts."""
    return check_dest_disk_space(f.storage, dest_host=f.dest.hostname) if f.storage else ()


def will_copy(f: PreflightFacts, source: str) -> bool:
    """True if the disk at ``source`` is copied (so its absence on the destination is fine)."""
    return f.storage is not None and any(d.source == source for d in copied_disks(f.storage))
