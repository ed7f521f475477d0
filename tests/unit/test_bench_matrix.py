"""The benchmark's pure parts: parameters, cells, figures, folding, ratios, ETA."""

from __future__ import annotations

import argparse
import dataclasses
import doctest

import pytest

from libvirt_vmotion.bench import matrix
from libvirt_vmotion.bench.matrix import (
    FULL,
    MIB,
    QUICK,
    BenchParams,
    Cell,
    RoundPoint,
    RunResult,
    Tool,
    eta_s,
    failed_runs,
    parse_rawstats,
    physical_limit_s,
    ram_touched_bytes,
    ratio,
    remaining_per_round,
    representative,
    summarize,
    workload_rate_mib_s,
)
from libvirt_vmotion.bench.options import add_bench_parser, params_from_args
from libvirt_vmotion.errors import UsageError

RAWSTATS = """Job type: 3

operation: 4
time_elapsed: 2177
downtime: 211
data_processed: 222338961
memory_total: 537665536
memory_constant: 77791
memory_iteration: 3
memory_page_size: 4096
"""


def make_run(
    *,
    tool: Tool = Tool.OURS,
    ram_mib: int = 512,
    fraction: float = 0.5,
    rep: int = 1,
    converged: bool = True,
    total_time_s: float = 10.0,
    downtime_ms: int | None = 50,
    gap_ms: float | None = 120.0,
    mismatches: int = 0,
    touched_mib: int | None = 150,
    bandwidth_mib_s: int = 50,
    series: tuple[RoundPoint, ...] = (),
) -> RunResult:
    return RunResult(
        tool=tool,
        cell=Cell(ram_mib=ram_mib, fraction=fraction),
        rep=rep,
        converged=converged,
        total_time_s=total_time_s,
        qemu_elapsed_ms=int(total_time_s * 900),
        downtime_ms=downtime_ms,
        longest_gap_ms=gap_ms,
        bytes_transferred=200 * MIB,
        rounds=3,
        mismatches=mismatches,
        ram_touched_bytes=None if touched_mib is None else touched_mib * MIB,
        bandwidth_mib_s=bandwidth_mib_s,
        workload_rate_mib_s=25,
        series=series,
    )


def test_doctests_hold() -> None:
    assert doctest.testmod(matrix).failed == 0


def test_presets_are_valid_and_quick_is_small() -> None:
    assert QUICK.total_runs() == 4
    assert FULL.total_runs() == 2 * 5 * 3 * 4
    assert FULL.tools[0] is Tool.OURS
    assert QUICK.budget_s < FULL.budget_s


def test_cells_run_ram_outer_fraction_inner() -> None:
    params = dataclasses.replace(FULL, ram_mib=(512, 1024), fractions=(0.0, 1.5))
    assert [c.label for c in params.cells()] == [
        "512MiB@0",
        "512MiB@1.5",
        "1024MiB@0",
        "1024MiB@1.5",
    ]


@pytest.mark.parametrize(
    ("fraction", "bandwidth", "rate"),
    [(0.0, 30, 1), (0.25, 50, 12), (0.5, 50, 25), (1.0, 30, 30), (1.5, 50, 75), (0.01, 30, 1)],
)
def test_workload_rate_is_a_fraction_of_bandwidth_never_zero(
    fraction: float, bandwidth: int, rate: int
) -> None:
    # 0 would mean "as fast as it can" to the guest workload.
    assert workload_rate_mib_s(fraction, bandwidth) == rate


@pytest.mark.parametrize(
    ("change", "word"),
    [
        ({"ram_mib": (128,)}, "--ram-mib"),
        ({"ram_mib": ()}, "--ram-mib"),
        ({"fractions": (-0.5,)}, "--fractions"),
        ({"reps": 0}, "--reps"),
        ({"bandwidth_mib_s": 0}, "--bandwidth"),
        ({"budget_s": 1.0}, "--budget-s"),
        ({"tools": (Tool.OURS, Tool.OURS)}, "--tools"),
    ],
)
def test_bad_parameters_name_the_option(change: dict[str, object], word: str) -> None:
    with pytest.raises(UsageError, match=word) as info:
        dataclasses.replace(QUICK, **change)  # type: ignore[arg-type]
    assert info.value.hint


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_bench_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["bench", *argv])


def test_options_override_the_preset() -> None:
    params = params_from_args(
        _args("--quick", "--reps", "2", "--fractions", "0.5", "--tools", "virsh-postcopy")
    )
    assert params == dataclasses.replace(QUICK, reps=2, fractions=(0.5,), tools=(Tool.POSTCOPY,))
    assert params_from_args(_args()) == FULL


@pytest.mark.parametrize(
    "argv",
    [
        ("--reps", "three"),
        ("--ram-mib", "512,big"),
        ("--ram-mib", ","),
        ("--fractions", "nan"),
        ("--bandwidth", "1.5"),
        ("--budget-s", "soon"),
        ("--tools", "ours,vmware"),
    ],
)
def test_unparsable_options_are_usage_errors(argv: tuple[str, ...]) -> None:
    with pytest.raises(UsageError):
        params_from_args(_args(*argv))


