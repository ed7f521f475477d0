"""The ``check`` and ``hooks`` commands, and the pre-flight gate ``migrate`` runs first.

I/O: opens connections, calls the destination's agent, prints. The decisions
live in ``preflight`` (checks), ``forecast`` and ``reservation`` (capacity).

``migrate`` runs the same gate as ``check`` before it touches anything:
pre-flight (blockers exit 3), the forecast (dirty rate measured while no job
runs), then a reservation on the destination through its agent (refused:
exit 4). The reservation is released when the migration ends, however it ends;
if this process dies, the destination's hook and the lease release it. After a
failure the link to the destination may be down (a cutover failure), so the
release waits at most ``RELEASE_AFTER_FAILURE_TIMEOUT_S`` and otherwise says
when the destination's lease frees the reservation, instead of waiting.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import TYPE_CHECKING, Final, TextIO, TypeVar

from libvirt_vmotion.argtypes import positive_number
from libvirt_vmotion.errors import (
    CutoverFailed,
    ExitCode,
    PreflightFailed,
    ReservationError,
    UsageError,
    VmotionError,
)
from libvirt_vmotion.preflight.forecast import Forecast, relative_error
from libvirt_vmotion.preflight.registry import (
    CheckResult,
    Verdict,
    blockers,
    check_names,
    format_bytes,
    run_checks,
    unknown_skips,
)
from libvirt_vmotion.reserve.store import Unreleased, lease_ends_by_s
from libvirt_vmotion.storage import host as storagehost
from libvirt_vmotion.storage.plan import CopyMode, StorageFacts, copied_disks, needs_precreate

if TYPE_CHECKING:
    from libvirt_vmotion.adapters.agent import RemoteHost
    from libvirt_vmotion.adapters.virt import Hypervisor
    from libvirt_vmotion.model import MigrationRequest
    from libvirt_vmotion.preflight.netcheck import NetCheckResult

DEFAULT_WINDOW_S = 1
RELEASE_AFTER_FAILURE_TIMEOUT_S: Final = 3.0
"""Longest wait to release the reservation after a failed migration.

Shorter than the agent's ssh ConnectTimeout (5 s): when the link to the
destination is down, the release gives up here, and the destination's lease
frees the reservation anyway. A successful migration waits as long as it takes.
"""
_P = TypeVar("_P", bound=argparse.ArgumentParser)


def add_skip_check(parser: argparse.ArgumentParser) -> None:
    """``--skip-check NAME`` (repeatable), on ``check`` and ``migrate``."""
    parser.add_argument(
        "--skip-check",
        action="append",
        default=[],
        metavar="NAME",
        help="override one pre-flight check (repeatable); names: " + ", ".join(check_names()),
    )
    parser.add_argument(
        "--dirty-rate-window",
        type=int,
        default=DEFAULT_WINDOW_S,
        metavar="SECONDS",
        help="how long to measure the guest's dirty rate for the forecast (default 1)",
    )


def add_copy_storage(parser: argparse.ArgumentParser) -> None:
    """``--copy-storage`` / ``--no-copy-storage``, on ``check`` and ``migrate``."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--copy-storage",
        dest="copy_storage",
        action="store_const",
        const=CopyMode.ALWAYS,
        default=CopyMode.AUTO,
        help="copy every writable disk to the destination (NBD mirror, synchronous writes); "
        "default: copy only disks the destination does not have at the same path",
    )
    group.add_argument(
        "--no-copy-storage",
        dest="copy_storage",
        action="store_const",
        const=CopyMode.NEVER,
        help="never copy disks: a disk not on shared storage then blocks",
    )


