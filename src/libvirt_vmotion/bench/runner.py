"""Run the benchmark matrix in the namespace lab.

I/O: builds or reuses the lab of ``$VMOTION_LAB_ID``, boots the guest with
each RAM size, sets the workload's dirty rate, runs every tool from the lab's
client namespace (re-executing itself there), watches each migration from
outside (job statistics, pings, the workload's TCP stream and page checker)
and writes the results folder. Policy (what to run, how to fold figures) lives
in ``matrix``; text in ``render``.

Every measured migration goes hosta -> hostb; between runs the guest is put
back on hosta with an unmeasured, uncapped migration at a low dirty rate (or
rebooted fresh when it is anywhere else), so runs are independent.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, TextIO

from libvirt_vmotion import __version__
from libvirt_vmotion.bench.matrix import (
    BenchParams,
    Cell,
    RoundPoint,
    RunResult,
    Tool,
    eta_s,
    failed_runs,
    first_guess_run_s,
    format_duration,
    params_from_dict,
    parse_rawstats,
    ram_touched_bytes,
    run_from_dict,
    workload_rate_mib_s,
)
from libvirt_vmotion.bench.options import params_from_args
from libvirt_vmotion.bench.render import BenchRecord, build_results_doc, build_summary_md
from libvirt_vmotion.errors import DomainNotFound, ExitCode, UsageError, VmotionError
from libvirt_vmotion.lab import command_name, guestctl, topology
from libvirt_vmotion.lab.constants import GUEST_ADDR, GUEST_NAME, HOST_A, HOST_B, LAB_ID, LabHost
from libvirt_vmotion.lab.image import GuestImage, ensure_guest_image

log = logging.getLogger(__name__)

SETTLE_S: Final = 3.0
"""After setting the rate: let the workload dirty its working set at that rate."""
RESET_TIMEOUT_S: Final = 120.0
SAMPLE_INTERVAL_S: Final = 0.25
OVER_BUDGET_GRACE_S: Final = 5.0
"""A run may end this long after its budget (abort and process exit) and still count."""
_COMMAND_ENV: Final = "VMOTION_BENCH_COMMAND"
_IMAGE_ENV: Final = "VMOTION_BENCH_IMAGE"
"""kernel, initrd and recipe hash found before re-executing in the client namespace
(resolving the image again there costs seconds of apt)."""


def _err(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


# ---- entry point ------------------------------------------------------------------


def cmd_bench(args: argparse.Namespace) -> int:
    """``vmotion bench``: validate, build the lab, run in the client namespace."""
    if getattr(args, "render", None) is not None:
        return rerender(args.render)
    params = params_from_args(args)
    out_dir = Path(args.out or f"bench-results/{time.strftime('%Y%m%d-%H%M%S')}").absolute()
    if getattr(args, "evacuate", None) is not None:
        return _bench_evacuate(args, out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        msg = f"The results folder {out_dir} exists and is not empty."
        raise UsageError(msg, hint="Name a new one with --out DIR (or remove that one).")
    if os.geteuid() != 0:
        msg = "The benchmark needs root (it runs the namespace lab)."
        raise UsageError(msg, hint=f"Run it as root: sudo {command_name()} bench ...")
    if guestctl.in_client_netns():
        bench = Bench(params, out_dir, command=os.environ.get(_COMMAND_ENV, "vmotion bench"))
        try:
            return bench.run()
        except RuntimeError as exc:  # lab, guest image and workload errors
            msg = f"The benchmark stopped: {exc}"
            raise VmotionError(
                msg,
                hint=f"Results so far are in {out_dir}; check '{command_name()} lab status' "
                f"and '{command_name()} lab guest status', then run it again.",
            ) from exc
    try:
        _err(f"bench: lab '{LAB_ID}' (built if needed), guest image")
        topology.up(log=lambda line: log.info("%s", line))
        image = ensure_guest_image(log=lambda line: log.info("%s", line))
    except (topology.LabError, RuntimeError) as exc:
        msg = f"Could not prepare the lab for the benchmark: {exc}"
        raise VmotionError(msg, hint=f"See '{command_name()} lab status'.") from exc
    argv = ["bench", *params.to_argv(), "--out", str(out_dir)]
    if args.debug:
        argv.insert(0, "--debug")
    elif args.verbose:
        argv.insert(0, "-v")
    shown = " ".join([command_name(), *map(shlex.quote, sys.argv[1:])])
    os.environ[_COMMAND_ENV] = shown
    os.environ[_IMAGE_ENV] = json.dumps([str(image.kernel), str(image.initrd), image.recipe_hash])
    return _run_in_client_until_done(guestctl.self_command(*argv))


def _bench_evacuate(args: argparse.Namespace, out_dir: Path) -> int:
    from libvirt_vmotion.bench.evacuation import cmd_bench_evacuate  # noqa: PLC0415

    if not 1 <= args.evacuate <= 8:
        msg = f"--evacuate {args.evacuate}: expected 1 to 8 guests"
        raise UsageError(msg, hint="e.g. --evacuate 4")
    if os.geteuid() != 0:
        msg = "The benchmark needs root (it runs the namespace lab)."
        raise UsageError(msg, hint=f"Run it as root: sudo {command_name()} bench ...")
    return cmd_bench_evacuate(
        count=args.evacuate,
        bandwidth_mib_s=int(args.bandwidth or 50),
        reps=int(args.reps or 1),
        out_dir=out_dir,
    )


def _run_in_client_until_done(argv: Sequence[str]) -> int:
    """Run ``argv`` in the client namespace; on Ctrl-C wait for it rather than kill it.

    The child gets the same Ctrl-C: it aborts the migration in flight and writes
    the results so far (``subprocess.call`` would SIGKILL it instead).
    """
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"
    proc = subprocess.Popen(guestctl.client_command(argv), env=env)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.wait()
        raise


# ---- watching a migration from outside ---------------------------------------------


@dataclass(slots=True)
class JobSampler:
    """Reads the source's job statistics every ``interval_s`` in a thread."""

    uri: str
    name: str
    interval_s: float = SAMPLE_INTERVAL_S
    points: list[RoundPoint] = field(default_factory=list)
    last_data_processed: int = 0
    last_iteration: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        """Start sampling (connection errors are logged; the run goes on without samples)."""
        self._thread = threading.Thread(target=self._run, name="job-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from libvirt_vmotion.adapters.virt import Hypervisor  # noqa: PLC0415  libvirt only when running

        first_s: float | None = None
        try:
            with Hypervisor.open(self.uri) as hv:
                guest = hv.lookup(self.name)
                while not self._stop.is_set():
                    try:
                        sample = guest.job_sample(now_s=time.monotonic())
                    except DomainNotFound:
                        return  # undefined on the source: the migration finished
                    except VmotionError as exc:
                        log.debug("job stats: %s", exc)
                    else:
                        if sample.is_active and sample.memory_total_bytes:
                            first_s = sample.now_s if first_s is None else first_s
                            self.points.append(
                                RoundPoint(
                                    t_s=sample.now_s - first_s,
                                    iteration=sample.iteration,
                                    remaining_bytes=sample.memory_remaining_bytes,
                                )
                            )
                            self.last_data_processed = sample.data_processed_bytes
                            self.last_iteration = max(self.last_iteration, sample.iteration)
                    self._stop.wait(self.interval_s)
        except VmotionError as exc:
            log.warning("job sampler on %s: %s", self.uri, exc)

    def stop(self) -> tuple[RoundPoint, ...]:
        """Stop and return the samples."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        return tuple(self.points)


@dataclass(slots=True)
class ToolOutcome:
    """What one tool's command reported (before the runner's own checks)."""

    ok: bool
    wall_s: float
    migration_s: float | None = None
    """The migration itself as the tool timed it (ours: without its pre-flight and
    start-up), the figure held against the budget; None: use ``wall_s``."""
    qemu_elapsed_ms: int | None = None
    downtime_ms: int | None = None
    longest_gap_ms: float | None = None
    stream_gap_ms: float | None = None
    tcp_reset: bool | None = None
    bytes_transferred: int | None = None
    rounds: int | None = None
    mismatches: int | None = None
    error: str | None = None
    strategy: str | None = None
    report: Mapping[str, object] = field(default_factory=dict)


def _virsh(uri: str, *argv: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["virsh", "-q", "-c", uri, *argv],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout_s,
    )


def _completed_stats(host: LabHost) -> dict[str, int | float | str]:
    result = _virsh(
        host.uri, "domjobinfo", GUEST_NAME, "--completed", "--keep-completed", "--rawstats"
    )
    return parse_rawstats(result.stdout) if result.returncode == 0 else {}


def _opt_int(stats: Mapping[str, object], key: str) -> int | None:
    value = stats.get(key)
    return value if isinstance(value, int) else None


_VIRSH_STRATEGY: Final = {
    Tool.VIRSH: "pre-copy",
    Tool.AUTO_CONVERGE: "auto-converge",
    Tool.POSTCOPY: "post-copy after one pass",
    Tool.VIRSH_TLS: "pre-copy, TLS",
}
_VIRSH_EXTRA: Final = {
    Tool.VIRSH: (),
    Tool.AUTO_CONVERGE: ("--auto-converge",),
    Tool.POSTCOPY: ("--postcopy", "--postcopy-after-precopy"),
    Tool.VIRSH_TLS: ("--tls",),
}


def run_virsh(tool: Tool, *, bandwidth_mib_s: int, budget_s: float) -> ToolOutcome:
    """``virsh migrate`` hosta -> hostb with pings and the TCP stream watched around it.

    Over budget, the job is aborted with ``virsh domjobabort`` (refused once in
    post-copy: then it runs to its end and counts as over budget).
    """
    from libvirt_vmotion.observe.ping import PingProbe  # noqa: PLC0415  lab network only
    from libvirt_vmotion.observe.workload import StreamProbe  # noqa: PLC0415

    argv = [
        "virsh", "-q", "-c", HOST_A.uri, "migrate", "--live", "--p2p", "--persistent",
        "--undefinesource", "--bandwidth", str(bandwidth_mib_s), *_VIRSH_EXTRA[tool],
        GUEST_NAME, HOST_B.uri,
    ]  # fmt: skip
    ping = PingProbe(GUEST_ADDR, interval_s=0.01)
    stream = StreamProbe(GUEST_ADDR)
    ping.start()
    stream.start()
    aborted = ""
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while proc.poll() is None:
            elapsed = time.monotonic() - t0
            if not aborted and elapsed > budget_s:
                res = _virsh(HOST_A.uri, "domjobabort", GUEST_NAME)
                aborted = "aborted over budget" + (
                    "" if res.returncode == 0 else f" (abort refused: {res.stderr.strip()})"
                )
            if elapsed > budget_s + RESET_TIMEOUT_S:
                proc.kill()
            time.sleep(0.05)
    except BaseException:
        _virsh(HOST_A.uri, "domjobabort", GUEST_NAME)
        proc.kill()
        raise
    finally:
        wall_s = time.monotonic() - t0
        pinged = ping.stop()
        streamed = stream.stop()
    _out, err = proc.communicate()
    ok = proc.returncode == 0
    stats = _completed_stats(HOST_B) if ok else {}
    return ToolOutcome(
        ok=ok,
        wall_s=wall_s,
        qemu_elapsed_ms=_opt_int(stats, "time_elapsed"),
        downtime_ms=_opt_int(stats, "downtime"),
        longest_gap_ms=pinged.longest_gap_ms,
        stream_gap_ms=streamed.longest_gap_ms,
        tcp_reset=streamed.reset,
        bytes_transferred=_opt_int(stats, "data_processed"),
        rounds=_opt_int(stats, "memory_iteration"),
        error=None if ok else (aborted or err.strip()[-300:] or f"exit {proc.returncode}"),
        strategy=_VIRSH_STRATEGY[tool],
        report=stats,
    )


def _last_report(stdout: str) -> dict[str, object]:
    """The final report among ``--json`` output lines (progress lines come first)."""
    for line in reversed(stdout.strip().splitlines()):
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if isinstance(data, dict) and "report_version" in data:
            return data
    return {}


def _section(report: Mapping[str, object], name: str) -> Mapping[str, object]:
    value = report.get(name)
    return value if isinstance(value, Mapping) else {}


def _float_or_none(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def run_ours(*, bandwidth_mib_s: int, budget_s: float, tls: bool = False) -> ToolOutcome:
    """``vmotion migrate`` hosta -> hostb with its own ping and workload observers.

    ``tls``: encrypted (``--tls require``); else ``--tls off``, as plain virsh migrates.
    """
    argv = guestctl.self_command(
        "migrate", GUEST_NAME, "--from", HOST_A.uri, "--to", HOST_B.uri,
        "--bandwidth", str(bandwidth_mib_s), "--timeout", f"{budget_s:g}", "--json",
        "--ping", GUEST_ADDR, "--workload", GUEST_ADDR, "--tls", "require" if tls else "off",
    )  # fmt: skip
    t0 = time.monotonic()
    try:
        result = subprocess.run(
            argv, capture_output=True, text=True, check=False, timeout=budget_s + RESET_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        # Killing the client of a p2p migration does not cancel it (LAB-NOTES).
        _virsh(HOST_A.uri, "domjobabort", GUEST_NAME)
        wall_s = time.monotonic() - t0
        return ToolOutcome(ok=False, wall_s=wall_s, error=f"no exit after {wall_s:.0f} s: killed")
    wall_s = time.monotonic() - t0
    report = _last_report(result.stdout)
    network, workload = _section(report, "network"), _section(report, "workload")
    ok = result.returncode == 0 and report.get("result") == "completed"
    error = None
    if not ok:
        error = str(report.get("error") or result.stderr.strip()[-300:])
    mismatches = workload.get("new_mismatches")
    conv = _section(report, "convergence")
    strategy = conv.get("strategy")
    measured = conv.get("measured")
    if isinstance(strategy, str) and isinstance(measured, dict) and measured.get("compressed"):
        strategy += ", zstd multifd"  # the forecast's choice: a column of the bench
    downtime_ms = _opt_int(report, "downtime_ms")
    if isinstance(strategy, str) and strategy.startswith("post-copy") and not downtime_ms:
        downtime_ms = None  # libvirt keeps no completed statistics after post-copy
    return ToolOutcome(
        ok=ok,
        wall_s=wall_s,
        migration_s=_float_or_none(report.get("total_time_s")),
        qemu_elapsed_ms=_opt_int(report, "qemu_elapsed_ms"),
        downtime_ms=downtime_ms,
        longest_gap_ms=_float_or_none(network.get("ping_longest_gap_ms")),
        stream_gap_ms=_float_or_none(workload.get("tcp_stream_longest_gap_ms")),
        tcp_reset=workload.get("tcp_reset")
        if isinstance(workload.get("tcp_reset"), bool)
        else None,  # type: ignore[arg-type]  # checked
        bytes_transferred=_opt_int(report, "data_transferred_bytes"),
        rounds=_opt_int(report, "iterations"),
        mismatches=mismatches if isinstance(mismatches, int) else None,
        error=error,
        strategy=strategy if isinstance(strategy, str) else None,
        report=report,
    )


# ---- the benchmark ----------------------------------------------------------------


class Bench:
    """One benchmark: the matrix of ``params`` into ``out_dir`` (run in the client netns)."""

    def __init__(
        self,
        params: BenchParams,
        out_dir: Path,
        *,
        command: str,
        progress: TextIO = sys.stderr,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Prepare; nothing runs until :meth:`run`."""
        self.params = params
        self.out_dir = out_dir
        self.command = command
        self.progress = progress
        self.clock = clock
        self.runs: list[RunResult] = []
        self.calibration: dict[str, object] = {}
        self.machine: dict[str, object] = {}
        self.started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.t0 = clock()
        self.image: GuestImage | None = None
        self.ram_mib = 0
        self.rate_mib_s = 1

    def say(self, text: str) -> None:
        """One progress line on stderr."""
        self.progress.write(f"bench {format_duration(self.clock() - self.t0)} {text}\n")
        self.progress.flush()

    def run(self) -> int:
        """Run the matrix, write the results folder, print its path on stdout.

        Raises:
            VmotionError: the guest lost pages in some run (after writing results),
                or the lab failed.

        """
        params = self.params
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.machine = machine_facts()
        self.image = _image_from_env() or ensure_guest_image()
        self.say(
            f"{params.total_runs()} runs: {len(params.cells())} cells x {params.reps} rep(s) x "
            f"{len(params.tools)} tools; first guess {format_duration(first_guess_run_s(params))} "
            f"per run; results in {self.out_dir}"
        )
        try:
            for ram in params.ram_mib:
                self.boot(ram)
                touched = self.calibrate(ram)
                for cell in (c for c in params.cells() if c.ram_mib == ram):
                    for rep in range(1, params.reps + 1):
                        for tool in params.tools:
                            self.runs.append(self.one_run(cell, rep, tool, touched))
                            self.write_results()
        finally:
            self.write_results(final=True)
            # A guest left dirtying memory under TCG would load the host for nothing.
            guestctl.remove_guest()
        failed = failed_runs(self.runs)
        print(f"results: {self.out_dir}")  # noqa: T201  the command's output
        if failed:
            detail = ", ".join(f"{r.tool} {r.cell.label} rep {r.rep}" for r in failed)
            msg = f"FAILURE: the guest lost pages (workload mismatches) in: {detail}."
            raise VmotionError(
                msg,
                hint=f"A migration corrupted guest memory; see {self.out_dir / 'results.json'} "
                "and the guest's serial log under the lab's log/qemu directory.",
            )
        return ExitCode.OK

    # -- guest placement --------------------------------------------------------

    def boot(self, ram_mib: int) -> None:
        """A fresh guest on hosta with ``ram_mib`` of RAM, workload at 1 MiB/s."""
        assert self.image is not None  # noqa: S101  set in run()
        wss = self.params.wss_mib(ram_mib)
        self.say(f"boot {GUEST_NAME} on {HOST_A.name}: {ram_mib} MiB RAM, working set {wss} MiB")
        guestctl.start_guest(HOST_A, self.image, memory_mib=ram_mib, wss_mib=wss, rate_mib_s=1)
        guestctl.wait_for_workload()
        self.ram_mib = ram_mib
        self.rate_mib_s = 1
        time.sleep(SETTLE_S)

    def set_rate(self, rate_mib_s: int) -> None:
        """Set the workload's rewrite rate (what ``lab guest set rate`` sends)."""
        from libvirt_vmotion.observe.workload import send_command  # noqa: PLC0415

        if rate_mib_s != self.rate_mib_s:
            send_command(GUEST_ADDR, f"set rate {rate_mib_s}")
            self.rate_mib_s = rate_mib_s

    def migrate_uncapped(self, src: LabHost, dst: LabHost) -> subprocess.CompletedProcess[str]:
        """An unmeasured plain migration at full speed (reset or calibration)."""
        return _virsh(
            src.uri, "migrate", "--live", "--p2p", "--persistent", "--undefinesource",
            GUEST_NAME, dst.uri, timeout_s=RESET_TIMEOUT_S,
        )  # fmt: skip

    def ensure_on_a(self) -> None:
        """Put the guest back on hosta (migrate back, or reboot it fresh there)."""
        placement = guestctl.find_guest()
        if (HOST_A, "running") in placement and all(h is HOST_A for h, _ in placement):
            return
        if (HOST_B, "running") in placement:
            self.set_rate(1)
            result = self.migrate_uncapped(HOST_B, HOST_A)
            if result.returncode == 0:
                return
            self.say(f"reset migration back to {HOST_A.name} failed: {result.stderr.strip()}")
        self.say(f"guest not (only) on {HOST_A.name} ({placement}): booting it fresh")
        self.boot(self.ram_mib)

    def calibrate(self, ram_mib: int) -> int | None:
        """Measure RAM touched with one uncapped migration there and back."""
        result = self.migrate_uncapped(HOST_A, HOST_B)
        stats = _completed_stats(HOST_B) if result.returncode == 0 else {}
        touched = ram_touched_bytes(stats)
        self.calibration[str(ram_mib)] = {
            "ram_touched_bytes": touched,
            "memory_total_bytes": stats.get("memory_total"),
            "uncapped_elapsed_ms": stats.get("time_elapsed"),
            "uncapped_downtime_ms": stats.get("downtime"),
            "method": "memory_total - memory_constant * page size of an uncapped virsh "
            "migration at 1 MiB/s dirty rate",
            "error": None if result.returncode == 0 else result.stderr.strip(),
        }
        shown = "n/a" if touched is None else f"{touched / 2**20:.0f} MiB"
        self.say(f"calibration {ram_mib} MiB guest: RAM touched {shown}")
        self.ensure_on_a()
        return touched

    # -- one run ----------------------------------------------------------------

    def one_run(self, cell: Cell, rep: int, tool: Tool, touched: int | None) -> RunResult:
        """Measure one migration of ``tool`` in ``cell``."""
        from libvirt_vmotion.observe.workload import (  # noqa: PLC0415  lab network only
            WorkloadError,
            query_status,
            wait_until_ready,
        )

        params = self.params
        index = len(self.runs) + 1
        total = params.total_runs()
        left = eta_s(
            done_runs=len(self.runs),
            total_runs=total,
            elapsed_s=self.clock() - self.t0,
            first_guess_s=first_guess_run_s(params),
        )
        tag = f"[{index}/{total}] {cell.label} rep {rep}/{params.reps} {tool}"
        self.say(f"{tag}: running (ETA {format_duration(left)})")
        rate = workload_rate_mib_s(cell.fraction, params.bandwidth_mib_s)
        self.ensure_on_a()
        self.set_rate(rate)
        time.sleep(SETTLE_S)
        before = query_status(GUEST_ADDR)
        sampler = JobSampler(HOST_A.uri, GUEST_NAME)
        sampler.start()
        try:
            if tool.is_ours:
                outcome = run_ours(
                    bandwidth_mib_s=params.bandwidth_mib_s,
                    budget_s=params.budget_s,
                    tls=tool is Tool.OURS_TLS,
                )
            else:
                outcome = run_virsh(
                    tool, bandwidth_mib_s=params.bandwidth_mib_s, budget_s=params.budget_s
                )
        finally:
            series = sampler.stop()
        try:
            after = wait_until_ready(GUEST_ADDR, timeout_s=30)
        except WorkloadError as exc:
            after = None
            outcome.error = f"workload unreachable after the run: {exc}"
        rebooted = after is not None and after.boot_id != before.boot_id
        mismatches = (
            (after.mismatches if rebooted else after.mismatches - before.mismatches) if after else 0
        )
        mismatches = max(mismatches, outcome.mismatches or 0)
        landed = guestctl.find_guest() == [(HOST_B, "running")]
        migration_s = outcome.migration_s or outcome.wall_s
        converged = outcome.ok and landed and migration_s <= params.budget_s + OVER_BUDGET_GRACE_S
        error = outcome.error
        if outcome.ok and not landed:
            error = f"tool reported success but the guest is at {guestctl.find_guest()}"
        elif outcome.ok and not converged:
            error = f"finished over budget ({migration_s:.1f} s)"
        if rebooted:
            error = f"guest rebooted during the run; {error or ''}".strip("; ")
        run = RunResult(
            tool=tool,
            cell=cell,
            rep=rep,
            converged=converged,
            total_time_s=outcome.wall_s,
            qemu_elapsed_ms=outcome.qemu_elapsed_ms,
            downtime_ms=outcome.downtime_ms,
            longest_gap_ms=outcome.longest_gap_ms,
            bytes_transferred=outcome.bytes_transferred or sampler.last_data_processed or None,
            rounds=outcome.rounds or sampler.last_iteration or None,
            mismatches=mismatches,
            ram_touched_bytes=touched,
            bandwidth_mib_s=params.bandwidth_mib_s,
            workload_rate_mib_s=rate,
            achieved_dirty_mib_s=before.achieved_mib_s,
            stream_longest_gap_ms=outcome.stream_gap_ms,
            tcp_reset=outcome.tcp_reset,
            error=error,
            strategy=outcome.strategy,
            series=series,
            tool_report=outcome.report,
        )
        self.say(f"{tag}: {_one_line(run)}")
        if mismatches:
            self.say(f"{tag}: FAILURE: {mismatches} guest pages lost or stale")
        return run

    # -- output -----------------------------------------------------------------

    def write_results(self, *, final: bool = False) -> None:
        """Write results.json (after every run) and, at the end, summary.md and plots."""
        record = BenchRecord(
            params=self.params,
            runs=self.runs,
            machine=self.machine,
            command=self.command,
            started=self.started,
            duration_s=self.clock() - self.t0,
            calibration=self.calibration,
        )
        complete = final and len(self.runs) == self.params.total_runs()
        plots = write_folder(self.out_dir, record, complete=complete, final=final)
        if final:
            self.say(f"wrote results.json, summary.md, {len(plots)} plot(s) to {self.out_dir}")