def test_params_round_trip_through_argv() -> None:
    params = dataclasses.replace(FULL, fractions=(0.0, 0.25), budget_s=42.5)
    assert params_from_args(_args(*params.to_argv())) == params


def test_rawstats_parse_and_ram_touched() -> None:
    stats = parse_rawstats(RAWSTATS)
    assert stats["type"] == 3
    assert stats["downtime"] == 211
    assert stats["memory_iteration"] == 3
    touched = ram_touched_bytes(stats)
    assert touched == 537665536 - 77791 * 4096
    assert ram_touched_bytes({}) is None
    assert ram_touched_bytes({"memory_total": 0, "memory_constant": 0}) is None


def test_rawstats_ignores_noise_and_keeps_strings() -> None:
    assert parse_rawstats("\nfoo bar: 3\nstate: x\nrate: 1.5\nno colon\n") == {
        "state": "x",
        "rate": 1.5,
    }


def test_physical_limit_and_ratio() -> None:
    assert physical_limit_s(100 * MIB, 50) == 2.0
    assert physical_limit_s(None, 50) is None
    run = make_run(total_time_s=6.0, touched_mib=100, bandwidth_mib_s=50)
    assert run.physical_limit_s == 2.0
    assert run.limit_ratio == 3.0
    assert make_run(converged=False).limit_ratio is None
    assert make_run(touched_mib=None).limit_ratio is None


def test_summaries_take_median_and_worst_per_cell_and_tool() -> None:
    runs = [
        make_run(rep=1, total_time_s=10.0, downtime_ms=40),
        make_run(rep=2, total_time_s=30.0, downtime_ms=None, gap_ms=300.0),
        make_run(rep=3, total_time_s=20.0, downtime_ms=80, gap_ms=5.0, converged=False),
        make_run(rep=4, total_time_s=25.0, downtime_ms=60),
        make_run(tool=Tool.VIRSH, total_time_s=60.0),
    ]
    ours, virsh = summarize(runs)
    assert (ours.tool, ours.runs, ours.converged) == (Tool.OURS, 4, 3)
    # The aborted run waited: its time counts.
    assert ours.median["total_time_s"] == 22.5
    assert ours.worst["total_time_s"] == 30.0
    # It never switched over: its downtime and gap do not count; missing figures neither.
    assert ours.median["downtime_ms"] == 50.0
    assert ours.worst["downtime_ms"] == 60.0
    assert ours.median["longest_gap_ms"] == 120.0
    assert ours.worst["longest_gap_ms"] == 300.0
    assert ours.median_limit_ratio == pytest.approx(25.0 / 3.0)  # 10, 25 and 30 s over 3 s
    assert virsh.runs == 1


def test_ratios_and_failures() -> None:
    assert ratio(5.0, 10.0) == 0.5
    assert ratio(5.0, None) is None
    runs = [make_run(), make_run(rep=2, mismatches=3)]
    assert failed_runs(runs) == [runs[1]]


def test_remaining_per_round_and_representative_run() -> None:
    series = (
        RoundPoint(0.0, 0, 0),
        RoundPoint(0.2, 1, 500 * MIB),
        RoundPoint(0.4, 1, 200 * MIB),
        RoundPoint(0.6, 2, 60 * MIB),
    )
    assert remaining_per_round(series) == [(1, 500 * MIB), (2, 60 * MIB)]
    runs = [
        make_run(fraction=0.0, series=series),
        make_run(fraction=1.0, rep=1, total_time_s=30.0, series=series),
        make_run(fraction=1.0, rep=2, total_time_s=10.0, series=series),
        make_run(fraction=1.0, rep=3, total_time_s=20.0, series=series),
        make_run(fraction=1.5, series=()),  # no samples: cannot be drawn
    ]
    chosen = representative(runs, Tool.OURS)
    assert chosen is not None
    assert (chosen.cell.fraction, chosen.rep) == (1.0, 3)
    assert representative(runs, Tool.VIRSH) is None


def test_eta_uses_average_run_once_known() -> None:
    assert eta_s(done_runs=0, total_runs=4, elapsed_s=0.0, first_guess_s=30.0) == 120.0
    assert eta_s(done_runs=3, total_runs=4, elapsed_s=90.0, first_guess_s=5.0) == 30.0
    assert eta_s(done_runs=5, total_runs=4, elapsed_s=90.0, first_guess_s=5.0) == 0.0


def test_run_as_dict_is_json_ready() -> None:
    data = make_run(series=(RoundPoint(0.123, 1, 42),)).as_dict()
    assert data["tool"] == "ours"
    assert data["series"] == [[0.12, 1, 42]]
    assert data["limit_ratio"] == pytest.approx(3.33, abs=0.01)
    assert isinstance(BenchParams.as_dict(QUICK)["workload_rate_mib_s"], dict)
