"""The progress view's dirty rate: QEMU's once it has one, pre-flight's (labelled) before."""

from __future__ import annotations

import json

import pytest

from builders import make_sample
from libvirt_vmotion.converge.machine import (
    Decision,
    History,
    ResumePostCopy,
    Rule,
    SetMaxDowntime,
    StartPostCopy,
    State,
    Throttle,
)
from libvirt_vmotion.converge.progress import (
    PostcopyRecovery,
    ProgressView,
    RecoveryMethod,
    StrategyUsed,
    build_controller_section,
    build_view,
    controller_cpu_section,
    postcopy_recoveries,
)
from libvirt_vmotion.model import (
    MIB,
    DirtyRateSource,
    JobSample,
    MeasuredContext,
    shown_dirty_rate,
)
from libvirt_vmotion.policy import MigrationPolicy


def sample(*, now_s: float, iteration: int, dirty_mib_s: float = 0) -> JobSample:
    """Round ``iteration`` with 40 MiB left at 100 MiB/s."""
    return make_sample(
        now_s=now_s, iteration=iteration, bw_mib_s=100, dirty_mib_s=dirty_mib_s, processed_mib=600
    )


def views(dirty_mib_s: list[float], *, preflight_dirty_mib_s: float | None) -> list[ProgressView]:
    """Views the way the driver builds them: one per sample, each given the last."""
    history = History(started_s=0.0)
    out: list[ProgressView] = []
    for i, dirty in enumerate(dirty_mib_s, start=1):
        history = history.with_sample(sample(now_s=i, iteration=i + 1, dirty_mib_s=dirty))
        out.append(
            build_view(
                State.CONVERGING,
                history,
                MigrationPolicy(),
                MeasuredContext(preflight_dirty_mib_s=preflight_dirty_mib_s),
                out[-1] if out else None,
            )
        )
    return out


@pytest.mark.parametrize(
    ("qemu", "reported", "preflight", "shown"),
    [
        (0.0, False, 18.0, (18.0, DirtyRateSource.PREFLIGHT)),
        (0.0, False, None, (0.0, DirtyRateSource.QEMU)),
        (25.0, False, 18.0, (25.0, DirtyRateSource.QEMU)),
        (25.0, True, 18.0, (25.0, DirtyRateSource.QEMU)),
        (0.0, True, 18.0, (0.0, DirtyRateSource.QEMU)),  # QEMU says the guest went idle
        (0.0, False, 0.0, (0.0, DirtyRateSource.PREFLIGHT)),  # measured idle: still labelled
    ],
)
def test_shown_dirty_rate_table(
    qemu: float,
    reported: bool,
    preflight: float | None,
    shown: tuple[float, DirtyRateSource],
) -> None:
    assert shown_dirty_rate(qemu, qemu_has_reported=reported, preflight_mib_s=preflight) == shown


def test_before_qemu_reports_the_preflight_rate_is_shown_and_labelled() -> None:
    view = views([0, 0], preflight_dirty_mib_s=18.0)[-1]
    assert view.dirty_mib_s == pytest.approx(18.0)
    assert view.dirty_source is DirtyRateSource.PREFLIGHT
    assert "dirty   18.0 (pre-flight) vs  100.0 MiB/s" in view.line()
    data = json.loads(json.dumps(view.to_dict()))
    assert data["dirty_mib_s"] == pytest.approx(18.0)
    assert data["dirty_source"] == "pre-flight"


def test_once_qemu_reported_its_rate_is_shown_even_when_it_drops_to_zero() -> None:
    seen = views([0, 30, 0], preflight_dirty_mib_s=18.0)
    assert [(v.dirty_mib_s, v.dirty_source) for v in seen] == [
        (pytest.approx(18.0), DirtyRateSource.PREFLIGHT),
        (pytest.approx(30.0), DirtyRateSource.QEMU),
        (0.0, DirtyRateSource.QEMU),
    ]
    assert "pre-flight" not in seen[-1].line()
    assert seen[-1].to_dict()["dirty_source"] == "qemu"


def test_without_a_preflight_measurement_qemus_figure_is_shown_as_before() -> None:
    view = views([0], preflight_dirty_mib_s=None)[-1]
    assert view.dirty_mib_s == 0.0
    assert view.dirty_source is DirtyRateSource.QEMU
    assert "dirty    0.0 vs  100.0 MiB/s" in view.line()


def test_view_before_any_sample_carries_the_preflight_rate() -> None:
    measured = MeasuredContext(preflight_dirty_mib_s=18.0)
    view = build_view(State.SETUP, History(started_s=0.0), MigrationPolicy(), measured)
    assert (view.dirty_mib_s, view.dirty_source) == (18.0, DirtyRateSource.PREFLIGHT)