def write_folder(out_dir: Path, record: BenchRecord, *, complete: bool, final: bool) -> list[str]:
    """Write results.json and (``final``) the plots and summary.md; return the plot names."""
    plots: list[str] = []
    if final and record.runs:
        from libvirt_vmotion.bench.plots import write_plots  # noqa: PLC0415  matplotlib

        plots = write_plots(record.runs, out_dir)
    doc = build_results_doc(record)
    doc["complete"] = complete
    doc["plots"] = plots
    _write_atomic(out_dir / "results.json", json.dumps(doc, indent=1) + "\n")
    if final:
        _write_atomic(out_dir / "summary.md", build_summary_md(record, plots))
    return plots


def rerender(out_dir: Path) -> int:
    """Rewrite summary.md, the plots and results.json's summary of an existing results folder.

    For a folder written by an earlier version (new columns, fixed plots): the
    measured runs are kept as they are; nothing is run.
    """
    path = out_dir / "results.json"
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        msg = f"Cannot read {path}: {exc}"
        raise UsageError(msg, hint="Give a folder written by 'vmotion bench' (--out DIR).") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("runs"), list):
        msg = f"{path} is not a benchmark results document (no runs)."
        raise UsageError(msg, hint="Give a folder written by 'vmotion bench' (--out DIR).")
    record = BenchRecord(
        params=params_from_dict(doc.get("parameters") or {}),
        runs=[run_from_dict(r) for r in doc["runs"]],
        machine=doc.get("machine") or {},
        command=str(doc.get("command", "")),
        started=str(doc.get("started", "")),
        duration_s=float(doc.get("duration_s") or 0),
        calibration=doc.get("calibration") or {},
    )
    write_folder(out_dir, record, complete=bool(doc.get("complete", False)), final=True)
    print(out_dir)  # noqa: T201  the folder, as a finished run prints it
    return 0


