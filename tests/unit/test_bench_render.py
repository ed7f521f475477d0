"""The benchmark's results document and Markdown summary."""

from __future__ import annotations

import dataclasses
import json

import pytest

from libvirt_vmotion.bench.matrix import (
    MIB,
    QUICK,
    Cell,
    RoundPoint,
    RunResult,
    Tool,
    params_from_dict,
    run_from_dict,
)
from libvirt_vmotion.bench.render import BenchRecord, build_results_doc, build_summary_md
from libvirt_vmotion.errors import UsageError

MACHINE = {"cpus": 2, "qemu": "QEMU emulator version 10.0.2", "loadavg": [1.0, 1.0, 1.0]}


def run(
    tool: Tool, fraction: float, total_s: float, *, mismatches: int = 0, migration_s: float = 0
) -> RunResult:
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
        tool_report={"total_time_s": migration_s} if migration_s else {},
    )


RUNS = [
    run(Tool.OURS, 0.0, 8.0, migration_s=6.0),
    run(Tool.VIRSH, 0.0, 10.0),
    run(Tool.OURS, 1.0, 12.0),
    run(Tool.VIRSH, 1.0, 31.0),
]


def record(**changes: object) -> BenchRecord:
    """The quick matrix's record of ``RUNS``, with ``changes``."""
    base = BenchRecord(
        params=QUICK,
        runs=RUNS,
        machine=MACHINE,
        command="vmotion bench --quick",
        started="2026-11-25T18:00:00Z",
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_results_doc_round_trips_through_json() -> None:
    doc = build_results_doc(
        record(duration_s=123.456, calibration={"512": {"ram_touched_bytes": 150 * MIB}})
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
        record(),
        plots=["total_time_by_fraction.png"],
    )
    assert "FAILURE" not in text
    # ours: 8 s waited, of which 6 s migration and 2 s pre-flight.
    assert "| 512MiB@0 | 29.5 | ours | 1/1 | 8.0 / 8.0 | 6.0 / 6.0 | 2.0 | 7.2 | 40 / 40 |" in text
    # ours / virsh: 8/10 s total, 6/10 s migration, 40/200 ms downtime, same gap.
    assert "| 512MiB@0 | virsh | 1/1 vs 1/1 | 0.80x | 0.60x | 0.20x | 1.00x |" in text
    assert "| 512MiB@1 | virsh | 1/1 vs 0/1 |" in text
    assert "| 512MiB@1 | 29.5 | virsh | 0/1 | 31.0 / 31.0 | 31.0 / 31.0 | n/a |" in text
    assert "![total_time_by_fraction.png](total_time_by_fraction.png)" in text


def test_lost_pages_are_a_loud_failure_at_the_top() -> None:
    text = build_summary_md(record(runs=[*RUNS, run(Tool.VIRSH, 1.0, 9.0, mismatches=7)]))
    banner = text.index("**FAILURE")
    assert banner < text.index("## Per cell")
    assert "virsh 512MiB@1 rep 1: 7" in text


def test_runs_and_parameters_come_back_from_the_results_document() -> None:
    doc = json.loads(json.dumps(build_results_doc(record(duration_s=1.0))))
    assert params_from_dict(doc["parameters"]) == QUICK
    back = [run_from_dict(r) for r in doc["runs"]]
    assert [r.as_dict() for r in back] == doc["runs"]
    assert back[0].migration_s == 6.0
    assert back[0].preflight_s == 2.0
    assert back[1].preflight_s is None
    reported = run_from_dict(
        {**doc["runs"][0], "tool_report": {"total_time_s": 6.0, "preflight_s": 1.2}}
    )
    assert reported.preflight_s == 1.2  # the report's own figure, not the remainder


def test_malformed_results_document_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="malformed"):
        run_from_dict({"tool": "ours"})
    with pytest.raises(UsageError, match="malformed"):
        params_from_dict({"ram_mib": [512]})


def test_the_cost_of_tls_compares_each_encrypted_tool_with_its_twin() -> None:
    tls_runs = [
        run(Tool.OURS, 0.0, 8.0, migration_s=6.0),
        run(Tool.OURS_TLS, 0.0, 10.0, migration_s=9.0),
        run(Tool.VIRSH, 0.0, 10.0),
        run(Tool.VIRSH_TLS, 0.0, 15.0),
    ]
    params = dataclasses.replace(
        QUICK, fractions=(0.0,), tools=(Tool.OURS, Tool.OURS_TLS, Tool.VIRSH, Tool.VIRSH_TLS)
    )
    text = build_summary_md(record(runs=tls_runs, params=params), plots=[])
    assert "## The cost of TLS" in text
    assert "| 512MiB@0 | ours-tls / ours | 1/1 vs 1/1 | 1.25x | 1.50x |" in text
    assert "| 512MiB@0 | virsh-tls / virsh | 1/1 vs 1/1 | 1.50x | 1.50x |" in text
    # Ours is compared with the baseline that encrypts as it does, never across.
    assert "| 512MiB@0 | virsh |" in text
    assert "| 512MiB@0 | virsh-tls (vs ours-tls) |" in text
    assert "| 512MiB@0 | virsh-tls |" not in text


def test_only_our_runs_have_a_pre_flight() -> None:
    assert run(Tool.OURS_TLS, 0.0, 10.0, migration_s=9.0).preflight_s == pytest.approx(1.0)
    assert run(Tool.VIRSH_TLS, 0.0, 10.0).preflight_s is None


def test_the_summary_judges_each_target_with_its_figure() -> None:
    from libvirt_vmotion.bench.matrix import summarize  # noqa: PLC0415
    from libvirt_vmotion.bench.targets import evaluate  # noqa: PLC0415

    fast = dataclasses.replace(
        run(Tool.OURS, 0.0, 8.0, migration_s=6.0),
        tool_report={
            "total_time_s": 6.0,
            "preflight_s": 0.4,
            "timeline_s": {"cutover_and_checks_s": 0.5, "startup_s": 0.1},
            "forecast": {"error_pct": {"total_time_s": -12.0}},
        },
    )
    runs = [fast, RUNS[1], RUNS[2], RUNS[3]]
    judged = {t.name: t for t in evaluate(runs, summarize(runs))}
    light = judged["total <= 1.0x plain virsh at 0-0.5"]
    assert (light.figure, light.met) == ("512MiB@0 0.80x", True)
    assert judged["total <= 1.0x virsh post-copy at 1.0-1.5"].met is None  # no virsh-postcopy
    assert judged["pre-flight+reserve <= 0.5 s (median)"].met is True
    assert judged["cutover+checks <= 0.3 s (median)"].met is False
    assert judged["start-up <= 0.2 s (median)"].figure == "0.10 s"
    assert judged["forecast of total time within +-20% (worst run)"].figure == "12.00 %"
    summary = build_summary_md(record(runs=runs))
    assert "| cutover+checks <= 0.3 s (median) | 0.50 s | NOT met |" in summary
    assert build_results_doc(record(runs=runs))["targets"]
