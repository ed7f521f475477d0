"""The convergence controller: tables, invariants and replays of real lab traces."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from builders import make_sample
from libvirt_vmotion.converge.machine import (
    TERMINAL,
    TRANSITIONS,
    Abort,
    Decision,
    FreeStuckPrepare,
    History,
    PausePostCopy,
    ResumePostCopy,
    Rule,
    SetMaxDowntime,
    StartPostCopy,
    State,
    Throttle,
    downtime_needed_ms,
    is_stalled,
    replay,
    round_dirty_sets,
    step,
)
from libvirt_vmotion.errors import UsageError
from libvirt_vmotion.events import EventKind, MigrationEvent
from libvirt_vmotion.model import MIB, JobSample, MeasuredContext
from libvirt_vmotion.policy import (
    DowntimeStep,
    MigrationPolicy,
    build_policy,
    exponential_downtime,
    load_policy_toml,
    throttle_steps,
)

TRACES = Path(__file__).parent.parent / "data" / "traces"
NOTHING_MEASURED = MeasuredContext()


def run(
    samples: list[JobSample],
    policy: MigrationPolicy,
    events: tuple[MigrationEvent, ...] = (),
    *,
    measured: MeasuredContext = NOTHING_MEASURED,
) -> tuple[State, History]:
    """Drive step() the way the driver does (``convergence.replay``)."""
    started_s = samples[0].now_s if samples else 0.0
    return replay(samples, policy, measured, events, started_s=started_s)


def actions_of(history: History) -> list[object]:
    return [a for d in history.decisions for a in d.actions]


def load_trace(name: str) -> list[JobSample]:
    raw = json.loads((TRACES / name).read_text())
    return [JobSample.from_job_stats(r, now_s=float(r["now_s"])) for r in raw]


# ---- policy -------------------------------------------------------------------


def test_default_ladder_is_the_worked_table() -> None:
    ladder = [s.downtime_ms for s in MigrationPolicy().downtime_schedule]
    assert ladder == [30, 60, 122, 247, 500]


@pytest.mark.parametrize(
    ("initial", "maximum", "steps"), [(30, 500, 5), (10, 10, 3), (1, 2000, 10), (50, 300, 1)]
)
def test_ladder_invariants(initial: int, maximum: int, steps: int) -> None:
    ladder = [s.downtime_ms for s in exponential_downtime(
        initial_ms=initial, max_ms=maximum, steps=steps
    )]  # fmt: skip
    assert ladder == sorted(ladder)
    assert ladder[-1] == maximum
    assert all(v > 0 for v in ladder)
    assert len(ladder) == steps


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_duration_s": 0}, "max_duration_s"),
        ({"stall_rounds": 0}, "stall_rounds"),
        ({"max_throttle_percent": 100}, "max_throttle_percent"),
        ({"downtime_schedule": (DowntimeStep(50), DowntimeStep(20))}, "downtime_schedule"),
        ({"bandwidth_mib_s": -1}, "bandwidth_mib_s"),
    ],
)
def test_bad_policy_names_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(UsageError, match=field):
        MigrationPolicy(**kwargs)  # type: ignore[arg-type]


def test_policy_from_toml_and_flags() -> None:
    policy = load_policy_toml(
        "timeout = 90\npostcopy = false\nmax-throttle = 0\n"
        "initial-downtime = 20\nmax-downtime = 200\ndowntime-steps = 3\n"
    )
    assert policy.max_duration_s == 90.0
    assert not policy.allow_postcopy
    assert not policy.allows_throttle
    assert [s.downtime_ms for s in policy.downtime_schedule] == [20, 63, 200]
    flagged = build_policy(policy, max_downtime_ms=100, overrides={"bandwidth_mib_s": 30})
    assert flagged.max_downtime_ms == 100
    assert flagged.initial_downtime_ms == 20
    assert flagged.bandwidth_mib_s == 30


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("timeout = 'x'", "timeout: expected a number of seconds"),
        ("max-throttle = 150", "max-throttle: expected a whole number from 0 to 99"),
        ("bogus = 1", "bogus"),
        ("[[", "TOML"),
    ],
)
def test_bad_toml_is_a_usage_error(text: str, needle: str) -> None:
    with pytest.raises(UsageError, match=needle):
        load_policy_toml(text)


# ---- predicates -----------------------------------------------------------------


def test_transitions_table_covers_every_state_and_terminals_are_sinks() -> None:
    assert set(TRANSITIONS) == set(State)
    for state in TERMINAL:
        assert TRANSITIONS[state] == {state}
    # Once post-copy started there is no way back to an abort.
    assert State.ABORTING not in TRANSITIONS[State.POSTCOPY]
    assert State.ABORTING not in TRANSITIONS[State.POSTCOPY_PAUSED]


@pytest.mark.parametrize(
    ("dirty_mib", "bw_mib_s", "expected_ms"), [(30, 30, 1000), (1, 100, 10), (0, 30, 1)]
)
def test_downtime_needed(dirty_mib: float, bw_mib_s: float, expected_ms: int) -> None:
    assert downtime_needed_ms(
        dirty_bytes=int(dirty_mib * MIB), bandwidth_bytes_s=bw_mib_s * MIB
    ) == expected_ms  # fmt: skip


def test_throttle_steps() -> None:
    assert throttle_steps(0) == ()
    assert throttle_steps(80) == (40, 80)
    assert throttle_steps(1) == (1,)


def test_round_dirty_set_is_the_largest_remaining_of_the_round() -> None:
    samples = (
        make_sample(now_s=1, iteration=1, remaining_mib=400),
        make_sample(now_s=2, iteration=2, remaining_mib=60),
        make_sample(now_s=3, iteration=2, remaining_mib=20),
        make_sample(now_s=4, iteration=3, remaining_mib=50),
    )
    assert round_dirty_sets(samples) == {2: 60 * MIB, 3: 50 * MIB}


def test_stall_needs_rounds_without_a_new_minimum() -> None:
    policy = MigrationPolicy(stall_rounds=2)
    falling = [make_sample(now_s=i, iteration=i, remaining_mib=100 - 10 * i) for i in range(2, 6)]
    flat = [make_sample(now_s=i, iteration=i, remaining_mib=64) for i in range(2, 6)]
    assert not is_stalled(History(started_s=0, samples=tuple(falling)), policy)
    assert is_stalled(History(started_s=0, samples=tuple(flat)), policy)


# ---- scenarios ------------------------------------------------------------------


def steady(rounds: int, dirty_mib: float, *, round_s: float = 2.0) -> list[JobSample]:
    out = [make_sample(now_s=0.5, iteration=1, remaining_mib=500, processed_mib=12)]
    out += [
        make_sample(
            now_s=1 + i * round_s,
            iteration=i + 2,
            remaining_mib=dirty_mib,
            processed_mib=500 + i * round_s * 30,  # the link keeps moving bytes
        )
        for i in range(rounds)
    ]
    return out


def test_light_load_converges_on_the_tight_downtime_without_escalation() -> None:
    samples = [
        make_sample(now_s=0.5, iteration=1, remaining_mib=400),
        make_sample(now_s=5, iteration=2, remaining_mib=12),
        make_sample(now_s=5.5, iteration=3, remaining_mib=0.6),
        make_sample(now_s=5.6, iteration=3, remaining_mib=0, active=False),
    ]
    events = (MigrationEvent(EventKind.JOB_COMPLETED, now_s=5.6),)
    state, history = run(samples, MigrationPolicy(), events)
    assert state is State.COMPLETED
    downtimes = [a for a in actions_of(history) if isinstance(a, SetMaxDowntime)]
    assert downtimes[0] == SetMaxDowntime(30)
    assert not any(isinstance(a, Throttle) and a.percent > 0 for a in actions_of(history))
    assert not any(isinstance(a, StartPostCopy | Abort) for a in actions_of(history))


def test_new_minimum_that_fits_the_budget_switches_over_there() -> None:
    # 12 MiB at 30 MiB/s needs ~400 ms (500 with the margin): the rounds have stopped
    # shrinking fast (20 -> 12 MiB), so the controller allows the rung covering it now.
    samples = [*steady(1, 20), make_sample(now_s=4, iteration=3, remaining_mib=12)]
    _, history = run(samples, MigrationPolicy())
    last = history.decisions[-1]
    assert last.rule is Rule.SWITCH_AT_MINIMUM
    assert last.actions == (SetMaxDowntime(500),)


def test_rounds_still_shrinking_fast_wait_for_a_shorter_pause() -> None:
    # 20 -> 6 MiB: the next round should leave ~30 % of 6 MiB, in a round shorter than
    # this one; so no switchover at 6 MiB (~200 ms) yet. At 2.5 MiB (~84 ms) the rounds
    # shrink more slowly (42 %)... still waiting; 2.4 MiB stops shrinking: switch there.
    samples = [
        *steady(1, 20),
        make_sample(now_s=4, iteration=3, remaining_mib=6),
        make_sample(now_s=4.1, iteration=3, remaining_mib=5),  # same round: said once
        make_sample(now_s=4.3, iteration=4, remaining_mib=2.5),
        make_sample(now_s=4.4, iteration=5, remaining_mib=2.4),
    ]
    _, history = run(samples, MigrationPolicy())
    waits = [d for d in history.decisions if d.rule is Rule.WAIT_FOR_SHRINK]
    assert [d.round for d in waits] == [3, 4]  # said once per round
    assert all(d.actions == () for d in waits)
    assert "~200 ms to send at 30.0 MiB/s" in waits[0].reason  # the figures it waited on
    assert "the next should leave ~30% of it" in waits[0].reason
    last = history.decisions[-1]
    assert (last.rule, last.round) == (Rule.SWITCH_AT_MINIMUM, 5)
    assert last.actions == (SetMaxDowntime(122),)  # ~80 ms x 1.25 -> the 122 ms rung


def test_a_set_within_the_tightest_rung_does_not_wait() -> None:
    # 0.6 MiB at 30 MiB/s is ~20 ms, inside the 30 ms the ladder starts with: QEMU
    # switches over by itself; nothing to wait for, nothing to raise.
    samples = [*steady(1, 20), make_sample(now_s=4, iteration=3, remaining_mib=0.6)]
    _, history = run(samples, MigrationPolicy())
    assert not any(d.rule is Rule.WAIT_FOR_SHRINK for d in history.decisions)


def test_no_wait_when_the_next_round_would_reach_the_time_budget() -> None:
    # 6 MiB at 30 MiB/s is a 0.2 s round; 3.5 s into a 7.2 s budget, with post-copy due
    # at half of it (3.6 s), there is no time for it: switch over now (~200 ms x 1.25
    # -> the 500 ms rung). With a longer budget the same round waits.
    samples = [*steady(1, 20), make_sample(now_s=4, iteration=3, remaining_mib=6)]
    _, history = run(samples, MigrationPolicy(max_duration_s=7.2))
    assert history.decisions[-1].rule is Rule.SWITCH_AT_MINIMUM
    assert history.decisions[-1].actions == (SetMaxDowntime(500),)
    _, history = run(samples, MigrationPolicy(max_duration_s=7.6))
    assert history.decisions[-1].rule is Rule.WAIT_FOR_SHRINK


def test_a_stall_on_sets_sampled_as_empty_climbs_the_ladder_before_throttling() -> None:
    # CI's trace: rounds shorter than the sampling interval are seen only at their end,
    # as 0 bytes, yet QEMU keeps iterating at 30 ms: the real set exceeds what 30 ms
    # admits. Climb one rung (still pre-copy) rather than throttle a lightly loaded guest.
    samples = [
        *steady(1, 24.4),
        make_sample(now_s=4.0, iteration=3, remaining_mib=4.3),
        make_sample(now_s=4.2, iteration=4, remaining_mib=0),
        make_sample(now_s=4.4, iteration=5, remaining_mib=0.05),
        make_sample(now_s=4.6, iteration=6, remaining_mib=0),
    ]
    _, history = run(samples, MigrationPolicy())
    escalations = [d for d in history.decisions if d.rule.value.startswith("stall-")]
    assert escalations, "a stall must escalate"
    assert escalations[0].rule is Rule.STALL_RAISE_DOWNTIME
    assert escalations[0].actions == (SetMaxDowntime(60),)  # the rung after 30 ms
    assert not any(isinstance(a, Throttle) and a.percent > 0 for a in actions_of(history))


def test_dirty_rate_above_bandwidth_escalates_downtime_throttle_then_postcopy() -> None:
    state, history = run(steady(12, 64), MigrationPolicy(max_duration_s=600))
    assert state is State.POSTCOPY
    kinds = [type(a).__name__ for a in actions_of(history)]
    assert kinds[:6] == [
        "SetMaxDowntime", "Throttle", "SetMaxDowntime", "Throttle", "Throttle", "StartPostCopy"
    ]  # fmt: skip
    assert [a.percent for a in actions_of(history) if isinstance(a, Throttle)] == [0, 40, 80]
    assert all(d.reason for d in history.decisions)


def test_budget_without_throttle_or_postcopy_aborts_naming_the_budget() -> None:
    policy = build_policy(
        max_downtime_ms=100, overrides={"allow_postcopy": False, "max_throttle_percent": 0}
    )
    state, history = run(steady(6, 64), policy)
    assert state is State.ABORTING
    abort = actions_of(history)[-1]
    assert isinstance(abort, Abort)
    assert "100 ms downtime budget" in abort.reason
    assert "forbids throttling and post-copy" in abort.reason


def test_time_budget_forces_postcopy_then_abort_without_it() -> None:
    samples = steady(40, 64, round_s=2.0)
    state, _ = run(samples, MigrationPolicy(max_duration_s=20, stall_rounds=50))
    assert state is State.POSTCOPY
    policy = MigrationPolicy(max_duration_s=20, stall_rounds=50, allow_postcopy=False)
    state, history = run(samples, policy)
    assert state is State.ABORTING
    assert history.decisions[-1].rule is Rule.TIME_BUDGET_ABORT
    assert "20 s time budget" in history.decisions[-1].reason  # the error the user reads


def _preparing(until_s: float) -> list[JobSample]:
    """libvirt's prepare step: the job exists, nothing is sent (every counter 0)."""
    steps = range(int(until_s) + 1)
    return [make_sample(now_s=float(t), iteration=0, remaining_mib=0, memory_mib=0) for t in steps]


