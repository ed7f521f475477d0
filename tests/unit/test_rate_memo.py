"""One dirty-rate measurement per guest for all of an evacuation's destinations (RateMemo)."""

from __future__ import annotations

from libvirt_vmotion.session.gate import RateMemo


def test_a_rate_is_reused_while_recent_then_measured_again() -> None:
    now = [100.0]
    memo = RateMemo(max_age_s=60.0, clock=lambda: now[0])
    key = ("qemu+tcp://hosta/system", "web01")
    assert memo.recent(key) is None
    memo.remember(key, 12.0)
    now[0] += 30
    assert memo.recent(key) == 12.0
    memo.remember(key, 99.0)  # a reused rate keeps its first time and value
    assert memo.recent(key) == 12.0
    now[0] += 31
    assert memo.recent(key) is None
    memo.remember(key, 20.0)
    assert memo.recent(key) == 20.0
    assert memo.recent(("qemu+tcp://hosta/system", "web02")) is None


def test_one_guests_pre_flights_take_turns_and_other_guests_do_not_wait() -> None:
    memo = RateMemo()
    first = memo.turn(("a", "web01"))
    assert memo.turn(("a", "web01")) is first
    with first:
        other = memo.turn(("a", "web02"))
        assert other.acquire(blocking=False)  # another guest's turn is free
        other.release()
        assert not first.acquire(blocking=False)  # the same guest's is not
