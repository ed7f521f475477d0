"""The forecast's rate: the slowest of cap, measured link and learned sender rate."""

from __future__ import annotations

from libvirt_vmotion.model import PastRun
from libvirt_vmotion.preflight.forecast import RateOrigin
from libvirt_vmotion.preflight.linkrate import (
    ASSUMED_MIB_S,
    LEARN_FROM_LAST,
    choose_rate,
    final_round_rate,
    learned_rate,
    learned_switchover,
)


def test_nothing_known_is_labelled_assumed() -> None:
    chosen = choose_rate(cap_mib_s=None, link_mib_s=None, history=())
    assert chosen.mib_s == ASSUMED_MIB_S
    assert "assumed" in chosen.source


def test_cap_below_link_wins() -> None:
    chosen = choose_rate(cap_mib_s=50, link_mib_s=1800, history=())
    assert (chosen.mib_s, chosen.source) == (50, "cap")


def test_measured_link_used_without_cap() -> None:
    chosen = choose_rate(cap_mib_s=None, link_mib_s=112.5, link_detail="hosta -> hostb", history=())
    assert chosen.mib_s == 112.5
    assert chosen.source == "link hosta -> hostb"
    assert chosen.origin is RateOrigin.LINK


def test_worked_example_of_the_module_doc() -> None:
    history = [PastRun(96, None), PastRun(110, None), PastRun(88, None), PastRun(30, 30)]
    chosen = choose_rate(cap_mib_s=None, link_mib_s=1800, history=history)
    assert chosen.mib_s == 96
    assert chosen.source.startswith("learned: median of the last 3 ")


def test_cap_bound_runs_say_nothing_about_the_sender() -> None:
    assert learned_rate([PastRun(49, 50), PastRun(30, 30)]) is None
    assert learned_rate([PastRun(45, 50)]) is None  # QEMU's limiter runs ~10% under the cap
    # ... but a run well below its cap was held back by the sender, not the cap.
    assert learned_rate([PastRun(38, 50)]) == 38


def test_learned_rate_below_the_cap_wins() -> None:
    chosen = choose_rate(cap_mib_s=100, link_mib_s=None, history=[PastRun(70, 100)])
    assert chosen.mib_s == 70
    assert chosen.source.startswith("learned")


def test_only_the_most_recent_runs_count() -> None:
    old = [PastRun(1000, None)] * 10
    recent = [PastRun(100, None)] * LEARN_FROM_LAST
    assert learned_rate([*old, *recent]) == 100
    assert learned_rate([PastRun(0, None)]) is None


def test_switchover_rate_learned_from_every_run_capped_or_not() -> None:
    history = [PastRun(40, 50, 400.0), PastRun(45, 50, None), PastRun(100, None, 600.0)]
    assert learned_switchover(history) == 500.0
    assert learned_switchover([PastRun(40, 50)]) is None


def test_final_round_rate_prefers_what_was_learned() -> None:
    assert final_round_rate(learned_mib_s=455.0, cap_mib_s=50.0, link_mib_s=990.0) == 455.0
    assert final_round_rate(learned_mib_s=None, cap_mib_s=50.0, link_mib_s=None) == ASSUMED_MIB_S
    assert final_round_rate(learned_mib_s=None, cap_mib_s=None, link_mib_s=2400.0) == 2400.0
