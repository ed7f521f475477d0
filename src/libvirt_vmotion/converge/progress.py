"""Honest, phase-aware progress and the controller's part of the report.

Pure: no I/O, no clock, no logging. The percentage only ever covers the bulk
copy and never decreases; once QEMU re-sends dirtied pages, progress is told as
rounds and remaining data, and a round that adds work says so instead of
lowering a number. The ETA is given only when the data says the migration
converges (dirty rate below transfer rate); otherwise it says why not.
QEMU reports no dirty rate until it has completed a full round: until then the
dirty rate shown is pre-flight's measurement, passed in and labelled as such.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Final

from libvirt_vmotion.converge.machine import (
    TERMINAL,
    Decision,
    History,
    ResumePostCopy,
    State,
    action_to_dict,
    current_downtime_ms,
    current_throttle_percent,
    round_dirty_sets,
)
from libvirt_vmotion.model import MIB, DirtyRateSource, JobSample, MeasuredContext, shown_dirty_rate
from libvirt_vmotion.policy import MigrationPolicy


@dataclass(frozen=True, slots=True)
class ProgressView:
    """What the user sees at one moment.

    Attributes:
        phase: setup, bulk-copy, converging, throttling, postcopy, ... done.
        round: QEMU's memory iteration.
        elapsed_s: since the migration started.
        bulk_percent: share of RAM sent in the first pass (never decreases).
        remaining_mib: data QEMU still has to send.
        dirty_mib_s: guest dirty rate (see ``dirty_source``).
        transfer_mib_s: migration transfer rate.
        rounds_left: estimated rounds to the switchover, if converging.
        eta_s: estimated seconds to completion, if it can be known.
        note: what is happening, in words (added work, escalation, why no ETA).

    """

    phase: str
    round: int
    elapsed_s: float
    bulk_percent: float
    remaining_mib: float
    dirty_mib_s: float
    transfer_mib_s: float
    rounds_left: int | None
    eta_s: float | None
    note: str
    disk_total_mib: float = 0.0
    """Disk data to copy (non-shared storage; 0 when disks are shared)."""
    disk_remaining_mib: float = 0.0
    dirty_source: DirtyRateSource = DirtyRateSource.QEMU
    """Where ``dirty_mib_s`` comes from: QEMU, or pre-flight until QEMU has reported a rate."""

    def to_dict(self) -> dict[str, object]:
        """JSON-serializable form (one JSON line of ``--json`` output)."""
        out = asdict(self)
        for key in (
            "elapsed_s",
            "bulk_percent",
            "remaining_mib",
            "dirty_mib_s",
            "transfer_mib_s",
            "disk_total_mib",
            "disk_remaining_mib",
        ):
            out[key] = round(float(out[key]), 1)
        out["dirty_source"] = self.dirty_source.value
        if self.eta_s is not None:
            out["eta_s"] = round(self.eta_s, 1)
        return {"event": "progress", **out}

    def line(self) -> str:
        """One human line."""
        head = f"{self.phase:<15} {self.elapsed_s:6.1f} s"
        if self.phase in {State.SETUP.value, State.BULK_COPY.value}:
            body = f"  sent {self.bulk_percent:5.1f}% of RAM  {self.transfer_mib_s:6.1f} MiB/s"
        else:
            dirty = f"{self.dirty_mib_s:6.1f}"
            if self.dirty_source is DirtyRateSource.PREFLIGHT:
                dirty += " (pre-flight)"
            body = (
                f"  round {self.round:>3}  remaining {self.remaining_mib:7.1f} MiB  "
                f"dirty {dirty} vs {self.transfer_mib_s:6.1f} MiB/s"
            )
        if self.disk_total_mib > 0:
            done = self.disk_total_mib - self.disk_remaining_mib
            body += f"  disk {done:.0f}/{self.disk_total_mib:.0f} MiB"
        if self.rounds_left is not None:
            body += f"  ~{self.rounds_left} rounds left"
        if self.eta_s is not None:
            body += f"  ETA {self.eta_s:.0f} s"
        return head + body + (f"  ({self.note})" if self.note else "")


def build_view(
    state: State,
    history: History,
    policy: MigrationPolicy,
    measured: MeasuredContext,
    previous: ProgressView | None = None,
) -> ProgressView:
    """The progress view after the latest sample.

    Args:
        state: the controller's state.
        history: samples, events and decisions so far.
        policy: the policy (downtime target for the rounds-left estimate).
        measured: the measurements; pre-flight's dirty rate (if it measured one)
            is shown, labelled, until QEMU reports a rate of its own.
        previous: the last view shown, so the percentage never decreases.

    Returns:
        The view to show.

    """
    sample = history.samples[-1] if history.samples else None
    elapsed_s = history.now_s - history.started_s
    qemu_has_reported = any(s.memory_dirty_rate_pages_s > 0 for s in history.samples)
    dirty, dirty_source = shown_dirty_rate(
        sample.dirty_rate_mib_s if sample is not None else 0.0,
        qemu_has_reported=qemu_has_reported,
        preflight_mib_s=measured.preflight_dirty_mib_s,
    )
    if sample is None:
        return _view_before_first_sample(state, elapsed_s, dirty, dirty_source)
    rounds_left, eta_s, note = _estimate(state, history, policy, sample)
    phase = state.value
    note = _note(history, sample, previous, estimate_note=note)
    if is_finishing(state, sample):
        # QEMU has nothing left to send; the job runs on while libvirt resumes the guest on
        # the destination (seconds, on a loaded host). An "ETA 0 s" repeated meanwhile reads
        # as a hang: say what is going on instead.
        phase, rounds_left, eta_s = SWITCHING_OVER, None, None
        note = note or "all memory sent: libvirt is starting the guest on the destination"
    return ProgressView(
        phase=phase,
        round=sample.iteration,
        elapsed_s=elapsed_s,
        bulk_percent=_shown_bulk_percent(state, sample, previous),
        remaining_mib=sample.data_remaining_bytes / MIB,
        dirty_mib_s=dirty,
        transfer_mib_s=sample.transfer_rate_mib_s,
        rounds_left=rounds_left,
        eta_s=eta_s,
        note=note,
        disk_total_mib=sample.disk_total_bytes / MIB,
        disk_remaining_mib=sample.disk_remaining_bytes / MIB,
        dirty_source=dirty_source,
    )


def _view_before_first_sample(
    state: State, elapsed_s: float, dirty_mib_s: float, dirty_source: DirtyRateSource
) -> ProgressView:
    """The view while QEMU has reported nothing yet: only the phase, time and a known rate."""
    return ProgressView(
        phase=state.value,
        round=0,
        elapsed_s=elapsed_s,
        bulk_percent=0.0,
        remaining_mib=0.0,
        dirty_mib_s=dirty_mib_s,
        transfer_mib_s=0.0,
        rounds_left=None,
        eta_s=None,
        note="",
        dirty_source=dirty_source,
    )


def _shown_bulk_percent(state: State, sample: JobSample, previous: ProgressView | None) -> float:
    """The bulk pass's share sent: never lower than last shown, 100 once past it."""
    if state not in {State.SETUP, State.BULK_COPY}:
        return 100.0
    bulk = _bulk_percent(sample)
    return max(bulk, previous.bulk_percent) if previous is not None else bulk


