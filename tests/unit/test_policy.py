"""The user's policy: the ladder, validation, the TOML file, and what it may not declare."""

from __future__ import annotations

import pytest

from libvirt_vmotion.errors import UsageError
from libvirt_vmotion.model import MeasuredContext
from libvirt_vmotion.policy import (
    DowntimeStep,
    MigrationPolicy,
    build_policy,
    exponential_downtime,
    load_policy_toml,
)


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
        "max_duration_s = 90\nallow_postcopy = false\nmax_throttle_percent = 0\n"
        "[downtime]\ninitial_ms = 20\nmax_ms = 200\nsteps = 3\n"
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
    [("max_duration_s = 'x'", "max_duration_s"), ("bogus = 1", "bogus"), ("[[", "TOML")],
)
def test_bad_toml_is_a_usage_error(text: str, needle: str) -> None:
    with pytest.raises(UsageError, match=needle):
        load_policy_toml(text)


@pytest.mark.parametrize(
    "key",
    [
        "qemu_knows_switchover_rate = true",
        "preflight_dirty_mib_s = 5.0",
        "postcopy_after_first_pass = true",
        "switchover_mib_s = 400.0",
    ],
)
def test_a_policy_file_cannot_declare_a_measurement(key: str) -> None:
    with pytest.raises(UsageError) as caught:
        load_policy_toml(key + "\n", source="web.toml")
    name = key.split(" ", 1)[0]
    assert f"web.toml: {name!r} is a measurement, not a setting" in caught.value.message
    # The hint names every setting a policy may give (the user's override among them).
    for allowed in ("max_duration_s", "switchover_bandwidth_mib_s", "allow_postcopy"):
        assert allowed in caught.value.hint


def test_the_policy_holds_no_measurement() -> None:
    measurements = {
        "qemu_knows_switchover_rate",
        "preflight_dirty_mib_s",
        "postcopy_after_first_pass",
        *MeasuredContext().to_dict(),
    }
    assert not measurements & set(MigrationPolicy().to_dict())
    with pytest.raises(UsageError, match="measurement"):
        build_policy(overrides={"preflight_dirty_mib_s": 5.0})


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_a_switchover_rate_no_measurement_can_give_is_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="switchover_mib_s"):
        MeasuredContext(switchover_mib_s=bad)
