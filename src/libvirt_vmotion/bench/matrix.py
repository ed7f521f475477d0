"""The benchmark matrix and its arithmetic.

Pure: no I/O, no clock, no logging. The runner feeds measured figures in; this
module says what to run (cells, tools, workload rates), folds runs into
medians and worst cases, compares tools as ratios and against the physical
limit (RAM touched / bandwidth: no pre-copy migration can move the guest's
non-zero memory faster than the link carries it).
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final, TypeVar

from libvirt_vmotion.errors import UsageError

MIB: Final = 1024 * 1024
_T = TypeVar("_T")


class Tool(StrEnum):
    """A way to live-migrate the guest that the benchmark compares."""

    OURS = "ours"
    """``vmotion migrate`` with its default policy, unencrypted (``--tls off``), as plain
    virsh migrates: the like-for-like comparison."""
    OURS_TLS = "ours-tls"
    """The same encrypted (``--tls require``): against ``ours``, the cost of TLS."""
    VIRSH = "virsh"
    """``virsh migrate --live --p2p --persistent --undefinesource --bandwidth B``."""
    AUTO_CONVERGE = "virsh-auto-converge"
    """The same plus ``--auto-converge`` (QEMU throttles the vCPUs)."""
    POSTCOPY = "virsh-postcopy"
    """The same plus ``--postcopy --postcopy-after-precopy``."""
    VIRSH_TLS = "virsh-tls"
    """Plain ``virsh migrate`` plus ``--tls``."""

    @property
    def is_ours(self) -> bool:
        """True for our own migrations (their report has pre-flight and the migration)."""
        return self in {Tool.OURS, Tool.OURS_TLS}


BASELINES: Final = (Tool.VIRSH, Tool.AUTO_CONVERGE, Tool.POSTCOPY, Tool.VIRSH_TLS)
TLS_PAIRS: Final = ((Tool.OURS_TLS, Tool.OURS), (Tool.VIRSH_TLS, Tool.VIRSH))
"""Each encrypted tool and its unencrypted twin: their ratio is the cost of TLS."""


@dataclass(frozen=True, slots=True)
class BenchParams:
    """What one benchmark run covers.

    Attributes:
        ram_mib: guest RAM sizes, one matrix row each.
        fractions: workload dirty rates as fractions of ``bandwidth_mib_s``.
        reps: repetitions of every (cell, tool).
        bandwidth_mib_s: migration bandwidth cap given to every tool.
        budget_s: time budget of one migration; a run over it is aborted and
            counts as not converged.
        tools: the tools compared, ``ours`` first when present.
        wss_divisor: the guest workload's working set is ``ram_mib // wss_divisor``.

    """

    ram_mib: tuple[int, ...]
    fractions: tuple[float, ...]
    reps: int
    bandwidth_mib_s: int
    budget_s: float
    tools: tuple[Tool, ...]
    wss_divisor: int = 4

    def __post_init__(self) -> None:
        """Validate; messages name the option and the bad value."""
        problems: list[str] = []
        if not self.ram_mib or any(r < 256 for r in self.ram_mib):
            problems.append(f"--ram-mib needs sizes of at least 256 MiB, got {self.ram_mib}")
        if not self.fractions or any(not 0 <= f <= 10 for f in self.fractions):
            problems.append(f"--fractions must lie in 0..10, got {self.fractions}")
        if self.reps < 1:
            problems.append(f"--reps must be at least 1, got {self.reps}")
        if self.bandwidth_mib_s < 1:
            problems.append(f"--bandwidth must be at least 1 MiB/s, got {self.bandwidth_mib_s}")
        if self.budget_s < 5:
            problems.append(f"--budget-s must be at least 5 s, got {self.budget_s:g}")
        if not self.tools or len(set(self.tools)) != len(self.tools):
            problems.append(f"--tools needs distinct tools, got {[str(t) for t in self.tools]}")
        if problems:
            msg = "; ".join(problems) + "."
            raise UsageError(msg, hint="See 'vmotion bench --help'; --quick runs a small preset.")

    def cells(self) -> tuple[Cell, ...]:
        """The matrix cells in run order: RAM size outer, fraction inner."""
        return tuple(Cell(ram_mib=r, fraction=f) for r in self.ram_mib for f in self.fractions)

    def wss_mib(self, ram_mib: int) -> int:
        """The workload's working set for a guest of ``ram_mib``."""
        return max(16, ram_mib // self.wss_divisor)

    def total_runs(self) -> int:
        """How many measured migrations the whole matrix holds."""
        return len(self.cells()) * self.reps * len(self.tools)

    def to_argv(self) -> list[str]:
        """These parameters as ``vmotion bench`` options (to re-run them elsewhere)."""
        return [
            "--ram-mib", ",".join(str(r) for r in self.ram_mib),
            "--fractions", ",".join(f"{f:g}" for f in self.fractions),
            "--reps", str(self.reps),
            "--bandwidth", str(self.bandwidth_mib_s),
            "--budget-s", f"{self.budget_s:g}",
            "--tools", ",".join(str(t) for t in self.tools),
        ]  # fmt: skip

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "ram_mib": list(self.ram_mib),
            "fractions": list(self.fractions),
            "reps": self.reps,
            "bandwidth_mib_s": self.bandwidth_mib_s,
            "budget_s": self.budget_s,
            "tools": [str(t) for t in self.tools],
            "wss_mib": {str(r): self.wss_mib(r) for r in self.ram_mib},
            "workload_rate_mib_s": {
                f"{f:g}": workload_rate_mib_s(f, self.bandwidth_mib_s) for f in self.fractions
            },
        }


