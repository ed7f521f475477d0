"""``vmotion evacuate`` and ``vmotion maintenance``: argparse and rendering only.

The evacuation itself is ``evacuate.run.Evacuation``; this module builds it,
prints its plan and progress (lines on stderr, or JSON lines on stdout with
``--json``), and turns its results into the report and the exit code.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Final, Protocol, TextIO, TypeVar

from libvirt_vmotion.argtypes import DEFAULT_SOURCE_URI_ENV, libvirt_uri, positive_number
from libvirt_vmotion.cli import checks as checks_cli
from libvirt_vmotion.cli.report import json_line
from libvirt_vmotion.errors import ExitCode, UsageError, VmotionError
from libvirt_vmotion.evacuate.plan import Outcome, Placement

if TYPE_CHECKING:
    from libvirt_vmotion.evacuate.run import GuestResult, SourceHost
    from libvirt_vmotion.model import MigrationRequest
    from libvirt_vmotion.policy import MigrationPolicy
    from libvirt_vmotion.session.wiring import Around

_P = TypeVar("_P", bound=argparse.ArgumentParser)
POLICY_FLAG_NAMES: Final[Mapping[str, str]] = MappingProxyType({"parallel": "--multifd"})
"""The policy's ``parallel`` (multifd streams) is ``--multifd`` here: ``--parallel`` counts
migrations in flight (as the issue, VDSM and KubeVirt name it)."""
PROGRESS_EVERY_S: Final = 2.0
"""Plain progress lines: each running migration at most this often, plus one overall line."""
_GIB: Final = 1024**3


class AddPolicyFlags(Protocol):
    """Adds the policy's flags to a parser (``cli.app``), some renamed (``POLICY_FLAG_NAMES``)."""

    def __call__(
        self, parser: argparse.ArgumentParser, *, flag_names: Mapping[str, str] | None = None
    ) -> None:
        """Add them; ``flag_names`` maps a policy key to the flag it is given as."""


def add_subcommands(
    sub: argparse._SubParsersAction[_P],
    *,
    parser_class: type[_P],
    add_policy_flags: AddPolicyFlags,
) -> None:
    """Add ``evacuate`` and ``maintenance`` to the CLI."""
    ev = sub.add_parser(
        "evacuate",
        help="move every running guest off a host, several at once, each where it fits",
        description="Empty --from: pre-flight each guest toward each --to, place it where it "
        "passes and fits (most memory headroom after placement), start the guests predicted "
        "to finish soonest first, at most --parallel at once. Each move is a `vmotion "
        "migrate` (same pre-flight, reservation, policy, cutover and report). A guest that "
        "fits nowhere stays, and the report names what kept it out. Exit 0 only when every "
        "guest asked for left the source.",
    )
    ev.add_argument(
        "--from", dest="source_uri", type=libvirt_uri, metavar="URI",
        help=f"the host to empty (default: ${DEFAULT_SOURCE_URI_ENV} or qemu:///system)",
    )  # fmt: skip
    _add_dest_and_moves(ev)
    add_policy_flags(ev, flag_names=POLICY_FLAG_NAMES)
    checks_cli.add_skip_check(ev)
    checks_cli.add_copy_storage(ev)
    ev.set_defaults(watch_switch=None, guest_ip=[], announce_count=3, announce_interval_ms=50,
                    no_notify=False, no_notify_on=[])  # fmt: skip
    mnt = sub.add_parser(
        "maintenance",
        help="put a host in maintenance (refuse incoming guests) and empty it; end it",
        description="enter: mark URI's host as in maintenance in its own reservation store "
        "(our hook there then refuses every incoming migration, a plain `virsh migrate` "
        "included, and `check` reports the blocker dest-maintenance), then evacuate it to "
        "the --to hosts if any are given. exit: clear the mark. status: the mark and the "
        "guests still running there. The mark survives restarts of libvirtd and the agent.",
    )
    msub = mnt.add_subparsers(dest="maintenance_command", required=True, parser_class=parser_class)
    for verb, text in (
        ("enter", "mark the host, then evacuate it to the --to hosts (if any)"),
        ("exit", "clear the mark: incoming migrations are accepted again"),
        ("status", "is the host in maintenance, and what still runs there"),
    ):
        p = msub.add_parser(verb, help=text, description=text)
        p.add_argument("uri", metavar="URI", type=libvirt_uri, help="the host's libvirt URI")
        p.add_argument("--json", action="store_true", help="print JSON lines (machine output)")
        if verb == "enter":
            p.add_argument(
                "--to", dest="dest_uris", action="append", default=[], type=libvirt_uri,
                metavar="URI", help="evacuate to these hosts after marking (repeatable; "
                "default: only mark)",
            )  # fmt: skip
            _add_moves(p)
            add_policy_flags(p, flag_names=POLICY_FLAG_NAMES)
            checks_cli.add_skip_check(p)
            checks_cli.add_copy_storage(p)
            p.set_defaults(watch_switch=None, guest_ip=[], announce_count=3,
                           announce_interval_ms=50, no_notify=False, no_notify_on=[],
                           domains=[], dry_run=False)  # fmt: skip