def test_a_prepare_step_past_its_timeout_asks_the_destination_once_and_aborts_nothing() -> None:
    policy = MigrationPolicy(prepare_timeout_s=30)
    state, history = run(_preparing(29), policy)
    assert not any(d.rule is Rule.PREPARE_STUCK for d in history.decisions)
    state, history = run(_preparing(45), policy)
    assert state is State.SETUP  # a QEMU that only starts slowly still gets there
    assert not any(isinstance(a, Abort) for a in actions_of(history))
    stuck = [d for d in history.decisions if d.rule is Rule.PREPARE_STUCK]
    assert len(stuck) == 1  # asked once
    assert stuck[0].actions == (FreeStuckPrepare(30.0),)
    assert "has not started the incoming guest after 30 s" in stuck[0].reason


def test_an_abort_asked_for_already_still_frees_a_stuck_prepare_step() -> None:
    cancel = (MigrationEvent(EventKind.CANCEL_REQUESTED, now_s=3),)
    state, history = run(_preparing(40), MigrationPolicy(prepare_timeout_s=30), cancel)
    assert state is State.ABORTING
    assert [d.rule for d in history.decisions if d.actions] == [
        Rule.START,
        Rule.CANCEL,
        Rule.PREPARE_STUCK,
    ]
    stuck = next(d for d in history.decisions if d.rule is Rule.PREPARE_STUCK)
    assert stuck.actions == (FreeStuckPrepare(30.0),)  # aborted already: not asked twice


