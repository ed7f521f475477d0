"""The benchmark's results document (JSON) and its Markdown summary.

Pure: no I/O, no clock. The runner writes what these functions return.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from libvirt_vmotion.bench import targets
from libvirt_vmotion.bench.matrix import (
    MIB,
    TLS_PAIRS,
    BenchParams,
    CellSummary,
    RunResult,
    Tool,
    failed_runs,
    ratio,
    summarize,
)

RESULTS_VERSION: Final = 1


@dataclass(frozen=True, slots=True)
class BenchRecord:
    """What one benchmark ran and measured: results.json and summary.md are made of it.

    Attributes:
        params: the matrix that was run.
        runs: every measured migration.
        machine: host facts (CPU, memory, kernel, QEMU and libvirt versions, load).
        command: the command line that produced this.
        started: when it started (ISO 8601, UTC).
        duration_s: how long the whole benchmark took.
        calibration: per RAM size, how RAM touched was measured.

    """

    params: BenchParams
    runs: Sequence[RunResult]
    machine: Mapping[str, object]
    command: str
    started: str
    duration_s: float = 0.0
    calibration: Mapping[str, object] = field(default_factory=dict)


def build_results_doc(record: BenchRecord) -> dict[str, object]:
    """Everything the benchmark measured, JSON-ready."""
    params, runs = record.params, record.runs
    command, started, duration_s = record.command, record.started, record.duration_s
    machine, calibration = record.machine, record.calibration
    return {
        "results_version": RESULTS_VERSION,
        "command": command,
        "started": started,
        "duration_s": round(duration_s, 1),
        "machine": dict(machine),
        "parameters": params.as_dict(),
        "calibration": dict(calibration),
        "failures": len(failed_runs(runs)),
        "runs": [r.as_dict() for r in runs],
        "summary": [_summary_dict(s) for s in summarize(runs)],
        "targets": [t.as_dict() for t in targets.evaluate(runs, summarize(runs))],
    }


def _summary_dict(summary: CellSummary) -> dict[str, object]:
    return {
        "ram_mib": summary.cell.ram_mib,
        "fraction": summary.cell.fraction,
        "tool": str(summary.tool),
        "runs": summary.runs,
        "converged": summary.converged,
        "mismatches": summary.mismatches,
        "median": dict(summary.median),
        "worst": dict(summary.worst),
        "median_limit_ratio": summary.median_limit_ratio,
        "strategies": list(summary.strategies),
        "median_dirty_mib_s": summary.median_dirty_mib_s,
    }


def _num(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value / MIB:.0f}"


def _seconds(ms: float | None) -> str:
    return "n/a" if ms is None else f"{ms / 1000:.1f}"


def _pair(summary: CellSummary, name: str, digits: int = 1) -> str:
    return f"{_num(summary.median.get(name), digits)} / {_num(summary.worst.get(name), digits)}"


def _ratio_text(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def build_summary_md(record: BenchRecord, plots: Sequence[str] = ()) -> str:
    """The Markdown summary: medians and worst per cell, ours vs each baseline as ratios."""
    params, runs, machine = record.params, record.runs, record.machine
    command, started = record.command, record.started
    summaries = summarize(runs)
    lines = [
        "# Live migration benchmark",
        "",
        f"Command: `{command}`  ",
        f"Started: {started}  ",
        "Machine: "
        + ", ".join(
            f"{key} {machine[key]}"
            for key in ("cpus", "cpu_model", "memory_gib", "kernel", "qemu", "libvirt", "loadavg")
            if key in machine
        )
        + "  ",
        (
            f"Parameters: bandwidth cap {params.bandwidth_mib_s} MiB/s, "
            f"budget {params.budget_s:g} s per run, {params.reps} rep(s), "
            f"tools {', '.join(str(t) for t in params.tools)}; "
            f"working set RAM/{params.wss_divisor}; dirty rate = fraction x bandwidth cap."
        ),
        "",
    ]
    failed = failed_runs(runs)
    if failed:
        lines += [
            f"**FAILURE: the guest lost pages in {len(failed)} run(s)** "
            + ", ".join(f"{r.tool} {r.cell.label} rep {r.rep}: {r.mismatches}" for r in failed),
            "",
        ]
    lines += [
        "## Per cell (median / worst)",
        "",
        (
            "| cell | dirty MiB/s | tool | converged | total s | migration s | pre-flight s "
            "| QEMU s | downtime ms | longest gap ms | MiB sent | rounds | x limit | strategy |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines.extend(
        f"| {s.cell.label} | {_num(s.median_dirty_mib_s)} | {s.tool} | {s.converged}/{s.runs} "
        f"| {_pair(s, 'total_time_s')} | {_pair(s, 'migration_s')} "
        f"| {_num(s.median.get('preflight_s'))} "
        f"| {_seconds(s.median.get('qemu_elapsed_ms'))} "
        f"| {_pair(s, 'downtime_ms', 0)} | {_pair(s, 'longest_gap_ms', 0)} "
        f"| {_mib(s.median.get('bytes_transferred'))} / {_mib(s.worst.get('bytes_transferred'))} "
        f"| {_pair(s, 'rounds', 0)} | {_num(s.median_limit_ratio, 2)} "
        f"| {', '.join(s.strategies) or 'n/a'} |"
        for s in summaries
    )
    lines += ["", *targets.render(targets.evaluate(runs, summaries))]
    lines += ["", *_ratio_section(summaries, params.tools)]
    tls_cost = _tls_cost_section(summaries)
    if tls_cost:
        lines += ["", *tls_cost]
    lines += [
        "",
        "## How to read this",
        "",
        (
            "- total s: wall time of the tool's command (what the user waits), including aborted "
            "runs (they waited the budget)."
        ),
        (
            "- migration s: ours without its pre-flight (checks, dirty-rate and link "
            "measurement, forecast, reservation: pre-flight s, median, from our report), "
            "process start-up and the observers; for virsh the same as total s."
        ),
        (
            "- QEMU s: the migration job's own elapsed time (median); migration s minus this is "
            "the tool's overhead (start-up, connections, cutover checks)."
        ),
        (
            "- downtime ms: QEMU's downtime from the completed job (n/a after post-copy: libvirt "
            "keeps no completed statistics then); downtime and gap count converged runs only."
        ),
        (
            "- dirty MiB/s: the rate the guest workload achieved just before the runs "
            "(asked: fraction x bandwidth cap)."
        ),
        "- longest gap ms: longest silence of 10 ms pings from the client namespace.",
        (
            "- converged: the guest runs on the destination only, and the migration itself (ours: "
            "its migrate call without pre-flight; virsh: its process) stayed within the budget."
        ),
        (
            "- x limit: median total time / (RAM touched / bandwidth), converged runs only; RAM "
            "touched is guest RAM minus zero pages, measured by an uncapped calibration migration."
        ),
        "- ratios: ours / baseline on medians; below 1.00x we are better.",
    ]
    if plots:
        lines += ["", "## Plots", ""]
        lines.extend(f"![{name}]({name})" for name in plots)
    return "\n".join(lines) + "\n"


def _tls_cost_section(summaries: Sequence[CellSummary]) -> list[str]:
    """Each encrypted tool against its unencrypted twin, same cells (``TLS_PAIRS``)."""
    by_key = {(s.cell, s.tool): s for s in summaries}
    rows = []
    for s in summaries:
        for tls_tool, plain_tool in TLS_PAIRS:
            plain = by_key.get((s.cell, plain_tool))
            if s.tool is not tls_tool or plain is None:
                continue
            cells = [
                _ratio_text(ratio(s.median.get(name), plain.median.get(name)))
                for name in ("total_time_s", "migration_s", "qemu_elapsed_ms", "downtime_ms")
            ]
            rows.append(
                f"| {s.cell.label} | {tls_tool} / {plain_tool} | {s.converged}/{s.runs} vs "
                f"{plain.converged}/{plain.runs} | " + " | ".join(cells) + " |"
            )
    if not rows:
        return []
    return [
        "## The cost of TLS (ratio of medians, encrypted / unencrypted)",
        "",
        "| cell | tools | converged | total time | migration time | QEMU time | downtime |",
        "|---|---|---|---|---|---|---|",
        *rows,
    ]


def _encrypted(tool: Tool) -> bool:
    return tool in {Tool.OURS_TLS, Tool.VIRSH_TLS}


def _ratio_section(summaries: Sequence[CellSummary], tools: Sequence[Tool]) -> list[str]:
    """Ours against each baseline that encrypts as it does (ours-tls against virsh-tls)."""
    if not any(t.is_ours for t in tools) or len(tools) < 2:
        return []
    by_key = {(s.cell, s.tool): s for s in summaries}
    lines = [
        "## Ours vs each baseline (ratio of medians, ours / theirs)",
        "",
        (
            "| cell | baseline | converged ours / theirs | total time | migration time "
            "| downtime | longest gap |"
        ),
        "|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        if not s.tool.is_ours:
            continue
        for tool in tools:
            theirs = by_key.get((s.cell, tool))
            if tool.is_ours or _encrypted(tool) != _encrypted(s.tool) or theirs is None:
                continue
            cells = [
                _ratio_text(ratio(s.median.get(name), theirs.median.get(name)))
                for name in ("total_time_s", "migration_s", "downtime_ms", "longest_gap_ms")
            ]
            lines.append(
                f"| {s.cell.label} | {tool if s.tool is Tool.OURS else f'{tool} (vs {s.tool})'} | "
                f"{s.converged}/{s.runs} vs "
                f"{theirs.converged}/{theirs.runs} | " + " | ".join(cells) + " |"
            )
    return lines
