"""Forecast of a pre-copy live migration from its dirty rate and bandwidth.

Pure: no I/O, no clock, no logging.

The model is the classic pre-copy recurrence (Clark et al., NSDI 2005; the
"physical limits" in ANCHORS.md). Round 1 sends the guest's non-zero memory
``M`` at bandwidth ``B`` (QEMU sends zero pages as a few bytes, so the data of
the bulk pass is what the guest has touched, not its RAM size). While a round
of ``P`` MiB takes ``P/B`` seconds, the guest dirties ``R*P/B`` MiB (at most
its working set ``W``): that is the next round. QEMU stops the guest and sends
the rest once the pending data fits in the downtime budget, ``P <= B * d``,
unless the rounds still shrink fast: like the controller, a fitting round is let
pass while the next should leave at most half of it (``_waits``).

``rho = R/B`` decides: below 1 the rounds shrink geometrically; at or above 1
they never do, and only throttling the guest or post-copy finishes the move.

Worked table (M = 100 MiB, B = 100 MiB/s, d = 300 ms so the last round may
hold 30 MiB, switchover overhead 50 ms, no working-set cap)::

    R MiB/s  rho   round data (MiB)                rounds  total s  downtime ms  strategy
    ------   ----  ------------------------------  ------  -------  -----------  ----------------
      10     0.1   100, 10 (wait), 1 -> stop          4     1.16        60       pre-copy
      50     0.5   100, 50, 25 (wait) ... 1.6         8     2.03        66       pre-copy
      90     0.9   100, 90, 81, 72.9, ... 28.2       14     7.51       332       pre-copy

("rounds" counts as QEMU's ``memory_iteration`` does: the setup sync plus one
per pass, the final stop-and-copy included.)
      97     0.97  100, 97, 94, ... 40.1 at round 30  -      -          -        throttle
     120     1.2   100, 120, 144, ... grows          -      -          -        post-copy

(At rho = 0.97 the rounds shrink too slowly: after 30 rounds 40 MiB are still
pending; slowing the guest lowers R, so auto-converge/dirty-limit can finish.
A working-set cap W bounds every round at W MiB: it helps only once R*P/B > W.)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Final

from libvirt_vmotion.model import Compression
from libvirt_vmotion.policy import DEFAULT_INITIAL_DOWNTIME_MS

DEFAULT_MAX_DOWNTIME_MS: Final = 300
"""QEMU's default downtime limit."""
DEFAULT_SWITCHOVER_OVERHEAD_MS: Final = 50
"""Fixed cost of the switchover beyond sending the last round (device state, pause/resume
handshakes); 50-140 ms measured for a small TCG guest in the lab (LAB-NOTES)."""
DEFAULT_MAX_ROUNDS: Final = 30
"""QEMU keeps iterating forever; beyond this many rounds we call it not converging."""
WAIT_WHILE_SHRINK_AT_MOST: Final = 0.5
"""The controller lets a fitting round pass while the next is expected to leave at most
this share of it (``convergence``): one more, shorter round for a shorter pause."""


class Strategy(StrEnum):
    """How ``migrate`` should start, given the forecast."""

    PRECOPY = "pre-copy"
    """Plain pre-copy converges within the downtime budget."""
    THROTTLE = "pre-copy+throttle"
    """The rounds stop shrinking above the budget: slow the guest (auto-converge/dirty-limit)."""
    POSTCOPY = "post-copy"
    """The guest dirties memory as fast as we send it: switch to post-copy after one pass."""


class RateOrigin(StrEnum):
    """Where the forecast's bandwidth comes from (decisions read this, not the printout)."""

    CAP = "cap"
    """The user's bandwidth cap."""
    LINK = "link"
    """The link, measured by our agents just now."""
    LEARNED = "learned"
    """What the sender achieved in earlier migrations between the two hosts."""
    ASSUMED = "assumed"
    """Nothing known: a default."""


