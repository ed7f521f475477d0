"""PNG plots of benchmark results.

I/O: draws with matplotlib (the optional ``bench`` extra: ``pip install
'.[bench]'``) and writes files. Without matplotlib, :func:`write_plots` says
so and returns no files; the JSON and Markdown results do not depend on it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from libvirt_vmotion.bench.matrix import (
    MIB,
    RunResult,
    Tool,
    metric,
    remaining_per_round,
    representative,
    summarize,
)

log = logging.getLogger(__name__)

_BY_FRACTION = (
    ("total_time_s", "total time (s)", "total_time_by_fraction.png"),
    ("downtime_ms", "QEMU downtime (ms)", "downtime_by_fraction.png"),
    ("longest_gap_ms", "client longest ping gap (ms)", "gap_by_fraction.png"),
)


def write_plots(runs: Sequence[RunResult], out_dir: Path) -> list[str]:
    """Draw every plot into ``out_dir``; return the file names written.

    Plots: total time, downtime and client gap per dirty-rate fraction per tool
    (one panel per RAM size; line = median, dots = every run, x = not
    converged), and remaining memory per round (and over time) for a
    representative run of each tool.
    """
    try:
        import matplotlib as mpl  # noqa: PLC0415  optional extra, only when plotting

        mpl.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        log.warning(
            "matplotlib is not installed: no plots (install the extra: pip install '.[bench]')"
        )
        return []
    written = [
        name
        for metric_name, label, name in _BY_FRACTION
        if _plot_by_fraction(plt, runs, metric_name, label, out_dir / name)
    ]
    if _plot_remaining(plt, runs, out_dir / "remaining_per_round.png"):
        written.append("remaining_per_round.png")
    return written


def _tools_in(runs: Sequence[RunResult]) -> list[Tool]:
    return [t for t in Tool if any(r.tool is t for r in runs)]


def _plot_by_fraction(
    plt: Any,  # noqa: ANN401  matplotlib.pyplot ships partial types; kept at this edge
    runs: Sequence[RunResult],
    metric_name: str,
    label: str,
    path: Path,
) -> bool:
    rams = sorted({r.cell.ram_mib for r in runs})
    if not rams:
        return False
    fig, axes = plt.subplots(1, len(rams), figsize=(5.5 * len(rams), 4), squeeze=False)
    summaries = summarize(runs)
    for ax, ram in zip(axes[0], rams, strict=True):
        for tool in _tools_in(runs):
            points = sorted(
                (s.cell.fraction, s.median[metric_name])
                for s in summaries
                if s.tool is tool and s.cell.ram_mib == ram and s.median[metric_name] is not None
            )
            line = None
            if points:
                (line,) = ax.plot(*zip(*points, strict=True), marker="o", label=str(tool))
            color = line.get_color() if line is not None else None
            for run in runs:
                value = metric(run, metric_name)
                if run.tool is not tool or run.cell.ram_mib != ram or value is None:
                    continue
                ax.scatter(
                    run.cell.fraction,
                    value,
                    marker="o" if run.converged else "x",
                    s=14 if run.converged else 40,
                    color=color,
                    alpha=0.6,
                )
        ax.set_title(f"{ram} MiB guest")
        ax.set_xlabel("workload dirty rate / bandwidth cap")
        ax.set_ylabel(label)
        ax.grid(visible=True, alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(f"{label} per dirty rate (line: median; x: not converged)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _plot_remaining(
    plt: Any,  # noqa: ANN401  see _plot_by_fraction
    runs: Sequence[RunResult],
    path: Path,
) -> bool:
    chosen = [(tool, representative(runs, tool)) for tool in _tools_in(runs)]
    chosen_runs = [(tool, run) for tool, run in chosen if run is not None]
    if not chosen_runs:
        return False
    fig, (by_round, by_time) = plt.subplots(1, 2, figsize=(11, 4))
    for tool, run in chosen_runs:
        rounds = remaining_per_round(run.series)
        name = f"{tool} ({run.cell.label}, rep {run.rep}{'' if run.converged else ', aborted'})"
        if rounds:
            xs, ys = zip(*rounds, strict=True)
            by_round.plot(xs, [y / MIB for y in ys], marker="o", label=name)
        by_time.plot(
            [p.t_s for p in run.series],
            [p.remaining_bytes / MIB for p in run.series],
            label=name,
        )
    by_round.set_xlabel("round (QEMU memory iteration)")
    by_round.set_ylabel("remaining at start of round (MiB)")
    by_round.set_yscale("symlog", linthresh=1.0)
    by_time.set_xlabel("seconds since the job started")
    by_time.set_ylabel("remaining (MiB)")
    for ax in (by_round, by_time):
        ax.grid(visible=True, alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle("Remaining memory, representative run of each tool")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