def test_a_job_whose_statistics_cannot_be_read_is_not_taken_for_a_stuck_prepare() -> None:
    history = History(started_s=0.0).with_time(500.0)
    decision = step(State.SETUP, history, MigrationPolicy(prepare_timeout_s=30), NOTHING_MEASURED)
    assert decision.rule is not Rule.PREPARE_STUCK


def test_a_slow_move_that_has_sent_bytes_is_never_taken_for_a_stuck_prepare() -> None:
    samples = [*_preparing(5), *steady(30, 64, round_s=2.0)]
    samples = [replace(x, now_s=x.now_s + 6) if i > 5 else x for i, x in enumerate(samples)]
    _, history = run(samples, MigrationPolicy(prepare_timeout_s=10, max_duration_s=600))
    assert not any(d.rule is Rule.PREPARE_STUCK for d in history.decisions)


def test_cancel_aborts_in_precopy_and_is_refused_in_postcopy() -> None:
    cancel = (MigrationEvent(EventKind.CANCEL_REQUESTED, now_s=3.5),)
    state, history = run(steady(3, 64), MigrationPolicy(), cancel)
    assert state is State.ABORTING
    assert actions_of(history)[-1] == Abort("cancelled by the user")

    samples = [*steady(12, 64), make_sample(now_s=40, iteration=14, remaining_mib=64)]
    cancel = (MigrationEvent(EventKind.CANCEL_REQUESTED, now_s=39),)
    state, history = run(samples, MigrationPolicy(max_duration_s=600), cancel)
    assert state is State.POSTCOPY
    assert history.decisions[-1].rule is Rule.CANCEL_REFUSED
    assert not any(isinstance(a, Abort) for a in actions_of(history))