def test_a_decisions_reason_is_shown_once_on_the_line_after_it() -> None:
    history = History(started_s=0.0)
    shown: list[str] = []
    previous: ProgressView | None = None
    for i in range(1, 5):
        history = history.with_sample(sample(now_s=i, iteration=3))
        if i == 2:
            history = history.with_decision(
                Decision(State.CONVERGING, (SetMaxDowntime(122),), "raise it", at_s=2.0, round=3)
            )
        if i == 3:  # a decision without actions that explains (a wait) is shown too
            history = history.with_decision(
                Decision(State.CONVERGING, (), "one more round", at_s=3.0, round=3)
            )
        previous = build_view(
            State.CONVERGING, history, MigrationPolicy(), MeasuredContext(), previous
        )
        shown.append(previous.note)
    assert shown == ["", "raise it", "one more round", ""]


def test_the_controller_section_writes_rules_and_actions_as_objects() -> None:
    history = History(started_s=0.0)
    for now_s, iteration in ((1.0, 2), (2.0, 3)):
        history = history.with_sample(sample(now_s=now_s, iteration=iteration))
    history = history.with_decision(
        Decision(
            State.CONVERGING,
            (SetMaxDowntime(60), Throttle(40)),
            "stalled",
            at_s=2.0,
            round=3,
            rule=Rule.STALL_THROTTLE,
        )
    ).with_decision(Decision(State.POSTCOPY, (StartPostCopy(),), "go", at_s=3.0, round=3))
    section = build_controller_section(
        State.POSTCOPY, history, MigrationPolicy(), MeasuredContext(), downtime_ms=None
    )
    section = json.loads(json.dumps(section))  # what the report file holds
    first, second = section["decisions"]
    assert first["rule"] == "stall-throttle"
    assert first["actions"] == [
        {"action": "set-max-downtime", "downtime_ms": 60},
        {"action": "throttle", "percent": 40},
    ]
    assert second["actions"] == [{"action": "start-post-copy"}]
    assert section["bytes_per_round"] == [
        {"round": 2, "bytes": 40 * MIB},
        {"round": 3, "bytes": 40 * MIB},
    ]
    assert section["strategy"] == StrategyUsed.POSTCOPY.value == "post-copy"


def test_postcopy_recoveries_say_how_the_link_came_back() -> None:
    def at(t_s: float, state: State, *actions: ResumePostCopy) -> Decision:
        return Decision(state, actions, f"at {t_s}", at_s=t_s, round=5)

    history = History(started_s=0.0)
    for d in (
        at(1, State.POSTCOPY),
        at(2, State.POSTCOPY_PAUSED),
        at(4, State.POSTCOPY),
        at(5, State.POSTCOPY_PAUSED, ResumePostCopy()),
        at(6, State.POSTCOPY_PAUSED, ResumePostCopy()),
        at(8, State.COMPLETED),
        at(9, State.POSTCOPY_PAUSED),
    ):
        history = history.with_decision(d)
    assert postcopy_recoveries(history) == [
        PostcopyRecovery(2, 4, RecoveryMethod.SAME_CONNECTION, "at 2"),
        PostcopyRecovery(5, 8, RecoveryMethod.POSTCOPY_RESUME, "at 5"),
        PostcopyRecovery(9, None, None, "at 9"),  # never recovered
    ]
    assert postcopy_recoveries(history)[1].to_dict()["how"] == "postcopy-resume"


def test_the_controllers_cpu_is_reported_as_seconds_and_share_of_a_core() -> None:
    assert controller_cpu_section(cpu_s=0.123, wall_s=10.0) == {
        "controller_cpu_s": 0.12,
        "controller_cpu_percent": 1.2,
    }
    unknown = controller_cpu_section(cpu_s=None, wall_s=10.0)
    assert unknown == {"controller_cpu_s": None, "controller_cpu_percent": None}
    assert controller_cpu_section(cpu_s=0.0, wall_s=0.0)["controller_cpu_percent"] is None


def test_once_everything_is_sent_the_line_says_libvirt_finishes_on_the_destination() -> None:
    done = JobSample.from_job_stats(
        {
            "type": 2,
            "time_elapsed": 3000,
            "data_total": 512 * MIB,
            "data_processed": 600 * MIB,
            "data_remaining": 0,
            "memory_total": 512 * MIB,
            "memory_remaining": 0,
            "memory_bps": 100 * MIB,
            "memory_iteration": 4,
            "memory_page_size": 4096,
        },
        now_s=3.0,
    )
    history = History(started_s=0.0).with_sample(done)
    view = build_view(State.CONVERGING, history, MigrationPolicy(), MeasuredContext())
    assert view.phase == "switching-over"
    assert view.eta_s is None
    assert "libvirt is starting the guest on the destination" in view.line()
    assert "ETA" not in view.line()
