"""Which checkout a lab belongs to, and what `lab up` does with a healthy one (pure)."""

from __future__ import annotations

import pytest

from libvirt_vmotion.lab.owner import (
    UpAction,
    build_owner_record,
    parse_owner_record,
    plan_up_of_healthy_lab,
    same_checkout,
)

OURS = "/work/wt-a/.venv/bin/python"
THEIRS = "/work/wt-b/.venv/bin/python"
IDLE: dict[str, tuple[str, ...]] = {"hosta": (), "hostb": ()}


def plan(owner: str | None, running: dict[str, tuple[str, ...]] = IDLE) -> tuple[UpAction, str]:
    decided = plan_up_of_healthy_lab(
        owner=owner, python=OURS, running=running, lab_id="vmo", lab_cmd="./run lab"
    )
    return decided.action, decided.reason


def test_the_record_round_trips() -> None:
    assert parse_owner_record(build_owner_record(OURS)) == OURS


@pytest.mark.parametrize("text", ["", "python = \n", "something else\n"])
def test_a_record_that_names_no_interpreter_is_no_owner(text: str) -> None:
    assert parse_owner_record(text) is None


def test_python_and_python3_of_one_venv_are_one_checkout() -> None:
    assert same_checkout(OURS, "/work/wt-a/.venv/bin/python3")
    assert not same_checkout(OURS, THEIRS)


def test_our_own_healthy_lab_is_left_alone_even_with_guests_running() -> None:
    action, reason = plan(OURS, {"hosta": ("vmo-guest",), "hostb": ()})
    assert action is UpAction.NOTHING
    assert "nothing to do" in reason


@pytest.mark.parametrize("owner", [THEIRS, None])
def test_an_idle_lab_of_another_or_unknown_checkout_is_adopted(owner: str | None) -> None:
    action, reason = plan(owner)
    assert action is UpAction.ADOPT
    assert OURS in reason
    assert "hooks re-installed" in reason


def test_another_checkouts_lab_with_guests_running_is_refused_with_a_hint() -> None:
    action, reason = plan(THEIRS, {"hosta": (), "hostb": ("pre-bad", "vmo-guest")})
    assert action is UpAction.REFUSE
    assert THEIRS in reason
    assert "hostb: pre-bad, vmo-guest" in reason
    assert "VMOTION_LAB_ID" in reason
    assert "`./run lab down`" in reason