def _in_postcopy_with_stuck_link() -> History:
    history = History(started_s=0).with_decision(
        Decision(State.POSTCOPY, (StartPostCopy(),), "go", at_s=1.0, round=5)
    )
    stuck = [make_sample(now_s=t, iteration=6, remaining_mib=100, processed_mib=700)
             for t in (2.0, 3.0, 4.5)]  # fmt: skip
    for s in stuck:
        history = history.with_sample(s)
    return history


def test_postcopy_stalled_link_is_waited_for_and_recovers_on_the_same_connection() -> None:
    policy = MigrationPolicy(postcopy_stall_s=3, postcopy_resume_wait_s=10)
    history = _in_postcopy_with_stuck_link()
    decision = step(State.POSTCOPY, history, policy, NOTHING_MEASURED)
    assert decision.next_state is State.POSTCOPY_PAUSED
    assert decision.actions == ()  # no pause: libvirt 11.3 cannot resume one
    assert decision.rule is Rule.POSTCOPY_LINK_STALLED
    history = history.with_decision(decision)
    later = make_sample(now_s=8.0, iteration=6, remaining_mib=100, processed_mib=700)
    waiting = step(State.POSTCOPY_PAUSED, history.with_sample(later), policy, NOTHING_MEASURED)
    assert waiting == Decision(State.POSTCOPY_PAUSED, at_s=8.0, round=6)
    later = make_sample(now_s=9.0, iteration=6, remaining_mib=90, processed_mib=710)
    moving = step(State.POSTCOPY_PAUSED, history.with_sample(later), policy, NOTHING_MEASURED)
    assert moving.next_state is State.POSTCOPY
    assert "recovered after 4.5 s (the link came back, same connection)" in moving.reason
    later = make_sample(now_s=15.0, iteration=6, remaining_mib=100, processed_mib=700)
    gave_up = step(State.POSTCOPY_PAUSED, history.with_sample(later), policy, NOTHING_MEASURED)
    assert gave_up.next_state is State.FAILED
    assert "only on the source" in gave_up.reason
    assert "libvirt carries on by itself" in gave_up.reason


