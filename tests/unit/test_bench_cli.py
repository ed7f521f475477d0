"""``vmotion bench`` refuses bad input before it touches the lab."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from libvirt_vmotion.cli.app import main


@pytest.mark.parametrize(
    "argv",
    [
        ["--reps", "0"],
        ["--ram-mib", "64"],
        ["--fractions", "0,-1"],
        ["--tools", "ours,hyper-v"],
        ["--budget-s", "2"],
        ["--bandwidth", "fast"],
    ],
)
def test_bad_options_exit_2_with_a_hint(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", "--quick", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert "hint: " in err
    assert "Traceback" not in err


def test_a_used_results_folder_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "results.json").write_text("{}")
    assert main(["bench", "--quick", "--out", str(tmp_path)]) == 2
    assert "--out" in capsys.readouterr().err
    assert (tmp_path / "results.json").read_text() == "{}"


def test_render_rewrites_an_existing_results_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from libvirt_vmotion.bench.matrix import QUICK, Cell, RunResult, Tool  # noqa: PLC0415
    from libvirt_vmotion.bench.render import BenchRecord, build_results_doc  # noqa: PLC0415

    run = RunResult(
        tool=Tool.OURS, cell=Cell(512, 0.0), rep=1, converged=True, total_time_s=9.0,
        qemu_elapsed_ms=5000, downtime_ms=30, longest_gap_ms=80.0, bytes_transferred=1 << 28,
        rounds=4, mismatches=0, ram_touched_bytes=1 << 27, bandwidth_mib_s=30,
        workload_rate_mib_s=1, tool_report={"total_time_s": 6.5},
    )  # fmt: skip
    doc = build_results_doc(BenchRecord(
        params=QUICK, runs=[run], machine={"cpus": 2}, command="vmotion bench --quick",
        started="2026-11-25T20:00:00Z", duration_s=60.0, calibration={},
    ))  # fmt: skip
    (tmp_path / "results.json").write_text(json.dumps(doc))
    assert main(["bench", "--render", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path)
    summary = (tmp_path / "summary.md").read_text()
    assert "| 512MiB@0 | n/a | ours | 1/1 | 9.0 / 9.0 | 6.5 / 6.5 | 2.5 |" in summary
    assert json.loads((tmp_path / "results.json").read_text())["runs"][0]["migration_s"] == 6.5


def test_render_of_a_folder_without_results_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", "--render", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "results.json" in err
    assert "hint: " in err