def _note(
    history: History, sample: JobSample, previous: ProgressView | None, *, estimate_note: str
) -> str:
    """What the line says in words: a new decision's reason, added work, or the estimate's.

    A decision's reason is shown once, on the first view after it was taken: the
    report keeps every reason; repeating one on later lines reads as a new decision.
    """
    shown_up_to_s = history.started_s + previous.elapsed_s if previous is not None else -math.inf
    decision = history.decisions[-1] if history.decisions else None
    if decision is not None and decision.reason and decision.at_s > shown_up_to_s:
        return decision.reason
    if estimate_note or previous is None or previous.round != sample.iteration - 1:
        return estimate_note
    sets = round_dirty_sets(history.samples)
    if len(sets) >= 2 and sets.get(sample.iteration, 0) > sets.get(sample.iteration - 1, 0):
        return f"round {sample.iteration} added work: the guest re-dirtied pages"
    return ""


SWITCHING_OVER: Final = "switching-over"
"""The progress phase once QEMU has sent everything and libvirt finishes on the destination."""


def is_finishing(state: State, sample: JobSample) -> bool:
    """True when QEMU has sent all data but the job has not ended (libvirt's Finish phase)."""
    return (
        state not in TERMINAL
        and sample.data_processed_bytes > 0
        and sample.data_remaining_bytes == 0
        and sample.memory_total_bytes > 0
    )


