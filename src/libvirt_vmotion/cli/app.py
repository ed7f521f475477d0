"""Command line: ``vmotion`` / ``python -m libvirt_vmotion``.

I/O: parses arguments, renders output, maps errors to exit codes. A user
mistake prints ``error:`` and ``hint:`` lines and exits non-zero; tracebacks
appear only with ``--debug``.
"""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import os
import re
import shlex
import sqlite3
import sys
import textwrap
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NoReturn, TextIO

from libvirt_vmotion import __version__
from libvirt_vmotion.adapters import metrics
from libvirt_vmotion.adapters.history import ENV as HISTORY_ENV
from libvirt_vmotion.adapters.metrics import default_path as metrics_default_path
from libvirt_vmotion.argtypes import (
    DEFAULT_SOURCE_URI_ENV,
    HINT_SEPARATOR,
    add_guest_and_hosts,
    add_source,
    domain_name,
    host_problem,
    libvirt_uri,
    parse_since,
    ping_address,
    positive_number,
)
from libvirt_vmotion.bench.options import add_bench_parser
from libvirt_vmotion.cli import checks as checks_cli
from libvirt_vmotion.cli import evacuate as evacuate_cli
from libvirt_vmotion.cli.report import (
    build_failure_report,
    build_report,
    json_line,
    render_text,
    timeline_section,
)
from libvirt_vmotion.converge.ports import Observer
from libvirt_vmotion.converge.progress import ProgressView
from libvirt_vmotion.errors import (
    AbortRefused,
    ConnectionFailed,
    DomainNotFound,
    ExitCode,
    MigrationAborted,
    PreflightFailed,
    Unsupported,
    UsageError,
    VmotionError,
)
from libvirt_vmotion.model import JobSample, MeasuredContext, MigrationRequest
from libvirt_vmotion.policy import (
    POLICY_KEYS,
    MigrationPolicy,
    PolicyKey,
    build_policy,
    load_policy_toml,
    policy_to_toml,
    policy_value,
)

if TYPE_CHECKING:
    from libvirt_vmotion.adapters.virt import Guest, Hypervisor
    from libvirt_vmotion.converge.loop import PostSwitchover
    from libvirt_vmotion.reserve.store import Unreleased
    from libvirt_vmotion.session.core import SessionResult
    from libvirt_vmotion.session.wiring import Around

log = logging.getLogger(__name__)

EXIT_CODES: Final = (
    (ExitCode.OK, "ok (check: the migration may proceed)"),
    (ExitCode.ERROR, "any other failure (a libvirt error, cancel refused in post-copy)"),
    (ExitCode.USAGE, "bad arguments or policy file; nothing was touched"),
    (ExitCode.PREFLIGHT, "a pre-flight check blocks (or the guest is not running)"),
    (ExitCode.RESERVATION, "the destination refused the reservation"),
    (ExitCode.ABORTED, "migration aborted or timed out: the guest still runs on the source"),
    (ExitCode.CUTOVER_UNCERTAIN, "failed after switchover: the message says where the guest is"),
    (ExitCode.CONNECTION, "cannot connect to a host"),
    (ExitCode.NOT_FOUND, "no such guest"),
    (130, "interrupted (Ctrl-C) outside a migration; during one it aborts: 5"),
)

_positive_int = positive_number(int)
_positive_float = positive_number(float, what="a number of seconds")  # every use is a duration


class _Formatter(argparse.HelpFormatter):
    """Wraps help paragraph by paragraph: a newline in a help text is kept."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return [
            line
            for part in text.splitlines()
            for line in textwrap.wrap(" ".join(part.split()), width, break_on_hyphens=False)
        ]

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "\n".join(
            indent + part  # an indented line (a table row) is kept as written
            if part.startswith("  ")
            else textwrap.fill(
                " ".join(part.split()), width, initial_indent=indent,
                subsequent_indent=indent, break_on_hyphens=False,
            )
            for part in text.split("\n")
        )  # fmt: skip


class _Parser(argparse.ArgumentParser):
    """argparse in our ``error:``/``hint:`` form (exit 2), without abbreviations.

    Every parser (each subcommand's too) takes ``-v`` and ``--debug``, so they
    work after the subcommand; ``--max-downtim`` is an error, never taken as
    ``--max-downtime``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # noqa: ANN401  argparse's own
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)
        common = self.add_argument_group("logging")
        common.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS,
            help="show tracebacks and debug logs",
        )  # fmt: skip
        common.add_argument(
            "-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
            help="log steps to stderr",
        )  # fmt: skip
        common.add_argument(
            "--log-file", type=Path, metavar="PATH", default=argparse.SUPPRESS,
            help="also append every log line (info and up, with -v/--debug's level if lower) and "
            "the error, with timestamps, to PATH (default: none)",
        )  # fmt: skip

    def error(self, message: str) -> NoReturn:
        """Print ``error:`` and a ``hint:`` (the type's own, else where help is); exit 2."""
        message, _, hint = message.partition(HINT_SEPARATOR)
        hint = hint or self._did_you_mean(message) or f"see '{self.prog} --help'"
        sys.stderr.write(f"error: {message}\nhint: {hint}\n")
        raise SystemExit(ExitCode.USAGE)

    def _did_you_mean(self, message: str) -> str:
        """For an unknown option, the known one it is closest to (abbreviations are off)."""
        choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if choice:
            options = re.findall(r"'([^']*)'", choice[2])
            close = difflib.get_close_matches(choice[1], options, n=1)
            return f"did you mean {close[0]}?" if close else ""
        if not message.startswith("unrecognized arguments:"):
            return ""
        known = sorted(_option_strings(self))
        for word in message.partition(":")[2].split():
            name = word.partition("=")[0]
            close = difflib.get_close_matches(name, known, n=1) if name.startswith("--") else []
            if close:
                return f"did you mean {close[0]}? (options are never abbreviated)"
        return ""