def add_subcommands(
    sub: argparse._SubParsersAction[_P],
    *,
    uri: Callable[[str], str],
    parser_class: type[_P],
) -> None:
    """Add ``check`` and ``hooks`` to the CLI."""
    chk = sub.add_parser(
        "check",
        help="pre-flight checks and a forecast, without migrating",
        description="Check whether DOMAIN can live-migrate to --to now, and forecast how "
        "the migration would go (dirty rate measured for --dirty-rate-window seconds). "
        "Exit 0 if it may proceed, 3 if a check blocks it.",
    )
    chk.add_argument("domain", metavar="DOMAIN")
    chk.add_argument("--to", dest="dest_uri", required=True, type=uri, metavar="URI")
    chk.add_argument("--from", dest="source_uri", type=uri, metavar="URI")
    chk.add_argument("--bandwidth", type=int, metavar="MIB_PER_S", help="bandwidth cap to plan")
    chk.add_argument(
        "--max-downtime",
        type=positive_number(int),
        metavar="MS",
        help="downtime budget the forecast is judged by (default 500, as migrate's)",
    )
    chk.add_argument("--json", action="store_true", help="machine output")
    add_skip_check(chk)
    add_copy_storage(chk)
    hooks = sub.add_parser(
        "hooks",
        help="install the libvirt qemu hook that enforces reservations on this host",
        description="The hook runs at 'migrate begin' on a destination: it takes or verifies "
        "the reservation and vetoes migrations that do not fit, with a message libvirt "
        "passes back to the caller.",
    )
    hsub = hooks.add_subparsers(dest="hooks_command", required=True, parser_class=parser_class)
    for name, text in (
        ("install", "install the hook into /etc/libvirt/hooks/qemu.d/"),
        ("uninstall", "remove it"),
        ("status", "show whether it is installed and what it runs"),
    ):
        p = hsub.add_parser(name, help=text)
        p.add_argument("--etc", default="/etc/libvirt", metavar="DIR", help=argparse.SUPPRESS)


# --------------------------------------------------------------------------- rendering


def render_results(results: Sequence[CheckResult]) -> list[str]:
    """One line per result (plus hint lines for the bad ones)."""
    lines = []
    for r in results:
        label = r.verdict.value.upper() if r.verdict is not Verdict.OK else "ok"
        if r.skipped:
            label += " (skipped)"
        subject = f" [{r.subject}]" if r.subject else ""
        lines.append(f"  {label:<18} {r.name:<34}{subject} {r.message}")
        if r.verdict is not Verdict.OK:
            if r.observed or r.required:
                lines.append(f"  {'':<18} observed: {r.observed}; required: {r.required}")
            lines.append(f"  {'':<18} hint: {r.hint}")
    return lines


def render_forecast(fc: Forecast | None, error: str, window_s: int) -> list[str]:
    """The forecast with its inputs."""
    if fc is None:
        return [f"forecast: not available ({error})"]
    i = fc.inputs
    if fc.converges:
        head = (
            f"forecast: converges in {fc.rounds} rounds, ~{fc.total_time_s:.1f} s, "
            f"~{fc.expected_downtime_ms:.0f} ms downtime, ~{fc.data_mib:.0f} MiB sent; "
            f"start with {fc.strategy.value}"
        )
    else:
        head = f"forecast: pre-copy alone will NOT converge; start with {fc.strategy.value}"
    return [
        head,
        f"  why: {fc.reason}",
        (
            f"  inputs: dirty rate {i.dirty_rate_mib_s:.1f} MiB/s (measured over {window_s} s, "
            f"page sampling), bandwidth {i.bandwidth_mib_s:.0f} MiB/s ({i.bandwidth_source}), "
            f"bulk data {i.memory_mib:.0f} MiB ({i.memory_source}), "
            f"max downtime {i.max_downtime_ms} ms, final round at "
            f"~{i.switchover_bandwidth_mib_s or i.bandwidth_mib_s:.0f} MiB/s (unthrottled)"
        ),
    ]


# --------------------------------------------------------------------------- the gate