def _bulk_percent(sample: JobSample) -> float:
    if sample.memory_total_bytes <= 0:
        return 0.0
    if sample.iteration >= 2:
        return 100.0
    return min(100.0, 100.0 * sample.data_processed_bytes / sample.memory_total_bytes)


def _estimate(
    state: State, history: History, policy: MigrationPolicy, sample: JobSample
) -> tuple[int | None, float | None, str]:
    bw = float(sample.memory_bps)
    remaining = float(sample.data_remaining_bytes)
    if bw <= 0:
        return None, None, ""
    if state in {State.SETUP, State.BULK_COPY}:
        return None, remaining / bw, ""
    if state in {State.POSTCOPY, State.POSTCOPY_PAUSED}:
        note = "" if state is State.POSTCOPY else "link broken: waiting to resume post-copy"
        return None, remaining / bw, note
    dirty = float(sample.memory_dirty_rate_pages_s * sample.memory_page_size)
    target = current_downtime_ms(history, policy) / 1000 * bw
    if dirty >= bw:
        return None, None, "no ETA: the guest dirties memory as fast as it is sent"
    rho = dirty / bw
    if remaining <= target or rho <= 0:
        return 0, remaining / bw, ""
    rounds = math.ceil(math.log(target / remaining) / math.log(rho)) if rho < 1 else None
    return rounds, remaining / (bw - dirty), ""


class StrategyUsed(StrEnum):
    """How the migration was made to converge (the report's ``convergence.strategy``)."""

    PRECOPY = "pre-copy"
    """Plain pre-copy at the ladder's first rung."""
    DOWNTIME_RAISED = "pre-copy, downtime raised"
    """Pre-copy, with QEMU's downtime limit raised on the way."""
    THROTTLE = "throttle"
    """The guest's CPUs were throttled."""
    POSTCOPY = "post-copy"
    """Switched to post-copy."""


def strategy_used(history: History) -> StrategyUsed:
    """The strongest escalation the decisions took: post-copy, throttle, a raise, none."""
    if any(d.next_state is State.POSTCOPY for d in history.decisions):
        return StrategyUsed.POSTCOPY
    if current_throttle_percent(history) > 0:
        return StrategyUsed.THROTTLE
    if any(d.next_state is not State.ABORTING and d.actions for d in history.decisions[1:]):
        return StrategyUsed.DOWNTIME_RAISED
    return StrategyUsed.PRECOPY


def build_controller_section(
    state: State,
    history: History,
    policy: MigrationPolicy,
    measured: MeasuredContext,
    *,
    downtime_ms: int | None,
) -> dict[str, object]:
    """The controller's part of the final report.

    Args:
        state: the final state.
        history: everything seen and decided.
        policy: the budget (reported as ``policy``: the user's choices).
        measured: the measurements the controller ran with (``measured``).
        downtime_ms: the measured downtime, if known.

    Returns:
        JSON-serializable figures: decisions (rule, actions as objects, reason),
        rounds, bytes per round (``[{"round", "bytes"}]``), final dirty set,
        strategy, whether the budget was met.

    """
    sets = round_dirty_sets(history.samples)
    elapsed_s = history.now_s - history.started_s
    met = (
        state is State.COMPLETED
        and elapsed_s <= policy.max_duration_s
        and (downtime_ms is None or downtime_ms <= policy.max_downtime_ms)
    )
    return {
        "state": state.value,
        "strategy": strategy_used(history).value,
        "rounds": max(sets, default=history.round),
        "bytes_per_round": [{"round": r, "bytes": b} for r, b in sorted(sets.items())],
        "final_dirty_set_bytes": sets[max(sets)] if sets else 0,
        "downtime_limit_ms": current_downtime_ms(history, policy),
        "throttle_percent": current_throttle_percent(history),
        "budget": {
            "max_downtime_ms": policy.max_downtime_ms,
            "max_duration_s": policy.max_duration_s,
            "met": met,
        },
        "postcopy_recoveries": [r.to_dict() for r in postcopy_recoveries(history)],
        "decisions": [
            {
                "at_s": round(d.at_s - history.started_s, 2),
                "round": d.round,
                "state": d.next_state.value,
                "rule": d.rule.value,
                "actions": [action_to_dict(a) for a in d.actions],
                "reason": d.reason,
            }
            for d in history.decisions
            if d.reason
        ],
        "policy": policy.to_dict(),
        "measured": measured.to_dict(),
    }