def _option_strings(parser: argparse.ArgumentParser) -> set[str]:
    """Every long option of ``parser`` and of its subcommands."""
    names: set[str] = set()
    for action in parser._actions:  # noqa: SLF001  argparse keeps its actions there
        names.update(o for o in action.option_strings if o.startswith("--"))
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            for child in action.choices.values():
                names |= _option_strings(child)
    return names


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser."""
    codes = "\n".join(f"  {int(code):>3}  {text}" for code, text in EXIT_CODES)
    parser = _Parser(
        prog="vmotion",
        description="vMotion-style live migration for libvirt/QEMU hosts.",
        epilog=f"exit codes:\n{codes}",
    )
    parser.set_defaults(debug=False, verbose=False, log_file=None)
    parser.add_argument("-V", "--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(
        dest="command", required=True, parser_class=_Parser, metavar="COMMAND"
    )
    _add_migrate(sub)
    checks_cli.add_subcommands(sub, parser_class=_Parser, add_policy_flags=_add_policy_flags)
    _add_netcheck(sub)
    evacuate_cli.add_subcommands(sub, parser_class=_Parser, add_policy_flags=_add_policy_flags)
    _add_cancel_status(sub)
    _add_policy_command(sub)
    _add_history(sub)
    _add_agent_check(sub)
    _add_completion(sub)
    _add_lab(sub)
    add_bench_parser(sub)
    _name_verbs(parser)
    return parser


def _name_verbs(parser: argparse.ArgumentParser) -> None:
    """Name a missing verb by its choices (``{install,uninstall,status}``), not its dest."""
    for action in parser._actions:  # noqa: SLF001  argparse keeps its actions there
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            action.metavar = action.metavar or "{" + ",".join(action.choices) + "}"
            for child in action.choices.values():
                _name_verbs(child)


def _add_migrate(sub: argparse._SubParsersAction[_Parser]) -> None:
    mig = sub.add_parser(
        "migrate",
        help="live-migrate a running guest to another host",
        description="Live-migrate DOMAIN (pre-copy, peer-to-peer): it is defined on the "
        "destination and undefined on the source only when the move succeeds; on any "
        "failure it keeps running on the source. Pre-flight (as `vmotion check`) runs "
        "first and says what the policy permits (throttling, post-copy) before anything moves.",
    )
    add_guest_and_hosts(
        mig,
        dest_help="destination libvirt URI; the source's libvirtd connects to it too, so it "
        "must reach the same host from there (qemu+tcp://, qemu+ssh://, qemu+tls://)",
    )
    _add_policy_flags(mig)
    mig.add_argument(
        "--json",
        action="store_true",
        help="stream progress as JSON lines on stdout; the last line is the report "
        "(schemas: src/libvirt_vmotion/schemas/)",
    )
    checks_cli.add_skip_check(mig)
    checks_cli.add_copy_storage(mig)
    mig.add_argument(
        "--report-file",
        type=writable_file,
        metavar="PATH",
        help="also write the JSON report there (default: not written)",
    )
    mig.add_argument(
        "--metrics-file",
        type=writable_file,
        metavar="PATH",
        help="write Prometheus metrics (node_exporter textfile format) there after the "
        f"migration (default: {metrics.TEXTFILE_DIR}/{metrics.FILE_NAME} when that directory "
        "exists, else none)",
    )
    mig.add_argument(
        "--ping",
        type=ping_address,
        metavar="ADDR",
        help="ping the guest at ADDR every 10 ms during the migration; report the gap "
        "(default: no ping)",
    )
    _add_notify_flags(mig)
    lab = mig.add_argument_group("lab", "Only for the namespace lab (`vmotion lab`).")
    lab.add_argument(
        "--workload",
        type=_workload_address,
        metavar="ADDR",
        help="the lab guest's workload at ADDR: report lost pages, reboots, TCP resets",
    )
    lab.add_argument(
        "--watch-switch", type=_switch, metavar="NETNS/BRIDGE",
        help="a Linux bridge standing for the physical switch: report when it learned "
        "the guest's MAC at its new port",
    )  # fmt: skip


def writable_file(text: str) -> Path:
    """An argparse ``type=``: a file path this process can create or overwrite.

    Checked when the arguments are parsed, so an unwritable ``--report-file`` is
    refused before anything connects, not after the migration.
    """
    path = Path(text)
    folder = path.parent if str(path.parent) else Path()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # the report's folder is created: check the first that exists
    problem = ""
    if path.is_dir():
        problem = f"{text} is a directory"
    elif path.exists() and not os.access(path, os.W_OK):
        problem = f"{text} is not writable"
    elif not path.exists() and not (folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)):
        problem = f"cannot create {text}: {folder} is not a writable directory"
    if problem:
        msg = f"{problem}{HINT_SEPARATOR}give a file in a directory you can write to"
        raise argparse.ArgumentTypeError(msg)
    return path


def _switch(text: str) -> str:
    from libvirt_vmotion.cutover.announce import SwitchWatch  # noqa: PLC0415  only when given

    try:
        SwitchWatch.parse(text)
    except ValueError as exc:
        msg = f"{exc}{HINT_SEPARATOR}e.g. --watch-switch net-switch/sw0 (the lab's switch)"
        raise argparse.ArgumentTypeError(msg) from None
    return text


def _workload_address(text: str) -> str:
    """An argparse ``type=`` for ``--workload``: the guest's address, without a port.

    The lab workload listens on fixed ports (``observe.workload``), so the client
    connects to ADDR on those; ``ADDR:PORT`` would fail only after pre-flight.
    """
    from libvirt_vmotion.observe.workload import (  # noqa: PLC0415  only when given
        WORKLOAD_CONTROL_PORT,
        WORKLOAD_STREAM_PORT,
    )

    problem = host_problem(text)
    if problem:
        msg = (
            f"{problem}{HINT_SEPARATOR}give the lab guest's address, e.g. --workload 10.77.0.50 "
            f"(the workload listens on ports {WORKLOAD_CONTROL_PORT} and {WORKLOAD_STREAM_PORT})"
        )
        raise argparse.ArgumentTypeError(msg)
    return text.strip()


def bridge_name(text: str) -> str:
    """An argparse ``type=`` for ``--no-notify-on``: a name the kernel accepts for a bridge.

    A name no bridge can have (``"br0 br1"``, an alias like ``br0:1``) would
    otherwise match no bridge and silently turn nothing off.
    """
    from libvirt_vmotion.preflight.domxml import interface_name_problem  # noqa: PLC0415

    problem = interface_name_problem(text)
    if problem:
        msg = (
            f"{problem}{HINT_SEPARATOR}give one bridge per --no-notify-on, as 'ip link' "
            "names it, e.g. --no-notify-on br0 --no-notify-on br1"
        )
        raise argparse.ArgumentTypeError(msg)
    return text


def _guest_ip(text: str) -> str:
    from libvirt_vmotion.cutover.frames import NotifyConfig  # noqa: PLC0415  only when given

    try:
        NotifyConfig(guest_ips=(text,))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _policy_type(key: PolicyKey) -> Callable[[str], object]:
    def parse(text: str) -> object:
        try:
            return key.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = key.key  # argparse names the type in some messages
    return parse


def _shown_default(key: PolicyKey) -> str:
    value = policy_value(MigrationPolicy(), key)
    if value is None:
        if key.key == "switchover-bandwidth":
            return "learned from earlier migrations between the same hosts, else none"
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _policy_dest(key: PolicyKey) -> str:
    """The argparse dest of a policy flag (``policy_`` first: never clashes with a command's)."""
    return "policy_" + key.key.replace("-", "_")


def _add_policy_flags(
    parser: argparse.ArgumentParser, *, flag_names: Mapping[str, str] | None = None
) -> None:
    """The policy's flags (``POLICY_KEYS``), each with its default; ``--policy FILE``.

    ``flag_names`` renames a value flag where the command's own flag has its name
    (policy key -> flag, e.g. ``evacuate``'s ``{"parallel": "--multifd"}``); the
    value lands in the same place, so the policy is read the same way.
    """
    pol = parser.add_argument_group(
        "convergence policy",
        "The budget and how to meet it: the guest switches over at the smallest dirty set "
        "that fits --max-downtime, once the rounds stop shrinking fast (the budget is a "
        "ceiling, not a target). If they stall above it the downtime ladder rises from "
        "--initial-downtime to --max-downtime, then the guest is throttled (up to "
        "--max-throttle), then post-copy, then abort. With the defaults post-copy also "
        "starts once half of --timeout has passed, whatever the rounds do: during "
        "post-copy the guest runs on the destination and depends on both hosts and the "
        "link (--no-postcopy forbids it). `vmotion policy show` prints the effective policy.",
    )
    pol.add_argument(
        "--policy", type=Path, metavar="TOML",
        help="policy file, keys named as these flags (examples/policy.toml); flags override "
        "it (default: none, the defaults shown here)",
    )  # fmt: skip
    for key in POLICY_KEYS:
        if not key.flag:
            continue
        default = _shown_default(key)
        if key.kind is bool:
            negative = key.key == "postcopy"  # on by default: the flag turns it off
            text = "never switch to post-copy" if negative else key.help
            pol.add_argument(
                f"--no-{key.key}" if negative else f"--{key.key}",
                dest=key.field, action="store_const", const=not negative, default=None,
                help=f"{text} (default: {'allowed' if negative else default})",
            )  # fmt: skip
            continue
        flag = (flag_names or {}).get(key.key, f"--{key.key}")
        pol.add_argument(
            flag, dest=_policy_dest(key), type=_policy_type(key),
            metavar=key.metavar,
            help=f"{key.help} (default: {default}"
            + (f"; {key.over_high})" if key.over_high else ")"),
        )  # fmt: skip
        if key.key == "max-throttle":
            pol.add_argument(
                "--no-throttle", action="store_true",
                help="never slow the guest down (--max-throttle 0)",
            )  # fmt: skip


def _add_cancel_status(sub: argparse._SubParsersAction[_Parser]) -> None:
    for name, text in (
        ("cancel", "abort a running pre-copy migration; the guest stays on the source"),
        ("status", "show the progress of a migration started elsewhere"),
    ):
        cmd = sub.add_parser(name, help=text, description=text)
        cmd.add_argument(
            "domain", metavar="DOMAIN", type=domain_name,
            help="guest name, UUID or ID on the source",
        )  # fmt: skip
        add_source(cmd)
        cmd.add_argument("--json", action="store_true", help="print one JSON object")


def _add_history(sub: argparse._SubParsersAction[_Parser]) -> None:
    hist = sub.add_parser(
        "history",
        help="the migrations this controller ran",
        description="The migrations `vmotion migrate` ran from this machine, oldest first: "
        "when, guest, hosts, result, job time, pause, strategy (from the history file: "
        f"${HISTORY_ENV}, default /var/lib/libvirt-vmotion/history.db for root).",
    )
    hist.add_argument("--domain", metavar="NAME", help="only this guest (default: all)")
    hist.add_argument(
        "--since", type=_since, metavar="WHEN",
        help="only those that ended since WHEN: a time ago (90m, 12h, 7d, 2w) or a date "
        "(2026-12-01, 2026-12-01T10:00, local time) (default: all)",
    )  # fmt: skip
    hist.add_argument(
        "--json", action="store_true",
        help="print one JSON object: the migrations as a list (empty when none are recorded)",
    )  # fmt: skip


def _since(text: str) -> float:
    try:
        return parse_since(text, now_s=time.time())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_history(args: argparse.Namespace) -> int:
    """``vmotion history [--domain NAME] [--since WHEN] [--json]``."""
    from libvirt_vmotion.adapters.history import History, default_path  # noqa: PLC0415

    path = default_path()
    try:
        entries = History(path).entries(domain=args.domain, since_s=args.since)
    except (OSError, sqlite3.Error) as exc:
        msg = f"Cannot read the migration history {path}: {exc}"
        raise VmotionError(
            msg, hint=f"Check the file, or point ${HISTORY_ENV} at another."
        ) from exc
    if args.json:
        # One document, whatever the count: no history is an empty list, not no output.
        document = {
            "event": "history",
            "history_file": None if path is None else str(path),
            "migrations": [e.to_dict() for e in entries],
        }
        print(json_line(document, now_s=time.time()))  # noqa: T201
        return ExitCode.OK
    if not entries:
        where = "disabled" if path is None else str(path)
        print(f"no migrations recorded (history: {where})")  # noqa: T201
        return ExitCode.OK
    print(  # noqa: T201
        f"{'ended (local time)':<19}  {'guest':<16} {'from -> to':<27} {'result':<9} "
        f"{'total':>7} {'pause':>8}  strategy"
    )
    for e in entries:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.finished_s))
        total = "-" if e.total_s is None else f"{e.total_s:.1f} s"
        pause = "-" if e.downtime_ms is None else f"{e.downtime_ms} ms"
        hosts = f"{e.source} -> {e.dest}"
        print(  # noqa: T201
            f"{when:<19}  {e.domain:<16} {hosts:<27} {e.result:<9} {total:>7} {pause:>8}  "
            f"{e.strategy or '-'}"
        )
    return ExitCode.OK


