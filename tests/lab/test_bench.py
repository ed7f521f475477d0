"""The quick benchmark preset, for real: outputs are well-formed and no run lost pages.

Timings are the benchmark's business, not this test's: it checks shapes and the
guest's page checker only.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from libvirt_vmotion.lab import guestctl

pytestmark = pytest.mark.lab

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def quick_results(
    lab: None, tmp_path: Path
) -> Iterator[tuple[subprocess.CompletedProcess[str], Path]]:
    out = tmp_path / "bench"
    result = subprocess.run(
        [sys.executable, "-m", "libvirt_vmotion", "bench", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        check=False,
        timeout=480,
    )
    print(result.stderr)
    yield result, out
    guestctl.remove_guest()


def test_quick_bench_writes_results_summary_and_plots(
    quick_results: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    result, out = quick_results
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert f"results: {out}" in result.stdout
    # Progress names the cell, the rep and an ETA.
    assert "[1/4] 512MiB@0 rep 1/1 ours: running (ETA" in result.stderr

    doc = json.loads((out / "results.json").read_text())
    assert doc["complete"] is True
    assert doc["failures"] == 0
    assert doc["parameters"]["tools"] == ["ours", "virsh"]
    assert doc["machine"]["cpus"] >= 1
    assert "QEMU" in doc["machine"]["qemu"]
    assert doc["calibration"]["512"]["ram_touched_bytes"] > 16 * 2**20
    runs = doc["runs"]
    assert [(r["tool"], r["fraction"]) for r in runs] == [
        ("ours", 0.0),
        ("virsh", 0.0),
        ("ours", 1.0),
        ("virsh", 1.0),
    ]
    for run in runs:
        assert run["mismatches"] == 0, run
        assert isinstance(run["converged"], bool)
        assert run["total_time_s"] > 0
        assert run["physical_limit_s"] > 0
        assert run["bandwidth_mib_s"] == 30
        assert run["series"], f"no job samples for {run['tool']}"
        if run["converged"]:
            # libvirt keeps no completed job statistics after post-copy.
            if "post-copy" not in (run["strategy"] or ""):
                assert isinstance(run["downtime_ms"], int)
            assert run["longest_gap_ms"] is not None
            assert run["limit_ratio"] > 0
        else:
            assert run["error"]

    summary = (out / "summary.md").read_text()
    assert "| 512MiB@0 |" in summary
    assert "| virsh |" in summary
    assert "FAILURE" not in summary
    for name in doc["plots"]:
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
        assert f"({name})" in summary
    assert {"total_time_by_fraction.png", "downtime_by_fraction.png"} <= set(doc["plots"])
    assert "remaining_per_round.png" in doc["plots"]
