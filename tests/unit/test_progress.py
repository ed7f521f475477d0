"""The progress view's dirty rate: QEMU's once it has one, pre-flight's (labelled) before."""

from __future__ import annotations

import json

import pytest

from libvirt_vmotion.converge.machine import Decision, History, SetMaxDowntime, State
from libvirt_vmotion.converge.progress import ProgressView, build_view
from libvirt_vmotion.model import MIB, DirtyRateSource, JobSample, shown_dirty_rate
from libvirt_vmotion.policy import MigrationPolicy


def make_sample(*, now_s: float, iteration: int, dirty_mib_s: float = 0) -> JobSample:
    return JobSample.from_job_stats(
        {
            "type": 2,
            "time_elapsed": int(now_s * 1000),
            "data_total": 512 * MIB,
            "data_processed": 600 * MIB,
            "data_remaining": 40 * MIB,
            "memory_total": 512 * MIB,
            "memory_remaining": 40 * MIB,
            "memory_bps": 100 * MIB,
            "memory_dirty_rate": int(dirty_mib_s * MIB / 4096),
            "memory_iteration": iteration,
            "memory_page_size": 4096,
        },
        now_s=now_s,
    )


def views(dirty_mib_s: list[float], *, preflight_dirty_mib_s: float | None) -> list[ProgressView]:
    """Views the way the driver builds them: one per sample, each given the last."""
    history = History(started_s=0.0)
    out: list[ProgressView] = []
    for i, dirty in enumerate(dirty_mib_s, start=1):
        history = history.with_sample(make_sample(now_s=i, iteration=i + 1, dirty_mib_s=dirty))
        out.append(
            build_view(
                State.CONVERGING,
                history,
                MigrationPolicy(),
                out[-1] if out else None,
                preflight_dirty_mib_s=preflight_dirty_mib_s,
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
    view = build_view(
        State.SETUP, History(started_s=0.0), MigrationPolicy(), preflight_dirty_mib_s=18.0
    )
    assert (view.dirty_mib_s, view.dirty_source) == (18.0, DirtyRateSource.PREFLIGHT)


def test_a_decisions_reason_is_shown_once_on_the_line_after_it() -> None:
    history = History(started_s=0.0)
    shown: list[str] = []
    previous: ProgressView | None = None
    for i in range(1, 5):
        history = history.with_sample(make_sample(now_s=i, iteration=3))
        if i == 2:
            history = history.with_decision(
                Decision(State.CONVERGING, (SetMaxDowntime(122),), "raise it", at_s=2.0, round=3)
            )
        if i == 3:  # a decision without actions that explains (a wait) is shown too
            history = history.with_decision(
                Decision(State.CONVERGING, (), "one more round", at_s=3.0, round=3)
            )
        previous = build_view(State.CONVERGING, history, MigrationPolicy(), previous)
        shown.append(previous.note)
    assert shown == ["", "raise it", "one more round", ""]


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
    view = build_view(State.CONVERGING, history, MigrationPolicy())
    assert view.phase == "switching-over"
    assert view.eta_s is None
    assert "libvirt is starting the guest on the destination" in view.line()
    assert "ETA" not in view.line()