QUICK: Final = BenchParams(
    ram_mib=(512,),
    fractions=(0.0, 1.0),
    reps=1,
    bandwidth_mib_s=30,
    budget_s=20.0,
    tools=(Tool.OURS, Tool.VIRSH),
)
"""A smoke test of a few minutes: one idle and one saturating cell, ours vs plain virsh.
The budget is 3x the physical limit of the idle 512 MiB guest (~200 MiB touched / 30
MiB/s): enough for the idle cell, short enough that a saturated run ends quickly."""

FULL: Final = BenchParams(
    ram_mib=(512, 1024),
    fractions=(0.0, 0.25, 0.5, 1.0, 1.5),
    reps=3,
    bandwidth_mib_s=50,
    budget_s=90.0,
    tools=(Tool.OURS, Tool.VIRSH, Tool.AUTO_CONVERGE, Tool.POSTCOPY),
)
"""The matrix of issue 6, run by hand when the machine is quiet."""


def parse_int_list(text: str, *, option: str) -> tuple[int, ...]:
    """Parse ``"512,1024"``.

    Raises:
        UsageError: not a comma-separated list of whole numbers.

    """
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        msg = f"{option} expects whole numbers separated by commas, got {text!r}."
        raise UsageError(msg, hint=f"e.g. {option} 512,1024") from None
    if not values:
        msg = f"{option} is empty."
        raise UsageError(msg, hint=f"e.g. {option} 512,1024")
    return values


def parse_float_list(text: str, *, option: str) -> tuple[float, ...]:
    """Parse ``"0,0.25,1.5"``.

    Raises:
        UsageError: not a comma-separated list of finite numbers.

    """
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        values = ()
    if not values or not all(math.isfinite(v) for v in values):
        msg = f"{option} expects numbers separated by commas, got {text!r}."
        raise UsageError(msg, hint=f"e.g. {option} 0,0.5,1.5")
    return values


def parse_tools(text: str) -> tuple[Tool, ...]:
    """Parse ``"ours,virsh"``.

    Raises:
        UsageError: an unknown tool name.

    """
    names = [part.strip() for part in text.split(",") if part.strip()]
    known = {str(t) for t in Tool}
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        msg = f"--tools: unknown tool(s) {unknown or [text]}."
        raise UsageError(msg, hint=f"Choose from: {', '.join(str(t) for t in Tool)}.")
    return tuple(Tool(n) for n in names)