def _image_from_env() -> GuestImage | None:
    try:
        kernel, initrd, recipe = json.loads(os.environ.get(_IMAGE_ENV, ""))
    except ValueError:
        return None
    image = GuestImage(kernel=Path(kernel), initrd=Path(initrd), recipe_hash=str(recipe))
    return image if image.kernel.is_file() and image.initrd.is_file() else None


def _one_line(run: RunResult) -> str:
    def fmt(value: float | None, unit: str, digits: int = 0) -> str:
        return "n/a" if value is None else f"{value:.{digits}f}{unit}"

    state = "converged" if run.converged else f"NOT converged ({run.error})"
    return (
        f"{state} in {run.total_time_s:.1f} s, downtime {fmt(run.downtime_ms, ' ms')}, "
        f"gap {fmt(run.longest_gap_ms, ' ms')}, rounds {run.rounds}, "
        f"x limit {fmt(run.limit_ratio, '', 2)}, mismatches {run.mismatches}"
    )


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _first_line(argv: Sequence[str]) -> str:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    return (result.stdout.strip().splitlines() or ["unknown"])[0]


def machine_facts() -> dict[str, object]:
    """Host facts recorded with the results: CPU, memory, OS, QEMU, libvirt, load."""
    facts: dict[str, object] = {
        "hostname": platform.node(),
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "libvirt_vmotion": __version__,
        "lab_id": LAB_ID,
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        facts["cpu_model"] = next(
            (
                ln.split(":", 1)[1].strip()
                for ln in cpuinfo.splitlines()
                if ln.startswith("model name")
            ),
            "unknown",
        )
        meminfo = Path("/proc/meminfo").read_text().split()
        facts["memory_gib"] = round(int(meminfo[1]) / 2**20, 1)
        os_release = Path("/etc/os-release").read_text()
        facts["os"] = next(
            (
                ln.split("=", 1)[1].strip('"')
                for ln in os_release.splitlines()
                if ln.startswith("PRETTY_NAME=")
            ),
            "unknown",
        )
    except (OSError, IndexError, ValueError) as exc:
        facts["facts_error"] = str(exc)
    facts["qemu"] = _first_line(["qemu-system-x86_64", "--version"])
    facts["libvirt"] = _first_line(["libvirtd", "--version"])
    facts["git_commit"] = _first_line(
        ["git", "-C", str(Path(__file__).resolve().parent), "rev-parse", "--short", "HEAD"]
    )
    facts["accel"] = "tcg"
    return facts
