"""Command line: ``vmotion`` / ``python -m libvirt_vmotion``.

I/O: parses arguments, renders output, maps errors to exit codes. A user
mistake prints ``error:`` and ``hint:`` lines and exits non-zero; tracebacks
appear only with ``--debug``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from libvirt_vmotion import __version__
from libvirt_vmotion.argtypes import positive_number
from libvirt_vmotion.bench.options import add_bench_parser
from libvirt_vmotion.cli import checks as checks_cli
from libvirt_vmotion.cli.report import (
    build_failure_report,
    build_report,
    render_text,
    timeline_section,
)
from libvirt_vmotion.converge.ports import Observer
from libvirt_vmotion.converge.progress import ProgressView
from libvirt_vmotion.errors import (
    AbortRefused,
    DomainNotFound,
    ExitCode,
    MigrationAborted,
    UsageError,
    VmotionError,
)
from libvirt_vmotion.model import JobSample, MeasuredContext, MigrationRequest
from libvirt_vmotion.policy import MigrationPolicy, build_policy, load_policy_toml

if TYPE_CHECKING:
    from libvirt_vmotion.adapters.virt import Guest, Hypervisor
    from libvirt_vmotion.converge.loop import PostSwitchover
    from libvirt_vmotion.session.core import SessionResult

log = logging.getLogger(__name__)

DEFAULT_SOURCE_URI_ENV = "LIBVIRT_DEFAULT_URI"


_positive_int = positive_number(int)
_positive_float = positive_number(float, what="a number of seconds")  # every use is a duration


def _uri(text: str) -> str:
    if "://" not in text and not text.startswith("test:"):
        msg = (
            f"{text!r} is not a libvirt URI; write e.g. qemu+tcp://HOST/system, "
            "qemu+ssh://root@HOST/system or qemu:///system"
        )
        raise argparse.ArgumentTypeError(msg)
    return text


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors in our ``error:``/``hint:`` form, exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"error: {message}\nhint: see '{self.prog} --help'\n")
        raise SystemExit(ExitCode.USAGE)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser."""
    parser = _Parser(
        prog="vmotion",
        description="vMotion-style live migration for libvirt/QEMU hosts.",
        epilog="Exit codes: 0 ok, 2 usage, 3 pre-flight blocker, 5 migration aborted "
        "(guest still on the source), 6 guest location uncertain, 7 cannot connect, "
        "8 guest not found.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("-v", "--verbose", action="store_true", help="log steps to stderr")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_migrate(sub)
    checks_cli.add_subcommands(sub, uri=_uri, parser_class=_Parser)
    _add_netcheck(sub)
    _add_cancel_status(sub)
    _add_lab(sub)
    add_bench_parser(sub)
    return parser


def _add_migrate(sub: argparse._SubParsersAction[_Parser]) -> None:
    mig = sub.add_parser(
        "migrate",
        help="live-migrate a running guest to another host",
        description="Live-migrate DOMAIN (pre-copy, peer-to-peer): it is defined on the "
        "destination and undefined on the source only when the move succeeds; on any "
        "failure it keeps running on the source.",
    )
    mig.add_argument("domain", metavar="DOMAIN", help="guest name, UUID or ID on the source")
    mig.add_argument(
        "--to",
        dest="dest_uri",
        required=True,
        type=_uri,
        metavar="URI",
        help="destination libvirt URI; the source's libvirtd connects to it too, so it "
        "must reach the same host from there (qemu+tcp://, qemu+ssh://, qemu+tls://)",
    )
    mig.add_argument(
        "--from",
        dest="source_uri",
        type=_uri,
        metavar="URI",
        help=f"source libvirt URI (default: ${DEFAULT_SOURCE_URI_ENV} or qemu:///system)",
    )
    mig.add_argument(
        "--bandwidth", type=_positive_int, metavar="MIB_PER_S", help="cap migration bandwidth"
    )
    mig.add_argument(
        "--max-downtime",
        type=_positive_int,
        metavar="MS",
        help="longest pause the guest may see at switchover (default 500; the controller "
        "starts tighter, see --initial-downtime)",
    )
    mig.add_argument(
        "--timeout",
        type=_positive_float,
        metavar="SECONDS",
        help="abort (guest stays on the source) if not done by then",
    )
    _add_policy_flags(mig)
    mig.add_argument(
        "--json",
        action="store_true",
        help="stream progress as JSON lines on stdout; the last line is the report",
    )
    checks_cli.add_skip_check(mig)
    checks_cli.add_copy_storage(mig)
    mig.add_argument("--report-file", type=Path, metavar="PATH", help="also write JSON report")
    mig.add_argument(
        "--ping",
        metavar="ADDR",
        help="ping the guest at ADDR every 10 ms during the migration; report the gap",
    )
    mig.add_argument(
        "--workload",
        metavar="ADDR",
        help="the lab guest's workload at ADDR: report lost pages, reboots, TCP resets",
    )
    _add_notify_flags(mig)


def _add_policy_flags(mig: argparse.ArgumentParser) -> None:
    pol = mig.add_argument_group(
        "convergence policy",
        "The budget and how to meet it: the guest switches over at the smallest dirty set "
        "that fits --max-downtime, once the rounds stop shrinking fast (the budget is a "
        "ceiling, not a target). If they stall above it the downtime ladder rises from "
        "--initial-downtime to --max-downtime, then the guest is throttled, then post-copy, "
        "then abort. --max-downtime and --timeout are the budget.",
    )
    pol.add_argument("--policy", type=Path, metavar="TOML", help="policy file (flags override)")
    pol.add_argument("--initial-downtime", type=_positive_int, metavar="MS", help="default 30")
    pol.add_argument("--downtime-steps", type=_positive_int, metavar="N", help="default 5")
    pol.add_argument(
        "--max-throttle", type=int, metavar="PERCENT", help="most CPU slowdown allowed (80)"
    )
    pol.add_argument("--no-throttle", action="store_true", help="never slow the guest down")
    pol.add_argument("--no-postcopy", action="store_true", help="never switch to post-copy")
    pol.add_argument("--stall-rounds", type=_positive_int, metavar="N", help="default 2")
    pol.add_argument(
        "--postcopy-resume-wait",
        type=_positive_float,
        metavar="SECONDS",
        help="how long to retry a broken post-copy (default 120)",
    )
    pol.add_argument("--xbzrle", action="store_true", help="compress re-sent pages (XBZRLE)")
    pol.add_argument("--parallel", type=_positive_int, metavar="N", help="multifd streams")
    pol.add_argument(
        "--switchover-bandwidth",
        type=positive_number(float, what="a rate in MiB/s"),
        metavar="MIB_S",
        help="rate of the final, unthrottled round, to judge real pauses by (default: learned "
        "from earlier migrations between the same hosts; VMOTION_HISTORY=off: none)",
    )


def _add_cancel_status(sub: argparse._SubParsersAction[_Parser]) -> None:
    for name, text in (
        ("cancel", "abort a running pre-copy migration; the guest stays on the source"),
        ("status", "show the progress of a migration started elsewhere"),
    ):
        cmd = sub.add_parser(name, help=text, description=text)
        cmd.add_argument("domain", metavar="DOMAIN", help="guest name, UUID or ID on the source")
        cmd.add_argument(
            "--from",
            dest="source_uri",
            type=_uri,
            metavar="URI",
            help=f"source libvirt URI (default: ${DEFAULT_SOURCE_URI_ENV} or qemu:///system)",
        )
        cmd.add_argument("--json", action="store_true", help="print one JSON object")


def _policy(args: argparse.Namespace) -> MigrationPolicy:
    base = MigrationPolicy()
    if args.policy is not None:
        try:
            text = args.policy.read_text()
        except OSError as exc:
            msg = f"Cannot read the policy file {args.policy}: {exc.strerror}."
            raise UsageError(msg, hint="Check the path given to --policy.") from exc
        base = load_policy_toml(text, source=str(args.policy))
    throttle = 0 if args.no_throttle else args.max_throttle
    return build_policy(
        base,
        initial_downtime_ms=args.initial_downtime,
        max_downtime_ms=args.max_downtime,
        downtime_steps=args.downtime_steps,
        overrides={
            "bandwidth_mib_s": args.bandwidth,
            "max_duration_s": args.timeout,
            "max_throttle_percent": throttle,
            "allow_postcopy": False if args.no_postcopy else None,
            "stall_rounds": args.stall_rounds,
            "postcopy_resume_wait_s": args.postcopy_resume_wait,
            "xbzrle": True if args.xbzrle else None,
            "parallel_connections": args.parallel,
            "switchover_bandwidth_mib_s": args.switchover_bandwidth,
        },
    )


class ViewPrinter:
    """Phase-aware progress: a live line on a TTY (stderr), JSON lines with --json."""

    def __init__(
        self,
        stream: TextIO,
        *,
        json_out: TextIO | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Write human lines to ``stream`` and, if given, JSON lines to ``json_out``."""
        self._stream = stream
        self._json = json_out
        self._tty = stream.isatty()
        self._clock = clock
        self._last_s = -1e9
        self._last_key: tuple[str, int, str] = ("", -1, "")
        self._dirty = False

    def __call__(self, view: ProgressView) -> None:
        """Show one view (plain lines and JSON at most every second, or on change)."""
        key = (view.phase, view.round, view.note)
        due = key != self._last_key or self._clock() - self._last_s >= 1.0
        if self._tty:
            self._stream.write("\r\x1b[K" + view.line())
            self._stream.flush()
            self._dirty = True
        elif due and self._json is None:
            self._stream.write(view.line() + "\n")
            self._stream.flush()
        if due and self._json is not None:
            self._json.write(json.dumps(view.to_dict(), sort_keys=True) + "\n")
            self._json.flush()
        if due:
            self._last_s = self._clock()
            self._last_key = key

    def finish(self) -> None:
        """End the live line (once; later calls do nothing)."""
        if self._dirty:
            self._stream.write("\n")
            self._stream.flush()
            self._dirty = False


def cmd_cancel_status(args: argparse.Namespace) -> int:
    """``vmotion cancel DOMAIN`` / ``vmotion status DOMAIN``."""
    source_uri = args.source_uri or os.environ.get(DEFAULT_SOURCE_URI_ENV) or "qemu:///system"
    guard = _guard_record(source_uri, args.domain) if args.command == "status" else {}
    try:
        return _cancel_or_status(args, source_uri, guard)
    except DomainNotFound:
        if not guard:
            raise
        # Gone from here (maybe mid-way through), but its guard saw how: e.g. an
        # orphaned post-copy that finished on the destination.
        _say_status({"event": "status", "domain": args.domain, "phase": "left", **guard}, args)
        return ExitCode.OK


def _cancel_or_status(
    args: argparse.Namespace, source_uri: str, guard: Mapping[str, object]
) -> int:
    from libvirt_vmotion.adapters.virt import Hypervisor  # noqa: PLC0415
    from libvirt_vmotion.converge.machine import History, State  # noqa: PLC0415
    from libvirt_vmotion.converge.progress import build_view  # noqa: PLC0415

    with Hypervisor.open(source_uri) as source:
        guest = source.lookup(args.domain)
        sample, postcopy = _job_if_running(guest)
        running = sample is not None
        if sample is None or not sample.is_active:
            if args.command == "status":
                idle: dict[str, object] = {"event": "status", "domain": guest.name}
                if not running:
                    idle["state"] = guest.state_name()
                _say_status({**idle, "phase": "idle", **guard}, args)
                return ExitCode.OK
            msg = f"No migration of '{guest.name}' is running on {source_uri}."
            raise VmotionError(msg, hint=f"Check where it runs: vmotion status {args.domain}")
        if args.command == "cancel":
            if postcopy:
                msg = (
                    f"Refusing to cancel the migration of '{guest.name}': it is in post-copy, "
                    "so the guest already runs on the destination and part of its memory "
                    "exists only there; aborting now would lose the guest."
                )
                raise AbortRefused(
                    msg, hint=f"Let it finish; follow it with: vmotion status {args.domain}"
                )
            guest.abort_job()
            _say_status({"event": "cancelled", "domain": guest.name}, args)
            return ExitCode.OK
        phases = {s.value: s for s in State}
        state = State.POSTCOPY if postcopy else phases.get(sample.phase.value, State.CONVERGING)
        history = History(started_s=sample.now_s - sample.elapsed_ms / 1000, samples=(sample,))
        view = build_view(state, history, MigrationPolicy(), MeasuredContext())
        _say_status({**view.to_dict(), "event": "status", "domain": guest.name, **guard}, args)
        return ExitCode.OK


def _job_if_running(guest: Guest) -> tuple[JobSample | None, bool]:
    """The job's sample and whether it is in post-copy; None for a guest that left.

    A guest at the tail of a migration may stop between two calls: then it has no job.
    """
    try:
        if not guest.is_running():
            return None, False
        return guest.job_sample(now_s=time.monotonic()), guest.is_in_postcopy()
    except VmotionError:
        try:
            still_here = guest.is_running()
        except VmotionError:  # undefined meanwhile: it left
            still_here = False
        if still_here:
            raise
        return None, False


def _guard_record(source_uri: str, domain: str) -> dict[str, object]:
    """What the source host's guard knows: who steers the job, or that nobody does."""
    from libvirt_vmotion.adapters.agent import RemoteHost  # noqa: PLC0415

    try:
        record = RemoteHost.for_uri(source_uri).call(
            "guard-state", {"domain": domain}, timeout_s=10.0
        )
    except VmotionError:
        return {}
    state = str(record.get("state", ""))
    if not state:
        return {}
    return {
        "guard": state,
        "orphaned": state.startswith("orphan"),
        "controller": record.get("controller", ""),
    }


def _say_status(data: dict[str, object], args: argparse.Namespace) -> None:
    if args.json:
        print(json.dumps(data, sort_keys=True))  # noqa: T201  machine output
    else:
        print(" ".join(f"{k}={v}" for k, v in data.items() if k != "event"))  # noqa: T201


def _add_notify_flags(mig: argparse.ArgumentParser) -> None:
    net = mig.add_argument_group(
        "network cutover",
        "Right after switchover the destination host announces the guest (RARP, gratuitous "
        "ARP, IPv6 NA) on its bridges, checks its bridge learned the guest's MAC and removes "
        "stale entries on the source; the report's network_cutover section says what happened.",
    )
    net.add_argument(
        "--no-notify", action="store_true", help="do not announce on any network (warned)"
    )
    net.add_argument(
        "--no-notify-on", action="append", default=[], metavar="BRIDGE",
        help="do not announce on this bridge (repeatable)",
    )  # fmt: skip
    net.add_argument(
        "--guest-ip", action="append", default=[], metavar="ADDR|MAC=ADDR",
        help="an address of the guest to announce, besides what libvirt reports (repeatable)",
    )  # fmt: skip
    net.add_argument("--announce-count", type=_positive_int, default=3, metavar="N")
    net.add_argument("--announce-interval-ms", type=_positive_int, default=50, metavar="MS")
    net.add_argument(
        "--watch-switch", metavar="NETNS/BRIDGE",
        help="(lab) a Linux bridge standing for the physical switch: report when it learned "
        "the guest's MAC at its new port",
    )  # fmt: skip


def _notify_config(args: argparse.Namespace) -> object:
    from libvirt_vmotion.cutover.frames import AnnounceSchedule, NotifyConfig  # noqa: PLC0415

    try:
        return NotifyConfig(
            enabled=not args.no_notify,
            off_bridges=frozenset(args.no_notify_on),
            schedule=AnnounceSchedule(
                count=args.announce_count, interval_ms=args.announce_interval_ms
            ),
            guest_ips=tuple(args.guest_ip),
        )
    except ValueError as exc:
        raise UsageError(str(exc), hint="see 'vmotion migrate --help'") from exc


def _cutover_factory(
    args: argparse.Namespace, request: MigrationRequest, *, budget_s: float
) -> Callable[[Hypervisor], PostSwitchover]:
    """Validate the cutover flags now (before any host); build the cutover on the source.

    The destination's announcer waits for the resume no longer than the
    migration's budget (``budget_s``, the policy's ``max_duration_s``) and a margin.
    """
    from libvirt_vmotion.cutover.announce import (  # noqa: PLC0415
        ANNOUNCE_MARGIN_S,
        NetworkCutover,
        SwitchWatch,
    )

    try:
        switch = SwitchWatch.parse(args.watch_switch) if args.watch_switch else None
    except ValueError as exc:
        raise UsageError(str(exc), hint="e.g. --watch-switch net-switch/sw0") from exc
    config = _notify_config(args)

    def build(source: Hypervisor) -> PostSwitchover:
        return NetworkCutover(
            domain=request.domain,
            source=source,
            source_uri=request.source_uri,
            dest_uri=request.dest_uri,
            config=config,  # type: ignore[arg-type]  # a frames.NotifyConfig
            switch=switch,
            timeout_s=budget_s + ANNOUNCE_MARGIN_S,
        )

    return build


def _add_netcheck(sub: argparse._SubParsersAction[_Parser]) -> None:
    chk = sub.add_parser(
        "netcheck",
        help="check the destination's bridges can learn the guest's move (network pre-flight)",
        description="For each bridge a NIC of DOMAIN uses: exists and up on the destination, "
        "has a forwarding uplink, learning/flooding, STP delay, MTU and VLAN filtering like "
        "the source, and whether we will notify switches. Exit 3 if anything blocks.",
    )
    chk.add_argument("domain", metavar="DOMAIN")
    chk.add_argument("--to", dest="dest_uri", required=True, type=_uri, metavar="URI")
    chk.add_argument("--from", dest="source_uri", type=_uri, metavar="URI")
    chk.add_argument("--json", action="store_true", help="print the results as one JSON object")
    chk.add_argument("--no-notify", action="store_true")
    chk.add_argument("--no-notify-on", action="append", default=[], metavar="BRIDGE")


def cmd_netcheck(args: argparse.Namespace) -> int:
    """``vmotion netcheck DOMAIN --to URI``: the network pre-flight on its own."""
    from libvirt_vmotion.adapters.virt import Hypervisor  # noqa: PLC0415
    from libvirt_vmotion.cutover.announce import network_checks  # noqa: PLC0415
    from libvirt_vmotion.cutover.frames import NotifyConfig  # noqa: PLC0415
    from libvirt_vmotion.preflight.netcheck import Severity, worst  # noqa: PLC0415

    source_uri = args.source_uri or os.environ.get(DEFAULT_SOURCE_URI_ENV) or "qemu:///system"
    config = NotifyConfig(enabled=not args.no_notify, off_bridges=frozenset(args.no_notify_on))
    with Hypervisor.open(source_uri) as source:
        results = network_checks(
            source=source, domain=args.domain, source_uri=source_uri,
            dest_uri=args.dest_uri, config=config,
        )  # fmt: skip
    verdict = worst(results)
    if args.json:
        out: dict[str, object] = {"domain": args.domain, "verdict": verdict.value}
        out["results"] = [r.as_dict() for r in results]
        print(json.dumps(out, sort_keys=True))  # noqa: T201  machine output
    else:
        for r in results:
            print(f"{r.severity.value:<8} {r.name:<22} {r.host}:{r.subject}  {r.message}")  # noqa: T201
            if r.hint:
                print(f"{'':<8} {'':<22} hint: {r.hint}")  # noqa: T201
    return ExitCode.PREFLIGHT if verdict is Severity.BLOCKER else ExitCode.OK


def _add_lab(sub: argparse._SubParsersAction[_Parser]) -> None:
    lab = sub.add_parser(
        "lab",
        help="the two-host namespace lab (needs root)",
        description="Two libvirt hosts (hosta 10.77.0.1, hostb 10.77.0.2), a switch and a "
        "client namespace (10.77.0.100) on this machine. Run the CLI against the lab from "
        "the client namespace: vmotion lab exec -- vmotion migrate ...",
    )
    lsub = lab.add_subparsers(dest="lab_command", required=True, parser_class=_Parser)
    lsub.add_parser("up", help="build the lab (idempotent; recovers a crashed lab)")
    lsub.add_parser("status", help="show namespaces, daemons, URIs and guests")
    lsub.add_parser("down", help="remove the lab and everything it started")
    ex = lsub.add_parser("exec", help="run a command in the client namespace")
    ex.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND ...")
    lsub.add_parser("image", help="build (or find cached) the guest kernel + initramfs")
    demo = lsub.add_parser("demo", help="lab up, boot the guest on hosta, migrate it to hostb")
    _add_guest_settings(demo)
    guest = lsub.add_parser("guest", help="the lab's test guest")
    gsub = guest.add_subparsers(dest="guest_command", required=True, parser_class=_Parser)
    start = gsub.add_parser("start", help="(re)start the guest on a lab host")
    start.add_argument("--host", default="hosta", choices=["hosta", "hostb"])
    _add_guest_settings(start)
    start.add_argument(
        "--disk",
        choices=["shared", "local"],
        help="give the guest a raw virtio disk on the lab's shared storage or the host's "
        "own; the workload writes a verified log to it",
    )
    start.add_argument("--disk-mib", type=_positive_int, default=256, help="disk size")
    start.add_argument("--disk-kib-s", type=int, default=256, help="disk log write rate (KiB/s)")
    stor = lsub.add_parser("storage", help="the lab's shared storage (GlusterFS)")
    stor.add_argument("storage_command", choices=["up", "status"])
    gsub.add_parser("status", help="where the guest runs and what its workload reports")
    wait = gsub.add_parser("wait", help="wait until the workload answers")
    wait.add_argument("--timeout", type=_positive_float, default=90.0, metavar="SECONDS")
    gsub.add_parser("stop", help="destroy and undefine the guest on both hosts")
    setw = gsub.add_parser("set", help="change the workload at runtime")
    setw.add_argument("setting", choices=["rate", "wss", "mode", "disk_rate"])
    setw.add_argument("value")


def _add_guest_settings(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--memory-mib", type=_positive_int, default=512, help="guest RAM")
    parser.add_argument("--wss-mib", type=_positive_int, default=64, help="working set")
    parser.add_argument(
        "--rate-mib-s", type=int, default=20, help="rewrite rate (0 = as fast as it can)"
    )
    parser.add_argument("--mode", choices=["paced", "busy"], default="paced")
    parser.add_argument(
        "--kvm", action="store_true", help="use KVM instead of TCG (real hosts only)"
    )


def _observers(args: argparse.Namespace) -> list[Observer]:
    from libvirt_vmotion.observe.probes import PingObserver, WorkloadObserver  # noqa: PLC0415  only when asked

    observers: list[Observer] = []
    if args.ping:
        observers.append(PingObserver(args.ping))
    if args.workload:
        observers.append(WorkloadObserver(args.workload))
    return observers


def cmd_migrate(args: argparse.Namespace) -> int:
    """Run one live migration (a Session) and print its report."""
    from libvirt_vmotion.session.wiring import Around, open_session  # noqa: PLC0415  libvirt on use

    source_uri = args.source_uri or os.environ.get(DEFAULT_SOURCE_URI_ENV) or "qemu:///system"
    request = MigrationRequest(
        domain=args.domain,
        source_uri=source_uri,
        dest_uri=args.dest_uri,
        bandwidth_mib_s=args.bandwidth,
        max_downtime_ms=args.max_downtime,
        timeout_s=args.timeout,
    )
    if request.source_uri == request.dest_uri:
        msg = f"--from and --to are the same URI ({request.dest_uri})."
        raise UsageError(msg, hint="Give the destination host's URI with --to.")
    policy = _policy(args)
    settings = checks_cli.preflight_settings(args)
    printer = ViewPrinter(sys.stderr, json_out=sys.stdout if args.json else None)
    around = Around(
        observers=_observers(args),
        cutover=_cutover_factory(args, request, budget_s=policy.max_duration_s),
        on_progress=printer,
    )
    t0 = time.monotonic()
    session = None
    try:
        with open_session(
            request,
            policy=policy,
            settings=settings,
            events=checks_cli.StderrEvents(),
            around=around,
        ) as session:
            try:
                result = session.run()
            finally:
                printer.finish()  # end the live line before the release's warnings
            report = _landed_report(result, startup_s=_process_age_s() - (time.monotonic() - t0))
            session.remember(result, report)
    except VmotionError as exc:
        printer.finish()
        if args.json or args.report_file:
            unreleased = session.unreleased if session is not None else None
            failure = build_failure_report(
                request,
                result="aborted" if isinstance(exc, MigrationAborted) else "failed",
                error=exc.message,
                hint=exc.hint,
                reservation=unreleased.to_dict() if unreleased is not None else None,
            )
            _emit_json(failure, args)
        raise
    if args.json:
        _emit_json(report, args)
    else:
        print(render_text(report))  # noqa: T201  the report is the command's output
        if args.report_file:
            _write_report(report, args.report_file)
    return ExitCode.OK


def _landed_report(result: SessionResult, *, startup_s: float) -> dict[str, object]:
    """The migrate report of a Session that landed."""
    pre, marks = result.preflight, result.timeline
    report = build_report(
        result.request,
        result.outcome,
        result.sections,
        preflight_dirty_mib_s=pre.measured_dirty_mib_s,
    )
    report["forecast"] = pre.forecast_section(report)
    report["preflight_s"] = round(pre.elapsed_s, 2)
    report["timeline_s"] = timeline_section(
        startup_s=startup_s,
        gate_done_s=marks.preflight_done_s,
        gate_s=pre.elapsed_s,
        migrate_done_s=marks.migrate_done_s,
        migration_s=result.outcome.wall_time_s,
        released_s=marks.released_s,
    )
    return report


def _process_age_s() -> float:
    """Seconds since this process started (interpreter and imports included), else 0.

    psutil's create time is the start in clock ticks since boot plus the boot time;
    taking the boot time off again and reading the clock since boot keeps both to
    10 ms. (The wall-clock create time itself is only as good as the boot time's
    whole seconds: it was up to ~1 s off in the bench.)
    """
    import psutil  # noqa: PLC0415  only a migration's report needs it

    try:
        since_boot_s = psutil.Process().create_time() - psutil.boot_time()
    except psutil.Error:
        return 0.0
    return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - since_boot_s)


def _emit_json(report: dict[str, object], args: argparse.Namespace) -> None:
    if args.json:
        print(json.dumps(report, sort_keys=True))  # noqa: T201  machine output
    if args.report_file:
        _write_report(report, args.report_file)


def _write_report(report: dict[str, object], path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    except OSError as exc:
        log.warning("could not write the report to %s: %s", path, exc)


def main(argv: Sequence[str] | None = None) -> int:  # noqa: PLR0911  one branch per command
    """Run the CLI; return the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["agent"]:  # machine interface for other hosts; see agent.py
        from libvirt_vmotion.adapters.agent import main as agent_main  # noqa: PLC0415

        return agent_main(argv[1:])
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.debug else logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command in {"migrate", "netcheck"}:
            return cmd_migrate(args) if args.command == "migrate" else cmd_netcheck(args)
        if args.command in {"cancel", "status"}:
            return cmd_cancel_status(args)
        if args.command in {"check", "hooks"}:
            return checks_cli.run(args)
        if args.command == "bench":
            from libvirt_vmotion.bench.runner import cmd_bench  # noqa: PLC0415  lab only when asked

            return cmd_bench(args)
        from libvirt_vmotion.lab.cli import run_lab_command  # noqa: PLC0415  lab only when asked

        return run_lab_command(args)
    except VmotionError as exc:
        if args.debug:
            log.exception("failed")
        sys.stderr.write(f"error: {exc.message}\n")
        if exc.hint:
            sys.stderr.write(f"hint: {exc.hint}\n")
        return int(exc.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