@dataclass(slots=True)
class Gate:
    """Pre-flight, forecast and reservation around one migration."""

    results: tuple[CheckResult, ...] = ()
    forecast: Forecast | None = None
    forecast_error: str = ""
    window_s: int = DEFAULT_WINDOW_S
    reservation_id: str = ""
    release: Callable[[float | None], Unreleased | None] | None = field(default=None, repr=False)
    """Releases the reservation: ``release(None)`` waits as long as the agent
    takes; ``release(timeout_s)`` gives up after that long and returns what the
    destination will do about it instead."""
    unreleased: Unreleased | None = None
    """The reservation a failed migration could not release (the lease frees it)."""
    copy_disks: tuple[str, ...] = ()
    """Disk targets the migration copies (non-shared storage)."""
    undo_precreate: Callable[[], None] | None = field(default=None, repr=False)
    """Removes destination images pre-created for the copy (after a failure)."""
    host_pair: tuple[str, str] = ("", "")
    """Source and destination host UUIDs (the migration history's key)."""
    elapsed_s: float = 0.0
    """How long pre-flight, forecast and reservation took (before any transfer)."""
    switchover_mib_s: float | None = None
    """Rate of the unthrottled final round, learned from this host pair's history."""

    @property
    def measured_dirty_mib_s(self) -> float | None:
        """The guest's dirty rate pre-flight measured (libvirt's dirty-rate API), if it did."""
        return None if self.forecast is None else self.forecast.inputs.dirty_rate_mib_s

    def check_section(self) -> dict[str, object]:
        """JSON: checks and forecast."""
        return {
            "may_proceed": not blockers(self.results),
            "blockers": [r.name for r in blockers(self.results)],
            "checks": [r.to_dict() for r in self.results],
            "forecast": None if self.forecast is None else self.forecast.to_dict(),
            "forecast_error": self.forecast_error,
            "dirty_rate_window_s": self.window_s,
        }

    def forecast_section(self, report_like: Mapping[str, object]) -> dict[str, object]:
        """Prediction vs outcome for the migration report."""
        if self.forecast is None:
            return {"prediction": None, "error": self.forecast_error}
        pred = self.forecast.to_dict()
        measured = {
            "rounds": report_like.get("iterations"),
            "total_time_s": report_like.get("qemu_elapsed_s"),
            "downtime_ms": report_like.get("downtime_ms"),
            "data_mib": report_like.get("data_mib"),
        }
        errors: dict[str, float | None] = {}
        for key, pkey in (
            ("rounds", "rounds"),
            ("total_time_s", "total_time_s"),
            ("downtime_ms", "expected_downtime_ms"),
            ("data_mib", "data_mib"),
        ):
            p, m = pred.get(pkey), measured.get(key)
            ok = isinstance(p, int | float) and isinstance(m, int | float) and m
            errors[key] = round(100 * relative_error(float(p), float(m)), 1) if ok else None  # type: ignore[arg-type]
        return {"prediction": pred, "measured": measured, "error_pct": errors}


