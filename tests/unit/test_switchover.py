"""The switchover rate: QEMU sends the final round unthrottled, so the real pause is shorter.

The benchmark that motivated it (cap 50 MiB/s, 512 MiB TCG guest dirtying
25 MiB/s): the dirty set sat at ~25 MiB a round, ~490 ms at the capped rate, so
the controller throttled the guest; the real downtime was 58 ms.
"""

from __future__ import annotations

import math

import pytest

from libvirt_vmotion.errors import UsageError
from libvirt_vmotion.policy import MigrationPolicy, build_policy, load_policy_toml

# ---- policy -------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0.0, -5.0, math.nan, math.inf])
def test_bad_switchover_bandwidth_names_the_field(bad: float) -> None:
    with pytest.raises(UsageError, match="switchover_bandwidth_mib_s"):
        MigrationPolicy(switchover_bandwidth_mib_s=bad)


def test_switchover_bandwidth_defaults_to_unknown_and_is_reported() -> None:
    assert MigrationPolicy().switchover_bandwidth_mib_s is None
    assert MigrationPolicy().to_dict()["switchover_bandwidth_mib_s"] is None
    policy = MigrationPolicy(switchover_bandwidth_mib_s=480.5)
    assert policy.to_dict()["switchover_bandwidth_mib_s"] == 480.5


def test_switchover_bandwidth_loads_from_toml_and_overrides() -> None:
    assert load_policy_toml("switchover_bandwidth_mib_s = 500\n").switchover_bandwidth_mib_s == 500
    policy = build_policy(overrides={"switchover_bandwidth_mib_s": 312.5})
    assert policy.switchover_bandwidth_mib_s == 312.5
    with pytest.raises(UsageError, match="switchover_bandwidth_mib_s"):
        load_policy_toml("switchover_bandwidth_mib_s = 'fast'\n")