def _add_dest_and_moves(ev: argparse.ArgumentParser) -> None:
    ev.add_argument(
        "--to", dest="dest_uris", action="append", required=True, type=libvirt_uri,
        metavar="URI", help="a destination host (repeatable: the guests are spread over them)",
    )  # fmt: skip
    ev.add_argument(
        "--domain", dest="domains", action="append", default=[], metavar="NAME",
        help="move only this guest (repeatable; default: every running guest)",
    )  # fmt: skip
    ev.add_argument(
        "--dry-run", action="store_true",
        help="print the placement and the order, with each guest's forecast; move nothing",
    )  # fmt: skip
    ev.add_argument(
        "--json", action="store_true",
        help="stream events as JSON lines on stdout, each tagged with its guest; the last "
        "line is the evacuation report",
    )  # fmt: skip
    _add_moves(ev)


def _add_moves(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--parallel", type=positive_number(int, what="a whole number of migrations"),
        default=2, metavar="N",
        help="most migrations in flight out of the source (default: 2, as VDSM and KubeVirt); "
        "never more into one destination than its inbound slots",
    )  # fmt: skip
    parser.add_argument(
        "--bandwidth-total", type=positive_number(int, what="a whole number of MiB/s"),
        metavar="MIB_S",
        help="share this bandwidth among the running migrations (each total / in flight, "
        "rebalanced live when one ends; default: each migration its own --bandwidth)",
    )  # fmt: skip


# --------------------------------------------------------------------------- rendering