def _add_completion(sub: argparse._SubParsersAction[_Parser]) -> None:
    comp = sub.add_parser(
        "completion",
        help="print the shell completion script (bash or zsh)",
        description="Print the completion script generated from this parser: "
        'eval "$(vmotion completion bash)", or save it where your shell looks '
        "(./run installs the bash one and the man page, vmotion(1)).",
    )
    comp.add_argument("shell", choices=["bash", "zsh"], help="the shell")


def cmd_completion(args: argparse.Namespace) -> int:
    """``vmotion completion bash|zsh``: the shipped script (see ``cli.docs``)."""
    from importlib.resources import files  # noqa: PLC0415

    name = {"bash": "vmotion.bash", "zsh": "_vmotion"}[args.shell]
    print(files("libvirt_vmotion").joinpath("share", name).read_text(), end="")  # noqa: T201
    return ExitCode.OK


def _add_agent_check(sub: argparse._SubParsersAction[_Parser]) -> None:
    agent = sub.add_parser(
        "agent",
        help="check that a host's agent is reachable (what check's host-side checks need)",
        description="Host-side pre-flight (memory, bridges, disks, reservations) runs this "
        "package on each host as an agent over ssh: ssh as root with a key from here "
        "(BatchMode), and a python on the host that imports libvirt_vmotion (Debian's python "
        "is externally managed: install it in a venv there and name that venv's python with "
        "VMOTION_AGENT_PYTHON; VMOTION_AGENT_SSH replaces the ssh command).",
    )
    asub = agent.add_subparsers(dest="agent_command", required=True, parser_class=_Parser)
    chk = asub.add_parser(
        "check", help="reach the agent for URI's host and say what is missing",
        description="Reach the agent on URI's host the way pre-flight does; exit 0 if it "
        "answers, else 7 with what is missing.",
    )  # fmt: skip
    chk.add_argument("uri", type=libvirt_uri, metavar="URI", help="the host's libvirt URI")