def workload_rate_mib_s(fraction: float, bandwidth_mib_s: int) -> int:
    """The guest workload's rewrite rate for a dirty-rate fraction of the bandwidth cap.

    The workload reads rate 0 as "as fast as it can", so fraction 0 becomes
    1 MiB/s: the working set stays verified but is barely rewritten.

    >>> workload_rate_mib_s(0.0, 50), workload_rate_mib_s(0.25, 50), workload_rate_mib_s(1.5, 50)
    (1, 12, 75)
    """
    return max(1, math.floor(fraction * bandwidth_mib_s))


@dataclass(frozen=True, slots=True)
class Cell:
    """One point of the matrix: guest RAM and dirty-rate fraction."""

    ram_mib: int
    fraction: float

    @property
    def label(self) -> str:
        """Short name, e.g. ``512MiB@0.5``."""
        return f"{self.ram_mib}MiB@{self.fraction:g}"


@dataclass(frozen=True, slots=True)
class RoundPoint:
    """Remaining memory at one sample of a live migration job."""

    t_s: float
    """Seconds since the first sample."""
    iteration: int
    remaining_bytes: int


@dataclass(frozen=True, slots=True)
class RunResult:
    """Figures of one measured migration.

    Times are what the user waits: the tool's command from start to exit.
    ``None`` means the figure is unavailable for this tool or outcome (e.g.
    libvirt keeps no completed statistics after post-copy).
    """

    tool: Tool
    cell: Cell
    rep: int
    converged: bool
    total_time_s: float
    qemu_elapsed_ms: int | None
    downtime_ms: int | None
    longest_gap_ms: float | None
    bytes_transferred: int | None
    rounds: int | None
    mismatches: int
    ram_touched_bytes: int | None
    bandwidth_mib_s: int
    workload_rate_mib_s: int
    achieved_dirty_mib_s: float | None = None
    stream_longest_gap_ms: float | None = None
    tcp_reset: bool | None = None
    error: str | None = None
    strategy: str | None = None
    """How it converged: ours reports it (pre-copy, throttle, post-copy ...); for
    virsh it is what the flags ask for."""
    series: tuple[RoundPoint, ...] = field(default=(), repr=False)
    tool_report: Mapping[str, object] = field(default_factory=dict, repr=False)
    """The tool's own figures: our JSON report, or virsh's completed job statistics."""

    @property
    def migration_s(self) -> float:
        """The migration itself: ours without its pre-flight (from our report), virsh its run.

        ``total_time_s`` is what the user waits; ours spends part of it on pre-flight
        checks, the forecast and the reservation before any memory moves.
        """
        inner = self.tool_report.get("total_time_s") if self.tool.is_ours else None
        if isinstance(inner, int | float) and not isinstance(inner, bool) and inner > 0:
            return min(float(inner), self.total_time_s)
        return self.total_time_s

    @property
    def preflight_s(self) -> float | None:
        """Ours: pre-flight, forecast and reservation before the transfer; None for virsh.

        From our report's ``preflight_s``; reports without it (older versions) give
        the whole of ``total_time_s - migration_s``, which also holds process start-up,
        connections and the observers' last reads.
        """
        if not self.tool.is_ours:
            return None
        reported = self.tool_report.get("preflight_s")
        if isinstance(reported, int | float) and not isinstance(reported, bool):
            return float(reported)
        if self.migration_s == self.total_time_s:
            return None
        return self.total_time_s - self.migration_s

    @property
    def physical_limit_s(self) -> float | None:
        """RAM touched / bandwidth: the shortest any migration of this guest can take."""
        return physical_limit_s(self.ram_touched_bytes, self.bandwidth_mib_s)

    @property
    def limit_ratio(self) -> float | None:
        """Total time over the physical limit (1.0 would be perfect), converged runs only."""
        limit = self.physical_limit_s
        if not self.converged or limit is None or limit <= 0:
            return None
        return self.total_time_s / limit

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form, figures rounded to what they can tell."""
        return {
            "tool": str(self.tool),
            "ram_mib": self.cell.ram_mib,
            "fraction": self.cell.fraction,
            "rep": self.rep,
            "converged": self.converged,
            "total_time_s": round(self.total_time_s, 3),
            "migration_s": round(self.migration_s, 3),
            "preflight_s": _round(self.preflight_s, 3),
            "qemu_elapsed_ms": self.qemu_elapsed_ms,
            "downtime_ms": self.downtime_ms,
            "longest_gap_ms": _round(self.longest_gap_ms, 1),
            "bytes_transferred": self.bytes_transferred,
            "rounds": self.rounds,
            "mismatches": self.mismatches,
            "ram_touched_bytes": self.ram_touched_bytes,
            "bandwidth_mib_s": self.bandwidth_mib_s,
            "workload_rate_mib_s": self.workload_rate_mib_s,
            "achieved_dirty_mib_s": _round(self.achieved_dirty_mib_s, 1),
            "stream_longest_gap_ms": _round(self.stream_longest_gap_ms, 1),
            "tcp_reset": self.tcp_reset,
            "physical_limit_s": _round(self.physical_limit_s, 3),
            "limit_ratio": _round(self.limit_ratio, 2),
            "error": self.error,
            "strategy": self.strategy,
            "tool_report": dict(self.tool_report),
            "series": [[round(p.t_s, 2), p.iteration, p.remaining_bytes] for p in self.series],
        }


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def physical_limit_s(ram_touched_bytes: int | None, bandwidth_mib_s: int) -> float | None:
    """Seconds to send ``ram_touched_bytes`` once at ``bandwidth_mib_s``.

    >>> physical_limit_s(150 * MIB, 50)
    3.0
    """
    if ram_touched_bytes is None or bandwidth_mib_s <= 0:
        return None
    return ram_touched_bytes / MIB / bandwidth_mib_s


def ram_touched_bytes(stats: Mapping[str, object]) -> int | None:
    """Guest RAM holding data, from a completed job: total minus zero ("constant") pages.

    QEMU sends a zero page as a flag, not as 4 KiB, so what a migration must
    carry at least once is the non-zero memory.

    >>> ram_touched_bytes({"memory_total": 1000 * 4096, "memory_constant": 600,
    ...                    "memory_page_size": 4096}) // 4096
    400
    """
    total = stats.get("memory_total")
    constant = stats.get("memory_constant")
    page = stats.get("memory_page_size", 4096)
    if not isinstance(total, int) or not isinstance(constant, int) or not isinstance(page, int):
        return None
    if total <= 0:
        return None
    return max(0, total - constant * page)


_RAW_LINE: Final = re.compile(r"^\s*([A-Za-z_][\w ]*?)\s*:\s*(\S+)\s*$")


def parse_rawstats(text: str) -> dict[str, int | float | str]:
    r"""Parse ``virsh domjobinfo --rawstats`` output into libvirt's typed-parameter names.

    The first line (``Job type: 3``) becomes ``type``; values are ints where
    they parse as ints, floats where floats, else strings.

    >>> parse_rawstats("Job type: 3\n\ntime_elapsed: 2177\ndowntime: 211\n")
    {'type': 3, 'time_elapsed': 2177, 'downtime': 211}
    """
    stats: dict[str, int | float | str] = {}
    for line in text.splitlines():
        match = _RAW_LINE.match(line)
        if match is None:
            continue
        key, raw = match.group(1), match.group(2)
        key = "type" if key == "Job type" else key
        if " " in key:
            continue
        value: int | float | str
        try:
            value = int(raw)
        except ValueError:
            try:
                value = float(raw)
            except ValueError:
                value = raw
        stats[key] = value
    return stats


def remaining_per_round(series: Sequence[RoundPoint]) -> list[tuple[int, int]]:
    """Remaining memory at the start of each round: ``[(iteration, bytes), ...]``.

    Samples of iteration 0 (set-up) are skipped; within a round the largest
    remaining figure is its start (QEMU counts down as it sends).

    >>> remaining_per_round([RoundPoint(0, 1, 500), RoundPoint(1, 1, 300),
    ...                      RoundPoint(2, 2, 90), RoundPoint(3, 2, 40)])
    [(1, 500), (2, 90)]
    """
    per_round: dict[int, int] = {}
    for point in series:
        if point.iteration <= 0:
            continue
        per_round[point.iteration] = max(per_round.get(point.iteration, 0), point.remaining_bytes)
    return sorted(per_round.items())


# ---- folding runs -----------------------------------------------------------------

METRICS: Final = (
    "total_time_s",
    "migration_s",
    "preflight_s",
    "qemu_elapsed_ms",
    "downtime_ms",
    "longest_gap_ms",
    "bytes_transferred",
    "rounds",
)
"""Per-run figures summarized per cell; for all of them smaller is better."""
SWITCHOVER_METRICS: Final = frozenset({"downtime_ms", "longest_gap_ms"})
"""Figures of the switchover: only converged runs have one (an aborted run's guest never
moved, so its ping gap says nothing about the tool)."""


@dataclass(frozen=True, slots=True)
class CellSummary:
    """Median and worst of one tool in one cell."""

    cell: Cell
    tool: Tool
    runs: int
    converged: int
    mismatches: int
    median: Mapping[str, float | None]
    worst: Mapping[str, float | None]
    median_limit_ratio: float | None
    strategies: tuple[str, ...] = ()
    median_dirty_mib_s: float | None = None
    """What the guest workload achieved before the runs (the fraction is nominal)."""


def metric(run: RunResult, name: str) -> float | None:
    """One of ``METRICS`` of a run as a float, or None when unavailable."""
    value = getattr(run, name)
    return None if value is None else float(value)


def summarize(runs: Iterable[RunResult]) -> list[CellSummary]:
    """Fold runs into one summary per (cell, tool), in first-seen order.

    Total time, bytes and rounds of runs that did not converge still count (the
    user waited and the link carried them); downtime and gap count converged runs
    only. The worst of every metric is its largest value.
    """
    groups: dict[tuple[Cell, Tool], list[RunResult]] = {}
    for run in runs:
        groups.setdefault((run.cell, run.tool), []).append(run)
    summaries = []
    for (cell, tool), group in groups.items():
        median: dict[str, float | None] = {}
        worst: dict[str, float | None] = {}
        for name in METRICS:
            counted = [r for r in group if r.converged or name not in SWITCHOVER_METRICS]
            values = [v for v in (metric(r, name) for r in counted) if v is not None]
            median[name] = statistics.median(values) if values else None
            worst[name] = max(values) if values else None
        ratios = [r.limit_ratio for r in group if r.limit_ratio is not None]
        summaries.append(
            CellSummary(
                cell=cell,
                tool=tool,
                runs=len(group),
                converged=sum(r.converged for r in group),
                mismatches=sum(r.mismatches for r in group),
                median=median,
                worst=worst,
                median_limit_ratio=statistics.median(ratios) if ratios else None,
                strategies=tuple(sorted({r.strategy for r in group if r.strategy})),
                median_dirty_mib_s=_median(
                    [r.achieved_dirty_mib_s for r in group if r.achieved_dirty_mib_s is not None]
                ),
            )
        )
    return summaries


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def ratio(ours: float | None, theirs: float | None) -> float | None:
    """``ours / theirs`` (below 1: we are better), or None when either is missing or 0.

    >>> ratio(2.0, 8.0), ratio(1.0, 0.0), ratio(None, 3.0)
    (0.25, None, None)
    """
    if ours is None or theirs is None or theirs == 0:
        return None
    return ours / theirs


def failed_runs(runs: Iterable[RunResult]) -> list[RunResult]:
    """Runs in which the guest lost pages (mismatches): each is a failure of that tool."""
    return [r for r in runs if r.mismatches != 0]


def eta_s(*, done_runs: int, total_runs: int, elapsed_s: float, first_guess_s: float) -> float:
    """Seconds left, from the average run so far (``first_guess_s`` before any run).

    >>> eta_s(done_runs=2, total_runs=6, elapsed_s=60.0, first_guess_s=20.0)
    120.0
    >>> eta_s(done_runs=0, total_runs=3, elapsed_s=5.0, first_guess_s=20.0)
    60.0
    """
    left = max(0, total_runs - done_runs)
    per_run = elapsed_s / done_runs if done_runs else first_guess_s
    return left * per_run


def first_guess_run_s(params: BenchParams) -> float:
    """A run's duration before any was measured: half the budget plus reset and settling."""
    return params.budget_s / 2 + 15.0


