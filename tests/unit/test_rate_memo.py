"""One dirty-rate measurement per guest for all of an evacuation's destinations (RateMemo)."""

from __future__ import annotations

import threading
import time

from libvirt_vmotion.session.gate import RateMemo


def test_a_rate_is_reused_while_recent_then_measured_again() -> None:
    now = [100.0]
    memo = RateMemo(max_age_s=60.0, clock=lambda: now[0])
    key = ("qemu+tcp://hosta/system", "web01")
    assert memo.recent(key) is None
    assert memo.claim(key)
    memo.done(key, 12.0)
    now[0] += 30
    assert memo.recent(key) == 12.0
    now[0] += 31
    assert memo.recent(key) is None
    assert memo.claim(key)
    memo.done(key, 20.0)
    assert memo.recent(key) == 20.0
    assert memo.recent(("qemu+tcp://hosta/system", "web02")) is None


def test_one_measures_the_others_wait_only_for_its_rate_and_other_guests_do_not_wait() -> None:
    memo = RateMemo()
    key = ("a", "web01")
    assert memo.claim(key)
    assert not memo.claim(key)  # a second pre-flight of web01 waits for the first's rate
    assert memo.claim(("a", "web02"))  # another guest measures at once
    got: list[float | None] = []
    waiter = threading.Thread(target=lambda: got.append(memo.wait(key)))
    waiter.start()
    time.sleep(0.1)
    assert got == []  # still measuring
    memo.done(key, 7.5)
    waiter.join(timeout=5)
    assert got == [7.5]


def test_a_failed_measurement_wakes_the_waiters_with_nothing() -> None:
    memo = RateMemo(wait_s=5.0)
    key = ("a", "web01")
    assert memo.claim(key)
    threading.Timer(0.1, lambda: memo.done(key, None)).start()
    t0 = time.monotonic()
    assert memo.wait(key) is None
    assert time.monotonic() - t0 < 4  # woken, not timed out
    assert memo.claim(key)  # the next pre-flight measures again