@dataclass(frozen=True, slots=True)
class ForecastInputs:
    """What the forecast is computed from (printed with it).

    Attributes:
        memory_mib: data of the first (bulk) round: the guest's non-zero memory.
        dirty_rate_mib_s: measured guest dirty rate.
        bandwidth_mib_s: migration bandwidth (the cap, or measured).
        max_downtime_ms: the downtime budget.
        working_set_mib: most memory the guest dirties per round (None: unbounded).
        switchover_overhead_ms: fixed switchover cost.
        bandwidth_source: where the bandwidth comes from, in words (for the printout).
        bandwidth_origin: the same as a value (for decisions: ``choose_compression``).
        switchover_bandwidth_mib_s: rate of the final stop-and-copy round. QEMU
            does not rate-limit the switchover (LAB-NOTES), so under a cap this
            is the link's speed; None means ``bandwidth_mib_s``.

    """

    memory_mib: float
    dirty_rate_mib_s: float
    bandwidth_mib_s: float
    max_downtime_ms: int = DEFAULT_MAX_DOWNTIME_MS
    working_set_mib: float | None = None
    switchover_overhead_ms: int = DEFAULT_SWITCHOVER_OVERHEAD_MS
    bandwidth_source: str = "cap"
    bandwidth_origin: RateOrigin = RateOrigin.CAP
    switchover_bandwidth_mib_s: float | None = None
    memory_source: str = ""
    """How ``memory_mib`` was obtained (for the printout)."""
    initial_downtime_ms: int = DEFAULT_INITIAL_DOWNTIME_MS
    """The controller's tightest rung (see ``_waits``)."""

    def __post_init__(self) -> None:
        """Validate: sizes and rates must be usable numbers."""
        if self.bandwidth_mib_s <= 0:
            msg = f"bandwidth_mib_s={self.bandwidth_mib_s}: must be > 0"
            raise ValueError(msg)
        if self.memory_mib < 0 or self.dirty_rate_mib_s < 0:
            msg = f"memory_mib={self.memory_mib}, dirty_rate_mib_s={self.dirty_rate_mib_s}: >= 0"
            raise ValueError(msg)
        if self.max_downtime_ms <= 0:
            msg = f"max_downtime_ms={self.max_downtime_ms}: must be > 0"
            raise ValueError(msg)


@dataclass(frozen=True, slots=True)
class Forecast:
    """The prediction.

    Attributes:
        converges: plain pre-copy finishes within ``max_rounds`` and the budget.
        rounds: QEMU's ``memory_iteration`` at completion: one dirty-bitmap sync
            at setup plus one per pass (bulk, iterations, final stop-and-copy);
            0 if it does not converge.
        total_time_s: predicted migration time (None if it does not converge).
        expected_downtime_ms: last round / B + overhead (None if no convergence).
        data_mib: total memory data sent (None if no convergence).
        rho: dirty rate / bandwidth.
        strategy: how to start.
        reason: one sentence saying why.

    """

    inputs: ForecastInputs
    converges: bool
    rounds: int
    total_time_s: float | None
    expected_downtime_ms: float | None
    data_mib: float | None
    rho: float
    strategy: Strategy
    reason: str

    def to_dict(self) -> dict[str, object]:
        """JSON form: prediction and inputs."""
        i = self.inputs
        return {
            "converges": self.converges,
            "rounds": self.rounds,
            "total_time_s": None if self.total_time_s is None else round(self.total_time_s, 2),
            "expected_downtime_ms": None
            if self.expected_downtime_ms is None
            else round(self.expected_downtime_ms),
            "data_mib": None if self.data_mib is None else round(self.data_mib, 1),
            "rho": round(self.rho, 3),
            "strategy": self.strategy.value,
            "reason": self.reason,
            "inputs": {
                "memory_mib": round(i.memory_mib, 1),
                "dirty_rate_mib_s": round(i.dirty_rate_mib_s, 1),
                "bandwidth_mib_s": round(i.bandwidth_mib_s, 1),
                "bandwidth_source": i.bandwidth_source,
                "max_downtime_ms": i.max_downtime_ms,
                "working_set_mib": i.working_set_mib,
                "switchover_overhead_ms": i.switchover_overhead_ms,
                "switchover_bandwidth_mib_s": i.switchover_bandwidth_mib_s,
                "memory_source": i.memory_source,
            },
        }


@dataclass(frozen=True, slots=True)
class _Progress:
    """Where the simulated pre-copy stands at the start of a round.

    Attributes:
        pending: data of this round (MiB).
        previous: data of the round before (None in the bulk round and the first after).
        sent: data sent by the rounds before (MiB).
        elapsed_s: time those rounds took.
        waited: fitting rounds let pass so far (``_waits``).

    """

    pending: float
    previous: float | None = None
    sent: float = 0.0
    elapsed_s: float = 0.0
    waited: int = 0