def test_postcopy_paused_by_libvirt_is_resumed_until_the_wait_runs_out() -> None:
    policy = MigrationPolicy(postcopy_stall_s=3, postcopy_resume_wait_s=10)
    history = _in_postcopy_with_stuck_link().with_event(
        MigrationEvent(EventKind.POSTCOPY_PAUSED, now_s=5.0)
    )
    decision = step(State.POSTCOPY, history, policy, NOTHING_MEASURED)
    assert decision.next_state is State.POSTCOPY_PAUSED
    assert decision.actions == (ResumePostCopy(),)
    history = history.with_decision(decision)
    paused = history

    def after(event: MigrationEvent) -> Decision:
        return step(State.POSTCOPY_PAUSED, paused.with_event(event), policy, NOTHING_MEASURED)

    retry = after(MigrationEvent(EventKind.ITERATION, now_s=8.0, iteration=6))
    assert retry.actions == (ResumePostCopy(),)
    resumed = after(MigrationEvent(EventKind.POSTCOPY_RESUMED, now_s=9.0))
    assert resumed.next_state is State.POSTCOPY
    assert "POSTCOPY_RESUME" in resumed.reason
    gave_up = after(MigrationEvent(EventKind.ITERATION, now_s=16.0, iteration=6))
    assert gave_up.next_state is State.FAILED
    assert "destination" in gave_up.reason
    assert "--postcopy-resume" in gave_up.reason


