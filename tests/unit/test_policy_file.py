"""The policy file: keys named as the flags, every key in examples/policy.toml, TOML out."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from libvirt_vmotion.errors import UsageError
from libvirt_vmotion.policy import (
    POLICY_KEYS,
    MigrationPolicy,
    build_policy,
    escalations,
    load_policy_toml,
    policy_to_toml,
)

EXAMPLE = Path(__file__).parents[2] / "examples" / "policy.toml"


def test_example_file_names_every_key_and_loads_to_the_defaults() -> None:
    text = EXAMPLE.read_text()
    for key in POLICY_KEYS:
        assert f"{key.key} = " in text, key.key
    assert load_policy_toml(text) == MigrationPolicy()


def test_example_file_is_what_policy_show_prints_for_the_defaults() -> None:
    body = "".join(line for line in EXAMPLE.read_text().splitlines(keepends=True)[6:])
    assert body == policy_to_toml(MigrationPolicy())


def test_toml_round_trips_a_changed_policy() -> None:
    policy = build_policy(
        max_downtime_ms=200,
        initial_downtime_ms=20,
        downtime_steps=3,
        overrides={"bandwidth_mib_s": 100, "allow_postcopy": False, "max_duration_s": 90.5},
    )
    text = policy_to_toml(policy)
    assert tomllib.loads(text)["bandwidth"] == 100
    assert load_policy_toml(text) == policy


def test_an_internal_field_name_is_pointed_at_its_key() -> None:
    with pytest.raises(UsageError, match="unknown setting 'max_throttle_percent'") as caught:
        load_policy_toml("max_throttle_percent = 50\n")
    assert "'max-throttle'" in caught.value.hint
    assert "examples/policy.toml" in caught.value.hint


def test_measured_facts_are_not_settings() -> None:
    keys = {k.key for k in POLICY_KEYS} | {k.field for k in POLICY_KEYS}
    for fact in (
        "preflight_dirty_mib_s",
        "qemu_knows_switchover_rate",
        "postcopy_after_first_pass",
    ):
        assert fact not in keys
    with pytest.raises(UsageError, match="is a measurement, not a setting"):
        load_policy_toml("preflight_dirty_mib_s = 3\n")


def test_escalations_say_what_the_default_policy_permits_and_when() -> None:
    lines = escalations(MigrationPolicy())
    text = "\n".join(lines)
    assert "30 -> 60 -> 122 -> 247 -> 500 ms" in text
    assert "40% then 80%" in text
    assert "may switch after 150 s" in text
    assert "depends on both hosts and the link" in text
    assert "after 300 s is aborted" in text


def test_escalations_of_a_cautious_policy_say_never() -> None:
    policy = build_policy(overrides={"max_throttle_percent": 0, "allow_postcopy": False})
    text = "\n".join(escalations(policy))
    assert "throttle: never" in text
    assert "post-copy: never" in text


def test_tls_is_a_word_in_the_file_and_on_the_command_line() -> None:
    from libvirt_vmotion.model import TlsMode  # noqa: PLC0415
    from libvirt_vmotion.policy import policy_key  # noqa: PLC0415

    assert MigrationPolicy().tls is TlsMode.AUTO
    assert load_policy_toml('tls = "require"\n').tls is TlsMode.REQUIRE
    assert policy_key("tls").parse("off") is TlsMode.OFF
    with pytest.raises(UsageError, match="tls: expected auto, require or off, got 'maybe'"):
        load_policy_toml('tls = "maybe"\n')
    with pytest.raises(ValueError, match="expected auto, require or off"):
        policy_key("tls").parse("yes")
    assert 'tls = "off"' in policy_to_toml(build_policy(overrides={"tls": TlsMode.OFF}))