def controller_cpu_section(*, cpu_s: float | None, wall_s: float) -> dict[str, object]:
    """The controller's own cost while it watched: CPU seconds and percent of one core.

    The goal is under 2 % of a core while monitoring. ``cpu_s`` is the controller
    thread's own (``time.thread_time``): the observers a user adds run beside it.

    >>> controller_cpu_section(cpu_s=0.12, wall_s=10.0)
    {'controller_cpu_s': 0.12, 'controller_cpu_percent': 1.2}
    >>> controller_cpu_section(cpu_s=None, wall_s=10.0)
    {'controller_cpu_s': None, 'controller_cpu_percent': None}
    """
    if cpu_s is None:
        return {"controller_cpu_s": None, "controller_cpu_percent": None}
    percent = round(100 * cpu_s / wall_s, 1) if wall_s > 0 else None
    return {"controller_cpu_s": round(cpu_s, 2), "controller_cpu_percent": percent}


class RecoveryMethod(StrEnum):
    """How a broken post-copy link recovered."""

    SAME_CONNECTION = "same-connection"
    """The link came back and TCP carried on over the same connection."""
    POSTCOPY_RESUME = "postcopy-resume"
    """libvirt had paused it; resumed over a fresh connection (POSTCOPY_RESUME)."""


@dataclass(frozen=True, slots=True)
class PostcopyRecovery:
    """One time the post-copy link broke (times from the start of the migration).

    Attributes:
        broken_at_s: when the controller saw it broken.
        recovered_at_s: when it recovered; None: it never did.
        how: how it recovered; None: it never did.
        reason: the controller's words when it broke.

    """

    broken_at_s: float
    recovered_at_s: float | None
    how: RecoveryMethod | None
    reason: str

    def to_dict(self) -> dict[str, object]:
        """JSON form (``convergence.postcopy_recoveries[]``)."""
        return {
            "broken_at_s": self.broken_at_s,
            "recovered_at_s": self.recovered_at_s,
            "how": None if self.how is None else self.how.value,
            "reason": self.reason,
        }


def postcopy_recoveries(history: History) -> list[PostcopyRecovery]:
    """Each time the post-copy link broke: when, when it recovered (None: never), and how."""
    out: list[PostcopyRecovery] = []
    broken: Decision | None = None
    resumed = False
    for d in history.decisions:
        if d.next_state is State.POSTCOPY_PAUSED:
            resumed = resumed or any(isinstance(a, ResumePostCopy) for a in d.actions)
            broken = broken or d
            continue
        if broken is not None:
            # Back to post-copy, or straight to completion: either way the link came back.
            recovered = d.next_state in {State.POSTCOPY, State.COMPLETED}
            how = RecoveryMethod.POSTCOPY_RESUME if resumed else RecoveryMethod.SAME_CONNECTION
            out.append(_recovery(history, broken, d if recovered else None, how))
            broken, resumed = None, False
    if broken is not None:
        out.append(_recovery(history, broken, None, None))
    return out


def _recovery(
    history: History, broken: Decision, recovered: Decision | None, how: RecoveryMethod | None
) -> PostcopyRecovery:
    def rel(d: Decision) -> float:
        return round(d.at_s - history.started_s, 2)

    return PostcopyRecovery(
        broken_at_s=rel(broken),
        recovered_at_s=None if recovered is None else rel(recovered),
        how=None if recovered is None else how,
        reason=broken.reason,
    )
