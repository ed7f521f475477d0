"""``vmotion bench`` refuses bad input before it touches the lab."""

from __future__ import annotations

from pathlib import Path

import pytest

from libvirt_vmotion.cli import main


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