def run_gate(  # noqa: PLR0913  the gate's inputs, keyword-only
    *,
    source: Hypervisor,
    dest: Hypervisor,
    domain: str,
    dest_uri: str,
    skip: Sequence[str],
    bandwidth_mib_s: int | None,
    max_downtime_ms: int | None,
    window_s: int,
    reserve: bool,
    copy: CopyMode = CopyMode.AUTO,
    source_uri: str = "",
    initial_downtime_ms: int | None = None,
) -> Gate:
    """Gather facts, run checks, forecast, and (``reserve``) reserve on the destination.

    Raises:
        UsageError: an unknown ``--skip-check`` name.
        PreflightFailed: a check blocks (nothing was changed).
        ReservationError: the destination refused the reservation.

    """
    from libvirt_vmotion.adapters.agent import (  # noqa: PLC0415
        AgentOperationFailed,
        AgentUnavailable,
        RemoteHost,
    )
    from libvirt_vmotion.adapters.history import History  # noqa: PLC0415
    from libvirt_vmotion.adapters.history import default_path as default_history_path  # noqa: PLC0415
    from libvirt_vmotion.preflight.gather import (  # noqa: PLC0415
        gather,
        measure_forecast,
        start_measuring,
    )
    from libvirt_vmotion.preflight.linkrate import learned_switchover  # noqa: PLC0415

    bad = unknown_skips(skip)
    if bad:
        msg = f"unknown check name(s) for --skip-check: {', '.join(bad)}"
        raise UsageError(msg, hint="Known checks: " + ", ".join(check_names()))
    agent = RemoteHost.for_uri(dest_uri)
    measuring = start_measuring(
        source,
        domain,
        window_s=window_s,
        dest_uri=dest_uri,
        measure_link_too=not bandwidth_mib_s,
    )
    # Three independent fact families, each a few agent round trips over ssh: gather
    # them side by side (libvirt connections are thread-safe) so pre-flight costs the
    # slowest family, not the sum. The first failure is the host facts' (as before).
    with ThreadPoolExecutor(max_workers=3, thread_name_prefix="preflight") as pool:
        host_side = pool.submit(gather, source, dest, domain, agent=agent)
        storage_side = pool.submit(
            lambda: storagehost.gather(
                source.lookup(domain),
                source_agent=RemoteHost.for_uri(source_uri or source.uri),
                dest_agent=agent,
                copy=copy,
            )
        )
        network_side = pool.submit(
            _bridge_checks, source, domain, source_uri or source.uri, dest_uri
        )
        facts = host_side.result()
        storage_facts = storage_side.result()
        facts = replace(facts, storage=storage_facts, bridge_checks=network_side.result())
    gate = Gate(
        results=run_checks(facts, skip=skip),
        window_s=window_s,
        host_pair=(facts.source.host_uuid, facts.dest.host_uuid),
    )
    gate.copy_disks = tuple(d.target for d in copied_disks(storage_facts))
    past = History(default_history_path()).runs(*gate.host_pair)
    gate.switchover_mib_s = learned_switchover(past)
    if not blockers(gate.results):
        measured = measure_forecast(
            source,
            domain,
            source_agent=RemoteHost.for_uri(source.uri),
            bandwidth_mib_s=bandwidth_mib_s,
            max_downtime_ms=max_downtime_ms,
            window_s=window_s,
            sleep=time.sleep,
            started=measuring,
            past=past,
            switchover_mib_s=gate.switchover_mib_s,
            initial_downtime_ms=initial_downtime_ms,
        )
        gate.forecast, gate.forecast_error = measured.forecast, measured.error
    else:
        gate.forecast_error = "not measured: a check blocks the migration"
    if not reserve or blockers(gate.results) or not facts.agent.available:
        return gate
    rid = str(uuid.uuid4())
    need = facts.guest.memory_bytes + facts.qemu_overhead_bytes
    try:
        reserved = agent.call(
            "reserve",
            {
                "id": rid,
                "domain": facts.guest.name,
                "owner": f"vmotion pid {os.getpid()} on {socket.gethostname()}",
                "memory_bytes": need,
                "vcpus": facts.guest.vcpus,
            },
        )
    except AgentOperationFailed as exc:
        raise ReservationError(exc.message, hint=exc.hint) from exc
    except AgentUnavailable as exc:
        msg = f"Could not reserve {format_bytes(need)} on {facts.dest.hostname}: {exc.message}"
        raise ReservationError(msg, hint=exc.hint) from exc
    gate.reservation_id = rid
    host = facts.dest.hostname

    def release(timeout_s: float | None) -> Unreleased | None:
        if timeout_s is not None:
            return _release_bounded(agent, rid, host=host, reserved=reserved, timeout_s=timeout_s)
        try:
            agent.call("release", {"id": rid})
        except VmotionError as exc:  # the lease and the hook release it anyway
            sys.stderr.write(f"warning: could not release reservation {rid}: {exc.message}\n")
        return None

    gate.release = release
    _precreate(gate, agent, storage_facts)
    return gate


def _release_bounded(
    agent: RemoteHost,
    rid: str,
    *,
    host: str,
    reserved: Mapping[str, object],
    timeout_s: float,
) -> Unreleased | None:
    """Release ``rid``, giving up after ``timeout_s``; then log when its lease frees it."""
    try:
        agent.call("release", {"id": rid}, timeout_s=timeout_s)
    except VmotionError as exc:
        timed_out = isinstance(exc.__cause__, subprocess.TimeoutExpired)
        left = Unreleased(
            reservation_id=rid,
            host=host,
            reason=f"no answer within {timeout_s:g} s" if timed_out else exc.message,
            ends_by_s=lease_ends_by_s(reserved, now_s=time.time()),
        )
        sys.stderr.write(f"warning: {left.message()}\n")
        return left
    return None


def _bridge_checks(
    source: Hypervisor, domain: str, source_uri: str, dest_uri: str
) -> tuple[NetCheckResult, ...]:
    """The network pre-flight (``cutover.network_checks``) on both hosts' bridges.

    A host whose agent cannot be reached gives a ``network-facts`` warning there;
    a guest that cannot be read gives nothing (``guest-running`` says why).
    """
    from libvirt_vmotion.cutover.announce import network_checks  # noqa: PLC0415

    try:
        return network_checks(
            source=source, domain=domain, source_uri=source_uri, dest_uri=dest_uri
        )
    except VmotionError:
        return ()