class EvacuationPrinter:
    """The ``EvacuationEvents`` port for a terminal (stderr lines) or ``--json`` (stdout)."""

    def __init__(self, *, json_out: TextIO | None, err: TextIO = sys.stderr) -> None:
        """Human lines to ``err``; JSON lines to ``json_out`` when given."""
        self._json = json_out
        self._err = err
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._views: dict[str, object] = {}
        self._total = 0
        self._done = 0
        self._started = time.monotonic()

    def _emit(self, doc: Mapping[str, object], text: str) -> None:
        with self._lock:
            if self._json is not None:
                self._json.write(json_line(doc, now_s=time.time()) + "\n")
                self._json.flush()
            elif text:
                self._err.write(text + "\n")
                self._err.flush()

    def planned(self, plan: Sequence[Placement]) -> None:
        """The plan, one line per guest."""
        self._total = len(plan)
        lines = [f"evacuation plan ({len(plan)} guest(s)):"]
        for p in plan:
            if p.dest is None:
                why = "; ".join(f"{d}: {w}" for d, w in p.kept_out.items())
                lines.append(f"  -  {p.guest}: stays (fits nowhere: {why})")
                continue
            eta = "no forecast" if p.predicted_s is None else f"forecast {p.predicted_s:.1f} s"
            lines.append(f"  {p.order}. {p.guest} -> {p.dest} ({eta}, {p.strategy or '?'})")
        self._emit({"event": "evacuation-plan", "plan": [p.to_dict() for p in plan]},
                   "\n".join(lines))  # fmt: skip

    def started(self, placement: Placement, dest: str, bandwidth_mib_s: int | None) -> None:
        """A move started."""
        cap = "uncapped" if bandwidth_mib_s is None else f"{bandwidth_mib_s} MiB/s"
        self._emit(
            {"event": "guest-started", "guest": placement.guest, "to": dest,
             "bandwidth_mib_s": bandwidth_mib_s},
            f"[{placement.guest} -> {dest}] started ({cap})",
        )  # fmt: skip

    def progress(self, guest: str, dest: str, view: object) -> None:
        """A move's progress (throttled per guest): its line, then the overall line.

        Two lines per event, on purpose: the guest's own (``guest-progress``) and
        the whole evacuation's (``evacuation-progress``; plain: ``overall: ...``).
        """
        to_dict = getattr(view, "to_dict", None)
        line = getattr(view, "line", None)
        with self._lock:
            self._views[guest] = view
            now = time.monotonic()
            due = now - self._last.get(guest, -1e9) >= PROGRESS_EVERY_S
            if due:
                self._last[guest] = now
            overall = overall_progress(
                tuple(self._views.values()), done=self._done, total=self._total
            )
        if not due or to_dict is None or line is None:
            return
        doc = {"event": "guest-progress", "guest": guest, "to": dest, "progress": to_dict()}
        self._emit(doc, f"[{guest} -> {dest}] {line()}")
        self._emit(overall, overall_line(overall))

    def bandwidth(self, guest: str, mib_s: int) -> None:
        """A move's share of the total changed."""
        self._emit({"event": "guest-bandwidth", "guest": guest, "bandwidth_mib_s": mib_s},
                   f"[{guest}] bandwidth share now {mib_s} MiB/s")  # fmt: skip

    def finished(self, result: GuestResult) -> None:
        """A guest's move ended."""
        with self._lock:
            self._done += 1
            self._views.pop(result.guest, None)
        entry = guest_entry(result, source_uri="")
        if result.outcome is Outcome.MOVED:
            text = (
                f"[{result.guest} -> {result.dest}] moved in {entry['total_s']} s, "
                f"downtime {entry['downtime_ms']} ms"
            )
        else:
            text = f"[{result.guest}] {result.outcome.value}: {result.error}"
        self._emit({"event": "guest-finished", **entry}, text)

    def warning(self, text: str) -> None:
        """One ``warning:`` line (stderr, also with --json)."""
        with self._lock:
            self._err.write(f"warning: {text}\n")
            self._err.flush()


def overall_progress(views: Sequence[object], *, done: int, total: int) -> dict[str, object]:
    """The ``evacuation-progress`` event: guests done, data left and ETA of the running moves.

    ``views`` are the running moves' latest progress views (their ``remaining_mib``
    and ``eta_s``; a view without them counts as nothing left, ETA unknown).
    """
    left = sum(float(getattr(v, "remaining_mib", 0.0)) for v in views)
    etas = [getattr(v, "eta_s", None) for v in views]
    known = [float(e) for e in etas if isinstance(e, int | float)]
    return {
        "event": "evacuation-progress",
        "guests_done": done,
        "guests_total": total,
        "gib_left": round(left / 1024, 2),
        "eta_s": round(max(known), 1) if known else None,
    }


def overall_line(overall: Mapping[str, object]) -> str:
    """The plain form of ``overall_progress``."""
    eta = "?" if overall["eta_s"] is None else f"{overall['eta_s']} s"
    return (
        f"overall: {overall['guests_done']}/{overall['guests_total']} guests done, "
        f"{overall['gib_left']} GiB left in flight, ETA {eta} for the running moves"
    )


def guest_entry(result: GuestResult, *, source_uri: str) -> dict[str, object]:
    """One guest's entry of the evacuation report."""
    total = downtime = None
    if result.result is not None:
        total = round(result.result.outcome.wall_time_s, 2)
        final = result.result.outcome.final
        downtime = final.downtime_ms if final is not None else None
    return {
        "guest": result.guest,
        "from": source_uri or None,
        "to": result.dest,
        "result": result.outcome.value,
        "total_s": total,
        "downtime_ms": downtime,
        "bandwidth_mib_s": result.bandwidth_mib_s,
        "started_s": None if result.started_s is None else round(result.started_s, 2),
        "ended_s": None if result.ended_s is None else round(result.ended_s, 2),
        "reason": result.error or None,
        "hint": result.hint or None,
        "kept_out": dict(result.placement.kept_out) if result.placement else {},
    }