def test_postcopy_stall_is_paused_when_the_policy_asks() -> None:
    policy = MigrationPolicy(postcopy_stall_s=3, postcopy_pause_on_stall=True)
    decision = step(State.POSTCOPY, _in_postcopy_with_stuck_link(), policy, NOTHING_MEASURED)
    assert decision.next_state is State.POSTCOPY
    assert decision.actions == (PausePostCopy(),)


# ---- replays of real lab traces -------------------------------------------------------


@pytest.mark.parametrize("name", sorted(p.name for p in TRACES.glob("*.json")))
def test_replay_invariants(name: str) -> None:
    samples = load_trace(name)
    for policy in (
        MigrationPolicy(bandwidth_mib_s=30),
        MigrationPolicy(allow_postcopy=False, max_throttle_percent=0),
        MigrationPolicy(allow_postcopy=False),
    ):
        _, history = run(samples, policy)
        downtimes = [a.downtime_ms for a in actions_of(history) if isinstance(a, SetMaxDowntime)]
        assert downtimes == sorted(downtimes)
        assert all(0 < d <= policy.max_downtime_ms for d in downtimes)
        throttles = [a.percent for a in actions_of(history) if isinstance(a, Throttle)]
        assert throttles == sorted(throttles)
        assert all(p <= policy.max_throttle_percent for p in throttles)
        if not policy.allow_postcopy:
            assert not any(isinstance(a, StartPostCopy) for a in actions_of(history))


def test_replay_busy_writer_above_bandwidth_goes_to_postcopy_by_default() -> None:
    samples = load_trace("busy45-bw30-throttle-postcopy.json")
    state, history = run(samples, MigrationPolicy(bandwidth_mib_s=30))
    assert state is State.POSTCOPY
    rules = [d.rule for d in history.decisions]
    assert Rule.STALL_THROTTLE in rules
    assert rules[-1] is Rule.STALL_POSTCOPY


def test_before_qemu_reports_a_dirty_rate_the_preflight_measurement_decides_the_wait() -> None:
    # Round 2 leaves 12 MiB (~400 ms at 30 MiB/s, fits the budget) and QEMU has no dirty
    # rate yet (a short migration may never have one), nor a previous round to compare.
    samples = [
        make_sample(now_s=0.5, iteration=1, remaining_mib=500),
        make_sample(now_s=5, iteration=2, remaining_mib=12),
    ]
    _, unknown = run(samples, MigrationPolicy())
    assert unknown.decisions[-1].actions == (SetMaxDowntime(500),)  # nothing says wait
    # Pre-flight measured 5 MiB/s: the next round should leave ~17 % of it: wait.
    preflight = MeasuredContext(preflight_dirty_mib_s=5.0)
    _, measured = run(samples, MigrationPolicy(), measured=preflight)
    assert measured.decisions[-1].rule is Rule.WAIT_FOR_SHRINK
    assert measured.decisions[-1].actions == ()
    assert "the next should leave ~17% of it" in measured.decisions[-1].reason
    # Once QEMU reports its own rate, that one counts (here 20 MiB/s: ~67 %, no wait).
    busy = [*samples[:1], make_sample(now_s=5, iteration=2, remaining_mib=12, dirty_mib_s=20)]
    _, qemu = run(busy, MigrationPolicy(), measured=preflight)
    assert qemu.decisions[-1].actions == (SetMaxDowntime(500),)
