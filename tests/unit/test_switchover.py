"""The switchover rate: QEMU sends the final round unthrottled, so the real pause is shorter.

The benchmark that motivated it (cap 50 MiB/s, 512 MiB TCG guest dirtying
25 MiB/s): the dirty set sat at ~25 MiB a round, ~490 ms at the capped rate, so
the controller throttled the guest; the real downtime was 58 ms.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from builders import make_sample
from libvirt_vmotion.converge.machine import (
    Abort,
    History,
    Rule,
    SetMaxDowntime,
    StartPostCopy,
    State,
    Throttle,
    build_context,
    plan_switchover,
    qemu_limit_bound_ms,
    replay,
)
from libvirt_vmotion.errors import UsageError
from libvirt_vmotion.events import EventKind, MigrationEvent
from libvirt_vmotion.model import MIB, JobSample, MeasuredContext
from libvirt_vmotion.policy import MigrationPolicy, build_policy, load_policy_toml
from libvirt_vmotion.preflight.forecast import DEFAULT_SWITCHOVER_OVERHEAD_MS
from libvirt_vmotion.preflight.versions import switchover_hint_mib_s

# ---- policy -------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0.0, -5.0, math.nan, math.inf])
def test_bad_switchover_bandwidth_names_the_field(bad: float) -> None:
    with pytest.raises(UsageError, match="switchover_bandwidth_mib_s"):
        MigrationPolicy(switchover_bandwidth_mib_s=bad)


def test_switchover_bandwidth_defaults_to_unknown_and_is_reported() -> None:
    assert MigrationPolicy().switchover_bandwidth_mib_s is None
    assert MigrationPolicy().to_dict()["switchover_bandwidth_mib_s"] is None
    policy = MigrationPolicy(switchover_bandwidth_mib_s=480.5)
    assert policy.to_dict()["switchover_bandwidth_mib_s"] == 480.5


@pytest.mark.parametrize(
    ("override", "learned", "rate"),
    [(None, None, None), (None, 455.7, 455.7), (300.0, 455.7, 300.0), (None, 0.0, None)],
)
def test_the_users_switchover_rate_wins_over_the_learned_one(
    override: float | None, learned: float | None, rate: float | None
) -> None:
    measured = build_context(
        MigrationPolicy(switchover_bandwidth_mib_s=override),
        learned_switchover_mib_s=learned,
        preflight_dirty_mib_s=None,
        forecast_says_postcopy=False,
    )
    assert measured.switchover_mib_s == rate
    assert measured.qemu_knows_switchover_rate is False  # the loop decides, from versions


def test_switchover_bandwidth_loads_from_toml_and_overrides() -> None:
    assert load_policy_toml("switchover-bandwidth = 500\n").switchover_bandwidth_mib_s == 500
    policy = build_policy(overrides={"switchover_bandwidth_mib_s": 312.5})
    assert policy.switchover_bandwidth_mib_s == 312.5
    with pytest.raises(UsageError, match="switchover-bandwidth: expected"):
        load_policy_toml("switchover-bandwidth = 'fast'\n")


# ---- builders -------------------------------------------------------------------


def bench_sample(
    *, now_s: float, iteration: int, remaining_mib: float, bw_mib_s: float
) -> JobSample:
    """A sample of the benchmark guest: dirtying 25 MiB/s, the link always moving bytes."""
    return make_sample(
        now_s=now_s,
        iteration=iteration,
        remaining_mib=remaining_mib,
        bw_mib_s=bw_mib_s,
        dirty_mib_s=25,
        processed_mib=512 + 25 * now_s,
    )


def run(
    samples: list[JobSample],
    policy: MigrationPolicy,
    measured: MeasuredContext,
    events: tuple[MigrationEvent, ...] = (),
) -> tuple[State, History]:
    """Drive step() the way the driver does (``convergence.replay``)."""
    return replay(samples, policy, measured, events, started_s=0.0)


def actions_of(history: History) -> list[object]:
    return [a for d in history.decisions for a in d.actions]


def downtimes_of(history: History) -> list[int]:
    return [a.downtime_ms for a in actions_of(history) if isinstance(a, SetMaxDowntime)]


def throttles_of(history: History) -> list[int]:
    return [a.percent for a in actions_of(history) if isinstance(a, Throttle) and a.percent > 0]


CAP_MIB_S = 50
MEASURED_MIB_S = 50.1  # what QEMU reported under the 50 MiB/s cap
PLATEAU_MIB = (26.0, 25.3, 24.4, 25.1, 24.9, 25.2, 24.8, 25.0, 25.3, 24.9, 25.1, 25.0)


def benchmark_trace(
    rounds: int = len(PLATEAU_MIB), *, bw_mib_s: float = MEASURED_MIB_S
) -> list[JobSample]:
    """The benchmark: a 512 MiB guest dirtying 25 MiB/s under a 50 MiB/s cap.

    After the bulk round the dirty set plateaus at ~25 MiB a round (~0.5 s each).
    """
    out = [bench_sample(now_s=0.5, iteration=1, remaining_mib=500, bw_mib_s=bw_mib_s)]
    out += [
        bench_sample(now_s=10.5 + 0.5 * i, iteration=i + 2, remaining_mib=mib, bw_mib_s=bw_mib_s)
        for i, mib in enumerate(PLATEAU_MIB[:rounds])
    ]
    return out


def benchmark_policy(**kwargs: object) -> MigrationPolicy:
    return build_policy(overrides={"bandwidth_mib_s": CAP_MIB_S, "max_duration_s": 600.0, **kwargs})


BENCHMARK = benchmark_policy()


def rate(
    switchover_mib_s: float | None,
    *,
    told: bool = False,
    postcopy_after_first_pass: bool = False,
) -> MeasuredContext:
    """What was measured: the switchover rate, whether QEMU was told it, the forecast."""
    return MeasuredContext(
        switchover_mib_s=switchover_mib_s,
        qemu_knows_switchover_rate=told,
        postcopy_after_first_pass=postcopy_after_first_pass,
    )


# ---- the plan ---------------------------------------------------------------------


def test_plan_is_the_worked_example() -> None:
    plan = plan_switchover(
        dirty_bytes=int(24.4 * MIB),
        transfer_bytes_s=MEASURED_MIB_S * MIB,
        policy=BENCHMARK,
        measured=rate(500),
    )
    assert plan is not None
    assert (plan.real_pause_ms, plan.qemu_needed_ms, plan.qemu_ceiling_ms) == (99, 488, 4491)
    assert plan.fits_budget
    assert plan.qemu_target_ms == 610  # 488 x 1.25


@pytest.mark.parametrize("switchover_mib_s", [None, 30.0, MEASURED_MIB_S])
def test_no_plan_without_a_faster_switchover_rate(switchover_mib_s: float | None) -> None:
    plan = plan_switchover(
        dirty_bytes=MIB,
        transfer_bytes_s=MEASURED_MIB_S * MIB,
        policy=BENCHMARK,
        measured=rate(switchover_mib_s),
    )
    assert plan is None


@pytest.mark.parametrize(
    ("budget_ms", "bound_ms"), [(100, 2_000), (500, 10_000), (2_000, 10_000), (20_000, 20_000)]
)
def test_qemu_limit_bound_is_the_docstring_table(budget_ms: int, bound_ms: int) -> None:
    assert qemu_limit_bound_ms(build_policy(max_downtime_ms=budget_ms)) == bound_ms


# ---- the benchmark ------------------------------------------------------------------


def test_benchmark_without_switchover_rate_still_throttles() -> None:
    # Today's behaviour, pinned: the capped estimate (~488 ms) fills the 500 ms budget.
    state, history = run(benchmark_trace(5), BENCHMARK, rate(None))
    assert state is State.THROTTLING
    assert downtimes_of(history) == [30, 500]
    assert throttles_of(history) == [40]
    rules = [d.rule for d in history.decisions]
    assert rules[2:] == [Rule.SWITCH_AT_MINIMUM, Rule.STALL_THROTTLE]
    assert history.decisions[2].round == 4
    assert "needs ~488 ms at 50.1 MiB/s" in history.decisions[2].reason  # the capped figure


def test_benchmark_with_switchover_rate_switches_over_without_throttling() -> None:
    # Round 2 (26.0 MiB) fits the budget, but QEMU reads a dirty rate of 25 MiB/s, half
    # the rate it sends at: the next round should halve the pause, so it waits. Round 3
    # (25.3 MiB) did not shrink: switch over there; QEMU takes the 632 ms limit at once.
    completed = (MigrationEvent(EventKind.JOB_COMPLETED, now_s=11.2),)
    samples = [
        *benchmark_trace(2),
        bench_sample(now_s=11.3, iteration=4, remaining_mib=0, bw_mib_s=MEASURED_MIB_S),
    ]
    state, history = run(samples, BENCHMARK, rate(500), completed)
    assert state is State.COMPLETED
    assert downtimes_of(history) == [30, 632]
    assert throttles_of(history) == []
    assert not any(isinstance(a, StartPostCopy | Abort) for a in actions_of(history))
    wait, switch = history.decisions[1], history.decisions[2]
    assert (wait.rule, wait.round, wait.actions) == (Rule.WAIT_FOR_SHRINK, 2, ())
    assert (switch.rule, switch.round) == (Rule.SWITCH_AT_MINIMUM, 3)
    assert switch.actions == (SetMaxDowntime(632),)
    # The report says both figures: the real pause, and what QEMU's threshold needs.
    assert "~101 ms real pause" in switch.reason
    assert "~505 ms at the capped 50.1 MiB/s" in switch.reason


def test_benchmark_plateau_uses_the_real_budget_before_throttling() -> None:
    # Should QEMU not switch over (the replay cannot), a stall first raises its limit to
    # the ceiling (all that still pauses within the budget unthrottled); only a stall
    # there throttles, and QEMU's limits never admit more than the budget allows.
    policy = BENCHMARK
    state, history = run(benchmark_trace(7), policy, rate(500))
    assert downtimes_of(history) == [30, 632, 4491]  # round 2 waits (see above)
    assert history.decisions[3].rule is Rule.STALL_RAISE_DOWNTIME
    assert state is State.THROTTLING
    assert throttles_of(history) == [40]
    assert history.decisions[-1].rule is Rule.STALL_THROTTLE
    for limit_ms in downtimes_of(history)[1:]:
        admitted_mib = limit_ms / 1000 * MEASURED_MIB_S
        assert admitted_mib / 500 * 1000 + DEFAULT_SWITCHOVER_OVERHEAD_MS <= policy.max_downtime_ms


@pytest.mark.parametrize("switchover_mib_s", [30.0, CAP_MIB_S])
def test_switchover_rate_no_faster_than_measured_changes_nothing(switchover_mib_s: float) -> None:
    _, legacy = run(benchmark_trace(), BENCHMARK, rate(None))
    _, slow = run(benchmark_trace(), BENCHMARK, rate(switchover_mib_s))
    assert slow.decisions == legacy.decisions


# ---- bounds and escalation --------------------------------------------------------------


def test_qemu_limit_never_exceeds_the_bound() -> None:
    # An absurd switchover estimate on a slow link: 90 MiB at 10 MiB/s needs 9 s of QEMU's
    # threshold, 120 MiB needs 12 s, over the 10 s bound (500 ms budget), so that one is
    # treated as not fitting and escalates, though its "real" pause would be ~51 ms.
    policy = build_policy(overrides={"bandwidth_mib_s": 10})
    absurd = rate(100_000.0)
    bound_ms = qemu_limit_bound_ms(policy)
    ninety = plan_switchover(
        dirty_bytes=90 * MIB, transfer_bytes_s=10 * MIB, policy=policy, measured=absurd
    )
    assert ninety is not None
    assert ninety.fits_budget
    assert ninety.qemu_target_ms == bound_ms == 10_000  # 9 000 x 1.25, cut to the bound
    samples = [bench_sample(now_s=0.5, iteration=1, remaining_mib=500, bw_mib_s=10)]
    samples += [
        bench_sample(now_s=60 + 12 * i, iteration=i + 2, remaining_mib=120, bw_mib_s=10)
        for i in range(6)
    ]
    state, history = run(samples, policy, absurd)
    assert state is State.THROTTLING
    assert all(d <= bound_ms for d in downtimes_of(history))
    assert "above the 10000 ms we let it plan" in history.decisions[-1].reason


def test_real_pause_over_the_budget_still_escalates() -> None:
    # 64 MiB at 200 MiB/s unthrottled is ~370 ms: over a 100 ms budget whatever QEMU is told.
    policy = build_policy(max_downtime_ms=100, overrides={"bandwidth_mib_s": 30})
    samples = [bench_sample(now_s=0.5, iteration=1, remaining_mib=500, bw_mib_s=30)]
    samples += [
        bench_sample(now_s=17 + 2 * i, iteration=i + 2, remaining_mib=64, bw_mib_s=30)
        for i in range(12)
    ]
    state, history = run(samples, policy, rate(200.0))
    assert state is State.POSTCOPY
    assert throttles_of(history) == [40, 80]
    throttle = next(d for d in history.decisions if d.next_state is State.THROTTLING)
    assert "~370 ms real pause even at 200.0 MiB/s unthrottled, over the 100 ms budget" in (
        throttle.reason
    )
    assert "cannot cover it even unthrottled" in throttle.reason
    # While throttling, QEMU may take what pauses within 100 ms unthrottled: (100 - 50) x 200 / 30.
    assert downtimes_of(history) == [30, 333]


def test_real_pause_over_the_budget_aborts_when_nothing_else_is_allowed() -> None:
    policy = build_policy(
        max_downtime_ms=100,
        overrides={"bandwidth_mib_s": 30, "allow_postcopy": False, "max_throttle_percent": 0},
    )
    samples = [bench_sample(now_s=0.5, iteration=1, remaining_mib=500, bw_mib_s=30)]
    samples += [
        bench_sample(now_s=17 + 2 * i, iteration=i + 2, remaining_mib=64, bw_mib_s=30)
        for i in range(6)
    ]
    state, history = run(samples, policy, rate(200.0))
    assert state is State.ABORTING
    abort = actions_of(history)[-1]
    assert isinstance(abort, Abort)
    assert "cannot meet the 100 ms downtime budget" in abort.reason
    assert "~370 ms real pause at 200.0 MiB/s unthrottled (~2134 ms at 30.0 MiB/s capped)" in (
        abort.reason
    )


# ---- replays of real lab traces ---------------------------------------------------------


TRACES = Path(__file__).parent.parent / "data" / "traces"


def load_trace(name: str) -> list[JobSample]:
    raw = json.loads((TRACES / name).read_text())
    return [JobSample.from_job_stats(r, now_s=float(r["now_s"])) for r in raw]


@pytest.mark.parametrize("name", sorted(p.name for p in TRACES.glob("*.json")))
@pytest.mark.parametrize("switchover_mib_s", [60.0, 500.0, 100_000.0])
@pytest.mark.parametrize("told", [False, True], ids=["qemu-estimates", "qemu-told-rate"])
def test_replay_invariants_with_a_switchover_rate(
    name: str, switchover_mib_s: float, told: bool
) -> None:
    samples = load_trace(name)
    for overrides in (
        {"bandwidth_mib_s": 30},
        {"allow_postcopy": False, "max_throttle_percent": 0},
        {"allow_postcopy": False},
    ):
        policy = build_policy(overrides=overrides)
        _, history = run(samples, policy, rate(switchover_mib_s, told=told))
        downtimes = downtimes_of(history)
        assert downtimes == sorted(downtimes)
        if told:  # QEMU's limit is the real pause less the overhead: never past the budget
            assert all(d <= policy.max_downtime_ms for d in downtimes)
        assert all(0 < d <= qemu_limit_bound_ms(policy) for d in downtimes)
        throttles = throttles_of(history)
        assert throttles == sorted(throttles)
        assert all(p <= policy.max_throttle_percent for p in throttles)
        if not policy.allow_postcopy:
            assert not any(isinstance(a, StartPostCopy) for a in actions_of(history))


# ---- post-copy after the first pass (the forecast said rounds cannot shrink) --------


def test_forecast_postcopy_starts_after_the_first_pass() -> None:
    measured = rate(None, postcopy_after_first_pass=True)
    state, history = run(benchmark_trace(1), BENCHMARK, measured)
    assert state is State.POSTCOPY
    assert any(isinstance(a, StartPostCopy) for a in actions_of(history))
    assert history.decisions[-1].rule is Rule.POSTCOPY_AFTER_FIRST_PASS
    assert history.decisions[-1].round == 2  # not during the bulk pass


def test_forecast_postcopy_waits_when_the_set_fits_the_pause_target() -> None:
    """A known switchover rate pauses for the first dirty set within 100 ms: no post-copy."""
    measured = rate(1000, postcopy_after_first_pass=True)  # 26 MiB: ~26 ms + 50 ms overhead
    _state, history = run(benchmark_trace(1), BENCHMARK, measured)
    assert not any(isinstance(a, StartPostCopy) for a in actions_of(history))
    assert downtimes_of(history)[-1] > 500  # QEMU's threshold admits it: it switches over


def test_forecast_postcopy_rather_than_a_pre_copy_pause_over_the_target() -> None:
    """The set fits the 500 ms budget, but pausing ~102 ms is over the busy-guest target."""
    measured = rate(500, postcopy_after_first_pass=True)  # 26 MiB: ~52 ms + 50 ms overhead
    state, history = run(benchmark_trace(1), BENCHMARK, measured)
    assert state is State.POSTCOPY
    assert history.decisions[-1].rule is Rule.POSTCOPY_AFTER_FIRST_PASS
    assert "would pause the guest ~102 ms" in history.decisions[-1].reason
    # Without the forecast's verdict, the same set switches over in pre-copy.
    _state, plain = run(benchmark_trace(1), BENCHMARK, rate(500))
    assert not any(isinstance(a, StartPostCopy) for a in actions_of(plain))


def test_forecast_postcopy_needs_postcopy_allowed() -> None:
    policy = benchmark_policy(allow_postcopy=False)
    measured = rate(None, postcopy_after_first_pass=True)
    state, history = run(benchmark_trace(5), policy, measured)
    assert state is State.THROTTLING
    assert not any(isinstance(a, StartPostCopy) for a in actions_of(history))


# ---- QEMU told the switchover rate (avail-switchover-bandwidth) ----------------------


def test_plan_when_qemu_knows_the_rate_is_in_real_pause_terms() -> None:
    # The worked example again, QEMU given 500 MiB/s: its limit is the real pause less the
    # overhead (~49 ms for 24.4 MiB), and it may plan at most the budget less the overhead.
    plan = plan_switchover(
        dirty_bytes=int(24.4 * MIB),
        transfer_bytes_s=MEASURED_MIB_S * MIB,
        policy=BENCHMARK,
        measured=rate(500, told=True),
    )
    assert plan is not None
    assert (plan.real_pause_ms, plan.qemu_needed_ms, plan.qemu_ceiling_ms) == (99, 49, 450)
    assert plan.qemu_target_ms == 62  # 49 x 1.25
    assert plan.fits_budget


def test_controller_with_qemu_told_the_rate_never_sets_a_limit_above_the_budget() -> None:
    policy = BENCHMARK
    state, history = run(benchmark_trace(7), policy, rate(500, told=True))
    assert downtimes_of(history) == [30, 64, 450]  # round 3 (25.3 MiB), then the ceiling
    assert all(d <= policy.max_downtime_ms for d in downtimes_of(history))
    assert "QEMU, told that rate, needs a limit of ~51 ms" in history.decisions[2].reason
    assert state is State.THROTTLING  # the replay cannot switch over: a stall at 450 throttles


def test_switchover_hint_needs_a_rate_and_libvirt_11_1_with_qemu_8_2_on_the_source() -> None:
    def hint(rate_mib_s: float | None, libvirt: int | None, qemu: int | None) -> int | None:
        return switchover_hint_mib_s(rate_mib_s, libvirt_version=libvirt, qemu_version=qemu)

    assert hint(455.7, 11_003_000, 10_000_002) == 455
    assert hint(455.7, 11_000_000, 10_000_002) is None
    assert hint(455.7, 11_003_000, 8_001_000) is None
    assert hint(455.7, None, None) is None  # the source did not say
    assert hint(None, 11_003_000, 10_000_002) is None