def _precreate(gate: Gate, agent: RemoteHost, facts: StorageFacts) -> None:
    """Create the destination images a copy writes into (libvirt needs them to exist)."""
    todo = [
        {"path": d.source, "format": d.format, "capacity_bytes": d.capacity_bytes}
        for d in copied_disks(facts)
        if needs_precreate(d, facts.dest_paths.get(d.source))
    ]
    if not todo:
        return
    try:
        created = agent.call("disk-precreate", {"disks": todo}).get("created", [])
    except VmotionError as exc:
        if gate.release is not None:
            gate.release(RELEASE_AFTER_FAILURE_TIMEOUT_S)
            gate.release = None
        msg = f"Could not pre-create the destination disk image(s) for the copy: {exc.message}"
        hint = exc.hint or "Check the destination's image directory."
        raise PreflightFailed(msg, hint=hint) from exc
    paths = [str(p) for p in created] if isinstance(created, list) else []

    def undo() -> None:
        try:
            agent.call("disk-remove", {"paths": paths})
        except VmotionError as exc:
            sys.stderr.write(f"warning: could not remove pre-created {paths}: {exc.message}\n")

    gate.undo_precreate = undo if paths else None


def print_gate(gate: Gate, out: TextIO, *, only_problems: bool) -> None:
    """Human output of the checks and the forecast."""
    shown = (
        [r for r in gate.results if r.verdict is not Verdict.OK]
        if only_problems
        else list(gate.results)
    )
    bad = blockers(gate.results)
    warnings = sum(1 for r in gate.results if r.verdict is Verdict.WARNING)
    lines = ["pre-flight:", *render_results(shown)]
    if bad:
        lines.append(f"verdict: BLOCKED by {', '.join(sorted({r.name for r in bad}))}")
    else:
        lines.append(f"verdict: may proceed ({len(gate.results)} checks, {warnings} warning(s))")
        lines += render_forecast(gate.forecast, gate.forecast_error, gate.window_s)
    out.write("\n".join(lines) + "\n")
    out.flush()


def raise_if_blocked(gate: Gate) -> None:
    """Raise PreflightFailed naming every blocker and what to do."""
    bad = blockers(gate.results)
    if not bad:
        return
    first = bad[0]
    names = ", ".join(dict.fromkeys(r.name for r in bad))
    msg = f"Pre-flight found {len(bad)} blocker(s) ({names}): " + " ".join(
        f"[{r.name}] {r.message}" for r in bad
    )
    more = (
        " Run `vmotion check` with the same arguments to see every finding." if len(bad) > 1 else ""
    )
    raise PreflightFailed(msg, hint=first.hint + more)