def cmd_agent_check(args: argparse.Namespace) -> int:
    """``vmotion agent check URI``: reach the agent as pre-flight would; say what is missing."""
    import subprocess  # noqa: PLC0415

    from libvirt_vmotion.adapters import ops  # noqa: PLC0415
    from libvirt_vmotion.adapters.agent import RemoteHost  # noqa: PLC0415

    host = RemoteHost.for_uri(args.uri)
    try:
        reply = ops.HELLO.call(host, ops.Empty(), timeout_s=15.0)
    except VmotionError as exc:
        missing = "the agent"
        if host.prefix:
            try:
                ssh = subprocess.run(
                    [*host.prefix, "true"], capture_output=True, text=True, timeout=15, check=False
                )
                ssh_ok, why = ssh.returncode == 0, ssh.stderr.strip()[-200:]
            except (OSError, subprocess.TimeoutExpired) as ssh_exc:
                ssh_ok, why = False, str(ssh_exc)
            missing = (
                f"the package for {host.python} there (ssh works)"
                if ssh_ok
                else f"ssh as {shlex.join(host.prefix)} ({why or 'no answer'})"
            )
        msg = f"No agent on {host.label}: missing {missing}. {exc.message}"
        hint = (
            f"Allow key-based ssh as root from here, and install libvirt-vmotion on "
            f"{host.label} in a venv (Debian's python is externally managed); name its python "
            "with VMOTION_AGENT_PYTHON=/path/to/venv/bin/python (VMOTION_AGENT_SSH replaces "
            "the ssh command)."
        )
        raise ConnectionFailed(msg, hint=hint) from exc
    version = reply.version
    note = "" if version == __version__ else f" (here: {__version__}; install the same on both)"
    print(  # noqa: T201
        f"ok: the agent answers on {reply.hostname or host.label}: "
        f"libvirt-vmotion {version}{note}, via {shlex.join(host.prefix) or 'a local subprocess'} "
        f"running {host.python}"
    )
    return ExitCode.OK


