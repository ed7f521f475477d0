"""The performance targets, judged from one benchmark run: met or not, with the figure.

Pure: folds ``RunResult``s and their ``CellSummary``s into one line per target,
for ``summary.md`` and ``results.json``. A target whose runs are missing from this
run (no virsh post-copy, no busy cell ...) is "not measured", never met.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from libvirt_vmotion.bench.matrix import CellSummary, RunResult, Tool

LIGHT: Final = frozenset({0.0, 0.25, 0.5})
"""Dirty rate / cap where plain pre-copy converges: ours against plain virsh."""
BUSY: Final = frozenset({1.0, 1.5})
"""Where it does not: ours against virsh post-copy."""


@dataclass(frozen=True, slots=True)
class Target:
    """One target: what it asks, the figures this run measured, and whether it is met."""

    name: str
    figure: str
    met: bool | None
    """None: this run did not measure it."""

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {"target": self.name, "figure": self.figure, "met": self.met}


def _report_number(run: RunResult, *path: str) -> float | None:
    node: object = run.tool_report
    for key in path:
        node = node.get(key) if isinstance(node, Mapping) else None
    if isinstance(node, int | float) and not isinstance(node, bool):
        return float(node)
    return None


def _ours(runs: Sequence[RunResult]) -> list[RunResult]:
    return [r for r in runs if r.tool is Tool.OURS]


def _per_cell(
    summaries: Sequence[CellSummary],
    fractions: frozenset[float],
    judge: Callable[[CellSummary, Mapping[Tool, CellSummary]], tuple[str, bool] | None],
) -> tuple[str, bool | None]:
    """Each cell of ``fractions`` judged against its baselines: ``cell figure`` and all met."""
    cells: dict[object, dict[Tool, CellSummary]] = {}
    for s in summaries:
        if s.cell.fraction in fractions:
            cells.setdefault(s.cell, {})[s.tool] = s
    judged = []
    for tools in cells.values():
        ours = tools.get(Tool.OURS)
        verdict = judge(ours, tools) if ours is not None else None
        if verdict is not None:
            judged.append((ours.cell.label if ours else "", *verdict))
    if not judged:
        return "not measured in this run", None
    return ", ".join(f"{label} {text}" for label, text, _ in judged), all(ok for *_, ok in judged)


def _ratio_to(
    baseline: Tool, metric: str = "total_time_s", limit: float = 1.0
) -> Callable[[CellSummary, Mapping[Tool, CellSummary]], tuple[str, bool] | None]:
    def judge(ours: CellSummary, tools: Mapping[Tool, CellSummary]) -> tuple[str, bool] | None:
        theirs = tools.get(baseline)
        mine, base = ours.median.get(metric), theirs.median.get(metric) if theirs else None
        if mine is None or not base:
            return None
        return f"{mine / base:.2f}x", mine / base <= limit

    return judge


def _pause(
    limit_ms: float, *, not_above: Tool | None
) -> Callable[[CellSummary, Mapping[Tool, CellSummary]], tuple[str, bool] | None]:
    def judge(ours: CellSummary, tools: Mapping[Tool, CellSummary]) -> tuple[str, bool] | None:
        mine = ours.median.get("downtime_ms")
        if mine is None:
            return None
        theirs = tools.get(not_above) if not_above else None
        base = theirs.median.get("downtime_ms") if theirs else None
        ok = mine <= limit_ms and (base is None or mine <= base)
        vs = f" (virsh {base:.0f})" if base is not None else ""
        return f"{mine:.0f} ms{vs}", ok

    return judge


def _median_of(
    runs: Sequence[RunResult], read: Callable[[RunResult], float | None]
) -> float | None:
    values = [v for v in map(read, runs) if v is not None]
    return statistics.median(values) if values else None


def _at_most(name: str, value: float | None, limit: float, unit: str) -> Target:
    if value is None:
        return Target(name, "not measured in this run", None)
    return Target(name, f"{value:.2f} {unit}", value <= limit)


def evaluate(runs: Sequence[RunResult], summaries: Sequence[CellSummary]) -> list[Target]:
    """Every target of the performance issue, judged on this run's figures."""
    ours = _ours(runs)
    first = ours[0].preflight_s if ours else None
    errors = [_report_number(r, "forecast", "error_pct", "total_time_s") for r in ours]
    worst_error = max((abs(e) for e in errors if e is not None), default=None)
    cpu = [_report_number(r, "convergence", "controller_cpu_percent") for r in ours]
    idle = [s for s in summaries if s.tool is Tool.OURS and s.cell.fraction == 0]
    idle_ratio = max((s.median_limit_ratio for s in idle if s.median_limit_ratio), default=None)
    return [
        Target("total <= 1.0x plain virsh at 0-0.5",
               *_per_cell(summaries, LIGHT, _ratio_to(Tool.VIRSH))),
        Target("total <= 1.0x virsh post-copy at 1.0-1.5",
               *_per_cell(summaries, BUSY, _ratio_to(Tool.POSTCOPY))),
        _at_most("pre-flight+reserve <= 0.5 s (median)",
                 _median_of(ours, lambda r: r.preflight_s), 0.5, "s"),
        _at_most("pre-flight+reserve <= 1.0 s (first migration of the run)", first, 1.0, "s"),
        _at_most("cutover+checks <= 0.3 s (median)", _median_of(
            ours, lambda r: _report_number(r, "timeline_s", "cutover_and_checks_s")), 0.3, "s"),
        _at_most("start-up <= 0.2 s (median)", _median_of(
            ours, lambda r: _report_number(r, "timeline_s", "startup_s")), 0.2, "s"),
        Target("pause <= 100 ms (median) at 1.0-1.5",
               *_per_cell(summaries, BUSY, _pause(100, not_above=None))),
        Target("longest ping gap <= virsh post-copy's at 1.0-1.5", *_per_cell(
            summaries, BUSY, _ratio_to(Tool.POSTCOPY, "longest_gap_ms"))),
        Target("pause <= 30 ms (median) and <= virsh's at 0-0.5",
               *_per_cell(summaries, LIGHT, _pause(30, not_above=Tool.VIRSH))),
        _at_most("idle total <= 1.3x the physical limit", idle_ratio, 1.3, "x"),
        _at_most("forecast of total time within +-20% (worst run)", worst_error, 20.0, "%"),
        _at_most("controller CPU < 2% of one core (worst run)",
                 max((c for c in cpu if c is not None), default=None), 2.0, "%"),
    ]  # fmt: skip


def render(targets: Sequence[Target]) -> list[str]:
    """The summary's section: one row per target."""
    mark = {True: "met", False: "NOT met", None: "not measured"}
    return [
        "## Targets (issue 14: faster than virsh end to end)",
        "",
        "| target | this run | verdict |",
        "|---|---|---|",
        *(f"| {t.name} | {t.figure} | {mark[t.met]} |" for t in targets),
    ]
