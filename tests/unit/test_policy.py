"""The user's policy: the ladder, validation, the TOML file, and what it may not declare."""

from __future__ import annotations

import pytest

from libvirt_vmotion.errors import UsageError
from libvirt_vmotion.model import MeasuredContext
from libvirt_vmotion.policy import (
    MigrationPolicy,
    build_policy,
    load_policy_toml,
)


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
    for allowed in ("timeout", "switchover-bandwidth", "postcopy"):
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
