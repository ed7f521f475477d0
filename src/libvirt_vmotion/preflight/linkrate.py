"""Which migration rate the forecast should assume.

Pure: no I/O, no clock, no logging.

Three things bound how fast QEMU moves memory, and the slowest wins:

- the bandwidth cap the user set (``--bandwidth``), which QEMU enforces;
- the link between the two hosts, measured just before (``linkprobe``);
- the sender itself: one QEMU migration stream is CPU-bound (about 1-2 GiB/s
  on KVM hosts, ~100 MiB/s for a TCG guest), whatever the link. Nothing
  measures that before the migration, but every earlier migration between the
  same two hosts did: ``history`` keeps what they achieved.

A past migration says something about the sender only if its cap did not
hold it back: runs without a cap, or runs that stayed clearly below theirs.
The median of the last few such runs is the learned rate.

Worked example (cap none, link measured 1800 MiB/s, last runs achieved 96, 110,
88 MiB/s uncapped, and 30 MiB/s under a 30 MiB/s cap)::

    candidates: link 1800, learned median(96, 110, 88) = 96  (the capped run is ignored)
    -> 96 MiB/s, source "learned: ..."
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from libvirt_vmotion.model import PastRun
from libvirt_vmotion.preflight.forecast import RateOrigin

LEARN_FROM_LAST: Final = 5
"""How many recent unconstrained migrations the learned rate is the median of."""
CAP_BOUND_FRACTION: Final = 0.8
"""A run that achieved at least this share of its cap was held back by the cap.

QEMU's rate limiter and each round's bitmap sync keep a capped stream ~10% under
the cap (bench 2026-12-06: 45 MiB/s achieved at a 50 MiB/s cap, 215 MiB in 4.8 s);
at 0.9 such runs were learned as a sender slower than the cap, which switched
compression off where the cap was the limit."""
ASSUMED_MIB_S: Final = 1000.0
"""Used when nothing better is known (a 10 Gbit/s link)."""
MAX_PLAUSIBLE_MIB_S: Final = 50_000.0
"""Above any one QEMU migration stream (400 Gbit/s): a recorded rate beyond it is not learned."""


@dataclass(frozen=True, slots=True)
class RateChoice:
    """The rate the forecast assumes and where it comes from (printed with it)."""

    mib_s: float
    source: str
    origin: RateOrigin


def _unconstrained(history: Sequence[PastRun], last: int) -> list[float]:
    """Achieved rates of the most recent runs the cap did not hold back (oldest first)."""
    free = [
        r.achieved_mib_s
        for r in history
        if r.achieved_mib_s > 0
        and (r.cap_mib_s is None or r.achieved_mib_s < CAP_BOUND_FRACTION * r.cap_mib_s)
    ]
    return free[-last:]


def learned_rate(history: Sequence[PastRun], *, last: int = LEARN_FROM_LAST) -> float | None:
    """Median achieved rate of the last ``last`` runs the cap did not hold back, or None.

    ``history`` is oldest first.
    """
    free = _unconstrained(history, last)
    return float(statistics.median(free)) if free else None


def learned_switchover(history: Sequence[PastRun], *, last: int = LEARN_FROM_LAST) -> float | None:
    """Median switchover rate of the last ``last`` runs that recorded one, or None.

    QEMU lifts the bandwidth cap for the final stop-and-copy round, so every
    run counts, capped or not. None until this host pair has such a run: the
    controller then judges pauses at the capped rate, as QEMU does.
    """
    recorded = [r.switchover_mib_s for r in history if r.switchover_mib_s is not None]
    rates = [rate for rate in recorded if _plausible(rate)][-last:]
    return float(statistics.median(rates)) if rates else None


def _plausible(rate_mib_s: float) -> bool:
    """A rate one migration stream could have reached (the history is only a file)."""
    return 0 < rate_mib_s <= MAX_PLAUSIBLE_MIB_S  # NaN fails both comparisons


def bound_switchover(learned_mib_s: float | None, *, link_mib_s: float | None) -> float | None:
    """The learned switchover rate, never above the link measured in this run.

    The controller lets QEMU pause the guest for what it believes the final
    round moves at that rate: a rate higher than the link's (an old history,
    or a history file someone wrote into) would pause the guest past the
    downtime budget. The final round crosses the same link, so the link
    measured just before bounds it.
    """
    if learned_mib_s is None or link_mib_s is None or link_mib_s <= 0:
        return learned_mib_s
    return min(learned_mib_s, link_mib_s)


def final_round_rate(
    *, learned_mib_s: float | None, cap_mib_s: float | None, link_mib_s: float | None
) -> float:
    """Rate the forecast assumes for the unthrottled final round.

    What this host pair's history measured, else the fastest known bound (QEMU
    lifts the cap for that round): the measured link, the cap, or the assumed
    10 Gbit/s.
    """
    if learned_mib_s:
        return learned_mib_s
    return max(ASSUMED_MIB_S, cap_mib_s or 0.0, link_mib_s or 0.0)


def choose_rate(
    *,
    cap_mib_s: float | None,
    link_mib_s: float | None,
    history: Sequence[PastRun],
    link_detail: str = "",
) -> RateChoice:
    """The slowest of cap, measured link and learned sender rate (see the module doc)."""
    candidates: list[RateChoice] = []
    if cap_mib_s:
        candidates.append(RateChoice(cap_mib_s, "cap", RateOrigin.CAP))
    if link_mib_s:
        candidates.append(RateChoice(link_mib_s, f"link {link_detail}".strip(), RateOrigin.LINK))
    learned = learned_rate(history)
    if learned is not None:
        candidates.append(
            RateChoice(
                learned,
                f"learned: median of the last {len(_unconstrained(history, LEARN_FROM_LAST))} "
                "migration(s) between these hosts "
                "that the cap did not hold back",
                RateOrigin.LEARNED,
            )
        )
    if not candidates:
        return RateChoice(
            ASSUMED_MIB_S, "assumed (no cap, link not measured, no history)", RateOrigin.ASSUMED
        )
    return min(candidates, key=lambda c: c.mib_s)
