"""The ``check`` and ``hooks`` commands, and how pre-flight is shown.

I/O: argparse and printing only. Pre-flight itself is a Session step
(``session.core``, gathered by ``session.gate``): ``check`` runs only that step;
``migrate`` runs it first, then reserves, migrates and releases (``session``).
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import TextIO, TypeVar

from libvirt_vmotion.argtypes import (
    HINT_SEPARATOR,
    add_guest_and_hosts,
    positive_whole_seconds,
)
from libvirt_vmotion.cli.report import json_line
from libvirt_vmotion.converge.machine import stream_policy
from libvirt_vmotion.errors import ExitCode, UsageError
from libvirt_vmotion.model import MigrationRequest
from libvirt_vmotion.policy import MigrationPolicy, escalations
from libvirt_vmotion.preflight.forecast import Forecast
from libvirt_vmotion.preflight.registry import CheckResult, Verdict, blockers, check_names
from libvirt_vmotion.session.core import DEFAULT_WINDOW_S, PreflightOutcome, measured_context
from libvirt_vmotion.session.gate import PreflightSettings
from libvirt_vmotion.storage.plan import CopyMode

_P = TypeVar("_P", bound=argparse.ArgumentParser)


def _check_name(text: str) -> str:
    """An argparse ``type=``: a known pre-flight check name (refused before any connection)."""
    names = check_names()
    if text in names:
        return text
    # A prefix or a word of the name ("cpu" -> cpu-compat), else a near spelling.
    close = [n for n in names if n.startswith(text) or text in n.split("-")][:3]
    close = close or difflib.get_close_matches(text, names, n=3)
    hint = f"did you mean {' or '.join(close)}?" if close else "'--help' lists every name"
    msg = f"unknown pre-flight check {text!r}{HINT_SEPARATOR}{hint}"
    raise argparse.ArgumentTypeError(msg)


def add_skip_check(parser: argparse.ArgumentParser) -> None:
    """``--skip-check NAME`` (repeatable), on ``check`` and ``migrate``."""
    parser.add_argument(
        "--skip-check",
        action="append",
        type=_check_name,
        default=[],
        metavar="NAME",
        help="override one pre-flight check (repeatable; default: none); names:\n"
        + "\n".join(check_names()),
    )
    parser.add_argument(
        "--dirty-rate-window",
        type=positive_whole_seconds,
        default=DEFAULT_WINDOW_S,
        metavar="SECONDS",
        help=f"how long to measure the guest's dirty rate for the forecast, in whole "
        f"seconds (libvirt's API; default: {DEFAULT_WINDOW_S:g} s, sampling more pages "
        "through QEMU's monitor, or 1 s where QEMU < 8.2 refuses)",
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
    parser_class: type[_P],
    add_policy_flags: Callable[[argparse.ArgumentParser], None],
) -> None:
    """Add ``check`` and ``hooks`` to the CLI."""
    chk = sub.add_parser(
        "check",
        help="pre-flight checks and a forecast, without migrating",
        description="Check whether DOMAIN can live-migrate to --to now, and forecast how "
        "the migration would go (dirty rate measured for --dirty-rate-window seconds). "
        "Exit 0 if it may proceed, 3 if a check blocks it. It also says what the policy "
        "(the same flags as migrate's) permits: throttling, post-copy, and when. "
        "Each host must offer ssh as root with a key from here, and the package importable "
        "by its python (Debian's python is externally managed: a venv, named by "
        "VMOTION_AGENT_PYTHON); without it the host-side checks are warnings that say why.",
    )
    add_guest_and_hosts(chk)
    add_policy_flags(chk)
    chk.add_argument(
        "--json", action="store_true", help="print the results as one JSON object (machine output)"
    )
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
        ("status", "show whether it is installed, its interpreter, and that it imports us"),
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


def render_forecast(fc: Forecast | None, error: str, window_s: float) -> list[str]:
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
            f"  inputs: dirty rate {i.dirty_rate_mib_s:.1f} MiB/s (measured over {window_s:g} s, "
            f"page sampling), bandwidth {i.bandwidth_mib_s:.0f} MiB/s ({i.bandwidth_source}), "
            f"bulk data {i.memory_mib:.0f} MiB ({i.memory_source}), "
            f"max downtime {i.max_downtime_ms} ms, final round at "
            f"~{i.switchover_bandwidth_mib_s or i.bandwidth_mib_s:.0f} MiB/s (unthrottled)"
        ),
    ]


# --------------------------------------------------------------------------- the gate


def print_gate(
    gate: PreflightOutcome,
    out: TextIO,
    *,
    only_problems: bool,
    policy: MigrationPolicy | None = None,
) -> None:
    """Human output of the checks, the forecast and what ``policy`` permits."""
    shown = (
        [r for r in gate.results if r.verdict is not Verdict.OK]
        if only_problems
        else list(gate.results)
    )
    bad = blockers(gate.results)
    warnings = sum(1 for r in gate.results if r.verdict is Verdict.WARNING)
    lines = ["pre-flight:", *render_results(shown)]
    lines.append(
        f"encryption: {'TLS for memory and copied disks' if gate.use_tls else 'none'} "
        f"(--tls {gate.tls_mode})"
    )
    if bad:
        lines.append(f"verdict: BLOCKED by {', '.join(sorted({r.name for r in bad}))}")
    else:
        lines.append(f"verdict: may proceed ({len(gate.results)} checks, {warnings} warning(s))")
        lines += render_forecast(gate.forecast, gate.forecast_error, gate.window_s)
        if policy is not None:
            stream, why = stream_of(policy, gate)
            lines.append(f"compression: {why} (--compression)")
            lines.append("the policy permits (flags or --policy change it):")
            lines += [f"  {line}" for line in escalations(stream)]
    out.write("\n".join(lines) + "\n")
    out.flush()


def stream_of(policy: MigrationPolicy, gate: PreflightOutcome) -> tuple[MigrationPolicy, str]:
    """The policy as this guest's stream lets it apply (compressed: no post-copy), and why."""
    measured = measured_context(policy, gate)
    return stream_policy(policy, measured), measured.compression_reason