def representative(runs: Sequence[RunResult], tool: Tool) -> RunResult | None:
    """The run to plot for ``tool``: in its hardest cell with samples, the median-time run."""
    candidates = [r for r in runs if r.tool is tool and r.series]
    if not candidates:
        return None
    hardest = max((r.cell for r in candidates), key=lambda c: (c.fraction, c.ram_mib))
    in_cell = sorted((r for r in candidates if r.cell == hardest), key=lambda r: r.total_time_s)
    return in_cell[(len(in_cell) - 1) // 2]


def format_duration(seconds: float) -> str:
    """``h:mm:ss`` or ``m:ss``.

    >>> format_duration(75.4), format_duration(3725)
    ('1:15', '1:02:05')
    """
    total = round(max(0.0, seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def run_from_dict(doc: Mapping[str, object]) -> RunResult:
    """A run back from its ``as_dict`` form (to re-render a results folder).

    Raises:
        UsageError: a field is missing or of the wrong type.

    """
    try:
        series = doc.get("series") or []
        report = doc.get("tool_report") or {}
        return RunResult(
            tool=Tool(str(doc["tool"])),
            cell=Cell(ram_mib=int(doc["ram_mib"]), fraction=float(doc["fraction"])),  # type: ignore[call-overload, arg-type]
            rep=int(doc["rep"]),  # type: ignore[call-overload]
            converged=bool(doc["converged"]),
            total_time_s=float(doc["total_time_s"]),  # type: ignore[arg-type]
            qemu_elapsed_ms=_opt(doc, "qemu_elapsed_ms", int),
            downtime_ms=_opt(doc, "downtime_ms", int),
            longest_gap_ms=_opt(doc, "longest_gap_ms", float),
            bytes_transferred=_opt(doc, "bytes_transferred", int),
            rounds=_opt(doc, "rounds", int),
            mismatches=int(doc["mismatches"]),  # type: ignore[call-overload]
            ram_touched_bytes=_opt(doc, "ram_touched_bytes", int),
            bandwidth_mib_s=int(doc["bandwidth_mib_s"]),  # type: ignore[call-overload]
            workload_rate_mib_s=int(doc["workload_rate_mib_s"]),  # type: ignore[call-overload]
            achieved_dirty_mib_s=_opt(doc, "achieved_dirty_mib_s", float),
            stream_longest_gap_ms=_opt(doc, "stream_longest_gap_ms", float),
            tcp_reset=_opt(doc, "tcp_reset", bool),
            error=_opt(doc, "error", str),
            strategy=_opt(doc, "strategy", str),
            series=tuple(RoundPoint(float(t), int(i), int(b)) for t, i, b in series),  # type: ignore[attr-defined]
            tool_report=report if isinstance(report, Mapping) else {},
        )
    except (KeyError, TypeError, ValueError) as exc:
        msg = f"a run in the results document is malformed: {exc!r}"
        raise UsageError(msg, hint="Re-render only folders written by 'vmotion bench'.") from exc


def _opt(doc: Mapping[str, object], key: str, kind: Callable[[Any], _T]) -> _T | None:
    value = doc.get(key)
    return None if value is None else kind(value)


def params_from_dict(doc: Mapping[str, object]) -> BenchParams:
    """The parameters back from ``BenchParams.as_dict`` (to re-render a results folder).

    Raises:
        UsageError: a field is missing or invalid.

    """
    try:
        return BenchParams(
            ram_mib=tuple(int(r) for r in doc["ram_mib"]),  # type: ignore[attr-defined]
            fractions=tuple(float(f) for f in doc["fractions"]),  # type: ignore[attr-defined]
            reps=int(doc["reps"]),  # type: ignore[call-overload]
            bandwidth_mib_s=int(doc["bandwidth_mib_s"]),  # type: ignore[call-overload]
            budget_s=float(doc["budget_s"]),  # type: ignore[arg-type]
            tools=tuple(Tool(str(t)) for t in doc["tools"]),  # type: ignore[attr-defined]
        )
    except (KeyError, TypeError, ValueError) as exc:
        msg = f"the results document's parameters are malformed: {exc!r}"
        raise UsageError(msg, hint="Re-render only folders written by 'vmotion bench'.") from exc
