"""The benchmark's results document and Markdown summary."""

from __future__ import annotations

import json

from libvirt_vmotion.bench.matrix import MIB, QUICK, Cell, RoundPoint, RunResult, Tool
from libvirt_vmotion.bench.render import build_results_doc, build_summary_md

MACHINE = {"cpus": 2, "qemu": "QEMU emulator version 10.0.2", "loadavg": [1.0, 1.0, 1.0]}


def run(tool: Tool, fraction: float, total_s: float, *, mismatches: int = 0) -> RunResult:
    return RunResult(
        tool=tool,
        cell=Cell(ram_mib=512, fraction=fraction),
        rep=1,
        converged=total_s < 30,
        total_time_s=total_s,
        qemu_elapsed_ms=int(total_s * 900),
        downtime_ms=40 if tool is Tool.OURS else 200,
        longest_gap_ms=100.0,
        bytes_transferred=300 * MIB,
        rounds=4,
        mismatches=mismatches,
        ram_touched_bytes=150 * MIB,
        bandwidth_mib_s=30,
        workload_rate_mib_s=30,
        achieved_dirty_mib_s=29.5,
        series=(RoundPoint(0.0, 1, 400 * MIB),),
    )


RUNS = [
    run(Tool.OURS, 0.0, 8.0),
    run(Tool.VIRSH, 0.0, 10.0),
    run(Tool.OURS, 1.0, 12.0),
    run(Tool.VIRSH, 1.0, 31.0),
]


def test_results_doc_round_trips_through_json() -> None:
    doc = build_results_doc(
        params=QUICK,
        runs=RUNS,
        machine=MACHINE,
        command="vmotion bench --quick",
        started="2026-11-25T18:00:00Z",
        duration_s=123.456,
        calibration={"512": {"ram_touched_bytes": 150 * MIB}},
    )
    back = json.loads(json.dumps(doc))
    assert back["failures"] == 0
    assert back["parameters"]["bandwidth_mib_s"] == 30
    assert len(back["runs"]) == 4
    assert {r["tool"] for r in back["runs"]} == {"ours", "virsh"}
    assert len(back["summary"]) == 4
    assert back["duration_s"] == 123.5


def test_summary_shows_cells_ratios_and_no_failure_banner() -> None:
    text = build_summary_md(
        params=QUICK,
        runs=RUNS,
        machine=MACHINE,
        command="vmotion bench --quick",
        started="2026-11-25T18:00:00Z",
        plots=["total_time_by_fraction.png"],
    )
    assert "FAILURE" not in text
    assert "| 512MiB@0 | 29.5 | ours | 1/1 | 8.0 / 8.0 | 7.2 | 40 / 40 |" in text
    # ours / virsh: 8/10 s total, 40/200 ms downtime, same gap.
    assert "| 512MiB@0 | virsh | 1/1 vs 1/1 | 0.80x | 0.20x | 1.00x |" in text
    assert "| 512MiB@1 | virsh | 1/1 vs 0/1 |" in text
    assert "| 512MiB@1 | 29.5 | virsh | 0/1 | 31.0 / 31.0 |" in text
    assert "![total_time_by_fraction.png](total_time_by_fraction.png)" in text


def test_lost_pages_are_a_loud_failure_at_the_top() -> None:
    text = build_summary_md(
        params=QUICK,
        runs=[*RUNS, run(Tool.VIRSH, 1.0, 9.0, mismatches=7)],
        machine=MACHINE,
        command="x",
        started="y",
    )
    banner = text.index("**FAILURE")
    assert banner < text.index("## Per cell")
    assert "virsh 512MiB@1 rep 1: 7" in text