def preflight_settings(args: argparse.Namespace, policy: MigrationPolicy) -> PreflightSettings:
    """The pre-flight choices ``check`` and ``migrate`` share, validated before any host.

    The forecast is judged by ``policy``'s effective budget (defaults, then
    ``--policy FILE``, then flags), as the migration would run.
    """
    return PreflightSettings(
        skip=tuple(getattr(args, "skip_check", None) or ()),
        window_s=getattr(args, "dirty_rate_window", DEFAULT_WINDOW_S),
        copy=getattr(args, "copy_storage", CopyMode.AUTO),
        bandwidth_mib_s=policy.bandwidth_mib_s,
        max_downtime_ms=policy.max_downtime_ms,
        initial_downtime_ms=policy.initial_downtime_ms,
        tls=policy.tls,
    )


class StderrEvents:
    """A Session's events for a terminal: pre-flight's problems and warnings on stderr.

    Args:
        policy: the migration's policy; pre-flight says what it permits.

    """

    def __init__(self, policy: MigrationPolicy | None = None) -> None:
        self._policy = policy

    def preflight_done(self, outcome: PreflightOutcome) -> None:
        """Show only what is not ok (the report has everything), and what the policy permits."""
        print_gate(outcome, sys.stderr, only_problems=True, policy=self._policy)

    def warning(self, text: str) -> None:
        """One ``warning:`` line."""
        sys.stderr.write(f"warning: {text}\n")


def cmd_check(args: argparse.Namespace, *, policy: MigrationPolicy) -> int:
    """``vmotion check``: exit 0 if the migration may proceed, 3 if blocked.

    ``policy``: the effective policy of these arguments (as ``migrate`` would use it).
    """
    from libvirt_vmotion.session.wiring import open_session  # noqa: PLC0415  libvirt on use

    source_uri = args.source_uri or os.environ.get("LIBVIRT_DEFAULT_URI") or "qemu:///system"
    if source_uri == args.dest_uri:
        msg = f"--from and --to are the same URI ({args.dest_uri})."
        raise UsageError(msg, hint="Give the destination host's URI with --to.")
    request = MigrationRequest(
        domain=args.domain,
        source_uri=source_uri,
        dest_uri=args.dest_uri,
        bandwidth_mib_s=policy.bandwidth_mib_s,
        max_downtime_ms=policy.max_downtime_ms,
        timeout_s=policy.max_duration_s,
    )
    settings = preflight_settings(args, policy)
    with open_session(request, policy=policy, settings=settings, events=StderrEvents()) as session:
        gate = session.check()
    if args.json:
        stream, why = stream_of(policy, gate)
        out = {
            "event": "check",
            **gate.check_section(),
            "escalations": escalations(stream),
            "compression": why,
        }
        print(json_line(out, now_s=time.time()))  # noqa: T201  machine output
    else:
        print_gate(gate, sys.stdout, only_problems=False, policy=policy)
    return ExitCode.PREFLIGHT if blockers(gate.results) else ExitCode.OK


def cmd_hooks(args: argparse.Namespace) -> int:
    """``vmotion hooks install|uninstall|status``."""
    from pathlib import Path  # noqa: PLC0415

    from libvirt_vmotion.reserve import hook as hooks  # noqa: PLC0415

    etc = Path(args.etc)
    if args.hooks_command == "install":
        path = hooks.install(etc=etc, python=sys.executable)
        print(f"installed {path} (runs {sys.executable} -I; fails open without it)")  # noqa: T201
        print(  # noqa: T201
            "note: libvirtd (virtqemud with modular daemons) looks for hook scripts when it "
            "starts; restart it if it ran without any qemu hook before "
            "(systemctl restart libvirtd, or virtqemud)."
        )
        return ExitCode.OK
    if args.hooks_command == "uninstall":
        removed = hooks.uninstall(etc=etc)
        print("removed " + str(removed) if removed else "not installed")  # noqa: T201
        return ExitCode.OK
    state = hooks.status(etc=etc)
    print(state.line)  # noqa: T201
    return ExitCode.OK if state.healthy else ExitCode.ERROR


def run(
    args: argparse.Namespace, *, policy: Callable[[argparse.Namespace], MigrationPolicy]
) -> int:
    """Dispatch ``check`` (``policy`` builds its policy from the arguments) and ``hooks``."""
    if args.command == "check":
        return cmd_check(args, policy=policy(args))
    return cmd_hooks(args)
