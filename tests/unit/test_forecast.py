"""The pre-copy forecast: the docstring's worked table, and its invariants."""

from __future__ import annotations

import pytest

from libvirt_vmotion.preflight.forecast import ForecastInputs, Strategy, forecast, relative_error


@pytest.mark.parametrize(
    ("rate", "rounds", "total_s", "downtime_ms", "strategy"),
    [
        (10, 4, 1.16, 60, Strategy.PRECOPY),
        (50, 8, 2.03, 66, Strategy.PRECOPY),
        (90, 14, 7.51, 332, Strategy.PRECOPY),
        (97, 0, None, None, Strategy.THROTTLE),
        (120, 0, None, None, Strategy.POSTCOPY),
    ],
)
def test_worked_table(
    rate: float, rounds: int, total_s: float | None, downtime_ms: float | None, strategy: Strategy
) -> None:
    f = forecast(ForecastInputs(memory_mib=100, dirty_rate_mib_s=rate, bandwidth_mib_s=100))
    assert f.rounds == rounds
    assert f.strategy is strategy
    assert f.converges is (strategy is Strategy.PRECOPY)
    if total_s is None:
        assert f.total_time_s is None
        assert f.expected_downtime_ms is None
    else:
        assert f.total_time_s == pytest.approx(total_s, abs=0.01)
        assert f.expected_downtime_ms == pytest.approx(downtime_ms, abs=1)
    assert f.reason


@pytest.mark.parametrize("rate", [0, 5, 20, 40, 60, 80])
def test_more_bandwidth_never_makes_it_slower_or_longer(rate: float) -> None:
    slow = forecast(ForecastInputs(memory_mib=300, dirty_rate_mib_s=rate, bandwidth_mib_s=100))
    fast = forecast(ForecastInputs(memory_mib=300, dirty_rate_mib_s=rate, bandwidth_mib_s=400))
    assert fast.converges
    assert slow.total_time_s is not None
    assert fast.total_time_s is not None
    assert fast.total_time_s <= slow.total_time_s
    assert fast.rounds <= slow.rounds


def test_idle_guest_needs_one_bulk_round_and_a_tiny_switchover() -> None:
    f = forecast(ForecastInputs(memory_mib=200, dirty_rate_mib_s=0, bandwidth_mib_s=100))
    assert f.rounds == 3
    assert f.data_mib == 200
    assert f.expected_downtime_ms == 50


def test_downtime_never_exceeds_budget_plus_overhead() -> None:
    for rate in range(0, 100, 7):
        f = forecast(
            ForecastInputs(memory_mib=500, dirty_rate_mib_s=rate, bandwidth_mib_s=100,
                           max_downtime_ms=200, switchover_overhead_ms=40)
        )  # fmt: skip
        if f.converges:
            assert f.expected_downtime_ms is not None
            assert f.expected_downtime_ms <= 240 + 1e-9


def test_working_set_caps_each_round() -> None:
    f = forecast(
        ForecastInputs(memory_mib=100, dirty_rate_mib_s=95, bandwidth_mib_s=100, working_set_mib=20)
    )
    assert f.converges
    assert f.rounds == 3


@pytest.mark.parametrize(
    "bad",
    [
        {"bandwidth_mib_s": 0},
        {"memory_mib": -1},
        {"max_downtime_ms": 0},
    ],
)
def test_invalid_inputs_name_the_field(bad: dict[str, float]) -> None:
    args: dict[str, float] = {"memory_mib": 1, "dirty_rate_mib_s": 1, "bandwidth_mib_s": 1}
    args.update(bad)
    with pytest.raises(ValueError, match=next(iter(bad))):
        ForecastInputs(**args)  # type: ignore[arg-type]


def test_to_dict_has_prediction_and_inputs() -> None:
    d = forecast(ForecastInputs(memory_mib=100, dirty_rate_mib_s=10, bandwidth_mib_s=100)).to_dict()
    assert d["rounds"] == 4
    assert d["strategy"] == "pre-copy"
    inputs = d["inputs"]
    assert isinstance(inputs, dict)
    assert inputs["dirty_rate_mib_s"] == 10


def test_relative_error() -> None:
    assert relative_error(110, 100) == pytest.approx(0.1)
    assert relative_error(0, 0) == 0


def test_switchover_is_not_rate_limited() -> None:
    # rho 0.6: no round is let pass; 100, 60, 36, then 21.6 MiB fits 300 ms x 100 MiB/s.
    capped = ForecastInputs(memory_mib=100, dirty_rate_mib_s=60, bandwidth_mib_s=100)
    fast_switch = ForecastInputs(
        memory_mib=100, dirty_rate_mib_s=60, bandwidth_mib_s=100, switchover_bandwidth_mib_s=1000
    )
    assert forecast(capped).expected_downtime_ms == pytest.approx(216 + 50)
    assert forecast(fast_switch).expected_downtime_ms == pytest.approx(21.6 + 50)
    assert forecast(fast_switch).rounds == forecast(capped).rounds == 5


def test_a_fitting_round_waits_while_rounds_shrink_fast_as_the_controller_does() -> None:
    # rho 0.1: round 2 (10 MiB) fits the budget but takes 100 ms at 100 MiB/s, more than
    # the 30 ms tightest rung, and the next round should leave a tenth of it: let it pass.
    capped = forecast(ForecastInputs(memory_mib=100, dirty_rate_mib_s=10, bandwidth_mib_s=100))
    assert capped.rounds == 4
    assert "after 1 fitting round(s) let pass" in capped.reason
    # At 1000 MiB/s the same 10 MiB takes 10 ms, within the tightest rung: no wait.
    fast = forecast(
        ForecastInputs(
            memory_mib=100,
            dirty_rate_mib_s=10,
            bandwidth_mib_s=100,
            switchover_bandwidth_mib_s=1000,
        )
    )
    assert fast.rounds == 3
    assert "let pass" not in fast.reason


def test_guest_ram_resident_bytes_reads_the_mapping_the_size_of_guest_ram() -> None:
    from libvirt_vmotion.reserve.hostops import guest_ram_resident_bytes  # noqa: PLC0415

    smaps = (
        "7f7a17e00000-7f7a37e00000 rw-p 00000000 00:00 0\nSize: 524288 kB\nRss: 157696 kB\n"
        "7f7a38000000-7f7a77fff000 rwxp 00000000 00:00 0\nSize: 1048572 kB\nRss: 12288 kB\n"
    )
    assert guest_ram_resident_bytes(smaps, memory_bytes=512 * 1024 * 1024) == 157696 * 1024