def forecast(inputs: ForecastInputs, *, max_rounds: int = DEFAULT_MAX_ROUNDS) -> Forecast:
    """Predict the pre-copy migration described by ``inputs`` (see the module table).

    Args:
        inputs: memory, dirty rate, bandwidth, downtime budget.
        max_rounds: give up on convergence after this many rounds.

    Returns:
        The forecast; ``strategy`` says how ``migrate`` should start.

    """
    bw = inputs.bandwidth_mib_s
    rho = inputs.dirty_rate_mib_s / bw
    budget_mib = bw * inputs.max_downtime_ms / 1000
    # QEMU decides with the capped rate but sends the last round unthrottled.
    switch_bw = max(bw, inputs.switchover_bandwidth_mib_s or bw)
    now = _Progress(pending=inputs.memory_mib)
    for round_no in range(1, max_rounds + 1):
        fits = round_no > 1 and now.pending <= budget_mib
        if fits and _waits(inputs, now.pending, now.previous, rho=rho, switch_bw=switch_bw):
            now = replace(now, waited=now.waited + 1)
        elif fits:
            return _stop_and_copy(
                inputs, now, round_no=round_no, rho=rho, budget_mib=budget_mib, switch_bw=switch_bw
            )
        now = _next_round(inputs, now, round_no=round_no)
    return _no_convergence(inputs, now, rho=rho, budget_mib=budget_mib, max_rounds=max_rounds)


def _next_round(inputs: ForecastInputs, now: _Progress, *, round_no: int) -> _Progress:
    """Send this round at the bandwidth while the guest dirties the next one."""
    round_s = now.pending / inputs.bandwidth_mib_s
    dirtied = inputs.dirty_rate_mib_s * round_s
    if inputs.working_set_mib is not None:
        dirtied = min(dirtied, inputs.working_set_mib)
    return _Progress(
        pending=dirtied,
        previous=now.pending if round_no > 1 else None,
        sent=now.sent + now.pending,
        elapsed_s=now.elapsed_s + round_s,
        waited=now.waited,
    )


def _stop_and_copy(  # noqa: PLR0913  the simulation's state, all keyword-only
    inputs: ForecastInputs,
    now: _Progress,
    *,
    round_no: int,
    rho: float,
    budget_mib: float,
    switch_bw: float,
) -> Forecast:
    """The forecast when round ``round_no`` is sent with the guest paused."""
    downtime_ms = now.pending / switch_bw * 1000 + inputs.switchover_overhead_ms
    waited = (
        f", after {now.waited} fitting round(s) let pass while the rounds still "
        "shrank fast (for a shorter pause)"
        if now.waited
        else ""
    )
    return Forecast(
        inputs=inputs,
        converges=True,
        rounds=round_no + 1,  # + the setup sync, as QEMU counts
        total_time_s=now.elapsed_s + downtime_ms / 1000,
        expected_downtime_ms=downtime_ms,
        data_mib=now.sent + now.pending,
        rho=rho,
        strategy=Strategy.PRECOPY,
        reason=f"dirty rate is {rho:.0%} of bandwidth; round {round_no} "
        f"({now.pending:.1f} MiB) fits the {inputs.max_downtime_ms} ms budget "
        f"({budget_mib:.1f} MiB){waited}",
    )


def _no_convergence(
    inputs: ForecastInputs, now: _Progress, *, rho: float, budget_mib: float, max_rounds: int
) -> Forecast:
    """The forecast when no round fits: post-copy if rounds grow, else throttle."""
    if rho >= 1:
        strategy = Strategy.POSTCOPY
        reason = (
            f"the guest dirties {inputs.dirty_rate_mib_s:.0f} MiB/s, {rho:.0%} of the "
            f"{inputs.bandwidth_mib_s:.0f} MiB/s bandwidth: pre-copy rounds never shrink; "
            "switch to post-copy after the first pass"
        )
    else:
        strategy = Strategy.THROTTLE
        reason = (
            f"after {max_rounds} rounds {now.pending:.1f} MiB stay pending, above the "
            f"{budget_mib:.1f} MiB the {inputs.max_downtime_ms} ms budget allows: slow the "
            "guest (auto-converge) or raise the downtime/bandwidth"
        )
    return Forecast(
        inputs=inputs,
        converges=False,
        rounds=0,
        total_time_s=None,
        expected_downtime_ms=None,
        data_mib=None,
        rho=rho,
        strategy=strategy,
        reason=reason,
    )