def _add_policy_command(sub: argparse._SubParsersAction[_Parser]) -> None:
    pol = sub.add_parser(
        "policy",
        help="show the effective convergence policy",
        description="The policy migrate would use with these arguments, as a policy file.",
    )
    psub = pol.add_subparsers(dest="policy_command", required=True, parser_class=_Parser)
    show = psub.add_parser(
        "show",
        help="print the effective policy as TOML (defaults, --policy FILE, then flags)",
        description="Print the policy `migrate` would use with these flags, as a TOML "
        "policy file, followed by the escalations it permits.",
    )
    _add_policy_flags(show)


def cmd_policy(args: argparse.Namespace) -> int:
    """``vmotion policy show [--policy FILE] [flags]``."""
    from libvirt_vmotion.policy import escalations  # noqa: PLC0415

    policy = _policy(args)
    print(policy_to_toml(policy), end="")  # noqa: T201  the command's output
    print("\n# What this policy permits, and when:")  # noqa: T201
    for line in escalations(policy):
        print(f"#   {line}")  # noqa: T201
    return ExitCode.OK


def _policy(args: argparse.Namespace) -> MigrationPolicy:
    """Defaults, then ``--policy FILE``, then the flags."""
    base = MigrationPolicy()
    if args.policy is not None:
        try:
            text = args.policy.read_text()
        except OSError as exc:
            msg = f"Cannot read the policy file {args.policy}: {exc.strerror}."
            raise UsageError(msg, hint="Check the path given to --policy.") from exc
        base = load_policy_toml(text, source=str(args.policy))
    overrides: dict[str, object] = {}
    for key in POLICY_KEYS:
        if key.flag and key.field:
            overrides[key.field] = getattr(
                args, key.field if key.kind is bool else _policy_dest(key)
            )
    if args.no_throttle:
        overrides["max_throttle_percent"] = 0
    return build_policy(
        base,
        initial_downtime_ms=args.policy_initial_downtime,
        max_downtime_ms=args.policy_max_downtime,
        downtime_steps=args.policy_downtime_steps,
        overrides=overrides,
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
            self._json.write(json_line(view.to_dict(), now_s=time.time()) + "\n")
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
        try:
            sample, postcopy = _job_if_running(guest)
        except Unsupported as exc:
            msg = (
                f"The libvirt driver at {source_uri} reports no migration jobs, so "
                f"`vmotion {args.command}` cannot see one of '{guest.name}' there."
            )
            hint = (
                f"{args.command} works on the source host of a migration, over a qemu URI "
                f"(e.g. qemu+tcp://HOST/system); check there with: virsh -c URI domjobinfo "
                f"{args.domain}"
            )
            raise Unsupported(msg, hint=hint, code=exc.code) from exc
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
    from libvirt_vmotion.adapters import ops  # noqa: PLC0415
    from libvirt_vmotion.adapters.agent import RemoteHost  # noqa: PLC0415

    try:
        record = ops.GUARD_STATE.call(
            RemoteHost.for_uri(source_uri), ops.DomainRequest(domain=domain), timeout_s=10.0
        )
    except VmotionError:
        return {}
    if not record.state:
        return {}
    return {
        "guard": record.state,
        "orphaned": record.state.startswith("orphan"),
        "controller": record.controller,
    }


def _say_status(data: dict[str, object], args: argparse.Namespace) -> None:
    if args.json:
        print(json_line(data, now_s=time.time()))  # noqa: T201  machine output
    else:
        print(" ".join(f"{k}={v}" for k, v in data.items() if k != "event"))  # noqa: T201


def _add_notify_flags(mig: argparse.ArgumentParser) -> None:
    net = mig.add_argument_group(
        "network cutover",
        "Right after switchover the destination host announces the guest (RARP, gratuitous "
        "ARP, IPv6 NA) on its bridges, checks its bridge learned the guest's MAC and removes "
        "stale entries on the source; the report's network_cutover section says what happened.",
    )
    add_notify_off(net)
    net.add_argument(
        "--guest-ip", action="append", default=[], type=_guest_ip, metavar="ADDR|MAC=ADDR",
        help="an address of the guest to announce, besides what libvirt reports (repeatable; "
        "ADDR goes with the first NIC)",
    )  # fmt: skip
    net.add_argument(
        "--announce-count", type=_positive_int, default=3, metavar="N",
        help="announcement rounds (RARP, GARP, NA per NIC) after the switchover (default: 3)",
    )  # fmt: skip
    net.add_argument(
        "--announce-interval-ms", type=_positive_int, default=50, metavar="MS",
        help="pause between announcement rounds (default: 50)",
    )  # fmt: skip


def add_notify_off(group: argparse._ActionsContainer) -> None:
    """``--no-notify`` and ``--no-notify-on BRIDGE``, on ``migrate`` and ``netcheck``."""
    group.add_argument(
        "--no-notify", action="store_true",
        help="do not announce the guest on any network after the switchover (a warning: "
        "switches learn its new port only when it sends)",
    )  # fmt: skip
    group.add_argument(
        "--no-notify-on", action="append", default=[], metavar="BRIDGE", type=bridge_name,
        help="do not announce on this bridge (repeatable; default: announce on every bridge)",
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
        "the source, and whether we will notify switches. A check that could not run is a "
        "warning saying why. Exit 3 if anything blocks, 1 if nothing could be checked.",
    )
    add_guest_and_hosts(chk)
    chk.add_argument("--json", action="store_true", help="print the results as one JSON object")
    add_notify_off(chk)


def cmd_netcheck(args: argparse.Namespace) -> int:
    """``vmotion netcheck DOMAIN --to URI``: the network pre-flight on its own.

    Exit 3 on a blocker; 1 when nothing could be checked (every result is a
    check that could not run), so a script never reads "ok" from no checks.
    """
    from libvirt_vmotion.adapters.virt import Hypervisor  # noqa: PLC0415
    from libvirt_vmotion.cutover.frames import NotifyConfig  # noqa: PLC0415
    from libvirt_vmotion.preflight.gather import bridge_checks  # noqa: PLC0415
    from libvirt_vmotion.preflight.netcheck import (  # noqa: PLC0415
        as_netcheck_dict,
        checked_something,
        worst,
    )
    from libvirt_vmotion.preflight.result import Verdict  # noqa: PLC0415

    source_uri = args.source_uri or os.environ.get(DEFAULT_SOURCE_URI_ENV) or "qemu:///system"
    config = NotifyConfig(enabled=not args.no_notify, off_bridges=frozenset(args.no_notify_on))
    notify_off = frozenset({"*"}) if not config.enabled else config.off_bridges
    with Hypervisor.open(source_uri) as source:
        results = bridge_checks(
            source=source, domain=args.domain, source_uri=source_uri,
            dest_uri=args.dest_uri, notify_off=notify_off,
        )  # fmt: skip
    verdict = worst(results)
    checked = checked_something(results)
    if args.json:
        out: dict[str, object] = {
            "event": "netcheck",
            "domain": args.domain,
            "verdict": verdict.value,
            "checked": checked,
            "results": [as_netcheck_dict(r) for r in results],
        }
        print(json_line(out, now_s=time.time()))  # noqa: T201  machine output
    else:
        for r in results:
            print(f"{r.verdict.value:<8} {r.name:<22} {r.host}:{r.subject}  {r.message}")  # noqa: T201
            if r.hint:
                print(f"{'':<8} {'':<22} hint: {r.hint}")  # noqa: T201
    if verdict is Verdict.BLOCKER:
        return ExitCode.PREFLIGHT
    if not checked:
        sys.stderr.write(
            f"error: netcheck checked nothing for '{args.domain}': every check above could "
            "not run.\nhint: Fix what the warnings name (agent reachable over ssh, NICs on a "
            "bridge), then run it again.\n"
        )
        return ExitCode.ERROR
    return ExitCode.OK


def _add_lab(sub: argparse._SubParsersAction[_Parser]) -> None:
    lab = sub.add_parser(
        "lab",
        help="the two-host namespace lab (needs root)",
        description="Two libvirt hosts (hosta 10.77.0.1, hostb 10.77.0.2), a switch and a "
        "client namespace (10.77.0.100) on this machine. Run the CLI against the lab from "
        "the client namespace: vmotion lab exec -- vmotion migrate ...",
    )
    lsub = lab.add_subparsers(dest="lab_command", required=True, parser_class=_Parser)
    lup = lsub.add_parser("up", help="build the lab (idempotent; recovers a crashed lab)")
    lup.add_argument(
        "--hosts", type=int, choices=[2, 3], default=2,
        help="2 hosts (hosta, hostb), or 3 with hostc 10.77.0.3 on the same switch, for "
        "evacuations (default: 2; a third is added to a running lab)",
    )  # fmt: skip
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
    start.add_argument("--host", default="hosta", choices=["hosta", "hostb", "hostc"])
    start.add_argument(
        "--bridge", metavar="BRIDGE",
        help="the host bridge its NIC joins (default: br0, the lab network)",
    )  # fmt: skip
    start.add_argument(
        "--no-wait", action="store_true",
        help="do not wait for its workload to answer (a guest off the lab network)",
    )  # fmt: skip
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
    for verb in gsub.choices.values():
        verb.add_argument(
            "--name", default=LAB_GUEST_NAME, type=_lab_guest_name, metavar="NAME",
            help=f"which lab guest (default: {LAB_GUEST_NAME}); each name gets its own "
            "address 10.77.0.51.. and MAC",
        )  # fmt: skip


LAB_GUEST_NAME: Final = "vmo-guest"
"""The lab's default guest (``lab.constants.GUEST_NAME``; the CLI does not import the lab)."""


def _lab_guest_name(text: str) -> str:
    if not re.fullmatch(r"[a-z][a-z0-9-]{0,30}", text):
        msg = f"lab guest name {text!r}: use 1-31 lowercase letters, digits or '-'"
        raise argparse.ArgumentTypeError(msg)
    return text


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


def _evacuation_around(args: argparse.Namespace) -> Callable[[MigrationRequest], Around]:
    """What each move of an evacuation gets around it: the network cutover (flags checked now)."""
    from libvirt_vmotion.session.wiring import Around  # noqa: PLC0415  libvirt on use

    _notify_config(args)  # refuse bad cutover flags before any host
    budget_s = _policy(args).max_duration_s

    def around(request: MigrationRequest) -> Around:
        return Around(cutover=_cutover_factory(args, request, budget_s=budget_s))

    return around


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

    source_uri = _source_uri(args)
    policy = _policy(args)
    metrics_file = args.metrics_file or metrics_default_path()
    request = MigrationRequest(  # the effective budget: defaults, then --policy, then flags
        domain=args.domain,
        source_uri=source_uri,
        dest_uri=args.dest_uri,
        bandwidth_mib_s=policy.bandwidth_mib_s,
        max_downtime_ms=policy.max_downtime_ms,
        timeout_s=policy.max_duration_s,
    )
    settings = checks_cli.preflight_settings(args, policy)
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
            events=checks_cli.StderrEvents(policy),
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
        unreleased = session.unreleased if session is not None else None
        _report_failure(args, request, exc, unreleased=unreleased, metrics_file=metrics_file)
        raise
    _journal(report, exit_code=ExitCode.OK, metrics_file=metrics_file)
    if args.json:
        _emit_json(report, args)
    else:
        print(render_text(report))  # noqa: T201  the report is the command's output
        if args.report_file:
            _write_report(report, args.report_file)
    return ExitCode.OK


def _source_uri(args: argparse.Namespace) -> str:
    """The source host's URI: --from, else $LIBVIRT_DEFAULT_URI, else qemu:///system.

    Raises:
        UsageError: --from and --to name the same URI.

    """
    source_uri = args.source_uri or os.environ.get(DEFAULT_SOURCE_URI_ENV) or "qemu:///system"
    if source_uri == args.dest_uri:
        msg = f"--from and --to are the same URI ({args.dest_uri})."
        raise UsageError(msg, hint="Give the destination host's URI with --to.")
    return str(source_uri)


def _report_failure(
    args: argparse.Namespace,
    request: MigrationRequest,
    exc: VmotionError,
    *,
    unreleased: Unreleased | None,
    metrics_file: Path | None,
) -> None:
    """Write the failure report (--json, --report-file) and journal it; the caller re-raises."""
    failure = build_failure_report(
        request,
        result="aborted" if isinstance(exc, MigrationAborted) else "failed",
        error=exc.message,
        hint=exc.hint,
        exit_code=int(exc.exit_code),
        blockers=exc.blockers if isinstance(exc, PreflightFailed) else (),
        reservation=unreleased.to_dict() if unreleased is not None else None,
    )
    if args.json or args.report_file:
        _emit_json(failure, args)
    _journal(failure, exit_code=int(exc.exit_code), metrics_file=metrics_file)


def _journal(report: Mapping[str, object], *, exit_code: int, metrics_file: Path | None) -> None:
    """Append the run to the history's journal; rewrite the metrics textfile from it.

    Both are best effort (a warning, never a failure of the migration).
    """
    from libvirt_vmotion.adapters.history import History, JournalEntry, default_path  # noqa: PLC0415

    entry = JournalEntry.from_report(report, finished_s=time.time(), exit_code=exit_code)
    history = History(default_path())
    history.journal(entry)
    if metrics_file is None:
        return
    try:
        entries = history.entries() if history.path is not None else []
    except (OSError, sqlite3.Error) as exc:
        log.warning("metrics from this run only: history not read: %s", exc)
        entries = []
    try:
        metrics.write_textfile(metrics_file, metrics.render_textfile(entries or [entry]))
    except OSError as exc:
        log.warning("could not write the metrics file %s: %s", metrics_file, exc)


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
        print(json_line(report, now_s=time.time()))  # noqa: T201  machine output
    if args.report_file:
        _write_report(report, args.report_file)


def _write_report(report: dict[str, object], path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        stamped = json.loads(json_line(report, now_s=time.time()))
        path.write_text(json.dumps(stamped, indent=2, sort_keys=True) + "\n")
    except OSError as exc:
        log.warning("could not write the report to %s: %s", path, exc)


_FILE_ONLY: Final = {"file_only": True}
"""``extra=`` of a record that goes to --log-file only (stderr already has it)."""
_SYSLOG_PRIORITY: Final = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


class _JournalFormatter(logging.Formatter):
    """Under systemd (``$JOURNAL_STREAM``) prefix each line with its ``<priority>``."""

    def format(self, record: logging.LogRecord) -> str:
        """The line, prefixed for journald's SyslogLevelPrefix."""
        return f"<{_SYSLOG_PRIORITY.get(record.levelno, 6)}>{super().format(record)}"


def _configure_logging(args: argparse.Namespace) -> None:
    """Log to stderr at -v/--debug's level (journald priorities under systemd), --log-file too.

    Only the CLI configures handlers (modules only log).
    """
    level = logging.DEBUG if args.debug else logging.INFO if args.verbose else logging.WARNING
    fmt = "%(levelname)s %(name)s: %(message)s"
    stderr = logging.StreamHandler()
    stderr.setLevel(level)
    stderr.setFormatter(
        _JournalFormatter(fmt) if os.environ.get("JOURNAL_STREAM") else logging.Formatter(fmt)
    )
    stderr.addFilter(lambda record: not getattr(record, "file_only", False))
    handlers: list[logging.Handler] = [stderr]
    if args.log_file is not None:
        try:
            to_file = logging.FileHandler(args.log_file)
        except OSError as exc:
            sys.stderr.write(f"warning: cannot write the log file {args.log_file}: {exc}\n")
        else:
            to_file.setLevel(min(level, logging.INFO))
            to_file.setFormatter(
                logging.Formatter(
                    "%(asctime)s.%(msecs)03d %(levelname)s %(name)s [%(process)d]: %(message)s",
                    datefmt="%Y-%m-%dT%H:%M:%S",
                )
            )
            handlers.append(to_file)
    root = logging.getLogger()
    root.setLevel(min(h.level for h in handlers))
    for handler in handlers:
        root.addHandler(handler)


def _run_command(args: argparse.Namespace) -> int:
    """Dispatch to the command's function (lab and bench imported only when asked)."""
    simple: dict[str, Callable[[argparse.Namespace], int]] = {
        "migrate": cmd_migrate,
        "netcheck": cmd_netcheck,
        "cancel": cmd_cancel_status,
        "status": cmd_cancel_status,
        "check": lambda a: checks_cli.run(a, policy=_policy),
        "hooks": lambda a: checks_cli.run(a, policy=_policy),
        "policy": cmd_policy,
        "history": cmd_history,
        "agent": cmd_agent_check,
        "completion": cmd_completion,
        "evacuate": lambda a: evacuate_cli.cmd_evacuate(
            a, policy=_policy(a), around=_evacuation_around(a)
        ),
        "maintenance": lambda a: evacuate_cli.cmd_maintenance(
            a, policy=_policy, around=_evacuation_around
        ),
    }
    if args.command in simple:
        return simple[args.command](args)
    if args.command == "bench":
        from libvirt_vmotion.bench.runner import cmd_bench  # noqa: PLC0415  lab only when asked

        return cmd_bench(args)
    from libvirt_vmotion.lab.cli import run_lab_command  # noqa: PLC0415  lab only when asked

    return run_lab_command(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["agent"] and argv[1:2] != ["check"]:  # the machine interface (agent.py)
        from libvirt_vmotion.adapters.agent import main as agent_main  # noqa: PLC0415

        return agent_main(argv[1:])
    args = build_parser().parse_args(argv)
    _configure_logging(args)
    try:
        return _run_command(args)
    except VmotionError as exc:
        if args.debug:
            log.exception("failed")
        sys.stderr.write(f"error: {exc.message}\n")
        if exc.hint:
            sys.stderr.write(f"hint: {exc.hint}\n")
        log.error(  # noqa: TRY400  the user's error, no traceback (stderr has the message)
            "%s (exit %d; hint: %s)", exc.message, exc.exit_code, exc.hint, extra=_FILE_ONLY
        )
        return int(exc.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
