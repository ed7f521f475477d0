"""The convergence controller: an explicit state machine over job samples.

Pure: no I/O, no clock, no logging. ``step(state, history, policy, measured)``
returns a ``Decision`` (next state, actions as data, reason); only the driver acts
on it. ``policy`` is what the user chose, ``measured`` what was measured or
learned (``MeasuredContext``, built once by ``build_context``). Time arrives on
the samples and events (``now_s``), never from a clock.

Strategy (the default policy finishes, like vMotion does):

1. Start with the tightest downtime of the ladder (tens of ms).
2. Per round, record the dirty set (remaining data when the round began).
   When a round reaches a new minimum that fits the downtime budget at the
   measured bandwidth, set the downtime to just cover it: QEMU switches over
   at that local minimum instead of waiting on a timer.
3. A stall (``stall_rounds`` rounds without a new minimum) escalates: to the
   smallest ladder rung that fits the best dirty set seen, else to CPU
   throttling (if allowed), else to post-copy (if allowed), else abort with a
   reason naming the budget. Past ``postcopy_after_fraction`` of the time
   budget, post-copy comes next regardless; past the budget, pre-copy aborts.

   QEMU's downtime limit is really a threshold on pending data (it switches
   over once pending <= capped rate x limit), but it sends that last round
   with the cap lifted. When the rate of that unthrottled round is known
   (``MeasuredContext.switchover_mib_s``, faster than the measured rate), the
   budget is judged against the *real* pause (dirty set at that rate + the
   switchover overhead) and QEMU's limit is set to what its threshold needs at
   the capped rate (with the usual margin), which may exceed the budget, up to
   ``qemu_limit_bound_ms``. Every rung is below the budget, so a real pause
   that fits the budget fits a rung; QEMU gets the need rather than the rung.
   A stall raises QEMU's limit as far as the real pause allows; throttling and
   post-copy come only once it no longer fits. Without that rate (or when it
   is no faster than the measured rate) everything above holds as written:
   the rungs are QEMU's limits and the budget bounds them.
4. In post-copy, abort is refused (the guest's state is split between the
   hosts). A link that stops moving bytes is waited for (TCP keeps the
   connection through a short outage; libvirt's keepalive gives up after ~30 s)
   or, with ``postcopy_pause_on_stall``, paused. When libvirt reports the
   post-copy paused, it is resumed (POSTCOPY_RESUME) once the link is back.
   Either way for up to ``postcopy_resume_wait_s``; then the controller stops,
   saying where the guest's state lives.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from typing import ClassVar, Final, Protocol

from libvirt_vmotion.events import EventKind, MigrationEvent
from libvirt_vmotion.model import MIB, Compression, JobSample, MeasuredContext
from libvirt_vmotion.policy import MigrationPolicy, throttle_steps
from libvirt_vmotion.preflight.forecast import (
    DEFAULT_SWITCHOVER_OVERHEAD_MS,
    WAIT_WHILE_SHRINK_AT_MOST,
)


class State(StrEnum):
    """States of one migration under the controller."""

    SETUP = "setup"
    BULK_COPY = "bulk-copy"
    CONVERGING = "converging"
    THROTTLING = "throttling"
    POSTCOPY = "postcopy"
    POSTCOPY_PAUSED = "postcopy-paused"
    ABORTING = "aborting"
    COMPLETED = "completed"
    ABORTED = "aborted"
    FAILED = "failed"


_PRECOPY: Final = frozenset({State.SETUP, State.BULK_COPY, State.CONVERGING, State.THROTTLING})
_POSTCOPY: Final = frozenset({State.POSTCOPY, State.POSTCOPY_PAUSED})
TERMINAL: Final = frozenset({State.COMPLETED, State.ABORTED, State.FAILED})

TRANSITIONS: Final[dict[State, frozenset[State]]] = {
    State.SETUP: frozenset(
        {State.SETUP, State.BULK_COPY, State.CONVERGING, State.POSTCOPY, State.ABORTING}
        | {State.COMPLETED, State.ABORTED}
    ),
    State.BULK_COPY: frozenset(
        {State.BULK_COPY, State.CONVERGING, State.POSTCOPY, State.ABORTING}
        | {State.COMPLETED, State.ABORTED}
    ),
    State.CONVERGING: frozenset(
        {State.CONVERGING, State.THROTTLING, State.POSTCOPY, State.ABORTING}
        | {State.COMPLETED, State.ABORTED}
    ),
    State.THROTTLING: frozenset(
        {State.THROTTLING, State.POSTCOPY, State.ABORTING, State.COMPLETED, State.ABORTED}
    ),
    State.POSTCOPY: frozenset(
        {State.POSTCOPY, State.POSTCOPY_PAUSED, State.COMPLETED, State.FAILED}
    ),
    State.POSTCOPY_PAUSED: frozenset(
        {State.POSTCOPY_PAUSED, State.POSTCOPY, State.COMPLETED, State.FAILED}
    ),
    State.ABORTING: frozenset({State.ABORTING, State.ABORTED, State.COMPLETED, State.FAILED}),
    State.COMPLETED: frozenset({State.COMPLETED}),
    State.ABORTED: frozenset({State.ABORTED}),
    State.FAILED: frozenset({State.FAILED}),
}


# ---- actions ---------------------------------------------------------------


# Each action's ``kind`` names it in the report: ``{"action": kind, **its fields}``.


@dataclass(frozen=True, slots=True)
class SetMaxDowntime:
    """Let QEMU switch over once the rest fits in ``downtime_ms``."""

    kind: ClassVar[str] = "set-max-downtime"
    downtime_ms: int


@dataclass(frozen=True, slots=True)
class SetMaxBandwidth:
    """Cap the migration bandwidth."""

    kind: ClassVar[str] = "set-max-bandwidth"
    bandwidth_mib_s: int


@dataclass(frozen=True, slots=True)
class Throttle:
    """Cap the auto-converge CPU throttle at ``percent`` (0: hold it off)."""

    kind: ClassVar[str] = "throttle"
    percent: int


@dataclass(frozen=True, slots=True)
class StartPostCopy:
    """Switch the running migration to post-copy."""

    kind: ClassVar[str] = "start-post-copy"


@dataclass(frozen=True, slots=True)
class PausePostCopy:
    """Interrupt a post-copy whose link stopped moving bytes, so it can resume."""

    kind: ClassVar[str] = "pause-post-copy"


@dataclass(frozen=True, slots=True)
class ResumePostCopy:
    """Resume a paused post-copy (libvirt's POSTCOPY_RESUME)."""

    kind: ClassVar[str] = "resume-post-copy"


@dataclass(frozen=True, slots=True)
class Abort:
    """Abort the pre-copy migration; the guest keeps running on the source."""

    kind: ClassVar[str] = "abort"
    reason: str


@dataclass(frozen=True, slots=True)
class FreeStuckPrepare:
    """End the destination's half-started incoming guest: its libvirt prepare step hangs.

    Only decided while nothing has been sent, so the guest's only state is on the
    source; the destination kills the process libvirt forked for the incoming
    QEMU if it is not (yet) a QEMU, and the prepare step then fails.
    """

    kind: ClassVar[str] = "free-stuck-prepare"
    waited_s: float


Action = (
    SetMaxDowntime
    | SetMaxBandwidth
    | Throttle
    | StartPostCopy
    | PausePostCopy
    | ResumePostCopy
    | Abort
    | FreeStuckPrepare
)


def action_to_dict(action: Action) -> dict[str, object]:
    """An action as the report writes it: ``{"action": "set-max-downtime", "downtime_ms": 60}``."""
    return {"action": action.kind, **{f.name: getattr(action, f.name) for f in fields(action)}}


class Rule(StrEnum):
    """The rule of ``step`` that made a decision (the report's ``decisions[].rule``).

    Code that asks what the controller did reads this, never the reason's words.
    """

    CARRY_ON = "carry-on"
    """No rule fired: nothing to do this step."""
    ENTER_PHASE = "enter-phase"
    """The counters show a new phase (bulk copy, converging)."""
    START = "start"
    """The first decision: the tightest rung of the ladder, throttling held off."""
    JOB_COMPLETED = "job-completed"
    JOB_FAILED = "job-failed"
    CANCEL = "cancel"
    """The user cancelled during pre-copy: abort."""
    CANCEL_REFUSED = "cancel-refused"
    """The user cancelled during post-copy: refused, the guest's state is split."""
    PREPARE_STUCK = "prepare-stuck"
    """Nothing sent after ``prepare_timeout_s``: ask the destination to end a stuck start."""
    TIME_BUDGET_ABORT = "time-budget-abort"
    """Pre-copy ran past ``max_duration_s``."""
    TIME_BUDGET_POSTCOPY = "time-budget-postcopy"
    """Past ``postcopy_after_fraction`` of the time budget: post-copy so it can finish."""
    WAIT_FOR_SHRINK = "wait-for-shrink"
    """A fitting dirty set let pass: the rounds still shrink fast (said once per round)."""
    SWITCH_AT_MINIMUM = "switch-at-minimum"
    """A new minimum of the dirty set fits the budget: raise QEMU's limit to take it."""
    POSTCOPY_AFTER_FIRST_PASS = "postcopy-after-first-pass"  # noqa: S105  a rule, not a secret
    """The forecast said the rounds cannot shrink: post-copy once the first pass is done."""
    STALL_RAISE_DOWNTIME = "stall-raise-downtime"
    """A stall: a higher QEMU limit that still fits the budget."""
    STALL_THROTTLE = "stall-throttle"
    """A stall the budget cannot cover: throttle the guest's CPUs."""
    STALL_POSTCOPY = "stall-postcopy"
    """A stall with the ladder and throttling spent: post-copy."""
    BUDGET_UNMEETABLE = "budget-unmeetable"
    """A stall with nothing left the policy allows: abort, naming the budget."""
    POSTCOPY_LINK_STALLED = "postcopy-link-stalled"
    """Post-copy moved no bytes for ``postcopy_stall_s``: wait for the link."""
    POSTCOPY_PAUSE_STALLED = "postcopy-pause-stalled"
    """As above, with ``postcopy_pause_on_stall``: pause it so it can be resumed."""
    POSTCOPY_LINK_BROKEN = "postcopy-link-broken"
    """libvirt paused the post-copy: resume it (POSTCOPY_RESUME) once the link is back."""
    POSTCOPY_RESUME = "postcopy-resume"
    """Retry the resume of a post-copy libvirt paused."""
    POSTCOPY_RECOVERED = "postcopy-recovered"
    POSTCOPY_GAVE_UP = "postcopy-gave-up"
    """Post-copy did not recover within ``postcopy_resume_wait_s``."""


@dataclass(frozen=True, slots=True)
class Decision:
    """What the controller decided at one step, and why.

    Attributes:
        next_state: the state to move to (checked against ``TRANSITIONS``).
        actions: what the driver must apply, in order.
        reason: why, in words, for the log and the report.
        at_s: time of the newest input the decision was based on.
        round: the memory iteration it was taken in.
        rule: the rule that made it (what code reads; ``reason`` is for people).

    """

    next_state: State
    actions: tuple[Action, ...] = ()
    reason: str = ""
    at_s: float = 0.0
    round: int = 0
    rule: Rule = Rule.CARRY_ON


@dataclass(frozen=True, slots=True)
class History:
    """Everything the controller has seen and decided, oldest first.

    Attributes:
        started_s: when the migration started (monotonic).
        samples: job samples while the job was active.
        events: migration events.
        decisions: decisions taken so far (those with actions or a transition).
        observed_s: the latest time the driver looked, sample or not.

    """

    started_s: float
    samples: tuple[JobSample, ...] = ()
    events: tuple[MigrationEvent, ...] = ()
    decisions: tuple[Decision, ...] = field(default=())
    observed_s: float = 0.0

    def with_sample(self, sample: JobSample) -> History:
        """A copy with one more sample."""
        return replace(self, samples=(*self.samples, sample))

    def with_event(self, event: MigrationEvent) -> History:
        """A copy with one more event."""
        return replace(self, events=(*self.events, event))

    def with_decision(self, decision: Decision) -> History:
        """A copy with one more decision."""
        return replace(self, decisions=(*self.decisions, decision))

    def with_time(self, now_s: float) -> History:
        """A copy that knows time has reached ``now_s`` (no sample or event needed).

        A paused post-copy may yield neither (libvirt reports no active job), yet
        its wait must still run out.
        """
        return replace(self, observed_s=max(self.observed_s, now_s))

    @property
    def now_s(self) -> float:
        """Time of the newest input."""
        times = [self.started_s, self.observed_s]
        if self.samples:
            times.append(self.samples[-1].now_s)
        if self.events:
            times.append(self.events[-1].now_s)
        return max(times)

    @property
    def round(self) -> int:
        """Current memory iteration (from samples and iteration events)."""
        rounds = [s.iteration for s in self.samples[-1:]]
        rounds += [e.iteration for e in self.events if e.kind is EventKind.ITERATION]
        return max(rounds, default=0)


# ---- pure predicates ---------------------------------------------------------


def round_dirty_sets(samples: tuple[JobSample, ...]) -> dict[int, int]:
    """Dirty set per round: the most data remaining seen in each round >= 2.

    A round begins right after QEMU synced the dirty bitmap, so its largest
    remaining figure is what the previous round left dirty.
    """
    sets: dict[int, int] = {}
    for s in samples:
        if s.iteration >= 2 and s.is_active:
            sets[s.iteration] = max(sets.get(s.iteration, 0), s.data_remaining_bytes)
    return sets


def bandwidth_bytes_s(samples: tuple[JobSample, ...], policy: MigrationPolicy) -> float:
    """Measured transfer rate (median of recent non-zero readings), else the cap."""
    rates = sorted(s.memory_bps for s in samples[-10:] if s.memory_bps > 0)
    if rates:
        return float(rates[len(rates) // 2])
    return float((policy.bandwidth_mib_s or 100) * MIB)


POSTCOPY_RATHER_THAN_PAUSE_MS: Final = 100
"""Under a guest the forecast sends to post-copy, a pre-copy switchover pausing longer
than this goes to post-copy instead (the issue's pause target for busy guests)."""
ZSTD_STREAMS: Final = 2
"""multifd streams a compressed migration uses at least (one zstd compressor each)."""
_NEVER_MS: Final = 10**9  # no bandwidth measured: nothing fits
QEMU_LIMIT_MARGIN: Final = 1.25
"""Headroom on QEMU's limit over what a dirty set needs: the set varies round to round."""
QEMU_LIMIT_BOUND_FACTOR: Final = 20
"""QEMU's limit stays within this many times the budget when a switchover rate lifts it."""
QEMU_LIMIT_BOUND_MS: Final = 10_000
"""...and within 10 s, whatever the budget (unless the budget itself is larger)."""


def downtime_needed_ms(*, dirty_bytes: int, bandwidth_bytes_s: float) -> int:
    """Pause needed to send ``dirty_bytes`` at ``bandwidth_bytes_s`` (at least 1 ms)."""
    if bandwidth_bytes_s <= 0:
        return _NEVER_MS
    return max(1, math.ceil(dirty_bytes / bandwidth_bytes_s * 1000))


def qemu_limit_bound_ms(policy: MigrationPolicy) -> int:
    """The most the controller ever sets QEMU's downtime limit to.

    QEMU's limit may exceed the budget only on the strength of the switchover
    rate. If that rate is wrong (the final round runs at the capped rate after
    all), the pause *is* QEMU's limit, so the limit is bounded: 20 x the budget,
    at most 10 s, never below the budget itself.

    ===========  =======
    budget (ms)  bound
    ===========  =======
    100          2 000
    500          10 000
    2 000        10 000
    20 000       20 000
    ===========  =======
    """
    budget_ms = policy.max_downtime_ms
    return max(budget_ms, min(QEMU_LIMIT_BOUND_FACTOR * budget_ms, QEMU_LIMIT_BOUND_MS))


@dataclass(frozen=True, slots=True)
class SwitchoverPlan:
    """What switching over one dirty set costs when the final round runs unthrottled.

    QEMU decides with the capped rate (pending <= rate x limit) but sends the
    last round with the cap lifted, so the two numbers differ.

    Attributes:
        dirty_bytes: the dirty set.
        transfer_bytes_s: measured (capped) transfer rate.
        switchover_bytes_s: rate of the final, unthrottled round.
        qemu_rate_bytes_s: the rate QEMU's threshold uses: the transfer rate, or
            the switchover rate once QEMU was told it
            (``MeasuredContext.qemu_knows_switchover_rate``).
        real_pause_ms: estimated pause: the dirty set at the switchover rate
            plus the fixed switchover overhead (``DEFAULT_SWITCHOVER_OVERHEAD_MS``).
        qemu_needed_ms: the least QEMU limit whose threshold admits the set.
        qemu_ceiling_ms: the largest QEMU limit whose admitted data, sent at the
            switchover rate, still pauses within the budget; at most
            ``qemu_limit_bound_ms`` (may be <= 0 if the overhead alone is over).
        budget_ms: the user's downtime budget (the ladder's last rung).

    """

    dirty_bytes: int
    transfer_bytes_s: float
    switchover_bytes_s: float
    qemu_rate_bytes_s: float
    real_pause_ms: int
    qemu_needed_ms: int
    qemu_ceiling_ms: int
    budget_ms: int

    @property
    def fits_budget(self) -> bool:
        """True if the real pause fits the budget and QEMU can be told enough to take it."""
        return self.real_pause_ms <= self.budget_ms and self.qemu_needed_ms <= self.qemu_ceiling_ms

    @property
    def qemu_told_rate(self) -> bool:
        """True if QEMU's threshold uses the switchover rate: its limit is in real-pause terms."""
        return self.qemu_rate_bytes_s == self.switchover_bytes_s

    @property
    def qemu_target_ms(self) -> int:
        """The limit to set: the need plus ``QEMU_LIMIT_MARGIN``, within the ceiling."""
        with_margin = math.ceil(self.qemu_needed_ms * QEMU_LIMIT_MARGIN)
        return max(self.qemu_needed_ms, min(with_margin, self.qemu_ceiling_ms))


def build_context(
    policy: MigrationPolicy,
    *,
    learned_switchover_mib_s: float | None,
    preflight_dirty_mib_s: float | None,
    forecast_says_postcopy: bool,
    compression: tuple[bool, str] = (False, ""),
) -> MeasuredContext:
    """The measurements one migration runs with: the one place the switchover rate is decided.

    The user's ``--switchover-bandwidth`` (``policy.switchover_bandwidth_mib_s``)
    wins over the rate learned from earlier migrations between the same hosts
    (a measurement, never a guess: 0 or None means none was learned).

    =====================  ===========  ====================
    user's override        learned      switchover_mib_s
    =====================  ===========  ====================
    None                   None         None (unknown)
    None                   455.7        455.7
    300.0                  455.7        300.0
    =====================  ===========  ====================

    Args:
        policy: the user's choices (only its override is read).
        learned_switchover_mib_s: the history's rate for this host pair, if any.
        preflight_dirty_mib_s: pre-flight's dirty-rate measurement, if it took one.
        forecast_says_postcopy: the forecast found the rounds cannot shrink.
        compression: zstd over multifd or not, and why (``forecast.choose_compression``).

    Returns:
        The context; ``qemu_knows_switchover_rate`` stays False until the loop
        has seen the source's versions (``converge.loop.migrate``).

    """
    return MeasuredContext(
        switchover_mib_s=policy.switchover_bandwidth_mib_s or learned_switchover_mib_s or None,
        preflight_dirty_mib_s=preflight_dirty_mib_s,
        postcopy_after_first_pass=forecast_says_postcopy,
        compress=compression[0],
        compression_reason=compression[1],
    )


def plan_switchover(
    *,
    dirty_bytes: int,
    transfer_bytes_s: float,
    policy: MigrationPolicy,
    measured: MeasuredContext,
) -> SwitchoverPlan | None:
    """The real pause and QEMU's limit for ``dirty_bytes``, given the switchover rate.

    Worked example (the benchmark: cap 50 MiB/s, switchover 500 MiB/s, budget
    500 ms, overhead 50 ms): a 24.4 MiB dirty set needs ~488 ms at 50.1 MiB/s
    for QEMU's threshold but pauses ~99 ms for real (49 ms + 50 ms); it fits,
    and QEMU is told 610 ms (488 x 1.25). The ceiling, the largest limit whose
    admitted data still pauses within the budget, is (500 - 50) x 500 / 50.1
    = 4 491 ms (well under the 10 s bound).

    Args:
        dirty_bytes: the dirty set to switch over with.
        transfer_bytes_s: measured (capped) transfer rate.
        policy: the budget.
        measured: the switchover rate, and whether QEMU was told it.

    Returns:
        The plan, or None when no switchover rate is known or it is no faster
        than the transfer rate (then dirty set / transfer rate is the pause).

    """
    if measured.switchover_mib_s is None or transfer_bytes_s <= 0:
        return None
    switchover_bytes_s = measured.switchover_mib_s * MIB
    if switchover_bytes_s <= transfer_bytes_s:
        return None
    budget_ms = policy.max_downtime_ms
    qemu_rate = switchover_bytes_s if measured.qemu_knows_switchover_rate else transfer_bytes_s
    # Admitting pending <= qemu rate x limit pauses qemu rate x limit / switchover
    # + overhead; solve that for the budget.
    admits_ms = (budget_ms - DEFAULT_SWITCHOVER_OVERHEAD_MS) * switchover_bytes_s / qemu_rate
    return SwitchoverPlan(
        dirty_bytes=dirty_bytes,
        transfer_bytes_s=transfer_bytes_s,
        switchover_bytes_s=switchover_bytes_s,
        qemu_rate_bytes_s=qemu_rate,
        real_pause_ms=downtime_needed_ms(
            dirty_bytes=dirty_bytes, bandwidth_bytes_s=switchover_bytes_s
        )
        + DEFAULT_SWITCHOVER_OVERHEAD_MS,
        qemu_needed_ms=downtime_needed_ms(dirty_bytes=dirty_bytes, bandwidth_bytes_s=qemu_rate),
        qemu_ceiling_ms=min(qemu_limit_bound_ms(policy), math.floor(admits_ms)),
        budget_ms=budget_ms,
    )


def current_downtime_ms(history: History, policy: MigrationPolicy) -> int:
    """The downtime limit last set (the ladder's first rung before any)."""
    for decision in reversed(history.decisions):
        for action in reversed(decision.actions):
            if isinstance(action, SetMaxDowntime):
                return action.downtime_ms
    return policy.initial_downtime_ms


def current_throttle_percent(history: History) -> int:
    """The throttle cap last set (0: none)."""
    for decision in reversed(history.decisions):
        for action in reversed(decision.actions):
            if isinstance(action, Throttle):
                return action.percent
    return 0


def _last_escalation_round(history: History) -> int:
    for decision in reversed(history.decisions):
        if decision.actions:
            return decision.round
    return 0


def is_stalled(history: History, policy: MigrationPolicy) -> bool:
    """True when ``stall_rounds`` rounds since the last escalation found no new minimum."""
    sets = round_dirty_sets(history.samples)
    since = _last_escalation_round(history)
    recent = [r for r in sorted(sets) if r > since][-policy.stall_rounds :]
    if len(recent) < policy.stall_rounds:
        return False
    before = [v for r, v in sets.items() if r < recent[0]]
    if not before:
        return False
    return min(sets[r] for r in recent) >= min(before)


def _fmt_mib(n_bytes: float) -> str:
    return f"{n_bytes / MIB:.1f} MiB"


def _pause_text(plan: SwitchoverPlan) -> str:
    """Both numbers: the real pause, and what QEMU's threshold needs."""
    real = (
        f"~{plan.real_pause_ms} ms real pause at {_fmt_mib(plan.switchover_bytes_s)}/s unthrottled"
    )
    qemu = (
        f"QEMU's threshold needs ~{plan.qemu_needed_ms} ms at the capped "
        f"{_fmt_mib(plan.transfer_bytes_s)}/s"
        if not plan.qemu_told_rate
        else f"QEMU, told that rate, needs a limit of ~{plan.qemu_needed_ms} ms"
    )
    if plan.real_pause_ms > plan.budget_ms:
        return (
            f"~{plan.real_pause_ms} ms real pause even at {_fmt_mib(plan.switchover_bytes_s)}/s "
            f"unthrottled, over the {plan.budget_ms} ms budget"
        )
    if not plan.fits_budget:
        return f"{real}, but {qemu}, above the {plan.qemu_ceiling_ms} ms we let it plan"
    return f"{real} (within the {plan.budget_ms} ms budget); {qemu}"


def _new_events(history: History) -> list[MigrationEvent]:
    last_s = history.decisions[-1].at_s if history.decisions else -math.inf
    return [e for e in history.events if e.now_s > last_s]


# ---- the step ----------------------------------------------------------------


def advance(
    state: State, history: History, policy: MigrationPolicy, measured: MeasuredContext
) -> tuple[Decision, History]:
    """One controller step: decide, check the transition, record the decision.

    The decision joins the history when it acts, explains or moves; the driver
    and trace replays both step through here.

    Raises:
        AssertionError: ``step`` chose a transition ``TRANSITIONS`` forbids (a bug).

    """
    decision = step(state, history, policy, measured)
    if decision.next_state not in TRANSITIONS[state]:
        msg = f"controller bug: {state} -> {decision.next_state} is not allowed"
        raise AssertionError(msg)
    if decision.actions or decision.reason or decision.next_state is not state:
        history = history.with_decision(decision)
    return decision, history


def replay(
    samples: Sequence[JobSample],
    policy: MigrationPolicy,
    measured: MeasuredContext,
    events: Sequence[MigrationEvent] = (),
    *,
    started_s: float = 0.0,
) -> tuple[State, History]:
    """Feed recorded samples through ``advance`` as the driver would; return where it ended.

    One step per sample, events added by time, until a terminal state.
    """
    state = State.SETUP
    history = History(started_s=started_s)
    pending = sorted(events, key=lambda e: e.now_s)
    for sample in samples:
        while pending and pending[0].now_s <= sample.now_s:
            history = history.with_event(pending.pop(0))
        decision, history = advance(state, history.with_sample(sample), policy, measured)
        state = decision.next_state
        if state in TERMINAL:
            break
    return state, history


def step(  # noqa: PLR0911  one return per rule, in priority order
    state: State, history: History, policy: MigrationPolicy, measured: MeasuredContext
) -> Decision:
    """Decide what to do next.

    Args:
        state: the current state.
        history: samples, events and past decisions.
        policy: the user's budget and allowed escalations.
        measured: what was measured or learned (switchover rate, pre-flight's
            dirty rate, the forecast's verdict).

    Returns:
        The decision; ``next_state`` is always allowed by ``TRANSITIONS``.

    """
    now_s = history.now_s
    rnd = history.round

    def decide(nxt: State, rule: Rule, reason: str, *actions: Action) -> Decision:
        return Decision(
            next_state=nxt, actions=actions, reason=reason, at_s=now_s, round=rnd, rule=rule
        )

    if state in TERMINAL:
        return decide(state, Rule.CARRY_ON, "")
    new = _new_events(history)
    kinds = {e.kind for e in new}
    if EventKind.JOB_COMPLETED in kinds:
        return decide(State.COMPLETED, Rule.JOB_COMPLETED, "the migration job completed")
    if state in _POSTCOPY:
        return _step_postcopy(state, history, policy, new, decide)
    if EventKind.JOB_FAILED in kinds:
        detail = next(e.detail for e in new if e.kind is EventKind.JOB_FAILED)
        reason = f"the migration job ended without completing: {detail}"
        return decide(State.ABORTED, Rule.JOB_FAILED, reason)
    stuck = _prepare_stuck(state, history, policy, decide)
    if stuck is not None or state is State.ABORTING:
        return stuck or decide(State.ABORTING, Rule.CARRY_ON, "")
    if EventKind.CANCEL_REQUESTED in kinds:
        return decide(
            State.ABORTING,
            Rule.CANCEL,
            "cancelled by the user",
            Abort("cancelled by the user"),
        )
    if not history.decisions:
        actions: list[Action] = [SetMaxDowntime(policy.initial_downtime_ms)]
        if policy.allows_throttle:
            actions.append(Throttle(0))
        return decide(
            state,
            Rule.START,
            f"start with the tightest downtime, {policy.initial_downtime_ms} ms",
            *actions,
        )
    return _step_precopy(state, history, policy, measured, decide)


class _Decide(Protocol):
    def __call__(self, nxt: State, rule: Rule, reason: str, *actions: Action) -> Decision: ...


def nothing_sent(history: History) -> bool:
    """The job's statistics say no memory or disk byte has left the source yet.

    False without any statistics: a job that cannot be read is not known to be stuck.
    """
    return bool(history.samples) and all(
        s.memory_total_bytes == 0 and s.data_processed_bytes == 0 and s.disk_processed_bytes == 0
        for s in history.samples
    )


def _prepare_stuck(
    state: State, history: History, policy: MigrationPolicy, decide: _Decide
) -> Decision | None:
    """The decision for a prepare step past ``prepare_timeout_s`` (once), else None.

    libvirt's abort does not end a prepare step that hangs on the destination
    (seen: a libvirtd child deadlocked before it became QEMU), so nothing is
    aborted here: ``FreeStuckPrepare`` asks the destination, which ends a
    process that never became QEMU (the prepare step then fails, and the job
    with it) and leaves a QEMU that only starts slowly (preallocating a large
    guest's memory) to finish. Also in ABORTING: a timeout or Ctrl-C may have
    asked for an abort that cannot take effect.
    """
    waited_s = history.now_s - history.started_s
    if (
        state not in {State.SETUP, State.ABORTING}
        or waited_s < policy.prepare_timeout_s
        or not nothing_sent(history)
        or any(d.rule is Rule.PREPARE_STUCK for d in history.decisions)
    ):
        return None
    reason = (
        f"the destination has not started the incoming guest after {waited_s:.0f} s "
        f"(libvirt's prepare step; nothing sent; prepare_timeout_s is "
        f"{policy.prepare_timeout_s:g} s)"
    )
    return decide(state, Rule.PREPARE_STUCK, reason, FreeStuckPrepare(round(waited_s, 1)))


def _phase_state(state: State, history: History) -> State:
    if state is State.THROTTLING or not history.samples:
        return state
    last = history.samples[-1]
    if last.iteration >= 2:
        return State.CONVERGING
    if last.memory_total_bytes > 0:
        return State.BULK_COPY
    return state


def _step_precopy(
    state: State,
    history: History,
    policy: MigrationPolicy,
    measured: MeasuredContext,
    decide: _Decide,
) -> Decision:
    elapsed_s = history.now_s - history.started_s
    phase = _phase_state(state, history)
    if elapsed_s >= policy.max_duration_s:
        reason = (
            f"did not converge within the {policy.max_duration_s:g} s time budget "
            f"(--timeout) at a downtime of up to {policy.max_downtime_ms} ms"
        )
        return decide(State.ABORTING, Rule.TIME_BUDGET_ABORT, reason, Abort(reason))
    if (
        policy.allow_postcopy
        and phase is not State.SETUP
        and elapsed_s >= policy.max_duration_s * policy.postcopy_after_fraction
    ):
        return decide(
            State.POSTCOPY,
            Rule.TIME_BUDGET_POSTCOPY,
            f"{elapsed_s:.0f} s spent, past {policy.postcopy_after_fraction:.0%} of the "
            f"{policy.max_duration_s:g} s budget: switch to post-copy so it can finish",
            StartPostCopy(),
        )
    entered = "" if phase is state else f"entered {phase.value} (round {history.round})"
    moved = Rule.CARRY_ON if phase is state else Rule.ENTER_PHASE
    if phase not in {State.CONVERGING, State.THROTTLING}:
        return decide(phase, moved, entered)
    sets = round_dirty_sets(history.samples)
    bw = bandwidth_bytes_s(history.samples, policy)
    best = min(sets.values())
    plan = plan_switchover(dirty_bytes=best, transfer_bytes_s=bw, policy=policy, measured=measured)
    at_minimum = (
        _postcopy_rather_than_a_long_pause(
            history, policy, measured, decide, plan, best=best, bw=bw
        )
        or _switch_over_at_minimum(
            phase, history, policy, measured, decide, sets=sets, bw=bw, plan=plan
        )
        or _postcopy_after_first_pass(history, policy, measured, decide, plan, best=best, bw=bw)
    )
    if at_minimum is not None:
        return at_minimum
    if not is_stalled(history, policy):
        return decide(phase, moved, entered)
    return _escalate(phase, history, policy, decide, plan, best=best, bw=bw)


def _qemu_admits(
    history: History, policy: MigrationPolicy, plan: SwitchoverPlan | None, *, best: int, bw: float
) -> bool:
    """True if QEMU's current limit already admits ``best``: it switches over by itself."""
    rate = plan.qemu_rate_bytes_s if plan is not None else bw
    needed_ms = downtime_needed_ms(dirty_bytes=best, bandwidth_bytes_s=rate)
    return current_downtime_ms(history, policy) >= needed_ms


def _switch_over_at_minimum(  # noqa: PLR0913  all keyword-only context of one rule
    phase: State,
    history: History,
    policy: MigrationPolicy,
    measured: MeasuredContext,
    decide: _Decide,
    *,
    sets: dict[int, int],
    bw: float,
    plan: SwitchoverPlan | None,
) -> Decision | None:
    """Raise QEMU's limit to switch over at a new minimum of the dirty set, if it fits.

    This round's dirty set is the best so far and fits the budget, so let QEMU
    finish now rather than wait for a rung. With a known switchover rate the
    budget is judged against the real pause and QEMU gets what its threshold
    needs; otherwise QEMU gets a rung of the ladder.
    """
    rnd = history.round
    best = min(sets.values())
    downtime_ms = current_downtime_ms(history, policy)
    best_needed_ms = downtime_needed_ms(dirty_bytes=best, bandwidth_bytes_s=bw)
    if (
        rnd not in sets
        or sets[rnd] != best
        or _qemu_admits(history, policy, plan, best=best, bw=bw)
    ):
        return None
    fit = _smallest_rung_at_least(policy, math.ceil(best_needed_ms * QEMU_LIMIT_MARGIN))
    rung_fits = fit is not None and fit > downtime_ms
    if not ((plan is not None and plan.fits_budget) or rung_fits):
        return None
    waiting = _worth_another_round(history, policy, measured, sets=sets, bw=bw, plan=plan)
    if waiting is not None:
        already = any(d.round == rnd and d.rule is Rule.WAIT_FOR_SHRINK for d in history.decisions)
        reason = "" if already else f"round {rnd} left {_fmt_mib(best)}: {waiting}"
        return decide(phase, Rule.WAIT_FOR_SHRINK, reason)
    if plan is not None and plan.fits_budget:
        return decide(
            phase,
            Rule.SWITCH_AT_MINIMUM,
            f"round {rnd} left {_fmt_mib(best)}, a new minimum: {_pause_text(plan)}: "
            f"set it to {plan.qemu_target_ms} ms to switch over now",
            SetMaxDowntime(plan.qemu_target_ms),
        )
    assert fit is not None  # noqa: S101  ``fits`` without a fitting plan means a rung fits
    return decide(
        phase,
        Rule.SWITCH_AT_MINIMUM,
        f"round {rnd} left {_fmt_mib(best)}, a new minimum that needs "
        f"~{best_needed_ms} ms at {_fmt_mib(bw)}/s: allow {fit} ms to switch over now",
        SetMaxDowntime(fit),
    )


def expected_shrink(
    history: History, sets: dict[int, int], bw: float, *, preflight_dirty_bytes_s: float = 0.0
) -> float | None:
    """The share of this round's dirty set the next round is expected to leave.

    The larger (the more cautious) of two readings: the guest's dirty rate over
    the transfer rate (the next round lasts set / bw and the guest dirties at
    its rate meanwhile), and this round's set over the previous round's. The
    dirty rate is QEMU's once it has reported one, else pre-flight's
    measurement (``preflight_dirty_bytes_s``, 0: none). None when nothing is known.
    """
    readings = []
    last = history.samples[-1] if history.samples else None
    qemu_reported = any(s.memory_dirty_rate_pages_s > 0 for s in history.samples)
    if last is not None and qemu_reported and bw > 0:
        readings.append(last.memory_dirty_rate_pages_s * last.memory_page_size / bw)
    elif preflight_dirty_bytes_s > 0 and bw > 0:
        readings.append(preflight_dirty_bytes_s / bw)
    rnd = history.round
    if rnd in sets and sets.get(rnd - 1, 0) > 0:
        readings.append(sets[rnd] / sets[rnd - 1])
    return max(readings) if readings else None


def _worth_another_round(  # noqa: PLR0913  all keyword-only context of one rule
    history: History,
    policy: MigrationPolicy,
    measured: MeasuredContext,
    *,
    sets: dict[int, int],
    bw: float,
    plan: SwitchoverPlan | None,
) -> str | None:
    """Why one more pre-copy round is worth waiting for, or None to switch over now.

    The budget is a ceiling, not a target. While the rounds still shrink fast
    (the next is expected to leave at most ``WAIT_WHILE_SHRINK_AT_MOST`` of
    this one), another round costs less time than this one did and should at
    least halve the pause; so wait, unless the pause already fits the tightest
    rung or the round would run into the time budget's escalation point.
    """
    if measured.postcopy_after_first_pass:
        return None  # the forecast measured rounds that cannot shrink: no reason to wait
    best = min(sets.values())
    preflight = (measured.preflight_dirty_mib_s or 0.0) * MIB
    shrink = expected_shrink(history, sets, bw, preflight_dirty_bytes_s=preflight)
    if shrink is None or shrink > WAIT_WHILE_SHRINK_AT_MOST:
        return None
    rate = plan.switchover_bytes_s if plan is not None else bw
    data_ms = downtime_needed_ms(dirty_bytes=best, bandwidth_bytes_s=rate)
    if data_ms <= policy.initial_downtime_ms:
        return None
    deadline_s = policy.max_duration_s * (
        policy.postcopy_after_fraction if policy.allow_postcopy else 1.0
    )
    if history.now_s - history.started_s + best / bw >= deadline_s:
        return None
    return (
        f"~{data_ms} ms to send at {_fmt_mib(rate)}/s, and the rounds still shrink "
        f"(the next should leave ~{shrink:.0%} of it): one more round for a shorter pause"
    )


def _postcopy_rather_than_a_long_pause(  # noqa: PLR0913  all context of one rule
    history: History,
    policy: MigrationPolicy,
    measured: MeasuredContext,
    decide: _Decide,
    plan: SwitchoverPlan | None,
    *,
    best: int,
    bw: float,
) -> Decision | None:
    """Post-copy first when the forecast said so and a pre-copy switchover would pause long.

    A set that fits the budget at the known switchover rate could switch over in
    pre-copy, but under a busy guest that pause is 150-250 ms (lab, 50 MiB/s cap);
    post-copy pauses the guest only to hand it over. Above
    ``POSTCOPY_RATHER_THAN_PAUSE_MS`` the pause target wins: post-copy.
    """
    if plan is None or plan.real_pause_ms <= POSTCOPY_RATHER_THAN_PAUSE_MS:
        return None
    why = (
        f"; switching over in pre-copy would pause the guest ~{plan.real_pause_ms} ms, "
        f"over the {POSTCOPY_RATHER_THAN_PAUSE_MS} ms a busy guest's pause should take"
    )
    return _postcopy_after_first_pass(
        history, policy, measured, decide, plan, best=best, bw=bw, why=why
    )


def _postcopy_after_first_pass(  # noqa: PLR0913  all context of one rule
    history: History,
    policy: MigrationPolicy,
    measured: MeasuredContext,
    decide: _Decide,
    plan: SwitchoverPlan | None,
    *,
    best: int,
    bw: float,
    why: str = "",
) -> Decision | None:
    """Post-copy right after the first pass when the forecast said rounds cannot shrink.

    Only while QEMU's limit does not admit the best dirty set yet (if it does, QEMU
    switches over by itself): the ladder would only spend the budget finding out.
    """
    if not (policy.allow_postcopy and measured.postcopy_after_first_pass):
        return None
    if _qemu_admits(history, policy, plan, best=best, bw=bw):
        return None
    return decide(
        State.POSTCOPY,
        Rule.POSTCOPY_AFTER_FIRST_PASS,
        f"first pass done, {_fmt_mib(best)} dirty at {_fmt_mib(bw)}/s, and the forecast "
        f"measured a dirty rate at or above the bandwidth{why}: switch to post-copy now",
        StartPostCopy(),
    )


def _smallest_rung_at_least(policy: MigrationPolicy, needed_ms: int) -> int | None:
    for rung in policy.downtime_schedule:
        if rung.downtime_ms >= needed_ms:
            return rung.downtime_ms
    if needed_ms <= policy.max_downtime_ms * QEMU_LIMIT_MARGIN:
        return policy.max_downtime_ms
    return None


def _escalate(  # noqa: PLR0913  all keyword-only context of one escalation
    phase: State,
    history: History,
    policy: MigrationPolicy,
    decide: _Decide,
    plan: SwitchoverPlan | None,
    *,
    best: int,
    bw: float,
) -> Decision:
    needed = downtime_needed_ms(dirty_bytes=best, bandwidth_bytes_s=bw)
    cost = f"needs ~{needed} ms at {_fmt_mib(bw)}/s" if plan is None else _pause_text(plan)
    stall = (
        f"stalled: {policy.stall_rounds} rounds without a new minimum "
        f"(best dirty set {_fmt_mib(best)}, {cost})"
    )
    downtime_ms = current_downtime_ms(history, policy)
    within = _raise_within_budget(plan, downtime_ms)
    if within is not None:
        limit_ms, why = within
        return decide(phase, Rule.STALL_RAISE_DOWNTIME, f"{stall}: {why}", SetMaxDowntime(limit_ms))
    # The ladder's rungs are limits at the capped rate: not for a QEMU told the real rate.
    # A stall at a limit that should already admit the best set means the sampled sets
    # understate the real one (a round shorter than the sampling interval is seen only
    # near its end, even as 0 bytes): climb one rung rather than trust the estimate.
    fit = (
        None
        if plan is not None and plan.qemu_told_rate
        else _smallest_rung_at_least(policy, max(needed, downtime_ms + 1))
    )
    if fit is not None and fit > downtime_ms:
        why = f"{stall}: raise the downtime to {fit} ms"
        return decide(phase, Rule.STALL_RAISE_DOWNTIME, why, SetMaxDowntime(fit))
    throttle = current_throttle_percent(history)
    higher = [p for p in throttle_steps(policy.max_throttle_percent) if p > throttle]
    if higher:
        return _throttle(policy, decide, plan, stall=stall, downtime_ms=downtime_ms, to=higher[0])
    if policy.allow_postcopy:
        return decide(
            State.POSTCOPY,
            Rule.STALL_POSTCOPY,
            f"{stall}; downtime ladder and throttling exhausted: switch to post-copy",
            StartPostCopy(),
        )
    limits = []
    if not policy.allows_throttle:
        limits.append("throttling")
    limits.append("post-copy")
    pause = f"~{needed} ms at {_fmt_mib(bw)}/s"
    if plan is not None:
        pause = (
            f"~{plan.real_pause_ms} ms real pause at {_fmt_mib(plan.switchover_bytes_s)}/s "
            f"unthrottled ({pause} capped)"
        )
    reason = (
        f"cannot meet the {policy.max_downtime_ms} ms downtime budget: the guest "
        f"re-dirties {_fmt_mib(best)} per round, {pause}, "
        f"and the policy forbids {' and '.join(limits)}"
    )
    return decide(State.ABORTING, Rule.BUDGET_UNMEETABLE, reason, Abort(reason))


def _raise_within_budget(plan: SwitchoverPlan | None, downtime_ms: int) -> tuple[int, str] | None:
    """A higher QEMU limit whose real pause still fits the budget, and why; else None.

    First what the best dirty set needs; if QEMU already has that and still did
    not switch over, the ceiling (all that pauses within the budget unthrottled).
    """
    if plan is None or not plan.fits_budget:
        return None
    if plan.qemu_target_ms > downtime_ms:
        return plan.qemu_target_ms, f"set it to {plan.qemu_target_ms} ms"
    if plan.qemu_ceiling_ms > downtime_ms:
        admits = plan.qemu_ceiling_ms / 1000 * plan.qemu_rate_bytes_s
        return plan.qemu_ceiling_ms, (
            f"QEMU already has {downtime_ms} ms; let it plan up to {plan.qemu_ceiling_ms} ms "
            f"({_fmt_mib(admits)}, which still pauses within the {plan.budget_ms} ms "
            "budget unthrottled)"
        )
    return None


def _throttle(  # noqa: PLR0913  all keyword-only context of one escalation
    policy: MigrationPolicy,
    decide: _Decide,
    plan: SwitchoverPlan | None,
    *,
    stall: str,
    downtime_ms: int,
    to: int,
) -> Decision:
    """Throttle the guest, and let QEMU take all the budget allows while it slows down.

    Without a switchover rate that is the budget itself; with one, the ceiling
    (QEMU's limit whose admitted data pauses within the budget unthrottled).
    """
    budget_ms = policy.max_downtime_ms
    if plan is None:
        limit_ms = budget_ms
    elif plan.qemu_told_rate:
        limit_ms = max(1, plan.qemu_ceiling_ms)  # QEMU's limit is in real-pause terms
    else:
        limit_ms = max(budget_ms, plan.qemu_ceiling_ms)
    raise_downtime: tuple[Action, ...] = (
        (SetMaxDowntime(limit_ms),) if downtime_ms < limit_ms else ()
    )
    if plan is None:
        why = f"the downtime budget of {budget_ms} ms cannot cover it"
    elif plan.fits_budget:
        why = f"QEMU's limit of {downtime_ms} ms already admits all that fits the budget"
    else:
        why = f"the {budget_ms} ms budget cannot cover it even unthrottled"
    if raise_downtime and limit_ms > budget_ms:
        why += f" (QEMU may plan up to {limit_ms} ms meanwhile: that pauses within it unthrottled)"
    return decide(
        State.THROTTLING,
        Rule.STALL_THROTTLE,
        f"{stall}; {why}: throttle the guest's CPUs up to {to}%",
        *raise_downtime,
        Throttle(to),
    )


def _step_postcopy(  # noqa: PLR0911  one return per post-copy rule
    state: State,
    history: History,
    policy: MigrationPolicy,
    new: list[MigrationEvent],
    decide: _Decide,
) -> Decision:
    kinds = {e.kind for e in new}
    if EventKind.CANCEL_REQUESTED in kinds:
        return decide(
            state,
            Rule.CANCEL_REFUSED,
            "cancel refused: post-copy has started, the guest already runs on the "
            "destination and part of its memory is only there; it must finish",
        )
    broken = bool(kinds & {EventKind.POSTCOPY_PAUSED, EventKind.JOB_FAILED})
    if state is State.POSTCOPY:
        if broken:
            return _libvirt_paused(decide)
        if not _postcopy_stuck(history, policy):
            return decide(state, Rule.CARRY_ON, "")
        if policy.postcopy_pause_on_stall:
            return decide(
                State.POSTCOPY,
                Rule.POSTCOPY_PAUSE_STALLED,
                f"post-copy moved no data for {policy.postcopy_stall_s:g} s: pause it so "
                "it can be resumed over a fresh connection",
                PausePostCopy(),
            )
        return decide(
            State.POSTCOPY_PAUSED,
            Rule.POSTCOPY_LINK_STALLED,
            f"post-copy link stalled: no data moved for {policy.postcopy_stall_s:g} s; the "
            "guest waits on the destination for pages still on the source; waiting up to "
            f"{policy.postcopy_resume_wait_s:g} s for the link (the connection stays open, "
            "nothing to resume)",
        )
    # POSTCOPY_PAUSED: stalled (waiting for the link) or paused by libvirt (resuming)
    since_s = _paused_since(history)
    resuming = _is_resuming(history)
    if EventKind.POSTCOPY_RESUMED in kinds or _moved_since(history, since_s):
        how = "POSTCOPY_RESUME" if resuming else "the link came back, same connection"
        return decide(
            State.POSTCOPY,
            Rule.POSTCOPY_RECOVERED,
            f"post-copy recovered after {history.now_s - since_s:.1f} s ({how})",
        )
    if broken and not resuming:
        return _libvirt_paused(decide)
    if history.now_s - since_s > policy.postcopy_resume_wait_s:
        return decide(
            State.FAILED, Rule.POSTCOPY_GAVE_UP, _gave_up_reason(policy, resuming=resuming)
        )
    if resuming:
        return decide(State.POSTCOPY_PAUSED, Rule.POSTCOPY_RESUME, "", ResumePostCopy())
    return decide(State.POSTCOPY_PAUSED, Rule.CARRY_ON, "")


def _libvirt_paused(decide: _Decide) -> Decision:
    return decide(
        State.POSTCOPY_PAUSED,
        Rule.POSTCOPY_LINK_BROKEN,
        "post-copy link broken: libvirt paused the migration (the guest waits on the "
        "destination); resume it (POSTCOPY_RESUME) when the link is back",
        ResumePostCopy(),
    )


def _gave_up_reason(policy: MigrationPolicy, *, resuming: bool) -> str:
    head = (
        f"post-copy did not recover within {policy.postcopy_resume_wait_s:g} s "
        "(postcopy_resume_wait_s): the guest runs on the destination, paused on the "
        "pages it still needs, and those pages exist only on the source; keep both "
        "hosts up and do not destroy either copy"
    )
    if resuming:
        return (
            f"{head}; once the link is back, resume with: virsh migrate --live --p2p "
            "--postcopy --postcopy-resume (same destination URI and flags)"
        )
    return f"{head}; libvirt carries on by itself once the link between the hosts is back"


def _episode(history: History) -> list[Decision]:
    """Decisions of the current paused episode (the latest run of POSTCOPY_PAUSED)."""
    out: list[Decision] = []
    for decision in reversed(history.decisions):
        if decision.next_state is not State.POSTCOPY_PAUSED:
            break
        out.append(decision)
    return out[::-1]


def _paused_since(history: History) -> float:
    episode = _episode(history)
    return episode[0].at_s if episode else history.now_s


def _is_resuming(history: History) -> bool:
    return any(isinstance(a, ResumePostCopy) for d in _episode(history) for a in d.actions)


def _moved_since(history: History, since_s: float) -> bool:
    """True once a sample after ``since_s`` shows more data sent than the last one before."""
    before = [s.data_processed_bytes for s in history.samples if s.now_s <= since_s]
    after = [s.data_processed_bytes for s in history.samples if s.now_s > since_s]
    return bool(before and after and after[-1] > before[-1])


def _postcopy_stuck(history: History, policy: MigrationPolicy) -> bool:
    started = next(
        (d.at_s for d in reversed(history.decisions) if d.next_state is State.POSTCOPY), None
    )
    if started is None:
        return False
    for d in reversed(history.decisions):
        if d.at_s <= started:
            break
        if any(isinstance(a, PausePostCopy | ResumePostCopy) for a in d.actions):
            started = d.at_s
            break
    window = [s for s in history.samples if s.now_s >= started]
    if not window or history.now_s - started < policy.postcopy_stall_s:
        return False
    last = window[-1].data_processed_bytes
    moved_at = max((s.now_s for s in window if s.data_processed_bytes != last), default=started)
    return history.now_s - moved_at >= policy.postcopy_stall_s


def is_abortable(state: State) -> bool:
    """True while aborting leaves the guest whole on the source (pre-copy)."""
    return state in _PRECOPY or state is State.ABORTING


def stream_policy(policy: MigrationPolicy, measured: MeasuredContext) -> MigrationPolicy:
    """The policy as this migration's stream lets the controller apply it.

    Compressed (``measured.compress``): zstd over at least 2 multifd streams, and
    no post-copy (QEMU cannot combine multifd with it), so a stall escalates to
    throttling instead. Otherwise: no compression, whatever ``auto`` was.
    """
    if not measured.compress:
        return replace(policy, compression=Compression.NONE)
    return replace(
        policy,
        compression=Compression.ZSTD,
        parallel_connections=max(ZSTD_STREAMS, policy.parallel_connections),
        allow_postcopy=False,
    )