class GateContext:
    """``with GateContext(...) as gate:`` around ``driver.migrate``; releases on exit."""

    def __init__(
        self,
        args: argparse.Namespace,
        request: MigrationRequest,
        source: Hypervisor,
        dest: Hypervisor,
    ) -> None:
        """Remember what to check; nothing runs until ``__enter__``."""
        self._args = args
        self._request = request
        self._source = source
        self._dest = dest
        self.gate = Gate()

    def __enter__(self) -> Gate:
        """Run pre-flight (exit 3), forecast, and reserve (exit 4)."""
        req = self._request
        started = time.monotonic()
        self.gate = run_gate(
            source=self._source,
            dest=self._dest,
            domain=req.domain,
            dest_uri=req.dest_uri,
            skip=getattr(self._args, "skip_check", []) or [],
            bandwidth_mib_s=req.bandwidth_mib_s,
            max_downtime_ms=req.max_downtime_ms,
            window_s=getattr(self._args, "dirty_rate_window", DEFAULT_WINDOW_S),
            reserve=True,
            copy=getattr(self._args, "copy_storage", CopyMode.AUTO),
            source_uri=req.source_uri,
            initial_downtime_ms=getattr(self._args, "initial_downtime", None),
        )
        self.gate.elapsed_s = time.monotonic() - started
        raise_if_blocked(self.gate)  # the error lists the blockers; no table before it
        print_gate(self.gate, sys.stderr, only_problems=True)
        return self.gate

    def __exit__(
        self,
        _typ: type[BaseException] | None,
        _exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        """Release the reservation, whatever happened; undo a pre-create on failure.

        After a failure the release is bounded (``RELEASE_AFTER_FAILURE_TIMEOUT_S``);
        what it could not release is left in ``gate.unreleased`` for the report.
        """
        # A failed copy leaves an image on the destination we made: remove it, unless
        # the guest may already run there (cutover uncertain).
        failed = _exc is not None and not isinstance(_exc, CutoverFailed)
        if failed and self.gate.undo_precreate is not None:
            self.gate.undo_precreate()
            self.gate.undo_precreate = None
        if self.gate.release is not None:
            # A cutover failure may have cut the link to the destination: do not hold
            # the exit on ssh timeouts; the destination's lease frees the reservation.
            timeout_s = None if _exc is None else RELEASE_AFTER_FAILURE_TIMEOUT_S
            self.gate.unreleased = self.gate.release(timeout_s)
            self.gate.release = None


def migrate_forecast_section(gate: Gate, report: Mapping[str, object]) -> dict[str, object]:
    """The ``forecast`` section of a migrate report: prediction vs outcome."""
    elapsed_ms = report.get("qemu_elapsed_ms")
    data = report.get("data_transferred_bytes")
    like = {
        "iterations": report.get("iterations"),
        "qemu_elapsed_s": elapsed_ms / 1000 if isinstance(elapsed_ms, int | float) else None,
        "downtime_ms": report.get("downtime_ms"),
        "data_mib": data / 1024 / 1024 if isinstance(data, int | float) else None,
    }
    return gate.forecast_section(like)


def cmd_check(args: argparse.Namespace) -> int:
    """``vmotion check``: exit 0 if the migration may proceed, 3 if blocked."""
    from libvirt_vmotion.adapters.virt import Hypervisor  # noqa: PLC0415

    source_uri = args.source_uri or os.environ.get("LIBVIRT_DEFAULT_URI") or "qemu:///system"
    if source_uri == args.dest_uri:
        msg = f"--from and --to are the same URI ({args.dest_uri})."
        raise UsageError(msg, hint="Give the destination host's URI with --to.")
    with Hypervisor.open(source_uri) as source, Hypervisor.open(args.dest_uri) as dest:
        gate = run_gate(
            source=source,
            dest=dest,
            domain=args.domain,
            dest_uri=args.dest_uri,
            skip=args.skip_check,
            bandwidth_mib_s=args.bandwidth,
            max_downtime_ms=args.max_downtime,
            window_s=args.dirty_rate_window,
            reserve=False,
            copy=args.copy_storage,
            source_uri=source_uri,
        )
    if args.json:
        print(json.dumps(gate.check_section(), sort_keys=True))  # noqa: T201  machine output
    else:
        print_gate(gate, sys.stdout, only_problems=False)
    return ExitCode.PREFLIGHT if blockers(gate.results) else ExitCode.OK


def cmd_hooks(args: argparse.Namespace) -> int:
    """``vmotion hooks install|uninstall|status``."""
    from pathlib import Path  # noqa: PLC0415

    from libvirt_vmotion.reserve import hook as hooks  # noqa: PLC0415

    etc = Path(args.etc)
    if args.hooks_command == "install":
        path = hooks.install(etc=etc, python=sys.executable)
        print(f"installed {path} (runs {sys.executable} -m libvirt_vmotion.reserve.hook)")  # noqa: T201
        print(  # noqa: T201
            "note: libvirtd looks for hook scripts when it starts; restart it if it ran "
            "without any qemu hook before."
        )
        return ExitCode.OK
    if args.hooks_command == "uninstall":
        removed = hooks.uninstall(etc=etc)
        print("removed " + str(removed) if removed else "not installed")  # noqa: T201
        return ExitCode.OK
    print(hooks.status(etc=etc))  # noqa: T201
    return ExitCode.OK if hooks.installed_path(etc).exists() else ExitCode.ERROR


def run(args: argparse.Namespace) -> int:
    """Dispatch ``check`` and ``hooks``."""
    if args.command == "check":
        return cmd_check(args)
    return cmd_hooks(args)