def evacuation_report(
    results: Sequence[GuestResult], *, source_uri: str, elapsed_s: float, still_running: int | None
) -> dict[str, object]:
    """The last line of ``evacuate --json``: per guest, the host's time to empty, empty or not."""
    moved = [r for r in results if r.outcome is Outcome.MOVED]
    return {
        "event": "evacuation-report",
        "from": source_uri,
        "guests": [guest_entry(r, source_uri=source_uri) for r in results],
        "moved": len(moved),
        "asked": len(results),
        "time_to_empty_s": round(elapsed_s, 2),
        "host_empty": still_running == 0 if still_running is not None else None,
        "still_running": still_running,
    }


def render_report(report: Mapping[str, object]) -> str:
    """The text form of the evacuation report."""
    head = (
        f"evacuation of {report['from']}: {report['moved']}/{report['asked']} guest(s) moved "
        f"in {report['time_to_empty_s']} s; host empty: {report['host_empty']}"
    )
    lines = [head]
    guests = report.get("guests")
    for g in guests if isinstance(guests, list) else []:
        if g["result"] == Outcome.MOVED.value:
            lines.append(
                f"  {g['guest']}: -> {g['to']} in {g['total_s']} s, downtime "
                f"{g['downtime_ms']} ms (started at {g['started_s']} s, bandwidth "
                f"{g['bandwidth_mib_s'] or 'uncapped'})"
            )
        else:
            lines.append(f"  {g['guest']}: {g['result']}: {g['reason']}")
            if g.get("hint"):
                lines.append(f"      hint: {g['hint']}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- commands


def _source(args: argparse.Namespace) -> str:
    return args.source_uri or os.environ.get(DEFAULT_SOURCE_URI_ENV) or "qemu:///system"


def cmd_evacuate(
    args: argparse.Namespace,
    *,
    policy: MigrationPolicy,
    around: Callable[[MigrationRequest], Around],
    source_uri: str | None = None,
) -> int:
    """Plan and run an evacuation; print the report; the exit code."""
    from libvirt_vmotion.evacuate.run import Evacuation, EvacuationRequest  # noqa: PLC0415
    from libvirt_vmotion.evacuate.wiring import LibvirtSessions, source_host  # noqa: PLC0415

    source = source_uri or _source(args)
    request = EvacuationRequest(
        source_uri=source,
        dest_uris=tuple(args.dest_uris),
        domains=tuple(dict.fromkeys(args.domains)),
        parallel=args.parallel,
        bandwidth_total_mib_s=args.bandwidth_total,
        bandwidth_mib_s=policy.bandwidth_mib_s,
    )
    settings = checks_cli.preflight_settings(args, policy)
    printer = EvacuationPrinter(json_out=sys.stdout if args.json else None)
    sessions = LibvirtSessions(policy, settings, _QuietSessionEvents(printer), around)
    t0 = time.monotonic()
    _warm_agents((source, *request.dest_uris))
    with source_host(source) as src:
        evac = Evacuation(request, sessions, src, printer, time.monotonic)
        placements = evac.plan()
        if args.dry_run:
            return dry_run_exit_code(placements)
        try:
            results = evac.run(placements)
        except KeyboardInterrupt:
            sys.stderr.write("interrupted: no new migrations; see each guest's line above\n")
            raise
        asked = {p.guest for p in placements}
        still = len(asked & set(_running_now(src)))
    report = evacuation_report(
        results, source_uri=source, elapsed_s=time.monotonic() - t0, still_running=still
    )
    if args.json:
        print(json_line(report, now_s=time.time()))  # noqa: T201  machine output
    else:
        print(render_report(report))  # noqa: T201  the command's output
    return evacuation_exit_code(results)


def _warm_agents(uris: Sequence[str]) -> None:
    """Start every host's agent channel now: their ssh and start-up overlap listing the guests.

    Each pre-flight's first call would otherwise wait for its host's channel.
    """
    from libvirt_vmotion.adapters.agent import RemoteHost  # noqa: PLC0415

    for uri in uris:
        RemoteHost.for_uri(uri).warm()


def dry_run_exit_code(placements: Sequence[Placement]) -> int:
    """``evacuate --dry-run``'s exit code: 0 when every guest has a place, else 3.

    >>> dry_run_exit_code([Placement("g1", "qemu+tcp://b/system", order=1)])
    0
    >>> dry_run_exit_code([Placement("g1", None)])
    3
    """
    return ExitCode.OK if all(p.dest for p in placements) else ExitCode.PREFLIGHT


def evacuation_exit_code(results: Sequence[GuestResult]) -> int:
    """The evacuation's exit code: 0 only when every guest asked for moved.

    Otherwise the guests' own exit code when they all failed alike (3 for guests
    that fit nowhere, 5 for aborted moves, ...), else 1.
    """
    if all(r.outcome is Outcome.MOVED for r in results):
        return ExitCode.OK
    codes = [r.exit_code for r in results if r.exit_code]
    return codes[0] if len(set(codes)) == 1 else ExitCode.ERROR


def _running_now(src: SourceHost) -> tuple[str, ...]:
    """The source's running guests after the moves (empty when it cannot tell)."""
    try:
        return src.running_guests()
    except VmotionError:
        return ()


class _QuietSessionEvents:
    """A Session's events inside an evacuation: warnings go to the printer, tagged."""

    def __init__(self, printer: EvacuationPrinter) -> None:
        self._printer = printer

    def preflight_done(self, outcome: object) -> None:
        """Pre-flight passed: the plan already said so."""

    def warning(self, text: str) -> None:
        """Pass it on."""
        self._printer.warning(text)


def cmd_maintenance(
    args: argparse.Namespace,
    *,
    policy: Callable[[argparse.Namespace], MigrationPolicy],
    around: Callable[[argparse.Namespace], Callable[[MigrationRequest], Around]],
) -> int:
    """``vmotion maintenance enter|exit|status URI``."""
    from libvirt_vmotion.adapters import ops  # noqa: PLC0415
    from libvirt_vmotion.adapters.agent import RemoteHost  # noqa: PLC0415

    verb = args.maintenance_command
    if verb == "enter" and args.dest_uris and args.uri in args.dest_uris:
        msg = f"{args.uri} is the host going into maintenance; it cannot be a --to as well."
        raise UsageError(msg, hint="Give other hosts with --to.")
    action = "status" if verb == "status" else verb
    by = f"vmotion maintenance, pid {os.getpid()} on {socket.gethostname()}"
    reply = ops.MAINTENANCE.call(
        RemoteHost.for_uri(args.uri), ops.MaintenanceRequest(action=action, by=by)
    )
    running = _guests_on(args.uri)
    mark = None if reply.maintenance is None else ops.to_json(reply.maintenance)
    doc = {"event": "maintenance", "uri": args.uri, "action": verb,
           "in_maintenance": mark is not None, "mark": mark, "running": list(running)}  # fmt: skip
    if args.json:
        print(json_line(doc, now_s=time.time()))  # noqa: T201  machine output
    else:
        state = "in maintenance" if doc["in_maintenance"] else "not in maintenance"
        m = reply.maintenance
        since = f" since {m.since_utc} ({m.by})" if m is not None else ""
        print(f"{args.uri}: {state}{since}; running: {', '.join(running) or 'none'}")  # noqa: T201
    if verb != "enter" or not args.dest_uris:
        return ExitCode.OK
    if not running:
        return ExitCode.OK
    return cmd_evacuate(args, policy=policy(args), around=around(args), source_uri=args.uri)


def _guests_on(uri: str) -> tuple[str, ...]:
    from libvirt_vmotion.adapters.virt import Hypervisor  # noqa: PLC0415

    with Hypervisor.open(uri) as hv:
        return hv.running_guests()