def _waits(
    inputs: ForecastInputs, pending: float, previous: float | None, *, rho: float, switch_bw: float
) -> bool:
    """The controller's rule: a fitting round waits while rounds still shrink fast.

    As ``convergence.expected_shrink``: the larger of rho and this round / the last
    is at most ``WAIT_WHILE_SHRINK_AT_MOST``, and the round's data would take longer
    than the tightest rung at the final round's rate.
    """
    shrink = max(rho, pending / previous if previous else 0.0)
    data_ms = pending / switch_bw * 1000
    return shrink <= WAIT_WHILE_SHRINK_AT_MOST and data_ms > inputs.initial_downtime_ms


def relative_error(predicted: float, measured: float) -> float:
    """(predicted - measured) / measured; 0 when both are 0."""
    if measured == 0:
        return 0.0 if predicted == 0 else float("inf")
    return (predicted - measured) / measured


COMPRESS_AT_MOST_MIB_S: Final = 300.0
"""A link slower than this is worth zstd's CPU (2 multifd streams at level 1 compress
several hundred MiB/s; measured in the lab at 50 MiB/s: 6.1 s -> 4.0 s with virsh)."""


@dataclass(frozen=True, slots=True)
class CompressionChoice:
    """Whether this migration's memory stream is compressed, and why, in words."""

    compress: bool
    reason: str


ZSTD_MULTIFD_LIBVIRT: Final = 9_004_000
"""libvirt 9.4 added zstd to multifd migration (``VIR_MIGRATE_PARAM_COMPRESSION`` zstd)."""


def choose_compression(
    mode: Compression, fc: Forecast | None, *, xbzrle: bool, oldest_libvirt: int | None = None
) -> CompressionChoice:
    """Zstd over multifd when the link, not the sender, limits a pre-copy that converges.

    =========  ====================================================  ========
    mode       forecast                                              compress
    =========  ====================================================  ========
    none       any                                                   no
    zstd       any (not with --xbzrle: the policy refuses both)      yes
    auto       bandwidth from a cap or a measured link <= 300 MiB/s,
               strategy pre-copy                                     yes
    auto       learned (what the sender achieved), faster, post-copy
               or throttling ahead, no forecast, --xbzrle            no
    any        a host's libvirt older than 9.4 (``oldest_libvirt``)  no
    =========  ====================================================  ========
    """
    refused = (
        "--compression none" if mode is Compression.NONE
        else "--xbzrle compresses instead" if xbzrle
        else "a host's libvirt is older than 9.4 (zstd over multifd)"
        if oldest_libvirt is not None and oldest_libvirt < ZSTD_MULTIFD_LIBVIRT
        else ""
    )  # fmt: skip
    if refused:
        return CompressionChoice(compress=False, reason=f"off: {refused}")
    if mode is Compression.ZSTD:
        return CompressionChoice(compress=True, reason="zstd (--compression zstd)")
    if fc is None:
        return CompressionChoice(compress=False, reason="off: no forecast to judge the link by")
    rate, source = fc.inputs.bandwidth_mib_s, fc.inputs.bandwidth_source
    link_limited = fc.inputs.bandwidth_origin in {RateOrigin.CAP, RateOrigin.LINK}
    if not link_limited or rate > COMPRESS_AT_MOST_MIB_S:
        return CompressionChoice(
            compress=False, reason=f"off: the sender, not the link, sets the pace ({source})"
        )
    if fc.strategy is not Strategy.PRECOPY:
        return CompressionChoice(
            compress=False,
            reason=f"off: the forecast plans {fc.strategy}, and QEMU cannot combine "
            "multifd with post-copy",
        )
    return CompressionChoice(
        compress=True,
        reason=f"zstd over 2 multifd streams: the link is the limit ({rate:.0f} MiB/s, "
        f"{source.split(';')[0]}) and pre-copy converges",
    )
